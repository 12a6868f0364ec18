//! The run as arrows and notes between participants, in log order (which
//! is cause order), with the aggregation that keeps a big run readable.
//! The Mermaid text and the report's SVG both draw this one model, so they
//! always agree.
//!
//! Aggregation, in three stages, each only when needed:
//!
//! 1. **Participants.** At most [`MAX_PARTICIPANTS`] columns: beyond that,
//!    the first `MAX_PARTICIPANTS - 1` nodes to start keep a column each
//!    and every later one is folded into a last column, "N more nodes".
//! 2. **Repeats.** Consecutive events that draw the same arrows (typically
//!    a thousand folded clients registering) are drawn once, marked `×N`.
//! 3. **Length.** A run of more than [`MAX_STEPS`] arrows and notes keeps
//!    its first [`HEAD_STEPS`] and last [`TAIL_STEPS`]; from the middle it
//!    keeps up to [`MAX_MIDDLE_STEPS`] of faults, failures and script
//!    notes, and each stretch left out becomes one note counting its
//!    events by name. So a diagram never has more than about 500 steps,
//!    whatever the size of the run; the report's tables count everything.

use std::collections::HashMap;

use super::log::{EventKind, Log, LogEvent};
use super::summary::{is_participant, RunSummary};
use super::text::{self, bytes, clip, thousands};

/// Most columns a diagram draws; later nodes share the last one.
pub const MAX_PARTICIPANTS: usize = 12;
/// Most steps (arrows and notes) drawn without leaving any out.
pub const MAX_STEPS: usize = 400;
/// Steps kept from the start of a run that is too long.
pub const HEAD_STEPS: usize = 200;
/// Steps kept from the end of a run that is too long (the end has the
/// outcome).
pub const TAIL_STEPS: usize = 100;
/// Fault, failure and note steps kept from the middle of a run that is
/// too long.
pub const MAX_MIDDLE_STEPS: usize = 60;
/// Longest label, in characters: names from scripts and the network can be
/// 255 bytes long.
pub const MAX_LABEL_CHARS: usize = 60;

/// A sequence diagram of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagram {
    /// The columns, in the order the nodes started.
    pub participants: Vec<Participant>,
    /// Arrows and notes, top to bottom.
    pub steps: Vec<Step>,
    /// The column of each node.
    columns: HashMap<String, usize>,
}

/// One column of the diagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    /// What the column is called: a node's name, or `N more nodes`.
    pub label: String,
    /// How many nodes it stands for (more than one only for the folded
    /// column).
    pub nodes: usize,
}

/// One row of the diagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// An arrow between two columns (the same one for a message a folded
    /// column sends itself).
    Message {
        /// Index of the sending column.
        from: usize,
        /// Index of the receiving column.
        to: usize,
        /// How the arrow is drawn.
        arrow: Arrow,
        /// Its label.
        text: String,
    },
    /// A note over one column or a span of them.
    Note {
        /// Index of the first column it covers.
        first: usize,
        /// Index of the last column it covers.
        last: usize,
        /// Its text.
        text: String,
        /// What kind of news it is, for its colour.
        tone: Tone,
    },
}

/// How an arrow is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrow {
    /// A request or a transfer: a solid line.
    Request,
    /// An answer: a dashed line.
    Reply,
    /// A transfer the receiver rejected: a dashed line ending in a cross.
    Rejected,
}

/// What a note reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tone {
    /// Something that went as expected.
    Plain,
    /// A fault: a crash, a departure, a restart, an armed fault.
    Fault,
    /// A failed download or a failed script.
    Failure,
    /// A note the script wrote.
    Script,
    /// Steps left out of a long run, counted.
    Omitted,
}

impl Step {
    /// Whether the step reports a fault, a failure or a script note, which
    /// aggregation keeps from the middle of a long run.
    fn is_news(&self) -> bool {
        matches!(
            self,
            Step::Message {
                arrow: Arrow::Rejected,
                ..
            }
        ) || matches!(self, Step::Note { tone, .. } if *tone != Tone::Plain)
    }

    fn with_repeat(mut self, repeat: u64) -> Step {
        if repeat > 1 {
            let (Step::Message { text, .. } | Step::Note { text, .. }) = &mut self;
            text.push_str(&format!(" ×{}", thousands(repeat)));
        }
        self
    }
}

impl Diagram {
    /// The diagram of `log`.
    pub fn of(log: &Log) -> Diagram {
        Diagram::with_summary(log, &RunSummary::of(log))
    }

    /// The diagram of `log`, whose summary the caller already has.
    pub(crate) fn with_summary(log: &Log, summary: &RunSummary) -> Diagram {
        let cast = Cast::new(summary.nodes.iter().map(|node| node.name.as_str()));
        let blocks = blocks(log, &cast);
        let steps = within_budget(log, blocks, &cast);
        Diagram {
            participants: cast.participants,
            steps,
            columns: cast.column_of,
        }
    }

    /// The column that draws node `name`, if the log has that node.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.get(name).copied()
    }

    /// How many nodes were folded into the last column (0 when none were).
    pub fn folded_nodes(&self) -> usize {
        self.participants.iter().filter(|p| p.nodes > 1).map(|p| p.nodes).sum()
    }
}

/// The columns, and which column draws each node.
struct Cast {
    participants: Vec<Participant>,
    column_of: HashMap<String, usize>,
}

impl Cast {
    fn new<'a>(nodes: impl ExactSizeIterator<Item = &'a str>) -> Cast {
        let total = nodes.len();
        let kept = if total > MAX_PARTICIPANTS {
            MAX_PARTICIPANTS - 1
        } else {
            total
        };
        let mut cast = Cast {
            participants: Vec::new(),
            column_of: HashMap::new(),
        };
        for (index, name) in nodes.enumerate() {
            let column = index.min(kept);
            if column == cast.participants.len() {
                let label = if index < kept {
                    name.to_string()
                } else {
                    format!("{} more nodes", total - kept)
                };
                let nodes = if index < kept { 1 } else { total - kept };
                cast.participants.push(Participant { label, nodes });
            }
            cast.column_of.insert(name.to_string(), column);
        }
        if cast.participants.is_empty() {
            // A log with no nodes still draws its notes somewhere.
            cast.participants.push(Participant {
                label: "scenario".into(),
                nodes: 0,
            });
        }
        cast
    }

    /// The column of node `name`. Every node of the log is in the summary
    /// the cast was made from; 0 is only a safe fallback.
    fn column(&self, name: &str) -> usize {
        self.column_of.get(name).copied().unwrap_or(0)
    }

    fn client(&self, id: u64) -> usize {
        self.column(&id.to_string())
    }

    fn last(&self) -> usize {
        self.participants.len() - 1
    }
}

/// The steps one event draws, in order.
fn steps_of(event: &LogEvent, cast: &Cast) -> Vec<Step> {
    let own = cast.column(&event.node);
    let message = |from, to, arrow, text: String| Step::Message {
        from,
        to,
        arrow,
        text: label(&text),
    };
    let note = |over: usize, tone, text: String| Step::Note {
        first: over,
        last: over,
        text: label(&text),
        tone,
    };
    let everyone = |tone, text: String| Step::Note {
        first: 0,
        last: cast.last(),
        text: label(&text),
        tone,
    };
    match &event.kind {
        EventKind::Registered { client } => vec![
            message(cast.client(*client), own, Arrow::Request, "register".into()),
            message(own, cast.client(*client), Arrow::Reply, "ACK".into()),
        ],
        EventKind::Announced { client, file } => {
            vec![message(
                cast.client(*client),
                own,
                Arrow::Request,
                format!("announce {file}"),
            )]
        }
        EventKind::PeerChosen { client, file, peer } => vec![
            message(cast.client(*client), own, Arrow::Request, format!("lookup {file}")),
            message(own, cast.client(*client), Arrow::Reply, format!("peer {peer}")),
        ],
        EventKind::FileSent { file, to, bytes: size } => {
            vec![message(
                own,
                cast.client(*to),
                Arrow::Request,
                format!("{file} ({})", bytes(*size)),
            )]
        }
        EventKind::DownloadFinished { file, sources, .. } => {
            let text = match sources {
                Some(sources) if sources.len() > 1 => format!("stored {file} (from {} peers)", sources.len()),
                _ => format!("stored {file}"),
            };
            vec![note(own, Tone::Plain, text)]
        }
        EventKind::DownloadFailed { file, error } => vec![note(own, Tone::Failure, format!("{file} failed: {error}"))],
        EventKind::TransferRejected { file, peer, reason } => {
            vec![message(
                cast.client(*peer),
                own,
                Arrow::Rejected,
                format!("{file}: {reason}"),
            )]
        }
        EventKind::HolderDropped { client, file, reason } => {
            vec![note(own, Tone::Fault, format!("drops {client} for {file}: {reason}"))]
        }
        EventKind::Killed { file: Some(file), sent } => {
            let sent = sent.map_or(String::new(), |sent| format!(" after {}", bytes(sent)));
            vec![note(own, Tone::Fault, format!("killed sending {file}{sent}"))]
        }
        EventKind::Killed { file: None, .. } => vec![note(own, Tone::Fault, "killed".into())],
        EventKind::ClientLost { client } => vec![note(own, Tone::Fault, format!("lost {client}"))],
        EventKind::Left => vec![note(own, Tone::Fault, "left".into())],
        EventKind::ClientLeft { client } => vec![note(own, Tone::Fault, format!("{client} left"))],
        EventKind::Restarted => vec![note(own, Tone::Fault, "restarted".into())],
        EventKind::Corrupted { file } => vec![note(own, Tone::Fault, format!("corrupted {file}"))],
        EventKind::FaultArmed { fault, file, after } => {
            vec![note(own, Tone::Fault, format!("{fault} {file} at {}", bytes(*after)))]
        }
        EventKind::RateSet { up, down } => vec![note(
            own,
            Tone::Script,
            format!("caps up {}, down {}", cap(*up), cap(*down)),
        )],
        EventKind::Slept { seconds } => vec![everyone(Tone::Script, format!("{seconds} s pass"))],
        EventKind::NetworkChanged { change, a, b, ms } => {
            let text = match ms {
                Some(ms) => format!("{change} {ms} ms"),
                None => change.clone(),
            };
            let (first, last) = (cast.column(a), cast.column(b));
            vec![Step::Note {
                first: first.min(last),
                last: first.max(last),
                text: label(&text),
                tone: Tone::Fault,
            }]
        }
        EventKind::Note { text } => vec![everyone(Tone::Script, text.clone())],
        EventKind::ScenarioFailed { error, line, .. } => {
            vec![everyone(
                Tone::Failure,
                format!("script failed at line {line}: {error}"),
            )]
        }
        EventKind::Other if is_participant(&event.node) => vec![note(own, Tone::Plain, event.name.clone())],
        EventKind::Other => vec![everyone(Tone::Plain, event.name.clone())],
        EventKind::ScenarioStarted { .. } | EventKind::Started | EventKind::ScenarioFinished => Vec::new(),
    }
}

/// A rate cap for humans: "1.0 MB/s", or "none".
fn cap(bytes_per_second: u64) -> String {
    match bytes_per_second {
        0 => "none".into(),
        rate => text::rate(rate),
    }
}

/// A label as drawn: clipped, and never empty (Mermaid needs some text).
fn label(text: &str) -> String {
    if text.trim().is_empty() {
        return "(empty)".into();
    }
    clip(text, MAX_LABEL_CHARS)
}

/// The steps of one event, or of a run of consecutive events that draw the
/// same steps.
struct Block {
    steps: Vec<Step>,
    repeat: u64,
    /// Index of its first event in the log.
    first_event: usize,
    /// Index of its last event in the log.
    last_event: usize,
}

/// Every event's steps, repeats merged. Events that draw nothing (`started`)
/// do not break a run of repeats.
fn blocks(log: &Log, cast: &Cast) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for (index, event) in log.events.iter().enumerate() {
        let steps = steps_of(event, cast);
        if steps.is_empty() {
            continue;
        }
        match blocks.last_mut() {
            Some(last) if last.steps == steps => {
                last.repeat += 1;
                last.last_event = index;
            }
            _ => blocks.push(Block {
                steps,
                repeat: 1,
                first_event: index,
                last_event: index,
            }),
        }
    }
    blocks
}

/// The steps to draw: all of them when they fit in [`MAX_STEPS`], else the
/// head, the tail, the news of the middle and a count of what was left out.
fn within_budget(log: &Log, blocks: Vec<Block>, cast: &Cast) -> Vec<Step> {
    let total: usize = blocks.iter().map(|block| block.steps.len()).sum();
    let keep = if total <= MAX_STEPS {
        vec![true; blocks.len()]
    } else {
        blocks_to_keep(&blocks)
    };
    let mut steps = Vec::new();
    let mut left_out_from: Option<usize> = None;
    for (block, kept) in blocks.into_iter().zip(keep) {
        if !kept {
            left_out_from.get_or_insert(block.first_event);
            continue;
        }
        if let Some(first) = left_out_from.take() {
            steps.push(left_out(log, first..block.first_event, cast));
        }
        let repeat = block.repeat;
        steps.extend(block.steps.into_iter().map(|step| step.with_repeat(repeat)));
    }
    if let Some(first) = left_out_from {
        steps.push(left_out(log, first..log.events.len(), cast));
    }
    steps
}

/// Which blocks a too-long run keeps: head, tail, and news from the middle.
fn blocks_to_keep(blocks: &[Block]) -> Vec<bool> {
    let mut keep = vec![false; blocks.len()];
    let mut head = 0;
    let mut head_end = 0;
    while head_end < blocks.len() && head < HEAD_STEPS {
        keep[head_end] = true;
        head += blocks[head_end].steps.len();
        head_end += 1;
    }
    let mut tail = 0;
    let mut tail_start = blocks.len();
    while tail_start > head_end && tail < TAIL_STEPS {
        tail_start -= 1;
        keep[tail_start] = true;
        tail += blocks[tail_start].steps.len();
    }
    let mut middle = 0;
    for (index, block) in blocks.iter().enumerate().take(tail_start).skip(head_end) {
        if middle < MAX_MIDDLE_STEPS && block.steps.iter().any(Step::is_news) {
            keep[index] = true;
            middle += block.steps.len();
        }
    }
    keep
}

/// One note standing for the events of `range`, counted by name (most
/// frequent first; at most six names).
fn left_out(log: &Log, range: std::ops::Range<usize>, cast: &Cast) -> Step {
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for event in &log.events[range.clone()] {
        match counts.iter_mut().find(|(name, _)| *name == event.name) {
            Some((_, count)) => *count += 1,
            None => counts.push((&event.name, 1)),
        }
    }
    // Stable: equal counts stay in order of first appearance.
    counts.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let mut names: Vec<String> = counts
        .iter()
        .take(6)
        .map(|(name, count)| format!("{} {}", thousands(*count), clip(name, 24)))
        .collect();
    if counts.len() > 6 {
        names.push("…".into());
    }
    Step::Note {
        first: 0,
        last: cast.last(),
        text: format!(
            "… {} events not drawn: {}",
            thousands(range.len() as u64),
            names.join(", ")
        ),
        tone: Tone::Omitted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Log {
        Log::from_lines(lines.iter().copied()).unwrap()
    }

    fn texts(diagram: &Diagram) -> Vec<&str> {
        diagram
            .steps
            .iter()
            .map(|step| match step {
                Step::Message { text, .. } | Step::Note { text, .. } => text.as_str(),
            })
            .collect()
    }

    #[test]
    fn a_download_draws_lookup_transfer_and_announce_in_cause_order() {
        let diagram = Diagram::of(&log(&[
            r#"{"node":"tracker","event":"started"}"#,
            r#"{"node":"1","event":"started"}"#,
            r#"{"node":"2","event":"started"}"#,
            r#"{"node":"tracker","event":"peer_chosen","client":2,"file":"f","peer":1}"#,
            r#"{"node":"1","event":"file_sent","file":"f","to":2,"bytes":5}"#,
            r#"{"node":"2","event":"download_finished","file":"f","from":1,"bytes":5,"sha1":"x"}"#,
            r#"{"node":"tracker","event":"announced","client":2,"file":"f"}"#,
        ]));
        assert_eq!(
            texts(&diagram),
            ["lookup f", "peer 1", "f (5 B)", "stored f", "announce f"]
        );
        assert_eq!(
            diagram.steps[2],
            Step::Message {
                from: 1,
                to: 2,
                arrow: Arrow::Request,
                text: "f (5 B)".into()
            }
        );
    }

    #[test]
    fn participants_are_in_start_order_and_fold_beyond_the_limit() {
        let mut lines = vec![r#"{"node":"tracker","event":"started"}"#.to_string()];
        for id in (1..=30).rev() {
            lines.push(format!(r#"{{"node":"{id}","event":"started"}}"#));
        }
        let diagram = Diagram::of(&Log::from_lines(lines.iter().map(String::as_str)).unwrap());
        assert_eq!(diagram.participants.len(), MAX_PARTICIPANTS);
        assert_eq!(diagram.participants[1].label, "30");
        assert_eq!(diagram.participants[MAX_PARTICIPANTS - 1].label, "20 more nodes");
        assert_eq!(diagram.folded_nodes(), 20);
    }

    #[test]
    fn a_long_run_keeps_head_tail_and_news_and_counts_the_rest() {
        let mut lines = vec![r#"{"node":"tracker","event":"started"}"#.to_string()];
        for n in 0..2000 {
            lines.push(format!(
                r#"{{"node":"tracker","event":"announced","client":{n},"file":"f{n}"}}"#
            ));
            if n == 1000 {
                lines.push(r#"{"node":"scenario","event":"note","text":"half way"}"#.into());
            }
        }
        let diagram = Diagram::of(&Log::from_lines(lines.iter().map(String::as_str)).unwrap());
        let texts = texts(&diagram);
        assert!(diagram.steps.len() <= HEAD_STEPS + TAIL_STEPS + MAX_MIDDLE_STEPS + 3);
        assert_eq!(texts[0], "announce f0");
        assert_eq!(*texts.last().unwrap(), "announce f1999");
        let note = texts.iter().position(|t| *t == "half way").expect("the note is kept");
        assert!(
            texts[note - 1].starts_with("… 801 events not drawn: 801 announced"),
            "{}",
            texts[note - 1]
        );
    }

    #[test]
    fn consecutive_identical_events_are_drawn_once_with_their_count() {
        let mut lines = vec![r#"{"node":"tracker","event":"started"}"#.to_string()];
        for id in 1..=100 {
            lines.push(format!(r#"{{"node":"{id}","event":"started"}}"#));
            lines.push(format!(r#"{{"node":"tracker","event":"registered","client":{id}}}"#));
        }
        let diagram = Diagram::of(&Log::from_lines(lines.iter().map(String::as_str)).unwrap());
        let texts = texts(&diagram);
        // 10 clients with columns of their own register one by one; the 90
        // folded into the last column register as one.
        assert_eq!(texts.len(), 2 * 11);
        assert_eq!(texts[20..], ["register ×90", "ACK ×90"]);
    }
}

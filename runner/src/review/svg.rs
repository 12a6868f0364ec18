//! Geometry of the report's two drawings: the sequence diagram and the
//! timeline of transfers. Everything here is numbers and already-clipped
//! text; the template turns it into SVG and escapes the text.

use std::collections::HashMap;

use serde::Serialize;

use super::diagram::{Arrow, Diagram, Step, Tone};
use super::html::DownloadSpan;
use super::log::{EventKind, Log};
use super::text::{clip, thousands};

/// Most bars the timeline draws; the rest are counted beside it.
pub const MAX_TIMELINE_BARS: usize = 2000;

/// Horizontal distance between two lifelines.
const COLUMN: f64 = 150.0;
/// Space left of the first lifeline's column.
const MARGIN: f64 = 10.0;
/// Height of one arrow or note.
const ROW: f64 = 26.0;
/// Rough width of one character of 11 px text, to size notes.
const CHAR: f64 = 6.4;
/// Rows per SVG element: a printed page can break only between elements,
/// so shorter drawings leave less of a page blank before a break.
const CHUNK_ROWS: usize = 20;

/// The sequence diagram, laid out.
#[derive(Debug, Serialize)]
pub(crate) struct SvgDiagram {
    width: f64,
    columns: Vec<SvgColumn>,
    /// The rows, cut into consecutive drawings of at most [`CHUNK_ROWS`].
    chunks: Vec<SvgChunk>,
}

#[derive(Debug, Serialize)]
struct SvgChunk {
    height: f64,
    rows: Vec<SvgRow>,
}

#[derive(Debug, Serialize)]
struct SvgColumn {
    x: f64,
    label: String,
    /// Shown on hover: the full name, or how many nodes a folded column holds.
    title: String,
}

/// One arrow or note. `kind` is `message`, `loop` (a message to its own
/// column) or `note`; `class` styles it.
#[derive(Debug, Serialize)]
struct SvgRow {
    kind: &'static str,
    class: &'static str,
    y: f64,
    x1: f64,
    x2: f64,
    text_x: f64,
    text: String,
}

fn column_x(index: usize) -> f64 {
    MARGIN + COLUMN * index as f64 + COLUMN / 2.0
}

impl SvgDiagram {
    /// Lays out `diagram`, one row per step.
    pub(crate) fn of(diagram: &Diagram) -> SvgDiagram {
        let columns = diagram
            .participants
            .iter()
            .enumerate()
            .map(|(index, participant)| SvgColumn {
                x: column_x(index),
                label: clip(&participant.label, 20),
                title: if participant.nodes > 1 {
                    format!("{} nodes share this column", thousands(participant.nodes as u64))
                } else {
                    participant.label.clone()
                },
            })
            .collect::<Vec<_>>();
        let count = diagram.steps.len().div_ceil(CHUNK_ROWS);
        let chunks: Vec<SvgChunk> = diagram
            .steps
            .chunks(CHUNK_ROWS)
            .enumerate()
            .map(|(index, steps)| chunk(steps, index == 0, index + 1 == count))
            .collect();
        // Wide enough for the columns and for the longest note or label
        // that sticks out on the right.
        let right = chunks.iter().flat_map(|chunk| &chunk.rows).map(SvgRow::right_end);
        let width = right.fold(2.0 * MARGIN + COLUMN * columns.len() as f64, |w, end| {
            w.max(end + MARGIN)
        });
        SvgDiagram { width, columns, chunks }
    }
}

/// One drawing of consecutive rows. Rows are [`ROW`] apart across
/// drawings too, so the cut does not show; the first and last drawings
/// have half a row of room above and below.
fn chunk(steps: &[Step], first: bool, last: bool) -> SvgChunk {
    let top = if first { ROW / 2.0 } else { 0.0 };
    let bottom = if last { ROW / 2.0 } else { 0.0 };
    SvgChunk {
        height: top + ROW * steps.len() as f64 + bottom,
        rows: steps
            .iter()
            .enumerate()
            // A row's text sits above its line, so the line is low in its band.
            .map(|(index, step)| row(step, top + ROW * (index as f64 + 0.75)))
            .collect(),
    }
}

impl SvgRow {
    /// Where the row ends on the right.
    fn right_end(&self) -> f64 {
        match self.kind {
            "loop" => self.text_x + self.text.chars().count() as f64 * CHAR,
            _ => self.x2,
        }
    }
}

fn row(step: &Step, y: f64) -> SvgRow {
    match step {
        Step::Message { from, to, arrow, text } => {
            let class = match arrow {
                Arrow::Request => "request",
                Arrow::Reply => "reply",
                Arrow::Rejected => "rejected",
            };
            let (x1, x2) = (column_x(*from), column_x(*to));
            let kind = if from == to { "loop" } else { "message" };
            let text_x = if from == to { x1 + 34.0 } else { (x1 + x2) / 2.0 };
            SvgRow {
                kind,
                class,
                y,
                x1,
                x2,
                text_x,
                text: text.clone(),
            }
        }
        Step::Note {
            first,
            last,
            text,
            tone,
        } => {
            let class = match tone {
                Tone::Plain => "plain",
                Tone::Fault => "fault",
                Tone::Failure => "failure",
                Tone::Script => "script",
                Tone::Omitted => "omitted",
            };
            let spanned = column_x(*last) - column_x(*first) + COLUMN - 10.0;
            let width = spanned.max(text.chars().count() as f64 * CHAR + 16.0);
            // Centred over its columns, but never past the left edge.
            let centre = ((column_x(*first) + column_x(*last)) / 2.0).max(width / 2.0 + 2.0);
            SvgRow {
                kind: "note",
                class,
                y,
                x1: centre - width / 2.0,
                x2: centre + width / 2.0,
                text_x: centre,
                text: text.clone(),
            }
        }
    }
}

/// Width of the timeline's name column.
const LABEL_WIDTH: f64 = 120.0;
/// Width of its time axis.
const PLOT_WIDTH: f64 = 840.0;
/// Height of one node's row.
const LANE: f64 = 24.0;
/// Room above the lanes for the axis labels.
const AXIS: f64 = 24.0;

/// The timeline of transfers per node, laid out.
#[derive(Debug, Serialize)]
pub(crate) struct SvgTimeline {
    width: f64,
    height: f64,
    lanes: Vec<SvgLane>,
    ticks: Vec<SvgTick>,
    bars: Vec<SvgBar>,
    /// Bars left out past [`MAX_TIMELINE_BARS`].
    bars_not_drawn: usize,
}

#[derive(Debug, Serialize)]
struct SvgLane {
    y: f64,
    label: String,
}

#[derive(Debug, Serialize)]
struct SvgTick {
    x: f64,
    label: String,
}

/// One transfer attempt on one node's lane: `class` is `ok`, `rejected` or
/// `failed`, plus `upload` on the sender's lane.
#[derive(Debug, Serialize)]
struct SvgBar {
    x: f64,
    y: f64,
    width: f64,
    class: String,
    title: String,
}

/// A transfer attempt: from the tracker's choice of a holder to its end,
/// or a swarm download from the script's call to the file stored.
struct Attempt {
    receiver: String,
    /// The holder, or the peers that sent pieces (known under `--sim`).
    senders: Vec<String>,
    file: String,
    start: f64,
    end: f64,
    outcome: &'static str,
}

impl SvgTimeline {
    /// Lays out every transfer attempt of `log` by the `times` of its
    /// events (aligned with them; checked by the caller). `None` when the
    /// log has no transfer.
    pub(crate) fn of(log: &Log, times: &[f64], spans: &[DownloadSpan], diagram: &Diagram) -> Option<SvgTimeline> {
        let attempts = attempts(log, times, spans);
        if attempts.is_empty() {
            return None;
        }
        let lane_of = |node: &str| diagram.column(node).unwrap_or(0);
        let mut used: Vec<usize> = attempts
            .iter()
            .flat_map(|a| std::iter::once(&a.receiver).chain(&a.senders).map(|node| lane_of(node)))
            .collect();
        used.sort_unstable();
        used.dedup();
        let lane_y: HashMap<usize, f64> = used
            .iter()
            .enumerate()
            .map(|(row, column)| (*column, AXIS + LANE * row as f64))
            .collect();
        let start = attempts.iter().map(|a| a.start).fold(f64::INFINITY, f64::min);
        let end = attempts.iter().map(|a| a.end).fold(f64::NEG_INFINITY, f64::max);
        let scale = Scale {
            start,
            span: (end - start).max(1e-9),
        };
        let mut bars = Vec::new();
        let mut bars_not_drawn = 0;
        for attempt in &attempts {
            let lanes = 1 + attempt.senders.len();
            if bars.len() + lanes > MAX_TIMELINE_BARS {
                bars_not_drawn += lanes;
                continue;
            }
            let (x, width) = scale.bar(attempt.start, attempt.end);
            let from = match &attempt.senders[..] {
                [] => "a swarm".to_owned(),
                [holder] => holder.clone(),
                peers => format!("{} peers", peers.len()),
            };
            let title = format!(
                "{} from {from} to {}: {} ({})",
                clip(&attempt.file, 60),
                attempt.receiver,
                attempt.outcome,
                duration(attempt.end - attempt.start)
            );
            let receiver = (&attempt.receiver, attempt.outcome.to_string());
            let senders = attempt
                .senders
                .iter()
                .map(|sender| (sender, format!("{} upload", attempt.outcome)));
            for (node, class) in std::iter::once(receiver).chain(senders) {
                let y = lane_y[&lane_of(node)];
                bars.push(SvgBar {
                    x,
                    y,
                    width,
                    class,
                    title: title.clone(),
                });
            }
        }
        Some(SvgTimeline {
            width: LABEL_WIDTH + PLOT_WIDTH + 20.0,
            height: AXIS + LANE * used.len() as f64 + 4.0,
            lanes: used
                .iter()
                .map(|column| SvgLane {
                    y: lane_y[column],
                    label: clip(&diagram.participants[*column].label, 18),
                })
                .collect(),
            ticks: scale.ticks(),
            bars_not_drawn,
            bars,
        })
    }
}

/// Every transfer attempt, in the order they ended. A swarm download
/// (finished with no single holder) is drawn from its span in `spans`.
fn attempts(log: &Log, times: &[f64], spans: &[DownloadSpan]) -> Vec<Attempt> {
    let mut open: HashMap<(String, String), (String, f64)> = HashMap::new();
    let mut spans_used = vec![false; spans.len()];
    let mut attempts = Vec::new();
    for (event, time) in log.events.iter().zip(times) {
        let client = event.node.clone();
        let (file, outcome) = match &event.kind {
            EventKind::PeerChosen { client, file, peer } => {
                open.insert((client.to_string(), file.clone()), (peer.to_string(), *time));
                continue;
            }
            EventKind::DownloadFinished {
                file,
                from: None,
                sources,
                ..
            } => {
                if let Some(start) = swarm_start(spans, &mut spans_used, &client, file) {
                    attempts.push(Attempt {
                        receiver: client,
                        senders: sources.iter().flat_map(|sources| sources.keys().cloned()).collect(),
                        file: file.clone(),
                        start,
                        end: *time,
                        outcome: "ok",
                    });
                }
                continue;
            }
            EventKind::DownloadFinished { file, .. } => {
                // Its span is used up too, or a later swarm download of the
                // same file by the same client would take its start.
                swarm_start(spans, &mut spans_used, &client, file);
                (file, "ok")
            }
            EventKind::TransferRejected { file, .. } => (file, "rejected"),
            EventKind::DownloadFailed { file, .. } => (file, "failed"),
            _ => continue,
        };
        if let Some((sender, start)) = open.remove(&(client.clone(), file.clone())) {
            attempts.push(Attempt {
                receiver: client,
                senders: vec![sender],
                file: file.clone(),
                start,
                end: *time,
                outcome,
            });
        }
    }
    attempts
}

/// When the download of `file` by `client` that just finished began: the
/// first span of that client and file not used yet (spans come in the
/// order downloads were stored, as their events do). Marks it used.
fn swarm_start(spans: &[DownloadSpan], used: &mut [bool], client: &str, file: &str) -> Option<f64> {
    let index = (0..spans.len())
        .find(|&index| !used[index] && spans[index].client.to_string() == client && spans[index].file == file)?;
    used[index] = true;
    Some(spans[index].started)
}

/// Seconds to x positions on the time axis.
struct Scale {
    start: f64,
    span: f64,
}

impl Scale {
    fn x(&self, time: f64) -> f64 {
        LABEL_WIDTH + (time - self.start) / self.span * PLOT_WIDTH
    }

    /// Position and width of a bar, at least 2 px wide so it shows.
    fn bar(&self, start: f64, end: f64) -> (f64, f64) {
        let x = self.x(start);
        (x, (self.x(end) - x).max(2.0))
    }

    fn ticks(&self) -> Vec<SvgTick> {
        (0..=5)
            .map(|step| {
                let time = self.start + self.span * f64::from(step) / 5.0;
                SvgTick {
                    x: self.x(time),
                    label: duration(time),
                }
            })
            .collect()
    }
}

/// `0.5 ms`, `120 ms`, `2.35 s`.
fn duration(seconds: f64) -> String {
    if seconds.abs() < 1.0 {
        let millis = seconds * 1000.0;
        if millis.abs() < 10.0 {
            format!("{millis:.1} ms")
        } else {
            format!("{millis:.0} ms")
        }
    } else {
        format!("{seconds:.2} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn laid_out(lines: &[String]) -> SvgDiagram {
        let log = Log::from_lines(lines.iter().map(String::as_str)).unwrap();
        SvgDiagram::of(&Diagram::of(&log))
    }

    #[test]
    fn long_notes_stay_inside_the_drawing() {
        let long = "x".repeat(200);
        let lines = [
            r#"{"node":"tracker","event":"started"}"#.to_string(),
            r#"{"node":"1","event":"started"}"#.to_string(),
            format!(r#"{{"node":"tracker","event":"holder_dropped","client":1,"file":"{long}","reason":"r"}}"#),
            format!(r#"{{"node":"1","event":"download_failed","file":"{long}","error":"e"}}"#),
        ];
        let svg = laid_out(&lines);
        let rows: Vec<&SvgRow> = svg.chunks.iter().flat_map(|chunk| &chunk.rows).collect();
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert!(row.x1 >= 0.0 && row.x2 <= svg.width, "{row:?} outside 0..{}", svg.width);
        }
    }

    #[test]
    fn rows_are_cut_into_drawings_a_page_can_break_between() {
        let mut lines = vec![r#"{"node":"tracker","event":"started"}"#.to_string()];
        lines.extend((0..45).map(|n| format!(r#"{{"node":"tracker","event":"announced","client":1,"file":"f{n}"}}"#)));
        let svg = laid_out(&lines);
        let sizes: Vec<usize> = svg.chunks.iter().map(|chunk| chunk.rows.len()).collect();
        assert_eq!(sizes, [20, 20, 5]);
        // Each drawing starts its own rows at the top, in log order.
        assert_eq!(svg.chunks[1].rows[0].text, "announce f20");
        assert!(svg.chunks[1].rows[0].y < svg.chunks[1].rows[1].y);
    }
}

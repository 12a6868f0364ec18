//! What a run amounts to: its outcome, the nodes in the order they started,
//! what each sent, received and served, and every download's result.

use std::collections::{BTreeMap, HashMap};

use super::log::{EventKind, Log};

/// The facts the diagram and the report are built from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunSummary {
    /// The script's file name, from `scenario_started`.
    pub scenario: Option<String>,
    /// The seed, from `scenario_started`.
    pub seed: Option<u64>,
    /// How the script ended.
    pub outcome: RunOutcome,
    /// The tracker and every client, in the order they started (nodes that
    /// events name without a `started` of their own come after, in the
    /// order they first appear).
    pub nodes: Vec<NodeTotals>,
    /// Every download, in log order.
    pub downloads: Vec<Download>,
}

/// How the script ended.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RunOutcome {
    /// `scenario_finished`: the script ran to its end.
    Finished,
    /// `scenario_failed`: a script error or a failed assertion.
    Failed {
        /// The error, as printed.
        error: String,
        /// Its script line.
        line: u64,
        /// Its column.
        column: u64,
    },
    /// The log stops without either (cut short, or still being written).
    #[default]
    Unfinished,
}

/// What one node did, counted over the whole log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeTotals {
    /// The node as the log names it (`tracker`, `10002`).
    pub name: String,
    /// Bytes of the files it sent whole (`file_sent`) and of the pieces it
    /// sent to swarm downloads that stored the file, when the log lists
    /// their `sources`; transfers cut short are not counted, as the
    /// receiver threw them away.
    pub bytes_sent: u64,
    /// Bytes of the verified files it stored (`download_finished`).
    pub bytes_received: u64,
    /// The files it served (whole, or pieces of them to a swarm download),
    /// each with how many downloads, in first-served order.
    pub served: Vec<(String, u64)>,
    /// Its downloads that stored the file.
    pub downloads_ok: u64,
    /// Its downloads that ended without the file.
    pub downloads_failed: u64,
}

/// One download, from the client's point of view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Download {
    /// The downloading client.
    pub client: String,
    /// The file.
    pub file: String,
    /// How it ended.
    pub result: DownloadResult,
    /// The holders given up on before that, with why, in order.
    pub rejected: Vec<(String, String)>,
    /// Index of the event that ended it, in [`Log::events`].
    pub event_index: usize,
}

/// How a download ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DownloadResult {
    /// Stored, verified.
    Finished {
        /// The peer that delivered.
        from: String,
        /// The file's size.
        bytes: u64,
        /// Swarm downloads (not built yet): bytes per peer, when the event
        /// carries a `sources` map.
        sources: Option<BTreeMap<String, u64>>,
    },
    /// Ended without the file.
    Failed {
        /// Why.
        error: String,
    },
}

impl RunSummary {
    /// Counts everything in `log`.
    pub fn of(log: &Log) -> RunSummary {
        let mut builder = Builder::default();
        for (index, event) in log.events.iter().enumerate() {
            builder.add(index, &event.node, &event.kind);
        }
        builder.summary
    }

    /// How many downloads stored their file.
    pub fn downloads_ok(&self) -> usize {
        self.downloads.iter().filter(|d| d.is_ok()).count()
    }

    /// How many downloads ended without their file.
    pub fn downloads_failed(&self) -> usize {
        self.downloads.len() - self.downloads_ok()
    }

    /// The node called `name`, if the log mentions it.
    pub fn node(&self, name: &str) -> Option<&NodeTotals> {
        self.nodes.iter().find(|node| node.name == name)
    }
}

impl Download {
    /// Whether the file was stored.
    pub fn is_ok(&self) -> bool {
        matches!(self.result, DownloadResult::Finished { .. })
    }
}

/// The participant name of a node: `scenario` is not one.
pub(crate) fn is_participant(node: &str) -> bool {
    node != "scenario"
}

#[derive(Default)]
struct Builder {
    summary: RunSummary,
    /// Index of each node in `summary.nodes`.
    positions: HashMap<String, usize>,
    /// Rejections waiting for the outcome of their download, by (client, file).
    rejections: HashMap<(String, String), Vec<(String, String)>>,
}

impl Builder {
    fn add(&mut self, index: usize, node: &str, kind: &EventKind) {
        if is_participant(node) {
            self.node(node);
        }
        for client in kind.clients() {
            self.node(&client.to_string());
        }
        match kind {
            EventKind::ScenarioStarted { scenario, seed } => {
                self.summary.scenario = Some(scenario.clone());
                self.summary.seed = Some(*seed);
            }
            EventKind::ScenarioFinished => self.summary.outcome = RunOutcome::Finished,
            EventKind::ScenarioFailed { error, line, column } => {
                self.summary.outcome = RunOutcome::Failed {
                    error: error.clone(),
                    line: *line,
                    column: *column,
                }
            }
            // The receiver is counted by its own download_finished.
            EventKind::FileSent { file, bytes, .. } => self.file_sent(node, file, *bytes),
            EventKind::TransferRejected { file, peer, reason } => {
                let key = (node.to_string(), file.clone());
                self.rejections
                    .entry(key)
                    .or_default()
                    .push((peer.to_string(), reason.clone()));
            }
            EventKind::DownloadFinished {
                file,
                from,
                bytes,
                sources,
            } => {
                // A swarm download lists what each peer sent it (always
                // under --sim): each served it that much.
                for (peer, sent) in sources.iter().flatten() {
                    self.file_sent(peer, file, *sent);
                }
                let result = DownloadResult::Finished {
                    from: from.map_or_else(|| "a swarm".to_owned(), |from| from.to_string()),
                    bytes: *bytes,
                    sources: sources.clone(),
                };
                self.download_ended(index, node, file, result);
            }
            EventKind::DownloadFailed { file, error } => {
                let result = DownloadResult::Failed { error: error.clone() };
                self.download_ended(index, node, file, result);
            }
            _ => {}
        }
    }

    /// The totals of `name`, added at the end when first seen.
    fn node(&mut self, name: &str) -> &mut NodeTotals {
        let nodes = &mut self.summary.nodes;
        let position = *self.positions.entry(name.to_string()).or_insert_with(|| {
            nodes.push(NodeTotals {
                name: name.to_string(),
                ..NodeTotals::default()
            });
            nodes.len() - 1
        });
        &mut nodes[position]
    }

    fn file_sent(&mut self, sender: &str, file: &str, bytes: u64) {
        let totals = self.node(sender);
        totals.bytes_sent += bytes;
        match totals.served.iter_mut().find(|(served, _)| served == file) {
            Some((_, times)) => *times += 1,
            None => totals.served.push((file.to_string(), 1)),
        }
    }

    fn download_ended(&mut self, index: usize, client: &str, file: &str, result: DownloadResult) {
        let totals = self.node(client);
        match &result {
            DownloadResult::Finished { bytes, .. } => {
                totals.bytes_received += bytes;
                totals.downloads_ok += 1;
            }
            DownloadResult::Failed { .. } => totals.downloads_failed += 1,
        }
        let key = (client.to_string(), file.to_string());
        let rejected = self.rejections.remove(&key).unwrap_or_default();
        self.summary.downloads.push(Download {
            client: client.to_string(),
            file: file.to_string(),
            result,
            rejected,
            event_index: index,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default scenario's download part, with one failover added.
    const LOG: &str = r#"{"seq":0,"node":"scenario","event":"scenario_started","scenario":"x.rhai","seed":7,"schema":1}
{"seq":1,"node":"tracker","event":"started"}
{"seq":2,"node":"10000","event":"started"}
{"seq":3,"node":"10001","event":"started"}
{"seq":4,"node":"10002","event":"started"}
{"seq":5,"node":"10001","event":"download_failed","file":"nope.txt","error":"no peer has nope.txt"}
{"seq":6,"node":"tracker","event":"peer_chosen","client":10002,"file":"a.txt","peer":10001}
{"seq":7,"node":"10002","event":"transfer_rejected","file":"a.txt","peer":10001,"reason":"stalled past the idle timeout"}
{"seq":8,"node":"tracker","event":"peer_chosen","client":10002,"file":"a.txt","peer":10000}
{"seq":9,"node":"10000","event":"file_sent","file":"a.txt","to":10002,"bytes":5}
{"seq":10,"node":"10002","event":"download_finished","file":"a.txt","from":10000,"bytes":5,"sha1":"s"}
{"seq":11,"node":"10000","event":"file_sent","file":"a.txt","to":10001,"bytes":5}
{"seq":12,"node":"10001","event":"download_finished","file":"a.txt","from":10000,"bytes":5,"sha1":"s"}
{"seq":13,"node":"10000","event":"file_sent","file":"b.txt","to":10001,"bytes":100}
{"seq":14,"node":"10001","event":"download_finished","file":"b.txt","from":10000,"bytes":100,"sha1":"s"}
{"seq":15,"node":"10002","event":"download_finished","file":"c.bin","bytes":30,"sha1":"s","swarm":true,"sources":{"10000":10,"10001":20}}
{"seq":16,"node":"scenario","event":"scenario_failed","error":"assertion failed: x","line":9,"column":1}"#;

    #[test]
    fn bytes_and_downloads_are_counted_per_node() {
        let summary = RunSummary::of(&Log::parse(LOG).unwrap());
        let names: Vec<&str> = summary.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["tracker", "10000", "10001", "10002"]);
        let seeder = summary.node("10000").unwrap();
        assert_eq!(seeder.bytes_sent, 120, "whole files and swarm pieces");
        assert_eq!(seeder.bytes_received, 0);
        let served = |name: &str, times| (name.to_string(), times);
        assert_eq!(
            seeder.served,
            [served("a.txt", 2), served("b.txt", 1), served("c.bin", 1)]
        );
        let second = summary.node("10001").unwrap();
        assert_eq!((second.bytes_sent, second.bytes_received), (20, 105));
        assert_eq!(second.served, [served("c.bin", 1)]);
        assert_eq!((second.downloads_ok, second.downloads_failed), (2, 1));
        assert_eq!(summary.node("10002").unwrap().bytes_received, 35);
    }

    #[test]
    fn downloads_keep_their_rejections_and_the_run_its_outcome() {
        let summary = RunSummary::of(&Log::parse(LOG).unwrap());
        assert_eq!((summary.downloads_ok(), summary.downloads_failed()), (4, 1));
        let failover = &summary.downloads[1];
        assert_eq!((failover.client.as_str(), failover.file.as_str()), ("10002", "a.txt"));
        assert_eq!(
            failover.rejected,
            [("10001".to_string(), "stalled past the idle timeout".to_string())]
        );
        assert!(summary.downloads[2].rejected.is_empty());
        assert_eq!((summary.scenario.as_deref(), summary.seed), (Some("x.rhai"), Some(7)));
        assert!(matches!(summary.outcome, RunOutcome::Failed { line: 9, .. }));
    }
}

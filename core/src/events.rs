//! What the tracker and peers report about what they do.
//!
//! Every node reports through a [`Reporter`]: it logs the event through
//! `tracing` for humans and, when one is attached, hands it to an
//! [`EventSink`] (the scenario runner's event log). Events carry the
//! [`Trace`] of the request that caused them, never a time or a port, so a log
//! built from them is the same on every run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::protocol::{count, ClientId, Digest, FileName, Problem, Trace};

/// Which node an event happened on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// The tracker.
    Tracker,
    /// A client (its peer server, or its side of a download).
    Client(ClientId),
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Tracker => f.write_str("tracker"),
            Node::Client(id) => id.fmt(f),
        }
    }
}

/// A node serialises as the event log writes it: `"tracker"` or `"10002"`.
impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A node reads back from its written form (for events that cross a
/// process boundary).
impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "tracker" => Ok(Node::Tracker),
            id => id
                .parse()
                .map(|id| Node::Client(ClientId(id)))
                .map_err(|_| serde::de::Error::custom(format!("not a node: {text:?}"))),
        }
    }
}

/// Something that happened on a node. The serialised form is the event log's:
/// `{"event": "file_sent", "file": ..., "to": ..., "bytes": ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The tracker acknowledged a client's registration.
    Registered {
        /// Who registered.
        client: ClientId,
    },
    /// The tracker recorded that a client holds a file.
    Announced {
        /// The holder.
        client: ClientId,
        /// The file.
        file: FileName,
    },
    /// The tracker chose a holder to serve a client's download.
    PeerChosen {
        /// Who asked.
        client: ClientId,
        /// The file.
        file: FileName,
        /// The holder chosen.
        peer: ClientId,
    },
    /// A peer finished sending a file and the receiver confirmed it.
    FileSent {
        /// The file.
        file: FileName,
        /// The receiver.
        to: ClientId,
        /// How many bytes were sent.
        bytes: u64,
    },
    /// A client stored a verified file.
    DownloadFinished {
        /// The file.
        file: FileName,
        /// The peer that delivered it (a whole-file download only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        from: Option<ClientId>,
        /// Its size.
        bytes: u64,
        /// Its SHA-1.
        sha1: Digest,
        /// Whether it came in pieces from a swarm.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        swarm: bool,
        /// For a swarm download, the bytes of checked pieces each peer
        /// sent. How much each peer sends depends on timing, so a log that
        /// must repeat over real networks leaves it out
        /// ([`Event::without_timing`]).
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "crate::protocol::client_keys::option"
        )]
        sources: Option<BTreeMap<ClientId, u64>>,
    },
    /// A download ended without the file.
    DownloadFailed {
        /// The file.
        file: FileName,
        /// Why, for the user.
        error: String,
    },
    /// A downloader gave up on one holder and will ask for another.
    TransferRejected {
        /// The file.
        file: FileName,
        /// The holder that failed.
        peer: ClientId,
        /// What went wrong (a stable phrase, no byte counts or addresses).
        reason: String,
    },
    /// The tracker forgot a client that said goodbye.
    ClientLeft {
        /// The client.
        client: ClientId,
    },
    /// The tracker forgot a client whose session dropped without a goodbye,
    /// or went silent past the session timeout.
    ClientLost {
        /// The client.
        client: ClientId,
    },
    /// The tracker stopped offering a holder's copy of a file because the
    /// holder withdrew it, having found the copy no longer what it
    /// announced: on a downloader's complaint that its bytes hashed
    /// wrong, or when asked to send a copy that changed since.
    HolderDropped {
        /// The holder.
        client: ClientId,
        /// The file.
        file: FileName,
        /// How the copy differs from what was announced.
        reason: Problem,
    },
    /// The client crashed: its server stopped at once, its transfers were
    /// cut, its session dropped without a goodbye.
    Killed,
}

impl Event {
    /// This event without what depends on the timing of a real network
    /// (how many bytes each peer of a swarm sent): what a log that must
    /// be the same on every run over TCP keeps.
    pub fn without_timing(self) -> Event {
        match self {
            Event::DownloadFinished {
                file,
                from,
                bytes,
                sha1,
                swarm,
                ..
            } => Event::DownloadFinished {
                file,
                from,
                bytes,
                sha1,
                swarm,
                sources: None,
            },
            other => other,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Registered { client } => write!(f, "registered client {client}"),
            Event::Announced { client, file } => write!(f, "recorded that {client} holds {file}"),
            Event::PeerChosen { client, file, peer } => write!(f, "chose {peer} to serve {file} to {client}"),
            Event::FileSent { file, to, bytes } => write!(f, "sent {file} ({bytes} bytes) to {to}"),
            Event::DownloadFinished {
                file,
                from: Some(from),
                bytes,
                sha1,
                ..
            } => {
                write!(f, "stored {file} ({bytes} bytes, sha1 {sha1}) from {from}")
            }
            Event::DownloadFinished {
                file,
                bytes,
                sha1,
                sources,
                ..
            } => {
                let peers = count(sources.as_ref().map_or(0, BTreeMap::len), "peer");
                write!(f, "stored {file} ({bytes} bytes, sha1 {sha1}) in pieces from {peers}")
            }
            Event::DownloadFailed { file, error } => write!(f, "download of {file} failed: {error}"),
            Event::TransferRejected { file, peer, reason } => write!(f, "rejected {peer} for {file}: it {reason}"),
            Event::ClientLeft { client } => write!(f, "forgot {client}, which left"),
            Event::ClientLost { client } => write!(f, "forgot {client}, whose session dropped"),
            Event::HolderDropped { client, file, reason } => {
                write!(
                    f,
                    "stopped offering {client}'s copy of {file}: it {}",
                    reason.describe()
                )
            }
            Event::Killed => write!(f, "killed"),
        }
    }
}

/// Receives every event of the nodes it is attached to.
///
/// `record` is called on the task that caused the event, before that task
/// answers anyone, so every event a request causes has been recorded by the
/// time its reply is sent.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event of `node`, caused by the request traced `trace`.
    fn record(&self, trace: Trace, node: Node, event: Event);
}

/// The way one node reports its events: to `tracing`, and to the sink if any.
#[derive(Clone)]
pub struct Reporter {
    /// The node every event is reported for.
    node: Node,
    /// Where events go besides the tracing log (the scenario's event log).
    sink: Option<Arc<dyn EventSink>>,
    /// Set when the node crashed: a crashed node reports nothing more, as a
    /// killed process could not. Shared by every clone.
    silenced: Arc<AtomicBool>,
}

impl Reporter {
    /// A reporter for `node` that hands events to `sink` when there is one.
    pub fn new(node: Node, sink: Option<Arc<dyn EventSink>>) -> Reporter {
        Reporter {
            node,
            sink,
            silenced: Arc::default(),
        }
    }

    /// The node this reporter speaks for.
    pub fn node(&self) -> Node {
        self.node
    }

    /// Reports nothing from now on: the node crashed.
    pub fn silence(&self) {
        self.silenced.store(true, Ordering::SeqCst);
    }

    /// Reports `event`, caused by the request traced `trace`.
    pub fn report(&self, trace: Trace, event: Event) {
        if self.silenced.load(Ordering::SeqCst) {
            return;
        }
        if trace == Trace::default() {
            tracing::info!(node = %self.node, "{event}");
        } else {
            tracing::info!(node = %self.node, op = trace.op, step = trace.step, "{event}");
        }
        if let Some(sink) = &self.sink {
            sink.record(trace, self.node, event);
        }
    }
}

impl fmt::Debug for Reporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reporter")
            .field("node", &self.node)
            .field("sink", &self.sink.is_some())
            .finish()
    }
}

//! Process mode: a node (tracker or client) in a `phile` process of its
//! own, driven by `phile-run --processes` over the process's standard input
//! and output.
//!
//! The runner writes one [`Request`] per line to the agent's stdin; the
//! agent writes one [`Line`] per line to its stdout: `ready` first, then
//! every event of its node the moment it happens, and a `reply` to each
//! request. One pipe carries both, in order, so when the runner has the
//! reply to a `sync` it has every event the agent reported before it: that
//! is how an operation's events are all in before the operation ends, and
//! why the log of a run in processes is the same as in one process.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phile_core::client::{ClientError, DownloadError, Downloaded, Source};
use phile_core::events::{Event, EventSink, Node};
use phile_core::faults::Fault;
use phile_core::storage::Folder;
use phile_core::trace::traced;
use phile_core::{Client, ClientConfig, ClientId, FileInfo, FileName, Limits, Trace, Tracker, TrackerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

/// A request from the runner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u64,
    /// What to do.
    pub command: Command,
}

/// What the runner asks an agent to do. Each mirrors a method of
/// [`Client`]; `trace` is the operation's trace as it stands, and the reply
/// gives it back advanced.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// [`Client::register`] with the tracker at `tracker`.
    #[allow(missing_docs)]
    Register { tracker: SocketAddr, trace: Trace },
    /// [`Client::is_registered`].
    IsRegistered,
    /// [`Client::upload`].
    #[allow(missing_docs)]
    Upload { file: FileName, trace: Trace },
    /// [`Client::download`].
    #[allow(missing_docs)]
    Download { file: FileName, trace: Trace },
    /// [`Client::locate`], excluding nobody.
    #[allow(missing_docs)]
    Locate { file: FileName, trace: Trace },
    /// [`Client::receive`] from `source`.
    #[allow(missing_docs)]
    Receive {
        file: FileName,
        source: Source,
        trace: Trace,
    },
    /// [`Client::announce`].
    #[allow(missing_docs)]
    Announce {
        file: FileName,
        info: FileInfo,
        trace: Trace,
    },
    /// [`Client::announce_held`].
    #[allow(missing_docs)]
    AnnounceHeld { trace: Trace },
    /// [`Client::leave`] at once; the agent exits after the reply.
    #[allow(missing_docs)]
    Leave { trace: Trace },
    /// [`Client::arm`].
    #[allow(missing_docs)]
    Arm { fault: Fault },
    /// Create or replace a file (content in hex).
    #[allow(missing_docs)]
    Write { file: FileName, content: String },
    /// Create a file of seeded pseudo-random bytes.
    #[allow(missing_docs)]
    WriteRandom { file: FileName, len: u64, seed: u64 },
    /// Answered once every event reported before it is written.
    Sync,
    /// Stop and exit.
    Shutdown,
}

/// One line from an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// The node is up and listens on `addr`.
    #[allow(missing_docs)]
    Ready { addr: SocketAddr },
    /// An event of the node, as its reporter gave it.
    #[allow(missing_docs)]
    Event { trace: Trace, node: Node, event: Event },
    /// The answer to request `id`, with the trace as the command left it.
    #[allow(missing_docs)]
    Reply { id: u64, trace: Trace, outcome: Outcome },
}

/// The result of a command.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Done, nothing to return.
    Done,
    /// A yes or no answer.
    Yes(bool),
    /// A holder, or none.
    Source(Option<Source>),
    /// How many files were announced.
    Files(usize),
    /// A download arrived.
    Downloaded(Downloaded),
    /// A download ended without the file.
    NotDownloaded(Failure),
    /// The command failed; the message says why.
    Error(String),
}

/// Why a download ended without the file, as the scenario sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// An expected failure (no holder, every holder failed, the downloader
    /// stopped): an `ok: false` result.
    Expected(String),
    /// The client itself could not go on: a script error.
    Client(String),
}

impl From<DownloadError> for Failure {
    fn from(error: DownloadError) -> Failure {
        match error {
            DownloadError::Client(ClientError::Stopped(_)) => Failure::Expected(error.to_string()),
            DownloadError::Client(error) => Failure::Client(error.to_string()),
            other => Failure::Expected(other.to_string()),
        }
    }
}

/// How an agent is started (the hidden `phile agent` command).
#[derive(Clone, Debug)]
pub struct AgentArgs {
    /// `None`: a tracker; `Some(id)`: client `id`.
    pub client: Option<u64>,
    /// The client's folder (already prepared by the runner).
    pub dir: Option<PathBuf>,
    /// Where to listen.
    pub listen: SocketAddr,
    /// The tracker's seed.
    pub seed: u64,
    /// The idle timeout, in milliseconds.
    pub idle_timeout_ms: u64,
}

/// Writes lines to stdout, one whole line at a time.
#[derive(Clone)]
struct Out(Arc<Mutex<std::io::Stdout>>);

impl Out {
    fn send(&self, line: &Line) {
        let text = serde_json::to_string(line).expect("lines always serialise");
        let mut out = self.0.lock().expect("stdout poisoned");
        // The runner reading the other end is gone: nothing left to tell.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    }
}

impl EventSink for Out {
    fn record(&self, trace: Trace, node: Node, event: Event) {
        self.send(&Line::Event { trace, node, event });
    }
}

/// Runs an agent until the runner says to stop (or goes away).
pub async fn serve(args: AgentArgs) -> anyhow::Result<()> {
    let out = Out(Arc::new(Mutex::new(std::io::stdout())));
    let limits = Limits {
        idle_timeout: Duration::from_millis(args.idle_timeout_ms),
        ..Limits::default()
    };
    let listener = TcpListener::bind(args.listen).await?;
    let node = match (args.client, &args.dir) {
        (Some(id), Some(dir)) => {
            let config = ClientConfig {
                limits,
                events: Some(Arc::new(out.clone())),
                ..ClientConfig::default()
            };
            AgentNode::Client(Arc::new(Client::start(
                ClientId(id),
                Folder::open(dir)?,
                listener,
                config,
            )?))
        }
        _ => {
            let config = TrackerConfig {
                seed: args.seed,
                limits,
                events: Some(Arc::new(out.clone())),
                ..TrackerConfig::default()
            };
            AgentNode::Tracker(Arc::new(Tracker::spawn(listener, config)?))
        }
    };
    out.send(&Line::Ready { addr: node.addr() });
    let mut requests = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = tokio::select! {
            line = requests.next_line() => line?,
            // A fault crashed the client: the process goes with it.
            _ = node.stopped() => None,
        };
        let Some(line) = line else { break };
        let request: Request = serde_json::from_str(&line)?;
        if let Command::Shutdown = request.command {
            break;
        }
        let (node, out) = (node.clone(), out.clone());
        tokio::spawn(async move {
            let (trace, outcome) = node.execute(request.command).await;
            out.send(&Line::Reply {
                id: request.id,
                trace,
                outcome,
            });
            if node.is_stopped() {
                std::process::exit(0);
            }
        });
    }
    node.shutdown().await;
    Ok(())
}

#[derive(Clone)]
enum AgentNode {
    Tracker(Arc<Tracker>),
    Client(Arc<Client>),
}

impl AgentNode {
    fn addr(&self) -> SocketAddr {
        match self {
            AgentNode::Tracker(tracker) => tracker.local_addr(),
            AgentNode::Client(client) => client.local_addr(),
        }
    }

    async fn stopped(&self) {
        match self {
            AgentNode::Tracker(_) => std::future::pending().await,
            AgentNode::Client(client) => client.stopped().await,
        }
    }

    fn is_stopped(&self) -> bool {
        matches!(self, AgentNode::Client(client) if client.is_stopped())
    }

    async fn shutdown(&self) {
        match self {
            AgentNode::Tracker(tracker) => tracker.shutdown().await,
            AgentNode::Client(client) => client.shutdown().await,
        }
    }

    async fn execute(&self, command: Command) -> (Trace, Outcome) {
        let AgentNode::Client(client) = self else {
            return (Trace::default(), Outcome::Done); // a tracker only syncs
        };
        let error = |e: ClientError| Outcome::Error(e.to_string());
        match command {
            Command::Register { tracker, trace } => {
                let (outcome, trace) = traced(trace, client.register(tracker)).await;
                (trace, outcome.map_or_else(error, |()| Outcome::Done))
            }
            Command::IsRegistered => (Trace::default(), Outcome::Yes(client.is_registered().await)),
            Command::Upload { file, trace } => {
                let (outcome, trace) = traced(trace, client.upload(&file)).await;
                (trace, outcome.map_or_else(error, |_| Outcome::Done))
            }
            Command::Download { file, trace } => {
                let (outcome, trace) = traced(trace, async {
                    let fetched = client.download(&file).await?;
                    if !fetched.announced {
                        return Err(DownloadError::Client(ClientError::NotRegistered(client.id())));
                    }
                    Ok(fetched.downloaded)
                })
                .await;
                (trace, downloaded(outcome))
            }
            Command::Locate { file, trace } => {
                let (outcome, trace) = traced(trace, client.locate(&file, &[])).await;
                (trace, outcome.map_or_else(error, Outcome::Source))
            }
            Command::Receive { file, source, trace } => {
                let (outcome, trace) = traced(trace, client.receive(&file, source)).await;
                (trace, downloaded(outcome))
            }
            Command::Announce { file, info, trace } => {
                let (outcome, trace) = traced(trace, client.announce(&file, info)).await;
                (trace, outcome.map_or_else(error, |()| Outcome::Done))
            }
            Command::AnnounceHeld { trace } => {
                let (outcome, trace) = traced(trace, client.announce_held()).await;
                (trace, outcome.map_or_else(error, |f| Outcome::Files(f.len())))
            }
            Command::Leave { trace } => {
                let (outcome, trace) = traced(trace, client.leave(Duration::ZERO)).await;
                (trace, outcome.map_or_else(error, |()| Outcome::Done))
            }
            Command::Arm { fault } => {
                client.arm(fault);
                (Trace::default(), Outcome::Done)
            }
            Command::Write { file, content } => {
                let written = match hex::decode(content) {
                    Ok(content) => client.folder().write(&file, content).await.map_err(|e| e.to_string()),
                    Err(error) => Err(format!("bad content: {error}")),
                };
                (Trace::default(), written.map_or_else(Outcome::Error, |_| Outcome::Done))
            }
            Command::WriteRandom { file, len, seed } => {
                let fill = crate::world::random_content(seed, &file, len);
                let written = client.folder().write_with(&file, fill).await;
                (
                    Trace::default(),
                    written.map_or_else(|e| Outcome::Error(e.to_string()), |_| Outcome::Done),
                )
            }
            Command::Sync | Command::Shutdown => (Trace::default(), Outcome::Done),
        }
    }
}

fn downloaded(result: Result<Downloaded, DownloadError>) -> Outcome {
    match result {
        Ok(done) => Outcome::Downloaded(done),
        Err(error) => Outcome::NotDownloaded(error.into()),
    }
}

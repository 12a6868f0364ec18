//! A node as a scenario drives it: a tracker, or a client with the
//! transfers the script started in the background and the faults armed on
//! it. Every backend runs nodes the same way: it hands each [`Command`] to
//! [`Node::execute`] where the node lives (in this process, in a process of
//! its own, or on a simulated host) and carries the [`Reply`] back. The
//! node reports its own events to the event sink it was started with.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phile_core::client::{ClientError, DownloadError, Downloaded, SessionError, SwarmOptions};
use phile_core::host::{BoxListener, Host};
use phile_core::storage::{Folder, StorageError};
use phile_core::trace::{self, traced};
use phile_core::{Client, ClientConfig, ClientId, FileName, Limits, Trace, Tracker, TrackerConfig};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::command::{Command, NodeError, Reply};
use crate::event_log::Journal;
use crate::faults::{Faults, FaultyListener};

/// What a backend does, besides what the node does itself, when a client
/// crashes: nothing in this process; exit, for a process of its own; take
/// the host down, in a simulation.
pub type HostCrash = Arc<dyn Fn() + Send + Sync>;

/// How to start a node: everything but where it runs.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// A tracker, or which client.
    pub role: Role,
    /// The seed of the node's random choices.
    pub seed: u64,
    /// Timeouts.
    pub limits: Limits,
}

/// What a node is.
#[derive(Clone, Debug)]
pub enum Role {
    /// The tracker.
    Tracker,
    /// A client.
    Client {
        /// Its id.
        id: u64,
        /// Its folder (already prepared).
        dir: PathBuf,
    },
}

impl NodeSpec {
    /// The client's id; `None` for the tracker.
    pub fn client(&self) -> Option<u64> {
        match self.role {
            Role::Tracker => None,
            Role::Client { id, .. } => Some(id),
        }
    }
}

/// What a node needs from the backend that runs it.
pub struct Environment {
    /// Where its sockets, tasks and blocking work live.
    pub host: Arc<dyn Host>,
    /// Where its events go, and where a fault that crashes it struck.
    pub events: Arc<dyn Journal>,
    /// What else happens when it crashes.
    pub crash: HostCrash,
}

/// A running node.
pub enum Node {
    /// A tracker.
    Tracker(Tracker),
    /// A client.
    Client(ClientNode),
}

/// A client and what the script left running on it.
pub struct ClientNode {
    /// The client.
    client: Arc<Client>,
    /// Faults armed on its peer server.
    faults: Arc<Faults>,
    /// Where background transfers run.
    host: Arc<dyn Host>,
    /// What the backend adds to a crash.
    crash_host: HostCrash,
    /// Background transfers by the runner's number: the file, and what
    /// resolves to the outcome and the trace it left. A std mutex: held for
    /// a map update.
    transfers: Mutex<HashMap<u64, (FileName, oneshot::Receiver<Received>)>>,
}

/// The outcome of a background transfer, the trace it left, and how long
/// it took from the script's start of it to its end.
type Received = (Result<Downloaded, DownloadError>, Trace, Duration);

impl Node {
    /// Starts a node of `spec` listening on `listener`.
    pub fn start(spec: &NodeSpec, listener: BoxListener, environment: Environment) -> std::io::Result<Node> {
        let Role::Client { id, dir } = &spec.role else {
            let config = TrackerConfig {
                seed: spec.seed,
                limits: spec.limits,
                events: Some(environment.events.clone()),
                host: environment.host,
                ..TrackerConfig::default()
            };
            return Ok(Node::Tracker(Tracker::spawn(listener, config)?));
        };
        let folder = Folder::open(dir).map_err(std::io::Error::other)?;
        let faults = Arc::new(Faults::default());
        let config = ClientConfig {
            limits: spec.limits,
            events: Some(environment.events.clone()),
            host: environment.host.clone(),
            seed: spec.seed,
            ..ClientConfig::default()
        };
        let listener = Box::new(FaultyListener::new(listener, faults.clone()));
        let client = Arc::new(Client::start(ClientId(*id), folder, listener as BoxListener, config)?);
        let (crashing, crash_host) = (Arc::downgrade(&client), environment.crash.clone());
        let journal = environment.events.clone();
        faults.on_crash(Box::new(move |trace, file, sent| {
            if let Some(client) = crashing.upgrade() {
                // First, so the `killed` event the crash reports says where.
                journal.fault_struck(client.id(), trace, file, sent);
                client.crash(trace);
            }
            crash_host();
        }));
        let holder = environment.host.clone();
        faults.on_hold(Box::new(move |hold| holder.spawn(hold)));
        let sizing = Arc::downgrade(&client);
        // The file held whole, or the one a swarm download under way is
        // for: a downloader serves the pieces it has checked, faults and
        // all.
        faults.on_size(Box::new(move |file| {
            let client = sizing.upgrade()?;
            let folder = client.folder();
            let whole = std::fs::metadata(folder.path(file))
                .ok()
                .filter(std::fs::Metadata::is_file);
            whole
                .map(|metadata| metadata.len())
                .or_else(|| folder.swarm_part_len(file))
        }));
        Ok(Node::Client(ClientNode {
            client,
            faults,
            host: environment.host,
            crash_host: environment.crash,
            transfers: Mutex::default(),
        }))
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Node::Tracker(tracker) => tracker.local_addr(),
            Node::Client(node) => node.client.local_addr(),
        }
    }

    /// Whether the node stopped on its own (a fault crashed it).
    pub fn is_stopped(&self) -> bool {
        matches!(self, Node::Client(node) if node.client.is_stopped())
    }

    /// Stops the node and waits until its tasks are gone.
    pub async fn shutdown(&self) {
        match self {
            Node::Tracker(tracker) => tracker.shutdown().await,
            Node::Client(node) => node.client.shutdown().await,
        }
    }

    /// Carries out `command`, as part of the operation traced `trace`.
    pub async fn execute(&self, trace: Trace, command: Command) -> Reply {
        let Node::Client(node) = self else {
            return failed(NodeError::Misuse("a tracker takes no commands".into()));
        };
        traced(trace, node.execute(command)).await.0
    }
}

impl ClientNode {
    fn id(&self) -> u64 {
        self.client.id().0
    }

    async fn execute(&self, command: Command) -> Reply {
        let client = &self.client;
        match command {
            Command::Register { tracker } => done(client.register(tracker).await),
            Command::Upload { file } => done(client.upload(&file).await),
            Command::Download { file, swarm } => {
                let fetched = match swarm {
                    None => client.download(&file).await,
                    Some(options) => client.swarm_download(&file, options).await,
                };
                match fetched {
                    Ok(fetched) => Reply::Downloaded {
                        downloaded: fetched.downloaded,
                        took: None,
                    },
                    Err(error) => self.not_downloaded(error),
                }
            }
            Command::StartDownload { file, transfer, swarm } => match swarm {
                None => self.start_download(file, transfer).await,
                Some(options) => self.start_swarm(file, transfer, options).await,
            },
            Command::FinishDownload { transfer } => self.finish_download(transfer).await,
            Command::Leave => done(client.leave(Duration::ZERO).await),
            Command::Kill => {
                client.kill().await;
                (self.crash_host)();
                Reply::Done
            }
            Command::Rejoin { tracker } => self.rejoin(tracker).await,
            Command::Arm { fault } => {
                self.faults.arm(fault);
                Reply::Done
            }
            Command::SetRate { up, down } => {
                client.set_rate(up, down);
                Reply::Done
            }
        }
    }

    /// Locates `file`, then fetches it in the background.
    async fn start_download(&self, file: FileName, transfer: u64) -> Reply {
        let begun = Instant::now();
        let source = match self.client.first_source(&file).await {
            Ok(source) => source,
            Err(error) => return self.not_downloaded(error),
        };
        let (client, fetching) = (self.client.clone(), file.clone());
        self.run_aside(
            transfer,
            file,
            begun,
            async move { client.receive(&fetching, source).await },
        );
        Reply::Started { from: source.peer.0 }
    }

    /// Joins the swarm of `file` now, then fetches it in the background.
    async fn start_swarm(&self, file: FileName, transfer: u64, options: SwarmOptions) -> Reply {
        let begun = Instant::now();
        let start = match self.client.swarm_start(&file, options).await {
            Ok(start) => start,
            Err(error) => return self.not_downloaded(error),
        };
        let (peers, client) = (start.peers.len(), self.client.clone());
        self.run_aside(transfer, file, begun, async move { client.swarm_receive(start).await });
        Reply::Swarming { peers }
    }

    /// Runs the rest of a download of `file`, begun by the script at
    /// `begun`, in the background, on a trace of its own, as the runner's
    /// transfer number `transfer`: [`ClientNode::finish_download`] waits
    /// for it.
    fn run_aside(
        &self,
        transfer: u64,
        file: FileName,
        begun: Instant,
        download: impl Future<Output = Result<Downloaded, DownloadError>> + Send + 'static,
    ) {
        let (done, outcome) = oneshot::channel();
        let at = trace::next();
        self.host.spawn(Box::pin(async move {
            let (received, at) = traced(at, download).await;
            let _ = done.send((received, at, begun.elapsed()));
        }));
        self.transfers
            .lock()
            .expect("transfers poisoned")
            .insert(transfer, (file, outcome));
    }

    /// Waits for a background transfer, then announces its file.
    async fn finish_download(&self, transfer: u64) -> Reply {
        let pending = self.transfers.lock().expect("transfers poisoned").remove(&transfer);
        let Some((file, outcome)) = pending else {
            return failed(NodeError::Misuse(format!(
                "no transfer {transfer} on client {}",
                self.id()
            )));
        };
        let Ok((received, at, took)) = outcome.await else {
            return self.not_downloaded(ClientError::Stopped(self.client.id()).into());
        };
        let downloaded = match received {
            Ok(downloaded) => downloaded,
            Err(error) => return self.not_downloaded(error),
        };
        // A stored, verified file is a success even if the tracker cannot
        // be told (the session was lost or timed out meanwhile); a tracker
        // that refuses it (another client recorded other content under the
        // name) is the script's to hear of.
        match traced(at, self.client.announce(&file, downloaded.info)).await.0 {
            Ok(()) => {}
            Err(error @ (ClientError::NotRegistered(_) | ClientError::Session(_))) => {
                tracing::warn!(node = %self.id(), %error, "stored {file} but could not tell the tracker");
            }
            Err(error) => return failed(node_error(error)),
        }
        Reply::Downloaded {
            downloaded,
            took: Some(took),
        }
    }

    async fn rejoin(&self, tracker: Option<SocketAddr>) -> Reply {
        let Some(tracker) = tracker else {
            return Reply::Announced { files: 0 };
        };
        if let Err(error) = self.client.register(tracker).await {
            return failed(node_error(error));
        }
        match self.client.announce_held().await {
            Ok(files) => Reply::Announced { files: files.len() },
            Err(error) => failed(node_error(error)),
        }
    }

    /// A download that ended without the file: a result for the script,
    /// unless the client itself could not go on.
    fn not_downloaded(&self, error: DownloadError) -> Reply {
        match error {
            // The client was stopped, or is downloading the file already:
            // outcomes of the script's timing, not misuse.
            DownloadError::Client(ClientError::Stopped(_) | ClientError::Storage(StorageError::Busy { .. })) => {
                Reply::NotDownloaded {
                    error: error.to_string(),
                }
            }
            DownloadError::Client(error) => Reply::DownloadFailed {
                error: node_error(error),
            },
            other => Reply::NotDownloaded {
                error: other.to_string(),
            },
        }
    }
}

fn failed(error: NodeError) -> Reply {
    Reply::Failed { error }
}

/// `Done`, or the client's error as a script error.
fn done<T>(result: Result<T, ClientError>) -> Reply {
    match result {
        Ok(_) => Reply::Done,
        Err(error) => failed(node_error(error)),
    }
}

/// A client's error, as the script sees it.
fn node_error(error: ClientError) -> NodeError {
    match error {
        ClientError::NotRegistered(id) => NodeError::NotRegistered(id.0),
        ClientError::Stopped(id) => NodeError::Stopped(id.0),
        ClientError::Refused(reason) => NodeError::Refused(reason),
        ClientError::Session(
            error @ (SessionError::Lost { .. } | SessionError::Closed(_) | SessionError::OutOfStep(_)),
        ) => NodeError::SessionEnded(error.to_string()),
        ClientError::Session(error) => NodeError::Tracker(error.to_string()),
        error @ (ClientError::GoodbyeUnanswered(_) | ClientError::UnreachableAtTrackerFamily { .. }) => {
            NodeError::Tracker(error.to_string())
        }
        ClientError::Unexpected(reply) => NodeError::Tracker(format!("unexpected answer from the tracker: {reply:?}")),
        ClientError::Storage(error) => NodeError::Folder(error.to_string()),
        ClientError::Store(error) => NodeError::Folder(error.to_string()),
        ClientError::Changed(file) => NodeError::Folder(format!("{file} changed before it could be announced")),
    }
}

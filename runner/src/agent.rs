//! Process mode, the node's side: a node (tracker or client) in a `phile`
//! process of its own, driven by `phile-run --processes` over the process's
//! standard input and output.
//!
//! The runner writes one [`Request`] per line to the agent's stdin; the
//! agent writes one [`Line`] per line to its stdout: `ready` first, then
//! every event of its node the moment it happens, and a `reply` to each
//! request. One pipe carries both, in order, so when the runner has the
//! reply to a `sync` it has every event the agent reported before it: that
//! is how an operation's events are all in before the operation ends, and
//! why the log of a run in processes is the same as in one process.
//!
//! A crash is real: the process exits at once, without a goodbye, and its
//! operating system closes its sockets.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phile_core::events::{Event, EventSink, Node as NodeName};
use phile_core::host::OsHost;
use phile_core::{ClientId, FileName, Limits, Trace};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;

use crate::command::{Command, Reply};
use crate::event_log::Journal;
use crate::node::{Environment, Node, NodeSpec, Role};

/// A request from the runner.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the reply.
    pub id: u64,
    /// What to do.
    pub body: Body,
}

/// What the runner asks of an agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Carry out `command` as part of the operation traced `trace`.
    Run {
        /// The operation.
        trace: Trace,
        /// The command.
        command: Command,
    },
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
    Ready {
        /// Where it listens.
        addr: SocketAddr,
    },
    /// An event of the node, as its reporter gave it.
    Event {
        /// The operation that caused it.
        trace: Trace,
        /// The node.
        node: NodeName,
        /// What happened.
        event: Event,
    },
    /// A `kill_after` fault struck the client's transfer traced `trace`
    /// ([`Journal::fault_struck`]): told before the `killed` it causes.
    Struck {
        /// The transfer.
        trace: Trace,
        /// The client.
        client: ClientId,
        /// The file being sent.
        file: FileName,
        /// How many of its bytes had been sent.
        sent: u64,
    },
    /// The answer to request `id`.
    Reply {
        /// The request's id.
        id: u64,
        /// What the node answered.
        reply: Reply,
    },
}

/// How an agent is started: the options of the hidden `phile agent`
/// command, which [`AgentArgs::to_args`] writes and the command's parser
/// reads back.
#[derive(Clone, Debug, clap::Args)]
pub struct AgentArgs {
    /// Run client ID (default: a tracker).
    #[arg(long)]
    pub client: Option<u64>,
    /// The client's folder (already prepared by the runner).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Where to listen.
    #[arg(long)]
    pub listen: SocketAddr,
    /// The seed of the node's random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The idle timeout, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    pub idle_timeout_ms: u64,
}

impl AgentArgs {
    /// These options as the command line of `phile agent`.
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            self.listen.to_string(),
            "--seed".to_owned(),
            self.seed.to_string(),
            "--idle-timeout-ms".to_owned(),
            self.idle_timeout_ms.to_string(),
        ];
        if let Some(client) = self.client {
            args.extend(["--client".to_owned(), client.to_string()]);
        }
        if let Some(dir) = &self.dir {
            args.extend(["--dir".to_owned(), dir.display().to_string()]);
        }
        args
    }
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
    fn record(&self, trace: Trace, node: NodeName, event: Event) {
        self.send(&Line::Event { trace, node, event });
    }
}

impl Journal for Out {
    fn fault_struck(&self, client: ClientId, trace: Trace, file: FileName, sent: u64) {
        self.send(&Line::Struck {
            trace,
            client,
            file,
            sent,
        });
    }
}

/// Runs an agent until the runner says to stop (or goes away).
pub async fn serve(args: AgentArgs) -> anyhow::Result<()> {
    let out = Out(Arc::new(Mutex::new(std::io::stdout())));
    let role = match (args.client, args.dir) {
        (None, _) => Role::Tracker,
        (Some(id), Some(dir)) => Role::Client { id, dir },
        (Some(id), None) => anyhow::bail!("client {id} needs a folder: give --dir"),
    };
    let spec = NodeSpec {
        role,
        seed: args.seed,
        limits: Limits::default().with_idle_timeout(Duration::from_millis(args.idle_timeout_ms)),
    };
    let environment = Environment {
        host: OsHost::shared(),
        events: Arc::new(out.clone()),
        // Every event is on the pipe already (each line is flushed): a
        // crash is the process ending at once.
        crash: Arc::new(|| std::process::exit(0)),
    };
    let listener = TcpListener::bind(args.listen).await?;
    let node = Arc::new(Node::start(&spec, listener.into(), environment)?);
    out.send(&Line::Ready { addr: node.addr() });
    let mut requests = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        // A crash ends the process from where it strikes (`crash` above);
        // a `leave` ends it once its reply is out.
        let Some(line) = requests.next_line().await? else { break };
        let request: Request = serde_json::from_str(&line)?;
        let (trace, command) = match request.body {
            Body::Shutdown => break,
            Body::Sync => {
                out.send(&Line::Reply {
                    id: request.id,
                    reply: Reply::Done,
                });
                continue;
            }
            Body::Run { trace, command } => (trace, command),
        };
        let (node, out) = (node.clone(), out.clone());
        tokio::spawn(async move {
            let ends_the_process = matches!(command, Command::Kill | Command::Leave);
            let reply = node.execute(trace, command).await;
            out.send(&Line::Reply { id: request.id, reply });
            if ends_the_process || node.is_stopped() {
                std::process::exit(0);
            }
        });
    }
    node.shutdown().await;
    Ok(())
}

//! Nodes as `phile agent` processes (`phile-run --processes`), the
//! runner's side: starting them, writing requests to their standard input,
//! reading their events and replies from their standard output. The node's
//! side is [`crate::agent`].

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phile_core::Trace;

use super::{loopback, past_time_limit, Backend, Deadline, FileBudget, NodeKey, StartError, WallTime};
use crate::agent::{AgentArgs, Body, Line, Request};
use crate::command::{Command, Reply};
use crate::event_log::Journal;
use crate::node::{NodeSpec, Role};

/// Nodes in processes of their own.
pub struct Processes {
    /// The `phile` binary that runs `phile agent`.
    phile: PathBuf,
    /// Every node started, by key.
    agents: Vec<Agent>,
    /// Where events go.
    events: Arc<dyn Journal>,
    /// Bind free ports instead of the scripted ones.
    ephemeral_ports: bool,
    /// When the run must stop.
    deadline: Deadline,
    /// The wall clock of the run.
    time: WallTime,
    /// File descriptors left for more nodes.
    files: FileBudget,
}

impl Processes {
    /// A backend with no nodes yet, running `phile` for each node.
    pub fn new(phile: PathBuf, events: Arc<dyn Journal>, ephemeral_ports: bool, deadline: Deadline) -> Processes {
        super::raise_file_limit();
        Processes {
            phile,
            agents: Vec::new(),
            events,
            ephemeral_ports,
            deadline,
            time: WallTime::starting(deadline),
            files: FileBudget::default(),
        }
    }

    fn agent(&self, node: NodeKey) -> &Agent {
        &self.agents[node.0]
    }
}

impl Backend for Processes {
    fn start(&mut self, spec: &NodeSpec, port: u16) -> Result<NodeKey, StartError> {
        self.files.reserve_node()?;
        let (client, dir) = match &spec.role {
            Role::Tracker => (None, None),
            Role::Client { id, dir } => (Some(*id), Some(dir.clone())),
        };
        let args = AgentArgs {
            client,
            dir,
            listen: loopback(port, self.ephemeral_ports),
            seed: spec.seed,
            idle_timeout_ms: spec.limits.idle_timeout.as_millis() as u64,
        };
        let agent = Agent::spawn(&self.phile, &args, self.events.clone()).map_err(|error| {
            StartError::Other(format!(
                "cannot start a node on port {port} as a process: {error} (is the port in use? try --ephemeral-ports)"
            ))
        })?;
        self.agents.push(agent);
        Ok(NodeKey(self.agents.len() - 1))
    }

    fn addr(&self, node: NodeKey) -> SocketAddr {
        self.agent(node).addr
    }

    fn describe(&self, node: NodeKey) -> String {
        format!(" (process {})", self.agent(node).pid())
    }

    fn call(&mut self, node: NodeKey, trace: Trace, command: Command) -> Reply {
        let kill = command == Command::Kill;
        let replied = self.agent(node).start(Body::Run { trace, command });
        match replied.recv_timeout(self.deadline.left()) {
            Ok(reply) => reply,
            Err(RecvTimeoutError::Timeout) => past_time_limit(self.deadline.limit),
            // The process ended without answering: it crashed.
            Err(RecvTimeoutError::Disconnected) => super::gone(kill, self.agent(node).client),
        }
    }

    fn is_down(&self, node: NodeKey) -> bool {
        self.agent(node).is_gone()
    }

    fn settle(&mut self, _done: &dyn Fn() -> bool) {
        for agent in &self.agents {
            agent.sync();
        }
    }

    fn sleep(&mut self, duration: Duration) {
        self.time.sleep(duration);
    }

    fn now(&self) -> Duration {
        self.time.now()
    }

    fn clock(&self) -> crate::event_log::Clock {
        self.time.clock()
    }

    fn stop(&mut self, node: NodeKey) {
        self.agent(node).shutdown();
    }
}

/// A node running as a `phile agent` process.
struct Agent {
    /// The client's id (0 for a tracker), for error messages.
    client: u64,
    /// The process (killed, or waited for, at the end).
    child: Mutex<Child>,
    /// Where requests go. A std mutex: one whole line at a time.
    requests: Mutex<ChildStdin>,
    /// Requests waiting for their reply, by id.
    pending: Arc<Mutex<HashMap<u64, Sender<Reply>>>>,
    /// The next request's id.
    next_id: AtomicU64,
    /// Set once the process's output has ended: it exited or was killed.
    gone: Arc<AtomicBool>,
    /// Where the node listens.
    addr: SocketAddr,
}

impl Agent {
    /// Starts `phile agent ARGS`, waits until its node is up, and feeds its
    /// events to `events` from then on.
    fn spawn(phile: &Path, args: &AgentArgs, events: Arc<dyn Journal>) -> Result<Agent, String> {
        let mut child = Process::new(phile)
            .arg("agent")
            .args(args.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start {} (build it with cargo build): {e}", phile.display()))?;
        let requests = child.stdin.take().expect("stdin is piped");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
        let addr = match lines
            .next()
            .map(|line| line.map(|text| serde_json::from_str::<Line>(&text)))
        {
            Some(Ok(Ok(Line::Ready { addr }))) => addr,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the node process did not start: {other:?}"));
            }
        };
        let pending: Arc<Mutex<HashMap<u64, Sender<Reply>>>> = Arc::default();
        let gone = Arc::new(AtomicBool::new(false));
        {
            let (pending, gone) = (pending.clone(), gone.clone());
            std::thread::spawn(move || read_lines(lines, events, pending, gone));
        }
        Ok(Agent {
            client: args.client.unwrap_or(0),
            child: Mutex::new(child),
            requests: Mutex::new(requests),
            pending,
            next_id: AtomicU64::new(1),
            gone,
            addr,
        })
    }

    fn pid(&self) -> u32 {
        self.child.lock().expect("child poisoned").id()
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Sends `body`; the reply comes on the returned channel, which closes
    /// without one if the process ends first.
    fn start(&self, body: Body) -> Receiver<Reply> {
        let (reply, replied) = channel();
        if self.is_gone() {
            return replied;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().expect("pending poisoned").insert(id, reply);
        // The reader may have finished (and cleared `pending`) just now.
        if self.is_gone() {
            self.pending.lock().expect("pending poisoned").remove(&id);
            return replied;
        }
        let line = serde_json::to_string(&Request { id, body }).expect("requests always serialise");
        let mut requests = self.requests.lock().expect("requests poisoned");
        if writeln!(requests, "{line}").and_then(|()| requests.flush()).is_err() {
            self.pending.lock().expect("pending poisoned").remove(&id);
        }
        replied
    }

    /// Waits until every event the agent reported so far is in the log.
    fn sync(&self) {
        if !self.is_gone() {
            let _ = self.start(Body::Sync).recv();
        }
    }

    /// Asks the process to stop, and waits until it has.
    fn shutdown(&self) {
        self.start(Body::Shutdown);
        let _ = self.child.lock().expect("child poisoned").wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let mut child = self.child.lock().expect("child poisoned");
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The reader thread: events into the log, replies to whoever waits.
fn read_lines(
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    events: Arc<dyn Journal>,
    pending: Arc<Mutex<HashMap<u64, Sender<Reply>>>>,
    gone: Arc<AtomicBool>,
) {
    for line in lines {
        let Ok(text) = line else { break };
        match serde_json::from_str::<Line>(&text) {
            Ok(Line::Event { trace, node, event }) => events.record(trace, node, event),
            Ok(Line::Struck {
                trace,
                client,
                file,
                sent,
            }) => events.fault_struck(client, trace, file, sent),
            Ok(Line::Reply { id, reply }) => {
                if let Some(waiting) = pending.lock().expect("pending poisoned").remove(&id) {
                    let _ = waiting.send(reply);
                }
            }
            Ok(Line::Ready { .. }) => {}
            // A line we cannot read may be the reply someone waits for:
            // waiting on would hang the run for good. The pipe no longer
            // speaks our protocol, so the node counts as gone.
            Err(error) => {
                tracing::error!(%error, "unreadable line from a node process, which now counts as gone: {text}");
                break;
            }
        }
    }
    gone.store(true, Ordering::SeqCst);
    // Whoever still waits learns that no reply will come.
    pending.lock().expect("pending poisoned").clear();
}

//! The runner's side of process mode: a `phile agent` child process, its
//! requests and replies, and its events fed into the event log.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdin, Command as Process, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use phile_core::events::EventSink;
use phile_core::Trace;

use crate::agent::{Command, Line, Outcome, Request};
use crate::event_log::EventLog;

/// A reply: the trace as the agent left it, and the outcome.
pub type Reply = (Trace, Outcome);

/// A node running as a `phile agent` process.
pub struct Agent {
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
    /// events to `log` from then on.
    pub fn spawn(phile: &Path, args: &[String], log: Arc<EventLog>) -> Result<Agent, String> {
        let mut child = Process::new(phile)
            .arg("agent")
            .args(args)
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
            std::thread::spawn(move || read_lines(lines, log, pending, gone));
        }
        Ok(Agent {
            child: Mutex::new(child),
            requests: Mutex::new(requests),
            pending,
            next_id: AtomicU64::new(1),
            gone,
            addr,
        })
    }

    /// Where the node listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.lock().expect("child poisoned").id()
    }

    /// Whether the process has ended.
    pub fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }

    /// Sends `command`; the reply comes on the returned channel, which
    /// closes without one if the process ends first.
    pub fn start(&self, command: Command) -> Receiver<Reply> {
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
        let line = serde_json::to_string(&Request { id, command }).expect("requests always serialise");
        let mut requests = self.requests.lock().expect("requests poisoned");
        if writeln!(requests, "{line}").and_then(|()| requests.flush()).is_err() {
            self.pending.lock().expect("pending poisoned").remove(&id);
        }
        replied
    }

    /// Sends `command` and waits for the reply; `None` if the process ended.
    pub fn call(&self, command: Command) -> Option<Reply> {
        self.start(command).recv().ok()
    }

    /// Waits until every event the agent reported so far is in the log.
    pub fn sync(&self) {
        if !self.is_gone() {
            let _ = self.call(Command::Sync);
        }
    }

    /// Kills the process outright: a crash.
    pub fn kill(&self) {
        let mut child = self.child.lock().expect("child poisoned");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Asks the process to stop, and waits until it has.
    pub fn shutdown(&self) {
        self.start(Command::Shutdown);
        let _ = self.child.lock().expect("child poisoned").wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The reader thread: events into the log, replies to whoever waits.
fn read_lines(
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    log: Arc<EventLog>,
    pending: Arc<Mutex<HashMap<u64, Sender<Reply>>>>,
    gone: Arc<AtomicBool>,
) {
    for line in lines {
        let Ok(text) = line else { break };
        match serde_json::from_str::<Line>(&text) {
            Ok(Line::Event { trace, node, event }) => log.record(trace, node, event),
            Ok(Line::Reply { id, trace, outcome }) => {
                if let Some(waiting) = pending.lock().expect("pending poisoned").remove(&id) {
                    let _ = waiting.send((trace, outcome));
                }
            }
            Ok(Line::Ready { .. }) => {}
            Err(error) => tracing::warn!(%error, "unreadable line from a node process: {text}"),
        }
    }
    gone.store(true, Ordering::SeqCst);
    // Whoever still waits learns that no reply will come.
    pending.lock().expect("pending poisoned").clear();
}

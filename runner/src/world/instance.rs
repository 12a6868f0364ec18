//! A node as the world drives it: in this process (tasks on the runtime) or
//! in a `phile agent` process of its own (`--processes`). Both offer the
//! same steps with the same traces, so both write the same event log.

use std::net::SocketAddr;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use phile_core::client::{DownloadError, Downloaded, Source};
use phile_core::faults::Fault;
use phile_core::storage::Folder;
use phile_core::trace::traced;
use phile_core::{Client, FileInfo, FileName, Trace, Tracker};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::remote::{Agent, Reply};
use crate::agent::{Command, Failure, Outcome};

/// A client, here or in its own process.
#[derive(Clone)]
pub enum Instance {
    /// Tasks of this process.
    Local(Arc<Client>),
    /// A `phile agent` process.
    Remote(Arc<RemoteClient>),
}

/// A client in a process of its own.
pub struct RemoteClient {
    /// Its id.
    pub id: u64,
    /// The process.
    pub agent: Agent,
    /// Its folder, read and written by the runner directly (same machine).
    pub folder: Folder,
}

/// A download under way in the background.
pub enum Pending {
    Local(JoinHandle<(Result<Downloaded, DownloadError>, Trace)>),
    Remote(Receiver<Reply>, Trace),
}

/// A tracker, here or in its own process.
pub enum TrackerInstance {
    Local(Tracker),
    Remote(Agent),
}

impl TrackerInstance {
    pub fn addr(&self) -> SocketAddr {
        match self {
            TrackerInstance::Local(tracker) => tracker.local_addr(),
            TrackerInstance::Remote(agent) => agent.addr(),
        }
    }

    pub fn sync(&self) {
        if let TrackerInstance::Remote(agent) = self {
            agent.sync();
        }
    }

    /// " (process N)" in process mode, for the step lines.
    pub fn process(&self) -> String {
        match self {
            TrackerInstance::Local(_) => String::new(),
            TrackerInstance::Remote(agent) => format!(" (process {})", agent.pid()),
        }
    }

    pub fn shutdown(&self, runtime: &Handle) {
        match self {
            TrackerInstance::Local(tracker) => runtime.block_on(tracker.shutdown()),
            TrackerInstance::Remote(agent) => agent.shutdown(),
        }
    }
}

impl RemoteClient {
    /// Runs `command` with `trace`, moving `trace` on as the agent did.
    fn call(&self, command: impl FnOnce(Trace) -> Command, trace: &mut Trace) -> Result<Outcome, String> {
        let (after, outcome) = self.agent.call(command(*trace)).ok_or_else(|| self.stopped())?;
        *trace = after;
        Ok(outcome)
    }

    /// Runs a command that carries no trace; `Ok` unless it failed.
    fn run(&self, command: Command) -> Result<(), String> {
        self.done(
            self.agent
                .call(command)
                .map(|(_, outcome)| outcome)
                .ok_or_else(|| self.stopped()),
        )
    }

    fn stopped(&self) -> String {
        format!("client {} stopped", self.id)
    }

    fn done(&self, outcome: Result<Outcome, String>) -> Result<(), String> {
        match outcome? {
            Outcome::Error(error) => Err(error),
            _ => Ok(()),
        }
    }

    fn download_result(&self, reply: Option<Reply>) -> (Result<Downloaded, Failure>, Option<Trace>) {
        match reply {
            Some((trace, Outcome::Downloaded(done))) => (Ok(done), Some(trace)),
            Some((trace, Outcome::NotDownloaded(failure))) => (Err(failure), Some(trace)),
            Some((trace, other)) => (
                Err(Failure::Client(format!("unexpected answer {other:?}"))),
                Some(trace),
            ),
            None => (Err(Failure::Expected(self.stopped())), None),
        }
    }
}

impl Instance {
    pub fn folder(&self) -> &Folder {
        match self {
            Instance::Local(client) => client.folder(),
            Instance::Remote(remote) => &remote.folder,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            Instance::Local(client) => client.local_addr(),
            Instance::Remote(remote) => remote.agent.addr(),
        }
    }

    /// " (process N)" in process mode, for the step lines.
    pub fn process(&self) -> String {
        match self {
            Instance::Local(_) => String::new(),
            Instance::Remote(remote) => format!(" (process {})", remote.agent.pid()),
        }
    }

    /// Whether it stopped on its own (a fault crashed it).
    pub fn is_stopped(&self) -> bool {
        match self {
            Instance::Local(client) => client.is_stopped(),
            Instance::Remote(remote) => remote.agent.is_gone(),
        }
    }

    /// Waits until every event it reported is in the log.
    pub fn sync(&self) {
        if let Instance::Remote(remote) = self {
            remote.agent.sync();
        }
    }

    /// Creates or replaces `file` with `content`, through the node itself,
    /// so that it knows the file's SHA-1 as it would after writing it.
    pub fn write(&self, runtime: &Handle, file: &FileName, content: Vec<u8>) -> Result<(), String> {
        match self {
            Instance::Local(client) => runtime
                .block_on(client.folder().write(file, content))
                .map(drop)
                .map_err(|e| e.to_string()),
            Instance::Remote(remote) => {
                let command = Command::Write {
                    file: file.clone(),
                    content: hex::encode(content),
                };
                remote.run(command)
            }
        }
    }

    /// `write_random`, through the node itself.
    pub fn write_random(&self, runtime: &Handle, file: &FileName, len: u64, seed: u64) -> Result<(), String> {
        match self {
            Instance::Local(client) => {
                let fill = super::random_content(seed, file, len);
                runtime
                    .block_on(client.folder().write_with(file, fill))
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            Instance::Remote(remote) => {
                let command = Command::WriteRandom {
                    file: file.clone(),
                    len,
                    seed,
                };
                remote.run(command)
            }
        }
    }

    pub fn register(&self, runtime: &Handle, tracker: SocketAddr, trace: &mut Trace) -> Result<(), String> {
        match self {
            Instance::Local(client) => {
                in_operation(runtime, trace, client.register(tracker)).map_err(|e| e.to_string())
            }
            Instance::Remote(remote) => remote.done(remote.call(|trace| Command::Register { tracker, trace }, trace)),
        }
    }

    pub fn is_registered(&self, runtime: &Handle) -> bool {
        match self {
            Instance::Local(client) => runtime.block_on(client.is_registered()),
            Instance::Remote(remote) => {
                matches!(remote.agent.call(Command::IsRegistered), Some((_, Outcome::Yes(true))))
            }
        }
    }

    pub fn upload(&self, runtime: &Handle, file: &FileName, trace: &mut Trace) -> Result<(), String> {
        match self {
            Instance::Local(client) => in_operation(runtime, trace, client.upload(file))
                .map(drop)
                .map_err(|e| e.to_string()),
            Instance::Remote(remote) => {
                let file = file.clone();
                remote.done(remote.call(|trace| Command::Upload { file, trace }, trace))
            }
        }
    }

    pub fn download(&self, runtime: &Handle, file: &FileName, trace: &mut Trace) -> Result<Downloaded, Failure> {
        match self {
            Instance::Local(client) => in_operation(runtime, trace, async {
                let fetched = client.download(file).await?;
                if !fetched.announced {
                    return Err(DownloadError::Client(phile_core::client::ClientError::NotRegistered(
                        client.id(),
                    )));
                }
                Ok(fetched.downloaded)
            })
            .map_err(Failure::from),
            Instance::Remote(remote) => {
                let command = Command::Download {
                    file: file.clone(),
                    trace: *trace,
                };
                let (result, after) = remote.download_result(remote.agent.call(command));
                *trace = after.unwrap_or(*trace);
                result
            }
        }
    }

    pub fn locate(&self, runtime: &Handle, file: &FileName, trace: &mut Trace) -> Result<Option<Source>, String> {
        match self {
            Instance::Local(client) => {
                in_operation(runtime, trace, client.locate(file, &[])).map_err(|e| e.to_string())
            }
            Instance::Remote(remote) => {
                let file = file.clone();
                match remote.call(|trace| Command::Locate { file, trace }, trace)? {
                    Outcome::Source(source) => Ok(source),
                    Outcome::Error(error) => Err(error),
                    other => Err(format!("unexpected answer {other:?}")),
                }
            }
        }
    }

    /// Starts fetching `file` from `source` in the background.
    pub fn receive(&self, runtime: &Handle, file: &FileName, source: Source, trace: Trace) -> Pending {
        match self {
            Instance::Local(client) => {
                let (client, file) = (client.clone(), file.clone());
                Pending::Local(runtime.spawn(async move { traced(trace, client.receive(&file, source)).await }))
            }
            Instance::Remote(remote) => {
                let command = Command::Receive {
                    file: file.clone(),
                    source,
                    trace,
                };
                Pending::Remote(remote.agent.start(command), trace)
            }
        }
    }

    /// Waits for a background fetch.
    pub fn finish(
        &self,
        runtime: &Handle,
        pending: &mut Pending,
    ) -> Result<(Result<Downloaded, Failure>, Trace), String> {
        match (self, pending) {
            (Instance::Local(_), Pending::Local(task)) => {
                let (result, trace) = runtime
                    .block_on(task)
                    .map_err(|e| format!("the download task failed: {e}"))?;
                Ok((result.map_err(Failure::from), trace))
            }
            (Instance::Remote(remote), Pending::Remote(replied, trace)) => {
                let (result, after) = remote.download_result(replied.recv().ok());
                Ok((result, after.unwrap_or(*trace)))
            }
            _ => Err("a transfer outlived its client".into()),
        }
    }

    pub fn announce(&self, runtime: &Handle, file: &FileName, info: FileInfo, trace: &mut Trace) -> Result<(), String> {
        match self {
            Instance::Local(client) => {
                in_operation(runtime, trace, client.announce(file, info)).map_err(|e| e.to_string())
            }
            Instance::Remote(remote) => {
                let file = file.clone();
                remote.done(remote.call(|trace| Command::Announce { file, info, trace }, trace))
            }
        }
    }

    pub fn announce_held(&self, runtime: &Handle, trace: &mut Trace) -> Result<usize, String> {
        match self {
            Instance::Local(client) => in_operation(runtime, trace, client.announce_held())
                .map(|files| files.len())
                .map_err(|e| e.to_string()),
            Instance::Remote(remote) => match remote.call(|trace| Command::AnnounceHeld { trace }, trace)? {
                Outcome::Files(count) => Ok(count),
                Outcome::Error(error) => Err(error),
                other => Err(format!("unexpected answer {other:?}")),
            },
        }
    }

    pub fn leave(&self, runtime: &Handle, trace: &mut Trace) -> Result<(), String> {
        match self {
            Instance::Local(client) => {
                in_operation(runtime, trace, client.leave(std::time::Duration::ZERO)).map_err(|e| e.to_string())
            }
            Instance::Remote(remote) => {
                let left = remote.done(remote.call(|trace| Command::Leave { trace }, trace));
                remote.agent.shutdown();
                left
            }
        }
    }

    /// A crash: in process mode, the process is killed (and the runner
    /// reports `killed` for it).
    pub fn kill(&self, runtime: &Handle, log: &crate::event_log::EventLog, trace: &mut Trace) {
        match self {
            Instance::Local(client) => in_operation(runtime, trace, client.kill()),
            Instance::Remote(remote) => {
                let killed = phile_core::events::Event::Killed { file: None, sent: None };
                let node = phile_core::events::Node::Client(phile_core::ClientId(remote.id));
                phile_core::events::EventSink::record(log, trace.advance(), node, killed);
                remote.agent.kill()
            }
        }
    }

    pub fn arm(&self, fault: Fault) {
        match self {
            Instance::Local(client) => client.arm(fault),
            Instance::Remote(remote) => {
                remote.agent.call(Command::Arm { fault });
            }
        }
    }

    pub fn shutdown(&self, runtime: &Handle) {
        match self {
            Instance::Local(client) => runtime.block_on(client.shutdown()),
            Instance::Remote(remote) => remote.agent.shutdown(),
        }
    }
}

/// Runs `operation` on `runtime` as part of the operation traced `trace`,
/// moving `trace` on as it went.
fn in_operation<F: std::future::Future>(runtime: &Handle, trace: &mut Trace, operation: F) -> F::Output {
    let (output, after) = runtime.block_on(traced(*trace, operation));
    *trace = after;
    output
}

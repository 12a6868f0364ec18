//! Downloads: `c.download`, `c.start_download`, `x.wait`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use phile_core::client::Downloaded;
use phile_core::{FileInfo, FileName, Trace};

use super::{bytes, explain, parse_name, ClientRef, Verdict, World};
use crate::backend::NodeKey;
use crate::command::{Command, NodeError, Reply};

/// The outcome of one download, as the script sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadResult {
    /// The file asked for.
    pub file: String,
    /// What happened.
    pub outcome: Result<Delivered, String>,
}

/// A successful download.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivered {
    /// The peer that delivered.
    pub from: u64,
    /// Size and SHA-1.
    pub info: FileInfo,
    /// Seconds it took, virtual under simulation (never logged).
    pub secs: f64,
}

/// A download started by `start_download`, as the script holds it.
#[derive(Clone)]
pub struct Transfer(Rc<RefCell<TransferState>>);

enum TransferState {
    /// Fetching in the background, as the node's transfer `number`, within
    /// the operation traced `trace` (still open).
    Running {
        c: ClientRef,
        node: NodeKey,
        file: FileName,
        number: u64,
        trace: Trace,
        started: Duration,
    },
    /// Waited for: its result.
    Done(DownloadResult),
    /// Waited for, and the wait was a script error: the same error again.
    Broken(String),
}

impl World {
    /// `c.download(name)`.
    pub fn download(&self, c: &ClientRef, name: &str) -> Verdict<DownloadResult> {
        let file = parse_name(name)?;
        let node = self.live(c)?;
        let started = self.now();
        let reply = self.operation(|trace| self.call(node, trace, Command::Download { file: file.clone() }))?;
        self.conclude(c, file, reply, started)
    }

    /// Turns a node's reply to a download into the script's result, or a
    /// script error when the client itself failed.
    fn conclude(&self, c: &ClientRef, file: FileName, reply: Reply, started: Duration) -> Verdict<DownloadResult> {
        self.count(|s| s.steps += 1);
        let outcome = match reply {
            Reply::Downloaded {
                downloaded: Downloaded { from, info },
            } => {
                let secs = (self.now() - started).as_secs_f64();
                self.count(|s| s.downloads_ok += 1);
                let sha1 = info.sha1.to_string();
                let (size, ms) = (bytes(info.size), secs * 1e3);
                self.say(
                    c.id,
                    format_args!("download {file}: ok from {from} ({size}, sha1 {sha1:.8}…, {ms:.1} ms)"),
                );
                Ok(Delivered {
                    from: from.0,
                    info,
                    secs,
                })
            }
            // A downloader that went down while its transfer ran.
            Reply::Failed {
                error: error @ NodeError::Stopped(_),
            } => {
                let error = error.to_string();
                self.count(|s| s.downloads_failed += 1);
                self.say(c.id, format_args!("download {file}: failed: {error}"));
                Err(error)
            }
            Reply::NotDownloaded { error } => {
                self.count(|s| s.downloads_failed += 1);
                self.say(c.id, format_args!("download {file}: failed: {error}"));
                Err(error)
            }
            Reply::Failed { error } => return Err(explain(format!("client {} cannot download {file}", c.id), error)),
            other => return Err(format!("client {} answered {other:?} to a download", c.id)),
        };
        Ok(DownloadResult {
            file: file.to_string(),
            outcome,
        })
    }

    /// `c.start_download(name)`: asks the tracker now, fetches in the
    /// background; the file is announced when the script waits for it.
    pub fn start_download(&self, c: &ClientRef, name: &str) -> Verdict<Transfer> {
        let file = parse_name(name)?;
        let node = self.live(c)?;
        let started = self.now();
        let number = self.next_transfer.replace(self.next_transfer.get() + 1);
        let trace = self.log.begin();
        let command = Command::StartDownload {
            file: file.clone(),
            transfer: number,
        };
        let state = match self.call(node, trace, command) {
            Reply::Started { from } => {
                self.say(c.id, format_args!("start download {file} from {from}"));
                TransferState::Running {
                    c: *c,
                    node,
                    file,
                    number,
                    trace,
                    started,
                }
            }
            reply => {
                self.end(trace)?;
                TransferState::Done(self.conclude(c, file, reply, started)?)
            }
        };
        let transfer = Transfer(Rc::new(RefCell::new(state)));
        self.transfers.borrow_mut().push(transfer.clone());
        Ok(transfer)
    }

    /// `x.wait()`: the transfer's result, announcing its file first.
    pub fn wait(&self, transfer: &Transfer) -> Verdict<DownloadResult> {
        let mut state = transfer.0.borrow_mut();
        let (c, node, file, number, trace, started) = match &*state {
            TransferState::Done(result) => return Ok(result.clone()),
            TransferState::Broken(error) => return Err(error.clone()),
            TransferState::Running {
                c,
                node,
                file,
                number,
                trace,
                started,
            } => (*c, *node, file.clone(), *number, *trace, *started),
        };
        let reply = self.call(node, trace, Command::FinishDownload { transfer: number });
        let result = self.end(trace).and_then(|()| self.conclude(&c, file, reply, started));
        // Whatever happened, the transfer is over: never wait on it twice.
        *state = match &result {
            Ok(done) => TransferState::Done(done.clone()),
            Err(error) => TransferState::Broken(error.clone()),
        };
        result
    }

    /// Time since the run started: virtual under simulation.
    pub(super) fn now(&self) -> Duration {
        self.backend.borrow().now()
    }
}

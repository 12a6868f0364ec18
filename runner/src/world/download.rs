//! Downloads: `c.download`, `c.start_download`, `x.wait`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use phile_core::client::{DownloadError, Downloaded};
use phile_core::events::{Event, EventSink, Node};
use phile_core::{ClientId, FileInfo, FileName};

use super::instance::{Instance, Pending};
use super::{bytes, parse_name, ClientRef, Verdict, World};
use crate::agent::Failure;

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
    /// Wall-clock seconds it took (never logged).
    pub secs: f64,
}

/// A download started by `start_download`, as the script holds it.
#[derive(Clone)]
pub struct Transfer(Rc<RefCell<TransferState>>);

enum TransferState {
    /// Fetching in the background.
    Running {
        /// The downloader, and the instance that started the transfer.
        c: ClientRef,
        client: Instance,
        file: FileName,
        started: Instant,
        pending: Pending,
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
        let client = self.registered(c)?;
        let started = Instant::now();
        let outcome = self.operation(|trace| client.download(&self.runtime, &file, trace));
        self.conclude(c, file, outcome, started)
    }

    /// Turns a download's outcome into the script's result, or a script
    /// error when the client itself failed.
    fn conclude(
        &self,
        c: &ClientRef,
        file: FileName,
        outcome: Result<Downloaded, Failure>,
        started: Instant,
    ) -> Verdict<DownloadResult> {
        self.count(|s| s.steps += 1);
        let outcome = match outcome {
            Ok(Downloaded { from, info }) => {
                let secs = started.elapsed().as_secs_f64();
                self.count(|s| s.downloads_ok += 1);
                let sha1 = info.sha1.to_string();
                let ms = secs * 1e3;
                let size = bytes(info.size);
                self.say(
                    c.id,
                    format_args!(
                        "download {file}: ok from {from} ({size}, sha1 {:.8}…, {ms:.1} ms)",
                        sha1
                    ),
                );
                Ok(Delivered {
                    from: from.0,
                    info,
                    secs,
                })
            }
            Err(Failure::Client(error)) => {
                return Err(format!("client {} cannot download {file}: {error}", c.id));
            }
            Err(Failure::Expected(error)) => {
                self.count(|s| s.downloads_failed += 1);
                self.say(c.id, format_args!("download {file}: failed: {error}"));
                Err(error)
            }
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
        let client = self.registered(c)?;
        let started = Instant::now();
        let mut trace = self.log.begin();
        let state = match client.locate(&self.runtime, &file, &mut trace) {
            Ok(Some(source)) => {
                let pending = client.receive(&self.runtime, &file, source, trace);
                self.say(c.id, format_args!("start download {file} from {}", source.peer));
                TransferState::Running {
                    c: *c,
                    client,
                    file,
                    started,
                    pending,
                }
            }
            Ok(None) => {
                // What the client reports when no holder is left.
                let error = DownloadError::NoPeer(file.clone()).to_string();
                let event = Event::DownloadFailed {
                    file: file.clone(),
                    error: error.clone(),
                };
                self.log.record(trace.advance(), Node::Client(ClientId(c.id)), event);
                self.end(trace);
                TransferState::Done(self.conclude(c, file, Err(Failure::Expected(error)), started)?)
            }
            Err(error) => {
                self.end(trace);
                return Err(format!("client {} cannot download {file}: {error}", c.id));
            }
        };
        let transfer = Transfer(Rc::new(RefCell::new(state)));
        self.transfers.borrow_mut().push(transfer.clone());
        Ok(transfer)
    }

    /// `x.wait()`: the transfer's result, announcing its file first.
    pub fn wait(&self, transfer: &Transfer) -> Verdict<DownloadResult> {
        let mut state = transfer.0.borrow_mut();
        let (c, client, file, started, pending) = match &mut *state {
            TransferState::Done(result) => return Ok(result.clone()),
            TransferState::Broken(error) => return Err(error.clone()),
            TransferState::Running {
                c,
                client,
                file,
                started,
                pending,
            } => (*c, client.clone(), file.clone(), *started, pending),
        };
        let result = client.finish(&self.runtime, pending).and_then(|(received, mut trace)| {
            let outcome = match received {
                Ok(downloaded) => client
                    .announce(&self.runtime, &file, downloaded.info, &mut trace)
                    .map(|()| downloaded)
                    .map_err(Failure::Client),
                Err(failure) => Err(failure),
            };
            self.end(trace);
            self.conclude(&c, file, outcome, started)
        });
        // Whatever happened, the transfer is over: never wait on it twice.
        *state = match &result {
            Ok(done) => TransferState::Done(done.clone()),
            Err(error) => TransferState::Broken(error.clone()),
        };
        result
    }
}

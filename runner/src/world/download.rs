//! Downloads: `c.download`, `c.start_download`, `x.wait`, whole files or
//! in pieces from a swarm (`#{ swarm: true }`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use phile_core::client::{Downloaded, SwarmOptions, Swarmed};
use phile_core::pieces::PieceSize;
use phile_core::protocol::count;
use phile_core::{FileInfo, FileName, Trace};

use super::{bytes, parse_name, ClientRef, Verdict, World};
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
    /// The peer that delivered (of a swarm download: the one that sent
    /// the most).
    pub from: u64,
    /// Size and SHA-1.
    pub info: FileInfo,
    /// Seconds it took, virtual under simulation (never logged).
    pub secs: f64,
    /// How a swarm download went: the bytes each peer sent, what an
    /// earlier attempt left.
    pub swarm: Option<Swarmed>,
}

/// How the script asked for a download (its options map).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownloadOptions {
    /// In pieces from a swarm, rather than whole from one holder.
    pub swarm: bool,
    /// The piece size of a swarm download.
    pub piece_size: Option<u64>,
}

impl DownloadOptions {
    /// The options as a command carries them; an error for options that
    /// make no sense.
    fn for_command(self) -> Verdict<Option<SwarmOptions>> {
        if let Some(size) = self.piece_size {
            if !self.swarm {
                return Err(format!(
                    "piece_size: {size} applies to swarm downloads only: add swarm: true"
                ));
            }
            PieceSize::new(size).map_err(|error| error.to_string())?;
        }
        Ok(self.swarm.then_some(SwarmOptions {
            piece_size: self.piece_size,
        }))
    }
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
    /// `c.download(name)` and `c.download(name, options)`.
    pub fn download(&self, c: &ClientRef, name: &str, options: DownloadOptions) -> Verdict<DownloadResult> {
        let file = parse_name(name)?;
        let swarm = options.for_command()?;
        let node = self.live(c)?;
        let started = self.now();
        let command = Command::Download {
            file: file.clone(),
            swarm,
        };
        let (reply, op) = self.operation(|trace| (self.call(node, trace, command), trace.op))?;
        self.conclude(c, file, reply, started, op)
    }

    /// Says which holders a `kill_after` crashed during the download of
    /// operation `op` (the log has their `killed`), by client.
    fn tell_fault_crashes(&self, op: u64) {
        for (client, file, sent) in self.log.take_fault_crashes(op) {
            self.say(
                client,
                format_args!("killed: kill_after struck after sending {sent} bytes of {file}"),
            );
        }
    }

    /// Counts and prints a download that ended without its file (an
    /// outcome, not a script error), and hands its error back.
    fn not_downloaded(&self, c: &ClientRef, file: &FileName, error: String) -> String {
        self.count(|s| s.downloads_failed += 1);
        self.say(c.id, format_args!("download {file}: failed: {error}"));
        error
    }

    /// Turns a node's reply to a download into the script's result, or a
    /// script error when the client itself failed.
    fn conclude(
        &self,
        c: &ClientRef,
        file: FileName,
        reply: Reply,
        started: Duration,
        op: u64,
    ) -> Verdict<DownloadResult> {
        self.count(|s| s.steps += 1);
        self.tell_fault_crashes(op);
        let outcome = match reply {
            Reply::Downloaded {
                downloaded: Downloaded { from, info, swarm },
                took,
            } => {
                // A download in the background ended when the file was
                // stored, not when the script waited for it.
                let now = took.map_or_else(|| self.now(), |took| started + took);
                let secs = super::seconds(now - started);
                self.count(|s| s.downloads_ok += 1);
                self.downloads_timed.borrow_mut().push(super::fluid::Timed {
                    client: c.id,
                    file: file.to_string(),
                    bytes: info.size,
                    started: super::seconds(started),
                    finished: super::seconds(now),
                });
                let sha1 = info.sha1.to_string();
                let (size, ms) = (bytes(info.size), secs * 1e3);
                let source = match &swarm {
                    Some(swarm) => describe_sources(&swarm.sources),
                    None => format!("from {from}"),
                };
                self.say(
                    c.id,
                    format_args!("download {file}: ok {source} ({size}, sha1 {sha1:.8}…, {ms:.1} ms)"),
                );
                Ok(Delivered {
                    from: from.0,
                    info,
                    secs,
                    swarm,
                })
            }
            // A downloader that went down while its transfer ran.
            Reply::Failed {
                error: error @ NodeError::Stopped(_),
            } => Err(self.not_downloaded(c, &file, error.to_string())),
            Reply::NotDownloaded { error } => Err(self.not_downloaded(c, &file, error)),
            // A script error, but the client tried, and the log holds its
            // `download_failed`: the summary counts it too.
            Reply::DownloadFailed { error } => {
                self.count(|s| s.downloads_failed += 1);
                return Err(self.explain(c, format!("client {} cannot download {file}", c.id), error));
            }
            Reply::Failed { error } => {
                return Err(self.explain(c, format!("client {} cannot download {file}", c.id), error))
            }
            other => return Err(format!("client {} answered {other:?} to a download", c.id)),
        };
        Ok(DownloadResult {
            file: file.to_string(),
            outcome,
        })
    }

    /// `c.start_download(name)` and `c.start_download(name, options)`:
    /// asks the tracker now, fetches in the background; the file is
    /// announced when the script waits for it.
    pub fn start_download(&self, c: &ClientRef, name: &str, options: DownloadOptions) -> Verdict<Transfer> {
        let file = parse_name(name)?;
        let swarm = options.for_command()?;
        let node = self.live(c)?;
        let started = self.now();
        let number = self.next_transfer.replace(self.next_transfer.get() + 1);
        let trace = self.log.begin();
        let command = Command::StartDownload {
            file: file.clone(),
            transfer: number,
            swarm,
        };
        let reply = self.call(node, trace, command);
        let begun = match &reply {
            Reply::Started { from } => Some(format!("from {from}")),
            Reply::Swarming { peers } => Some(format!("in pieces from a swarm ({} offered)", count(*peers, "peer"))),
            _ => None,
        };
        let state = match begun {
            Some(begun) => {
                self.say(c.id, format_args!("start download {file} {begun}"));
                TransferState::Running {
                    c: *c,
                    node,
                    file,
                    number,
                    trace,
                    started,
                }
            }
            None => {
                self.end(trace)?;
                TransferState::Done(self.conclude(c, file, reply, started, trace.op)?)
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
        self.log.resume(trace.op);
        let reply = self.call(node, trace, Command::FinishDownload { transfer: number });
        let result = self
            .end(trace)
            .and_then(|()| self.conclude(&c, file, reply, started, trace.op));
        // Whatever happened, the transfer is over: never wait on it twice.
        *state = match &result {
            Ok(done) => TransferState::Done(done.clone()),
            Err(error) => TransferState::Broken(error.clone()),
        };
        result
    }

    /// The fewest seconds in which `bytes` bytes can get from `seeders` to
    /// every one of `downloaders` under their rate caps (`fluid_bound`).
    pub fn fluid_bound(&self, bytes: i64, seeder_refs: &[ClientRef], downloader_refs: &[ClientRef]) -> Verdict<f64> {
        let bytes = u64::try_from(bytes)
            .map_err(|_| format!("fluid_bound: {bytes} bytes is not a size: give the file's size, 0 or more bytes"))?;
        if seeder_refs.is_empty() {
            return Err("fluid_bound: give at least one seeder: with none, the file can never arrive".into());
        }
        if downloader_refs.is_empty() {
            return Err("fluid_bound: give at least one downloader".into());
        }
        let mut listed = std::collections::BTreeSet::new();
        if let Some(twice) = seeder_refs.iter().chain(downloader_refs).find(|c| !listed.insert(c.id)) {
            let id = twice.id;
            return Err(format!(
                "fluid_bound: client {id} is listed twice: each client is one seeder or one downloader"
            ));
        }
        let rates = |clients: &[ClientRef]| -> Verdict<Vec<(u64, u64)>> {
            clients.iter().map(|c| self.slot(c, |slot| slot.rate)).collect()
        };
        let seeders = rates(seeder_refs)?;
        let downloaders = rates(downloader_refs)?;
        let uploads: Vec<u64> = seeders.iter().map(|(up, _)| *up).collect();
        let bound = super::fluid::bound(bytes, &uploads, &downloaders);
        self.bounds_asked.borrow_mut().push(super::fluid::BoundAsked {
            bytes,
            downloaders: downloader_refs.iter().map(|c| c.id).collect(),
            bound_secs: bound,
            at: super::seconds(self.now()),
        });
        Ok(bound)
    }

    /// Time since the run started: virtual under simulation.
    pub(super) fn now(&self) -> Duration {
        self.backend.borrow().now()
    }
}

/// "in pieces from 3 peers", for a step line.
fn describe_sources(sources: &BTreeMap<phile_core::ClientId, u64>) -> String {
    format!("in pieces from {}", count(sources.len(), "peer"))
}

//! The world of one scenario run: its tracker and clients, and what each
//! script verb does to them.
//!
//! The script thread calls these methods; each one that talks to the
//! network blocks on the tokio runtime (which runs the nodes on its own
//! worker threads) until its operation is over. Errors come back as a
//! sentence for the user; the bindings give it the script position.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use phile_core::client::{ClientError, DownloadError, Downloaded};
use phile_core::events::Node;
use phile_core::storage::{Folder, StorageError};
use phile_core::{Client, ClientConfig, ClientId, FileInfo, FileName, Trace, Tracker, TrackerConfig};
use rand::Rng as _;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha1::{Digest as _, Sha1};
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use crate::event_log::{EventLog, ScenarioEvent, Subject};
use crate::tree::Tree;

/// A user-facing error message; the bindings add the script position.
pub type Verdict<T> = Result<T, String>;

/// What a run is set up with (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    /// The folder holding one sub-folder per client.
    pub root: PathBuf,
    /// The seed of every random choice.
    pub seed: u64,
    /// Bind every node to a free port instead of the scripted one.
    pub ephemeral_ports: bool,
    /// Print nothing but errors (and what the script prints).
    pub quiet: bool,
}

/// What a run did, for the closing summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Verbs that acted (started a node, wrote, registered, uploaded, ...).
    pub steps: u64,
    /// Downloads that stored their file.
    pub downloads_ok: u64,
    /// Downloads that ended without it.
    pub downloads_failed: u64,
    /// Assertions that held.
    pub assertions: u64,
}

/// A tracker, as the script holds it.
#[derive(Clone, Debug)]
pub struct TrackerRef {
    /// Where it listens.
    pub addr: SocketAddr,
}

/// A client, as the script holds it.
#[derive(Clone, Debug)]
pub struct ClientRef {
    /// The client.
    pub client: Arc<Client>,
}

impl ClientRef {
    /// The client's id.
    pub fn id(&self) -> u64 {
        self.client.id().0
    }
}

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
        client: Arc<Client>,
        file: FileName,
        started: Instant,
        task: JoinHandle<(Result<Downloaded, DownloadError>, Trace)>,
    },
    /// Waited for: its result.
    Done(DownloadResult),
}

/// The state of one scenario run.
pub struct World {
    /// The runtime the nodes run on.
    runtime: Handle,
    /// The run's settings.
    settings: Settings,
    /// The event log every node reports to.
    log: Arc<EventLog>,
    /// Every tracker started, to stop at the end.
    trackers: RefCell<Vec<Tracker>>,
    /// Every client started, by id.
    clients: RefCell<BTreeMap<u64, Arc<Client>>>,
    /// Every transfer started, so the end of the run can wait for the
    /// ones the script did not.
    transfers: RefCell<Vec<Transfer>>,
    /// Counts for the summary.
    stats: Cell<Stats>,
}

impl World {
    /// A world with no nodes yet.
    pub fn new(runtime: Handle, settings: Settings, log: Arc<EventLog>) -> World {
        World {
            runtime,
            settings,
            log,
            trackers: RefCell::default(),
            clients: RefCell::default(),
            transfers: RefCell::default(),
            stats: Cell::default(),
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.stats.get()
    }

    fn count(&self, update: impl FnOnce(&mut Stats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// Prints one step line, unless quiet.
    fn say(&self, who: impl std::fmt::Display, what: impl std::fmt::Display) {
        if !self.settings.quiet {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{who:>8}  {what}");
        }
    }

    /// Runs `operation` as one logged operation.
    fn operation<T>(&self, operation: impl FnOnce(&mut Trace) -> T) -> T {
        let mut trace = self.log.begin();
        let result = operation(&mut trace);
        self.log.end(trace.op);
        result
    }

    fn listen_addr(&self, port: u16) -> SocketAddr {
        let port = if self.settings.ephemeral_ports { 0 } else { port };
        SocketAddr::from((Ipv4Addr::LOCALHOST, port))
    }

    fn bind(&self, what: &str, port: u16) -> Verdict<TcpListener> {
        let addr = self.listen_addr(port);
        self.runtime
            .block_on(TcpListener::bind(addr))
            .map_err(|error| match error.kind() {
                io::ErrorKind::AddrInUse => format!(
                    "cannot start {what}: port {port} is in use (another phile-run still running?); \
                 stop it, or run with --ephemeral-ports"
                ),
                _ => format!("cannot start {what} on {addr}: {error}"),
            })
    }

    /// `tracker(port)`.
    pub fn tracker(&self, port: i64) -> Verdict<TrackerRef> {
        let port = u16::try_from(port).map_err(|_| format!("tracker port {port} is not a port number (0 to 65535)"))?;
        let listener = self.bind("the tracker", port)?;
        let config = TrackerConfig {
            seed: self.settings.seed,
            events: Some(self.log.clone()),
            ..TrackerConfig::default()
        };
        let tracker = {
            let _runtime = self.runtime.enter();
            Tracker::spawn(listener, config).map_err(|e| format!("cannot start the tracker: {e}"))?
        };
        let addr = tracker.local_addr();
        self.trackers.borrow_mut().push(tracker);
        self.log
            .record_alone(Subject::Node(Node::Tracker), ScenarioEvent::Started);
        self.count(|s| s.steps += 1);
        self.say("tracker", format_args!("listening on {addr}"));
        Ok(TrackerRef { addr })
    }

    /// `client(id)`.
    pub fn client(&self, id: i64) -> Verdict<ClientRef> {
        let id = u64::try_from(id)
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("client id {id} is not a positive integer"))?;
        if self.clients.borrow().contains_key(&id) {
            return Err(format!("client {id} exists already in this scenario"));
        }
        let port = match u16::try_from(id) {
            Ok(port) => port,
            Err(_) if self.settings.ephemeral_ports => 0,
            Err(_) => {
                return Err(format!(
                    "client {id} would listen on port {id}, which does not exist; \
                     use an id up to 65535, or run with --ephemeral-ports"
                ))
            }
        };
        let dir = self.settings.root.join(id.to_string());
        let folder =
            Folder::create_empty(&dir).map_err(|e| format!("cannot prepare the folder of client {id}: {e}"))?;
        let listener = self.bind(&format!("client {id}"), port)?;
        let config = ClientConfig {
            events: Some(self.log.clone()),
            ..ClientConfig::default()
        };
        let client = {
            let _runtime = self.runtime.enter();
            Client::start(ClientId(id), folder, listener, config)
                .map_err(|e| format!("cannot start client {id}: {e}"))?
        };
        let client = Arc::new(client);
        self.clients.borrow_mut().insert(id, client.clone());
        self.log
            .record_alone(Subject::Node(Node::Client(ClientId(id))), ScenarioEvent::Started);
        self.count(|s| s.steps += 1);
        let addr = client.local_addr();
        self.say(id, format_args!("ready: folder {}, serving on {addr}", dir.display()));
        Ok(ClientRef { client })
    }

    /// `c.register(t)`.
    pub fn register(&self, c: &ClientRef, tracker: &TrackerRef) -> Verdict<()> {
        self.operation(|trace| self.runtime.block_on(c.client.register(tracker.addr, trace)))
            .map_err(|error| format!("client {} could not register: {error}", c.id()))?;
        self.count(|s| s.steps += 1);
        self.say(c.id(), "register: ACK");
        Ok(())
    }

    /// `c.write(name, content)`.
    pub fn write(&self, c: &ClientRef, name: &str, content: Vec<u8>) -> Verdict<()> {
        let file = parse_name(name)?;
        let len = content.len();
        self.runtime
            .block_on(c.client.folder().write(&file, content))
            .map_err(|e| format!("cannot write {file}: {e}"))?;
        self.count(|s| s.steps += 1);
        self.say(c.id(), format_args!("write {file} ({})", bytes(len as u64)));
        Ok(())
    }

    /// `c.write_random(name, bytes)`: content derived from the seed and the
    /// name only, so every run and every machine writes the same bytes.
    pub fn write_random(&self, c: &ClientRef, name: &str, len: i64) -> Verdict<()> {
        let file = parse_name(name)?;
        let len = u64::try_from(len).map_err(|_| format!("cannot write {len} bytes: the size must be 0 or more"))?;
        let mut rng = content_rng(self.settings.seed, &file);
        let fill = move |out: &mut dyn io::Write| {
            let mut chunk = vec![0u8; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = chunk.len().min(left as usize);
                rng.fill_bytes(&mut chunk[..n]);
                out.write_all(&chunk[..n])?;
                left -= n as u64;
            }
            Ok(())
        };
        self.runtime
            .block_on(c.client.folder().write_with(&file, fill))
            .map_err(|e| format!("cannot write {file}: {e}"))?;
        self.count(|s| s.steps += 1);
        self.say(
            c.id(),
            format_args!("write {file} ({} of seeded random bytes)", bytes(len)),
        );
        Ok(())
    }

    /// `c.upload(name)`.
    pub fn upload(&self, c: &ClientRef, name: &str) -> Verdict<()> {
        let file = parse_name(name)?;
        self.require_registration(c)?;
        self.operation(|trace| self.runtime.block_on(c.client.upload(&file, trace)))
            .map_err(|error| match error {
                ClientError::Storage(StorageError::NotFound { dir, .. }) => format!(
                    "client {} cannot upload {file}: its folder {} has no such file; create it first with c.write(name, text)",
                    c.id(),
                    dir.display()
                ),
                other => format!("client {} cannot upload {file}: {other}", c.id()),
            })?;
        self.count(|s| s.steps += 1);
        self.say(c.id(), format_args!("upload {file}: ACK"));
        Ok(())
    }

    fn require_registration(&self, c: &ClientRef) -> Verdict<()> {
        if self.runtime.block_on(c.client.is_registered()) {
            Ok(())
        } else {
            Err(format!(
                "client {0} is not registered: call c.register(tracker) first",
                c.id()
            ))
        }
    }

    /// `c.download(name)`.
    pub fn download(&self, c: &ClientRef, name: &str) -> Verdict<DownloadResult> {
        let file = parse_name(name)?;
        self.require_registration(c)?;
        let started = Instant::now();
        let outcome = self.operation(|trace| self.runtime.block_on(c.client.download(&file, trace)));
        self.conclude(c, file, outcome, started)
    }

    /// Turns a download's outcome into the script's result, or a script
    /// error when the client itself failed.
    fn conclude(
        &self,
        c: &ClientRef,
        file: FileName,
        outcome: Result<Downloaded, DownloadError>,
        started: Instant,
    ) -> Verdict<DownloadResult> {
        self.count(|s| s.steps += 1);
        let outcome = match outcome {
            Ok(Downloaded { from, info }) => {
                let secs = started.elapsed().as_secs_f64();
                self.count(|s| s.downloads_ok += 1);
                self.say(
                    c.id(),
                    format_args!(
                        "download {file}: ok from {from} ({}, sha1 {:.8}…, {:.1} ms)",
                        bytes(info.size),
                        info.sha1.to_string(),
                        secs * 1e3
                    ),
                );
                Ok(Delivered {
                    from: from.0,
                    info,
                    secs,
                })
            }
            Err(DownloadError::Client(error)) => {
                return Err(format!("client {} cannot download {file}: {error}", c.id()));
            }
            Err(error) => {
                self.count(|s| s.downloads_failed += 1);
                self.say(c.id(), format_args!("download {file}: failed: {error}"));
                Err(error.to_string())
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
        self.require_registration(c)?;
        let started = Instant::now();
        let mut trace = self.log.begin();
        let located = self.runtime.block_on(c.client.locate(&file, &[], &mut trace));
        let state = match located {
            Ok(Some(source)) => {
                let (client, wanted) = (c.client.clone(), file.clone());
                let task = self.runtime.spawn(async move {
                    let result = client.receive(&wanted, source, &mut trace).await;
                    (result, trace)
                });
                self.say(c.id(), format_args!("start download {file} from {}", source.peer));
                TransferState::Running {
                    client: c.client.clone(),
                    file,
                    started,
                    task,
                }
            }
            Ok(None) => {
                let error = c.client.failed(&file, DownloadError::NoPeer(file.clone()), &mut trace);
                self.log.end(trace.op);
                TransferState::Done(self.conclude(c, file, Err(error), started)?)
            }
            Err(error) => {
                self.log.end(trace.op);
                return Err(format!("client {} cannot download {file}: {error}", c.id()));
            }
        };
        let transfer = Transfer(Rc::new(RefCell::new(state)));
        self.transfers.borrow_mut().push(transfer.clone());
        Ok(transfer)
    }

    /// `x.wait()`: the transfer's result, announcing its file first.
    pub fn wait(&self, transfer: &Transfer) -> Verdict<DownloadResult> {
        let mut state = transfer.0.borrow_mut();
        let (client, file, started, task) = match &mut *state {
            TransferState::Done(result) => return Ok(result.clone()),
            TransferState::Running {
                client,
                file,
                started,
                task,
            } => (client.clone(), file.clone(), *started, task),
        };
        let (received, mut trace) = self
            .runtime
            .block_on(task)
            .map_err(|e| format!("the download task failed: {e}"))?;
        let outcome = match received {
            Ok(downloaded) => self
                .runtime
                .block_on(client.announce(&file, downloaded.info, &mut trace))
                .map(|()| downloaded)
                .map_err(DownloadError::from),
            Err(error) => Err(error),
        };
        self.log.end(trace.op);
        let result = self.conclude(&ClientRef { client }, file, outcome, started)?;
        *state = TransferState::Done(result.clone());
        Ok(result)
    }

    /// `c.files()`.
    pub fn files(&self, c: &ClientRef) -> Verdict<Vec<String>> {
        let names = c
            .client
            .folder()
            .list()
            .map_err(|e| format!("cannot list the folder of client {}: {e}", c.id()))?;
        Ok(names.into_iter().map(String::from).collect())
    }

    /// `c.read(name)`.
    pub fn read(&self, c: &ClientRef, name: &str) -> Verdict<String> {
        let file = parse_name(name)?;
        let content = self
            .runtime
            .block_on(c.client.folder().read(&file))
            .map_err(|e| format!("client {} cannot read {file}: {e}", c.id()))?;
        String::from_utf8(content).map_err(|e| {
            format!(
                "{file} of client {} is not UTF-8 text ({}); compare c.sha1(name) or c.size(name) instead",
                c.id(),
                bytes(e.as_bytes().len() as u64)
            )
        })
    }

    /// `c.sha1(name)` and `c.size(name)`.
    pub fn info(&self, c: &ClientRef, name: &str) -> Verdict<FileInfo> {
        let file = parse_name(name)?;
        self.runtime
            .block_on(c.client.folder().info(&file))
            .map_err(|e| format!("client {} cannot hash {file}: {e}", c.id()))
    }

    /// `tree()`.
    pub fn tree(&self) -> Verdict<Tree> {
        let clients = self.clients.borrow();
        let mut tree = Tree::new();
        for (id, client) in clients.iter() {
            let c = ClientRef { client: client.clone() };
            tree.insert(*id, self.files(&c)?);
        }
        Ok(tree)
    }

    /// Counts an assertion that held.
    pub fn assertion_held(&self) {
        self.count(|s| s.assertions += 1);
    }

    /// `note(text)`.
    pub fn note(&self, text: &str) {
        self.log
            .record_alone(Subject::Scenario, ScenarioEvent::Note { text: text.to_owned() });
        self.say("note", text);
    }

    /// Ends the run: waits for every transfer the script left running (so
    /// their events are logged), then stops every client and tracker.
    pub fn finish(&self) {
        let transfers: Vec<Transfer> = self.transfers.borrow_mut().drain(..).collect();
        for transfer in transfers {
            if let Err(error) = self.wait(&transfer) {
                tracing::warn!(%error, "a transfer left running failed");
            }
        }
        let clients: Vec<Arc<Client>> = std::mem::take(&mut *self.clients.borrow_mut()).into_values().collect();
        let trackers: Vec<Tracker> = self.trackers.borrow_mut().drain(..).collect();
        self.runtime.block_on(async move {
            for client in clients {
                client.shutdown().await;
            }
            for tracker in trackers {
                tracker.shutdown().await;
            }
        });
    }
}

fn parse_name(name: &str) -> Verdict<FileName> {
    name.parse()
        .map_err(|e: phile_core::protocol::InvalidFileName| e.to_string())
}

/// The generator of `write_random`'s bytes for `file`.
fn content_rng(seed: u64, file: &FileName) -> ChaCha8Rng {
    let mut hasher = Sha1::new();
    hasher.update(b"phile write_random");
    hasher.update(seed.to_le_bytes());
    hasher.update(file.as_str().as_bytes());
    let mut key = [0u8; 32];
    key[..20].copy_from_slice(&hasher.finalize());
    ChaCha8Rng::from_seed(key)
}

/// A byte count for humans: "5 bytes", "4.0 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

//! The world of one scenario run: its tracker and clients, and what each
//! script verb does to them.
//!
//! The script thread calls these methods; each one that talks to the
//! network blocks on the tokio runtime (which runs the nodes on its own
//! worker threads) until its operation is over. Errors come back as a
//! sentence for the user; the bindings give it the script position.
//!
//! Downloads live in [`download`], faults (kill, leave, restart, corrupt)
//! in [`faults`].

mod download;
mod faults;
mod instance;
mod remote;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{self, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use phile_core::events::Node;
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, ClientId, FileInfo, FileName, Limits, Trace, Tracker, TrackerConfig};
use rand::Rng as _;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha1::{Digest as _, Sha1};
use tokio::net::TcpListener;
use tokio::runtime::Handle;

use crate::event_log::{EventLog, ScenarioEvent, Subject};
use crate::tree::Tree;
use instance::{Instance, RemoteClient, TrackerInstance};
use remote::Agent;

pub use download::{Delivered, DownloadResult, Transfer};

/// The longest a step waits for the tracker to notice a client it killed.
const SETTLE_LIMIT: Duration = Duration::from_secs(10);

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
    /// Run every tracker and client as a `phile` process of its own, using
    /// this binary (`--processes`); `None`: all in this process.
    pub processes: Option<PathBuf>,
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

/// A client, as the script holds it: its id. The running instance behind
/// it changes when the client is restarted.
#[derive(Clone, Copy, Debug)]
pub struct ClientRef {
    /// The client's id.
    pub id: u64,
}

/// What the world keeps of each client.
struct Slot {
    /// The running instance, or the last one if it is down.
    client: Instance,
    /// Its folder.
    dir: PathBuf,
    /// The port it was started on (0: any); a restart binds it again.
    port: u16,
    /// The tracker it last registered with; a restart registers there again.
    tracker: Option<SocketAddr>,
    /// Why it is down, when it is ("killed", "left").
    down: Option<&'static str>,
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
    trackers: RefCell<Vec<TrackerInstance>>,
    /// Every client started, by id.
    clients: RefCell<BTreeMap<u64, Slot>>,
    /// Timeouts for nodes started from now on (`set_idle_timeout`).
    limits: Cell<Limits>,
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
            limits: Cell::new(Limits::default()),
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
        self.end(trace);
        result
    }

    /// Ends an operation, and waits until the tracker has noticed any client
    /// the operation killed: the next step then meets the tracker as it will
    /// be, not as it happens to be at that instant.
    fn end(&self, trace: Trace) {
        self.sync_processes();
        self.log.end(trace.op);
        self.log.settle(trace.op, SETTLE_LIMIT);
    }

    /// In process mode, waits until every node process has delivered the
    /// events it reported so far (they travel on pipes of their own).
    fn sync_processes(&self) {
        if self.settings.processes.is_none() {
            return;
        }
        for tracker in self.trackers.borrow().iter() {
            tracker.sync();
        }
        let clients: Vec<Instance> = self.clients.borrow().values().map(|slot| slot.client.clone()).collect();
        for client in clients {
            client.sync();
        }
    }

    /// The instance of client `c`, up or down (its folder is always there).
    fn instance(&self, c: &ClientRef) -> Verdict<Instance> {
        let clients = self.clients.borrow();
        let slot = clients
            .get(&c.id)
            .ok_or_else(|| format!("client {} does not exist", c.id))?;
        Ok(slot.client.clone())
    }

    /// The running instance of client `c`; an error if it is down.
    fn live(&self, c: &ClientRef) -> Verdict<Instance> {
        let clients = self.clients.borrow();
        let slot = clients
            .get(&c.id)
            .ok_or_else(|| format!("client {} does not exist", c.id))?;
        // A fault may have crashed it without the script saying so.
        let down = slot.down.or_else(|| slot.client.is_stopped().then_some("killed"));
        match down {
            None => Ok(slot.client.clone()),
            Some(why) => Err(format!("client {} is down ({why}): call c.restart() first", c.id)),
        }
    }

    /// The running instance of `c`, which must be registered.
    fn registered(&self, c: &ClientRef) -> Verdict<Instance> {
        let client = self.live(c)?;
        if client.is_registered(&self.runtime) {
            Ok(client)
        } else {
            Err(format!(
                "client {} is not registered: call c.register(tracker) first",
                c.id
            ))
        }
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

    /// `set_idle_timeout(seconds)`: the idle timeout of nodes started after.
    pub fn set_idle_timeout(&self, seconds: f64) -> Verdict<()> {
        let timeout = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|timeout| *timeout >= Duration::from_millis(1))
            .ok_or_else(|| format!("an idle timeout of {seconds} s is not a duration of at least 1 ms (0.001)"))?;
        let mut limits = self.limits.get();
        limits.idle_timeout = timeout;
        self.limits.set(limits);
        self.say("scenario", format_args!("idle timeout of new nodes: {seconds} s"));
        Ok(())
    }

    /// `tracker(port)`.
    pub fn tracker(&self, port: i64) -> Verdict<TrackerRef> {
        let port = u16::try_from(port).map_err(|_| format!("tracker port {port} is not a port number (0 to 65535)"))?;
        let tracker = match &self.settings.processes {
            Some(phile) => {
                let args = self.agent_args(None, port);
                TrackerInstance::Remote(self.spawn_agent(phile, &args, "the tracker", port)?)
            }
            None => {
                let listener = self.bind("the tracker", port)?;
                let config = TrackerConfig {
                    seed: self.settings.seed,
                    limits: self.limits.get(),
                    events: Some(self.log.clone()),
                    ..TrackerConfig::default()
                };
                let _runtime = self.runtime.enter();
                TrackerInstance::Local(
                    Tracker::spawn(listener, config).map_err(|e| format!("cannot start the tracker: {e}"))?,
                )
            }
        };
        let addr = tracker.addr();
        let process = tracker.process();
        self.trackers.borrow_mut().push(tracker);
        self.log
            .record_alone(Subject::Node(Node::Tracker), ScenarioEvent::Started);
        self.count(|s| s.steps += 1);
        self.say("tracker", format_args!("listening on {addr}{process}"));
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
        let client = self.start_client(id, folder, port)?;
        let addr = client.addr();
        let process = client.process();
        let slot = Slot {
            client,
            dir: dir.clone(),
            port,
            tracker: None,
            down: None,
        };
        self.clients.borrow_mut().insert(id, slot);
        self.log
            .record_alone(Subject::Node(Node::Client(ClientId(id))), ScenarioEvent::Started);
        self.count(|s| s.steps += 1);
        self.say(
            id,
            format_args!("ready: folder {}, serving on {addr}{process}", dir.display()),
        );
        Ok(ClientRef { id })
    }

    /// Starts an instance of client `id` serving `folder` on `port`.
    fn start_client(&self, id: u64, folder: Folder, port: u16) -> Verdict<Instance> {
        if let Some(phile) = &self.settings.processes {
            let mut args = self.agent_args(Some(id), port);
            args.extend(["--dir".to_owned(), folder.dir().display().to_string()]);
            let agent = self.spawn_agent(phile, &args, &format!("client {id}"), port)?;
            return Ok(Instance::Remote(Arc::new(RemoteClient { id, agent, folder })));
        }
        let listener = self.bind(&format!("client {id}"), port)?;
        let config = ClientConfig {
            limits: self.limits.get(),
            events: Some(self.log.clone()),
            ..ClientConfig::default()
        };
        let _runtime = self.runtime.enter();
        let client = Client::start(ClientId(id), folder, listener, config)
            .map_err(|e| format!("cannot start client {id}: {e}"))?;
        Ok(Instance::Local(Arc::new(client)))
    }

    /// The arguments of `phile agent` for a tracker (`client` None) or a
    /// client, listening on `port`.
    fn agent_args(&self, client: Option<u64>, port: u16) -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            self.listen_addr(port).to_string(),
            "--seed".to_owned(),
            self.settings.seed.to_string(),
            "--idle-timeout-ms".to_owned(),
            self.limits.get().idle_timeout.as_millis().to_string(),
        ];
        if let Some(id) = client {
            args.extend(["--client".to_owned(), id.to_string()]);
        }
        args
    }

    fn spawn_agent(&self, phile: &std::path::Path, args: &[String], what: &str, port: u16) -> Verdict<Agent> {
        Agent::spawn(phile, args, self.log.clone()).map_err(|error| {
            format!(
                "cannot start {what} on port {port} as a process: {error} (is the port in use? try --ephemeral-ports)"
            )
        })
    }

    /// `c.register(t)`.
    pub fn register(&self, c: &ClientRef, tracker: &TrackerRef) -> Verdict<()> {
        let client = self.live(c)?;
        self.operation(|trace| client.register(&self.runtime, tracker.addr, trace))
            .map_err(|error| format!("client {} could not register: {error}", c.id))?;
        if let Some(slot) = self.clients.borrow_mut().get_mut(&c.id) {
            slot.tracker = Some(tracker.addr);
        }
        self.count(|s| s.steps += 1);
        self.say(c.id, "register: ACK");
        Ok(())
    }

    /// `c.write(name, content)`.
    pub fn write(&self, c: &ClientRef, name: &str, content: Vec<u8>) -> Verdict<()> {
        let file = parse_name(name)?;
        let len = content.len();
        self.instance(c)?
            .write(&self.runtime, &file, content)
            .map_err(|e| format!("cannot write {file}: {e}"))?;
        self.count(|s| s.steps += 1);
        self.say(c.id, format_args!("write {file} ({})", bytes(len as u64)));
        Ok(())
    }

    /// `c.write_random(name, bytes)`: content derived from the seed and the
    /// name only, so every run and every machine writes the same bytes.
    pub fn write_random(&self, c: &ClientRef, name: &str, len: i64) -> Verdict<()> {
        let file = parse_name(name)?;
        let len = u64::try_from(len).map_err(|_| format!("cannot write {len} bytes: the size must be 0 or more"))?;
        self.instance(c)?
            .write_random(&self.runtime, &file, len, self.settings.seed)
            .map_err(|e| format!("cannot write {file}: {e}"))?;
        self.count(|s| s.steps += 1);
        self.say(
            c.id,
            format_args!("write {file} ({} of seeded random bytes)", bytes(len)),
        );
        Ok(())
    }

    /// `c.upload(name)`.
    pub fn upload(&self, c: &ClientRef, name: &str) -> Verdict<()> {
        let file = parse_name(name)?;
        let client = self.registered(c)?;
        if !client.folder().contains(&file) {
            return Err(format!(
                "client {} cannot upload {file}: its folder {} has no such file; create it first with c.write(name, text)",
                c.id,
                client.folder().dir().display()
            ));
        }
        self.operation(|trace| client.upload(&self.runtime, &file, trace))
            .map_err(|error| format!("client {} cannot upload {file}: {error}", c.id))?;
        self.count(|s| s.steps += 1);
        self.say(c.id, format_args!("upload {file}: ACK"));
        Ok(())
    }

    /// `c.files()`.
    pub fn files(&self, c: &ClientRef) -> Verdict<Vec<String>> {
        let names = self
            .instance(c)?
            .folder()
            .list()
            .map_err(|e| format!("cannot list the folder of client {}: {e}", c.id))?;
        Ok(names.into_iter().map(String::from).collect())
    }

    /// `c.read(name)`.
    pub fn read(&self, c: &ClientRef, name: &str) -> Verdict<String> {
        let file = parse_name(name)?;
        let content = self
            .runtime
            .block_on(self.instance(c)?.folder().read(&file))
            .map_err(|e| format!("client {} cannot read {file}: {e}", c.id))?;
        String::from_utf8(content).map_err(|e| {
            format!(
                "{file} of client {} is not UTF-8 text ({}); compare c.sha1(name) or c.size(name) instead",
                c.id,
                bytes(e.as_bytes().len() as u64)
            )
        })
    }

    /// `c.sha1(name)` and `c.size(name)`.
    pub fn info(&self, c: &ClientRef, name: &str) -> Verdict<FileInfo> {
        let file = parse_name(name)?;
        self.runtime
            .block_on(self.instance(c)?.folder().info(&file))
            .map_err(|e| format!("client {} cannot read {file}: {e}", c.id))
    }

    /// `tree()`.
    pub fn tree(&self) -> Verdict<Tree> {
        let ids: Vec<u64> = self.clients.borrow().keys().copied().collect();
        let mut tree = Tree::new();
        for id in ids {
            tree.insert(id, self.files(&ClientRef { id })?);
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
    /// their events are logged), then stops every tracker and client.
    pub fn finish(&self) {
        let transfers: Vec<Transfer> = self.transfers.borrow_mut().drain(..).collect();
        for transfer in transfers {
            if let Err(error) = self.wait(&transfer) {
                tracing::warn!(%error, "a transfer left running failed");
            }
        }
        let clients: Vec<Instance> = self.clients.borrow().values().map(|slot| slot.client.clone()).collect();
        let trackers: Vec<TrackerInstance> = self.trackers.borrow_mut().drain(..).collect();
        // Trackers first: clients that stop afterwards have no session left
        // to drop, so the end of a run adds nothing to the log.
        for tracker in trackers {
            tracker.shutdown(&self.runtime);
        }
        for client in clients {
            client.shutdown(&self.runtime);
        }
    }
}

fn parse_name(name: &str) -> Verdict<FileName> {
    name.parse()
        .map_err(|e: phile_core::protocol::InvalidFileName| e.to_string())
}

/// Writes `len` bytes of `write_random`'s content for `file`: a function of
/// the seed and the name only, the same in every process and on every
/// machine.
pub(crate) fn random_content(
    seed: u64,
    file: &FileName,
    len: u64,
) -> impl FnOnce(&mut dyn io::Write) -> io::Result<()> + Send + 'static {
    let mut rng = content_rng(seed, file);
    move |out: &mut dyn io::Write| {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = chunk.len().min(left as usize);
            rng.fill_bytes(&mut chunk[..n]);
            out.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        Ok(())
    }
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

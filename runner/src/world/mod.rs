//! The world of one scenario run: its tracker and clients, and what each
//! script verb does to them.
//!
//! The script thread calls these methods. Verbs that act on a node become a
//! [`Command`] the backend carries to it (whichever way the nodes run:
//! here, in processes, or simulated); verbs on a client's folder (write,
//! read, corrupt) work on the folder directly, whether the client is up or
//! down. Errors come back as a sentence for the user; the bindings give it
//! the script position.
//!
//! Downloads live in `download`, faults (kill, leave, restart, corrupt)
//! in `faults`, time and the network in `network`.

mod download;
mod faults;
mod fluid;
mod network;

pub use network::NodeRef;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use phile_core::events::Node;
use phile_core::storage::{Folder, StorageError};
use phile_core::{ClientId, FileInfo, FileName, Limits, Trace};
use rand::Rng as _;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha1::{Digest as _, Sha1};

use crate::backend::{Backend, Deadline, NodeKey, StartError};
use crate::command::{Command, NodeError, Reply};
use crate::event_log::{EventLog, ScenarioEvent, Subject};
use crate::node::{NodeSpec, Role};
use crate::tree::Tree;
use crate::Output;

pub use download::{Delivered, DownloadOptions, DownloadResult, Transfer};

/// How long the tracker gets to notice a client that went away, over real
/// networks, before the operation fails.
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
    /// Run on a simulated network in virtual time (`--sim`).
    pub sim: bool,
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
    /// Its node.
    key: NodeKey,
}

/// A client, as the script holds it: its id. The running node behind it
/// changes when the client is restarted.
#[derive(Clone, Copy, Debug)]
pub struct ClientRef {
    /// The client's id.
    pub id: u64,
}

impl ClientRef {
    /// The client, as the event log names it.
    fn subject(&self) -> Subject {
        Subject::Node(Node::Client(ClientId(self.id)))
    }
}

/// What the world keeps of each client.
struct Slot {
    /// The running node, or the last one if it is down.
    node: NodeKey,
    /// Its folder.
    dir: PathBuf,
    /// The port it was started on (0: any); a restart binds it again.
    port: u16,
    /// The tracker it last registered with; a restart registers there again.
    tracker: Option<SocketAddr>,
    /// Why it is down, when the script put it down ("killed", "left").
    down: Option<&'static str>,
    /// Its rate caps (upload, download; 0: none), for `fluid_bound`.
    rate: (u64, u64),
}

/// The state of one scenario run.
pub struct World {
    /// How the nodes run.
    backend: RefCell<Box<dyn Backend>>,
    /// The run's settings.
    settings: Settings,
    /// The event log every node reports to.
    log: Arc<EventLog>,
    /// Every tracker started, to stop at the end.
    trackers: RefCell<Vec<NodeKey>>,
    /// Every client started, by id.
    clients: RefCell<BTreeMap<u64, Slot>>,
    /// Timeouts for nodes started from now on (`set_idle_timeout`).
    limits: Cell<Limits>,
    /// Every transfer started, so the end of the run can wait for the
    /// ones the script did not.
    transfers: RefCell<Vec<Transfer>>,
    /// The number the next transfer gets.
    next_transfer: Cell<u64>,
    /// Counts for the summary.
    stats: Cell<Stats>,
    /// When the run must stop.
    deadline: Deadline,
    /// Where step lines go.
    output: Rc<Output>,
    /// Set when the simulation ran out of room for nodes: the run starts
    /// over with room for this many.
    needs_room: Cell<Option<usize>>,
    /// Every `fluid_bound` the script asked for, for the report.
    bounds_asked: RefCell<Vec<fluid::BoundAsked>>,
    /// Every download that stored its file, timed, for the report.
    downloads_timed: RefCell<Vec<fluid::Timed>>,
}

impl World {
    /// A world with no nodes yet, running them on `backend`.
    pub fn new(
        backend: Box<dyn Backend>,
        settings: Settings,
        log: Arc<EventLog>,
        deadline: Deadline,
        output: Rc<Output>,
    ) -> World {
        World {
            backend: RefCell::new(backend),
            settings,
            log,
            trackers: RefCell::default(),
            clients: RefCell::default(),
            limits: Cell::new(Limits::default()),
            transfers: RefCell::default(),
            next_transfer: Cell::new(1),
            stats: Cell::default(),
            deadline,
            output,
            needs_room: Cell::new(None),
            bounds_asked: RefCell::default(),
            downloads_timed: RefCell::default(),
        }
    }

    /// How many nodes the simulation must make room for, when this attempt
    /// ran out: the run then starts over.
    pub fn needs_room(&self) -> Option<usize> {
        self.needs_room.get()
    }

    /// Starts a node, noting when the simulation has no room left.
    fn start_node(&self, spec: &NodeSpec, port: u16) -> Result<NodeKey, StartError> {
        let started = self.backend.borrow_mut().start(spec, port);
        if let Err(StartError::OutOfHosts(out)) = &started {
            self.needs_room.set(Some(out.needed));
        }
        started
    }

    /// The counts so far.
    pub fn stats(&self) -> Stats {
        self.stats.get()
    }

    /// When each download that stored its file began and ended (for the
    /// report's timeline; times are the run's own, virtual under `--sim`,
    /// and never enter the log).
    pub fn download_spans(&self) -> Vec<crate::review::DownloadSpan> {
        let timed = self.downloads_timed.borrow();
        timed
            .iter()
            .map(|download| crate::review::DownloadSpan {
                client: download.client,
                file: download.file.clone(),
                started: download.started,
                finished: download.finished,
            })
            .collect()
    }

    /// Each `fluid_bound` the script asked for, against the time the
    /// downloads it bounds took (for the report, like the spans).
    pub fn fluid_bounds(&self) -> Vec<crate::review::FluidBound> {
        fluid::against_downloads(&self.bounds_asked.borrow(), &self.downloads_timed.borrow())
    }

    fn count(&self, update: impl FnOnce(&mut Stats)) {
        let mut stats = self.stats.get();
        update(&mut stats);
        self.stats.set(stats);
    }

    /// Prints `text` (the tree, the script's own output), quiet or not.
    pub fn print(&self, text: &str) {
        self.output.line(text);
    }

    /// Prints one step line, unless quiet.
    fn say(&self, who: impl std::fmt::Display, what: impl std::fmt::Display) {
        if !self.settings.quiet {
            self.output.line(&format!("{who:>8}  {what}"));
        }
    }

    /// The script line of the call being made: the events it causes carry it.
    pub fn at_line(&self, line: Option<u32>) {
        self.log.at_line(line);
    }

    /// Fails with the time limit's message once the run is past it.
    pub fn check_time_limit(&self) -> Verdict<()> {
        if self.deadline.passed() {
            return Err(NodeError::TimeLimit(self.deadline.limit.as_secs()).to_string());
        }
        Ok(())
    }

    /// Runs `operation` as one logged operation.
    fn operation<T>(&self, operation: impl FnOnce(Trace) -> T) -> Verdict<T> {
        let trace = self.log.begin();
        let result = operation(trace);
        self.end(trace)?;
        Ok(result)
    }

    /// Ends an operation once what it set off has happened: the events its
    /// nodes reported are in, and the tracker has noticed any client it put
    /// down, so the next step meets the nodes as they will be.
    fn end(&self, trace: Trace) -> Verdict<()> {
        let log = self.log.clone();
        self.backend.borrow_mut().settle(&move || !log.awaits(trace.op));
        self.log.end(trace.op);
        let limit = if self.settings.sim {
            Duration::ZERO
        } else {
            SETTLE_LIMIT
        };
        self.log.settle(trace.op, limit)?;
        match self.log.misplaced() {
            Some(misplaced) => Err(format!(
                "the event log lost its order: {misplaced}. Over real TCP, events that only timing \
                 orders can race; run with --sim for a log that repeats exactly"
            )),
            None => self.check_time_limit(),
        }
    }

    /// Carries `command` to `node`.
    fn call(&self, node: NodeKey, trace: Trace, command: Command) -> Reply {
        self.backend.borrow_mut().call(node, trace, command)
    }

    /// Carries `command` to client `c`'s `node` as one operation, which
    /// begins with the scenario's `event` of `c` in the log.
    fn act_as(&self, c: &ClientRef, node: NodeKey, event: ScenarioEvent, command: Command) -> Verdict<Reply> {
        self.operation(|mut trace| {
            self.log.record_in(trace.advance(), c.subject(), event);
            self.call(node, trace, command)
        })
    }

    /// Carries `command` to `node` as one operation; its error, if any, as
    /// a sentence.
    fn act(&self, node: NodeKey, command: Command) -> Verdict<Result<Reply, NodeError>> {
        let reply = self.operation(|trace| self.call(node, trace, command))?;
        Ok(match reply {
            Reply::Failed { error } => Err(error),
            reply => Ok(reply),
        })
    }

    /// `error` of client `c` as a sentence, after what could not be done,
    /// unless the error says it all (the client is not registered: that is
    /// what to fix, and a client the script registered lost its session,
    /// before or during this call).
    fn explain(&self, c: &ClientRef, what: String, error: NodeError) -> String {
        const REGISTER_AGAIN: &str = "register it again with c.register(tracker), after heal() if it is \
                                      partitioned, or catch the error with try { ... } catch (e) { ... }";
        let registered = self.slot(c, |slot| slot.tracker.is_some()).unwrap_or(false);
        match error {
            NodeError::NotRegistered(id) if registered => format!(
                "client {id} lost its tracker session (the tracker went silent, a partition or a timeout cut \
                 it off): {REGISTER_AGAIN}"
            ),
            NodeError::NotRegistered(_) => error.to_string(),
            NodeError::SessionEnded(_) => format!("{what}: {error}; {REGISTER_AGAIN}"),
            error => format!("{what}: {error}"),
        }
    }

    fn slot<T>(&self, c: &ClientRef, read: impl FnOnce(&Slot) -> T) -> Verdict<T> {
        let clients = self.clients.borrow();
        let slot = clients
            .get(&c.id)
            .ok_or_else(|| format!("client {} does not exist", c.id))?;
        Ok(read(slot))
    }

    /// The folder of client `c`, up or down.
    fn folder_of(&self, c: &ClientRef) -> Verdict<Folder> {
        let dir = self.slot(c, |slot| slot.dir.clone())?;
        Folder::open(&dir).map_err(|e| format!("cannot open the folder of client {}: {e}", c.id))
    }

    /// Why client `c` is down, if it is: put down by the script, or
    /// crashed by a fault.
    fn down(&self, c: &ClientRef) -> Verdict<Option<&'static str>> {
        let (node, down) = self.slot(c, |slot| (slot.node, slot.down))?;
        Ok(down.or_else(|| self.backend.borrow().is_down(node).then_some("killed")))
    }

    /// The running node of client `c`; an error if it is down.
    fn live(&self, c: &ClientRef) -> Verdict<NodeKey> {
        match self.down(c)? {
            None => self.slot(c, |slot| slot.node),
            Some(why) => Err(format!("client {} is down ({why}): call c.restart() first", c.id)),
        }
    }

    fn spec(&self, role: Role) -> NodeSpec {
        NodeSpec {
            role,
            seed: self.settings.seed,
            limits: self.limits.get(),
        }
    }

    /// `set_idle_timeout(seconds)`: the idle timeout of nodes started after.
    pub fn set_idle_timeout(&self, seconds: f64) -> Verdict<()> {
        const LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);
        let timeout = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|timeout| (Duration::from_millis(1)..=LONGEST).contains(timeout))
            .ok_or_else(|| {
                format!("an idle timeout of {seconds} s is out of range: give a duration from 0.001 s (1 ms) to 604800 s (a week)")
            })?;
        self.limits.set(self.limits.get().with_idle_timeout(timeout));
        self.say("scenario", format_args!("idle timeout of new nodes: {seconds} s"));
        Ok(())
    }

    /// `tracker(port)`.
    pub fn tracker(&self, port: i64) -> Verdict<TrackerRef> {
        let port = u16::try_from(port).map_err(|_| format!("tracker port {port} is not a port number (0 to 65535)"))?;
        let key = self
            .start_node(&self.spec(Role::Tracker), port)
            .map_err(|error| format!("cannot start the tracker: {error}"))?;
        let (addr, process) = {
            let backend = self.backend.borrow();
            (backend.addr(key), backend.describe(key))
        };
        self.trackers.borrow_mut().push(key);
        self.log.name_address(addr, scripted_address(port));
        self.log
            .record_alone(Subject::Node(Node::Tracker), ScenarioEvent::Started);
        self.count(|s| s.steps += 1);
        self.say("tracker", format_args!("listening on {addr}{process}"));
        Ok(TrackerRef { addr, key })
    }

    /// `client(id)`.
    pub fn client(&self, id: i64) -> Verdict<ClientRef> {
        let id = u64::try_from(id)
            .ok()
            .filter(|id| *id > 0)
            .ok_or_else(|| format!("client id {id} is not a positive integer"))?;
        if self.clients.borrow().contains_key(&id) {
            return Err(format!(
                "client {id} exists already in this scenario: use the one you have, or give this one another id"
            ));
        }
        let port = self.client_port(id)?;
        let dir = self.settings.root.join(id.to_string());
        Folder::create_empty(&dir).map_err(|e| format!("cannot prepare the folder of client {id}: {e}"))?;
        let node = self.start_client(id, &dir, port)?;
        let (addr, process) = {
            let backend = self.backend.borrow();
            (backend.addr(node), backend.describe(node))
        };
        let slot = Slot {
            node,
            dir: dir.clone(),
            port,
            tracker: None,
            down: None,
            rate: (0, 0),
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

    /// The port client `id` listens on: its id, unless ports are ephemeral
    /// (or simulated, where every client has an address of its own).
    fn client_port(&self, id: u64) -> Verdict<u16> {
        match u16::try_from(id) {
            Ok(port) => Ok(port),
            Err(_) if self.settings.ephemeral_ports || self.settings.sim => Ok(0),
            Err(_) => Err(format!(
                "client {id} would listen on port {id}, which does not exist; \
                 use an id up to 65535, or run with --ephemeral-ports"
            )),
        }
    }

    fn start_client(&self, id: u64, dir: &std::path::Path, port: u16) -> Verdict<NodeKey> {
        let spec = self.spec(Role::Client {
            id,
            dir: dir.to_owned(),
        });
        let node = self
            .start_node(&spec, port)
            .map_err(|error| format!("cannot start client {id}: {error}"))?;
        let addr = self.backend.borrow().addr(node);
        self.log.name_address(addr, scripted_address(port));
        Ok(node)
    }

    /// `c.register(t)`.
    pub fn register(&self, c: &ClientRef, tracker: &TrackerRef) -> Verdict<()> {
        let node = self.live(c)?;
        let previous = self.slot(c, |slot| slot.tracker)?;
        let trace = self.log.begin();
        // Moving to another tracker drops the session with the first one,
        // which then forgets the client (unless it did already).
        let moving =
            previous.is_some_and(|previous| previous != tracker.addr) && self.log.await_move(ClientId(c.id), trace.op);
        let reply = self.call(node, trace, Command::Register { tracker: tracker.addr });
        self.end(trace)?;
        if let Reply::Failed { error } = reply {
            if moving {
                self.log.move_failed(ClientId(c.id));
            }
            return Err(format!("client {} could not register: {error}", c.id));
        }
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
        self.folder_of(c)?
            .write_now(&file, |out| out.write_all(&content))
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
        let fill = random_content(self.settings.seed, &file, len, self.deadline);
        self.folder_of(c)?.write_now(&file, fill).map_err(|e| match e {
            StorageError::Io { source, .. } if source.kind() == io::ErrorKind::TimedOut => source.to_string(),
            other => format!("cannot write {file}: {other}"),
        })?;
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
        let node = self.live(c)?;
        let folder = self.folder_of(c)?;
        if !folder.contains(&file) {
            return Err(format!(
                "client {} cannot upload {file}: its folder {} has no such file; create it first with c.write(name, text)",
                c.id,
                folder.dir().display()
            ));
        }
        self.act(node, Command::Upload { file: file.clone() })?
            .map_err(|error| self.explain(c, format!("client {} cannot upload {file}", c.id), error))?;
        self.count(|s| s.steps += 1);
        self.say(c.id, format_args!("upload {file}: ACK"));
        Ok(())
    }

    /// `c.files()`.
    pub fn files(&self, c: &ClientRef) -> Verdict<Vec<String>> {
        let names = self
            .folder_of(c)?
            .list()
            .map_err(|e| format!("cannot list the folder of client {}: {e}", c.id))?;
        Ok(names.into_iter().map(String::from).collect())
    }

    /// `c.read(name)`.
    pub fn read(&self, c: &ClientRef, name: &str) -> Verdict<String> {
        let file = parse_name(name)?;
        let content = self
            .folder_of(c)?
            .read_now(&file)
            .map_err(|e| cannot_read(c, &file, e))?;
        String::from_utf8(content).map_err(|e| {
            format!(
                "{file} of client {} is not UTF-8 text ({}); compare c.sha1(name) or c.size(name) instead",
                c.id,
                bytes(e.as_bytes().len() as u64)
            )
        })
    }

    /// `c.sha1(name)` and `c.size(name)`: of the bytes on disk now.
    pub fn info(&self, c: &ClientRef, name: &str) -> Verdict<FileInfo> {
        let file = parse_name(name)?;
        self.folder_of(c)?.hash_now(&file).map_err(|e| cannot_read(c, &file, e))
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
        let failures: Vec<String> = transfers
            .iter()
            .filter_map(|transfer| self.wait(transfer).err())
            .collect();
        // One line, not one per transfer: after a time limit every one of
        // thousands fails with the same error.
        if let Some(first) = failures.first() {
            tracing::warn!(failed = failures.len(), error = %first, "transfers left running failed");
        }
        let clients: Vec<NodeKey> = self.clients.borrow().values().map(|slot| slot.node).collect();
        let trackers: Vec<NodeKey> = self.trackers.borrow_mut().drain(..).collect();
        // Trackers first: clients that stop afterwards have no session left
        // to drop, so the end of a run adds nothing to the log.
        let mut backend = self.backend.borrow_mut();
        for node in trackers.into_iter().chain(clients) {
            backend.stop(node);
        }
    }
}

fn parse_name(name: &str) -> Verdict<FileName> {
    name.parse()
        .map_err(|e: phile_core::protocol::InvalidFileName| e.to_string())
}

/// Writes `len` bytes of `write_random`'s content for `file`: a function of
/// the seed and the name only, the same in every process and on every
/// machine. Gives up with a `TimedOut` error naming the limit once
/// `deadline` passes, so a huge file cannot outlast the run's time limit.
pub(crate) fn random_content(
    seed: u64,
    file: &FileName,
    len: u64,
    deadline: Deadline,
) -> impl FnOnce(&mut dyn io::Write) -> io::Result<()> + Send + 'static {
    let mut rng = content_rng(seed, file);
    move |out: &mut dyn io::Write| {
        let mut chunk = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            if deadline.passed() {
                let message = NodeError::TimeLimit(deadline.limit.as_secs()).to_string();
                return Err(io::Error::new(io::ErrorKind::TimedOut, message));
            }
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

/// A duration in seconds as a script reads it (`now()`, `r.secs`): divided
/// once, so the closest number to the exact value. `as_secs_f64` rounds
/// the fraction and then the sum, and 4.919 s printed as
/// 4.9190000000000005.
pub(crate) fn seconds(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1e9
}

/// A byte count for humans: "5 bytes", "4.0 MiB".
pub fn bytes(n: u64) -> String {
    match n {
        0..1024 => format!("{n} bytes"),
        n => crate::review::text::bytes(n),
    }
}

/// Why client `c` could not read `file`, and, for a file it lacks, how to
/// see what it holds.
fn cannot_read(c: &ClientRef, file: &FileName, error: StorageError) -> String {
    let hint = match error {
        StorageError::NotFound { .. } => "; c.files() lists the files it holds",
        _ => "",
    };
    format!("client {} cannot read {file}: {error}{hint}", c.id)
}

/// The address a script gives a node listening on `port`: the one it
/// listens on over TCP without `--ephemeral-ports`.
fn scripted_address(port: u16) -> SocketAddr {
    SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_reads_seconds_as_they_would_be_written() {
        // `Duration::as_secs_f64` gives 4.9190000000000005 here.
        assert_eq!(seconds(Duration::from_millis(4919)).to_string(), "4.919");
        assert_eq!(seconds(Duration::from_nanos(1)).to_string(), "0.000000001");
        assert_eq!(seconds(Duration::from_secs(7 * 24 * 3600)), 604800.0);
    }
}

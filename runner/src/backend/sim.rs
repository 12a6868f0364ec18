//! Nodes on a simulated network in virtual time (`phile-run --sim`).
//!
//! The network is tokio-rs' turmoil-net: a simulated TCP stack per host,
//! packets routed between hosts by a fabric that the harness drives, packet
//! rules for latency and partitions. Each node is a host with an address of
//! its own. Everything runs on the script's thread, on a current-thread
//! tokio runtime whose clock is paused: virtual time passes only when every
//! task waits, and then jumps straight to the next timer or packet. The node
//! code is the same as over real TCP; only its [`Host`] differs:
//!
//! - sockets are turmoil-net's, on the node's host;
//! - tasks are spawned scoped to the host (every poll, and the drop of the
//!   task, happens with the host as turmoil-net's "current" one), and are
//!   counted while woken, so the harness knows when all of them are idle;
//! - blocking work (file I/O, hashing) runs inline: no other thread ever
//!   takes part, so a run repeats exactly.
//!
//! The harness loop (`Sim::drive`): let every woken task run; move every
//! packet the hosts emitted (through the rules, now or after a delay); repeat
//! at the same instant while anything moves; when nothing does, let time
//! pass to the next delayed packet or timer. A crash takes the host down:
//! its tasks are aborted and its sockets closed, as a machine's would be.
//!
//! turmoil-net fixes its set of hosts when the network is entered, so the
//! simulator starts with room for [`FIRST_CAPACITY`] nodes; a script that
//! creates more makes the run start over with [`GROWTH`] times the room
//! ([`OutOfHosts`]). The run being deterministic, the new attempt repeats
//! the first exactly up to where it stopped.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use phile_core::host::{BoxListener, BoxStream, Host, Listener, PeerStream, Task};
use phile_core::Trace;
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use turmoil_net::shim::tokio::net::{TcpListener as SimTcpListener, TcpStream as SimTcpStream};
use turmoil_net::{EnterGuard, HostId, KernelConfig, Net, Packet, Verdict};

use super::{past_time_limit, Backend, Deadline, Network, NodeKey, StartError};
use crate::command::{Command, NodeError, Reply};
use crate::event_log::Journal;
use crate::node::{Environment, HostCrash, Node, NodeSpec};

/// How many nodes the first attempt makes room for. Idle hosts cost only
/// memory (about 5 µs and a few KiB each to create; the patched turmoil-net
/// never visits a host nothing touched), so room for 1,000 clients costs a
/// small scenario 10 ms and spares most big ones a restart.
pub const FIRST_CAPACITY: usize = 1024;

/// How much more room each new attempt makes. An attempt repeats all the
/// work of the one before, so growing by four keeps the repeated work under
/// a third of the final run's (doubling cost 10,000 clients 2.5 times the
/// work), while the room stays within four times what the script needs.
pub const GROWTH: usize = 4;

/// How long a settling operation may let virtual time pass waiting for
/// what only a timeout brings about (a partitioned client's session timing
/// out at the tracker).
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// How many crossings of the slowest link a quiet drive waits for, once
/// its target is ready, for what is on its way (a reply, then a closing
/// handshake) to arrive.
const DRAIN_CROSSINGS: u32 = 4;

/// A wait with nothing that could ever end it: the simulation is stuck.
const STUCK: Duration = Duration::from_secs(365 * 24 * 3600);

/// The script created more nodes than this attempt has room for: start
/// again with `needed` room.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the simulated network needs room for more nodes; starting over with room for {needed}")]
pub struct OutOfHosts {
    /// The room the next attempt needs.
    pub needed: usize,
}

/// Nodes on a simulated network.
pub struct Sim {
    /// The nodes, by key (a restarted client gets a new key, same host).
    nodes: Vec<SimNode>,
    /// The host of each client, by id: it keeps it across restarts.
    client_hosts: HashMap<u64, (HostId, IpAddr)>,
    /// The latest node started on each host.
    node_on_host: HashMap<HostId, NodeKey>,
    /// Hosts not yet given to a node, the next one last.
    free_hosts: Vec<(HostId, IpAddr)>,
    /// How many hosts this attempt has.
    capacity: usize,
    /// Tasks, readiness and crashes: shared with every host.
    scheduler: Arc<Scheduler>,
    /// Packets on their way, and the rules they pass.
    fabric: Fabric,
    /// Where events go.
    events: Arc<dyn Journal>,
    /// When the run must stop (wall clock).
    deadline: Deadline,
    /// Virtual time at the start of the run.
    started: Instant,
    /// The runtime every task runs on; dropped before the network.
    runtime: Option<Runtime>,
    /// The network, installed on this thread; dropped last.
    network: Option<EnterGuard>,
}

/// A node and its host.
struct SimNode {
    /// The client's id; `None` for a tracker.
    client: Option<u64>,
    /// The host it runs on.
    host: HostId,
    /// Where it listens.
    addr: SocketAddr,
    /// The node, until it is stopped or its host crashes (then it is
    /// dropped on its host, so its sockets close there).
    node: Option<Arc<Node>>,
    /// Set when its host crashed.
    crashed: Arc<AtomicBool>,
}

impl Sim {
    /// A simulated network with room for `capacity` nodes, none started.
    pub fn new(capacity: usize, events: Arc<dyn Journal>, deadline: Deadline) -> io::Result<Sim> {
        // The network is simulated, but files are real: partial files,
        // their locks and the files served hold descriptors.
        super::raise_file_limit();
        let config = KernelConfig::default()
            // Packets are never lost except to a partition, where a
            // connection should go quiet rather than be reset by retries.
            .retx_threshold(u32::MAX)
            // Fewer, bigger segments: a simulated wire has no frames.
            .mtu(65536)
            .default_backlog(4096);
        let mut net = Net::with_config(config);
        // Reversed, so that popping hands out the hosts in address order.
        let free_hosts = (0..capacity)
            .rev()
            .map(|index| {
                let ip = host_ip(index);
                (net.add_host(ip), ip)
            })
            .collect();
        let scheduler = Arc::new(Scheduler::default());
        let fabric = Fabric::new(&mut net);
        let network = net.enter();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()?;
        let started = {
            let _inside = runtime.enter();
            Instant::now()
        };
        Ok(Sim {
            nodes: Vec::new(),
            client_hosts: HashMap::new(),
            node_on_host: HashMap::new(),
            free_hosts,
            capacity,
            scheduler,
            fabric,
            events,
            deadline,
            started,
            runtime: Some(runtime),
            network: Some(network),
        })
    }

    fn runtime(&self) -> &Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the simulation")
    }

    /// Virtual time now.
    fn virtual_now(&self) -> Instant {
        let _inside = self.runtime().enter();
        Instant::now()
    }

    /// The host for a node of `spec`: a client keeps its host across
    /// restarts; anything else takes the next free one.
    fn host_for(&mut self, client: Option<u64>) -> Result<(HostId, IpAddr), OutOfHosts> {
        if let Some(host) = client.and_then(|id| self.client_hosts.get(&id)) {
            return Ok(*host);
        }
        let Some(host) = self.free_hosts.pop() else {
            return Err(OutOfHosts {
                needed: self.capacity * GROWTH,
            });
        };
        if let Some(id) = client {
            self.client_hosts.insert(id, host);
        }
        Ok(host)
    }

    /// Drops a node, on its host, so its sockets close there.
    fn drop_node(&mut self, key: NodeKey) {
        let node = &mut self.nodes[key.0];
        if let Some(gone) = node.node.take() {
            turmoil_net::set_current(node.host);
            let _inside = self
                .runtime
                .as_ref()
                .expect("the runtime lives as long as the simulation")
                .enter();
            drop(gone);
        }
    }

    /// Drops the nodes whose host crashed, on their host. Only the crashed
    /// ones are visited: this runs after every step of the script.
    fn bury_crashed(&mut self) {
        let crashed = std::mem::take(&mut *self.scheduler.crashed.lock().expect("crashes poisoned"));
        for key in crashed {
            self.drop_node(key);
        }
    }

    /// Runs the simulation until `target` is ready; with `quiet`, also
    /// until nothing moves any more, or the packets on their way had the
    /// time to cross the slowest link a few times (periodic traffic over a
    /// slow link never stops: heartbeats would keep a drain going for
    /// ever). Virtual time passes only while every task waits. Fails if
    /// the run's time limit passes, or if nothing could ever make `target`
    /// ready.
    fn drive<T>(&mut self, target: impl Future<Output = T>, quiet: bool) -> Result<T, DriveError> {
        let Sim {
            runtime,
            network,
            scheduler,
            fabric,
            deadline,
            ..
        } = self;
        let runtime = runtime.as_ref().expect("the runtime lives as long as the simulation");
        let network = network.as_ref().expect("the network lives as long as the simulation");
        let outcome = runtime.block_on(async {
            let mut target = std::pin::pin!(target);
            let mut done = None;
            // Once `target` is ready, how long a quiet drive drains.
            let drain_until = |fabric: &Fabric| Instant::now() + fabric.longest_latency() * DRAIN_CROSSINGS;
            let mut drained_at = None;
            loop {
                while scheduler.ready() > 0 {
                    tokio::task::yield_now().await;
                }
                if done.is_none() {
                    if let Poll::Ready(output) = futures::poll!(target.as_mut()) {
                        // What is still on its way (an acknowledgement, a
                        // closing handshake) moves during the next drive.
                        if !quiet {
                            return Ok(output);
                        }
                        done = Some(output);
                        drained_at = Some(drain_until(fabric));
                    }
                }
                let moved = fabric.step(network);
                if moved || scheduler.ready() > 0 {
                    continue;
                }
                if let Some(output) = done.take() {
                    // Ready while the simulation idled (a timer): what that
                    // instant woke has run; a drive that is not quiet ends.
                    let drained = drained_at.is_some_and(|until| Instant::now() >= until);
                    if !quiet || !fabric.in_flight() || drained {
                        return Ok(output);
                    }
                    done = Some(output);
                }
                if deadline.passed() {
                    return Err(DriveError::TimeLimit);
                }
                let wake = match (fabric.next_delivery(), drained_at) {
                    (Some(delivery), Some(until)) => Some(delivery.min(until)),
                    (delivery, _) => delivery,
                };
                match scheduler.idle(target.as_mut(), wake, done.is_some()).await {
                    Idle::Ready(output) => {
                        done = Some(output);
                        drained_at = Some(drain_until(fabric));
                    }
                    Idle::Activity | Idle::Delivery => {}
                    Idle::Stuck => match done.take() {
                        Some(output) => return Ok(output),
                        None => return Err(DriveError::Stuck),
                    },
                }
            }
        });
        self.bury_crashed();
        outcome
    }

    /// Carries `command` to `node` on its host and waits for the reply.
    fn run_command(&mut self, key: NodeKey, trace: Trace, command: Command) -> Reply {
        let SimNode { client, host, .. } = self.nodes[key.0];
        let client = client.unwrap_or(0);
        let kill = command == Command::Kill;
        let Some(node) = self.nodes[key.0].node.clone() else {
            return super::gone(kill, client);
        };
        let (replied, reply) = tokio::sync::oneshot::channel();
        let task: Task = Box::pin(async move {
            let _ = replied.send(node.execute(trace, command).await);
        });
        {
            let _inside = self.runtime().enter();
            self.scheduler.spawn(host, task);
        }
        match self.drive(reply, false) {
            Ok(Ok(reply)) => reply,
            // The host went down before the node could answer.
            Ok(Err(_)) => super::gone(kill, client),
            Err(DriveError::TimeLimit) => past_time_limit(self.deadline.limit),
            Err(DriveError::Stuck) => Reply::Failed {
                error: NodeError::Misuse(
                    "the simulation is stuck: nothing the nodes wait for can ever happen (no packet, no timer)".into(),
                ),
            },
        }
    }
}

/// Why the simulation stopped short of its target.
#[derive(Debug)]
enum DriveError {
    /// The run's (wall-clock) time limit passed.
    TimeLimit,
    /// Nothing could ever happen any more.
    Stuck,
}

/// The address of the `index`th host: 10.0.0.1, 10.0.0.2, ...
fn host_ip(index: usize) -> IpAddr {
    let n = index as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8))
}

impl Backend for Sim {
    fn start(&mut self, spec: &NodeSpec, port: u16) -> Result<NodeKey, StartError> {
        let (host, ip) = self.host_for(spec.client())?;
        // A restarted client's old node is gone for good.
        if let Some(&old) = self.node_on_host.get(&host) {
            self.drop_node(old);
        }
        let key = NodeKey(self.nodes.len());
        turmoil_net::set_current(host);
        let _inside = self.runtime().enter();
        let listener = self
            .runtime()
            .block_on(SimTcpListener::bind(SocketAddr::new(ip, port)))
            .map_err(|error| StartError::binding(port, error))?;
        let crashed = Arc::new(AtomicBool::new(false));
        let environment = Environment {
            host: Arc::new(SimHost {
                id: host,
                scheduler: self.scheduler.clone(),
            }),
            events: self.events.clone(),
            crash: self.scheduler.crash_of(host, key, crashed.clone()),
        };
        let listener: BoxListener = Box::new(SimListener(listener));
        let node = Node::start(spec, listener, environment).map_err(|error| StartError::Other(error.to_string()))?;
        let addr = node.addr();
        self.nodes.push(SimNode {
            client: spec.client(),
            host,
            addr,
            node: Some(Arc::new(node)),
            crashed,
        });
        self.node_on_host.insert(host, key);
        Ok(key)
    }

    fn addr(&self, node: NodeKey) -> SocketAddr {
        self.nodes[node.0].addr
    }

    fn describe(&self, node: NodeKey) -> String {
        format!(" (simulated host {})", self.nodes[node.0].addr.ip())
    }

    fn call(&mut self, node: NodeKey, trace: Trace, command: Command) -> Reply {
        self.run_command(node, trace, command)
    }

    fn is_down(&self, node: NodeKey) -> bool {
        let node = &self.nodes[node.0];
        node.crashed.load(Ordering::SeqCst) || node.node.as_ref().is_none_or(|node| node.is_stopped())
    }

    fn settle(&mut self, done: &dyn Fn() -> bool) {
        // Nodes report an operation's events before they answer it: only
        // an event no request causes (a tracker noticing a crash) may
        // still be on its way.
        if done() {
            return;
        }
        // The condition depends on the event log, which wakes nobody: the
        // harness polls it again at every step; the limit's timer makes
        // sure it is polled once more at the latest then.
        let limit = self.virtual_now() + SETTLE_LIMIT;
        let mut timer = None;
        let until = std::future::poll_fn(move |cx| {
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(limit)));
            if done() || timer.as_mut().poll(cx).is_ready() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        let _ = self.drive(until, true);
    }

    fn sleep(&mut self, duration: Duration) {
        // The script's `sleep(secs)`: letting virtual time pass is what was
        // asked, and the harness jumps straight over it.
        let _ = self.drive(async move { tokio::time::sleep(duration).await }, false);
    }

    fn now(&self) -> Duration {
        self.virtual_now() - self.started
    }

    fn clock(&self) -> crate::event_log::Clock {
        let (runtime, started) = (self.runtime().handle().clone(), self.started);
        Box::new(move || {
            let _inside = runtime.enter();
            (Instant::now() - started).as_secs_f64()
        })
    }

    fn stop(&mut self, key: NodeKey) {
        let Some(node) = self.nodes[key.0].node.clone() else {
            return;
        };
        let host = self.nodes[key.0].host;
        let task: Task = Box::pin(async move { node.shutdown().await });
        {
            let _inside = self.runtime().enter();
            self.scheduler.spawn(host, task);
        }
        let _ = self.drive(std::future::ready(()), true);
        self.drop_node(key);
    }

    fn network(&mut self) -> Option<&mut dyn Network> {
        Some(self)
    }
}

impl Network for Sim {
    fn set_latency(&mut self, a: NodeKey, b: NodeKey, delay: Duration) {
        let (a, b) = (self.nodes[a.0].addr.ip(), self.nodes[b.0].addr.ip());
        self.fabric
            .rules
            .lock()
            .expect("rules poisoned")
            .set_latency(a, b, delay);
    }

    fn partition(&mut self, a: NodeKey, b: NodeKey) {
        let (a, b) = (self.nodes[a.0].addr.ip(), self.nodes[b.0].addr.ip());
        self.fabric.rules.lock().expect("rules poisoned").partition(a, b);
    }

    fn heal(&mut self, a: NodeKey, b: NodeKey) {
        let (a, b) = (self.nodes[a.0].addr.ip(), self.nodes[b.0].addr.ip());
        self.fabric.rules.lock().expect("rules poisoned").heal(a, b);
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Nodes close their sockets on their hosts, then the runtime drops
        // every task (each on its host), and only then does the network go.
        for key in 0..self.nodes.len() {
            self.drop_node(NodeKey(key));
        }
        drop(self.runtime.take());
        drop(self.network.take());
        // Each task's waker holds the scheduler, which holds the wakers:
        // the cycle is broken here, or every simulation would leak them.
        self.scheduler.tasks.lock().expect("tasks poisoned").clear();
    }
}

// ------------------------------------------------------------- the fabric

/// What moves packets between hosts: the delayed ones waiting, and the
/// rules every packet passes.
struct Fabric {
    /// Packets held back by a latency rule, soonest first.
    delayed: BinaryHeap<Delayed>,
    /// When the last packet held back on each link (source, destination)
    /// is due: a later packet never overtakes it, since the simulated TCP
    /// drops segments that arrive out of order (and never sends them again).
    link_due: HashMap<(IpAddr, IpAddr), Instant>,
    /// Numbers packets in the order they were held, so two due at the same
    /// instant go in that order.
    next_seq: u64,
    /// Reused buffer for what hosts emit.
    egress: Vec<Packet>,
    /// Latency and partitions, shared with the rule installed on the net.
    rules: Arc<Mutex<Rules>>,
}

/// A packet delivered later.
struct Delayed {
    at: Instant,
    seq: u64,
    packet: Packet,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Delayed {}

impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Delayed {
    /// Reversed: the heap's top is the soonest.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl Fabric {
    fn new(net: &mut Net) -> Fabric {
        let rules = Arc::new(Mutex::new(Rules::default()));
        let judging = rules.clone();
        net.rule(move |packet: &Packet| judging.lock().expect("rules poisoned").verdict(packet));
        Fabric {
            delayed: BinaryHeap::new(),
            link_due: HashMap::new(),
            next_seq: 0,
            egress: Vec::with_capacity(256),
            rules,
        }
    }

    /// Delivers what is due and what the hosts emitted (or holds it back,
    /// or drops it, as the rules say). Returns whether anything moved.
    fn step(&mut self, network: &EnterGuard) -> bool {
        let now = Instant::now();
        let mut moved = false;
        while self.delayed.peek().is_some_and(|next| next.at <= now) {
            let due = self.delayed.pop().expect("peeked");
            network.deliver(due.packet);
            moved = true;
        }
        network.egress_all(&mut self.egress);
        let mut egress = std::mem::take(&mut self.egress);
        for packet in egress.drain(..) {
            moved = true;
            let delay = match network.evaluate(&packet) {
                Verdict::Drop => continue,
                Verdict::Deliver(delay) => delay,
                Verdict::Pass => Duration::ZERO,
            };
            let link = (packet.src, packet.dst);
            let at = self
                .link_due
                .get(&link)
                .map_or(now + delay, |due| (now + delay).max(*due));
            if at <= now {
                network.deliver(packet);
                continue;
            }
            self.link_due.insert(link, at);
            self.delayed.push(Delayed {
                at,
                seq: self.next_seq,
                packet,
            });
            self.next_seq += 1;
        }
        self.egress = egress;
        self.link_due.retain(|_, due| *due > now);
        moved
    }

    /// When the next held-back packet is due.
    fn next_delivery(&self) -> Option<Instant> {
        self.delayed.peek().map(|next| next.at)
    }

    /// Whether packets are held back, still on their way.
    fn in_flight(&self) -> bool {
        !self.delayed.is_empty()
    }

    /// The latency of the slowest link.
    fn longest_latency(&self) -> Duration {
        let rules = self.rules.lock().expect("rules poisoned");
        rules.latency.values().copied().max().unwrap_or_default()
    }
}

/// Latency and partitions between pairs of hosts, in both directions.
#[derive(Default)]
struct Rules {
    latency: HashMap<(IpAddr, IpAddr), Duration>,
    partitions: HashSet<(IpAddr, IpAddr)>,
}

/// A pair of hosts, whichever way round.
fn pair(a: IpAddr, b: IpAddr) -> (IpAddr, IpAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

impl Rules {
    fn set_latency(&mut self, a: IpAddr, b: IpAddr, delay: Duration) {
        self.latency.insert(pair(a, b), delay);
    }

    fn partition(&mut self, a: IpAddr, b: IpAddr) {
        self.partitions.insert(pair(a, b));
    }

    fn heal(&mut self, a: IpAddr, b: IpAddr) {
        self.partitions.remove(&pair(a, b));
    }

    fn verdict(&self, packet: &Packet) -> Verdict {
        let between = pair(packet.src, packet.dst);
        if self.partitions.contains(&between) {
            return Verdict::Drop;
        }
        match self.latency.get(&between) {
            Some(delay) => Verdict::Deliver(*delay),
            None => Verdict::Pass,
        }
    }
}

// ---------------------------------------------------------- the scheduler

/// The tasks of every host: how many are woken and not yet run, how to
/// wake the harness, and how to take a host down.
#[derive(Default)]
struct Scheduler {
    /// Tasks woken and not yet polled.
    ready: AtomicUsize,
    /// Set whenever a task is woken; the idle harness waits for it.
    activity: AtomicBool,
    /// The harness, while it waits.
    harness: Mutex<Option<Waker>>,
    /// Each host's tasks, to abort them all when it crashes. A std mutex:
    /// held for a push or a sweep.
    tasks: Mutex<HashMap<HostId, Vec<HostTask>>>,
    /// Nodes whose host crashed since the harness last buried them.
    crashed: Mutex<Vec<NodeKey>>,
}

/// A task of a host: how to abort it, and its waker (to count it as ready
/// when it is aborted, since tokio then runs it without our waker).
type HostTask = (AbortHandle, Arc<TaskWaker>);

/// How an idle wait ended.
enum Idle<T> {
    /// The target became ready.
    Ready(T),
    /// A task was woken (a timer fired).
    Activity,
    /// The next held-back packet is due.
    Delivery,
    /// Nothing happened before the far-away limit: nothing can.
    Stuck,
}

impl Scheduler {
    fn ready(&self) -> usize {
        self.ready.load(Ordering::SeqCst)
    }

    /// Spawns `task` on the runtime (which must be entered), scoped to
    /// `host`.
    fn spawn(self: &Arc<Self>, host: HostId, task: Task) {
        let waker = Arc::new(TaskWaker {
            queued: AtomicBool::new(true),
            finished: AtomicBool::new(false),
            tokio: Mutex::new(None),
            scheduler: self.clone(),
        });
        self.ready.fetch_add(1, Ordering::SeqCst);
        let handle = tokio::spawn(Scoped {
            host,
            waker: waker.clone(),
            task,
        });
        let mut tasks = self.tasks.lock().expect("tasks poisoned");
        let list = tasks.entry(host).or_default();
        // Forget finished tasks now and then, so the list stays short.
        if list.len() >= 64 && list.len().is_power_of_two() {
            list.retain(|(task, _)| !task.is_finished());
        }
        list.push((handle.abort_handle(), waker));
    }

    /// What crashing `host` (running `node`) does: mark it, and abort all
    /// its tasks.
    fn crash_of(self: &Arc<Self>, host: HostId, node: NodeKey, crashed: Arc<AtomicBool>) -> HostCrash {
        let scheduler = Arc::downgrade(self);
        Arc::new(move || {
            crashed.store(true, Ordering::SeqCst);
            if let Some(scheduler) = scheduler.upgrade() {
                scheduler.crashed.lock().expect("crashes poisoned").push(node);
                let tasks = scheduler.tasks.lock().expect("tasks poisoned").remove(&host);
                for (task, waker) in tasks.into_iter().flatten() {
                    // tokio runs the cancellation without our waker: count
                    // the task as ready, so the harness waits until its
                    // future (and its sockets) are dropped.
                    waker.wake_by_ref();
                    task.abort();
                }
            }
        })
    }

    fn woken(&self) {
        self.activity.store(true, Ordering::SeqCst);
        if let Some(harness) = self.harness.lock().expect("harness poisoned").as_ref() {
            harness.wake_by_ref();
        }
    }

    /// Waits, letting virtual time pass, until `target` is ready (unless it
    /// already was: `done`), a task is woken, or the packet due at
    /// `delivery` is. With no packet on its way, a timer far away stands
    /// for "nothing can ever happen".
    async fn idle<T>(
        &self,
        mut target: Pin<&mut impl Future<Output = T>>,
        delivery: Option<Instant>,
        done: bool,
    ) -> Idle<T> {
        let wake_at = delivery.unwrap_or_else(|| Instant::now() + STUCK);
        let mut timer = std::pin::pin!(tokio::time::sleep_until(wake_at));
        self.activity.store(false, Ordering::SeqCst);
        let outcome = std::future::poll_fn(|cx| {
            *self.harness.lock().expect("harness poisoned") = Some(cx.waker().clone());
            if !done {
                if let Poll::Ready(output) = target.as_mut().poll(cx) {
                    return Poll::Ready(Idle::Ready(output));
                }
            }
            if self.activity.swap(false, Ordering::SeqCst) {
                return Poll::Ready(Idle::Activity);
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(match delivery {
                    Some(_) => Idle::Delivery,
                    None => Idle::Stuck,
                });
            }
            Poll::Pending
        })
        .await;
        self.harness.lock().expect("harness poisoned").take();
        outcome
    }
}

/// The waker a scoped task's future sees: counts the task as ready, tells
/// the harness, then wakes the task through tokio.
struct TaskWaker {
    /// Woken and not yet polled.
    queued: AtomicBool,
    /// Done (or dropped): later wakes are stale.
    finished: AtomicBool,
    /// tokio's own waker for the task, as of its last poll.
    tokio: Mutex<Option<Waker>>,
    /// The counts.
    scheduler: Arc<Scheduler>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.finished.load(Ordering::SeqCst) {
            return;
        }
        if !self.queued.swap(true, Ordering::SeqCst) {
            self.scheduler.ready.fetch_add(1, Ordering::SeqCst);
        }
        self.scheduler.woken();
        if let Some(tokio) = self.tokio.lock().expect("waker poisoned").as_ref() {
            tokio.wake_by_ref();
        }
    }
}

impl TaskWaker {
    /// The task is being polled (or dropped): no longer counted as ready.
    fn dequeue(&self) {
        if self.queued.swap(false, Ordering::SeqCst) {
            self.scheduler.ready.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// A task of one host: every poll and its drop happen with that host as
/// turmoil-net's current one, so its socket calls land in its kernel.
struct Scoped {
    host: HostId,
    waker: Arc<TaskWaker>,
    task: Task,
}

impl Future for Scoped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            let mut tokio = self.waker.tokio.lock().expect("waker poisoned");
            if !tokio.as_ref().is_some_and(|known| known.will_wake(cx.waker())) {
                *tokio = Some(cx.waker().clone());
            }
        }
        self.waker.dequeue();
        turmoil_net::set_current(self.host);
        let waker = Waker::from(self.waker.clone());
        let polled = self.task.as_mut().poll(&mut Context::from_waker(&waker));
        if polled.is_ready() {
            self.waker.finished.store(true, Ordering::SeqCst);
        }
        polled
    }
}

impl Drop for Scoped {
    fn drop(&mut self) {
        self.waker.finished.store(true, Ordering::SeqCst);
        self.waker.dequeue();
        // The task's sockets close as it is dropped: on its host.
        turmoil_net::set_current(self.host);
    }
}

// ------------------------------------------------------------ the seam

/// A node's host on the simulated network.
struct SimHost {
    /// Which host.
    id: HostId,
    /// Where its tasks are counted.
    scheduler: Arc<Scheduler>,
}

impl Host for SimHost {
    fn connect(&self, addr: SocketAddr) -> Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>> {
        // Runs inside one of this host's tasks, so the socket is its own.
        Box::pin(async move {
            let stream = SimTcpStream::connect(addr).await?;
            Ok(Box::new(sim_stream(stream, addr)) as BoxStream)
        })
    }

    fn spawn(&self, task: Task) {
        self.scheduler.spawn(self.id, task);
    }

    fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) -> Task {
        // Inline: no other thread, so nothing depends on thread timing.
        job();
        Box::pin(std::future::ready(()))
    }
}

/// A simulated socket, as a node sees streams: its simulated kernel tells
/// how long its sends waited on the other side's receive window, as
/// Linux's does over TCP.
fn sim_stream(stream: SimTcpStream, peer: SocketAddr) -> PeerStream<SimTcpStream> {
    PeerStream::new(stream, peer).gauged(|stream| stream.window_waits().ok())
}

/// A simulated listener, as a node sees listeners.
struct SimListener(SimTcpListener);

impl Listener for SimListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxStream, SocketAddr)>> {
        self.0
            .poll_accept(cx)
            .map_ok(|(stream, from)| (Box::new(sim_stream(stream, from)) as BoxStream, from))
    }
}

#[cfg(test)]
mod tests {
    //! Every test runs on the fixture's paused clock: each `sleep` below
    //! is virtual time, the pace of a made-up reader or writer, never a
    //! wait for something to happen.

    use super::*;
    use phile_core::host::Stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both ends of a fresh connection on a simulated loopback: (reader,
    /// writer), the writer as a node sees it.
    async fn loopback_pair() -> (SimTcpStream, PeerStream<SimTcpStream>) {
        let listener = SimTcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (writer, accepted) = tokio::join!(SimTcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, sim_stream(writer.unwrap(), addr))
    }

    /// Writes `bytes` to `writer` for `span` of virtual time, however far it gets.
    async fn write_for(writer: &mut PeerStream<SimTcpStream>, bytes: usize, span: Duration) {
        let _ = tokio::time::timeout(span, writer.write_all(&vec![7; bytes])).await;
    }

    #[test]
    fn a_simulated_stream_counts_the_time_its_reader_keeps_it_waiting() {
        turmoil_net::fixture::lo(async {
            let (_reader, mut writer) = loopback_pair().await;
            assert_eq!(writer.receiver_limited(), Some(Duration::ZERO), "nothing sent yet");
            // The reader takes nothing: the window fills at once, and the
            // sends wait on it from then on.
            // (The fixture moves packets a millisecond at a time.)
            write_for(&mut writer, 1 << 20, Duration::from_secs(5)).await;
            let waited = writer.receiver_limited().unwrap();
            assert!(
                waited >= Duration::from_millis(4990) && waited <= Duration::from_secs(5),
                "waited {waited:?} of 5 s"
            );
        });
    }

    #[test]
    fn a_simulated_stream_counts_the_time_a_reader_that_trickles_keeps_it_waiting() {
        turmoil_net::fixture::lo(async {
            let (mut reader, mut writer) = loopback_pair().await;
            let trickle = async {
                let mut sip = [0; 4096];
                loop {
                    // Virtual time: the reader's pace.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    reader.read_exact(&mut sip).await.unwrap();
                }
            };
            // 40 KB/s: the window re-opens every 0.8 s, and fills at once.
            tokio::select! {
                () = write_for(&mut writer, 1 << 20, Duration::from_secs(10)) => {}
                () = trickle => unreachable!(),
            }
            let waited = writer.receiver_limited().unwrap();
            assert!(waited >= Duration::from_secs(9), "waited {waited:?} of 10 s");
        });
    }

    #[test]
    fn a_simulated_stream_stops_counting_once_its_reader_catches_up() {
        turmoil_net::fixture::lo(async {
            let (mut reader, mut writer) = loopback_pair().await;
            let catch_up = async {
                // Virtual time: the reader takes nothing for 2 s.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let mut got = vec![0; 1 << 20];
                reader.read_exact(&mut got).await.unwrap();
            };
            tokio::join!(async { writer.write_all(&vec![7; 1 << 20]).await.unwrap() }, catch_up);
            // Virtual time: 3 s more, with nothing left to send.
            tokio::time::sleep(Duration::from_secs(3)).await;
            let waited = writer.receiver_limited().unwrap();
            assert!(
                waited >= Duration::from_millis(1990) && waited <= Duration::from_secs(2),
                "waited {waited:?}, 2 s of it on the reader"
            );
        });
    }

    #[test]
    fn a_simulated_stream_does_not_count_the_time_its_bytes_spend_on_the_way() {
        // Bytes in flight all along, the window never filled.
        let (waited, _) = waits_over_a_50_ms_link(false);
        assert_eq!(waited, Duration::ZERO);
        // The window full of bytes on their way, round trip after round
        // trip (the stack has no window scaling), the reader taking each
        // at once: not counted, but for the fixture's millisecond steps.
        let (waited, took) = waits_over_a_50_ms_link(true);
        assert!(
            took > Duration::from_secs(3),
            "4 MiB in 64 KiB per 100 ms took {took:?}"
        );
        assert!(waited < took / 20, "waited {waited:?} of {took:?}");
    }

    /// How long a writer's sends waited on the window, and how long it
    /// wrote, over a 50 ms link to a reader that takes every byte at once:
    /// 100 KB/s for a second, or 4 MiB as fast as the link goes (`bulk`).
    fn waits_over_a_50_ms_link(bulk: bool) -> (Duration, Duration) {
        // No retransmission, as `Sim` runs it.
        turmoil_net::fixture::ClientServer::with_config(KernelConfig::default().retx_threshold(u32::MAX))
            .server("reader", async {
                let listener = SimTcpListener::bind("0.0.0.0:9000").await.unwrap();
                let (mut reader, _) = listener.accept().await.unwrap();
                let mut sink = Vec::new();
                reader.read_to_end(&mut sink).await.unwrap();
            })
            .run("writer", async move {
                turmoil_net::rule(turmoil_net::Latency::fixed(Duration::from_millis(50))).forget();
                let addr = SocketAddr::new(turmoil_net::lookup_host("reader").unwrap(), 9000);
                let mut writer = sim_stream(SimTcpStream::connect(addr).await.unwrap(), addr);
                let start = Instant::now();
                if bulk {
                    writer.write_all(&vec![7; 4 << 20]).await.unwrap();
                    writer.flush().await.unwrap();
                } else {
                    for _ in 0..100 {
                        writer.write_all(&[7; 1024]).await.unwrap();
                        // Virtual time: the writer's pace.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                (writer.receiver_limited().unwrap(), start.elapsed())
            })
    }
}

//! The ways of running a scenario's nodes. Each backend starts nodes and
//! carries [`Command`]s to them; the nodes themselves ([`crate::node`]) are
//! the same code everywhere:
//!
//! - [`local`]: tasks of this process on a tokio runtime, over real TCP;
//! - [`processes`]: a `phile agent` process per node, over real TCP, driven
//!   through its standard input and output;
//! - [`sim`]: hosts on a simulated network (turmoil-net) in virtual time,
//!   all on the script's thread, so that a run repeats exactly.

pub mod local;
pub mod processes;
pub mod sim;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use phile_core::Trace;

use crate::command::{Command, NodeError, Reply};
use crate::node::NodeSpec;

/// Which node of a backend, in the order they were started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeKey(pub usize);

/// Why a node could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The port is taken.
    #[error("port {0} is in use (another phile-run, or a phile tracker, still running?); stop it, or run with --ephemeral-ports")]
    PortInUse(u16),
    /// The simulated network has no room for another node in this attempt.
    #[error(transparent)]
    OutOfHosts(#[from] sim::OutOfHosts),
    /// Another node would run the process out of file descriptors.
    #[error(
        "this scenario needs more file descriptors than the limit of {limit} allows \
         ({open} open; every node over real TCP takes about {FDS_PER_NODE}): raise the limit \
         (ulimit -n), or run it with --sim"
    )]
    OutOfFiles {
        /// The process's limit.
        limit: u64,
        /// How many are open now.
        open: u64,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl StartError {
    /// Explains a failure to bind `port`.
    pub fn binding(port: u16, error: io::Error) -> StartError {
        match error.kind() {
            io::ErrorKind::AddrInUse => StartError::PortInUse(port),
            _ => StartError::Other(format!("cannot listen on port {port}: {error}")),
        }
    }
}

/// A way of running nodes.
pub trait Backend {
    /// Starts a node of `spec` listening on `port` (`0`: any free one).
    fn start(&mut self, spec: &NodeSpec, port: u16) -> Result<NodeKey, StartError>;

    /// Where `node` listens.
    fn addr(&self, node: NodeKey) -> SocketAddr;

    /// " (process N)" when the node is a process of its own, for the step
    /// lines; empty otherwise.
    fn describe(&self, node: NodeKey) -> String;

    /// Carries out `command` on `node` as part of the operation traced
    /// `trace`, and waits for the reply.
    fn call(&mut self, node: NodeKey, trace: Trace, command: Command) -> Reply;

    /// Whether `node` went down on its own (a fault crashed it).
    fn is_down(&self, node: NodeKey) -> bool;

    /// Lets what the last operation set off happen before it ends: in
    /// processes, waits until every process has delivered the events it
    /// reported; in a simulation, runs until the network is quiet and
    /// `done()` holds (letting virtual time pass, within reason, for what
    /// only a timeout brings about). Over real networks in this process,
    /// there is nothing to wait for here.
    fn settle(&mut self, done: &dyn Fn() -> bool);

    /// Lets `duration` pass: background transfers, heartbeats and timeouts
    /// go on meanwhile.
    fn sleep(&mut self, duration: Duration);

    /// Time since the run started: virtual under simulation.
    fn now(&self) -> Duration;

    /// Stops `node` and waits until it is gone.
    fn stop(&mut self, node: NodeKey);

    /// The simulated network, when there is one.
    fn network(&mut self) -> Option<&mut dyn Network> {
        None
    }

    /// A clock that reads [`Backend::now`] from any thread or task, in
    /// seconds: it times events for the report (never for the log).
    fn clock(&self) -> crate::event_log::Clock;
}

/// What only a simulated network can do.
pub trait Network {
    /// Every message between `a` and `b` takes `delay` one way.
    fn set_latency(&mut self, a: NodeKey, b: NodeKey, delay: Duration);
    /// `a` and `b` can no longer reach each other.
    fn partition(&mut self, a: NodeKey, b: NodeKey);
    /// Undoes [`Network::partition`].
    fn heal(&mut self, a: NodeKey, b: NodeKey);
}

/// About how many file descriptors one node holds over real TCP: its
/// listener, its session, a transfer or two, a heartbeat in flight.
pub const FDS_PER_NODE: u64 = 6;

/// Raises this process's soft limit on open files to the hard limit: a
/// scenario with many clients holds a few sockets per client, and the
/// default soft limit (often 1,024) is far below what the system allows.
pub fn raise_file_limit() {
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(%error, "could not raise the open-file limit");
    }
}

/// Keeps a backend from running this process out of file descriptors:
/// better a clear error when a node would not fit than accept loops that
/// fail and retry later.
///
/// Counting the open descriptors lists `/proc/self/fd`, which costs as
/// much as there are descriptors: counted at every start, 5,000 clients
/// spent most of their run listing it. So the budget counts again only
/// once the nodes started since the last count could have used half of
/// what was spare then (at [`FDS_PER_NODE`] each); near the limit it counts
/// more and more often, and refuses the node that would not fit.
#[derive(Debug, Default)]
pub struct FileBudget {
    /// Descriptors that nodes may take before the next count.
    uncounted: u64,
}

impl FileBudget {
    /// Makes room for one more node, or says why there is none.
    pub fn reserve_node(&mut self) -> Result<(), StartError> {
        if let Some(left) = self.uncounted.checked_sub(FDS_PER_NODE) {
            self.uncounted = left;
            return Ok(());
        }
        let Some((open, limit)) = open_files() else {
            // Nothing to count with: no check, now or later.
            self.uncounted = u64::MAX;
            return Ok(());
        };
        let spare = limit.saturating_sub(open);
        if spare < 2 * FDS_PER_NODE {
            return Err(StartError::OutOfFiles { limit, open });
        }
        self.uncounted = spare / 2 - FDS_PER_NODE;
        Ok(())
    }
}

/// How many files this process has open, and its limit. Linux lists a
/// process's open descriptors in `/proc/self/fd`; elsewhere, `None`.
fn open_files() -> Option<(u64, u64)> {
    let (limit, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some((open, limit))
}

/// The address a node listens on over real TCP: loopback, the scripted
/// port unless ports are ephemeral.
pub fn loopback(port: u16, ephemeral: bool) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, if ephemeral { 0 } else { port }))
}

/// The reply of client `client`'s node, gone (crashed, or its host down)
/// before it could answer: a kill found what it wanted; anything else,
/// that the client stopped.
pub fn gone(kill: bool, client: u64) -> Reply {
    match kill {
        true => Reply::Done,
        false => Reply::Failed {
            error: NodeError::Stopped(client),
        },
    }
}

/// The reply of a node that could not finish before the time limit.
pub fn past_time_limit(limit: Duration) -> Reply {
    Reply::Failed {
        error: NodeError::TimeLimit(limit.as_secs()),
    }
}

/// Time as the real backends count it: the wall clock, from the start of
/// the run, and sleeps that never outlast the run's deadline.
#[derive(Clone, Copy, Debug)]
pub struct WallTime {
    /// When the run started.
    started: Instant,
    /// When it must stop.
    deadline: Deadline,
}

impl WallTime {
    /// Time from now, until `deadline`.
    pub fn starting(deadline: Deadline) -> WallTime {
        WallTime {
            started: Instant::now(),
            deadline,
        }
    }

    /// [`Backend::sleep`]: the script thread waits (the nodes go on).
    pub fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration.min(self.deadline.left()));
    }

    /// [`Backend::now`].
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// [`Backend::clock`].
    pub fn clock(&self) -> crate::event_log::Clock {
        let started = self.started;
        Box::new(move || started.elapsed().as_secs_f64())
    }
}

/// The wall-clock deadline of a run, and its length.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// When the run must stop.
    pub at: Instant,
    /// The limit it was set from (for messages).
    pub limit: Duration,
}

impl Deadline {
    /// A deadline `limit` from now.
    pub fn after(limit: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + limit,
            limit,
        }
    }

    /// Whether it has passed.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    /// What is left of it.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }
}

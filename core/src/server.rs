//! The accept loop shared by the tracker and the peer servers.
//!
//! As in mini-redis: the server takes an already-bound listener (so tests
//! bind port 0 and never guess ports), caps open connections with a
//! semaphore (a permit per connection, so a flood of connections cannot
//! exhaust memory or file descriptors), backs off when `accept` fails, and
//! never lets one connection's error stop the listener. One remote address
//! may hold only a share of the connections, so a single misbehaving host
//! cannot take every slot. Once every slot is taken, a newcomer whose
//! address, counting it, holds fewer connections than the address that
//! holds the most takes the place of that address's newest, so a few
//! addresses cannot keep everyone else out (it takes one connection from
//! each of as many addresses as there are slots). That holds for the
//! tracker too: a cut session unlists its client, but a tracker whose
//! newcomers waited could be filled by four addresses for good. At the
//! tracker, an address makes room once a minute at most
//! ([`Limits::room_interval`]): a connection costs nothing, and the client
//! it cuts, forgotten with its files, may be cut again as soon as it comes
//! back to announce them all.
//! Shutdown is a cancellation
//! token: the loop stops accepting, every handler is cut, and
//! [`ServerHandle::shutdown`] returns once all of them are gone.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::Connection;
use crate::host::{self, BoxListener, BoxStream, Host};
use crate::origin::Origin;

/// How often one address may make room at a full tracker
/// ([`Limits::room_interval`]).
pub const ROOM_INTERVAL: Duration = Duration::from_secs(60);

/// Bounds that keep a server responsive whatever its clients do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once. Past it, a newcomer from an address
    /// that, counting it, holds fewer connections than the address that
    /// holds the most cuts that address's newest connection and takes its
    /// place (a cut conversation costs a downloader one peer, a cut
    /// tracker session unlists its client); any other is closed at once.
    pub max_connections: usize,
    /// Connections served at once from one remote address (an IPv6 one by
    /// its /64, [`Origin`]); further ones are closed at once, so no single
    /// host can take every slot.
    pub max_per_address: usize,
    /// How often one address may make room at a full server (zero: each
    /// time it holds fewer). A peer's is zero: a cut conversation costs a
    /// downloader one peer, and a bound would let a few addresses that
    /// fill a peer keep an honest address's second connection out. The
    /// tracker's is [`ROOM_INTERVAL`]: a client it cuts is forgotten with
    /// its files, comes back as the newest of its address to announce
    /// them all, and without a bound each connection from anywhere that
    /// holds fewer could cut it again.
    pub room_interval: Duration,
    /// The longest a read or write may make no progress before the
    /// connection is dropped (or a download fails over).
    pub idle_timeout: Duration,
    /// How long a new connection may stay silent before its first request:
    /// short, so connections that never ask anything free their slot fast.
    pub request_timeout: Duration,
    /// How long a downloader waits for a holder to start answering before
    /// it tries another: well below the idle timeout of a transfer under
    /// way, so stalled holders cost seconds, not minutes.
    pub first_byte_timeout: Duration,
    /// How often a client tells the tracker it is still there.
    pub heartbeat_interval: Duration,
    /// How long the tracker keeps a silent session: past it, the client is
    /// taken for gone (its host crashed or the network dropped it without
    /// closing the connection) and forgotten.
    pub session_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_per_address: 256,
            room_interval: Duration::ZERO,
            idle_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(10),
            session_timeout: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// These limits with an idle timeout of `idle`, and the shorter
    /// timeouts never longer than it.
    pub fn with_idle_timeout(self, idle: Duration) -> Limits {
        Limits {
            idle_timeout: idle,
            request_timeout: self.request_timeout.min(idle),
            first_byte_timeout: self.first_byte_timeout.min(idle),
            ..self
        }
    }
}

/// A running server: its address, and the way to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    /// The address the listener is bound to.
    local_addr: SocketAddr,
    /// Cancelled to stop accepting new connections.
    accepting: CancellationToken,
    /// Cancelled to stop the server and cut every connection.
    shutdown: CancellationToken,
    /// Tracks the accept loop, which ends after every handler has ended.
    task: TaskTracker,
}

/// Dropping the handle stops the server: its port and tasks never outlive it.
impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, cuts every open connection, and waits until every
    /// connection task is gone.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.task.wait().await;
    }

    /// Stops accepting, lets the connections in progress finish for up to
    /// `grace`, then cuts what is left and waits until every task is gone.
    pub async fn drain(&self, grace: Duration) {
        self.accepting.cancel();
        if tokio::time::timeout(grace, self.task.wait()).await.is_err() {
            tracing::info!("grace period over; cutting the connections left");
        }
        self.shutdown().await;
    }
}

/// Serves every connection accepted on `listener` with `handle`, in a task
/// of `host`, until the returned handle is shut down or `shutdown` is
/// cancelled (by anyone holding the token: a client's crash, say).
pub fn spawn<H, F>(
    host: Arc<dyn Host>,
    listener: BoxListener,
    limits: Limits,
    shutdown: CancellationToken,
    handle: H,
) -> io::Result<ServerHandle>
where
    H: Fn(Connection) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let local_addr = listener.local_addr()?;
    let accepting = shutdown.child_token();
    let task = TaskTracker::new();
    let server = Server {
        host: host.clone(),
        limits,
        accepting: accepting.clone(),
        shutdown: shutdown.clone(),
        handle,
    };
    host.spawn(Box::pin(task.track_future(server.accept_loop(listener))));
    task.close();
    Ok(ServerHandle {
        local_addr,
        accepting,
        shutdown,
        task,
    })
}

/// What the accept loop needs.
struct Server<H> {
    /// Where handlers run.
    host: Arc<dyn Host>,
    /// Connection caps and timeouts.
    limits: Limits,
    /// Cancelled to stop accepting.
    accepting: CancellationToken,
    /// Cancelled to cut every connection.
    shutdown: CancellationToken,
    /// Serves one connection.
    handle: H,
}

impl<H, F> Server<H>
where
    H: Fn(Connection) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    async fn accept_loop(self, mut listener: BoxListener) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let per_address = PerAddress::new(self.limits.room_interval, self.limits.max_connections);
        let handlers = TaskTracker::new();
        let never_closed = "the semaphore is never closed";
        loop {
            let (stream, from) = tokio::select! {
                biased;
                _ = self.accepting.cancelled() => break,
                accepted = accept(&mut listener) => accepted,
            };
            let cut = self.shutdown.child_token();
            let Some(slot) = per_address.take(from.ip(), self.limits.max_per_address, cut.clone()) else {
                tracing::debug!(%from, "too many connections from one address; closing this one");
                continue;
            };
            let permit = match permits.clone().try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) if per_address.make_room_for(&slot) => {
                    tracing::debug!(%from, "every slot taken: cut the newest connection of the address that holds the most");
                    // The cut connection's handler ends at its next poll.
                    tokio::select! {
                        biased;
                        _ = self.accepting.cancelled() => break,
                        permit = permits.clone().acquire_owned() => permit.expect(never_closed),
                    }
                }
                Err(_) => {
                    tracing::debug!(%from, "every slot taken, none by an address that holds more; closing this one");
                    continue;
                }
            };
            let Some(connection) = self.connection(stream) else {
                continue;
            };
            let handler = (self.handle)(connection);
            let served = handlers.track_future(async move {
                tokio::select! {
                    biased;
                    _ = cut.cancelled() => {}
                    _ = handler => {}
                }
                drop((permit, slot));
            });
            self.host.spawn(Box::pin(served));
        }
        // Stop listening at once (the port is free again), then wait for the
        // connections in progress.
        drop(listener);
        handlers.close();
        handlers.wait().await;
    }

    fn connection(&self, stream: BoxStream) -> Option<Connection> {
        match Connection::new(stream, self.limits.idle_timeout) {
            Ok(connection) => Some(connection),
            Err(error) => {
                tracing::debug!(%error, "connection closed before it could be served");
                None
            }
        }
    }
}

/// The connections each remote [`Origin`] holds, oldest first, each with
/// the token that cuts it.
#[derive(Clone, Default)]
struct PerAddress(Arc<Mutex<Held>>);

/// How often an address may make room, and the most addresses remembered
/// as having made room lately (past it, nobody makes room until one is
/// forgotten: the memory of it is bounded, however many addresses come).
#[derive(Clone, Copy, Default)]
struct RoomPolicy {
    interval: Duration,
    remembered: usize,
}

/// What [`PerAddress`] guards.
#[derive(Default)]
struct Held {
    /// Each origin's connections: a connection ending costs a lookup,
    /// however many its origin holds (the tracker's may hold 25,000).
    by_origin: HashMap<Origin, Connections>,
    /// The origins with live connections, by how many they hold and their
    /// newest: the last holds the most. A newcomer at the cap finds whom
    /// to cut in O(log n), not by counting every connection (the tracker
    /// holds 100,000, and newcomers can come as fast as they like).
    ranking: BTreeSet<Rank>,
    /// How often an origin may make room.
    policy: RoomPolicy,
    /// The origins that made room within the policy's interval, with
    /// when, oldest first; `lately` holds the same origins, to look one
    /// up.
    made_room: VecDeque<(Instant, Origin)>,
    lately: HashSet<Origin>,
    /// The id of the next connection.
    next: u64,
}

/// An origin's place in [`Held::ranking`]: its live connections, the id
/// of its newest, and the origin.
type Rank = (usize, u64, Origin);

/// The connections of one origin.
#[derive(Default)]
struct Connections {
    /// Those still served, by id (ids rise, so oldest first), each with
    /// the token that cuts it.
    live: BTreeMap<u64, CancellationToken>,
    /// Those cut to make room and not gone yet: they still count against
    /// the origin's cap, but not as holding a place.
    cut: BTreeSet<u64>,
}

impl Connections {
    /// Where the origin stands among those with live connections, if it
    /// has any.
    fn rank(&self, origin: Origin) -> Option<Rank> {
        let (newest, _) = self.live.last_key_value()?;
        Some((self.live.len(), *newest, origin))
    }

    fn len(&self) -> usize {
        self.live.len() + self.cut.len()
    }
}

impl Held {
    /// Lets the origins that made room before `then` make room again.
    fn forget_room_made_before(&mut self, then: Instant) {
        while let Some(&(at, origin)) = self.made_room.front() {
            if at >= then {
                break;
            }
            self.made_room.pop_front();
            self.lately.remove(&origin);
        }
    }

    /// Changes `origin`'s connections with `change`, keeping the ranking
    /// in step and leaving no entry for an origin with none.
    fn update(&mut self, origin: Origin, change: impl FnOnce(&mut Connections)) {
        let connections = self.by_origin.entry(origin).or_default();
        if let Some(rank) = connections.rank(origin) {
            self.ranking.remove(&rank);
        }
        change(connections);
        match connections.rank(origin) {
            Some(rank) => _ = self.ranking.insert(rank),
            None if connections.len() == 0 => _ = self.by_origin.remove(&origin),
            None => {}
        }
    }
}

impl PerAddress {
    /// Counts in which an origin may make room once per `interval` (each
    /// time, for zero), and at most `remembered` origins are remembered
    /// as having made room.
    fn new(interval: Duration, remembered: usize) -> PerAddress {
        let policy = RoomPolicy { interval, remembered };
        PerAddress(Arc::new(Mutex::new(Held {
            policy,
            ..Held::default()
        })))
    }

    /// A std mutex: held for a map update, never across an `.await`.
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.0.lock().expect("address counts poisoned")
    }

    /// A slot for one more connection from `ip`, cut by `cut`, unless its
    /// origin holds `cap`.
    fn take(&self, ip: IpAddr, cap: usize, cut: CancellationToken) -> Option<AddressSlot> {
        let origin = Origin::from(ip);
        let mut held = self.lock();
        let id = held.next;
        // Checked before the entry is made: a refused origin with nothing
        // open must leave no entry behind (a cap of 0 refuses them all).
        if held.by_origin.get(&origin).map_or(0, Connections::len) >= cap {
            return None;
        }
        held.update(origin, |connections| _ = connections.live.insert(id, cut));
        held.next += 1;
        Some(AddressSlot {
            counts: self.clone(),
            origin,
            id,
        })
    }

    /// Cuts the newest connection of the origin that holds the most (of
    /// the newest among origins that hold as many), if it holds more than
    /// `newcomer`'s origin does with `newcomer`; says whether it did.
    /// Connections cut already, and not gone yet, are not counted. Ids
    /// rise with every connection, so the choice depends on the order
    /// connections came in, never on the map's order or on addresses.
    fn make_room_for(&self, newcomer: &AddressSlot) -> bool {
        let mut held = self.lock();
        let (now, policy) = (Instant::now(), held.policy);
        if !policy.interval.is_zero() {
            if let Some(then) = now.checked_sub(policy.interval) {
                held.forget_room_made_before(then);
            }
            if held.lately.contains(&newcomer.origin) || held.made_room.len() >= policy.remembered {
                return false;
            }
        }
        let mine = held
            .by_origin
            .get(&newcomer.origin)
            .map_or(0, |connections| connections.live.len());
        // The newcomer's own origin, if it holds the most, holds no more
        // than itself; one that ties with it comes after it, and holds no
        // more either.
        let Some(&(live, _, biggest)) = held.ranking.last() else {
            return false;
        };
        if biggest == newcomer.origin || live <= mine {
            return false;
        }
        held.update(biggest, |connections| {
            let (id, cut) = connections.live.pop_last().expect("it holds more than none");
            cut.cancel();
            connections.cut.insert(id);
        });
        if !policy.interval.is_zero() {
            held.made_room.push_back((now, newcomer.origin));
            held.lately.insert(newcomer.origin);
        }
        true
    }
}

/// One connection's place in its address's list; freed on drop.
struct AddressSlot {
    counts: PerAddress,
    origin: Origin,
    id: u64,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let id = self.id;
        self.counts.lock().update(self.origin, |connections| {
            connections.live.remove(&id);
            connections.cut.remove(&id);
        });
    }
}

/// Accepts the next connection. Errors such as running out of file
/// descriptors are passing, so they are logged and retried with an
/// exponential backoff rather than ending the server.
async fn accept(listener: &mut BoxListener) -> (BoxStream, SocketAddr) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match host::accept(listener).await {
            Ok(accepted) => return accepted,
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await; // backoff: the error is passing
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_is_its_slash_64_and_a_mapped_ipv4_address_is_itself() {
        let host = |text: &str| Origin::from(text.parse::<IpAddr>().unwrap());
        assert_eq!(host("2001:db8:1:2::1"), host("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(host("2001:db8:1:2::1"), host("2001:db8:1:3::1"));
        assert_eq!(host("::ffff:10.0.0.1"), host("10.0.0.1"));
        assert_ne!(host("10.0.0.1"), host("10.0.0.2"));
        assert_eq!(host("2001:db8:1:2:3:4:5:6").to_string(), "2001:db8:1:2::/64");
        assert_eq!(host("::ffff:10.0.0.1").to_string(), "10.0.0.1");
    }

    #[test]
    fn the_addresses_of_one_ipv6_slash_64_share_one_connection_cap() {
        let counts = PerAddress::default();
        let cut = CancellationToken::new;
        let first = counts.take(ip("2001:db8::1"), 1, cut()).expect("a first connection");
        assert!(counts.take(ip("2001:db8::2"), 1, cut()).is_none(), "the same /64");
        let other = counts.take(ip("2001:db8:0:1::1"), 1, cut()).expect("another /64");
        drop(first);
        assert!(counts.take(ip("2001:db8::2"), 1, cut()).is_some(), "freed on drop");
        drop(other);
        assert!(counts.take(ip("10.0.0.1"), 0, cut()).is_none());
        assert!(counts.lock().by_origin.is_empty(), "a refused origin left an entry");
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_connection_gone_from_the_middle_is_the_one_removed() {
        let counts = PerAddress::default();
        let take = |address: &str| {
            let cut = CancellationToken::new();
            (counts.take(ip(address), 8, cut.clone()).expect("under the cap"), cut)
        };
        let mut crowd: Vec<_> = (0..3).map(|_| take("10.0.0.2")).collect();
        drop(crowd.remove(1));
        let (newcomer, _) = take("10.0.0.1");
        assert!(counts.make_room_for(&newcomer));
        assert!(crowd[1].1.is_cancelled(), "the newest still there");
        assert!(!crowd[0].1.is_cancelled());
    }

    #[test]
    fn a_connection_cut_to_make_room_counts_against_its_address_until_it_is_gone() {
        let counts = PerAddress::default();
        let take = |address: &str| {
            let cut = CancellationToken::new();
            counts.take(ip(address), 2, cut.clone()).map(|slot| (slot, cut))
        };
        let mut crowd: Vec<_> = (0..2).map(|_| take("10.0.0.2").expect("under the cap")).collect();
        let (newcomer, _) = take("10.0.0.1").expect("under the cap");
        assert!(counts.make_room_for(&newcomer));
        assert!(crowd[1].1.is_cancelled() && !crowd[0].1.is_cancelled());
        assert!(take("10.0.0.2").is_none(), "the cut connection is not gone yet");
        // Not holding a place, it is not cut again: the address holds one
        // live connection, as few as a newcomer's would with it.
        let (second, _) = take("10.0.0.3").expect("under the cap");
        assert!(!counts.make_room_for(&second));
        assert!(!crowd[0].1.is_cancelled());
        drop(crowd.pop());
        let (again, _) = take("10.0.0.2").expect("the cut connection is gone");
        drop((again, second, newcomer, crowd));
        let held = counts.lock();
        assert!(
            held.by_origin.is_empty() && held.ranking.is_empty(),
            "an entry left behind"
        );
    }

    #[test]
    fn a_newcomer_takes_the_place_of_the_newest_connection_of_the_address_that_holds_the_most() {
        let counts = PerAddress::default();
        let take = |address: &str| {
            let cut = CancellationToken::new();
            let slot = counts.take(ip(address), 8, cut.clone()).expect("under the cap");
            (slot, cut)
        };
        let crowd: Vec<_> = (0..3).map(|_| take("10.0.0.2")).collect();
        let pair: Vec<_> = (0..2).map(|_| take("10.0.0.3")).collect();
        let equal: Vec<_> = (0..3).map(|_| take("10.0.0.4")).collect();
        // A newcomer from an address that holds fewer: of the two biggest
        // addresses, the newest connection goes.
        let (newcomer, _) = take("10.0.0.1");
        assert!(counts.make_room_for(&newcomer));
        assert!(equal[2].1.is_cancelled());
        assert!(!equal[0].1.is_cancelled() && !equal[1].1.is_cancelled());
        // Connections cut already are not counted: the next newcomer's
        // goes from the other address that holds three.
        let (second, _) = take("10.0.0.5");
        assert!(counts.make_room_for(&second));
        assert!(crowd[2].1.is_cancelled());
        assert!(!crowd[0].1.is_cancelled() && !crowd[1].1.is_cancelled());
        // Now every address holds two: nobody holds more than a newcomer
        // from one of them would, with it.
        let (from_the_pair, _) = take("10.0.0.3");
        assert!(!counts.make_room_for(&from_the_pair));
        assert!(pair.iter().all(|(_, cut)| !cut.is_cancelled()));
        let (from_the_crowd, _) = take("10.0.0.2");
        assert!(!counts.make_room_for(&from_the_crowd));
    }

    #[tokio::test(start_paused = true)]
    async fn at_the_tracker_an_address_makes_room_once_a_minute() {
        let counts = PerAddress::new(ROOM_INTERVAL, 2);
        let take = |address: &str| {
            let cut = CancellationToken::new();
            let slot = counts.take(ip(address), 8, cut.clone()).expect("under the cap");
            (slot, cut)
        };
        let crowd: Vec<_> = (0..5).map(|_| take("10.0.0.2")).collect();
        let (newcomer, _) = take("10.0.0.1");
        assert!(counts.make_room_for(&newcomer));
        // The crowd still holds four, against two: it could give more, but
        // not to this address yet.
        let (second, _) = take("10.0.0.1");
        assert!(!counts.make_room_for(&second));
        tokio::time::advance(ROOM_INTERVAL - Duration::from_millis(1)).await;
        assert!(!counts.make_room_for(&second));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(counts.make_room_for(&second));
        assert!(crowd[4].1.is_cancelled() && crowd[3].1.is_cancelled() && !crowd[2].1.is_cancelled());
        // Two addresses remembered at most: past them, nobody makes room
        // until the first is forgotten.
        let (third, _) = take("10.0.0.3");
        assert!(counts.make_room_for(&third));
        let (fourth, _) = take("10.0.0.4");
        assert!(!counts.make_room_for(&fourth));
        tokio::time::advance(ROOM_INTERVAL + Duration::from_millis(1)).await;
        assert!(counts.make_room_for(&fourth));
    }
}

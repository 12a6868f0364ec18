//! The tracker: knows which client holds which file, and picks a holder for
//! each download.
//!
//! Each client keeps one connection to the tracker, its *session*: it
//! registers on it, then announces and looks up files over it. The tracker
//! forgets a client and everything it held as soon as it leaves (a `Leave`
//! request), its session drops (a crashed process's connection is closed by
//! its OS), or its session stays silent past the session timeout (a host
//! that vanished without closing anything; live clients send a heartbeat
//! well within it). So it never hands out a peer it knows is gone.
//!
//! It believes a client about that client only. A `Report` that a holder
//! failed hides that holder from the reporter, never from anyone else; a
//! holder's copy stops being offered only when the holder itself withdraws
//! it (its own re-check found it bad, or the file is gone) or goes. See
//! `records` for the per-client quotas that bound what a client can make
//! the tracker keep.

mod records;
mod status;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio_util::sync::CancellationToken;

pub use records::{Content, Holder, Quotas, Records, Refusal, SessionId, Swarm, SwarmMember};
pub use status::{StatusCursor, StatusEntry, STATUS_ANSWERS, STATUS_ANSWERS_PER_ADDRESS};

use crate::connection::{Connection, ConnectionError};
use crate::events::{Event, EventSink, Node, Reporter};
use crate::host::{BoxListener, Host, OsHost};
use crate::origin::Origin;
use crate::protocol::{ClientId, Digest, FileName, Problem, Request, SwarmPeer, Trace, TrackerReply, TrackerRequest};
use crate::server::{self, Limits, ServerHandle};
use status::StatusTurns;

/// The port the seed's tracker listens on.
pub const DEFAULT_PORT: u16 = 8000;

/// How many sessions a tracker serves at once by default. Every registered
/// client keeps its session open, so this is the size of the swarm; a
/// session costs a few KiB.
pub const MAX_SESSIONS: usize = 100_000;

/// How a tracker behaves.
#[derive(Clone)]
pub struct TrackerConfig {
    /// Seed of every random choice of a holder.
    pub seed: u64,
    /// Timeouts (its `max_connections`, `max_per_address` and
    /// `room_interval` are ignored: see `max_sessions`).
    pub limits: Limits,
    /// Sessions served at once. One address may hold a quarter of them.
    /// Past it, a newcomer from an address that, counting it, holds fewer
    /// sessions than the address that holds the most takes the place of
    /// that address's newest session, whose client is forgotten as if it
    /// had left ([`Limits::max_connections`]), once a minute per address
    /// at most ([`server::ROOM_INTERVAL`]); any other newcomer is closed
    /// at once. Were newcomers to wait instead, four addresses
    /// could hold every session for as long as they liked.
    pub max_sessions: usize,
    /// What one client may make the tracker hold.
    pub quotas: Quotas,
    /// Where events go besides the tracing log.
    pub events: Option<Arc<dyn EventSink>>,
    /// Where the tracker's tasks run.
    pub host: Arc<dyn Host>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            seed: 0,
            limits: Limits::default(),
            max_sessions: MAX_SESSIONS,
            quotas: Quotas::default(),
            events: None,
            host: OsHost::shared(),
        }
    }
}

/// A running tracker.
#[derive(Debug)]
pub struct Tracker {
    /// The server accepting sessions.
    server: ServerHandle,
}

impl Tracker {
    /// Binds `addr` on this machine and starts serving.
    pub async fn bind(addr: impl ToSocketAddrs, config: TrackerConfig) -> std::io::Result<Tracker> {
        Tracker::spawn(TcpListener::bind(addr).await?, config)
    }

    /// Serves sessions accepted on an already-bound `listener`.
    pub fn spawn(listener: impl Into<BoxListener>, config: TrackerConfig) -> std::io::Result<Tracker> {
        let stopping = CancellationToken::new();
        let shared = Arc::new(Shared {
            records: Mutex::new(Records::with_quotas(config.seed, config.quotas)),
            reporter: Reporter::new(Node::Tracker, config.events),
            next_session: AtomicU64::new(1),
            status_turns: StatusTurns::default(),
            stopping: stopping.clone(),
        });
        let limits = Limits {
            max_connections: config.max_sessions,
            max_per_address: config.max_sessions.div_ceil(4),
            room_interval: server::ROOM_INTERVAL,
            ..config.limits
        };
        let serve = move |connection| run_session(shared.clone(), limits, connection);
        let server = server::spawn(config.host, listener.into(), limits, stopping, serve)?;
        Ok(Tracker { server })
    }

    /// The address the tracker listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Stops the tracker, closing every session.
    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }
}

/// State shared by every session of one tracker.
struct Shared {
    /// The records. A std mutex: no `.await` happens while it is held, and
    /// every critical section is a few map operations.
    records: Mutex<Records>,
    /// Reports the tracker's events.
    reporter: Reporter,
    /// Numbers sessions, so an old session's end cannot unregister a client
    /// that registered again on a new one.
    next_session: AtomicU64,
    /// The status answers being sent: a few at once, each holding a page.
    status_turns: StatusTurns,
    /// Cancelled when the tracker stops: its sessions end then, but their
    /// clients are not lost to anyone.
    stopping: CancellationToken,
}

/// One client's session: what the connection has registered as. However
/// it ends (the client hangs up or goes silent, or the session is cut to
/// make room for a newcomer's, dropping its task wherever it was), its
/// client is forgotten then, unless the tracker itself is stopping.
struct Session {
    /// The tracker's state.
    shared: Arc<Shared>,
    /// This session's number.
    id: SessionId,
    /// The client registered on this session, once it has registered.
    client: Option<ClientId>,
    /// Where the connection comes from: the peer address defaults to this
    /// IP with the port the client registers.
    remote: SocketAddr,
}

async fn run_session(shared: Arc<Shared>, limits: Limits, mut connection: Connection) {
    let mut session = Session {
        shared: shared.clone(),
        id: shared.next_session.fetch_add(1, Ordering::Relaxed),
        client: None,
        remote: connection.peer_addr(),
    };
    loop {
        // A registered client may stay quiet up to the session timeout (its
        // heartbeats keep it well inside); a connection that has not
        // registered must speak within the request timeout.
        let silence = match session.client {
            Some(_) => limits.session_timeout,
            None => limits.request_timeout,
        };
        let next = connection.read_within::<Request<TrackerRequest>>(silence).await;
        let request = match next {
            Ok(Some(request)) => request,
            Ok(None) => break,
            Err(ConnectionError::Idle(silence)) => {
                tracing::info!(remote = %session.remote, ?silence, "session silent past its timeout; hanging up");
                break;
            }
            Err(error) => {
                tracing::info!(remote = %session.remote, %error, "dropping tracker session");
                // Say why before hanging up; the remote may be gone already.
                let reason = format!("bad request: {error}");
                let _ = connection.write(&TrackerReply::Refused { reason }).await;
                break;
            }
        };
        if request.body == TrackerRequest::Status {
            let answered = match shared.status_turns.enter(Origin::from(session.remote.ip())) {
                Ok(_turn) => send_status(&shared, &mut connection).await,
                Err(reason) => connection.write(&TrackerReply::Refused { reason }).await,
            };
            if let Err(error) = answered {
                tracing::info!(remote = %session.remote, %error, "status answer failed");
                break;
            }
            continue;
        }
        let reply = shared.handle(&mut session, request.trace, request.body);
        if let Err(error) = connection.write(&reply).await {
            tracing::info!(remote = %session.remote, %error, "dropping tracker session");
            break;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(client) = self.client else {
            return;
        };
        if self.shared.stopping.is_cancelled() {
            return;
        }
        // Never a panic here: during another's unwinding it would abort.
        let Ok(mut records) = self.shared.records.lock() else {
            return;
        };
        let forgotten = records.forget(client, self.id);
        drop(records);
        if forgotten {
            // Not caused by any request: the session simply ended.
            self.shared
                .reporter
                .report(Trace::default(), Event::ClientLost { client });
        }
    }
}

/// How many ids (clients, files, holders) one page of a status answer
/// holds: the tracker reads a page under the lock, lets go of it, sends the
/// page (however slowly the reader takes it), then reads the next one. So an
/// answer costs a page of memory (at most about 170 KiB, names of 255
/// bytes), not a copy of the records, and never keeps other sessions
/// waiting for the lock.
const STATUS_PAGE: usize = 512;

/// Streams a status answer: clients, files, then the end, a page at a time.
/// On a busy tracker the answer is not one instant's picture: each page is
/// read as the records stand then.
async fn send_status(shared: &Shared, connection: &mut Connection) -> Result<(), ConnectionError> {
    let mut cursor = StatusCursor::Start;
    while cursor != StatusCursor::Done {
        let (page, next) = shared.records().status_page(cursor, STATUS_PAGE);
        for entry in page {
            let reply = match entry {
                StatusEntry::Client { client, addr, files } => TrackerReply::StatusClient { client, addr, files },
                StatusEntry::File { file, info, holders } => TrackerReply::StatusFile { file, info, holders },
            };
            connection.write(&reply).await?;
        }
        cursor = next;
    }
    connection.write(&TrackerReply::StatusEnd).await
}

impl Shared {
    /// Answers one request, reporting its event before the reply goes out.
    fn handle(&self, session: &mut Session, trace: Trace, request: TrackerRequest) -> TrackerReply {
        let outcome = match request {
            TrackerRequest::Register {
                client,
                port,
                advertise,
            } => {
                let addr = advertise.unwrap_or(SocketAddr::new(session.remote.ip(), port));
                self.register(session, client, addr, trace)
            }
            TrackerRequest::Announce { file, info, root } => session
                .registered()
                .and_then(|client| self.announce(client, file, Content { info, root }, trace)),
            TrackerRequest::Lookup { file, failover } => session
                .registered()
                .and_then(|client| self.lookup(client, file, failover, trace)),
            TrackerRequest::Swarm { file, fresh } => {
                session.registered().and_then(|client| self.swarm(client, &file, fresh))
            }
            TrackerRequest::Leave => session.registered().map(|client| self.leave(session, client, trace)),
            TrackerRequest::Report {
                file,
                peer,
                sha1,
                problem,
            } => session.registered().and_then(|client| {
                // Believed about the reporter's own downloads only: the
                // holder is not offered to this client again during this
                // download, and nobody else's choices change. Whether a
                // copy is bad is for its holder to check (it is told on
                // the transfer's connection).
                let recorded = self.records().report(client, &file, peer, sha1)?;
                tracing::info!(%client, %peer, %file, ?problem, recorded, "holder reported");
                Ok(TrackerReply::Ack)
            }),
            TrackerRequest::Withdraw { file, sha1, reason } => session
                .registered()
                .map(|client| self.withdraw(client, file, sha1, reason, trace)),
            TrackerRequest::Ping => session.registered().map(|_| TrackerReply::Ack),
            TrackerRequest::Status => unreachable!("status answers are streamed by the session loop"),
        };
        outcome.unwrap_or_else(|refusal| TrackerReply::Refused {
            reason: refusal.to_string(),
        })
    }

    /// Records that `client` holds `file` with `content`.
    fn announce(
        &self,
        client: ClientId,
        file: FileName,
        content: Content,
        trace: Trace,
    ) -> Result<TrackerReply, Refusal> {
        self.records().announce(client, &file, content)?;
        self.reporter.report(trace, Event::Announced { client, file });
        Ok(TrackerReply::Ack)
    }

    /// Chooses a holder of `file` for `client`'s download.
    fn lookup(&self, client: ClientId, file: FileName, failover: bool, trace: Trace) -> Result<TrackerReply, Refusal> {
        let Some(Holder { peer, addr, content }) = self.records().lookup(client, &file, failover)? else {
            return Ok(TrackerReply::NoPeer);
        };
        self.reporter.report(trace, Event::PeerChosen { client, file, peer });
        Ok(TrackerReply::Peer {
            peer,
            addr,
            info: content.info,
            root: content.root,
        })
    }

    /// Records `client` in the swarm of `file` and offers it some of its
    /// peers. No event: how often a swarm download asks for more peers
    /// depends on timing.
    fn swarm(&self, client: ClientId, file: &FileName, fresh: bool) -> Result<TrackerReply, Refusal> {
        let Some(Swarm { content, peers }) = self.records().swarm(client, file, fresh)? else {
            return Ok(TrackerReply::NoPeer);
        };
        let peers = peers
            .into_iter()
            .map(|SwarmMember { peer, addr, complete }| SwarmPeer { peer, addr, complete })
            .collect();
        Ok(TrackerReply::Swarm {
            info: content.info,
            root: content.root,
            peers,
        })
    }

    /// Forgets `client`, which says goodbye on `session`.
    fn leave(&self, session: &mut Session, client: ClientId, trace: Trace) -> TrackerReply {
        self.records().forget(client, session.id);
        session.client = None;
        self.reporter.report(trace, Event::ClientLeft { client });
        TrackerReply::Ack
    }

    /// Stops offering `client`'s copy of `file` (version `sha1`, if given),
    /// at its own request.
    fn withdraw(
        &self,
        client: ClientId,
        file: FileName,
        sha1: Option<Digest>,
        reason: Option<Problem>,
        trace: Trace,
    ) -> TrackerReply {
        let dropped = self.records().drop_holding(client, &file, sha1);
        tracing::info!(%client, %file, dropped, "holder withdrew");
        // A holder that found its own copy bad: the one way a copy stops
        // being offered to everyone while its holder stays.
        if let (true, Some(reason)) = (dropped, reason.filter(|reason| reason.is_bad_copy())) {
            self.reporter
                .report(trace, Event::HolderDropped { client, file, reason });
        }
        TrackerReply::Ack
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().expect("records poisoned")
    }

    fn register(
        &self,
        session: &mut Session,
        client: ClientId,
        addr: SocketAddr,
        trace: Trace,
    ) -> Result<TrackerReply, Refusal> {
        if let Some(registered) = session.client.filter(|registered| *registered != client) {
            return Err(Refusal::OtherId {
                registered,
                asked: client,
            });
        }
        self.records().register(client, addr, session.id, session.remote.ip())?;
        session.client = Some(client);
        self.reporter.report(trace, Event::Registered { client });
        Ok(TrackerReply::Ack)
    }
}

impl Session {
    fn registered(&self) -> Result<ClientId, Refusal> {
        self.client.ok_or(Refusal::NotRegistered)
    }
}

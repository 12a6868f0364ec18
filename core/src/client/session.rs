//! The client's side of its tracker session.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};

use crate::connection::{Connection, ConnectionError};
use crate::host::{Host, OsHost};
use crate::protocol::{Request, Trace, TrackerReply, TrackerRequest};
use crate::trace;
use crate::tracker::Snapshot;

/// Why the tracker could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No connection could be made.
    #[error("cannot reach the tracker at {addr}: {error} (is it running, and is that its address?)")]
    Unreachable {
        /// The tracker's address.
        addr: SocketAddr,
        /// What went wrong.
        error: ConnectionError,
    },
    /// The session broke.
    #[error("lost the session with the tracker at {addr}: {error}")]
    Lost {
        /// The tracker's address.
        addr: SocketAddr,
        /// What went wrong.
        error: ConnectionError,
    },
    /// The tracker closed the session.
    #[error("the tracker at {0} closed the session")]
    Closed(SocketAddr),
    /// An earlier request was interrupted or failed, so replies and
    /// requests no longer pair up.
    #[error("the session with the tracker at {0} broke off in the middle of a request; register again")]
    OutOfStep(SocketAddr),
    /// The tracker answered something out of place.
    #[error("the tracker at {addr} answered {reply:?} out of place")]
    Unexpected {
        /// The tracker's address.
        addr: SocketAddr,
        /// What it said.
        reply: Box<TrackerReply>,
    },
}

/// Asks the tracker at `addr` what it knows (no registration needed).
pub async fn status(addr: SocketAddr, idle_timeout: Duration) -> Result<Snapshot, SessionError> {
    let mut session = Session::open(&OsHost, addr, idle_timeout).await?;
    let lost = |error| SessionError::Lost { addr, error };
    session
        .connection
        .write(&Request {
            trace: Trace::default(),
            body: TrackerRequest::Status,
        })
        .await
        .map_err(lost)?;
    let mut snapshot = Snapshot::default();
    loop {
        match session.connection.read::<TrackerReply>().await.map_err(lost)? {
            Some(TrackerReply::StatusClient { client, addr, files }) => snapshot.clients.push((client, addr, files)),
            Some(TrackerReply::StatusFile { file, info, holders }) => match snapshot.files.last_mut() {
                // A file with many holders comes in several parts.
                Some(last) if last.0 == file => last.2.extend(holders),
                _ => snapshot.files.push((file, info, holders)),
            },
            Some(TrackerReply::StatusEnd) => return Ok(snapshot),
            Some(other) => {
                return Err(SessionError::Unexpected {
                    addr,
                    reply: Box::new(other),
                })
            }
            None => return Err(SessionError::Closed(addr)),
        }
    }
}

/// An open session: one connection, one request at a time.
#[derive(Debug)]
pub(crate) struct Session {
    /// The connection to the tracker.
    connection: Connection,
    /// The tracker's address, for error messages.
    addr: SocketAddr,
    /// A request was sent and its reply not read: the session is out of step.
    in_flight: bool,
    /// Cancelled when the session is dropped: its heartbeats stop.
    ended: CancellationToken,
    /// Cancels `ended` on drop.
    _end_on_drop: DropGuard,
}

impl Session {
    /// Connects to the tracker at `addr`.
    pub(crate) async fn open(
        host: &dyn Host,
        addr: SocketAddr,
        idle_timeout: Duration,
    ) -> Result<Session, SessionError> {
        let connection = Connection::connect(host, addr, idle_timeout)
            .await
            .map_err(|error| SessionError::Unreachable { addr, error })?;
        let ended = CancellationToken::new();
        let _end_on_drop = ended.clone().drop_guard();
        Ok(Session {
            connection,
            addr,
            in_flight: false,
            ended,
            _end_on_drop,
        })
    }

    /// The tracker's address.
    pub(crate) fn tracker(&self) -> SocketAddr {
        self.addr
    }

    /// A token cancelled when this session is dropped (replaced by a new
    /// one, ended by a stop or a crash).
    pub(crate) fn ended(&self) -> CancellationToken {
        self.ended.clone()
    }

    /// Sends `request`, traced with the next step of the current operation,
    /// and waits for the reply.
    pub(crate) async fn request(&mut self, request: TrackerRequest) -> Result<TrackerReply, SessionError> {
        // A request interrupted half-way (its future dropped) leaves its
        // reply in the pipe, and the next request would read it: refuse.
        if self.in_flight {
            return Err(SessionError::OutOfStep(self.addr));
        }
        self.in_flight = true;
        let reply = self.exchange(trace::next(), request).await;
        // Only a clean answer leaves the session usable.
        self.in_flight = reply.is_err();
        reply
    }

    async fn exchange(&mut self, trace: Trace, request: TrackerRequest) -> Result<TrackerReply, SessionError> {
        let lost = |error| SessionError::Lost { addr: self.addr, error };
        self.connection
            .write(&Request { trace, body: request })
            .await
            .map_err(lost)?;
        match self.connection.read().await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(SessionError::Closed(self.addr)),
            Err(error) => Err(SessionError::Lost { addr: self.addr, error }),
        }
    }
}

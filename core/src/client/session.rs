//! The client's side of its tracker session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::ClientError;
use crate::connection::{Connection, ConnectionError};
use crate::host::{Host, OsHost};
use crate::protocol::{ClientId, Request, Trace, TrackerReply, TrackerRequest};
use crate::trace;
use crate::tracker::StatusEntry;

/// A client's session with the tracker, shared by its tasks; `None` while
/// the client is not registered. A tokio mutex: a request holds it across
/// the wait for its reply, so no other request's reply is taken for it.
pub(crate) type SharedSession = tokio::sync::Mutex<Option<Session>>;

/// Sends one request on `session` (client `id`'s) and waits for its reply.
pub(crate) async fn ask(
    session: &SharedSession,
    id: ClientId,
    request: TrackerRequest,
) -> Result<TrackerReply, ClientError> {
    let mut current = session.lock().await;
    let open = current.as_mut().ok_or(ClientError::NotRegistered(id))?;
    let reply = open.request(request).await;
    if reply.is_err() {
        // A broken session is no session: the client is unregistered until
        // it registers again.
        current.take();
    }
    Ok(reply?)
}

/// [`ask`] in a task of its own on `host`: hands back where the reply will
/// come. The request runs to its end even if nobody waits for the reply
/// any more: one cut half-way would leave its reply in the pipe, and the
/// session out of step for the next.
pub(crate) fn ask_aside(
    host: &dyn Host,
    session: Arc<SharedSession>,
    id: ClientId,
    request: TrackerRequest,
) -> oneshot::Receiver<Result<TrackerReply, ClientError>> {
    let (tell, reply) = oneshot::channel();
    host.spawn(Box::pin(trace::inherit(async move {
        let _ = tell.send(ask(&session, id, request).await);
    })));
    reply
}

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
    /// The server reached never gave the answer a tracker gives: another
    /// kind of server, or a tracker that stopped before answering.
    #[error("no tracker's answer from {addr}: {error} (is that the address of a phile tracker?)")]
    NoAnswer {
        /// The server's address.
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
    /// A status answer went on past the entry cap.
    #[error("the tracker at {addr} has more than {max} status entries to send (a client, or a file and some of its holders, each); stopped reading there")]
    AnswerTooLong {
        /// The tracker's address.
        addr: SocketAddr,
        /// The cap.
        max: u64,
    },
    /// The tracker refused a status request (it sends a few at once).
    #[error("the tracker at {addr} refused the status request: {}", crate::protocol::printable(.reason))]
    StatusRefused {
        /// The tracker's address.
        addr: SocketAddr,
        /// What it said.
        reason: String,
    },
    /// The tracker answered something out of place.
    #[error("the tracker at {addr} answered {reply:?} out of place")]
    Unexpected {
        /// The tracker's address.
        addr: SocketAddr,
        /// What it said.
        reply: Box<TrackerReply>,
    },
}

/// How much of a status answer a client takes.
#[derive(Clone, Copy, Debug)]
pub struct StatusLimits {
    /// The longest the tracker may stay silent, at the start or between
    /// two entries.
    pub idle_timeout: Duration,
    /// The most entries (clients, and parts of files) the answer may hold:
    /// a tracker that never ends its answer is given up on there.
    pub max_entries: u64,
}

impl Default for StatusLimits {
    fn default() -> Self {
        StatusLimits {
            idle_timeout: Duration::from_secs(10),
            max_entries: 1_000_000,
        }
    }
}

/// A status answer, read entry by entry as it arrives: nothing is kept
/// but the entry at hand, so memory stays bounded whatever the tracker
/// sends, and the entry count is capped.
#[derive(Debug)]
pub struct StatusAnswer {
    /// The connection the answer comes on.
    connection: Connection,
    /// The tracker's address, for error messages.
    addr: SocketAddr,
    /// Entries read so far.
    entries: u64,
    /// The most entries taken.
    max_entries: u64,
    /// Whether the end of the answer has been read.
    ended: bool,
    /// Whether a file has come: every client comes before the first file.
    in_files: bool,
}

impl StatusAnswer {
    /// The next entry, `Ok(None)` after the last: every client, then every
    /// file. An answer over the entry cap, out of order, or cut short is an
    /// error.
    pub async fn next(&mut self) -> Result<Option<StatusEntry>, SessionError> {
        if self.ended {
            return Ok(None);
        }
        let addr = self.addr;
        let reply = self.connection.read::<TrackerReply>().await;
        let entry = match reply.map_err(|error| SessionError::Lost { addr, error })? {
            Some(TrackerReply::StatusClient { client, addr, files }) if !self.in_files => {
                StatusEntry::Client { client, addr, files }
            }
            Some(TrackerReply::StatusFile { file, info, holders }) => {
                self.in_files = true;
                StatusEntry::File { file, info, holders }
            }
            Some(TrackerReply::StatusEnd) => {
                self.ended = true;
                return Ok(None);
            }
            Some(TrackerReply::Refused { reason }) if self.entries == 0 => {
                return Err(SessionError::StatusRefused { addr, reason })
            }
            Some(other) => {
                return Err(SessionError::Unexpected {
                    addr,
                    reply: Box::new(other),
                })
            }
            None => return Err(SessionError::Closed(addr)),
        };
        self.entries += 1;
        if self.entries > self.max_entries {
            let max = self.max_entries;
            return Err(SessionError::AnswerTooLong { addr, max });
        }
        Ok(Some(entry))
    }
}

/// Asks the tracker at `addr` what it knows (no registration needed); the
/// answer is read with [`StatusAnswer::next`].
pub async fn status(addr: SocketAddr, limits: StatusLimits) -> Result<StatusAnswer, SessionError> {
    let mut connection = Connection::connect(&OsHost, addr, limits.idle_timeout)
        .await
        .map_err(|error| SessionError::Unreachable { addr, error })?;
    let request = Request {
        trace: Trace::default(),
        body: TrackerRequest::Status,
    };
    let sent = connection.write(&request).await;
    sent.map_err(|error| SessionError::Lost { addr, error })?;
    Ok(StatusAnswer {
        connection,
        addr,
        entries: 0,
        max_entries: limits.max_entries,
        ended: false,
        in_files: false,
    })
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
    /// The server has answered a request: it is a tracker.
    answered: bool,
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
            answered: false,
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
        let (addr, answered) = (self.addr, self.answered);
        // Until a first answer, a failure more likely means the address is
        // not a tracker's than that a session broke.
        let failed = |error| match answered {
            true => SessionError::Lost { addr, error },
            false => SessionError::NoAnswer { addr, error },
        };
        self.connection
            .write(&Request { trace, body: request })
            .await
            .map_err(failed)?;
        match self.connection.read().await {
            Ok(Some(reply)) => {
                self.answered = true;
                Ok(reply)
            }
            Ok(None) if !answered => {
                let closed = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "it closed the connection");
                Err(failed(closed.into()))
            }
            Ok(None) => Err(SessionError::Closed(addr)),
            Err(error) => Err(failed(error)),
        }
    }
}

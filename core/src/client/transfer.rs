//! Fetching one file from one peer, verified against the tracker's record.

use crate::connection::{BodySink, Connection, ConnectionError};
use crate::protocol::{printable, ClientId, Digest, FileName, PeerReply, PeerRequest, Problem, Request};
use crate::storage::{Received, StorageError};
use crate::trace;

use super::{Client, Source, CONFIRMATION_WAIT};

/// Why a peer did not deliver a file.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// No connection could be made.
    #[error("cannot connect: {0}")]
    Unreachable(#[source] ConnectionError),
    /// The peer did not start answering within the first-byte timeout.
    #[error("no answer within {} s", .0.as_secs_f32())]
    Unresponsive(std::time::Duration),
    /// The connection failed, was cut or stalled.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// The peer said no; its reason is shown made printable.
    #[error("refused: {}", printable(.0))]
    Refused(String),
    /// The peer closed the connection instead of answering.
    #[error("the peer closed the connection without answering")]
    NoAnswer,
    /// The peer offered a size other than the tracker's record.
    #[error("offered {offered} bytes; the tracker's record says {expected}")]
    WrongSize {
        /// The size in the peer's header.
        offered: u64,
        /// The size the tracker recorded.
        expected: u64,
    },
    /// The bytes that arrived do not hash to the tracker's record.
    #[error("sent content with sha1 {received}; the tracker's record says {expected}")]
    WrongContent {
        /// SHA-1 of what arrived.
        received: Digest,
        /// SHA-1 the tracker recorded.
        expected: Digest,
    },
    /// Storing what arrived failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The peer answered something out of place.
    #[error("answered {0} out of place")]
    OutOfPlace(String),
    /// A piece of a swarm download failed its hash.
    #[error("piece {index} failed its hash")]
    WrongPiece {
        /// The piece.
        index: usize,
    },
}

impl TransferError {
    /// What this says about the holder, for the tracker and the event log;
    /// `None` when the fault is ours (our disk), not the holder's.
    pub fn problem(&self) -> Option<Problem> {
        if matches!(self, TransferError::Connection(ConnectionError::Sink(_))) {
            return None;
        }
        Some(match self {
            TransferError::Unreachable(_) => Problem::Unreachable,
            TransferError::Unresponsive(_) => Problem::Unresponsive,
            TransferError::Connection(ConnectionError::Idle(_)) => Problem::Stalled,
            TransferError::Connection(ConnectionError::FrameTooLarge | ConnectionError::Protocol(_)) => {
                Problem::Garbled
            }
            // A peer that hangs up before its answer (it crashed, or left)
            // cut the transfer as much as one that hangs up after it.
            TransferError::Connection(_) | TransferError::NoAnswer => Problem::Cut,
            TransferError::Refused(_) => Problem::Refused,
            TransferError::OutOfPlace(_) => Problem::Garbled,
            TransferError::WrongPiece { .. } => Problem::WrongPiece,
            TransferError::WrongSize { .. } => Problem::WrongSize,
            TransferError::WrongContent { .. } => Problem::WrongContent,
            TransferError::Storage(_) => return None,
        })
    }
}

/// A holder given up on, and what the downloader may still owe it.
#[derive(Debug)]
pub(crate) struct Rejected {
    /// What went wrong.
    pub error: TransferError,
    /// When the bytes hashed wrong: the connection to the holder, still
    /// open, to tell it so once the rejection is on record.
    pub complaint: Option<Complaint>,
}

impl From<TransferError> for Rejected {
    fn from(error: TransferError) -> Rejected {
        Rejected { error, complaint: None }
    }
}

impl From<ConnectionError> for Rejected {
    fn from(error: ConnectionError) -> Rejected {
        TransferError::from(error).into()
    }
}

impl From<StorageError> for Rejected {
    fn from(error: StorageError) -> Rejected {
        TransferError::from(error).into()
    }
}

/// What arrived from a holder whose bytes did not hash to the tracker's
/// record. The holder cannot know unless told: it may hold a copy that went
/// bad on its disk. Only the holder can check its copy, and only it can
/// withdraw it; a downloader's word alone unlists nothing.
#[derive(Debug)]
pub(crate) struct Complaint {
    /// The open connection to the holder.
    connection: Connection,
    /// The SHA-1 of what arrived.
    sha1: Digest,
    /// The file, for log lines.
    file: FileName,
}

impl Complaint {
    /// Tells the holder the SHA-1 of what arrived, as after any transfer,
    /// and waits (at most the idle timeout) while it checks its copy and
    /// closes the connection: whatever it does about its copy is then on
    /// record before the download goes on.
    pub(crate) async fn send(mut self) {
        confirm(&mut self.connection, self.sha1, &self.file).await;
    }
}

impl Client {
    /// Fetches `file` from `source` into a temporary file of the client's
    /// folder and checks it against `source.info`. Nothing is left in the
    /// folder on failure.
    pub(super) async fn fetch(&self, file: &FileName, source: &Source) -> Result<Received, Rejected> {
        let expected = source.info;
        let mut connection = self.ask_for(file, source).await?;
        let mut incoming = self.folder.incoming(file)?;
        match self.progress.as_deref() {
            Some(progress) => {
                progress.begin(file, source.peer, expected.size);
                let mut counted = Counted {
                    sink: &mut incoming,
                    file,
                    received: 0,
                    progress,
                };
                connection.read_body(expected.size, &mut counted).await?;
            }
            None => connection.read_body(expected.size, &mut incoming).await?,
        }
        let received = incoming.finish().await?;
        let sha1 = received.info().sha1;
        if sha1 != expected.sha1 {
            // `received` is dropped here: the wrong bytes are deleted at once.
            return Err(Rejected {
                error: TransferError::WrongContent {
                    received: sha1,
                    expected: expected.sha1,
                },
                complaint: Some(Complaint {
                    connection,
                    sha1,
                    file: file.clone(),
                }),
            });
        }
        confirm(&mut connection, sha1, file).await;
        Ok(received)
    }

    /// Connects to `source`, asks it for `file` and reads its answer: the
    /// connection, ready for the file's bytes, if it offers the size the
    /// tracker recorded.
    async fn ask_for(&self, file: &FileName, source: &Source) -> Result<Connection, TransferError> {
        let (idle, wrap) = (self.limits.idle_timeout, |stream| self.rate.wrap(stream));
        let mut connection = Connection::connect_wrapped(self.host.as_ref(), source.addr, idle, wrap)
            .await
            .map_err(TransferError::Unreachable)?;
        let get = PeerRequest::Get {
            file: file.clone(),
            client: self.id,
        };
        connection
            .write(&Request {
                trace: trace::next(),
                body: get,
            })
            .await?;
        // A holder that says nothing at first is given up on quickly; once it
        // sends, the longer idle timeout applies.
        let header = match connection
            .read_within::<PeerReply>(self.limits.first_byte_timeout)
            .await
        {
            Err(ConnectionError::Idle(waited)) => return Err(TransferError::Unresponsive(waited)),
            other => other?,
        };
        let expected = source.info.size;
        match header {
            Some(PeerReply::File { info }) if info.size == expected => Ok(connection),
            Some(PeerReply::File { info }) => Err(TransferError::WrongSize {
                offered: info.size,
                expected,
            }),
            Some(PeerReply::Refused { reason }) => Err(TransferError::Refused(reason)),
            Some(other) => Err(TransferError::OutOfPlace(format!("{other:?}"))),
            None => Err(TransferError::NoAnswer),
        }
    }
}

/// Sends `Received { sha1 }` and waits for the peer to close. The peer
/// records the transfer (or checks its copy) when it reads the
/// confirmation, then closes: waiting for the close orders its events
/// before ours. A peer that vanishes meanwhile costs nothing.
async fn confirm(connection: &mut Connection, sha1: Digest, file: &FileName) {
    let confirm = PeerRequest::Received { sha1 };
    let confirmed = connection
        .write(&Request {
            trace: trace::next(),
            body: confirm,
        })
        .await;
    // A busy peer may take a moment to read it: the wait is not bounded by
    // a short idle timeout, so the order of the two events never depends on
    // how loaded the machine is.
    let wait = connection.idle_timeout().max(CONFIRMATION_WAIT);
    if let Err(error) = confirmed {
        tracing::debug!(%error, "could not confirm {file} to a peer that already went");
    } else if let Err(error) = connection.read_within::<PeerReply>(wait).await {
        tracing::debug!(%error, "peer did not close cleanly after {file}");
    }
}

/// Watches downloads byte by byte, to draw progress.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A transfer of `file` from `peer` begins; `size` bytes will follow.
    fn begin(&self, file: &FileName, peer: ClientId, size: u64);
    /// `received` bytes of `file` have arrived so far.
    fn advance(&self, file: &FileName, received: u64);
    /// The transfer of `file` from `peer` failed (`problem`); another holder
    /// will be tried if there is one.
    fn rejected(&self, file: &FileName, peer: ClientId, problem: Problem) {
        let _ = (file, peer, problem);
    }
    /// A swarm download of `file` holds `held` of its `pieces` pieces
    /// (`bytes` of `size` bytes), drawing from `peers` peers. Called once
    /// as the download begins (with what it resumed, and no peers yet),
    /// then for every piece checked.
    fn swarming(&self, file: &FileName, held: usize, pieces: usize, peers: usize, bytes: u64, size: u64) {
        let _ = (file, held, pieces, peers, bytes, size);
    }
    /// A swarm download of `file` could not reach the tracker (`error`),
    /// and goes on with the peers it knows. Said once, until the tracker
    /// answers again.
    fn tracker_lost(&self, file: &FileName, error: &str) {
        let _ = (file, error);
    }
    /// A swarm download of `file` ended without the file (halted, or
    /// failed), and recorded `held` of its `pieces` pieces (`bytes` bytes)
    /// for the next attempt: pieces still being checked when it ended
    /// are counted, as the last [`Progress::swarming`] could not.
    fn kept(&self, file: &FileName, held: usize, pieces: usize, bytes: u64) {
        let _ = (file, held, pieces, bytes);
    }
}

/// A body sink that tells a [`Progress`] about every chunk it passes on.
struct Counted<'a, S> {
    sink: &'a mut S,
    file: &'a FileName,
    received: u64,
    progress: &'a dyn Progress,
}

impl<S: BodySink + Send> BodySink for Counted<'_, S> {
    fn buffer(&mut self) -> Vec<u8> {
        self.sink.buffer()
    }

    async fn accept(&mut self, chunk: Vec<u8>) -> std::io::Result<()> {
        self.received += chunk.len() as u64;
        self.sink.accept(chunk).await?;
        self.progress.advance(self.file, self.received);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::ClientError;
    use super::*;

    #[test]
    fn remote_reasons_are_shown_made_printable() {
        let hostile = "no\u{1b}[2J\nINFO forged line".to_owned();
        for shown in [
            TransferError::Refused(hostile.clone()).to_string(),
            ClientError::Refused(hostile).to_string(),
        ] {
            assert!(!shown.chars().any(char::is_control), "{shown:?}");
            assert!(shown.ends_with(r"no\u{1b}[2J\u{a}INFO forged line"), "{shown}");
        }
    }
}

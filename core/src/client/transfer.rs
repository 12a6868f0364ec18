//! Fetching one file from one peer, verified against the tracker's record.

use std::sync::Arc;

use crate::connection::{BodySink, Connection, ConnectionError};
use crate::host::Host;
use crate::protocol::{ClientId, Digest, FileName, PeerReply, PeerRequest, Problem, Request};
use crate::rate::RateLimits;
use crate::server::Limits;
use crate::storage::{Folder, Received, StorageError};
use crate::trace;

use super::Source;

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
    /// The peer said no.
    #[error("refused: {0}")]
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
            TransferError::Connection(_) => Problem::Cut,
            TransferError::Refused(_) | TransferError::NoAnswer => Problem::Refused,
            TransferError::WrongSize { .. } => Problem::WrongSize,
            TransferError::WrongContent { .. } => Problem::WrongContent,
            TransferError::Storage(_) => return None,
        })
    }
}

/// Fetches `file` from `source` into a temporary file of `folder` and checks
/// it against `source.info`. Nothing is left in the folder on failure.
#[allow(clippy::too_many_arguments)] // each is a different concern of one transfer
pub(crate) async fn fetch(
    host: &dyn Host,
    me: ClientId,
    folder: &Folder,
    file: &FileName,
    source: &Source,
    limits: Limits,
    rate: &Arc<RateLimits>,
    progress: Option<&dyn Progress>,
) -> Result<Received, TransferError> {
    let expected = source.info;
    let wrap = |stream| rate.wrap(stream);
    let mut connection = Connection::connect_wrapped(host, source.addr, limits.idle_timeout, wrap)
        .await
        .map_err(TransferError::Unreachable)?;
    let get = PeerRequest::Get {
        file: file.clone(),
        client: me,
    };
    connection
        .write(&Request {
            trace: trace::next(),
            body: get,
        })
        .await?;
    // A holder that says nothing at first is given up on quickly; once it
    // sends, the longer idle timeout applies.
    let header = match connection.read_within::<PeerReply>(limits.first_byte_timeout).await {
        Err(ConnectionError::Idle(waited)) => return Err(TransferError::Unresponsive(waited)),
        other => other?,
    };
    match header {
        Some(PeerReply::File { info }) if info.size == expected.size => {}
        Some(PeerReply::File { info }) => {
            return Err(TransferError::WrongSize {
                offered: info.size,
                expected: expected.size,
            });
        }
        Some(PeerReply::Refused { reason }) => return Err(TransferError::Refused(reason)),
        None => return Err(TransferError::NoAnswer),
    }
    let mut incoming = folder.incoming(file)?;
    match progress {
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
    if received.info().sha1 != expected.sha1 {
        return Err(TransferError::WrongContent {
            received: received.info().sha1,
            expected: expected.sha1,
        });
    }
    let confirm = PeerRequest::Received {
        sha1: received.info().sha1,
    };
    // The peer records the transfer when it reads the confirmation, then
    // closes. Waiting for the close orders its event before ours; the file is
    // verified either way, so a peer that vanishes now costs nothing.
    let confirmed = connection
        .write(&Request {
            trace: trace::next(),
            body: confirm,
        })
        .await;
    if let Err(error) = confirmed {
        tracing::debug!(%error, "could not confirm {file} to a peer that already went");
    } else if let Err(error) = connection.read::<PeerReply>().await {
        tracing::debug!(%error, "peer did not close cleanly after {file}");
    }
    Ok(received)
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

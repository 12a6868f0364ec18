//! Why a client operation or a download failed: the errors a client hands
//! back, and how a download's error names the holders it gave up on.
//!
//! Apart from the client's lifecycle because they are its public vocabulary
//! of failure, shared by the whole-file download (`download.rs`), the swarm
//! download (`swarm/`) and the session with the tracker, and only describe
//! what went wrong, never act on it.

use std::time::Duration;

use super::{SessionError, TransferError};
use crate::pieces::{InvalidPieceSize, TooManyPieces};
use crate::protocol::{printable, ClientId, Digest, FileName, Problem, TrackerReply};
use crate::storage::StorageError;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client has no session with a tracker.
    #[error("client {0} has no tracker session: register it first, or again if the session was lost")]
    NotRegistered(ClientId),
    /// Talking to the tracker failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The tracker refused the request; its reason is shown made printable.
    #[error("the tracker refused: {}", printable(.0))]
    Refused(String),
    /// The client listens on IPv4 only and would register over IPv6: the
    /// tracker would give other peers the IPv6 address it sees, where
    /// nothing listens.
    #[error(
        "this peer listens on {listen}, IPv4 only, but reaches the tracker at {tracker} over IPv6, so the tracker \
         would send other peers to an IPv6 address where it does not listen: listen on IPv6 too (an address such \
         as [::]:0), reach the tracker by an IPv4 address, or advertise an address other peers can reach"
    )]
    UnreachableAtTrackerFamily {
        /// Where the client listens.
        listen: std::net::SocketAddr,
        /// The tracker's address.
        tracker: std::net::SocketAddr,
    },
    /// The tracker answered something that makes no sense here.
    #[error("unexpected answer from the tracker: {0:?}")]
    Unexpected(TrackerReply),
    /// The client's folder failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Writing a download to the client's folder failed: the folder's
    /// fault, not the holder's.
    #[error("the folder failed while storing a download: {0}")]
    Store(#[source] TransferError),
    /// A file changed in the folder between its download and its announce.
    #[error("{0} changed in the folder before it could be announced")]
    Changed(FileName),
    /// The client stopped (it was shut down, left or crashed) while busy.
    #[error("client {0} stopped")]
    Stopped(ClientId),
    /// The tracker did not answer a goodbye within the time given; the
    /// client left all the same.
    #[error("the tracker did not answer the goodbye within {0:?}")]
    GoodbyeUnanswered(Duration),
}

/// Why a download ended without the file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Nobody else holds the file.
    #[error("no peer has {0}")]
    NoPeer(FileName),
    /// Every holder was tried, and none delivered.
    #[error("no peer delivered {file}: {}", describe(.rejected, *.unlisted))]
    Exhausted {
        /// The file.
        file: FileName,
        /// The first holders tried, and what each did.
        rejected: Vec<Rejection>,
        /// How many more holders were tried and failed.
        unlisted: u64,
    },
    /// A swarm download ran out of peers that could deliver the pieces it
    /// lacks. (How many it lacks depends on timing, so the message, which
    /// goes into the event log, does not say; `missing` does.)
    #[error("no peer delivered the missing pieces of {file}{}", blame(.rejected))]
    Incomplete {
        /// The file.
        file: FileName,
        /// How many pieces are missing (those checked are kept on disk
        /// for the next attempt).
        missing: usize,
        /// The peers blamed for bad pieces.
        rejected: Vec<Rejection>,
        /// The peers whose last conversation failed, by id, and how. Not
        /// in the message: over TCP, which peers fail how depends on
        /// timing.
        lost: Vec<(ClientId, Problem)>,
    },
    /// A swarm download was asked for a piece size that is not one.
    #[error(transparent)]
    PieceSize(#[from] InvalidPieceSize),
    /// The file, as recorded, is too big for the pieces of a swarm
    /// download.
    #[error("cannot download {file} in a swarm: {error}")]
    TooManyPieces {
        /// The file.
        file: FileName,
        /// Its size and the piece size.
        error: TooManyPieces,
    },
    /// Every piece checked out against the hashes the tracker recorded, yet
    /// the whole file did not: the record's hash tree root and its SHA-1
    /// describe different content (its first announce was not honest).
    #[error(
        "every piece of {file} checks out, yet the whole file has sha1 {whole}, not {recorded}: the tracker's record \
         is inconsistent"
    )]
    InconsistentRecord {
        /// The file.
        file: FileName,
        /// The SHA-1 of the file the pieces make up.
        whole: Digest,
        /// The SHA-1 the tracker recorded.
        recorded: Digest,
    },
    /// The client itself could not go on (not registered, tracker gone,
    /// folder failing): not the file's fault.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// How many of the holders a download gave up on its error lists by name
/// (the rest are counted): the error stays short, and its size bounded,
/// however many holders failed.
pub(super) const REJECTIONS_LISTED: usize = 10;

/// A holder a download gave up on.
#[derive(Debug)]
pub struct Rejection {
    /// The holder.
    pub peer: ClientId,
    /// What it did.
    pub problem: Problem,
    /// The details (byte counts, system errors), for logs.
    pub error: TransferError,
}

impl Rejection {
    /// Adds this rejection to `listed`, unless that names
    /// [`REJECTIONS_LISTED`] already.
    pub(super) fn list_in(self, listed: &mut Vec<Rejection>) {
        if listed.len() < REJECTIONS_LISTED {
            listed.push(self);
        }
    }
}

/// The peers blamed in a swarm download, after a colon; nothing if none.
fn blame(rejected: &[Rejection]) -> String {
    match rejected {
        [] => String::new(),
        _ => format!(": {}", describe(rejected, 0)),
    }
}

/// The holders a download gave up on, each with what it did, and how many
/// more were not listed; separated by semicolons.
fn describe(rejected: &[Rejection], unlisted: u64) -> String {
    let mut each: Vec<String> = rejected
        .iter()
        .map(|rejection| format!("{} {}", rejection.peer, rejection.problem.describe()))
        .collect();
    if unlisted > 0 {
        each.push(format!("and {unlisted} more"));
    }
    each.join("; ")
}

/// The error for a reply from the tracker that is not the one a request
/// expects: its refusal, or an answer that makes no sense here.
pub(super) fn refusal(reply: TrackerReply) -> ClientError {
    match reply {
        TrackerReply::Refused { reason } => ClientError::Refused(reason),
        other => ClientError::Unexpected(other),
    }
}

//! A client's peer server: sends the files of its folder to whoever asks,
//! whole, or in pieces to swarm downloads (see [`super::share`]).
//!
//! It is also where a bad copy comes to light. Before sending, it checks
//! that the file is still what the client announced (a file changed since
//! is refused and withdrawn, not sent as the wrong size). After sending, a
//! downloader that got bytes with another SHA-1 says so; the server then
//! hashes its copy afresh, and withdraws it only if the copy itself no
//! longer matches what was announced. A downloader's word is never enough:
//! an honest holder finds its copy good and keeps offering it. Nor does it
//! cost much: checks run one at a time, and a copy found good is not
//! hashed again for [`RECHECK_INTERVAL`], however many complain.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::connection::{Connection, ConnectionError};
use crate::events::{Event, Reporter};
use crate::protocol::{ClientId, FileInfo, FileName, PeerReply, PeerRequest, Problem, Request, Trace};
use crate::storage::{Folder, StorageError};
use crate::swarm::Swarms;
use crate::trace;

use super::holdings::Holdings;
use super::slots::UploadSlots;

/// How long a copy found good when a downloader complained is taken as
/// good: complaints about it meanwhile are answered without hashing the
/// file again, so that downloaders that complain on and on (or many at
/// once) cost one hash of the file per interval, not one each.
pub(crate) const RECHECK_INTERVAL: Duration = Duration::from_secs(10);

/// What a peer server needs, shared by all its connections.
pub(crate) struct Seeder {
    /// The folder it serves.
    pub folder: Arc<Folder>,
    /// Reports its events.
    pub reporter: Reporter,
    /// How long a new connection may take to ask for something.
    pub request_timeout: Duration,
    /// What the client announced, and the way to withdraw a bad copy.
    pub holdings: Arc<Holdings>,
    /// The client's swarm downloads under way, whose pieces it serves.
    pub swarms: Arc<Swarms>,
    /// The pieces it may send at once, over all swarm conversations.
    pub upload_slots: Arc<UploadSlots>,
    /// How long a swarm conversation may stay silent with nothing asked.
    pub idle_timeout: Duration,
    /// How often each piece went out, so the least sent goes first.
    pub spread: super::share::Spread,
    /// What checks a complaint caused found good, and when: copies held
    /// whole, and the pieces of downloads under way. Held for the length
    /// of a check: checks run one at a time.
    pub found_good: Mutex<FoundGood>,
}

impl Seeder {
    /// Serves one downloader's connection: one `Get`, the file, the
    /// confirmation, then the connection closes; or a swarm conversation,
    /// opened by `Join`.
    pub(crate) async fn serve(self: Arc<Self>, mut connection: Connection) {
        let remote = connection.peer_addr();
        // A connection that asks nothing frees its slot quickly.
        let first = connection
            .read_within::<Request<PeerRequest>>(self.request_timeout)
            .await;
        let served = match first {
            Ok(Some(Request {
                body:
                    PeerRequest::Join {
                        file,
                        client,
                        sha1,
                        piece_size,
                    },
                ..
            })) => {
                self.share(connection, file, client, sha1, piece_size).await;
                Ok(())
            }
            Ok(Some(request)) => self.serve_one(&mut connection, request).await,
            Ok(None) => Ok(()),
            Err(error) => {
                tracing::info!(node = %self.reporter.node(), %remote, %error, "a connection sent no request this peer could read");
                return;
            }
        };
        if let Err(error) = served {
            tracing::info!(node = %self.reporter.node(), %remote, %error, "a downloader's connection ended before its transfer did");
        }
    }

    async fn serve_one(
        &self,
        connection: &mut Connection,
        request: Request<PeerRequest>,
    ) -> Result<(), ConnectionError> {
        match request.body {
            PeerRequest::Get { file, client } => self.send_file(connection, request.trace, file, client).await,
            PeerRequest::Received { .. } => {
                let reason = "nothing was sent to confirm: ask with `get` first".to_owned();
                connection.write(&PeerReply::Refused { reason }).await
            }
            other => {
                let reason = format!("{other:?} needs a swarm conversation: send `join` first");
                connection.write(&PeerReply::Refused { reason }).await
            }
        }
    }

    async fn send_file(
        &self,
        connection: &mut Connection,
        trace: Trace,
        file: FileName,
        to: ClientId,
    ) -> Result<(), ConnectionError> {
        let node = self.reporter.node();
        let mut content = match self.folder.open_file(&file).await {
            Ok(opened) => opened,
            Err(error) => {
                let reason = match error {
                    StorageError::NotFound { .. } => format!("{node} does not hold {file}"),
                    StorageError::Io { .. } | StorageError::Busy { .. } => format!("{node} cannot read {file}"),
                };
                tracing::warn!(%node, %error, "refused to send {file}");
                return connection.write(&PeerReply::Refused { reason }).await;
            }
        };
        let info = content.info();
        if let Some(announced) = self.holdings.announced(&file).filter(|announced| *announced != info) {
            // The file changed since it was announced: what the tracker
            // promises the downloader is no longer here. Withdraw that
            // version (before answering, so the tracker's record is right
            // by the time the downloader asks again), and refuse.
            let reason = if announced.size != info.size {
                Problem::WrongSize
            } else {
                Problem::WrongContent
            };
            let withdraw = self.holdings.withdraw_bad(&file, announced, Some(reason));
            trace::traced(trace, withdraw).await;
            let reason = format!("{node}'s copy of {file} changed since it was announced");
            tracing::warn!(%node, "refused to send {file}: {reason}");
            return connection.write(&PeerReply::Refused { reason }).await;
        }
        connection.write(&PeerReply::File { info }).await?;
        connection.write_body(&mut content, info.size).await?;
        // The downloader verifies and syncs what it received before it
        // confirms: that may take a while on a busy disk.
        let wait = connection.idle_timeout().max(super::CONFIRMATION_WAIT);
        match connection.read_within::<Request<PeerRequest>>(wait).await? {
            Some(Request {
                trace,
                body: PeerRequest::Received { sha1 },
            }) if sha1 == info.sha1 => {
                self.reporter.report(
                    trace,
                    Event::FileSent {
                        file,
                        to,
                        bytes: info.size,
                    },
                );
            }
            Some(Request {
                trace,
                body: PeerRequest::Received { sha1 },
            }) => {
                tracing::warn!(%node, %to, "{to} received {file} with sha1 {sha1}, not {}", info.sha1);
                // The check runs as part of the downloader's operation, on
                // the trace of its confirmation, and before the connection
                // closes: the downloader waits for the close.
                let complaint = format!("{file} arrived with sha1 {sha1}");
                trace::traced(trace, self.check_copy(&file, to, &complaint)).await;
            }
            Some(other) => tracing::info!(%node, %to, "{to} answered {other:?} instead of confirming {file}"),
            None => tracing::info!(%node, %to, "{to} closed the connection without confirming {file}"),
        }
        Ok(())
    }

    /// A downloader says the bytes of `file` it got do not hash as they
    /// should (`complaint` says how): hashes the copy on disk afresh (what
    /// the folder remembers cannot see a change that kept size, time and
    /// inode), and withdraws it only if it no longer matches what was
    /// announced.
    pub(super) async fn check_copy(&self, file: &FileName, to: ClientId, complaint: &str) {
        let node = self.reporter.node();
        // Held until the copy is judged, withdrawal included: complaints
        // that waited meanwhile then find the copy withdrawn (or found
        // good), and hash nothing.
        let mut found_good = self.found_good.lock().await;
        let Some(announced) = self.holdings.announced(file) else {
            return; // not on offer: nothing to withdraw
        };
        let version = (file.clone(), announced, 0..announced.size);
        if checked_lately(&mut found_good, &version) {
            tracing::info!(%node, %to, "{to} says {complaint}; this copy checked out less than {RECHECK_INTERVAL:?} ago, keeping it");
            return;
        }
        let reason = match self.folder.hash(file).await {
            Ok(now) if now == announced => {
                tracing::info!(%node, %to, "{to} says {complaint}; this copy checks out, keeping it");
                found_good.insert(version, Instant::now());
                return;
            }
            Ok(FileInfo { size, .. }) if size != announced.size => Some(Problem::WrongSize),
            Ok(_) => Some(Problem::WrongContent),
            Err(error) => {
                tracing::warn!(%node, %error, "cannot check {file}; withdrawing it");
                None
            }
        };
        tracing::warn!(%node, "this copy of {file} is not what was announced; withdrawing it");
        self.holdings.withdraw_bad(file, announced, reason).await;
    }
}

/// The bytes of a version of a file a check looked at (all of a copy held
/// whole; the pieces behind a complaint, of a download under way).
pub(crate) type Judged = (FileName, FileInfo, Range<u64>);

/// What checks found good, and when.
pub(crate) type FoundGood = HashMap<Judged, Instant>;

/// Whether a check found `judged` good less than [`RECHECK_INTERVAL`] ago
/// (forgetting the checks older than that).
pub(crate) fn checked_lately(found_good: &mut FoundGood, judged: &Judged) -> bool {
    found_good.retain(|_, at| at.elapsed() < RECHECK_INTERVAL);
    found_good.contains_key(judged)
}

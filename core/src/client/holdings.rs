//! What a client told the tracker it holds, and the way to take it back.
//!
//! Shared by the client, which announces and withdraws files, and by its
//! peer server, which is the one to learn that a copy went bad: a
//! downloader tells it, on the transfer's connection, that the bytes it
//! sent hash to something else. The server then hashes its copy afresh and,
//! only if the copy no longer matches what was announced, withdraws it.
//! The tracker takes no one else's word for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use crate::host::Host;
use crate::protocol::{ClientId, FileInfo, FileName, Problem, TrackerReply, TrackerRequest};

use super::session::{self, SharedSession};
use super::ClientError;

/// The files a client announced on its current session.
pub(crate) struct Holdings {
    /// Each file announced, with the content announced. A std mutex: held
    /// for a map operation, never across an `.await`.
    announced: Mutex<HashMap<FileName, FileInfo>>,
    /// The client.
    client: ClientId,
    /// The client's session, while the client lives.
    session: Weak<SharedSession>,
    /// Where a withdrawal runs, apart from the conversation that asked
    /// for it.
    host: Arc<dyn Host>,
}

impl Holdings {
    /// No files announced yet by `client`, on `session`, withdrawals
    /// running on `host`.
    pub(crate) fn new(client: ClientId, session: Weak<SharedSession>, host: Arc<dyn Host>) -> Holdings {
        Holdings {
            announced: Mutex::default(),
            client,
            session,
            host,
        }
    }

    fn announced_mut(&self) -> std::sync::MutexGuard<'_, HashMap<FileName, FileInfo>> {
        self.announced.lock().expect("holdings poisoned")
    }

    /// What this client announced `file` as, if it did.
    pub(crate) fn announced(&self, file: &FileName) -> Option<FileInfo> {
        self.announced_mut().get(file).copied()
    }

    /// Records that the tracker acknowledged `file` as held with `info`.
    pub(crate) fn record(&self, file: &FileName, info: FileInfo) {
        self.announced_mut().insert(file.clone(), info);
    }

    /// Forgets `file`, returning what it was announced as.
    pub(crate) fn take(&self, file: &FileName) -> Option<FileInfo> {
        self.announced_mut().remove(file)
    }

    /// Forgets everything: a new session starts with a tracker that knows
    /// nothing of this client.
    pub(crate) fn clear(&self) {
        self.announced_mut().clear();
    }

    /// Withdraws version `version` of `file`, which this client's own check
    /// found is no longer what it holds (`reason`: how it differs; `None`
    /// when the file is gone). Does nothing if `file` was withdrawn or
    /// announced anew meanwhile. Runs on the caller's trace, so the
    /// tracker's event joins the operation that brought the problem to
    /// light.
    pub(crate) async fn withdraw_bad(&self, file: &FileName, version: FileInfo, reason: Option<Problem>) {
        {
            let mut announced = self.announced_mut();
            if announced.get(file) != Some(&version) {
                return;
            }
            announced.remove(file);
        }
        let Some(session) = self.session.upgrade() else {
            return; // the client is gone, and its holdings with it
        };
        // The request runs as a task of its own, and the caller waits for
        // it. A conversation can be cut at any await (its peer server makes
        // room for a newcomer): cut mid-request, it would leave the reply
        // unread, the session out of step and the bad copy on offer until
        // the next heartbeat noticed.
        let request = TrackerRequest::Withdraw {
            file: file.clone(),
            sha1: Some(version.sha1),
            reason,
        };
        let reply = session::ask_aside(self.host.as_ref(), session, self.client, request);
        match reply.await {
            Ok(Ok(TrackerReply::Ack)) => {}
            // Not registered: the tracker offers nothing of ours.
            Ok(Err(ClientError::NotRegistered(_))) | Err(_) => {}
            Ok(Ok(other)) => tracing::warn!(%file, ?other, "the tracker did not acknowledge a withdrawal"),
            Ok(Err(error)) => tracing::warn!(%file, %error, "could not withdraw a bad copy; the session is over"),
        }
    }
}

//! Asking the tracker beside the download: for more peers while it has
//! few, and with reports of peers blamed for a bad piece.
//!
//! Apart because the tracker is never waited on while pieces can come:
//! each request runs in a task of its own and is answered in the loop (or,
//! when nobody is left to draw from, awaited), and a tracker that cannot be
//! reached is lived without, which takes state of its own (since when it
//! was lost, the peers resting until they are tried again).

use futures::stream::FuturesUnordered;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::file::settled;
use super::{Run, REFRESH_INTERVAL};
use crate::client::{refusal, ClientError, DownloadError};
use crate::protocol::{ClientId, Digest, TrackerReply, TrackerRequest};

/// A request to the tracker (for more peers, or a report of a blamed
/// peer), answered beside the download:
/// a tracker slow to answer (or gone without a word, which takes the
/// session's idle timeout to notice) must not hold up the pieces. It runs
/// in a task of its own, to its end, even if the download ends first.
pub(super) type Asking = oneshot::Receiver<Result<TrackerReply, ClientError>>;

/// What a download asked the tracker, and how the tracker is.
pub(super) struct TrackerTalk {
    /// Since when the tracker could not be reached, if it could not when
    /// last asked (the download goes on with the peers it knows).
    lost: Option<Instant>,
    /// Since when the tracker records other content under the name (its
    /// owner announced a new version once nobody held this one), if it
    /// does: its peers are not asked for, and the download goes on with
    /// those it knows, as without a tracker.
    rebound: Option<Instant>,
    /// When the tracker was last asked for peers.
    pub(super) refreshed: Instant,
    /// The request for more peers under way, if any.
    pub(super) asking: Option<Asking>,
    /// Reports of blamed peers on their way to the tracker, answered
    /// beside the download like requests for more peers.
    pub(super) reports: FuturesUnordered<Asking>,
}

impl TrackerTalk {
    /// Nothing asked yet; the tracker as good as asked at `now` (it just
    /// gave the first peers).
    pub(super) fn new(now: Instant) -> TrackerTalk {
        TrackerTalk {
            lost: None,
            rebound: None,
            refreshed: now,
            asking: None,
            reports: FuturesUnordered::new(),
        }
    }
}

impl Run<'_> {
    /// Nobody to draw from: asks the tracker for more at once (then at every
    /// tick), and gives up when it knows of nobody left. Without the
    /// tracker, the peers that rested are tried again, until neither a
    /// piece nor the tracker has come for the idle timeout. Nothing else
    /// needs tending meanwhile, so the answer is awaited.
    pub(super) async fn find_someone(&mut self) -> Result<(), DownloadError> {
        // Asked just now and answered: the next tick asks again. A request
        // under way (the tick's, as a rule) is awaited here, not left to
        // the loop, or a download stranded would never get to decide.
        let answered_just_now =
            self.tracker.asking.is_none() && self.tracker.refreshed.elapsed() < REFRESH_INTERVAL / 2;
        if !self.offered.is_empty() || answered_just_now {
            return Ok(());
        }
        if self.tracker.asking.is_some() {
            let reply = asked(&mut self.tracker.asking, self.client.id).await;
            self.take_peers(reply)?;
        }
        if self.offered.is_empty() {
            self.ask_for_peers().await?;
        }
        self.wake_rested();
        if self.offered.is_empty() && (self.resting.is_empty() || self.waited_out()) {
            return Err(self.exhausted().await);
        }
        Ok(())
    }

    /// Since when the download goes on without the tracker's help: it
    /// cannot be reached, or it names other content now.
    pub(super) fn on_its_own(&self) -> Option<Instant> {
        self.tracker.lost.or(self.tracker.rebound)
    }

    /// Whether a download without its tracker has tried the peers that
    /// rested long enough: neither a piece nor the tracker has come for
    /// the idle timeout.
    pub(super) fn waited_out(&self) -> bool {
        let idle = self.client.limits.idle_timeout;
        self.on_its_own()
            .is_some_and(|since| since.elapsed() > idle && self.last_piece_at.elapsed() > idle)
    }

    /// Without the tracker (until it has waited out), offers again the
    /// peers whose rest is over: what the tracker does when it can be
    /// asked. Never a peer banned for misbehaving.
    pub(super) fn wake_rested(&mut self) {
        if self.on_its_own().is_none() || self.waited_out() {
            return;
        }
        let now = Instant::now();
        let rested: Vec<ClientId> = (self.resting.iter())
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in rested {
            self.resting.remove(&peer);
            if !self.banned.contains(&peer) {
                self.offered.extend(self.tried.get(&peer));
            }
        }
    }

    /// The tracker's answer to a report of a blamed peer. A tracker that
    /// cannot be reached is no reason to stop: the peer is never asked
    /// again here anyway. A refusal is.
    pub(super) fn reported(&mut self, reply: Result<TrackerReply, ClientError>) -> Result<(), DownloadError> {
        match reply {
            Ok(TrackerReply::Ack) => {
                self.tracker.lost = None;
                Ok(())
            }
            Ok(other) => Err(refusal(other).into()),
            Err(error) if unreachable(&error) => {
                self.lost_the_tracker(&error);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Asks the tracker for more peers and waits for the answer.
    async fn ask_for_peers(&mut self) -> Result<(), DownloadError> {
        if self.tracker.rebound.is_some() {
            return Ok(());
        }
        let mut asking = Some(self.ask_swarm());
        let reply = asked(&mut asking, self.client.id).await;
        self.take_peers(reply)
    }

    /// Asks the tracker for more peers, unless a request is under way; the
    /// answer comes in the download's loop.
    pub(super) fn start_asking(&mut self) {
        if self.tracker.asking.is_none() && self.tracker.rebound.is_none() {
            self.tracker.asking = Some(self.ask_swarm());
        }
    }

    /// The request for more peers, sent.
    fn ask_swarm(&mut self) -> Asking {
        self.tracker.refreshed = Instant::now();
        let request = TrackerRequest::Swarm {
            file: self.file.clone(),
            fresh: false,
        };
        self.client.ask_tracker_aside(request)
    }

    /// The tracker's answer to a request for more peers. A tracker that
    /// cannot be reached (it restarted, say) is no reason to stop: the
    /// peers connected may well deliver the rest. A refusal is.
    pub(super) fn take_peers(&mut self, reply: Result<TrackerReply, ClientError>) -> Result<(), DownloadError> {
        let peers = match reply {
            Ok(TrackerReply::Swarm { info, root, .. }) if (info, root) != (self.info, self.root) => {
                self.name_rebound(info.sha1);
                return Ok(());
            }
            Ok(TrackerReply::Swarm { peers, .. }) => peers,
            Ok(TrackerReply::NoPeer) => Vec::new(),
            Ok(other) => return Err(refusal(other).into()),
            Err(error) if unreachable(&error) => {
                self.lost_the_tracker(&error);
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        self.tracker.lost = None;
        // A rest that is over is over, whatever the answer: a peer that
        // rested and is not offered again is gone (a download stranded
        // waits on no rest that has ended).
        let now = Instant::now();
        self.resting.retain(|_, until| *until > now);
        self.offer(&peers);
        Ok(())
    }

    /// The tracker records other content under the name (version
    /// `recorded`): its peers hold none of these pieces. The download goes
    /// on with the peers it knows and asks the tracker for no more; the
    /// membership of the new version's swarm that the ask just made is
    /// given back, so that its downloaders are not sent here.
    fn name_rebound(&mut self, recorded: Digest) {
        tracing::info!(node = %self.client.id, "{} now names other content; going on with the peers it knows", self.file);
        self.tracker.rebound.get_or_insert_with(Instant::now);
        let leave = TrackerRequest::Withdraw {
            file: self.file.clone(),
            sha1: Some(recorded),
            reason: None,
        };
        // Sent aside: the answer changes nothing here.
        drop(self.client.ask_tracker_aside(leave));
    }

    /// The tracker could not be reached: said once (to the progress
    /// display, and logged at `info`) until it answers again; then logged
    /// at `debug`.
    fn lost_the_tracker(&mut self, error: &ClientError) {
        let (node, file) = (self.client.id, &self.file);
        if self.tracker.lost.is_some() {
            tracing::debug!(%node, %error, "still no tracker to ask about {file}");
        } else {
            // A warning, but one the download handles: the display says
            // it in its own words, the log only for those who look.
            tracing::info!(%node, %error, "going on with the peers of {file} it knows, without the tracker");
            // Halted, the client is leaving: nothing to warn the user of.
            let leaving = self.client.is_halted();
            if let (Some(progress), false) = (&self.client.progress, leaving) {
                progress.tracker_lost(file, &error.to_string());
            }
            self.tracker.lost = Some(Instant::now());
        }
    }
}

/// Whether `error` says the tracker cannot be reached (its session broke,
/// or there is none), rather than that it refused.
fn unreachable(error: &ClientError) -> bool {
    matches!(error, ClientError::Session(_) | ClientError::NotRegistered(_))
}

/// Resolves with the tracker's answer to `asking` (sent by client `id`),
/// which is then over (`None`); never if nothing was asked.
pub(super) async fn asked(asking: &mut Option<Asking>, id: ClientId) -> Result<TrackerReply, ClientError> {
    // The task asking ends without an answer only if the client stops.
    settled(asking).await.unwrap_or(Err(ClientError::Stopped(id)))
}

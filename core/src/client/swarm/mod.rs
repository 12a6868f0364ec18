//! A swarm download: a file in pieces from several peers at once.
//!
//! [`Client::swarm_start`] asks the tracker for the swarm (which records the
//! client as a member, so others draw from it too) and gets the file's
//! size, SHA-1, hash tree root and up to 40 peers.
//! [`Client::swarm_receive`] then:
//!
//! 1. resumes what an interrupted download left ([`Folder::resume`](crate::storage::Folder::resume)), or
//!    starts afresh;
//! 2. connects to the peers (one connection each, [`MAX_LINKS`] at most),
//!    learns which pieces each holds, and fetches the piece hashes from the
//!    first one (from another too, up to three, while no answer
//!    moves), checked against the root;
//! 3. asks each peer for several pieces at once, rarest first, with an
//!    endgame ([`Scheduler`]); checks every piece as it arrives, writes it
//!    to the partial file, and serves it to others from then on;
//! 4. asks the tracker for more peers while it has few, saves the record of
//!    checked pieces every [`RECORD_INTERVAL`], and gives up only when no
//!    peer is left that could deliver what is missing. If the tracker
//!    cannot be reached, it goes on with the peers it knows, tries again
//!    those that could not serve for a moment, and gives up when neither a
//!    piece nor the tracker has come for the idle timeout;
//! 5. checks the whole file once more and renames it into place.
//!
//! A peer that sends a piece that fails its hash is blamed, once: the
//! download logs `transfer_rejected`, tells the peer (which checks its own
//! copy, as after a whole-file transfer, and withdraws it if it is bad),
//! tells the tracker (which stops offering that peer to this client), and
//! never asks it again. Other trouble with a peer (it cannot be reached,
//! cuts the connection, stalls) costs it its place but is not logged:
//! peers of a swarm come and go, and when they do depends on timing.
//!
//! The code is one file per concept, each a part of the one `Run` that owns
//! a download's state; this one holds the public face and the loop:
//!
//! - `link.rs`: one conversation with a peer, as the downloader sees it:
//!   connecting, joining, and what the peer says, run beside the loop;
//! - `peers.rs`: the peers the download talks to: who is offered, connected,
//!   asked, nudged, blamed and dropped, and how fast each sends (its pace,
//!   for the endgame's copies);
//! - `tracker.rs`: asking the tracker for more peers (and reporting blamed
//!   ones) beside the download, and going on without it;
//! - `file.rs`: the partial file: pieces checked and written, the record of
//!   them saved, the whole file hashed ahead, checked once more and stored.

mod credit;
mod file;
mod link;
mod peers;
mod tracker;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Client, ClientError, DownloadError, Downloaded, Fetched, Rejection};
use crate::pieces::{Bitfield, Layout, PieceSize};
use crate::protocol::{ClientId, Digest, FileInfo, FileName, Problem, SwarmPeer, Trace, TrackerReply, TrackerRequest};
use crate::storage::{PartFile, PartLock, WholeHash};
use crate::swarm::scheduler::Scheduler;
use crate::swarm::Partial;
use crate::trace;
use credit::Credit;
use file::{settled, Checking, Hashing, Saving};
use link::{Heard, Link};
use peers::Peer;
use tracker::{asked, TrackerTalk};

/// The most peers one download draws from at once. A downloader learns
/// which pieces a peer holds only from peers it is connected to: with too
/// few (16), downloaders of a swarm of 31 kept asking the seeder for pieces
/// others already had, and it sent the file 3.6 times over. With 40, a
/// swarm of 64 (bench/swarm.rhai) took 13.6 s; with 64, 11.6 s (80: the
/// same), and 128 took 16.4 s instead of 17.3.
pub const MAX_LINKS: usize = 64;

/// How often a download saves the record of its checked pieces (after
/// syncing them), so that a crash loses at most this much work.
pub const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// How often a download with fewer than [`MAX_LINKS`] peers, or a missing
/// piece no connected peer holds, asks the tracker for more.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The bytes of pieces a download keeps in flight to one peer at most, in
/// pieces of 256 KiB or less: four to 64 pieces whatever their size (four
/// 16 MiB pieces are 64 MiB), so a fast peer never waits for the next
/// request. A peer gets as many requests in flight as it delivered pieces
/// in the last [`RECORD_INTERVAL`], plus one, up to this: a slow peer (a
/// seeder shared by many) is not asked for pieces that faster peers could
/// send sooner.
const IN_FLIGHT_BYTES: u64 = 1 << 20;

/// How many requests a peer that delivered nothing in the last
/// [`RECORD_INTERVAL`] (a new one, or a busy one) gets in flight, when the
/// download draws from [`CROWD`] peers or fewer: the second keeps the
/// peer's upload busy between pieces.
const QUIET_PIPELINE: usize = 2;

/// The same, when the download draws from more than [`CROWD`] peers: then
/// a request waiting in a busy peer's queue is a piece that one of many
/// others is not asked for. Measured with bench/swarm.rhai under `--sim`,
/// against [`QUIET_PIPELINE`] whatever the number of peers: 128
/// downloaders finished 3.5 % sooner (17.19 → 16.59 s), 16 and 31 1 %
/// sooner, 4 and 64 as soon, and `sim/swarm_flattens.rhai`'s 16
/// downloaders 7.3 → 7.0 s. One request whatever the number of peers did
/// better with 128 (16.15 s) and worse with few: 4 downloaders took 1.5 %
/// longer, and 10 % longer in `sim/swarm_flattens.rhai` (5.2 → 5.7 s).
const CROWDED_PIPELINE: usize = 1;

/// How many peers a download draws from before it counts as crowded
/// ([`CROWDED_PIPELINE`]).
const CROWD: usize = 8;

/// The most requests a download keeps in flight to one peer: what
/// [`IN_FLIGHT_BYTES`] allows, from four to this many pieces.
pub(crate) const MAX_PIPELINE: usize = 64;

/// How many peers a download asks for the piece hashes before any
/// answers: one at first, and another each time those asked stay silent
/// for the first-byte timeout. A holder that must hash the file first can
/// take that long; one that never answers must not hold the download up
/// for its idle timeout, meanwhile the conversations with every other peer,
/// which have nothing asked of them, end.
const LAYER_ASKS: usize = 3;

/// How many ticks in a row a peer may deliver no whole piece, while it
/// has requests in flight, before its requests that wait are moved to any
/// peer with room ([`Run::relieve_slow_peers`]): a peer that sends a byte
/// now and then must not keep dozens of them for good. With 5, honest
/// peers of big swarms met it too, and the `--sim` benchmark rows of 31
/// and 64 downloaders took up to 1.2 % longer; with 10 they are as before
/// (docs/swarm-measurements.md).
const SLOW_TICKS: u32 = 10;

/// The least time a peer that owes pieces, or an answer to a complaint,
/// may send nothing before the download drops it as stalled, however
/// short the idle timeout. A blamed peer hashes its copy before it
/// answers, as a holder does before the confirmation at the end of a
/// whole-file transfer ([`CONFIRMATION_WAIT`](super::CONFIRMATION_WAIT)),
/// and a scenario's idle timeout of a few milliseconds must not make the
/// log depend on how busy the machine is.
const LEAST_STALL: Duration = super::CONFIRMATION_WAIT;

/// How a peer's answer to the question for the piece hashes goes.
#[derive(Clone, Copy, Debug)]
struct LayerAnswer {
    /// Whether it began: from then on every byte from the peer is of it.
    begun: bool,
    /// When it last moved: asked, begun, or bytes of it seen at a tick.
    moved: Instant,
}

/// What a swarm download may be asked to do differently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SwarmOptions {
    /// The piece size, in bytes (a power of two from 16 KiB to 16 MiB);
    /// [`PieceSize::DEFAULT`] when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub piece_size: Option<u64>,
}

/// A swarm download begun: the swarm as the tracker described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SwarmStart {
    /// The file.
    pub file: FileName,
    /// Its recorded size and SHA-1.
    pub info: FileInfo,
    /// Its recorded hash tree root.
    pub root: Digest,
    /// The peers offered first.
    pub peers: Vec<SwarmPeer>,
    /// The piece size of this download.
    pub piece: PieceSize,
}

impl Client {
    /// Begins a swarm download of `file`: asks the tracker for the swarm,
    /// joining it. Fails (and reports `download_failed`) if nobody else
    /// holds or downloads the file, or the piece size is not one.
    pub async fn swarm_start(&self, file: &FileName, options: SwarmOptions) -> Result<SwarmStart, DownloadError> {
        let asked = match options.piece_size.map(PieceSize::new).transpose() {
            Ok(asked) => asked,
            Err(error) => return Err(self.failed(file, DownloadError::PieceSize(error))),
        };
        let request = TrackerRequest::Swarm {
            file: file.clone(),
            fresh: true,
        };
        let (info, root, peers) = match self.ask_tracker(request).await {
            Ok(TrackerReply::Swarm { info, root, peers }) => (info, root, peers),
            Ok(TrackerReply::NoPeer) => return Err(self.failed(file, DownloadError::NoPeer(file.clone()))),
            Ok(other) => return Err(self.failed(file, super::refusal(other).into())),
            Err(error) => return Err(self.failed(file, error.into())),
        };
        if peers.is_empty() {
            self.leave_swarm(file, info.sha1).await;
            return Err(self.failed(file, DownloadError::NoPeer(file.clone())));
        }
        let piece = match PieceSize::for_file(info.size, asked) {
            Ok(piece) => piece,
            Err(error) => {
                self.leave_swarm(file, info.sha1).await;
                let too_big = DownloadError::TooManyPieces {
                    file: file.clone(),
                    error,
                };
                return Err(self.failed(file, too_big));
            }
        };
        // The tracker offers this client to others from now on: it answers
        // them at once (with the pieces it has, none yet), rather than
        // refusing peers that then wait before they try again.
        let partial = Partial::new(info, root, Layout::new(info.size, piece));
        self.swarms.insert(file, Arc::new(partial));
        Ok(SwarmStart {
            file: file.clone(),
            info,
            root,
            peers,
            piece,
        })
    }

    /// Fetches the file of `start` in pieces, checks it and stores it (see
    /// the module's documentation). Reports `download_finished` (with the
    /// bytes each peer sent) or `download_failed`, and `transfer_rejected`
    /// for each peer blamed for a bad piece. Verified pieces stay on disk
    /// if it fails, for the next attempt; if it is halted (the client
    /// stopping, but not crashing, or [`Client::halt_downloads`]), the
    /// record of them is saved first.
    pub async fn swarm_receive(&self, start: SwarmStart) -> Result<Downloaded, DownloadError> {
        let _under_way = self.downloads.token();
        let (file, sha1) = (start.file.clone(), start.info.sha1);
        let received = self.swarm_until_stored(start).await;
        self.swarms.remove(&file);
        let error = match received {
            Ok(downloaded) => return Ok(downloaded),
            Err(error) => error,
        };
        // Halted, the client is leaving (or gone): its goodbye takes it
        // out of every swarm, and must not wait behind a withdrawal.
        if !self.halt.is_cancelled() {
            self.leave_swarm(&file, sha1).await;
        }
        Err(self.failed(&file, error))
    }

    /// Downloads `file` in a swarm: begin, receive, announce. A stored file
    /// is a success even if the tracker cannot be told, as for
    /// [`Client::download`].
    pub async fn swarm_download(&self, file: &FileName, options: SwarmOptions) -> Result<Fetched, DownloadError> {
        let start = self.swarm_start(file, options).await?;
        let downloaded = self.swarm_receive(start).await?;
        let announced = self.announce_stored(file, downloaded.info).await;
        Ok(Fetched { downloaded, announced })
    }

    /// Tells the tracker this client no longer downloads `file` (it joined
    /// the swarm with [`Client::swarm_start`] and will not receive).
    pub async fn leave_swarm(&self, file: &FileName, sha1: Digest) {
        self.swarms.remove(file);
        let request = TrackerRequest::Withdraw {
            file: file.clone(),
            sha1: Some(sha1),
            reason: None,
        };
        if let Err(error) = self.ask_tracker(request).await {
            tracing::debug!(node = %self.id, %error, "could not leave the swarm of {file}");
        }
    }

    /// Resumes what an interrupted download of `start` left, or starts
    /// afresh, and runs the download until the file is stored or it fails;
    /// [`Client::swarm_receive`] cleans up after it either way.
    async fn swarm_until_stored(&self, start: SwarmStart) -> Result<Downloaded, DownloadError> {
        let layout = Layout::new(start.info.size, start.piece);
        let resumed = self
            .folder
            .resume(&start.file, start.info, start.root, start.piece)
            .await
            .map_err(ClientError::from)?;
        let (held, layer, lock) = match resumed {
            Some(resumed) => (resumed.verified, resumed.layer, Some(resumed.lock)),
            None => (Bitfield::empty(layout.count()), None, None),
        };
        let mut run = Run::new(self, &start, layout, held);
        run.resumed_lock = lock;
        // Served from now on: peers that connect early hear of every piece
        // this download gains.
        self.swarms.insert(&start.file, run.partial.clone());
        if let Some(layer) = layer {
            run.open_part(layer).await?;
        }
        run.offer(&start.peers);
        run.go().await
    }
}

/// The state of one swarm download.
struct Run<'a> {
    /// The downloading client.
    client: &'a Client,
    /// The file.
    file: FileName,
    /// Its recorded size and SHA-1.
    info: FileInfo,
    /// Its hash tree root.
    root: Digest,
    /// The plan: who holds what, what is asked of whom.
    plan: Scheduler,
    /// The partial file, once the piece hashes are known.
    part: Option<PartFile>,
    /// The partial file an earlier attempt left, locked since its record was
    /// read, until the piece hashes open it as `part`.
    resumed_lock: Option<PartLock>,
    /// The download as served to others.
    partial: Arc<Partial>,
    /// The peers asked for the piece hashes, with how each answer goes:
    /// one at first, another each time none of those asked moved for the
    /// first-byte timeout, [`LAYER_ASKS`] at most.
    layer_from: BTreeMap<ClientId, LayerAnswer>,
    /// Connected peers.
    peers: BTreeMap<ClientId, Peer>,
    /// Peers connecting.
    connecting: BTreeSet<ClientId>,
    /// Peers offered by the tracker and not tried yet, in the order offered.
    offered: Vec<SwarmPeer>,
    /// Peers never to be asked again in this download: they misbehaved.
    banned: BTreeSet<ClientId>,
    /// Peers that could not serve just now (unreachable, refused, gone),
    /// with when they may be tried again.
    resting: BTreeMap<ClientId, Instant>,
    /// What went wrong with each peer whose last conversation failed, for
    /// the error if the download ends without the file.
    lost: BTreeMap<ClientId, Problem>,
    /// Every peer tried, as offered: once the tracker cannot be asked, a
    /// peer that rested is tried again from here.
    tried: BTreeMap<ClientId, SwarmPeer>,
    /// Peers a request could not be written to: dropped at the next turn.
    broken: Vec<ClientId>,
    /// Peers blamed for a bad piece, once each: never asked again, and
    /// while still connected, awaited until they answer the complaint
    /// (they check their copy, then close).
    blamed: BTreeSet<ClientId>,
    /// Peers blamed for a bad piece, and what they did (the first few,
    /// for the error if the download ends without the file).
    rejections: Vec<Rejection>,
    /// Who sent the checked pieces.
    credit: Credit,
    /// What the connections hear, as they hear it.
    heard: mpsc::Receiver<(ClientId, Heard)>,
    /// The other end, handed to each connection.
    tell: mpsc::Sender<(ClientId, Heard)>,
    /// The connections' reading sides.
    links: FuturesUnordered<Link>,
    /// Pieces being checked and written.
    checking: FuturesUnordered<Checking>,
    /// The whole file's SHA-1 from its start, as far as the pieces from the
    /// start are in; `None` while a step of it runs.
    whole: Option<WholeHash>,
    /// The step of the whole-file hash under way, if any.
    hashing: Option<Hashing>,
    /// Whether pieces were checked (or forgotten) since the last save of
    /// the record began.
    unsaved: bool,
    /// The save of the record under way, if any.
    saving: Option<Saving>,
    /// What the download asked the tracker, and how the tracker is.
    tracker: TrackerTalk,
    /// When a piece last checked out.
    last_piece_at: Instant,
    /// The most requests in flight to one peer.
    pipeline: usize,
    /// How many of the downloaders met (who opened a conversation with
    /// this one) were looked at.
    met: usize,
    /// The trace every `Join` of this download carries: one step, taken
    /// when it begins, so that what a join causes at a holder (a scripted
    /// fault striking there) is filed with the download, at the same place
    /// however many peers it joins, and in whatever order.
    joining: Trace,
}

impl<'a> Run<'a> {
    /// The state of a download of `start` in pieces of `layout`, with the
    /// pieces `held` on disk already: nobody connected or asked yet.
    fn new(client: &'a Client, start: &SwarmStart, layout: Layout, held: Bitfield) -> Run<'a> {
        let pipeline = ((IN_FLIGHT_BYTES / layout.piece.bytes()) as usize).clamp(4, MAX_PIPELINE);
        let seed = order_seed(client.seed, client.id, &start.file);
        let resumed = layout.bytes_held(&held);
        let (tell, heard) = mpsc::channel(64);
        let now = Instant::now();
        Run {
            client,
            file: start.file.clone(),
            info: start.info,
            root: start.root,
            plan: Scheduler::new(layout, held, seed, pipeline),
            part: None,
            resumed_lock: None,
            // The one announced at the start, if it is this download's.
            partial: client
                .swarms
                .get(&start.file)
                .filter(|partial| {
                    partial.info == start.info && partial.root == start.root && partial.layout() == layout
                })
                .unwrap_or_else(|| Arc::new(Partial::new(start.info, start.root, layout))),
            layer_from: BTreeMap::new(),
            peers: BTreeMap::new(),
            connecting: BTreeSet::new(),
            offered: Vec::new(),
            banned: BTreeSet::new(),
            resting: BTreeMap::new(),
            lost: BTreeMap::new(),
            tried: BTreeMap::new(),
            broken: Vec::new(),
            blamed: BTreeSet::new(),
            rejections: Vec::new(),
            credit: Credit::new(layout.count(), resumed),
            heard,
            tell,
            links: FuturesUnordered::new(),
            checking: FuturesUnordered::new(),
            whole: Some(WholeHash::default()),
            hashing: None,
            unsaved: false,
            saving: None,
            tracker: TrackerTalk::new(now),
            last_piece_at: now,
            pipeline,
            met: 0,
            joining: trace::next(),
        }
    }

    /// Runs the download to its end, or until the client's downloads are
    /// halted (its stop halts them too): then the steps are dropped
    /// wherever they are (the record of checked pieces is consistent at
    /// every one), and the record is saved, unless the client crashed.
    /// A file checked whole goes into place even if a halt comes now: a
    /// rename cut short would store the file yet report it lost.
    async fn go(mut self) -> Result<Downloaded, DownloadError> {
        let halt = self.client.halt.clone();
        let ended = tokio::select! {
            biased;
            _ = halt.cancelled() => None,
            ended = self.steps() => Some(ended),
        };
        match ended {
            Some(Ok(())) => self.store().await,
            // Failed: the pieces checked so far are recorded, as when
            // halted, for the next attempt (unless the client crashed).
            Some(Err(error)) => {
                if !self.client.crashed() {
                    if let Err(unsaved) = self.wind_down().await {
                        tracing::debug!(node = %self.client.id, error = %unsaved, "could not record the pieces of {}", self.file);
                    }
                }
                Err(error)
            }
            None => {
                if !self.client.crashed() {
                    self.wind_down().await?;
                }
                Err(ClientError::Stopped(self.client.id).into())
            }
        }
    }

    /// Halted politely (no crash): the work handed to blocking threads
    /// ends first (nothing the download started outlives the client's
    /// leaving, and the part file stays locked while any of it runs), the
    /// pieces it checked count, and the record is saved.
    async fn wind_down(&mut self) -> Result<(), DownloadError> {
        if self.hashing.is_some() {
            let _ = settled(&mut self.hashing).await;
        }
        while let Some((_, index, good)) = self.checking.next().await {
            if let Ok(true) = good {
                self.plan.checked(index, true);
                self.unsaved = true;
            }
        }
        self.save().await?;
        if let Some(progress) = &self.client.progress {
            let have = self.plan.have();
            let bytes = self.plan.layout().bytes_held(have);
            progress.kept(&self.file, have.held(), have.len(), bytes);
        }
        Ok(())
    }

    /// The download's steps, until the whole file is checked.
    async fn steps(&mut self) -> Result<(), DownloadError> {
        let mut tick = tokio::time::interval(RECORD_INTERVAL.min(REFRESH_INTERVAL));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let partial = self.partial.clone();
        // At once, so a progress bar's rate counts from the start.
        self.show_progress();
        loop {
            for peer in std::mem::take(&mut self.broken) {
                self.drop_peer(peer, Some(Problem::Cut));
            }
            self.connect_offered();
            if self.has_everything() && self.checking.is_empty() && !self.awaiting_complaints() {
                match self.check_whole().await? {
                    true => return Ok(()),
                    false => continue,
                }
            }
            // Nobody to draw from, and pieces still to come: someone must
            // be found (a download complete but for a report's answer has
            // only that answer to wait for).
            let stranded = self.peers.is_empty() && self.connecting.is_empty() && self.checking.is_empty();
            if stranded && !self.has_everything() {
                self.find_someone().await?;
                if !self.offered.is_empty() {
                    continue;
                }
            }
            // In the endgame, a piece under way is copied once its sender
            // is found slow: its pace is looked at as soon as it can tell.
            let pace_due = self.plan.endgame().then(|| self.pace_due()).flatten();
            tokio::select! {
                biased;
                Some((peer, heard)) = self.heard.recv() => self.hear(peer, heard).await?,
                Some((peer, index, good)) = self.checking.next(), if !self.checking.is_empty() => {
                    self.checked(peer, index, good)?
                }
                Some(()) = self.links.next(), if !self.links.is_empty() => {}
                hashed = settled(&mut self.hashing), if self.hashing.is_some() => {
                    self.whole = Some(hashed.map_err(ClientError::from)?);
                    self.hash_ahead();
                }
                saved = settled(&mut self.saving), if self.saving.is_some() => {
                    saved.map_err(ClientError::from)?;
                }
                // Reports before requests for peers: an older report's
                // answer must not clear a loss a newer request found.
                Some(reply) = self.tracker.reports.next(), if !self.tracker.reports.is_empty() => {
                    self.reported(reply.unwrap_or(Err(ClientError::Stopped(self.client.id))))?;
                }
                reply = asked(&mut self.tracker.asking, self.client.id), if self.tracker.asking.is_some() => {
                    self.take_peers(reply)?;
                }
                _ = partial.met_beyond(self.met) => self.meet(),
                _ = tokio::time::sleep_until(pace_due.unwrap_or_else(Instant::now)), if pace_due.is_some() => {
                    self.pace_under_way();
                    self.ask_everyone();
                }
                _ = tick.tick() => self.tend().await?,
            }
        }
    }

    /// What happens every tick: the record is saved, requests are moved
    /// to the peers that serve, peers that stalled are dropped, the
    /// tracker is asked for more peers if need be (without it, the peers
    /// that rested are tried again), and the download gives up if nobody
    /// is left who could deliver.
    async fn tend(&mut self) -> Result<(), DownloadError> {
        self.start_saving();
        self.retune();
        self.drop_stalled();
        self.look_for_peers();
        if self.should_give_up() {
            return Err(self.exhausted().await);
        }
        Ok(())
    }

    /// Sizes each peer's pipeline by what it delivered since the last
    /// tick, measures the paces of pieces under way, and moves requests
    /// from peers that sat on them to peers that serve.
    fn retune(&mut self) {
        for (id, peer) in &mut self.peers {
            let owing = self.plan.in_flight(*id) > 0;
            peer.pieceless_ticks = match peer.delivered == 0 && owing {
                true => peer.pieceless_ticks + 1,
                false => 0,
            };
        }
        // Before the counts of the last tick are reset below.
        let (waiting, serving) = self.who_serves();
        let quiet = self.quiet_pipeline();
        for (id, peer) in &mut self.peers {
            let pipeline = (std::mem::take(&mut peer.delivered) + 1).clamp(quiet, self.pipeline);
            self.plan.set_pipeline(*id, pipeline);
        }
        self.pace_under_way();
        self.ask_elsewhere(waiting, serving);
        self.relieve_slow_peers();
        self.ask_everyone();
    }

    /// Drops the peers that owe something (or an answer to a complaint)
    /// and sent nothing for the idle timeout, or [`LEAST_STALL`] if that
    /// is longer.
    fn drop_stalled(&mut self) {
        let now = Instant::now();
        for (id, peer) in &mut self.peers {
            // Bytes came: a slow piece is no stalled one. Not for a peer
            // blamed (its answer to the complaint is what is awaited) or
            // one asked for the piece hashes (they must come whole within
            // the idle timeout; few others are asked meanwhile).
            let received = peer.received.load(Ordering::Relaxed);
            let blamed = self.blamed.contains(id);
            let answer = self.layer_from.get_mut(id);
            if received != peer.received_seen && !blamed && answer.is_none() {
                peer.stall_clock = now;
            }
            // Once its answer began, every byte from the peer is of it.
            if let Some(answer) = answer.filter(|answer| answer.begun && received != peer.received_seen) {
                answer.moved = now;
            }
            peer.received_seen = received;
        }
        let idle = self.client.limits.idle_timeout;
        let stalled: Vec<ClientId> = self
            .peers
            .iter()
            .filter(|(id, peer)| {
                (self.owes(**id) || self.blamed.contains(id)) && peer.stall_clock.elapsed() > idle.max(LEAST_STALL)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in stalled {
            self.drop_peer(peer, Some(Problem::Stalled));
        }
    }

    /// Asks the tracker for more peers, once a tick, if the download has
    /// room for them or lacks a source; tries again the peers that rested.
    fn look_for_peers(&mut self) {
        let wanting = self.peers.len() + self.connecting.len() < MAX_LINKS || self.plan.lacks_a_source();
        // Once a tick: the last ask came a tick ago, give or take the
        // time the last tick's own work took (a strict "a whole interval
        // since" would skip every other tick).
        let due = self.tracker.refreshed.elapsed() >= REFRESH_INTERVAL / 2;
        if wanting && due && !self.has_everything() {
            self.start_asking();
        }
        if !self.has_everything() {
            self.wake_rested();
        }
    }

    /// Whether the download should give up: pieces are missing, nobody
    /// connected or on the way could deliver them, and nothing came for
    /// the idle timeout (nor, without the tracker, from the peers that
    /// rested).
    fn should_give_up(&self) -> bool {
        let tried_the_rested = self.on_its_own().is_none() || self.resting.is_empty() || self.waited_out();
        !self.has_everything()
            && self.offered.is_empty()
            && self.connecting.is_empty()
            && self.peers.keys().all(|peer| !self.can_help(*peer))
            && self.checking.is_empty()
            && self.last_piece_at.elapsed() > self.client.limits.idle_timeout
            && tried_the_rested
    }
}

/// The seed of a download's shuffle of pieces: the client's seed, its id
/// and the file, so that downloaders of one file fetch in different orders
/// and a run repeats.
fn order_seed(seed: u64, client: ClientId, file: &FileName) -> u64 {
    let digest = Digest::of(format!("{seed} {client} {file}").as_bytes());
    u64::from_le_bytes(digest.0[..8].try_into().expect("8 bytes"))
}

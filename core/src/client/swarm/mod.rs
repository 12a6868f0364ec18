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
//!    first one, checked against the root;
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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Client, ClientError, DownloadError, Downloaded, Fetched, Rejection, Swarmed, TransferError};
use crate::connection::{Connection, ConnectionError};
use crate::events::Event;
use crate::pieces::{hashes_from_bytes, Bitfield, Layer, Layout, PieceSize};
use crate::protocol::{
    ClientId, Digest, FileInfo, FileName, PeerReply, PeerRequest, Problem, Request, SwarmPeer, Trace, TrackerReply,
    TrackerRequest,
};
use crate::storage::{PartFile, StorageError, WholeHash};
use crate::swarm::scheduler::{Arrival, Scheduler};
use crate::swarm::wire;
use crate::swarm::Partial;
use crate::trace;

/// The most peers one download draws from at once. A downloader learns
/// which pieces a peer holds only from peers it is connected to: with too
/// few (16), downloaders of a swarm of 31 kept asking the seeder for pieces
/// others already had, and it sent the file 3.6 times over.
pub const MAX_LINKS: usize = 40;

/// How often a download saves the record of its checked pieces (after
/// syncing them), so that a crash loses at most this much work.
pub const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// How often a download with fewer than [`MAX_LINKS`] peers asks the
/// tracker for more.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);

/// The bytes of pieces a download keeps in flight to one peer at most, in
/// pieces of 256 KiB or less: four to 64 pieces whatever their size (four
/// 16 MiB pieces are 64 MiB), so a fast peer never waits for the next
/// request. A peer gets as many requests in flight as it delivered pieces
/// in the last [`RECORD_INTERVAL`], plus one, up to this: a slow peer (a
/// seeder shared by many) is not asked for pieces that faster peers could
/// send sooner.
const IN_FLIGHT_BYTES: u64 = 1 << 20;

/// How many requests a newly connected peer gets in flight.
const FIRST_PIPELINE: usize = 2;

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

/// What a connection to one peer reports to the download.
enum Heard {
    /// Connected: the peer holds `bits`; requests go out through the
    /// sender (the connection writes them); the count of body bytes
    /// received from it goes up as they come.
    Joined(Requests, Bitfield, Arc<AtomicU64>),
    /// The piece hashes.
    Layer(Vec<Digest>),
    /// A piece's bytes.
    Piece(usize, Bytes),
    /// The peer gained a piece.
    Have(usize),
    /// The peer does not hold a piece after all.
    Missing(usize),
    /// The peer checked its copy after a complaint.
    Checked,
    /// The connection is over; with the problem, if the peer misbehaved.
    Ended(Option<Problem>),
}

/// Requests to one peer, written by its connection's task: the download's
/// loop never waits on a peer's socket (two peers that each wait to write
/// to the other while neither reads would stall until the idle timeout).
type Requests = mpsc::UnboundedSender<Request<PeerRequest>>;

/// A piece being checked and, if good, written.
type Checking = Pin<Box<dyn Future<Output = (ClientId, usize, Result<bool, StorageError>)> + Send>>;

/// A connection's reading side, run by the download itself.
type Link = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A step of the whole-file hash.
type Hashing = Pin<Box<dyn Future<Output = Result<WholeHash, StorageError>> + Send>>;

/// A save of the record of checked pieces (a sync of the partial file
/// first, which on a disk can take a while: the download goes on).
type Saving = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

/// A request to the tracker (for more peers, or a report of a blamed
/// peer), answered beside the download:
/// a tracker slow to answer (or gone without a word, which takes the
/// session's idle timeout to notice) must not hold up the pieces. It runs
/// in a task of its own, to its end, even if the download ends first.
type Asking = oneshot::Receiver<Result<TrackerReply, ClientError>>;

/// The whole-file hash goes on in steps of at least this many bytes (or to
/// the end): one per piece would wake the download for little.
const HASH_STEP: u64 = 4 << 20;

/// The most one step of the whole-file hash takes in (tens of
/// milliseconds): a resumed download's held pieces are hashed in several
/// steps, so no step holds a blocking thread for long (`phile get` keeps
/// few).
const HASH_STEP_MAX: u64 = 64 << 20;

/// A peer the download talks to.
struct Peer {
    /// Where requests go.
    out: Requests,
    /// When it was last seen sending (a whole piece, or body bytes seen at
    /// a tick, except while it owes the piece hashes or an answer to a
    /// complaint), was connected, or was asked for something when it owed
    /// nothing: the clock by which it stalls.
    stall_clock: Instant,
    /// Body bytes received from it so far, counted as they come.
    received: Arc<AtomicU64>,
    /// The count of `received` at the last tick.
    received_seen: u64,
    /// Whether it was told a piece of its was bad (it closes next).
    blamed: bool,
    /// Pieces it delivered since the last tick.
    delivered: usize,
}

impl Client {
    /// Begins a swarm download of `file`: asks the tracker for the swarm,
    /// joining it. Fails (and reports `download_failed`) if nobody else
    /// holds or downloads the file, or the piece size is not one.
    pub async fn swarm_start(&self, file: &FileName, options: SwarmOptions) -> Result<SwarmStart, DownloadError> {
        let piece = match options.piece_size.map(PieceSize::new).transpose() {
            Ok(piece) => piece.unwrap_or(PieceSize::DEFAULT),
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
        let announced = match self.announce(file, downloaded.info).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(node = %self.id, %error, "stored {file} but could not tell the tracker");
                false
            }
        };
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

    async fn swarm_until_stored(&self, start: SwarmStart) -> Result<Downloaded, DownloadError> {
        let layout = Layout::new(start.info.size, start.piece);
        let resumed = self
            .folder
            .resume(&start.file, start.info, start.root, start.piece)
            .await
            .map_err(ClientError::from)?;
        let (held, hashes) = match resumed {
            Some(resumed) => (resumed.verified, resumed.hashes),
            None => (Bitfield::empty(layout.count()), None),
        };
        let mut run = Run::new(self, &start, layout, held);
        // Served from now on: peers that connect early hear of every piece
        // this download gains.
        self.swarms.insert(&start.file, run.partial.clone());
        if let Some(hashes) = hashes {
            let layer =
                Layer::verified(layout, hashes, start.root).map_err(|_| ClientError::Disk("bad record".into()))?;
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
    /// The download as served to others.
    partial: Arc<Partial>,
    /// The peer asked for the piece hashes, if any.
    layer_from: Option<ClientId>,
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
    /// Every peer tried, as offered: once the tracker cannot be asked, a
    /// peer that rested is tried again from here.
    tried: BTreeMap<ClientId, SwarmPeer>,
    /// Peers a request could not be written to: dropped at the next turn.
    broken: Vec<ClientId>,
    /// Peers blamed for a bad piece, and what they did.
    rejections: Vec<Rejection>,
    /// Bytes of checked pieces from each peer.
    sources: BTreeMap<ClientId, u64>,
    /// Who sent each checked piece (`None`: none, or it was on disk when
    /// the download began): a piece fetched again counts once.
    sent_by: Vec<Option<ClientId>>,
    /// Bytes already on disk when the download began (and still good).
    resumed: u64,
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
    /// Since when the tracker could not be reached, if it could not when
    /// last asked (the download goes on with the peers it knows).
    tracker_lost: Option<Instant>,
    /// When the tracker was last asked for peers.
    refreshed: Instant,
    /// The request for more peers under way, if any.
    asking: Option<Asking>,
    /// Reports of blamed peers on their way to the tracker, answered
    /// beside the download like requests for more peers.
    reports: FuturesUnordered<Asking>,
    /// When a piece last checked out.
    last_piece_at: Instant,
    /// The most requests in flight to one peer.
    pipeline: usize,
    /// How many of the downloaders met (who opened a conversation with
    /// this one) were looked at.
    met: usize,
}

impl<'a> Run<'a> {
    fn new(client: &'a Client, start: &SwarmStart, layout: Layout, held: Bitfield) -> Run<'a> {
        let pipeline = (IN_FLIGHT_BYTES / layout.piece.bytes()).clamp(4, 64) as usize;
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
            // The one announced at the start, if it is this download's.
            partial: client
                .swarms
                .get(&start.file)
                .filter(|partial| {
                    partial.info == start.info && partial.root == start.root && partial.layout() == layout
                })
                .unwrap_or_else(|| Arc::new(Partial::new(start.info, start.root, layout))),
            layer_from: None,
            peers: BTreeMap::new(),
            connecting: BTreeSet::new(),
            offered: Vec::new(),
            banned: BTreeSet::new(),
            resting: BTreeMap::new(),
            tried: BTreeMap::new(),
            broken: Vec::new(),
            rejections: Vec::new(),
            sources: BTreeMap::new(),
            sent_by: vec![None; layout.count()],
            resumed,
            heard,
            tell,
            links: FuturesUnordered::new(),
            checking: FuturesUnordered::new(),
            whole: Some(WholeHash::default()),
            hashing: None,
            unsaved: false,
            saving: None,
            tracker_lost: None,
            refreshed: now,
            asking: None,
            reports: FuturesUnordered::new(),
            last_piece_at: now,
            pipeline,
            met: 0,
        }
    }

    /// Opens the partial file for the pieces of `layer`, and serves the
    /// pieces held from then on.
    async fn open_part(&mut self, layer: Layer) -> Result<(), DownloadError> {
        let folder = &self.client.folder;
        let part = folder
            .part(&self.file, self.info, self.root, layer)
            .await
            .map_err(ClientError::from)?;
        self.partial.open(part.layer().clone(), part.data(), self.plan.have());
        self.part = Some(part);
        self.hash_ahead();
        Ok(())
    }

    /// Hashes the whole file on from where it stopped, as far as the pieces
    /// from there are in, read back from disk: the check of the whole file
    /// before the rename, made while the download goes on, so that little
    /// is left of it when the last piece is in.
    fn hash_ahead(&mut self) {
        let (Some(part), Some(whole)) = (&self.part, &self.whole) else {
            return;
        };
        let layout = self.plan.layout();
        let from = whole.hashed();
        let mut to = from;
        let mut index = (from / layout.piece.bytes()) as usize;
        while index < layout.count() && self.plan.have().has(index) && to - from < HASH_STEP_MAX {
            to = layout.range(index).end;
            index += 1;
        }
        // Nothing new (all of it hashed, or waiting on the next piece), or
        // too little to be worth a step before the end.
        if to == from || (to - from < HASH_STEP && to < self.info.size) {
            return;
        }
        let whole = self.whole.take().expect("checked above");
        self.hashing = Some(Box::pin(part.hash_on(whole, to)));
    }

    /// Adds peers the tracker offered, skipping those known already, those
    /// that misbehaved, and those resting.
    fn offer(&mut self, peers: &[SwarmPeer]) {
        for peer in peers {
            if !self.knows_of(peer.peer) {
                self.offered.push(*peer);
            }
        }
    }

    /// Whether `peer` is this client, or connected, offered, banned or
    /// resting.
    fn knows_of(&self, peer: ClientId) -> bool {
        peer == self.client.id
            || self.peers.contains_key(&peer)
            || self.connecting.contains(&peer)
            || self.banned.contains(&peer)
            || self.resting.contains_key(&peer)
            || self.offered.iter().any(|offered| offered.peer == peer)
    }

    /// Whether every piece is checked and on disk: the part file is open
    /// (a download resumed in pieces finer than its record's may hold
    /// every piece before it knows their hashes, and has no part yet).
    fn has_everything(&self) -> bool {
        self.part.is_some() && self.plan.is_complete()
    }

    /// Whether `peer` has something this download needs: before the piece
    /// hashes are known, the hashes, which only a peer that holds a piece
    /// surely knows (a downloader that has just joined refuses to give
    /// them); any piece will do, since a download resumed in finer pieces
    /// than its record's may hold them all and still lack their hashes.
    /// After, a piece this download lacks.
    fn can_help(&self, peer: ClientId) -> bool {
        match self.part {
            None => self.plan.holds_any(peer),
            Some(_) => self.plan.useful(peer),
        }
    }

    /// Downloaders opened conversations with this one. Any it does not know
    /// of is a swarm member to draw from too: the tracker, which has their
    /// addresses, is asked for the swarm again.
    fn meet(&mut self) {
        let (met, seen) = self.partial.met_since(self.met);
        self.met = seen;
        let strangers = met.iter().any(|peer| !self.knows_of(*peer));
        if strangers && self.peers.len() + self.connecting.len() < MAX_LINKS && !self.has_everything() {
            self.start_asking();
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
            Some(checked) => {
                checked?;
                self.store().await
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
            self.hashing = None;
        }
        while let Some((_, index, good)) = self.checking.next().await {
            if let Ok(true) = good {
                self.plan.checked(index, true);
                self.unsaved = true;
            }
        }
        self.save().await
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
            tokio::select! {
                biased;
                Some((peer, heard)) = self.heard.recv() => self.hear(peer, heard).await?,
                Some((peer, index, good)) = self.checking.next(), if !self.checking.is_empty() => {
                    self.checked(peer, index, good)?
                }
                Some(()) = self.links.next(), if !self.links.is_empty() => {}
                hashed = settled(&mut self.hashing), if self.hashing.is_some() => {
                    self.hashing = None;
                    self.whole = Some(hashed.map_err(ClientError::from)?);
                    self.hash_ahead();
                }
                saved = settled(&mut self.saving), if self.saving.is_some() => {
                    self.saving = None;
                    saved.map_err(ClientError::from)?;
                }
                // Reports before requests for peers: an older report's
                // answer must not clear a loss a newer request found.
                Some(reply) = self.reports.next(), if !self.reports.is_empty() => {
                    self.reported(reply.unwrap_or(Err(ClientError::Stopped(self.client.id))))?;
                }
                reply = asked(&mut self.asking, self.client.id), if self.asking.is_some() => {
                    self.asking = None;
                    self.take_peers(reply)?;
                }
                _ = partial.met_beyond(self.met) => self.meet(),
                _ = tick.tick() => self.tend().await?,
            }
        }
    }

    /// Nobody to draw from: asks the tracker for more at once (then at every
    /// tick), and gives up when it knows of nobody left. Without the
    /// tracker, the peers that rested are tried again, until neither a
    /// piece nor the tracker has come for the idle timeout. Nothing else
    /// needs tending meanwhile, so the answer is awaited.
    async fn find_someone(&mut self) -> Result<(), DownloadError> {
        // Asked just now and answered: the next tick asks again. A request
        // under way (the tick's, as a rule) is awaited here, not left to
        // the loop, or a download stranded would never get to decide.
        let answered_just_now = self.asking.is_none() && self.refreshed.elapsed() < REFRESH_INTERVAL / 2;
        if !self.offered.is_empty() || answered_just_now {
            return Ok(());
        }
        if self.asking.is_some() {
            let reply = asked(&mut self.asking, self.client.id).await;
            self.asking = None;
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

    /// Whether a download without its tracker has tried the peers that
    /// rested long enough: neither a piece nor the tracker has come for
    /// the idle timeout.
    fn waited_out(&self) -> bool {
        let idle = self.client.limits.idle_timeout;
        self.tracker_lost
            .is_some_and(|since| since.elapsed() > idle && self.last_piece_at.elapsed() > idle)
    }

    /// Without the tracker (until it has waited out), offers again the
    /// peers whose rest is over: what the tracker does when it can be
    /// asked. Never a peer banned for misbehaving.
    fn wake_rested(&mut self) {
        if self.tracker_lost.is_none() || self.waited_out() {
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

    /// Whether a blamed peer has yet to answer its complaint, or the
    /// tracker its report: the download does not end before, so the peer's
    /// check (and any withdrawal) is part of it, and the tracker hears of
    /// the report before the announce that ends the download.
    fn awaiting_complaints(&self) -> bool {
        !self.reports.is_empty() || self.peers.values().any(|peer| peer.blamed)
    }

    /// Starts connecting to offered peers, up to [`MAX_LINKS`].
    fn connect_offered(&mut self) {
        while self.peers.len() + self.connecting.len() < MAX_LINKS && !self.offered.is_empty() {
            let peer = self.offered.remove(0);
            self.connecting.insert(peer.peer);
            self.tried.insert(peer.peer, peer);
            let link = self.link(peer.peer, peer.addr);
            self.links.push(Box::pin(link));
        }
    }

    /// A connection to `peer` at `addr`: joins the conversation, then
    /// reports what it hears until it ends.
    fn link(&self, peer: ClientId, addr: SocketAddr) -> impl Future<Output = ()> + Send + 'static {
        let client = self.client;
        let (host, rate, limits, tell) = (
            client.host.clone(),
            client.rate.clone(),
            client.limits,
            self.tell.clone(),
        );
        let join = PeerRequest::Join {
            file: self.file.clone(),
            client: client.id,
            sha1: self.info.sha1,
            piece_size: self.plan.layout().piece.bytes(),
        };
        let layout = self.plan.layout();
        async move {
            let wrap = |stream| rate.wrap(stream);
            let connected = Connection::connect_wrapped(host.as_ref(), addr, limits.idle_timeout, wrap).await;
            let ended = match connected {
                Err(_) => Some(Problem::Unreachable),
                Ok(connection) => match join_conversation(connection, join, layout, limits.first_byte_timeout).await {
                    Err(problem) => Some(problem),
                    Ok(joined) => match converse(joined, layout, peer, &tell).await {
                        Conversed::Ended(problem) => problem,
                        Conversed::LetGo => return,
                    },
                },
            };
            let _ = tell.send((peer, Heard::Ended(ended))).await;
        }
    }

    /// Acts on what a connection heard.
    async fn hear(&mut self, peer: ClientId, heard: Heard) -> Result<(), DownloadError> {
        match heard {
            Heard::Joined(out, bits, received) => {
                self.connecting.remove(&peer);
                let stall_clock = Instant::now();
                self.peers.insert(
                    peer,
                    Peer {
                        out,
                        stall_clock,
                        received,
                        received_seen: 0,
                        blamed: false,
                        delivered: 0,
                    },
                );
                self.plan.join(peer, bits);
                self.plan.set_pipeline(peer, FIRST_PIPELINE.min(self.pipeline));
                self.ask(peer);
                if let Some(index) = self.plan.first_held_of(peer) {
                    self.nudge_if_idle(peer, index);
                }
            }
            Heard::Layer(hashes) => self.take_layer(peer, hashes).await?,
            Heard::Piece(index, bytes) => self.take_piece(peer, index, bytes),
            Heard::Have(index) => {
                if self.plan.gained(peer, index) {
                    self.ask(peer);
                } else {
                    self.nudge_if_idle(peer, index);
                }
            }
            Heard::Missing(index) => {
                self.plan.lost(peer, index);
                self.ask_everyone();
            }
            Heard::Checked => {}
            Heard::Ended(problem) => self.drop_peer(peer, problem),
        }
        Ok(())
    }

    /// Asks `peer` for what it should send next: the piece hashes if they
    /// are still unknown and nobody else was asked, else pieces.
    fn ask(&mut self, peer: ClientId) {
        if self.peers.get(&peer).is_none_or(|p| p.blamed) {
            return;
        }
        let owed_nothing = !self.owes(peer);
        if self.part.is_none() {
            if self.layer_from.is_none() && self.can_help(peer) {
                self.layer_from = Some(peer);
                self.send(peer, PeerRequest::Layer);
            }
        } else {
            for index in self.plan.requests(peer) {
                if !self.send(peer, PeerRequest::Piece { index: index as u64 }) {
                    break;
                }
            }
        }
        // A peer's stall clock starts when it first owes something: one
        // that sat idle for long is not stalled the moment it is asked.
        if owed_nothing && self.owes(peer) {
            if let Some(link) = self.peers.get_mut(&peer) {
                link.stall_clock = Instant::now();
            }
        }
    }

    /// Whether `peer` has been asked for something it has yet to send:
    /// pieces, or the piece hashes.
    fn owes(&self, peer: ClientId) -> bool {
        self.plan.in_flight(peer) > 0 || self.layer_from == Some(peer)
    }

    /// Asks every connected peer for what it should send next.
    fn ask_everyone(&mut self) {
        let peers: Vec<ClientId> = self.peers.keys().copied().collect();
        for peer in peers {
            self.ask(peer);
        }
    }

    /// Sends `request` to `peer`; a peer that cannot be written to is
    /// dropped (at the next turn of the loop). Returns whether it went.
    fn send(&mut self, peer: ClientId, request: PeerRequest) -> bool {
        let Some(link) = self.peers.get_mut(&peer).filter(|_| !self.broken.contains(&peer)) else {
            return false;
        };
        let request = Request {
            trace: Trace::default(),
            body: request,
        };
        if link.out.send(request).is_ok() {
            return true;
        }
        self.broken.push(peer);
        false
    }

    /// The piece hashes came from `peer`: checked against the root, they
    /// open the partial file and the pieces can be asked for.
    async fn take_layer(&mut self, peer: ClientId, hashes: Vec<Digest>) -> Result<(), DownloadError> {
        if self.part.is_some() {
            return Ok(());
        }
        self.layer_from = None;
        match Layer::verified(self.plan.layout(), hashes, self.root) {
            Ok(layer) => {
                self.open_part(layer).await?;
                self.ask_everyone();
            }
            Err(error) => {
                tracing::info!(node = %self.client.id, %peer, %error, "bad piece hashes for {}", self.file);
                self.drop_peer(peer, Some(Problem::Garbled));
            }
        }
        Ok(())
    }

    /// Piece `index` arrived from `peer`: checked and written in the
    /// background, unless it is a duplicate.
    fn take_piece(&mut self, peer: ClientId, index: usize, bytes: Bytes) {
        match self.peers.get_mut(&peer) {
            // Nothing more is taken from a peer blamed for a bad piece.
            Some(link) if !link.blamed => {
                link.stall_clock = Instant::now();
                link.delivered += 1;
            }
            _ => return,
        }
        // Before the hashes, nothing was asked for, and nothing can be
        // checked: the piece is ignored, and stays to be asked for.
        let Some(part) = &self.part else {
            return;
        };
        if let Arrival::Check = self.plan.arrived(peer, index) {
            let taking = part.take_piece(index, bytes);
            self.checking.push(Box::pin(async move { (peer, index, taking.await) }));
        }
        self.ask(peer);
    }

    /// Piece `index` from `peer` was checked (and, if good, written).
    fn checked(&mut self, peer: ClientId, index: usize, good: Result<bool, StorageError>) -> Result<(), DownloadError> {
        let good = good.map_err(ClientError::from)?;
        let cancels = self.plan.checked(index, good);
        if !good {
            self.blame(peer, index)?;
            return Ok(());
        }
        let bytes = self.plan.layout().len(index);
        *self.sources.entry(peer).or_default() += bytes;
        self.sent_by[index] = Some(peer);
        self.partial.gain(index);
        self.unsaved = true;
        self.last_piece_at = Instant::now();
        self.show_progress();
        self.hash_ahead();
        for (other, index) in cancels {
            self.send(other, PeerRequest::Cancel { index: index as u64 });
        }
        self.nudge(index, peer);
        Ok(())
    }

    /// Piece `index` just checked out: every peer other than its `sender`
    /// that holds it is nudged ([`Run::nudge_if_idle`]). A seeder that
    /// shows a piece at a time (super-seeding) then shows another: without
    /// this, a downloader that got the one piece a seeder showed it from
    /// someone else would ask that seeder nothing more, and hear of nothing
    /// more from it, until every piece went out.
    fn nudge(&mut self, index: usize, sender: ClientId) {
        let holders: Vec<ClientId> = (self.peers.keys().copied())
            .filter(|peer| *peer != sender && self.plan.holds(*peer, index))
            .collect();
        for peer in holders {
            self.nudge_if_idle(peer, index);
        }
    }

    /// `peer` showed piece `index`, which this download holds already: if
    /// it is asked for nothing and has nothing else this download lacks,
    /// it is told so (`Cancel`), as [`Run::nudge`] does, so that a seeder
    /// showing a piece at a time shows another.
    fn nudge_if_idle(&mut self, peer: ClientId, index: usize) {
        if self.plan.in_flight(peer) == 0 && self.plan.have().has(index) && !self.plan.useful(peer) {
            self.send(peer, PeerRequest::Cancel { index: index as u64 });
        }
    }

    /// `peer` sent piece `index`, which failed its hash: the download logs
    /// it, never asks `peer` again, tells it (it checks its own copy) and
    /// tells the tracker (which stops offering it to this client).
    fn blame(&mut self, peer: ClientId, index: usize) -> Result<(), DownloadError> {
        let client = self.client;
        tracing::info!(node = %client.id, %peer, "piece {index} of {} failed its hash", self.file);
        let problem = Problem::WrongPiece;
        if let Some(progress) = &client.progress {
            progress.rejected(&self.file, peer, problem);
        }
        let event = Event::TransferRejected {
            file: self.file.clone(),
            peer,
            reason: problem.describe().to_owned(),
        };
        client.reporter.report(trace::next(), event);
        self.banned.insert(peer);
        // Its connection may have ended first, leaving it to rest.
        self.resting.remove(&peer);
        let released = self.plan.leave(peer);
        let complaint = Request {
            trace: trace::next(),
            body: PeerRequest::BadPiece { index: index as u64 },
        };
        if let Some(link) = self.peers.get_mut(&peer) {
            link.blamed = true;
            if link.out.send(complaint).is_err() {
                self.peers.remove(&peer);
            }
        }
        let report = TrackerRequest::Report {
            file: self.file.clone(),
            peer,
            sha1: self.info.sha1,
            problem,
        };
        self.reports.push(client.ask_tracker_aside(report));
        if self.rejections.len() < super::REJECTIONS_LISTED {
            let error = TransferError::WrongPiece { index };
            self.rejections.push(Rejection { peer, problem, error });
        }
        if !released.is_empty() {
            self.ask_everyone();
        }
        Ok(())
    }

    /// The tracker's answer to a report of a blamed peer. A tracker that
    /// cannot be reached is no reason to stop: the peer is never asked
    /// again here anyway. A refusal is.
    fn reported(&mut self, reply: Result<TrackerReply, ClientError>) -> Result<(), DownloadError> {
        match reply {
            Ok(TrackerReply::Ack) => {
                self.tracker_lost = None;
                Ok(())
            }
            Ok(other) => Err(super::refusal(other).into()),
            Err(error) if unreachable(&error) => {
                self.lost_the_tracker(&error);
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Forgets `peer`: what was in flight to it goes to others. One that
    /// misbehaved (`problem`: it garbled or stalled) is not tried again in
    /// this download; one that could not serve just now (or hung up) may
    /// be, once it has rested.
    fn drop_peer(&mut self, peer: ClientId, problem: Option<Problem>) {
        self.connecting.remove(&peer);
        self.peers.remove(&peer);
        tracing::debug!(node = %self.client.id, %peer, ?problem, "dropped a peer of the swarm of {}", self.file);
        match problem {
            Some(Problem::Garbled | Problem::Stalled | Problem::WrongPiece) => {
                self.banned.insert(peer);
            }
            _ if !self.banned.contains(&peer) => {
                self.resting.insert(peer, Instant::now() + REFRESH_INTERVAL);
            }
            _ => {}
        }
        if self.layer_from == Some(peer) {
            self.layer_from = None;
        }
        self.plan.leave(peer);
        self.ask_everyone();
    }

    /// What happens every tick: the record is saved, peers that stalled
    /// are dropped, and the tracker is asked for more peers if need be
    /// (without it, the peers that rested are tried again).
    async fn tend(&mut self) -> Result<(), DownloadError> {
        self.start_saving();
        let (waiting, serving) = self.who_serves();
        for (id, peer) in &mut self.peers {
            let pipeline =
                (std::mem::take(&mut peer.delivered) + 1).clamp(FIRST_PIPELINE.min(self.pipeline), self.pipeline);
            self.plan.set_pipeline(*id, pipeline);
        }
        self.ask_elsewhere(waiting, serving);
        self.ask_everyone();
        let now = Instant::now();
        for (id, peer) in &mut self.peers {
            // Bytes came: a slow piece is no stalled one. Not for a peer
            // blamed (its answer to the complaint is what is awaited) or
            // one asked for the piece hashes (nobody else is asked
            // meanwhile: they must come whole within the idle timeout).
            let received = peer.received.load(Ordering::Relaxed);
            if received != peer.received_seen && !peer.blamed && self.layer_from != Some(*id) {
                peer.stall_clock = now;
            }
            peer.received_seen = received;
        }
        let idle = self.client.limits.idle_timeout;
        let stalled: Vec<ClientId> = self
            .peers
            .iter()
            .filter(|(id, peer)| {
                (self.owes(**id) || peer.blamed) && peer.stall_clock.elapsed() > idle.max(super::CONFIRMATION_WAIT)
            })
            .map(|(id, _)| *id)
            .collect();
        for peer in stalled {
            self.drop_peer(peer, Some(Problem::Stalled));
        }
        let wanting = self.peers.len() + self.connecting.len() < MAX_LINKS || self.plan.lacks_a_source();
        // Once a tick: the last ask came a tick ago, give or take the
        // time the last tick's own work took (a strict "a whole interval
        // since" would skip every other tick).
        let due = self.refreshed.elapsed() >= REFRESH_INTERVAL / 2;
        if wanting && due && !self.has_everything() {
            self.start_asking();
        }
        if !self.has_everything() {
            self.wake_rested();
        }
        // Without the tracker, the rested peers get their idle timeout too.
        let tried_the_rested = self.tracker_lost.is_none() || self.resting.is_empty() || self.waited_out();
        if !self.has_everything()
            && self.offered.is_empty()
            && self.connecting.is_empty()
            && self.peers.keys().all(|peer| !self.can_help(*peer))
            && self.checking.is_empty()
            && self.last_piece_at.elapsed() > idle
            && tried_the_rested
        {
            return Err(self.exhausted().await);
        }
        Ok(())
    }

    /// Since the last tick: the peers asked for pieces that sent not a
    /// byte, and the peers that delivered a piece.
    ///
    /// A peer serves the downloaders that ask it in turn, so in a big
    /// swarm a request can wait behind dozens of others while peers that
    /// gained the piece since, and serve this download well, have room.
    fn who_serves(&self) -> (Vec<ClientId>, Vec<ClientId>) {
        let (mut waiting, mut serving) = (Vec::new(), Vec::new());
        for (id, peer) in &self.peers {
            let quiet = peer.received.load(Ordering::Relaxed) == peer.received_seen;
            if quiet && !peer.blamed && self.plan.in_flight(*id) > 0 {
                waiting.push(*id);
            } else if peer.delivered > 0 {
                serving.push(*id);
            }
        }
        (waiting, serving)
    }

    /// Moves the requests `waiting` peers sit on to `serving` peers that
    /// hold those pieces and have room for them: cancelled with the one,
    /// asked of the other. Measured with bench/swarm.rhai under `--sim`:
    /// 64 downloaders finished 19 % sooner, 128 downloaders 21 % sooner,
    /// 4 to 31 downloaders within 2 % of before. A waiting peer then asked
    /// again keeps its stall clock: it has owed pieces all along.
    fn ask_elsewhere(&mut self, waiting: Vec<ClientId>, serving: Vec<ClientId>) {
        if self.part.is_none() || waiting.is_empty() || serving.is_empty() {
            return;
        }
        for &peer in &waiting {
            for index in self.plan.withdraw(peer, &serving) {
                self.send(peer, PeerRequest::Cancel { index: index as u64 });
            }
        }
        for peer in serving {
            self.ask(peer);
        }
        for peer in waiting {
            let clock = self.peers.get(&peer).map(|p| p.stall_clock);
            self.ask(peer);
            if let (Some(clock), Some(p)) = (clock, self.peers.get_mut(&peer)) {
                p.stall_clock = clock;
            }
        }
    }

    /// Starts saving the record of checked pieces, if it changed and no
    /// save is under way; the download goes on meanwhile.
    fn start_saving(&mut self) {
        if let (true, Some(part), None) = (self.unsaved, &self.part, &self.saving) {
            self.saving = Some(Box::pin(part.save(self.plan.have())));
            self.unsaved = false;
        }
    }

    /// Saves the record of checked pieces, if it changed, and waits until
    /// it is saved (after any save under way, so the last one lists the
    /// most).
    async fn save(&mut self) -> Result<(), DownloadError> {
        self.saved().await?;
        self.start_saving();
        self.saved().await
    }

    /// Waits for the save under way, if any. Awaited in place, so a save
    /// cut short by a stop is still there for the stop to wait on.
    async fn saved(&mut self) -> Result<(), DownloadError> {
        if self.saving.is_some() {
            let saved = settled(&mut self.saving).await;
            self.saving = None;
            saved.map_err(ClientError::from)?;
        }
        Ok(())
    }

    /// Asks the tracker for more peers and waits for the answer.
    async fn ask_for_peers(&mut self) -> Result<(), DownloadError> {
        let mut asking = Some(self.ask_swarm());
        let reply = asked(&mut asking, self.client.id).await;
        self.take_peers(reply)
    }

    /// Asks the tracker for more peers, unless a request is under way; the
    /// answer comes in the download's loop.
    fn start_asking(&mut self) {
        if self.asking.is_none() {
            self.asking = Some(self.ask_swarm());
        }
    }

    /// The request for more peers, sent.
    fn ask_swarm(&mut self) -> Asking {
        self.refreshed = Instant::now();
        let request = TrackerRequest::Swarm {
            file: self.file.clone(),
            fresh: false,
        };
        self.client.ask_tracker_aside(request)
    }

    /// The tracker's answer to a request for more peers. A tracker that
    /// cannot be reached (it restarted, say) is no reason to stop: the
    /// peers connected may well deliver the rest. A refusal is.
    fn take_peers(&mut self, reply: Result<TrackerReply, ClientError>) -> Result<(), DownloadError> {
        let peers = match reply {
            Ok(TrackerReply::Swarm { peers, .. }) => peers,
            Ok(TrackerReply::NoPeer) => Vec::new(),
            Ok(other) => return Err(super::refusal(other).into()),
            Err(error) if unreachable(&error) => {
                self.lost_the_tracker(&error);
                return Ok(());
            }
            Err(error) => return Err(error.into()),
        };
        self.tracker_lost = None;
        // A rest that is over is over, whatever the answer: a peer that
        // rested and is not offered again is gone (a download stranded
        // waits on no rest that has ended).
        let now = Instant::now();
        self.resting.retain(|_, until| *until > now);
        self.offer(&peers);
        Ok(())
    }

    /// The tracker could not be reached: said once (to the progress
    /// display, and logged at `info`) until it answers again; then logged
    /// at `debug`.
    fn lost_the_tracker(&mut self, error: &ClientError) {
        let (node, file) = (self.client.id, &self.file);
        if self.tracker_lost.is_some() {
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
            self.tracker_lost = Some(Instant::now());
        }
    }

    /// Why the download ends without the file: the pieces nobody could
    /// deliver, and the peers blamed. The pieces checked are recorded
    /// first, for the next attempt; if that fails, its error is the
    /// answer instead.
    async fn exhausted(&mut self) -> DownloadError {
        if let Err(error) = self.save().await {
            return error;
        }
        DownloadError::Incomplete {
            file: self.file.clone(),
            missing: self.plan.have().len() - self.plan.have().held(),
            rejected: std::mem::take(&mut self.rejections),
        }
    }

    /// Every piece is checked: the whole file is checked once more.
    /// `false` if pieces went bad on disk meanwhile (they are fetched
    /// again).
    async fn check_whole(&mut self) -> Result<bool, DownloadError> {
        self.unsaved = true;
        self.save().await?;
        let part = self.part.as_ref().expect("pieces come only with a part file");
        if self.hashing.is_some() {
            let hashed = settled(&mut self.hashing).await;
            self.hashing = None;
            self.whole = Some(hashed.map_err(ClientError::from)?);
        }
        // A piece found bad on disk while served (a peer complained, and
        // the check of it failed) may be in the part already hashed.
        let lost: Vec<usize> = {
            let served = self.partial.held_as(&self.plan.layout());
            self.plan
                .have()
                .iter_held()
                .filter(|index| !served.has(*index))
                .collect()
        };
        if !lost.is_empty() {
            for index in lost {
                self.forget(index);
            }
            self.whole = Some(WholeHash::default());
            self.ask_everyone();
            return Ok(false);
        }
        let so_far = self.whole.take().unwrap_or_default();
        let whole = part
            .hash_on(so_far, self.info.size)
            .await
            .map_err(ClientError::from)?
            .finish();
        // Next time, if there is one, from the start again.
        self.whole = Some(WholeHash::default());
        if whole != self.info {
            let bad = part.bad_pieces(self.plan.have()).await.map_err(ClientError::from)?;
            if bad.is_empty() {
                let _ = part.discard().await;
                return Err(ClientError::Disk(format!(
                    "every piece of {} checks out, yet the whole file has sha1 {}, not {}: the tracker's record is inconsistent",
                    self.file, whole.sha1, self.info.sha1
                ))
                .into());
            }
            for index in bad {
                tracing::warn!(node = %self.client.id, "piece {index} of {} went bad on disk; fetching it again", self.file);
                self.forget(index);
            }
            self.ask_everyone();
            return Ok(false);
        }
        Ok(true)
    }

    /// The whole file checks out: puts it in place.
    async fn store(&mut self) -> Result<Downloaded, DownloadError> {
        let part = self.part.as_ref().expect("pieces come only with a part file");
        let stored = part.store(&self.client.folder, &self.file).await;
        self.client.swarms.remove(&self.file);
        if let Err(error) = stored {
            let _ = part.discard().await;
            return Err(ClientError::from(error).into());
        }
        Ok(self.finished())
    }

    /// Piece `index`, checked before, went bad on disk: it is fetched
    /// again, and until then it counts neither as sent by its sender nor
    /// as resumed, nor does the record list it.
    fn forget(&mut self, index: usize) {
        self.plan.forget(index);
        self.partial.lose(index);
        let bytes = self.plan.layout().len(index);
        match self.sent_by[index].take() {
            Some(sender) => {
                if let Some(sent) = self.sources.get_mut(&sender) {
                    *sent = sent.saturating_sub(bytes);
                    if *sent == 0 {
                        self.sources.remove(&sender);
                    }
                }
            }
            None => self.resumed = self.resumed.saturating_sub(bytes),
        }
        self.unsaved = true;
    }

    /// Reports the stored file and describes it.
    fn finished(&mut self) -> Downloaded {
        let client = self.client;
        let event = Event::DownloadFinished {
            file: self.file.clone(),
            from: None,
            bytes: self.info.size,
            sha1: self.info.sha1,
            swarm: true,
            sources: Some(self.sources.clone()),
        };
        client.reporter.report(trace::next(), event);
        // The peer that sent most (the lowest id among equals).
        let from = self
            .sources
            .iter()
            .max_by_key(|(peer, bytes)| (**bytes, std::cmp::Reverse(**peer)))
            .map_or(client.id, |(peer, _)| *peer);
        Downloaded {
            from,
            info: self.info,
            swarm: Some(Swarmed {
                sources: std::mem::take(&mut self.sources),
                resumed: self.resumed,
                piece_size: self.plan.layout().piece.bytes(),
            }),
        }
    }

    /// Tells the progress display how far the download is.
    fn show_progress(&self) {
        if let Some(progress) = &self.client.progress {
            let have = self.plan.have();
            let bytes = self.plan.layout().bytes_held(have);
            progress.swarming(
                &self.file,
                have.held(),
                have.len(),
                self.peers.len(),
                bytes,
                self.info.size,
            );
        }
    }
}

/// Whether `error` says the tracker cannot be reached (its session broke,
/// or there is none), rather than that it refused.
fn unreachable(error: &ClientError) -> bool {
    matches!(error, ClientError::Session(_) | ClientError::NotRegistered(_))
}

/// A conversation joined: its two directions, and the pieces the peer
/// holds.
struct Joined {
    inbound: wire::Inbound,
    outbound: wire::Outbound,
    bits: Bitfield,
}

/// How a conversation went.
enum Conversed {
    /// It ended, with the problem if the peer misbehaved: the download is
    /// to be told.
    Ended(Option<Problem>),
    /// The download let the peer go (or is over): nothing to tell.
    LetGo,
}

/// Sends `join` on `connection`, reads the answer and the peer's bitfield.
async fn join_conversation(
    mut connection: Connection,
    join: PeerRequest,
    layout: Layout,
    first_byte: Duration,
) -> Result<Joined, Problem> {
    read_join_answer(&mut connection, join, layout, first_byte).await?;
    let (mut inbound, outbound) = wire::split(connection);
    let bytes = inbound
        .body(layout.count().div_ceil(8))
        .await
        .map_err(|error| connection_problem(&error))?;
    let bits = Bitfield::from_bytes(layout.count(), bytes.to_vec()).map_err(|_| Problem::Garbled)?;
    Ok(Joined {
        inbound,
        outbound,
        bits,
    })
}

/// Runs a joined conversation with `peer`: hands the download a way to
/// send requests (written here) and reports what the peer says, until
/// either side ends it.
async fn converse(joined: Joined, layout: Layout, peer: ClientId, tell: &mpsc::Sender<(ClientId, Heard)>) -> Conversed {
    let Joined {
        mut inbound,
        mut outbound,
        bits,
    } = joined;
    let (requests, mut queued) = mpsc::unbounded_channel::<Request<PeerRequest>>();
    if tell
        .send((peer, Heard::Joined(requests, bits, inbound.received())))
        .await
        .is_err()
    {
        return Conversed::LetGo;
    }
    let writing = async move {
        while let Some(request) = queued.recv().await {
            if outbound.message(&request).await.is_err() {
                return Conversed::Ended(Some(Problem::Cut));
            }
        }
        // The download dropped the sender: it let the peer go.
        Conversed::LetGo
    };
    tokio::select! {
        biased;
        ended = listen(&mut inbound, layout, peer, tell) => Conversed::Ended(ended),
        cut = writing => cut,
    }
}

/// Sends `join` and reads the header of the answer (the bitfield follows).
async fn read_join_answer(
    connection: &mut Connection,
    join: PeerRequest,
    layout: Layout,
    first_byte: Duration,
) -> Result<(), Problem> {
    let request = Request {
        trace: Trace::default(),
        body: join,
    };
    connection
        .write(&request)
        .await
        .map_err(|error| connection_problem(&error))?;
    match connection.read_within::<PeerReply>(first_byte).await {
        Ok(Some(PeerReply::Joined { pieces })) if pieces == layout.count() as u64 => Ok(()),
        Ok(Some(PeerReply::Refused { reason })) => {
            tracing::debug!(%reason, "the peer refused to join");
            Err(Problem::Refused)
        }
        Ok(None) => {
            tracing::debug!("the peer closed before it answered the join");
            Err(Problem::Refused)
        }
        Ok(Some(_)) => Err(Problem::Garbled),
        Err(ConnectionError::Idle(_)) => Err(Problem::Unresponsive),
        Err(error) => Err(connection_problem(&error)),
    }
}

/// Resolves with the outcome of `step`; never if there is none.
async fn settled<T>(step: &mut Option<Pin<Box<dyn Future<Output = T> + Send>>>) -> T {
    match step {
        Some(step) => step.await,
        None => std::future::pending().await,
    }
}

/// Resolves with the tracker's answer to `asking` (sent by client `id`);
/// never if nothing was asked.
async fn asked(asking: &mut Option<Asking>, id: ClientId) -> Result<TrackerReply, ClientError> {
    match asking {
        // The task asking ends without an answer only if the client stops.
        Some(asking) => asking.await.unwrap_or(Err(ClientError::Stopped(id))),
        None => std::future::pending().await,
    }
}

/// Reads what a peer says until the conversation ends; returns the
/// problem, if the peer misbehaved.
async fn listen(
    inbound: &mut wire::Inbound,
    layout: Layout,
    peer: ClientId,
    tell: &mpsc::Sender<(ClientId, Heard)>,
) -> Option<Problem> {
    loop {
        let heard = match inbound.message::<PeerReply>(None).await {
            Ok(None) => return None,
            Err(error) => return Some(connection_problem(&error)),
            Ok(Some(reply)) => match read_reply(inbound, layout, reply).await {
                Ok(heard) => heard,
                Err(problem) => return Some(problem),
            },
        };
        let last = matches!(heard, Heard::Checked);
        if tell.send((peer, heard)).await.is_err() || last {
            return None;
        }
    }
}

/// The meaning of one reply, with the body that follows it.
async fn read_reply(inbound: &mut wire::Inbound, layout: Layout, reply: PeerReply) -> Result<Heard, Problem> {
    let count = layout.count() as u64;
    let body_problem = |error: ConnectionError| connection_problem(&error);
    Ok(match reply {
        PeerReply::Piece { index } if index < count => {
            let bytes = inbound
                .body(layout.len(index as usize) as usize)
                .await
                .map_err(body_problem)?;
            Heard::Piece(index as usize, bytes)
        }
        PeerReply::Layer { pieces } if pieces == count => {
            let bytes = inbound.body(count as usize * 20).await.map_err(body_problem)?;
            Heard::Layer(hashes_from_bytes(&bytes).ok_or(Problem::Garbled)?)
        }
        PeerReply::Have { index } if index < count => Heard::Have(index as usize),
        PeerReply::Missing { index } if index < count => Heard::Missing(index as usize),
        PeerReply::Checked => Heard::Checked,
        PeerReply::Refused { .. } => return Err(Problem::Refused),
        _ => return Err(Problem::Garbled),
    })
}

/// What a connection's failure says about the peer.
fn connection_problem(error: &ConnectionError) -> Problem {
    match error {
        ConnectionError::Idle(_) => Problem::Stalled,
        ConnectionError::FrameTooLarge | ConnectionError::Protocol(_) => Problem::Garbled,
        _ => Problem::Cut,
    }
}

/// The seed of a download's shuffle of pieces: the client's seed, its id
/// and the file, so that downloaders of one file fetch in different orders
/// and a run repeats.
fn order_seed(seed: u64, client: ClientId, file: &FileName) -> u64 {
    let digest = Digest::of(format!("{seed} {client} {file}").as_bytes());
    u64::from_le_bytes(digest.0[..8].try_into().expect("8 bytes"))
}

//! The peer server's side of a swarm conversation: the pieces of a file,
//! to a downloader that asks for them in pieces of its own size.
//!
//! The file is either held whole (in the folder) or being downloaded in a
//! swarm (a [`Partial`]): then only checked pieces are offered, and the
//! downloader is told of each new one as it is gained (`Have`). Requests
//! are answered in order; a piece goes out only with one of the client's
//! upload slots, which a fair (first come, first served) semaphore hands
//! out, so a client serving many downloaders sends each of them a piece in
//! turn rather than trickling to all at once, and its first pieces reach
//! the swarm early. A send keeps its slot only while its bytes move: a
//! downloader that stops reading lets the next conversation have the slot
//! after [`SLOT_STALL`], and the rest of the piece waits for the lane of
//! lagging conversations, apart from those whose downloaders read; so
//! does a slot that comes while the conversation writes other replies
//! (`turns.rs`, `slots.rs`).
//!
//! Of the pieces a downloader asked for, the one this client has sent least
//! often (to anyone) goes first: a seeder asked for the same pieces by many
//! downloaders spreads different pieces among them, which they then trade,
//! rather than sending the same few to all.
//!
//! A downloader that finds a piece bad says so (`BadPiece`): a whole copy
//! is checked as in a whole-file transfer (and withdrawn only if it really
//! is bad); a partial one re-checks the pieces behind it and drops those
//! that went bad.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::serve::{checked_lately, Seeder};
use super::swarm::MAX_PIPELINE;
use super::turns::Turns;
#[cfg(doc)]
use super::turns::SLOT_STALL;
use crate::connection::{Connection, ConnectionError};
use crate::origin::Origin;
use crate::pieces::{Bitfield, Layer, Layout, PieceSize};
use crate::protocol::{ClientId, Digest, FileInfo, FileName, PeerReply, PeerRequest, Request};
use crate::storage::PartData;
use crate::swarm::seeding::{Tally, REVEALED};
use crate::swarm::wire::{self, Inbound, Outbound};
use crate::swarm::Partial;
use crate::trace;

/// The most requests one downloader may have waiting in a conversation:
/// several times what an honest one keeps in flight to one peer
/// ([`MAX_PIPELINE`]), and few enough that looking through them for the
/// piece sent least costs little. A downloader that asks for more is cut
/// off.
pub(crate) const MAX_WAITING: usize = 256;

const _: () = assert!(MAX_WAITING >= 4 * MAX_PIPELINE);

/// How a client spread the pieces of one file cut one way, shared by its
/// conversations about it while any is open.
pub(crate) struct FileSpread {
    /// A std mutex: held for a count, never across an `.await`.
    tally: Mutex<Tally>,
    /// Wakes the conversations that hide pieces once every piece went out.
    spread: Notify,
}

impl FileSpread {
    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().expect("send counts poisoned")
    }

    /// Resolves once every piece went out at least once.
    async fn everywhere(&self) {
        crate::swarm::wait_until(&self.spread, || self.tally().spread()).await
    }
}

/// How a client spread each file it serves, by file and piece size.
#[derive(Default)]
pub(crate) struct Spread {
    /// A std mutex: held for a lookup. Looked up by key, never iterated.
    /// Weak: a file's tally lives while a conversation about it is open.
    /// Keyed by version too: two versions of a name are two files.
    files: Mutex<HashMap<(FileName, Digest, u64), Weak<FileSpread>>>,
}

impl Spread {
    /// The tally of version `sha1` of `file` cut as `layout`, shared with
    /// every conversation about it.
    fn of(&self, file: &FileName, sha1: Digest, layout: &Layout) -> Arc<FileSpread> {
        let mut files = self.files.lock().expect("send counts poisoned");
        files.retain(|_, spread| spread.strong_count() > 0);
        let key = (file.clone(), sha1, layout.piece.bytes());
        if let Some(shared) = files.get(&key).and_then(Weak::upgrade) {
            return shared;
        }
        let shared = Arc::new(FileSpread {
            tally: Mutex::new(Tally::new(layout.count())),
            spread: Notify::new(),
        });
        files.insert(key, Arc::downgrade(&shared));
        shared
    }
}

/// Where the pieces of a conversation come from.
enum Pieces {
    /// A file held whole.
    Whole {
        /// Reads of the file.
        data: PartData,
    },
    /// A swarm download under way.
    Partial(Arc<Partial>),
}

/// One swarm conversation being served.
struct Conversation<'a> {
    /// The server.
    seeder: &'a Seeder,
    /// The file.
    file: FileName,
    /// Who asks.
    to: ClientId,
    /// Its version.
    sha1: Digest,
    /// The pieces as the downloader cuts them.
    wanted: Layout,
    /// Where they come from.
    pieces: Pieces,
    /// Pieces asked for and not sent yet, in order.
    queue: VecDeque<usize>,
    /// How this client spread the file's pieces, to anyone.
    spread: Arc<FileSpread>,
    /// The pieces the downloader knows this side holds.
    told: Bitfield,
    /// Whether this side holds the whole file but shows only some of it
    /// (super-seeding, [`crate::swarm::seeding`]).
    hiding: bool,
    /// How many of a partial download's gains were looked at.
    seen: usize,
    /// Whether the downloader asked for the piece hashes.
    layer_asked: bool,
    /// The pieces it was shown and cancelled.
    cancelled: Bitfield,
    /// How many pieces were sent in full, and their bytes.
    pieces_sent: usize,
    bytes_sent: u64,
}

impl Seeder {
    /// Serves a swarm conversation opened by `Join`.
    pub(crate) async fn share(&self, connection: Connection, file: FileName, to: ClientId, sha1: Digest, piece: u64) {
        let origin = Origin::from(connection.peer_addr().ip());
        let (requests, mut replies) = wire::split(connection);
        let node = self.reporter.node();
        let Some(mut conversation) = self.open_conversation(&mut replies, file, to, sha1, piece).await else {
            return;
        };
        let turns = Turns::new(
            self.upload_slots.clone(),
            origin,
            replies.sent(),
            Box::new(replies.receiver_limited()),
        );
        if let Err(error) = conversation.run(requests, replies, turns).await {
            tracing::debug!(%node, %error, "swarm conversation ended");
        }
        // A seeder's log shows its swarm uploads too: a line a downloader,
        // as for a whole file (pieces sent in full).
        let (pieces, bytes, file) = (conversation.pieces_sent, conversation.bytes_sent, &conversation.file);
        if pieces > 0 {
            let noun = if pieces == 1 { "piece" } else { "pieces" };
            tracing::info!(%node, "sent {pieces} {noun} of {file} ({bytes} bytes) to {to}");
        }
    }

    /// Checks a `Join` and answers it with the pieces held; `None` if it
    /// was refused.
    async fn open_conversation(
        &self,
        replies: &mut Outbound,
        file: FileName,
        to: ClientId,
        sha1: Digest,
        piece: u64,
    ) -> Option<Conversation<'_>> {
        let (pieces, wanted) = match self.accept_join(&file, sha1, piece).await {
            Ok(accepted) => accepted,
            Err(refusal) => {
                let node = self.reporter.node();
                tracing::info!(%node, %to, "refused a swarm conversation about {file}: {refusal:?}");
                let _ = replies.message(&refusal).await;
                return None;
            }
        };
        let spread = self.spread.of(&file, sha1, &wanted);
        // Beside other downloaders, a seeder shows each only a few pieces
        // until every piece went out once; alone, a downloader sees all.
        let hiding =
            matches!(pieces, Pieces::Whole { .. }) && Arc::strong_count(&spread) > 1 && !spread.tally().spread();
        if let Pieces::Partial(partial) = &pieces {
            partial.meet(to);
        }
        let told = first_shown(&pieces, &wanted, hiding, &spread);
        let seen = match &pieces {
            Pieces::Partial(partial) => partial.gained_since(usize::MAX, &wanted).1,
            Pieces::Whole { .. } => 0,
        };
        let joined = PeerReply::Joined {
            pieces: wanted.count() as u64,
        };
        replies.message_with_body(&joined, told.as_bytes()).await.ok()?;
        Some(Conversation {
            seeder: self,
            file,
            to,
            sha1,
            wanted,
            pieces,
            queue: VecDeque::new(),
            spread,
            told,
            hiding,
            seen,
            layer_asked: false,
            cancelled: Bitfield::empty(wanted.count()),
            pieces_sent: 0,
            bytes_sent: 0,
        })
    }

    /// What a `Join` for version `sha1` of `file`, in pieces of `piece`
    /// bytes, is answered from, and the pieces it asks for; else the
    /// refusal.
    async fn accept_join(&self, file: &FileName, sha1: Digest, piece: u64) -> Result<(Pieces, Layout), PeerReply> {
        let piece = PieceSize::new(piece).map_err(|error| PeerReply::Refused {
            reason: error.to_string(),
        })?;
        let (pieces, size) = self.pieces_of(file, sha1).await?;
        fits(size, piece)?;
        Ok((pieces, Layout::new(size, piece)))
    }

    /// The pieces of version `sha1` of `file`, from a download under way or
    /// the file held whole, with the file's size; else the refusal.
    async fn pieces_of(&self, file: &FileName, sha1: Digest) -> Result<(Pieces, u64), PeerReply> {
        let node = self.reporter.node();
        if let Some(partial) = self.swarms.get(file).filter(|partial| partial.info.sha1 == sha1) {
            let size = partial.info.size;
            return Ok((Pieces::Partial(partial), size));
        }
        let (info, data) = match self.folder.open_pieces(file).await {
            Ok(opened) => opened,
            Err(_) => {
                let reason = format!("{node} does not hold {file}");
                return Err(PeerReply::Refused { reason });
            }
        };
        let announced = self.holdings.announced(file);
        if info.sha1 != sha1 || announced.is_some_and(|announced| announced != info) {
            let reason = format!("{node} does not hold that version of {file}");
            return Err(PeerReply::Refused { reason });
        }
        Ok((Pieces::Whole { data }, info.size))
    }
}

impl Conversation<'_> {
    /// Answers requests until the downloader closes, goes silent with
    /// nothing asked for the idle timeout, or complains.
    async fn run(
        &mut self,
        mut requests: Inbound,
        mut replies: Outbound,
        mut turns: Turns,
    ) -> Result<(), ConnectionError> {
        let idle = self.seeder.idle_timeout;
        let partial = match &self.pieces {
            Pieces::Partial(partial) => Some(partial.clone()),
            Pieces::Whole { .. } => None,
        };
        let spread = self.spread.clone();
        loop {
            if !self.queue.is_empty() {
                turns.queue();
            }
            let silence = self.queue.is_empty().then_some(idle);
            // Replies other than pieces go out beside the wait for a slot,
            // which may come while they are stuck on a downloader that
            // does not read.
            tokio::select! {
                biased;
                request = requests.message::<Request<PeerRequest>>(silence) => {
                    let Some(request) = request? else { return Ok(()) };
                    if !self.answer(request, &mut replies, &mut turns).await? {
                        return Ok(());
                    }
                }
                _ = gained(partial.as_deref(), self.seen) => turns.while_queued(self.tell_gains(&mut replies)).await?,
                _ = spread.everywhere(), if self.hiding => turns.while_queued(self.show_all(&mut replies)).await?,
                slot = turns.turn() => {
                    let Some(index) = self.least_sent() else { continue };
                    turns.send(slot, self.send_piece(index, &mut replies)).await?;
                    self.show_another(&mut replies).await?;
                }
            }
        }
    }

    /// Takes the piece asked for that this client sent least often so far
    /// (the first asked among equals) off the queue, counting it as sent
    /// if the downloader was shown it. No honest downloader asks for a
    /// piece it was not shown; one that does, and then stalls, must not
    /// make a hidden piece look spread and end super-seeding early.
    fn least_sent(&mut self) -> Option<usize> {
        let mut tally = self.spread.tally();
        let index = tally.least_sent(self.queue.iter().copied())?;
        let at = self.queue.iter().position(|queued| *queued == index)?;
        self.queue.remove(at);
        if self.told.has(index) {
            tally.send(index);
        }
        if tally.spread() {
            drop(tally);
            self.spread.spread.notify_waiters();
        }
        Some(index)
    }

    /// While hiding, shows the downloader one more piece: the one sent and
    /// shown least often.
    async fn show_another(&mut self, replies: &mut Outbound) -> Result<(), ConnectionError> {
        if !self.hiding {
            return Ok(());
        }
        let Some(index) = self.spread.tally().reveal(&self.told) else {
            return Ok(());
        };
        self.told.set(index);
        replies.message(&PeerReply::Have { index: index as u64 }).await
    }

    /// Every piece went out once: shows the downloader the rest.
    async fn show_all(&mut self, replies: &mut Outbound) -> Result<(), ConnectionError> {
        self.hiding = false;
        let hidden: Vec<usize> = self.told.iter_missing().collect();
        for index in &hidden {
            self.told.set(*index);
        }
        replies.messages(hidden.into_iter().map(have)).await
    }

    /// Handles one request; `false` when the conversation is over.
    async fn answer(
        &mut self,
        request: Request<PeerRequest>,
        replies: &mut Outbound,
        turns: &mut Turns,
    ) -> Result<bool, ConnectionError> {
        match request.body {
            PeerRequest::Piece { index } => return self.take_request(index, replies, turns).await,
            PeerRequest::Cancel { index } => {
                // A shown piece it no longer wants: show it another (once
                // for each; a piece it was never shown earns it nothing).
                let index = usize::try_from(index).unwrap_or(usize::MAX);
                self.queue.retain(|queued| *queued != index);
                if self.told.has(index) && self.cancelled.set(index) {
                    turns.while_queued(self.show_another(replies)).await?;
                }
            }
            // The hashes cost a fold of the file's layer each time: an
            // honest downloader asks a conversation for them once.
            PeerRequest::Layer if self.layer_asked => {
                turns.leave();
                return cut_off("asked for the piece hashes twice".to_owned(), replies).await;
            }
            PeerRequest::Layer => {
                self.layer_asked = true;
                // Worked out out of the queue: it can take a pass over the
                // whole file, with no byte for the stream meanwhile,
                // through no fault of the downloader's. (An honest one
                // asks before it asks for pieces.)
                turns.leave();
                let layer = self.layer().await;
                turns
                    .while_queued(send_layer(layer, &self.wanted, replies, &self.file))
                    .await?;
            }
            PeerRequest::BadPiece { index } => {
                // The check can take seconds (the hash of a whole file)
                // and ends the conversation: a slot that came meanwhile
                // would sit unused.
                turns.leave();
                trace::traced(request.trace, self.check(index as usize)).await;
                replies.message(&PeerReply::Checked).await?;
                replies.close().await;
                return Ok(false);
            }
            other => {
                turns.leave();
                let reason = format!("{other:?} has no place in a swarm conversation");
                replies.message(&PeerReply::Refused { reason }).await?;
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Queues a request for piece `index` (once, if asked twice); `false`
    /// (the conversation is over) for a request no honest downloader makes:
    /// a piece past the end, or one more than [`MAX_WAITING`].
    async fn take_request(
        &mut self,
        index: u64,
        replies: &mut Outbound,
        turns: &mut Turns,
    ) -> Result<bool, ConnectionError> {
        let count = self.wanted.count();
        let Some(index) = usize::try_from(index).ok().filter(|index| *index < count) else {
            turns.leave();
            let reason = format!("piece {index} is past the end of {} ({count} pieces)", self.file);
            return cut_off(reason, replies).await;
        };
        if self.queue.contains(&index) {
            return Ok(true);
        }
        if self.queue.len() >= MAX_WAITING {
            turns.leave();
            return cut_off(format!("more than {MAX_WAITING} requests waiting"), replies).await;
        }
        self.queue.push_back(index);
        Ok(true)
    }

    /// The piece hashes for the downloader's piece size, when this side
    /// can work them out (a partial download only for piece sizes no finer
    /// than its own).
    async fn layer(&self) -> Option<Arc<Layer>> {
        match &self.pieces {
            Pieces::Whole { .. } => match self.seeder.folder.layer(&self.file, self.wanted.piece).await {
                Ok((info, layer)) if info.sha1 == self.sha1 => Some(layer),
                _ => None,
            },
            Pieces::Partial(partial) => partial
                .layer()
                .filter(|_| self.wanted.piece >= partial.layout().piece)
                .cloned(),
        }
    }

    /// Sends piece `index`, or says it is missing.
    async fn send_piece(&mut self, index: usize, replies: &mut Outbound) -> Result<(), ConnectionError> {
        let range = self.wanted.range(index);
        let data = match &self.pieces {
            _ if index >= self.wanted.count() => None,
            Pieces::Whole { data } => Some(data.clone()),
            Pieces::Partial(partial) if partial.holds(range.clone()) => partial.data().cloned(),
            Pieces::Partial(_) => None,
        };
        let Some(data) = data else {
            self.told.clear(index);
            return replies.message(&PeerReply::Missing { index: index as u64 }).await;
        };
        let bytes = range.end - range.start;
        replies
            .message_with_file(&PeerReply::Piece { index: index as u64 }, &data, range)
            .await?;
        self.pieces_sent += 1;
        self.bytes_sent += bytes;
        Ok(())
    }

    /// Tells the downloader of the pieces gained since it was last told.
    async fn tell_gains(&mut self, replies: &mut Outbound) -> Result<(), ConnectionError> {
        let Pieces::Partial(partial) = &self.pieces else {
            return Ok(());
        };
        let (fresh, seen) = partial.gained_since(self.seen, &self.wanted);
        self.seen = seen;
        let untold: Vec<usize> = fresh.into_iter().filter(|index| self.told.set(*index)).collect();
        replies.messages(untold.into_iter().map(have)).await
    }

    /// The downloader says piece `index` failed its hash: checks the copy
    /// behind it.
    async fn check(&self, index: usize) {
        match &self.pieces {
            Pieces::Whole { .. } => {
                let complaint = format!("piece {index} of {} failed its hash", self.file);
                self.seeder.check_copy(&self.file, self.to, &complaint).await;
            }
            Pieces::Partial(partial) => self.check_pieces(partial, index).await,
        }
    }

    /// A downloader says a piece of a download under way failed its hash:
    /// checks the pieces held behind it as a copy held whole is checked
    /// (one check at a time; the same pieces not again for
    /// [`super::serve::RECHECK_INTERVAL`] once found good), and drops
    /// those that went bad on disk.
    async fn check_pieces(&self, partial: &Partial, index: usize) {
        let node = self.seeder.reporter.node();
        let (Some(layer), Some(data)) = (partial.layer(), partial.data()) else {
            return;
        };
        let mut found_good = self.seeder.found_good.lock().await;
        let own = partial.layout();
        let pieces = own.overlapping(self.wanted.range(index.min(self.wanted.count() - 1)));
        let bytes = own.range(pieces.start).start..own.range(pieces.end - 1).end;
        let info = FileInfo {
            size: self.wanted.size,
            sha1: self.sha1,
        };
        let judged = (self.file.clone(), info, bytes);
        if checked_lately(&mut found_good, &judged) {
            return;
        }
        let (mut checked, mut all_good) = (false, true);
        for piece in pieces {
            let bytes = own.range(piece);
            if !partial.holds(bytes.clone()) {
                continue; // nothing to check, nothing to drop
            }
            checked = true;
            let good = match data.read(bytes).await {
                Ok(read) => layer.checks(piece, &read),
                Err(_) => false,
            };
            if !good {
                tracing::warn!(%node, "piece {piece} of {} went bad on disk; dropping it", self.file);
                partial.lose(piece);
                all_good = false;
            }
        }
        if checked && all_good {
            found_good.insert(judged, Instant::now());
        }
    }
}

/// The most bytes of piece hashes a conversation holds at once while it
/// sends them: a file of a million pieces has 20 MiB of them, and many
/// conversations may send them at once.
const LAYER_CHUNK: usize = 64 * 1024;

/// Sends the piece hashes of `file` in the conversation's pieces,
/// `wanted`, folded from `layer` (as fine or finer) a chunk at a time, or
/// says it cannot give them (for that piece size).
async fn send_layer(
    layer: Option<Arc<Layer>>,
    wanted: &Layout,
    replies: &mut Outbound,
    file: &FileName,
) -> Result<(), ConnectionError> {
    let Some(layer) = layer else {
        let reason = format!("cannot give the piece hashes of {file} for that piece size");
        return replies.message(&PeerReply::Refused { reason }).await;
    };
    let header = PeerReply::Layer {
        pieces: wanted.count() as u64,
    };
    let body = layer.coarser_bytes(wanted.piece, LAYER_CHUNK);
    replies.message_with_chunks(&header, body).await
}

/// Resolves once `partial` gained more than `seen` pieces; never for a
/// file held whole, which gains nothing.
async fn gained(partial: Option<&Partial>, seen: usize) {
    match partial {
        Some(partial) => partial.gained_beyond(seen).await,
        None => std::future::pending().await,
    }
}

/// The message that says this side holds piece `index`.
fn have(index: usize) -> PeerReply {
    PeerReply::Have { index: index as u64 }
}

/// The pieces a downloader is shown as it joins (cut as `wanted`): all a
/// partial download has checked; all of a whole file, or, while `hiding`,
/// the first few of the least spread.
fn first_shown(pieces: &Pieces, wanted: &Layout, hiding: bool, spread: &FileSpread) -> Bitfield {
    match pieces {
        Pieces::Whole { .. } if hiding => {
            let mut told = Bitfield::empty(wanted.count());
            let mut tally = spread.tally();
            for _ in 0..REVEALED {
                if let Some(index) = tally.reveal(&told) {
                    told.set(index);
                }
            }
            told
        }
        Pieces::Whole { .. } => Bitfield::full(wanted.count()),
        Pieces::Partial(partial) => partial.held_as(wanted),
    }
}

/// Refuses pieces so small that a file of `size` bytes makes more than a
/// download keeps track of: counting them would cost this side memory per
/// piece, for nothing.
fn fits(size: u64, piece: PieceSize) -> Result<(), PeerReply> {
    match PieceSize::for_file(size, Some(piece)) {
        Ok(_) => Ok(()),
        Err(error) => Err(PeerReply::Refused {
            reason: error.to_string(),
        }),
    }
}

/// Refuses a downloader that broke the rules, ending the conversation
/// (`false`).
async fn cut_off(reason: String, replies: &mut Outbound) -> Result<bool, ConnectionError> {
    replies.message(&PeerReply::Refused { reason }).await?;
    Ok(false)
}

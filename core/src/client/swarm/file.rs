//! The partial file and its checks: pieces checked and written as they
//! come, the record of checked pieces saved, the whole file hashed ahead of
//! the end, checked once more and put in place.
//!
//! Apart from the peers because it is what the download is for, and what
//! outlives it: the record on disk must be consistent at every step, so the
//! work handed to blocking threads (checks, saves, hashing) is kept in
//! futures that the loop polls and a stop can wait for.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::time::Instant;

use super::Run;
use crate::client::{ClientError, DownloadError, Downloaded, Swarmed};
use crate::events::Event;
use crate::pieces::Layer;
use crate::protocol::{ClientId, Digest, PeerRequest, Problem};
use crate::storage::{StorageError, WholeHash};
use crate::swarm::scheduler::Arrival;
use crate::trace;

/// A piece being checked and, if good, written.
pub(super) type Checking = Pin<Box<dyn Future<Output = (ClientId, usize, Result<bool, StorageError>)> + Send>>;

/// A step of the whole-file hash.
pub(super) type Hashing = Pin<Box<dyn Future<Output = Result<WholeHash, StorageError>> + Send>>;

/// A save of the record of checked pieces (a sync of the partial file
/// first, which on a disk can take a while: the download goes on).
pub(super) type Saving = Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>>;

/// The whole-file hash goes on in steps of at least this many bytes (or to
/// the end): one per piece would wake the download for little.
const HASH_STEP: u64 = 4 << 20;

/// The most one step of the whole-file hash takes in (tens of
/// milliseconds): a resumed download's held pieces are hashed in several
/// steps, so no step holds a thread for long, and a download that stops
/// waits for one step at most.
const HASH_STEP_MAX: u64 = 64 << 20;

impl Run<'_> {
    /// Opens the partial file for the pieces of `layer`, and serves the
    /// pieces held from then on.
    pub(super) async fn open_part(&mut self, layer: Layer) -> Result<(), DownloadError> {
        let folder = &self.client.folder;
        let part = folder
            .part(&self.file, self.info, self.root, layer, self.resumed_lock.take())
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
    pub(super) fn hash_ahead(&mut self) {
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

    /// Whether every piece is checked and on disk: the part file is open
    /// (a download resumed in pieces finer than its record's may hold
    /// every piece before it knows their hashes, and has no part yet).
    pub(super) fn has_everything(&self) -> bool {
        self.part.is_some() && self.plan.is_complete()
    }

    /// The piece hashes came from `peer`: checked against the root, they
    /// open the partial file and the pieces can be asked for.
    pub(super) async fn take_layer(&mut self, peer: ClientId, hashes: Vec<Digest>) -> Result<(), DownloadError> {
        // Only an answer to the download's own question counts: one nobody
        // asked for would cost a check on the download's loop, and a bad
        // one would clear the questions still open.
        if self.part.is_some() || self.layer_from.remove(&peer).is_none() {
            return Ok(());
        }
        match Layer::verified(self.plan.layout(), hashes, self.root) {
            Ok(layer) => {
                self.layer_from.clear();
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

    /// Piece `index` arrived from `peer`, its last byte read at `done`:
    /// checked and written in the background, unless it is a duplicate or
    /// its sender was blamed; then the peers are asked for more.
    pub(super) fn take_piece(&mut self, peer: ClientId, index: usize, bytes: Bytes, done: Instant) {
        if !self.delivered(peer, bytes.len() as u64, done) {
            return;
        }
        // Before this piece counts: see `Run::ask_after_arrival`.
        let endgame = self.plan.endgame();
        // Before the hashes, nothing was asked for, and nothing can be
        // checked: the piece is ignored, and stays to be asked for.
        let Some(part) = &self.part else {
            return;
        };
        if let Arrival::Check = self.plan.arrived(peer, index) {
            let taking = part.take_piece(index, bytes);
            self.checking.push(Box::pin(async move { (peer, index, taking.await) }));
        }
        self.ask_after_arrival(peer, endgame);
    }

    /// Piece `index` from `peer` was checked (and, if good, written).
    pub(super) fn checked(
        &mut self,
        peer: ClientId,
        index: usize,
        good: Result<bool, StorageError>,
    ) -> Result<(), DownloadError> {
        let good = good.map_err(ClientError::from)?;
        let cancels = self.plan.checked(index, good);
        if !good {
            self.blame(peer, index);
            return Ok(());
        }
        let bytes = self.plan.layout().len(index);
        self.credit.sent(index, peer, bytes);
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

    /// Starts saving the record of checked pieces, if it changed and no
    /// save is under way; the download goes on meanwhile.
    pub(super) fn start_saving(&mut self) {
        if let (true, Some(part), None) = (self.unsaved, &self.part, &self.saving) {
            self.saving = Some(Box::pin(part.save(self.plan.have())));
            self.unsaved = false;
        }
    }

    /// Saves the record of checked pieces, if it changed, and waits until
    /// it is saved (after any save under way, so the last one lists the
    /// most).
    pub(super) async fn save(&mut self) -> Result<(), DownloadError> {
        self.saved().await?;
        self.start_saving();
        self.saved().await
    }

    /// Waits for the save under way, if any. Awaited in place, so a save
    /// cut short by a stop is still there for the stop to wait on.
    async fn saved(&mut self) -> Result<(), DownloadError> {
        if self.saving.is_some() {
            let saved = settled(&mut self.saving).await;
            saved.map_err(ClientError::from)?;
        }
        Ok(())
    }

    /// Why the download ends without the file: the pieces nobody could
    /// deliver, and the peers blamed. The pieces checked are recorded
    /// first, for the next attempt; if that fails, its error is the
    /// answer instead.
    pub(super) async fn exhausted(&mut self) -> DownloadError {
        if let Err(error) = self.save().await {
            return error;
        }
        DownloadError::Incomplete {
            file: self.file.clone(),
            missing: self.plan.have().len() - self.plan.have().held(),
            rejected: std::mem::take(&mut self.rejections),
            lost: std::mem::take(&mut self.lost).into_iter().collect(),
        }
    }

    /// Every piece is checked: the whole file is checked once more.
    /// `false` if pieces went bad on disk meanwhile (they are fetched
    /// again).
    pub(super) async fn check_whole(&mut self) -> Result<bool, DownloadError> {
        self.unsaved = true;
        self.save().await?;
        let part = self.part.as_ref().expect("pieces come only with a part file");
        if self.hashing.is_some() {
            let hashed = settled(&mut self.hashing).await;
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
                // Nothing left to record.
                self.unsaved = false;
                return Err(DownloadError::InconsistentRecord {
                    file: self.file.clone(),
                    whole: whole.sha1,
                    recorded: self.info.sha1,
                });
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
    pub(super) async fn store(&mut self) -> Result<Downloaded, DownloadError> {
        let part = self.part.as_ref().expect("pieces come only with a part file");
        let stored = part.store(&self.client.folder, &self.file).await;
        self.client.swarms.remove(&self.file);
        if let Err(error) = stored {
            // The name is taken (a file put there meanwhile, which the
            // folder does not replace, or a folder): the file is checked
            // whole, so it is kept, with a record of every piece, for an
            // attempt that may replace it (`phile get --overwrite`, or one
            // after the folder is moved away) to store at once.
            use std::io::ErrorKind::{AlreadyExists, IsADirectory};
            let taken = matches!(&error, StorageError::Io { source, .. } if matches!(source.kind(), AlreadyExists | IsADirectory));
            if !taken || part.save(self.plan.have()).await.is_err() {
                let _ = part.discard().await;
            }
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
        self.credit.take_back(index, self.plan.layout().len(index));
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
            sources: Some(self.credit.sources().clone()),
        };
        client.reporter.report(trace::next(), event);
        Downloaded {
            from: self.credit.most().unwrap_or(client.id),
            info: self.info,
            swarm: Some(Swarmed {
                sources: self.credit.sources().clone(),
                resumed: self.credit.resumed(),
                piece_size: self.plan.layout().piece.bytes(),
            }),
        }
    }

    /// Tells the progress display how far the download is.
    pub(super) fn show_progress(&self) {
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

/// Resolves with the outcome of `step`, which is then over (`None`);
/// never if there is none. Dropped before its end (another branch of a
/// `select!` won), it leaves the step where it was, to go on later.
pub(super) async fn settled<F: Future + Unpin>(step: &mut Option<F>) -> F::Output {
    let Some(running) = step else {
        return std::future::pending().await;
    };
    let outcome = running.await;
    *step = None;
    outcome
}

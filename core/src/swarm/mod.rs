//! Swarm downloads: a file fetched in pieces from several peers at once,
//! every piece checked against the file's hash tree ([`crate::pieces`]) as
//! it arrives, and served to other downloaders as soon as it is checked.
//!
//! - [`scheduler`]: which piece to ask which peer for (rarest first, an
//!   endgame), pure;
//! - [`seeding`]: which piece a seeder sends first, and which it shows
//!   (super-seeding), pure;
//! - [`wire`]: a conversation's two directions, so pieces flow one way
//!   while requests come the other;
//! - [`Partial`]: a download under way as the peers it serves see it (its
//!   checked pieces, and news of each new one).
//!
//! The download itself is [`crate::Client::swarm_receive`]; serving is in
//! the client's peer server. The partial file that survives restarts is
//! [`crate::storage::PartFile`].

pub mod scheduler;
pub mod seeding;
pub mod wire;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::Notify;

use crate::pieces::{Bitfield, Layer, Layout};
use crate::protocol::{ClientId, Digest, FileInfo, FileName};
use crate::storage::PartData;

/// A swarm download under way, as the peers it serves see it: what the file
/// is, the pieces checked so far, and where to read them.
///
/// It is served from the moment the download joins the swarm, so peers that
/// connect early hear of its pieces as it gains them; until it knows the
/// piece hashes (and has opened its partial file), it holds nothing.
pub struct Partial {
    /// The file's size and SHA-1 (the tracker's record).
    pub info: FileInfo,
    /// The root of its hash tree.
    pub root: Digest,
    /// The download's own pieces.
    layout: Layout,
    /// The piece hashes and the partial file, once known.
    pieces: OnceLock<(Arc<Layer>, PartData)>,
    /// The pieces checked, and the order they were gained in. A std
    /// mutex: held for a bit flip or a copy, never across an `.await`.
    state: Mutex<Gains>,
    /// Wakes the conversations that wait to tell their peer about a new
    /// piece. A `Notify` wakes its waiters in the order they began to
    /// wait; a `watch` channel spreads them over shards picked at random,
    /// and the order in which peers hear of a piece would then differ from
    /// run to run (a simulation would not repeat).
    gained: Notify,
    /// Wakes the download when a downloader it may not know of opens a
    /// conversation with it.
    met: Notify,
}

/// The pieces a partial download holds.
struct Gains {
    /// Checked and on disk.
    held: Bitfield,
    /// Every piece gained, in order (a conversation remembers how far it
    /// told its peer).
    log: Vec<usize>,
    /// The downloaders that opened a conversation with this one, in order.
    /// Conversations go one way, so these are swarm members it can draw
    /// from only once it connects to them too; the first downloaders of a
    /// swarm would otherwise know only the peers that came before them.
    /// Each id once, and at most [`MAX_MET`]: the ids are the peers' own
    /// claims, and one peer joining again and again under new ids must
    /// not grow it without end.
    met: Vec<ClientId>,
}

/// The most downloaders a partial download remembers meeting. Far more
/// than it ever connects to ([`crate::client::swarm::MAX_LINKS`]); past it,
/// a new one is simply not news.
pub const MAX_MET: usize = 4096;

impl std::fmt::Debug for Partial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Partial").field("info", &self.info).finish()
    }
}

impl Partial {
    /// A download of `info` in the pieces of `layout`, holding nothing to
    /// serve yet.
    pub fn new(info: FileInfo, root: Digest, layout: Layout) -> Partial {
        let held = Bitfield::empty(layout.count());
        Partial {
            info,
            root,
            layout,
            pieces: OnceLock::new(),
            state: Mutex::new(Gains {
                held,
                log: Vec::new(),
                met: Vec::new(),
            }),
            gained: Notify::new(),
            met: Notify::new(),
        }
    }

    /// The piece hashes are known and the partial file open, holding
    /// `held` (checked pieces, an earlier attempt's included): they are
    /// served from now on.
    pub fn open(&self, layer: Arc<Layer>, data: PartData, held: &Bitfield) {
        if self.pieces.set((layer, data)).is_ok() {
            for index in held.iter_held() {
                self.gain(index);
            }
        }
    }

    /// The piece hashes, once known.
    pub fn layer(&self) -> Option<&Arc<Layer>> {
        self.pieces.get().map(|(layer, _)| layer)
    }

    /// Reads of the partial file, once open.
    pub fn data(&self) -> Option<&PartData> {
        self.pieces.get().map(|(_, data)| data)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, Gains> {
        self.state.lock().expect("partial download poisoned")
    }

    /// The download's own pieces.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Piece `index` (own layout) is checked and on disk: tells whoever
    /// waits.
    pub fn gain(&self, index: usize) {
        let mut state = self.state();
        if state.held.set(index) {
            state.log.push(index);
            drop(state);
            self.gained.notify_waiters();
        }
    }

    /// Piece `index` (own layout) turned out bad on disk: no longer held.
    pub fn lose(&self, index: usize) {
        self.state().held.clear(index);
    }

    /// The pieces held, in the pieces of `wanted`.
    pub fn held_as(&self, wanted: &Layout) -> Bitfield {
        self.state().held.covering(&self.layout(), wanted)
    }

    /// Whether every byte of `bytes` is in pieces held.
    pub fn holds(&self, bytes: Range<u64>) -> bool {
        self.state().held.covers(&self.layout(), bytes)
    }

    /// The pieces of `wanted` gained since the `seen`-th gain, with the
    /// count to remember for next time.
    pub fn gained_since(&self, seen: usize, wanted: &Layout) -> (Vec<usize>, usize) {
        let state = self.state();
        let own = self.layout();
        let mut fresh = Vec::new();
        for gained in &state.log[seen.min(state.log.len())..] {
            for index in state.held.newly_covered(&own, *gained, wanted) {
                if !fresh.contains(&index) {
                    fresh.push(index);
                }
            }
        }
        (fresh, state.log.len())
    }

    /// Waits until more than `seen` pieces were gained.
    pub async fn gained_beyond(&self, seen: usize) {
        wait_until(&self.gained, || self.state().log.len() > seen).await
    }
}

impl Partial {
    /// Downloader `peer` opened a conversation with this download.
    pub fn meet(&self, peer: ClientId) {
        let mut state = self.state();
        if state.met.len() < MAX_MET && !state.met.contains(&peer) {
            state.met.push(peer);
            drop(state);
            self.met.notify_waiters();
        }
    }

    /// The downloaders met since the `seen`-th, with the count to remember
    /// for next time.
    pub fn met_since(&self, seen: usize) -> (Vec<ClientId>, usize) {
        let state = self.state();
        (state.met[seen.min(state.met.len())..].to_vec(), state.met.len())
    }

    /// Waits until more than `seen` downloaders were met.
    pub async fn met_beyond(&self, seen: usize) {
        wait_until(&self.met, || self.state().met.len() > seen).await
    }
}

/// Waits until `ready` holds, woken by `notify` (`notify_waiters`) each
/// time it may have come to hold.
pub(crate) async fn wait_until(notify: &Notify, ready: impl Fn() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        // Registered before `ready` is asked, so no wake-up between the
        // two is missed.
        notified.as_mut().enable();
        if ready() {
            return;
        }
        notified.await;
    }
}

/// The swarm downloads a client is making, by file: served to others.
#[derive(Default)]
pub struct Swarms {
    /// A std mutex: held for a map operation only. Looked up by key, never
    /// iterated, so no order of a hash map shows in behaviour.
    downloads: Mutex<HashMap<FileName, Arc<Partial>>>,
}

impl Swarms {
    /// Serves `partial` as the download of `file` from now on.
    pub fn insert(&self, file: &FileName, partial: Arc<Partial>) {
        self.lock().insert(file.clone(), partial);
    }

    /// Stops serving the download of `file` (it is stored, or dropped).
    pub fn remove(&self, file: &FileName) {
        self.lock().remove(file);
    }

    /// The download of `file` under way, if any.
    pub fn get(&self, file: &FileName) -> Option<Arc<Partial>> {
        self.lock().get(file).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileName, Arc<Partial>>> {
        self.downloads.lock().expect("swarm downloads poisoned")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pieces::PieceSize;

    fn partial() -> Partial {
        let info = FileInfo {
            size: 1 << 20,
            sha1: Digest::of(b""),
        };
        let piece = PieceSize::new(256 * 1024).unwrap();
        Partial::new(info, Digest::of(b"root"), Layout::new(info.size, piece))
    }

    #[test]
    fn a_downloader_met_twice_is_news_once() {
        let partial = partial();
        partial.meet(ClientId(7));
        partial.meet(ClientId(8));
        partial.meet(ClientId(7));
        assert_eq!(partial.met_since(0), (vec![ClientId(7), ClientId(8)], 2));
    }

    #[test]
    fn downloaders_met_under_ever_new_ids_are_remembered_up_to_a_bound() {
        let partial = partial();
        for id in 0..MAX_MET as u64 + 100 {
            partial.meet(ClientId(id));
        }
        let (met, seen) = partial.met_since(0);
        assert_eq!((met.len(), seen), (MAX_MET, MAX_MET));
        assert_eq!(met.last(), Some(&ClientId(MAX_MET as u64 - 1)));
    }
}

//! What a folder knows of its files' hash trees ([`crate::pieces`]): the
//! root each file is announced with, and the piece hashes swarm downloads
//! ask for.
//!
//! A tree costs a pass over the file, so it is computed in the same pass as
//! the SHA-1 when a file is hashed for an announce, and remembered with the
//! file's stamp as the SHA-1 is. A file that arrived whole already has its
//! root (the tracker gave it with the size and SHA-1 it was checked
//! against), and one that arrived in a swarm its piece hashes too; for one
//! that arrived whole they are computed the first time a swarm asks.
//!
//! Requests that need one file hashed at once (many downloaders joining a
//! new holder together) share one pass: see [`HashTurns`].

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha1::{Digest as _, Sha1};
use tokio::sync::OwnedMutexGuard;

use super::{at, read_through, Folder, Stamp, StorageError};
use crate::connection::CHUNK_LEN;
use crate::pieces::{remembered_piece_size, Layer, PieceSize, Tree, TreeBuilder};
use crate::protocol::{Digest, FileInfo, FileName};

/// A file's hash tree as the folder remembers it.
#[derive(Clone, Debug)]
pub(super) struct KnownTree {
    /// The file's stamp when the tree was computed (or learned).
    stamp: Stamp,
    /// The content the tree is of.
    info: FileInfo,
    /// The root.
    root: Digest,
    /// One layer of piece hashes: fine enough to fold into any piece size
    /// up to the default when computed here, the download's own when the
    /// file came in a swarm; `None` until a swarm first asks.
    layer: Option<Arc<Layer>>,
}

/// Whose turn it is to hash each file: a pass over a file costs seconds
/// for a big one, and N requests that find it unhashed at once (N
/// downloaders joining a holder that just got it) would otherwise make N
/// passes. Each waits its turn, then finds what the pass before found.
#[derive(Default)]
pub(super) struct HashTurns {
    /// The turn of each file being hashed or waited for. An entry goes
    /// when its last holder lets go, so the map holds only files in use.
    turns: Arc<Mutex<HashMap<FileName, Arc<tokio::sync::Mutex<()>>>>>,
}

/// A turn to hash one file; the next waiter's when dropped.
pub(super) struct HashTurn {
    file: FileName,
    turns: Arc<Mutex<HashMap<FileName, Arc<tokio::sync::Mutex<()>>>>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl HashTurns {
    /// Waits for the turn to hash `file`.
    pub(super) async fn take(&self, file: &FileName) -> HashTurn {
        let turn = {
            let mut turns = self.lock();
            // A waiter cancelled after the last holder let go leaves its
            // file's entry behind: swept here, so the map stays small.
            turns.retain(|_, turn| Arc::strong_count(turn) > 1);
            turns.entry(file.clone()).or_default().clone()
        };
        HashTurn {
            file: file.clone(),
            turns: self.turns.clone(),
            held: Some(turn.lock_owned().await),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileName, Arc<tokio::sync::Mutex<()>>>> {
        self.turns.lock().expect("hash turns poisoned")
    }
}

impl Drop for HashTurn {
    fn drop(&mut self) {
        let mut turns = self.turns.lock().expect("hash turns poisoned");
        drop(self.held.take());
        // Nobody else holds or waits for it (they clone it under this
        // lock): the map's copy is the last.
        if turns.get(&self.file).is_some_and(|turn| Arc::strong_count(turn) == 1) {
            turns.remove(&self.file);
        }
    }
}

impl Folder {
    /// The size, SHA-1 and hash tree root of a held file, computed in one
    /// pass unless the folder remembers them for the file as it is now.
    pub async fn content(&self, name: &FileName) -> Result<(FileInfo, Digest), StorageError> {
        let known = self.tree_as_is(name, None).await?;
        Ok((known.info, known.root))
    }

    /// Piece hashes of a held file in pieces of `piece` bytes or finer
    /// (fold them with [`Layer::coarser_bytes`]), with the content they
    /// are of. Shared, not copied: a layer can be megabytes.
    pub async fn layer(&self, name: &FileName, piece: PieceSize) -> Result<(FileInfo, Arc<Layer>), StorageError> {
        let known = self.tree_as_is(name, Some(piece)).await?;
        Ok((known.info, known.layer.expect("asked for")))
    }

    /// Remembers that the file `name`, just put in place with content
    /// `info`, has the hash tree root `root` (the tracker's record it was
    /// checked against), and the piece hashes `layer` if it came in a
    /// swarm: announcing it, or giving its hashes to a swarm, then costs
    /// no pass over the file.
    pub fn remember_root(&self, name: &FileName, info: FileInfo, root: Digest, layer: Option<Arc<Layer>>) {
        let known = self.known.get(name);
        if let Some(known) = known.filter(|known| known.info == info) {
            let tree = KnownTree {
                stamp: known.stamp,
                info,
                root,
                layer,
            };
            self.trees
                .lock()
                .expect("tree cache poisoned")
                .insert(name.clone(), tree);
        }
    }

    /// The tree of `name` as the file is now, with a layer fine enough for
    /// `piece` when one is asked for: remembered, or computed afresh.
    /// A pass over the file under way is waited for, and what it found
    /// taken.
    async fn tree_as_is(&self, name: &FileName, piece: Option<PieceSize>) -> Result<KnownTree, StorageError> {
        let file = Arc::new(self.open_held(name)?);
        let trees = self.trees.clone();
        let fits = move |tree: &KnownTree| match (piece, &tree.layer) {
            (None, _) => true,
            (Some(piece), Some(layer)) => layer.layout().piece <= piece,
            (Some(_), None) => false,
        };
        let look = move |name: &FileName, stamp: Stamp| {
            let remembered = trees.lock().expect("tree cache poisoned").get(name).cloned();
            remembered.filter(|tree| tree.stamp == stamp && fits(tree))
        };
        let (stamp, pass) = match self.remembered(&file, name, look).await? {
            Remembered::Found(tree) => return Ok(tree),
            Remembered::NotYet(stamp, pass) => (stamp, pass),
        };
        let (path, name) = (self.path(name), name.clone());
        let (known, trees) = (self.known.clone(), self.trees.clone());
        let known_tree = self
            .host
            .long(move || {
                let (info, tree) = hash_with_tree(&file, &path)?;
                let fine = remembered_piece_size(info.size).min(piece.unwrap_or(PieceSize::DEFAULT));
                let known_tree = KnownTree {
                    stamp,
                    info,
                    root: tree.root(),
                    layer: Some(Arc::new(tree.piece_layer(fine))),
                };
                known.remember(name.clone(), stamp, info);
                trees
                    .lock()
                    .expect("tree cache poisoned")
                    .insert(name, known_tree.clone());
                Ok::<_, StorageError>(known_tree)
            })
            .await?;
        drop(pass);
        Ok(known_tree)
    }

    /// What `look` finds remembered of `file`, open as `name`, for the
    /// file's stamp now; if nothing, the turn to make a pass over it, taken
    /// after any pass under way (and what that pass left is looked at
    /// again). Each look is a short job; only a pass is a long one.
    pub(super) async fn remembered<T, F>(
        &self,
        file: &Arc<fs::File>,
        name: &FileName,
        look: F,
    ) -> Result<Remembered<T>, StorageError>
    where
        T: Send + 'static,
        F: Fn(&FileName, Stamp) -> Option<T> + Clone + Send + 'static,
    {
        let look_now = || {
            let (file, path, name, look) = (file.clone(), self.path(name), name.clone(), look.clone());
            self.host.blocking(move || {
                let stamp = Stamp::of(&file.metadata().map_err(at(&path))?);
                Ok::<_, StorageError>((stamp, look(&name, stamp)))
            })
        };
        if let (_, Some(found)) = look_now().await? {
            return Ok(Remembered::Found(found));
        }
        let pass = self.hashing.take(name).await;
        Ok(match look_now().await? {
            (_, Some(found)) => Remembered::Found(found),
            (stamp, None) => Remembered::NotYet(stamp, pass),
        })
    }
}

/// What a folder remembers of a file as it is now.
pub(super) enum Remembered<T> {
    /// This.
    Found(T),
    /// Nothing: the file, with this stamp, needs a pass, and this is the
    /// turn to make it (hold it until what the pass found is remembered).
    NotYet(Stamp, HashTurn),
}

/// Size, SHA-1 and hash tree of what `file` holds, in one pass from its
/// start.
pub(super) fn hash_with_tree(file: &fs::File, path: &Path) -> Result<(FileInfo, Tree), StorageError> {
    let mut hasher = Sha1::new();
    let mut tree = TreeBuilder::new();
    let size = read_through(file, path, 0..u64::MAX, CHUNK_LEN, |chunk| {
        hasher.update(chunk);
        tree.update(chunk);
    })?;
    let info = FileInfo {
        size,
        sha1: Digest(hasher.finalize().into()),
    };
    Ok((info, tree.finish()))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::host::{BoxStream, Host, OsHost, Task};

    fn name(text: &str) -> FileName {
        text.parse().unwrap()
    }

    /// The hashes `layer` gives for pieces of `piece` bytes, as they travel.
    fn hashes_of(layer: &Layer, piece: PieceSize) -> Vec<u8> {
        layer.coarser_bytes(piece, usize::MAX).collect::<Vec<_>>().concat()
    }

    /// The hashes of `tree` for pieces of `piece` bytes, as they travel.
    fn tree_hashes(tree: &Tree, piece: PieceSize) -> Vec<u8> {
        tree.layer(piece).iter().flat_map(|hash| hash.0).collect()
    }

    #[tokio::test]
    async fn a_files_content_and_layers_come_from_one_pass_and_stay_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        folder.write(&name("a"), bytes.clone()).await.unwrap();
        let tree = Tree::of(&bytes);
        let (info, root) = folder.content(&name("a")).await.unwrap();
        assert_eq!((info.size, info.sha1, root), (300_000, Digest::of(&bytes), tree.root()));
        for size in [16 * 1024, 64 * 1024, 1024 * 1024] {
            let piece = PieceSize::new(size).unwrap();
            let layer = folder.layer(&name("a"), piece).await.unwrap().1;
            assert_eq!(hashes_of(&layer, piece), tree_hashes(&tree, piece));
        }
        // Changed behind the folder's back (a new inode): computed afresh.
        std::fs::write(folder.path(&name("a")), b"other").unwrap();
        assert_eq!(folder.content(&name("a")).await.unwrap().1, Tree::of(b"other").root());
    }

    #[tokio::test]
    async fn a_root_learned_with_a_download_is_remembered_for_the_file_as_stored() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        let info = folder.write(&name("a"), "hello").await.unwrap();
        let claimed = Digest([5; 20]);
        folder.remember_root(&name("a"), info, claimed, None);
        assert_eq!(folder.content(&name("a")).await.unwrap(), (info, claimed));
        // A layer needs the tree itself: computed from the bytes.
        let layer = folder.layer(&name("a"), PieceSize::DEFAULT).await.unwrap().1;
        assert_eq!(hashes_of(&layer, PieceSize::DEFAULT), Tree::of(b"hello").root().0);
        // A root for other content is not taken.
        folder.remember_root(&name("a"), FileInfo { size: 1, ..info }, Digest([6; 20]), None);
        assert_eq!(folder.content(&name("a")).await.unwrap().1, Tree::of(b"hello").root());
    }

    #[tokio::test]
    async fn the_piece_hashes_a_swarm_download_stored_with_are_given_without_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (passes, host) = CountingHost::counting();
        let folder = Folder::create_empty(dir.path()).unwrap().on(host);
        let bytes = vec![7u8; 100_000];
        let info = folder.write(&name("a"), bytes.clone()).await.unwrap();
        let tree = Tree::of(&bytes);
        let piece = PieceSize::new(32 * 1024).unwrap();
        let layer = Arc::new(tree.piece_layer(piece));
        folder.remember_root(&name("a"), info, tree.root(), Some(layer.clone()));
        let given = folder.layer(&name("a"), PieceSize::DEFAULT).await.unwrap().1;
        assert!(Arc::ptr_eq(&given, &layer), "not the download's own layer");
        assert_eq!(passes.load(Ordering::SeqCst), 0, "a pass over the file");
        // Finer pieces than the download's need a pass.
        let finer = PieceSize::new(16 * 1024).unwrap();
        let given = folder.layer(&name("a"), finer).await.unwrap().1;
        assert_eq!(hashes_of(&given, finer), tree_hashes(&tree, finer));
        assert_eq!(passes.load(Ordering::SeqCst), 1);
    }

    /// Many downloaders joining a holder that has just got a file ask it
    /// for the piece hashes at once: one pass over the file answers all.
    #[tokio::test(flavor = "current_thread")]
    async fn requests_that_need_one_file_hashed_at_once_share_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (passes, host) = CountingHost::counting();
        let folder = Arc::new(Folder::create_empty(dir.path()).unwrap().on(host));
        let bytes: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(folder.path(&name("a")), &bytes).unwrap();
        let piece = PieceSize::SMALLEST;
        let asking: Vec<_> = (0..8)
            .map(|_| {
                let folder = folder.clone();
                tokio::spawn(async move { folder.layer(&name("a"), piece).await })
            })
            .collect();
        for asked in asking {
            assert_eq!(asked.await.unwrap().unwrap().0.sha1, Digest::of(&bytes));
        }
        assert_eq!(passes.load(Ordering::SeqCst), 1, "passes over the file");
        // That pass found the SHA-1 too: a whole-file send needs no other.
        let held = folder.open_file(&name("a")).await.unwrap();
        assert_eq!(held.info().sha1, Digest::of(&bytes));
        assert_eq!(passes.load(Ordering::SeqCst), 1, "passes over the file");
        assert!(folder.hashing.lock().is_empty(), "turns left behind");
    }

    #[tokio::test]
    async fn a_waiter_cancelled_for_its_turn_leaves_no_entry_behind_for_long() {
        let turns = Arc::new(HashTurns::default());
        let held = turns.take(&name("a")).await;
        let waiting = {
            let turns = turns.clone();
            tokio::spawn(async move { drop(turns.take(&name("a")).await) })
        };
        tokio::task::yield_now().await;
        drop(held);
        waiting.abort();
        let _ = waiting.await;
        let other = turns.take(&name("b")).await;
        assert_eq!(turns.lock().keys().cloned().collect::<Vec<_>>(), [name("b")]);
        drop(other);
        assert!(turns.lock().is_empty());
    }

    /// The real host, counting its long jobs (the passes over files).
    struct CountingHost(Arc<AtomicUsize>);

    impl CountingHost {
        fn counting() -> (Arc<AtomicUsize>, Arc<dyn Host>) {
            let passes = Arc::new(AtomicUsize::new(0));
            (passes.clone(), Arc::new(CountingHost(passes)))
        }
    }

    impl Host for CountingHost {
        fn connect(
            &self,
            addr: std::net::SocketAddr,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<BoxStream>> + Send>> {
            OsHost.connect(addr)
        }

        fn spawn(&self, task: Task) {
            OsHost.spawn(task)
        }

        fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) -> Task {
            OsHost.run_blocking(job)
        }

        fn run_long(&self, job: Box<dyn FnOnce() + Send>) -> Task {
            self.0.fetch_add(1, Ordering::SeqCst);
            OsHost.run_long(job)
        }
    }
}

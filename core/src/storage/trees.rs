//! What a folder knows of its files' hash trees ([`crate::pieces`]): the
//! root each file is announced with, and the piece hashes swarm downloads
//! ask for.
//!
//! A tree costs a pass over the file, so it is computed in the same pass as
//! the SHA-1 when a file is hashed for an announce, and remembered with the
//! file's stamp as the SHA-1 is. A file that arrived whole already has its
//! root (the tracker gave it with the size and SHA-1 it was checked
//! against); its piece hashes are computed the first time a swarm asks.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use sha1::{Digest as _, Sha1};

use super::{at, read_at, Folder, Known, Stamp, StorageError};
use crate::connection::CHUNK_LEN;
use crate::pieces::{coarser_layer, remembered_piece_size, Layout, PieceSize, Tree, TreeBuilder};
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
    /// One layer of piece hashes, fine enough to fold into any piece size
    /// up to the default; `None` until a swarm first asks.
    layer: Option<Arc<(PieceSize, Vec<Digest>)>>,
}

impl Folder {
    /// The size, SHA-1 and hash tree root of a held file, computed in one
    /// pass unless the folder remembers them for the file as it is now.
    pub async fn content(&self, name: &FileName) -> Result<(FileInfo, Digest), StorageError> {
        let known = self.tree_as_is(name, None).await?;
        Ok((known.info, known.root))
    }

    /// The piece hashes of a held file cut into pieces of `piece` bytes,
    /// with the content they are of.
    pub async fn layer(&self, name: &FileName, piece: PieceSize) -> Result<(FileInfo, Vec<Digest>), StorageError> {
        let known = self.tree_as_is(name, Some(piece)).await?;
        let (fine, hashes) = &**known.layer.as_ref().expect("asked for");
        let layout = Layout::new(known.info.size, *fine);
        Ok((known.info, coarser_layer(&layout, hashes, piece)))
    }

    /// Remembers that the file `name`, just put in place with content
    /// `info`, has the hash tree root `root` (the tracker's record it was
    /// checked against): announcing it then costs no pass over the file.
    pub fn remember_root(&self, name: &FileName, info: FileInfo, root: Digest) {
        let known = self.known.lock().expect("digest cache poisoned").get(name).copied();
        if let Some(known) = known.filter(|known| known.info == info) {
            let tree = KnownTree {
                stamp: known.stamp,
                info,
                root,
                layer: None,
            };
            self.trees
                .lock()
                .expect("tree cache poisoned")
                .insert(name.clone(), tree);
        }
    }

    /// The tree of `name` as the file is now, with a layer fine enough for
    /// `piece` when one is asked for: remembered, or computed afresh.
    async fn tree_as_is(&self, name: &FileName, piece: Option<PieceSize>) -> Result<KnownTree, StorageError> {
        let file = self.open_held(name)?;
        let (path, name) = (self.path(name), name.clone());
        let (known, trees) = (self.known.clone(), self.trees.clone());
        self.host
            .long(move || {
                let stamp = Stamp::of(&file.metadata().map_err(at(&path))?);
                let remembered = trees.lock().expect("tree cache poisoned").get(&name).cloned();
                let fits = |tree: &KnownTree| match (piece, &tree.layer) {
                    (None, _) => true,
                    (Some(piece), Some(layer)) => layer.0 <= piece,
                    (Some(_), None) => false,
                };
                if let Some(tree) = remembered.filter(|tree| tree.stamp == stamp && fits(tree)) {
                    return Ok(tree);
                }
                let (info, tree) = hash_with_tree(&file, &path)?;
                let fine = remembered_piece_size(info.size).min(piece.unwrap_or(PieceSize::DEFAULT));
                let known_tree = KnownTree {
                    stamp,
                    info,
                    root: tree.root(),
                    layer: Some(Arc::new((fine, tree.layer(fine)))),
                };
                known
                    .lock()
                    .expect("digest cache poisoned")
                    .insert(name.clone(), Known { stamp, info });
                trees
                    .lock()
                    .expect("tree cache poisoned")
                    .insert(name, known_tree.clone());
                Ok(known_tree)
            })
            .await
    }
}

/// Size, SHA-1 and hash tree of what `file` holds, in one pass from its
/// start.
pub(super) fn hash_with_tree(file: &fs::File, path: &Path) -> Result<(FileInfo, Tree), StorageError> {
    let mut hasher = Sha1::new();
    let mut tree = TreeBuilder::new();
    let mut buffer = vec![0u8; CHUNK_LEN];
    let mut size = 0u64;
    loop {
        let read = match read_at(file, &mut buffer, size) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(at(path)(error)),
        };
        hasher.update(&buffer[..read]);
        tree.update(&buffer[..read]);
        size += read as u64;
    }
    let info = FileInfo {
        size,
        sha1: Digest(hasher.finalize().into()),
    };
    Ok((info, tree.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> FileName {
        text.parse().unwrap()
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
            assert_eq!(folder.layer(&name("a"), piece).await.unwrap().1, tree.layer(piece));
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
        folder.remember_root(&name("a"), info, claimed);
        assert_eq!(folder.content(&name("a")).await.unwrap(), (info, claimed));
        // A layer needs the tree itself: computed from the bytes.
        let layer = folder.layer(&name("a"), PieceSize::DEFAULT).await.unwrap().1;
        assert_eq!(layer, vec![Tree::of(b"hello").root()]);
        // A root for other content is not taken.
        folder.remember_root(&name("a"), FileInfo { size: 1, ..info }, Digest([6; 20]));
        assert_eq!(folder.content(&name("a")).await.unwrap().1, Tree::of(b"hello").root());
    }
}

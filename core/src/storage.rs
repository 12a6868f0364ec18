//! A client's folder: the files it holds, and downloads on their way in.
//!
//! Nothing appears in a folder half-written. Every file, whether written
//! locally or downloaded, is first written to a temporary file in the same
//! folder (named `.NAME.XXXXXX.phile-part`), synced, and only then renamed
//! into place, which the file system does atomically. A download whose size
//! or SHA-1 turn out wrong is never renamed: dropping it deletes it.
//!
//! The folder also remembers each file's SHA-1 (keyed by size and
//! modification time), so a file is hashed once, not on every upload.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use sha1::{Digest as _, Sha1};
use tempfile::NamedTempFile;
use tokio::io::AsyncSeekExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::connection::{BodySink, CHUNK_LEN};
use crate::protocol::{Digest, FileInfo, FileName, PARTIAL_SUFFIX};

/// How many received chunks may wait for the disk before the network reader
/// is held back.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Why a folder operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The folder holds no such file.
    #[error("no file {name} in {}", .dir.display())]
    NotFound {
        /// The file asked for.
        name: FileName,
        /// The folder looked in.
        dir: PathBuf,
    },
    /// The file system refused.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// Adds the path to an `io::Error`.
fn at(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A client's folder.
#[derive(Debug)]
pub struct Folder {
    /// The folder's path (`ROOT/<id>` in a scenario).
    dir: PathBuf,
    /// The SHA-1 of each file hashed so far, with the size and modification
    /// time it had then. A std mutex: it is never held across an `.await`.
    known: Mutex<HashMap<FileName, Known>>,
}

/// A file's content identity as of one look at its metadata.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// Size and modification time when `info` was computed.
    stamp: Stamp,
    /// Size and SHA-1.
    info: FileInfo,
}

/// What tells us a file changed since we hashed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Stamp {
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
        }
    }
}

impl Folder {
    /// Creates the folder, or empties it if it exists: a scenario's client
    /// starts with no files. Only files (and links, not what they point to)
    /// are removed; sub-folders are none of phile's business and stay, and a
    /// folder that is itself a link is refused rather than emptied.
    pub fn create_empty(dir: impl Into<PathBuf>) -> Result<Folder, StorageError> {
        let dir = dir.into();
        if fs::symlink_metadata(&dir).is_ok_and(|meta| meta.file_type().is_symlink()) {
            let refusal = io::Error::other("it is a symbolic link; phile will not empty what it points to");
            return Err(at(&dir)(refusal));
        }
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        for entry in fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            if !entry.file_type().map_err(at(&entry.path()))?.is_dir() {
                fs::remove_file(entry.path()).map_err(at(&entry.path()))?;
            }
        }
        Ok(Folder::at(dir))
    }

    /// Opens the folder as it is (creating it if missing), removing only what
    /// a crashed download left behind.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Folder, StorageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        for entry in fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            if entry.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(at(&path))?;
            }
        }
        Ok(Folder::at(dir))
    }

    fn at(dir: PathBuf) -> Folder {
        Folder {
            dir,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The folder's path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The path of file `name` in this folder.
    pub fn path(&self, name: &FileName) -> PathBuf {
        // A FileName is one plain component, so this never leaves the folder.
        self.dir.join(name.as_str())
    }

    /// The files held, sorted: regular files with valid names. Downloads in
    /// progress, folders and symbolic links are not listed.
    pub fn list(&self) -> Result<Vec<FileName>, StorageError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(at(&self.dir))? {
            let entry = entry.map_err(at(&self.dir))?;
            let is_file = entry.file_type().map_err(at(&entry.path()))?.is_file();
            let name = entry.file_name().into_string().ok().and_then(|n| n.parse().ok());
            if let (true, Some(name)) = (is_file, name) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The metadata of a held file; `NotFound` unless it is a regular file.
    fn metadata(&self, name: &FileName) -> Result<fs::Metadata, StorageError> {
        let path = self.path(name);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(meta),
            Ok(_) => Err(self.not_found(name)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Err(self.not_found(name)),
            Err(error) => Err(StorageError::Io { path, source: error }),
        }
    }

    fn not_found(&self, name: &FileName) -> StorageError {
        StorageError::NotFound {
            name: name.clone(),
            dir: self.dir.clone(),
        }
    }

    /// Whether the folder holds `name`.
    pub fn contains(&self, name: &FileName) -> bool {
        self.metadata(name).is_ok()
    }

    /// The size and SHA-1 of a held file, hashing it only if it changed since
    /// it was last hashed.
    pub async fn info(&self, name: &FileName) -> Result<FileInfo, StorageError> {
        Ok(self.open_file(name).await?.1)
    }

    fn remember(&self, name: &FileName, stamp: Stamp, info: FileInfo) {
        let known = Known { stamp, info };
        self.known
            .lock()
            .expect("digest cache poisoned")
            .insert(name.clone(), known);
    }

    /// Records the identity of a file just put in place, so it is never
    /// hashed again while unchanged.
    /// `file` is the handle of what was just put in place (read before the
    /// rename, so that a file replaced right after cannot be mistaken for it).
    fn remember_stored(&self, name: &FileName, file: &fs::File, info: FileInfo) -> Result<(), StorageError> {
        let stamp = Stamp::of(&file.metadata().map_err(at(&self.path(name)))?);
        self.remember(name, stamp, info);
        Ok(())
    }

    /// Reads a held file whole.
    pub async fn read(&self, name: &FileName) -> Result<Vec<u8>, StorageError> {
        self.metadata(name)?;
        let path = self.path(name);
        tokio::fs::read(&path).await.map_err(at(&path))
    }

    /// Opens a held file, with its size and SHA-1.
    ///
    /// Size and SHA-1 are those of the very file opened (its metadata is read
    /// from the open handle, and a hash reads the same handle), so a file
    /// replaced meanwhile can never pair one version's header with another
    /// version's bytes.
    pub async fn open_file(&self, name: &FileName) -> Result<(tokio::fs::File, FileInfo), StorageError> {
        self.metadata(name)?; // a regular file, not a link or a folder
        let path = self.path(name);
        let mut options = tokio::fs::OpenOptions::new();
        options.read(true);
        // Never follow a link swapped in since the check above.
        #[cfg(unix)]
        options.custom_flags(libc::O_NOFOLLOW);
        let mut file = options.open(&path).await.map_err(at(&path))?;
        let metadata = file.metadata().await.map_err(at(&path))?;
        if !metadata.is_file() {
            return Err(self.not_found(name));
        }
        let stamp = Stamp::of(&metadata);
        let known = self.known.lock().expect("digest cache poisoned").get(name).copied();
        if let Some(known) = known.filter(|known| known.stamp == stamp) {
            return Ok((file, known.info));
        }
        let reader = file.try_clone().await.map_err(at(&path))?.into_std().await;
        let hashed_path = path.clone();
        let info = tokio::task::spawn_blocking(move || hash(reader, &hashed_path))
            .await
            .expect("hashing task panicked")?;
        // The clone shares the file position: rewind for the caller.
        file.seek(io::SeekFrom::Start(0)).await.map_err(at(&path))?;
        self.remember(name, stamp, info);
        Ok((file, info))
    }

    /// Creates or replaces file `name` with what `fill` writes, atomically.
    pub async fn write_with<F>(&self, name: &FileName, fill: F) -> Result<FileInfo, StorageError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
    {
        let temp = self.temp_file(name)?;
        let target = self.path(name);
        let (file, info) = tokio::task::spawn_blocking(move || -> Result<(fs::File, FileInfo), StorageError> {
            let temp_path = temp.path().to_owned();
            let mut writer = HashingWriter::new(temp.as_file());
            fill(&mut writer).map_err(at(&temp_path))?;
            let info = writer.finish().map_err(at(&temp_path))?;
            let file = temp.persist(&target).map_err(|e| StorageError::Io {
                path: target,
                source: e.error,
            })?;
            Ok((file, info))
        })
        .await
        .expect("writing task panicked")?;
        self.remember_stored(name, &file, info)?;
        Ok(info)
    }

    /// Creates or replaces file `name` with `content`, atomically.
    pub async fn write(&self, name: &FileName, content: impl Into<Vec<u8>>) -> Result<FileInfo, StorageError> {
        let content = content.into();
        self.write_with(name, move |out| out.write_all(&content)).await
    }

    /// Starts receiving file `name` into a temporary file of this folder.
    pub fn incoming(&self, name: &FileName) -> Result<Incoming, StorageError> {
        let temp = self.temp_file(name)?;
        let path = temp.path().to_owned();
        let (chunks, mut arriving) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
        let complete = Arc::new(AtomicBool::new(false));
        let whole = complete.clone();
        // Hashing and writing run on a blocking thread, beside the task that
        // reads the socket: the two overlap instead of taking turns.
        let writer = tokio::task::spawn_blocking(move || -> Result<Received, StorageError> {
            let mut writer = HashingWriter::new(temp.as_file());
            while let Some(chunk) = arriving.blocking_recv() {
                writer.write_all(&chunk).map_err(at(&path))?;
            }
            if !whole.load(Ordering::Acquire) {
                // Abandoned: not worth syncing; dropping `temp` deletes it now.
                return Err(at(&path)(io::Error::other("download abandoned")));
            }
            let info = writer.finish().map_err(at(&path))?;
            Ok(Received { temp, info })
        });
        Ok(Incoming {
            chunks: Some(chunks),
            complete,
            writer: Some(writer),
        })
    }

    /// A new temporary file beside `name`, deleted when dropped.
    fn temp_file(&self, name: &FileName) -> Result<NamedTempFile, StorageError> {
        // Keep the temporary name within the usual 255-byte limit.
        let mut cut = name.as_str().len().min(200);
        while !name.as_str().is_char_boundary(cut) {
            cut -= 1;
        }
        let stem = &name.as_str()[..cut];
        let mut builder = tempfile::Builder::new();
        // Like any file a program creates (the umask applies), not the
        // private 0600 of a temporary file: it becomes the stored file.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
        builder
            .prefix(&format!(".{stem}."))
            .suffix(PARTIAL_SUFFIX)
            .tempfile_in(&self.dir)
            .map_err(at(&self.dir))
    }

    /// Moves a verified download into place as `name`.
    pub fn store(&self, name: &FileName, received: Received) -> Result<(), StorageError> {
        let target = self.path(name);
        let file = received.temp.persist(&target).map_err(|e| StorageError::Io {
            path: target,
            source: e.error,
        })?;
        self.remember_stored(name, &file, received.info)
    }
}

/// A download on its way into a folder. Dropping it before
/// [`Incoming::finish`] deletes what arrived.
#[derive(Debug)]
pub struct Incoming {
    /// Chunks for the writer thread; `None` once finished.
    chunks: Option<mpsc::Sender<Bytes>>,
    /// Set by `finish`: the body is whole, so the writer syncs and keeps it.
    /// Dropped without it, the writer deletes what arrived without syncing.
    complete: Arc<AtomicBool>,
    /// The thread that hashes and writes the chunks; taken once awaited.
    writer: Option<JoinHandle<Result<Received, StorageError>>>,
}

impl Incoming {
    /// Waits for the writer thread (once).
    async fn writer_result(&mut self) -> Result<Received, StorageError> {
        match self.writer.take() {
            Some(writer) => writer.await.expect("writing task panicked"),
            None => Err(StorageError::Io {
                path: PathBuf::new(),
                source: io::Error::other("the disk writer already stopped"),
            }),
        }
    }
}

impl Incoming {
    /// Waits until every chunk is on disk and synced; returns the temporary
    /// file with the size and SHA-1 of what arrived.
    pub async fn finish(mut self) -> Result<Received, StorageError> {
        self.complete.store(true, Ordering::Release);
        self.chunks = None;
        self.writer_result().await
    }
}

impl BodySink for Incoming {
    async fn accept(&mut self, chunk: Bytes) -> io::Result<()> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The writer stopped early: it failed, and its error says why.
        self.chunks = None;
        match self.writer_result().await {
            Err(StorageError::Io { source, .. }) => Err(source),
            _ => Err(io::Error::other("the disk writer stopped")),
        }
    }
}

/// A whole download in a temporary file, not yet in place.
#[derive(Debug)]
pub struct Received {
    /// The temporary file; deleted if dropped.
    temp: NamedTempFile,
    /// Size and SHA-1 of what arrived.
    info: FileInfo,
}

impl Received {
    /// Size and SHA-1 of what arrived.
    pub fn info(&self) -> FileInfo {
        self.info
    }
}

/// Writes to a file and hashes what it writes, in one pass.
struct HashingWriter<'a> {
    out: BufWriter<&'a fs::File>,
    hasher: Sha1,
    len: u64,
}

impl<'a> HashingWriter<'a> {
    fn new(file: &'a fs::File) -> Self {
        HashingWriter {
            out: BufWriter::with_capacity(CHUNK_LEN, file),
            hasher: Sha1::new(),
            len: 0,
        }
    }

    /// Flushes and syncs the file, so a rename never exposes unsynced data.
    fn finish(mut self) -> io::Result<FileInfo> {
        self.out.flush()?;
        self.out.get_ref().sync_data()?;
        Ok(FileInfo {
            size: self.len,
            sha1: Digest(self.hasher.finalize().into()),
        })
    }
}

impl Write for HashingWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let written = self.out.write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Size and SHA-1 of what `file` holds from its current position on.
fn hash(mut file: fs::File, path: &Path) -> Result<FileInfo, StorageError> {
    let mut hasher = Sha1::new();
    let mut buffer = vec![0u8; CHUNK_LEN];
    let mut size = 0u64;
    loop {
        let read = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(at(path)(error)),
        };
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    Ok(FileInfo {
        size,
        sha1: Digest(hasher.finalize().into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> FileName {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn written_files_are_listed_hashed_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path().join("10000")).unwrap();
        let info = folder.write(&name("b.txt"), "hello").await.unwrap();
        folder.write(&name("a.txt"), "world").await.unwrap();
        assert_eq!(
            info,
            FileInfo {
                size: 5,
                sha1: Digest::of(b"hello")
            }
        );
        assert_eq!(folder.list().unwrap(), vec![name("a.txt"), name("b.txt")]);
        assert_eq!(folder.read(&name("b.txt")).await.unwrap(), b"hello");
        assert_eq!(folder.info(&name("b.txt")).await.unwrap(), info);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn stored_files_are_readable_by_others_like_any_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        folder.write(&name("a"), "x").await.unwrap();
        let mode = fs::metadata(folder.path(&name("a"))).unwrap().permissions().mode();
        assert_ne!(mode & 0o044, 0, "mode {mode:o} hides the file from others");
    }

    #[tokio::test]
    async fn a_changed_file_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        folder.write(&name("a"), "one").await.unwrap();
        fs::write(folder.path(&name("a")), "three").unwrap();
        assert_eq!(folder.info(&name("a")).await.unwrap().sha1, Digest::of(b"three"));
    }

    #[tokio::test]
    async fn create_empty_removes_files_only_and_never_follows_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let client = dir.path().join("5");
        fs::create_dir_all(client.join("sub")).unwrap();
        fs::write(client.join("sub").join("keep"), "x").unwrap();
        fs::write(client.join("old.txt"), "x").unwrap();
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir(&elsewhere).unwrap();
        fs::write(elsewhere.join("precious"), "x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, client.join("link")).unwrap();
        Folder::create_empty(&client).unwrap();
        assert!(client.join("sub").join("keep").exists(), "a sub-folder was emptied");
        assert!(!client.join("old.txt").exists() && !client.join("link").exists());
        assert!(elsewhere.join("precious").exists(), "a link was followed");

        let linked = dir.path().join("6");
        std::os::unix::fs::symlink(&elsewhere, &linked).unwrap();
        assert!(Folder::create_empty(&linked)
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        assert!(elsewhere.join("precious").exists(), "a linked folder was emptied");
    }

    #[tokio::test]
    async fn a_file_replaced_while_opened_pairs_its_own_size_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        folder.write(&name("f"), "first version").await.unwrap();
        let (mut opened, info) = folder.open_file(&name("f")).await.unwrap();
        folder.write(&name("f"), "v2").await.unwrap();
        let mut content = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut opened, &mut content)
            .await
            .unwrap();
        assert_eq!(
            info,
            FileInfo {
                size: 13,
                sha1: Digest::of(&content)
            }
        );
        assert_eq!(folder.info(&name("f")).await.unwrap().size, 2);
    }

    #[tokio::test]
    async fn create_empty_empties_and_open_keeps_all_but_partials() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("old.txt"), "x").unwrap();
        fs::write(dir.path().join(".old.txt.abc123.phile-part"), "half").unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        assert_eq!(folder.list().unwrap(), vec![name("old.txt")]);
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "the partial was not removed"
        );
        let folder = Folder::create_empty(dir.path()).unwrap();
        assert!(folder.list().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_download_is_invisible_until_stored_and_gone_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        let mut incoming = folder.incoming(&name("big.bin")).unwrap();
        incoming.accept(Bytes::from_static(b"hel")).await.unwrap();
        incoming.accept(Bytes::from_static(b"lo")).await.unwrap();
        assert!(folder.list().unwrap().is_empty(), "a partial file is listed");
        let received = incoming.finish().await.unwrap();
        assert_eq!(
            received.info(),
            FileInfo {
                size: 5,
                sha1: Digest::of(b"hello")
            }
        );
        folder.store(&name("big.bin"), received).unwrap();
        assert_eq!(folder.list().unwrap(), vec![name("big.bin")]);

        let mut dropped = folder.incoming(&name("other.bin")).unwrap();
        dropped.accept(Bytes::from_static(b"partial")).await.unwrap();
        drop(dropped.finish().await.unwrap());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a dropped download left a file"
        );
    }

    #[tokio::test]
    async fn only_regular_files_are_held() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(folder.list().unwrap().is_empty());
        assert!(matches!(
            folder.info(&name("sub")).await,
            Err(StorageError::NotFound { .. })
        ));
        assert!(matches!(
            folder.info(&name("nope")).await,
            Err(StorageError::NotFound { .. })
        ));
    }
}

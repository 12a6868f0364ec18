//! A client's folder: the files it holds, and downloads on their way in.
//!
//! Nothing appears in a folder half-written. Every file, whether written
//! locally or downloaded, is first written to a temporary file in the same
//! folder (named `.NAME.XXXXXX.phile-part`), synced, and only then renamed
//! into place, which the file system does atomically; the folder itself is
//! synced after the rename, so a stored file survives a power cut. A
//! download whose size or SHA-1 turn out wrong is never renamed: dropping
//! it deletes it.
//!
//! A temporary file is locked by the process writing it for as long as it
//! lives, so a process opening the folder removes only the leftovers of
//! processes that are gone, never a download another process is making.
//!
//! The folder also remembers each file's SHA-1 (keyed by size, modification
//! time and inode), so a file is hashed once, not on every upload.
//!
//! Every call that may block (file I/O, hashing) runs through the node's
//! [`Host`]: on a blocking thread for real, inline under simulation.
//!
//! Hash trees for swarm downloads live in `trees`; a swarm download's
//! partial file, which survives restarts, in `part`.

mod part;
mod trees;

pub use part::{PartData, PartFile, PartLock, Resumed, WholeHash};

use std::collections::HashMap;
use std::fs;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha1::{Digest as _, Sha1};
use tempfile::NamedTempFile;

use crate::connection::{BodySink, BodySource, CHUNK_LEN};
use crate::host::{Host, OsHost};
use crate::protocol::{Digest, FileInfo, FileName, PARTIAL_SUFFIX};

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
    /// Another download of the file into the same folder, by this
    /// process or another, holds the lock on its partial file.
    #[error("{}: another download of this file into the same folder is under way (in this process or another)", .path.display())]
    Busy {
        /// The partial file.
        path: PathBuf,
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
pub struct Folder {
    /// The folder's path (`ROOT/<id>` in a scenario).
    dir: PathBuf,
    /// The SHA-1 of each file hashed so far, with the stamp it had then.
    /// Shared with blocking jobs.
    known: Arc<Digests>,
    /// The hash tree of each file that needed one ([`trees`]), keyed and
    /// guarded like `known`.
    trees: Arc<Mutex<HashMap<FileName, trees::KnownTree>>>,
    /// One pass over a file at a time: requests that need the same file
    /// hashed wait for the pass under way and take what it found.
    hashing: trees::HashTurns,
    /// Where blocking work runs.
    host: Arc<dyn Host>,
    /// Whether putting a file in place may replace one already there.
    /// Scenarios replace (a download over a held file is documented to
    /// replace it); `phile get` without `--overwrite` does not, so a file
    /// that appears while its download runs is never clobbered.
    replace: bool,
}

impl std::fmt::Debug for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Folder").field("dir", &self.dir).finish()
    }
}

/// The size and SHA-1 of each file of a folder hashed so far, with the
/// stamp it had then. A std mutex, never held across an `.await`.
#[derive(Debug, Default)]
struct Digests(Mutex<HashMap<FileName, Known>>);

impl Digests {
    /// What `name` was found to be when it was last hashed.
    fn get(&self, name: &FileName) -> Option<Known> {
        self.lock().get(name).copied()
    }

    /// Remembers that `name`, stamped `stamp`, hashed to `info`.
    fn remember(&self, name: FileName, stamp: Stamp, info: FileInfo) {
        self.lock().insert(name, Known { stamp, info });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FileName, Known>> {
        self.0.lock().expect("digest cache poisoned")
    }
}

/// A file's content identity as of one look at its metadata.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// The file's stamp when `info` was computed.
    stamp: Stamp,
    /// Size and SHA-1.
    info: FileInfo,
}

/// What tells us a file changed since we hashed it: a rewrite through a
/// temporary file gets a new inode even when size and time stay the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

impl Stamp {
    fn of(metadata: &fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(metadata);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode,
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

    /// Opens the folder as it is (creating it if missing), removing only
    /// what downloads of processes that are gone left behind: a partial
    /// file whose lock nobody holds. Sub-folders are never touched.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Folder, StorageError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        for entry in fs::read_dir(&dir).map_err(at(&dir))? {
            let entry = entry.map_err(at(&dir))?;
            let is_file = entry.file_type().map_err(at(&entry.path()))?.is_file();
            if is_file && entry.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX) {
                remove_if_abandoned(&entry.path())?;
            }
        }
        Ok(Folder::at(dir))
    }

    fn at(dir: PathBuf) -> Folder {
        Folder {
            dir,
            known: Arc::default(),
            trees: Arc::default(),
            hashing: trees::HashTurns::default(),
            host: Arc::new(OsHost),
            replace: true,
        }
    }

    /// This folder, never replacing a file already in place: storing a
    /// download (or writing a file) under a name that is taken fails with an
    /// [`io::ErrorKind::AlreadyExists`] error and deletes what arrived. The
    /// rename itself decides (`renameat2` with `RENAME_NOREPLACE` on Linux, a
    /// hard link elsewhere), so no file can slip in between a check and the
    /// rename.
    pub fn keeping_existing(self) -> Folder {
        Folder { replace: false, ..self }
    }

    /// This folder, running its blocking work on `host`.
    pub(crate) fn on(self, host: Arc<dyn Host>) -> Folder {
        Folder { host, ..self }
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

    fn not_found(&self, name: &FileName) -> StorageError {
        StorageError::NotFound {
            name: name.clone(),
            dir: self.dir.clone(),
        }
    }

    /// Whether the folder holds `name`.
    pub fn contains(&self, name: &FileName) -> bool {
        regular_file(&self.path(name)).is_ok_and(|meta| meta.is_some())
    }

    /// The size and SHA-1 of a held file, hashing it only if it changed since
    /// it was last hashed.
    pub async fn info(&self, name: &FileName) -> Result<FileInfo, StorageError> {
        Ok(self.open_file(name).await?.info)
    }

    /// The size and SHA-1 of the bytes a held file has on disk now, hashed
    /// afresh: what the folder remembers may be out of date if the file
    /// changed behind its back without a new size, time or inode. What it
    /// finds replaces what the folder remembered, so a copy found bad is
    /// never again described by its old hash.
    pub async fn hash(&self, name: &FileName) -> Result<FileInfo, StorageError> {
        let (file, path) = (self.open_held(name)?, self.path(name));
        let (known, name) = (self.known.clone(), name.clone());
        self.host
            .long(move || {
                let stamp = Stamp::of(&file.metadata().map_err(at(&path))?);
                let info = hash(&file, &path)?;
                known.remember(name, stamp, info);
                Ok(info)
            })
            .await
    }

    /// The size and SHA-1 of the bytes a held file has on disk now, hashed
    /// afresh, blocking the caller: for a scenario script's thread. Unlike
    /// [`Folder::hash`], what the folder remembers is left as it was, so
    /// a script that looks (`c.sha1(name)`) changes nothing the client
    /// does: a liar stays a liar.
    pub fn hash_now(&self, name: &FileName) -> Result<FileInfo, StorageError> {
        hash(&self.open_held(name)?, &self.path(name))
    }

    /// Reads a held file whole.
    pub async fn read(&self, name: &FileName) -> Result<Vec<u8>, StorageError> {
        let (file, path) = (self.open_held(name)?, self.path(name));
        self.host.blocking(move || read_whole(file, &path)).await
    }

    /// [`Folder::read`], blocking the caller.
    pub fn read_now(&self, name: &FileName) -> Result<Vec<u8>, StorageError> {
        read_whole(self.open_held(name)?, &self.path(name))
    }

    /// Opens a held file for reading: a regular file, never a link.
    fn open_held(&self, name: &FileName) -> Result<fs::File, StorageError> {
        let path = self.path(name);
        let mut options = fs::OpenOptions::new();
        options.read(true);
        // Never follow a link swapped in for the file.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
        let file = match options.open(&path) {
            Ok(file) => file,
            Err(error) if is_missing(&error) => return Err(self.not_found(name)),
            Err(error) => return Err(at(&path)(error)),
        };
        match file.metadata() {
            Ok(meta) if meta.is_file() => Ok(file),
            Ok(_) => Err(self.not_found(name)),
            Err(error) => Err(at(&path)(error)),
        }
    }

    /// Opens a held file, with its size and SHA-1.
    ///
    /// Size and SHA-1 are those of the very file opened (its metadata is read
    /// from the open handle, and a hash reads the same handle), so a file
    /// replaced meanwhile can never pair one version's header with another
    /// version's bytes.
    pub async fn open_file(&self, name: &FileName) -> Result<HeldFile, StorageError> {
        let file = Arc::new(self.open_held(name)?);
        let known = self.known.clone();
        let look = move |name: &FileName, stamp: Stamp| {
            let remembered = known.get(name);
            remembered.filter(|known| known.stamp == stamp).map(|known| known.info)
        };
        // Most opens find the digest remembered: a short job. Only a hash
        // takes a long one.
        let info = match self.remembered(&file, name, look).await? {
            trees::Remembered::Found(info) => info,
            trees::Remembered::NotYet(stamp, pass) => {
                let (reader, path, name, known) = (file.clone(), self.path(name), name.clone(), self.known.clone());
                let info = self
                    .host
                    .long(move || {
                        let info = hash(&reader, &path)?;
                        known.remember(name, stamp, info);
                        Ok::<_, StorageError>(info)
                    })
                    .await?;
                drop(pass);
                info
            }
        };
        Ok(HeldFile {
            file,
            info,
            host: self.host.clone(),
        })
    }

    /// Creates or replaces file `name` with what `fill` writes, atomically.
    pub async fn write_with<F>(&self, name: &FileName, fill: F) -> Result<FileInfo, StorageError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()> + Send + 'static,
    {
        let writer = Writer::new(self.temp_file(name)?);
        let (target, dir, replace) = (self.path(name), self.dir.clone(), self.replace);
        let (file, info) = self
            .host
            .blocking(move || writer.write_whole(fill, &target, &dir, replace))
            .await?;
        self.remember_stored(name, &file, info)?;
        Ok(info)
    }

    /// [`Folder::write_with`], blocking the caller.
    pub fn write_now<F>(&self, name: &FileName, fill: F) -> Result<FileInfo, StorageError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        let writer = Writer::new(self.temp_file(name)?);
        let (file, info) = writer.write_whole(fill, &self.path(name), &self.dir, self.replace)?;
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
        Ok(Incoming {
            host: self.host.clone(),
            path: temp.path().to_owned(),
            temp: Some(temp),
            hasher: Some(Sha1::new()),
            len: 0,
            in_flight: None,
            spare: None,
        })
    }

    /// A new temporary file beside `name`, locked by this process and
    /// deleted when dropped.
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
        let prefix = format!(".{stem}.");
        builder.prefix(&prefix).suffix(PARTIAL_SUFFIX);
        // Locked: a live download, not a leftover (`remove_if_abandoned`).
        locked_temp(&builder, &self.dir)
    }

    /// Moves a verified download into place as `name`, and drops what an
    /// interrupted swarm download of `name` left.
    pub async fn store(&self, name: &FileName, received: Received) -> Result<(), StorageError> {
        let info = received.info;
        let (target, dir, replace) = (self.path(name), self.dir.clone(), self.replace);
        let file = self
            .host
            .blocking(move || received.persist(&target, &dir, replace))
            .await?;
        self.remember_stored(name, &file, info)?;
        // The file is stored: a leftover that stays is only wasted disk.
        if let Err(error) = self.drop_swarm_leftovers(name).await {
            tracing::warn!(%error, "cannot remove what a swarm download of {name} left");
        }
        Ok(())
    }

    /// Records the identity of a file just put in place, so it is never
    /// hashed again while unchanged. `file` is the handle of what was just
    /// put in place (read before the rename, so that a file replaced right
    /// after cannot be mistaken for it).
    fn remember_stored(&self, name: &FileName, file: &fs::File, info: FileInfo) -> Result<(), StorageError> {
        let stamp = Stamp::of(&file.metadata().map_err(at(&self.path(name)))?);
        self.known.remember(name.clone(), stamp, info);
        Ok(())
    }
}

/// The metadata of `path` if it is a regular file (not a link, not a
/// folder); `None` if there is nothing there.
fn regular_file(path: &Path) -> io::Result<Option<fs::Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_file() => Ok(Some(meta)),
        Ok(_) => Ok(None),
        Err(error) if is_missing(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

fn is_missing(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::NotFound
}

/// Whether the open `file` is still the one at `path` (not removed, nor
/// replaced, since it was opened).
pub(super) fn still_at(file: &fs::File, path: &Path) -> Result<bool, StorageError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let open = file.metadata().map_err(at(path))?;
        let named = match fs::symlink_metadata(path) {
            Ok(named) => named,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(at(path)(error)),
        };
        Ok(open.dev() == named.dev() && open.ino() == named.ino())
    }
    // Elsewhere not checked: a file's identity is not at hand there (and
    // Windows, where Rust opens files that others may delete, leaves the
    // race this guards against open).
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(true)
    }
}

/// How many times a file this process makes and locks is made again when
/// another process removed it before the lock (see `remove_if_abandoned`
/// and `part::open_locked`).
const LOCK_ATTEMPTS: usize = 3;

/// A temporary file made by `builder` in `dir` and locked, as a live
/// download's: made again if another process, finding it not locked yet,
/// removed it in between (the work written to it would be lost).
fn locked_temp(builder: &tempfile::Builder, dir: &Path) -> Result<tempfile::NamedTempFile, StorageError> {
    for _ in 0..LOCK_ATTEMPTS {
        let temp = builder.tempfile_in(dir).map_err(at(dir))?;
        temp.as_file().lock().map_err(at(temp.path()))?;
        if still_at(temp.as_file(), temp.path())? {
            return Ok(temp);
        }
    }
    let removed = io::Error::new(io::ErrorKind::NotFound, "removed by another process as it was made");
    Err(at(dir)(removed))
}

/// Deletes the partial file at `path` unless a live process holds its lock.
fn remove_if_abandoned(path: &Path) -> Result<(), StorageError> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if is_missing(&error) => return Ok(()), // its writer just finished
        Err(error) => return Err(at(path)(error)),
    };
    match file.try_lock() {
        Ok(()) => match fs::remove_file(path) {
            Err(error) if !is_missing(&error) => Err(at(path)(error)),
            _ => Ok(()),
        },
        Err(fs::TryLockError::WouldBlock) => {
            tracing::debug!(path = %path.display(), "a download of another process is under way; leaving it");
            Ok(())
        }
        Err(fs::TryLockError::Error(error)) => Err(at(path)(error)),
    }
}

/// A held file opened for sending, with the size and SHA-1 of what it holds.
pub struct HeldFile {
    /// The open file, shared with the blocking jobs that read it.
    file: Arc<fs::File>,
    /// Its size and SHA-1.
    info: FileInfo,
    /// Where blocking reads run.
    host: Arc<dyn Host>,
}

impl HeldFile {
    /// The file's size and SHA-1.
    pub fn info(&self) -> FileInfo {
        self.info
    }
}

impl BodySource for HeldFile {
    fn file(&self) -> Option<&fs::File> {
        Some(&self.file)
    }

    async fn read_at(&mut self, offset: u64, mut buffer: Vec<u8>) -> io::Result<(Vec<u8>, usize)> {
        let file = self.file.clone();
        self.host
            .blocking(move || {
                let read = read_at(&file, &mut buffer, offset)?;
                Ok((buffer, read))
            })
            .await
    }
}

/// Reads into `buffer` from `offset` without moving the file's position.
fn read_at(file: &fs::File, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    return std::os::unix::fs::FileExt::read_at(file, buffer, offset);
    #[cfg(not(unix))]
    {
        use std::io::Seek;
        let mut file = file;
        file.seek(io::SeekFrom::Start(offset))?;
        file.read(buffer)
    }
}

/// A blocking job under way, handing back what it used when done.
type Job<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A download on its way into a folder. Dropping it before
/// [`Incoming::finish`] deletes what arrived.
///
/// Each chunk that arrives is hashed and written at once, by two blocking
/// jobs side by side: on two cores, one hashes while the other writes,
/// while the connection reads the next chunk into a second buffer. The two
/// buffers take turns, so nothing is allocated per chunk, memory stays flat
/// at two chunks whatever the file's size, and every byte is hashed once,
/// on its way to the file (no second pass to verify).
pub struct Incoming {
    /// Where the hashing and the disk writes run.
    host: Arc<dyn Host>,
    /// The temporary file's path, for error messages.
    path: PathBuf,
    /// The temporary file, when no write is in flight (or after one failed).
    temp: Option<NamedTempFile>,
    /// The hash of what arrived so far, when no hash job is in flight.
    hasher: Option<Sha1>,
    /// Bytes accepted so far.
    len: u64,
    /// The chunk being hashed and written, if any.
    in_flight: Option<InFlight>,
    /// A buffer done with, for the next chunk.
    spare: Option<Vec<u8>>,
}

/// One chunk on its way: shared by its two jobs until both are done.
struct InFlight {
    /// The bytes; back to a plain buffer once both jobs let go.
    chunk: Arc<Vec<u8>>,
    /// Hashing it; hands the hasher back.
    hashed: Job<Sha1>,
    /// Writing it; hands the temporary file back.
    written: Job<Result<NamedTempFile, StorageError>>,
}

impl Incoming {
    /// Waits for the chunk in flight, if any, to be hashed and written;
    /// its buffer becomes the spare.
    async fn settle(&mut self) -> Result<(), StorageError> {
        let Some(InFlight { chunk, hashed, written }) = self.in_flight.take() else {
            return Ok(());
        };
        // Both jobs run already; wait for both even if one fails, so that
        // neither reads the buffer once it is handed out again.
        let (hasher, temp) = futures::join!(hashed, written);
        self.hasher = Some(hasher);
        // The jobs dropped their references as they ended.
        self.spare = Arc::into_inner(chunk);
        self.temp = Some(temp?);
        Ok(())
    }

    /// The temporary file and the hash, once the chunk in flight is done.
    async fn take_parts(&mut self) -> Result<(NamedTempFile, Sha1), StorageError> {
        self.settle().await?;
        match (self.temp.take(), self.hasher.take()) {
            (Some(temp), Some(hasher)) => Ok((temp, hasher)),
            // Only after an earlier failure, which the caller was told of.
            _ => Err(at(&self.path)(io::Error::other(
                "an earlier write of this download failed",
            ))),
        }
    }

    /// Waits until every chunk is on disk and synced; returns the temporary
    /// file with the size and SHA-1 of what arrived.
    pub async fn finish(mut self) -> Result<Received, StorageError> {
        let (temp, hasher) = self.take_parts().await?;
        let writer = Writer {
            temp,
            hasher,
            len: self.len,
        };
        self.host.blocking(move || writer.finish()).await
    }
}

impl BodySink for Incoming {
    fn buffer(&mut self) -> Vec<u8> {
        self.spare.take().unwrap_or_default()
    }

    async fn accept(&mut self, chunk: Vec<u8>) -> io::Result<()> {
        let (temp, mut hasher) = self.take_parts().await.map_err(|error| match error {
            StorageError::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })?;
        let offset = self.len;
        self.len += chunk.len() as u64;
        let chunk = Arc::new(chunk);
        let bytes = chunk.clone();
        let hashed = self.host.blocking(move || {
            hasher.update(&bytes[..]);
            hasher
        });
        let bytes = chunk.clone();
        let written = self.host.blocking(move || {
            // Chunks are large: written straight to the file, no buffer
            // between.
            temp.as_file().write_all(&bytes).map_err(at(temp.path()))?;
            start_write_back(temp.as_file(), offset, bytes.len() as u64);
            Ok(temp)
        });
        self.in_flight = Some(InFlight {
            chunk,
            hashed: Box::pin(hashed),
            written: Box::pin(written),
        });
        Ok(())
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

    /// Renames the file to `target` in `dir` and syncs `dir`, so the rename
    /// survives a power cut. Returns the file, still open. Unless `replace`,
    /// a file already at `target` stays and the rename fails.
    fn persist(self, target: &Path, dir: &Path, replace: bool) -> Result<fs::File, StorageError> {
        let persisted = if replace {
            self.temp.persist(target)
        } else {
            self.temp.persist_noclobber(target)
        };
        let file = persisted.map_err(|e| StorageError::Io {
            path: target.to_owned(),
            source: e.error,
        })?;
        sync_after_rename(dir);
        Ok(file)
    }
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to
/// the disk now, without waiting for them.
///
/// Left alone, the kernel keeps a download's pages dirty until its
/// write-back timer or the sync at the end, so on a disk the whole file is
/// written after the last byte arrived: measured here, a 1 GiB download
/// synced at 380-490 MiB/s that way, at 520-680 MiB/s when each chunk's
/// write-back starts as it is written (the disk works while the network
/// does). On tmpfs there is nothing to write back and the call returns at
/// once (no difference measured).
///
/// Only a hint: an error is ignored, because the sync at the end still
/// writes every page and reports any failure of the disk.
fn start_write_back(file: &fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: the descriptor stays open for the call (borrowed from
        // `file`); sync_file_range reads no memory of ours.
        unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Syncs a folder's entries to disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Syncs `dir` after a checked file was renamed into it, so the rename
/// survives a power cut. A failure is a warning, not an error: the file is
/// in place, whole and checked, and an error would tell the caller that
/// it is not (a retry would then find the name taken).
fn sync_after_rename(dir: &Path) {
    if let Err(error) = sync_dir(dir) {
        tracing::warn!(
            "stored a file in {}, but syncing the folder failed (a power cut now may undo it): {error}",
            dir.display()
        );
    }
}

/// Writes a temporary file and hashes what it writes, in one pass.
struct Writer {
    temp: NamedTempFile,
    hasher: Sha1,
    len: u64,
}

impl Writer {
    fn new(temp: NamedTempFile) -> Writer {
        Writer {
            temp,
            hasher: Sha1::new(),
            len: 0,
        }
    }

    /// Writes what `fill` writes, then renames the whole into place as
    /// `target` in `dir`; returns the file, still open, and what it holds.
    fn write_whole<F>(
        mut self,
        fill: F,
        target: &Path,
        dir: &Path,
        replace: bool,
    ) -> Result<(fs::File, FileInfo), StorageError>
    where
        F: FnOnce(&mut dyn Write) -> io::Result<()>,
    {
        fill(&mut self).map_err(at(self.temp.path()))?;
        let received = self.finish()?;
        let info = received.info;
        Ok((received.persist(target, dir, replace)?, info))
    }

    /// Syncs the file, so a rename never exposes unsynced data.
    fn finish(self) -> Result<Received, StorageError> {
        self.temp.as_file().sync_data().map_err(at(self.temp.path()))?;
        let info = FileInfo {
            size: self.len,
            sha1: Digest(self.hasher.finalize().into()),
        };
        Ok(Received { temp: self.temp, info })
    }
}

impl Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        // Chunks are large: written straight to the file, no buffer between.
        let written = self.temp.as_file().write(bytes)?;
        self.hasher.update(&bytes[..written]);
        self.len += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Everything `file` holds.
fn read_whole(mut file: fs::File, path: &Path) -> Result<Vec<u8>, StorageError> {
    let mut content = Vec::new();
    file.read_to_end(&mut content).map_err(at(path))?;
    Ok(content)
}

/// Size and SHA-1 of what `file` holds, read from its start.
fn hash(file: &fs::File, path: &Path) -> Result<FileInfo, StorageError> {
    let mut hasher = Sha1::new();
    let size = read_through(file, path, 0..u64::MAX, CHUNK_LEN, |chunk| hasher.update(chunk))?;
    Ok(FileInfo {
        size,
        sha1: Digest(hasher.finalize().into()),
    })
}

/// Reads the bytes `range` of `file` (at `path`, for errors), at most
/// `chunk` bytes at a time, handing each read to `each`, until the range
/// or the file ends: the byte after the last one read.
fn read_through(
    file: &fs::File,
    path: &Path,
    range: std::ops::Range<u64>,
    chunk: usize,
    mut each: impl FnMut(&[u8]),
) -> Result<u64, StorageError> {
    let room = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
    let mut buffer = vec![0u8; chunk.min(room)];
    let mut at_byte = range.start;
    while at_byte < range.end {
        let want = usize::try_from(range.end - at_byte)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        match read_at(file, &mut buffer[..want], at_byte) {
            Ok(0) => break,
            Ok(read) => {
                each(&buffer[..read]);
                at_byte += read as u64;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(at(path)(error)),
        }
    }
    Ok(at_byte)
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
        let mut opened = folder.open_file(&name("f")).await.unwrap();
        folder.write(&name("f"), "v2").await.unwrap();
        let (buffer, read) = opened.read_at(0, vec![0; 1024]).await.unwrap();
        let content = &buffer[..read];
        assert_eq!(
            opened.info(),
            FileInfo {
                size: 13,
                sha1: Digest::of(content)
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
        incoming.accept(b"hel".to_vec()).await.unwrap();
        incoming.accept(b"lo".to_vec()).await.unwrap();
        assert!(folder.list().unwrap().is_empty(), "a partial file is listed");
        let received = incoming.finish().await.unwrap();
        assert_eq!(
            received.info(),
            FileInfo {
                size: 5,
                sha1: Digest::of(b"hello")
            }
        );
        folder.store(&name("big.bin"), received).await.unwrap();
        assert_eq!(folder.list().unwrap(), vec![name("big.bin")]);

        let mut dropped = folder.incoming(&name("other.bin")).unwrap();
        dropped.accept(b"partial".to_vec()).await.unwrap();
        drop(dropped.finish().await.unwrap());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "a dropped download left a file"
        );
    }

    #[tokio::test]
    async fn a_download_takes_turns_with_two_buffers_and_hashes_every_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        let mut incoming = folder.incoming(&name("big.bin")).unwrap();
        let (mut whole, mut buffers) = (Vec::new(), std::collections::HashSet::new());
        for n in 0..10u8 {
            let mut chunk = incoming.buffer();
            chunk.clear();
            chunk.reserve(64 * 1024);
            chunk.resize(64 * 1024 - usize::from(n), n);
            buffers.insert(chunk.as_ptr() as usize);
            whole.extend_from_slice(&chunk);
            incoming.accept(chunk).await.unwrap();
        }
        assert_eq!(buffers.len(), 2, "a new buffer for some chunk");
        let received = incoming.finish().await.unwrap();
        assert_eq!(
            received.info(),
            FileInfo {
                size: whole.len() as u64,
                sha1: Digest::of(&whole)
            }
        );
        folder.store(&name("big.bin"), received).await.unwrap();
        assert!(folder.read(&name("big.bin")).await.unwrap() == whole);
    }

    /// Everything in `dir`, as names (hidden files and folders included).
    fn raw_entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn opening_a_folder_keeps_the_downloads_of_live_processes() {
        let dir = tempfile::tempdir().unwrap();
        let first = Folder::open(dir.path()).unwrap();
        let mut live = first.incoming(&name("movie.bin")).unwrap();
        live.accept(b"half a movie".to_vec()).await.unwrap();
        // A crashed process's leftover: nobody holds its lock.
        fs::write(dir.path().join(".old.bin.x1y2z3.phile-part"), "stale").unwrap();

        // A second process (here: a second folder handle) starts up.
        Folder::open(dir.path()).unwrap();
        let left = raw_entries(dir.path());
        assert_eq!(left.len(), 1, "expected only the live download, found {left:?}");
        assert!(left[0].starts_with(".movie.bin."), "{left:?}");

        let received = live.finish().await.unwrap();
        first.store(&name("movie.bin"), received).await.unwrap();
        assert_eq!(first.read(&name("movie.bin")).await.unwrap(), b"half a movie");
    }

    #[tokio::test]
    async fn a_folder_keeping_existing_files_never_replaces_one() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap().keeping_existing();
        let mut incoming = folder.incoming(&name("x")).unwrap();
        incoming.accept(b"downloaded".to_vec()).await.unwrap();
        let received = incoming.finish().await.unwrap();
        // Someone puts a file there while the download runs.
        fs::write(dir.path().join("x"), "the user's own").unwrap();
        let refused = folder.store(&name("x"), received).await.unwrap_err();
        assert!(
            matches!(&refused, StorageError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{refused:?}"
        );
        assert_eq!(fs::read_to_string(dir.path().join("x")).unwrap(), "the user's own");
        assert_eq!(raw_entries(dir.path()), ["x"], "the refused download was left behind");
        assert!(folder.write(&name("x"), "again").await.is_err());
        // A free name is stored as usual.
        folder.write(&name("y"), "new").await.unwrap();
        assert_eq!(folder.read(&name("y")).await.unwrap(), b"new");
    }

    #[tokio::test]
    async fn a_sub_folder_with_a_partial_name_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("photos.phile-part")).unwrap();
        fs::write(dir.path().join("photos.phile-part").join("a.jpg"), "x").unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        assert!(folder.list().unwrap().is_empty());
        assert!(dir.path().join("photos.phile-part").join("a.jpg").exists());
    }

    #[tokio::test]
    async fn a_fresh_hash_sees_a_change_the_cache_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        folder.write(&name("a"), "hello").await.unwrap();
        // Same size, same modification time, same inode: invisible to the cache.
        let path = folder.path(&name("a"));
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        let mut file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all(b"HELLO").unwrap();
        file.set_modified(modified).unwrap();
        assert_eq!(folder.info(&name("a")).await.unwrap().sha1, Digest::of(b"hello"));
        assert_eq!(folder.hash(&name("a")).await.unwrap().sha1, Digest::of(b"HELLO"));
        // From then on, the folder describes the file as it found it.
        assert_eq!(folder.info(&name("a")).await.unwrap().sha1, Digest::of(b"HELLO"));
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

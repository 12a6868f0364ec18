//! A swarm download's partial file, which outlives the process that writes
//! it, so an interrupted download resumes where it stopped.
//!
//! The pieces of `NAME` are written at their place in `.NAME.TAG.phile-swarm`
//! as they arrive and verify (`TAG`: 8 hex digits of the name's SHA-1, so
//! long names cut short never collide). Which pieces are verified is kept
//! in `.NAME.TAG.phile-pieces`: the file's size, SHA-1 and hash tree root,
//! the piece size, the piece hashes and a bitfield. The record is written
//! only after the partial file is synced, and replaced atomically, so every
//! piece it lists is on disk: a restarted download trusts it without
//! hashing anything again, and fetches only the pieces it does not list
//! (those that arrived after the last record are fetched again). The whole
//! file is still verified once more before it is renamed into place.
//!
//! Neither file is ever listed, served or accepted as a name, and neither
//! is removed by [`Folder::open`] as an abandoned `.phile-part` is: they
//! are kept on purpose. The partial file is locked by the process writing
//! it, so two processes never write one download.

use std::fs;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sha1::{Digest as _, Sha1};

use super::{
    at, locked_temp, read_at, read_through, still_at, sync_after_rename, sync_dir, Folder, Stamp, StorageError,
    LOCK_ATTEMPTS,
};
use crate::host::Host;
use crate::pieces::{coarser_layer, hashes_from_bytes, Bitfield, Layer, Layout, PieceSize};
use crate::protocol::{Digest, FileInfo, FileName, PARTIAL_SUFFIX, PIECES_SUFFIX, SWARM_PART_SUFFIX};

/// The first line of a record of verified pieces.
const RECORD_MAGIC: &[u8] = b"phile-pieces 1\n";

/// What an interrupted download of a file left, in the pieces of the new
/// attempt.
#[derive(Debug)]
pub struct Resumed {
    /// The piece hashes, checked against the root, when the record's piece
    /// size allows working them out (else they must be fetched again).
    pub layer: Option<Layer>,
    /// The pieces verified and on disk.
    pub verified: Bitfield,
    /// The partial file, locked by this process since before its record
    /// was read: for [`Folder::part`].
    pub lock: PartLock,
}

/// The partial file of an interrupted download, locked by this process.
///
/// A new attempt takes the lock before it trusts the record, and keeps it
/// until the piece hashes open the file ([`Folder::part`]), which may take
/// a while (a record in coarser pieces than the attempt's cannot give
/// them): meanwhile no other download of the name can write, remove or
/// store the pieces the record lists.
#[derive(Debug)]
pub struct PartLock(fs::File);

/// The header of a record, as JSON on its second line.
#[derive(Debug, Serialize, Deserialize)]
struct RecordHeader {
    /// The file's size and SHA-1.
    info: FileInfo,
    /// The root of its hash tree.
    root: Digest,
    /// The piece size of the record.
    piece_size: u64,
}

/// A swarm download's partial file, open and locked by this process.
pub struct PartFile {
    /// Reads and writes of its bytes.
    data: PartData,
    /// The partial file's path.
    path: PathBuf,
    /// The record's path.
    record: PathBuf,
    /// The folder's path.
    dir: PathBuf,
    /// The piece hashes every piece is checked against.
    layer: Arc<Layer>,
    /// The file's size and SHA-1, and its root.
    content: (FileInfo, Digest),
    /// Held while a piece is written. The kernel lets one write into a
    /// file at a time (the inode's lock), and a second writer spins on the
    /// CPU until the first is done: 14 % of a 1 GiB download's CPU on
    /// tmpfs. Waiting here instead, it sleeps and leaves the core to the
    /// hashing.
    writing: Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for PartFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartFile").field("path", &self.path).finish()
    }
}

/// How much of a partial file is read back per call while hashing it
/// whole: small enough to stay in the CPU's caches between the read and
/// the hash.
const HASH_CHUNK: usize = 256 << 10;

/// The SHA-1 of a partial file from its start, as far as it got.
#[derive(Clone, Debug, Default)]
pub struct WholeHash {
    /// The hash of the bytes so far.
    hasher: Sha1,
    /// How many bytes from the start it has taken in.
    hashed: u64,
}

impl WholeHash {
    /// How many bytes from the start it has taken in.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// The size and SHA-1 of the bytes taken in.
    pub fn finish(self) -> FileInfo {
        FileInfo {
            size: self.hashed,
            sha1: Digest(self.hasher.finalize().into()),
        }
    }
}

/// Reads of a partial file's pieces, shared with the peers served from it.
#[derive(Clone)]
pub struct PartData {
    /// The open file.
    file: Arc<fs::File>,
    /// Where blocking reads and writes run.
    host: Arc<dyn Host>,
}

impl PartData {
    /// The open file, for sending its bytes through the kernel.
    pub fn file(&self) -> &fs::File {
        &self.file
    }

    /// The bytes `range` of the file.
    pub async fn read(&self, range: Range<u64>) -> io::Result<Bytes> {
        let file = self.file.clone();
        self.host
            .blocking(move || {
                let mut bytes = BytesMut::zeroed((range.end - range.start) as usize);
                let mut filled = 0;
                while filled < bytes.len() {
                    match read_at(&file, &mut bytes[filled..], range.start + filled as u64)? {
                        0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                        read => filled += read,
                    }
                }
                Ok(bytes.freeze())
            })
            .await
    }
}

impl Folder {
    /// Opens a held file for reading pieces of it, with its size and
    /// SHA-1 (remembered, or hashed now) of the very file opened.
    pub async fn open_pieces(&self, name: &FileName) -> Result<(FileInfo, PartData), StorageError> {
        let held = self.open_file(name).await?;
        let data = PartData {
            file: held.file.clone(),
            host: self.host.clone(),
        };
        Ok((held.info, data))
    }

    /// Removes what an interrupted swarm download of `name` left (its
    /// partial file and record), unless a live download holds them: once
    /// the folder holds `name` whole, stored from elsewhere or found there
    /// already, they would only take up disk, unseen.
    pub async fn drop_swarm_leftovers(&self, name: &FileName) -> Result<(), StorageError> {
        let (data, record) = self.swarm_paths(name);
        self.host.blocking(move || remove_leftovers(&data, &record)).await
    }

    /// The size of the file a swarm download of `name` (under way, or
    /// interrupted) is for: its partial file has that length from the
    /// start. `None` if there is none.
    pub fn swarm_part_len(&self, name: &FileName) -> Option<u64> {
        let (data, _) = self.swarm_paths(name);
        fs::metadata(data)
            .ok()
            .filter(fs::Metadata::is_file)
            .map(|metadata| metadata.len())
    }

    /// The paths of the partial file and the record of a swarm download of
    /// `name`.
    fn swarm_paths(&self, name: &FileName) -> (PathBuf, PathBuf) {
        let mut cut = name.as_str().len().min(200);
        while !name.as_str().is_char_boundary(cut) {
            cut -= 1;
        }
        let tag = &Digest::of(name.as_str().as_bytes()).to_string()[..8];
        let stem = format!(".{}.{tag}", &name.as_str()[..cut]);
        (
            self.dir.join(format!("{stem}{SWARM_PART_SUFFIX}")),
            self.dir.join(format!("{stem}{PIECES_SUFFIX}")),
        )
    }

    /// What an earlier, interrupted swarm download of `name` left for
    /// content `info` with root `root`, seen in pieces of `piece` bytes;
    /// `None` if nothing usable. Leftovers of another version are removed.
    pub async fn resume(
        &self,
        name: &FileName,
        info: FileInfo,
        root: Digest,
        piece: PieceSize,
    ) -> Result<Option<Resumed>, StorageError> {
        let (data, record) = self.swarm_paths(name);
        self.host
            .blocking(move || {
                // Locked first, so the record read is of a file nobody else
                // writes (a live download elsewhere is an error that says
                // so, as it is for `part`).
                let lock = if is_symlink(&data) {
                    None
                } else {
                    lock_at(&data, &existing_part())?
                };
                let lock = match lock {
                    Some(lock) => lock,
                    None => {
                        remove_leftovers(&data, &record)?;
                        return Ok(None);
                    }
                };
                match read_record(&record, &data, info, root, piece)? {
                    Some((layer, verified)) => Ok(Some(Resumed {
                        layer,
                        verified,
                        lock: PartLock(lock),
                    })),
                    // Locked by this process and still the file at `data`.
                    None => {
                        remove_if_there(&data)?;
                        remove_if_there(&record)
                    }
                    .map(|()| None),
                }
            })
            .await
    }

    /// Opens (or creates) the partial file of `name`, to hold content `info`
    /// with root `root` in the pieces of `layer`, locked by this process: a
    /// download under way in another process is an error that says so.
    /// `resumed` is the lock of the file an earlier attempt left, taken by
    /// [`Folder::resume`].
    pub async fn part(
        &self,
        name: &FileName,
        info: FileInfo,
        root: Digest,
        layer: Layer,
        resumed: Option<PartLock>,
    ) -> Result<PartFile, StorageError> {
        let (path, record) = self.swarm_paths(name);
        let size = layer.layout().size;
        let opened = path.clone();
        let file = match resumed {
            Some(PartLock(file)) => file,
            None => self.host.blocking(move || open_locked(&opened, size)).await?,
        };
        Ok(PartFile {
            data: PartData {
                file: Arc::new(file),
                host: self.host.clone(),
            },
            path,
            record,
            dir: self.dir.clone(),
            layer: Arc::new(layer),
            content: (info, root),
            writing: Arc::default(),
        })
    }
}

impl PartFile {
    /// Reads of the file's bytes, for serving its verified pieces.
    pub fn data(&self) -> PartData {
        self.data.clone()
    }

    /// The piece hashes.
    pub fn layer(&self) -> &Arc<Layer> {
        &self.layer
    }

    /// Checks `bytes` against piece `index`'s hash and, if they are the
    /// piece, writes them at its place. Returns whether they were. The
    /// returned future does the work on the host's blocking side, started
    /// at once (so a caller can go on receiving meanwhile).
    pub fn take_piece(
        &self,
        index: usize,
        bytes: Bytes,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        let (file, layer, path) = (self.data.file.clone(), self.layer.clone(), self.path.clone());
        let writing = self.writing.clone();
        self.data.host.blocking(move || {
            if !layer.checks(index, &bytes) {
                return Ok(false);
            }
            let offset = layer.layout().range(index).start;
            let _turn = writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            write_all_at(&file, &bytes, offset).map_err(at(&path))?;
            Ok(true)
        })
    }

    /// Syncs what was written, then records `verified` in place of the
    /// last record, atomically: every piece a record lists is on disk.
    /// The future owns what it needs, so the download can keep it among
    /// its other work while the disk syncs.
    pub fn save(
        &self,
        verified: &Bitfield,
    ) -> impl std::future::Future<Output = Result<(), StorageError>> + Send + 'static {
        let (file, path, record, dir, host) = (
            self.data.file.clone(),
            self.path.clone(),
            self.record.clone(),
            self.dir.clone(),
            self.data.host.clone(),
        );
        let contents = self.record_bytes(verified);
        async move {
            host.blocking(move || {
                file.sync_data().map_err(at(&path))?;
                write_record(&dir, &record, &contents)
            })
            .await
        }
    }

    fn record_bytes(&self, verified: &Bitfield) -> Vec<u8> {
        let (info, root) = self.content;
        let header = RecordHeader {
            info,
            root,
            piece_size: self.layer.layout().piece.bytes(),
        };
        let mut bytes = RECORD_MAGIC.to_vec();
        bytes.extend(serde_json::to_vec(&header).expect("a header always serialises"));
        bytes.push(b'\n');
        bytes.extend(self.layer.to_bytes());
        bytes.extend_from_slice(verified.as_bytes());
        bytes
    }

    /// Carries `whole` on to byte `to` of the partial file, read back from
    /// disk: the check of the whole before it goes into place, made while
    /// the download goes on, as far as the pieces from the start are in.
    /// The future owns what it needs, so the download can keep it among
    /// its other work.
    ///
    /// It runs as a long job, on a thread of its own: on the blocking pool
    /// each step waited behind the checks of the pieces that came meanwhile,
    /// so the hash fell behind and most of it was left for after the last
    /// piece, on one core (1 GiB from one seeder: 0.39 s of 1.40; with a
    /// thread of its own, 0.02-0.17 s of 1.27, docs/swarm-measurements.md).
    pub fn hash_on(
        &self,
        mut whole: WholeHash,
        to: u64,
    ) -> impl std::future::Future<Output = Result<WholeHash, StorageError>> + Send + 'static {
        let (file, path, host) = (self.data.file.clone(), self.path.clone(), self.data.host.clone());
        async move {
            host.long(move || {
                let hasher = &mut whole.hasher;
                let end = read_through(&file, &path, whole.hashed..to, HASH_CHUNK, |chunk| hasher.update(chunk))?;
                if end < to {
                    return Err(at(&path)(io::ErrorKind::UnexpectedEof.into()));
                }
                whole.hashed = end;
                Ok(whole)
            })
            .await
        }
    }

    /// The pieces of `verified` whose bytes on disk no longer match their
    /// hash (a disk that lost them): to be fetched again.
    pub async fn bad_pieces(&self, verified: &Bitfield) -> Result<Vec<usize>, StorageError> {
        let held: Vec<usize> = verified.iter_held().collect();
        let (data, layer) = (self.data.clone(), self.layer.clone());
        let mut bad = Vec::new();
        for index in held {
            let bytes = data.read(layer.layout().range(index)).await.map_err(at(&self.path))?;
            if !layer.checks(index, &bytes) {
                bad.push(index);
            }
        }
        Ok(bad)
    }

    /// Puts the (verified) file into `folder` as `name`, replacing a file
    /// there only if the folder replaces files, and removes the record. The
    /// folder remembers its size, SHA-1 and root.
    pub async fn store(&self, folder: &Folder, name: &FileName) -> Result<(), StorageError> {
        let (info, root) = self.content;
        let (target, replace) = (folder.path(name), folder.replace);
        let (path, record, dir) = (self.path.clone(), self.record.clone(), self.dir.clone());
        let file = self.data.file.clone();
        let stamp = folder
            .host
            .blocking(move || {
                // What was checked is the file this download locked: the
                // name must still be it (see `open_locked`).
                if !still_at(&file, &path)? {
                    return Err(StorageError::Busy { path });
                }
                put_in_place(&path, &target, replace)?;
                sync_after_rename(&dir);
                // From here the file is stored: a record left behind is
                // not, and the next download of the name removes it.
                if let Err(error) = remove_if_there(&record) {
                    tracing::warn!(
                        "stored {}, but could not remove its piece record: {error}",
                        target.display()
                    );
                }
                Ok::<_, StorageError>(Stamp::of(&file.metadata().map_err(at(&target))?))
            })
            .await?;
        folder.known.remember(name.clone(), stamp, info);
        folder.remember_root(name, info, root, Some(self.layer.clone()));
        Ok(())
    }

    /// Deletes the partial file and its record: what they hold is of no
    /// use (the download was dropped, or the name taken meanwhile).
    pub async fn discard(&self) -> Result<(), StorageError> {
        let (path, record) = (self.path.clone(), self.record.clone());
        let file = self.data.file.clone();
        self.data
            .host
            .blocking(move || {
                // Ours: unlocked first, so it is not taken for another's.
                let _ = file.unlock();
                remove_leftovers(&path, &record)
            })
            .await
    }
}

/// Writes all of `bytes` at `offset` of `file`.
fn write_all_at(file: &fs::File, bytes: &[u8], offset: u64) -> io::Result<()> {
    #[cfg(unix)]
    return std::os::unix::fs::FileExt::write_all_at(file, bytes, offset);
    #[cfg(not(unix))]
    {
        use std::io::Seek;
        let mut file = file;
        file.seek(io::SeekFrom::Start(offset))?;
        file.write_all(bytes)
    }
}

/// Opens the partial file at `path`, creating it with `size` bytes (sparse)
/// if need be, and locks it for this process ([`lock_at`]).
fn open_locked(path: &Path, size: u64) -> Result<fs::File, StorageError> {
    let mut options = existing_part();
    options.create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Like any file a program creates: it becomes the stored file.
        options.mode(0o666);
    }
    let file = lock_at(path, &options)?.ok_or_else(|| at(path)(io::ErrorKind::NotFound.into()))?;
    if file.metadata().map_err(at(path))?.len() != size {
        file.set_len(size).map_err(at(path))?;
    }
    Ok(file)
}

/// How a partial file is opened: to read and write, never through a
/// symbolic link.
fn existing_part() -> fs::OpenOptions {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW);
    }
    options
}

/// Opens the file at `path` with `options` and locks it for this process;
/// `None` if there is no file there (and `options` do not create one).
///
/// The lock is taken after the open, so another download of the name may
/// remove the file in between (it found it abandoned: unlocked). A lock on
/// a removed file guards nothing, and two downloads would then write, and
/// store, one name at once: the file locked must still be the one at
/// `path`, or it is opened again.
fn lock_at(path: &Path, options: &fs::OpenOptions) -> Result<Option<fs::File>, StorageError> {
    for _ in 0..LOCK_ATTEMPTS {
        let file = match options.open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(at(path)(error)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StorageError::Busy { path: path.to_owned() }),
            Err(fs::TryLockError::Error(error)) => return Err(at(path)(error)),
        }
        if still_at(&file, path)? {
            return Ok(Some(file));
        }
    }
    Err(StorageError::Busy { path: path.to_owned() })
}

/// What a record says, in the pieces of a new attempt: the piece hashes
/// (if they can be worked out) and the pieces verified.
type Recorded = (Option<Layer>, Bitfield);

/// Reads the record at `record` of the partial file at `data`, if both are
/// there and describe content `info` with root `root`: the piece hashes
/// (if they can be worked out) and the pieces verified, in pieces of
/// `piece` bytes.
fn read_record(
    record: &Path,
    data: &Path,
    info: FileInfo,
    root: Digest,
    piece: PieceSize,
) -> Result<Option<Recorded>, StorageError> {
    let mut bytes = Vec::new();
    match fs::File::open(record) {
        Ok(mut file) => file.read_to_end(&mut bytes).map_err(at(record))?,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(at(record)(error)),
    };
    let data_len = match fs::symlink_metadata(data) {
        Ok(meta) if meta.is_file() => meta.len(),
        _ => return Ok(None),
    };
    let Some((header, layer, verified)) = parse_record(&bytes) else {
        tracing::warn!(record = %record.display(), "unreadable record of pieces; starting over");
        return Ok(None);
    };
    if header.info != info || header.root != root || data_len != info.size {
        return Ok(None);
    }
    let Ok(own) = PieceSize::new(header.piece_size) else {
        return Ok(None);
    };
    let own = Layout::new(info.size, own);
    let (Ok(layer), Ok(verified)) = (
        Layer::verified(own, layer, root),
        Bitfield::from_bytes(own.count(), verified.to_vec()),
    ) else {
        return Ok(None);
    };
    let wanted = Layout::new(info.size, piece);
    // Coarser pieces' hashes are a level of the same tree, so they fold up
    // to the root as well; finer ones cannot be worked out.
    let coarse = (piece >= own.piece).then(|| coarser_layer(&own, layer.hashes(), piece));
    let layer = coarse.and_then(|hashes| Layer::verified(wanted, hashes, root).ok());
    Ok(Some((layer, verified.covering(&own, &wanted))))
}

/// The parts of a record: header, piece hashes, bitfield bytes.
fn parse_record(bytes: &[u8]) -> Option<(RecordHeader, Vec<Digest>, &[u8])> {
    let rest = bytes.strip_prefix(RECORD_MAGIC)?;
    let end = rest.iter().position(|byte| *byte == b'\n')?;
    let header: RecordHeader = serde_json::from_slice(&rest[..end]).ok()?;
    let layout = Layout::new(header.info.size, PieceSize::new(header.piece_size).ok()?);
    let rest = &rest[end + 1..];
    let hashes_len = layout.count().checked_mul(20)?;
    if rest.len() != hashes_len + layout.count().div_ceil(8) {
        return None;
    }
    Some((header, hashes_from_bytes(&rest[..hashes_len])?, &rest[hashes_len..]))
}

/// Writes `contents` to a temporary file beside `record`, syncs it and
/// renames it over `record`.
fn write_record(dir: &Path, record: &Path, contents: &[u8]) -> Result<(), StorageError> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".pieces.").suffix(PARTIAL_SUFFIX);
    // A live temporary file, not a leftover: see `remove_if_abandoned`.
    let mut temp = locked_temp(&builder, dir)?;
    temp.write_all(contents).map_err(at(temp.path()))?;
    temp.as_file().sync_data().map_err(at(temp.path()))?;
    temp.persist(record).map_err(|error| at(record)(error.error))?;
    sync_dir(dir).map_err(at(dir))
}

/// Renames `from` to `to`; unless `replace`, never over a file already
/// there: a rename that refuses to replace, as the whole-file path's
/// (`NamedTempFile::persist_noclobber`) does, or where the file system
/// cannot, a hard link (which fails if `to` exists, atomically) and an
/// unlink.
fn put_in_place(from: &Path, to: &Path, replace: bool) -> Result<(), StorageError> {
    if replace {
        return fs::rename(from, to).map_err(at(to));
    }
    #[cfg(target_os = "linux")]
    match rename_no_replace(from, to) {
        Ok(()) => return Ok(()),
        // The file system cannot (EINVAL), or the kernel is too old.
        Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {}
        Err(error) => return Err(at(to)(error)),
    }
    fs::hard_link(from, to).map_err(at(to))?;
    fs::remove_file(from).map_err(at(from))
}

/// `renameat2(from, to, RENAME_NOREPLACE)`: one step, so a crash leaves
/// the file under one name or the other, never both (a hard link and an
/// unlink would leave the partial file and the stored file one inode,
/// which a later resume could write into); and file systems without hard
/// links (FAT, exFAT) take it.
#[cfg(target_os = "linux")]
fn rename_no_replace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(from.as_os_str().as_bytes())?;
    let to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: both paths are NUL-terminated strings that outlive the call,
    // which reads them and touches no other memory of this process.
    let renamed = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    match renamed {
        0 => Ok(()),
        _ => Err(io::Error::last_os_error()),
    }
}

fn remove_if_there(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(at(path)(error)),
        _ => Ok(()),
    }
}

/// Removes a partial file and its record, unless a live process holds the
/// partial file's lock. The partial file is removed only while this
/// process holds its lock, and only if it is the file locked: a download
/// that opened it meanwhile finds it gone once it has the lock
/// ([`open_locked`]), and one that made a new file there keeps it.
fn remove_leftovers(data: &Path, record: &Path) -> Result<(), StorageError> {
    // A symbolic link is nobody's partial file (they are opened with
    // O_NOFOLLOW): removed, or no download of the name could ever open one.
    if is_symlink(data) {
        remove_if_there(data)?;
        return remove_if_there(record);
    }
    let file = match fs::File::open(data) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return remove_if_there(record),
        Err(error) => return Err(at(data)(error)),
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => return Ok(()),
        Err(fs::TryLockError::Error(error)) => return Err(at(data)(error)),
    }
    // Made anew since it was opened: another download's, which locks it.
    if !still_at(&file, data)? {
        return Ok(());
    }
    remove_if_there(data)?;
    remove_if_there(record)
}

/// Whether `path` is a symbolic link.
fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|found| found.file_type().is_symlink())
}

/// Reads all of the file at `path`.
#[cfg(test)]
fn read_file(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    fs::File::open(path).unwrap().read_to_end(&mut bytes).unwrap();
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::BodySink as _;
    use crate::pieces::Tree;

    fn name(text: &str) -> FileName {
        text.parse().unwrap()
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 253) as u8 ^ (i / 4096) as u8).collect()
    }

    /// A file's content, info, root and layer in pieces of `piece`.
    fn file(len: usize, piece: u64) -> (Vec<u8>, FileInfo, Digest, Layer) {
        let bytes = content(len);
        let tree = Tree::of(&bytes);
        let piece = PieceSize::new(piece).unwrap();
        let layout = Layout::new(len as u64, piece);
        let layer = Layer::verified(layout, tree.layer(piece), tree.root()).unwrap();
        let info = FileInfo {
            size: len as u64,
            sha1: Digest::of(&bytes),
        };
        (bytes, info, tree.root(), layer)
    }

    fn piece_of(bytes: &[u8], layer: &Layer, index: usize) -> Bytes {
        let range = layer.layout().range(index);
        Bytes::copy_from_slice(&bytes[range.start as usize..range.end as usize])
    }

    /// Every entry of the folder, hidden ones included.
    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    /// Leaves what a download of `f` interrupted after its first piece
    /// leaves: the partial file, and a record listing that piece (returned).
    async fn interrupted_with_piece_0(
        folder: &Folder,
        bytes: &[u8],
        info: FileInfo,
        root: Digest,
        layer: &Layer,
    ) -> Bitfield {
        let part = folder.part(&name("f"), info, root, layer.clone(), None).await.unwrap();
        assert!(part.take_piece(0, piece_of(bytes, layer, 0)).await.unwrap());
        let mut verified = Bitfield::empty(layer.layout().count());
        verified.set(0);
        part.save(&verified).await.unwrap();
        verified
    }

    #[tokio::test]
    async fn verified_pieces_survive_a_restart_and_the_rest_is_fetched_again() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        let (bytes, info, root, layer) = file(100_000, 16 * 1024);
        let piece = layer.layout().piece;
        assert!(folder.resume(&name("f"), info, root, piece).await.unwrap().is_none());
        let part = folder.part(&name("f"), info, root, layer.clone(), None).await.unwrap();
        let mut verified = Bitfield::empty(layer.layout().count());
        for index in [0, 2, 6] {
            assert!(part.take_piece(index, piece_of(&bytes, &layer, index)).await.unwrap());
            verified.set(index);
        }
        let mut wrong = piece_of(&bytes, &layer, 3).to_vec();
        wrong[0] ^= 1;
        assert!(
            !part.take_piece(3, wrong.into()).await.unwrap(),
            "a bad piece was taken"
        );
        part.save(&verified).await.unwrap();
        // Piece 4 arrives after the last record: not trusted after a crash.
        assert!(part.take_piece(4, piece_of(&bytes, &layer, 4)).await.unwrap());
        drop(part);

        // A restart: the folder is opened again; nothing is cleaned away.
        let folder = Folder::open(dir.path()).unwrap();
        assert!(folder.list().unwrap().is_empty(), "a partial download is listed");
        // Seen in pieces of 32 KiB: only whole ones count.
        let coarse = folder
            .resume(&name("f"), info, root, PieceSize::new(32 * 1024).unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(coarse.verified.iter_held().collect::<Vec<_>>(), [3]);
        drop(coarse);
        let resumed = folder.resume(&name("f"), info, root, piece).await.unwrap().unwrap();
        assert_eq!(resumed.verified, verified);
        assert_eq!(resumed.layer.as_ref().map(Layer::hashes), Some(layer.hashes()));

        let part = folder
            .part(&name("f"), info, root, layer.clone(), Some(resumed.lock))
            .await
            .unwrap();
        for index in resumed.verified.iter_missing().collect::<Vec<_>>() {
            assert!(part.take_piece(index, piece_of(&bytes, &layer, index)).await.unwrap());
        }
        // Hashed whole in two steps, as a download does while it goes on.
        let half = part.hash_on(WholeHash::default(), info.size / 2).await.unwrap();
        assert_eq!(half.hashed(), info.size / 2);
        let whole = part.hash_on(half, info.size).await.unwrap();
        assert_eq!(whole.finish(), info);
        part.store(&folder, &name("f")).await.unwrap();
        assert_eq!(entries(dir.path()), ["f"], "leftovers after the store");
        assert_eq!(folder.read(&name("f")).await.unwrap(), bytes);
        assert_eq!(folder.content(&name("f")).await.unwrap(), (info, root));
    }

    #[tokio::test]
    async fn leftovers_of_another_version_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        let (bytes, info, root, layer) = file(50_000, 16 * 1024);
        interrupted_with_piece_0(&folder, &bytes, info, root, &layer).await;
        let (_, other, other_root, _) = file(50_001, 16 * 1024);
        let piece = layer.layout().piece;
        assert!(folder
            .resume(&name("f"), other, other_root, piece)
            .await
            .unwrap()
            .is_none());
        assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    }

    #[tokio::test]
    async fn a_file_stored_whole_drops_what_a_swarm_download_left_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        for (file_name, live) in [("left", false), ("live", true)] {
            let (bytes, info, root, layer) = file(50_000, 16 * 1024);
            let part = folder
                .part(&name(file_name), info, root, layer.clone(), None)
                .await
                .unwrap();
            assert!(part.take_piece(0, piece_of(&bytes, &layer, 0)).await.unwrap());
            let mut verified = Bitfield::empty(layer.layout().count());
            verified.set(0);
            part.save(&verified).await.unwrap();
            // A live download keeps its part open (and locked); an
            // interrupted one closed it.
            let kept = live.then_some(part);
            // The same file arrives whole by another way (`phile get
            // --single`, a scenario's whole-file download).
            let mut incoming = folder.incoming(&name(file_name)).unwrap();
            incoming.accept(bytes.clone()).await.unwrap();
            folder
                .store(&name(file_name), incoming.finish().await.unwrap())
                .await
                .unwrap();
            let hidden: Vec<String> = entries(dir.path())
                .into_iter()
                .filter(|entry| entry.starts_with(&format!(".{file_name}.")))
                .collect();
            if live {
                assert_eq!(hidden.len(), 2, "a live download's part and record: {hidden:?}");
            } else {
                assert!(hidden.is_empty(), "left behind: {hidden:?}");
            }
            drop(kept);
        }
    }

    #[tokio::test]
    async fn a_download_under_way_in_another_process_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        let (_, info, root, layer) = file(20_000, 16 * 1024);
        let first = folder.part(&name("f"), info, root, layer.clone(), None).await.unwrap();
        // A second handle stands for a second process: the lock is per
        // open file, so it is refused as another process would be.
        let second = folder.part(&name("f"), info, root, layer, None).await.unwrap_err();
        assert!(matches!(second, StorageError::Busy { .. }), "{second}");
        drop(first);
    }

    /// Resumed in coarser pieces than its record's, a download waits for
    /// the piece hashes before it opens the partial file: meanwhile the
    /// pieces its record lists are its own, as they are once it is open.
    #[tokio::test]
    async fn a_resumed_partial_file_is_locked_from_the_moment_its_record_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap();
        let (bytes, info, root, layer) = file(100_000, 32 * 1024);
        let verified = interrupted_with_piece_0(&folder, &bytes, info, root, &layer).await;

        let finer = PieceSize::new(16 * 1024).unwrap();
        let resumed = folder.resume(&name("f"), info, root, finer).await.unwrap().unwrap();
        assert_eq!(resumed.layer, None, "finer pieces' hashes cannot be worked out");
        assert_eq!(resumed.verified.iter_held().collect::<Vec<_>>(), [0, 1]);
        let again = folder.resume(&name("f"), info, root, finer).await.unwrap_err();
        assert!(matches!(again, StorageError::Busy { .. }), "{again}");
        let opened = folder
            .part(&name("f"), info, root, layer.clone(), None)
            .await
            .unwrap_err();
        assert!(matches!(opened, StorageError::Busy { .. }), "{opened}");
        folder.drop_swarm_leftovers(&name("f")).await.unwrap();
        assert_eq!(entries(dir.path()).len(), 2, "removed from under the resumed download");

        // The hashes came: the file opened is the one locked, pieces and all.
        let part = folder
            .part(&name("f"), info, root, layer.clone(), Some(resumed.lock))
            .await
            .unwrap();
        assert!(part.bad_pieces(&verified).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_piece_that_went_bad_on_disk_is_found_and_a_store_never_replaces_unless_told() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap().keeping_existing();
        let (bytes, info, root, layer) = file(40_000, 16 * 1024);
        let part = folder.part(&name("f"), info, root, layer.clone(), None).await.unwrap();
        let all = Bitfield::full(layer.layout().count());
        for index in 0..layer.layout().count() {
            assert!(part.take_piece(index, piece_of(&bytes, &layer, index)).await.unwrap());
        }
        write_all_at(&part.data.file, b"X", 20_000).unwrap();
        assert_eq!(part.bad_pieces(&all).await.unwrap(), [1]);
        assert_ne!(
            part.hash_on(WholeHash::default(), info.size).await.unwrap().finish(),
            info
        );
        fs::write(dir.path().join("f"), "the user's own").unwrap();
        let refused = part.store(&folder, &name("f")).await.unwrap_err();
        assert!(matches!(&refused, StorageError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists));
        assert_eq!(read_file(&dir.path().join("f")), b"the user's own");
    }

    /// Two downloads of one name race: each removes leftovers it finds
    /// unlocked (one after a stale partial of another version), then opens
    /// and locks the partial file. However their steps interleave, at most
    /// one holds a lock on the file at the path, and none holds a lock on
    /// a file removed from under it (before, both did in 4.6 % of runs,
    /// and the first to finish stored the other's unfinished file).
    #[test]
    fn of_two_downloads_of_a_name_at_most_one_locks_its_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let (data, record) = (
            dir.path().join(".f.x.phile-swarm"),
            dir.path().join(".f.x.phile-pieces"),
        );
        for run in 0..2_000 {
            let stale = run % 2 == 0;
            if stale {
                fs::write(&data, b"stale").unwrap();
                fs::write(&record, b"stale").unwrap();
            }
            let start = Arc::new(std::sync::Barrier::new(2));
            let download = |start: Arc<std::sync::Barrier>| {
                let (data, record) = (data.clone(), record.clone());
                std::thread::spawn(move || {
                    start.wait();
                    remove_leftovers(&data, &record).unwrap();
                    open_locked(&data, 10).ok()
                })
            };
            let (a, b) = (download(start.clone()), download(start));
            let locked: Vec<fs::File> = [a.join().unwrap(), b.join().unwrap()].into_iter().flatten().collect();
            assert!(locked.len() <= 1, "run {run}: both downloads hold a lock");
            for file in &locked {
                assert!(still_at(file, &data).unwrap(), "run {run}: a lock on a removed file");
            }
            drop(locked);
            let _ = fs::remove_file(&data);
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_left_where_a_partial_file_goes_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (data, record) = (
            dir.path().join(".f.x.phile-swarm"),
            dir.path().join(".f.x.phile-pieces"),
        );
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &data).unwrap();
        assert!(open_locked(&data, 10).is_err(), "a partial file opened through a link");
        remove_leftovers(&data, &record).unwrap();
        assert!(open_locked(&data, 10).is_ok());
    }

    #[tokio::test]
    async fn a_partial_file_removed_from_under_its_download_is_not_stored() {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::open(dir.path()).unwrap().keeping_existing();
        let (bytes, info, root, layer) = file(40_000, 16 * 1024);
        let part = folder.part(&name("f"), info, root, layer.clone(), None).await.unwrap();
        for index in 0..layer.layout().count() {
            assert!(part.take_piece(index, piece_of(&bytes, &layer, index)).await.unwrap());
        }
        // Another file takes the partial file's name (as a download whose
        // lock was on a removed file would have made one).
        let (path, _) = folder.swarm_paths(&name("f"));
        fs::remove_file(&path).unwrap();
        fs::write(&path, vec![0; bytes.len()]).unwrap();
        let refused = part.store(&folder, &name("f")).await.unwrap_err();
        assert!(matches!(refused, StorageError::Busy { .. }), "{refused:?}");
        assert!(!dir.path().join("f").exists(), "stored a file it did not check");
    }
}

//! Pieces of a file and the hashes that vouch for them. No I/O.
//!
//! A swarm download fetches a file in fixed-size pieces from several peers
//! at once, and keeps a piece only once it is known good. What makes a
//! piece known good is a hash tree over the file (a Merkle tree, as
//! BitTorrent v2 has): the file is cut into leaves of [`LEAF_LEN`] bytes,
//! each leaf is hashed, and pairs of hashes are hashed together up to one
//! root. The tracker records that root at the first announce of a file,
//! beside its size and SHA-1, and the same-name-same-content rule covers it.
//!
//! A piece is a power-of-two number of leaves, so its hash is a node of the
//! tree; the piece hashes of a download form one layer of the tree (the
//! *layer* for that piece size). A downloader fetches the layer from any
//! peer, checks that it folds up to the recorded root, then checks each
//! piece against its entry as it arrives. One recorded root thus vouches
//! for every piece size: the piece size is the downloader's choice, not
//! the file's.
//!
//! Leaves and nodes are hashed with a different first byte (`0` and `1`),
//! so a node can never pass for a leaf. A tree has a power-of-two number of
//! leaves: past the end of the file it is padded with leaves whose hash is
//! all zeros.
//!
//! [`Bitfield`] says which pieces a peer holds; [`Bitfield::covering`]
//! translates one between two piece sizes, so peers that chose different
//! piece sizes still trade.

use std::fmt;
use std::ops::Range;

use sha1::{Digest as _, Sha1};

use crate::protocol::Digest;

/// The size of a leaf of the hash tree, and so the smallest piece.
pub const LEAF_LEN: u64 = 16 * 1024;

/// The largest piece size a download may choose.
pub const MAX_PIECE_LEN: u64 = 16 * 1024 * 1024;

/// The most pieces a download cuts a file into. Its plan keeps a few
/// dozen bytes per piece: tens of MiB at this count, whatever size a
/// tracker (or a client that lies to it) claims the file has.
pub const MAX_PIECES: u64 = 1 << 20;

/// Why a file cannot be cut into pieces of a size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{size} bytes in pieces of {piece} make more than {MAX_PIECES} pieces, the most a download keeps track of: choose bigger pieces (16 MiB at most)")]
pub struct TooManyPieces {
    /// The file's size.
    pub size: u64,
    /// The piece size tried.
    pub piece: PieceSize,
}

/// A piece size: a power of two from [`LEAF_LEN`] to [`MAX_PIECE_LEN`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PieceSize(u64);

/// Why a number is not a [`PieceSize`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a piece size of {0} bytes is not allowed: give a power of two from 16384 (16 KiB) to 16777216 (16 MiB)")]
pub struct InvalidPieceSize(pub u64);

impl PieceSize {
    /// 256 KiB: the piece size of a swarm download unless it chooses one.
    pub const DEFAULT: PieceSize = PieceSize(256 * 1024);

    /// The smallest piece: one leaf.
    pub const SMALLEST: PieceSize = PieceSize(LEAF_LEN);

    /// `bytes` as a piece size, if it is one.
    pub fn new(bytes: u64) -> Result<PieceSize, InvalidPieceSize> {
        if bytes.is_power_of_two() && (LEAF_LEN..=MAX_PIECE_LEN).contains(&bytes) {
            Ok(PieceSize(bytes))
        } else {
            Err(InvalidPieceSize(bytes))
        }
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// The piece size for a file of `size` bytes: `asked`, or else
    /// [`PieceSize::DEFAULT`] doubled until the file makes at most
    /// [`MAX_PIECES`] pieces (a file over 256 GiB gets bigger pieces).
    /// An error if even that is too many.
    pub fn for_file(size: u64, asked: Option<PieceSize>) -> Result<PieceSize, TooManyPieces> {
        let mut piece = asked.unwrap_or(PieceSize::DEFAULT);
        while asked.is_none() && size.div_ceil(piece.0) > MAX_PIECES && piece.0 < MAX_PIECE_LEN {
            piece = PieceSize(piece.0 * 2);
        }
        if size.div_ceil(piece.0) > MAX_PIECES {
            return Err(TooManyPieces { size, piece });
        }
        Ok(piece)
    }

    /// How many leaves a piece spans.
    pub fn leaves(self) -> u64 {
        self.0 / LEAF_LEN
    }

    /// The height of a piece's node in the tree (a leaf is at 0).
    pub fn height(self) -> u32 {
        self.leaves().trailing_zeros()
    }
}

impl fmt::Display for PieceSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            bytes if bytes >= 1 << 20 => write!(f, "{} MiB", bytes >> 20),
            bytes => write!(f, "{} KiB", bytes >> 10),
        }
    }
}

/// How a file of `size` bytes is cut into pieces of `piece` bytes. Every
/// piece is whole but the last; a file too small for one whole piece is a
/// single (short) piece, and so is an empty file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The file's size in bytes.
    pub size: u64,
    /// The size of every piece but the last.
    pub piece: PieceSize,
}

impl Layout {
    /// The pieces of a file of `size` bytes, `piece` bytes each.
    pub fn new(size: u64, piece: PieceSize) -> Layout {
        Layout { size, piece }
    }

    /// How many pieces there are (at least one).
    pub fn count(&self) -> usize {
        self.size.div_ceil(self.piece.bytes()).max(1) as usize
    }

    /// The bytes of piece `index` within the file.
    pub fn range(&self, index: usize) -> Range<u64> {
        let start = index as u64 * self.piece.bytes();
        start.min(self.size)..(start + self.piece.bytes()).min(self.size)
    }

    /// The length of piece `index`.
    pub fn len(&self, index: usize) -> u64 {
        let range = self.range(index);
        range.end - range.start
    }

    /// How many bytes the pieces `held` marks come to, without visiting
    /// them: every piece is whole but the last.
    pub fn bytes_held(&self, held: &Bitfield) -> u64 {
        let last = self.count() - 1;
        let short_by = if held.has(last) {
            self.piece.bytes() - self.len(last)
        } else {
            0
        };
        held.held() as u64 * self.piece.bytes() - short_by
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// How many leaves the whole file has (at least one).
    fn leaves(&self) -> u64 {
        self.size.div_ceil(LEAF_LEN).max(1)
    }

    /// How many leaves one piece's node spans: a piece, or, for a file of
    /// a single piece, just the file's whole (padded) tree, so that the
    /// piece's hash is the root.
    fn leaves_per_node(&self) -> u64 {
        self.piece.leaves().min(self.leaves().next_power_of_two())
    }

    /// The pieces of this layout that cover the bytes `bytes` (at least
    /// partly).
    pub(crate) fn overlapping(&self, bytes: Range<u64>) -> Range<usize> {
        if bytes.is_empty() {
            let at = (bytes.start / self.piece.bytes()) as usize;
            return at.min(self.count() - 1)..at.min(self.count() - 1) + 1;
        }
        let first = bytes.start / self.piece.bytes();
        let last = (bytes.end - 1) / self.piece.bytes();
        first as usize..last as usize + 1
    }
}

/// The hash of one leaf: SHA-1 of a zero byte and the leaf's bytes.
pub fn leaf_hash(bytes: &[u8]) -> Digest {
    let mut hasher = Sha1::new();
    hasher.update([0u8]);
    hasher.update(bytes);
    Digest(hasher.finalize().into())
}

/// The hash of a node: SHA-1 of a one byte and its two children.
pub fn node_hash(left: &Digest, right: &Digest) -> Digest {
    let mut hasher = Sha1::new();
    hasher.update([1u8]);
    hasher.update(left.0);
    hasher.update(right.0);
    Digest(hasher.finalize().into())
}

/// The hash of a node `height` levels above padding leaves only.
pub fn padding(height: u32) -> Digest {
    let mut hash = Digest([0; 20]);
    for _ in 0..height {
        hash = node_hash(&hash, &hash);
    }
    hash
}

/// Folds `hashes` (nodes at `height`) up to one node spanning `span` of
/// them (a power of two, at least `hashes.len()`), padding as needed.
fn fold(hashes: &[Digest], height: u32, span: u64) -> Digest {
    debug_assert!(span.is_power_of_two() && span >= hashes.len() as u64);
    let mut level: Vec<Digest> = hashes.to_vec();
    let (mut pad, mut width) = (padding(height), span);
    while width > 1 {
        if level.len() % 2 == 1 {
            level.push(pad);
        }
        level = level.chunks(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
        pad = node_hash(&pad, &pad);
        width /= 2;
    }
    level.first().copied().unwrap_or(pad)
}

/// The hash of one piece of `layout`, from its bytes: its leaves, folded
/// up to the piece's node. `bytes` must be the whole piece.
pub fn piece_hash(layout: &Layout, bytes: &[u8]) -> Digest {
    let leaves: Vec<Digest> = if bytes.is_empty() {
        vec![leaf_hash(&[])]
    } else {
        bytes.chunks(LEAF_LEN as usize).map(leaf_hash).collect()
    };
    fold(&leaves, 0, layout.leaves_per_node())
}

/// The root that the piece hashes `layer` of `layout` fold up to.
pub fn root_of_layer(layout: &Layout, layer: &[Digest]) -> Digest {
    let height = layout.leaves_per_node().trailing_zeros();
    fold(layer, height, (layer.len() as u64).next_power_of_two())
}

/// The piece hashes of `fine` (a layout of the file) folded into those of
/// the same file cut into pieces of `to` bytes, which must be no smaller.
pub fn coarser_layer(fine: &Layout, hashes: &[Digest], to: PieceSize) -> Vec<Digest> {
    assert!(to >= fine.piece, "{to} is finer than {}", fine.piece);
    let coarse = Layout::new(fine.size, to);
    let span = coarse.leaves_per_node() / fine.leaves_per_node();
    let height = fine.leaves_per_node().trailing_zeros();
    hashes
        .chunks(span as usize)
        .map(|chunk| fold(chunk, height, span))
        .collect()
}

/// The piece size whose layer a holder remembers for a file of `size`
/// bytes: fine enough to fold into any piece size a download picks (up to
/// the default), coarse enough to keep at most 4,096 hashes for files up
/// to 1 GiB.
pub fn remembered_piece_size(size: u64) -> PieceSize {
    let fine = (size / 4096)
        .next_power_of_two()
        .clamp(LEAF_LEN, PieceSize::DEFAULT.bytes());
    PieceSize::new(fine).expect("a power of two within bounds")
}

/// The hashes of a file's leaves, gathered in one pass over its bytes.
#[derive(Clone, Debug, Default)]
pub struct TreeBuilder {
    /// The hash of every whole leaf so far.
    leaves: Vec<Digest>,
    /// The bytes of the leaf being filled.
    partial: Vec<u8>,
    /// The file's size so far.
    size: u64,
}

impl TreeBuilder {
    /// A builder that has seen no bytes.
    pub fn new() -> TreeBuilder {
        TreeBuilder::default()
    }

    /// Takes the next bytes of the file.
    pub fn update(&mut self, mut bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if !self.partial.is_empty() {
            let take = (LEAF_LEN as usize - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < LEAF_LEN as usize {
                return;
            }
            self.leaves.push(leaf_hash(&self.partial));
            self.partial.clear();
        }
        let mut leaves = bytes.chunks_exact(LEAF_LEN as usize);
        self.leaves.extend(leaves.by_ref().map(leaf_hash));
        self.partial.extend_from_slice(leaves.remainder());
    }

    /// The tree of everything seen.
    pub fn finish(mut self) -> Tree {
        if !self.partial.is_empty() || self.leaves.is_empty() {
            self.leaves.push(leaf_hash(&self.partial));
        }
        Tree {
            size: self.size,
            leaves: self.leaves,
        }
    }
}

/// A file's hash tree, as its leaf hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tree {
    /// The file's size.
    size: u64,
    /// One hash per leaf (at least one).
    leaves: Vec<Digest>,
}

impl Tree {
    /// The tree of `bytes`.
    pub fn of(bytes: &[u8]) -> Tree {
        let mut builder = TreeBuilder::new();
        builder.update(bytes);
        builder.finish()
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root: what the tracker records.
    pub fn root(&self) -> Digest {
        fold(&self.leaves, 0, (self.leaves.len() as u64).next_power_of_two())
    }

    /// The piece hashes of the file cut into pieces of `piece` bytes, as a
    /// [`Layer`]: computed from the bytes, it needs no check.
    pub fn piece_layer(&self, piece: PieceSize) -> Layer {
        Layer {
            layout: Layout::new(self.size, piece),
            hashes: self.layer(piece),
        }
    }

    /// The piece hashes of the file cut into pieces of `piece` bytes.
    pub fn layer(&self, piece: PieceSize) -> Vec<Digest> {
        let layout = Layout::new(self.size, piece);
        let span = layout.leaves_per_node() as usize;
        self.leaves
            .chunks(span)
            .map(|leaves| fold(leaves, 0, span as u64))
            .collect()
    }
}

/// The piece hashes of a file for one piece size, checked against the root
/// the tracker recorded: what a downloader verifies every piece with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// The pieces the hashes are for.
    layout: Layout,
    /// One hash per piece.
    hashes: Vec<Digest>,
}

/// Why a list of piece hashes does not vouch for a file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayerError {
    /// There is not one hash per piece.
    #[error("{got} piece hashes for a file of {expected} pieces")]
    WrongCount {
        /// How many came.
        got: usize,
        /// How many pieces the file has.
        expected: usize,
    },
    /// The hashes do not fold up to the recorded root.
    #[error("the piece hashes do not add up to the root the tracker recorded")]
    WrongRoot,
}

impl Layer {
    /// `hashes` as the pieces of `layout`, if they fold up to `root`.
    pub fn verified(layout: Layout, hashes: Vec<Digest>, root: Digest) -> Result<Layer, LayerError> {
        if hashes.len() != layout.count() {
            return Err(LayerError::WrongCount {
                got: hashes.len(),
                expected: layout.count(),
            });
        }
        if root_of_layer(&layout, &hashes) != root {
            return Err(LayerError::WrongRoot);
        }
        Ok(Layer { layout, hashes })
    }

    /// The pieces.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The hash of every piece, in order.
    pub fn hashes(&self) -> &[Digest] {
        &self.hashes
    }

    /// Whether `bytes` are piece `index`.
    pub fn checks(&self, index: usize, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.layout.len(index) && self.hashes.get(index) == Some(&piece_hash(&self.layout, bytes))
    }

    /// The hashes as bytes, 20 per piece: how they travel.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.hashes.iter().flat_map(|hash| hash.0).collect()
    }

    /// The hashes of the same file cut into pieces of `to` bytes (no
    /// smaller than this layer's), as they travel, in chunks of at most
    /// `chunk_len` bytes (a multiple of 20): a list of a million hashes is
    /// sent without ever being held whole.
    pub fn coarser_bytes(&self, to: PieceSize, chunk_len: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
        let coarse = Layout::new(self.layout.size, to);
        let span = (coarse.leaves_per_node() / self.layout.leaves_per_node()) as usize;
        let per_chunk = (chunk_len / 20).max(1);
        self.hashes.chunks(span.saturating_mul(per_chunk)).map(move |fine| {
            coarser_layer(&self.layout, fine, to)
                .iter()
                .flat_map(|hash| hash.0)
                .collect()
        })
    }
}

/// Piece hashes from their wire form, 20 bytes each; `None` if the length
/// is not a multiple of 20.
pub fn hashes_from_bytes(bytes: &[u8]) -> Option<Vec<Digest>> {
    if !bytes.len().is_multiple_of(20) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(20)
            .map(|chunk| Digest(chunk.try_into().expect("20 bytes")))
            .collect(),
    )
}

/// Which pieces of a file are held: one bit per piece, first piece in the
/// high bit of the first byte (as BitTorrent draws it).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Bitfield {
    /// The bits, `len` of them used; the rest of the last byte is zero.
    bytes: Vec<u8>,
    /// How many pieces.
    len: usize,
    /// How many bits are set.
    held: usize,
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{}: ", self.held, self.len)?;
        for index in 0..self.len.min(64) {
            f.write_str(if self.has(index) { "1" } else { "0" })?;
        }
        f.write_str(if self.len > 64 { "…)" } else { ")" })
    }
}

/// Why bytes are not a bitfield of a given length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a bitfield of {pieces} pieces takes {expected} bytes; {got} came, or bits past the last piece were set")]
pub struct InvalidBitfield {
    /// How many pieces.
    pub pieces: usize,
    /// Bytes expected.
    pub expected: usize,
    /// Bytes received.
    pub got: usize,
}

impl Bitfield {
    /// No piece of `len` held.
    pub fn empty(len: usize) -> Bitfield {
        Bitfield {
            bytes: vec![0; len.div_ceil(8)],
            len,
            held: 0,
        }
    }

    /// Every piece of `len` held.
    pub fn full(len: usize) -> Bitfield {
        let mut bits = Bitfield::empty(len);
        for index in 0..len {
            bits.set(index);
        }
        bits
    }

    /// A bitfield of `len` pieces from its wire form.
    pub fn from_bytes(len: usize, bytes: Vec<u8>) -> Result<Bitfield, InvalidBitfield> {
        let invalid = InvalidBitfield {
            pieces: len,
            expected: len.div_ceil(8),
            got: bytes.len(),
        };
        if bytes.len() != len.div_ceil(8) {
            return Err(invalid);
        }
        let spare = bytes.len() * 8 - len;
        if spare > 0 && bytes.last().is_some_and(|last| last & ((1u8 << spare) - 1) != 0) {
            return Err(invalid);
        }
        let held = bytes.iter().map(|byte| byte.count_ones() as usize).sum();
        Ok(Bitfield { bytes, len, held })
    }

    /// The wire form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// How many pieces it describes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it describes no pieces at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many pieces are held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Whether every piece is held.
    pub fn is_complete(&self) -> bool {
        self.held == self.len
    }

    /// Whether piece `index` is held (`false` past the end).
    pub fn has(&self, index: usize) -> bool {
        index < self.len && self.bytes[index / 8] & (0x80 >> (index % 8)) != 0
    }

    /// Marks piece `index` held; returns whether it was not before.
    /// Panics past the end.
    pub fn set(&mut self, index: usize) -> bool {
        assert!(index < self.len, "piece {index} of {}", self.len);
        let (byte, bit) = (index / 8, 0x80u8 >> (index % 8));
        let fresh = self.bytes[byte] & bit == 0;
        self.bytes[byte] |= bit;
        self.held += fresh as usize;
        fresh
    }

    /// Marks piece `index` missing; returns whether it was held.
    pub fn clear(&mut self, index: usize) -> bool {
        if !self.has(index) {
            return false;
        }
        self.bytes[index / 8] &= !(0x80u8 >> (index % 8));
        self.held -= 1;
        true
    }

    /// The pieces held, in order.
    pub fn iter_held(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|index| self.has(*index))
    }

    /// The pieces missing, in order.
    pub fn iter_missing(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(|index| !self.has(*index))
    }

    /// This bitfield of pieces of `own`, seen in the pieces of `wanted`: a
    /// wanted piece is held when every byte of it lies in held pieces of
    /// `own`. Both layouts are of the same file.
    pub fn covering(&self, own: &Layout, wanted: &Layout) -> Bitfield {
        let mut seen = Bitfield::empty(wanted.count());
        for index in 0..wanted.count() {
            if self.covers(own, wanted.range(index)) {
                seen.set(index);
            }
        }
        seen
    }

    /// Whether every byte of `bytes` lies in held pieces of `own`.
    pub fn covers(&self, own: &Layout, bytes: Range<u64>) -> bool {
        own.overlapping(bytes).all(|index| self.has(index))
    }

    /// The pieces of `wanted` that the gain of piece `gained` of `own` makes
    /// held (in `wanted`'s terms), given this bitfield, which includes it.
    pub fn newly_covered(&self, own: &Layout, gained: usize, wanted: &Layout) -> Vec<usize> {
        wanted
            .overlapping(own.range(gained))
            .filter(|index| self.covers(own, wanted.range(*index)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn piece(bytes: u64) -> PieceSize {
        PieceSize::new(bytes).unwrap()
    }

    /// `len` bytes that differ from leaf to leaf.
    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 16384) as u8).collect()
    }

    #[test]
    fn piece_sizes_are_powers_of_two_from_a_leaf_to_sixteen_mebibytes() {
        for good in [16 * KIB, 32 * KIB, 256 * KIB, 16 * KIB * KIB] {
            assert_eq!(PieceSize::new(good).unwrap().bytes(), good);
        }
        for bad in [0, 1, 8 * KIB, 48 * KIB, 32 * KIB * KIB, u64::MAX] {
            assert_eq!(PieceSize::new(bad), Err(InvalidPieceSize(bad)));
        }
        assert_eq!(PieceSize::DEFAULT.height(), 4);
        assert_eq!(PieceSize::DEFAULT.to_string(), "256 KiB");
    }

    #[test]
    fn a_huge_file_gets_bigger_pieces_and_a_claimed_size_past_any_is_refused() {
        const GIB: u64 = KIB * KIB * KIB;
        let piece = |size, asked| PieceSize::for_file(size, asked).map(PieceSize::bytes);
        assert_eq!(piece(256 * GIB, None), Ok(256 * KIB));
        assert_eq!(piece(256 * GIB + 1, None), Ok(512 * KIB));
        assert_eq!(piece(16 * KIB * GIB, None), Ok(16 * KIB * KIB));
        assert_eq!(piece(GIB, Some(PieceSize::SMALLEST)), Ok(16 * KIB));
        // A size no download could keep track of, as a hostile announce
        // may claim: an error, before anything is allocated for it.
        assert!(piece(u64::MAX, None).is_err());
        assert!(piece(32 * GIB, Some(PieceSize::SMALLEST)).is_err());
    }

    #[test]
    fn a_layout_cuts_whole_pieces_and_a_short_last_one() {
        let layout = Layout::new(600 * KIB, PieceSize::DEFAULT);
        assert_eq!(layout.count(), 3);
        assert_eq!(layout.range(0), 0..256 * KIB);
        assert_eq!(layout.range(2), 512 * KIB..600 * KIB);
        assert_eq!(layout.len(2), 88 * KIB);
        assert_eq!(Layout::new(0, PieceSize::DEFAULT).count(), 1);
        assert_eq!(Layout::new(0, PieceSize::DEFAULT).len(0), 0);
        assert_eq!(Layout::new(512 * KIB, PieceSize::DEFAULT).count(), 2);
    }

    #[test]
    fn the_bytes_held_count_the_short_last_piece_as_short() {
        let layout = Layout::new(600 * KIB, PieceSize::DEFAULT);
        let mut held = Bitfield::empty(3);
        assert_eq!(layout.bytes_held(&held), 0);
        held.set(1);
        assert_eq!(layout.bytes_held(&held), 256 * KIB);
        held.set(2);
        assert_eq!(layout.bytes_held(&held), (256 + 88) * KIB);
        assert_eq!(layout.bytes_held(&Bitfield::full(3)), 600 * KIB);
        let empty = Layout::new(0, PieceSize::DEFAULT);
        assert_eq!(empty.bytes_held(&Bitfield::full(1)), 0);
    }

    #[test]
    fn every_piece_size_folds_up_to_the_same_root() {
        for len in [0, 1, 16_384, 16_385, 100_000, 256 * 1024, 600_000, 1_048_576 + 3] {
            let bytes = content(len);
            let tree = Tree::of(&bytes);
            for size in [16 * KIB, 32 * KIB, 64 * KIB, 256 * KIB, 1024 * KIB] {
                let layout = Layout::new(len as u64, piece(size));
                let layer = tree.layer(piece(size));
                assert_eq!(layer.len(), layout.count(), "{len} bytes, {size}-byte pieces");
                assert_eq!(
                    root_of_layer(&layout, &layer),
                    tree.root(),
                    "{len} bytes, {size}-byte pieces"
                );
                for (index, hash) in layer.iter().enumerate() {
                    let range = layout.range(index);
                    let bytes = &bytes[range.start as usize..range.end as usize];
                    assert_eq!(
                        piece_hash(&layout, bytes),
                        *hash,
                        "{len} bytes, piece {index} of {size}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_fine_layer_folds_into_every_coarser_one() {
        for len in [1, 40_000, 600_000, 2_000_000] {
            let tree = Tree::of(&content(len));
            let fine = Layout::new(len as u64, PieceSize::SMALLEST);
            let hashes = tree.layer(fine.piece);
            for size in [16 * KIB, 64 * KIB, 256 * KIB, 4096 * KIB] {
                assert_eq!(
                    coarser_layer(&fine, &hashes, piece(size)),
                    tree.layer(piece(size)),
                    "{len} bytes into {size}-byte pieces"
                );
            }
        }
        // The same, in the wire's chunks, never whole.
        for len in [1, 40_000, 600_000, 2_000_000] {
            let tree = Tree::of(&content(len));
            let fine = tree.piece_layer(PieceSize::SMALLEST);
            for size in [16 * KIB, 64 * KIB, 4096 * KIB] {
                let whole: Vec<u8> = tree.layer(piece(size)).iter().flat_map(|hash| hash.0).collect();
                for chunk_len in [20, 60, 64 * 1024] {
                    let chunks: Vec<Vec<u8>> = fine.coarser_bytes(piece(size), chunk_len).collect();
                    assert!(
                        chunks.iter().all(|chunk| chunk.len() <= chunk_len),
                        "{len} in chunks of {chunk_len}"
                    );
                    assert_eq!(
                        chunks.concat(),
                        whole,
                        "{len} bytes into {size}-byte pieces, chunks of {chunk_len}"
                    );
                }
            }
        }
        assert_eq!(remembered_piece_size(1 << 30), PieceSize::DEFAULT);
        assert_eq!(remembered_piece_size(1 << 20), PieceSize::SMALLEST);
        assert_eq!(remembered_piece_size(64 << 20).bytes(), 16 * KIB);
        assert_eq!(remembered_piece_size(65 << 20).bytes(), 32 * KIB);
    }

    #[test]
    fn the_tree_is_the_same_however_the_bytes_are_fed() {
        let bytes = content(200_000);
        let mut builder = TreeBuilder::new();
        for chunk in bytes.chunks(7_000) {
            builder.update(chunk);
        }
        assert_eq!(builder.finish(), Tree::of(&bytes));
    }

    #[test]
    fn a_layer_is_accepted_only_if_it_adds_up_to_the_root() {
        let bytes = content(700_000);
        let tree = Tree::of(&bytes);
        let layout = Layout::new(700_000, piece(64 * KIB));
        let hashes = tree.layer(layout.piece);
        let layer = Layer::verified(layout, hashes.clone(), tree.root()).unwrap();
        assert!(layer.checks(1, &bytes[65_536..131_072]));
        let mut flipped = bytes[65_536..131_072].to_vec();
        flipped[100] ^= 1;
        assert!(!layer.checks(1, &flipped), "a flipped byte passed");
        assert!(!layer.checks(1, &bytes[65_536..131_071]), "a short piece passed");

        let mut forged = hashes.clone();
        forged[3] = Digest([9; 20]);
        assert_eq!(Layer::verified(layout, forged, tree.root()), Err(LayerError::WrongRoot));
        assert!(matches!(
            Layer::verified(layout, hashes[1..].to_vec(), tree.root()),
            Err(LayerError::WrongCount { .. })
        ));
        assert_eq!(hashes_from_bytes(&layer.to_bytes()).unwrap(), hashes);
        assert!(hashes_from_bytes(&[0; 21]).is_none());
    }

    #[test]
    fn leaves_and_nodes_never_collide() {
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        let mut joined = a.0.to_vec();
        joined.extend_from_slice(&b.0);
        assert_ne!(node_hash(&a, &b), leaf_hash(&joined));
    }

    #[test]
    fn bitfields_count_set_and_travel() {
        let mut bits = Bitfield::empty(10);
        assert!(bits.set(0) && bits.set(9) && !bits.set(9));
        assert_eq!(bits.held(), 2);
        assert_eq!(bits.as_bytes(), &[0x80, 0x40]);
        assert_eq!(bits.iter_held().collect::<Vec<_>>(), [0, 9]);
        assert_eq!(bits.iter_missing().count(), 8);
        let back = Bitfield::from_bytes(10, bits.as_bytes().to_vec()).unwrap();
        assert_eq!(back, bits);
        assert!(Bitfield::from_bytes(10, vec![0]).is_err(), "too short");
        assert!(Bitfield::from_bytes(10, vec![0, 0x20]).is_err(), "a bit past the end");
        assert!(bits.clear(0) && !bits.clear(0));
        assert_eq!(bits.held(), 1);
        assert!(Bitfield::full(10).is_complete());
        assert!(!bits.has(10));
    }

    #[test]
    fn a_bitfield_translates_between_piece_sizes() {
        // 5 pieces of 16 KiB = 2 pieces of 32 KiB and a half (80 KiB).
        let small = Layout::new(80 * KIB, piece(16 * KIB));
        let large = Layout::new(80 * KIB, piece(32 * KIB));
        let mut held = Bitfield::empty(5);
        held.set(0);
        held.set(2);
        held.set(3);
        held.set(4);
        let seen = held.covering(&small, &large);
        assert_eq!(seen.iter_held().collect::<Vec<_>>(), [1, 2]);
        // Large pieces seen as small ones: each covers two.
        let mut large_held = Bitfield::empty(3);
        large_held.set(1);
        assert_eq!(
            large_held.covering(&large, &small).iter_held().collect::<Vec<_>>(),
            [2, 3]
        );
        // Gaining small piece 1 completes large piece 0.
        held.set(1);
        assert_eq!(held.newly_covered(&small, 1, &large), [0]);
        assert_eq!(held.newly_covered(&small, 1, &small), [1]);
    }
}

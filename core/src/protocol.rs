//! The wire protocol: message types and their encoding, free of I/O.
//!
//! Every message travels in one frame: a 4-byte big-endian length, then that
//! many bytes of JSON (JSON so that a capture of the traffic can be read by a
//! human; control messages are tiny, the file bytes are not JSON). A frame is
//! at most [`MAX_FRAME_LEN`] bytes, checked before anything is buffered.
//!
//! A file's bytes are the one thing not framed: a peer answers
//! [`PeerRequest::Get`] with a [`PeerReply::File`] header giving the size and
//! SHA-1, then exactly that many raw bytes. The receiver knows where the file
//! ends from the header, so no end marker is ever needed.
//!
//! The conversation of one download:
//!
//! ```text
//! downloader -> tracker   Lookup { file }          tracker -> downloader  Peer { peer, addr, info } | NoPeer
//! downloader -> peer      Get { file }             peer -> downloader     File { info } + info.size raw bytes
//! downloader -> peer      Received { sha1 }        peer closes the connection
//! downloader -> tracker   Announce { file, info }  tracker -> downloader  Ack
//! ```
//!
//! When the bytes do not hash to the tracker's record, the downloader still
//! sends `Received` with the SHA-1 it computed, and waits for the close. The
//! holder, seeing another SHA-1 than the one it served, hashes its own copy
//! again; only if that copy no longer matches what it announced does it
//! withdraw it (`Withdraw { file, sha1, reason }`). The downloader then
//! reports the holder (`Report`), which only stops the tracker offering that
//! holder *to that downloader*, and looks up again (`Lookup { file,
//! failover: true }`). Nobody but the holder itself can unlist its copy.
//!
//! A swarm download (pieces from several peers at once, see
//! [`crate::pieces`]) opens one connection to each peer it draws from:
//!
//! ```text
//! downloader -> tracker   Swarm { file, fresh }    tracker -> downloader  Swarm { info, root, peers } | NoPeer
//! downloader -> peer      Join { file, sha1, piece_size }
//!                                                  peer -> downloader     Joined { pieces } + bitfield bytes
//! downloader -> peer      Layer                    peer -> downloader     Layer { pieces } + 20 bytes a piece
//! downloader -> peer      Piece { index } (several in flight)
//!                                                  peer -> downloader     Piece { index } + the piece's bytes
//!                                                  peer -> downloader     Have { index } (whenever it gains one)
//! downloader -> peer      Cancel { index }         (endgame: it came from elsewhere)
//! downloader -> peer      BadPiece { index }       peer -> downloader     Checked, then it closes
//! ```
//!
//! Bitfields, layers and pieces are raw bytes after their header frame, as
//! a whole file is: they can be larger than a frame.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

/// The largest frame either side accepts or sends, in bytes.
///
/// Control messages are well under 1 KiB, and no message grows with the
/// state of a download (the holders a downloader gave up on are kept by the
/// tracker, not listed in each lookup); the largest is a status part of
/// [`STATUS_HOLDERS_PER_FRAME`] holders. The limit keeps a hostile length
/// prefix from making a server buffer gigabytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// The longest file name, in bytes (the usual file-system limit).
pub const MAX_FILE_NAME_LEN: usize = 255;

/// How many holders one `StatusFile` frame lists at most: well inside a
/// frame even with 20-digit ids.
pub const STATUS_HOLDERS_PER_FRAME: usize = 2000;

/// The suffix of a download in progress. Such files are never listed, served
/// or accepted as names, so a half-written file can never be mistaken for a
/// whole one.
pub const PARTIAL_SUFFIX: &str = ".phile-part";

/// The suffix of a swarm download's partial file, kept across restarts so
/// that an interrupted download resumes. Never listed, served or accepted
/// as a name.
pub const SWARM_PART_SUFFIX: &str = ".phile-swarm";

/// The suffix of the record of which pieces of a swarm download's partial
/// file are verified. Never listed, served or accepted as a name.
pub const PIECES_SUFFIX: &str = ".phile-pieces";

/// The suffixes no file name may end with: phile's own files.
pub const RESERVED_SUFFIXES: [&str; 3] = [PARTIAL_SUFFIX, SWARM_PART_SUFFIX, PIECES_SUFFIX];

/// The most peers one swarm answer of the tracker lists.
pub const SWARM_PEERS_PER_ANSWER: usize = 40;

/// The codec that cuts a byte stream into frames (and back).
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(MAX_FRAME_LEN)
        .new_codec()
}

/// `n` and `noun`, plural unless `n` is 1: "1 peer", "3 peers".
pub fn count(n: impl TryInto<u64>, noun: &str) -> String {
    match n.try_into().unwrap_or(u64::MAX) {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

/// Text from the network (a refusal's reason, a file name) made safe to
/// print on a terminal or write to a log: control characters (ESC,
/// newline, C1 codes) and the invisible characters that reorder or hide
/// text (bidirectional controls, zero-width characters) become `\u{...}`
/// escapes. Plain text comes back as it is, and so does text made
/// printable already: a message that quotes an escaped reason can go
/// through again without its escapes being escaped.
pub fn printable(text: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c,
                '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
    };
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            c if hidden(c) => escaped.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Serialises a message into the payload of one frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, ProtocolError> {
    let payload = serde_json::to_vec(message).map_err(ProtocolError::Encode)?;
    if payload.len() > MAX_FRAME_LEN {
        return Err(ProtocolError::TooLarge(payload.len()));
    }
    Ok(payload.into())
}

/// Parses the payload of one frame into a message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload).map_err(ProtocolError::Malformed)
}

/// Why a frame could not be turned into a message, or a message into a frame.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The payload is not a message this side understands.
    #[error("malformed message: {0}")]
    Malformed(#[source] serde_json::Error),
    /// A message could not be serialised (a bug, not bad input).
    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),
    /// A message would not fit in one frame.
    #[error("message of {0} bytes exceeds the {MAX_FRAME_LEN}-byte frame limit")]
    TooLarge(usize),
}

/// A client's identity: the integer a scenario gives it (`client(10000)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A file name that is safe to join to a client's folder, and to print: one
/// plain path component, never a path, and no control character (a name is
/// shown in terminals and logs, where ESC or a newline would let a remote
/// peer rewrite the screen or forge log lines).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FileName(String);

impl FileName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl TryFrom<String> for FileName {
    type Error = InvalidFileName;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        if name.is_empty() {
            return Err(InvalidFileName::Empty);
        }
        if name.len() > MAX_FILE_NAME_LEN {
            return Err(InvalidFileName::TooLong(name.len()));
        }
        if name == "." || name == ".." {
            return Err(InvalidFileName::Dots(name));
        }
        if let Some(c) = name.chars().find(|c| matches!(c, '/' | '\\' | '\0')) {
            return Err(InvalidFileName::Forbidden(name, c));
        }
        if let Some(c) = name.chars().find(|c| c.is_control()) {
            return Err(InvalidFileName::Control(name, c));
        }
        if RESERVED_SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
            return Err(InvalidFileName::Reserved(name));
        }
        Ok(FileName(name))
    }
}

impl FromStr for FileName {
    type Err = InvalidFileName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        name.to_owned().try_into()
    }
}

impl From<FileName> for String {
    fn from(name: FileName) -> String {
        name.0
    }
}

/// Why a string is not a valid [`FileName`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFileName {
    /// The empty string.
    #[error("invalid file name \"\": a file name cannot be empty")]
    Empty,
    /// Longer than [`MAX_FILE_NAME_LEN`] bytes.
    #[error("invalid file name: {0} bytes long, the limit is {MAX_FILE_NAME_LEN}")]
    TooLong(usize),
    /// `.` or `..`, which name folders, not files.
    #[error("invalid file name {0:?}: `.` and `..` name folders, not files")]
    Dots(String),
    /// Contains a path separator or NUL.
    #[error("invalid file name {0:?}: it contains {1:?}; a file name is one plain name, not a path")]
    Forbidden(String, char),
    /// Contains a control character (newline, tab, ESC, DEL, C1 codes).
    #[error(
        "invalid file name {0:?}: it contains the control character {1:?}; file names cannot hold control characters"
    )]
    Control(String, char),
    /// Ends with a suffix reserved for downloads in progress.
    #[error(
        "invalid file name {0:?}: names ending in {PARTIAL_SUFFIX:?}, {SWARM_PART_SUFFIX:?} or {PIECES_SUFFIX:?} are reserved for downloads in progress"
    )]
    Reserved(String),
}

/// A SHA-1 digest; written as 40 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(pub [u8; 20]);

impl Digest {
    /// The SHA-1 of `bytes`.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha1::Digest as _;
        Digest(sha1::Sha1::digest(bytes).into())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl TryFrom<String> for Digest {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let mut digest = [0u8; 20];
        hex::decode_to_slice(&text, &mut digest)
            .map_err(|_| format!("invalid SHA-1 {text:?}: expected 40 hex digits"))?;
        Ok(Digest(digest))
    }
}

impl From<Digest> for String {
    fn from(digest: Digest) -> String {
        digest.to_string()
    }
}

/// What identifies a file's content: its size and SHA-1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileInfo {
    /// Size in bytes.
    pub size: u64,
    /// SHA-1 of the whole content.
    pub sha1: Digest,
}

/// Where a request stands in the operation that caused it.
///
/// A scenario numbers its operations (`op`) in script order, and each request
/// an operation makes gets the next `step`. Servers copy the trace of the
/// request into the events it causes, so a log can order events by cause
/// rather than by arrival, and the logs of a tracker and its peers can be
/// joined on it. `Trace::default()` (op 0) means "not part of an operation".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Trace {
    /// The operation's number.
    pub op: u64,
    /// The step within the operation.
    pub step: u32,
}

impl Trace {
    /// The first step of operation `op`.
    pub fn new(op: u64) -> Trace {
        Trace { op, step: 0 }
    }

    /// Returns this step and moves `self` on to the next one.
    pub fn advance(&mut self) -> Trace {
        let current = *self;
        self.step += 1;
        current
    }
}

/// A request together with the trace of the operation that makes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request<T> {
    /// The place of this request in its operation.
    #[serde(default)]
    pub trace: Trace,
    /// What is asked.
    pub body: T,
}

/// What a client asks of the tracker, over its session connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrackerRequest {
    /// Opens the session: "I am `client`, my peer server listens on `port`".
    /// The tracker reaches the peer at the session's source address with that
    /// port, unless `advertise` gives a full address.
    Register {
        /// Who registers.
        client: ClientId,
        /// The port of the client's peer server.
        port: u16,
        /// An address to give out instead (behind NAT, or several interfaces).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        advertise: Option<SocketAddr>,
    },
    /// "I hold `file`, with this content".
    Announce {
        /// The file held.
        file: FileName,
        /// Its size and SHA-1.
        info: FileInfo,
        /// The root of its hash tree ([`crate::pieces`]): what swarm
        /// downloads check pieces against. Recorded with the size and
        /// SHA-1 at the first announce, and part of the content: a later
        /// announce must match it.
        root: Digest,
    },
    /// "Who holds `file`?" The answer never names the asker, nor a holder
    /// the asker reported (`Report`) during this download.
    Lookup {
        /// The file wanted.
        file: FileName,
        /// Whether this lookup goes on with a download that gave up on a
        /// holder (failover). Without it, a new download begins: the
        /// tracker forgets the asker's reports about `file`, so a holder
        /// whose trouble was passing gets a fresh chance.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        failover: bool,
    },
    /// "I am downloading `file` in pieces": the tracker records the asker
    /// as a member of the file's swarm (offered to other swarm downloads,
    /// never to whole-file ones) until it announces the whole file,
    /// withdraws it or goes, and answers with up to
    /// [`SWARM_PEERS_PER_ANSWER`] other members and holders, chosen at
    /// random, never the asker nor a peer it reported during this
    /// download.
    Swarm {
        /// The file wanted.
        file: FileName,
        /// Whether a new download begins (the first ask of a download):
        /// the tracker then forgets the asker's reports about `file`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        fresh: bool,
    },
    /// "I am leaving": the tracker forgets the client and what it held, and
    /// the client closes the session after the `Ack`.
    Leave,
    /// "`peer` did not deliver version `sha1` of `file`": the tracker no
    /// longer offers `peer` for that version *to the reporter*, until the
    /// reporter begins a new download of `file`. It never affects what
    /// anyone else is offered: a report is a claim, not a proof.
    Report {
        /// The file.
        file: FileName,
        /// The holder that failed.
        peer: ClientId,
        /// The SHA-1 the reporter expected (the tracker's record when it
        /// looked up): a report about another version than the one
        /// recorded now is stale, and ignored.
        sha1: Digest,
        /// What went wrong.
        problem: Problem,
    },
    /// "I no longer hold `file`" (deleted, changed in place, or found bad).
    Withdraw {
        /// The file.
        file: FileName,
        /// The version withdrawn: when given, the holding is dropped only
        /// while the tracker records this SHA-1 for `file`, so a late
        /// withdrawal never removes a version announced after it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha1: Option<Digest>,
        /// Why, when the holder found its own copy bad (`wrong_size`,
        /// `wrong_content`): the tracker reports that it dropped the copy.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<Problem>,
    },
    /// A heartbeat: "still here". Keeps a quiet session alive.
    Ping,
    /// "What do you know?" Allowed without registering. The answer is a
    /// stream: `StatusClient`s, `StatusFile`s, then `StatusEnd`.
    Status,
}

/// What a downloader found wrong with a holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// No connection could be made.
    Unreachable,
    /// The connection broke before the whole file arrived (before the
    /// answer, too).
    Cut,
    /// Nothing arrived for the whole idle timeout.
    Stalled,
    /// The peer did not start answering within the first-byte timeout.
    Unresponsive,
    /// The peer answered the request with a refusal.
    Refused,
    /// The peer sent something that is not the protocol.
    Garbled,
    /// The peer offered a size other than the tracker's record.
    WrongSize,
    /// The bytes did not hash to the tracker's record.
    WrongContent,
    /// A piece did not hash to its entry in the file's hash tree.
    WrongPiece,
}

impl Problem {
    /// What the holder did, as a stable phrase: "10000 cut the connection
    /// mid-transfer". No byte counts or addresses, so logs repeat.
    pub fn describe(self) -> &'static str {
        match self {
            Problem::Unreachable => "could not be reached",
            Problem::Cut => "cut the connection mid-transfer",
            Problem::Stalled => "stalled past the idle timeout",
            Problem::Unresponsive => "did not start sending in time",
            Problem::Refused => "refused to send the file",
            Problem::Garbled => "answered with garbage",
            Problem::WrongSize => "offered the wrong size",
            Problem::WrongContent => "sent content with the wrong SHA-1",
            Problem::WrongPiece => "sent a piece that failed its hash",
        }
    }

    /// Whether the holder's copy itself is bad (not just the connection):
    /// the reasons a holder gives when it withdraws a copy it found bad.
    pub fn is_bad_copy(self) -> bool {
        matches!(self, Problem::WrongSize | Problem::WrongContent)
    }
}

/// The tracker's answer to a [`TrackerRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrackerReply {
    /// Done (the seed's `ACK`).
    Ack,
    /// One holder, chosen at random, and the content it must deliver.
    Peer {
        /// The holder.
        peer: ClientId,
        /// Where its peer server listens.
        addr: SocketAddr,
        /// The size and SHA-1 the tracker recorded for the file.
        info: FileInfo,
        /// The root of the file's hash tree the tracker recorded.
        root: Digest,
    },
    /// The answer to a [`TrackerRequest::Swarm`]: what the file must be,
    /// and peers to draw pieces from.
    Swarm {
        /// The size and SHA-1 the tracker recorded for the file.
        info: FileInfo,
        /// The root of the file's hash tree the tracker recorded.
        root: Digest,
        /// Other members of the swarm (at most [`SWARM_PEERS_PER_ANSWER`]).
        peers: Vec<SwarmPeer>,
    },
    /// Nobody (else) holds the file.
    NoPeer,
    /// The request was understood and refused; `reason` says why.
    Refused {
        /// A sentence for the user.
        reason: String,
    },
    /// Part of a status answer: one registered client.
    StatusClient {
        /// The client.
        client: ClientId,
        /// Where its peer server listens.
        addr: SocketAddr,
        /// How many files it holds.
        files: u64,
    },
    /// Part of a status answer: one file and (some of) its holders. A file
    /// with very many holders comes in several consecutive parts, each of
    /// at most [`STATUS_HOLDERS_PER_FRAME`] holders.
    StatusFile {
        /// The file.
        file: FileName,
        /// Its recorded size and SHA-1.
        info: FileInfo,
        /// Holders, in id order.
        holders: Vec<ClientId>,
    },
    /// The end of a status answer.
    StatusEnd,
}

/// A peer a swarm answer names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwarmPeer {
    /// The peer.
    pub peer: ClientId,
    /// Where its peer server listens.
    pub addr: SocketAddr,
    /// Whether it announced the whole file (else it is downloading it).
    pub complete: bool,
}

/// What a downloader asks of a peer: `Get` or `Join` opens a connection,
/// and the other requests follow a `Join` on the same connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerRequest {
    /// "Send me `file`", from `client`.
    Get {
        /// The file wanted.
        file: FileName,
        /// Who asks (for the peer's records).
        client: ClientId,
    },
    /// "I have all the bytes and their SHA-1 is `sha1`": the downloader
    /// confirms a transfer, verified or not; the peer then closes the
    /// connection. A SHA-1 other than the one the peer served tells it that
    /// its copy may be bad: it checks its copy again before closing.
    Received {
        /// The SHA-1 the downloader computed.
        sha1: Digest,
    },
    /// "Let us trade pieces of version `sha1` of `file`, cut into pieces
    /// of `piece_size` bytes": opens a swarm conversation. The peer
    /// answers with the pieces it holds ([`PeerReply::Joined`]), in
    /// pieces of that size whatever size it downloads in itself.
    Join {
        /// The file.
        file: FileName,
        /// Who asks.
        client: ClientId,
        /// The version (the tracker's record).
        sha1: Digest,
        /// The piece size of the conversation, in bytes.
        piece_size: u64,
    },
    /// "Send me the piece hashes" (for the conversation's piece size).
    Layer,
    /// "Send me piece `index`." Several may be in flight; they are
    /// answered in order.
    Piece {
        /// The piece.
        index: u64,
    },
    /// "Never mind piece `index`": it came from another peer. Also sent
    /// for a piece only shown, never asked for, so that a peer showing a
    /// piece at a time (super-seeding) shows another.
    Cancel {
        /// The piece.
        index: u64,
    },
    /// "Piece `index` you sent failed its hash": the peer checks its own
    /// copy, answers [`PeerReply::Checked`] and closes the connection; the
    /// downloader asks it nothing more.
    BadPiece {
        /// The piece.
        index: u64,
    },
}

/// A peer's answer to a [`PeerRequest`]: `File` (or `Refused`) to a
/// `Get`; `Joined`, then `Layer`, `Piece`, `Have`, `Missing` and `Checked`
/// in a swarm conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PeerReply {
    /// Exactly `info.size` raw bytes of the file follow this frame.
    File {
        /// The size and SHA-1 of what follows, as the peer believes them.
        info: FileInfo,
    },
    /// The peer will not send the file; `reason` says why.
    Refused {
        /// A sentence for the user.
        reason: String,
    },
    /// The answer to a [`PeerRequest::Join`]: a bitfield of `pieces` bits
    /// (one a piece held, the first piece in the high bit) follows, as
    /// `pieces.div_ceil(8)` raw bytes.
    Joined {
        /// How many pieces the file has.
        pieces: u64,
    },
    /// The answer to [`PeerRequest::Layer`]: the hash of every piece
    /// follows, `pieces` × 20 raw bytes.
    Layer {
        /// How many pieces the file has.
        pieces: u64,
    },
    /// Piece `index` follows, as raw bytes (its length is the layout's).
    Piece {
        /// The piece.
        index: u64,
    },
    /// The peer does not hold piece `index` (any more).
    Missing {
        /// The piece.
        index: u64,
    },
    /// The peer gained piece `index` (pushed, between answers).
    Have {
        /// The piece.
        index: u64,
    },
    /// The peer checked its copy after a [`PeerRequest::BadPiece`]; it
    /// closes the connection next.
    Checked,
}

/// Serde for maps keyed by client id (bytes per peer of a swarm download):
/// JSON writes the keys as strings, and a map read back through a buffer
/// (an internally tagged enum, such as an event or a reply between
/// processes) no longer knows they were numbers, so they are parsed here.
pub mod client_keys {
    use std::collections::BTreeMap;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::ClientId;

    /// The map as JSON writes it: string keys.
    pub fn serialize<S: Serializer>(map: &BTreeMap<ClientId, u64>, serializer: S) -> Result<S::Ok, S::Error> {
        map.serialize(serializer)
    }

    /// The map, its keys parsed.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<ClientId, u64>, D::Error> {
        let raw = BTreeMap::<String, u64>::deserialize(deserializer)?;
        raw.into_iter()
            .map(|(key, bytes)| match key.parse() {
                Ok(id) => Ok((ClientId(id), bytes)),
                Err(_) => Err(D::Error::custom(format!("{key:?} is not a client id"))),
            })
            .collect()
    }

    /// [`serialize`] and [`deserialize`] for an optional map.
    pub mod option {
        use std::collections::BTreeMap;

        use serde::{Deserialize, Deserializer, Serialize, Serializer};

        use super::ClientId;

        /// The map, if any, as JSON writes it.
        pub fn serialize<S: Serializer>(
            map: &Option<BTreeMap<ClientId, u64>>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            map.serialize(serializer)
        }

        /// The map, if any, its keys parsed.
        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<BTreeMap<ClientId, u64>>, D::Error> {
            #[derive(Deserialize)]
            struct Keys(#[serde(with = "super")] BTreeMap<ClientId, u64>);
            Ok(Option::<Keys>::deserialize(deserializer)?.map(|Keys(map)| map))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use tokio_util::codec::{Decoder, Encoder};

    fn info() -> FileInfo {
        FileInfo {
            size: 5,
            sha1: Digest::of(b"hello"),
        }
    }

    fn file(name: &str) -> FileName {
        name.parse().unwrap()
    }

    /// One sample of every message kind, by direction.
    struct Samples {
        tracker_requests: Vec<Request<TrackerRequest>>,
        tracker_replies: Vec<TrackerReply>,
        peer_requests: Vec<Request<PeerRequest>>,
        peer_replies: Vec<PeerReply>,
    }

    fn every_message() -> Samples {
        let trace = Trace { op: 7, step: 2 };
        let tracker_requests = [
            TrackerRequest::Register {
                client: ClientId(10000),
                port: 10000,
                advertise: None,
            },
            TrackerRequest::Register {
                client: ClientId(1),
                port: 1,
                advertise: Some("10.0.0.2:9000".parse().unwrap()),
            },
            TrackerRequest::Announce {
                file: file("test1.txt"),
                info: info(),
                root: Digest([7; 20]),
            },
            TrackerRequest::Swarm {
                file: file("big.iso"),
                fresh: true,
            },
            TrackerRequest::Swarm {
                file: file("big.iso"),
                fresh: false,
            },
            TrackerRequest::Lookup {
                file: file("test1.txt"),
                failover: false,
            },
            TrackerRequest::Lookup {
                file: file("é ü.txt"),
                failover: true,
            },
            TrackerRequest::Leave,
            TrackerRequest::Report {
                file: file("a"),
                peer: ClientId(3),
                sha1: info().sha1,
                problem: Problem::WrongContent,
            },
            TrackerRequest::Ping,
            TrackerRequest::Withdraw {
                file: file("gone.txt"),
                sha1: None,
                reason: None,
            },
            TrackerRequest::Withdraw {
                file: file("bad.txt"),
                sha1: Some(info().sha1),
                reason: Some(Problem::WrongContent),
            },
            TrackerRequest::Status,
        ]
        .into_iter()
        .map(|body| Request { trace, body })
        .collect();
        let tracker_replies = vec![
            TrackerReply::Ack,
            TrackerReply::Peer {
                peer: ClientId(10000),
                addr: "127.0.0.1:10000".parse().unwrap(),
                info: info(),
                root: Digest([7; 20]),
            },
            TrackerReply::Swarm {
                info: info(),
                root: Digest([7; 20]),
                peers: vec![SwarmPeer {
                    peer: ClientId(10001),
                    addr: "127.0.0.1:10001".parse().unwrap(),
                    complete: false,
                }],
            },
            TrackerReply::NoPeer,
            TrackerReply::Refused { reason: "no".into() },
            TrackerReply::StatusClient {
                client: ClientId(1),
                addr: "127.0.0.1:1".parse().unwrap(),
                files: 2,
            },
            TrackerReply::StatusFile {
                file: file("a"),
                info: info(),
                holders: vec![ClientId(1), ClientId(2)],
            },
            TrackerReply::StatusEnd,
        ];
        let peer_requests = [
            PeerRequest::Get {
                file: file("test1.txt"),
                client: ClientId(10002),
            },
            PeerRequest::Received { sha1: info().sha1 },
            PeerRequest::Join {
                file: file("big.iso"),
                client: ClientId(10002),
                sha1: info().sha1,
                piece_size: 262_144,
            },
            PeerRequest::Layer,
            PeerRequest::Piece { index: 3 },
            PeerRequest::Cancel { index: 3 },
            PeerRequest::BadPiece { index: 4 },
        ]
        .into_iter()
        .map(|body| Request { trace, body })
        .collect();
        let peer_replies = vec![
            PeerReply::File { info: info() },
            PeerReply::Refused { reason: "gone".into() },
            PeerReply::Joined { pieces: 64 },
            PeerReply::Layer { pieces: 64 },
            PeerReply::Piece { index: 3 },
            PeerReply::Missing { index: 3 },
            PeerReply::Have { index: 9 },
            PeerReply::Checked,
        ];
        Samples {
            tracker_requests,
            tracker_replies,
            peer_requests,
            peer_replies,
        }
    }

    /// Encodes `message` into a complete frame, length prefix included.
    fn frame<T: Serialize>(message: &T) -> BytesMut {
        let mut wire = BytesMut::new();
        frame_codec().encode(encode(message).unwrap(), &mut wire).unwrap();
        wire
    }

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(messages: &[T]) {
        for message in messages {
            let mut wire = frame(message);
            let payload = frame_codec().decode(&mut wire).unwrap().expect("a whole frame");
            assert_eq!(&decode::<T>(&payload).unwrap(), message);
            assert!(wire.is_empty(), "the frame was not consumed whole");
        }
    }

    #[test]
    fn bytes_per_peer_survive_a_round_trip_inside_a_tagged_event() {
        // Events and replies cross between processes as internally tagged
        // JSON, which reads a map through a buffer: the keys must still
        // come back as client ids.
        let sources: std::collections::BTreeMap<ClientId, u64> = [(ClientId(7), 5), (ClientId(22002), 9)].into();
        let event = crate::events::Event::DownloadFinished {
            file: "f".parse().unwrap(),
            from: None,
            bytes: 14,
            sha1: Digest([0; 20]),
            swarm: true,
            sources: Some(sources.clone()),
        };
        let json = serde_json::to_string(&event).unwrap();
        assert!(json.contains(r#""sources":{"7":5,"22002":9}"#), "{json}");
        assert_eq!(serde_json::from_str::<crate::events::Event>(&json).unwrap(), event);
        let swarmed = crate::client::Swarmed {
            sources,
            resumed: 0,
            piece_size: 16384,
        };
        let wrapped = serde_json::json!({ "type": "x", "swarm": swarmed });
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Tagged {
            X { swarm: crate::client::Swarmed },
        }
        let Tagged::X { swarm } = serde_json::from_value(wrapped).unwrap();
        assert_eq!(swarm, swarmed);
    }

    #[test]
    fn every_message_survives_a_round_trip() {
        let samples = every_message();
        round_trip(&samples.tracker_requests);
        round_trip(&samples.tracker_replies);
        round_trip(&samples.peer_requests);
        round_trip(&samples.peer_replies);
    }

    #[test]
    fn every_truncation_of_a_frame_is_incomplete_not_an_error() {
        for request in &every_message().tracker_requests {
            let whole = frame(request);
            for cut in 0..whole.len() {
                let mut partial = BytesMut::from(&whole[..cut]);
                assert!(
                    frame_codec().decode(&mut partial).unwrap().is_none(),
                    "{cut} of {} bytes decoded as a frame",
                    whole.len()
                );
            }
        }
    }

    #[test]
    fn an_oversized_length_prefix_is_refused_before_buffering() {
        let mut wire = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, b'{'][..]);
        assert!(frame_codec().decode(&mut wire).is_err());
    }

    #[test]
    fn a_message_too_large_for_a_frame_is_refused() {
        let holders = (0..20_000).map(ClientId).collect();
        let reply = TrackerReply::StatusFile {
            file: file("x"),
            info: info(),
            holders,
        };
        assert!(matches!(encode(&reply), Err(ProtocolError::TooLarge(_))));
    }

    #[test]
    fn a_full_swarm_answer_fits_a_frame() {
        let peer = SwarmPeer {
            peer: ClientId(u64::MAX),
            addr: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().unwrap(),
            complete: false,
        };
        let reply = TrackerReply::Swarm {
            info: info(),
            root: Digest([0xff; 20]),
            peers: vec![peer; SWARM_PEERS_PER_ANSWER],
        };
        assert!(encode(&reply).unwrap().len() < MAX_FRAME_LEN / 8);
    }

    #[test]
    fn a_full_status_part_fits_a_frame() {
        let reply = TrackerReply::StatusFile {
            file: file(&"n".repeat(MAX_FILE_NAME_LEN)),
            info: info(),
            holders: vec![ClientId(u64::MAX); STATUS_HOLDERS_PER_FRAME],
        };
        assert!(encode(&reply).is_ok());
    }

    #[test]
    fn malformed_payloads_are_errors() {
        for payload in [
            &b""[..],
            b"{",
            b"\xff\xfe",
            b"{\"type\":\"teleport\"}",
            b"{\"type\":\"get\",\"file\":\"../x\",\"client\":1}",
        ] {
            assert!(decode::<PeerRequest>(payload).is_err(), "{payload:?} was accepted");
        }
    }

    #[test]
    fn the_wire_form_is_readable_json() {
        let request = Request {
            trace: Trace { op: 3, step: 1 },
            body: TrackerRequest::Lookup {
                file: file("a.txt"),
                failover: false,
            },
        };
        assert_eq!(
            std::str::from_utf8(&encode(&request).unwrap()).unwrap(),
            r#"{"trace":{"op":3,"step":1},"body":{"type":"lookup","file":"a.txt"}}"#
        );
    }

    #[test]
    fn file_names_are_single_plain_names() {
        for good in ["test1.txt", ".hidden", "a b", "…", "x..y", &"n".repeat(255)] {
            assert!(good.parse::<FileName>().is_ok(), "{good:?} was refused");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "/etc/passwd",
            "a\\b",
            "a\0b",
            "a\nb",
            "tab\there",
            "\u{1b}]0;pwned\u{7}",
            "del\u{7f}",
            "c1\u{9b}31m",
            "x.phile-part",
            "x.phile-swarm",
            "x.phile-pieces",
            &"n".repeat(256),
        ] {
            assert!(bad.parse::<FileName>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn a_refused_name_is_quoted_with_its_control_characters_escaped() {
        let error = "\u{1b}[2Jx\ny".parse::<FileName>().unwrap_err();
        assert!(matches!(error, InvalidFileName::Control(_, '\u{1b}')), "{error:?}");
        let message = error.to_string();
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(message.contains(r"\u{1b}[2Jx\ny"), "{message}");
    }

    #[test]
    fn remote_text_is_made_printable() {
        assert!(matches!(printable("plain name.txt"), Cow::Borrowed("plain name.txt")));
        assert_eq!(printable("a\u{1b}]0;x\u{7}b"), r"a\u{1b}]0;x\u{7}b");
        assert_eq!(printable("forged\nINFO line"), r"forged\u{a}INFO line");
        assert_eq!(printable("evil\u{202e}txt.exe"), r"evil\u{202e}txt.exe");
        assert_eq!(printable("back\\slash\u{9b}"), r"back\slash\u{9b}");
        let once = printable("a\u{1b}b").into_owned();
        assert_eq!(printable(&once), once, "printable twice escaped its own escapes");
    }

    #[test]
    fn digests_are_lowercase_hex() {
        let digest = Digest::of(b"hello");
        assert_eq!(digest.to_string(), "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d");
        assert_eq!(Digest::try_from(digest.to_string()).unwrap(), digest);
        assert!(Digest::try_from("xyz".to_string()).is_err());
    }

    #[test]
    fn trace_steps_advance() {
        let mut trace = Trace::new(4);
        assert_eq!(trace.advance(), Trace { op: 4, step: 0 });
        assert_eq!(trace.advance(), Trace { op: 4, step: 1 });
        assert_eq!(trace, Trace { op: 4, step: 2 });
    }
}

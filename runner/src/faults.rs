//! Faults a scenario arms on a client's peer server (`kill_after`,
//! `stall_after`), so that a failure strikes at an exact byte of a transfer
//! and the log never flickers.
//!
//! A fault is a wrapper around the streams the peer server accepts, not a
//! branch in the server's send loop: [`FaultyListener`] hands the server
//! `FaultyStream`s, which read the downloader's request to learn which
//! file it wants, and, when a fault is armed for that file, count the body
//! bytes that go out and strike at the armed count. The production path of
//! `phile-core` knows nothing of them.
//!
//! A whole-file transfer (`Get`) has one body, after the `File` header. A
//! swarm conversation (`Join`) has many: the stream follows its frames
//! (`SwarmReplies`), and counts the bytes of the `Piece` bodies only, so a
//! fault strikes at the same byte of the file's pieces whatever else
//! (`Have`s, the piece hashes) went out between them.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};

use phile_core::host::{BoxListener, BoxStream, Listener, Stream};
use phile_core::pieces::{Layout, PieceSize};
use phile_core::protocol::{self, PeerReply, PeerRequest, Request, MAX_FRAME_LEN};
use phile_core::{FileName, Trace};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What happens to the peer when a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The whole client crashes: server stopped, transfers cut, session
    /// dropped without a goodbye.
    Kill,
    /// The transfer stops sending but keeps its connection open, as a hung
    /// peer would; the downloader's idle timeout must notice.
    Stall,
}

impl FaultKind {
    /// The scenario verb that arms it.
    pub fn verb(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill_after",
            FaultKind::Stall => "stall_after",
        }
    }
}

/// One armed fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// The file whose transfer triggers it.
    pub file: FileName,
    /// After how many bytes of that file's body.
    pub after: u64,
}

/// Crashes the node: called with the trace of the transfer it struck in,
/// the file and the bytes sent.
pub type Crash = Box<dyn Fn(Trace, FileName, u64) + Send + Sync>;

/// Keeps a stalled connection open, sending nothing, until the downloader
/// closes it: runs `task` in the background, on the node.
pub type Hold = Box<dyn Fn(Pin<Box<dyn std::future::Future<Output = ()> + Send>>) + Send + Sync>;

/// The size of a file the client holds whole or downloads in a swarm, if
/// it does: it gives the length of a swarm conversation's last piece.
pub type SizeOf = Box<dyn Fn(&FileName) -> Option<u64> + Send + Sync>;

/// The faults armed on one client, and how to crash it.
#[derive(Default)]
pub struct Faults {
    /// Armed and not yet fired, in arming order. A std mutex: never held
    /// across an `.await`.
    armed: Mutex<Vec<Fault>>,
    /// Crashes the client; set once the client is up.
    crash: OnceLock<Crash>,
    /// Holds stalled connections; set once the client is up.
    hold: OnceLock<Hold>,
    /// Sizes of the files held or being downloaded; set once the client is up.
    size_of: OnceLock<SizeOf>,
}

impl Faults {
    /// Arms `fault`: it fires on the next transfer of its file that
    /// reaches its byte count, and never again.
    pub fn arm(&self, fault: Fault) {
        self.armed.lock().expect("faults poisoned").push(fault);
    }

    /// Sets how a `Kill` crashes the client.
    pub fn on_crash(&self, crash: Crash) {
        if self.crash.set(crash).is_err() {
            tracing::warn!("the crash of this client was already set");
        }
    }

    /// Sets how a stalled connection is held after the server lets go.
    pub fn on_hold(&self, hold: Hold) {
        if self.hold.set(hold).is_err() {
            tracing::warn!("the holding of stalled connections was already set");
        }
    }

    /// Sets how the size of a file held (or being downloaded) is found.
    pub fn on_size(&self, size_of: SizeOf) {
        if self.size_of.set(size_of).is_err() {
            tracing::warn!("the sizes of this client's files were already set");
        }
    }

    /// The size of `file`, if the client holds it or downloads it.
    fn size_of(&self, file: &FileName) -> Option<u64> {
        self.size_of.get().and_then(|size_of| size_of(file))
    }

    /// Takes the first fault armed for `file`, if any.
    fn take(&self, file: &FileName) -> Option<Fault> {
        let mut armed = self.armed.lock().expect("faults poisoned");
        let index = armed.iter().position(|fault| &fault.file == file)?;
        Some(armed.remove(index))
    }

    /// Puts back a fault taken for a transfer that never started.
    fn put_back(&self, fault: Fault) {
        self.armed.lock().expect("faults poisoned").insert(0, fault);
    }

    fn crash(&self, trace: Trace, file: FileName, sent: u64) {
        match self.crash.get() {
            Some(crash) => crash(trace, file, sent),
            None => tracing::warn!("a kill fault struck a client that cannot crash"),
        }
    }
}

/// A listener whose connections carry the faults armed on `faults`.
pub struct FaultyListener {
    /// The real listener.
    inner: BoxListener,
    /// The faults of the client that listens.
    faults: Arc<Faults>,
}

impl FaultyListener {
    /// Wraps `inner`.
    pub fn new(inner: BoxListener, faults: Arc<Faults>) -> FaultyListener {
        FaultyListener { inner, faults }
    }
}

impl Listener for FaultyListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxStream, SocketAddr)>> {
        self.inner.poll_accept(cx).map_ok(|(stream, from)| {
            let faulty = FaultyStream {
                inner: Some(stream),
                faults: self.faults.clone(),
                state: State::Listening(Vec::new()),
            };
            (Box::new(faulty) as BoxStream, from)
        })
    }
}

/// An accepted stream that may carry a fault.
struct FaultyStream {
    /// The real stream; handed to the node's background when a stalled
    /// connection is let go by the server.
    inner: Option<BoxStream>,
    /// The faults of the client.
    faults: Arc<Faults>,
    /// Where the transfer stands.
    state: State,
}

/// Where a connection stands, as far as faults go.
enum State {
    /// Reading the downloader's first request (the bytes so far), to learn
    /// which file it wants.
    Listening(Vec<u8>),
    /// A fault is armed on this transfer; the header frame is going out
    /// (the bytes so far).
    Armed {
        fault: Fault,
        trace: Trace,
        header: Vec<u8>,
    },
    /// The body is going out: the fault strikes when `sent` reaches
    /// `strike_at`.
    Counting {
        fault: Fault,
        trace: Trace,
        sent: u64,
        strike_at: u64,
    },
    /// A fault is armed on this swarm conversation: the replies are
    /// followed frame by frame, and the fault strikes when the bytes of
    /// `Piece` bodies sent reach its count.
    Swarming {
        fault: Fault,
        trace: Trace,
        replies: SwarmReplies,
        sent: u64,
    },
    /// A stall struck: nothing more goes out.
    Stalled,
    /// A kill struck: the client is gone.
    Dead,
    /// No fault on this connection.
    Clear,
}

/// Where the replies of a swarm conversation stand: in a header frame, or
/// in the raw body that follows one (a bitfield, the piece hashes, a
/// piece).
struct SwarmReplies {
    /// The file's pieces as the downloader cuts them: the length of each.
    layout: Layout,
    /// The header frame going out, the bytes so far.
    header: Vec<u8>,
    /// Body bytes still to go after the last header.
    body: u64,
    /// Whether that body is a piece's.
    piece: bool,
    /// Whether the conversation turned out to cut the file otherwise than
    /// `layout` does (the client serves another version of it, which it
    /// is downloading): the bodies cannot be followed.
    lost: bool,
}

impl SwarmReplies {
    /// How many of `len` bytes may go out without passing the end of the
    /// header frame or the body going out (so the next header is seen
    /// from its start).
    fn room(&self, len: usize) -> usize {
        if self.body > 0 {
            return len.min(usize::try_from(self.body).unwrap_or(usize::MAX));
        }
        let end = match self.header.get(..4) {
            Some(prefix) => 4 + u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize,
            None => 4,
        };
        len.min(end - self.header.len())
    }

    /// Whether a piece's bytes are going out.
    fn in_piece(&self) -> bool {
        self.body > 0 && self.piece
    }

    /// Accounts for `bytes` that went out (no more than [`Self::room`]
    /// allowed); returns how many were a piece's.
    fn sent(&mut self, bytes: &[u8]) -> u64 {
        let len = bytes.len() as u64;
        if self.body > 0 {
            self.body -= len;
            return if self.piece { len } else { 0 };
        }
        self.header.extend_from_slice(bytes);
        let Some(payload) = whole_frame(&self.header) else {
            return 0;
        };
        (self.body, self.piece) = match protocol::decode::<PeerReply>(payload) {
            Ok(PeerReply::Joined { pieces }) => {
                self.lost = pieces != self.layout.count() as u64;
                (pieces.div_ceil(8), false)
            }
            Ok(PeerReply::Layer { pieces }) => (pieces.saturating_mul(20), false),
            Ok(PeerReply::Piece { index }) => (self.layout.len(index as usize), true),
            _ => (0, false),
        };
        self.header.clear();
        0
    }
}

/// A frame's bytes: whole once `bytes` holds its length prefix and payload.
fn whole_frame(bytes: &[u8]) -> Option<&[u8]> {
    let length = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    bytes.get(4..4 + length)
}

impl FaultyStream {
    fn inner(&mut self) -> Pin<&mut BoxStream> {
        Pin::new(self.inner.as_mut().expect("the stream is held until dropped"))
    }

    /// Looks at bytes the downloader sent; once its first request is whole,
    /// arms this connection if a fault waits for the file it wants.
    fn saw_request(&mut self, bytes: &[u8]) {
        let State::Listening(request) = &mut self.state else {
            return;
        };
        request.extend_from_slice(bytes);
        if request.len() > 4 + MAX_FRAME_LEN {
            self.state = State::Clear;
            return;
        }
        let Some(payload) = whole_frame(request) else { return };
        self.state = match protocol::decode::<Request<PeerRequest>>(payload) {
            Ok(Request {
                trace,
                body: PeerRequest::Get { file, .. },
            }) => match self.faults.take(&file) {
                Some(fault) => State::Armed {
                    fault,
                    trace,
                    header: Vec::new(),
                },
                None => State::Clear,
            },
            Ok(Request {
                trace,
                body: PeerRequest::Join { file, piece_size, .. },
            }) => self.join(file, piece_size, trace),
            _ => State::Clear,
        };
    }

    /// A swarm conversation about `file` in pieces of `piece_size`: armed
    /// if a fault waits for the file and the client knows its size (it
    /// holds the file, or downloads it; the size gives the last piece's
    /// length).
    fn join(&self, file: FileName, piece_size: u64, trace: Trace) -> State {
        let (Some(size), Ok(piece)) = (self.faults.size_of(&file), PieceSize::new(piece_size)) else {
            return State::Clear;
        };
        let Some(fault) = self.faults.take(&file) else {
            return State::Clear;
        };
        let replies = SwarmReplies {
            layout: Layout::new(size, piece),
            header: Vec::new(),
            body: 0,
            piece: false,
            lost: false,
        };
        State::Swarming {
            fault,
            trace,
            replies,
            sent: 0,
        }
    }

    /// How many of `len` bytes may go out now without passing the end of
    /// the header frame or the fault's byte count.
    fn allowance(&self, len: usize) -> usize {
        match &self.state {
            State::Armed { header, .. } => {
                let total = header
                    .get(..4)
                    .map(|prefix| 4 + u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize);
                len.min(total.unwrap_or(4) - header.len())
            }
            State::Counting { sent, strike_at, .. } => len.min((strike_at - sent) as usize),
            State::Swarming {
                fault, replies, sent, ..
            } => {
                let room = replies.room(len);
                match replies.in_piece() {
                    true => room.min(usize::try_from(fault.after - *sent).unwrap_or(usize::MAX)),
                    false => room,
                }
            }
            _ => len,
        }
    }

    /// Accounts for `bytes` that went out, striking when the count is
    /// reached.
    fn sent(&mut self, bytes: &[u8]) {
        match &mut self.state {
            State::Armed { header, .. } => {
                header.extend_from_slice(bytes);
                if whole_frame(header).is_some() {
                    self.header_sent();
                }
            }
            State::Counting { .. } => self.counted(bytes.len() as u64),
            State::Swarming {
                fault, replies, sent, ..
            } => {
                let pieces = replies.sent(bytes);
                if replies.lost {
                    // Not this file's pieces: the fault waits for the next
                    // transfer.
                    if let State::Swarming { fault, .. } = std::mem::replace(&mut self.state, State::Clear) {
                        self.faults.put_back(fault);
                    }
                    return;
                }
                *sent += pieces;
                // The fault's byte went out (within a piece, or its last
                // byte), or a piece's body starts at it (a count of 0).
                if *sent == fault.after && (pieces > 0 || replies.in_piece()) {
                    self.strike();
                }
            }
            _ => {}
        }
    }

    /// Accounts for `len` body bytes that went out, striking when the count
    /// is reached.
    fn counted(&mut self, len: u64) {
        if let State::Counting { sent, strike_at, .. } = &mut self.state {
            *sent += len;
            if sent == strike_at {
                self.strike();
            }
        }
    }

    /// The header frame went out: counting starts if it offers the file.
    fn header_sent(&mut self) {
        let State::Armed { fault, trace, header } = std::mem::replace(&mut self.state, State::Clear) else {
            return;
        };
        match whole_frame(&header).map(protocol::decode::<PeerReply>) {
            Some(Ok(PeerReply::File { info })) => {
                let strike_at = fault.after.min(info.size);
                self.state = State::Counting {
                    fault,
                    trace,
                    sent: 0,
                    strike_at,
                };
                if strike_at == 0 {
                    self.strike();
                }
            }
            // Refused: no transfer, so the fault waits for the next one.
            _ => self.faults.put_back(fault),
        }
    }

    fn strike(&mut self) {
        let (fault, trace, sent) = match std::mem::replace(&mut self.state, State::Clear) {
            State::Counting { fault, trace, sent, .. } | State::Swarming { fault, trace, sent, .. } => {
                (fault, trace, sent)
            }
            other => {
                self.state = other;
                return;
            }
        };
        match fault.kind {
            FaultKind::Stall => self.state = State::Stalled,
            FaultKind::Kill => {
                self.state = State::Dead;
                self.faults.crash(trace, fault.file, sent);
            }
        }
    }

    /// A stalled transfer holds its connection, sending nothing, until the
    /// downloader gives up and closes it.
    fn poll_downloader_gone(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        poll_closed(self.inner(), cx).map(|()| io::ErrorKind::BrokenPipe.into())
    }
}

/// Reads and throws away what comes until the other side closes `stream`.
fn poll_closed(mut stream: Pin<&mut BoxStream>, cx: &mut Context<'_>) -> Poll<()> {
    let mut scratch = [0u8; 512];
    loop {
        let mut buf = ReadBuf::new(&mut scratch);
        match stream.as_mut().poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// A hung peer does not time out its own stalled transfer: when the server
/// lets go of a stalled connection (its own write timed out), the
/// connection stays open, sending nothing, until the downloader closes it.
impl Drop for FaultyStream {
    fn drop(&mut self) {
        // A swarm conversation that ended before the fault's byte: the
        // fault waits for the next transfer of its file.
        if matches!(self.state, State::Swarming { .. }) {
            if let State::Swarming { fault, .. } = std::mem::replace(&mut self.state, State::Clear) {
                self.faults.put_back(fault);
            }
            return;
        }
        if !matches!(self.state, State::Stalled) {
            return;
        }
        if let (Some(mut stream), Some(hold)) = (self.inner.take(), self.faults.hold.get()) {
            hold(Box::pin(std::future::poll_fn(move |cx| {
                poll_closed(Pin::new(&mut stream), cx)
            })));
        }
    }
}

impl AsyncRead for FaultyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = self.inner().poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = buf.filled()[before..].to_vec();
            self.saw_request(&fresh);
        }
        polled
    }
}

impl AsyncWrite for FaultyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.state {
            State::Dead => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            State::Stalled => return self.poll_downloader_gone(cx).map(Err),
            _ => {}
        }
        let allowed = self.allowance(buf.len());
        let polled = self.inner().poll_write(cx, &buf[..allowed]);
        if let Poll::Ready(Ok(written)) = polled {
            self.sent(&buf[..written]);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner().poll_shutdown(cx)
    }
}

impl Stream for FaultyStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner
            .as_ref()
            .expect("the stream is held until dropped")
            .peer_addr()
    }

    fn receiver_limited(&self) -> Option<std::time::Duration> {
        self.inner.as_ref()?.receiver_limited()
    }

    /// A file body sent through the kernel is counted like written bytes:
    /// the send is cut at the fault's byte, which then strikes.
    fn poll_send_file(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        match self.state {
            State::Dead => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            State::Stalled => return self.poll_downloader_gone(cx).map(Err),
            // The header frame is still going out: its bytes must be seen,
            // so they go through `poll_write` (they always do: frames are
            // flushed before a body starts).
            State::Listening(_) | State::Armed { .. } | State::Swarming { .. } => {
                return Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
            }
            State::Counting { .. } | State::Clear => {}
        }
        let allowed = self.allowance(len);
        let polled = self.inner().poll_send_file(cx, file, offset, allowed);
        if let Poll::Ready(Ok(sent)) = polled {
            self.counted(sent as u64);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use phile_core::connection::{Connection, ConnectionError};
    use phile_core::host::accept;
    use phile_core::protocol::{ClientId, Digest};
    use phile_core::storage::Folder;

    use super::*;

    /// A peer server holding `len` bytes as "f", with a kill armed after
    /// `after` of them, serving one downloader over real TCP: what the
    /// downloader's receiving ended with, and the byte count the crash was
    /// told of.
    async fn download_with_kill_after(len: usize, after: u64) -> (Result<(), ConnectionError>, Option<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        let file: FileName = "f".parse().unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        folder.write(&file, bytes).await.unwrap();

        let faults = Arc::new(Faults::default());
        let crashed = Arc::new(Mutex::new(None));
        let seen = crashed.clone();
        faults.on_crash(Box::new(move |_, _, sent| *seen.lock().unwrap() = Some(sent)));
        faults.arm(Fault {
            kind: FaultKind::Kill,
            file: file.clone(),
            after,
        });
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let mut listener: BoxListener = Box::new(FaultyListener::new(tcp.into(), faults));
        let server = tokio::spawn(async move {
            let (stream, _) = accept(&mut listener).await.unwrap();
            let mut connection = Connection::new(stream, Duration::from_secs(5)).unwrap();
            let _: Option<Request<PeerRequest>> = connection.read().await.unwrap();
            let mut held = folder.open_file(&file).await.unwrap();
            let info = held.info();
            connection.write(&PeerReply::File { info }).await.unwrap();
            // Fails once the fault strikes; the connection then closes.
            let _ = connection.write_body(&mut held, info.size).await;
        });

        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut connection = Connection::new(Box::new(stream), Duration::from_secs(5)).unwrap();
        let get = PeerRequest::Get {
            file: "f".parse().unwrap(),
            client: ClientId(2),
        };
        connection
            .write(&Request {
                trace: Trace::default(),
                body: get,
            })
            .await
            .unwrap();
        let header: Option<PeerReply> = connection.read().await.unwrap();
        let Some(PeerReply::File { info }) = header else {
            panic!("no file header: {header:?}");
        };
        let received = connection.read_body(info.size, &mut Discard).await;
        server.await.unwrap();
        let sent = *crashed.lock().unwrap();
        (received, sent)
    }

    /// Keeps nothing of what arrives: the error of an incomplete body says
    /// how much did.
    struct Discard;

    impl phile_core::connection::BodySink for Discard {
        fn buffer(&mut self) -> Vec<u8> {
            Vec::new()
        }

        async fn accept(&mut self, _chunk: Vec<u8>) -> io::Result<()> {
            Ok(())
        }
    }

    /// `reply` as it goes out: its frame, then `body` raw bytes.
    fn framed(reply: &PeerReply, body: usize) -> Vec<u8> {
        let payload = protocol::encode(reply).unwrap();
        let mut bytes = (payload.len() as u32).to_be_bytes().to_vec();
        bytes.extend(payload);
        bytes.extend(std::iter::repeat_n(7u8, body));
        bytes
    }

    #[test]
    fn a_swarm_conversation_counts_the_bytes_of_pieces_only() {
        // 40,000 bytes in pieces of 16 KiB: two whole pieces and one of
        // 7,232 bytes.
        let layout = Layout::new(40_000, PieceSize::new(16_384).unwrap());
        let mut replies = SwarmReplies {
            layout,
            header: Vec::new(),
            body: 0,
            piece: false,
            lost: false,
        };
        let mut stream = framed(&PeerReply::Joined { pieces: 3 }, 1);
        stream.extend(framed(&PeerReply::Layer { pieces: 3 }, 60));
        stream.extend(framed(&PeerReply::Piece { index: 2 }, 7_232));
        stream.extend(framed(&PeerReply::Have { index: 1 }, 0));
        stream.extend(framed(&PeerReply::Piece { index: 0 }, 16_384));
        // Sent in the largest writes allowed: never past a header's end or
        // a body's, so each header is seen from its start.
        let (mut at, mut pieces) = (0, 0);
        while at < stream.len() {
            let len = replies.room(stream.len() - at);
            assert!(len > 0, "stuck at byte {at}");
            pieces += replies.sent(&stream[at..at + len]);
            at += len;
        }
        assert_eq!(pieces, 7_232 + 16_384);
        assert_eq!((replies.body, replies.header.len()), (0, 0), "ended mid-frame");
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_faulty_stream_shows_the_receive_window_count_of_the_stream_it_wraps() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _reader = tokio::net::TcpStream::connect(tcp.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = tcp.accept().await.unwrap();
        let mut server = FaultyStream {
            inner: Some(Box::new(accepted)),
            faults: Arc::new(Faults::default()),
            state: State::Clear,
        };
        assert_eq!(server.receiver_limited(), Some(std::time::Duration::ZERO));
        server.inner = None;
        assert_eq!(server.receiver_limited(), None, "gone with the stream");
    }

    #[tokio::test]
    async fn a_kill_in_a_swarm_strikes_at_the_last_byte_of_a_piece_too() {
        use tokio::io::AsyncWriteExt;
        // Two pieces of 16 KiB; the kill is armed after the first one's
        // last byte.
        let (file, piece) = ("f".parse::<FileName>().unwrap(), 16_384u64);
        let faults = Arc::new(Faults::default());
        let crashed = Arc::new(Mutex::new(None));
        let seen = crashed.clone();
        faults.on_crash(Box::new(move |_, _, sent| *seen.lock().unwrap() = Some(sent)));
        faults.on_size(Box::new(move |_| Some(2 * piece)));
        faults.arm(Fault {
            kind: FaultKind::Kill,
            file: file.clone(),
            after: piece,
        });
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut downloader = tokio::net::TcpStream::connect(tcp.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = tcp.accept().await.unwrap();
        let mut server = FaultyStream {
            inner: Some(Box::new(accepted)),
            faults,
            state: State::Listening(Vec::new()),
        };
        let join = PeerRequest::Join {
            file,
            client: ClientId(2),
            sha1: Digest([0; 20]),
            piece_size: piece,
        };
        let payload = protocol::encode(&Request {
            trace: Trace::default(),
            body: join,
        })
        .unwrap();
        let mut request = (payload.len() as u32).to_be_bytes().to_vec();
        request.extend(payload);
        downloader.write_all(&request).await.unwrap();
        let mut read = vec![0u8; request.len()];
        tokio::io::AsyncReadExt::read_exact(&mut server, &mut read)
            .await
            .unwrap();
        assert!(matches!(server.state, State::Swarming { .. }), "not armed by the Join");

        let mut replies = framed(&PeerReply::Joined { pieces: 2 }, 1);
        replies.extend(framed(&PeerReply::Piece { index: 0 }, piece as usize));
        server.write_all(&replies).await.unwrap();
        assert_eq!(*crashed.lock().unwrap(), Some(piece), "no strike at the piece's end");
        let more = framed(&PeerReply::Piece { index: 1 }, piece as usize);
        assert!(server.write_all(&more).await.is_err(), "wrote on after the kill");
    }

    #[tokio::test]
    async fn a_kill_strikes_at_its_exact_byte_when_the_kernel_sends_the_file() {
        // A few MiB: the body goes out in several kernel sends, the fault
        // falling inside one of them.
        for after in [0, 1, 65_537, 3_000_001] {
            let (received, crashed) = download_with_kill_after(5_000_000, after).await;
            assert_eq!(crashed, Some(after), "the crash was told another count");
            assert!(
                matches!(received, Err(ConnectionError::ClosedMidBody { received, .. }) if received == after),
                "{received:?}"
            );
        }
    }
}

//! One connection speaking the framed protocol, plus raw file bodies.
//!
//! [`Connection`] reads and writes whole messages ([`crate::protocol`]) and
//! streams a file's bytes after its header, over any [`Stream`](crate::host::Stream): a real TCP
//! socket, a simulated one, or a wrapper. Every read and every write is
//! bounded by the idle timeout, so a silent or stalled remote can never hang
//! the task that talks to it.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use futures::{FutureExt as _, SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::host::{BoxStream, Host};
use crate::protocol::{self, ProtocolError, MAX_FRAME_LEN};

/// The size of one chunk of a file body in flight.
///
/// Big enough that per-chunk costs (two hand-overs to blocking threads and
/// their wake-ups on the receiving side) vanish next to moving the bytes:
/// measured on a 1 GiB download, 1 MiB chunks cost about 10 % more CPU
/// than 4 MiB ones, which cost about as much as 8 MiB ones. Small enough
/// that the two buffers of a download keep memory flat. A body smaller than
/// a chunk gets a buffer of its own size.
pub const CHUNK_LEN: usize = 2 * 1024 * 1024;

/// The least a chunk of a received body holds before it may be handed to
/// the sink unfilled, when nothing more has arrived: the sink (and a
/// progress display behind it) hears of a slow transfer every 64 KiB, not
/// every chunk.
const EARLY_CHUNK_MIN: usize = 64 * 1024;

/// The most bytes one `sendfile` is asked for. The kernel moves what the
/// socket's send buffer takes and returns; the cap only keeps the count
/// within what every platform's `usize` and the kernel accept.
const SEND_FILE_MAX: u64 = 1 << 30;

/// The initial read and write buffers of a connection (and of each
/// direction of a swarm conversation). Messages are a few hundred bytes, a
/// tracker keeps one connection per client and a swarm peer dozens of
/// conversations, so small buffers (grown on demand) keep 10,000 sessions
/// in a few dozen MiB.
pub(crate) const FRAME_BUFFER_LEN: usize = 1024;

/// Why talking to the remote side failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The remote sent nothing, or took nothing, for the whole idle timeout.
    #[error("no progress for {} s (idle timeout)", .0.as_secs_f32())]
    Idle(Duration),
    /// The connection closed in the middle of a message.
    #[error("connection closed in the middle of a message")]
    ClosedMidFrame,
    /// The connection closed before a whole file body arrived.
    #[error("connection closed after {received} of {expected} bytes")]
    ClosedMidBody {
        /// Bytes received.
        received: u64,
        /// Bytes announced by the header.
        expected: u64,
    },
    /// A frame's length prefix is over the limit.
    #[error("frame over the {MAX_FRAME_LEN}-byte limit")]
    FrameTooLarge,
    /// The local sink of a body (the disk) refused a chunk: not the
    /// remote's doing.
    #[error("cannot store what arrived: {0}")]
    Sink(#[source] io::Error),
    /// A frame held something that is not a valid message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The socket (or the file being sent) failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Where the bytes of a received file body go, chunk by chunk.
///
/// The sink owns the buffers: [`BodySink::buffer`] lends one, the
/// connection fills it straight from the socket, [`BodySink::accept`] takes
/// it back. A sink that recycles what it is given back allocates nothing
/// per chunk.
pub trait BodySink {
    /// An empty buffer for the next chunk: one the sink is done with, or a
    /// new one (the connection sizes it).
    fn buffer(&mut self) -> Vec<u8>;

    /// Takes the next chunk of the body: a buffer from [`BodySink::buffer`],
    /// filled.
    fn accept(&mut self, chunk: Vec<u8>) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

/// Where the bytes of a file body to send come from.
pub trait BodySource {
    /// The open file the body is read from, if it is one: a stream that can
    /// send a file without copying it ([`Stream::poll_send_file`]) sends it
    /// from there, and [`BodySource::read_at`] is not called.
    ///
    /// [`Stream::poll_send_file`]: crate::host::Stream::poll_send_file
    fn file(&self) -> Option<&File>;

    /// Reads the bytes from `offset` into `buffer`, from its start and at
    /// most its length; hands the buffer back with how many bytes it now
    /// holds, 0 when the source ends before `offset`.
    fn read_at(
        &mut self,
        offset: u64,
        buffer: Vec<u8>,
    ) -> impl std::future::Future<Output = io::Result<(Vec<u8>, usize)>> + Send;
}

/// A framed connection to a tracker or a peer.
pub struct Connection {
    /// The stream, cut into frames. The raw bytes of a file body are read
    /// from and written to the same stream underneath.
    frames: Framed<BoxStream, LengthDelimitedCodec>,
    /// The longest wait for any read or write to make progress.
    idle_timeout: Duration,
    /// The remote address (for log lines and error messages).
    peer_addr: SocketAddr,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer_addr", &self.peer_addr)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl Connection {
    /// Wraps an open stream.
    pub fn new(stream: BoxStream, idle_timeout: Duration) -> io::Result<Connection> {
        let peer_addr = stream.peer_addr()?;
        Ok(Connection {
            frames: Framed::with_capacity(stream, protocol::frame_codec(), FRAME_BUFFER_LEN),
            idle_timeout,
            peer_addr,
        })
    }

    /// Connects to `addr` through `host`, giving up after the idle timeout.
    pub async fn connect(
        host: &dyn Host,
        addr: SocketAddr,
        idle_timeout: Duration,
    ) -> Result<Connection, ConnectionError> {
        Connection::connect_wrapped(host, addr, idle_timeout, |stream| stream).await
    }

    /// Like [`Connection::connect`], with the stream wrapped by `wrap` (a
    /// rate cap, say) before any byte goes through it.
    pub async fn connect_wrapped(
        host: &dyn Host,
        addr: SocketAddr,
        idle_timeout: Duration,
        wrap: impl FnOnce(BoxStream) -> BoxStream,
    ) -> Result<Connection, ConnectionError> {
        let stream = within(idle_timeout, host.connect(addr)).await??;
        Ok(Connection::new(wrap(stream), idle_timeout)?)
    }

    /// The longest a read or write may make no progress.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// The address of the other side.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// The stream underneath, with the bytes already read from it but not
    /// yet used (the start of the next frames): for a conversation that
    /// reads and writes at once (see [`crate::swarm::wire`]).
    pub fn into_parts(self) -> (BoxStream, BytesMut) {
        let parts = self.frames.into_parts();
        (parts.io, parts.read_buf)
    }

    /// Reads the next message. `Ok(None)` means the remote closed the
    /// connection cleanly, between two messages.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectionError> {
        self.read_within(self.idle_timeout).await
    }

    /// Like [`Connection::read`], with a wait of `limit` instead of the idle
    /// timeout: for a session that may rightly stay quiet between requests.
    pub async fn read_within<T: DeserializeOwned>(&mut self, limit: Duration) -> Result<Option<T>, ConnectionError> {
        let next = within(limit, self.frames.next()).await?;
        decode_frame(next, self.frames.read_buffer())
    }

    /// Writes one message and flushes it.
    pub async fn write<T: Serialize>(&mut self, message: &T) -> Result<(), ConnectionError> {
        let payload = protocol::encode(message)?;
        within(self.idle_timeout, self.frames.send(payload)).await??;
        Ok(())
    }

    /// Streams exactly `len` bytes from `source` after the frames already
    /// written. Fails if `source` ends early.
    ///
    /// A file goes out through the kernel (`sendfile`) where the stream can
    /// do that; otherwise (a simulated stream, another system) it is read
    /// into one reused buffer and written.
    pub async fn write_body<S: BodySource>(&mut self, source: &mut S, len: u64) -> Result<(), ConnectionError> {
        let idle = self.idle_timeout;
        // Frames are flushed by `write`, so the stream is ours alone here.
        let stream = self.frames.get_mut();
        let sent = match source.file() {
            Some(file) => send_file(stream, file, len, idle).await?,
            None => 0,
        };
        if sent < len {
            copy_body(stream, source, sent, len, idle).await?;
        }
        within(idle, stream.flush()).await??;
        Ok(())
    }

    /// Receives exactly `len` raw bytes into `sink`, a chunk of up to
    /// [`CHUNK_LEN`] bytes at a time, each read straight into a buffer the
    /// sink lends.
    pub async fn read_body<S: BodySink>(&mut self, len: u64, sink: &mut S) -> Result<(), ConnectionError> {
        let idle = self.idle_timeout;
        let mut received = 0u64;
        while received < len {
            let want = CHUNK_LEN.min((len - received) as usize);
            let mut chunk = sink.buffer();
            chunk.clear();
            // Allocates only for a new buffer; a lent-back one is big enough.
            chunk.reserve(want);
            // The frame decoder may already hold the first bytes of the body.
            let buffered = self.frames.read_buffer_mut();
            let early = buffered.len().min(want);
            chunk.extend_from_slice(&buffered[..early]);
            buffered.advance(early);
            let stream = self.frames.get_mut();
            while chunk.len() < want {
                // `take` keeps the read within this chunk (and this body).
                let mut limited = (&mut *stream).take((want - chunk.len()) as u64);
                let read = if chunk.len() >= EARLY_CHUNK_MIN {
                    // Enough for a chunk of its own: if nothing more has
                    // arrived yet (a slow link), hand it over now rather
                    // than wait to fill it. On a fast link more has always
                    // arrived, and chunks stay whole.
                    match limited.read_buf(&mut chunk).now_or_never() {
                        Some(read) => read?,
                        None => break,
                    }
                } else {
                    within(idle, limited.read_buf(&mut chunk)).await??
                };
                if read == 0 {
                    return Err(ConnectionError::ClosedMidBody {
                        received: received + chunk.len() as u64,
                        expected: len,
                    });
                }
            }
            received += chunk.len() as u64;
            sink.accept(chunk).await.map_err(ConnectionError::Sink)?;
        }
        Ok(())
    }
}

/// The error of a file that holds fewer bytes than its header announced.
fn ended_early(sent: u64, len: u64) -> ConnectionError {
    let message = format!("the file ended after {sent} of {len} bytes");
    io::Error::new(io::ErrorKind::UnexpectedEof, message).into()
}

/// Sends `len` bytes of `file`, from its start, through the kernel, as far
/// as `stream` can; returns how many went out: `len`, or fewer if the
/// stream cannot send files (then the caller copies the rest).
async fn send_file(stream: &mut BoxStream, file: &File, len: u64, idle: Duration) -> Result<u64, ConnectionError> {
    let send = |cx: &mut Context<'_>, offset, want| Pin::new(&mut **stream).poll_send_file(cx, file, offset, want);
    send_file_range(send, 0..len, idle).await
}

/// Sends bytes `range` of a file through the kernel with `send` (a
/// stream's [`poll_send_file`](crate::host::Stream::poll_send_file) for
/// that file), as far as the stream can; returns how many went out: all of
/// them, or fewer if the stream cannot send files (then the caller copies
/// the rest).
pub(crate) async fn send_file_range<F>(mut send: F, range: Range<u64>, idle: Duration) -> Result<u64, ConnectionError>
where
    F: FnMut(&mut Context<'_>, u64, usize) -> Poll<io::Result<usize>>,
{
    let len = range.end - range.start;
    let mut sent = 0u64;
    while sent < len {
        let want = (len - sent).min(SEND_FILE_MAX) as usize;
        let moved = std::future::poll_fn(|cx| send(cx, range.start + sent, want));
        match within(idle, moved).await? {
            Ok(0) => return Err(ended_early(sent, len)),
            Ok(moved) => sent += moved as u64,
            Err(error) if error.kind() == io::ErrorKind::Unsupported => break,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(sent)
}

/// Writes all of `bytes`, failing only if a write makes no progress for
/// `idle`: a chunk (2 MiB) can take longer than that under a rate cap
/// shared by many transfers, and is still moving.
pub(crate) async fn write_progressing<W: tokio::io::AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    mut bytes: &[u8],
    idle: Duration,
) -> Result<(), ConnectionError> {
    while !bytes.is_empty() {
        let written = within(idle, stream.write(bytes)).await??;
        if written == 0 {
            return Err(io::Error::from(io::ErrorKind::WriteZero).into());
        }
        bytes = &bytes[written..];
    }
    Ok(())
}

/// Sends bytes `from..len` of `source` by reading them into one buffer,
/// reused for the whole body, and writing them.
async fn copy_body<S: BodySource>(
    stream: &mut BoxStream,
    source: &mut S,
    from: u64,
    len: u64,
    idle: Duration,
) -> Result<(), ConnectionError> {
    let mut sent = from;
    let mut buffer = vec![0u8; CHUNK_LEN.min((len - from) as usize)];
    while sent < len {
        buffer.truncate(CHUNK_LEN.min((len - sent) as usize));
        let (filled, read) = source.read_at(sent, buffer).await?;
        if read == 0 {
            return Err(ended_early(sent, len));
        }
        write_progressing(stream, &filled[..read], idle).await?;
        sent += read as u64;
        buffer = filled;
    }
    Ok(())
}

/// `future`'s output, or [`ConnectionError::Idle`] if it takes longer than
/// `limit`.
pub(crate) async fn within<F: std::future::Future>(limit: Duration, future: F) -> Result<F::Output, ConnectionError> {
    timeout(limit, future).await.map_err(|_| ConnectionError::Idle(limit))
}

/// The message in what a frame decoder gave (`next`), `Ok(None)` if the
/// stream ended cleanly between frames. `leftover` is what the decoder
/// kept unused: bytes there mean the stream ended (or broke) inside a
/// frame.
pub(crate) fn decode_frame<T: DeserializeOwned>(
    next: Option<Result<BytesMut, io::Error>>,
    leftover: &BytesMut,
) -> Result<Option<T>, ConnectionError> {
    match next {
        None => Ok(None),
        Some(Ok(payload)) => Ok(Some(protocol::decode(&payload)?)),
        Some(Err(error)) if is_frame_too_large(&error) => Err(ConnectionError::FrameTooLarge),
        Some(Err(_)) if !leftover.is_empty() => Err(ConnectionError::ClosedMidFrame),
        Some(Err(error)) => Err(ConnectionError::Io(error)),
    }
}

/// Whether the frame decoder refused a length prefix over the limit.
fn is_frame_too_large(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<tokio_util::codec::LengthDelimitedCodecError>())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    use super::*;
    use crate::host::Stream;
    use crate::protocol::{Digest, FileInfo, FileName, PeerReply};
    use crate::storage::{Folder, HeldFile};

    /// One end of an in-memory pipe, as a stream without the capability to
    /// send files.
    pub(crate) struct Pipe(pub(crate) tokio::io::DuplexStream);

    impl AsyncRead for Pipe {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Pipe {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Stream for Pipe {
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 1)))
        }
    }

    /// Tells whoever waits on `first` how big the first chunk was.
    struct FirstChunk {
        first: Option<tokio::sync::oneshot::Sender<usize>>,
        received: usize,
    }

    impl BodySink for FirstChunk {
        fn buffer(&mut self) -> Vec<u8> {
            Vec::new()
        }

        async fn accept(&mut self, chunk: Vec<u8>) -> io::Result<()> {
            if let Some(first) = self.first.take() {
                let _ = first.send(chunk.len());
            }
            self.received += chunk.len();
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_slow_body_reaches_the_sink_as_it_arrives_not_a_chunk_later() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut connection = Connection::new(Box::new(Pipe(near)), Duration::from_secs(2)).unwrap();
        let (first, first_seen) = tokio::sync::oneshot::channel();
        let sender = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            far.write_all(&[1; 100_000]).await.unwrap();
            // The rest comes only once the sink has the first part: a
            // receiver that waited to fill a chunk would wait forever.
            let first = first_seen.await.unwrap();
            far.write_all(&[2; 100_000]).await.unwrap();
            first
        });
        let mut sink = FirstChunk {
            first: Some(first),
            received: 0,
        };
        connection.read_body(200_000, &mut sink).await.unwrap();
        assert_eq!(sink.received, 200_000);
        assert_eq!(sender.await.unwrap(), 100_000);
    }

    /// A stream that counts how its bytes went out, and sends files through
    /// the kernel only as many times as `file_sends` allows (then answers
    /// `Unsupported`, as a stream without the capability does).
    pub(crate) struct Spy {
        pub(crate) inner: BoxStream,
        pub(crate) file_sends: usize,
        pub(crate) written: Arc<AtomicU64>,
        pub(crate) sent_from_file: Arc<AtomicU64>,
    }

    impl AsyncRead for Spy {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Spy {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(written)) = polled {
                self.written.fetch_add(written as u64, Ordering::Relaxed);
            }
            polled
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    impl Stream for Spy {
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            self.inner.peer_addr()
        }

        fn poll_send_file(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            file: &File,
            offset: u64,
            len: usize,
        ) -> Poll<io::Result<usize>> {
            if self.file_sends == 0 {
                return Poll::Ready(Err(io::ErrorKind::Unsupported.into()));
            }
            let polled = Pin::new(&mut self.inner).poll_send_file(cx, file, offset, len);
            if let Poll::Ready(Ok(sent)) = polled {
                self.file_sends -= 1;
                self.sent_from_file.fetch_add(sent as u64, Ordering::Relaxed);
            }
            polled
        }
    }

    /// A sink that keeps what arrives, lends its buffers back, and notes
    /// every buffer it was handed.
    #[derive(Default)]
    struct Collect {
        bytes: Vec<u8>,
        spare: Vec<Vec<u8>>,
        buffers: HashSet<usize>,
    }

    impl BodySink for Collect {
        fn buffer(&mut self) -> Vec<u8> {
            self.spare.pop().unwrap_or_default()
        }

        async fn accept(&mut self, chunk: Vec<u8>) -> io::Result<()> {
            self.buffers.insert(chunk.as_ptr() as usize);
            self.bytes.extend_from_slice(&chunk);
            self.spare.push(chunk);
            Ok(())
        }
    }

    /// Pseudo-random bytes: a body no layer can shrink.
    pub(crate) fn content(len: usize) -> Vec<u8> {
        let mut state = 0x2545f4914f6cdd1du64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A held file of `content` in a fresh folder.
    async fn held(content: &[u8]) -> (tempfile::TempDir, HeldFile) {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        let name: FileName = "body.bin".parse().unwrap();
        folder.write(&name, content.to_vec()).await.unwrap();
        let file = folder.open_file(&name).await.unwrap();
        (dir, file)
    }

    /// What a sender through a `Spy` allowed `file_sends` kernel sends
    /// delivers of `content`, announcing `len` bytes: the bytes received (or
    /// the receiver's error), the sender's result, and how many bytes went
    /// out through `poll_write` and through `poll_send_file`.
    async fn send(content: &[u8], len: u64, file_sends: usize) -> Outcome {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (written, sent_from_file) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (_dir, mut file) = held(content).await;
        let (w, s) = (written.clone(), sent_from_file.clone());
        let sender = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let spy = Spy {
                inner: Box::new(stream),
                file_sends,
                written: w,
                sent_from_file: s,
            };
            let mut connection = Connection::new(Box::new(spy), Duration::from_secs(5)).unwrap();
            let info = FileInfo {
                size: len,
                sha1: Digest::of(b""),
            };
            connection.write(&PeerReply::File { info }).await?;
            connection.write_body(&mut file, len).await
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut connection = Connection::new(Box::new(stream), Duration::from_secs(5)).unwrap();
        let header: Option<PeerReply> = connection.read().await.unwrap();
        assert!(matches!(header, Some(PeerReply::File { .. })));
        let mut sink = Collect::default();
        let received = connection.read_body(len, &mut sink).await.map(|()| sink.bytes);
        Outcome {
            received,
            buffers: sink.buffers.len(),
            sent: sender.await.unwrap(),
            written: written.load(Ordering::Relaxed),
            sent_from_file: sent_from_file.load(Ordering::Relaxed),
        }
    }

    struct Outcome {
        received: Result<Vec<u8>, ConnectionError>,
        buffers: usize,
        sent: Result<(), ConnectionError>,
        written: u64,
        sent_from_file: u64,
    }

    const BODY_LEN: usize = 2 * CHUNK_LEN + 12345;

    #[tokio::test]
    async fn a_file_goes_out_through_the_kernel_and_arrives_whole_in_two_buffers() {
        let body = content(BODY_LEN);
        let outcome = send(&body, BODY_LEN as u64, usize::MAX).await;
        outcome.sent.unwrap();
        assert!(outcome.received.unwrap() == body, "the body arrived changed");
        assert!(outcome.buffers <= 2, "{} buffers for 3 chunks", outcome.buffers);
        #[cfg(target_os = "linux")]
        assert_eq!(
            outcome.sent_from_file, BODY_LEN as u64,
            "the body did not go through sendfile ({} bytes copied)",
            outcome.written
        );
    }

    #[tokio::test]
    async fn a_stream_that_cannot_send_files_gets_the_bytes_copied() {
        let body = content(BODY_LEN);
        let outcome = send(&body, BODY_LEN as u64, 0).await;
        outcome.sent.unwrap();
        assert!(outcome.received.unwrap() == body, "the body arrived changed");
        assert_eq!(outcome.sent_from_file, 0);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_stream_that_stops_sending_files_midway_gets_the_rest_copied() {
        let body = content(BODY_LEN);
        let outcome = send(&body, BODY_LEN as u64, 1).await;
        outcome.sent.unwrap();
        assert!(outcome.received.unwrap() == body, "the body arrived changed");
        assert!(outcome.sent_from_file > 0 && outcome.sent_from_file < BODY_LEN as u64);
    }

    #[tokio::test]
    async fn a_file_shorter_than_announced_fails_both_ways_and_the_receiver_sees_the_cut() {
        let body = content(100_000);
        for file_sends in [usize::MAX, 0] {
            let outcome = send(&body, 100_010, file_sends).await;
            let error = outcome.sent.unwrap_err().to_string();
            assert_eq!(error, "the file ended after 100000 of 100010 bytes", "{file_sends}");
            assert!(
                matches!(
                    outcome.received,
                    Err(ConnectionError::ClosedMidBody {
                        received: 100_000,
                        expected: 100_010
                    })
                ),
                "{file_sends}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_write_fails_only_when_it_stops_moving() {
        // A chunk that takes longer than the idle timeout to drain (a rate
        // cap shared by many transfers) goes through while it moves, and
        // fails once nothing moves for the idle timeout.
        let idle = Duration::from_millis(100);
        let body = content(1 << 20);
        for stops_after in [None, Some(4)] {
            let (mut writer, mut reader) = tokio::io::duplex(64 * 1024);
            let reading = tokio::spawn(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                let mut reads = 0;
                while stops_after != Some(reads) {
                    // A slow reader is the point of the test: it drains a
                    // read every 50 ms of the paused (virtual) clock, so
                    // no wall-clock time passes.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if reader.read(&mut buffer).await.unwrap() == 0 {
                        break;
                    }
                    reads += 1;
                }
                reader
            });
            let written = write_progressing(&mut writer, &body, idle).await;
            match stops_after {
                None => written.unwrap(),
                Some(_) => assert!(matches!(written, Err(ConnectionError::Idle(_))), "{written:?}"),
            }
            drop(writer);
            drop(reading.await.unwrap());
        }
    }
}

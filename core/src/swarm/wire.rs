//! A swarm conversation's two directions, each with its own half of the
//! stream: pieces go one way while requests (and the next pieces) come the
//! other, so neither side waits for the other to stop talking.
//!
//! Messages are frames of the wire protocol ([`crate::protocol`]); a
//! bitfield, a layer of piece hashes or a piece follows its header frame as
//! raw bytes, whose length the header (and the file's layout) fixes. Every
//! read of a body and every write is bounded by the idle timeout; waiting
//! for the next message is bounded only when the caller says so (a peer may
//! rightly have nothing to say for a while).

use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::connection::{
    decode_frame, send_file_range, within, write_progressing, Connection, ConnectionError, CHUNK_LEN, FRAME_BUFFER_LEN,
};
use crate::host::{BoxStream, Stream};
use crate::protocol::{self, MAX_FRAME_LEN};
use crate::storage::PartData;

/// How many bytes of messages fed together are written at once.
const BATCH_LEN: usize = 8 * 1024;

/// Splits an open connection into its two directions. Bytes the connection
/// had read ahead (requests sent without waiting) stay in the inbound half.
pub fn split(connection: Connection) -> (Inbound, Outbound) {
    let idle = connection.idle_timeout();
    let (stream, read_ahead) = connection.into_parts();
    let (read, write) = halves(stream);
    let mut frames = FramedRead::with_capacity(read, protocol::frame_codec(), FRAME_BUFFER_LEN);
    frames.read_buffer_mut().extend_from_slice(&read_ahead);
    // Small buffers, but writes batched as before: messages fed together
    // (a seeder's thousands of `Have`s) go out in writes of up to 8 KiB.
    let sent = write.sent.clone();
    let mut outbound = FramedWrite::with_capacity(write, protocol::frame_codec(), FRAME_BUFFER_LEN);
    outbound.set_backpressure_boundary(BATCH_LEN);
    (
        Inbound {
            frames,
            idle,
            received: Arc::default(),
        },
        Outbound {
            sent,
            frames: outbound,
            idle,
        },
    )
}

/// The receiving direction of a conversation.
pub struct Inbound {
    /// Frames, read from the stream's read half.
    frames: FramedRead<ReadHalf, LengthDelimitedCodec>,
    /// The longest a body may make no progress.
    idle: Duration,
    /// Body bytes received so far, shared with whoever watches the
    /// conversation.
    received: Arc<AtomicU64>,
}

impl Inbound {
    /// A count of the body bytes received so far, kept up to date as they
    /// come: a watcher sees a slow body make progress long before it is
    /// whole (a 256 KiB piece at 5 KB/s takes almost a minute).
    pub fn received(&self) -> Arc<AtomicU64> {
        self.received.clone()
    }

    /// The next message, `Ok(None)` if the other side closed cleanly
    /// between messages; with `limit`, an error if none comes within it.
    pub async fn message<T: DeserializeOwned>(
        &mut self,
        limit: Option<Duration>,
    ) -> Result<Option<T>, ConnectionError> {
        let next = match limit {
            Some(limit) => within(limit, self.frames.next()).await?,
            None => self.frames.next().await,
        };
        decode_frame(next, self.frames.read_buffer())
    }

    /// Exactly `len` raw bytes, the body after a header.
    pub async fn body(&mut self, len: usize) -> Result<Bytes, ConnectionError> {
        let mut body = BytesMut::with_capacity(len);
        let buffered = self.frames.read_buffer_mut();
        let take = buffered.len().min(len);
        body.extend_from_slice(&buffered.split_to(take));
        self.received.fetch_add(take as u64, Ordering::Relaxed);
        while body.len() < len {
            let want = (len - body.len()).min(CHUNK_LEN) as u64;
            let mut limited = (&mut *self.frames.get_mut()).take(want);
            let read = within(self.idle, limited.read_buf(&mut body)).await??;
            if read == 0 {
                return Err(ConnectionError::ClosedMidBody {
                    received: body.len() as u64,
                    expected: len as u64,
                });
            }
            self.received.fetch_add(read as u64, Ordering::Relaxed);
        }
        Ok(body.freeze())
    }
}

/// The sending direction of a conversation.
pub struct Outbound {
    /// Frames, written to the stream's write half.
    frames: FramedWrite<WriteHalf, LengthDelimitedCodec>,
    /// The longest a write may make no progress.
    idle: Duration,
    /// Bytes the stream took so far, shared with whoever watches.
    sent: Arc<AtomicU64>,
}

impl Outbound {
    /// A count of the bytes the stream took so far (frames and bodies),
    /// kept up to date as it takes them: a watcher sees whether a send
    /// still moves long before it ends.
    pub fn sent(&self) -> Arc<AtomicU64> {
        self.sent.clone()
    }

    /// A gauge of how long, in all, the stream's sends waited for the
    /// other side to make room ([`Stream::receiver_limited`]): whether a
    /// send that crawls does so because its reader trickles. It does not
    /// keep the stream open; once the stream is gone it reads `None`.
    pub fn receiver_limited(&self) -> impl Fn() -> Option<Duration> + Send + Sync + 'static {
        let stream = Arc::downgrade(&self.frames.get_ref().stream);
        move || stream.upgrade().and_then(|stream| lock(&stream).receiver_limited())
    }

    /// Sends one message.
    pub async fn message<T: Serialize>(&mut self, message: &T) -> Result<(), ConnectionError> {
        let payload = protocol::encode(message)?;
        debug_assert!(payload.len() <= MAX_FRAME_LEN);
        within(self.idle, self.frames.send(payload)).await??;
        Ok(())
    }

    /// Sends several messages, written together: one flush, not one per
    /// message (a seeder that shows a downloader the rest of a file sends
    /// one `Have` for each piece, thousands of them).
    pub async fn messages<T: Serialize>(
        &mut self,
        messages: impl IntoIterator<Item = T>,
    ) -> Result<(), ConnectionError> {
        for message in messages {
            let payload = protocol::encode(&message)?;
            within(self.idle, self.frames.feed(payload)).await??;
        }
        within(self.idle, SinkExt::<Bytes>::flush(&mut self.frames)).await??;
        Ok(())
    }

    /// Sends one message and the raw body that follows it.
    pub async fn message_with_body<T: Serialize>(&mut self, message: &T, body: &[u8]) -> Result<(), ConnectionError> {
        self.message(message).await?;
        let stream = self.frames.get_mut();
        write_progressing(stream, body, self.idle).await?;
        self.flush().await
    }

    /// Sends one message and the raw body that follows it, made a chunk at
    /// a time as the stream takes them: a long body is never held whole.
    pub async fn message_with_chunks<T: Serialize>(
        &mut self,
        message: &T,
        body: impl Iterator<Item = Vec<u8>>,
    ) -> Result<(), ConnectionError> {
        self.message(message).await?;
        for chunk in body {
            write_progressing(self.frames.get_mut(), &chunk, self.idle).await?;
        }
        self.flush().await
    }

    /// Sends one message and then bytes `range` of `data` as its body:
    /// through the kernel (`sendfile`) where the stream can, as a whole
    /// file is sent, so a piece is never copied through this process;
    /// otherwise (a simulated stream, a wrapper that must see the bytes)
    /// read and written.
    pub async fn message_with_file<T: Serialize>(
        &mut self,
        message: &T,
        data: &PartData,
        range: Range<u64>,
    ) -> Result<(), ConnectionError> {
        // `message` flushes its frame, so the stream is the body's alone.
        self.message(message).await?;
        let stream = self.frames.get_mut();
        let file = data.file();
        let send = |cx: &mut Context<'_>, offset, len| stream.poll_send_file(cx, file, offset, len);
        let sent = send_file_range(send, range.clone(), self.idle).await?;
        // A chunk at a time: a send that stalls (or waits for its turn)
        // mid-piece holds a chunk, not a piece of up to 16 MiB.
        let mut at = range.start + sent;
        while at < range.end {
            let end = range.end.min(at + READ_CHUNK);
            let chunk = data.read(at..end).await?;
            write_progressing(stream, &chunk, self.idle).await?;
            at = end;
        }
        self.flush().await
    }

    /// Pushes out what the stream holds back.
    async fn flush(&mut self) -> Result<(), ConnectionError> {
        within(self.idle, self.frames.get_mut().flush()).await??;
        Ok(())
    }

    /// Closes this direction: the other side reads the end of the stream.
    pub async fn close(&mut self) {
        let _ = within(self.idle, self.frames.get_mut().shutdown()).await;
    }
}

/// How much of a piece is read at a time where it cannot go through the
/// kernel: the default piece size, so a default piece is one read.
const READ_CHUNK: u64 = 256 * 1024;

/// The two halves of one stream, each usable by its own task: what
/// `tokio::io::split` does, except that the writing half can still send a
/// file through the kernel ([`Stream::poll_send_file`]), which tokio's
/// halves do not pass on. Each poll holds the stream for that poll only.
fn halves(stream: BoxStream) -> (ReadHalf, WriteHalf) {
    let shared = Arc::new(Mutex::new(stream));
    let write = WriteHalf {
        stream: shared.clone(),
        sent: Arc::default(),
    };
    (ReadHalf(shared), write)
}

/// Locks the shared stream for one poll. A poll never blocks and never
/// panics halfway through a change, so a poisoned lock still holds a
/// usable stream.
fn lock(stream: &Mutex<BoxStream>) -> MutexGuard<'_, BoxStream> {
    stream.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The reading half of a stream.
struct ReadHalf(Arc<Mutex<BoxStream>>);

/// The writing half of a stream.
struct WriteHalf {
    stream: Arc<Mutex<BoxStream>>,
    /// Bytes the stream took through this half so far.
    sent: Arc<AtomicU64>,
}

impl AsyncRead for ReadHalf {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_read(cx, buf)
    }
}

impl WriteHalf {
    /// [`Stream::poll_send_file`] of the stream.
    fn poll_send_file(
        &self,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let sent = Pin::new(&mut *lock(&self.stream)).poll_send_file(cx, file, offset, len);
        self.count(sent)
    }

    /// Counts the bytes a write moved.
    fn count(&self, written: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(len)) = written {
            self.sent.fetch_add(len as u64, Ordering::Relaxed);
        }
        written
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut *lock(&self.stream)).poll_write(cx, buf);
        self.count(written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.stream)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.stream)).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::connection::tests::{content, Pipe, Spy};
    use crate::protocol::{FileName, PeerReply, PeerRequest};
    use crate::storage::Folder;

    /// Two connections joined by an in-memory pipe, which cannot send
    /// files through the kernel.
    fn pair() -> (Connection, Connection) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let idle = Duration::from_secs(5);
        (
            Connection::new(Box::new(Pipe(a)), idle).unwrap(),
            Connection::new(Box::new(Pipe(b)), idle).unwrap(),
        )
    }

    #[tokio::test]
    async fn messages_and_bodies_cross_both_ways_at_once() {
        let (mut asker, server) = pair();
        // Requests sent before the split stay readable after it.
        asker.write(&PeerRequest::Layer).await.unwrap();
        asker.write(&PeerRequest::Piece { index: 1 }).await.unwrap();
        let (mut requests, mut replies) = split(server);
        let (mut answers, mut asks) = split(asker);
        let piece = vec![9u8; 300_000];
        let serving = async {
            assert_eq!(
                requests.message::<PeerRequest>(None).await.unwrap(),
                Some(PeerRequest::Layer)
            );
            assert_eq!(
                requests.message::<PeerRequest>(None).await.unwrap(),
                Some(PeerRequest::Piece { index: 1 })
            );
            replies
                .message_with_body(&PeerReply::Piece { index: 1 }, &piece)
                .await
                .unwrap();
            replies.message(&PeerReply::Have { index: 2 }).await.unwrap();
            assert_eq!(requests.message::<PeerRequest>(None).await.unwrap(), None);
        };
        let asking = async {
            assert_eq!(
                answers.message(None).await.unwrap(),
                Some(PeerReply::Piece { index: 1 })
            );
            assert_eq!(answers.body(300_000).await.unwrap(), piece);
            assert_eq!(answers.message(None).await.unwrap(), Some(PeerReply::Have { index: 2 }));
            asks.close().await;
        };
        tokio::join!(serving, asking);
    }

    #[tokio::test]
    async fn a_short_body_and_a_silent_peer_are_errors() {
        let (asker, server) = pair();
        let (mut answers, _asks) = split(asker);
        let (_requests, mut replies) = split(server);
        replies.message(&PeerReply::Piece { index: 0 }).await.unwrap();
        replies.close().await;
        answers.message::<PeerReply>(None).await.unwrap();
        assert!(matches!(
            answers.body(10).await,
            Err(ConnectionError::ClosedMidBody {
                received: 0,
                expected: 10
            })
        ));
        let (asker, _server) = pair();
        let (mut answers, _asks) = split(asker);
        let silent = answers.message::<PeerReply>(Some(Duration::from_millis(10))).await;
        assert!(matches!(silent, Err(ConnectionError::Idle(_))));
    }

    /// A file of `content` in a fresh folder, opened for reading pieces.
    async fn part_data(content: &[u8]) -> (tempfile::TempDir, PartData) {
        let dir = tempfile::tempdir().unwrap();
        let folder = Folder::create_empty(dir.path()).unwrap();
        let name: FileName = "f".parse().unwrap();
        folder.write(&name, content.to_vec()).await.unwrap();
        let (_, data) = folder.open_pieces(&name).await.unwrap();
        (dir, data)
    }

    /// Sends bytes `range` of `content` as a piece from one end of `server`
    /// to the other end `asker`; returns what arrived.
    async fn send_piece(server: Connection, asker: Connection, content: &[u8], range: Range<u64>) -> Vec<u8> {
        let (_dir, data) = part_data(content).await;
        let (_requests, mut replies) = split(server);
        let (mut answers, _asks) = split(asker);
        let len = (range.end - range.start) as usize;
        let header = PeerReply::Piece { index: 3 };
        let (sent, arrived) = tokio::join!(replies.message_with_file(&header, &data, range), async {
            assert_eq!(
                answers.message(None).await.unwrap(),
                Some(PeerReply::Piece { index: 3 })
            );
            answers.body(len).await.unwrap()
        });
        sent.unwrap();
        arrived.to_vec()
    }

    #[tokio::test]
    async fn a_piece_goes_out_through_the_kernel_from_its_place_in_the_file() {
        let file = content(3 * CHUNK_LEN);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let near = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (near, far) = tokio::join!(near, listener.accept());
        let (written, sent_from_file) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let spy = Spy {
            inner: Box::new(far.unwrap().0),
            file_sends: usize::MAX,
            written: written.clone(),
            sent_from_file: sent_from_file.clone(),
        };
        let idle = Duration::from_secs(5);
        let server = Connection::new(Box::new(spy), idle).unwrap();
        let asker = Connection::new(Box::new(near.unwrap()), idle).unwrap();
        let range = 1_000_000..1_000_000 + 2 * CHUNK_LEN as u64;
        let arrived = send_piece(server, asker, &file, range.clone()).await;
        assert!(
            arrived == file[range.start as usize..range.end as usize],
            "the piece arrived changed"
        );
        #[cfg(target_os = "linux")]
        assert_eq!(
            sent_from_file.load(Ordering::Relaxed),
            range.end - range.start,
            "the piece did not go through sendfile ({} bytes written)",
            written.load(Ordering::Relaxed)
        );
    }

    #[tokio::test]
    async fn a_stream_that_cannot_send_files_gets_the_piece_copied() {
        let file = content(300_000);
        let (asker, server) = pair();
        let arrived = send_piece(server, asker, &file, 100_000..250_000).await;
        assert!(arrived == file[100_000..250_000], "the piece arrived changed");
    }
}

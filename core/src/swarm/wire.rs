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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::timeout;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::connection::{Connection, ConnectionError, CHUNK_LEN};
use crate::host::BoxStream;
use crate::protocol::{self, MAX_FRAME_LEN};

/// Splits an open connection into its two directions. Bytes the connection
/// had read ahead (requests sent without waiting) stay in the inbound half.
pub fn split(connection: Connection) -> (Inbound, Outbound) {
    let idle = connection.idle_timeout();
    let (stream, read_ahead) = connection.into_parts();
    let (read, write) = tokio::io::split(stream);
    let mut frames = FramedRead::new(read, protocol::frame_codec());
    frames.read_buffer_mut().extend_from_slice(&read_ahead);
    (
        Inbound {
            frames,
            idle,
            received: Arc::default(),
        },
        Outbound {
            frames: FramedWrite::new(write, protocol::frame_codec()),
            idle,
        },
    )
}

/// The receiving direction of a conversation.
pub struct Inbound {
    /// Frames, read from the stream's read half.
    frames: FramedRead<ReadHalf<BoxStream>, LengthDelimitedCodec>,
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
            Some(limit) => timeout(limit, self.frames.next())
                .await
                .map_err(|_| ConnectionError::Idle(limit))?,
            None => self.frames.next().await,
        };
        match next {
            None => Ok(None),
            Some(Ok(payload)) => Ok(Some(protocol::decode(&payload)?)),
            Some(Err(error))
                if error
                    .get_ref()
                    .is_some_and(|e| e.is::<tokio_util::codec::LengthDelimitedCodecError>()) =>
            {
                Err(ConnectionError::FrameTooLarge)
            }
            Some(Err(_)) if !self.frames.read_buffer().is_empty() => Err(ConnectionError::ClosedMidFrame),
            Some(Err(error)) => Err(ConnectionError::Io(error)),
        }
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
            let read = timeout(self.idle, limited.read_buf(&mut body))
                .await
                .map_err(|_| ConnectionError::Idle(self.idle))??;
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
    frames: FramedWrite<WriteHalf<BoxStream>, LengthDelimitedCodec>,
    /// The longest a write may make no progress.
    idle: Duration,
}

impl Outbound {
    /// Sends one message.
    pub async fn message<T: Serialize>(&mut self, message: &T) -> Result<(), ConnectionError> {
        let payload = protocol::encode(message)?;
        debug_assert!(payload.len() <= MAX_FRAME_LEN);
        timeout(self.idle, self.frames.send(payload))
            .await
            .map_err(|_| ConnectionError::Idle(self.idle))??;
        Ok(())
    }

    /// Sends one message and the raw body that follows it.
    pub async fn message_with_body<T: Serialize>(&mut self, message: &T, body: &[u8]) -> Result<(), ConnectionError> {
        self.message(message).await?;
        let stream = self.frames.get_mut();
        crate::connection::write_progressing(stream, body, self.idle).await?;
        timeout(self.idle, stream.flush())
            .await
            .map_err(|_| ConnectionError::Idle(self.idle))??;
        Ok(())
    }

    /// Closes this direction: the other side reads the end of the stream.
    pub async fn close(&mut self) {
        let _ = timeout(self.idle, self.frames.get_mut().shutdown()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{PeerReply, PeerRequest};

    /// Two connections joined by an in-memory pipe.
    fn pair() -> (Connection, Connection) {
        #[derive(Debug)]
        struct Pipe(tokio::io::DuplexStream);
        impl tokio::io::AsyncRead for Pipe {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
            }
        }
        impl tokio::io::AsyncWrite for Pipe {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
            }
            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.0).poll_flush(cx)
            }
            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
            }
        }
        impl crate::host::Stream for Pipe {
            fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
                Ok(([127, 0, 0, 1], 1).into())
            }
        }
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
}

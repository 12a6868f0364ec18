//! Rate caps: a client's upload and download, over all its peer transfers
//! together, each held to a number of bytes per second.
//!
//! Each direction is a token bucket on tokio's clock, so the same code
//! throttles real transfers in real time and simulated ones in virtual time.
//! A transfer may move bytes while its bucket is not in debt, and what it
//! moves is charged afterwards (possibly into debt); the next move waits
//! until the debt is paid. Moves are cut to [`QUANTUM`] bytes, so a cap
//! holds to within a quantum whatever the read and write sizes are.
//!
//! The caps wrap the streams a client uses with other peers ([`Throttled`]);
//! its tracker session is never throttled.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::host::{BoxListener, BoxStream, Listener, Stream};

/// The most bytes one read or write of a capped stream moves. Large enough
/// that a receiver drains a full TCP window in one read (a simulated TCP
/// stack only re-opens the window on big reads), small enough that a cap
/// holds within a fraction of a second at modest rates.
pub const QUANTUM: usize = 64 * 1024;

/// The upload and download caps of one client. Shared by all its streams;
/// changed at any time with [`RateLimits::set`].
#[derive(Debug, Default)]
pub struct RateLimits {
    /// Bytes this client sends to peers.
    up: Bucket,
    /// Bytes this client receives from peers.
    down: Bucket,
}

impl RateLimits {
    /// Caps upload and download at `up` and `down` bytes per second; `0`
    /// means no cap.
    pub fn set(&self, up: u64, down: u64) {
        self.up.set_rate(up);
        self.down.set_rate(down);
    }

    /// The caps now: (upload, download), bytes per second, 0 for none.
    pub fn get(&self) -> (u64, u64) {
        (self.up.rate(), self.down.rate())
    }

    /// `stream`, held to these caps.
    pub fn wrap(self: &Arc<Self>, stream: BoxStream) -> BoxStream {
        Box::new(Throttled {
            inner: stream,
            limits: self.clone(),
            read_wait: None,
            write_wait: None,
        })
    }

    /// `listener`, whose connections are held to these caps.
    pub fn wrap_listener(self: &Arc<Self>, listener: BoxListener) -> BoxListener {
        Box::new(ThrottledListener {
            inner: listener,
            limits: self.clone(),
        })
    }
}

/// One direction's token bucket.
#[derive(Debug, Default)]
struct Bucket {
    /// Bytes per second; 0: no cap. Atomic, so an uncapped stream never
    /// takes the lock.
    rate: AtomicU64,
    /// The balance, guarded by a std mutex (never held across an `.await`).
    state: Mutex<Balance>,
}

/// Tokens in hand (negative: debt) as of an instant.
#[derive(Debug, Default)]
struct Balance {
    /// Bytes that may move now; below zero, what must be paid back first.
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Option<Instant>,
}

impl Bucket {
    fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    fn set_rate(&self, rate: u64) {
        let mut balance = self.state.lock().expect("rate bucket poisoned");
        *balance = Balance::default();
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// `None` if bytes may move now; else when they may.
    fn wait_until(&self, now: Instant) -> Option<Instant> {
        let rate = self.rate();
        if rate == 0 {
            return None;
        }
        let mut balance = self.state.lock().expect("rate bucket poisoned");
        balance.refill(rate, now);
        if balance.tokens >= 0.0 {
            return None;
        }
        let debt = Duration::from_secs_f64(-balance.tokens / rate as f64);
        // Never a zero wait: tokio's timer rounds to milliseconds.
        Some(now + debt.max(Duration::from_millis(1)))
    }

    /// Charges `bytes` that moved.
    fn spend(&self, bytes: usize, now: Instant) {
        let rate = self.rate();
        if rate == 0 || bytes == 0 {
            return;
        }
        let mut balance = self.state.lock().expect("rate bucket poisoned");
        balance.refill(rate, now);
        balance.tokens -= bytes as f64;
    }
}

impl Balance {
    /// Adds what accrued since the last update, up to one quantum: a cap
    /// allows no bursts beyond that after a pause.
    fn refill(&mut self, rate: u64, now: Instant) {
        let accrued = match self.updated {
            Some(updated) => now.saturating_duration_since(updated).as_secs_f64() * rate as f64,
            None => QUANTUM as f64,
        };
        self.tokens = (self.tokens + accrued).min(QUANTUM as f64);
        self.updated = Some(now);
    }
}

/// A stream held to a client's caps.
struct Throttled {
    /// The real stream.
    inner: BoxStream,
    /// The caps.
    limits: Arc<RateLimits>,
    /// The wait before the next read may move bytes, if any.
    read_wait: Option<Pin<Box<Sleep>>>,
    /// The wait before the next write may move bytes, if any.
    write_wait: Option<Pin<Box<Sleep>>>,
}

/// Waits until `bucket` lets bytes move; `Ready` when they may now.
fn poll_allowed(bucket: &Bucket, wait: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> Poll<()> {
    loop {
        if let Some(sleep) = wait {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            *wait = None;
        }
        match bucket.wait_until(Instant::now()) {
            None => return Poll::Ready(()),
            Some(until) => *wait = Some(Box::pin(tokio::time::sleep_until(until))),
        }
    }
}

impl AsyncRead for Throttled {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.limits.down.rate() == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if poll_allowed(&this.limits.down, &mut this.read_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let room = buf.remaining().min(QUANTUM);
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(room));
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let read = limited.filled().len();
        if let Poll::Ready(Ok(())) = polled {
            buf.advance(read);
            this.limits.down.spend(read, Instant::now());
        }
        polled
    }
}

impl AsyncWrite for Throttled {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.limits.up.rate() == 0 {
            return Pin::new(&mut this.inner).poll_write(cx, bytes);
        }
        if poll_allowed(&this.limits.up, &mut this.write_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let move_now = bytes.len().min(QUANTUM);
        let polled = Pin::new(&mut this.inner).poll_write(cx, &bytes[..move_now]);
        if let Poll::Ready(Ok(written)) = polled {
            this.limits.up.spend(written, Instant::now());
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

impl Stream for Throttled {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Sends a file through the kernel like the stream it wraps, charged
    /// to the upload cap as [`AsyncWrite::poll_write`] is: at most a quantum
    /// at a time, and only when the cap allows.
    fn poll_send_file(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.limits.up.rate() == 0 {
            return Pin::new(&mut this.inner).poll_send_file(cx, file, offset, len);
        }
        if poll_allowed(&this.limits.up, &mut this.write_wait, cx).is_pending() {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_send_file(cx, file, offset, len.min(QUANTUM));
        if let Poll::Ready(Ok(sent)) = polled {
            this.limits.up.spend(sent, Instant::now());
        }
        polled
    }
}

/// A listener whose connections are held to a client's caps.
struct ThrottledListener {
    inner: BoxListener,
    limits: Arc<RateLimits>,
}

impl Listener for ThrottledListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxStream, SocketAddr)>> {
        self.inner
            .poll_accept(cx)
            .map_ok(|(stream, from)| (self.limits.wrap(stream), from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A pair of connected in-memory streams, as `Stream`s that can send a
    /// file (as the kernel would), so the caps' forwarding of it is tested.
    struct Pipe(tokio::io::DuplexStream);

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

        /// Stands in for the kernel: reads the file, writes what it read.
        fn poll_send_file(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            file: &std::fs::File,
            offset: u64,
            len: usize,
        ) -> Poll<io::Result<usize>> {
            let mut bytes = vec![0u8; len.min(1 << 16)];
            let read = std::os::unix::fs::FileExt::read_at(file, &mut bytes, offset)?;
            Pin::new(&mut self.0).poll_write(cx, &bytes[..read])
        }
    }

    fn pipe() -> (BoxStream, BoxStream) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (Box::new(Pipe(a)), Box::new(Pipe(b)))
    }

    /// How long moving `len` bytes takes, in virtual time, through a
    /// stream capped as `up` on the sending side and `down` on the other.
    async fn time_to_move(len: usize, up: u64, down: u64) -> Duration {
        let (sender, receiver) = pipe();
        let (sending, receiving) = (Arc::new(RateLimits::default()), Arc::new(RateLimits::default()));
        sending.set(up, 0);
        receiving.set(0, down);
        let (mut tx, mut rx) = (sending.wrap(sender), receiving.wrap(receiver));
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            tx.write_all(&vec![7u8; len]).await.unwrap();
        });
        let mut got = vec![0u8; len];
        rx.read_exact(&mut got).await.unwrap();
        writer.await.unwrap();
        started.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn ten_megabytes_at_one_megabyte_a_second_take_ten_seconds() {
        for (up, down) in [(1_000_000, 0), (0, 1_000_000), (1_000_000, 2_000_000)] {
            let took = time_to_move(10_000_000, up, down).await.as_secs_f64();
            assert!((took - 10.0).abs() < 0.2, "up {up}, down {down}: {took} s");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_sent_through_the_kernel_is_held_to_the_upload_cap() {
        use std::io::Write as _;
        const LEN: usize = 10_000_000;
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(&vec![7u8; LEN]).unwrap();
        let limits = Arc::new(RateLimits::default());
        limits.set(1_000_000, 0);
        let (sender, mut receiver) = pipe();
        let mut tx = limits.wrap(sender);
        let started = Instant::now();
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            receiver.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        let mut offset = 0;
        while offset < LEN {
            let send =
                std::future::poll_fn(|cx| Pin::new(&mut tx).poll_send_file(cx, &file, offset as u64, LEN - offset));
            offset += send.await.unwrap();
        }
        drop(tx);
        assert_eq!(reader.await.unwrap(), LEN);
        let took = started.elapsed().as_secs_f64();
        assert!(
            (took - 10.0).abs() < 0.2,
            "10 MB sent from a file at 1 MB/s took {took} s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_uncapped_stream_moves_at_once() {
        assert_eq!(time_to_move(10_000_000, 0, 0).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn one_cap_is_shared_by_every_stream_of_a_client() {
        let limits = Arc::new(RateLimits::default());
        limits.set(1_000_000, 0);
        let started = Instant::now();
        let mut writers = Vec::new();
        for _ in 0..4 {
            let (sender, mut receiver) = pipe();
            let mut tx = limits.wrap(sender);
            writers.push(tokio::spawn(async move {
                tx.write_all(&vec![1u8; 1_000_000]).await.unwrap();
                tx.shutdown().await.unwrap();
            }));
            tokio::spawn(async move {
                let mut sink = Vec::new();
                receiver.read_to_end(&mut sink).await.unwrap();
            });
        }
        for writer in writers {
            writer.await.unwrap();
        }
        let took = started.elapsed().as_secs_f64();
        assert!((took - 4.0).abs() < 0.2, "4 MB through a 1 MB/s cap took {took} s");
    }
}

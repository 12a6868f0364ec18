//! Rate caps: a client's upload and download, over all its peer transfers
//! together, each held to a number of bytes per second.
//!
//! Each direction is a schedule on tokio's clock, so the same code
//! throttles real transfers in real time and simulated ones in virtual time.
//! Before a stream moves bytes it reserves the time they take at the cap,
//! after every move reserved before, and waits for its turn; what it did
//! not move is given back. Streams that share a cap thus take turns, in the
//! order they asked, and each gets its share. Moves are cut to [`QUANTUM`]
//! bytes, and at low rates to what the cap allows in [`LONGEST_MOVE`], so a
//! cap holds to within a move whatever the read and write sizes are, and
//! bytes keep coming however low it is. A new cap applies at once, to
//! moves already waiting for their turn too.
//!
//! The caps wrap the streams a client uses with other peers (`Throttled`);
//! its tracker session is never throttled.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::futures::OwnedNotified;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::host::{BoxListener, BoxStream, Listener, Stream};

/// The most bytes one read or write of a capped stream moves. Large enough
/// that a receiver drains a full TCP window in few reads, small enough that
/// a cap holds within a fraction of a second at modest rates.
pub const QUANTUM: usize = 64 * 1024;

/// The longest one move takes at its cap. Below [`QUANTUM`] bytes per
/// [`LONGEST_MOVE`], moves are cut shorter: a peer that hears nothing for
/// its idle timeout gives up on the other (a quantum at 1,000 bytes a
/// second would take 65 s, past the default 30 s), and a direction idle
/// for a while may move one move's bytes at once, not a whole quantum
/// past a low cap.
pub const LONGEST_MOVE: Duration = Duration::from_millis(100);

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
            read_turn: Turn::Free,
            write_turn: Turn::Free,
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

/// One direction's schedule: the bytes it may move, in the order they were
/// asked for.
#[derive(Debug, Default)]
struct Bucket {
    /// Bytes per second; 0: no cap. Atomic, so an uncapped stream never
    /// takes the lock.
    rate: AtomicU64,
    /// When the direction is next free, guarded by a std mutex (never held
    /// across an `.await`).
    state: Mutex<Schedule>,
    /// Wakes the moves waiting for their turn when the cap changes: their
    /// turns were worked out at the old rate.
    changed: Arc<Notify>,
}

/// The time the moves reserved so far take.
#[derive(Debug, Default)]
struct Schedule {
    /// When the last move reserved ends; `None` before the first.
    next_free: Option<Instant>,
}

/// How long `bytes` take at `rate` bytes per second.
fn duration_of(bytes: usize, rate: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate as f64)
}

/// The most bytes one move takes at `rate` bytes per second: a
/// [`QUANTUM`], or what the rate allows in [`LONGEST_MOVE`], at least one.
fn move_size(rate: u64) -> usize {
    let allowed = (rate as f64 * LONGEST_MOVE.as_secs_f64()) as usize;
    allowed.clamp(1, QUANTUM)
}

impl Bucket {
    fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// A new rate, from now: the moves reserved at the old one are void,
    /// and those waiting for their turn book again. An unchanged rate
    /// changes nothing (resetting would grant a burst each time).
    fn set_rate(&self, rate: u64) {
        let mut schedule = self.state.lock().expect("rate schedule poisoned");
        if self.rate() == rate {
            return;
        }
        *schedule = Schedule::default();
        self.rate.store(rate, Ordering::Relaxed);
        drop(schedule);
        self.changed.notify_waiters();
    }

    /// Reserves the time to move up to `bytes` bytes, after every move
    /// reserved before: `None` if they may move now, else when they may.
    /// Streams that share a cap thus take turns in the order they asked
    /// (a wait computed from a shared debt would let whichever stream
    /// happens to wake first move every time, and starve the others). A
    /// direction idle for a while may make two moves ([`move_size`]) at
    /// once: the one its slack allows, and the one due now.
    fn reserve(&self, bytes: usize, now: Instant) -> Option<Instant> {
        let rate = self.rate();
        if rate == 0 {
            return None;
        }
        let mut schedule = self.state.lock().expect("rate schedule poisoned");
        let slack = duration_of(move_size(rate), rate);
        let earliest = now.checked_sub(slack).unwrap_or(now);
        let start = schedule.next_free.map_or(earliest, |free| free.max(earliest));
        schedule.next_free = Some(start + duration_of(bytes, rate));
        (start > now).then_some(start)
    }

    /// Gives back the time of `bytes` reserved and not moved.
    fn refund(&self, bytes: usize) {
        let rate = self.rate();
        if rate == 0 || bytes == 0 {
            return;
        }
        let mut schedule = self.state.lock().expect("rate schedule poisoned");
        if let Some(free) = schedule.next_free.as_mut() {
            *free = free.checked_sub(duration_of(bytes, rate)).unwrap_or(*free);
        }
    }
}

/// Where a stream's read or write stands with its direction's schedule.
#[derive(Debug, Default)]
enum Turn {
    /// Nothing reserved.
    #[default]
    Free,
    /// A move of this many bytes is reserved, from when the sleep ends,
    /// unless the cap changes first.
    Waiting {
        /// Until the turn.
        sleep: Pin<Box<Sleep>>,
        /// Resolves if the cap changes before: the turn is void then.
        changed: Pin<Box<OwnedNotified>>,
        /// The bytes reserved.
        reserved: usize,
    },
    /// A move of this many bytes may happen now.
    Granted(usize),
}

/// A stream held to a client's caps.
struct Throttled {
    /// The real stream.
    inner: BoxStream,
    /// The caps.
    limits: Arc<RateLimits>,
    /// The next read's turn.
    read_turn: Turn,
    /// The next write's turn.
    write_turn: Turn,
}

/// Waits for the turn to move up to `want` bytes; `Ready` with the bytes
/// granted.
fn poll_turn(bucket: &Bucket, turn: &mut Turn, want: usize, cx: &mut Context<'_>) -> Poll<usize> {
    loop {
        match turn {
            Turn::Granted(granted) => return Poll::Ready(*granted),
            Turn::Waiting {
                sleep,
                changed,
                reserved,
            } => {
                if changed.as_mut().poll(cx).is_ready() {
                    *turn = Turn::Free;
                } else if sleep.as_mut().poll(cx).is_ready() {
                    *turn = Turn::Granted(*reserved);
                } else {
                    return Poll::Pending;
                }
            }
            Turn::Free => {
                // Listening before reserving: a change in between voids
                // this turn rather than going unheard.
                let changed = Box::pin(bucket.changed.clone().notified_owned());
                *turn = match bucket.reserve(want, Instant::now()) {
                    None => Turn::Granted(want),
                    Some(at) => Turn::Waiting {
                        sleep: Box::pin(tokio::time::sleep_until(at)),
                        changed,
                        reserved: want,
                    },
                }
            }
        }
    }
}

impl AsyncRead for Throttled {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let bucket = &this.limits.down;
        if bucket.rate() == 0 || buf.remaining() == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let want = buf.remaining().min(move_size(bucket.rate()));
        let Poll::Ready(granted) = poll_turn(bucket, &mut this.read_turn, want, cx) else {
            return Poll::Pending;
        };
        let room = granted.min(buf.remaining());
        // Through tokio's `Take`, which passes on the buffer's unfilled
        // part as it is: a buffer of our own would have to be zeroed first,
        // 64 KiB on every read.
        let before = buf.filled().len();
        let polled = Pin::new(&mut (&mut this.inner).take(room as u64)).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        // Nothing to read yet: the turn goes back, so a stream that waits
        // for its peer to speak holds up no other.
        this.read_turn = Turn::Free;
        match &polled {
            Poll::Ready(Ok(())) => bucket.refund(granted - read),
            _ => bucket.refund(granted),
        }
        polled
    }
}

impl AsyncWrite for Throttled {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let bucket = &this.limits.up;
        if bucket.rate() == 0 {
            // A turn of a cap since lifted does not carry over to the next.
            this.write_turn = Turn::Free;
        }
        if bucket.rate() == 0 || bytes.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, bytes);
        }
        let want = bytes.len().min(move_size(bucket.rate()));
        let Poll::Ready(granted) = poll_turn(bucket, &mut this.write_turn, want, cx) else {
            return Poll::Pending;
        };
        let move_now = granted.min(bytes.len());
        let polled = Pin::new(&mut this.inner).poll_write(cx, &bytes[..move_now]);
        end_turn(bucket, &mut this.write_turn, granted, &polled);
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

    /// The wrapped stream's: time this wrapper holds a write back, for the
    /// cap, leaves the receiver's window open, so it is not counted.
    fn receiver_limited(&self) -> Option<std::time::Duration> {
        self.inner.receiver_limited()
    }

    /// Sends a file through the kernel like the stream it wraps, charged
    /// to the upload cap as [`AsyncWrite::poll_write`] is: at most a move
    /// at a time, and only when the cap allows.
    fn poll_send_file(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let bucket = &this.limits.up;
        if bucket.rate() == 0 {
            this.write_turn = Turn::Free;
        }
        if bucket.rate() == 0 || len == 0 {
            return Pin::new(&mut this.inner).poll_send_file(cx, file, offset, len);
        }
        let want = len.min(move_size(bucket.rate()));
        let Poll::Ready(granted) = poll_turn(bucket, &mut this.write_turn, want, cx) else {
            return Poll::Pending;
        };
        let polled = Pin::new(&mut this.inner).poll_send_file(cx, file, offset, granted.min(len));
        end_turn(bucket, &mut this.write_turn, granted, &polled);
        polled
    }
}

/// After an upload move that was `granted` bytes: a move still pending
/// keeps its turn (no room on the wire yet); one that is done frees the
/// turn and gives back what it did not send.
fn end_turn(bucket: &Bucket, turn: &mut Turn, granted: usize, polled: &Poll<io::Result<usize>>) {
    let sent = match polled {
        Poll::Pending => return,
        Poll::Ready(Ok(sent)) => *sent,
        Poll::Ready(Err(_)) => 0,
    };
    *turn = Turn::Free;
    bucket.refund(granted - sent);
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
    /// Checks that the bytes arrive intact, read as the download reads: the
    /// first half into a buffer filled a little more on each read, the
    /// rest into the uninitialised room of a `BytesMut`.
    async fn time_to_move(len: usize, up: u64, down: u64) -> Duration {
        let (sender, receiver) = pipe();
        let (sending, receiving) = (Arc::new(RateLimits::default()), Arc::new(RateLimits::default()));
        sending.set(up, 0);
        receiving.set(0, down);
        let (mut tx, mut rx) = (sending.wrap(sender), receiving.wrap(receiver));
        let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let started = Instant::now();
        let writer = tokio::spawn({
            let sent = sent.clone();
            async move { tx.write_all(&sent).await.unwrap() }
        });
        let mut first_half = vec![0u8; len / 2];
        rx.read_exact(&mut first_half).await.unwrap();
        let mut rest = bytes::BytesMut::with_capacity(len - len / 2);
        while rest.len() < len - len / 2 {
            assert!(rx.read_buf(&mut rest).await.unwrap() > 0, "the stream ended early");
        }
        writer.await.unwrap();
        let took = started.elapsed();
        assert!(
            first_half == sent[..len / 2] && rest[..] == sent[len / 2..],
            "the bytes changed on the way"
        );
        took
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_capped_stream_shows_the_receive_window_count_of_the_stream_it_wraps() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _reader = tokio::net::TcpStream::connect(tcp.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = tcp.accept().await.unwrap();
        let limits = Arc::new(RateLimits::default());
        limits.set(1_000_000, 0);
        let capped = limits.wrap(Box::new(accepted));
        assert_eq!(capped.receiver_limited(), Some(Duration::ZERO));
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
    async fn a_low_cap_keeps_bytes_coming_and_gives_no_burst() {
        // At 1,000 bytes a second, a quantum would take 65 s: past an idle
        // timeout of 30 s, a peer would have given up. And a first move of
        // a whole quantum would have let 60,000 bytes through at once.
        let (sender, mut receiver) = pipe();
        let limits = Arc::new(RateLimits::default());
        limits.set(1_000, 0);
        let mut tx = limits.wrap(sender);
        tokio::spawn(async move { tx.write_all(&[1u8; 3_000]).await.unwrap() });
        let started = Instant::now();
        let (mut last, mut longest_gap, mut received) = (started, Duration::ZERO, 0);
        let mut buffer = [0u8; 1024];
        while received < 3_000 {
            received += receiver.read(&mut buffer).await.unwrap();
            longest_gap = longest_gap.max(last.elapsed());
            last = Instant::now();
        }
        assert!(longest_gap <= LONGEST_MOVE, "{longest_gap:?} without a byte");
        let took = started.elapsed().as_secs_f64();
        // Less a burst of two moves (200 bytes) for a direction idle before.
        assert!((took - 2.8).abs() < 0.1, "3,000 bytes at 1,000 B/s took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_cap_applies_to_moves_already_waiting() {
        // Ten streams share a cap of 10,000 B/s, each with 10,000 bytes to
        // send, so their turns are booked up to a second ahead. After one
        // second the cap is lifted, or raised tenfold: the 90,000 bytes
        // left move at once, or in 0.9 s (less a burst of two moves), not
        // after turns booked at the old rate.
        for (new_cap, expected) in [(0, 1.0), (100_000, 1.7)] {
            let limits = Arc::new(RateLimits::default());
            limits.set(10_000, 0);
            let started = Instant::now();
            let mut readers = Vec::new();
            for _ in 0..10 {
                let (sender, mut receiver) = pipe();
                let mut tx = limits.wrap(sender);
                tokio::spawn(async move { tx.write_all(&[1u8; 10_000]).await.unwrap() });
                readers.push(tokio::spawn(async move {
                    receiver.read_exact(&mut [0u8; 10_000]).await.unwrap();
                }));
            }
            // A virtual second (the clock is paused): the cap changes
            // while the turns booked at the old rate wait.
            tokio::time::sleep(Duration::from_secs(1)).await;
            limits.set(new_cap, 0);
            for reader in readers {
                reader.await.unwrap();
            }
            let took = started.elapsed().as_secs_f64();
            assert!(
                (took - expected).abs() < 0.1,
                "cap changed to {new_cap} after 1 s: took {took} s, not {expected}"
            );
        }
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

    #[tokio::test(start_paused = true)]
    async fn streams_that_share_a_cap_take_turns() {
        // Two streams write as fast as they may through one 1 MB/s cap:
        // after two seconds each has moved about half of it. (With waits
        // worked out from a shared debt, whichever stream woke first moved
        // every time, and the other got next to nothing.)
        let limits = Arc::new(RateLimits::default());
        limits.set(1_000_000, 0);
        let moved: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
        for counter in &moved {
            let (sender, mut receiver) = pipe();
            let mut tx = limits.wrap(sender);
            tokio::spawn(async move {
                let _ = tx.write_all(&vec![1u8; 4_000_000]).await;
            });
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 1 << 16];
                while let Ok(read) = receiver.read(&mut buffer).await {
                    if read == 0 {
                        break;
                    }
                    counter.fetch_add(read as u64, Ordering::Relaxed);
                }
            });
        }
        // What moved in 2 s at the cap is what the test measures; the clock
        // is paused, so the 2 s are virtual and cost no wall-clock time.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (a, b) = (moved[0].load(Ordering::Relaxed), moved[1].load(Ordering::Relaxed));
        assert!(
            (a + b).abs_diff(2_000_000) < 200_000,
            "{a} + {b} bytes in 2 s at 1 MB/s"
        );
        assert!(a.abs_diff(b) <= 2 * QUANTUM as u64, "unfair shares: {a} and {b}");
    }
}

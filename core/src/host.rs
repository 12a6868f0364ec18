//! The seam between a node and the world it runs in.
//!
//! The tracker and the peers never name `tokio::net` or spawn tasks by
//! themselves: whoever starts a node gives it a [`Host`], which connects
//! sockets, spawns the node's tasks and runs its blocking work (file I/O,
//! hashing), and an already-bound [`Listener`]. [`OsHost`] is the real one:
//! this machine's TCP stack, tokio's task pool and its blocking threads. The
//! scenario runner's simulator is another: sockets on a simulated network,
//! tasks scoped to a simulated host, blocking work done inline so that a run
//! repeats exactly. The node code is the same for both.

use std::fs::File;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// A future a node hands to its host.
pub type Task = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A byte stream to another node: a TCP connection, real or simulated, or
/// a wrapper around one (a rate cap, a scripted fault).
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// The address of the other side.
    fn peer_addr(&self) -> io::Result<SocketAddr>;

    /// Writes up to `len` bytes of `file`, starting at `offset`, as
    /// [`AsyncWrite::poll_write`] writes bytes from memory, but without
    /// bringing them into this process: the kernel sends them from its page
    /// cache (`sendfile`). Returns how many bytes went out; 0 means the
    /// file ends before `offset`.
    ///
    /// A stream that cannot (a simulated one; any stream off Linux) answers
    /// an error of kind [`io::ErrorKind::Unsupported`], the default: the
    /// caller then reads the file and writes its bytes. A wrapper forwards
    /// this to the stream it wraps if it can account for the bytes without
    /// seeing them (a rate cap counts them, a fault counts them up to its
    /// byte); otherwise it keeps the default.
    fn poll_send_file(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        let _ = (cx, file, offset, len);
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }

    /// How long, in all, this stream's sends have waited for the other
    /// side to make room: its receive window was full, because it reads
    /// slowly (or its window is small for the path's round trip). A slow
    /// link, or a sender that writes little, does not count. So a sender
    /// can tell a reader that trickles from its own slow uplink.
    ///
    /// `None` where the stream cannot tell, the default: any stream off
    /// Linux, an in-memory pipe. A simulated one tells, from its simulated
    /// kernel. A wrapper forwards this to the stream it wraps.
    fn receiver_limited(&self) -> Option<Duration> {
        None
    }
}

/// A stream of any kind.
pub type BoxStream = Box<dyn Stream>;

/// A boxed stream is a stream: every call, the optional ones included,
/// reaches the stream inside, so a wrapper around a [`BoxStream`] forwards
/// a capability by calling it on its inner box.
impl<S: Stream + ?Sized> Stream for Box<S> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        (**self).peer_addr()
    }

    fn poll_send_file(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut **self).poll_send_file(cx, file, offset, len)
    }

    fn receiver_limited(&self) -> Option<Duration> {
        (**self).receiver_limited()
    }
}

/// A bound socket that accepts connections.
pub trait Listener: Send + 'static {
    /// The address it is bound to.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Accepts the next connection, with the address it comes from.
    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxStream, SocketAddr)>>;
}

/// A listener of any kind.
pub type BoxListener = Box<dyn Listener>;

/// Where a node's sockets, tasks and blocking work live.
pub trait Host: Send + Sync + 'static {
    /// Opens a connection to `addr`.
    fn connect(&self, addr: SocketAddr) -> Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>>;

    /// Runs `task` in the background, as a task of this node: it ends when
    /// it completes, or when the node's host goes down.
    fn spawn(&self, task: Task);

    /// Starts `job`, which may block (file I/O, hashing), away from the
    /// tasks that serve the network; the returned future resolves when it
    /// is done. The job starts at once, before the future is polled, so a
    /// caller can overlap it with other work.
    fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) -> Task;

    /// Starts `job` as [`Host::run_blocking`] does, for a job that may take
    /// seconds (hashing a whole file), or that must keep pace with the
    /// short jobs rather than wait behind them (the whole-file hash of a
    /// swarm download): a host that keeps few blocking threads runs it on a
    /// thread of its own, so the two never queue behind each other.
    fn run_long(&self, job: Box<dyn FnOnce() + Send>) -> Task {
        self.run_blocking(job)
    }
}

impl dyn Host {
    /// Runs `job` as [`Host::run_blocking`] does, and returns its result.
    pub fn blocking<R, F>(&self, job: F) -> impl Future<Output = R> + Send + 'static
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (job, result) = reporting(job);
        result_of(self.run_blocking(job), result)
    }

    /// Runs `job` as [`Host::run_long`] does, and returns its result.
    pub fn long<R, F>(&self, job: F) -> impl Future<Output = R> + Send + 'static
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (job, result) = reporting(job);
        result_of(self.run_long(job), result)
    }
}

/// `job`, made to send its result on the returned channel.
fn reporting<R, F>(job: F) -> (Box<dyn FnOnce() + Send>, tokio::sync::oneshot::Receiver<R>)
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (result, receiver) = tokio::sync::oneshot::channel();
    let job = Box::new(move || {
        // The receiver only goes away if the caller gave up waiting.
        let _ = result.send(job());
    });
    (job, receiver)
}

/// The result of a job started as `running`, once it is done.
async fn result_of<R>(running: Task, result: tokio::sync::oneshot::Receiver<R>) -> R {
    running.await;
    result.await.expect("a blocking job panicked")
}

/// The most long jobs [`OsHost`] runs on threads of their own at once.
const LONG_THREADS: usize = 4;

/// How many long jobs run on threads of their own now, in this process.
static LONG_RUNNING: AtomicUsize = AtomicUsize::new(0);

/// The real host: this machine's TCP stack and tokio's runtime.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsHost;

impl OsHost {
    /// The real host, shared.
    pub fn shared() -> Arc<dyn Host> {
        Arc::new(OsHost)
    }
}

impl Host for OsHost {
    fn connect(&self, addr: SocketAddr) -> Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send>> {
        Box::pin(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            // As for accepted streams: small messages go out at once.
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxStream)
        })
    }

    fn spawn(&self, task: Task) {
        tokio::spawn(task);
    }

    fn run_blocking(&self, job: Box<dyn FnOnce() + Send>) -> Task {
        let running = tokio::task::spawn_blocking(job);
        Box::pin(async move {
            if let Err(error) = running.await {
                if error.is_panic() {
                    std::panic::resume_unwind(error.into_panic());
                }
            }
        })
    }

    /// A thread of its own: `phile get` and `phile peer` keep tokio's
    /// blocking pool small, for the short jobs of each piece. At most
    /// `LONG_THREADS` at once, since peers can start long jobs (each
    /// complaint about a piece hashes a file): past that, or if the system
    /// refuses a thread, the job waits its turn in the blocking pool.
    fn run_long(&self, job: Box<dyn FnOnce() + Send>) -> Task {
        if LONG_RUNNING.fetch_add(1, Ordering::AcqRel) >= LONG_THREADS {
            LONG_RUNNING.fetch_sub(1, Ordering::AcqRel);
            return self.run_blocking(job);
        }
        // Where the job waits to be taken, so that it is not lost if no
        // thread can be started.
        let slot = Arc::new(std::sync::Mutex::new(Some(job)));
        let (ended, end) = tokio::sync::oneshot::channel();
        let taken = slot.clone();
        let spawned = std::thread::Builder::new()
            .name("phile-long-job".into())
            .spawn(move || {
                let job = taken.lock().expect("never poisoned").take().expect("taken once");
                let _ = ended.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)));
                LONG_RUNNING.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            LONG_RUNNING.fetch_sub(1, Ordering::AcqRel);
            let job = slot.lock().expect("never poisoned").take().expect("not taken");
            return self.run_blocking(job);
        }
        Box::pin(async move {
            if let Ok(Err(panic)) = end.await {
                std::panic::resume_unwind(panic);
            }
        })
    }
}

impl Stream for tokio::net::TcpStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpStream::peer_addr(self)
    }

    #[cfg(target_os = "linux")]
    fn poll_send_file(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        file: &File,
        offset: u64,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        use std::os::fd::AsFd;
        loop {
            std::task::ready!(self.poll_write_ready(cx))?;
            // `try_io` clears the readiness on `WouldBlock`, so the next
            // `poll_write_ready` waits for the socket to drain.
            let sent = self.try_io(tokio::io::Interest::WRITABLE, || {
                send_file(self.as_fd(), file.as_fd(), offset, len)
            });
            match sent {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                // The file system cannot feed sendfile (EINVAL), or the
                // kernel lacks it (ENOSYS): reading and writing will do.
                Err(error) if matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::Unsupported, error)));
                }
                other => return Poll::Ready(other),
            }
        }
    }

    #[cfg(target_os = "linux")]
    fn receiver_limited(&self) -> Option<Duration> {
        use std::os::fd::AsFd;
        receive_window_waits(self.as_fd())
    }
}

/// Sends up to `len` bytes of `file`, from `offset`, to `socket`, with
/// `sendfile(2)`: the kernel moves them from the page cache to the socket
/// without copying them through this process. The file's own position is
/// left alone. The only `unsafe` of the zero-copy path.
///
/// The socket is non-blocking: a full send buffer is `WouldBlock`. Reading
/// the file is not: pages that are not in the page cache are read from the
/// disk during the call, on the calling task's thread (as nginx's
/// `sendfile on` does). The kernel's readahead overlaps those reads with
/// the sending, so this waits only when the disk is slower than the link; a
/// freshly written or recently sent file is in the page cache.
#[cfg(target_os = "linux")]
fn send_file(
    socket: std::os::fd::BorrowedFd<'_>,
    file: std::os::fd::BorrowedFd<'_>,
    offset: u64,
    len: usize,
) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // A 32-bit `off_t` cannot reach past 2 GiB: the caller copies instead.
    let mut offset = libc::off_t::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::Unsupported))?;
    // SAFETY: both descriptors are borrowed, so they stay open for the whole
    // call; `offset` is a live local the kernel reads and advances; no other
    // memory of this process is touched.
    let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), &mut offset, len) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sent as usize)
}

/// How long, in all, the sends on `socket` were held up by the receiver's
/// window: the kernel's `tcpi_rwnd_limited` (`TCP_INFO`, Linux 4.10 on).
/// Time the link, the congestion window or the sender itself held the
/// sends up is counted elsewhere. `None` from a kernel that does not keep
/// the count.
#[cfg(target_os = "linux")]
fn receive_window_waits(socket: std::os::fd::BorrowedFd<'_>) -> Option<Duration> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain integers, for which all zeroes is a
    // valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is borrowed, so it stays open for the call;
    // the kernel writes at most `len` bytes into `info`, which is that
    // big, and sets `len` to how many it wrote.
    let got = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    let known = std::mem::offset_of!(libc::tcp_info, tcpi_rwnd_limited) + std::mem::size_of::<u64>();
    (got == 0 && len as usize >= known).then(|| Duration::from_micros(info.tcpi_rwnd_limited))
}

impl Listener for tokio::net::TcpListener {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpListener::local_addr(self)
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(BoxStream, SocketAddr)>> {
        tokio::net::TcpListener::poll_accept(self, cx).map_ok(|(stream, from)| {
            // Requests and replies are small and answered at once: do not
            // let Nagle's algorithm hold them back waiting for more.
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "cannot disable Nagle's algorithm");
            }
            (Box::new(stream) as BoxStream, from)
        })
    }
}

impl From<tokio::net::TcpListener> for BoxListener {
    fn from(listener: tokio::net::TcpListener) -> BoxListener {
        Box::new(listener)
    }
}

/// Any byte stream, as a [`Stream`], with the address of its other side:
/// a socket of another network than this machine's (a simulated one), or an
/// in-memory pipe in a test.
pub struct PeerStream<S> {
    /// The stream.
    inner: S,
    /// The address of the other side.
    peer: SocketAddr,
    /// Reads [`Stream::receiver_limited`] off the stream, where its
    /// network can tell.
    receiver_limited: fn(&S) -> Option<Duration>,
}

impl<S> PeerStream<S> {
    /// `inner`, whose other side is at `peer`; it cannot tell how long its
    /// sends wait on the other side.
    pub fn new(inner: S, peer: SocketAddr) -> PeerStream<S> {
        PeerStream {
            inner,
            peer,
            receiver_limited: |_| None,
        }
    }

    /// The same stream, whose [`Stream::receiver_limited`] `gauge` reads.
    pub fn gauged(self, gauge: fn(&S) -> Option<Duration>) -> PeerStream<S> {
        PeerStream {
            receiver_limited: gauge,
            ..self
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PeerStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PeerStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for PeerStream<S> {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }

    fn receiver_limited(&self) -> Option<Duration> {
        (self.receiver_limited)(&self.inner)
    }
}

/// Accepts the next connection on `listener`.
pub async fn accept(listener: &mut BoxListener) -> io::Result<(BoxStream, SocketAddr)> {
    std::future::poll_fn(|cx| listener.poll_accept(cx)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a fresh TCP connection on loopback: (reader, writer).
    #[cfg(target_os = "linux")]
    async fn loopback_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reader = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (writer, _) = listener.accept().await.unwrap();
        (reader, writer)
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_tcp_stream_counts_the_time_its_reader_keeps_it_waiting() {
        use tokio::io::AsyncWriteExt;
        let (reader, mut writer) = loopback_pair().await;
        assert_eq!(writer.receiver_limited(), Some(Duration::ZERO), "nothing sent yet");
        // The reader reads nothing: once its window and the send buffer
        // are full, the writes wait on it. 300 ms of writing is the span
        // measured, not a wait for anything.
        let chunk = vec![0; 64 << 10];
        let writing = async {
            loop {
                writer.write_all(&chunk).await.unwrap();
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), writing).await;
        let waited = writer.receiver_limited().unwrap();
        assert!(waited >= Duration::from_millis(150), "counted {waited:?} of 300 ms");
        drop(reader);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_tcp_stream_does_not_count_the_time_its_writer_is_slow() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut reader, mut writer) = loopback_pair().await;
        let reading = tokio::spawn(async move { reader.read_to_end(&mut Vec::new()).await });
        // 64 KiB every 20 ms, as a rate cap or a slow uplink would let
        // them go: the reader keeps up, so the writes never wait on it.
        // The pace is the writer's, not a wait for anything.
        let mut pace = tokio::time::interval(Duration::from_millis(20));
        for _ in 0..15 {
            pace.tick().await;
            writer.write_all(&[0; 64 << 10]).await.unwrap();
        }
        let waited = writer.receiver_limited().unwrap();
        assert!(waited < Duration::from_millis(50), "counted {waited:?} of 300 ms");
        drop(writer);
        reading.await.unwrap().unwrap();
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_tcp_stream_does_not_count_the_time_a_slow_link_takes() {
        use std::os::fd::AsRawFd;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut reader, mut writer) = loopback_pair().await;
        // The kernel paces the writer's packets to 1 MB/s: a slow uplink.
        let rate: libc::c_uint = 1_000_000;
        // SAFETY: the socket is open for the call; the kernel reads
        // `size_of::<c_uint>()` bytes of `rate`, a live local.
        let set = unsafe {
            libc::setsockopt(
                writer.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MAX_PACING_RATE,
                (&rate as *const libc::c_uint).cast(),
                std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
            )
        };
        assert_eq!(set, 0, "{}", io::Error::last_os_error());
        let reading = tokio::spawn(async move { reader.read_to_end(&mut Vec::new()).await });
        // The reader keeps up, so the writes wait on the link, never on
        // it. 300 ms of writing is the span measured, not a wait for
        // anything.
        let chunk = vec![0; 64 << 10];
        let writing = async {
            loop {
                writer.write_all(&chunk).await.unwrap();
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(300), writing).await;
        let waited = writer.receiver_limited().unwrap();
        assert!(waited < Duration::from_millis(50), "counted {waited:?} of 300 ms");
        reading.abort();
    }

    /// The long threads are counted per process: tests that take them run
    /// one at a time.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn alone() -> std::sync::MutexGuard<'static, ()> {
        ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[test]
    fn a_long_job_runs_while_every_blocking_thread_is_busy() {
        let _alone = alone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let host = OsHost::shared();
            let (release, released) = std::sync::mpsc::channel::<()>();
            // The pool's one thread waits until the long job is done.
            let short = host.blocking(move || released.recv().unwrap());
            let long = tokio::time::timeout(std::time::Duration::from_secs(5), host.long(|| 6 * 7)).await;
            release.send(()).unwrap();
            short.await;
            assert_eq!(long.ok(), Some(42), "the long job waited for the busy pool");
        });
    }

    #[test]
    fn past_the_long_threads_a_long_job_waits_in_the_blocking_pool() {
        let _alone = alone();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let host = OsHost::shared();
            let (release, released) = std::sync::mpsc::channel::<()>();
            let released = Arc::new(std::sync::Mutex::new(released));
            // Every thread of its own taken, by jobs that wait.
            let waiting: Vec<_> = (0..LONG_THREADS)
                .map(|_| {
                    let released = released.clone();
                    host.long(move || released.lock().unwrap().recv().unwrap())
                })
                .collect();
            let name = host.long(|| std::thread::current().name().map(str::to_owned)).await;
            for _ in 0..LONG_THREADS {
                release.send(()).unwrap();
            }
            futures::future::join_all(waiting).await;
            assert_ne!(name.as_deref(), Some("phile-long-job"), "a fifth thread of its own");
        });
    }

    #[test]
    #[should_panic(expected = "hashing went wrong")]
    fn a_long_job_that_panics_panics_its_caller() {
        let _alone = alone();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(OsHost::shared().long(|| panic!("hashing went wrong")));
    }
}

//! A client: a folder, a peer server that seeds it, and a session with the
//! tracker through which it registers, announces and looks up files.
//!
//! A download is three steps, each its own method so a driver (the scenario
//! runner) can interleave them as it needs; [`Client::download`] chains them:
//!
//! 1. [`Client::lookup`] asks the tracker for a holder;
//! 2. [`Client::receive`] fetches the file from it into a temporary file,
//!    checks size and SHA-1 against the tracker's record, and renames it into
//!    place, failing over to other holders as need be;
//! 3. [`Client::announce`] tells the tracker, so this client seeds it too.
//!
//! A swarm download ([`Client::swarm_start`], [`Client::swarm_receive`],
//! chained by [`Client::swarm_download`]) fetches the file in pieces from
//! several peers at once instead (see [`swarm`]).
//!
//! The code is one file per concept; this one holds the client's lifecycle
//! (start, register, announce, leave, kill), its requests to the tracker and
//! its heartbeats:
//!
//! - `download.rs`: the whole-file download (lookup, receive with failover)
//!   and what a download hands back ([`Source`], [`Downloaded`], [`Fetched`]);
//! - `error.rs`: why a client operation or a download failed
//!   ([`ClientError`], [`DownloadError`], [`Rejection`]);
//! - `session.rs`, `holdings.rs`: the session with the tracker and what was
//!   announced on it;
//! - `serve.rs`, `share.rs`, `transfer.rs`: the peer server and the
//!   transfers themselves;
//! - `swarm/`: the swarm download.

mod download;
mod error;
mod holdings;
mod serve;
mod session;
mod share;
mod slots;
pub mod swarm;
mod transfer;
mod turns;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use download::{Downloaded, Fetched, Source, Swarmed, MAX_HOLDERS_TRIED};
pub use error::{ClientError, DownloadError, Rejection};
pub use session::{status, SessionError, StatusAnswer, StatusLimits};
pub use swarm::{SwarmOptions, SwarmStart};
pub use transfer::{Progress, TransferError};

use crate::events::{Event, EventSink, Node, Reporter};
use crate::host::{BoxListener, Host, OsHost};
use crate::protocol::{ClientId, FileInfo, FileName, Trace, TrackerReply, TrackerRequest};
use crate::rate::RateLimits;
use crate::server::{self, Limits, ServerHandle};
use crate::storage::Folder;
use crate::swarm::Swarms;
use crate::trace;
use error::refusal;
use holdings::Holdings;
use serve::Seeder;
use session::{Session, SharedSession};

/// The least time either side of a transfer gives the other for the
/// confirmation at its end: the downloader verifies and syncs the file
/// before it confirms, and the holder closes after reading it. Not the
/// (possibly very short) idle timeout, so the order of their events never
/// depends on how busy the machine is.
pub(crate) const CONFIRMATION_WAIT: Duration = Duration::from_secs(10);

/// How a client behaves.
#[derive(Clone)]
pub struct ClientConfig {
    /// Connection limits and timeouts, for its server and its downloads.
    pub limits: Limits,
    /// The address to give the tracker instead of the session's source IP
    /// and the server's port.
    pub advertise: Option<SocketAddr>,
    /// Where events go besides the tracing log.
    pub events: Option<Arc<dyn EventSink>>,
    /// What watches downloads byte by byte (a progress bar), if anything.
    pub progress: Option<Arc<dyn Progress>>,
    /// Where the client's sockets, tasks and blocking work live.
    pub host: Arc<dyn Host>,
    /// Seeds the order in which swarm downloads fetch pieces that are
    /// equally rare (with the client's id and the file): a scenario's
    /// seed, so a run repeats.
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            limits: Limits::default(),
            advertise: None,
            events: None,
            progress: None,
            host: OsHost::shared(),
            seed: 0,
        }
    }
}

/// A running client.
pub struct Client {
    /// Its id.
    id: ClientId,
    /// Where its sockets, tasks and blocking work live.
    host: Arc<dyn Host>,
    /// Its folder, shared with the peer server that seeds it.
    folder: Arc<Folder>,
    /// Its peer server.
    server: ServerHandle,
    /// Its session with the tracker, once registered. A tokio mutex: a
    /// request holds it across the wait for the reply. Shared with the
    /// heartbeat task, the crash watcher and the peer server.
    session: Arc<SharedSession>,
    /// What it announced on that session; shared with its peer server.
    holdings: Arc<Holdings>,
    /// Cancelled when the client stops or crashes: stops the server, cuts
    /// its transfers, ends the session.
    stop: CancellationToken,
    /// Whether it stopped by crashing: then, as a killed process would,
    /// it saves nothing on its way out.
    crashed: AtomicBool,
    /// Cancelled to end its downloads: when it stops, or alone
    /// ([`Client::halt_downloads`]) while it stays registered and serving.
    halt: CancellationToken,
    /// What watches its downloads, if anything.
    progress: Option<Arc<dyn Progress>>,
    /// Reports its events.
    reporter: Reporter,
    /// Timeouts for the connections it opens.
    limits: Limits,
    /// Caps on its upload and download, over all its peer transfers.
    rate: Arc<RateLimits>,
    /// Counts the downloads under way.
    downloads: TaskTracker,
    /// The address it asks the tracker to give out, if not the default.
    advertise: Option<SocketAddr>,
    /// Its swarm downloads under way, served to others by its peer server.
    swarms: Arc<Swarms>,
    /// Seeds the order of its swarm downloads' pieces.
    seed: u64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("id", &self.id)
            .field("folder", &self.folder)
            .field("server", &self.server)
            .finish()
    }
}

impl Client {
    /// Starts client `id`: serves `folder` on `listener`. It is not
    /// registered with any tracker yet.
    pub fn start(
        id: ClientId,
        folder: Folder,
        listener: impl Into<BoxListener>,
        config: ClientConfig,
    ) -> std::io::Result<Client> {
        let host = config.host.clone();
        let folder = Arc::new(folder.on(host.clone()));
        let reporter = Reporter::new(Node::Client(id), config.events.clone());
        let stop = CancellationToken::new();
        let session = Arc::new(Mutex::new(None));
        let holdings = Arc::new(Holdings::new(id, Arc::downgrade(&session), host.clone()));
        let swarms = Arc::new(Swarms::default());
        let seeder = Arc::new(Seeder {
            folder: folder.clone(),
            reporter: reporter.clone(),
            request_timeout: config.limits.request_timeout,
            holdings: holdings.clone(),
            swarms: swarms.clone(),
            upload_slots: slots::UploadSlots::new(),
            idle_timeout: config.limits.idle_timeout,
            spread: share::Spread::default(),
            found_good: tokio::sync::Mutex::default(),
        });
        let serve = move |connection| seeder.clone().serve(connection);
        let rate = Arc::new(RateLimits::default());
        let listener = rate.wrap_listener(listener.into());
        let server = server::spawn(host.clone(), listener, config.limits, stop.clone(), serve)?;
        host.spawn(Box::pin(end_session_on_stop(stop.clone(), Arc::downgrade(&session))));
        Ok(Client {
            id,
            host,
            folder,
            server,
            session,
            holdings,
            halt: stop.child_token(),
            stop,
            crashed: AtomicBool::new(false),
            progress: config.progress,
            reporter,
            limits: config.limits,
            rate,
            downloads: TaskTracker::new(),
            advertise: config.advertise,
            swarms,
            seed: config.seed,
        })
    }

    /// The client's id.
    pub fn id(&self) -> ClientId {
        self.id
    }

    /// The client's folder.
    pub fn folder(&self) -> &Folder {
        &self.folder
    }

    /// The address its peer server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Whether the client has a session with a tracker.
    pub async fn is_registered(&self) -> bool {
        self.session.lock().await.is_some()
    }

    /// Registers with the tracker at `tracker`. A client has one session:
    /// registering again with the same tracker repeats the registration on
    /// it; registering with another tracker moves the session there (the
    /// first tracker forgets the client, as it would a crashed one).
    pub async fn register(&self, tracker: SocketAddr) -> Result<(), ClientError> {
        let listen = self.local_addr();
        // The tracker tells others the address it sees the client at.
        let seen_over_ipv6 = tracker.ip().to_canonical().is_ipv6();
        if self.advertise.is_none() && listen.is_ipv4() && seen_over_ipv6 {
            return Err(ClientError::UnreachableAtTrackerFamily { listen, tracker });
        }
        let request = TrackerRequest::Register {
            client: self.id,
            port: listen.port(),
            advertise: self.advertise,
        };
        let mut current = self.session.lock().await;
        if let Some(session) = current.as_mut().filter(|session| session.tracker() == tracker) {
            return match session.request(request).await? {
                TrackerReply::Ack => Ok(()),
                other => Err(refusal(other)),
            };
        }
        current.take();
        // A new session: the tracker it reaches knows nothing this client
        // announced before.
        self.holdings.clear();
        let mut session = Session::open(self.host.as_ref(), tracker, self.limits.idle_timeout).await?;
        match session.request(request).await? {
            TrackerReply::Ack => {
                let heartbeat = session.ended();
                *current = Some(session);
                let beats = send_heartbeats(
                    self.id,
                    Arc::downgrade(&self.session),
                    self.limits.heartbeat_interval,
                    heartbeat,
                );
                self.host.spawn(Box::pin(beats));
                Ok(())
            }
            other => Err(refusal(other)),
        }
    }

    /// Tells the tracker about every file in the folder (after a restart).
    /// A file the tracker refuses (it knows other content under that name)
    /// is skipped with a warning; the list returned holds those announced.
    pub async fn announce_held(&self) -> Result<Vec<FileName>, ClientError> {
        let mut announced = Vec::new();
        for file in self.folder.list()? {
            let (info, _) = self.folder.content(&file).await?;
            match self.announce(&file, info).await {
                Ok(()) => announced.push(file),
                Err(ClientError::Refused(reason)) => tracing::warn!(%file, "not announced: {reason}"),
                Err(error) => return Err(error),
            }
        }
        Ok(announced)
    }

    /// Tells the tracker this client holds `file`, which must be in its folder.
    pub async fn upload(&self, file: &FileName) -> Result<FileInfo, ClientError> {
        let (info, _) = self.folder.content(file).await?;
        self.announce(file, info).await?;
        Ok(info)
    }

    /// Tells the tracker this client no longer holds `file` (the version
    /// it announced, so a withdrawal never touches a newer one).
    pub async fn withdraw(&self, file: &FileName) -> Result<(), ClientError> {
        let announced = self.holdings.take(file);
        let request = TrackerRequest::Withdraw {
            file: file.clone(),
            sha1: announced.map(|info| info.sha1),
            reason: None,
        };
        match self.ask_tracker(request).await? {
            TrackerReply::Ack => Ok(()),
            other => Err(refusal(other)),
        }
    }

    /// Tells the tracker this client holds `file` with content `info`, and
    /// the root of its hash tree (remembered by the folder, or computed
    /// now).
    pub async fn announce(&self, file: &FileName, info: FileInfo) -> Result<(), ClientError> {
        let (now, root) = self.folder.content(file).await?;
        if now != info {
            return Err(ClientError::Changed(file.clone()));
        }
        let request = TrackerRequest::Announce {
            file: file.clone(),
            info,
            root,
        };
        match self.ask_tracker(request).await? {
            TrackerReply::Ack => {
                // The peer server checks each file it sends against this.
                self.holdings.record(file, info);
                Ok(())
            }
            other => Err(refusal(other)),
        }
    }

    /// Sends one request on the session and waits for its reply.
    async fn ask_tracker(&self, request: TrackerRequest) -> Result<TrackerReply, ClientError> {
        session::ask(&self.session, self.id, request).await
    }

    /// Sends one request on the session in a task of its own, which runs
    /// to its end whoever waits ([`session::ask_aside`]), and hands back
    /// where its reply will come.
    fn ask_tracker_aside(&self, request: TrackerRequest) -> oneshot::Receiver<Result<TrackerReply, ClientError>> {
        session::ask_aside(self.host.as_ref(), self.session.clone(), self.id, request)
    }

    /// Caps the client's upload and download at `up` and `down` bytes per
    /// second (0: no cap), over all its transfers with other peers together;
    /// transfers under way slow down or speed up at once.
    pub fn set_rate(&self, up: u64, down: u64) {
        self.rate.set(up, down);
    }

    /// Whether the client has stopped (shut down, left, or crashed).
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// Ends the downloads under way, as a stop would (a swarm download
    /// records the pieces it checked), and any begun later, while the
    /// client stays registered and serving: a polite exit stops fetching
    /// at once, then says goodbye ([`Client::leave`]).
    pub fn halt_downloads(&self) {
        self.halt.cancel();
    }

    /// Whether the client's downloads were halted (or it stopped).
    pub fn is_halted(&self) -> bool {
        self.halt.is_cancelled()
    }

    /// Resolves when the client's downloads are halted (or it stops).
    pub async fn halted(&self) {
        self.halt.cancelled().await
    }

    /// Whether the client stopped by crashing ([`Client::kill`],
    /// [`Client::crash`]) rather than politely.
    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    /// Resolves when the client stops, for whatever reason.
    pub async fn stopped(&self) {
        self.stop.cancelled().await
    }

    /// Crashes the client, as a process killed outright would: it reports
    /// `killed` and then nothing more; the peer server stops at once,
    /// transfers are cut mid-stream, the tracker session ends without a
    /// goodbye.
    pub async fn kill(&self) {
        self.crash(trace::next());
        self.session.lock().await.take();
        self.server.shutdown().await;
    }

    /// Crashes the client at once, from anywhere (inside a transfer traced
    /// `trace`, say): reports `killed` with `trace`, silences the client,
    /// and stops it. Its session is dropped by the task watching for the
    /// stop.
    pub fn crash(&self, trace: Trace) {
        if self.stop.is_cancelled() {
            return;
        }
        self.reporter.report(trace, Event::Killed);
        self.reporter.silence();
        // Before the stop, so whoever the stop wakes knows it crashed.
        self.crashed.store(true, Ordering::SeqCst);
        self.stop.cancel();
    }

    /// Leaves politely: tells the tracker (which forgets the client at
    /// once, so no new download is sent here), lets the uploads in progress
    /// finish for up to `grace`, then stops. Not being registered is no
    /// error: it just stops.
    pub async fn leave(&self, grace: Duration) -> Result<(), ClientError> {
        // One hold of the session from the goodbye to its end: a request
        // queued meanwhile (a swarm download's refresh) then finds no
        // session, as if the tracker were gone, instead of going out after
        // the goodbye and being refused.
        let goodbye = async {
            let mut session = self.session.lock().await;
            let reply = match session.as_mut() {
                Some(open) => open.request(TrackerRequest::Leave).await.map_err(ClientError::from),
                None => Err(ClientError::NotRegistered(self.id)),
            };
            session.take();
            reply
        };
        // A courtesy: the tracker forgets a client whose session ends
        // anyway, so a silent one (or a request of ours it leaves
        // hanging, holding the session) is not waited on for long. The
        // stop below ends the session then.
        let said_goodbye = match tokio::time::timeout(GOODBYE_WAIT, goodbye).await {
            Ok(Ok(TrackerReply::Ack) | Err(ClientError::NotRegistered(_))) => Ok(()),
            Ok(Ok(other)) => Err(refusal(other)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(ClientError::GoodbyeUnanswered(GOODBYE_WAIT)),
        };
        self.server.drain(grace).await;
        self.stop.cancel();
        // The downloads it was making end now (and say so): wait for them,
        // so that nothing it does outlives its leaving.
        self.downloads.close();
        self.downloads.wait().await;
        said_goodbye
    }

    /// Stops the peer server (cutting transfers in progress) and ends the
    /// tracker session.
    pub async fn shutdown(&self) {
        self.session.lock().await.take();
        self.stop.cancel();
        self.server.shutdown().await;
    }
}

/// Dropping a client stops it: its server, its session and its tasks go.
impl Drop for Client {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// How long [`Client::leave`] waits for the tracker to answer its goodbye.
pub const GOODBYE_WAIT: Duration = Duration::from_secs(2);

/// Ends the tracker session as soon as the client stops, whoever stopped it
/// (a fault crashes the client from inside its server).
async fn end_session_on_stop(stop: CancellationToken, session: Weak<SharedSession>) {
    stop.cancelled().await;
    if let Some(session) = session.upgrade() {
        session.lock().await.take();
    }
}

/// Sends a heartbeat every `interval` on the session until it ends.
async fn send_heartbeats(node: ClientId, session: Weak<SharedSession>, interval: Duration, ended: CancellationToken) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await; // the first tick is immediate; registering was the first sign of life
    loop {
        tokio::select! {
            biased;
            _ = ended.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(session) = session.upgrade() else { return };
        let mut session = session.lock().await;
        let Some(open) = session.as_mut().filter(|_| !ended.is_cancelled()) else {
            return;
        };
        match open.request(TrackerRequest::Ping).await {
            Ok(TrackerReply::Ack) => {}
            Ok(other) => tracing::warn!(%node, ?other, "the tracker did not acknowledge a heartbeat"),
            Err(error) => {
                tracing::warn!(%node, %error, "heartbeat failed; the session is over");
                session.take();
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Problem;
    use crate::{Tracker, TrackerConfig};
    use std::future::Future as _;
    use std::task::Poll;

    #[tokio::test]
    async fn a_request_set_aside_runs_to_its_end_by_itself_and_the_session_stays_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let folder = Folder::create_empty(dir.path().join("1")).unwrap();
        let client = Client::start(ClientId(1), folder, listener, ClientConfig::default()).unwrap();
        client.register(tracker.local_addr()).await.unwrap();

        // Nobody waits for these: they run all the same, one after the
        // other, each to its end.
        let unheard: Vec<_> = (0..5).map(|_| client.ask_tracker_aside(TrackerRequest::Ping)).collect();
        let waited = client.ask_tracker_aside(TrackerRequest::Ping);
        drop(unheard);
        let timely = |reply| tokio::time::timeout(Duration::from_secs(10), reply);
        assert!(matches!(timely(waited).await, Ok(Ok(Ok(TrackerReply::Ack)))));
        // The session is in step for the next request.
        let next = client.ask_tracker(TrackerRequest::Ping).await;
        assert!(matches!(next, Ok(TrackerReply::Ack)), "{next:?}");
    }

    #[tokio::test]
    async fn a_withdrawal_whose_conversation_is_cut_still_reaches_the_tracker() {
        let dir = tempfile::tempdir().unwrap();
        let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
        let start = |id: u64| {
            let folder = Folder::create_empty(dir.path().join(id.to_string())).unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            Client::start(ClientId(id), folder, listener, ClientConfig::default()).unwrap()
        };
        let (holder, asker) = (start(1), start(2));
        holder.register(tracker.local_addr()).await.unwrap();
        asker.register(tracker.local_addr()).await.unwrap();
        std::fs::write(dir.path().join("1").join("a.txt"), b"went bad").unwrap();
        let file: FileName = "a.txt".parse().unwrap();
        let info = holder.upload(&file).await.unwrap();

        // The conversation that found the copy bad is cut after its first
        // step, the request on its way: dropped half-way, as the peer
        // server drops a conversation it cuts to make room.
        let mut withdrawal = Box::pin(holder.holdings.withdraw_bad(&file, info, Some(Problem::WrongContent)));
        let first_step = std::future::poll_fn(|cx| Poll::Ready(withdrawal.as_mut().poll(cx))).await;
        assert!(first_step.is_pending(), "the withdrawal waits for the tracker");
        drop(withdrawal);

        // The session stays in step, and the tracker no longer offers it.
        // (One turn of the runtime lets the withdrawal take the session
        // first: the ping then waits its turn behind it.)
        tokio::task::yield_now().await;
        let next = holder.ask_tracker(TrackerRequest::Ping).await;
        assert!(matches!(next, Ok(TrackerReply::Ack)), "{next:?}");
        let lookup = TrackerRequest::Lookup { file, failover: false };
        let offered = asker.ask_tracker(lookup).await;
        assert!(matches!(offered, Ok(TrackerReply::NoPeer)), "{offered:?}");
    }

    #[tokio::test]
    async fn a_client_listening_on_ipv4_only_does_not_register_over_ipv6_unless_it_advertises() {
        let dir = tempfile::tempdir().unwrap();
        let start = |advertise: Option<SocketAddr>, id: u64| {
            let folder = Folder::create_empty(dir.path().join(id.to_string())).unwrap();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let config = ClientConfig {
                advertise,
                ..ClientConfig::default()
            };
            Client::start(ClientId(id), folder, listener, config).unwrap()
        };
        // Nothing listens at port 1: the refusal comes before any connection.
        let ipv6_tracker: SocketAddr = "[::1]:1".parse().unwrap();
        let refused = start(None, 1).register(ipv6_tracker).await;
        assert!(
            matches!(refused, Err(ClientError::UnreachableAtTrackerFamily { .. })),
            "{refused:?}"
        );
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("127.0.0.1") && message.contains("[::]:0"), "{message}");
        // An IPv4 tracker written as IPv6 is IPv4.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        let tried = start(None, 2).register(mapped).await;
        assert!(matches!(tried, Err(ClientError::Session(_))), "{tried:?}");
        // With an address to advertise, the tracker tells others that one.
        let advertised = start(Some("192.0.2.1:7000".parse().unwrap()), 3);
        let tried = advertised.register(ipv6_tracker).await;
        assert!(matches!(tried, Err(ClientError::Session(_))), "{tried:?}");
    }
}

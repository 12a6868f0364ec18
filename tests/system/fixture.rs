//! Trackers, clients and raw connections for tests that speak TCP directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use phile_core::events::{Event, EventSink, Node};
use phile_core::protocol::{self, ClientId, FileInfo, Problem, Request, TrackerReply, TrackerRequest};
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, Digest, FileName, Limits, Trace, Tracker, TrackerConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Limits short enough for a test to see them act.
pub fn short_limits() -> Limits {
    Limits {
        session_timeout: Duration::from_millis(500),
        heartbeat_interval: Duration::from_millis(100),
        ..Limits::default()
    }
    .with_idle_timeout(Duration::from_millis(300))
}

pub async fn tracker_with(limits: Limits) -> Tracker {
    tracker_config(TrackerConfig {
        limits,
        ..TrackerConfig::default()
    })
    .await
}

pub async fn tracker_config(config: TrackerConfig) -> Tracker {
    Tracker::bind("127.0.0.1:0", config).await.unwrap()
}

pub async fn tracker() -> Tracker {
    tracker_with(Limits::default()).await
}

/// Every event of the nodes it is attached to, to check what happened.
#[derive(Default)]
pub struct Recorded {
    events: Mutex<Vec<Event>>,
    /// Woken at every event.
    arrived: tokio::sync::Notify,
}

impl EventSink for Recorded {
    fn record(&self, _trace: Trace, _node: Node, event: Event) {
        self.events.lock().unwrap().push(event);
        self.arrived.notify_waiters();
    }
}

impl Recorded {
    pub fn new() -> Arc<Recorded> {
        Arc::default()
    }

    /// The events recorded so far that `keep` picks.
    pub fn matching(&self, keep: impl Fn(&Event) -> bool) -> Vec<Event> {
        let all = self.events.lock().unwrap();
        all.iter().filter(|event| keep(event)).cloned().collect()
    }

    /// Waits until an event that `keep` picks is recorded, at most 10 s.
    pub async fn wait_for(&self, keep: impl Fn(&Event) -> bool) {
        let wait = async {
            loop {
                // Registered before the check, so an event recorded in
                // between still wakes it.
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if !self.matching(&keep).is_empty() {
                    return;
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .expect("the awaited event never came");
    }
}

/// Tests that open thousands of sockets, load the machine, or time what
/// they do take turns: together they would crowd the process's file
/// descriptors, and each would slow what the others time. (A tokio mutex:
/// a turn is held across a test's awaits, and each test has a runtime of
/// its own.)
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Waits for this test's turn (see [`TURN`]).
pub async fn heavy_turn() -> tokio::sync::MutexGuard<'static, ()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    TURN.lock().await
}

/// [`heavy_turn`], for a test outside any runtime.
pub fn heavy_turn_blocking() -> tokio::sync::MutexGuard<'static, ()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    TURN.blocking_lock()
}

pub async fn client_with(id: u64, dir: &Path, limits: Limits) -> Client {
    client_config(
        id,
        dir,
        ClientConfig {
            limits,
            ..ClientConfig::default()
        },
    )
    .await
}

pub async fn client_config(id: u64, dir: &Path, config: ClientConfig) -> Client {
    let folder = Folder::create_empty(dir.join(id.to_string())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Client::start(ClientId(id), folder, listener, config).unwrap()
}

pub async fn client(id: u64, dir: &Path) -> Client {
    client_with(id, dir, Limits::default()).await
}

/// Client `id`, registered with `tracker`.
pub async fn registered(id: u64, dir: &Path, tracker: &Tracker) -> Client {
    let client = client(id, dir).await;
    client.register(tracker.local_addr()).await.unwrap();
    client
}

pub fn name(text: &str) -> FileName {
    text.parse().unwrap()
}

/// Every file under `dir` with its content: to check nothing changed.
pub fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut all = BTreeMap::new();
    for entry in walk(dir) {
        let relative = entry.strip_prefix(dir).unwrap().display().to_string();
        all.insert(relative, std::fs::read(&entry).unwrap());
    }
    all
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// A raw framed connection, to speak the protocol (or not) by hand.
pub struct Raw(Framed<TcpStream, LengthDelimitedCodec>);

impl From<TcpStream> for Raw {
    fn from(stream: TcpStream) -> Raw {
        Raw(Framed::new(stream, protocol::frame_codec()))
    }
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw::from(TcpStream::connect(addr).await.unwrap())
    }

    /// Sends one frame holding `payload` as is.
    pub async fn send_bytes(&mut self, payload: impl Into<bytes::Bytes>) {
        self.0.send(payload.into()).await.unwrap();
    }

    pub async fn send<T: Serialize>(&mut self, message: &T) {
        self.0.send(protocol::encode(message).unwrap()).await.unwrap();
    }

    /// Sends a traced request.
    pub async fn request<T: Serialize>(&mut self, body: T) {
        self.send(&Request {
            trace: Trace::default(),
            body,
        })
        .await;
    }

    /// The next message, or `None` if the server closed the connection.
    pub async fn reply<T: DeserializeOwned>(&mut self) -> Option<T> {
        let frame = tokio::time::timeout(Duration::from_secs(5), self.0.next())
            .await
            .expect("the server neither answered nor closed the connection")?;
        Some(protocol::decode(&frame.ok()?).unwrap())
    }

    /// Registers as `client`, reachable at `advertise`.
    pub async fn register(&mut self, client: u64, advertise: SocketAddr) {
        let body = TrackerRequest::Register {
            client: ClientId(client),
            port: 1,
            advertise: Some(advertise),
        };
        self.request(body).await;
        assert_eq!(self.reply::<TrackerReply>().await, Some(TrackerReply::Ack));
    }

    /// Announces `file` with `info` and hash tree root `root`.
    pub async fn announce(&mut self, file: &str, info: FileInfo, root: Digest) {
        self.request(TrackerRequest::Announce {
            file: name(file),
            info,
            root,
        })
        .await;
        assert_eq!(self.reply::<TrackerReply>().await, Some(TrackerReply::Ack));
    }

    /// Asks who holds `file`, as a new download would.
    pub async fn lookup(&mut self, file: &str) -> TrackerReply {
        let request = TrackerRequest::Lookup {
            file: name(file),
            failover: false,
        };
        self.request(request).await;
        self.reply().await.expect("an answer to a lookup")
    }

    /// Reports that `peer` sent the wrong content for version `sha1` of `file`.
    pub async fn report(&mut self, file: &str, peer: u64, sha1: Digest) {
        let request = TrackerRequest::Report {
            file: name(file),
            peer: ClientId(peer),
            sha1,
            problem: Problem::WrongContent,
        };
        self.request(request).await;
        assert_eq!(self.reply::<TrackerReply>().await, Some(TrackerReply::Ack));
    }
}

//! Trackers, clients and raw connections for tests that speak TCP directly.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use phile_core::protocol::{self, ClientId, FileInfo, Request, TrackerReply, TrackerRequest};
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, FileName, Limits, Trace, Tracker, TrackerConfig};
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
    let config = TrackerConfig {
        limits,
        ..TrackerConfig::default()
    };
    Tracker::bind("127.0.0.1:0", config).await.unwrap()
}

pub async fn tracker() -> Tracker {
    tracker_with(Limits::default()).await
}

pub async fn client_with(id: u64, dir: &Path, limits: Limits) -> Client {
    let folder = Folder::create_empty(dir.join(id.to_string())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ClientConfig {
        limits,
        ..ClientConfig::default()
    };
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

    /// Announces `file` with `info`.
    pub async fn announce(&mut self, file: &str, info: FileInfo) {
        self.request(TrackerRequest::Announce { file: name(file), info }).await;
        assert_eq!(self.reply::<TrackerReply>().await, Some(TrackerReply::Ack));
    }
}

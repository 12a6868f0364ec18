//! The tracker and peers spoken to directly, over TCP, without a scenario.

use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use phile_core::client::{ClientError, DownloadError, SessionError};
use phile_core::protocol::{self, ClientId, PeerReply, PeerRequest, Request, TrackerReply, TrackerRequest};
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, Trace, Tracker, TrackerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

async fn tracker() -> Tracker {
    Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap()
}

async fn client(id: u64, dir: &std::path::Path) -> Client {
    let folder = Folder::create_empty(dir.join(id.to_string())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    Client::start(ClientId(id), folder, listener, ClientConfig::default()).unwrap()
}

fn name(text: &str) -> phile_core::FileName {
    text.parse().unwrap()
}

#[tokio::test]
async fn a_download_over_tcp_is_verified_stored_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let (a, b, c) = (
        client(1, dir.path()).await,
        client(2, dir.path()).await,
        client(3, dir.path()).await,
    );
    let mut trace = Trace::default();
    for x in [&a, &b, &c] {
        x.register(tracker.local_addr(), &mut trace).await.unwrap();
    }
    a.folder().write(&name("f.txt"), "hello").await.unwrap();
    a.upload(&name("f.txt"), &mut trace).await.unwrap();
    let got = b.download(&name("f.txt"), &mut trace).await.unwrap();
    assert_eq!(got.from, ClientId(1));
    assert_eq!(b.folder().read(&name("f.txt")).await.unwrap(), b"hello");
    // With a excluded, only b, which downloaded it, can serve c.
    let source = c
        .locate(&name("f.txt"), &[ClientId(1)], &mut trace)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(source.peer, ClientId(2));
    assert_eq!(
        c.receive(&name("f.txt"), source, &mut trace).await.unwrap().from,
        ClientId(2)
    );
}

#[tokio::test]
async fn registering_with_no_tracker_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let a = client(1, dir.path()).await;
    let error = a.register(closed, &mut Trace::default()).await.unwrap_err();
    assert!(matches!(error, ClientError::Session(SessionError::Unreachable { .. })));
    assert!(error.to_string().contains(&closed.to_string()), "{error}");
}

#[tokio::test]
async fn the_tracker_forgets_a_client_whose_session_ends() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let (a, b) = (client(1, dir.path()).await, client(2, dir.path()).await);
    let mut trace = Trace::default();
    a.register(tracker.local_addr(), &mut trace).await.unwrap();
    b.register(tracker.local_addr(), &mut trace).await.unwrap();
    a.folder().write(&name("f"), "x").await.unwrap();
    a.upload(&name("f"), &mut trace).await.unwrap();
    a.shutdown().await;
    // The session's end is seen by the tracker asynchronously; a lookup that
    // still finds a gets a refused connection, and either way b ends
    // without the file and without a partial one.
    let mut answered = None;
    for _ in 0..200 {
        match b.locate(&name("f"), &[], &mut trace).await.unwrap() {
            None => {
                answered = Some(());
                break;
            }
            Some(_) => tokio::task::yield_now().await,
        }
    }
    assert!(answered.is_some(), "the tracker still offers a client that is gone");
    assert!(matches!(
        b.download(&name("f"), &mut trace).await,
        Err(DownloadError::NoPeer(_))
    ));
    assert!(b.folder().list().unwrap().is_empty());
}

/// Opens a raw framed connection to `addr`.
async fn raw(addr: std::net::SocketAddr) -> Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec> {
    Framed::new(TcpStream::connect(addr).await.unwrap(), protocol::frame_codec())
}

async fn reply<T: serde::de::DeserializeOwned>(
    conn: &mut Framed<TcpStream, tokio_util::codec::LengthDelimitedCodec>,
) -> Option<T> {
    let frame = tokio::time::timeout(Duration::from_secs(5), conn.next())
        .await
        .expect("no answer")?;
    Some(protocol::decode(&frame.ok()?).unwrap())
}

#[tokio::test]
async fn the_tracker_refuses_bad_requests_and_keeps_serving() {
    let tracker = tracker().await;
    // Garbage in a valid frame: a refusal that says why, then the close.
    let mut conn = raw(tracker.local_addr()).await;
    conn.send(Bytes::from_static(b"{not json")).await.unwrap();
    match reply::<TrackerReply>(&mut conn).await {
        Some(TrackerReply::Refused { reason }) => assert!(reason.contains("malformed"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // An announce before registering.
    let mut conn = raw(tracker.local_addr()).await;
    let request = Request {
        trace: Trace::default(),
        body: TrackerRequest::Lookup {
            file: name("f"),
            exclude: vec![],
        },
    };
    conn.send(protocol::encode(&request).unwrap()).await.unwrap();
    match reply::<TrackerReply>(&mut conn).await {
        Some(TrackerReply::Refused { reason }) => assert!(reason.contains("register first"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // A 4 GiB length prefix: dropped, not buffered.
    let mut stream = TcpStream::connect(tracker.local_addr()).await.unwrap();
    stream.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .expect("not closed");
    // And a normal client is still served.
    let dir = tempfile::tempdir().unwrap();
    let a = client(1, dir.path()).await;
    a.register(tracker.local_addr(), &mut Trace::default()).await.unwrap();
}

#[tokio::test]
async fn a_peer_serves_only_plain_names_of_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.txt"), "outside").unwrap();
    let a = client(1, dir.path()).await;
    a.folder().write(&name("inside.txt"), "ok").await.unwrap();
    // A traversal is not even a valid request: the name fails to parse.
    let mut conn = raw(a.local_addr()).await;
    conn.send(Bytes::from_static(
        br#"{"body":{"type":"get","file":"../secret.txt","client":9}}"#,
    ))
    .await
    .unwrap();
    assert!(
        reply::<PeerReply>(&mut conn).await.is_none(),
        "a traversal got an answer"
    );
    // An unknown file is refused with a reason.
    let mut conn = raw(a.local_addr()).await;
    let get = Request {
        trace: Trace::default(),
        body: PeerRequest::Get {
            file: name("nope"),
            client: ClientId(9),
        },
    };
    conn.send(protocol::encode(&get).unwrap()).await.unwrap();
    match reply::<PeerReply>(&mut conn).await {
        Some(PeerReply::Refused { reason }) => assert!(reason.contains("does not hold nope"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The real file is still served.
    let mut conn = raw(a.local_addr()).await;
    let get = Request {
        trace: Trace::default(),
        body: PeerRequest::Get {
            file: name("inside.txt"),
            client: ClientId(9),
        },
    };
    conn.send(protocol::encode(&get).unwrap()).await.unwrap();
    assert!(matches!(
        reply::<PeerReply>(&mut conn).await,
        Some(PeerReply::File { .. })
    ));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.txt")).unwrap(),
        "outside"
    );
}

//! Hostile and broken input on every port: each gets an error answer or a
//! closed connection, the servers keep serving everyone else, and no stored
//! file changes. Fake holders that refuse, stall, lie about the size or send
//! the wrong bytes make a download fail over, never store a bad file.
//!
//! Then the attacks of a registered client on the tracker's trust (false
//! reports, stale reports, name hijacking), failover through thousands of
//! failing holders, the memory a client or a tracker can make the other
//! hold, starving a peer of connections, and control characters in names.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use phile_core::client::{DownloadError, SessionError, Source, StatusLimits};
use phile_core::events::Event;
use phile_core::protocol::{
    self, ClientId, Digest, FileInfo, PeerReply, PeerRequest, Problem, Request, TrackerReply, TrackerRequest,
};
use phile_core::tracker::{Quotas, StatusEntry};
use phile_core::{Client, ClientConfig, Limits, Trace, Tracker, TrackerConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::fixture::{
    client_config, client_with, contents, heavy_turn, name, registered, short_limits, tracker, tracker_config,
    tracker_with, Raw, Recorded,
};

/// A tracker with two registered clients; `a` holds `f.txt`.
struct Swarm {
    dir: tempfile::TempDir,
    tracker: Tracker,
    a: Client,
    b: Client,
}

async fn swarm() -> Swarm {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let a = registered(1, dir.path(), &tracker).await;
    let b = registered(2, dir.path(), &tracker).await;
    a.folder().write(&name("f.txt"), "the content").await.unwrap();
    a.upload(&name("f.txt")).await.unwrap();
    Swarm { dir, tracker, a, b }
}

impl Swarm {
    /// Checks that the tracker and `a`'s peer server still serve a normal
    /// download, and that it leaves `b` with the right file.
    async fn still_serves(&self) {
        let got = self.b.download(&name("f.txt")).await.unwrap();
        assert_eq!(got.downloaded.from, ClientId(1));
        assert_eq!(self.b.folder().read(&name("f.txt")).await.unwrap(), b"the content");
        std::fs::remove_file(self.b.folder().path(&name("f.txt"))).unwrap();
    }
}

/// Waits until the server closes `socket` (EOF or reset), at most 5 s.
async fn closed(socket: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the server kept a bad connection open");
}

#[tokio::test]
async fn garbage_on_either_port_closes_that_connection_only() {
    let swarm = swarm().await;
    let before = contents(swarm.dir.path());
    for addr in [swarm.tracker.local_addr(), swarm.a.local_addr()] {
        // Not a frame at all: arbitrary bytes, the first four read as a length.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        closed(&mut raw).await;
        // A 4 GiB length prefix: refused before anything is buffered.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await.unwrap();
        closed(&mut raw).await;
        // A frame cut in half, then the connection closed.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(&[0, 0, 0, 50, b'{', b'"']).await.unwrap();
        raw.shutdown().await.unwrap();
        closed(&mut raw).await;
    }
    swarm.still_serves().await;
    assert_eq!(contents(swarm.dir.path()), before);
}

#[tokio::test]
async fn malformed_messages_get_a_reason_before_the_close() {
    let swarm = swarm().await;
    let payloads: [&'static [u8]; 4] = [
        b"{not json",
        b"\xff\xfe\xfd invalid utf-8",
        br#"{"body":{"type":"teleport","to":"mars"}}"#,
        br#"{"body":{"type":"announce","file":"x","info":{"size":1,"sha1":"zz"}}}"#,
    ];
    for payload in payloads {
        let mut raw = Raw::connect(swarm.tracker.local_addr()).await;
        raw.send_bytes(payload).await;
        match raw.reply::<TrackerReply>().await {
            Some(TrackerReply::Refused { reason }) => assert!(reason.contains("malformed"), "{reason}"),
            other => panic!("{payload:?} got {other:?}"),
        }
        assert!(raw.reply::<TrackerReply>().await.is_none(), "the session stayed open");
    }
    swarm.still_serves().await;
}

#[tokio::test]
async fn requests_out_of_order_are_refused_and_the_session_goes_on() {
    let swarm = swarm().await;
    let mut raw = Raw::connect(swarm.tracker.local_addr()).await;
    let info = FileInfo {
        size: 1,
        sha1: Digest::of(b"x"),
    };
    for early in [
        TrackerRequest::Announce {
            file: name("x"),
            info,
            root: phile_core::pieces::Tree::of(b"x").root(),
        },
        TrackerRequest::Lookup {
            file: name("f.txt"),
            failover: false,
        },
        TrackerRequest::Leave,
        TrackerRequest::Ping,
    ] {
        raw.request(early).await;
        match raw.reply::<TrackerReply>().await {
            Some(TrackerReply::Refused { reason }) => assert!(reason.contains("register first"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
    // Another client's id, while that client is connected: refused.
    let taken = TrackerRequest::Register {
        client: ClientId(1),
        port: 9,
        advertise: None,
    };
    raw.request(taken).await;
    match raw.reply::<TrackerReply>().await {
        Some(TrackerReply::Refused { reason }) => assert!(reason.contains("already registered"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // Registering as itself works on the same connection; then as someone else does not.
    raw.register(99, "127.0.0.1:9".parse().unwrap()).await;
    let other = TrackerRequest::Register {
        client: ClientId(98),
        port: 9,
        advertise: None,
    };
    raw.request(other).await;
    assert!(matches!(
        raw.reply::<TrackerReply>().await,
        Some(TrackerReply::Refused { .. })
    ));
    // Content that contradicts the record is refused too.
    raw.request(TrackerRequest::Announce {
        file: name("f.txt"),
        info,
        root: phile_core::pieces::Tree::of(b"x").root(),
    })
    .await;
    match raw.reply::<TrackerReply>().await {
        Some(TrackerReply::Refused { reason }) => assert!(reason.contains("same content"), "{reason}"),
        other => panic!("{other:?}"),
    }
    swarm.still_serves().await;
}

#[tokio::test]
async fn a_peer_serves_only_plain_names_of_its_own_folder() {
    let swarm = swarm().await;
    std::fs::write(swarm.dir.path().join("secret.txt"), "outside").unwrap();
    let before = contents(swarm.dir.path());
    for path in [
        "../secret.txt",
        "../../etc/passwd",
        "/etc/passwd",
        "sub/../f.txt",
        "f.txt.phile-part",
    ] {
        let mut raw = Raw::connect(swarm.a.local_addr()).await;
        // The name is refused where it is parsed: the request is malformed.
        let request = format!(r#"{{"body":{{"type":"get","file":{path:?},"client":9}}}}"#);
        raw.send_bytes(request.into_bytes()).await;
        assert!(raw.reply::<PeerReply>().await.is_none(), "{path} got an answer");
    }
    // A valid name it does not hold is refused with a reason.
    let mut raw = Raw::connect(swarm.a.local_addr()).await;
    raw.request(PeerRequest::Get {
        file: name("nope"),
        client: ClientId(9),
    })
    .await;
    match raw.reply::<PeerReply>().await {
        Some(PeerReply::Refused { reason }) => assert_eq!(reason, "1 does not hold nope"),
        other => panic!("{other:?}"),
    }
    // A confirmation out of the blue is refused.
    let mut raw = Raw::connect(swarm.a.local_addr()).await;
    raw.request(PeerRequest::Received { sha1: Digest::of(b"") }).await;
    assert!(matches!(
        raw.reply::<PeerReply>().await,
        Some(PeerReply::Refused { .. })
    ));
    swarm.still_serves().await;
    assert_eq!(contents(swarm.dir.path()), before);
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_stop_a_normal_client() {
    let swarm = swarm().await;
    // From another address than the honest client's: one address may hold
    // only a share of a server's connections.
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(connect_from("127.0.0.2", swarm.tracker.local_addr()).await);
        idle.push(connect_from("127.0.0.2", swarm.a.local_addr()).await);
    }
    let started = Instant::now();
    swarm.still_serves().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the download waited behind idle connections"
    );
    drop(idle);
}

/// A connection to `to` from the local address `from` (any of 127.0.0.0/8
/// reaches the loopback interface).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test]
async fn silent_connections_are_dropped_after_the_idle_timeout() {
    let tracker = tracker_with(short_limits()).await;
    // Says nothing at all.
    let mut silent = TcpStream::connect(tracker.local_addr()).await.unwrap();
    // Sends half a frame, then nothing.
    let mut half = TcpStream::connect(tracker.local_addr()).await.unwrap();
    half.write_all(&[0, 0, 0, 40, b'{']).await.unwrap();
    closed(&mut silent).await;
    closed(&mut half).await;
}

#[tokio::test]
async fn a_registered_client_that_goes_silent_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker_with(short_limits()).await;
    let b = client_with(2, dir.path(), short_limits()).await;
    b.register(tracker.local_addr()).await.unwrap();
    // A holder whose host vanished: registered, announced, then never a word
    // (no heartbeat) while its connection stays open.
    let mut ghost = Raw::connect(tracker.local_addr()).await;
    ghost.register(1, "127.0.0.1:9".parse().unwrap()).await;
    ghost
        .announce(
            "f",
            FileInfo {
                size: 1,
                sha1: Digest::of(b"x"),
            },
            phile_core::pieces::Tree::of(b"x").root(),
        )
        .await;
    assert!(b.lookup(&name("f")).await.unwrap().is_some());
    // Past the session timeout, the tracker hangs up on it and forgets it.
    assert!(ghost.reply::<TrackerReply>().await.is_none());
    assert!(b.lookup(&name("f")).await.unwrap().is_none());
    // b, which sends heartbeats, is still registered long after.
    tokio::time::sleep(Duration::from_millis(800)).await; // longer than the session timeout, on purpose
    assert!(b.lookup(&name("f")).await.is_ok(), "a live client was dropped");
}

/// A fake holder of `f.txt` listening on a socket of its own.
async fn fake_peer(behaviour: impl FnOnce(TcpStream) -> tokio::task::JoinHandle<()> + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let _ = behaviour(socket).await;
    });
    addr
}

/// Reads the downloader's `Get`, then does `then` with the raw socket.
fn after_get<F>(
    then: impl FnOnce(TcpStream) -> F + Send + 'static,
) -> impl FnOnce(TcpStream) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    move |mut socket| {
        tokio::spawn(async move {
            let mut length = [0u8; 4];
            socket.read_exact(&mut length).await.unwrap();
            let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
            socket.read_exact(&mut frame).await.unwrap();
            then(socket).await;
        })
    }
}

/// Sends a `File` header for `info`, then `body`.
async fn send_file(socket: &mut TcpStream, info: FileInfo, body: &[u8]) {
    let header = phile_core::protocol::encode(&PeerReply::File { info }).unwrap();
    socket.write_all(&(header.len() as u32).to_be_bytes()).await.unwrap();
    socket.write_all(&header).await.unwrap();
    socket.write_all(body).await.unwrap();
}

/// `b` downloads `f.txt` starting from the fake holder at `addr` (id 66),
/// which must fail; returns what `b` did next.
async fn fail_over_from(swarm: &Swarm, addr: SocketAddr) -> Result<phile_core::client::Downloaded, DownloadError> {
    let info = swarm.a.folder().info(&name("f.txt")).await.unwrap();
    let fake = Source {
        peer: ClientId(66),
        addr,
        info,
        root: Digest([0; 20]),
    };
    let outcome = swarm.b.receive(&name("f.txt"), fake).await;
    let leftovers = std::fs::read_dir(swarm.b.folder().dir()).unwrap().count();
    assert!(leftovers <= 1, "a failed transfer left a file behind");
    outcome
}

#[tokio::test]
async fn a_holder_that_refuses_the_connection_is_skipped() {
    let swarm = swarm().await;
    let closed_port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let got = fail_over_from(&swarm, closed_port).await.unwrap();
    assert_eq!(got.from, ClientId(1));
}

#[tokio::test]
async fn a_holder_that_says_nothing_is_skipped_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let a = registered(1, dir.path(), &tracker).await;
    let b = client_with(2, dir.path(), short_limits()).await;
    b.register(tracker.local_addr()).await.unwrap();
    a.folder().write(&name("f.txt"), "the content").await.unwrap();
    a.upload(&name("f.txt")).await.unwrap();
    let swarm = Swarm { dir, tracker, a, b };
    let mute = fake_peer(after_get(|socket| async move {
        tokio::time::sleep(Duration::from_secs(10)).await; // a hung peer, on purpose
        drop(socket);
    }))
    .await;
    let started = Instant::now();
    let got = fail_over_from(&swarm, mute).await.unwrap();
    assert_eq!(got.from, ClientId(1));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stall was not cut by the idle timeout"
    );
}

#[tokio::test]
async fn a_holder_that_offers_the_wrong_size_is_skipped_unread() {
    let swarm = swarm().await;
    let liar = fake_peer(after_get(|mut socket| async move {
        let info = FileInfo {
            size: 3,
            sha1: Digest::of(b"abc"),
        };
        send_file(&mut socket, info, b"abc").await;
    }))
    .await;
    assert_eq!(fail_over_from(&swarm, liar).await.unwrap().from, ClientId(1));
}

#[tokio::test]
async fn a_holder_that_sends_the_wrong_bytes_is_skipped_and_nothing_bad_is_stored() {
    let swarm = swarm().await;
    let liar = fake_peer(after_get(|mut socket| async move {
        // The right size and the right claimed SHA-1, with other bytes.
        let info = FileInfo {
            size: 11,
            sha1: Digest::of(b"the content"),
        };
        send_file(&mut socket, info, b"THE CONTENT").await;
    }))
    .await;
    assert_eq!(fail_over_from(&swarm, liar).await.unwrap().from, ClientId(1));
    assert_eq!(swarm.b.folder().read(&name("f.txt")).await.unwrap(), b"the content");
}

#[tokio::test]
async fn a_holder_that_cuts_the_stream_is_skipped() {
    let swarm = swarm().await;
    let cutter = fake_peer(after_get(|mut socket| async move {
        let info = FileInfo {
            size: 11,
            sha1: Digest::of(b"the content"),
        };
        send_file(&mut socket, info, b"the c").await;
        drop(socket);
    }))
    .await;
    assert_eq!(fail_over_from(&swarm, cutter).await.unwrap().from, ClientId(1));
}

#[tokio::test]
async fn a_holder_that_hangs_up_before_it_answers_cut_the_transfer_and_refused_nothing() {
    // As a holder that crashes between the request and its answer does.
    let swarm = swarm().await;
    swarm.a.leave(Duration::ZERO).await.unwrap();
    let hangs_up = fake_peer(after_get(|socket| async move { drop(socket) })).await;
    let fake = Source {
        peer: ClientId(66),
        addr: hangs_up,
        info: FileInfo {
            size: 11,
            sha1: Digest::of(b"the content"),
        },
        root: Digest([0; 20]),
    };
    let error = swarm.b.receive(&name("f.txt"), fake).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "no peer delivered f.txt: 66 cut the connection mid-transfer"
    );
}

#[tokio::test]
async fn with_no_honest_holder_left_the_download_fails_with_every_reason() {
    let swarm = swarm().await;
    swarm.a.leave(Duration::ZERO).await.unwrap();
    let closed_port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let info = FileInfo {
        size: 11,
        sha1: Digest::of(b"the content"),
    };
    let fake = Source {
        peer: ClientId(66),
        addr: closed_port,
        info,
        root: Digest([0; 20]),
    };
    let error = swarm.b.receive(&name("f.txt"), fake).await.unwrap_err();
    assert!(matches!(error, DownloadError::Exhausted { .. }), "{error:?}");
    assert_eq!(error.to_string(), "no peer delivered f.txt: 66 could not be reached");
    assert!(swarm.b.folder().list().unwrap().is_empty());
}

#[tokio::test]
async fn a_tracker_that_answers_late_costs_the_session_not_its_pairing() {
    // A fake tracker: acknowledges the registration, then answers a lookup
    // only after the client's idle timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        let mut frames = tokio_util::codec::Framed::new(socket, phile_core::protocol::frame_codec());
        use futures::{SinkExt, StreamExt};
        frames.next().await.unwrap().unwrap();
        frames
            .send(phile_core::protocol::encode(&TrackerReply::Ack).unwrap())
            .await
            .unwrap();
        frames.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await; // late, on purpose
        let late = TrackerReply::NoPeer;
        let _ = frames.send(phile_core::protocol::encode(&late).unwrap()).await;
        let _ = frames.next().await;
    });
    let dir = tempfile::tempdir().unwrap();
    let b = client_with(2, dir.path(), short_limits()).await;
    b.register(addr).await.unwrap();
    assert!(b.lookup(&name("a")).await.is_err());
    // The late answer must never be taken for the answer to a later request:
    // the session is gone, and the client knows it is not registered.
    assert!(!b.is_registered().await);
    let error = b.lookup(&name("b")).await.unwrap_err();
    assert!(error.to_string().contains("no tracker session"), "{error}");
}

// ---------------------------------------------------------------------------
// The tracker believes a client about itself only.

/// Writes one frame holding `message` on a raw socket.
async fn write_frame<T: Serialize>(socket: &mut TcpStream, message: &T) {
    let payload = protocol::encode(message).unwrap();
    socket.write_all(&(payload.len() as u32).to_be_bytes()).await.unwrap();
    socket.write_all(&payload).await.unwrap();
}

/// Reads one frame from a raw socket, as a message.
async fn read_frame<T: DeserializeOwned>(socket: &mut TcpStream) -> T {
    let mut length = [0u8; 4];
    socket.read_exact(&mut length).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    socket.read_exact(&mut payload).await.unwrap();
    protocol::decode(&payload).unwrap()
}

/// Every file the tracker's status lists, with its holders.
async fn status_files(tracker: SocketAddr) -> Vec<(String, Vec<u64>)> {
    let mut answer = phile_core::client::status(tracker, StatusLimits::default())
        .await
        .unwrap();
    let mut files: Vec<(String, Vec<u64>)> = Vec::new();
    while let Some(entry) = answer.next().await.unwrap() {
        if let StatusEntry::File { file, holders, .. } = entry {
            let holders = holders.into_iter().map(|holder| holder.0);
            match files.last_mut() {
                Some(last) if last.0 == file.as_str() => last.1.extend(holders),
                _ => files.push((file.to_string(), holders.collect())),
            }
        }
    }
    files
}

fn holders_dropped(events: &Recorded) -> Vec<Event> {
    events.matching(|event| matches!(event, Event::HolderDropped { .. }))
}

#[tokio::test]
async fn a_false_report_neither_unlists_an_honest_holder_nor_frees_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let events = Recorded::new();
    let tracker = tracker_config(TrackerConfig {
        events: Some(events.clone()),
        ..TrackerConfig::default()
    })
    .await;
    let honest = registered(1, dir.path(), &tracker).await;
    honest.folder().write(&name("doc.txt"), "the real doc").await.unwrap();
    let info = honest.upload(&name("doc.txt")).await.unwrap();

    // The attacker, a registered client speaking raw TCP, is sent to the
    // honest holder and reports it as having sent the wrong content.
    let mut attacker = Raw::connect(tracker.local_addr()).await;
    attacker.register(666, "127.0.0.1:9".parse().unwrap()).await;
    let TrackerReply::Peer { peer, addr, .. } = attacker.lookup("doc.txt").await else {
        panic!("the honest holder was not offered");
    };
    assert_eq!(peer, ClientId(1));
    attacker.report("doc.txt", 1, info.sha1).await;
    // It also fetches the file and tells the holder the bytes hashed to
    // something else: the holder checks its copy, finds it good, keeps it.
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let get = PeerRequest::Get {
        file: name("doc.txt"),
        client: ClientId(666),
    };
    let trace = Trace::default();
    write_frame(&mut socket, &Request { trace, body: get }).await;
    assert_eq!(read_frame::<PeerReply>(&mut socket).await, PeerReply::File { info });
    let mut body = vec![0u8; info.size as usize];
    socket.read_exact(&mut body).await.unwrap();
    let lie = PeerRequest::Received {
        sha1: Digest::of(b"something else"),
    };
    write_frame(&mut socket, &Request { trace, body: lie }).await;
    closed(&mut socket).await;
    // Then it announces doc.txt with content of its own: refused, since a
    // holder of the recorded content is alive.
    let evil = FileInfo {
        size: 4,
        sha1: Digest::of(b"evil"),
    };
    let hijack = TrackerRequest::Announce {
        file: name("doc.txt"),
        info: evil,
        root: phile_core::pieces::Tree::of(b"evil").root(),
    };
    attacker.request(hijack).await;
    match attacker.reply::<TrackerReply>().await {
        Some(TrackerReply::Refused { reason }) => assert!(reason.contains("same content"), "{reason}"),
        other => panic!("the name was rebound: {other:?}"),
    }

    // The next download, by anyone else, gets the honest bytes.
    let fresh = registered(2, dir.path(), &tracker).await;
    let got = fresh.download(&name("doc.txt")).await.unwrap();
    assert_eq!(got.downloaded.from, ClientId(1));
    assert_eq!(fresh.folder().read(&name("doc.txt")).await.unwrap(), b"the real doc");
    // The attacker leaves; the status still lists the honest holder.
    attacker.request(TrackerRequest::Leave).await;
    assert_eq!(attacker.reply::<TrackerReply>().await, Some(TrackerReply::Ack));
    drop(attacker);
    let files = status_files(tracker.local_addr()).await;
    assert_eq!(files, [("doc.txt".to_owned(), vec![1, 2])]);
    assert_eq!(holders_dropped(&events), []);
    assert_eq!(honest.folder().read(&name("doc.txt")).await.unwrap(), b"the real doc");
}

#[tokio::test]
async fn a_holder_told_of_wrong_bytes_withdraws_its_copy_only_if_the_copy_is_bad() {
    let dir = tempfile::tempdir().unwrap();
    let events = Recorded::new();
    let tracker = tracker_config(TrackerConfig {
        events: Some(events.clone()),
        ..TrackerConfig::default()
    })
    .await;
    let a = registered(1, dir.path(), &tracker).await;
    let b = registered(2, dir.path(), &tracker).await;
    a.folder().write(&name("f"), "hello world").await.unwrap();
    a.upload(&name("f")).await.unwrap();
    // a's disk flips a byte behind its back: same size, same time, same inode.
    let path = a.folder().path(&name("f"));
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut file, b"J").unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    let error = b.download(&name("f")).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "no peer delivered f: 1 sent content with the wrong SHA-1"
    );
    assert_eq!(
        holders_dropped(&events),
        [Event::HolderDropped {
            client: ClientId(1),
            file: name("f"),
            reason: Problem::WrongContent,
        }]
    );
    assert_eq!(status_files(tracker.local_addr()).await, []);
    assert!(b.folder().list().unwrap().is_empty());
}

#[tokio::test]
async fn a_holder_whose_file_changed_size_since_it_announced_it_refuses_and_withdraws() {
    let dir = tempfile::tempdir().unwrap();
    let events = Recorded::new();
    let tracker = tracker_config(TrackerConfig {
        events: Some(events.clone()),
        ..TrackerConfig::default()
    })
    .await;
    let a = registered(1, dir.path(), &tracker).await;
    let b = registered(2, dir.path(), &tracker).await;
    a.folder().write(&name("f"), "the content").await.unwrap();
    a.upload(&name("f")).await.unwrap();
    // Rewritten with another size, and not announced again.
    std::fs::write(a.folder().path(&name("f")), "a longer content").unwrap();
    let error = b.download(&name("f")).await.unwrap_err();
    assert_eq!(error.to_string(), "no peer delivered f: 1 refused to send the file");
    assert_eq!(
        holders_dropped(&events),
        [Event::HolderDropped {
            client: ClientId(1),
            file: name("f"),
            reason: Problem::WrongSize,
        }]
    );
    // The tracker no longer offers the old version; the new one can be
    // announced under the name.
    assert!(b.lookup(&name("f")).await.unwrap().is_none());
    a.upload(&name("f")).await.unwrap();
    assert_eq!(b.download(&name("f")).await.unwrap().downloaded.info.size, 16);
}

#[tokio::test]
async fn a_stale_report_never_unlists_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let seeder = registered(1, dir.path(), &tracker).await;
    let d = registered(2, dir.path(), &tracker).await;
    let e = registered(3, dir.path(), &tracker).await;
    seeder.folder().write(&name("f"), "version one").await.unwrap();
    seeder.upload(&name("f")).await.unwrap();
    let old = d.lookup(&name("f")).await.unwrap().unwrap();
    // The seeder changes the file in place during d's download and
    // announces the new version.
    let new = seeder.folder().write(&name("f"), "version two").await.unwrap();
    seeder.withdraw(&name("f")).await.unwrap();
    seeder.upload(&name("f")).await.unwrap();
    // d rightly rejects bytes that are not version one, and reports the
    // seeder about version one: the new version stays on offer, to d too.
    let got = d.receive(&name("f"), old).await.unwrap();
    assert_eq!((got.from, got.info), (ClientId(1), new));
    assert_eq!(d.folder().read(&name("f")).await.unwrap(), b"version two");
    let offered = e
        .lookup(&name("f"))
        .await
        .unwrap()
        .expect("the new version was unlisted");
    assert_eq!((offered.peer, offered.info), (ClientId(1), new));
}

// ---------------------------------------------------------------------------
// Failover, whatever the number of failed holders.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_goes_on_through_thousands_of_failed_holders() {
    let _turn = heavy_turn().await;
    const FAKES: u64 = 4_000;
    // 20-digit ids: a lookup that listed the holders given up on would
    // overflow the 64 KiB frame after about 3,100 of them.
    const FIRST_FAKE: u64 = 18_000_000_000_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    // With seed 1 the honest holder comes after 3,987 of the fakes.
    let tracker = tracker_config(TrackerConfig {
        seed: 1,
        ..TrackerConfig::default()
    })
    .await;
    let honest = registered(1, dir.path(), &tracker).await;
    honest.folder().write(&name("f.txt"), "the content").await.unwrap();
    let info = honest.upload(&name("f.txt")).await.unwrap();
    let root = honest.folder().content(&name("f.txt")).await.unwrap().1;
    // Half the fakes give an address that refuses connections, half one
    // that cuts the file short.
    let refusing = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let cutter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cutting = cutter.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = cutter.accept().await {
            tokio::spawn(async move {
                let _: Request<PeerRequest> = read_frame(&mut socket).await;
                send_file(&mut socket, info, b"the").await;
            });
        }
    });
    let mut fakes = Vec::new();
    for i in 0..FAKES {
        let mut fake = Raw::connect(tracker.local_addr()).await;
        let advertise = if i % 2 == 0 { refusing } else { cutting };
        fake.register(FIRST_FAKE + i, advertise).await;
        fake.announce("f.txt", info, root).await;
        fakes.push(fake);
    }
    let events = Recorded::new();
    let config = ClientConfig {
        events: Some(events.clone()),
        ..ClientConfig::default()
    };
    let b = client_config(2, dir.path(), config).await;
    b.register(tracker.local_addr()).await.unwrap();
    let got = b.download(&name("f.txt")).await.unwrap();
    assert_eq!(got.downloaded.from, ClientId(1));
    assert_eq!(b.folder().read(&name("f.txt")).await.unwrap(), b"the content");
    let rejected = events
        .matching(|event| matches!(event, Event::TransferRejected { .. }))
        .len();
    assert!(
        rejected > 3_200,
        "only {rejected} holders failed first: the test no longer goes past the old frame limit"
    );
}

// ---------------------------------------------------------------------------
// Memory: what one client can make the tracker hold, what a status answer
// costs either side.

#[tokio::test]
async fn one_client_cannot_make_the_tracker_hold_more_than_its_share() {
    let quotas = Quotas {
        files: 100,
        ..Quotas::default()
    };
    let tracker = tracker_config(TrackerConfig {
        quotas,
        ..TrackerConfig::default()
    })
    .await;
    let mut hoarder = Raw::connect(tracker.local_addr()).await;
    hoarder.register(1, "127.0.0.1:9".parse().unwrap()).await;
    let info = FileInfo {
        size: 1,
        sha1: Digest::of(b"x"),
    };
    for n in 0..100 {
        hoarder
            .announce(&format!("file-{n}"), info, phile_core::pieces::Tree::of(b"x").root())
            .await;
    }
    hoarder
        .request(TrackerRequest::Announce {
            file: name("one-too-many"),
            info,
            root: phile_core::pieces::Tree::of(b"x").root(),
        })
        .await;
    match hoarder.reply::<TrackerReply>().await {
        Some(TrackerReply::Refused { reason }) => assert!(reason.contains("already holds 100 files"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // The refusal is an answer, not the end of the session.
    hoarder.request(TrackerRequest::Ping).await;
    assert_eq!(hoarder.reply::<TrackerReply>().await, Some(TrackerReply::Ack));
    assert_eq!(status_files(tracker.local_addr()).await.len(), 100);
}

/// The content of every file of [`tracker_of_5000_files`]: the byte `x`.
fn one_byte() -> FileInfo {
    FileInfo {
        size: 1,
        sha1: Digest::of(b"x"),
    }
}

/// A tracker whose socket buffers are small, so a status answer backs up
/// inside it while its reader takes its time, with 5,000 files of one
/// byte ([`one_byte`]) announced by client 1, whose session is returned.
async fn tracker_of_5000_files() -> (Tracker, SocketAddr, Raw) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let tracker = Tracker::spawn(socket.listen(1024).unwrap(), TrackerConfig::default()).unwrap();
    let addr = tracker.local_addr();
    let mut holder = Raw::connect(addr).await;
    holder.register(1, "127.0.0.1:9".parse().unwrap()).await;
    for n in 0..5_000 {
        holder
            .announce(
                &format!("file-{n:05}"),
                one_byte(),
                phile_core::pieces::Tree::of(b"x").root(),
            )
            .await;
    }
    (tracker, addr, holder)
}

/// A status request to `addr` on a connection with a small receive
/// buffer, whose first entry has been read, and nothing more.
async fn status_reader_that_stops(addr: SocketAddr) -> Raw {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader = Raw::from(socket.connect(addr).await.unwrap());
    reader.request(TrackerRequest::Status).await;
    assert!(matches!(
        reader.reply::<TrackerReply>().await,
        Some(TrackerReply::StatusClient { .. })
    ));
    reader
}

#[tokio::test]
async fn a_status_answer_streams_the_records_as_they_stand_without_copying_them() {
    let (_tracker, addr, mut holder) = tracker_of_5000_files().await;
    let mut reader = status_reader_that_stops(addr).await;
    // While the answer is under way the tracker serves everyone else, and
    // what changes meanwhile shows in the part not yet sent: the tracker
    // reads its records a page at a time, it does not answer from a copy.
    holder
        .announce("zzz-late", one_byte(), phile_core::pieces::Tree::of(b"x").root())
        .await;
    let mut names = Vec::new();
    loop {
        match reader.reply::<TrackerReply>().await {
            Some(TrackerReply::StatusFile { file, .. }) => names.push(file.to_string()),
            Some(TrackerReply::StatusEnd) => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(names.len(), 5_001);
    assert_eq!(names.last().map(String::as_str), Some("zzz-late"));
}

#[tokio::test]
async fn readers_that_never_read_hold_a_few_status_answers_and_the_next_is_refused_with_a_reason() {
    let (_tracker, addr, mut holder) = tracker_of_5000_files().await;
    // As many readers as one address may have answers under way: each
    // reads the first entry, then nothing more.
    let mut stalled = Vec::new();
    for _ in 0..phile_core::tracker::STATUS_ANSWERS_PER_ADDRESS {
        stalled.push(status_reader_that_stops(addr).await);
    }
    let mut answer = phile_core::client::status(addr, StatusLimits::default()).await.unwrap();
    let refused = answer.next().await.unwrap_err();
    assert!(matches!(refused, SessionError::StatusRefused { .. }), "{refused:?}");
    let message = refused.to_string();
    assert!(message.contains("status answers to 127.0.0.1 already"), "{message}");
    // Everything else goes on.
    holder
        .announce("zzz-late", one_byte(), phile_core::pieces::Tree::of(b"x").root())
        .await;
}

#[tokio::test]
async fn a_tracker_that_never_ends_its_status_answer_is_given_up_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let _: Request<TrackerRequest> = read_frame(&mut socket).await;
        let endless = TrackerReply::StatusClient {
            client: ClientId(1),
            addr: "127.0.0.1:9".parse().unwrap(),
            files: 1,
        };
        let payload = protocol::encode(&endless).unwrap();
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&payload);
        while socket.write_all(&frame).await.is_ok() {}
    });
    let limits = StatusLimits {
        max_entries: 10_000,
        ..StatusLimits::default()
    };
    let mut answer = phile_core::client::status(addr, limits).await.unwrap();
    let mut read = 0;
    let error = loop {
        match answer.next().await {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("an endless answer ended"),
            Err(error) => break error,
        }
    };
    assert_eq!(read, 10_000);
    assert!(
        matches!(error, SessionError::AnswerTooLong { max: 10_000, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("more than 10000 status entries"), "{error}");
}

// ---------------------------------------------------------------------------
// A peer cannot be starved.

/// Keeps a connection from `from` to `to` open, doing nothing, and opens
/// it again as soon as it drops, until `stop`.
async fn hold_open(from: &'static str, to: SocketAddr, opened: Arc<AtomicU64>, stop: CancellationToken) {
    loop {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            connected = socket.connect(to) => connected,
        };
        let Ok(mut stream) = connected else {
            tokio::task::yield_now().await;
            continue;
        };
        opened.fetch_add(1, Ordering::Relaxed);
        let mut byte = [0u8; 1];
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = stream.read(&mut byte) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_reopened_as_soon_as_they_drop_do_not_starve_a_peer() {
    let _turn = heavy_turn().await;
    let swarm = swarm().await;
    let target = swarm.a.local_addr();
    // The attacker is another process: its own runtime, on its own thread.
    let stop = CancellationToken::new();
    let opened = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (stop, opened) = (stop.clone(), opened.clone());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut connections = tokio::task::JoinSet::new();
                for _ in 0..2_200 {
                    connections.spawn(hold_open("127.0.0.2", target, opened.clone(), stop.clone()));
                }
                while connections.join_next().await.is_some() {}
            });
        })
    };
    // Every one of the 2,200 has connected at least once (most are refused
    // at once and are back already).
    while opened.load(Ordering::Relaxed) < 2_200 {
        tokio::time::sleep(Duration::from_millis(10)).await; // polling a counter, not racing a timeout
    }
    let started = Instant::now();
    swarm.still_serves().await;
    let took = started.elapsed();
    stop.cancel();
    attacker.join().unwrap();
    assert!(
        took < Duration::from_secs(3),
        "an 11-byte download took {took:?} behind idle connections"
    );
}

#[tokio::test]
async fn stalled_holders_cost_the_first_byte_timeout_not_the_idle_timeout() {
    let _turn = heavy_turn().await;
    let dir = tempfile::tempdir().unwrap();
    // With seed 3, the three stalled holders are offered before the honest one.
    let tracker = tracker_config(TrackerConfig {
        seed: 3,
        ..TrackerConfig::default()
    })
    .await;
    let honest = registered(1, dir.path(), &tracker).await;
    honest.folder().write(&name("f.txt"), "the content").await.unwrap();
    let info = honest.upload(&name("f.txt")).await.unwrap();
    let root = honest.folder().content(&name("f.txt")).await.unwrap().1;
    // Holders that accept, read the request, and never answer.
    let staller = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalling = staller.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut socket, _)) = staller.accept().await {
            let _: Request<PeerRequest> = read_frame(&mut socket).await;
            held.push(socket);
        }
    });
    let mut fakes = Vec::new();
    for id in [101, 102, 103] {
        let mut fake = Raw::connect(tracker.local_addr()).await;
        fake.register(id, stalling).await;
        fake.announce("f.txt", info, root).await;
        fakes.push(fake);
    }
    let (first_byte, idle) = (Duration::from_millis(500), Duration::from_secs(20));
    let limits = Limits {
        first_byte_timeout: first_byte,
        ..Limits::default().with_idle_timeout(idle)
    };
    let events = Recorded::new();
    let config = ClientConfig {
        limits,
        events: Some(events.clone()),
        ..ClientConfig::default()
    };
    let b = client_config(2, dir.path(), config).await;
    b.register(tracker.local_addr()).await.unwrap();
    let started = Instant::now();
    let got = b.download(&name("f.txt")).await.unwrap();
    let took = started.elapsed();
    assert_eq!(got.downloaded.from, ClientId(1));
    let stalled = events.matching(|event| matches!(event, Event::TransferRejected { .. }));
    assert_eq!(stalled.len(), 3, "{stalled:?}");
    // About 3 x 0.5 s; one wait for the idle timeout alone would be 20 s.
    assert!(took >= first_byte * 3, "{took:?}");
    assert!(
        took < Duration::from_secs(5),
        "three stalled holders took {took:?}, not about 3 x {first_byte:?} (the idle timeout is {idle:?})"
    );
}

// ---------------------------------------------------------------------------
// Control characters.

#[tokio::test]
async fn names_with_control_characters_are_refused_everywhere() {
    let swarm = swarm().await;
    let forgeries = [
        "x\u{1b}]0;pwned\u{7}",
        "line\nINFO forged log line",
        "bell\u{7}",
        "c1\u{9b}2J",
    ];
    for (id, forged) in (10..).zip(forgeries) {
        let quoted = serde_json::to_string(forged).unwrap();
        let announce = format!(
            r#"{{"body":{{"type":"announce","file":{quoted},"info":{{"size":1,"sha1":"{}"}}}}}}"#,
            Digest::of(b"x")
        );
        let mut raw = Raw::connect(swarm.tracker.local_addr()).await;
        raw.register(id, "127.0.0.1:9".parse().unwrap()).await;
        raw.send_bytes(announce.into_bytes()).await;
        match raw.reply::<TrackerReply>().await {
            Some(TrackerReply::Refused { reason }) => {
                assert!(reason.contains("control character"), "{reason}");
                assert!(!reason.chars().any(char::is_control), "{reason:?}");
            }
            other => panic!("{forged:?} got {other:?}"),
        }
        // And a peer never serves one.
        let mut peer = Raw::connect(swarm.a.local_addr()).await;
        let get = format!(r#"{{"body":{{"type":"get","file":{quoted},"client":9}}}}"#);
        peer.send_bytes(get.into_bytes()).await;
        assert!(peer.reply::<PeerReply>().await.is_none(), "{forged:?} got an answer");
    }
    assert_eq!(status_files(swarm.tracker.local_addr()).await.len(), 1);
    swarm.still_serves().await;
}

// ---------------------------------------------------------------------------
// A downloader that abuses a swarm conversation costs its server little.

/// `body` as a request of no operation.
fn untraced<T>(body: T) -> Request<T> {
    Request {
        trace: Trace::default(),
        body,
    }
}

/// Joins `file` (`info`) at `peer` on a raw connection, in pieces of 16 KiB;
/// returns the connection once the answer and the bitfield are read, and
/// the pieces the bitfield shows.
async fn join_raw(peer: SocketAddr, file: &str, info: FileInfo) -> (TcpStream, Vec<u64>) {
    join_raw_in(peer, file, info, 16 * 1024).await
}

/// [`join_raw`] in pieces of `piece_size` bytes.
async fn join_raw_in(peer: SocketAddr, file: &str, info: FileInfo, piece_size: u64) -> (TcpStream, Vec<u64>) {
    join_raw_on(TcpStream::connect(peer).await.unwrap(), file, info, piece_size).await
}

/// [`join_raw_in`] on the connection `socket`.
async fn join_raw_on(mut socket: TcpStream, file: &str, info: FileInfo, piece_size: u64) -> (TcpStream, Vec<u64>) {
    let join = PeerRequest::Join {
        file: name(file),
        client: ClientId(666),
        sha1: info.sha1,
        piece_size,
    };
    write_frame(&mut socket, &untraced(join)).await;
    let PeerReply::Joined { pieces } = read_frame(&mut socket).await else {
        panic!("the peer did not take the join");
    };
    let mut bits = vec![0u8; pieces.div_ceil(8) as usize];
    socket.read_exact(&mut bits).await.unwrap();
    let shown = (0..pieces)
        .filter(|i| bits[*i as usize / 8] & (0x80 >> (i % 8)) != 0)
        .collect();
    (socket, shown)
}

#[tokio::test]
async fn a_seeder_shows_another_piece_once_for_each_piece_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, a, info) = big_holder(dir.path()).await;
    // A first downloader sees every piece; beside it, a second is shown
    // one piece at a time (super-seeding).
    let _first = join_raw(a.local_addr(), "big.bin", info).await;
    let (mut socket, shown) = join_raw(a.local_addr(), "big.bin", info).await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    // It cancels that piece fifty times, then asks past the end: the
    // answers before the refusal are what the cancels earned.
    for _ in 0..50 {
        write_frame(&mut socket, &untraced(PeerRequest::Cancel { index: shown[0] })).await;
    }
    write_frame(&mut socket, &untraced(PeerRequest::Piece { index: u64::MAX })).await;
    let mut haves = 0;
    loop {
        match read_frame::<PeerReply>(&mut socket).await {
            PeerReply::Have { .. } => haves += 1,
            PeerReply::Refused { .. } => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(haves, 1, "a cancel of one piece showed {haves}");
}

/// A tracker and client 1 holding `big.bin`, 320 pieces of 16 KiB.
async fn big_holder(dir: &std::path::Path) -> (Tracker, Client, FileInfo) {
    let tracker = tracker().await;
    let a = registered(1, dir, &tracker).await;
    let bytes: Vec<u8> = (0..320 * 16 * 1024).map(|i: u32| (i % 251) as u8).collect();
    a.folder().write(&name("big.bin"), bytes).await.unwrap();
    let info = a.upload(&name("big.bin")).await.unwrap();
    (tracker, a, info)
}

#[tokio::test]
async fn a_swarm_downloader_that_asks_for_too_much_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, a, info) = big_holder(dir.path()).await;

    // A piece past the end: no honest downloader asks for one.
    let (mut socket, _) = join_raw(a.local_addr(), "big.bin", info).await;
    write_frame(&mut socket, &untraced(PeerRequest::Piece { index: u64::MAX })).await;
    match read_frame::<PeerReply>(&mut socket).await {
        PeerReply::Refused { reason } => assert!(reason.contains("past the end"), "{reason}"),
        other => panic!("{other:?}"),
    }
    closed(&mut socket).await;

    // 300 requests at once, more than may wait: each waiting request costs
    // the server a look whenever it picks the next piece to send, so
    // thousands of them would cost it a core.
    let (mut socket, _) = join_raw(a.local_addr(), "big.bin", info).await;
    let mut burst = Vec::new();
    for index in 0..300 {
        let payload = protocol::encode(&untraced(PeerRequest::Piece { index })).unwrap();
        burst.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        burst.extend_from_slice(&payload);
    }
    socket.write_all(&burst).await.unwrap();
    let refusal = async {
        loop {
            match read_frame::<PeerReply>(&mut socket).await {
                PeerReply::Piece { .. } => {
                    let mut piece = vec![0u8; 16 * 1024];
                    socket.read_exact(&mut piece).await.unwrap();
                }
                PeerReply::Refused { reason } => return reason,
                other => panic!("{other:?}"),
            }
        }
    };
    let reason = tokio::time::timeout(Duration::from_secs(10), refusal)
        .await
        .expect("300 requests were all taken");
    assert!(reason.contains("256 requests waiting"), "{reason}");
    closed(&mut socket).await;

    // The piece hashes twice: each answer costs a fold of the file's
    // layer, and an honest downloader asks a conversation once.
    let (mut socket, _) = join_raw(a.local_addr(), "big.bin", info).await;
    for _ in 0..2 {
        write_frame(&mut socket, &untraced(PeerRequest::Layer)).await;
    }
    let PeerReply::Layer { pieces } = read_frame(&mut socket).await else {
        panic!("no piece hashes");
    };
    socket.read_exact(&mut vec![0u8; pieces as usize * 20]).await.unwrap();
    match read_frame::<PeerReply>(&mut socket).await {
        PeerReply::Refused { reason } => assert!(reason.contains("twice"), "{reason}"),
        other => panic!("{other:?}"),
    }
    closed(&mut socket).await;

    // Everyone else is served as before.
    let b = registered(2, dir.path(), &tracker).await;
    let got = b.swarm_download(&name("big.bin"), Default::default()).await.unwrap();
    assert_eq!(got.downloaded.info, info);
}

#[tokio::test]
async fn a_size_or_piece_size_that_makes_too_many_pieces_costs_nobody_memory() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let mut liar = Raw::connect(tracker.local_addr()).await;
    liar.register(666, "127.0.0.1:9".parse().unwrap()).await;
    // 2^63 bytes: refused at the tracker, before any downloader hears of it.
    let absurd = FileInfo {
        size: 1 << 63,
        sha1: Digest::of(b"absurd"),
    };
    liar.request(TrackerRequest::Announce {
        file: name("absurd.iso"),
        info: absurd,
        root: Digest([1; 20]),
    })
    .await;
    match liar.reply::<TrackerReply>().await {
        Some(TrackerReply::Refused { reason }) => assert!(reason.contains("more than"), "{reason}"),
        other => panic!("{other:?}"),
    }
    // 16 TiB, the most the tracker records: an honest downloader cuts it
    // into 16 MiB pieces (a million of them, not a billion)...
    let huge = FileInfo {
        size: 16 << 40,
        sha1: Digest::of(b"huge"),
    };
    liar.announce("huge.iso", huge, Digest([1; 20])).await;
    let b = registered(2, dir.path(), &tracker).await;
    let start = b.swarm_start(&name("huge.iso"), Default::default()).await.unwrap();
    assert_eq!(start.piece.bytes(), 16 << 20);
    // ... and serves it at once: a Join in pieces of 16 KiB, a billion of
    // them, is refused rather than counted.
    let mut socket = TcpStream::connect(b.local_addr()).await.unwrap();
    let join = PeerRequest::Join {
        file: name("huge.iso"),
        client: ClientId(666),
        sha1: huge.sha1,
        piece_size: 16 * 1024,
    };
    write_frame(&mut socket, &untraced(join)).await;
    match read_frame::<PeerReply>(&mut socket).await {
        PeerReply::Refused { reason } => assert!(reason.contains("1048576 pieces"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn complaints_about_a_good_copy_cost_one_check_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let (tracker, a, info) = big_holder(dir.path()).await;
    let complain = || async {
        let (mut socket, _) = join_raw(a.local_addr(), "big.bin", info).await;
        write_frame(&mut socket, &untraced(PeerRequest::BadPiece { index: 0 })).await;
        assert_eq!(read_frame::<PeerReply>(&mut socket).await, PeerReply::Checked);
    };
    // The first complaint has the copy hashed: it is good, and kept.
    complain().await;
    // Then a's disk flips a byte behind its back (same size, time and
    // inode), and complaints come by the dozen: none has the copy hashed
    // again within the interval (else this one would be found bad and
    // withdrawn), so a downloader that complains on and on costs the
    // holder one hash of the file per interval.
    let path = a.folder().path(&name("big.bin"));
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::io::Write::write_all(&mut file, b"J").unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    for _ in 0..24 {
        complain().await;
    }
    assert_eq!(
        status_files(tracker.local_addr()).await,
        [("big.bin".to_owned(), vec![1])],
        "the copy was hashed again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaders_that_stop_reading_do_not_keep_a_seeder_from_everyone_else() {
    let (dir, tracker, a, info) = patient_seeder().await;
    // More conversations than the seeder has upload slots, from another
    // address, each asking for the whole 64 MiB and reading none of it:
    // their sends stall once the socket buffers are full.
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalling(connect_from("127.0.0.3", a.local_addr()).await, info).await);
    }
    downloads_within(&dir, &tracker, info, Duration::from_secs(30)).await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_that_stalls_and_reconnects_waits_behind_those_that_read() {
    let (dir, tracker, a, info) = patient_seeder().await;
    // From another address, a new conversation every second that stalls:
    // each new one would take a slot of those that read for 3 to 6 s, if
    // the address's stalls were not remembered; they come faster than the
    // two slots can give them 3 s each, so the queue would only grow. The
    // download starts once eight are open.
    let peer = a.local_addr();
    let (opened, mut eight) = tokio::sync::mpsc::channel(1);
    let attack = tokio::spawn(async move {
        let mut stalled = Vec::new();
        // The attack's pace, a new connection a second: not a wait for
        // anything.
        let mut pace = tokio::time::interval(Duration::from_secs(1));
        loop {
            pace.tick().await;
            stalled.push(stalling(connect_from("127.0.0.2", peer).await, info).await);
            if stalled.len() == 8 {
                opened.send(()).await.unwrap();
            }
        }
    });
    eight.recv().await.unwrap();
    downloads_within(&dir, &tracker, info, Duration::from_secs(45)).await;
    attack.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_downloaders_that_stop_reading_at_once_cost_the_others_one_stall() {
    let (dir, tracker, a, info) = patient_seeder().await;
    // Thirty at once from one address, all waiting for a slot before any
    // of them stalled, in pieces of 16 MiB, more than socket buffers take,
    // so each would stall on its first: once the first stalls, the rest
    // move to the lagging lane when their turn comes, rather than stall
    // 3 s each in a slot of those that read.
    let mut stalled = Vec::new();
    for _ in 0..30 {
        let socket = connect_from("127.0.0.2", a.local_addr()).await;
        stalled.push(stalling_in(socket, info, 16 << 20).await);
    }
    downloads_within(&dir, &tracker, info, Duration::from_secs(30)).await;
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaders_that_trickle_do_not_keep_a_seeder_from_everyone_else() {
    let (dir, tracker, a, info) = patient_seeder().await;
    // More conversations than the seeder has upload slots, from another
    // address, in pieces of 16 MiB, each reading 1 MiB a second through a
    // small receive buffer: the seeder's sends move several times a
    // second, never still long enough to count as stalled, and a piece
    // takes each of them 16 s, with a slot for as long, then the next (a
    // download that waits behind them for each of its pieces would take
    // hours). Only the socket can tell them from a slow link.
    let mut trickling = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        socket.set_recv_buffer_size(64 << 10).unwrap();
        let socket = socket.connect(a.local_addr()).await.unwrap();
        trickling.push(tokio::spawn(trickle(stalling_in(socket, info, 16 << 20).await)));
    }
    downloads_within(&dir, &tracker, info, Duration::from_secs(45)).await;
    for downloader in trickling {
        downloader.abort();
    }
}

/// Reads 256 KiB of `socket` four times a second, until it closes.
async fn trickle(mut socket: TcpStream) {
    // The downloader's pace: not a wait for anything.
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    let mut sip = vec![0; 256 << 10];
    loop {
        pace.tick().await;
        if socket.read_exact(&mut sip).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_that_fill_every_connection_slot_cannot_keep_another_out() {
    // A seeder that serves 8 connections at once, 4 per address, and
    // waits two minutes on a stalled send: two addresses fill every slot
    // with conversations that ask for pieces and stall. The whole-file
    // download from a third address takes the place of the newest of
    // them, where it would otherwise wait outside until they time out
    // (and, closed, it would fail: the seeder is the only holder).
    let limits = Limits {
        max_connections: 8,
        max_per_address: 4,
        ..Limits::default()
    };
    let (dir, tracker, a, info) = patient_seeder_with(limits).await;
    let mut stalled = Vec::new();
    for from in ["127.0.0.2", "127.0.0.3"] {
        for _ in 0..4 {
            stalled.push(stalling(connect_from(from, a.local_addr()).await, info).await);
        }
    }
    let b = registered(2, dir.path(), &tracker).await;
    let got = tokio::time::timeout(Duration::from_secs(45), b.download(&name("big.bin")))
        .await
        .expect("kept outside by the addresses that filled the slots")
        .unwrap();
    assert_eq!(got.downloaded.info, info);
    // The newest conversation, the last of 127.0.0.3, made way: its
    // stream ends (closed or reset, after what pieces it had been sent).
    let mut gone = stalled.pop().expect("eight");
    let ended = tokio::time::timeout(Duration::from_secs(10), gone.read_to_end(&mut Vec::new())).await;
    assert!(ended.is_ok(), "the newest conversation was not cut");
    drop(stalled);
}

#[tokio::test]
async fn addresses_that_fill_every_tracker_session_cannot_keep_another_out() {
    // A tracker of 8 sessions, 2 per address: four addresses fill it with
    // registered clients that would stay as long as they liked.
    let events = Recorded::new();
    let tracker = tracker_config(TrackerConfig {
        max_sessions: 8,
        events: Some(events.clone()),
        ..TrackerConfig::default()
    })
    .await;
    let mut sessions = Vec::new();
    for (n, from) in ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"].iter().enumerate() {
        for k in 0..2 {
            let mut raw = Raw::from(connect_from(from, tracker.local_addr()).await);
            let id = 100 + 2 * n as u64 + k;
            raw.register(id, "10.0.0.9:9000".parse().unwrap()).await;
            sessions.push((id, raw));
        }
    }
    // A client from another address gets in: every address holds two, and
    // the newest session of them all (127.0.0.5's second) makes way. Its
    // client is forgotten, as if it had left.
    let dir = tempfile::tempdir().unwrap();
    let honest = registered(1, dir.path(), &tracker).await;
    let (cut, mut newest) = sessions.pop().expect("eight");
    assert_eq!(
        newest.reply::<TrackerReply>().await,
        None,
        "the newest session was not cut"
    );
    events.wait_for(|event| matches!(event, Event::ClientLost { .. })).await;
    let lost = events.matching(|event| matches!(event, Event::ClientLost { .. }));
    assert_eq!(lost, [Event::ClientLost { client: ClientId(cut) }]);
    // A newcomer from an address that holds as many as any other, counting
    // it, is closed at once: nobody else's session goes.
    let mut refused = Raw::from(connect_from("127.0.0.5", tracker.local_addr()).await);
    refused
        .request(TrackerRequest::Register {
            client: ClientId(200),
            port: 1,
            advertise: None,
        })
        .await;
    assert_eq!(refused.reply::<TrackerReply>().await, None, "a newcomer cut a session");
    // Everyone else is still served.
    for (_, raw) in &mut sessions {
        raw.request(TrackerRequest::Lookup {
            file: name("nothing.txt"),
            failover: false,
        })
        .await;
        assert_eq!(raw.reply::<TrackerReply>().await, Some(TrackerReply::NoPeer));
    }
    assert!(honest.is_registered().await);
    assert_eq!(
        events.matching(|event| matches!(event, Event::ClientLost { .. })).len(),
        1
    );
}

/// A tracker and a seeder of a 64 MiB `big.bin` that waits two minutes
/// for a stalled send before it gives up on the conversation: long enough
/// that only giving back the upload slot lets anyone else be served
/// within a test's limit.
async fn patient_seeder() -> (tempfile::TempDir, Tracker, Client, FileInfo) {
    patient_seeder_with(Limits::default()).await
}

/// [`patient_seeder`] with `limits`, but for the idle timeout.
async fn patient_seeder_with(limits: Limits) -> (tempfile::TempDir, Tracker, Client, FileInfo) {
    let dir = tempfile::tempdir().unwrap();
    let tracker = tracker().await;
    let limits = limits.with_idle_timeout(Duration::from_secs(120));
    let a = client_with(1, dir.path(), limits).await;
    a.register(tracker.local_addr()).await.unwrap();
    let bytes: Vec<u8> = (0..64 << 20).map(|i: u32| (i % 251) as u8).collect();
    a.folder().write(&name("big.bin"), bytes).await.unwrap();
    let info = a.upload(&name("big.bin")).await.unwrap();
    (dir, tracker, a, info)
}

/// Joins `big.bin` on `socket` in 1 MiB pieces and asks for all 64 of
/// them; the caller reads none.
async fn stalling(socket: TcpStream, info: FileInfo) -> TcpStream {
    stalling_in(socket, info, 1 << 20).await
}

/// [`stalling`] in pieces of `piece_size` bytes.
async fn stalling_in(socket: TcpStream, info: FileInfo, piece_size: u64) -> TcpStream {
    let (mut socket, _) = join_raw_on(socket, "big.bin", info, piece_size).await;
    for index in 0..(64 << 20) / piece_size {
        write_frame(&mut socket, &untraced(PeerRequest::Piece { index })).await;
    }
    socket
}

/// A new client downloads `big.bin` in a swarm within `limit`.
async fn downloads_within(dir: &tempfile::TempDir, tracker: &Tracker, info: FileInfo, limit: Duration) {
    let b = registered(2, dir.path(), tracker).await;
    let file = name("big.bin");
    let got = tokio::time::timeout(limit, b.swarm_download(&file, Default::default()))
        .await
        .expect("the hostile conversations kept the download from the seeder")
        .unwrap();
    assert_eq!(got.downloaded.info, info);
}

//! Swarm downloads against peers that misbehave slowly: ones that send a
//! byte now and then, or never answer a question, must neither hold a
//! download up for good nor make it fail while an honest holder is there.
//! Each fake peer holds every piece and is offered to the downloader first.
//! The fake peers' sleeps are their misbehaviour (a byte every half second),
//! never a wait for something to happen: each test waits on the download.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use phile_core::client::{DownloadError, SwarmOptions};
use phile_core::pieces::{Bitfield, Layout, PieceSize, Tree};
use phile_core::protocol::{self, PeerReply, PeerRequest, Request, SwarmPeer};
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, ClientId, FileName, Limits, Tracker, TrackerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const PIECE: u64 = 16 * 1024;

fn name(text: &str) -> FileName {
    text.parse().unwrap()
}

fn content(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect()
}

fn limits(idle: u64) -> Limits {
    Limits {
        idle_timeout: Duration::from_secs(idle),
        ..Limits::default()
    }
}

async fn client(id: u64, dir: &Path, tracker: &Tracker, idle: u64) -> Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let folder = Folder::create_empty(dir.join(id.to_string())).unwrap();
    let config = ClientConfig {
        limits: limits(idle),
        ..ClientConfig::default()
    };
    let client = Client::start(ClientId(id), folder, listener, config).unwrap();
    client.register(tracker.local_addr()).await.unwrap();
    client
}

/// How a fake peer misbehaves.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Sends its first `fast` pieces at once, then begins each next one
    /// and sends a byte of it every half second.
    TricklesPieces { fast: usize },
    /// Never answers the request for the piece hashes.
    KeepsTheHashes,
    /// Begins its answer with the piece hashes, and sends nothing more.
    BeginsTheHashesThenStalls,
    /// Sends its bitfield a byte every two seconds.
    TricklesItsBitfield,
    /// Sends every piece, unasked, before the downloader has the piece
    /// hashes; then answers what it is asked, as an honest peer would.
    SendsEveryPieceUnasked,
}

async fn read_frame(socket: &mut OwnedReadHalf) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    socket.read_exact(&mut length).await.ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    socket.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

async fn write_reply(socket: &mut OwnedWriteHalf, reply: &PeerReply, body: &[u8]) -> std::io::Result<()> {
    let payload = protocol::encode(reply).unwrap();
    socket.write_all(&(payload.len() as u32).to_be_bytes()).await?;
    socket.write_all(&payload).await?;
    socket.write_all(body).await
}

/// A fake peer holding all of `bytes`, misbehaving as `fault` says.
async fn fake_peer(bytes: Arc<Vec<u8>>, fault: Fault) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket, bytes.clone(), fault));
        }
    });
    addr
}

async fn serve(socket: TcpStream, bytes: Arc<Vec<u8>>, fault: Fault) {
    let piece = PieceSize::new(PIECE).unwrap();
    let layout = Layout::new(bytes.len() as u64, piece);
    let (mut read, mut write) = socket.into_split();
    let Some(_join) = read_frame(&mut read).await else {
        return;
    };
    let joined = PeerReply::Joined {
        pieces: layout.count() as u64,
    };
    if write_reply(&mut write, &joined, &[]).await.is_err() {
        return;
    }
    let bits = Bitfield::full(layout.count());
    if let Fault::TricklesItsBitfield = fault {
        for byte in bits.as_bytes() {
            tokio::time::sleep(Duration::from_secs(2)).await;
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
        }
        return std::future::pending().await;
    }
    if write.write_all(bits.as_bytes()).await.is_err() {
        return;
    }
    if let Fault::SendsEveryPieceUnasked = fault {
        for index in 0..layout.count() {
            let range = layout.range(index);
            let body = &bytes[range.start as usize..range.end as usize];
            let reply = PeerReply::Piece { index: index as u64 };
            if write_reply(&mut write, &reply, body).await.is_err() {
                return;
            }
        }
    }
    // Requests in the order they came; a cancelled one is dropped.
    let (asked, mut asks) = mpsc::unbounded_channel::<PeerRequest>();
    tokio::spawn(async move {
        while let Some(frame) = read_frame(&mut read).await {
            let Ok(request) = protocol::decode::<Request<PeerRequest>>(&frame) else {
                return;
            };
            if asked.send(request.body).is_err() {
                return;
            }
        }
    });
    let layer = Tree::of(&bytes).piece_layer(piece).to_bytes();
    let mut sent = 0;
    while let Some(request) = asks.recv().await {
        match (request, fault) {
            (PeerRequest::Layer, Fault::KeepsTheHashes) => {}
            (PeerRequest::Layer, Fault::BeginsTheHashesThenStalls) => {
                let reply = PeerReply::Layer {
                    pieces: layout.count() as u64,
                };
                if write_reply(&mut write, &reply, &layer[..1]).await.is_err() {
                    return;
                }
            }
            (PeerRequest::Layer, _) => {
                let reply = PeerReply::Layer {
                    pieces: layout.count() as u64,
                };
                if write_reply(&mut write, &reply, &layer).await.is_err() {
                    return;
                }
            }
            (PeerRequest::Piece { index }, Fault::SendsEveryPieceUnasked) => {
                let range = layout.range(index as usize);
                let body = &bytes[range.start as usize..range.end as usize];
                if write_reply(&mut write, &PeerReply::Piece { index }, body)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            (PeerRequest::Piece { index }, Fault::TricklesPieces { fast }) => {
                let range = layout.range(index as usize);
                let body = &bytes[range.start as usize..range.end as usize];
                sent += 1;
                if sent <= fast {
                    if write_reply(&mut write, &PeerReply::Piece { index }, body)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                if write_reply(&mut write, &PeerReply::Piece { index }, &[]).await.is_err() {
                    return;
                }
                for byte in body {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    if write.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
            }
            _ => {}
        }
    }
}

/// A 4 MiB swarm download from an honest seeder (whose upload is capped
/// at `seeder_up` bytes a second, or killed before the download begins),
/// with a fake peer offered first; every client has `idle` seconds of
/// idle timeout. The outcome, if it came within a minute, and whether the
/// file stored is the seeder's.
async fn download_beside(fault: Fault, seeder_up: Option<u64>, idle: u64) -> (Option<Result<(), DownloadError>>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let bytes = content(4 << 20);
    let seeder = client(1, dir.path(), &tracker, idle).await;
    seeder.folder().write(&name("f"), bytes.clone()).await.unwrap();
    seeder.upload(&name("f")).await.unwrap();
    let downloader = client(2, dir.path(), &tracker, idle).await;
    let options = SwarmOptions {
        piece_size: Some(PIECE),
    };
    let mut start = downloader.swarm_start(&name("f"), options).await.unwrap();
    match seeder_up {
        Some(rate) => seeder.set_rate(rate, 0),
        None => seeder.kill().await,
    }
    let addr = fake_peer(Arc::new(bytes.clone()), fault).await;
    let fake = SwarmPeer {
        peer: ClientId(99),
        addr,
        complete: true,
    };
    start.peers.insert(0, fake);
    let received = downloader.swarm_receive(start);
    let outcome = tokio::time::timeout(Duration::from_secs(60), received).await.ok();
    let stored = std::fs::read(dir.path().join("2").join("f")).is_ok_and(|stored| stored == bytes);
    (outcome.map(|result| result.map(|_| ())), stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_trickles_its_pieces_cannot_hold_the_download_up() {
    // It sends 100 pieces at once, so it is asked for dozens more, then
    // a byte every half second: those it is asked for go to the seeder.
    let fault = Fault::TricklesPieces { fast: 100 };
    let (outcome, stored) = download_beside(fault, Some(1_000_000), 30).await;
    assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
    assert!(stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_keeps_the_piece_hashes_cannot_fail_the_download() {
    // Asked first, it never answers; within the first-byte timeout the
    // seeder is asked too, before its conversation ends for want of a
    // question.
    let (outcome, stored) = download_beside(Fault::KeepsTheHashes, Some(4_000_000), 10).await;
    assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
    assert!(stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_begins_the_piece_hashes_and_stalls_cannot_fail_the_download() {
    let (outcome, stored) = download_beside(Fault::BeginsTheHashesThenStalls, Some(4_000_000), 10).await;
    assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
    assert!(stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_trickles_its_bitfield_cannot_keep_a_hopeless_download_going() {
    // The only holder is gone; the fake would take a minute to join.
    let (outcome, stored) = download_beside(Fault::TricklesItsBitfield, None, 5).await;
    assert!(matches!(outcome, Some(Err(_))), "{outcome:?}");
    assert!(!stored);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_sent_before_the_piece_hashes_claim_nothing() {
    // Pieces that come before the piece hashes are dropped unchecked; had
    // they counted as in flight from the peer, nobody would be asked for
    // them until the peer, owing them all and sending nothing more, was
    // dropped as stalled after its idle timeout (30 s).
    let started = std::time::Instant::now();
    let (outcome, stored) = download_beside(Fault::SendsEveryPieceUnasked, Some(4_000_000), 30).await;
    assert!(matches!(outcome, Some(Ok(()))), "{outcome:?}");
    assert!(stored);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}: the early pieces held the download up"
    );
}

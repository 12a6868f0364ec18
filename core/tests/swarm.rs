//! Swarm downloads over real TCP, through the public API: pieces from
//! several peers, checked, stored whole, the sources adding up.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use phile_core::client::{DownloadError, Progress, SwarmOptions};
use phile_core::pieces::{Bitfield, Layer, Layout, PieceSize, Tree};
use phile_core::protocol::{self, PeerReply, PeerRequest, Request, Trace};
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, ClientId, Digest, FileInfo, FileName, Limits, Tracker, TrackerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

fn name(text: &str) -> FileName {
    text.parse().unwrap()
}

/// `len` bytes that differ everywhere.
fn content(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ salt)
        .collect()
}

async fn client(id: u64, dir: &Path, tracker: &Tracker) -> Arc<Client> {
    client_with(id, dir, tracker, ClientConfig::default()).await
}

/// Client `id` with `config`, registered with `tracker`.
async fn client_with(id: u64, dir: &Path, tracker: &Tracker, config: ClientConfig) -> Arc<Client> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let folder = Folder::create_empty(dir.join(id.to_string())).unwrap();
    let client = Client::start(ClientId(id), folder, listener, config).unwrap();
    client.register(tracker.local_addr()).await.unwrap();
    Arc::new(client)
}

/// Client `id`, registered, holding and announcing `file` with `bytes`.
async fn seeding(id: u64, dir: &Path, tracker: &Tracker, file: &str, bytes: Vec<u8>) -> Arc<Client> {
    let seeder = client(id, dir, tracker).await;
    seeder.folder().write(&name(file), bytes).await.unwrap();
    seeder.upload(&name(file)).await.unwrap();
    seeder
}

/// Every entry of a folder, hidden ones included.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_download_draws_pieces_from_several_peers_and_they_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let bytes = content(1_000_000, 7);
    let mut seeders = Vec::new();
    for id in 1..=3 {
        let seeder = seeding(id, dir.path(), &tracker, "big.bin", bytes.clone()).await;
        seeders.push(seeder);
    }
    let downloader = client(9, dir.path(), &tracker).await;
    let options = SwarmOptions {
        piece_size: Some(16 * 1024),
    };
    let fetched = tokio::time::timeout(
        Duration::from_secs(30),
        downloader.swarm_download(&name("big.bin"), options),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(fetched.announced);
    let swarm = fetched.downloaded.swarm.clone().unwrap();
    assert_eq!(swarm.sources.values().sum::<u64>(), 1_000_000, "{swarm:?}");
    assert!(swarm.sources.len() >= 2, "one peer sent everything: {swarm:?}");
    assert_eq!(downloader.folder().read(&name("big.bin")).await.unwrap(), bytes);
    assert_eq!(entries(&dir.path().join("9")), ["big.bin"], "leftovers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swarm_download_goes_on_with_the_peers_it_knows_when_the_tracker_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let bytes = content(3_000_000, 9);
    let seeder = seeding(1, dir.path(), &tracker, "f", bytes.clone()).await;
    // Capped, so the download outlasts the tracker by seconds: it asks the
    // tracker for more peers every second meanwhile.
    seeder.set_rate(1_000_000, 0);
    let downloader = client(2, dir.path(), &tracker).await;
    let start = downloader
        .swarm_start(&name("f"), SwarmOptions::default())
        .await
        .unwrap();

    tracker.shutdown().await;
    let downloaded = tokio::time::timeout(Duration::from_secs(30), downloader.swarm_receive(start))
        .await
        .unwrap()
        .expect("the seeder it knows delivers every piece");

    assert_eq!(downloaded.swarm.unwrap().sources.values().sum::<u64>(), 3_000_000);
    assert_eq!(downloader.folder().read(&name("f")).await.unwrap(), bytes);
    assert_eq!(entries(&dir.path().join("2")), ["f"], "leftovers");
}

/// Wakes a test when a swarm download has checked its first piece.
#[derive(Debug, Default)]
struct FirstPiece(Notify);

impl Progress for FirstPiece {
    fn begin(&self, _: &FileName, _: ClientId, _: u64) {}
    fn advance(&self, _: &FileName, _: u64) {}
    fn swarming(&self, _: &FileName, held: usize, _: usize, _: usize, _: u64, _: u64) {
        if held > 0 {
            self.0.notify_one();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_tracker_a_swarm_download_whose_peers_are_gone_fails_keeping_its_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let seeder = seeding(1, dir.path(), &tracker, "f", content(3_000_000, 4)).await;
    seeder.set_rate(1_000_000, 0);
    let first_piece = Arc::new(FirstPiece::default());
    // Without the tracker, a peer gone is tried again until nothing has
    // come for the idle timeout: short here.
    let config = ClientConfig {
        progress: Some(first_piece.clone()),
        limits: Limits {
            idle_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        ..ClientConfig::default()
    };
    let downloader = client_with(2, dir.path(), &tracker, config).await;
    let start = downloader
        .swarm_start(&name("f"), SwarmOptions::default())
        .await
        .unwrap();

    tracker.shutdown().await;
    let receiving = tokio::spawn({
        let downloader = downloader.clone();
        async move { downloader.swarm_receive(start).await }
    });
    first_piece.0.notified().await;
    seeder.shutdown().await;
    let failed = tokio::time::timeout(Duration::from_secs(30), receiving)
        .await
        .expect("it gives up, rather than wait for a tracker that is gone")
        .unwrap()
        .expect_err("nobody could deliver the rest");

    let DownloadError::Incomplete { missing, .. } = failed else {
        panic!("{failed:?}");
    };
    assert!((1..12).contains(&missing), "{missing} of 12 pieces missing");
    let kept = entries(&dir.path().join("2"));
    assert!(kept.iter().any(|entry| entry.ends_with(".phile-pieces")), "{kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloaders_of_one_file_trade_pieces_while_they_download() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let bytes = content(2_000_000, 3);
    let seeder = seeding(1, dir.path(), &tracker, "f", bytes.clone()).await;
    // The seeder uploads slowly: downloaders must share among themselves.
    seeder.set_rate(1_000_000, 0);
    let mut downloads = Vec::new();
    let mut downloaders = Vec::new();
    for id in 2..=5 {
        let downloader = client(id, dir.path(), &tracker).await;
        let options = SwarmOptions {
            piece_size: Some(32 * 1024),
        };
        let start = downloader.swarm_start(&name("f"), options).await.unwrap();
        let running = downloader.clone();
        downloads.push(tokio::spawn(async move { running.swarm_receive(start).await }));
        downloaders.push(downloader);
    }
    let mut from_peers = 0;
    for download in downloads {
        let downloaded = tokio::time::timeout(Duration::from_secs(60), download)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let swarm = downloaded.swarm.unwrap();
        assert_eq!(swarm.sources.values().sum::<u64>(), 2_000_000);
        from_peers += swarm
            .sources
            .iter()
            .filter(|(peer, _)| **peer != ClientId(1))
            .map(|(_, bytes)| bytes)
            .sum::<u64>();
    }
    for downloader in &downloaders {
        assert_eq!(downloader.folder().read(&name("f")).await.unwrap(), bytes);
    }
    // Four copies of 2 MB at 1 MB/s would take 8 s from the seeder alone;
    // downloaders that trade take much of it off the seeder.
    assert!(
        from_peers > 2_000_000,
        "only {from_peers} bytes came from other downloaders"
    );
}

/// One side of a raw swarm conversation with a peer, as a downloader.
struct Conversation {
    inbound: phile_core::swarm::wire::Inbound,
    outbound: phile_core::swarm::wire::Outbound,
    /// The pieces the peer says it holds.
    shown: phile_core::pieces::Bitfield,
}

impl Conversation {
    /// Joins `peer`'s conversation about `file` (`sha1`) in pieces of
    /// `piece` bytes, as downloader `id`.
    async fn join(peer: &Client, id: u64, file: &str, sha1: Digest, pieces: usize, piece: u64) -> Conversation {
        use phile_core::connection::Connection;
        use phile_core::host::OsHost;
        use phile_core::protocol::{PeerReply, PeerRequest, Request, Trace};
        let mut connection = Connection::connect(&OsHost, peer.local_addr(), Duration::from_secs(5))
            .await
            .unwrap();
        let body = PeerRequest::Join {
            file: name(file),
            client: ClientId(id),
            sha1,
            piece_size: piece,
        };
        connection
            .write(&Request {
                trace: Trace::default(),
                body,
            })
            .await
            .unwrap();
        let joined: PeerReply = connection.read().await.unwrap().unwrap();
        assert_eq!(joined, PeerReply::Joined { pieces: pieces as u64 });
        let (mut inbound, outbound) = phile_core::swarm::wire::split(connection);
        let bits = inbound.body(pieces.div_ceil(8)).await.unwrap().to_vec();
        let shown = phile_core::pieces::Bitfield::from_bytes(pieces, bits).unwrap();
        Conversation {
            inbound,
            outbound,
            shown,
        }
    }

    /// Asks for piece `index` and reads it (noting the pieces shown
    /// before it comes).
    async fn fetch(&mut self, index: usize, len: usize) {
        use phile_core::protocol::{PeerReply, PeerRequest, Request, Trace};
        let body = PeerRequest::Piece { index: index as u64 };
        let request = Request {
            trace: Trace::default(),
            body,
        };
        self.outbound.message(&request).await.unwrap();
        loop {
            match self.inbound.message::<PeerReply>(None).await.unwrap() {
                Some(PeerReply::Have { index }) => self.shown.set(index as usize),
                reply => {
                    assert_eq!(reply, Some(PeerReply::Piece { index: index as u64 }));
                    break;
                }
            };
        }
        self.inbound.body(len).await.unwrap();
    }

    /// The next piece the peer shows.
    async fn next_shown(&mut self) -> usize {
        use phile_core::protocol::PeerReply;
        match self.inbound.message::<PeerReply>(None).await.unwrap() {
            Some(PeerReply::Have { index }) => {
                self.shown.set(index as usize);
                index as usize
            }
            other => panic!("expected a piece shown, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeder_beside_several_downloaders_shows_each_a_piece_at_a_time_until_every_piece_went_out() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let piece = 16 * 1024;
    let bytes = content(4 * piece, 5);
    let sha1 = Digest::of(&bytes);
    let seeder = seeding(1, dir.path(), &tracker, "f", bytes).await;

    // Alone, a downloader is shown the whole file.
    let mut first = Conversation::join(&seeder, 2, "f", sha1, 4, piece as u64).await;
    assert!(first.shown.is_complete());
    // Beside it, the next is shown one piece, one nobody was sent yet.
    let mut second = Conversation::join(&seeder, 3, "f", sha1, 4, piece as u64).await;
    assert_eq!(second.shown.iter_held().collect::<Vec<_>>(), [0]);
    // The first takes piece 0; the third is shown a piece neither sent
    // nor shown yet.
    first.fetch(0, piece).await;
    let mut third = Conversation::join(&seeder, 4, "f", sha1, 4, piece as u64).await;
    assert_eq!(third.shown.iter_held().collect::<Vec<_>>(), [1]);
    // Each piece sent to the second shows it one more: the least spread.
    second.fetch(0, piece).await;
    assert_eq!(second.next_shown().await, 2);
    second.fetch(2, piece).await;
    assert_eq!(second.next_shown().await, 3);
    first.fetch(1, piece).await;
    second.fetch(3, piece).await;
    assert_eq!(second.next_shown().await, 1);
    assert!(second.shown.is_complete());
    // Every piece went out once: the third, which waited, is shown the rest.
    let rest = [
        third.next_shown().await,
        third.next_shown().await,
        third.next_shown().await,
    ];
    assert_eq!(rest, [0, 2, 3]);
    assert!(third.shown.is_complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pieces_sent_to_a_downloader_that_was_not_shown_them_do_not_end_super_seeding() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let piece = 16 * 1024;
    let bytes = content(4 * piece, 6);
    let sha1 = Digest::of(&bytes);
    let seeder = seeding(1, dir.path(), &tracker, "f", bytes).await;
    let _first = Conversation::join(&seeder, 2, "f", sha1, 4, piece as u64).await;
    let mut second = Conversation::join(&seeder, 3, "f", sha1, 4, piece as u64).await;
    assert_eq!(second.shown.iter_held().collect::<Vec<_>>(), [0]);

    // The second asks for every piece, last first, each before it was
    // shown it (each piece sent shows it one more, from piece 1 on): it
    // gets them, but 3 and 2 do not count as spread.
    for index in [3, 2, 1, 0] {
        second.fetch(index, piece).await;
    }
    // So a newcomer is still shown a piece at a time, not the whole file.
    let third = Conversation::join(&seeder, 4, "f", sha1, 4, piece as u64).await;
    assert_eq!(third.shown.iter_held().count(), 1, "{:?}", third.shown);
}

/// A `phile get` stopped during its final check leaves a record that lists
/// every piece. Resumed in finer pieces than the record's, the download
/// holds every piece yet lacks their hashes: it gets them from a holder
/// and finishes, without fetching a piece again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_record_resumed_in_finer_pieces_finishes_without_fetching_a_piece() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let bytes = content(1_000_000, 5);
    let _seeder = seeding(1, dir.path(), &tracker, "f", bytes.clone()).await;
    let downloader = client(2, dir.path(), &tracker).await;
    let tree = Tree::of(&bytes);
    let coarse = PieceSize::new(256 * 1024).unwrap();
    let layout = Layout::new(bytes.len() as u64, coarse);
    let layer = Layer::verified(layout, tree.layer(coarse), tree.root()).unwrap();
    let info = FileInfo {
        size: bytes.len() as u64,
        sha1: Digest::of(&bytes),
    };
    let part = downloader
        .folder()
        .part(&name("f"), info, tree.root(), layer, None)
        .await
        .unwrap();
    for index in 0..layout.count() {
        let range = layout.range(index);
        let piece = Bytes::copy_from_slice(&bytes[range.start as usize..range.end as usize]);
        assert!(part.take_piece(index, piece).await.unwrap());
    }
    part.save(&Bitfield::full(layout.count())).await.unwrap();
    drop(part);

    let options = SwarmOptions {
        piece_size: Some(16 * 1024),
    };
    let fetched = tokio::time::timeout(Duration::from_secs(30), downloader.swarm_download(&name("f"), options))
        .await
        .expect("it finishes")
        .expect("every piece is on disk already");

    let swarm = fetched.downloaded.swarm.unwrap();
    assert_eq!(swarm.resumed, 1_000_000, "{swarm:?}");
    assert!(swarm.sources.is_empty(), "a piece was fetched again: {swarm:?}");
    assert_eq!(downloader.folder().read(&name("f")).await.unwrap(), bytes);
    assert_eq!(entries(&dir.path().join("2")), ["f"], "leftovers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_of_a_version_its_owner_replaced_leaves_the_new_versions_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let owner = seeding(1, dir.path(), &tracker, "f", content(3_000_000, 1)).await;
    owner.set_rate(1_000_000, 0);
    // A short idle timeout: the stale download, on its own once it hears
    // of the new version, gives up on its peers soon after.
    let limits = Limits {
        idle_timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    let config = ClientConfig {
        limits,
        ..ClientConfig::default()
    };
    let stale = client_with(2, dir.path(), &tracker, config).await;
    let start = stale.swarm_start(&name("f"), SwarmOptions::default()).await.unwrap();
    let download = tokio::spawn({
        let stale = stale.clone();
        async move { stale.swarm_receive(start).await }
    });
    // Nobody holds the first version whole any more: its owner publishes
    // a second under the name.
    owner.withdraw(&name("f")).await.unwrap();
    owner.folder().write(&name("f"), content(2_000_000, 2)).await.unwrap();
    owner.upload(&name("f")).await.unwrap();
    // The stale download asks the tracker again, hears of the new version,
    // and goes on with the peers it knows (it may still finish: the owner
    // may be sending from the old file); it is never offered to a
    // downloader of the new one.
    let _ = tokio::time::timeout(Duration::from_secs(30), download).await.unwrap();
    let fresh = client(3, dir.path(), &tracker).await;
    let start = fresh.swarm_start(&name("f"), SwarmOptions::default()).await.unwrap();
    let offered: Vec<ClientId> = start.peers.iter().map(|peer| peer.peer).collect();
    assert_eq!(offered, [ClientId(1)], "a downloader of the old version was offered");
}

/// Opens a swarm conversation with `peer` about `file` (`sha1`) in pieces
/// of `piece` bytes, as a raw client; returns it with the pieces the peer
/// says it holds.
async fn join_raw(peer: std::net::SocketAddr, file: &str, sha1: Digest, piece: u64) -> (TcpStream, Vec<usize>) {
    let mut socket = TcpStream::connect(peer).await.unwrap();
    let join = PeerRequest::Join {
        file: name(file),
        client: ClientId(666),
        sha1,
        piece_size: piece,
    };
    send_raw(&mut socket, join).await;
    let PeerReply::Joined { pieces } = read_raw(&mut socket).await else {
        panic!("the join was refused");
    };
    let mut bits = vec![0u8; pieces.div_ceil(8) as usize];
    socket.read_exact(&mut bits).await.unwrap();
    let held = (0..pieces as usize)
        .filter(|i| bits[i / 8] & (0x80 >> (i % 8)) != 0)
        .collect();
    (socket, held)
}

async fn send_raw(socket: &mut TcpStream, body: PeerRequest) {
    let payload = protocol::encode(&Request {
        trace: Trace::default(),
        body,
    })
    .unwrap();
    socket.write_all(&(payload.len() as u32).to_be_bytes()).await.unwrap();
    socket.write_all(&payload).await.unwrap();
}

async fn read_raw(socket: &mut TcpStream) -> PeerReply {
    let mut length = [0u8; 4];
    socket.read_exact(&mut length).await.unwrap();
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    socket.read_exact(&mut payload).await.unwrap();
    protocol::decode(&payload).unwrap()
}

/// Tells `peer` that piece `index` of `file` hashed wrong; returns once it
/// has checked.
async fn complain(peer: std::net::SocketAddr, file: &str, sha1: Digest, index: usize) {
    let (mut socket, _) = join_raw(peer, file, sha1, 16 * 1024).await;
    send_raw(&mut socket, PeerRequest::BadPiece { index: index as u64 }).await;
    assert_eq!(read_raw(&mut socket).await, PeerReply::Checked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downloader_told_of_a_bad_piece_checks_the_pieces_it_holds_and_drops_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let bytes = content(320 * 16 * 1024, 5);
    let sha1 = Digest::of(&bytes);
    let seeder = seeding(1, dir.path(), &tracker, "f", bytes).await;
    seeder.set_rate(200_000, 0);
    let first_piece = Arc::new(FirstPiece::default());
    let config = ClientConfig {
        progress: Some(first_piece.clone()),
        ..ClientConfig::default()
    };
    let downloader = client_with(2, dir.path(), &tracker, config).await;
    let options = SwarmOptions {
        piece_size: Some(16 * 1024),
    };
    let start = downloader.swarm_start(&name("f"), options).await.unwrap();
    tokio::spawn({
        let downloader = downloader.clone();
        async move { downloader.swarm_receive(start).await }
    });
    // Some pieces in, the seeder goes: what the downloader holds stays put.
    first_piece.0.notified().await;
    seeder.kill().await;
    let peer = downloader.local_addr();
    let (_, held) = join_raw(peer, "f", sha1, 16 * 1024).await;
    let bad = held[0];
    let missing = (0..320).find(|index| !held.contains(index)).unwrap();

    // A complaint about a piece it does not hold checks nothing and
    // drops nothing.
    complain(peer, "f", sha1, missing).await;
    let (_, held_still) = join_raw(peer, "f", sha1, 16 * 1024).await;
    assert_eq!(held_still, held);
    // Its disk flips a byte of a piece it holds; a complaint about that
    // piece finds it bad, and it is dropped (no longer offered).
    let part = std::fs::read_dir(dir.path().join("2"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.to_string_lossy().ends_with(".phile-swarm"))
        .expect("the partial file");
    let mut file = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(bad as u64 * 16 * 1024)).unwrap();
    std::io::Write::write_all(&mut file, b"J").unwrap();
    drop(file);
    complain(peer, "f", sha1, bad).await;
    let (_, held_now) = join_raw(peer, "f", sha1, 16 * 1024).await;
    assert!(!held_now.contains(&bad), "the bad piece {bad} is still offered");
    assert_eq!(held_now.len(), held.len() - 1, "good pieces were dropped too");
}

/// Records the peers a download blamed, in order.
#[derive(Debug, Default)]
struct Blamed(std::sync::Mutex<Vec<ClientId>>);

impl Progress for Blamed {
    fn begin(&self, _: &FileName, _: ClientId, _: u64) {}
    fn advance(&self, _: &FileName, _: u64) {}
    fn rejected(&self, _: &FileName, peer: ClientId, _: protocol::Problem) {
        self.0.lock().unwrap().push(peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_pieces_are_all_bad_is_blamed_once() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let piece = 1 << 20;
    let rotten = seeding(1, dir.path(), &tracker, "f", content(16 * piece, 3)).await;
    // Its disk flips a byte in every piece after the announce (the time
    // of change kept, so it believes its copy good): every piece it sends
    // fails its hash. Pieces of 1 MiB, two in flight: the second usually
    // arrives before the first is checked and its sender blamed (a
    // download that blamed once per bad piece failed here six runs in
    // eight).
    let path = dir.path().join("1").join("f");
    let mut bytes = std::fs::read(&path).unwrap();
    for index in 0..16 {
        bytes[index * piece + 7] ^= 0xff;
    }
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let blamed = Arc::new(Blamed::default());
    let config = ClientConfig {
        progress: Some(blamed.clone()),
        limits: Limits {
            idle_timeout: Duration::from_secs(2),
            ..Limits::default()
        },
        ..ClientConfig::default()
    };
    let downloader = client_with(2, dir.path(), &tracker, config).await;
    let options = SwarmOptions {
        piece_size: Some(piece as u64),
    };
    let failed = tokio::time::timeout(Duration::from_secs(30), downloader.swarm_download(&name("f"), options))
        .await
        .expect("it gives up once its only holder is blamed")
        .expect_err("nobody honest holds the file");

    let DownloadError::Incomplete { missing, rejected, .. } = failed else {
        panic!("{failed:?}");
    };
    assert_eq!(missing, 16, "a bad piece was kept");
    let rejected: Vec<ClientId> = rejected.iter().map(|rejection| rejection.peer).collect();
    assert_eq!(rejected, [ClientId(1)], "blamed once in the error");
    assert_eq!(
        *blamed.0.lock().unwrap(),
        [ClientId(1)],
        "blamed once on the progress display"
    );
    drop(rotten);
}

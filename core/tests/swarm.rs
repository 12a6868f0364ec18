//! Swarm downloads over real TCP, through the public API: pieces from
//! several peers, checked, stored whole, the sources adding up.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use phile_core::client::SwarmOptions;
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, ClientId, FileName, Tracker, TrackerConfig};
use tokio::net::TcpListener;

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
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let folder = Folder::create_empty(dir.join(id.to_string())).unwrap();
    let client = Client::start(ClientId(id), folder, listener, ClientConfig::default()).unwrap();
    client.register(tracker.local_addr()).await.unwrap();
    Arc::new(client)
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
        let seeder = client(id, dir.path(), &tracker).await;
        seeder.folder().write(&name("big.bin"), bytes.clone()).await.unwrap();
        seeder.upload(&name("big.bin")).await.unwrap();
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
async fn downloaders_of_one_file_trade_pieces_while_they_download() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = Tracker::bind("127.0.0.1:0", TrackerConfig::default()).await.unwrap();
    let bytes = content(2_000_000, 3);
    let seeder = client(1, dir.path(), &tracker).await;
    seeder.folder().write(&name("f"), bytes.clone()).await.unwrap();
    seeder.upload(&name("f")).await.unwrap();
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

//! `phile peer`: seeds a folder until stopped.
//!
//! New files are found by rescanning the folder (every `--rescan` seconds):
//! simple, portable, and cheap next to the hashing a new file needs anyway.
//! A new file is announced once it has kept its size and modification time
//! from one rescan to the next, so a file still being copied in waits; a
//! file deleted or changed in place is withdrawn first.
//! If the tracker goes away, the peer keeps serving the peers that know it
//! and registers again, with everything it holds, once the tracker is back.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use phile_core::client::ClientError;
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, FileName};
use tokio::net::TcpListener;

use crate::Identity;

/// Options of `phile peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    #[command(flatten)]
    identity: Identity,

    /// How often to look for new files in the folder, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    rescan: u64,
}

pub async fn run(args: PeerArgs) -> anyhow::Result<ExitCode> {
    let me = &args.identity;
    crate::existing_folder(&me.dir)?;
    let client = start(me, ClientConfig::default()).await?;
    let tracker = me.tracker_addr().await?;
    client.register(tracker).await?;
    seed(&client, me, tracker, Duration::from_secs(args.rescan.max(1))).await?;
    Ok(ExitCode::SUCCESS)
}

/// Announces everything in the folder, keeps the tracker up to date with
/// the folder every `rescan`, and serves until asked to stop; then says
/// goodbye and lets uploads finish for the grace period.
pub async fn seed(client: &Client, me: &Identity, tracker: SocketAddr, rescan: Duration) -> anyhow::Result<()> {
    let mut seeding = Seeding::default();
    let announced = client.announce_held().await?;
    seeding.held(client, announced.iter().cloned());
    println!(
        "phile peer {} serving {} on {}; announced {} to {tracker}; Ctrl-C to stop",
        me.id,
        me.dir.display(),
        client.local_addr(),
        files(announced.len())
    );
    let mut ticks = tokio::time::interval(rescan);
    loop {
        tokio::select! {
            _ = crate::stop_requested() => break,
            _ = ticks.tick() => {}
        }
        // The tracker restarted, or the network dropped the session.
        if !client.is_registered().await {
            rejoin(client, tracker, &mut seeding).await;
        }
        if let Err(error) = seeding.rescan(client).await {
            tracing::warn!(%error, "could not update the tracker; will register again");
        }
    }
    println!(
        "stopping: telling the tracker, letting uploads finish (up to {} s)",
        me.grace
    );
    if let Err(error) = client.leave(me.grace()).await {
        tracing::warn!(%error, "could not say goodbye to the tracker");
    }
    Ok(())
}

/// "1 file", "2 files".
pub fn files(n: usize) -> String {
    format!("{n} file{}", if n == 1 { "" } else { "s" })
}

/// Opens the folder, binds the listening address and starts the client.
pub async fn start(me: &Identity, config: ClientConfig) -> anyhow::Result<Client> {
    let folder = Folder::open(&me.dir)?;
    let listener = TcpListener::bind(me.listen).await.map_err(|error| {
        let hint = if error.kind() == ErrorKind::AddrInUse {
            " (choose another with --listen)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {}: {error}{hint}", me.listen)
    })?;
    let config = ClientConfig {
        advertise: me.advertise,
        limits: me.limits(),
        ..config
    };
    Ok(Client::start(me.client_id(), folder, listener, config)?)
}

/// Size and modification time: what tells that a file changed.
type Stamp = (u64, Option<SystemTime>);

fn stamp_of(client: &Client, file: &FileName) -> Option<Stamp> {
    let metadata = std::fs::metadata(client.folder().path(file)).ok()?;
    Some((metadata.len(), metadata.modified().ok()))
}

/// What the peer has told the tracker, and what it is watching arrive.
#[derive(Default)]
struct Seeding {
    /// Files announced (or refused), with their stamp then.
    known: HashMap<FileName, Stamp>,
    /// New or changed files, with their stamp at the last look.
    arriving: HashMap<FileName, Stamp>,
}

impl Seeding {
    /// Records `files` as announced, as they are now.
    fn held(&mut self, client: &Client, files: impl IntoIterator<Item = FileName>) {
        self.known.clear();
        for file in files {
            if let Some(stamp) = stamp_of(client, &file) {
                self.known.insert(file, stamp);
            }
        }
    }

    /// Compares the folder with what the tracker was told: a file deleted or
    /// changed in place is withdrawn; a new (or changed) file is announced
    /// once it has kept its size and age for a whole rescan interval, so a
    /// file still being copied in is never announced half-way.
    async fn rescan(&mut self, client: &Client) -> Result<(), ClientError> {
        let present: Vec<FileName> = client.folder().list()?;
        let gone: Vec<FileName> = self
            .known
            .iter()
            .filter(|(file, stamp)| stamp_of(client, file) != Some(**stamp))
            .map(|(file, _)| file.clone())
            .collect();
        for file in gone {
            client.withdraw(&file).await?;
            self.known.remove(&file);
            println!("withdrew {file} (deleted or changed)");
        }
        for file in present {
            if self.known.contains_key(&file) {
                continue;
            }
            let Some(stamp) = stamp_of(client, &file) else { continue };
            if self.arriving.insert(file.clone(), stamp) != Some(stamp) {
                continue; // new, or still changing: look again next time
            }
            self.arriving.remove(&file);
            match client.upload(&file).await {
                Ok(info) => {
                    println!("announced {file} ({} bytes, sha1 {})", info.size, info.sha1);
                    self.known.insert(file, stamp);
                }
                // The tracker knows other content under this name (another
                // peer holds it): say so once, and not again while unchanged.
                Err(ClientError::Refused(reason)) => {
                    eprintln!("phile: not announcing {file}: {reason}; rename it to share it");
                    self.known.insert(file, stamp);
                }
                Err(ClientError::Storage(error)) => tracing::debug!(%error, "{file} not readable yet"),
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// Registers again and announces everything (the tracker restarted, or the
/// network came back).
async fn rejoin(client: &Client, tracker: SocketAddr, seeding: &mut Seeding) {
    match client.register(tracker).await {
        Ok(()) => match client.announce_held().await {
            Ok(files) => {
                println!(
                    "registered again with {tracker}; announced {}",
                    self::files(files.len())
                );
                seeding.held(client, files);
            }
            Err(error) => tracing::warn!(%error, "registered again, but could not announce"),
        },
        Err(error) => tracing::warn!(%error, "the tracker is still unreachable; serving known peers meanwhile"),
    }
}

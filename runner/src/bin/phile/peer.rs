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

use tokio::time::Instant;

use clap::Args;
use phile_core::client::ClientError;
use phile_core::storage::{Folder, StorageError};
use phile_core::{Client, ClientConfig, FileInfo, FileName};
use tokio::net::TcpListener;

use crate::{printable, Identity, Stop};

/// Options of `phile peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    #[command(flatten)]
    identity: Identity,

    /// How often to look for new files in the folder, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 2)]
    rescan: u64,
}

/// Seeds the folder until `stop` is requested.
pub async fn run(args: PeerArgs, stop: Stop) -> anyhow::Result<ExitCode> {
    let me = &args.identity;
    crate::existing_folder(&me.dir)?;
    // A stop before the peer serves anything ends it at once, as later.
    let Some(tracker) = stop.unless_requested(me.tracker_addr()).await else {
        return Ok(ExitCode::SUCCESS);
    };
    let tracker = tracker?;
    let client = start(me, tracker, Folder::open(&me.dir)?, ClientConfig::default()).await?;
    let Some(registered) = stop.unless_requested(crate::register(&client, tracker)).await else {
        return Ok(ExitCode::SUCCESS);
    };
    registered?;
    seed(&client, me, tracker, Duration::from_secs(args.rescan.max(1)), &stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// Announces everything in the folder, keeps the tracker up to date with
/// the folder every `rescan`, and serves until `stop` is requested; then
/// says goodbye and lets uploads finish for the grace period.
///
/// Hashing a big file can take minutes, so every hash gives way to a stop
/// request: the process leaves at once, and the hash (on a blocking thread)
/// is abandoned with the runtime.
pub async fn seed(
    client: &Client,
    me: &Identity,
    tracker: SocketAddr,
    rescan: Duration,
    stop: &Stop,
) -> anyhow::Result<()> {
    let mut seeding = Seeding::default();
    // A tracker that went away since registering (or during a download of
    // `get --seed`) is no reason to stop serving: the loop registers again.
    let round = match announce_all(client, &seeding, stop).await {
        Ok(round) => round,
        Err(error) => {
            tracing::warn!(%error, "could not announce the folder; will register again");
            Round::default()
        }
    };
    let announced = round.announced.len();
    seeding.held(client, round);
    say!(
        "phile peer {} serving {} on {}; announced {} to {tracker}; Ctrl-C to stop",
        me.id,
        me.dir.display(),
        client.local_addr(),
        files(announced)
    );
    let mut ticks = tokio::time::interval(rescan);
    while !stop.is_requested() {
        tokio::select! {
            _ = stop.requested() => break,
            _ = ticks.tick() => {}
        }
        // The tracker restarted, or the network dropped the session:
        // until it is back, there is nobody to tell about the folder. A
        // tracker that takes its time does not hold up a stop.
        if !client.is_registered().await {
            match stop.unless_requested(rejoin(client, tracker, &mut seeding, stop)).await {
                None => break,
                Some(false) => continue,
                Some(true) => {}
            }
        }
        let rescanned = seeding.rescan(client, stop).await;
        seeding.rescanned(rescanned, rescan);
    }
    say!(
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

/// Binds the listening address (for the tracker at `tracker`) and starts
/// the client on `folder`.
pub async fn start(me: &Identity, tracker: SocketAddr, folder: Folder, config: ClientConfig) -> anyhow::Result<Client> {
    let listen = me.listen_addr(tracker);
    let listener = TcpListener::bind(listen).await.map_err(|error| {
        let hint = if error.kind() == ErrorKind::AddrInUse {
            " (choose another with --listen)"
        } else {
            ""
        };
        anyhow::anyhow!("cannot listen on {listen}: {error}{hint}")
    })?;
    let config = ClientConfig {
        advertise: me.advertise,
        limits: me.limits(),
        ..config
    };
    let client = Client::start(me.client_id(), folder, listener, config)?;
    // Capped before registering, so no transfer ever runs uncapped.
    client.set_rate(me.max_upload, me.max_download);
    Ok(client)
}

/// Size and modification time: what tells that a file changed.
type Stamp = (u64, Option<SystemTime>);

fn stamp_of(client: &Client, file: &FileName) -> Option<Stamp> {
    let metadata = std::fs::metadata(client.folder().path(file)).ok()?;
    Some((metadata.len(), metadata.modified().ok()))
}

/// A file the tracker refused, and when to try it again.
struct Refused {
    /// The file's stamp then.
    stamp: Stamp,
    /// What was announced.
    info: FileInfo,
    /// The next try.
    next: Instant,
    /// The wait after that, doubled at each refusal up to [`RETRY_MAX`].
    wait: Duration,
}

impl Refused {
    /// `info`, refused just now, with the file's `stamp` then.
    fn new(stamp: Stamp, info: FileInfo) -> Refused {
        Refused {
            stamp,
            info,
            next: Instant::now() + RETRY_FIRST,
            wait: RETRY_FIRST * 2,
        }
    }
}

/// The first wait before announcing a refused file again.
const RETRY_FIRST: Duration = Duration::from_secs(2);

/// The longest wait between two announces of a refused file.
const RETRY_MAX: Duration = Duration::from_secs(64);

/// What the peer has told the tracker, and what it is watching arrive.
#[derive(Default)]
struct Seeding {
    /// Files announced, with their stamp then.
    known: HashMap<FileName, Stamp>,
    /// Files the tracker refused, as they were then: announced again while
    /// unchanged, since the name may be free by then (or a quota no longer
    /// full), less and less often.
    refused: HashMap<FileName, Refused>,
    /// New or changed files, with their stamp at the last look.
    arriving: HashMap<FileName, Stamp>,
    /// Whether the tracker could not be reached at the last try (said
    /// once, not at every rescan while it is down).
    tracker_lost: bool,
    /// Why the last rescan failed, if it did (said once, not at every
    /// rescan while it goes on failing the same way).
    rescan_failed: Option<String>,
}

impl Seeding {
    /// Tells of a rescan that failed, once for as long as it fails the
    /// same way (a folder that is gone, say).
    fn rescanned(&mut self, outcome: Result<(), ClientError>, every: Duration) {
        let error = match outcome {
            Ok(()) => {
                self.rescan_failed = None;
                return;
            }
            Err(error) => error.to_string(),
        };
        if self.rescan_failed.as_ref() != Some(&error) {
            tracing::warn!(%error, "could not rescan the folder or bring the tracker up to date; trying again every {} s", every.as_secs());
        } else {
            tracing::debug!(%error, "the rescan failed again");
        }
        self.rescan_failed = Some(error);
    }

    /// Records what `round` announced or was refused, as the files are now.
    fn held(&mut self, client: &Client, round: Round) {
        self.known.clear();
        self.refused.clear();
        for file in round.announced {
            if let Some(stamp) = stamp_of(client, &file) {
                self.known.insert(file, stamp);
            }
        }
        for (file, info) in round.refused {
            if let Some(stamp) = stamp_of(client, &file) {
                self.refused.insert(file, Refused::new(stamp, info));
            }
        }
    }

    /// Announces again the files refused before that are due, unchanged
    /// since: a name the tracker kept for other content is free once
    /// nobody holds that content (or once its owner, this peer, publishes
    /// a new version). A file that changed, or cannot be read, is left to
    /// the rescan, as a new one.
    async fn retry_refused(&mut self, client: &Client) -> Result<(), ClientError> {
        let now = Instant::now();
        let due: Vec<FileName> = (self.refused.iter())
            .filter(|(_, refused)| refused.next <= now)
            .map(|(file, _)| file.clone())
            .collect();
        for file in due {
            let Some(refused) = self.refused.get_mut(&file) else {
                continue;
            };
            if stamp_of(client, &file) != Some(refused.stamp) {
                self.refused.remove(&file);
                continue;
            }
            match client.announce(&file, refused.info).await {
                Ok(()) => {
                    say!("announced {} (refused before)", printable(file.as_str()));
                    let stamp = refused.stamp;
                    self.refused.remove(&file);
                    self.known.insert(file, stamp);
                }
                // Said once already; tried again later.
                Err(ClientError::Refused(_)) => {
                    refused.next = Instant::now() + refused.wait;
                    refused.wait = (refused.wait * 2).min(RETRY_MAX);
                }
                Err(error @ (ClientError::Session(_) | ClientError::NotRegistered(_))) => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, "{file} not announced again");
                    self.refused.remove(&file);
                }
            }
        }
        Ok(())
    }

    /// Compares the folder with what the tracker was told: a file deleted or
    /// changed in place is withdrawn; a new (or changed) file is announced
    /// once it has kept its size and age for a whole rescan interval, so a
    /// file still being copied in is never announced half-way. Returns
    /// early, leaving the rest for the next rescan, when `stop` is requested.
    async fn rescan(&mut self, client: &Client, stop: &Stop) -> Result<(), ClientError> {
        // Withdrawn first: a folder that cannot be listed (removed, or
        // its disk gone) has none of its files any more.
        let gone: Vec<FileName> = self
            .known
            .iter()
            .filter(|(file, stamp)| stamp_of(client, file) != Some(**stamp))
            .map(|(file, _)| file.clone())
            .collect();
        for file in gone {
            client.withdraw(&file).await?;
            self.known.remove(&file);
            say!("withdrew {} (deleted or changed)", printable(file.as_str()));
        }
        self.retry_refused(client).await?;
        let present: Vec<FileName> = client.folder().list()?;
        for file in present {
            if self.known.contains_key(&file) || self.refused.contains_key(&file) {
                continue;
            }
            let Some(stamp) = stamp_of(client, &file) else { continue };
            if self.arriving.insert(file.clone(), stamp) != Some(stamp) {
                continue; // new, or still changing: look again next time
            }
            self.arriving.remove(&file);
            let info = match hash(client, &file, false, stop).await {
                Some(Ok(info)) => info,
                Some(Err(error)) => {
                    tracing::debug!(%error, "{file} not readable yet");
                    continue;
                }
                None => return Ok(()),
            };
            match client.announce(&file, info).await {
                Ok(()) => {
                    say!(
                        "announced {} ({} bytes, sha1 {})",
                        printable(file.as_str()),
                        info.size,
                        info.sha1
                    );
                    self.known.insert(file, stamp);
                }
                // The tracker knows other content under this name (another
                // peer holds it): say so once, and try again quietly.
                Err(ClientError::Refused(reason)) => {
                    not_announced(&file, &reason);
                    self.refused.insert(file, Refused::new(stamp, info));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// Files at least this big take a noticeable time to hash (about a second
/// per few hundred megabytes), so the peer says it is busy with one.
const NOTICEABLE_HASH: u64 = 256 * 1024 * 1024;

/// The size and SHA-1 of `file`; `None` if `stop` was requested first.
/// Unless `hashed_before` (the folder remembers the hash of a file it has
/// seen unchanged), a big file is announced on standard output, since
/// hashing it can take minutes.
async fn hash(
    client: &Client,
    file: &FileName,
    hashed_before: bool,
    stop: &Stop,
) -> Option<Result<FileInfo, StorageError>> {
    match stamp_of(client, file) {
        Some((size, _)) if size >= NOTICEABLE_HASH && !hashed_before => {
            say!(
                "hashing {} ({size} bytes) before announcing it",
                printable(file.as_str())
            );
        }
        _ => {}
    }
    tokio::select! {
        biased;
        _ = stop.requested() => None,
        info = client.folder().info(file) => Some(info),
    }
}

/// Tells the user the tracker refused `file`; `reason` is the tracker's.
fn not_announced(file: &FileName, reason: &str) {
    tell!(
        "phile: not announcing {}: {}; it is announced again while unchanged, and taken once the tracker accepts it (if the name is taken by other content, renaming yours shares it now)",
        printable(file.as_str()),
        printable(reason)
    );
}

/// What one round of announcing the whole folder did.
#[derive(Default)]
struct Round {
    /// The files the tracker accepted.
    announced: Vec<FileName>,
    /// The files it refused (it knows other content under the name), with
    /// the content announced.
    refused: Vec<(FileName, FileInfo)>,
}

/// Announces every file of the folder, hashing those not hashed yet. A file
/// the tracker refuses or that cannot be read is skipped with a message; a
/// stop request ends the round early. `seeding` says which files were
/// hashed before (when registering again).
async fn announce_all(client: &Client, seeding: &Seeding, stop: &Stop) -> Result<Round, ClientError> {
    let mut round = Round::default();
    for file in client.folder().list()? {
        let hashed_before = seeding
            .known
            .get(&file)
            .is_some_and(|stamp| Some(*stamp) == stamp_of(client, &file));
        let info = match hash(client, &file, hashed_before, stop).await {
            Some(Ok(info)) => info,
            Some(Err(error)) => {
                tell!(
                    "phile: not announcing {}: {}",
                    printable(file.as_str()),
                    printable(&error.to_string())
                );
                continue;
            }
            None => break,
        };
        match client.announce(&file, info).await {
            Ok(()) => round.announced.push(file),
            Err(ClientError::Refused(reason)) => {
                not_announced(&file, &reason);
                round.refused.push((file, info));
            }
            Err(error) => return Err(error),
        }
    }
    Ok(round)
}

/// Registers again and announces everything (the tracker restarted, or the
/// network came back); returns whether it did.
async fn rejoin(client: &Client, tracker: SocketAddr, seeding: &mut Seeding, stop: &Stop) -> bool {
    if let Err(error) = crate::register(client, tracker).await {
        if !std::mem::replace(&mut seeding.tracker_lost, true) {
            tracing::warn!(%error, "the tracker is unreachable; serving known peers meanwhile, and trying again at every rescan");
        } else {
            tracing::debug!(%error, "the tracker is still unreachable");
        }
        return false;
    }
    seeding.tracker_lost = false;
    match announce_all(client, seeding, stop).await {
        Ok(round) => {
            say!(
                "registered again with {tracker}; announced {}",
                self::files(round.announced.len())
            );
            seeding.held(client, round);
            true
        }
        Err(error) => {
            tracing::warn!(%error, "registered again, but could not announce");
            false
        }
    }
}

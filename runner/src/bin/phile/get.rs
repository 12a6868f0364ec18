//! `phile get`: downloads files, with the same verification, failover and
//! atomic rename as everywhere else, then exits or keeps seeding.
//!
//! A file already in the folder is never replaced silently. Before fetching,
//! `get` compares what the folder holds under the name with the tracker's
//! record: the same size and SHA-1 means it is already here (nothing is
//! fetched); anything else is refused unless `--overwrite`. That check alone
//! would race with a file put there while the download runs, so without
//! `--overwrite` the folder also refuses to replace a file at the rename
//! itself (an atomic no-replace rename): a file that appeared meanwhile is
//! kept, and the download is dropped.
//!
//! A download swarms unless `--single` says otherwise: pieces from every
//! holder and every other downloader at once, each checked as it arrives,
//! served to the others while the download goes on. Pieces checked stay in
//! the folder (hidden) when a download fails or is interrupted, Ctrl-C
//! included, and the next `phile get` of the file fetches only the rest.

use std::io::ErrorKind;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use phile_core::client::{ClientError, DownloadError, Downloaded, SwarmOptions};
use phile_core::storage::{Folder, StorageError};
use phile_core::{Client, ClientConfig, FileInfo, FileName};

use crate::progress::Display;
use crate::{Identity, Stop};

/// How many of the peers a failed swarm download gave up on are named.
const SHOWN_LOST: usize = 5;

/// Options of `phile get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The files to download (a name given twice is fetched once).
    #[arg(required = true, value_name = "NAME", value_parser = file_name)]
    names: Vec<FileName>,

    #[command(flatten)]
    identity: Identity,

    /// Stay after downloading and seed the folder (everything in it, and
    /// files added later) until Ctrl-C, as `phile peer` does.
    #[arg(long)]
    seed: bool,

    /// Replace a file of the folder that has the name of a download but
    /// other content. Without it, such a download is refused. A file that
    /// already has the content the tracker records is never fetched again.
    #[arg(long)]
    overwrite: bool,

    /// Fetch each file whole from one holder the tracker picks (the
    /// founding design), instead of in pieces from every holder and
    /// downloader at once.
    #[arg(long)]
    single: bool,
}

/// How one file's download ended.
enum Outcome {
    /// Fetched, verified and stored. `announced`: the tracker knows this
    /// peer holds it now.
    Arrived {
        /// What arrived, from whom.
        downloaded: Downloaded,
        /// How long it took.
        took: Duration,
        /// Whether the tracker was told.
        announced: bool,
        /// Whether it replaced a file of other content (`--overwrite`).
        replaced: bool,
    },
    /// The folder already held the very content the tracker records.
    AlreadyHere(FileInfo),
    /// The folder holds something else under this name, and `--overwrite`
    /// was not given. `meanwhile`: it appeared while the download ran.
    Taken {
        /// What holds the name.
        it: Occupant,
        /// Whether the file appeared while the download ran.
        meanwhile: bool,
        /// Whether the download, checked whole, is kept for an attempt
        /// with `--overwrite` (a swarm download's partial file is).
        kept: bool,
    },
    /// The download failed.
    Failed(DownloadError),
}

impl Outcome {
    /// A download cut short because the client's downloads were halted.
    fn halted(client: &Client) -> Outcome {
        Outcome::Failed(ClientError::Stopped(client.id()).into())
    }

    /// Whether it was cut short by a halt or a stop, and nothing else
    /// went wrong.
    fn is_cut(&self) -> bool {
        matches!(self, Outcome::Failed(DownloadError::Client(ClientError::Stopped(_))))
    }

    /// Whether the file is in the folder, whole and verified.
    fn is_success(&self) -> bool {
        matches!(self, Outcome::Arrived { .. } | Outcome::AlreadyHere(_))
    }
}

/// Downloads the files named in `args`; Ctrl-C (`stop`) stops them.
pub async fn run(args: GetArgs, stop: Stop) -> anyhow::Result<ExitCode> {
    let me = &args.identity;
    // Fetch each one once (clap checked every name).
    let mut files: Vec<FileName> = Vec::new();
    for file in &args.names {
        if !files.contains(file) {
            files.push(file.clone());
        }
    }
    crate::existing_folder(&me.dir)?;
    let display = Arc::new(Display::new());
    let config = ClientConfig {
        progress: Some(display.clone()),
        ..ClientConfig::default()
    };
    let folder = Folder::open(&me.dir)?;
    let folder = if args.overwrite {
        folder
    } else {
        folder.keeping_existing()
    };
    // Finding the tracker and registering can take seconds (one that
    // does not answer): a stop meanwhile ends `get` at once.
    let Some(tracker) = stop.unless_requested(me.tracker_addr()).await else {
        return Ok(interrupted_before_starting());
    };
    let tracker = tracker?;
    let client = crate::peer::start(me, tracker, folder, config).await?;
    let Some(registered) = stop.unless_requested(crate::register(&client, tracker)).await else {
        return Ok(interrupted_before_starting());
    };
    registered?;

    // Each file's result is printed as soon as it is known, so a small
    // file's line does not wait for a big one, nor go unseen on Ctrl-C.
    let downloads = files.iter().map(|file| {
        let (client, display) = (&client, &display);
        async move {
            let outcome = fetch(client, file, args.overwrite, !args.single).await;
            display.finish(file);
            // Cut by Ctrl-C: the line below says so, once for all, after
            // what each file keeps (any other outcome, a file that arrived
            // all the same included, says so).
            if client.is_halted() && outcome.is_cut() {
                display.interrupted(file);
            } else {
                report(display, client, file, &outcome, args.seed);
            }
            outcome.is_success()
        }
    });
    let mut downloads = std::pin::pin!(futures::future::join_all(downloads));
    // Ctrl-C halts the downloads at once (a whole-file download's partial
    // file is deleted; a swarm download records the pieces it checked, for
    // the next attempt), drives them until they have ended, then says
    // goodbye to the tracker and exits.
    let ok: Vec<bool> = tokio::select! {
        ok = &mut downloads => ok,
        _ = stop.requested() => {
            tell!("phile: stopping...");
            client.halt_downloads();
            let ok = downloads.await;
            if let Err(error) = client.leave(Duration::ZERO).await {
                tracing::info!(%error, "could not say goodbye to the tracker");
            }
            // Every file in place all the same: what `get` is for is done.
            if ok.iter().all(|ok| *ok) {
                tell!("phile: interrupted, but every file had arrived");
                return Ok(ExitCode::SUCCESS);
            }
            let kept = if args.single {
                "nothing half-downloaded is kept"
            } else {
                "the pieces checked so far are kept for the next attempt"
            };
            tell!("phile: interrupted; {kept}");
            return Ok(ExitCode::from(130));
        }
    };
    let missing = ok.iter().filter(|&&ok| !ok).count();
    if missing > 0 {
        let files = crate::progress::count(files.len(), "file");
        tell!("phile: {missing} of {files} did not arrive");
    }
    if args.seed {
        crate::peer::seed(&client, me, tracker, Duration::from_secs(2), &stop).await?;
    } else {
        leave(&client, me.grace(), &stop).await;
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What a stop before any download began exits with.
fn interrupted_before_starting() -> ExitCode {
    tell!("phile: interrupted before any download began");
    ExitCode::from(130)
}

/// Says goodbye to the tracker and lets uploads to other downloaders (of a
/// swarm this one drew from) finish for up to `grace`, saying so if they
/// take more than a moment; a stop cuts them at once.
async fn leave(client: &Client, grace: Duration, stop: &Stop) {
    let leaving = client.leave(grace);
    let mut leaving = std::pin::pin!(leaving);
    // Not a wait for anything: only when to say why the exit takes time.
    let moment = tokio::time::sleep(Duration::from_secs(1));
    let left = tokio::select! {
        left = &mut leaving => Some(left),
        _ = moment => {
            tell!(
                "phile: letting uploads to other downloaders finish (at most {} s; Ctrl-C stops them now)",
                grace.as_secs()
            );
            stop.unless_requested(&mut leaving).await
        }
    };
    if let Some(Err(error)) = left {
        tracing::warn!(%error, "could not say goodbye to the tracker");
    }
}

/// A file name as the protocol allows it (no `/`, no `..`, ...).
fn file_name(text: &str) -> Result<FileName, String> {
    text.parse().map_err(|error| format!("{error}"))
}

/// Locates, checks against the folder, receives and announces one file:
/// in pieces from a swarm (`swarm`), or whole from one holder.
async fn fetch(client: &Client, file: &FileName, overwrite: bool, swarm: bool) -> Outcome {
    if swarm {
        return fetch_swarm(client, file, overwrite).await;
    }
    let Some(located) = until_halted(client, client.first_source(file)).await else {
        return Outcome::halted(client);
    };
    let source = match located {
        Ok(source) => source,
        Err(error) => return Outcome::Failed(error),
    };
    // Compared before fetching: the common case (the file is here, or
    // another one is) costs no transfer.
    let Some(held) = until_halted(client, already(client.folder(), file, &source.info)).await else {
        return Outcome::halted(client);
    };
    let replacing = match held {
        Ok(Some(Held::Same)) => return Outcome::AlreadyHere(source.info),
        Ok(Some(Held::Other(it))) if it.keeps_out(overwrite) => {
            return Outcome::Taken {
                it,
                meanwhile: false,
                kept: false,
            }
        }
        Ok(held) => held.is_some(),
        Err(error) => return Outcome::Failed(ClientError::from(error).into()),
    };
    let started = Instant::now();
    let info = source.info;
    let received = client.receive(file, source).await;
    arrived(client, file, info, started, received, replacing, false).await
}

/// [`fetch`] in pieces from a swarm.
async fn fetch_swarm(client: &Client, file: &FileName, overwrite: bool) -> Outcome {
    let Some(started) = until_halted(client, client.swarm_start(file, SwarmOptions::default())).await else {
        return Outcome::halted(client);
    };
    let start = match started {
        Ok(start) => start,
        Err(error) => return Outcome::Failed(error),
    };
    let info = start.info;
    let Some(held) = until_halted(client, already(client.folder(), file, &info)).await else {
        return Outcome::halted(client);
    };
    let replacing = matches!(held, Ok(Some(Held::Other(_))));
    let here = match held {
        Ok(Some(Held::Same)) => Some(Outcome::AlreadyHere(info)),
        // An earlier attempt may have kept the file, checked, hidden.
        Ok(Some(Held::Other(it))) if it.keeps_out(overwrite) => Some(Outcome::Taken {
            it,
            meanwhile: false,
            kept: client.folder().swarm_part_len(file).is_some(),
        }),
        Ok(_) => None,
        Err(error) => Some(Outcome::Failed(ClientError::from(error).into())),
    };
    if let Some(outcome) = here {
        // Joining the swarm made this client one of its members: it leaves.
        until_halted(client, client.leave_swarm(file, info.sha1)).await;
        return outcome;
    }
    let started = Instant::now();
    let received = client.swarm_receive(start).await;
    arrived(client, file, info, started, received, replacing, true).await
}

/// What `step` comes to, or `None` if the downloads are halted first
/// (Ctrl-C): hashing a big file already in the folder can take minutes,
/// and a tracker gone silent the idle timeout; a download that has not
/// begun has nothing to save, and phile is about to exit.
async fn until_halted<T>(client: &Client, step: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        biased;
        _ = client.halted() => None,
        done = step => Some(done),
    }
}

/// What a download that ended with `received` comes to; a stored file is
/// announced. `replacing`: a file of other content was there (and
/// `--overwrite` allowed replacing it). `swarm`: it was a swarm download
/// (which keeps what it checked when the name is taken meanwhile).
async fn arrived(
    client: &Client,
    file: &FileName,
    info: FileInfo,
    started: Instant,
    received: Result<Downloaded, DownloadError>,
    replacing: bool,
    swarm: bool,
) -> Outcome {
    let downloaded = match received {
        Ok(downloaded) => downloaded,
        // The folder refused to replace a file put there meanwhile (only
        // without --overwrite): the same content is as good as ours.
        Err(DownloadError::Client(ClientError::Storage(StorageError::Io { source: error, .. })))
            if error.kind() == ErrorKind::AlreadyExists =>
        {
            return match already(client.folder(), file, &info).await {
                Ok(Some(Held::Same)) => Outcome::AlreadyHere(info),
                held => Outcome::Taken {
                    it: match held {
                        Ok(Some(Held::Other(it))) => it,
                        _ => Occupant::OtherContent,
                    },
                    meanwhile: true,
                    kept: swarm,
                },
            };
        }
        Err(error) => return Outcome::Failed(error),
    };
    let took = started.elapsed();
    // A stored, verified file is a success even if the tracker cannot be
    // told (it restarted meanwhile): a peer that registers again announces
    // everything it holds.
    let announced = match until_halted(client, client.announce(file, downloaded.info)).await {
        Some(Ok(())) => true,
        Some(Err(error)) => {
            tracing::debug!(%error, "stored {file} but could not tell the tracker");
            false
        }
        None => false,
    };
    Outcome::Arrived {
        downloaded,
        took,
        announced,
        replaced: replacing,
    }
}

/// What the folder holds under a name already.
enum Held {
    /// A regular file with the size and SHA-1 the tracker records.
    Same,
    /// Something else.
    Other(Occupant),
}

/// What holds a download's name in the folder, when it is not the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Occupant {
    /// A file of other content.
    OtherContent,
    /// A folder.
    Folder,
    /// A symbolic link.
    Link,
    /// Something else that is not a regular file (a socket, a device).
    NotRegular,
}

impl Occupant {
    /// Whether it keeps the download out: `--overwrite` replaces a file
    /// (or a link, or whatever else is there), never a folder.
    fn keeps_out(self, overwrite: bool) -> bool {
        !overwrite || self == Occupant::Folder
    }

    /// What the user can do about it.
    fn advice(self) -> &'static str {
        match self {
            Occupant::Folder => "move it away to fetch the file",
            _ => "use --overwrite to replace it",
        }
    }
}

/// How "… already exists" ends for it.
impl std::fmt::Display for Occupant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Occupant::OtherContent => "with other content",
            Occupant::Folder => "as a folder",
            Occupant::Link => "as a symbolic link",
            Occupant::NotRegular => "and is not a regular file",
        })
    }
}

/// What the folder holds under `file`, compared with the tracker's record
/// `recorded`; `None` if nothing.
async fn already(folder: &Folder, file: &FileName, recorded: &FileInfo) -> Result<Option<Held>, StorageError> {
    let path = folder.path(file);
    let metadata = match tokio::fs::symlink_metadata(&path).await {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StorageError::Io { path, source: error }),
    };
    let kind = metadata.file_type();
    if kind.is_dir() {
        return Ok(Some(Held::Other(Occupant::Folder)));
    }
    if kind.is_symlink() {
        return Ok(Some(Held::Other(Occupant::Link)));
    }
    if !kind.is_file() {
        return Ok(Some(Held::Other(Occupant::NotRegular)));
    }
    // Cheap first: a size that differs needs no hash.
    if metadata.len() != recorded.size {
        return Ok(Some(Held::Other(Occupant::OtherContent)));
    }
    match folder.hash(file).await {
        Ok(info) if info == *recorded => {
            // Pieces an earlier swarm attempt kept are of no use now.
            if let Err(error) = folder.drop_swarm_leftovers(file).await {
                tracing::warn!(%error, "cannot remove what a swarm download of {file} left");
            }
            Ok(Some(Held::Same))
        }
        Ok(_) => Ok(Some(Held::Other(Occupant::OtherContent))),
        // Replaced by something else between the look and the hash.
        Err(StorageError::NotFound { .. }) => Ok(Some(Held::Other(Occupant::OtherContent))),
        Err(error) => Err(error),
    }
}

/// Prints how the download of `file` ended.
fn report(display: &Display, client: &Client, file: &FileName, outcome: &Outcome, seeding: bool) {
    match outcome {
        Outcome::Arrived {
            downloaded,
            took,
            announced,
            replaced,
        } => {
            let secs = took.as_secs_f64().max(1e-9);
            // The bytes that came this time: pieces kept from an earlier
            // attempt did not.
            let kept = downloaded.swarm.as_ref().map_or(0, |swarm| swarm.resumed);
            let rate = match downloaded.info.size - kept {
                0..1_000_000 => String::new(),
                fetched => {
                    // One decimal below 10: 4.78 MiB/s under a 5M cap is
                    // not "5 MiB/s".
                    let mib = fetched as f64 / secs / (1024.0 * 1024.0);
                    let decimals = if mib < 10.0 { 1 } else { 0 };
                    format!(", {mib:.decimals$} MiB/s")
                }
            };
            let from = match &downloaded.swarm {
                Some(swarm) => {
                    let peers: Vec<String> = swarm.sources.keys().map(ToString::to_string).collect();
                    let plural = if peers.len() == 1 { "" } else { "s" };
                    let resumed = match swarm.resumed {
                        0 => String::new(),
                        kept => format!(", {kept} bytes kept from an earlier attempt"),
                    };
                    if peers.is_empty() {
                        "from the pieces an earlier attempt kept".to_owned()
                    } else {
                        format!("from peer{plural} {} (in pieces{resumed})", peers.join(", "))
                    }
                }
                None => format!("from peer {}", downloaded.from),
            };
            let replaced = if *replaced {
                "; it replaced the file of other content that was there (--overwrite)"
            } else {
                ""
            };
            display.line(&format!(
                "{file}: {} bytes {from}, sha1 {}, in {:.1} ms{rate}{replaced}",
                downloaded.info.size,
                downloaded.info.sha1,
                secs * 1e3
            ));
            if !announced && client.is_halted() {
                display.line(&format!(
                    "{file}: stored and verified; interrupted before the tracker was told"
                ));
            } else if !announced {
                // Only a seeding get stays to register again.
                let later = if seeding {
                    " (it will be when this peer registers again)"
                } else {
                    ""
                };
                display.line(&format!(
                    "{file}: warning: stored and verified, but the tracker could not be told{later}"
                ));
            }
        }
        Outcome::AlreadyHere(info) => display.line(&format!(
            "{file}: already here ({} bytes, sha1 {}), not fetched again",
            info.size, info.sha1
        )),
        Outcome::Taken { it, meanwhile, kept } => {
            let when = match (meanwhile, kept) {
                (false, false) => "",
                (false, true) => " (what an earlier attempt fetched is kept hidden, for the next one)",
                (true, false) => " (it appeared while the download ran; the download was dropped)",
                (true, true) => {
                    " (it appeared while the download ran; the download, checked whole, is kept hidden, \
                     and the next attempt that may put it there stores it without fetching it again)"
                }
            };
            display.line(&format!(
                "{file}: not fetched: {} already exists {it}{when}; {}",
                client.folder().path(file).display(),
                it.advice()
            ))
        }
        // The error may quote the tracker; the display escapes it.
        Outcome::Failed(error) => {
            display.line(&format!("{file}: failed: {error}"));
            if let DownloadError::Incomplete { missing, lost, .. } = error {
                for (peer, problem) in lost.iter().take(SHOWN_LOST) {
                    display.line(&format!("{file}: gave up on peer {peer}, which {}", problem.describe()));
                }
                if lost.len() > SHOWN_LOST {
                    display.line(&format!("{file}: and on {} more peers", lost.len() - SHOWN_LOST));
                }
                display.line(&format!(
                    "{file}: {} missing; any pieces checked are kept, and getting it again fetches only those missing",
                    crate::progress::count(*missing, "piece")
                ));
            }
        }
    }
}

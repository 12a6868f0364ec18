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

use std::io::ErrorKind;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use phile_core::client::{ClientError, DownloadError, Downloaded, Source};
use phile_core::storage::{Folder, StorageError};
use phile_core::{Client, ClientConfig, FileInfo, FileName};

use crate::progress::Display;
use crate::{Identity, Stop};

/// Options of `phile get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The files to download (a name given twice is fetched once).
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,

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
    },
    /// The folder already held the very content the tracker records.
    AlreadyHere(FileInfo),
    /// The folder holds something else under this name, and `--overwrite`
    /// was not given. `meanwhile`: it appeared while the download ran.
    Taken {
        /// Whether the file appeared while the download ran.
        meanwhile: bool,
    },
    /// The download failed.
    Failed(DownloadError),
}

impl Outcome {
    /// Whether the file is in the folder, whole and verified.
    fn is_success(&self) -> bool {
        matches!(self, Outcome::Arrived { .. } | Outcome::AlreadyHere(_))
    }
}

/// Downloads the files named in `args`; Ctrl-C (`stop`) stops them.
pub async fn run(args: GetArgs, stop: Stop) -> anyhow::Result<ExitCode> {
    let me = &args.identity;
    // Check every name before touching the network; fetch each one once.
    let mut files: Vec<FileName> = Vec::new();
    for name in &args.names {
        let file: FileName = name.parse().map_err(|error| anyhow::anyhow!("{error}"))?;
        if !files.contains(&file) {
            files.push(file);
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
    let client = crate::peer::start(me, folder, config).await?;
    let tracker = me.tracker_addr().await?;
    client.register(tracker).await?;

    let downloads = files.iter().map(|file| {
        let (client, display) = (&client, &display);
        async move {
            let outcome = fetch(client, file, args.overwrite).await;
            display.finish(file);
            (file, outcome)
        }
    });
    // Ctrl-C stops the downloads (their partial files are deleted), says
    // goodbye to the tracker and exits.
    let outcomes = tokio::select! {
        outcomes = futures::future::join_all(downloads) => outcomes,
        _ = stop.requested() => {
            eprintln!("phile: interrupted; nothing half-downloaded is kept");
            client.leave(Duration::ZERO).await.ok();
            return Ok(ExitCode::from(130));
        }
    };
    let mut missing = 0;
    for (file, outcome) in &outcomes {
        if !outcome.is_success() {
            missing += 1;
        }
        report(&display, &client, file, outcome);
    }
    if missing > 0 {
        eprintln!("phile: {missing} of {} files did not arrive", files.len());
    }
    if args.seed {
        crate::peer::seed(&client, me, tracker, Duration::from_secs(2), &stop).await?;
    } else if let Err(error) = client.leave(me.grace()).await {
        tracing::warn!(%error, "could not say goodbye to the tracker");
    }
    Ok(if missing == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Locates, checks against the folder, receives and announces one file.
async fn fetch(client: &Client, file: &FileName, overwrite: bool) -> Outcome {
    let source = match client.first_source(file).await {
        Ok(source) => source,
        Err(error) => return Outcome::Failed(error),
    };
    // Compared before fetching: the common case (the file is here, or
    // another one is) costs no transfer.
    match already(client.folder(), file, &source).await {
        Ok(Some(Held::Same)) => return Outcome::AlreadyHere(source.info),
        Ok(Some(Held::Other)) if !overwrite => return Outcome::Taken { meanwhile: false },
        Ok(_) => {}
        Err(error) => return Outcome::Failed(ClientError::from(error).into()),
    }
    let started = Instant::now();
    let downloaded = match client.receive(file, source).await {
        Ok(downloaded) => downloaded,
        // The folder refused to replace a file put there meanwhile (only
        // without --overwrite): the same content is as good as ours.
        Err(DownloadError::Client(ClientError::Storage(StorageError::Io { source: error, .. })))
            if error.kind() == ErrorKind::AlreadyExists =>
        {
            return match already(client.folder(), file, &source).await {
                Ok(Some(Held::Same)) => Outcome::AlreadyHere(source.info),
                _ => Outcome::Taken { meanwhile: true },
            };
        }
        Err(error) => return Outcome::Failed(error),
    };
    let took = started.elapsed();
    // A stored, verified file is a success even if the tracker cannot be
    // told (it restarted meanwhile): a peer that registers again announces
    // everything it holds.
    let announced = match client.announce(file, downloaded.info).await {
        Ok(()) => true,
        Err(error) => {
            tracing::debug!(%error, "stored {file} but could not tell the tracker");
            false
        }
    };
    Outcome::Arrived {
        downloaded,
        took,
        announced,
    }
}

/// What the folder holds under a name already.
enum Held {
    /// A regular file with the size and SHA-1 the tracker records.
    Same,
    /// Something else: other content, a folder, a link.
    Other,
}

/// What the folder holds under `file`, compared with `source`'s record;
/// `None` if nothing.
async fn already(folder: &Folder, file: &FileName, source: &Source) -> Result<Option<Held>, StorageError> {
    let path = folder.path(file);
    let metadata = match tokio::fs::symlink_metadata(&path).await {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(StorageError::Io { path, source: error }),
    };
    // Cheap first: a size that differs needs no hash.
    if !metadata.is_file() || metadata.len() != source.info.size {
        return Ok(Some(Held::Other));
    }
    match folder.hash(file).await {
        Ok(info) if info == source.info => Ok(Some(Held::Same)),
        Ok(_) => Ok(Some(Held::Other)),
        // Replaced by something else between the look and the hash.
        Err(StorageError::NotFound { .. }) => Ok(Some(Held::Other)),
        Err(error) => Err(error),
    }
}

/// Prints how the download of `file` ended.
fn report(display: &Display, client: &Client, file: &FileName, outcome: &Outcome) {
    match outcome {
        Outcome::Arrived {
            downloaded,
            took,
            announced,
        } => {
            let secs = took.as_secs_f64().max(1e-9);
            let rate = match downloaded.info.size {
                0..1_000_000 => String::new(),
                size => format!(", {:.0} MiB/s", size as f64 / secs / (1024.0 * 1024.0)),
            };
            display.line(&format!(
                "{file}: {} bytes from peer {}, sha1 {}, in {:.1} ms{rate}",
                downloaded.info.size,
                downloaded.from,
                downloaded.info.sha1,
                secs * 1e3
            ));
            if !announced {
                display.line(&format!(
                    "{file}: warning: stored and verified, but the tracker could not be told \
                     (it will be when this peer registers again)"
                ));
            }
        }
        Outcome::AlreadyHere(info) => display.line(&format!(
            "{file}: already here ({} bytes, sha1 {}), not fetched again",
            info.size, info.sha1
        )),
        Outcome::Taken { meanwhile } => {
            let when = if *meanwhile {
                " (it appeared while the download ran; the download was dropped)"
            } else {
                ""
            };
            display.line(&format!(
                "{file}: not fetched: {} already exists with other content{when}; \
                 use --overwrite to replace it",
                client.folder().path(file).display()
            ))
        }
        // The error may quote the tracker; the display escapes it.
        Outcome::Failed(error) => display.line(&format!("{file}: failed: {error}")),
    }
}

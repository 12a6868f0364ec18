//! `phile get`: downloads files, with the same verification, failover and
//! atomic rename as everywhere else, then exits or keeps seeding.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use phile_core::{ClientConfig, FileName};

use crate::progress::Display;
use crate::Identity;

/// Options of `phile get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// The files to download.
    #[arg(required = true, value_name = "NAME")]
    names: Vec<String>,

    #[command(flatten)]
    identity: Identity,

    /// Stay after downloading and seed the folder (everything in it, and
    /// files added later) until Ctrl-C, as `phile peer` does.
    #[arg(long)]
    seed: bool,
}

pub async fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    let me = &args.identity;
    // Check every name before touching the network.
    let files: Vec<FileName> = args
        .names
        .iter()
        .map(|name| name.parse())
        .collect::<Result<_, _>>()
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    crate::existing_folder(&me.dir)?;
    let display = Arc::new(Display::new());
    let config = ClientConfig {
        progress: Some(display.clone()),
        ..ClientConfig::default()
    };
    let client = crate::peer::start(me, config).await?;
    let tracker = me.tracker_addr().await?;
    client.register(tracker).await?;

    let downloads = files.iter().map(|file| {
        let (client, display) = (&client, &display);
        async move {
            let started = Instant::now();
            let outcome = client.download(file).await;
            display.finish(file);
            (file, outcome, started.elapsed())
        }
    });
    // Ctrl-C stops the downloads (their partial files are deleted), says
    // goodbye to the tracker and exits.
    let outcomes = tokio::select! {
        outcomes = futures::future::join_all(downloads) => outcomes,
        _ = crate::stop_requested() => {
            eprintln!("phile: interrupted; nothing half-downloaded is kept");
            client.leave(std::time::Duration::ZERO).await.ok();
            return Ok(ExitCode::from(130));
        }
    };
    let mut arrived = 0;
    for (file, outcome, took) in outcomes {
        match outcome {
            Ok(fetched) => {
                arrived += 1;
                let done = fetched.downloaded;
                let secs = took.as_secs_f64().max(1e-9);
                let rate = match done.info.size {
                    0..1_000_000 => String::new(),
                    size => format!(", {:.0} MiB/s", size as f64 / secs / (1024.0 * 1024.0)),
                };
                display.line(&format!(
                    "{file}: {} bytes from peer {}, sha1 {}, in {:.1} ms{rate}",
                    done.info.size,
                    done.from,
                    done.info.sha1,
                    secs * 1e3
                ));
                if !fetched.announced {
                    display.line(&format!(
                        "{file}: warning: stored and verified, but the tracker could not be told (it will be when this peer registers again)"
                    ));
                }
            }
            Err(error) => display.line(&format!("{file}: failed: {error}")),
        }
    }
    let all = arrived == files.len();
    if !all {
        eprintln!(
            "phile: {} of {} files did not arrive",
            files.len() - arrived,
            files.len()
        );
    }
    if args.seed {
        crate::peer::seed(&client, me, tracker, std::time::Duration::from_secs(2)).await?;
    } else if let Err(error) = client.leave(me.grace()).await {
        tracing::warn!(%error, "could not say goodbye to the tracker");
    }
    Ok(if all { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

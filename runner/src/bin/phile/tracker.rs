//! `phile tracker`.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Args;
use phile_core::tracker::Quotas;
use phile_core::{Tracker, TrackerConfig};

/// Options of `phile tracker`.
#[derive(Debug, Args)]
pub struct TrackerArgs {
    /// Where to listen for peers.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8000")]
    listen: SocketAddr,

    /// Seed of the random choice of a holder (default: a fresh one each run).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// The most files the tracker records over all its clients.
    ///
    /// Each client holding (or downloading in a swarm) a file counts once;
    /// past the limit, announces and swarm downloads are refused until some
    /// are withdrawn. It bounds the tracker's memory: about 1 KB a file at
    /// most.
    #[arg(long, value_name = "N", default_value_t = Quotas::default().files_total)]
    max_files: usize,
}

/// Runs a tracker until `stop` is requested.
pub async fn run(args: TrackerArgs, stop: crate::Stop) -> anyhow::Result<ExitCode> {
    let config = TrackerConfig {
        seed: args.seed.unwrap_or_else(rand::random),
        quotas: Quotas {
            files_total: args.max_files,
            ..Quotas::default()
        },
        ..TrackerConfig::default()
    };
    let tracker = Tracker::bind(args.listen, config).await.map_err(|error| {
        let hint = match error.kind() {
            ErrorKind::AddrInUse => " (is another tracker running? choose another port with --listen)",
            ErrorKind::PermissionDenied => " (ports below 1024 need privileges; pick a higher one)",
            _ => "",
        };
        anyhow::anyhow!("cannot listen on {}: {error}{hint}", args.listen)
    })?;
    say!("phile tracker listening on {}; Ctrl-C to stop", tracker.local_addr());
    stop.requested().await;
    tracing::info!("stopping");
    tracker.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

//! `phile peer`: seeds a folder until stopped.
//!
//! New files are found by rescanning the folder (every `--rescan` seconds):
//! simple, portable, and cheap next to the hashing a new file needs anyway.
//! If the tracker goes away, the peer keeps serving the peers that know it
//! and registers again, with everything it holds, once the tracker is back.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use phile_core::client::ClientError;
use phile_core::storage::Folder;
use phile_core::{Client, ClientConfig, FileName, Trace};
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
    client.register(tracker, &mut Trace::default()).await?;
    let mut announced: BTreeSet<FileName> = client.announce_held(&mut Trace::default()).await?.into_iter().collect();
    println!(
        "phile peer {} serving {} on {}; announced {} files to {tracker}; Ctrl-C to stop",
        me.id,
        me.dir.display(),
        client.local_addr(),
        announced.len()
    );
    let mut rescan = tokio::time::interval(Duration::from_secs(args.rescan.max(1)));
    loop {
        tokio::select! {
            _ = crate::stop_requested() => break,
            _ = rescan.tick() => {}
        }
        if let Err(error) = announce_new(&client, &mut announced).await {
            tracing::warn!(%error, "could not announce new files; registering again");
            rejoin(&client, tracker, &mut announced).await;
        }
    }
    println!(
        "stopping: telling the tracker, letting uploads finish (up to {} s)",
        me.grace
    );
    if let Err(error) = client.leave(&mut Trace::default(), me.grace()).await {
        tracing::warn!(%error, "could not say goodbye to the tracker");
    }
    Ok(ExitCode::SUCCESS)
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

/// Announces the files that appeared since the last look.
async fn announce_new(client: &Client, announced: &mut BTreeSet<FileName>) -> Result<(), ClientError> {
    for file in client.folder().list()? {
        if announced.contains(&file) {
            continue;
        }
        match client.upload(&file, &mut Trace::default()).await {
            Ok(info) => {
                println!("announced {file} ({} bytes, sha1 {})", info.size, info.sha1);
                announced.insert(file);
            }
            // The tracker knows other content under this name: say so once.
            Err(ClientError::Refused(reason)) => {
                eprintln!("phile: not announcing {file}: {reason}");
                announced.insert(file);
            }
            // Half-written by whoever is copying it in: try again next time.
            Err(ClientError::Storage(error)) => tracing::debug!(%error, "{file} not ready"),
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Registers again and announces everything (the tracker restarted, or the
/// network came back).
async fn rejoin(client: &Client, tracker: std::net::SocketAddr, announced: &mut BTreeSet<FileName>) {
    let mut trace = Trace::default();
    match client.register(tracker, &mut trace).await {
        Ok(()) => match client.announce_held(&mut trace).await {
            Ok(files) => {
                println!("registered again with {tracker}; announced {} files", files.len());
                *announced = files.into_iter().collect();
            }
            Err(error) => tracing::warn!(%error, "registered again, but could not announce"),
        },
        Err(error) => tracing::warn!(%error, "the tracker is still unreachable; serving known peers meanwhile"),
    }
}

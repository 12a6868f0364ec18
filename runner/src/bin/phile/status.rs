//! `phile status`: what a tracker knows, as a table or as JSON.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use phile_core::tracker::Snapshot;
use serde_json::json;

/// Options of `phile status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The tracker's address, HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    tracker: String,

    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let addr = crate::resolve(&args.tracker).await?;
    let snapshot = phile_core::client::status(addr, Duration::from_secs(10))
        .await
        .map_err(|error| anyhow::anyhow!("{error} (is {addr} a phile tracker?)"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&as_json(&snapshot))?);
    } else {
        print!("{}", as_tables(addr, &snapshot));
    }
    Ok(ExitCode::SUCCESS)
}

fn as_json(snapshot: &Snapshot) -> serde_json::Value {
    let clients: Vec<_> = snapshot
        .clients
        .iter()
        .map(|(id, addr, files)| json!({ "id": id.0, "addr": addr.to_string(), "files": files }))
        .collect();
    let files: Vec<_> = snapshot
        .files
        .iter()
        .map(|(name, info, holders)| {
            let holders: Vec<u64> = holders.iter().map(|h| h.0).collect();
            json!({ "name": name.as_str(), "size": info.size, "sha1": info.sha1.to_string(), "holders": holders })
        })
        .collect();
    json!({ "clients": clients, "files": files })
}

fn as_tables(addr: std::net::SocketAddr, snapshot: &Snapshot) -> String {
    let mut out = format!(
        "tracker {addr}: {} clients, {} files\n\n",
        snapshot.clients.len(),
        snapshot.files.len()
    );
    let clients: Vec<[String; 3]> = snapshot
        .clients
        .iter()
        .map(|(id, addr, files)| [id.to_string(), addr.to_string(), files.to_string()])
        .collect();
    out += &table(["CLIENT", "ADDRESS", "FILES"], &clients);
    out += "\n";
    let files: Vec<[String; 4]> = snapshot
        .files
        .iter()
        .map(|(name, info, holders)| {
            let holders: Vec<String> = holders.iter().map(|h| h.to_string()).collect();
            let holders = if holders.is_empty() {
                "(none)".to_owned()
            } else {
                holders.join(" ")
            };
            [name.to_string(), info.size.to_string(), info.sha1.to_string(), holders]
        })
        .collect();
    out += &table(["FILE", "BYTES", "SHA1", "HOLDERS"], &files);
    out
}

/// Left-aligned columns, as wide as their widest cell.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        padded.join("  ").trim_end().to_owned() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

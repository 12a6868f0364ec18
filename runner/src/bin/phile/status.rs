//! `phile status`: what a tracker knows, as tables or as JSON.
//!
//! The answer is read entry by entry as it arrives and never held whole:
//! JSON is written as it comes, and the tables keep at most
//! [`MAX_ROWS`] rows each (the rest are counted). The answer itself is
//! capped (`--max-entries`), so a tracker that never ends it, or a huge one,
//! costs bounded memory and ends with an error that says so. Everything
//! the tracker sends is escaped before it reaches the terminal.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use phile_core::client::{SessionError, StatusAnswer, StatusLimits};
use phile_core::protocol::printable;
use phile_core::tracker::StatusEntry;
use phile_core::{ClientId, FileInfo, FileName};
use serde_json::json;

use crate::progress::count;

/// The most rows each table shows; the rest are counted.
const MAX_ROWS: usize = 500;

/// The most holders one row of the files table lists; the rest are counted.
const MAX_HOLDERS_SHOWN: usize = 10;

/// Options of `phile status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The tracker's address, HOST:PORT.
    #[arg(long, value_name = "ADDR", value_parser = crate::host_and_port)]
    tracker: String,

    /// Print JSON instead of tables (all of it, as it arrives).
    #[arg(long)]
    json: bool,

    /// Give up on an answer of more entries than this (a client, or a
    /// file's part of at most 2000 holders, is one entry).
    #[arg(long, value_name = "N", default_value_t = StatusLimits::default().max_entries)]
    max_entries: u64,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let addr = crate::resolve(&args.tracker, |_| true).await?;
    let limits = StatusLimits {
        idle_timeout: Duration::from_secs(10),
        max_entries: args.max_entries,
    };
    let explain = |error: SessionError| match error {
        SessionError::AnswerTooLong { .. } => {
            anyhow::anyhow!("{error} (raise --max-entries if it really knows that much)")
        }
        // These say what to check already.
        error @ SessionError::Unreachable { .. } => anyhow::anyhow!("{error}"),
        error => anyhow::anyhow!("{error} (is {addr} a phile tracker?)"),
    };
    let mut answer = phile_core::client::status(addr, limits).await.map_err(explain)?;
    if args.json {
        let mut out = std::io::BufWriter::new(std::io::stdout());
        let written = write_json(&mut answer, &mut out).await;
        unless_closed(out.flush())?;
        match written {
            Ok(answered) => answered.map_err(explain)?,
            Err(error) => unless_closed(Err(error))?,
        }
    } else {
        let tables = Tables::read(&mut answer).await.map_err(explain)?;
        unless_closed(std::io::stdout().lock().write_all(tables.render(addr).as_bytes()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Output whose reader stopped reading (`phile status | head`) is no error.
fn unless_closed(written: std::io::Result<()>) -> std::io::Result<()> {
    match written {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => written,
    }
}

/// Writes the answer as one JSON object, `{"clients": [...], "files": [...]}`,
/// each entry on a line of its own as it arrives; the parts of a file with
/// many holders are joined into one entry without being held.
async fn write_json(
    answer: &mut StatusAnswer,
    out: &mut impl std::io::Write,
) -> std::io::Result<Result<(), SessionError>> {
    /// Where the output stands.
    enum At {
        /// Among the clients; whether one was written.
        Clients(bool),
        /// Inside the holders of this file; whether one was written.
        Holders(FileName, bool),
    }
    let mut at = At::Clients(false);
    write!(out, "{{\n  \"clients\": [")?;
    loop {
        let entry = match answer.next().await {
            Ok(entry) => entry,
            Err(error) => return Ok(Err(error)),
        };
        match entry {
            Some(StatusEntry::Client { client, addr, files }) => {
                let At::Clients(any) = at else {
                    unreachable!("StatusAnswer::next refuses a client after a file");
                };
                let entry = json!({ "id": client.0, "addr": addr.to_string(), "files": files });
                write!(out, "{}\n    {entry}", if any { "," } else { "" })?;
                at = At::Clients(true);
            }
            Some(StatusEntry::File { file, info, holders }) => {
                let mut any_holder = match at {
                    At::Holders(ref open, any) if *open == file => any,
                    _ => {
                        let separator = match at {
                            At::Clients(_) => "\n  ],\n  \"files\": [",
                            At::Holders(..) => "]},",
                        };
                        let head = json!({ "name": file.as_str(), "size": info.size, "sha1": info.sha1.to_string() });
                        let head = head.to_string();
                        // The object without its closing brace: holders follow.
                        let open = &head[..head.len() - 1];
                        write!(out, "{separator}\n    {open},\"holders\":[")?;
                        false
                    }
                };
                for holder in &holders {
                    write!(out, "{}{}", if any_holder { "," } else { "" }, holder.0)?;
                    any_holder = true;
                }
                at = At::Holders(file, any_holder);
            }
            None => break,
        }
    }
    match at {
        At::Clients(_) => write!(out, "\n  ],\n  \"files\": [")?,
        At::Holders(..) => write!(out, "]}}")?,
    }
    writeln!(out, "\n  ]\n}}")?;
    Ok(Ok(()))
}

/// The tables of a status answer: at most [`MAX_ROWS`] rows each, with
/// counts of everything.
#[derive(Debug, Default)]
struct Tables {
    /// The first clients: id, address, files held.
    clients: Vec<[String; 3]>,
    /// How many clients the answer listed.
    client_count: u64,
    /// The first files: name, size, SHA-1, holders shown, holders in all.
    files: Vec<FileRow>,
    /// How many files the answer listed.
    file_count: u64,
}

/// One row of the files table.
#[derive(Debug)]
struct FileRow {
    name: FileName,
    info: FileInfo,
    /// The first holders.
    shown: Vec<ClientId>,
    /// How many holders in all.
    holders: u64,
}

impl Tables {
    /// Reads the whole answer, keeping what the tables show.
    async fn read(answer: &mut StatusAnswer) -> Result<Tables, SessionError> {
        let mut tables = Tables::default();
        let mut last_file: Option<FileName> = None;
        while let Some(entry) = answer.next().await? {
            tables.add(entry, &mut last_file);
        }
        Ok(tables)
    }

    fn add(&mut self, entry: StatusEntry, last_file: &mut Option<FileName>) {
        match entry {
            StatusEntry::Client { client, addr, files } => {
                self.client_count += 1;
                if self.clients.len() < MAX_ROWS {
                    self.clients
                        .push([client.to_string(), addr.to_string(), files.to_string()]);
                }
            }
            StatusEntry::File { file, info, holders } => {
                // Later parts of a file add to its row.
                if last_file.as_ref() != Some(&file) {
                    self.file_count += 1;
                    *last_file = Some(file.clone());
                    if self.files.len() < MAX_ROWS {
                        self.files.push(FileRow {
                            name: file,
                            info,
                            shown: Vec::new(),
                            holders: 0,
                        });
                    } else {
                        return;
                    }
                } else if self.file_count > MAX_ROWS as u64 {
                    return;
                }
                let row = self.files.last_mut().expect("a row was pushed");
                row.holders += holders.len() as u64;
                let room = MAX_HOLDERS_SHOWN.saturating_sub(row.shown.len());
                row.shown.extend(holders.into_iter().take(room));
            }
        }
    }

    fn render(&self, addr: SocketAddr) -> String {
        let mut out = format!(
            "tracker {addr}: {}, {}\n\n",
            count(self.client_count, "client"),
            count(self.file_count, "file")
        );
        out += &table(["CLIENT", "ADDRESS", "FILES"], &self.clients);
        out += &more(self.client_count, self.clients.len(), "clients");
        out += "\n";
        let files: Vec<[String; 4]> = self
            .files
            .iter()
            .map(|row| {
                let mut holders: Vec<String> = row.shown.iter().map(ClientId::to_string).collect();
                let unshown = row.holders - row.shown.len() as u64;
                if unshown > 0 {
                    holders.push(format!("(+{unshown} more)"));
                }
                let holders = if holders.is_empty() {
                    "(none)".to_owned()
                } else {
                    holders.join(" ")
                };
                let name = printable(row.name.as_str()).into_owned();
                [name, row.info.size.to_string(), row.info.sha1.to_string(), holders]
            })
            .collect();
        out += &table(["FILE", "BYTES", "SHA1", "HOLDERS"], &files);
        out += &more(self.file_count, self.files.len(), "files");
        out
    }
}

/// "... and 12 more clients (phile status --json lists them all)", or
/// nothing when every row is shown.
fn more(count: u64, shown: usize, what: &str) -> String {
    let rest = count - shown as u64;
    if rest == 0 {
        return String::new();
    }
    format!("... and {rest} more {what} (--json lists them all)\n")
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

#[cfg(test)]
mod tests {
    use super::*;
    use phile_core::Digest;

    fn file(name: &str, holders: std::ops::Range<u64>) -> StatusEntry {
        StatusEntry::File {
            file: name.parse().unwrap(),
            info: FileInfo {
                size: 1,
                sha1: Digest::of(b"x"),
            },
            holders: holders.map(ClientId).collect(),
        }
    }

    fn client(id: u64) -> StatusEntry {
        StatusEntry::Client {
            client: ClientId(id),
            addr: "127.0.0.1:9".parse().unwrap(),
            files: 1,
        }
    }

    fn tables(entries: impl IntoIterator<Item = StatusEntry>) -> Tables {
        let mut tables = Tables::default();
        let mut last = None;
        for entry in entries {
            tables.add(entry, &mut last);
        }
        tables
    }

    #[test]
    fn tables_show_a_bounded_number_of_rows_and_count_the_rest() {
        let clients = (0..MAX_ROWS as u64 + 7).map(client);
        let files = (0..MAX_ROWS + 3).map(|n| file(&format!("f{n:04}"), 0..1));
        let tables = tables(clients.chain(files));
        assert_eq!((tables.clients.len(), tables.files.len()), (MAX_ROWS, MAX_ROWS));
        let shown = tables.render("127.0.0.1:8000".parse().unwrap());
        assert!(shown.starts_with(&format!(
            "tracker 127.0.0.1:8000: {} clients, {} files",
            MAX_ROWS + 7,
            MAX_ROWS + 3
        )));
        assert!(shown.contains("... and 7 more clients"), "{shown}");
        assert!(shown.contains("... and 3 more files"), "{shown}");
    }

    #[test]
    fn a_file_in_several_parts_is_one_row_with_its_holders_counted() {
        let tables = tables([file("big", 0..2000), file("big", 2000..2500), file("small", 7..8)]);
        assert_eq!(tables.file_count, 2);
        let shown = tables.render("127.0.0.1:8000".parse().unwrap());
        assert!(shown.contains("0 1 2 3 4 5 6 7 8 9 (+2490 more)"), "{shown}");
        assert!(shown.contains("small"), "{shown}");
    }

    #[test]
    fn remote_strings_are_escaped_for_the_terminal() {
        // A name that a tracker cannot refuse (no control character, but
        // an invisible one) reaches the table escaped.
        let row = FileRow {
            name: "ok".parse().unwrap(),
            info: FileInfo {
                size: 1,
                sha1: Digest::of(b"x"),
            },
            shown: vec![],
            holders: 0,
        };
        let mut tables = Tables::default();
        tables.files.push(FileRow {
            name: "zwsp\u{200b}".parse().unwrap(),
            ..row
        });
        tables.file_count = 1;
        let shown = tables.render("127.0.0.1:8000".parse().unwrap());
        assert!(shown.contains("zwsp\\u{200b}"), "{shown}");
        assert!(!shown.contains('\u{200b}'), "{shown:?}");
    }

    #[tokio::test]
    async fn json_streams_entries_and_joins_the_parts_of_a_file() {
        let (addr, _server) = fake_tracker(vec![
            client(1),
            client(2),
            file("a", 0..3),
            file("a", 3..5),
            file("b", 0..0),
        ])
        .await;
        let mut answer = phile_core::client::status(addr, StatusLimits::default()).await.unwrap();
        let mut out = Vec::new();
        write_json(&mut answer, &mut out).await.unwrap().unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed["clients"].as_array().unwrap().len(), 2);
        assert_eq!(parsed["files"][0]["holders"], json!([0, 1, 2, 3, 4]));
        assert_eq!(parsed["files"][1]["name"], "b");
        assert_eq!(parsed["files"][1]["holders"], json!([]));

        let (addr, _server) = fake_tracker(vec![]).await;
        let mut answer = phile_core::client::status(addr, StatusLimits::default()).await.unwrap();
        let mut out = Vec::new();
        write_json(&mut answer, &mut out).await.unwrap().unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(parsed, json!({ "clients": [], "files": [] }));
    }

    /// A tracker that answers one status request with `entries`.
    async fn fake_tracker(entries: Vec<StatusEntry>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        use phile_core::protocol::{encode, TrackerReply};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut length = [0u8; 4];
            socket.read_exact(&mut length).await.unwrap();
            let mut request = vec![0u8; u32::from_be_bytes(length) as usize];
            socket.read_exact(&mut request).await.unwrap();
            let replies = entries.into_iter().map(|entry| match entry {
                StatusEntry::Client { client, addr, files } => TrackerReply::StatusClient { client, addr, files },
                StatusEntry::File { file, info, holders } => TrackerReply::StatusFile { file, info, holders },
            });
            for reply in replies.chain([TrackerReply::StatusEnd]) {
                let payload = encode(&reply).unwrap();
                socket.write_all(&(payload.len() as u32).to_be_bytes()).await.unwrap();
                socket.write_all(&payload).await.unwrap();
            }
        });
        (addr, server)
    }
}

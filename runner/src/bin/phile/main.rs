//! `phile`: the tracker and peers as processes of their own, for real
//! machines. `phile tracker` runs a tracker; `phile peer` seeds a folder;
//! `phile get` downloads files (and may stay to seed them); `phile status`
//! shows what a tracker knows.

/// Prints a line to standard output, as `println!` does, except that an
/// output nobody reads any more (`phile peer | head -1`, a closed terminal)
/// is no reason to stop: a peer goes on serving, a download goes on.
macro_rules! say {
    ($($line:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($line)*);
    }};
}

/// [`say!`] for standard error: what the user must see, told without
/// dying if nobody reads it.
macro_rules! tell {
    ($($line:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($line)*);
    }};
}

mod get;
mod peer;
mod progress;
mod status;
mod tracker;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use phile_core::client::Client;
use phile_core::ClientId;
use tokio::sync::watch;

/// Peer-to-peer file transfer: a tracker knows who holds which file; peers
/// fetch files straight from each other, verify them, and seed them on.
///
/// Exit status: 0 on success; 1 when something failed (a file did not
/// arrive, an address is in use, the tracker is unreachable); 2 on bad
/// command-line use; 130 when `get` is stopped (Ctrl-C, SIGTERM) before
/// its downloads end.
#[derive(Debug, Parser)]
#[command(
    name = "phile",
    version,
    after_help = "Logs go to standard error; RUST_LOG=debug shows more, RUST_LOG=warn less.\n\
                  A walk-through: the README, \"Run it for real\"."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a tracker until Ctrl-C or SIGTERM.
    Tracker(tracker::TrackerArgs),
    /// Seed the files of a folder (and any added later) until stopped.
    Peer(peer::PeerArgs),
    /// Download files, verify them, then exit (or keep seeding with --seed).
    Get(get::GetArgs),
    /// Show what a tracker knows: clients, files, holders, sizes.
    Status(status::StatusArgs),
    /// One node of `phile-run --processes`, driven over stdin and stdout.
    #[command(hide = true)]
    Agent(phile_runner::agent::AgentArgs),
}

/// Who a peer is and where it stands: shared by `peer` and `get`.
#[derive(Debug, Args)]
struct Identity {
    /// This peer's id, unique among the tracker's clients.
    #[arg(long, value_name = "ID", value_parser = phile_runner::arguments::peer_id)]
    id: u64,

    /// The folder of files this peer holds (downloads go there too).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,

    /// The tracker's address, HOST:PORT.
    #[arg(long, value_name = "ADDR", value_parser = host_and_port)]
    tracker: String,

    /// Where this peer's server listens for other peers (by default, any
    /// address of the family the tracker is reached by: `Identity::listen_addr`).
    #[arg(
        long,
        value_name = "ADDR",
        help = "Where this peer's server listens for other peers [default: 0.0.0.0:0, or [::]:0 when the tracker is reached over IPv6]"
    )]
    listen: Option<SocketAddr>,

    /// The address other peers should use to reach this one, when it is not
    /// the address the tracker sees plus the listening port (NAT, several
    /// interfaces).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,

    /// How long uploads in progress may finish when stopping, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    grace: u64,

    /// How long a connection may make no progress (no answer, no bytes)
    /// before it is given up, in seconds; a download then tries another peer.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = phile_runner::arguments::at_least_one)]
    timeout: u64,

    /// The most this peer sends to other peers, in bytes per second, over
    /// all its uploads together: a whole number, optionally followed by K,
    /// M or G (10^3, 10^6, 10^9: 2M is 2,000,000 bytes per second). 0 means
    /// no cap.
    #[arg(long, value_name = "BYTES_PER_SEC", default_value = "0", value_parser = bytes_per_sec)]
    max_upload: u64,

    /// The most this peer receives from other peers, in bytes per second,
    /// over all its downloads together; written as --max-upload is. 0
    /// means no cap.
    #[arg(long, value_name = "BYTES_PER_SEC", default_value = "0", value_parser = bytes_per_sec)]
    max_download: u64,
}

impl Identity {
    fn client_id(&self) -> ClientId {
        ClientId(self.id)
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(self.grace)
    }

    fn limits(&self) -> phile_core::Limits {
        phile_core::Limits {
            idle_timeout: Duration::from_secs(self.timeout),
            ..phile_core::Limits::default()
        }
    }

    /// The tracker's address, resolving a host name if given one: of the
    /// addresses a name has, the first of the family of `--listen`, if
    /// given (IPv4 or IPv6), since the tracker gives other peers the
    /// address it sees this peer at; else the first.
    async fn tracker_addr(&self) -> anyhow::Result<SocketAddr> {
        match self.listen {
            Some(listen) => resolve(&self.tracker, |found| found.is_ipv6() == listen.is_ipv6()).await,
            None => resolve(&self.tracker, |_| true).await,
        }
    }

    /// Where to listen: `--listen`, or else any address of the family the
    /// tracker at `tracker` is reached by, where it will send other peers.
    fn listen_addr(&self, tracker: SocketAddr) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            let any: IpAddr = if tracker.ip().to_canonical().is_ipv6() {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            SocketAddr::new(any, 0)
        })
    }
}

/// Reads a rate cap: a whole number of bytes per second, optionally
/// followed by K, M or G (either case) for 10^3, 10^6 and 10^9, the
/// decimal multiples network rates are given in.
fn bytes_per_sec(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((at, 'k' | 'K')) => (&text[..at], 1_000),
        Some((at, 'm' | 'M')) => (&text[..at], 1_000_000),
        Some((at, 'g' | 'G')) => (&text[..at], 1_000_000_000),
        _ => (text, 1),
    };
    // Digits only: `u64::from_str` would also take a sign.
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(
            "expected a whole number of bytes per second, optionally followed by K, M or G (as in 500K or 2M)".into(),
        );
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(unit))
        .ok_or_else(|| "too large a rate".into())
}

/// How long `get` and `peer` wait for the tracker's answer to their
/// registration. A tracker answers at once, so a server silent this long is
/// most likely not one, and the user hears so now rather than after the
/// whole idle timeout.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);

/// Registers `client` with the tracker at `tracker`, within
/// [`REGISTER_TIMEOUT`].
async fn register(client: &Client, tracker: SocketAddr) -> anyhow::Result<()> {
    match tokio::time::timeout(REGISTER_TIMEOUT, client.register(tracker)).await {
        Ok(registered) => Ok(registered?),
        Err(_) => anyhow::bail!(
            "no answer from {tracker} within {} s (is that the address of a phile tracker?)",
            REGISTER_TIMEOUT.as_secs()
        ),
    }
}

/// `error` and its causes, as `{:#}` gives them, except a cause whose
/// text the message before it already ends with (an I/O error that names
/// its path and cause, then the same cause again).
fn with_causes(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.ends_with(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

/// The blocking threads of `get` and `peer`: one per core, two at the least.
/// Long jobs (hashing a whole file, which a peer's complaint can start) run
/// on threads of their own (`Host::run_long`), so they never hold these up.
fn blocking_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |cores| cores.get().max(2))
}

/// Checks that `text` has the form `HOST:PORT` (a bracketed IPv6 address
/// for a host with colons), so a mistyped address is a usage error (exit
/// 2) before anything starts; whether the host exists is learnt later.
fn host_and_port(text: &str) -> Result<String, String> {
    let wrong = || {
        format!("expected HOST:PORT, as in 127.0.0.1:8000 or tracker.example:8000 ([::1]:8000 for IPv6), not {text:?}")
    };
    let (host, port) = text.rsplit_once(':').ok_or_else(wrong)?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    if host.is_empty() || (host.contains(':') && !bracketed) || port.parse::<u16>().is_err() {
        return Err(wrong());
    }
    Ok(text.to_owned())
}

/// Resolves `HOST:PORT` to the first address it names that is `preferred`,
/// or else to the first address it names.
async fn resolve(addr: &str, preferred: impl Fn(&SocketAddr) -> bool) -> anyhow::Result<SocketAddr> {
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve the host of the tracker address {addr:?}"))?
        .collect();
    let candidates: Vec<SocketAddr> = found.iter().copied().filter(|found| preferred(found)).collect();
    let candidates = if candidates.is_empty() { found } else { candidates };
    // A name with several addresses (`localhost`: 127.0.0.1 and ::1) may
    // reach the tracker on only one of them: the first that accepts a
    // connection, or else the first (whose error then says why).
    if candidates.len() > 1 {
        for candidate in &candidates {
            let probe = tokio::net::TcpStream::connect(candidate);
            if let Ok(Ok(_)) = tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                return Ok(*candidate);
            }
        }
    }
    candidates
        .first()
        .copied()
        .with_context(|| format!("the tracker address {addr:?} names no address"))
}

/// How long a tracker address that a name resolves to may take to accept a
/// connection before the next one is tried.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks that `dir` is an existing folder.
fn existing_folder(dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => anyhow::bail!("{} is not a folder", dir.display()),
        Err(_) => anyhow::bail!(
            "folder {} does not exist (create it with: mkdir -p {})",
            dir.display(),
            dir.display()
        ),
    }
}

/// Whether the process has been asked to stop (Ctrl-C or SIGTERM).
///
/// One task watches the signals for the whole life of the process, set up
/// before any work starts, and records the request here. A wait made later
/// still sees a signal that arrived earlier, whatever the process was doing
/// then (hashing a big file, say): a listener made afresh for each wait
/// would miss it, and once tokio handles a signal its default action (ending
/// the process) is gone, so a missed signal is lost for good.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Starts watching for Ctrl-C and SIGTERM. The first asks the process
    /// to stop cleanly; a second one ends it at once.
    fn watch() -> anyhow::Result<Stop> {
        let (asked, stop) = watch::channel(false);
        let mut signals = Signals::new().context("cannot watch for Ctrl-C and SIGTERM")?;
        tokio::spawn(async move {
            loop {
                let code = signals.next().await;
                if asked.send_replace(true) {
                    tell!("phile: asked again to stop; stopping at once");
                    std::process::exit(code);
                }
            }
        });
        Ok(Stop(stop))
    }

    /// Resolves once the process is asked to stop (at once if it already was).
    pub async fn requested(&self) {
        if self.0.clone().wait_for(|asked| *asked).await.is_err() {
            // The watching task never ends, so this cannot happen; if it
            // did, no signal could ever arrive.
            std::future::pending::<()>().await;
        }
    }

    /// Whether the process has been asked to stop.
    pub fn is_requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Runs `work` unless the process is asked to stop first (`None`
    /// then): for what can take long before anything is under way, such
    /// as finding and registering with a tracker that does not answer.
    pub async fn unless_requested<T>(&self, work: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::select! {
            biased;
            _ = self.requested() => None,
            done = work => Some(done),
        }
    }
}

/// The signals that ask the process to stop.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers, from which point no such signal is missed.
    fn new() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                interrupt: signal(SignalKind::interrupt())?,
                terminate: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The next signal, as the exit status a shell gives a process it ended
    /// (128 + the signal's number).
    async fn next(&mut self) -> i32 {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => 130,
                _ = self.terminate.recv() => 143,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            130
        }
    }
}

/// Text from the network, made safe to print (see
/// [`phile_core::protocol::printable`]): everything `phile` prints that a
/// tracker or a peer could have written goes through it.
pub use phile_core::protocol::printable;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A tracker or a seeding peer logs what it does; `get` and `status`
    // print their own results and log only problems.
    let default_filter = match cli.command {
        Command::Tracker(_) | Command::Peer(_) => "warn,phile=info,phile_core=info",
        Command::Get(_) | Command::Status(_) | Command::Agent(_) => "warn",
    };
    let (filter, unreadable) = phile_runner::arguments::log_filter(default_filter);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(unreadable) = unreadable {
        tell!("phile: {unreadable}");
    }
    // A peer serves up to 1,024 connections at once.
    phile_runner::backend::raise_file_limit();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if matches!(cli.command, Command::Get(_) | Command::Peer(_)) {
        // Checking, writing and reading pieces are short jobs for tokio's
        // blocking pool, one per piece. The pool adds a thread whenever a
        // job comes and none is idle, so a swarm download grew it to a
        // dozen threads that took turns on two cores: a 1 GiB download
        // from one seeder took 2.78 s (median), 2.74 s with four threads
        // and 2.30 s with two (docs/swarm-measurements.md, "What made the
        // swarm path faster"). No job on the pool waits for another; only
        // the disk, and once, at the start, the resolver.
        runtime.max_blocking_threads(blocking_threads());
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tell!("phile: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        // Only the commands that stop cleanly take over the signals; the
        // others keep the default (Ctrl-C ends them).
        match cli.command {
            Command::Tracker(args) => tracker::run(args, Stop::watch()?).await,
            Command::Peer(args) => peer::run(args, Stop::watch()?).await,
            Command::Get(args) => get::run(args, Stop::watch()?).await,
            Command::Status(args) => status::run(args).await,
            Command::Agent(args) => phile_runner::agent::serve(args).await.map(|()| ExitCode::SUCCESS),
        }
    });
    // Tasks still running (a stuck upload past its grace) must not hold
    // the process open.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match outcome {
        Ok(code) => code,
        Err(error) => {
            // The chain may hold a tracker's or a peer's words.
            tell!("phile: {}", printable(&with_causes(&error)));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{bytes_per_sec, host_and_port, printable, with_causes};

    #[test]
    fn a_tracker_address_needs_a_host_and_a_port() {
        for good in ["127.0.0.1:8000", "tracker.example:1", "localhost:65535", "[::1]:8000"] {
            assert_eq!(host_and_port(good).as_deref(), Ok(good));
        }
        for bad in ["127.0.0.1", ":8000", "host:", "host:port", "host:65536", "::1:8000", ""] {
            assert!(host_and_port(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn rate_caps_are_whole_numbers_with_decimal_suffixes() {
        assert_eq!(bytes_per_sec("0"), Ok(0));
        assert_eq!(bytes_per_sec("1500"), Ok(1500));
        assert_eq!(bytes_per_sec("500K"), Ok(500_000));
        assert_eq!(bytes_per_sec("500k"), Ok(500_000));
        assert_eq!(bytes_per_sec("2M"), Ok(2_000_000));
        assert_eq!(bytes_per_sec("1G"), Ok(1_000_000_000));
        assert_eq!(bytes_per_sec("18446744073709551615"), Ok(u64::MAX));
        for bad in ["", "M", "1.5M", "-1", "+1", "2MB", "2 M", "K2", "x", "20000000000G"] {
            assert!(bytes_per_sec(bad).is_err(), "{bad:?} was taken");
        }
    }

    #[test]
    fn an_error_names_each_cause_once() {
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let storage = phile_core::storage::StorageError::Io {
            path: "noread".into(),
            source: io,
        };
        let error = anyhow::Error::from(storage);
        assert_eq!(with_causes(&error), "noread: permission denied");
        let wrapped = error.context("cannot open the folder");
        assert_eq!(
            with_causes(&wrapped),
            "cannot open the folder: noread: permission denied"
        );
    }

    #[test]
    fn remote_text_cannot_act_on_a_terminal() {
        assert_eq!(printable("plain, é ← 1"), "plain, é ← 1");
        assert_eq!(
            printable("\u{1b}]0;owned\u{7}x\ny\r\u{202e}z\u{9b}"),
            "\\u{1b}]0;owned\\u{7}x\\u{a}y\\u{d}\\u{202e}z\\u{9b}"
        );
    }
}

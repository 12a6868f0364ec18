//! `phile-run`: the command line around [`phile_runner::run`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use phile_runner::{run, RunOptions, Settings, Stats, DEFAULT_SEED};
use tracing_subscriber::EnvFilter;

/// Runs a phile scenario: a Rhai script that starts a tracker and clients,
/// makes them register, upload and download over real TCP, and checks the
/// outcome.
///
/// Exit status: 0 when the script ran to its end; 1 on a script error or a
/// failed assertion (printed as SCRIPT:LINE:COLUMN: message); 2 on bad
/// command-line use.
#[derive(Debug, Parser)]
#[command(
    name = "phile-run",
    version,
    after_help = "The scenario language: scenarios/README.md. Logs: RUST_LOG=info (or debug) phile-run ..."
)]
struct Cli {
    /// The scenario script (.rhai).
    #[arg(value_parser = existing_file)]
    script: PathBuf,

    /// Folder holding one sub-folder per client (ROOT/<id>).
    #[arg(long, value_name = "DIR", default_value = "/tmp")]
    root: PathBuf,

    /// Seed of every random choice (the tracker's choice of peer, write_random).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SEED)]
    seed: u64,

    /// Write the event log to FILE as JSON Lines.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,

    /// Bind every tracker and client to a free port instead of the scripted one.
    #[arg(long)]
    ephemeral_ports: bool,

    /// Print only errors, the summary and what the script prints.
    #[arg(long, short)]
    quiet: bool,

    /// Run the tracker and every client as a `phile` process of its own
    /// (found next to phile-run) instead of tasks in one process. The event
    /// log is the same.
    #[arg(long, conflicts_with = "sim")]
    processes: bool,

    /// Run on a simulated network in virtual time, all in this process:
    /// the same tracker and peer code, the same log for a script whose
    /// outcome does not depend on timing, and a log that repeats exactly
    /// whatever the script does. Adds latency(), partition(), heal().
    #[arg(long)]
    sim: bool,

    /// Stop a script that runs longer than this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIME_LIMIT, value_parser = clap::value_parser!(u64).range(1..))]
    time_limit: u64,
}

/// The default of `--time-limit`, in seconds.
const DEFAULT_TIME_LIMIT: u64 = 300;

fn existing_file(path: &str) -> Result<PathBuf, String> {
    let path = PathBuf::from(path);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() => Ok(path),
        Ok(_) => Err(format!("{} is not a file", path.display())),
        Err(error) => Err(format!("cannot read {}: {error}", path.display())),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // A scenario with many clients holds a few sockets per client; the
    // default soft limit (often 1024) is far below what the system allows.
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::debug!(%error, "could not raise the open-file limit");
    }
    let mut options = RunOptions {
        script: cli.script.clone(),
        settings: Settings {
            root: cli.root.clone(),
            seed: cli.seed,
            ephemeral_ports: cli.ephemeral_ports,
            quiet: cli.quiet,
            processes: None,
            sim: cli.sim,
        },
        events: cli.events.clone(),
        time_limit: Duration::from_secs(cli.time_limit),
    };
    if cli.processes {
        match phile_next_to_me() {
            Ok(phile) => options.settings.processes = Some(phile),
            Err(error) => {
                eprintln!("phile-run: {error}");
                return ExitCode::from(2);
            }
        }
    }
    let outcome = match run(&options) {
        Ok(outcome) => outcome,
        Err(error) => {
            eprintln!("phile-run: {error:#}");
            return ExitCode::from(2);
        }
    };
    let name = cli.script.display();
    let summary = summary(&outcome.stats, outcome.elapsed);
    match outcome.failure {
        None => {
            println!("ok: {name}: {summary}");
            ExitCode::SUCCESS
        }
        Some(failure) => {
            eprint!("{}", failure.report);
            eprintln!("  = seed {}; re-run with: {}", cli.seed, rerun_command(&cli));
            eprintln!("FAILED: {name}: {summary}");
            ExitCode::from(1)
        }
    }
}

/// "15 steps, 5 downloads (4 ok, 1 failed), 1 assertion held, 6 ms".
fn summary(stats: &Stats, elapsed: Duration) -> String {
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let downloads = stats.downloads_ok + stats.downloads_failed;
    format!(
        "{}, {} ({} ok, {} failed), {} held, {} ms",
        plural(stats.steps, "step"),
        plural(downloads, "download"),
        stats.downloads_ok,
        stats.downloads_failed,
        plural(stats.assertions, "assertion"),
        elapsed.as_millis()
    )
}

/// The command that repeats this run exactly (every option that changes
/// what happens; `--quiet` only changes what is printed).
fn rerun_command(cli: &Cli) -> String {
    let mut command = format!("phile-run {} --seed {}", cli.script.display(), cli.seed);
    if cli.root != std::path::Path::new("/tmp") {
        command += &format!(" --root {}", cli.root.display());
    }
    if let Some(events) = &cli.events {
        command += &format!(" --events {}", events.display());
    }
    if cli.ephemeral_ports {
        command += " --ephemeral-ports";
    }
    if cli.processes {
        command += " --processes";
    }
    if cli.sim {
        command += " --sim";
    }
    if cli.time_limit != DEFAULT_TIME_LIMIT {
        command += &format!(" --time-limit {}", cli.time_limit);
    }
    command
}

/// The `phile` binary installed or built beside this one.
fn phile_next_to_me() -> Result<std::path::PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| format!("cannot find my own path: {e}"))?;
    let phile = me.with_file_name(format!("phile{}", std::env::consts::EXE_SUFFIX));
    if phile.is_file() {
        Ok(phile)
    } else {
        Err(format!(
            "--processes needs the phile binary next to phile-run, at {} (build it with cargo build --release)",
            phile.display()
        ))
    }
}

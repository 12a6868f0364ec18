//! `phile-run`: the command line around [`phile_runner::run`].

use std::fs::File;
use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgGroup, Parser};
use phile_core::protocol::count;
use phile_runner::review::{html_report, mermaid, snapshot_view, Log, ReportExtras};
use phile_runner::{run, RunOptions, Settings, Stats, DEFAULT_SEED};

/// Runs a phile scenario: a Rhai script that starts a tracker and clients,
/// makes them register, upload and download over real TCP, and checks the
/// outcome. `--diagram`, `--report` and `--view` show the run for review;
/// `--render EVENTS.jsonl` makes them from a log written earlier, running
/// nothing.
///
/// Exit status: 0 when the script ran to its end; 1 on a script error or a
/// failed assertion (printed as SCRIPT:LINE:COLUMN: message); 2 on bad
/// command-line use.
#[derive(Debug, Parser)]
#[command(
    name = "phile-run",
    version,
    override_usage = "phile-run [OPTIONS] SCRIPT\n       phile-run --render EVENTS.jsonl <--diagram FILE | --report FILE | --view FILE>...",
    after_help = "The scenario language: scenarios/README.md. Logs: RUST_LOG=info (or debug) phile-run ...",
    group(ArgGroup::new("review").args(["diagram", "report", "view"]).multiple(true))
)]
struct Cli {
    /// The scenario script (.rhai).
    #[arg(value_parser = existing_file, required_unless_present = "render")]
    script: Option<PathBuf>,

    /// Folder holding one sub-folder per client (ROOT/ID, where ID is the client's id).
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

    /// Stop a script that runs more than this many operations (every
    /// expression counts one).
    #[arg(long, value_name = "N", default_value_t = phile_runner::DEFAULT_MAX_OPERATIONS, value_parser = phile_runner::arguments::at_least_one)]
    max_operations: u64,

    /// Stop a script that runs longer than this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_TIME_LIMIT, value_parser = phile_runner::arguments::at_least_one)]
    time_limit: u64,

    /// Write the run as a Mermaid sequence diagram to FILE.
    #[arg(long, value_name = "FILE")]
    diagram: Option<PathBuf>,

    /// Write the run's HTML report (one self-contained file) to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,

    /// Write the run's event log as text to FILE, as the snapshots in
    /// snapshots/ hold it: the events of each script line under that line.
    #[arg(long, value_name = "FILE")]
    view: Option<PathBuf>,

    /// Run no script: render --diagram, --report and/or --view from an
    /// event log written earlier with --events.
    #[arg(
        long,
        value_name = "EVENTS.jsonl",
        value_parser = existing_file,
        requires = "review",
        conflicts_with_all = ["script", "root", "seed", "events", "ephemeral_ports", "processes", "sim", "time_limit", "max_operations"]
    )]
    render: Option<PathBuf>,
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
    if let Some(events) = &cli.render {
        return render(events, &cli);
    }
    if cli.quiet && std::env::var_os("RUST_LOG").is_none() {
        // --quiet logs only errors, here and in the node processes of
        // --processes, which inherit the environment; a RUST_LOG the user
        // set still decides. Set before any other thread starts.
        std::env::set_var("RUST_LOG", "error");
    }
    let (filter, unreadable) = phile_runner::arguments::log_filter("warn");
    if let Some(unreadable) = &unreadable {
        eprintln!("phile-run: {unreadable}");
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // Under --sim the run keeps virtual time: a wall-clock stamp on its log
    // lines would say nothing true about when things happened.
    if cli.sim {
        logs.without_time().init();
    } else {
        logs.init();
    }
    let Some(script) = cli.script.clone() else {
        unreachable!("clap requires SCRIPT unless --render is given");
    };
    // Created before the run, as the events file is, so that a path that
    // cannot be written fails at once rather than after a long run.
    let review = match ReviewFiles::create(&cli) {
        Ok(review) => review,
        Err(error) => {
            eprintln!("phile-run: {error}");
            return ExitCode::from(2);
        }
    };
    let mut options = RunOptions {
        script: script.clone(),
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
        max_operations: cli.max_operations,
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
    // Written whether or not the script failed: a failed run is the one
    // most worth reviewing.
    let log = Log::from_lines(outcome.events.iter().map(String::as_str));
    let extras = ReportExtras {
        times: Some(outcome.times.clone()),
        fluid_bounds: outcome.fluid_bounds.clone(),
        download_spans: outcome.download_spans.clone(),
    };
    let review_written = review.write(log, extras);
    if let Err(error) = &review_written {
        eprintln!("phile-run: {error}");
    }
    let name = script.display();
    let summary = summary(&outcome.stats, outcome.elapsed);
    match outcome.failure {
        None => {
            println!("ok: {name}: {summary}");
            if review_written.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }
        Some(failure) => {
            eprint!("{}", failure.report);
            eprintln!("  = seed {}; re-run with: {}", cli.seed, rerun_command(&cli, &script));
            eprintln!("FAILED: {name}: {summary}");
            ExitCode::from(1)
        }
    }
}

/// "15 steps, 5 downloads (4 ok, 1 failed), 1 assertion held, 6 ms".
fn summary(stats: &Stats, elapsed: Duration) -> String {
    let downloads = stats.downloads_ok + stats.downloads_failed;
    format!(
        "{}, {} ({} ok, {} failed), {} held, {} ms",
        count(stats.steps, "step"),
        count(downloads, "download"),
        stats.downloads_ok,
        stats.downloads_failed,
        count(stats.assertions, "assertion"),
        elapsed.as_millis()
    )
}

/// The command that repeats this run exactly (every option that changes
/// what happens; `--quiet` only changes what is printed).
fn rerun_command(cli: &Cli, script: &std::path::Path) -> String {
    let mut command = format!("phile-run {} --seed {}", script.display(), cli.seed);
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
    if cli.max_operations != phile_runner::DEFAULT_MAX_OPERATIONS {
        command += &format!(" --max-operations {}", cli.max_operations);
    }
    if let Some(diagram) = &cli.diagram {
        command += &format!(" --diagram {}", diagram.display());
    }
    if let Some(report) = &cli.report {
        command += &format!(" --report {}", report.display());
    }
    if let Some(view) = &cli.view {
        command += &format!(" --view {}", view.display());
    }
    command
}

/// `--render EVENTS.jsonl`: the diagram and report of a log written earlier.
fn render(events: &std::path::Path, cli: &Cli) -> ExitCode {
    let written = std::fs::read_to_string(events)
        .map_err(|error| format!("cannot read {}: {error}", events.display()))
        .and_then(|text| {
            let (log, cut) = Log::parse_cut_short(&text).map_err(|error| {
                format!(
                    "{}: {error}; --render reads the JSON-lines event log a run wrote with --events FILE",
                    events.display()
                )
            })?;
            if let Some(line) = cut {
                eprintln!(
                    "phile-run: {}: line {line} is cut short (the run was stopped while writing it); drawing the {} events before it",
                    events.display(),
                    log.events.len()
                );
            }
            Ok(log)
        })
        .and_then(|log| ReviewFiles::create(cli)?.write(Ok(log), ReportExtras::default()));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("phile-run: {error}");
            ExitCode::from(2)
        }
    }
}

/// The files `--diagram`, `--report` and `--view` asked for, open for
/// writing.
struct ReviewFiles {
    diagram: Option<(PathBuf, File)>,
    report: Option<(PathBuf, File)>,
    view: Option<(PathBuf, File)>,
    /// The script run, if any: the view heads each line's events with it.
    script: Option<String>,
}

impl ReviewFiles {
    fn create(cli: &Cli) -> Result<ReviewFiles, String> {
        let open = |path: &Option<PathBuf>| -> Result<Option<(PathBuf, File)>, String> {
            let Some(path) = path else { return Ok(None) };
            let file = File::create(path).map_err(|error| format!("cannot create {}: {error}", path.display()))?;
            Ok(Some((path.clone(), file)))
        };
        Ok(ReviewFiles {
            diagram: open(&cli.diagram)?,
            report: open(&cli.report)?,
            view: open(&cli.view)?,
            script: cli
                .script
                .as_ref()
                .and_then(|script| std::fs::read_to_string(script).ok()),
        })
    }

    /// Writes what was asked for, from `log` (the run's own log cannot
    /// fail to parse, but a caller's can) and, for the run just made, what
    /// it measured beside the log (when each event happened, for the
    /// timeline; swarm times against their fluid bounds).
    fn write(self, log: Result<Log, phile_runner::review::ParseError>, extras: ReportExtras) -> Result<(), String> {
        if self.diagram.is_none() && self.report.is_none() && self.view.is_none() {
            return Ok(());
        }
        let log = log.map_err(|error| format!("cannot read the event log: {error}"))?;
        if let Some((path, file)) = self.diagram {
            write_to(&path, file, &mermaid(&log))?;
        }
        if let Some((path, file)) = self.report {
            let html = html_report(&log, &extras)
                .map_err(|error| format!("cannot make the report {}: {error}", path.display()))?;
            write_to(&path, file, &html)?;
        }
        if let Some((path, file)) = self.view {
            write_to(&path, file, &snapshot_view(&log, self.script.as_deref()))?;
        }
        Ok(())
    }
}

fn write_to(path: &std::path::Path, mut file: File, text: &str) -> Result<(), String> {
    file.write_all(text.as_bytes())
        .map_err(|error| format!("cannot write {}: {error}", path.display()))
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

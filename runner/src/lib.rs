//! phile-run: runs a Rhai scenario against a phile tracker and peers, over
//! real TCP or a simulated network, and records what happened as an event
//! log.
//!
//! - [`run`] runs the script on a thread of its own (Rhai is synchronous;
//!   the script thread blocks on the nodes for each step);
//! - [`bindings`]: the Rhai names of the scenario language;
//! - [`world`]: what each verb does;
//! - [`command`] and [`node`]: what a script asks of a node, and the node
//!   that carries it out, the same for every backend;
//! - [`backend`]: the ways of running nodes (in this process, in processes
//!   of their own, simulated);
//! - [`faults`]: `kill_after` and `stall_after` as stream wrappers;
//! - [`event_log`]: the deterministic, ordered JSON Lines log;
//! - [`report`]: script errors shown like a compiler's;
//! - [`review`]: a run's diagram, HTML report and snapshot view, from its log;
//! - [`tree`]: the folder tree, rendered as the seed documents it.

pub mod agent;
pub mod arguments;
pub mod backend;
pub mod bindings;
pub mod command;
pub mod event_log;
pub mod faults;
pub mod node;
pub mod report;
pub mod review;
pub mod tree;
pub mod world;

use std::cell::Cell;
use std::io::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rhai::Engine;

use crate::backend::{local::Local, processes::Processes, sim::Sim, Backend, Deadline};
use crate::event_log::{EventLog, ScenarioEvent, Subject, Untraced, SCHEMA_VERSION};
use crate::report::ScriptFailure;
pub use crate::world::{Settings, Stats};

/// The seed used when none is given: fixed, so runs repeat.
pub const DEFAULT_SEED: u64 = 1;

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The scenario script.
    pub script: PathBuf,
    /// Root folder, seed, ports, verbosity, backend.
    pub settings: Settings,
    /// Where to write the event log as JSON Lines, if anywhere.
    pub events: Option<PathBuf>,
    /// The longest the script may run, in wall-clock time.
    pub time_limit: Duration,
    /// The most operations the script may run.
    pub max_operations: u64,
}

impl RunOptions {
    /// Options for running `script` as the test suite does: in `root`, on
    /// free ports, quietly, with the default seed, over real TCP.
    pub fn for_test(script: impl Into<PathBuf>, root: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            script: script.into(),
            settings: Settings {
                root: root.into(),
                seed: DEFAULT_SEED,
                ephemeral_ports: true,
                quiet: true,
                processes: None,
                sim: false,
            },
            events: None,
            time_limit: Duration::from_secs(120),
            max_operations: DEFAULT_MAX_OPERATIONS,
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The event log, one JSON object per line.
    pub events: Vec<String>,
    /// Counts for the summary.
    pub stats: Stats,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
    /// When each event of the log happened, in the run's seconds (virtual
    /// under `--sim`): for the report's timeline, never in the log.
    pub times: Vec<f64>,
    /// Each `fluid_bound` the script asked for, against the time the
    /// downloads it bounds took: for the report, never in the log.
    pub fluid_bounds: Vec<review::FluidBound>,
    /// When each download that stored its file began and ended, in the
    /// seconds of `times`: for the report's timeline, never in the log.
    pub download_spans: Vec<review::DownloadSpan>,
    /// Why the script stopped early, if it did.
    pub failure: Option<ScriptFailure>,
}

/// How one attempt at a run ended.
enum Attempt {
    /// The script ran (to its end, or to an error).
    Finished(Outcome),
    /// The simulation needs room for more nodes: start over with `needed`,
    /// after the `printed` lines this attempt printed already.
    Again { needed: usize, printed: usize },
}

/// Runs the scenario. `Err` means the run could not start (no runtime, the
/// events file cannot be created); a script that fails is an `Ok` outcome
/// with a `failure`.
pub fn run(options: &RunOptions) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let deadline = Deadline::after(options.time_limit);
    let (mut capacity, mut printed) = (backend::sim::FIRST_CAPACITY, 0);
    loop {
        let attempt = {
            let options = options.clone();
            std::thread::Builder::new()
                .name("phile-script".into())
                .spawn(move || run_attempt(&options, deadline, capacity, printed))
                .context("cannot start the script thread")?
                .join()
                .map_err(|_| anyhow::anyhow!("the script thread panicked"))??
        };
        match attempt {
            Attempt::Finished(outcome) => {
                return Ok(Outcome {
                    elapsed: started.elapsed(),
                    ..outcome
                })
            }
            Attempt::Again {
                needed,
                printed: so_far,
            } => {
                tracing::info!(needed, "the simulation starts over with room for more nodes");
                (capacity, printed) = (needed, so_far);
            }
        }
    }
}

/// One attempt: builds the log, the backend, the engine and the world on
/// this thread (a simulation lives on the thread that drives it), runs the
/// script, then stops every node.
fn run_attempt(options: &RunOptions, deadline: Deadline, capacity: usize, printed: usize) -> anyhow::Result<Attempt> {
    let settings = &options.settings;
    let untraced = if settings.sim {
        Untraced::CurrentOperation
    } else {
        Untraced::Refused
    };
    let log = Arc::new(EventLog::create(options.events.as_deref(), untraced).with_context(|| {
        format!(
            "cannot create the event log {}",
            options.events.clone().unwrap_or_default().display()
        )
    })?);
    let backend: Box<dyn Backend> = match (&settings.processes, settings.sim) {
        (_, true) => Box::new(Sim::new(capacity, log.clone(), deadline).context("cannot start the simulation")?),
        (Some(phile), false) => Box::new(Processes::new(
            phile.clone(),
            log.clone(),
            settings.ephemeral_ports,
            deadline,
        )),
        (None, false) => Box::new(
            Local::new(log.clone(), settings.ephemeral_ports, deadline).context("cannot start the tokio runtime")?,
        ),
    };
    log.set_clock(backend.clock());
    let output = Rc::new(Output::after(printed));
    let world = Rc::new(world::World::new(
        backend,
        settings.clone(),
        log.clone(),
        deadline,
        output.clone(),
    ));
    let mut engine = Engine::new();
    guard(&mut engine, deadline, options.max_operations, &world);
    let printing = output.clone();
    engine.on_print(move |text| printing.line(text));
    bindings::register(&mut engine, world.clone());
    let scenario = options.script.file_name().map_or_else(
        || options.script.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let started = ScenarioEvent::ScenarioStarted {
        scenario,
        seed: settings.seed,
        schema: SCHEMA_VERSION,
        network: if settings.sim { "sim" } else { "tcp" },
    };
    log.record_alone(Subject::Scenario, started);
    let result = engine
        .compile_file(options.script.clone())
        .and_then(|ast| engine.run_ast(&ast));
    if let Some(needed) = world.needs_room() {
        return Ok(Attempt::Again {
            needed,
            printed: output.printed(),
        });
    }
    world.finish();
    let failure = result.err().map(|error| {
        let functions = report::signatures(&engine);
        ScriptFailure::new(&error, &options.script, &functions)
    });
    let last = match &failure {
        None => ScenarioEvent::ScenarioFinished,
        Some(failure) => ScenarioEvent::ScenarioFailed {
            error: failure.message_without(&settings.root),
            line: failure.line,
            column: failure.column,
        },
    };
    log.at_line(None);
    log.record_alone(Subject::Scenario, last);
    if let Some(path) = &options.events {
        log.finish()
            .with_context(|| format!("cannot write the event log {}", path.display()))?;
    }
    Ok(Attempt::Finished(Outcome {
        events: log.lines(),
        times: log.times(),
        fluid_bounds: world.fluid_bounds(),
        download_spans: world.download_spans(),
        stats: world.stats(),
        elapsed: Duration::ZERO,
        failure,
    }))
}

/// Where the step lines and the script's own prints go: standard output,
/// unless quiet. A simulation that starts over skips the lines the earlier
/// attempt printed already (the run repeats exactly, so they are the same).
pub struct Output {
    /// Lines produced so far in this attempt.
    produced: Cell<usize>,
    /// Lines printed by earlier attempts: not printed again.
    skip: usize,
}

impl Output {
    /// Output that skips the first `skip` lines.
    pub fn after(skip: usize) -> Output {
        Output {
            produced: Cell::new(0),
            skip,
        }
    }

    /// Prints `text` as one line, unless an earlier attempt did.
    pub fn line(&self, text: &str) {
        let produced = self.produced.get() + 1;
        self.produced.set(produced);
        if produced > self.skip {
            let _ = writeln!(std::io::stdout().lock(), "{text}");
        }
    }

    /// Lines produced so far.
    pub fn printed(&self) -> usize {
        self.produced.get()
    }
}

/// Limits that stop a runaway script with an error that names the limit
/// and how to raise it (see the scenario reference, "Limits"): wall-clock
/// time and a count of operations. Rhai's own size limits are left off: it
/// enforces them by measuring a whole array after every change, which makes
/// building a large array take quadratic time; the operation count bounds
/// what a script can build instead.
fn guard(engine: &mut Engine, deadline: Deadline, max_operations: u64, world: &Rc<world::World>) {
    engine.set_strict_variables(true);
    engine.set_max_operations(max_operations);
    engine.set_max_call_levels(64);
    engine.set_max_expr_depths(64, 64);
    let world = Rc::downgrade(world);
    engine.on_progress(move |operations| {
        // Reading the clock every operation would cost more than the
        // operations; every 4096th is plenty.
        if operations % 4096 != 0 {
            return None;
        }
        let world = world.upgrade()?;
        if world.needs_room().is_some() {
            return Some("the simulation starts over with room for more nodes".into());
        }
        if deadline.passed() {
            let message = format!(
                "the scenario ran longer than its time limit of {} s; raise it with --time-limit",
                deadline.limit.as_secs()
            );
            return Some(message.into());
        }
        None
    });
}

/// The most operations a script may run unless told otherwise (Rhai counts
/// each expression; a loop of a few steps is a few operations a turn).
pub const DEFAULT_MAX_OPERATIONS: u64 = 100_000_000;

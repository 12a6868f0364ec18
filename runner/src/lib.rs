//! phile-run: runs a Rhai scenario against a real phile tracker and peers,
//! and records what happened as an event log.
//!
//! - [`run`] sets up a tokio runtime for the nodes and runs the script on a
//!   thread of its own (Rhai is synchronous; the script thread blocks on the
//!   runtime for each network step);
//! - [`bindings`]: the Rhai names of the scenario language;
//! - [`world`]: what each verb does to the tracker and clients;
//! - [`event_log`]: the deterministic, ordered JSON Lines log;
//! - [`report`]: script errors shown like a compiler's;
//! - [`review`]: a run's diagram, HTML report and snapshot view, from its log;
//! - [`tree`]: the folder tree, rendered as the seed documents it.

pub mod agent;
pub mod bindings;
pub mod event_log;
pub mod report;
pub mod review;
pub mod tree;
pub mod world;

use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rhai::Engine;

use crate::event_log::{EventLog, ScenarioEvent, Subject, SCHEMA_VERSION};
use crate::report::ScriptFailure;
pub use crate::world::{Settings, Stats};

/// The seed used when none is given: fixed, so runs repeat.
pub const DEFAULT_SEED: u64 = 1;

/// Everything a run needs.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The scenario script.
    pub script: PathBuf,
    /// Root folder, seed, ports, verbosity.
    pub settings: Settings,
    /// Where to write the event log as JSON Lines, if anywhere.
    pub events: Option<PathBuf>,
    /// The longest the script may run.
    pub time_limit: Duration,
}

impl RunOptions {
    /// Options for running `script` as the test suite does: in `root`, on
    /// free ports, quietly, with the default seed.
    pub fn for_test(script: impl Into<PathBuf>, root: impl Into<PathBuf>) -> RunOptions {
        RunOptions {
            script: script.into(),
            settings: Settings {
                root: root.into(),
                seed: DEFAULT_SEED,
                ephemeral_ports: true,
                quiet: true,
                processes: None,
            },
            events: None,
            time_limit: Duration::from_secs(120),
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
    /// Why the script stopped early, if it did.
    pub failure: Option<ScriptFailure>,
}

/// Runs the scenario. `Err` means the run could not start (no runtime, the
/// events file cannot be created); a script that fails is an `Ok` outcome
/// with a `failure`.
pub fn run(options: &RunOptions) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let log = Arc::new(EventLog::create(options.events.as_deref()).with_context(|| {
        format!(
            "cannot create the event log {}",
            options.events.clone().unwrap_or_default().display()
        )
    })?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("phile-node")
        .build()
        .context("cannot start the tokio runtime")?;
    let script_thread = {
        let (options, log, handle) = (options.clone(), log.clone(), runtime.handle().clone());
        std::thread::Builder::new()
            .name("phile-script".into())
            .spawn(move || run_script(&options, log, handle))
            .context("cannot start the script thread")?
    };
    let (stats, failure) = script_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the script thread panicked"))?;
    runtime.shutdown_timeout(Duration::from_secs(5));
    if let Some(path) = &options.events {
        log.finish()
            .with_context(|| format!("cannot write the event log {}", path.display()))?;
    }
    Ok(Outcome {
        events: log.lines(),
        stats,
        elapsed: started.elapsed(),
        failure,
    })
}

/// The script thread: builds the engine and the world, runs the script,
/// then stops every node.
fn run_script(
    options: &RunOptions,
    log: Arc<EventLog>,
    runtime: tokio::runtime::Handle,
) -> (Stats, Option<ScriptFailure>) {
    let world = Rc::new(world::World::new(runtime, options.settings.clone(), log.clone()));
    let mut engine = Engine::new();
    guard(&mut engine, options.time_limit);
    bindings::register(&mut engine, world.clone());
    let scenario = options.script.file_name().map_or_else(
        || options.script.display().to_string(),
        |name| name.to_string_lossy().into_owned(),
    );
    let started = ScenarioEvent::ScenarioStarted {
        scenario,
        seed: options.settings.seed,
        schema: SCHEMA_VERSION,
    };
    log.record_alone(Subject::Scenario, started);
    let result = engine
        .compile_file(options.script.clone())
        .and_then(|ast| engine.run_ast(&ast));
    world.finish();
    let failure = result.err().map(|error| ScriptFailure::new(&error, &options.script));
    let last = match &failure {
        None => ScenarioEvent::ScenarioFinished,
        Some(failure) => ScenarioEvent::ScenarioFailed {
            error: failure.message_without(&options.settings.root),
            line: failure.line,
            column: failure.column,
        },
    };
    log.record_alone(Subject::Scenario, last);
    (world.stats(), failure)
}

/// Limits that stop a runaway script with a clear error instead of letting
/// it spin or eat memory.
fn guard(engine: &mut Engine, time_limit: Duration) {
    engine.set_strict_variables(true);
    engine.set_max_operations(500_000_000);
    engine.set_max_call_levels(64);
    engine.set_max_expr_depths(64, 64);
    engine.set_max_string_size(64 * 1024 * 1024);
    engine.set_max_array_size(1_000_000);
    engine.set_max_map_size(1_000_000);
    let start = Instant::now();
    engine.on_progress(move |operations| {
        // Reading the clock every operation would cost more than the
        // operations; every 4096th is plenty.
        if operations % 4096 == 0 && start.elapsed() > time_limit {
            let message = format!(
                "the scenario ran longer than its time limit of {} s; raise it with --time-limit",
                time_limit.as_secs()
            );
            return Some(message.into());
        }
        None
    });
}

//! Running scenario scripts from a test.

use std::path::{Path, PathBuf};

use phile_runner::report::ScriptFailure;
use phile_runner::{run, Outcome, RunOptions};
use serde_json::Value;
use tempfile::TempDir;

/// A scenario run in its own temporary folder, kept until dropped.
pub struct Run {
    /// What the run produced.
    pub outcome: Outcome,
    /// The folder holding the script and the client folders.
    pub dir: TempDir,
}

impl Run {
    /// The folder of client `id`.
    pub fn folder(&self, id: u64) -> PathBuf {
        self.dir.path().join("root").join(id.to_string())
    }

    /// The event log, parsed.
    pub fn events(&self) -> Vec<Value> {
        events(&self.outcome)
    }

    /// The events named `name`.
    pub fn events_named(&self, name: &str) -> Vec<Value> {
        self.events().into_iter().filter(|e| e["event"] == name).collect()
    }
}

/// The event log of `outcome`, parsed.
pub fn events(outcome: &Outcome) -> Vec<Value> {
    outcome
        .events
        .iter()
        .map(|line| serde_json::from_str(line).expect("a log line is JSON"))
        .collect()
}

/// Runs `source` as a scenario, with free ports and the default seed.
pub fn run_source(source: &str) -> Run {
    run_source_with(source, |_| {})
}

/// Runs `source` after `adjust` has changed the options.
pub fn run_source_with(source: &str, adjust: impl FnOnce(&mut RunOptions)) -> Run {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let script = dir.path().join("test.rhai");
    std::fs::write(&script, source).expect("the script is written");
    let mut options = RunOptions::for_test(&script, dir.path().join("root"));
    adjust(&mut options);
    let outcome = run(&options).expect("the run starts");
    Run { outcome, dir }
}

/// Runs `source`, which must succeed.
pub fn run_ok(source: &str) -> Run {
    let run = run_source(source);
    if let Some(failure) = &run.outcome.failure {
        panic!("the scenario failed:\n{}", failure.report);
    }
    run
}

/// Runs `source`, which must stop with a script error.
pub fn run_err(source: &str) -> ScriptFailure {
    let run = run_source(source);
    run.outcome.failure.expect("the scenario should have failed")
}

/// Runs the scenario file `path` as the test suite does.
pub fn run_file(path: &Path, root: &Path) -> Outcome {
    run(&RunOptions::for_test(path, root)).expect("the run starts")
}

/// The scenarios folder of the repository.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

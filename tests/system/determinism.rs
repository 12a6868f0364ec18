//! The same script with the same seed writes the same log, byte for byte:
//! run after run, with or without `--ephemeral-ports`, concurrency included.

use std::net::TcpListener;

use crate::util::{run_file, run_source_with, scenarios_dir};

fn log_of(scenario: &str) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    let outcome = run_file(&scenarios_dir().join(scenario), root.path());
    assert!(outcome.failure.is_none(), "{scenario} failed");
    outcome.events
}

#[test]
fn every_shipped_scenario_logs_the_same_five_times_over_tcp() {
    let mut names: Vec<String> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".rhai"))
        .collect();
    names.sort();
    assert!(names.len() >= 8, "only {} scenarios found", names.len());
    for name in names {
        let first = log_of(&name);
        for run in 1..5 {
            assert_eq!(log_of(&name), first, "{name}: run {run} differs from run 0");
        }
    }
}

/// Ports that were free a moment ago (the OS picked them).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

#[test]
fn scripted_ports_and_ephemeral_ports_log_the_same() {
    let ports = free_ports(4);
    let script = format!(
        r#"
        let t = tracker({});
        let a = client({}); let b = client({}); let c = client({});
        for x in [a, b, c] {{ x.register(t); }}
        a.write("f.txt", "content");
        a.upload("f.txt");
        b.download("f.txt");
        let xs = [c.start_download("f.txt")];
        wait_all(xs);
        "#,
        ports[0], ports[1], ports[2], ports[3]
    );
    let scripted = run_source_with(&script, |o| o.settings.ephemeral_ports = false);
    assert!(scripted.outcome.failure.is_none(), "{:?}", scripted.outcome.failure);
    let ephemeral = run_source_with(&script, |o| o.settings.ephemeral_ports = true);
    assert_eq!(scripted.outcome.events, ephemeral.outcome.events);
}

#[test]
fn the_seed_decides_the_choices() {
    let logs: Vec<Vec<String>> = (1..=4)
        .map(|seed| {
            let source = std::fs::read_to_string(scenarios_dir().join("seeding_spreads.rhai")).unwrap();
            let run = run_source_with(&source, |o| o.settings.seed = seed);
            assert!(run.outcome.failure.is_none());
            // Drop the first line, which names the seed.
            run.outcome.events[1..].to_vec()
        })
        .collect();
    assert!(
        logs.iter().any(|log| *log != logs[0]),
        "four seeds made the same choices"
    );
}

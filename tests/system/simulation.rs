//! `--sim`: the same scenarios on a simulated network in virtual time.
//! A scenario whose outcome does not depend on timing logs the same as
//! over real TCP; a simulated run repeats exactly, whatever the script
//! does; the scenarios that need the simulator are snapshot-tested under it.

use std::path::{Path, PathBuf};

use phile_runner::backend::sim::FIRST_CAPACITY;
use phile_runner::review::{snapshot_view, Log};
use phile_runner::{run, RunOptions};

use crate::util::{run_ok, run_source_with, scenarios_dir};

/// The event log of `scenario`, run over TCP or simulated.
fn log_of(scenario: &Path, sim: bool) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    let mut options = RunOptions::for_test(scenario, root.path());
    options.settings.sim = sim;
    let outcome = run(&options).expect("the run starts");
    if let Some(failure) = &outcome.failure {
        panic!("{} (sim: {sim}) failed:\n{}", scenario.display(), failure.report);
    }
    outcome.events
}

/// The scenarios in `dir` (not in its sub-folders).
fn scenarios_in(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "rhai"))
        .collect();
    found.sort();
    found
}

/// An event of a log, as over TCP: without the bytes each peer of a swarm
/// sent, which only a simulation repeats.
fn as_over_tcp(line: &str) -> serde_json::Value {
    let mut event: serde_json::Value = serde_json::from_str(line).unwrap();
    if let Some(fields) = event.as_object_mut() {
        fields.remove("sources");
    }
    event
}

#[test]
fn every_scenario_logs_the_same_simulated_as_over_tcp() {
    let scenarios = scenarios_in(&scenarios_dir());
    assert!(scenarios.len() >= 8, "only {} scenarios found", scenarios.len());
    for scenario in scenarios {
        let (tcp, sim) = (log_of(&scenario, false), log_of(&scenario, true));
        // The first event names the network; the swarm downloads' sources
        // are logged under simulation only; nothing else may differ.
        assert_eq!(
            tcp[0].replace(r#""network":"tcp""#, r#""network":"sim""#),
            sim[0],
            "{}",
            scenario.display()
        );
        let tcp: Vec<serde_json::Value> = tcp[1..].iter().map(|line| as_over_tcp(line)).collect();
        let sim: Vec<serde_json::Value> = sim[1..].iter().map(|line| as_over_tcp(line)).collect();
        assert_eq!(tcp, sim, "{}: the logs differ", scenario.display());
    }
}

#[test]
fn every_simulation_scenario_passes_and_matches_its_snapshot() {
    insta::glob!("../../scenarios/sim", "*.rhai", |path| {
        let log = log_of(path, true);
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let script = std::fs::read_to_string(path).unwrap();
        let view = snapshot_view(&Log::from_lines(log.iter().map(String::as_str)).unwrap(), Some(&script));
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../../snapshots/sim");
        settings.set_prepend_module_to_snapshot(false);
        settings.remove_snapshot_suffix();
        settings.set_omit_expression(true);
        settings.set_description(format!(
            "event log of scenarios/sim/{name}.rhai under --sim (seed 1), by script line"
        ));
        settings.bind(|| insta::assert_snapshot!(name, view));
    });
}

#[test]
fn a_crash_during_background_transfers_logs_the_same_twenty_times() {
    for name in ["crash_during_transfer.rhai", "concurrent_faults.rhai"] {
        let scenario = scenarios_dir().join("sim").join(name);
        let first = log_of(&scenario, true);
        for run in 1..20 {
            assert_eq!(log_of(&scenario, true), first, "{name}: run {run} differs from run 0");
        }
    }
}

#[test]
fn every_simulation_scenario_repeats_exactly() {
    for scenario in scenarios_in(&scenarios_dir().join("sim")) {
        let first = log_of(&scenario, true);
        for _ in 0..4 {
            assert_eq!(log_of(&scenario, true), first, "{}", scenario.display());
        }
    }
}

#[test]
fn network_verbs_need_the_simulator_and_say_so() {
    for verb in ["latency(a, t, 10);", "partition(a, b);", "heal(t, a);"] {
        let script = format!("let t = tracker(0); let a = client(1); let b = client(2);\n{verb}");
        let over_tcp = run_source_with(&script, |_| {});
        let failure = over_tcp.outcome.failure.expect("it needs --sim");
        assert!(failure.message.contains("--sim"), "{verb}: {}", failure.message);
        let simulated = run_source_with(&script, |o| o.settings.sim = true);
        assert!(simulated.outcome.failure.is_none(), "{verb} failed under --sim");
    }
}

#[test]
fn what_would_break_a_simulation_is_a_script_error_that_says_why() {
    let set_up = "let t = tracker(0); let a = client(1); let b = client(2);";
    for (verb, expected) in [
        ("let t0 = timestamp();", "use now()"),
        ("latency(a, b, 9223372036854775807);", "(a year)"),
        ("partition(a, a);", "two different nodes"),
        ("latency(t, t, 5);", "two different nodes"),
    ] {
        let run = run_source_with(&format!("{set_up}\n{verb}"), |o| o.settings.sim = true);
        let failure = run.outcome.failure.unwrap_or_else(|| panic!("{verb} was taken"));
        assert!(failure.message.contains(expected), "{verb}: {}", failure.message);
    }
    // Over TCP, which repeats nothing exactly, Rhai's timestamp() works.
    run_ok("let t0 = timestamp(); assert(t0.elapsed >= 0.0, \"a wall clock\");");
}

/// Clients 1 and 2 of one tracker, 1 holding `x`, and 2 cut off from the
/// tracker: the start of the tests of a session lost.
const PARTITIONED: &str = r#"
        let t = tracker(0);
        let a = client(1);
        let b = client(2);
        a.register(t);
        b.register(t);
        a.write("x", "y");
        a.upload("x");
        partition(b, t);
"#;

#[test]
fn a_client_that_lost_its_tracker_session_is_told_so() {
    let script = PARTITIONED.to_owned()
        + r#"
        sleep(45);
        b.download("x");
    "#;
    let run = run_source_with(&script, |o| o.settings.sim = true);
    let failure = run.outcome.failure.expect("a download without a session is misuse");
    assert!(
        failure.message.contains("client 2 lost its tracker session") && failure.message.contains("heal()"),
        "{}",
        failure.message
    );
}

#[test]
fn a_session_lost_during_a_download_is_logged_with_the_scripted_address_and_says_what_to_do() {
    let script = PARTITIONED.to_owned()
        + r#"
        b.download("x", #{ swarm: true });
    "#;
    let run = run_source_with(&script, |o| o.settings.sim = true);
    let failure = run.outcome.failure.expect("the session is lost mid-download");
    assert!(failure.message.contains("register it again"), "{}", failure.message);
    // The simulated address the tracker got is not in the log; the one
    // the script gave it is.
    let log = run.outcome.events.join("\n");
    assert!(!log.contains("10.0.0."), "{log}");
    assert!(
        log.contains("lost the session with the tracker at 127.0.0.1:0:"),
        "{log}"
    );
}

#[test]
fn a_download_that_fails_as_misuse_is_counted_as_the_log_has_it() {
    let script = PARTITIONED.to_owned()
        + r#"
        try {
            b.download("x");
        } catch (e) {
            assert(e.contains("register it again"), e);
        }
    "#;
    let run = run_source_with(&script, |o| o.settings.sim = true);
    assert!(run.outcome.failure.is_none(), "{:?}", run.outcome.failure);
    let failed_in_log = run
        .outcome
        .events
        .iter()
        .filter(|e| e.contains("download_failed"))
        .count();
    assert_eq!(failed_in_log, 1, "{:#?}", run.outcome.events);
    assert_eq!(
        run.outcome.stats.downloads_failed, 1,
        "the summary counts what the log holds"
    );
}

#[test]
fn a_second_swarm_download_of_a_file_under_way_fails_and_the_first_goes_on() {
    let script = r#"
        let t = tracker(0);
        let a = client(1);
        let b = client(2);
        a.register(t);
        b.register(t);
        a.write_random("f", 1000000);
        a.upload("f");
        a.set_rate(100000, 0);
        let first = b.start_download("f", #{ swarm: true });
        let second = b.start_download("f", #{ swarm: true });
        let second = second.wait();
        assert(!second.ok && second.error.contains("another download of this file"), `${second}`);
        assert(first.wait().ok, "the first download was hurt");
    "#;
    let run = run_source_with(script, |o| o.settings.sim = true);
    assert!(run.outcome.failure.is_none(), "{:?}", run.outcome.failure);
}

#[test]
fn a_simulation_with_more_nodes_than_its_first_room_starts_over_unseen() {
    // More clients than the simulator first makes room for: it starts over
    // with more room, and the log shows nothing of it (one start, every
    // event once, in order).
    let clients = FIRST_CAPACITY + 20;
    let script = format!(
        r#"
        let t = tracker(0);
        let seeder = client(1);
        seeder.register(t);
        seeder.write("f", "shared by many");
        seeder.upload("f");
        for id in 2..{last} {{
            let c = client(id);
            c.register(t);
            if id % 100 == 0 {{ assert(c.download("f").ok, `client ${{id}} could not download`); }}
        }}
    "#,
        last = clients + 2
    );
    let simulated = run_source_with(&script, |o| o.settings.sim = true);
    assert!(simulated.outcome.failure.is_none(), "{:?}", simulated.outcome.failure);
    let events = simulated.events();
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!(count("scenario_started"), 1);
    assert_eq!(count("registered"), clients + 1);
    let downloaders = (2..clients + 2).filter(|id| id % 100 == 0).count();
    assert_eq!(count("download_finished"), downloaders);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
}

#[test]
fn time_is_virtual_under_the_simulator() {
    let script = r#"
        let t = tracker(0);
        let a = client(1);
        a.register(t);
        let before = now();
        sleep(3600);
        assert(now() - before == 3600.0, `an hour of sleep moved the clock by ${now() - before}`);
        // An hour of silence is longer than the session timeout, but the
        // heartbeats went on meanwhile: a is still registered.
        a.write("x", "y");
        a.upload("x");
    "#;
    let started = std::time::Instant::now();
    let simulated = run_source_with(script, |o| o.settings.sim = true);
    assert!(simulated.outcome.failure.is_none(), "{:?}", simulated.outcome.failure);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "an hour of virtual time took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_slow_link_neither_stretches_a_sleep_nor_holds_up_a_kill() {
    // Heartbeats cross a link of seconds: something is always on its way.
    // A sleep still lets exactly its time pass, and a kill (which waits for
    // the tracker to notice) ends: once, sleep(60) took 69 s on a 3 s link,
    // and never ended on a 4 s one.
    let script = r#"
        let t = tracker(0);
        let a = client(1);
        let b = client(2);
        a.register(t);
        b.register(t);
        latency(a, t, 5000);
        latency(b, t, 12000);
        let before = now();
        sleep(60);
        assert(now() - before == 60.0, `sleep(60) took ${now() - before} s`);
        b.kill();
        a.write("x", "y");
        a.upload("x");
    "#;
    let simulated = run_source_with(script, |o| {
        o.settings.sim = true;
        o.time_limit = std::time::Duration::from_secs(20);
    });
    assert!(simulated.outcome.failure.is_none(), "{:?}", simulated.outcome.failure);
    let events = simulated.events();
    let lost = events
        .iter()
        .position(|e| e["event"] == "client_lost" && e["client"] == 2);
    let announced = events.iter().position(|e| e["event"] == "announced");
    assert!(
        lost.is_some() && lost < announced,
        "the kill did not wait for the tracker: {events:?}"
    );
}

#[test]
fn a_client_that_failed_to_move_to_another_tracker_can_still_be_killed() {
    // The move dropped the session with the first tracker before the
    // second failed to answer: the client is registered nowhere, and its
    // kill awaits no tracker.
    let script = r#"
        let t1 = tracker(8000);
        let t2 = tracker(8001);
        let c = client(13000);
        c.register(t1);
        partition(c, t2);
        let moved = true;
        try { c.register(t2); } catch (e) { moved = false; }
        assert(!moved, "the move went through a partition");
        c.kill();
    "#;
    let simulated = run_source_with(script, |o| o.settings.sim = true);
    assert!(simulated.outcome.failure.is_none(), "{:?}", simulated.outcome.failure);
}

#[test]
fn a_swarm_download_of_an_empty_file_ends_under_the_simulator() {
    // The whole-file hash once started an empty step over and over when
    // nothing was left to hash; under --sim that task was always ready, so
    // no packet was ever delivered and the run never ended.
    let script = r#"
        let t = tracker(0);
        let a = client(1);
        let b = client(2);
        a.register(t);
        b.register(t);
        a.write_random("empty.bin", 0);
        a.upload("empty.bin");
        let r = b.download("empty.bin", #{ swarm: true });
        assert(r.ok, `the swarm download of an empty file failed: ${r.error}`);
    "#;
    let simulated = run_source_with(script, |o| {
        o.settings.sim = true;
        o.time_limit = std::time::Duration::from_secs(20);
    });
    assert!(simulated.outcome.failure.is_none(), "{:?}", simulated.outcome.failure);
}

#[test]
fn a_client_cut_off_from_its_tracker_leaves_within_the_goodbye_wait() {
    // The tracker never hears the goodbye: the client waits 2 s for its
    // answer, not the 30 s idle timeout, says so, and has left all the
    // same (its server no longer serves).
    let script = r#"
        let t = tracker(0);
        let a = client(1);
        a.register(t);
        partition(a, t);
        let before = now();
        let said = "";
        try { a.leave(); } catch (error) { said = `${error}`; }
        let took = now() - before;
        assert(took >= 2.0 && took < 3.0, `leaving took ${took} s`);
        assert(said.contains("did not answer the goodbye"), `leave said: ${said}`);
    "#;
    let simulated = run_source_with(script, |o| o.settings.sim = true);
    assert!(simulated.outcome.failure.is_none(), "{:?}", simulated.outcome.failure);
}

#[test]
fn a_background_download_is_timed_to_when_its_file_was_stored() {
    // The script waits for it long after it ended: `secs` is still the
    // time it took (a 1 MB file at 1 MB/s: about a second), and a file
    // stored while the client lost its session is a success all the same.
    let script = r#"
        let t = tracker(0);
        let a = client(1);
        let b = client(2);
        a.register(t);
        b.register(t);
        a.set_rate(1000000, 0);
        a.write_random("f.bin", 1000000);
        a.upload("f.bin");
        let x = b.start_download("f.bin", #{ swarm: true });
        sleep(5);
        partition(b, t);
        sleep(60);
        let r = x.wait();
        assert(r.ok, `the download failed: ${r.error}`);
        assert(r.secs > 0.9 && r.secs < 2.0, `timed at ${r.secs} s`);
    "#;
    let simulated = run_source_with(script, |o| o.settings.sim = true);
    assert!(simulated.outcome.failure.is_none(), "{:?}", simulated.outcome.failure);
}

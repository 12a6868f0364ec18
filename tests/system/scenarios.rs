//! Every scenario in `scenarios/` runs, passes, and logs exactly what its
//! snapshot in `snapshots/` says. Adding a scenario file adds a test.

use phile_runner::review::{snapshot_view, Log};

use crate::util::{events, run_file, scenarios_dir};

#[test]
fn every_scenario_passes_and_matches_its_snapshot() {
    // Some scenarios time out peers after 0.2 s: not while the heaviest
    // tests load the machine.
    let _turn = crate::fixture::heavy_turn_blocking();
    insta::glob!("../../scenarios", "*.rhai", |path| {
        let root = tempfile::tempdir().unwrap();
        let outcome = run_file(path, root.path());
        if let Some(failure) = &outcome.failure {
            panic!("{} failed:\n{}", path.display(), failure.report);
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let script = std::fs::read_to_string(path).unwrap();
        let log = Log::from_lines(outcome.events.iter().map(String::as_str)).unwrap();
        let view = snapshot_view(&log, Some(&script));
        let mut settings = insta::Settings::clone_current();
        settings.set_snapshot_path("../../snapshots");
        settings.set_prepend_module_to_snapshot(false);
        settings.remove_snapshot_suffix();
        settings.set_omit_expression(true);
        settings.set_description(format!(
            "event log of scenarios/{name}.rhai (seed 1), by script line (the --events file has the same events as JSON Lines)"
        ));
        settings.bind(|| insta::assert_snapshot!(name, view));
    });
}

#[test]
fn the_default_scenario_builds_the_seed_tree_with_the_right_contents() {
    let root = tempfile::tempdir().unwrap();
    let outcome = run_file(&scenarios_dir().join("default.rhai"), root.path());
    assert!(outcome.failure.is_none());
    let expected: &[(&str, &[&str])] = &[
        ("10000", &["test1.txt", "test3.txt"]),
        ("10001", &[]),
        ("10002", &["test1.txt"]),
        ("10003", &["test3.txt"]),
        ("10004", &["test1.txt", "test3.txt"]),
    ];
    for (client, files) in expected {
        let folder = root.path().join(client);
        let mut held: Vec<String> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        held.sort();
        assert_eq!(held, *files, "folder {client}");
        for file in *files {
            let content = std::fs::read_to_string(folder.join(file)).unwrap();
            let want = if *file == "test1.txt" { "hello" } else { "world" };
            assert_eq!(content, want, "{client}/{file}");
        }
    }
    let events = events(&outcome);
    assert_eq!(events.iter().filter(|e| e["event"] == "download_finished").count(), 4);
    assert_eq!(events.iter().filter(|e| e["event"] == "download_failed").count(), 1);
    // Every finished download was announced: downloaders seed.
    assert_eq!(events.iter().filter(|e| e["event"] == "announced").count(), 2 + 4);
}

#[test]
fn logs_hold_no_ports_and_no_times() {
    let root = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(scenarios_dir()).unwrap() {
        let path = entry.unwrap().path();
        let outcome = run_file(&path, root.path());
        for event in events(&outcome) {
            let object = event.as_object().unwrap();
            for key in object.keys() {
                assert!(
                    !["port", "addr", "time", "secs", "elapsed"].contains(&key.as_str()),
                    "{}: an event has a {key} field: {event}",
                    path.display()
                );
            }
            assert!(
                !event.to_string().contains("127.0.0.1"),
                "an address leaked into {event}"
            );
        }
    }
}

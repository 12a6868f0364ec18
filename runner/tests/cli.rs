//! The `phile-run` command line: output, exit codes, error format.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn phile_run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phile-run"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("phile-run starts")
}

fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios").join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const SEED_TREE: &str = "\
├── 10000
│   ├── test1.txt
│   └── test3.txt
├── 10001
├── 10002
│   └── test1.txt
├── 10003
│   └── test3.txt
├── 10004
│   ├── test1.txt
│   └── test3.txt
";

#[test]
fn the_default_scenario_prints_the_seed_tree_and_a_summary() {
    let root = tempfile::tempdir().unwrap();
    let events = root.path().join("events.jsonl");
    let script = scenario("default.rhai");
    let output = phile_run(&[
        script.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
        "--ephemeral-ports",
        "--events",
        events.to_str().unwrap(),
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(stdout.contains(SEED_TREE), "the tree is not the seed's:\n{stdout}");
    assert!(
        stdout.contains("10001  download test2.txt: failed: no peer has test2.txt"),
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("ok: ") && summary.contains("5 downloads (4 ok, 1 failed)"),
        "{summary}"
    );
    let log = std::fs::read_to_string(&events).unwrap();
    assert_eq!(log.lines().count(), 32);
    assert!(log
        .lines()
        .all(|line| serde_json::from_str::<serde_json::Value>(line).is_ok()));
}

#[test]
fn holders_a_fault_crashes_are_told_before_the_download_they_cut() {
    for network in [
        &["--ephemeral-ports"][..],
        &["--sim"],
        &["--processes", "--ephemeral-ports"],
    ] {
        let root = tempfile::tempdir().unwrap();
        let script = scenario("swarm_holders_crash_together.rhai");
        let mut arguments = vec![script.to_str().unwrap(), "--root", root.path().to_str().unwrap()];
        arguments.extend(network);
        let output = phile_run(&arguments);
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "{network:?}: {stdout}{}", text(&output.stderr));
        let told: Vec<&str> = stdout
            .lines()
            .skip_while(|line| !line.contains("killed"))
            .take(3)
            .collect();
        assert_eq!(told.len(), 3, "{network:?}: {stdout}");
        let crashed = |client| format!("   {client}  killed: kill_after struck after sending 20000 bytes of data.bin");
        assert_eq!(told[..2], [crashed(16201), crashed(16202)], "{network:?}: {stdout}");
        assert!(
            told[2].starts_with("   16203  download data.bin: ok in pieces from 3 peers"),
            "{network:?}: {stdout}"
        );
    }
}

#[test]
fn quiet_prints_only_the_tree_and_the_summary() {
    let root = tempfile::tempdir().unwrap();
    let script = scenario("default.rhai");
    let output = phile_run(&[
        script.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
        "--ephemeral-ports",
        "-q",
    ]);
    let stdout = text(&output.stdout);
    assert!(output.status.success());
    assert_eq!(stdout.lines().count(), SEED_TREE.lines().count() + 1, "{stdout}");
}

#[test]
fn a_script_error_is_shown_like_a_compiler_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("broken.rhai");
    std::fs::write(
        &script,
        "let t = tracker(0);\nlet a = client(1);\na.download(\"x.txt\");\n",
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    let output = phile_run(&[
        script.to_str().unwrap(),
        "--root",
        dir.path().to_str().unwrap(),
        "--ephemeral-ports",
        "--seed",
        "7",
        "--events",
        events.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    let mut lines = stderr.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!(
            "{}:3:3: client 1 is not registered: call c.register(tracker) first",
            script.display()
        )
    );
    assert_eq!(lines.next().unwrap(), "  |");
    assert_eq!(lines.next().unwrap(), "3 | a.download(\"x.txt\");");
    assert_eq!(lines.next().unwrap(), "  |   ^");
    let rerun = lines.next().unwrap();
    assert!(rerun.contains("seed 7") && rerun.contains("--seed 7 --root"), "{rerun}");
    assert!(lines.next().unwrap().starts_with("FAILED: "));
    // The log was still written, up to and including the failure.
    let log = std::fs::read_to_string(&events).unwrap();
    assert!(
        log.lines().last().unwrap().contains("\"event\":\"scenario_failed\""),
        "{log}"
    );
}

#[test]
fn bad_command_line_use_exits_2() {
    let missing = phile_run(&["no/such/scenario.rhai"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        text(&missing.stderr).contains("no/such/scenario.rhai"),
        "{}",
        text(&missing.stderr)
    );
    let script = scenario("default.rhai");
    let unknown = phile_run(&[script.to_str().unwrap(), "--frobnicate"]);
    assert_eq!(unknown.status.code(), Some(2));
    let bad_seed = phile_run(&[script.to_str().unwrap(), "--seed", "minus one"]);
    assert_eq!(bad_seed.status.code(), Some(2));
    let unwritable = phile_run(&[script.to_str().unwrap(), "--events", "/no/such/dir/events.jsonl"]);
    assert_eq!(unwritable.status.code(), Some(2));
    assert!(text(&unwritable.stderr).contains("/no/such/dir/events.jsonl"));
}

#[test]
fn help_describes_every_option() {
    let help = text(&phile_run(&["--help"]).stdout);
    for option in [
        "--root",
        "--seed",
        "--events",
        "--ephemeral-ports",
        "--quiet",
        "--time-limit",
    ] {
        assert!(help.contains(option), "--help does not mention {option}");
    }
}

#[test]
fn running_out_of_file_descriptors_is_an_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("many.rhai");
    std::fs::write(
        &script,
        "let t = tracker(0);\nfor id in 1..200 { client(id).register(t); }\n",
    )
    .unwrap();
    // A hard limit of 64 open files: the run cannot raise it.
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {} {} --root {} --ephemeral-ports -q",
            env!("CARGO_BIN_EXE_phile-run"),
            script.display(),
            dir.path().join("root").display()
        ))
        .output()
        .unwrap();
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("file descriptors than the limit of 64") && stderr.contains("--sim"),
        "{stderr}"
    );
}

#[test]
fn sim_and_processes_together_are_bad_usage() {
    let output = phile_run(&[scenario("default.rhai").to_str().unwrap(), "--sim", "--processes"]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("--processes"), "{}", text(&output.stderr));
}

//! `phile-run --processes`: every tracker and client in a `phile` process of
//! its own. For every scenario, the event log must be byte-identical to the
//! run in one process.

use std::path::Path;
use std::process::Command;

fn log_of(scenario: &Path, processes: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut command = Command::new(env!("CARGO_BIN_EXE_phile-run"));
    command
        .arg(scenario)
        .args([
            "--root",
            dir.path().join("root").to_str().unwrap(),
            "--ephemeral-ports",
            "-q",
        ])
        .args(["--events", events.to_str().unwrap()])
        .env("RUST_LOG", "error");
    if processes {
        command.arg("--processes");
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{} (processes: {processes}) failed:\n{}",
        scenario.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::read_to_string(events).unwrap()
}

#[test]
fn every_scenario_logs_the_same_in_processes_as_in_one_process() {
    let scenarios = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut checked = 0;
    for entry in std::fs::read_dir(scenarios).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "rhai") {
            let (together, apart) = (log_of(&path, false), log_of(&path, true));
            assert_eq!(together, apart, "{}: the logs differ", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} scenarios found");
}

#[test]
fn every_node_is_a_process_of_its_own_and_gone_after_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ps.rhai");
    std::fs::write(
        &script,
        "let t = tracker(0); let a = client(1); let b = client(2); a.register(t);",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_phile-run"))
        .arg(&script)
        .args([
            "--root",
            dir.path().to_str().unwrap(),
            "--ephemeral-ports",
            "--processes",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let pids: Vec<u32> = stdout
        .lines()
        .filter_map(|line| line.split("(process ").nth(1))
        .map(|rest| rest.trim_end_matches(')').parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 3, "one process per node expected:\n{stdout}");
    assert!(pids.iter().all(|pid| *pid != std::process::id()));
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} outlived the run"
        );
    }
}

#[test]
fn a_file_corrupted_before_its_upload_is_what_is_announced_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("lie.rhai");
    std::fs::write(
        &script,
        r#"
let t = tracker(0);
let a = client(1); let b = client(2);
a.register(t); b.register(t);
a.write("f", "the original content");
a.corrupt("f");
a.upload("f");
let r = b.download("f");
// The client hashes its file when it uploads it: what it announces is what
// its disk holds, flipped byte included. Only a change after the upload,
// which it does not notice, makes it serve a copy that fails the check.
assert(r.ok && b.sha1("f") == a.sha1("f"), `the upload did not announce the bytes on disk: ${r}`);
"#,
    )
    .unwrap();
    assert_eq!(log_of(&script, false), log_of(&script, true));
}

#[test]
fn stopping_clients_while_transfers_run_logs_the_same_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("stops.rhai");
    std::fs::write(
        &script,
        r#"
let t = tracker(0);
let a = client(1); let b = client(2); let c = client(3);
for x in [a, b, c] { x.register(t); }
a.write_random("slow.bin", 1000000);
a.upload("slow.bin");
// 100 kB/s: the transfers below take ten seconds, so they are surely
// under way when their downloader stops.
a.set_rate(100000, 0);
let killed = b.start_download("slow.bin");
let left = c.start_download("slow.bin");
b.kill();
c.leave();
let r = killed.wait();
assert(!r.ok && r.error == "client 2 stopped", `${r}`);
let r = left.wait();
assert(!r.ok && r.error == "client 3 stopped", `${r}`);
// A stopped client's folder is still there to write to and read.
b.write("note.txt", "written while down");
c.write_random("noise.bin", 1000);
assert(b.read("note.txt") == "written while down");
assert(b.files() == ["note.txt"], `a partial download was left behind: ${b.files()}`);
b.restart();
c.restart();
"#,
    )
    .unwrap();
    assert_eq!(log_of(&script, false), log_of(&script, true));
}

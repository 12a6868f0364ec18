//! `phile-run --diagram`, `--report`, `--view` and `--render`: the review files of a
//! run, of a failed run, and of a log written earlier.

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

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Runs `script` quietly on free ports in `dir`, with `extra` options.
fn run_in(dir: &Path, script: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        script.to_str().unwrap(),
        "--root",
        dir.to_str().unwrap(),
        "--ephemeral-ports",
        "-q",
    ];
    args.extend_from_slice(extra);
    phile_run(&args)
}

#[test]
fn a_run_writes_its_diagram_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let (diagram, report) = (dir.path().join("run.md"), dir.path().join("run.html"));
    let output = run_in(
        dir.path(),
        &scenario("default.rhai"),
        &[
            "--diagram",
            diagram.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", text(&output.stderr));
    assert!(
        stdout.lines().last().unwrap().starts_with("ok: "),
        "the summary stays last:\n{stdout}"
    );
    let diagram = read(&diagram);
    assert!(diagram.starts_with("sequenceDiagram\n"), "{diagram}");
    for node in ["tracker", "10000", "10001", "10002", "10003", "10004"] {
        assert!(
            diagram.contains(&format!(" as {node}\n")),
            "{node} has no column:\n{diagram}"
        );
    }
    assert!(diagram.contains("n1->>n3: test1.txt (5 B)"), "{diagram}");
    let report = read(&report);
    assert!(report.contains("default.rhai · seed 1 · 5 downloads: 4 ok, 1 failed · the script ran to its end"));
}

#[test]
fn a_failed_run_still_writes_its_report_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("broken.rhai");
    std::fs::write(
        &script,
        "let t = tracker(0);\nlet a = client(1);\na.register(t);\nassert(false, \"<b>on purpose</b>\");\n",
    )
    .unwrap();
    let (diagram, report) = (dir.path().join("run.md"), dir.path().join("run.html"));
    let output = run_in(
        dir.path(),
        &script,
        &[
            "--diagram",
            diagram.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let report = read(&report);
    assert!(report.contains("the script failed at line 4"), "{report}");
    assert!(
        report.contains("assertion failed: &lt;b&gt;on purpose&lt;&#x2f;b&gt;"),
        "{report}"
    );
    assert!(read(&diagram).contains("script failed at line 4"));
}

/// `html` with its timeline section cut out.
fn without_timeline(html: &str) -> String {
    let start = html.find("<section id=\"timeline\">").expect("a timeline");
    let end = start + html[start..].find("</section>").expect("its end") + "</section>".len();
    without_blank_lines(&format!("{}{}", &html[..start], &html[end..]))
}

/// `html` without its blank lines, which the template's conditionals leave.
fn without_blank_lines(html: &str) -> String {
    html.lines()
        .filter(|line| !line.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn render_makes_the_same_files_from_a_log_written_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let output = run_in(
        dir.path(),
        &scenario("kill_and_failover.rhai"),
        &[
            "--events",
            &path("events.jsonl"),
            "--diagram",
            &path("run.md"),
            "--report",
            &path("run.html"),
        ],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let rendered = phile_run(&[
        "--render",
        &path("events.jsonl"),
        "--diagram",
        &path("again.md"),
        "--report",
        &path("again.html"),
    ]);
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    assert_eq!(read(&dir.path().join("again.md")), read(&dir.path().join("run.md")));
    // A log records what happened, not when: the report of a live run draws
    // a timeline from when each event arrived, one rendered later cannot.
    let live = read(&dir.path().join("run.html"));
    assert!(live.contains("<section id=\"timeline\">"), "{live}");
    assert_eq!(
        without_blank_lines(&read(&dir.path().join("again.html"))),
        without_timeline(&live)
    );
    let only_report = phile_run(&["--render", &path("events.jsonl"), "--report", &path("alone.html")]);
    assert!(only_report.status.success());
    assert!(!dir.path().join("alone.md").exists());
}

#[test]
fn bad_use_of_the_review_options_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"seq\":0,\"node\":\"tracker\",\"event\":\"started\"}\n{\"seq\":1,\"event\":\"started\"}\n",
    )
    .unwrap();
    let (events, report) = (events.to_str().unwrap(), dir.path().join("r.html"));
    let report = report.to_str().unwrap();
    let script = scenario("default.rhai");
    let script = script.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--render", events], "--diagram"),
        (&["--render", events, "--report", report, script], "cannot be used with"),
        (
            &["--render", events, "--report", report, "--seed", "3"],
            "cannot be used with",
        ),
        (
            &["--render", events, "--report", report, "--ephemeral-ports"],
            "cannot be used with",
        ),
        (&["--report", report], "SCRIPT"),
        (
            &["--render", "no/such/events.jsonl", "--report", report],
            "no/such/events.jsonl",
        ),
        (
            &["--render", events, "--report", report],
            "line 2: the event has no `node`",
        ),
        (
            &[script, "--report", "/no/such/dir/r.html"],
            "cannot create /no/such/dir/r.html",
        ),
    ];
    for (args, says) in cases {
        let output = phile_run(args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} should say {says:?}: {stderr}");
    }
    // A log that cannot be read leaves no report behind, not an empty one.
    assert!(!Path::new(report).exists());
}

#[test]
fn help_describes_the_review_options() {
    let help = text(&phile_run(&["--help"]).stdout);
    for option in ["--diagram <FILE>", "--report <FILE>", "--render <EVENTS.jsonl>"] {
        assert!(help.contains(option), "--help does not mention {option}:\n{help}");
    }
}

#[test]
fn a_swarm_report_sets_each_swarm_against_its_fluid_bound() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("r.html");
    let output = run_in(
        &dir.path().join("root"),
        &scenario("sim/swarm_flattens.rhai"),
        &["--sim", "--report", report.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let html = read(&report);
    let table = &html[html.find("against the fluid bound").expect("a table of fluid bounds")..];
    // The script asks for a bound after each of its three swarms; the
    // whole-file downloads of the same size after them are not swarms it
    // asked about.
    for (file, downloaders) in [("swarm-1.bin", 1), ("swarm-4.bin", 4), ("swarm-16.bin", 16)] {
        let row = format!("<td>{file}</td><td class=\"num\">{downloaders}</td>");
        assert!(table.contains(&row), "no row {row} in the fluid table");
    }
    assert!(
        !table.contains("<td>whole-"),
        "a whole-file download was set against a bound"
    );
    assert_eq!(
        table.matches("4.000 s").count(),
        3,
        "the bound is 4 s (the seeder's upload) each time"
    );
}

#[test]
fn every_shipped_scenario_draws_under_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let mut drawn = 0;
    for folder in [scenario(""), scenario("sim")] {
        let timed = folder.ends_with("sim");
        for entry in std::fs::read_dir(folder).unwrap() {
            let script = entry.unwrap().path();
            if script.extension().is_none_or(|ext| ext != "rhai") {
                continue;
            }
            let (diagram, report) = (dir.path().join("d.mmd"), dir.path().join("r.html"));
            let output = run_in(
                &dir.path().join("root"),
                &script,
                &[
                    "--sim",
                    "--diagram",
                    diagram.to_str().unwrap(),
                    "--report",
                    report.to_str().unwrap(),
                ],
            );
            assert!(
                output.status.success(),
                "{}: {}",
                script.display(),
                text(&output.stderr)
            );
            assert!(read(&diagram).starts_with("sequenceDiagram"), "{}", script.display());
            let html = read(&report);
            assert!(html.contains("Sequence diagram"), "{}", script.display());
            // The runs of sim/ have time in them (rate caps, latency,
            // timeouts): their reports draw a timeline of the transfers
            // (whole-file ones: a swarm download has no holder chosen by
            // the tracker to draw a bar from, and these have only swarm
            // downloads that failed or were cut).
            let only_failed_swarms = [
                "swarm_resume.rhai",
                "swarm_gives_up_without_tracker.rhai",
                "swarm_nobody_left.rhai",
                "swarm_holder_crashes.rhai",
            ];
            let only_swarms = only_failed_swarms.iter().any(|name| script.ends_with(name));
            if timed && !only_swarms {
                assert!(html.contains("Timeline of transfers"), "{}", script.display());
            }
            drawn += 1;
        }
    }
    assert!(drawn >= 12, "only {drawn} scenarios drawn");
}

#[test]
fn view_writes_the_run_as_its_snapshot_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let view = dir.path().join("run.txt");
    let output = run_in(
        dir.path(),
        &scenario("default.rhai"),
        &["--view", view.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let snapshot = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../snapshots/default.snap"));
    // The snapshot's body, after insta's header between two `---` lines.
    let (_, body) = snapshot.split_once("\n---\n").expect("an insta header");
    assert_eq!(read(&view).trim_end(), body.trim_end());
}

#[test]
fn view_renders_a_log_written_earlier_without_its_script() {
    let dir = tempfile::tempdir().unwrap();
    let (events, view) = (dir.path().join("run.jsonl"), dir.path().join("run.txt"));
    let output = run_in(
        dir.path(),
        &scenario("default.rhai"),
        &["--events", events.to_str().unwrap()],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let output = phile_run(&["--render", events.to_str().unwrap(), "--view", view.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    let view = read(&view);
    assert!(
        view.starts_with("-- (no script line)\nscenario  scenario_started"),
        "{view}"
    );
    assert!(view.contains("\n-- line 42\n"), "{view}");
    assert!(view.contains("download_finished  file=test1.txt from=10000"), "{view}");
}

//! The HTML report in a real browser: the default scenario's report, opened
//! in headless Chromium (Debian's `chromium`), renders with no script error
//! and its diagram names every node.
//!
//! Without Chromium these tests fail, saying how to install it, unless
//! `PHILE_ALLOW_SKIP=1` (as for the suite's other tests that need a tool)
//! or `PHILE_SKIP_BROWSER=1` is set, in which case they say they were
//! skipped.
//! With `PHILE_REPORT_SCREENSHOT=FILE` the first one also saves a
//! 1280×2000 screenshot of the report there (how `docs/report.png` is made).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Set either to 1 to skip these tests on a machine without Chromium.
const SKIP: [&str; 2] = ["PHILE_ALLOW_SKIP", "PHILE_SKIP_BROWSER"];
/// Longest a browser may take to load one page.
const BROWSER_TIME_LIMIT: Duration = Duration::from_secs(90);
/// The nodes of scenarios/default.rhai.
const NODES: [&str; 6] = ["tracker", "10000", "10001", "10002", "10003", "10004"];

/// The Chromium binary, or `None` when the test is to be skipped.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| on_path(name));
    if found.is_none() {
        if let Some(skip) = SKIP
            .iter()
            .find(|skip| std::env::var(skip).is_ok_and(|value| value == "1"))
        {
            eprintln!("SKIPPED ({skip}=1): no chromium on PATH");
            return None;
        }
        panic!(
            "this test needs headless Chromium and none is on PATH: install it (Debian: apt-get install -y chromium), \
             or set PHILE_ALLOW_SKIP=1 to skip it"
        );
    }
    found
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `phile-run scenarios/default.rhai --report` and returns the report's path.
fn default_report(dir: &Path) -> PathBuf {
    let report = dir.join("report.html");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/default.rhai");
    let output = Command::new(env!("CARGO_BIN_EXE_phile-run"))
        .arg(&script)
        .args(["--ephemeral-ports", "-q", "--root"])
        .arg(dir)
        .arg("--report")
        .arg(&report)
        .env_remove("RUST_LOG")
        .output()
        .expect("phile-run starts");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    report
}

/// Opens `page` in headless Chromium with `extra` arguments (`--dump-dom`,
/// `--screenshot=…`) and returns what it printed.
fn headless(chromium: &Path, page: &Path, extra: &[String]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("chromium starts");
    // Read both pipes while waiting, so a full pipe never blocks the browser.
    let stdout = read_in_background(child.stdout.take().unwrap());
    let stderr = read_in_background(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > BROWSER_TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not finish {} within {BROWSER_TIME_LIMIT:?}",
                page.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(status.success(), "chromium failed on {}:\n{stderr}", page.display());
    stdout
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The DOM of `page` after its scripts ran.
fn rendered_dom(chromium: &Path, page: &Path) -> String {
    headless(chromium, page, &["--dump-dom".to_string()])
}

/// The value of attribute `name` on the `<html>` element of `dom`.
fn root_attribute<'a>(dom: &'a str, name: &str) -> Option<&'a str> {
    let root = &dom[dom.find("<html")?..];
    let root = &root[..root.find('>')?];
    let value = &root[root.find(&format!("{name}=\""))? + name.len() + 2..];
    Some(&value[..value.find('"')?])
}

#[test]
fn the_report_renders_without_script_errors_and_names_every_node() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let report = default_report(dir.path());
    let dom = rendered_dom(&chromium, &report);
    assert_eq!(root_attribute(&dom, "data-script-errors"), Some(""), "script errors");
    assert_eq!(
        root_attribute(&dom, "data-report-ready"),
        Some("yes"),
        "the report's script did not finish"
    );
    let heads_start = dom
        .find("<svg class=\"heads\"")
        .expect("the diagram's participant heads");
    let heads = &dom[heads_start..heads_start + dom[heads_start..].find("</svg>").unwrap()];
    for node in NODES {
        assert!(
            heads.contains(&format!(">{node}</text>")),
            "the diagram does not name {node}"
        );
    }
    let arrows = dom.matches("<g class=\"msg ").count();
    assert_eq!(arrows, 10 + 2 + 4 * 4, "register/ACK, two announces, four downloads");
    if let Some(path) = std::env::var_os("PHILE_REPORT_SCREENSHOT") {
        let shot = format!("--screenshot={}", Path::new(&path).display());
        headless(&chromium, &report, &[shot, "--window-size=1280,2000".to_string()]);
        assert!(
            Path::new(&path).is_file(),
            "no screenshot at {}",
            Path::new(&path).display()
        );
    }
}

#[test]
fn the_browser_check_sees_a_script_error() {
    // Proves the check above can fail: the same report with a broken
    // script added must show the error in the DOM.
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let report = default_report(dir.path());
    let html = std::fs::read_to_string(&report).unwrap();
    let broken = dir.path().join("broken.html");
    let html = html.replace("</body>", "<script>no_such_function();</script></body>");
    std::fs::write(&broken, html).unwrap();
    let dom = rendered_dom(&chromium, &broken);
    let errors = root_attribute(&dom, "data-script-errors").unwrap_or_default();
    assert!(errors.contains("no_such_function"), "the error went unseen: {errors:?}");
}

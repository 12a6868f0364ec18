//! Every verb of the scenario language, in success and in failure.

use crate::util::{run_err, run_ok, run_source_with};

/// A tracker and registered clients `a` (1) and `b` (2), then `body`.
fn with_two_clients(body: &str) -> String {
    format!(
        r#"
let t = tracker(0);
let a = client(1);
let b = client(2);
a.register(t);
b.register(t);
{body}
"#
    )
}

#[test]
fn tracker_and_client_start_nodes_and_log_it() {
    let run = run_ok("let t = tracker(0); let c = client(7); assert(c.id == 7, \"id\");");
    let started: Vec<String> = run
        .events_named("started")
        .iter()
        .map(|e| e["node"].to_string())
        .collect();
    assert_eq!(started, ["\"tracker\"", "\"7\""]);
    assert!(run.folder(7).is_dir(), "client(7) made no folder");
}

#[test]
fn client_empties_an_existing_folder() {
    let run = run_source_with(
        "let c = client(3); assert(c.files() == [], \"not emptied\");",
        |options| {
            let folder = options.settings.root.join("3");
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("stale.txt"), "old").unwrap();
            std::fs::write(folder.join(".stale.txt.abc.phile-part"), "half").unwrap();
        },
    );
    assert!(run.outcome.failure.is_none(), "{:?}", run.outcome.failure);
    assert_eq!(std::fs::read_dir(run.folder(3)).unwrap().count(), 0);
}

#[test]
fn bad_node_arguments_are_script_errors() {
    assert!(run_err("tracker(70000);").message.contains("not a port number"));
    assert!(run_err("client(0);").message.contains("not a positive integer"));
    assert!(run_err("client(5); client(5);").message.contains("exists already"));
    let fixed_ports = run_source_with("client(70000);", |o| o.settings.ephemeral_ports = false);
    assert!(fixed_ports
        .outcome
        .failure
        .unwrap()
        .message
        .contains("--ephemeral-ports"));
}

#[test]
fn a_fluid_bound_without_seeders_or_with_a_client_twice_is_a_script_error() {
    let set_up = "let a = client(1); let b = client(2);";
    let none = run_err(&format!("{set_up} fluid_bound(1000, [], [b]);"));
    assert!(none.message.contains("at least one seeder"), "{}", none.message);
    let both = run_err(&format!("{set_up} fluid_bound(1000, [a], [a, b]);"));
    assert!(both.message.contains("client 1 is listed twice"), "{}", both.message);
    run_ok(&format!(
        "{set_up} a.set_rate(1000, 0); assert(fluid_bound(1000, [a], [b]) == 1.0, \"1 s\");"
    ));
}

#[test]
fn a_value_of_the_wrong_type_in_an_array_is_named_in_script_types() {
    let set_up = "let t = tracker(0); let a = client(1);";
    for (call, expected) in [
        ("wait_all([a]);", "item 0 has type Client"),
        ("wait_all([1]);", "item 0 has type int"),
        ("fluid_bound(10, [a], [1.5]);", "item 0 of downloaders has type float"),
        ("fluid_bound(10, [t], [a]);", "item 0 of seeders has type Tracker"),
    ] {
        let failure = run_err(&format!("{set_up} {call}"));
        assert!(failure.message.contains(expected), "{call}: {}", failure.message);
    }
}

#[test]
fn register_answers_ack_and_the_tracker_logs_it() {
    let run = run_ok("let t = tracker(0); let a = client(1); assert(a.register(t) == \"ACK\", \"no ACK\");");
    assert_eq!(run.events_named("registered")[0]["client"], 1);
}

#[test]
fn write_and_read_round_trip_and_replace() {
    run_ok(
        r#"
let a = client(1);
a.write("note.txt", "first");
a.write("note.txt", "second, longer");
assert(a.read("note.txt") == "second, longer", "not replaced");
a.write("blob.bin", blob(3, 0x41));
assert(a.read("blob.bin") == "AAA", "blob");
assert(a.files() == ["blob.bin", "note.txt"], "files");
"#,
    );
}

#[test]
fn hostile_or_invalid_names_are_script_errors() {
    for name in ["../x", "/etc/passwd", "a/b", "a\\\\b", ".", "..", "", "x.phile-part"] {
        let failure = run_err(&format!("let a = client(1); a.write(\"{name}\", \"x\");"));
        assert!(
            failure.message.contains("invalid file name"),
            "{name}: {}",
            failure.message
        );
    }
    let failure = run_err(&with_two_clients("b.download(\"../../etc/passwd\");"));
    assert!(failure.message.contains("invalid file name"), "{}", failure.message);
}

#[test]
fn read_explains_missing_and_binary_files() {
    let missing = run_err("let a = client(1); a.read(\"nope.txt\");");
    assert!(missing.message.contains("no file nope.txt"), "{}", missing.message);
    let binary = run_err("let a = client(1); a.write(\"x.bin\", blob(2, 0xff)); a.read(\"x.bin\");");
    assert!(binary.message.contains("not UTF-8"), "{}", binary.message);
    assert!(binary.message.contains("c.sha1"), "{}", binary.message);
}

#[test]
fn write_random_depends_on_seed_and_name_only() {
    let script = r#"
let a = client(1);
a.write_random("one", 100000);
a.write_random("two", 100000);
a.write_random("again", 100000);
assert(a.size("one") == 100000, "size");
assert(a.sha1("one") != a.sha1("two"), "two names, same bytes");
print(a.sha1("one"));
"#;
    let digest = |seed| {
        let run = run_source_with(script, |o| o.settings.seed = seed);
        assert!(run.outcome.failure.is_none());
        std::fs::read(run.folder(1).join("one")).unwrap()
    };
    assert_eq!(digest(1), digest(1));
    assert_ne!(digest(1), digest(2));
    assert!(run_err("let a = client(1); a.write_random(\"x\", -1);")
        .message
        .contains("0 or more"));
}

#[test]
fn upload_answers_ack_and_is_announced() {
    let run = run_ok(&with_two_clients(
        r#"a.write("f.txt", "x"); assert(a.upload("f.txt") == "ACK", "no ACK");"#,
    ));
    let announced = &run.events_named("announced")[0];
    assert_eq!(
        (announced["client"].as_u64(), announced["file"].as_str()),
        (Some(1), Some("f.txt"))
    );
}

#[test]
fn upload_refuses_missing_files_unregistered_clients_and_other_content() {
    let missing = run_err(&with_two_clients("a.upload(\"nope.txt\");"));
    assert!(missing.message.contains("has no such file"), "{}", missing.message);
    assert!(missing.message.contains("c.write"), "{}", missing.message);

    let unregistered = run_err("let a = client(1); a.write(\"f\", \"x\"); a.upload(\"f\");");
    assert!(
        unregistered.message.contains("not registered"),
        "{}",
        unregistered.message
    );
    assert!(unregistered.message.contains("c.register"), "{}", unregistered.message);

    let conflict = run_err(&with_two_clients(
        r#"a.write("f", "one"); a.upload("f"); b.write("f", "two"); b.upload("f");"#,
    ));
    assert!(conflict.message.contains("same content"), "{}", conflict.message);
}

#[test]
fn download_returns_the_documented_map() {
    run_ok(&with_two_clients(
        r#"
a.write("test1.txt", "hello");
a.upload("test1.txt");
let r = b.download("test1.txt");
assert(r.ok == true, "ok");
assert(r.file == "test1.txt", "file");
assert(r.from == 1, "from");
assert(r.bytes == 5, "bytes");
assert(r.sha1 == "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d", "sha1");
assert(type_of(r.secs) == "f64", "secs");
assert(b.read("test1.txt") == "hello", "content");
"#,
    ));
}

#[test]
fn a_download_of_a_file_nobody_has_is_a_result_and_leaves_nothing() {
    let run = run_ok(&with_two_clients(
        r#"
let r = b.download("test2.txt");
assert(r.ok == false, "ok");
assert(r.file == "test2.txt", "file");
assert(r.error == "no peer has test2.txt", r.error);
"#,
    ));
    assert_eq!(
        std::fs::read_dir(run.folder(2)).unwrap().count(),
        0,
        "something was left behind"
    );
    assert_eq!(run.events_named("download_failed")[0]["error"], "no peer has test2.txt");
}

#[test]
fn a_downloaded_file_is_announced_and_served() {
    let run = run_ok(&with_two_clients(
        r#"
a.write("f", "x"); a.upload("f");
b.download("f");
let c = client(3); c.register(t);
// The tracker picks a or b at random for each of c's downloads: with the
// seed fixed, some of twenty come from b, which only holds f because it
// downloaded it.
let from_b = 0;
for i in 0..20 {
    let r = c.download("f");
    if r.from == b.id { from_b += 1; }
}
assert(from_b > 0, "b never served the file it downloaded");
"#,
    ));
    let announced: Vec<u64> = run
        .events_named("announced")
        .iter()
        .map(|e| e["client"].as_u64().unwrap())
        .collect();
    assert_eq!(announced[..2], [1, 2], "the downloader did not announce its copy");
}

#[test]
fn download_misuse_is_a_script_error() {
    let unregistered = run_err("let t = tracker(0); let a = client(1); a.download(\"f\");");
    assert!(
        unregistered.message.contains("not registered"),
        "{}",
        unregistered.message
    );
    let start_unregistered = run_err("let t = tracker(0); let a = client(1); a.start_download(\"f\");");
    assert!(start_unregistered.message.contains("not registered"));
}

#[test]
fn start_download_wait_and_wait_all() {
    run_ok(&with_two_clients(
        r#"
a.write("x", "1"); a.write("y", "22"); a.upload("x"); a.upload("y");
let tx = b.start_download("x");
let ty = b.start_download("y");
let tz = b.start_download("z");
let all = wait_all([ty, tx, tz]);
assert(all.len() == 3, "three results");
assert(all[0].file == "y" && all[0].bytes == 2, "order: y first");
assert(all[1].file == "x" && all[1].ok, "then x");
assert(!all[2].ok, "z does not exist");
let again = tx.wait();
assert(again.ok && again.file == "x", "waiting twice gives the same result");
assert(b.files() == ["x", "y"], "files");
"#,
    ));
    let failure = run_err("wait_all([1]);");
    assert!(failure.message.contains("array of transfers"), "{}", failure.message);
}

#[test]
fn transfers_left_running_are_finished_and_logged() {
    let run = run_ok(&with_two_clients(
        r#"a.write("x", "1"); a.upload("x"); b.start_download("x");"#,
    ));
    assert_eq!(run.events_named("download_finished").len(), 1);
    assert_eq!(run.events_named("announced").len(), 2);
}

#[test]
fn tree_lists_every_client() {
    run_ok(&with_two_clients(
        r#"
a.write("f", "x");
let tr = tree();
assert(tr == #{ "1": ["f"], "2": [] }, `tree: ${tr}`);
assert_tree(#{ "1": ["f"], "2": [] });
"#,
    ));
}

#[test]
fn assert_tree_lists_what_differs_per_client() {
    let failure = run_err(&with_two_clients(
        r#"a.write("f", "x"); assert_tree(#{ "1": ["g"], "2": [], "3": [] });"#,
    ));
    assert!(
        failure.message.contains("1: missing g; unexpected f"),
        "{}",
        failure.message
    );
    assert!(failure
        .message
        .contains("3: expected, but the scenario has no such client"));
    assert!(
        !failure.message.contains("2:"),
        "a matching client is listed: {}",
        failure.message
    );
    let malformed = run_err("assert_tree(#{ \"1\": 5 });");
    assert!(malformed.message.contains("must be an array"), "{}", malformed.message);
}

#[test]
fn assert_stops_with_the_message() {
    let failure = run_err("let x = 1;\nassert(x == 2, \"x should be 2\");");
    assert_eq!(failure.message, "assertion failed: x should be 2");
    assert_eq!((failure.line, failure.column), (2, 1));
    run_ok("assert(true, \"fine\");");
}

#[test]
fn note_adds_an_event_in_order() {
    let run = run_ok("note(\"first\"); let t = tracker(0); note(\"second\");");
    let kinds: Vec<String> = run
        .events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        kinds,
        ["scenario_started", "note", "started", "note", "scenario_finished"]
    );
    assert_eq!(run.events_named("note")[1]["text"], "second");
}

#[test]
fn script_errors_carry_line_and_column() {
    let failure =
        run_err("let t = tracker(0);\nlet a = client(1);\na.write(\"nope\", \"x\");\n    a.upload(\"nope\");\n");
    assert_eq!((failure.line, failure.column), (4, 7));
    assert!(
        failure.report.contains("test.rhai:4:7: client 1 is not registered"),
        "{}",
        failure.report
    );
    assert!(
        failure.report.contains("4 |     a.upload(\"nope\");\n  |       ^"),
        "{}",
        failure.report
    );

    let syntax = run_err("let a = ;");
    assert_eq!(syntax.line, 1);
    let unknown = run_err("let a = 1;\nteleport(a);");
    assert_eq!((unknown.line, unknown.column), (2, 1));
    assert!(unknown.message.contains("scenarios/README.md"), "{}", unknown.message);
    let undefined = run_err("let a = b;");
    assert!(undefined.message.contains("b"), "{}", undefined.message);
}

#[test]
fn a_failed_run_logs_everything_up_to_the_failure() {
    let run = crate::util::run_source("note(\"before\");\nassert(false, \"stop\");\nnote(\"after\");");
    let kinds: Vec<String> = run
        .events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["scenario_started", "note", "scenario_failed"]);
    let failed = &run.events_named("scenario_failed")[0];
    assert_eq!((failed["line"].as_u64(), failed["column"].as_u64()), (Some(2), Some(1)));
    assert_eq!(failed["error"], "assertion failed: stop");
}

#[test]
fn a_runaway_script_is_stopped_by_the_time_limit() {
    let run = run_source_with("loop { }", |o| {
        o.time_limit = std::time::Duration::from_millis(200);
        // Far past the default: a fast machine runs the default 100
        // million operations of this loop within 200 ms, and that limit
        // stopped it first. A broken time limit still fails, in seconds.
        o.max_operations = 100 * phile_runner::DEFAULT_MAX_OPERATIONS;
    });
    let failure = run.outcome.failure.expect("the loop was not stopped");
    assert!(failure.message.contains("time limit"), "{}", failure.message);
}

#[test]
fn the_time_limit_stops_a_long_step_too() {
    // One step alone would take far longer than the limit: writing 64 GiB.
    let started = std::time::Instant::now();
    let run = run_source_with(
        "let a = client(1);\na.write_random(\"huge\", 64 * 1024 * 1024 * 1024);",
        |o| o.time_limit = std::time::Duration::from_secs(1),
    );
    let failure = run.outcome.failure.as_ref().expect("the step was not stopped");
    assert!(failure.message.contains("time limit of 1 s"), "{}", failure.message);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "stopped only after {:?}",
        started.elapsed()
    );
    assert!(
        std::fs::read_dir(run.folder(1)).unwrap().next().is_none(),
        "the interrupted write left a file behind"
    );
}

#[test]
fn a_loop_that_only_grows_an_array_is_stopped_by_the_operation_limit() {
    let run = run_source_with("let a = [];\nloop { a.push(1); }", |o| o.max_operations = 1_000_000);
    let failure = run.outcome.failure.expect("the loop was not stopped");
    assert!(
        failure.message.contains("more operations than its limit") && failure.message.contains("--max-operations"),
        "{}",
        failure.message
    );
}

#[test]
fn kill_makes_the_tracker_forget_and_the_client_refuse_to_act() {
    let run = run_ok(&with_two_clients(
        r#"
a.write("f", "x"); a.upload("f");
a.kill();
let r = b.download("f");
assert(!r.ok && r.error == "no peer has f", `a dead holder was offered: ${r}`);
assert(a.files() == ["f"], "a killed client's folder changed");
"#,
    ));
    let kinds: Vec<String> = run
        .events()
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_owned())
        .collect();
    let killed = kinds.iter().position(|k| k == "killed").unwrap();
    assert_eq!(
        kinds[killed + 1],
        "client_lost",
        "the tracker's notice is not right after the kill"
    );
    let down = run_err(&with_two_clients("a.kill(); a.upload(\"f\");"));
    assert!(
        down.message.contains("is down (killed): call c.restart() first"),
        "{}",
        down.message
    );
    let twice = run_err(&with_two_clients("a.kill(); a.kill();"));
    assert!(twice.message.contains("is down"), "{}", twice.message);
}

#[test]
fn leave_is_forgotten_at_once_and_restart_rejoins() {
    let run = run_ok(&with_two_clients(
        r#"
a.write("f", "x"); a.upload("f");
a.leave();
assert(!b.download("f").ok, "a departed holder was offered");
a.restart();
let r = b.download("f");
assert(r.ok && r.from == a.id, `the restarted holder did not serve: ${r}`);
"#,
    ));
    let left = run.events_named("client_left");
    assert_eq!(left.len(), 1);
    assert_eq!(run.events_named("restarted").len(), 1);
    let running = run_err(&with_two_clients("a.restart();"));
    assert!(
        running.message.contains("only a killed or departed client can restart"),
        "{}",
        running.message
    );
    // A client that never registered just stops, and restarts unregistered.
    run_ok("let a = client(1); a.leave(); a.restart(); assert(a.files() == [], \"files\");");
}

#[test]
fn corrupt_flips_bytes_silently_and_downloads_reject_them() {
    let run = run_ok(&with_two_clients(
        r#"
a.write("f", "hello world");
let before = a.sha1("f");
a.upload("f");
a.corrupt("f");
assert(a.size("f") == 11, "corrupt changed the size");
let r = b.download("f");
assert(!r.ok, "a corrupt copy was accepted");
assert(r.error == `no peer delivered f: ${a.id} sent content with the wrong SHA-1`, r.error);
assert(b.files() == [], "a corrupt copy was stored");
"#,
    ));
    assert_eq!(run.events_named("holder_dropped").len(), 1);
    let content = std::fs::read(run.folder(1).join("f")).unwrap();
    assert_ne!(content, b"hello world", "corrupt changed nothing on disk");
    assert!(run_err("let a = client(1); a.corrupt(\"nope\");")
        .message
        .contains("cannot corrupt nope"));
    let empty = run_err("let a = client(1); a.write(\"e\", \"\"); a.corrupt(\"e\");");
    assert!(empty.message.contains("empty"), "{}", empty.message);
}

#[test]
fn kill_after_and_stall_after_strike_mid_transfer() {
    let run = run_ok(
        r#"
set_idle_timeout(0.2);
let t = tracker(0);
let a = client(1); let b = client(2);
a.register(t); b.register(t);
a.write_random("f", 100000); a.upload("f");
a.stall_after("f", 5000);
let r = b.download("f");
assert(!r.ok && r.error == "no peer delivered f: 1 stalled past the idle timeout", r.error);
a.kill_after("f", 50000);
let r = b.download("f");
assert(!r.ok && r.error == "no peer delivered f: 1 cut the connection mid-transfer", r.error);
assert(b.files() == [], "a cut transfer left a file");
"#,
    );
    let killed = &run.events_named("killed")[0];
    assert_eq!(
        (killed["file"].as_str(), killed["sent"].as_u64()),
        (Some("f"), Some(50000))
    );
    let armed = run.events_named("fault_armed");
    assert_eq!(armed.len(), 2);
    assert!(run_err("let a = client(1); a.kill_after(\"f\", -1);")
        .message
        .contains("not a byte count"));
    for out_of_range in [
        "set_idle_timeout(0);",
        "set_idle_timeout(1e17);",
        "set_idle_timeout(-1);",
    ] {
        let message = run_err(out_of_range).message;
        assert!(
            message.contains("from 0.001 s (1 ms) to 604800 s"),
            "{out_of_range}: {message}"
        );
    }
}

#[test]
fn a_transfer_of_a_killed_downloader_ends_as_a_failed_result() {
    run_ok(&with_two_clients(
        r#"
a.write_random("f", 4000000); a.upload("f");
let x = b.start_download("f");
b.kill();
let r = x.wait();
// Whether the bytes were all in before the kill or not, the script goes on;
// a download the kill interrupted says so.
if !r.ok { assert(r.error == "client 2 stopped", r.error); }
"#,
    ));
}

#[test]
fn environment_errors_say_what_and_where() {
    // A port in use.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let run = run_source_with(&format!("tracker({port});"), |o| o.settings.ephemeral_ports = false);
    let failure = run.outcome.failure.unwrap();
    assert!(
        failure.message.contains(&format!("port {port} is in use")),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("--ephemeral-ports"), "{}", failure.message);
    // A root that cannot hold folders.
    let run = run_source_with("client(1);", |o| o.settings.root = "/dev/null/phile".into());
    let failure = run.outcome.failure.unwrap();
    assert!(
        failure.message.contains("cannot prepare the folder of client 1"),
        "{}",
        failure.message
    );
    assert!(failure.message.contains("/dev/null/phile"), "{}", failure.message);
}

#[test]
fn a_client_crashed_by_a_fault_can_restart() {
    run_ok(&with_two_clients(
        r#"
a.write_random("f", 50000); a.upload("f");
a.kill_after("f", 100);
let r = b.download("f");
assert(!r.ok, "the only holder crashed mid-transfer");
a.restart();
let r = b.download("f");
assert(r.ok && r.from == a.id, `the restarted holder did not serve: ${r}`);
"#,
    ));
}

#[test]
fn waiting_again_on_a_transfer_whose_wait_failed_gives_the_same_error() {
    // b's session moves to a second tracker that records other content
    // under the same name: the download arrives, its announce is refused.
    let failure = run_err(&with_two_clients(
        r#"
let t2 = tracker(0);
let c = client(3);
c.register(t2);
c.write("f", "other content"); c.upload("f");
a.write("f", "content"); a.upload("f");
let x = b.start_download("f");
b.register(t2);
let first = "";
try { x.wait(); } catch (e) { first = `${e}`; }
assert(first.contains("same content"), first);
x.wait();
"#,
    ));
    assert_eq!(failure.line, 18, "{}", failure.report);
    assert!(failure.message.contains("same content"), "{}", failure.message);
}

//! The `phile` command: a tracker, a seeding peer and downloads as separate
//! processes, as a user runs them on real machines.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

/// A running `phile` process, stopped when dropped.
struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = Command::new(env!("CARGO_BIN_EXE_phile"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("phile starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Running { child, stdout }
    }

    /// The next line the process prints (waits for it).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the process ended before printing");
        line.trim_end().to_owned()
    }

    /// Asks the process to stop, as Ctrl-C or a service manager would, and
    /// waits for it to exit.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn phile(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phile"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("phile runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts a tracker on a free port; returns it and its address.
fn tracker() -> (Running, String) {
    let mut tracker = Running::start(&["tracker", "--listen", "127.0.0.1:0"]);
    let line = tracker.line();
    let addr = line
        .strip_prefix("phile tracker listening on ")
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (tracker, addr)
}

/// Starts a peer seeding `dir`; returns once it has announced its files.
fn peer(id: &str, dir: &Path, tracker: &str) -> Running {
    let dir = dir.to_str().unwrap();
    let args = [
        "peer",
        "--id",
        id,
        "--dir",
        dir,
        "--tracker",
        tracker,
        "--listen",
        "127.0.0.1:0",
        "--rescan",
        "1",
    ];
    let mut peer = Running::start(&args);
    let ready = peer.line();
    assert!(ready.starts_with(&format!("phile peer {id} serving")), "{ready}");
    peer
}

fn status(tracker: &str) -> serde_json::Value {
    let output = phile(&["status", "--tracker", tracker, "--json"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_tracker_a_seeder_and_a_downloader_as_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = (dir.path().join("seeds"), dir.path().join("downloads"));
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::create_dir_all(&downloads).unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(seeds.join("big.bin"), &big).unwrap();
    std::fs::write(seeds.join("a.txt"), "hello").unwrap();

    let (tracker, addr) = tracker();
    let mut seeder = peer("1", &seeds, &addr);
    let got = phile(&[
        "get",
        "a.txt",
        "big.bin",
        "--id",
        "2",
        "--dir",
        downloads.to_str().unwrap(),
        "--tracker",
        &addr,
    ]);
    let stdout = text(&got.stdout);
    assert!(got.status.success(), "{stdout}{}", text(&got.stderr));
    assert!(stdout.contains("big.bin: 3000000 bytes from peer 1"), "{stdout}");
    // Not a terminal: plain lines, no bar drawing.
    assert!(
        stdout.contains("big.bin: fetching 3000000 bytes from peer 1"),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "terminal codes in plain output: {stdout:?}");
    assert_eq!(std::fs::read(downloads.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(downloads.join("a.txt")).unwrap(), "hello");

    // The status shows the seeder (the downloader left when done).
    let known = status(&addr);
    assert_eq!(known["clients"].as_array().unwrap().len(), 1);
    let files = known["files"].as_array().unwrap();
    assert_eq!(files[1]["name"], "big.bin");
    assert_eq!(files[1]["size"], 3_000_000);
    assert_eq!(files[1]["holders"], serde_json::json!([1]));

    // A file dropped into the seeder's folder is announced by the rescan.
    std::fs::write(seeds.join("late.txt"), "late").unwrap();
    assert!(seeder.line().starts_with("announced late.txt"));
    // A file changed in place is withdrawn, then announced with its new
    // content; a deleted one is withdrawn.
    std::fs::write(seeds.join("late.txt"), "later, and longer").unwrap();
    assert_eq!(seeder.line(), "withdrew late.txt (deleted or changed)");
    assert!(seeder.line().starts_with("announced late.txt (17 bytes"));
    std::fs::remove_file(seeds.join("a.txt")).unwrap();
    assert_eq!(seeder.line(), "withdrew a.txt (deleted or changed)");
    let names: Vec<String> = status(&addr)["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|file| file["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names,
        ["big.bin", "late.txt"],
        "a.txt was only held by the seeder and is gone"
    );
    let table = text(&phile(&["status", "--tracker", &addr]).stdout);
    assert!(table.contains("late.txt") && table.contains("CLIENT"), "{table}");

    // Stopping the seeder says goodbye: the tracker forgets it at once.
    assert!(seeder.terminate().success());
    assert_eq!(status(&addr)["clients"].as_array().unwrap().len(), 0);
    assert!(tracker.terminate().success());
}

#[test]
fn get_with_seed_stays_and_serves_what_it_downloaded() {
    let dir = tempfile::tempdir().unwrap();
    for folder in ["a", "b", "c"] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
    }
    std::fs::write(dir.path().join("a").join("f.txt"), "seeded on").unwrap();
    let (_tracker, addr) = tracker();
    let seeder = peer("1", &dir.path().join("a"), &addr);
    let b = dir.path().join("b");
    let mut relay = Running::start(&[
        "get",
        "f.txt",
        "--id",
        "2",
        "--dir",
        b.to_str().unwrap(),
        "--tracker",
        &addr,
        "--listen",
        "127.0.0.1:0",
        "--seed",
    ]);
    while !relay.line().starts_with("phile peer 2 serving") {}
    // With the first seeder gone, only the relay can serve.
    assert!(seeder.terminate().success());
    let c = dir.path().join("c");
    let got = phile(&[
        "get",
        "f.txt",
        "--id",
        "3",
        "--dir",
        c.to_str().unwrap(),
        "--tracker",
        &addr,
    ]);
    assert!(text(&got.stdout).contains("from peer 2"), "{}", text(&got.stdout));
    assert_eq!(std::fs::read_to_string(c.join("f.txt")).unwrap(), "seeded on");
    assert!(relay.terminate().success());
}

#[test]
fn a_progress_bar_is_drawn_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = (dir.path().join("s"), dir.path().join("d"));
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::write(seeds.join("big.bin"), vec![1u8; 8_000_000]).unwrap();
    let (_tracker, addr) = tracker();
    let _seeder = peer("1", &seeds, &addr);
    // `script` runs the command under a pseudo-terminal.
    let command = format!(
        "{} get big.bin --id 2 --dir {} --tracker {addr}",
        env!("CARGO_BIN_EXE_phile"),
        downloads.display()
    );
    let output = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("RUST_LOG", "warn")
        .output();
    let Ok(output) = output else {
        eprintln!("skipped: the `script` command (util-linux) is not installed");
        return;
    };
    let screen = text(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(screen.contains("big.bin ← 1"), "no progress bar drawn: {screen:?}");
    assert!(screen.contains("MiB/s"), "no rate in the bar: {screen:?}");
    assert!(
        !screen.contains("fetching 8000000 bytes"),
        "plain lines on a terminal: {screen:?}"
    );
}

#[test]
fn errors_are_one_clear_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().to_str().unwrap();
    // Nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let unreachable = phile(&["get", "x", "--id", "1", "--dir", folder, "--tracker", &closed]);
    assert_eq!(unreachable.status.code(), Some(1));
    let message = text(&unreachable.stderr);
    assert!(
        message.contains(&format!("cannot reach the tracker at {closed}")),
        "{message}"
    );
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let in_use = phile(&["tracker", "--listen", &busy_addr]);
    assert_eq!(in_use.status.code(), Some(1));
    assert!(
        text(&in_use.stderr).contains("is another tracker running?"),
        "{}",
        text(&in_use.stderr)
    );

    let missing = phile(&["peer", "--id", "1", "--dir", "/no/such/folder", "--tracker", &closed]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        text(&missing.stderr).contains("folder /no/such/folder does not exist"),
        "{}",
        text(&missing.stderr)
    );

    let bad_name = phile(&[
        "get",
        "../etc/passwd",
        "--id",
        "1",
        "--dir",
        folder,
        "--tracker",
        &closed,
    ]);
    assert_eq!(bad_name.status.code(), Some(1));
    assert!(
        text(&bad_name.stderr).contains("invalid file name"),
        "{}",
        text(&bad_name.stderr)
    );

    let usage = phile(&["get", "--id", "1"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn a_file_nobody_has_makes_get_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, addr) = tracker();
    let got = phile(&[
        "get",
        "ghost.txt",
        "--id",
        "1",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tracker",
        &addr,
    ]);
    assert_eq!(got.status.code(), Some(1));
    assert!(text(&got.stdout).contains("ghost.txt: failed: no peer has ghost.txt"));
    assert!(text(&got.stderr).contains("1 of 1 files did not arrive"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn every_command_explains_itself() {
    for command in ["tracker", "peer", "get", "status"] {
        let help = text(&phile(&[command, "--help"]).stdout);
        assert!(help.contains("Usage: phile"), "{command}: {help}");
    }
    let peer_help = text(&phile(&["peer", "--help"]).stdout);
    for option in [
        "--id",
        "--dir",
        "--tracker",
        "--listen",
        "--advertise",
        "--rescan",
        "--grace",
    ] {
        assert!(peer_help.contains(option), "peer --help lacks {option}");
    }
}

/// Sends one framed request on a raw session and reads the reply frame.
fn ask(session: &mut std::net::TcpStream, body: phile_core::protocol::TrackerRequest) {
    use std::io::{Read, Write};
    let request = phile_core::protocol::Request {
        trace: phile_core::Trace::default(),
        body,
    };
    let payload = phile_core::protocol::encode(&request).unwrap();
    session.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
    session.write_all(&payload).unwrap();
    let mut length = [0u8; 4];
    session.read_exact(&mut length).unwrap();
    let mut reply = vec![0u8; u32::from_be_bytes(length) as usize];
    session.read_exact(&mut reply).unwrap();
}

#[test]
fn ctrl_c_during_a_download_keeps_nothing_half_written() {
    use phile_core::protocol::{ClientId, Digest, FileInfo, TrackerRequest};
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, addr) = tracker();
    // A holder that accepts the download and then says nothing at all.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut session = std::net::TcpStream::connect(&addr).unwrap();
    let advertise = Some(mute.local_addr().unwrap());
    ask(
        &mut session,
        TrackerRequest::Register {
            client: ClientId(1),
            port: 1,
            advertise,
        },
    );
    let info = FileInfo {
        size: 1_000_000,
        sha1: Digest::of(b"whatever"),
    };
    ask(
        &mut session,
        TrackerRequest::Announce {
            file: "slow.bin".parse().unwrap(),
            info,
        },
    );

    let folder = dir.path().to_str().unwrap();
    let get = Running::start(&[
        "get",
        "slow.bin",
        "--id",
        "2",
        "--dir",
        folder,
        "--tracker",
        &addr,
        "--timeout",
        "60",
    ]);
    // The holder answers with a header and the first bytes, then stalls.
    let (mut connection, _) = mute.accept().unwrap();
    {
        use std::io::{Read, Write};
        let mut length = [0u8; 4];
        connection.read_exact(&mut length).unwrap();
        connection
            .read_exact(&mut vec![0u8; u32::from_be_bytes(length) as usize])
            .unwrap();
        let header = phile_core::protocol::encode(&phile_core::protocol::PeerReply::File { info }).unwrap();
        connection.write_all(&(header.len() as u32).to_be_bytes()).unwrap();
        connection.write_all(&header).unwrap();
        connection.write_all(&[7u8; 1000]).unwrap();
    }
    // The partial file appears in the folder (a file system has no event
    // to wait on without inotify: look, at most for 10 s).
    let partial_seen = (0..1000).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::read_dir(dir.path()).unwrap().count() > 0
    });
    assert!(partial_seen, "the download never started writing");
    let started = std::time::Instant::now();
    let status = get.terminate();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "the stop waited for the stall"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "something was left in the folder"
    );
}

#[test]
fn status_gives_up_on_a_tracker_that_never_ends_its_answer() {
    // A fake tracker: answers every status request with clients, forever.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        while let Ok((mut socket, _)) = listener.accept() {
            std::thread::spawn(move || {
                let mut length = [0u8; 4];
                socket.read_exact(&mut length).unwrap();
                let mut request = vec![0u8; u32::from_be_bytes(length) as usize];
                socket.read_exact(&mut request).unwrap();
                let payload = br#"{"type":"status_client","client":1,"addr":"127.0.0.1:9","files":1}"#;
                let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(payload);
                while socket.write_all(&frame).is_ok() {}
            });
        }
    });
    for json in [false, true] {
        let mut args = vec!["status", "--tracker", &addr, "--max-entries", "1000"];
        if json {
            args.push("--json");
        }
        let output = phile(&args);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("more than 1000 status entries"), "{stderr}");
        assert!(stderr.contains("--max-entries"), "{stderr}");
    }
}

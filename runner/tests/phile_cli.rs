//! The `phile` command: a tracker, a seeding peer and downloads as separate
//! processes, as a user runs them on real machines.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use phile_core::pieces::PieceSize;
use phile_core::protocol::{
    ClientId, Digest, FileInfo, PeerReply, Request, TrackerReply, TrackerRequest, PIECES_SUFFIX, SWARM_PART_SUFFIX,
};

/// How long a test waits for a line a process should print: long enough
/// for a loaded machine, short enough that a silent process fails the test
/// rather than hanging it.
const LINE_WAIT: Duration = Duration::from_secs(60);

/// A running `phile` process, stopped when dropped.
struct Running {
    child: Child,
    /// Its standard output, line by line, read by a thread of its own so a
    /// wait for a line can have a deadline.
    lines: mpsc::Receiver<String>,
    /// Where its standard error goes, to be read once it has said something.
    stderr: tempfile::NamedTempFile,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let stderr = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_phile"))
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr.reopen().unwrap())
            .spawn()
            .expect("phile starts");
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (sender, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines, stderr }
    }

    /// The next line the process prints (waits for it, up to `LINE_WAIT`).
    fn line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_WAIT) {
            Ok(line) => line,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line within {LINE_WAIT:?}; its errors: {}", self.stderr())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the process ended before printing; its errors: {}", self.stderr())
            }
        }
    }

    /// Everything it printed to standard error so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.stderr.path()).unwrap()
    }

    /// The rest of its standard output, once it has exited.
    fn rest(&mut self) -> String {
        let mut rest = String::new();
        for line in self.lines.iter() {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    }

    /// Waits for the process to exit, for at most `limit`; `None` if it is
    /// still running then.
    fn wait_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGTERM, as a service manager (or Ctrl-C) would.
    fn signal_stop(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    }

    /// Sends SIGINT, as Ctrl-C on a terminal does.
    fn interrupt(&self) {
        self.send(libc::SIGINT);
    }

    /// Sends `signal` to the process.
    fn send(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a process id fits a pid_t");
        // SAFETY: kill(2) takes plain integers and touches no memory of
        // ours; the child is not reaped yet (it is waited for only after
        // this), so its id cannot name another process.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "cannot signal {pid}: {}", std::io::Error::last_os_error());
    }

    /// Asks the process to stop and waits for it to exit.
    fn terminate(mut self) -> ExitStatus {
        self.signal_stop();
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
    tracker_at("127.0.0.1:0")
}

/// Starts a tracker listening on `listen`; returns it and its address.
fn tracker_at(listen: &str) -> (Running, String) {
    tracker_with(&["--listen", listen])
}

/// Starts a tracker with options `args`; returns it and its address.
fn tracker_with(args: &[&str]) -> (Running, String) {
    let mut tracker = Running::start(&[&["tracker"], args].concat());
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
    peer_with(id, dir, tracker, &[])
}

/// [`peer`], with the options `extra` too.
fn peer_with(id: &str, dir: &Path, tracker: &str, extra: &[&str]) -> Running {
    let dir = dir.to_str().unwrap();
    let mut args = vec![
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
    args.extend_from_slice(extra);
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
    let (seeds, downloads) = seeds_and_downloads(dir.path());
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
    // Not a terminal: plain lines, no bar drawing. A swarm download (the
    // default) counts pieces: 3 MB is 12 pieces of 256 KiB.
    assert!(
        stdout.contains("big.bin: 12/12 pieces, drawing from 1 peer\n"),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "terminal codes in plain output: {stdout:?}");
    assert_eq!(std::fs::read(downloads.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(downloads.join("a.txt")).unwrap(), "hello");

    // `--single` is the founding design's download: the whole file from
    // one holder, shown as a stream of bytes, not of pieces.
    let single = dir.path().join("single");
    std::fs::create_dir_all(&single).unwrap();
    let got = phile(&[
        "get",
        "big.bin",
        "--single",
        "--id",
        "3",
        "--dir",
        single.to_str().unwrap(),
        "--tracker",
        &addr,
    ]);
    let stdout = text(&got.stdout);
    assert!(got.status.success(), "{stdout}{}", text(&got.stderr));
    assert!(
        stdout.contains("big.bin: fetching 3000000 bytes from peer 1"),
        "{stdout}"
    );
    assert!(!stdout.contains("pieces"), "{stdout}");
    assert_eq!(std::fs::read(single.join("big.bin")).unwrap(), big);

    // The status shows the seeder (the downloaders left when done).
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
    // `script` runs the command under a pseudo-terminal; its results go to
    // a file, as `phile get ... > results` from a terminal would.
    let results = dir.path().join("results");
    let command = format!(
        "{} get big.bin --id 2 --dir {} --tracker {addr} > {}",
        env!("CARGO_BIN_EXE_phile"),
        downloads.display(),
        results.display()
    );
    let output = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("RUST_LOG", "warn")
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return cannot_run("the `script` command is missing: install bsdutils (Debian, Ubuntu) or util-linux");
        }
        Err(error) => panic!("cannot run `script`: {error}"),
    };
    let screen = text(&output.stdout);
    assert!(output.status.success(), "{screen}");
    // A swarm download (the default): its bar counts pieces and peers.
    assert!(
        screen.contains("big.bin ") && screen.contains(" 1/31 pieces ← 1 peer "),
        "no progress bar drawn: {screen:?}"
    );
    assert!(screen.contains("MiB/s"), "no rate in the bar: {screen:?}");
    assert!(
        !screen.contains("pieces, drawing from"),
        "plain lines on a terminal: {screen:?}"
    );
    let results = std::fs::read_to_string(results).unwrap();
    assert!(
        results.starts_with("big.bin: 8000000 bytes from peer 1"),
        "the result went elsewhere: {results:?}; the terminal showed {screen:?}"
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
    // Checked with the other arguments: bad command-line use.
    assert_eq!(bad_name.status.code(), Some(2));
    assert!(
        text(&bad_name.stderr).contains("invalid file name"),
        "{}",
        text(&bad_name.stderr)
    );

    let usage = phile(&["get", "--id", "1"]);
    assert_eq!(usage.status.code(), Some(2));

    let bad_id = phile(&["get", "x", "--id", "alice", "--dir", folder, "--tracker", &closed]);
    assert_eq!(bad_id.status.code(), Some(2));
    assert!(
        text(&bad_id.stderr).contains("expected a peer id, a whole number such as 1 or 42, not \"alice\""),
        "{}",
        text(&bad_id.stderr)
    );

    // A rate cap is a whole number with an optional K, M or G.
    let bad_rate = phile(&[
        "get",
        "x",
        "--id",
        "1",
        "--dir",
        folder,
        "--tracker",
        &closed,
        "--max-download",
        "1.5M",
    ]);
    assert_eq!(bad_rate.status.code(), Some(2));
    assert!(
        text(&bad_rate.stderr).contains("optionally followed by K, M or G"),
        "{}",
        text(&bad_rate.stderr)
    );
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
    assert!(text(&got.stderr).contains("1 of 1 file did not arrive"));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn a_server_that_never_answers_is_named_as_no_tracker_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    // Accepts connections (the kernel's backlog does) and says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let started = std::time::Instant::now();
    let got = phile(&[
        "get",
        "x.txt",
        "--id",
        "1",
        "--dir",
        dir.path().to_str().unwrap(),
        "--tracker",
        &addr,
    ]);
    let took = started.elapsed();
    assert_eq!(got.status.code(), Some(1));
    let error = text(&got.stderr);
    assert!(
        error.contains(&format!(
            "no answer from {addr} within 10 s (is that the address of a phile tracker?)"
        )),
        "{error}"
    );
    // Not the idle timeout (30 s).
    assert!(took < std::time::Duration::from_secs(20), "took {took:?}");
}

/// A tracker that does not answer holds `get` and `peer` in registration
/// for up to 10 s; Ctrl-C (SIGTERM) then must not wait for it.
#[test]
fn a_stop_while_registering_with_a_silent_tracker_ends_get_and_peer_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let dir = dir.path().to_str().unwrap();
    let get = ["get", "x.txt", "--id", "1", "--dir", dir, "--tracker", &addr];
    let peer = [
        "peer",
        "--id",
        "2",
        "--dir",
        dir,
        "--tracker",
        &addr,
        "--listen",
        "127.0.0.1:0",
    ];
    for (args, code) in [(&get[..], 130), (&peer[..], 0)] {
        let mut running = Running::start(args);
        // Connected: it is registering, with its signal watch in place.
        let (_held, _) = silent.accept().unwrap();
        running.interrupt();
        let exit = running.wait_within(Duration::from_secs(5));
        let exit = exit.unwrap_or_else(|| panic!("{} went on registering after Ctrl-C", args[0]));
        assert_eq!(exit.code(), Some(code), "{}: {}", args[0], running.stderr());
    }
}

#[test]
fn a_peer_whose_folder_disappears_withdraws_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = dir.path().join("seeds");
    std::fs::create_dir(&seeds).unwrap();
    std::fs::write(seeds.join("a.txt"), "a").unwrap();
    let (_tracker, addr) = tracker();
    let mut seeder = peer("1", &seeds, &addr);
    assert_eq!(status(&addr)["files"].as_array().unwrap().len(), 1);
    // Its disk unmounted, say: nothing it announced is there any more.
    std::fs::remove_dir_all(&seeds).unwrap();
    assert_eq!(seeder.line(), "withdrew a.txt (deleted or changed)");
    assert_eq!(status(&addr)["files"].as_array().unwrap().len(), 0);
}

#[test]
fn a_log_filter_that_cannot_be_read_is_named_not_ignored() {
    let got = Command::new(env!("CARGO_BIN_EXE_phile"))
        .args(["status", "--tracker", "127.0.0.1:1"])
        .env("RUST_LOG", "phile=loud")
        .output()
        .expect("phile runs");
    let stderr = text(&got.stderr);
    assert!(
        stderr.starts_with("phile: RUST_LOG=\"phile=loud\" is not a log filter"),
        "{stderr}"
    );
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
        "--max-upload",
        "--max-download",
    ] {
        assert!(peer_help.contains(option), "peer --help lacks {option}");
    }
    let get_help = text(&phile(&["get", "--help"]).stdout);
    for option in ["--max-upload", "--max-download"] {
        assert!(get_help.contains(option), "get --help lacks {option}");
    }
}

/// A test that cannot run here (a tool is missing) fails, saying what to
/// install, so a run that silently tested less is never green. With
/// `PHILE_ALLOW_SKIP=1` it passes instead, saying loudly that it skipped.
fn cannot_run(reason: &str) {
    if std::env::var("PHILE_ALLOW_SKIP").is_ok_and(|allow| allow == "1") {
        eprintln!("SKIPPED (PHILE_ALLOW_SKIP=1): {reason}");
    } else {
        panic!("{reason} (or set PHILE_ALLOW_SKIP=1 to skip this test)");
    }
}

/// Writes one frame: a 4-byte big-endian length, then the payload.
fn send_frame(stream: &mut TcpStream, message: &impl serde::Serialize) {
    let payload = phile_core::protocol::encode(message).unwrap();
    stream.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
    stream.write_all(&payload).unwrap();
}

/// Reads one frame's payload; `None` at a clean end of the stream.
fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length).ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
    stream.read_exact(&mut payload).ok()?;
    Some(payload)
}

/// Sends one request on a raw tracker session and reads the reply.
fn ask(session: &mut TcpStream, body: TrackerRequest) -> TrackerReply {
    let request = Request {
        trace: phile_core::Trace::default(),
        body,
    };
    send_frame(session, &request);
    phile_core::protocol::decode(&read_frame(session).expect("a reply")).unwrap()
}

/// A holder the test drives, speaking the protocol over raw sockets: it
/// registers with the tracker, announces one file and sends it only as far
/// as the test says, so a test can hold a download at any byte.
struct Holder {
    /// Its tracker session, kept open so the tracker keeps offering it.
    _session: TcpStream,
    /// Where downloaders connect.
    listener: TcpListener,
    /// The file's content.
    content: Vec<u8>,
}

impl Holder {
    /// Registers as client `id` with the tracker at `tracker` and announces
    /// `name` with `content`.
    fn announce(tracker: &str, id: u64, name: &str, content: Vec<u8>) -> Holder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut session = TcpStream::connect(tracker).unwrap();
        let register = TrackerRequest::Register {
            client: ClientId(id),
            port: 1,
            advertise: Some(listener.local_addr().unwrap()),
        };
        assert_eq!(ask(&mut session, register), TrackerReply::Ack);
        let announce = TrackerRequest::Announce {
            file: name.parse().unwrap(),
            info: Self::info_of(&content),
            root: phile_core::pieces::Tree::of(&content).root(),
        };
        assert_eq!(ask(&mut session, announce), TrackerReply::Ack);
        Holder {
            _session: session,
            listener,
            content,
        }
    }

    fn info_of(content: &[u8]) -> FileInfo {
        FileInfo {
            size: content.len() as u64,
            sha1: Digest::of(content),
        }
    }

    /// Accepts the next download, reads its request, and sends the header
    /// and the first `first` bytes.
    fn begin(&self, first: usize) -> TcpStream {
        let (mut connection, _) = self.listener.accept().unwrap();
        read_frame(&mut connection).expect("a request");
        let header = PeerReply::File {
            info: Self::info_of(&self.content),
        };
        send_frame(&mut connection, &header);
        connection.write_all(&self.content[..first]).unwrap();
        connection
    }

    /// Sends the rest, from byte `from`, waits for the downloader's
    /// confirmation (closing first could reset the connection before the
    /// last bytes are read) and closes.
    fn finish(&self, mut connection: TcpStream, from: usize) {
        connection.write_all(&self.content[from..]).unwrap();
        read_frame(&mut connection);
    }
}

/// A tracker the test writes: it answers each request with `answer`.
/// Returns its address.
fn fake_tracker(answer: fn(&TrackerRequest) -> TrackerReply) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for session in listener.incoming() {
            let Ok(mut session) = session else { continue };
            std::thread::spawn(move || {
                while let Some(payload) = read_frame(&mut session) {
                    let request: Request<TrackerRequest> = phile_core::protocol::decode(&payload).unwrap();
                    send_frame(&mut session, &answer(&request.body));
                }
            });
        }
    });
    addr
}

/// Everything in `dir`, as sorted names: hidden files (a partial download
/// is `.NAME.XXXXXX.phile-part`) and folders included, unlike `Folder::list`.
fn raw_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Some bytes that are not all alike.
fn pattern(len: u32) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

#[test]
fn ctrl_c_during_a_download_keeps_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, addr) = tracker();
    let holder = Holder::announce(&addr, 1, "slow.bin", pattern(1_000_000));
    let folder = dir.path().to_str().unwrap();
    let mut get = Running::start(&[
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
        // The whole-file download; a swarm download keeps its checked pieces.
        "--single",
    ]);
    // The holder answers with a header and the first bytes, then stalls.
    let _stalled = holder.begin(1000);
    // Printed once the partial file exists and bytes flow into it.
    assert!(get.line().starts_with("slow.bin: fetching 1000000 bytes"));
    assert_eq!(raw_entries(dir.path()).len(), 1, "no partial file");
    let started = Instant::now();
    let status = get.terminate();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stop waited for the stall"
    );
    assert_eq!(
        raw_entries(dir.path()),
        Vec::<String>::new(),
        "something was left in the folder"
    );
}

/// The folders `seeds` and `downloads` in `dir`, created.
fn seeds_and_downloads(dir: &Path) -> (PathBuf, PathBuf) {
    let (seeds, downloads) = (dir.join("seeds"), dir.join("downloads"));
    std::fs::create_dir_all(&seeds).unwrap();
    std::fs::create_dir_all(&downloads).unwrap();
    (seeds, downloads)
}

/// The entry of `dir` named `.NAME.TAG` + `suffix`: the partial file
/// (`.phile-swarm`) or the record of verified pieces (`.phile-pieces`) of a
/// swarm download of `name`.
fn swarm_leftover(dir: &Path, name: &str, suffix: &str) -> Option<String> {
    let prefix = format!(".{name}.");
    raw_entries(dir)
        .into_iter()
        .find(|entry| entry.starts_with(&prefix) && entry.ends_with(suffix))
}

/// Waits until the swarm download of `name` into `dir` by `get` has
/// recorded verified pieces, and returns the lines `get` printed meanwhile.
/// Fails if `get` ends first: a cap meant to slow it down did not.
///
/// The download saves its record (once a second, after syncing the pieces
/// it lists) without printing anything, so between the lines `get` prints
/// this looks for the record at least every 20 ms. The record is only
/// ever written once a piece has been verified, so its presence in a fresh
/// folder means at least one piece is kept.
fn wait_for_recorded_pieces(get: &mut Running, dir: &Path, name: &str) -> Vec<String> {
    let deadline = Instant::now() + LINE_WAIT;
    let mut printed = Vec::new();
    while swarm_leftover(dir, name, PIECES_SUFFIX).is_none() {
        match get.lines.recv_timeout(Duration::from_millis(20)) {
            Ok(line) => printed.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!(
                "get ended before it recorded a piece (was it capped?); it printed {printed:?}, errors: {}",
                get.stderr()
            ),
        }
        assert!(
            Instant::now() < deadline,
            "no piece recorded within {LINE_WAIT:?}; get printed {printed:?}, errors: {}",
            get.stderr()
        );
    }
    printed
}

/// Interrupts `get`, a swarm download of `name` (`size` bytes) into `dir`
/// that has recorded pieces, as Ctrl-C does, and checks that it stopped
/// with 130 and its pieces kept. `printed`: what `get` printed so far.
/// Interrupts `get` and checks that it kept the pieces of `name` it had;
/// returns the bytes it said it kept.
fn interrupt_and_check_the_pieces_are_kept(
    mut get: Running,
    printed: Vec<String>,
    dir: &Path,
    name: &str,
    size: u64,
) -> u64 {
    get.interrupt();
    let status = get.child.wait().unwrap();
    let printed = printed.join("\n") + "\n" + &get.rest();
    let errors = get.stderr();
    assert_eq!(
        status.code(),
        Some(130),
        "{status:?}; printed {printed}; errors: {errors}"
    );
    assert!(
        errors.contains("interrupted; the pieces checked so far are kept for the next attempt"),
        "{errors}"
    );
    let kept = format!("{name}: interrupted with ");
    assert!(
        printed.contains(&kept) && printed.contains("pieces checked ("),
        "no line on what {name} keeps: {printed}"
    );
    // Had every piece arrived, the interruption would have come too late
    // to show anything: the cap would not have held the download back.
    let pieces = size.div_ceil(PieceSize::DEFAULT.bytes());
    assert!(
        !printed.contains(&format!("{name}: {pieces}/{pieces} pieces")),
        "the whole file arrived before the interruption: {printed}"
    );
    assert!(!dir.join(name).exists(), "{name} was stored: {printed}");
    let entries = raw_entries(dir);
    assert!(
        swarm_leftover(dir, name, SWARM_PART_SUFFIX).is_some() && swarm_leftover(dir, name, PIECES_SUFFIX).is_some(),
        "the partial file or its record is gone: {entries:?}"
    );
    assert_eq!(entries.len(), 2, "{entries:?}");
    printed
        .split_once(&kept)
        .and_then(|(_, rest)| rest.split_once(" pieces checked ("))
        .and_then(|(_, rest)| rest.split_once(" bytes)"))
        .and_then(|(bytes, _)| bytes.parse().ok())
        .unwrap_or_else(|| panic!("no bytes in the line on what {name} keeps: {printed}"))
}

#[test]
fn ctrl_c_keeps_the_checked_pieces_and_the_next_get_fetches_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    // 12 pieces of 256 KiB; at 1 MB/s the download takes about 3 s, the
    // first record of pieces is saved within about 1 s.
    let big = pattern(3_000_000);
    std::fs::write(seeds.join("big.bin"), &big).unwrap();
    let (_tracker, addr) = tracker();
    let _seeder = peer_with("1", &seeds, &addr, &["--max-upload", "1M"]);

    let mut first = Running::start(&get_args(&["big.bin"], "2", &downloads, &addr, &[]));
    let mut printed = wait_for_recorded_pieces(&mut first, &downloads, "big.bin");
    // Interrupted just after it said it checked a piece: the record saved
    // once a second may not list that piece yet, the one saved on Ctrl-C
    // does.
    let shown = loop {
        let line = first.line();
        printed.push(line.clone());
        let held = line
            .strip_prefix("big.bin: ")
            .and_then(|rest| rest.split_once("/12 pieces"))
            .and_then(|(held, _)| held.parse::<u64>().ok());
        if let Some(held) = held {
            break held;
        }
    };
    let said_kept = interrupt_and_check_the_pieces_are_kept(first, printed, &downloads, "big.bin", 3_000_000);

    // The same command again: it resumes from the record.
    let again = phile(&get_args(&["big.bin"], "2", &downloads, &addr, &[]));
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{stdout}{}", text(&again.stderr));
    let kept: u64 = stdout
        .split_once("big.bin: 3000000 bytes from peer 1 (in pieces, ")
        .and_then(|(_, rest)| rest.split_once(" bytes kept from an earlier attempt)"))
        .and_then(|(kept, _)| kept.parse().ok())
        .unwrap_or_else(|| panic!("no resumed bytes reported: {stdout}"));
    assert!(kept > 0 && kept < 3_000_000, "kept {kept} bytes: {stdout}");
    // Exactly what the interrupted one said it kept, pieces still being
    // checked at the Ctrl-C included.
    assert_eq!(kept, said_kept, "{stdout}");
    let said = shown * PieceSize::DEFAULT.bytes();
    assert!(
        kept >= said,
        "{shown} pieces were checked, yet only {kept} bytes kept: {stdout}"
    );
    // It counted from the pieces kept, not from the first piece.
    assert!(!stdout.contains("big.bin: 1/12 pieces"), "{stdout}");
    assert_eq!(std::fs::read(downloads.join("big.bin")).unwrap(), big);
    assert_eq!(
        raw_entries(&downloads),
        ["big.bin"],
        "the partial file or its record was left"
    );
}

#[test]
fn ctrl_c_does_not_wait_for_a_tracker_that_went_silent() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    // 6 s at 1 MB/s: it is still under way when Ctrl-C comes.
    std::fs::write(seeds.join("big.bin"), pattern(6_000_000)).unwrap();
    let (tracker, addr) = tracker();
    let _seeder = peer_with("1", &seeds, &addr, &["--max-upload", "1M"]);
    let mut get = Running::start(&get_args(&["big.bin"], "2", &downloads, &addr, &[]));
    let printed = wait_for_recorded_pieces(&mut get, &downloads, "big.bin");

    // Frozen, the tracker keeps its connections open and answers nothing:
    // without a bound on the goodbye, Ctrl-C would wait out the 30 s idle
    // timeout. The download goes on for over a second first (its progress
    // lines are the clock), so that its request for more peers, made every
    // second, has gone out and hangs, holding the session.
    tracker.send(libc::SIGSTOP);
    let frozen = Instant::now();
    let mut printed = printed;
    while frozen.elapsed() < Duration::from_millis(1200) {
        printed.push(get.line());
    }
    let interrupted = Instant::now();
    get.interrupt();
    let status = get.wait_within(Duration::from_secs(10));
    tracker.send(libc::SIGCONT);
    let status = status.unwrap_or_else(|| panic!("get still runs 10 s after Ctrl-C; printed {printed:?}"));
    assert_eq!(status.code(), Some(130), "errors: {}", get.stderr());
    assert!(
        interrupted.elapsed() < Duration::from_secs(5),
        "Ctrl-C took {:?}",
        interrupted.elapsed()
    );
    assert!(get.stderr().contains("phile: stopping..."), "{}", get.stderr());
    assert!(
        swarm_leftover(&downloads, "big.bin", PIECES_SUFFIX).is_some(),
        "the record of pieces is gone: {:?}",
        raw_entries(&downloads)
    );
}

#[test]
fn a_swarm_get_whose_only_holder_dies_says_what_is_missing_and_that_the_next_get_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    std::fs::write(seeds.join("big.bin"), pattern(3_000_000)).unwrap();
    let (_tracker, addr) = tracker();
    let mut seeder = peer_with("1", &seeds, &addr, &["--max-upload", "1M"]);

    let mut get = Running::start(&get_args(&["big.bin"], "2", &downloads, &addr, &[]));
    let printed = wait_for_recorded_pieces(&mut get, &downloads, "big.bin");
    seeder.child.kill().unwrap();
    seeder.child.wait().unwrap();

    let status = get.wait_within(Duration::from_secs(60)).expect("get ends");
    let printed = printed.join("\n") + "\n" + &get.rest();
    assert_eq!(status.code(), Some(1), "{printed}{}", get.stderr());
    assert!(
        printed.contains("big.bin: failed: no peer delivered the missing pieces of big.bin\n"),
        "{printed}"
    );
    // Which peer failed, and how (cut mid-piece, or not reached again).
    assert!(printed.contains("big.bin: gave up on peer 1, which "), "{printed}");
    let hint = " missing; any pieces checked are kept, and getting it again fetches only those missing";
    let missing: u64 = printed
        .lines()
        .find_map(|line| line.strip_prefix("big.bin: ")?.strip_suffix(hint))
        .unwrap_or_else(|| panic!("no resume hint: {printed}"))
        .trim_end_matches(" pieces")
        .trim_end_matches(" piece")
        .parse()
        .unwrap();
    assert!((1..12).contains(&missing), "{missing} of 12 pieces missing: {printed}");
    assert!(
        swarm_leftover(&downloads, "big.bin", PIECES_SUFFIX).is_some(),
        "{printed}"
    );
}

#[test]
fn each_files_result_is_printed_as_soon_as_it_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    std::fs::write(seeds.join("big.bin"), pattern(3_000_000)).unwrap();
    std::fs::write(seeds.join("small.txt"), "small").unwrap();
    let (_tracker, addr) = tracker();
    let _seeder = peer_with("1", &seeds, &addr, &["--max-upload", "1M"]);

    // The big file first: its result, seconds away, must not hold back the
    // small one's.
    let mut get = Running::start(&get_args(&["big.bin", "small.txt"], "2", &downloads, &addr, &[]));
    let mut printed = Vec::new();
    let first_result = loop {
        let line = get.line();
        printed.push(line.clone());
        // A result, not a progress line ("fetching N bytes from peer P").
        if line.contains(", sha1 ") {
            break line;
        }
    };
    assert!(
        first_result.starts_with("small.txt: 5 bytes from peer 1"),
        "{printed:?}"
    );
    let status = get.wait_within(Duration::from_secs(60)).expect("get ends");
    let rest = get.rest();
    assert!(status.success(), "{rest}{}", get.stderr());
    assert!(rest.contains("big.bin: 3000000 bytes from peer 1"), "{rest}");
}

#[test]
fn max_download_holds_a_get_back_long_enough_to_interrupt_it() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    std::fs::write(seeds.join("big.bin"), pattern(3_000_000)).unwrap();
    let (_tracker, addr) = tracker();
    // Uncapped: only the downloader's own cap slows the download (uncapped,
    // it ends before its first record of pieces is due).
    let _seeder = peer("1", &seeds, &addr);

    let (get, printed) = capped_get_under_way(&downloads, &addr);
    interrupt_and_check_the_pieces_are_kept(get, printed, &downloads, "big.bin", 3_000_000);
}

#[test]
fn a_swarm_get_says_once_in_its_own_words_that_it_goes_on_without_the_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    let content = pattern(5_000_000);
    std::fs::write(seeds.join("big.bin"), &content).unwrap();
    let (mut tracker, addr) = tracker();
    let _seeder = peer("1", &seeds, &addr);
    // Capped, so the download outlasts the tracker by seconds (it asks the
    // tracker for more peers every second meanwhile, and so finds it gone).
    let (mut get, mut printed) = capped_get_under_way(&downloads, &addr);

    tracker.child.kill().unwrap();
    tracker.child.wait().unwrap();
    let status = get.wait_within(Duration::from_secs(60)).expect("get ends");
    printed.extend(get.rest().lines().map(str::to_owned));
    let stdout = printed.join("\n");
    assert!(status.success(), "{stdout}{}", get.stderr());
    let warnings: Vec<&String> = (printed.iter())
        .filter(|line| line.starts_with("big.bin: warning: the tracker cannot be reached ("))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}{}", get.stderr());
    assert!(warnings[0].ends_with("); going on with the peers it knows"), "{stdout}");
    assert!(stdout.contains("big.bin: 5000000 bytes from peer 1"), "{stdout}");
    assert!(
        !get.stderr().contains("WARN"),
        "the log said it again: {}",
        get.stderr()
    );
    assert_eq!(std::fs::read(downloads.join("big.bin")).unwrap(), content);
}

/// Starts `phile get big.bin` into `downloads` (as client 2), held to
/// 1 MB/s so that it takes seconds, and waits until it has recorded
/// verified pieces; returns it with the lines it printed meanwhile.
fn capped_get_under_way(downloads: &Path, tracker: &str) -> (Running, Vec<String>) {
    let mut get = Running::start(&get_args(
        &["big.bin"],
        "2",
        downloads,
        tracker,
        &["--max-download", "1M"],
    ));
    let printed = wait_for_recorded_pieces(&mut get, downloads, "big.bin");
    (get, printed)
}

/// `phile get NAMES... --id ID --dir DIR --tracker ADDR` plus `extra`.
fn get_args<'a>(names: &[&'a str], id: &'a str, dir: &'a Path, tracker: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["get"];
    args.extend_from_slice(names);
    args.extend_from_slice(&["--id", id, "--dir", dir.to_str().unwrap(), "--tracker", tracker]);
    args.extend_from_slice(extra);
    args
}

#[test]
fn two_gets_into_one_folder_keep_each_others_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    std::fs::write(seeds.join("small.txt"), "small").unwrap();
    let (_tracker, addr) = tracker();
    let _seeder = peer("3", &seeds, &addr);
    let big = pattern(1_000_000);
    let holder = Holder::announce(&addr, 1, "big.bin", big.clone());

    // The first `get` is half-way through big.bin...
    let mut first = Running::start(&get_args(&["big.bin"], "2", &downloads, &addr, &["--single"]));
    let connection = holder.begin(1000);
    assert!(first.line().starts_with("big.bin: fetching"));
    let partial = raw_entries(&downloads);
    assert!(
        partial.len() == 1 && partial[0].starts_with(".big.bin.") && partial[0].ends_with(".phile-part"),
        "{partial:?}"
    );

    // ...when a second one starts in the same folder and runs to the end.
    let second = phile(&get_args(&["small.txt"], "4", &downloads, &addr, &[]));
    assert!(
        second.status.success(),
        "{}{}",
        text(&second.stdout),
        text(&second.stderr)
    );
    assert_eq!(
        raw_entries(&downloads),
        [partial[0].clone(), "small.txt".to_owned()],
        "the second get's start-up touched the first one's download"
    );

    holder.finish(connection, 1000);
    let status = first.wait_within(Duration::from_secs(60)).expect("the first get ends");
    let stdout = first.rest();
    assert!(status.success(), "{stdout}{}", first.stderr());
    assert!(stdout.contains("big.bin: 1000000 bytes from peer 1"), "{stdout}");
    assert_eq!(
        raw_entries(&downloads),
        ["big.bin", "small.txt"],
        "something was left behind"
    );
    assert_eq!(std::fs::read(downloads.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read_to_string(downloads.join("small.txt")).unwrap(), "small");
}

#[test]
fn get_never_replaces_a_different_file_unless_told_and_skips_identical_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    for (name, content) in [("same.txt", "hello"), ("mine.txt", "theirs"), ("new.txt", "fresh")] {
        std::fs::write(seeds.join(name), content).unwrap();
    }
    std::fs::write(downloads.join("same.txt"), "hello").unwrap();
    std::fs::write(downloads.join("mine.txt"), "my own, different").unwrap();
    let (_tracker, addr) = tracker();
    let _seeder = peer("1", &seeds, &addr);

    let names = ["same.txt", "mine.txt", "new.txt", "same.txt", "new.txt"];
    let got = phile(&get_args(&names, "2", &downloads, &addr, &[]));
    let stdout = text(&got.stdout);
    assert_eq!(got.status.code(), Some(1), "{stdout}{}", text(&got.stderr));
    assert!(
        stdout.contains(
            "same.txt: already here (5 bytes, sha1 aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d), not fetched again"
        ),
        "{stdout}"
    );
    let mine = downloads.join("mine.txt");
    assert!(
        stdout.contains(&format!(
            "mine.txt: not fetched: {} already exists with other content; use --overwrite to replace it",
            mine.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("new.txt: 5 bytes from peer 1"), "{stdout}");
    // A name given twice is fetched once, and reported once.
    let count = |prefix: &str| stdout.lines().filter(|line| line.starts_with(prefix)).count();
    assert_eq!(count("new.txt: 1/1 pieces"), 1, "{stdout}");
    assert_eq!(count("new.txt: 5 bytes"), 1, "{stdout}");
    assert_eq!(count("same.txt"), 1, "{stdout}");
    assert!(
        text(&got.stderr).contains("1 of 3 files did not arrive"),
        "{}",
        text(&got.stderr)
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "my own, different");

    let replaced = phile(&get_args(&["mine.txt"], "2", &downloads, &addr, &["--overwrite"]));
    assert!(replaced.status.success(), "{}", text(&replaced.stdout));
    assert!(
        text(&replaced.stdout).contains("; it replaced the file of other content that was there (--overwrite)"),
        "{}",
        text(&replaced.stdout)
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "theirs");
    assert_eq!(raw_entries(&downloads), ["mine.txt", "new.txt", "same.txt"]);
}

#[test]
fn a_file_that_appears_during_its_download_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, addr) = tracker();
    let holder = Holder::announce(&addr, 1, "x.bin", pattern(100_000));
    let mut get = Running::start(&get_args(&["x.bin"], "2", dir.path(), &addr, &["--single"]));
    let connection = holder.begin(10);
    assert!(get.line().starts_with("x.bin: fetching"));
    // The check before fetching found nothing; now someone puts a file there.
    std::fs::write(dir.path().join("x.bin"), "written meanwhile").unwrap();
    holder.finish(connection, 10);
    let status = get.wait_within(Duration::from_secs(60)).expect("get ends");
    let stdout = get.rest();
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("already exists with other content (it appeared while the download ran; the download was dropped); use --overwrite"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("x.bin")).unwrap(),
        "written meanwhile"
    );
    assert_eq!(
        raw_entries(dir.path()),
        ["x.bin"],
        "the dropped download was left behind"
    );
}

/// In a swarm the download is checked whole before it would be put in
/// place: it is kept, and `--overwrite` then stores it at once.
#[test]
fn a_swarm_download_whose_name_is_taken_meanwhile_is_kept_for_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (seeds, downloads) = seeds_and_downloads(dir.path());
    let content = pattern(1_000_000);
    std::fs::write(seeds.join("x.bin"), &content).unwrap();
    let (_tracker, addr) = tracker();
    let _seeder = peer_with("1", &seeds, &addr, &["--max-upload", "400K"]);
    let mut get = Running::start(&get_args(&["x.bin"], "2", &downloads, &addr, &[]));
    assert!(get.line().contains("pieces, drawing from"));
    // The check before fetching found nothing; now someone puts a file there.
    std::fs::write(downloads.join("x.bin"), "written meanwhile").unwrap();
    let status = get.wait_within(Duration::from_secs(60)).expect("get ends");
    let stdout = get.rest();
    assert_eq!(status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("is kept hidden, and the next attempt that may put it there stores it without fetching it again); use --overwrite"),
        "{stdout}"
    );
    // Asked again without --overwrite, it says the download is still kept.
    let again = phile(&get_args(&["x.bin"], "2", &downloads, &addr, &[]));
    assert!(
        text(&again.stdout)
            .contains("(what an earlier attempt fetched is kept hidden, for the next one); use --overwrite"),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(downloads.join("x.bin")).unwrap(),
        "written meanwhile"
    );

    let again = phile(&get_args(&["x.bin"], "2", &downloads, &addr, &["--overwrite"]));
    let stdout = text(&again.stdout);
    assert!(again.status.success(), "{stdout}{}", text(&again.stderr));
    assert!(stdout.contains("from the pieces an earlier attempt kept"), "{stdout}");
    assert_eq!(std::fs::read(downloads.join("x.bin")).unwrap(), content);
    assert_eq!(raw_entries(&downloads), ["x.bin"]);
}

#[test]
fn a_stored_file_is_a_success_when_the_tracker_restarts_mid_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut tracker, addr) = tracker();
    let content = pattern(2_000_000);
    let holder = Holder::announce(&addr, 1, "big.bin", content.clone());
    let mut get = Running::start(&get_args(&["big.bin"], "2", dir.path(), &addr, &["--single"]));
    let connection = holder.begin(1000);
    assert!(get.line().starts_with("big.bin: fetching"));

    // The tracker dies before the last bytes arrive, and comes back on the
    // same address, knowing nothing.
    tracker.child.kill().unwrap();
    tracker.child.wait().unwrap();
    let (_restarted, _) = tracker_at(&addr);
    holder.finish(connection, 1000);

    let status = get.wait_within(Duration::from_secs(60)).expect("get ends");
    let stdout = get.rest();
    assert!(status.success(), "{stdout}{}", get.stderr());
    assert!(stdout.contains("big.bin: 2000000 bytes from peer 1"), "{stdout}");
    assert!(
        stdout.contains("big.bin: warning: stored and verified, but the tracker could not be told"),
        "{stdout}"
    );
    assert!(!stdout.contains("failed"), "{stdout}");
    assert_eq!(std::fs::read(dir.path().join("big.bin")).unwrap(), content);
    assert_eq!(raw_entries(dir.path()), ["big.bin"]);
}

#[test]
fn sigterm_while_a_peer_hashes_a_big_file_stops_it_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_tracker, addr) = tracker();
    let mut seeder = peer("1", dir.path(), &addr);
    // A terabyte, sparse: it takes no disk, but hashing it takes many
    // minutes, far longer than the stop may.
    File::create(dir.path().join("huge.bin"))
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    assert_eq!(
        seeder.line(),
        "hashing huge.bin (1099511627776 bytes) before announcing it"
    );

    seeder.signal_stop();
    let exit = seeder.wait_within(Duration::from_secs(15));
    let stdout = seeder.rest();
    let exit = exit.unwrap_or_else(|| panic!("SIGTERM during a hash was ignored; stdout: {stdout}"));
    assert!(exit.success(), "{stdout}{}", seeder.stderr());
    assert!(stdout.starts_with("stopping: telling the tracker"), "{stdout}");
    // The goodbye reached the tracker: it forgot the peer at once.
    assert_eq!(status(&addr)["clients"].as_array().unwrap().len(), 0);
}

#[test]
fn remote_text_reaches_the_terminal_escaped() {
    /// A reason that would retitle the window, clear the screen and forge a
    /// line of output, if printed raw.
    const HOSTILE: &str = "\u{1b}]0;owned\u{7}\u{1b}[2J\nphile: forged line";
    let addr = fake_tracker(|request| match request {
        TrackerRequest::Lookup { .. } | TrackerRequest::Announce { .. } => TrackerReply::Refused {
            reason: HOSTILE.to_owned(),
        },
        _ => TrackerReply::Ack,
    });
    let escaped = "\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{a}phile: forged line";
    let dir = tempfile::tempdir().unwrap();

    // `get`: the tracker refuses the lookup.
    let got = phile(&get_args(&["x"], "2", dir.path(), &addr, &["--single"]));
    let (stdout, stderr) = (text(&got.stdout), text(&got.stderr));
    assert_eq!(got.status.code(), Some(1));
    assert!(
        stdout.contains(&format!("x: failed: the tracker refused: {escaped}")),
        "{stdout}"
    );
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(['\u{1b}', '\u{7}']),
            "raw control characters: {output:?}"
        );
        assert!(!output.contains("\nphile: forged"), "a forged line: {output:?}");
    }

    // `peer`: the tracker refuses an announce.
    std::fs::write(dir.path().join("f.txt"), "x").unwrap();
    let mut seeder = peer("3", dir.path(), &addr);
    seeder.signal_stop();
    assert!(seeder.wait_within(Duration::from_secs(30)).is_some_and(|s| s.success()));
    let (stdout, stderr) = (seeder.rest(), seeder.stderr());
    assert!(
        stderr.contains(&format!(
            "phile: not announcing f.txt: {escaped}; it is announced again"
        )),
        "{stderr}"
    );
    for output in [&stdout, &stderr] {
        assert!(
            !output.contains(['\u{1b}', '\u{7}']),
            "raw control characters: {output:?}"
        );
        assert!(!output.contains("\nphile: forged"), "a forged line: {output:?}");
    }
}

#[test]
fn a_peer_refused_a_name_announces_it_once_the_name_is_free() {
    let (_tracker, addr) = tracker();
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("1"), dir.path().join("2"));
    for (folder, content) in [(&first, "one"), (&second, "two")] {
        std::fs::create_dir(folder).unwrap();
        std::fs::write(folder.join("f.txt"), content).unwrap();
    }
    // The name is taken: peer 2 is refused.
    let mut holder = peer("1", &first, &addr);
    let mut other = peer("2", &second, &addr);
    // Peer 1 leaves: the name is free, and peer 2 announces its file at
    // its next rescan, unchanged, without being told.
    holder.signal_stop();
    assert!(holder.wait_within(Duration::from_secs(30)).is_some_and(|s| s.success()));
    assert_eq!(other.line(), "announced f.txt (refused before)");
}

#[test]
fn status_into_a_pipe_closed_early_is_no_error() {
    // As `phile status | head -1` does once head has its line.
    let (_tracker, addr) = tracker();
    for json in [false, true] {
        let mut args = vec!["status", "--tracker", &addr];
        if json {
            args.push("--json");
        }
        let mut status = Command::new(env!("CARGO_BIN_EXE_phile"))
            .args(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(status.stdout.take());
        let output = status.wait_with_output().unwrap();
        let stderr = text(&output.stderr);
        assert!(output.status.success(), "json {json}: {stderr}");
        assert!(!stderr.contains("panicked"), "json {json}: {stderr}");
    }
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

#[test]
fn a_peer_whose_output_nobody_reads_goes_on_serving() {
    // As `phile peer ... | head -1` does once head has its line: every
    // later line the peer prints goes to a closed pipe.
    let (_tracker, addr) = tracker();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    let folder = dir.path().to_str().unwrap();
    let stderr = tempfile::NamedTempFile::new().unwrap();
    let args = ["peer", "--id", "1", "--dir", folder, "--tracker", &addr];
    let mut peer = Command::new(env!("CARGO_BIN_EXE_phile"))
        .args(args)
        .args(["--listen", "127.0.0.1:0", "--rescan", "1"])
        .stdout(Stdio::piped())
        .stderr(stderr.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(peer.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("phile peer 1 serving"), "{first}");
    // The reader is gone. Withdrawing a.txt prints a line, into the pipe.
    std::fs::remove_file(dir.path().join("a.txt")).unwrap();
    wait_for_files(&addr, &[]);
    // The peer went on past that line: it announces a file added later.
    std::fs::write(dir.path().join("b.txt"), "b").unwrap();
    wait_for_files(&addr, &["b.txt"]);
    assert!(peer.try_wait().unwrap().is_none(), "the peer exited");
    let errors = std::fs::read_to_string(stderr.path()).unwrap();
    assert!(!errors.contains("panicked"), "{errors}");
    let _ = peer.kill();
    let _ = peer.wait();
}

/// Waits until the tracker at `tracker` knows exactly the files `names`
/// (for at most `LINE_WAIT`).
fn wait_for_files(tracker: &str, names: &[&str]) {
    let deadline = Instant::now() + LINE_WAIT;
    loop {
        let known: Vec<String> = status(tracker)["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|file| file["name"].as_str().unwrap().to_owned())
            .collect();
        if known == names {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the tracker still knows {known:?}, not {names:?}"
        );
        // Polled: nothing tells an outsider when the tracker learns a file.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_tracker_records_no_more_files_than_max_files() {
    let (_tracker, addr) = tracker_with(&["--listen", "127.0.0.1:0", "--max-files", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("1"), dir.path().join("2"));
    for (folder, file) in [(&first, "a.txt"), (&second, "b.txt")] {
        std::fs::create_dir(folder).unwrap();
        std::fs::write(folder.join(file), file).unwrap();
    }
    let _holder = peer("1", &first, &addr);
    let other = peer("2", &second, &addr);
    let errors = other.stderr();
    assert!(
        errors.contains("not announcing b.txt: the tracker already records 1 files over all its clients"),
        "{errors}"
    );
    assert_eq!(status(&addr)["files"].as_array().unwrap().len(), 1);
}

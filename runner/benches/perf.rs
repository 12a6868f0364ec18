//! phile's performance, measured against baselines in the same run.
//!
//! ```text
//! cargo bench -p phile-runner --bench perf               # the full run (1 and 4 GiB files on tmpfs and disk, ...)
//! cargo bench -p phile-runner --bench perf -- --size 1G  # one file size only
//! cargo bench -p phile-runner --bench perf -- --runs 5   # repeat each big-file measurement 5 times
//! cargo bench -p phile-runner --bench perf -- --smoke    # tiny sizes: checks the harness works
//! cargo bench -p phile-runner --bench perf -- --bin-dir DIR    # measure another build's phile and phile-run
//! cargo bench -p phile-runner --bench perf -- --only lookups   # one section: big-file, default-scenario,
//!                                                              # scenarios, many-peers, simulation, swarm,
//!                                                              # scheduler, bittorrent, tracker-memory, lookups
//! ```
//!
//! Repeated measurements print as `median (lowest-highest)`: the machine may
//! be shared, so one run proves little.
//!
//! Every figure is printed next to its baseline and their ratio; nothing is
//! asserted about time (CI runs `--smoke` through `tests/bench_smoke.rs`
//! so the harness cannot rot). It creates its own data in a temporary
//! folder and installs nothing.

#![allow(dead_code)] // parts are used only by the smoke test, or only by main

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha1::{Digest as _, Sha1};

const MIB: f64 = 1024.0 * 1024.0;

/// What to measure, and how much.
#[derive(Clone, Debug)]
pub struct Config {
    /// Sizes of the big file.
    pub sizes: Vec<u64>,
    /// How many times each big-file measurement runs.
    pub runs: usize,
    /// Runs of each shipped scenario.
    pub scenario_runs: usize,
    /// Runs of the default scenario.
    pub default_runs: usize,
    /// Client counts of the many-peers scenario.
    pub scale: Vec<usize>,
    /// Client counts of bench/sim_scale.rhai under `--sim`.
    pub sim_scale: Vec<usize>,
    /// Host counts of the simulator's sequential round trips.
    pub sim_sequential: Vec<usize>,
    /// Swarm set-ups (bench/swarm.rhai): the issue's, then the table of N.
    pub swarms: Vec<SwarmSetup>,
    /// Comparisons with aria2c (`bittorrent`).
    pub torrents: Vec<TorrentSetup>,
    /// Piece counts of a swarm download's plan (`scheduler`).
    pub plan_pieces: Vec<usize>,
    /// Registered clients for the tracker's memory.
    pub registered: usize,
    /// Concurrent connections for the lookup rate.
    pub connections: usize,
    /// How long to measure lookups.
    pub lookup_time: Duration,
    /// Where the binaries under test are.
    pub phile: PathBuf,
    pub phile_run: PathBuf,
    /// The scenarios folder.
    pub scenarios: PathBuf,
    /// Run the far ends of the baselines as threads, not processes (the
    /// smoke test runs inside a test binary, which cannot play them).
    pub helpers_in_threads: bool,
    /// Run only the sections whose name contains this (`--only`).
    pub only: Option<String>,
}

impl Config {
    fn full() -> Config {
        Config {
            sizes: vec![1 << 30, 4 << 30],
            runs: 3,
            scenario_runs: 5,
            default_runs: 20,
            scale: vec![100, 1000, 5000],
            sim_scale: vec![100, 1000, 10_000],
            sim_sequential: vec![1000, 10_000],
            swarms: SwarmSetup::full(),
            torrents: TorrentSetup::full(),
            plan_pieces: vec![4096, 16_384, 65_536],
            registered: 10_000,
            connections: 1000,
            lookup_time: Duration::from_secs(5),
            phile: PathBuf::from(env!("CARGO_BIN_EXE_phile")),
            phile_run: PathBuf::from(env!("CARGO_BIN_EXE_phile-run")),
            scenarios: Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios"),
            helpers_in_threads: false,
            only: None,
        }
    }

    /// Sizes small enough for CI: the harness runs end to end in seconds.
    pub fn smoke() -> Config {
        Config {
            sizes: vec![4 << 20],
            runs: 1,
            scenario_runs: 1,
            default_runs: 2,
            scale: vec![20, 40],
            sim_scale: vec![20, 40],
            sim_sequential: vec![20],
            swarms: SwarmSetup::smoke(),
            torrents: TorrentSetup::smoke(),
            plan_pieces: vec![256, 1024],
            registered: 200,
            connections: 20,
            lookup_time: Duration::from_millis(200),
            helpers_in_threads: true,
            ..Config::full()
        }
    }
}

/// One swarm measurement: a seeder and `downloaders` downloaders, all
/// capped, fetching one file at once (bench/swarm.rhai).
#[derive(Clone, Debug)]
pub struct SwarmSetup {
    /// Under --sim (virtual seconds) or over real TCP.
    pub sim: bool,
    pub downloaders: usize,
    pub bytes: u64,
    /// Caps, bytes per second.
    pub seeder_up: u64,
    pub up: u64,
    pub down: u64,
    /// The piece size, if not the default (256 KiB).
    pub piece_size: Option<u64>,
    /// The issue's target for time / bound, if any.
    pub target: Option<f64>,
}

impl SwarmSetup {
    /// The issue's two set-ups (16 MiB to 31 downloaders under --sim, 8 MiB
    /// to 7 over TCP), then swarms of 4, 16, 64 and 128 under --sim and 4
    /// and 16 over TCP with the same caps, and one of 1,000 under --sim
    /// with a smaller file.
    fn full() -> Vec<SwarmSetup> {
        let sim = |downloaders, target| SwarmSetup {
            sim: true,
            downloaders,
            bytes: 16 << 20,
            seeder_up: 4_000_000,
            up: 2_000_000,
            down: 8_000_000,
            piece_size: None,
            target,
        };
        let tcp = |downloaders, target| SwarmSetup {
            sim: false,
            downloaders,
            bytes: 8 << 20,
            seeder_up: 20_000_000,
            up: 10_000_000,
            down: 10_000_000,
            piece_size: None,
            target,
        };
        let small_pieces = |setup: SwarmSetup| SwarmSetup {
            piece_size: Some(64 << 10),
            ..setup
        };
        vec![
            sim(31, Some(1.3)),
            tcp(7, Some(1.6)),
            small_pieces(sim(31, Some(1.3))),
            small_pieces(tcp(7, Some(1.6))),
            sim(4, None),
            sim(16, None),
            sim(64, None),
            sim(128, None),
            // A thousand downloaders: 4 MiB in 64 KiB pieces, as many
            // pieces as the 16 MiB file has. About a minute of wall time
            // for the swarm alone, and 1.6 GB of memory at its peak.
            SwarmSetup {
                bytes: 4 << 20,
                ..small_pieces(sim(1000, None))
            },
            tcp(4, None),
            tcp(16, None),
        ]
    }

    fn smoke() -> Vec<SwarmSetup> {
        let small = |sim| SwarmSetup {
            sim,
            downloaders: 3,
            bytes: 1 << 20,
            seeder_up: 4_000_000,
            up: 2_000_000,
            down: 8_000_000,
            piece_size: Some(64 << 10),
            target: None,
        };
        vec![small(true), small(false)]
    }
}

/// One line of the results table.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: String,
    pub phile: String,
    pub baseline: String,
    pub ratio: String,
}

fn row(
    what: impl Into<String>,
    phile: impl Into<String>,
    baseline: impl Into<String>,
    ratio: impl Into<String>,
) -> Row {
    Row {
        what: what.into(),
        phile: phile.into(),
        baseline: baseline.into(),
        ratio: ratio.into(),
    }
}

/// Runs every measurement and returns the table.
pub fn run(config: &Config) -> Vec<Row> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let work = tempfile::tempdir().expect("a temporary folder");
    // Scenarios create and delete thousands of small files; on a disk file
    // system that measures the file system (ext4's inode allocation shows
    // at the top of a profile). A RAM-backed folder measures phile.
    let memory = tempfile::tempdir_in("/dev/shm").ok();
    let scenario_root = memory.as_ref().map_or(work.path(), |dir| dir.path());
    let wanted = |section: &str| config.only.as_deref().is_none_or(|only| section.contains(only));
    let mut rows = Vec::new();
    if wanted("big-file") {
        let mut places = Vec::new();
        if let Some(memory) = &memory {
            places.push(Place {
                name: "tmpfs",
                dir: memory.path().to_owned(),
                syncs: false,
            });
        }
        places.push(Place {
            name: "disk",
            dir: work.path().to_owned(),
            syncs: true,
        });
        for &size in &config.sizes {
            rows.push(sha1_row(config, size));
            for place in &places {
                rows.extend(big_file(config, size, place));
            }
        }
    }
    if wanted("bittorrent") {
        let place = if memory.is_some() { "tmpfs" } else { "disk" };
        rows.extend(bittorrent(config, scenario_root, place));
    }
    if wanted("default-scenario") {
        rows.extend(default_scenario(config, scenario_root));
    }
    if wanted("scenarios") {
        rows.extend(shipped_scenarios(config, scenario_root));
    }
    if wanted("many-peers") {
        rows.extend(many_peers(config, scenario_root));
    }
    if wanted("simulation") {
        rows.extend(simulation(config, scenario_root));
    }
    if wanted("swarm") {
        rows.extend(swarms(config, scenario_root));
    }
    if wanted("scheduler") {
        rows.extend(scheduler(config));
    }
    if wanted("tracker-memory") {
        rows.push(tracker_memory(config));
    }
    if wanted("lookups") {
        rows.extend(lookup_rate(config));
    }
    rows
}

fn print_table(rows: &[Row]) {
    println!("| measure | phile | baseline | ratio |");
    println!("|---|---|---|---|");
    for row in rows {
        println!("| {} | {} | {} | {} |", row.what, row.phile, row.baseline, row.ratio);
    }
}

const USAGE: &str =
    "usage: cargo bench -p phile-runner --bench perf -- [--smoke] [--size SIZE] [--runs N] [--only SECTION]
  --smoke         tiny sizes: checks the harness works, in seconds
  --size SIZE     size of the big file (default: 1G, then 4G; K, M, G suffixes)
  --runs N        how many times each big-file measurement runs (default 3)
  --only SECTION  big-file, default-scenario, scenarios, many-peers, simulation, swarm, bittorrent, tracker-memory or lookups
  --bin-dir DIR   measure the phile and phile-run binaries in DIR (another build) instead of this build's";

fn parse_size(text: &str) -> u64 {
    let text = text.trim().to_ascii_uppercase();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let number: u64 = number
        .parse()
        .expect("--size takes a number with an optional K, M or G");
    number
        * match unit.trim_end_matches("IB").trim_end_matches('B') {
            "" => 1,
            "K" => 1 << 10,
            "M" => 1 << 20,
            "G" => 1 << 30,
            other => panic!("unknown size unit {other}"),
        }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut config = Config::full();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Helper modes: this binary is also the far end of a baseline.
            "--copy-send" => return copy_send(&args.next().unwrap(), Path::new(&args.next().unwrap())),
            "--echo-server" => return echo_server(),
            "--sha1-speed" => return println!("{}", sha1_speed(args.next().unwrap().parse().unwrap()).as_nanos()),
            "--smoke" => config = Config::smoke(),
            "--size" => config.sizes = vec![parse_size(&args.next().expect("--size takes a size"))],
            "--runs" => {
                config.runs = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|&n| n > 0)
                    .expect("--runs takes a positive number")
            }
            "--only" => config.only = args.next(),
            "--bin-dir" => {
                // Another build's binaries, to compare it with this one.
                let dir = PathBuf::from(args.next().expect("--bin-dir takes a folder"));
                (config.phile, config.phile_run) = (dir.join("phile"), dir.join("phile-run"));
            }
            "--bench" => {} // cargo passes it
            "--help" | "-h" => return println!("{USAGE}"),
            other => {
                eprintln!("perf: unknown argument {other}\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("phile performance, {cores} cores, release build\n");
    print_table(&run(&config));
}

// ---------------------------------------------------------------- processes

/// A child process, killed when dropped.
struct Daemon(Child, BufReader<std::process::ChildStdout>);

impl Daemon {
    fn start(program: &Path, args: &[&str]) -> Daemon {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let out = BufReader::new(child.stdout.take().unwrap());
        Daemon(child, out)
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.1.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    /// Reads a `phile peer`'s lines until it says it serves: its files
    /// are hashed and announced (a big file is hashed first, and says so).
    fn wait_until_serving(&mut self) {
        loop {
            let line = self.line();
            assert!(!line.is_empty(), "the peer ended before it served");
            if line.starts_with("phile peer") {
                return;
            }
        }
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Peak resident memory of a running process, in MiB (from /proc).
fn peak_rss(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// Runs `program` to its end; returns its wall time and peak memory (MiB).
// The child is reaped by `wait4`, which std does not offer but which reports
// the child's own peak memory.
#[allow(clippy::zombie_processes)]
fn run_measured(program: &Path, args: &[&str]) -> (Duration, f64, bool) {
    let started = Instant::now();
    let child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid pointers.
    let waited = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let took = started.elapsed();
    let ok = waited > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (took, usage.ru_maxrss as f64 / 1024.0, ok)
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn tracker(config: &Config) -> (Daemon, String) {
    let mut tracker = Daemon::start(&config.phile, &["tracker", "--listen", "127.0.0.1:0", "--seed", "1"]);
    let line = tracker.line();
    let addr = line["phile tracker listening on ".len()..]
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (tracker, addr)
}

// ---------------------------------------------------------------- big file

/// A file system the big file is moved on.
struct Place {
    /// How the table names it.
    name: &'static str,
    /// A folder on it, for this run only.
    dir: PathBuf,
    /// Whether writes there must be synced to count as stored (a disk, not
    /// tmpfs): the baseline then syncs too, as phile does.
    syncs: bool,
}

fn write_test_file(path: &Path, size: u64) {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut block = vec![0u8; 1 << 20];
    let mut state = 0x9e3779b97f4a7c15u64;
    for byte in block.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let mut left = size;
    let mut counter = 0u64;
    while left > 0 {
        // Vary every block a little, so no layer can deduplicate them.
        block[..8].copy_from_slice(&counter.to_le_bytes());
        counter += 1;
        let n = block.len().min(left as usize);
        out.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    out.flush().unwrap();
    out.get_ref().sync_all().unwrap();
}

/// Flushes every dirty page to disk, so that no measurement pays for the
/// write-back of the one before.
fn settle_disk() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The sending end of the plain TCP copy (run in a child process): the
/// kernel sends the file from its page cache (`sendfile`), as a tuned
/// server would.
fn copy_send(addr: &str, path: &Path) {
    use std::os::fd::AsRawFd;
    let socket = TcpStream::connect(addr).unwrap();
    let file = std::fs::File::open(path).unwrap();
    let mut left = file.metadata().unwrap().len();
    while left > 0 {
        // SAFETY: both descriptors are open for the whole call; a null
        // offset makes sendfile use (and advance) the file's own position.
        let sent = unsafe { libc::sendfile(socket.as_raw_fd(), file.as_raw_fd(), std::ptr::null_mut(), 1 << 30) };
        assert!(sent > 0, "sendfile failed: {}", std::io::Error::last_os_error());
        left -= sent as u64;
    }
}

/// Copies everything from `from` to `to` through one reused 1 MiB buffer:
/// the receiving end of the plain copy (`recv_into`, then `write`).
fn pump(from: &mut impl Read, to: &mut impl Write) {
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buffer).unwrap();
        if n == 0 {
            break;
        }
        to.write_all(&buffer[..n]).unwrap();
    }
}

/// A plain TCP copy of `source` between two processes, written to `target`
/// (and synced if `sync`, like a download): the speed limit of the link
/// and the file system, with no verification.
fn tcp_copy(config: &Config, source: &Path, target: &Path, sync: bool) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let sender = if config.helpers_in_threads {
        let (addr, source) = (addr.clone(), source.to_owned());
        let thread = std::thread::spawn(move || copy_send(&addr, &source));
        Err(thread)
    } else {
        let me = std::env::current_exe().unwrap();
        Ok(Command::new(me)
            .args(["--copy-send", &addr, source.to_str().unwrap()])
            .spawn()
            .unwrap())
    };
    let (mut socket, _) = listener.accept().unwrap();
    let mut file = std::fs::File::create(target).unwrap();
    pump(&mut socket, &mut file);
    if sync {
        file.sync_data().unwrap();
    }
    let took = started.elapsed();
    match sender {
        Ok(mut process) => drop(process.wait()),
        Err(thread) => thread.join().unwrap(),
    }
    took
}

/// SHA-1 over `size` bytes on one core, 256 KiB at a time from a buffer of
/// up to 64 MiB (bigger than the caches, as a stream is): the speed limit
/// of verification.
fn sha1_speed(size: u64) -> Duration {
    let len = (64 << 20).min(size) as u32;
    let buffer: Vec<u8> = (0..len).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let started = Instant::now();
    let mut hasher = Sha1::new();
    let mut left = size;
    for chunk in buffer.chunks(256 << 10).cycle() {
        if left == 0 {
            break;
        }
        let n = chunk.len().min(left as usize);
        hasher.update(&chunk[..n]);
        left -= n as u64;
    }
    std::hint::black_box(hasher.finalize());
    started.elapsed()
}

fn rate(size: u64, took: Duration) -> f64 {
    size as f64 / MIB / took.as_secs_f64()
}

/// The median, lowest and highest of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (sorted[sorted.len() / 2], sorted[0], sorted[sorted.len() - 1])
}

/// `median (lowest-highest)`, or one figure for one run.
fn figure(values: &[f64], decimals: usize) -> String {
    let (median, low, high) = spread(values);
    if values.len() == 1 {
        format!("{median:.decimals$}")
    } else {
        format!("{median:.decimals$} ({low:.decimals$}–{high:.decimals$})")
    }
}

/// [`sha1_speed`], in a process of its own: its 64 MiB buffer would count
/// in the peak memory of every process this one starts later (a child
/// started with vfork inherits its parent's high-water mark).
fn sha1_time(config: &Config, size: u64) -> Duration {
    if config.helpers_in_threads {
        return sha1_speed(size);
    }
    let me = std::env::current_exe().unwrap();
    let output = Command::new(me)
        .args(["--sha1-speed", &size.to_string()])
        .output()
        .unwrap();
    let nanos = String::from_utf8_lossy(&output.stdout).trim().parse().unwrap();
    Duration::from_nanos(nanos)
}

fn sha1_row(config: &Config, size: u64) -> Row {
    let hash = rate(size, sha1_time(config, size));
    row(
        format!("{} SHA-1 on one core, MiB/s", human_size(size)),
        "",
        format!("{hash:.0}"),
        "",
    )
}

/// A scenario that writes a random file of `size` bytes on one client and
/// downloads it to another, printing the download's time.
fn download_script(size: u64) -> String {
    format!(
        "let t = tracker(0);
let seeder = client(1);
let downloader = client(2);
seeder.register(t);
downloader.register(t);
seeder.write_random(\"big.bin\", {size});
seeder.upload(\"big.bin\");
let r = downloader.download(\"big.bin\");
assert(r.ok, \"the download failed\");
print(`download secs ${{r.secs}}`);
"
    )
}

/// Runs `program` to its end, keeping its standard output; returns its wall
/// time, peak memory (MiB), whether it succeeded, and what it printed.
// Reaped by `wait4`, which reports the child's own peak memory.
#[allow(clippy::zombie_processes)]
fn run_captured(program: &Path, args: &[&str]) -> (Duration, f64, bool, String) {
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let mut output = String::new();
    child.stdout.take().unwrap().read_to_string(&mut output).unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; status and usage are valid pointers.
    let waited = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let took = started.elapsed();
    let ok = waited > 0 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    (took, usage.ru_maxrss as f64 / 1024.0, ok, output)
}

/// One scenario download of `size` bytes in `root`: the download's own
/// time (from the script), and the peak memory of the whole `phile-run`.
fn scenario_download(config: &Config, size: u64, root: &Path) -> (Duration, f64) {
    std::fs::create_dir_all(root).unwrap();
    let script = root.join("download.rhai");
    std::fs::write(&script, download_script(size)).unwrap();
    let clients = root.join("clients");
    let (_, rss, ok, output) = run_captured(
        &config.phile_run,
        &[
            script.to_str().unwrap(),
            "--root",
            clients.to_str().unwrap(),
            "--ephemeral-ports",
            "-q",
        ],
    );
    assert!(ok, "the download scenario failed:\n{output}");
    let secs: f64 = output
        .lines()
        .find_map(|line| line.strip_prefix("download secs "))
        .and_then(|secs| secs.trim().parse().ok())
        .unwrap_or_else(|| panic!("no download time in {output:?}"));
    let _ = std::fs::remove_dir_all(root);
    (Duration::from_secs_f64(secs), rss)
}

/// Moves a file of `size` bytes on `place`, `config.runs` times each: a
/// plain TCP copy, `phile get` from a `phile peer`, and a scenario download
/// in `phile-run`. The copies and `phile get` alternate, so a slow moment
/// of the machine hits both alike.
fn big_file(config: &Config, size: u64, place: &Place) -> Vec<Row> {
    let label = format!("{} on {}", human_size(size), place.name);
    let base = place.dir.join(format!("big-{size}"));
    let (seeds, downloads, copies) = (base.join("seeds"), base.join("downloads"), base.join("copies"));
    for dir in [&seeds, &downloads, &copies] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let source = seeds.join("big.bin");
    write_test_file(&source, size);

    let (tracker, addr) = tracker(config);
    let mut seeder = Daemon::start(
        &config.phile,
        &[
            "peer",
            "--id",
            "1",
            "--dir",
            seeds.to_str().unwrap(),
            "--tracker",
            &addr,
            "--listen",
            "127.0.0.1:0",
        ],
    );
    seeder.wait_until_serving();

    let (mut copy, mut get, mut get_ratio, mut get_rss) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..config.runs {
        let target = copies.join("big.bin");
        settle_disk();
        let copied = rate(size, tcp_copy(config, &source, &target, place.syncs));
        std::fs::remove_file(&target).unwrap();
        settle_disk();
        let id = (2 + run).to_string();
        let (took, rss, ok) = run_measured(
            &config.phile,
            &[
                "get",
                "big.bin",
                "--id",
                &id,
                "--dir",
                downloads.to_str().unwrap(),
                "--tracker",
                &addr,
                "--grace",
                "0",
                // The whole-file path: one holder, `sendfile`, one hash
                // pass. The swarm download is set against aria2c in the
                // `bittorrent` section.
                "--single",
            ],
        );
        assert!(ok, "phile get failed");
        std::fs::remove_file(downloads.join("big.bin")).unwrap();
        copy.push(copied);
        get.push(rate(size, took));
        get_ratio.push(rate(size, took) / copied);
        get_rss.push(rss);
    }
    let seeder_rss = peak_rss(seeder.pid());
    drop((seeder, tracker));
    // Room for the scenario's two copies of the file (tmpfs is memory).
    let _ = std::fs::remove_dir_all(&base);

    let (mut scenario, mut scenario_rss) = (Vec::new(), Vec::new());
    for _ in 0..config.runs {
        settle_disk();
        let (took, rss) = scenario_download(config, size, &base.join("scenario"));
        scenario.push(rate(size, took));
        scenario_rss.push(rss);
    }
    let copy_median = spread(&copy).0;
    let scenario_ratio: Vec<f64> = scenario.iter().map(|rate| rate / copy_median).collect();
    let synced = if place.syncs { ", synced" } else { "" };
    vec![
        row(
            format!("{label}: plain TCP copy between two processes (sendfile to recv{synced}), MiB/s"),
            "",
            figure(&copy, 0),
            "",
        ),
        row(
            format!("{label}: `phile get --single` download (verified{synced}), MiB/s"),
            figure(&get, 0),
            format!("{} (TCP copy, same runs)", figure(&copy, 0)),
            figure(&get_ratio, 2),
        ),
        row(
            format!("{label}: scenario download in `phile-run` (verified{synced}), MiB/s"),
            figure(&scenario, 0),
            format!("{copy_median:.0} (TCP copy, median)"),
            figure(&scenario_ratio, 2),
        ),
        row(
            format!("{label}: peak RSS, seeder / `phile get` / `phile-run` (both nodes), MiB"),
            format!(
                "{seeder_rss:.0} / {:.0} / {:.0}",
                spread(&get_rss).2,
                spread(&scenario_rss).2
            ),
            "64 (target)",
            "",
        ),
    ]
}

// ---------------------------------------------------------------- BitTorrent

/// One comparison with a real BitTorrent client: a seeder and `downloaders`
/// downloaders of one file of `bytes`, all on tmpfs over loopback.
#[derive(Clone, Debug)]
pub struct TorrentSetup {
    pub bytes: u64,
    pub downloaders: usize,
    /// The seeder's upload cap, bytes per second, if any.
    pub seeder_up: Option<u64>,
}

impl TorrentSetup {
    /// The issue's two set-ups, then four downloaders of a seeder capped
    /// at 20 MB/s, where only trading among downloaders goes faster.
    fn full() -> Vec<TorrentSetup> {
        let setup = |bytes, downloaders, seeder_up| TorrentSetup {
            bytes,
            downloaders,
            seeder_up,
        };
        vec![
            setup(1 << 30, 1, None),
            setup(256 << 20, 4, None),
            setup(64 << 20, 4, Some(20_000_000)),
        ]
    }

    fn smoke() -> Vec<TorrentSetup> {
        vec![TorrentSetup {
            bytes: 4 << 20,
            downloaders: 2,
            seeder_up: None,
        }]
    }

    fn label(&self) -> String {
        let cap = self.seeder_up.map_or(String::new(), |up| {
            format!(", seeder capped at {} MB/s", up / 1_000_000)
        });
        let downloaders = match self.downloaders {
            1 => "one downloader".to_owned(),
            n => format!("{n} downloaders at once"),
        };
        format!("{} to {downloaders}{cap}", human_size(self.bytes))
    }
}

/// Whether `tool` is on the PATH.
fn installed(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// A port free at the time of asking, for programs that cannot be told to
/// pick their own and say which.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `program` to its end and returns what it printed; panics if it
/// fails.
fn output_of(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What every aria2c of the comparison is told: BitTorrent through the
/// tracker only (no DHT, peer exchange or local discovery, which phile does
/// not have either), no preallocation, quiet.
const ARIA2_COMMON: &[&str] = &[
    "--enable-dht=false",
    "--enable-dht6=false",
    "--enable-peer-exchange=false",
    "--bt-enable-lpd=false",
    "--disable-ipv6=true",
    "--file-allocation=none",
    "--summary-interval=0",
    "--console-log-level=error",
    "--show-console-readout=false",
    "--auto-save-interval=0",
];

/// Where each aria2c listens: it takes a free port of the range itself, so
/// two of them never race for one.
const ARIA2_PORTS: &str = "--listen-port=20000-40000";

/// A BitTorrent swarm ready for downloaders: opentracker, and an aria2c
/// seeding the file. Both are killed when it is dropped.
struct Torrent {
    torrent: PathBuf,
    _tracker: Daemon,
    _seeder: Daemon,
}

impl Torrent {
    /// Makes a torrent of `file` (256 KiB pieces, as phile's default) and
    /// starts a tracker and a seeder for it; returns once the tracker
    /// lists the seeder.
    fn start(file: &Path, work: &Path, seeder_up: Option<u64>) -> Torrent {
        let port = free_port();
        let torrent = work.join("file.torrent");
        let announce = format!("http://127.0.0.1:{port}/announce");
        output_of(
            "mktorrent",
            &[
                "-a",
                &announce,
                "-l",
                "18",
                "-o",
                torrent.to_str().unwrap(),
                file.to_str().unwrap(),
            ],
        );
        let info_hash = output_of("aria2c", &["-S", torrent.to_str().unwrap()])
            .lines()
            .find_map(|line| line.strip_prefix("Info Hash: "))
            .expect("aria2c -S gives the info hash")
            .trim()
            .to_owned();
        // Debian's opentracker serves only the torrents of its whitelist. It
        // changes its root to `-d` first, so the list's path is inside it.
        std::fs::write(work.join("whitelist"), format!("{info_hash}\n")).unwrap();
        let port_text = port.to_string();
        let tracker = Daemon::start(
            Path::new("opentracker"),
            &[
                "-i",
                "127.0.0.1",
                "-p",
                &port_text,
                "-P",
                &port_text,
                "-d",
                work.to_str().unwrap(),
                "-w",
                "/whitelist",
            ],
        );
        let cap = format!("--max-upload-limit={}", seeder_up.unwrap_or(0));
        let listen = ARIA2_PORTS;
        let dir = format!("--dir={}", file.parent().unwrap().display());
        let mut args: Vec<&str> = ARIA2_COMMON.to_vec();
        // Seeds until killed, without hashing the file first (phile's
        // seeder hashed it before the clock starts too).
        args.extend(["--seed-ratio=0.0", "--bt-seed-unverified=true", &cap, listen, &dir]);
        args.push(torrent.to_str().unwrap());
        let seeder = Daemon::start(Path::new("aria2c"), &args);
        wait_for_seeder(port, &info_hash);
        Torrent {
            torrent,
            _tracker: tracker,
            _seeder: seeder,
        }
    }

    /// Starts `count` aria2c downloaders at once, each into its own folder
    /// under `dir`, and waits for all of them to finish (and verify every
    /// piece); returns the time.
    fn download(&self, dir: &Path, count: usize) -> Duration {
        let started = Instant::now();
        let children: Vec<Child> = (0..count)
            .map(|index| {
                let into = dir.join(format!("aria2-{index}"));
                let dir = format!("--dir={}", into.display());
                Command::new("aria2c")
                    .args(ARIA2_COMMON)
                    // Leaves as soon as it has the file, as `phile get` does.
                    .args(["--seed-time=0", "--bt-stop-timeout=60", &dir, ARIA2_PORTS])
                    .arg(&self.torrent)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("cannot start aria2c")
            })
            .collect();
        for mut child in children {
            let status = child.wait().unwrap();
            assert!(status.success(), "an aria2c download failed: {status}");
        }
        started.elapsed()
    }
}

/// Waits until opentracker lists a complete copy of `info_hash` (the
/// seeder announced). Neither program says when it is ready, so the
/// tracker's scrape is asked every few milliseconds.
fn wait_for_seeder(port: u16, info_hash: &str) {
    let escaped: String = (0..info_hash.len())
        .step_by(2)
        .map(|at| format!("%{}", &info_hash[at..at + 2]))
        .collect();
    let request = format!("GET /scrape?info_hash={escaped} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let mut answer = Vec::new();
            if stream.write_all(request.as_bytes()).is_ok() && stream.read_to_end(&mut answer).is_ok() {
                let answer = String::from_utf8_lossy(&answer);
                if answer.contains("8:completei") && !answer.contains("8:completei0e") {
                    return;
                }
            }
        }
        // An outside program's readiness, which it does not announce: the
        // only wait in this harness that is not on an event.
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the aria2c seeder never showed up at opentracker");
}

/// `phile get` by `count` downloaders at once, each in its own folder
/// under `dir`, from a `phile peer` seeding `file`; the time until all
/// have stored and verified it.
fn phile_swarm(
    config: &Config,
    file: &Path,
    dir: &Path,
    count: usize,
    seeder_up: Option<u64>,
    single: bool,
) -> Duration {
    let (_tracker, addr) = tracker(config);
    let cap = seeder_up.unwrap_or(0).to_string();
    let mut args = vec![
        "peer",
        "--id",
        "1",
        "--dir",
        file.parent().unwrap().to_str().unwrap(),
        "--tracker",
        &addr,
        "--listen",
        "127.0.0.1:0",
    ];
    if seeder_up.is_some() {
        args.extend(["--max-upload", &cap]);
    }
    let mut seeder = Daemon::start(&config.phile, &args);
    seeder.wait_until_serving();
    let started = Instant::now();
    let children: Vec<Child> = (0..count)
        .map(|index| {
            let into = dir.join(format!("phile-{index}"));
            std::fs::create_dir_all(&into).unwrap();
            Command::new(&config.phile)
                .args(["get", file.file_name().unwrap().to_str().unwrap(), "--tracker", &addr])
                .args(["--id", &(2 + index).to_string(), "--dir", into.to_str().unwrap()])
                .args(["--listen", "127.0.0.1:0"])
                .args(single.then_some("--single"))
                .env("RUST_LOG", "error")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("cannot start phile get")
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(output.status.success(), "a `phile get` failed: {out}{err}");
    }
    started.elapsed()
}

/// Checks that every downloader's copy under `dir` is `file`.
fn all_copies_equal(file: &Path, dir: &Path) {
    let original = std::fs::read(file).unwrap();
    let name = file.file_name().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let copy = std::fs::read(entry.unwrap().path().join(name)).unwrap();
        assert!(copy == original, "a downloaded copy differs");
    }
}

/// phile against aria2c with opentracker, on `place` (tmpfs, where there
/// is one) over loopback, end to end: from launching the downloaders until all have the file verified.
/// The two alternate, `config.runs` times each.
fn bittorrent(config: &Config, work: &Path, place: &str) -> Vec<Row> {
    if !(installed("aria2c") && installed("opentracker") && installed("mktorrent")) {
        return vec![row(
            "phile against aria2c with opentracker (BitTorrent)",
            "skipped: not installed",
            "apt install aria2 opentracker mktorrent",
            "",
        )];
    }
    let mut rows = Vec::new();
    for setup in &config.torrents {
        let base = work.join(format!("bittorrent-{}-{}", setup.bytes, setup.downloaders));
        let seeds = base.join("seeds");
        std::fs::create_dir_all(&seeds).unwrap();
        let file = seeds.join("big.bin");
        write_test_file(&file, setup.bytes);
        // Before anything else starts: the floor counts the CPU of this
        // process and of the children it waits for.
        let floor = (setup.seeder_up.is_none()).then(|| Floor::measure(config, &file, &base, setup.downloaders));
        let torrent = Torrent::start(&file, &base, setup.seeder_up);
        // One downloader has no one to trade with: whole-file `--single`
        // is measured beside the swarm download too.
        let ways: &[bool] = if setup.downloaders == 1 {
            &[false, true]
        } else {
            &[false]
        };
        let (mut phile, mut aria2) = (vec![Vec::new(); ways.len()], Vec::new());
        for _ in 0..config.runs {
            let downloads = base.join("downloads");
            for (&single, times) in ways.iter().zip(&mut phile) {
                std::fs::create_dir_all(&downloads).unwrap();
                let took = phile_swarm(config, &file, &downloads, setup.downloaders, setup.seeder_up, single);
                times.push(took.as_secs_f64());
                all_copies_equal(&file, &downloads);
                std::fs::remove_dir_all(&downloads).unwrap();
            }
            std::fs::create_dir_all(&downloads).unwrap();
            aria2.push(torrent.download(&downloads, setup.downloaders).as_secs_f64());
            all_copies_equal(&file, &downloads);
            std::fs::remove_dir_all(&downloads).unwrap();
        }
        drop(torrent);
        let _ = std::fs::remove_dir_all(&base);
        if let Some(floor) = floor {
            rows.push(floor.row(&setup.label(), place, &aria2));
        }
        for (&single, phile) in ways.iter().zip(&phile) {
            let speedup: Vec<f64> = phile.iter().zip(&aria2).map(|(phile, aria2)| aria2 / phile).collect();
            let get = if single { "`phile get --single`" } else { "`phile get`" };
            rows.push(row(
                format!(
                    "{} on {place}: {get} against aria2c (BitTorrent, via opentracker), s",
                    setup.label()
                ),
                figure(phile, 2),
                format!("aria2c {}", figure(&aria2, 2)),
                format!("{}x faster", figure(&speedup, 1)),
            ));
        }
    }
    rows
}

/// The least time a set-up of the aria2c comparison can take on this
/// machine, whatever the client: each downloader's copy as a plain TCP copy
/// ([`tcp_copy`], nothing checked), all at once; and the same plus the CPU
/// of checking every byte as phile does (hashed twice: per piece, then the
/// whole file), spread perfectly over every core. A ratio to aria2c above
/// these is out of any client's reach here.
#[derive(Clone, Copy, Debug)]
struct Floor {
    /// Wall time of the plain copies, all at once (median).
    copies: Duration,
    /// CPU time those copies took, both ends (median).
    copy_cpu: Duration,
    /// CPU time of two SHA-1 passes over every downloader's copy.
    hashing: Duration,
    /// The cores the work may spread over.
    cores: u32,
}

impl Floor {
    fn measure(config: &Config, file: &Path, base: &Path, downloaders: usize) -> Floor {
        let size = std::fs::metadata(file).unwrap().len();
        let (mut copies, mut copy_cpu) = (Vec::new(), Vec::new());
        for _ in 0..config.runs {
            let targets: Vec<PathBuf> = (0..downloaders)
                .map(|index| base.join(format!("floor-{index}")))
                .collect();
            let cpu = cpu_time();
            let started = Instant::now();
            std::thread::scope(|scope| {
                for target in &targets {
                    scope.spawn(|| tcp_copy(config, file, target, false));
                }
            });
            copies.push(started.elapsed());
            copy_cpu.push(cpu_time() - cpu);
            for target in &targets {
                std::fs::remove_file(target).unwrap();
            }
        }
        Floor {
            copies: median(copies),
            copy_cpu: median(copy_cpu),
            hashing: sha1_time(config, size) * 2 * downloaders as u32,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        }
    }

    /// Nothing checked: the plain copies' wall time.
    fn bare(&self) -> Duration {
        self.copies
    }

    /// Checked as phile checks: the copies' CPU and two SHA-1 passes over
    /// every core, never less than the copies' own wall time.
    fn checked(&self) -> Duration {
        ((self.copy_cpu + self.hashing) / self.cores).max(self.copies)
    }

    fn row(&self, setup: &str, place: &str, aria2: &[f64]) -> Row {
        let aria2 = spread(aria2).0;
        let (bare, checked) = (self.bare().as_secs_f64(), self.checked().as_secs_f64());
        row(
            format!(
                "{setup} on {place}: the least any client can take here: plain TCP copies at once / \
                 the same with every byte SHA-1'd twice over {} cores, s",
                self.cores
            ),
            "",
            format!("{bare:.2} / {checked:.2}"),
            format!(
                "aria2c {aria2:.2} s is {:.1}x / {:.1}x these",
                aria2 / bare,
                aria2 / checked
            ),
        )
    }
}

/// The CPU time this process and the children it has waited for have used.
fn cpu_time() -> Duration {
    let used = |who| {
        // SAFETY: getrusage fills the struct it is given, which is plain
        // data that all zeros is a valid value of.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::getrusage(who, &mut usage) }, 0);
        let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        time(usage.ru_utime) + time(usage.ru_stime)
    };
    used(libc::RUSAGE_SELF) + used(libc::RUSAGE_CHILDREN)
}

fn human_size(size: u64) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s => format!("{s} bytes"),
    }
}

// ---------------------------------------------------------------- scenarios

fn default_scenario(config: &Config, work: &Path) -> Vec<Row> {
    let script = config.scenarios.join("default.rhai");
    let root = work.join("default-root");
    let root = root.to_str().unwrap();
    let times: Vec<Duration> = (0..config.default_runs)
        .map(|_| {
            let (took, _, ok) = run_measured(
                &config.phile_run,
                &[script.to_str().unwrap(), "--root", root, "--ephemeral-ports", "-q"],
            );
            assert!(ok, "the default scenario failed");
            took
        })
        .collect();
    let start: Vec<Duration> = (0..config.default_runs)
        .map(|_| run_measured(&config.phile_run, &["--version"]).0)
        .collect();
    let (scenario, start) = (median(times), median(start));
    vec![row(
        "default scenario, whole process (median), ms",
        format!("{:.1}", scenario.as_secs_f64() * 1e3),
        format!(
            "{:.1} (process start, `phile-run --version`); the seed's prototype sleeps ~7000",
            start.as_secs_f64() * 1e3
        ),
        format!("{:.1}", scenario.as_secs_f64() / start.as_secs_f64()),
    )]
}

/// Every shipped scenario (`scenarios/*.rhai`, and `scenarios/sim/*.rhai`
/// with `--sim`) as a whole process, median of `config.scenario_runs`: a
/// step that turns slow shows here by the scenario's name.
fn shipped_scenarios(config: &Config, work: &Path) -> Vec<Row> {
    let mut scripts = Vec::new();
    for (folder, sim) in [(config.scenarios.clone(), false), (config.scenarios.join("sim"), true)] {
        let mut found: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "rhai"))
            .collect();
        found.sort();
        scripts.extend(found.into_iter().map(|path| (path, sim)));
    }
    let root = work.join("shipped-root");
    scripts
        .iter()
        .map(|(script, sim)| {
            let mut args = vec![script.to_str().unwrap(), "--root", root.to_str().unwrap(), "-q"];
            args.push(if *sim { "--sim" } else { "--ephemeral-ports" });
            let times: Vec<f64> = (0..config.scenario_runs)
                .map(|_| {
                    let (took, _, ok) = run_measured(&config.phile_run, &args);
                    assert!(ok, "scenario {} failed", script.display());
                    took.as_secs_f64() * 1e3
                })
                .collect();
            let name = script.strip_prefix(&config.scenarios).unwrap_or(script);
            let mode = if *sim { " --sim" } else { "" };
            row(
                format!("scenario {}{mode}, whole process, ms", name.display()),
                figure(&times, 1),
                "",
                "",
            )
        })
        .collect()
}

/// The many-peers scenario for `clients` clients (bench/many_peers.rhai),
/// `wave` of them downloading at once.
fn many_peers_script(clients: usize, wave: usize) -> String {
    let template = include_str!("../../bench/many_peers.rhai");
    template
        .replacen("let clients = 1000;", &format!("let clients = {clients};"), 1)
        .replacen("let wave = 100;", &format!("let wave = {wave};"), 1)
}

/// `hosts` clients registering one after the other (each a connection and
/// a round trip, as a script of that many steps makes), then 45 s of
/// virtual sleep, then one more: the simulator's spike, kept.
fn sequential_script(hosts: usize) -> String {
    format!(
        "let t = tracker(0);\n\
         for id in 1..={hosts} {{ client(id).register(t); }}\n\
         sleep(45);\n\
         client({}).register(t);\n",
        hosts + 1
    )
}

/// The simulator at scale (bench/sim_scale.rhai): every client registers
/// and downloads one small file, 500 at a time, under `--sim`; time and peak
/// memory against the number of clients, per client against the smallest
/// run. Then sequential round trips with a long virtual sleep.
fn simulation(config: &Config, work: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut first: Option<(usize, f64)> = None;
    for &clients in &config.sim_scale {
        let script = include_str!("../../bench/sim_scale.rhai").replacen(
            "let clients = 1000;",
            &format!("let clients = {clients};"),
            1,
        );
        let (took, rss) = run_simulated(config, work, &format!("sim_scale_{clients}"), &script);
        let per_client = took.as_secs_f64() / clients as f64;
        let (base_clients, base_per_client) = *first.get_or_insert((clients, per_client));
        rows.push(row(
            format!(
                "--sim: {clients} clients register and download a small file (500 at once), s; peak RSS {rss:.0} MiB"
            ),
            format!("{:.2}", took.as_secs_f64()),
            format!("{:.2} ms per client at {base_clients}", base_per_client * 1e3),
            format!("{:.2} per client", per_client / base_per_client),
        ));
    }
    for &hosts in &config.sim_sequential {
        let (took, rss) = run_simulated(
            config,
            work,
            &format!("sim_sequential_{hosts}"),
            &sequential_script(hosts),
        );
        rows.push(row(
            format!(
                "--sim: {hosts} hosts registering one by one, then 45 s of virtual sleep, s; peak RSS {rss:.0} MiB"
            ),
            format!("{:.2}", took.as_secs_f64()),
            format!("{:.3} ms per registration", took.as_secs_f64() * 1e3 / hosts as f64),
            String::new(),
        ));
    }
    rows
}

/// Swarms against the fluid bound: for each set-up, the time until the last
/// downloader has the file, in a swarm and with whole files (each from one
/// holder the tracker picks), beside the bound.
fn swarms(config: &Config, work: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for (index, setup) in config.swarms.iter().enumerate() {
        let run = |swarm: bool| {
            // A piece size is an option of swarm downloads only.
            let options = match setup.piece_size.filter(|_| swarm) {
                Some(bytes) => format!("#{{ swarm: swarm, piece_size: {bytes} }}"),
                None => "#{ swarm: swarm }".to_owned(),
            };
            let source = include_str!("../../bench/swarm.rhai").replacen(
                "let downloaders = 31; let size = 16777216; let seeder_up = 4000000; let up = 2000000; let down = 8000000; let swarm = true;",
                &format!(
                    "let downloaders = {}; let size = {}; let seeder_up = {}; let up = {}; let down = {}; let swarm = {swarm};",
                    setup.downloaders, setup.bytes, setup.seeder_up, setup.up, setup.down
                ),
                1,
            );
            let source = source.replacen("#{ swarm: swarm }", &options, 1);
            let name = format!("swarm_{index}_{swarm}");
            run_printing(config, work, &name, &source, setup.sim)
        };
        let (swarm_secs, bound) = run(true);
        let (whole_secs, _) = run(false);
        let mode = if setup.sim { "--sim, virtual s" } else { "TCP, s" };
        let target = setup
            .target
            .map_or(String::new(), |target| format!(" (target ≤ {target})"));
        let pieces = setup
            .piece_size
            .map_or(String::new(), |bytes| format!(", {} KiB pieces", bytes >> 10));
        rows.push(row(
            format!(
                "swarm, {mode}: 1 seeder at {} MB/s up, {} downloaders at {} MB/s up / {} MB/s down, {} MiB{pieces}: last downloader done",
                setup.seeder_up / 1_000_000,
                setup.downloaders,
                setup.up / 1_000_000,
                setup.down / 1_000_000,
                setup.bytes >> 20
            ),
            format!("{swarm_secs:.2}; whole files: {whole_secs:.2}"),
            format!("fluid bound {bound:.2}"),
            format!("{:.2}{target}; whole files {:.2}", swarm_secs / bound, whole_secs / bound),
        ));
    }
    rows
}

/// Runs `source` (with or without `--sim`) and reads the `BENCH last=…
/// bound=…` line it prints: the seconds it measured and the bound.
fn run_printing(config: &Config, work: &Path, name: &str, source: &str, sim: bool) -> (f64, f64) {
    let script = work.join(format!("{name}.rhai"));
    std::fs::write(&script, source).unwrap();
    let root = work.join(name);
    let mode = if sim { "--sim" } else { "--ephemeral-ports" };
    // A swarm of a thousand takes minutes of wall time under --sim; over
    // TCP the default limit (5 minutes) stands.
    let limit = if sim { &["--time-limit", "3600"][..] } else { &[] };
    let output = Command::new(&config.phile_run)
        .args([script.to_str().unwrap(), "--root", root.to_str().unwrap(), mode])
        .args(limit)
        .env("RUST_LOG", "error")
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", config.phile_run.display()));
    let _ = std::fs::remove_dir_all(&root);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{name} failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("BENCH "))
        .unwrap_or_else(|| panic!("{name} printed no BENCH line: {stdout}"));
    let value = |key: &str| -> f64 {
        line.split_whitespace()
            .find_map(|field| field.strip_prefix(key))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line}"))
    };
    (value("last="), value("bound="))
}

/// Runs `source` as a scenario under `--sim`; its wall time and peak memory.
fn run_simulated(config: &Config, work: &Path, name: &str, source: &str) -> (Duration, f64) {
    let script = work.join(format!("{name}.rhai"));
    std::fs::write(&script, source).unwrap();
    let root = work.join(name);
    let arguments = [
        script.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--sim",
        "-q",
    ];
    let (took, rss, ok) = run_measured(&config.phile_run, &arguments);
    assert!(ok, "{name} failed under --sim");
    let _ = std::fs::remove_dir_all(&root);
    (took, rss)
}

fn many_peers(config: &Config, work: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut first: Option<(usize, f64)> = None;
    for &clients in &config.scale {
        let script = work.join(format!("many_peers_{clients}.rhai"));
        std::fs::write(&script, many_peers_script(clients, 100)).unwrap();
        let root = work.join(format!("many-{clients}"));
        let (took, rss, ok) = run_measured(
            &config.phile_run,
            &[
                script.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
                "--ephemeral-ports",
                "-q",
            ],
        );
        assert!(ok, "the many-peers scenario with {clients} clients failed");
        let per_client = took.as_secs_f64() / clients as f64;
        let (base_clients, base_per_client) = *first.get_or_insert((clients, per_client));
        rows.push(row(
            format!("{clients} clients x 5 downloads (waves of up to 100 clients), s; peak RSS {rss:.0} MiB"),
            format!("{:.2}", took.as_secs_f64()),
            format!("{:.2} ms per client at {base_clients}", base_per_client * 1e3),
            format!("{:.2} per client", per_client / base_per_client),
        ));
        let _ = std::fs::remove_dir_all(&root);
    }
    rows
}

// ---------------------------------------------------------------- scheduler

use phile_core::pieces::{Bitfield, Layout, PieceSize};
use phile_core::swarm::scheduler::{Arrival, Scheduler};

/// The plan of a swarm download from one seeder, alone (no I/O): every
/// piece asked for, arrived and checked, 64 in flight. Its cost per piece
/// should not grow with the file (a 16 GiB file has 65,536 pieces). A
/// seeder is the best case: for a peer that holds few of the pieces
/// waiting, `requests` walks further through them.
fn scheduler(config: &Config) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut first: Option<(usize, f64)> = None;
    for &pieces in &config.plan_pieces {
        let took = median((0..config.runs).map(|_| plan_one_download(pieces)).collect());
        let per_piece = took.as_secs_f64() / pieces as f64;
        let (base_pieces, base_per_piece) = *first.get_or_insert((pieces, per_piece));
        rows.push(row(
            format!("swarm plan, one seeder, {pieces} pieces, ms"),
            format!("{:.1}", took.as_secs_f64() * 1e3),
            format!("{:.2} µs per piece at {base_pieces}", base_per_piece * 1e6),
            format!("{:.2} per piece", per_piece / base_per_piece),
        ));
    }
    rows
}

/// How long one download's plan takes for `pieces` pieces of one seeder.
fn plan_one_download(pieces: usize) -> Duration {
    let layout = Layout::new(pieces as u64 * PieceSize::DEFAULT.bytes(), PieceSize::DEFAULT);
    let all = Bitfield::full(pieces);
    let seeder = ClientId(1);
    let started = Instant::now();
    let mut plan = Scheduler::new(layout, Bitfield::empty(pieces), 1, 64);
    plan.join(seeder, all);
    let mut in_flight: std::collections::VecDeque<usize> = plan.requests(seeder).into();
    while let Some(index) = in_flight.pop_front() {
        assert_eq!(plan.arrived(seeder, index), Arrival::Check);
        plan.checked(index, true);
        in_flight.extend(plan.requests(seeder));
    }
    assert!(plan.is_complete());
    started.elapsed()
}

// ---------------------------------------------------------------- tracker

use phile_core::protocol::{self, ClientId, Digest, FileInfo, Request, Trace, TrackerReply, TrackerRequest};

/// `body` as a whole frame on the wire: length prefix, then the request.
fn frame(body: TrackerRequest) -> Vec<u8> {
    let payload = protocol::encode(&Request {
        trace: Trace::default(),
        body,
    })
    .unwrap();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    frame
}

/// A blocking framed connection for the load generators.
struct Wire(TcpStream);

impl Wire {
    fn connect(addr: &str) -> Wire {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        Wire(stream)
    }

    fn send(&mut self, body: TrackerRequest) {
        self.0.write_all(&frame(body)).unwrap();
    }

    fn receive(&mut self) -> Vec<u8> {
        let mut length = [0u8; 4];
        self.0.read_exact(&mut length).unwrap();
        let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
        self.0.read_exact(&mut payload).unwrap();
        payload
    }

    fn ask(&mut self, body: TrackerRequest) -> TrackerReply {
        self.send(body);
        protocol::decode(&self.receive()).unwrap()
    }
}

fn tracker_memory(config: &Config) -> Row {
    let (tracker, addr) = tracker(config);
    let before = peak_rss(tracker.pid());
    let info = FileInfo {
        size: 1000,
        sha1: Digest::of(b"x"),
    };
    let sessions: Vec<Wire> = (0..config.registered)
        .map(|id| {
            let mut wire = Wire::connect(&addr);
            let advertise = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
            wire.ask(TrackerRequest::Register {
                client: ClientId(id as u64),
                port: 1,
                advertise,
            });
            for file in 0..5 {
                let file = format!("file{file}.bin").parse().unwrap();
                let root = Digest([0; 20]);
                wire.ask(TrackerRequest::Announce { file, info, root });
            }
            wire
        })
        .collect();
    let after = peak_rss(tracker.pid());
    drop(sessions);
    row(
        format!(
            "tracker peak RSS with {} clients holding 5 files each, MiB",
            config.registered
        ),
        format!("{after:.0}"),
        format!("{before:.0} (idle); 100 (target)"),
        "",
    )
}

/// A server that answers every frame with a fixed frame: the cost of the
/// connection and the framing alone, the floor under any tracker.
fn echo_server() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap());
    serve_echo(listener);
}

fn serve_echo(listener: TcpListener) {
    let answer = protocol::encode(&TrackerReply::NoPeer).unwrap();
    let mut frame = (answer.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&answer);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std({
            listener.set_nonblocking(true).unwrap();
            listener
        })
        .unwrap();
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let frame = frame.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let _ = socket.set_nodelay(true);
                let (mut read, mut write) = socket.into_split();
                let mut length = [0u8; 4];
                while read.read_exact(&mut length).await.is_ok() {
                    let mut payload = vec![0u8; u32::from_be_bytes(length) as usize];
                    if read.read_exact(&mut payload).await.is_err() || write.write_all(&frame).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Lookups per second and p99 latency of `connections` clients asking
/// `addr` in a closed loop for `time`.
fn hammer(addr: &str, connections: usize, time: Duration, register: bool) -> (f64, Duration) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let addr = addr.to_owned();
        let deadline = Instant::now() + time;
        let tasks: Vec<_> = (0..connections)
            .map(|i| {
                let addr = addr.clone();
                tokio::spawn(async move { lookup_loop(&addr, 100_000 + i as u64, deadline, register).await })
            })
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await.unwrap());
        }
        latencies.sort();
        let p99 = latencies.get(latencies.len() * 99 / 100).copied().unwrap_or_default();
        (latencies.len() as f64 / time.as_secs_f64(), p99)
    })
}

async fn lookup_loop(addr: &str, id: u64, deadline: Instant, register: bool) -> Vec<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.set_nodelay(true).unwrap();

    let mut length = [0u8; 4];
    let mut payload = Vec::new();
    if register {
        let advertise = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
        socket
            .write_all(&frame(TrackerRequest::Register {
                client: ClientId(id),
                port: 1,
                advertise,
            }))
            .await
            .unwrap();
        socket.read_exact(&mut length).await.unwrap();
        payload.resize(u32::from_be_bytes(length) as usize, 0);
        socket.read_exact(&mut payload).await.unwrap();
    }
    let lookup = frame(TrackerRequest::Lookup {
        file: "hot.bin".parse().unwrap(),
        failover: false,
    });
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let asked = Instant::now();
        socket.write_all(&lookup).await.unwrap();
        socket.read_exact(&mut length).await.unwrap();
        payload.resize(u32::from_be_bytes(length) as usize, 0);
        socket.read_exact(&mut payload).await.unwrap();
        latencies.push(asked.elapsed());
    }
    latencies
}

fn lookup_rate(config: &Config) -> Vec<Row> {
    let (_tracker, addr) = tracker(config);
    // A few holders of the file everyone looks up.
    let info = FileInfo {
        size: 1000,
        sha1: Digest::of(b"x"),
    };
    let _holders: Vec<Wire> = (0..10)
        .map(|id| {
            let mut wire = Wire::connect(&addr);
            let advertise = Some(SocketAddr::from(([127, 0, 0, 1], 1)));
            wire.ask(TrackerRequest::Register {
                client: ClientId(id),
                port: 1,
                advertise,
            });
            wire.ask(TrackerRequest::Announce {
                file: "hot.bin".parse().unwrap(),
                info,
                root: Digest([0; 20]),
            });
            wire
        })
        .collect();
    let (tracker_rate, tracker_p99) = hammer(&addr, config.connections, config.lookup_time, true);

    let (_echo, echo_addr) = if config.helpers_in_threads {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || serve_echo(listener));
        (None, addr)
    } else {
        let mut echo = Daemon::start(&std::env::current_exe().unwrap(), &["--echo-server"]);
        let addr = echo.line();
        (Some(echo), addr)
    };
    let (echo_rate, echo_p99) = hammer(&echo_addr, config.connections, config.lookup_time, false);
    vec![row(
        format!("tracker lookups/s, {} connections (p99 latency)", config.connections),
        format!("{tracker_rate:.0} ({:.2} ms)", tracker_p99.as_secs_f64() * 1e3),
        format!(
            "{echo_rate:.0} ({:.2} ms), framed echo server",
            echo_p99.as_secs_f64() * 1e3
        ),
        format!("{:.2}", tracker_rate / echo_rate),
    )]
}

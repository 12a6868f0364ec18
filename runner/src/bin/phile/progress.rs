//! What `phile get` shows while files arrive: a progress bar per file on a
//! terminal (bytes, rate, time left), plain lines anywhere else (a log file,
//! a pipe, CI), so nothing is lost and nothing is garbled.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use phile_core::client::Progress;
use phile_core::protocol::Problem;
use phile_core::{ClientId, FileName};

use crate::printable;

/// The bars on screen, if any: log lines are written around them.
static ON_SCREEN: OnceLock<MultiProgress> = OnceLock::new();

/// Where log lines go: standard error, with the progress bars (if any)
/// lifted while a line is written, so a warning during a download (the
/// tracker went away, say) never tears them.
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

/// One log line, written out whole when dropped.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let write = || {
            let _ = std::io::stderr().write_all(&self.0);
        };
        match ON_SCREEN.get() {
            Some(bars) => bars.suspend(write),
            None => write(),
        }
    }
}

/// Shows the progress of every download of one `phile get`.
#[derive(Debug)]
pub struct Display {
    /// Draws the bars, on a terminal only.
    bars: Option<MultiProgress>,
    /// The bar of each file in flight. A std mutex: held for a lookup only.
    by_file: Mutex<HashMap<FileName, ProgressBar>>,
}

impl Display {
    /// Bars if standard error is a terminal, plain lines otherwise.
    pub fn new() -> Display {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        if let Some(bars) = &bars {
            let _ = ON_SCREEN.set(bars.clone());
        }
        Display {
            bars,
            by_file: Mutex::new(HashMap::new()),
        }
    }

    /// Prints a line without tearing the bars. Lines quote remote text (a
    /// tracker's reasons, names), so control characters are shown escaped.
    pub fn line(&self, text: &str) {
        let text = &*printable(text);
        match &self.bars {
            Some(bars) => {
                let _ = bars.println(text);
            }
            None => println!("{text}"),
        }
    }

    /// Ends the bar of `file`, if it has one.
    pub fn finish(&self, file: &FileName) {
        if let Some(bar) = self.by_file.lock().expect("progress poisoned").remove(file) {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Display {
    fn begin(&self, file: &FileName, peer: ClientId, size: u64) {
        let Some(bars) = &self.bars else {
            self.line(&format!("{file}: fetching {size} bytes from peer {peer}"));
            return;
        };
        let style = ProgressStyle::with_template(
            "{msg:20!} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta}",
        )
        .expect("the template is valid")
        .progress_chars("=> ");
        let bar = bars.add(
            ProgressBar::new(size)
                .with_style(style)
                .with_message(printable(&format!("{file} ← {peer}")).into_owned()),
        );
        // A failover starts a new bar for the same file.
        if let Some(old) = self
            .by_file
            .lock()
            .expect("progress poisoned")
            .insert(file.clone(), bar)
        {
            old.finish_and_clear();
        }
    }

    fn rejected(&self, file: &FileName, peer: ClientId, problem: Problem) {
        self.finish(file);
        self.line(&format!("{file}: gave up on peer {peer}, which {}", problem.describe()));
    }

    fn swarming(&self, file: &FileName, held: usize, pieces: usize, peers: usize, bytes: u64, size: u64) {
        let Some(bars) = &self.bars else {
            // Off a terminal, a line per tenth of the pieces at most.
            let tenth = pieces.div_ceil(10).max(1);
            if held == 1 || held.is_multiple_of(tenth) || held == pieces {
                self.line(&format!(
                    "{file}: {held}/{pieces} pieces, drawing from {}",
                    count(peers, "peer")
                ));
            }
            return;
        };
        let message = format!("{held}/{pieces} pieces ← {}", count(peers, "peer"));
        let mut by_file = self.by_file.lock().expect("progress poisoned");
        let bar = by_file.entry(file.clone()).or_insert_with(|| {
            // A long name is cut short, never the counts after it.
            let style = ProgressStyle::with_template(
                "{prefix:20!} {msg:28} [{bar:24.cyan/blue}] {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> ");
            let bar = ProgressBar::new(size)
                .with_style(style)
                .with_position(bytes)
                .with_message(message.clone());
            bars.add(bar.with_prefix(printable(file.as_str()).into_owned()))
        });
        // The bytes first, then the message: whichever of the two gets
        // drawn (drawing is rate limited) shows the pieces with their
        // bytes, never the pieces ahead of them.
        bar.set_position(bytes);
        bar.set_message(message);
    }

    fn advance(&self, file: &FileName, received: u64) {
        if let Some(bar) = self.by_file.lock().expect("progress poisoned").get(file) {
            bar.set_position(received);
        }
    }
}

pub use phile_core::protocol::count;

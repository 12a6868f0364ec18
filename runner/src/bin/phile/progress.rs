//! What `phile get` shows while files arrive: a progress bar per file on a
//! terminal (bytes, rate, time left), plain lines anywhere else (a log file,
//! a pipe, CI), so nothing is lost and nothing is garbled.

use std::collections::HashMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use indicatif::{
    BinaryBytes, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle,
};
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
    /// The pieces each swarm download last said it held, of how many, and
    /// their bytes: what an interrupted one keeps.
    pieces_held: Mutex<HashMap<FileName, (usize, usize, u64)>>,
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
            pieces_held: Mutex::new(HashMap::new()),
        }
    }

    /// Says what the interrupted download of `file` keeps for the next
    /// attempt: the pieces it checked, if it was a swarm download that got
    /// any.
    pub fn interrupted(&self, file: &FileName) {
        let held = self.pieces_held.lock().expect("progress poisoned").get(file).copied();
        if let Some((held, pieces, bytes)) = held.filter(|(held, ..)| *held > 0) {
            self.line(&format!(
                "{file}: interrupted with {held}/{pieces} pieces checked ({bytes} bytes), kept for the next attempt"
            ));
        }
    }

    /// Prints a line without tearing the bars. Lines quote remote text (a
    /// tracker's reasons, names), so control characters are shown escaped.
    pub fn line(&self, text: &str) {
        let text = &*printable(text);
        match &self.bars {
            // On standard output like the plain lines (a result redirected
            // to a file must land there), with the bars out of the way.
            Some(bars) => bars.suspend(|| say!("{text}")),
            None => say!("{text}"),
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
        let style = style(
            "{msg:20!} [{bar:30.cyan/blue}] {bytes:>10}/{total_bytes:<10} {rate:>12} ETA {left}",
            0,
        );
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
        self.pieces_held
            .lock()
            .expect("progress poisoned")
            .insert(file.clone(), (held, pieces, bytes));
        let Some(bars) = &self.bars else {
            // Off a terminal, a line per tenth of the pieces at most, none
            // while it draws from nobody (at the start, or between peers).
            let tenth = pieces.div_ceil(10).max(1);
            let drawing = peers > 0 || held == pieces;
            if drawing && (held == 1 || held.is_multiple_of(tenth) || held == pieces) {
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
            let style = style(
                "{prefix:20!} {msg:28} [{bar:24.cyan/blue}] {bytes:>10}/{total_bytes:<10} {rate:>12} ETA {left}",
                bytes,
            );
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

    fn kept(&self, file: &FileName, held: usize, pieces: usize, bytes: u64) {
        self.pieces_held
            .lock()
            .expect("progress poisoned")
            .insert(file.clone(), (held, pieces, bytes));
    }

    fn tracker_lost(&self, file: &FileName, error: &str) {
        self.line(&format!(
            "{file}: warning: the tracker cannot be reached ({error}); going on with the peers it knows"
        ));
    }

    fn advance(&self, file: &FileName, received: u64) {
        if let Some(bar) = self.by_file.lock().expect("progress poisoned").get(file) {
            bar.set_position(received);
        }
    }
}

/// A bar's style from `template`, whose `{rate}` and `{left}` are the
/// download's average since its bar appeared, not counting the `start`
/// bytes it had then (a resumed download's). indicatif's own estimate
/// (`{bytes_per_sec}`) weighs the last moments, and read 10–25 % high
/// under a rate cap, where checked pieces land in bursts.
fn style(template: &str, start: u64) -> ProgressStyle {
    let rate = move |state: &ProgressState, out: &mut dyn fmt::Write| {
        let _ = match average_rate(start, state.pos(), state.elapsed()) {
            Some(rate) => write!(out, "{}/s", BinaryBytes(rate as u64)),
            None => write!(out, "-"),
        };
    };
    let left = move |state: &ProgressState, out: &mut dyn fmt::Write| {
        let left = state
            .len()
            .and_then(|len| time_left(start, state.pos(), len, state.elapsed()));
        // As indicatif's own `{eta}`: "6s", "2m".
        let _ = match left {
            Some(left) => write!(out, "{:#}", HumanDuration(left)),
            None => write!(out, "-"),
        };
    };
    ProgressStyle::with_template(template)
        .expect("the template is valid")
        .with_key("rate", rate)
        .with_key("left", left)
        .progress_chars("=> ")
}

/// Bytes per second from `start` to `pos` in `elapsed`; `None` before the
/// first byte.
fn average_rate(start: u64, pos: u64, elapsed: Duration) -> Option<f64> {
    let seconds = elapsed.as_secs_f64();
    (pos > start && seconds > 0.0).then(|| (pos - start) as f64 / seconds)
}

/// The time the rest of `len` takes at the average rate so far, rounded up
/// to a whole second.
fn time_left(start: u64, pos: u64, len: u64, elapsed: Duration) -> Option<Duration> {
    let rate = average_rate(start, pos, elapsed)?;
    Some(Duration::from_secs(
        (len.saturating_sub(pos) as f64 / rate).ceil() as u64
    ))
}

pub use phile_core::protocol::count;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_the_average_since_the_bar_appeared_without_the_bytes_it_had() {
        // 4 MiB resumed, then 10 MiB in 2 s: 5 MiB/s, not 7.
        let (start, pos) = (4 << 20, 14 << 20);
        assert_eq!(average_rate(start, pos, Duration::from_secs(2)), Some(5.0 * 1048576.0));
        // 6 MiB of 20 left at 5 MiB/s: 1.2 s, shown as 2.
        let left = time_left(start, pos, 20 << 20, Duration::from_secs(2));
        assert_eq!(left, Some(Duration::from_secs(2)));
        // Nothing yet: no rate, no time left.
        assert_eq!(average_rate(start, start, Duration::from_secs(1)), None);
        assert_eq!(time_left(0, 0, 100, Duration::ZERO), None);
    }
}

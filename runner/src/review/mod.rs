//! Tools to review a run from its event log.
//!
//! Everything here is a pure function of a [`Log`] (read with
//! [`Log::parse`] from the JSON Lines that `--events` writes, or with
//! [`Log::from_lines`] from [`crate::Outcome::events`]); nothing reads or
//! writes files.
//!
//! - [`RunSummary`]: the outcome, bytes and downloads per node, every
//!   download's result;
//! - [`snapshot_view`]: events grouped under the script line that caused
//!   them, without `seq`, for diffs that show only what changed.

mod log;
mod summary;
mod view;

pub use log::{ClientId, EventKind, Log, LogEvent, ParseError};
pub use summary::{Download, DownloadResult, NodeTotals, RunOutcome, RunSummary};
pub use view::snapshot_view;

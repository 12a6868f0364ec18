//! Tools to review a run from its event log: a Mermaid sequence diagram, a
//! self-contained HTML report, and a text view for snapshot tests.
//!
//! Everything here is a pure function of a [`Log`] (read with
//! [`Log::parse`] from the JSON Lines that `--events` writes, or with
//! [`Log::from_lines`] from [`crate::Outcome::events`]); nothing reads or
//! writes files.
//!
//! - [`mermaid`]: the run as a Mermaid `sequenceDiagram`;
//! - [`html_report`]: the outcome first, then the diagram as SVG, bytes and
//!   downloads per node, every download's result, and a timeline when the
//!   caller has times ([`ReportExtras`]);
//! - [`snapshot_view`]: events grouped under the script line that caused
//!   them, without `seq`, for diffs that show only what changed.
//!
//! Big runs are aggregated the same way in the diagram and the report; see
//! [`Diagram`] for the rules and the thresholds ([`MAX_PARTICIPANTS`],
//! [`MAX_STEPS`] …).

mod diagram;
mod html;
mod log;
mod mermaid;
mod summary;
mod svg;
pub(crate) mod text;
mod view;

pub use diagram::{
    Arrow, Diagram, Participant, Step, Tone, HEAD_STEPS, MAX_LABEL_CHARS, MAX_MIDDLE_STEPS, MAX_PARTICIPANTS,
    MAX_STEPS, TAIL_STEPS,
};
pub use html::{html_report, DownloadSpan, FluidBound, ReportError, ReportExtras, MAX_TABLE_ROWS};
pub use log::{ClientId, EventKind, Log, LogEvent, ParseError};
pub use mermaid::mermaid;
pub use summary::{Download, DownloadResult, NodeTotals, RunOutcome, RunSummary};
pub use svg::MAX_TIMELINE_BARS;
pub use view::snapshot_view;

#[cfg(test)]
pub(crate) mod tests {
    use super::Log;

    /// A log as a big run writes it: a tracker, a seeder (client 1) and
    /// `clients` more clients that register, then each download one file
    /// from an earlier holder. One download in 500 fails after a holder
    /// cut the stream, and client 1 is killed half way.
    pub(crate) fn synthetic_swarm(clients: u64) -> Log {
        let mut lines = vec![
            r#"{"node":"scenario","event":"scenario_started","scenario":"swarm.rhai","seed":1,"schema":1}"#.to_string(),
            r#"{"node":"tracker","event":"started"}"#.to_string(),
        ];
        for id in 1..=clients + 1 {
            lines.push(format!(r#"{{"node":"{id}","event":"started"}}"#));
            lines.push(format!(r#"{{"node":"tracker","event":"registered","client":{id}}}"#));
        }
        lines.push(r#"{"node":"tracker","event":"announced","client":1,"file":"f"}"#.into());
        for id in 2..=clients + 1 {
            let peer = if id > 2 { id - 1 } else { 1 };
            lines.push(format!(
                r#"{{"node":"tracker","event":"peer_chosen","client":{id},"file":"f","peer":{peer}}}"#
            ));
            if id % 500 == 0 {
                lines.push(format!(
                    r#"{{"node":"{id}","event":"transfer_rejected","file":"f","peer":{peer},"reason":"cut the connection mid-transfer"}}"#
                ));
                lines.push(format!(
                    r#"{{"node":"{id}","event":"download_failed","file":"f","error":"no peer delivered f"}}"#
                ));
                continue;
            }
            lines.push(format!(
                r#"{{"node":"{peer}","event":"file_sent","file":"f","to":{id},"bytes":1000}}"#
            ));
            lines.push(format!(
                r#"{{"node":"{id}","event":"download_finished","file":"f","from":{peer},"bytes":1000,"sha1":"s"}}"#
            ));
            lines.push(format!(
                r#"{{"node":"tracker","event":"announced","client":{id},"file":"f"}}"#
            ));
            if id == clients / 2 {
                lines.push(r#"{"node":"1","event":"killed"}"#.into());
                lines.push(r#"{"node":"tracker","event":"client_lost","client":1}"#.into());
            }
        }
        lines.push(r#"{"node":"scenario","event":"scenario_finished"}"#.into());
        Log::from_lines(lines.iter().map(String::as_str)).expect("the synthetic log parses")
    }
}

//! The HTML report: one self-contained file (inline CSS, SVG and script,
//! nothing fetched from the network) that opens with the outcome.
//!
//! The page is a minijinja template (`report.html`) filled from plain data
//! prepared here; minijinja escapes every value for HTML, so no name from a
//! script or the network reaches the page unescaped.

use minijinja::{Environment, UndefinedBehavior};
use serde::Serialize;

use super::diagram::{Diagram, Step, Tone};
use super::log::Log;
use super::summary::{Download, DownloadResult, NodeTotals, RunOutcome, RunSummary};
use super::svg::{SvgDiagram, SvgTimeline};
use super::text::{bytes, clip, plural, thousands};

/// Most rows a table of the report shows; the rest are counted below it.
pub const MAX_TABLE_ROWS: usize = 1000;

/// What the report can show beyond the log itself.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportExtras {
    /// When each event happened, in seconds from any fixed start, aligned
    /// with [`Log::events`]. The log never holds times; a caller that
    /// measured them (a simulated run, a run with rate caps) passes them
    /// here and gets a timeline of transfers per node.
    pub times: Option<Vec<f64>>,
    /// Extension point for swarm downloads: how long giving a file to N
    /// downloaders took against the fluid lower bound. The report shows a
    /// table of them when there are any.
    pub fluid_bounds: Vec<FluidBound>,
    /// When each download the script made began and stored its file, in
    /// the seconds of [`ReportExtras::times`]. A swarm download logs no
    /// event when it begins (it has no single holder to choose), so the
    /// timeline draws it only from these.
    pub download_spans: Vec<DownloadSpan>,
}

/// When one download that stored its file began and ended.
#[derive(Clone, Debug, PartialEq)]
pub struct DownloadSpan {
    /// The downloader.
    pub client: u64,
    /// The file.
    pub file: String,
    /// When the script asked for it, in seconds.
    pub started: f64,
    /// When it was stored, in seconds.
    pub finished: f64,
}

/// A swarm download's time against the fluid lower bound
/// max(F/u_s, F/d_min, N·F/(u_s + Σu_i)) (Kumar and Ross).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FluidBound {
    /// The file.
    pub file: String,
    /// How many clients downloaded it.
    pub downloaders: u64,
    /// The bound, in seconds.
    pub bound_secs: f64,
    /// The time it took, in seconds.
    pub measured_secs: f64,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// [`ReportExtras::times`] does not have one time per event.
    #[error("{times} times were given for {events} events; there must be one per event")]
    TimesMisaligned {
        /// How many times were given.
        times: usize,
        /// How many events the log has.
        events: usize,
    },
    /// A time is not a finite number.
    #[error("the time of event {index} is {value}, not a number of seconds")]
    TimeNotFinite {
        /// Index of the event.
        index: usize,
        /// The time given.
        value: f64,
    },
    /// The template failed (a bug: its tests render it).
    #[error("the report template failed: {0:#}")]
    Template(#[from] minijinja::Error),
}

/// The HTML report of `log`.
pub fn html_report(log: &Log, extras: &ReportExtras) -> Result<String, ReportError> {
    let times = checked_times(log, extras)?;
    let summary = RunSummary::of(log);
    let diagram = Diagram::with_summary(log, &summary);
    let page = Page::new(log, &summary, &diagram, times, extras);
    let mut environment = Environment::new();
    // A name the template uses but the page lacks is a bug, not a blank.
    environment.set_undefined_behavior(UndefinedBehavior::Strict);
    // The name ends in .html, so minijinja escapes every value for HTML.
    environment.add_template("report.html", include_str!("report.html"))?;
    let html = environment
        .get_template("report.html")?
        .render(minijinja::value::Serde(&page))?;
    Ok(html)
}

fn checked_times<'a>(log: &Log, extras: &'a ReportExtras) -> Result<Option<&'a [f64]>, ReportError> {
    let Some(times) = &extras.times else {
        return Ok(None);
    };
    if times.len() != log.events.len() {
        return Err(ReportError::TimesMisaligned {
            times: times.len(),
            events: log.events.len(),
        });
    }
    if let Some((index, value)) = times.iter().enumerate().find(|(_, t)| !t.is_finite()) {
        return Err(ReportError::TimeNotFinite { index, value: *value });
    }
    Ok(Some(times))
}

/// Everything the template shows.
#[derive(Serialize)]
struct Page<'a> {
    title: String,
    /// `ok`, `failed` or `unfinished`: the script's end, styles the banner.
    verdict: &'static str,
    /// `default.rhai · seed 1 · 5 downloads: 4 ok, 1 failed · ran to its end`.
    summary_line: String,
    script_failure: Option<ScriptFailure>,
    failed_downloads: Table<DownloadRow>,
    diagram: SvgDiagram,
    /// Says what aggregation left out of the diagram, if anything.
    diagram_caption: String,
    nodes: Table<NodeRow>,
    downloads: Table<DownloadRow>,
    /// Whether any download has swarm sources (adds a column).
    has_sources: bool,
    timeline: Option<SvgTimeline>,
    fluid_bounds: Vec<FluidRow<'a>>,
}

#[derive(Serialize)]
struct ScriptFailure {
    error: String,
    line: u64,
    column: u64,
}

/// Rows of a table, at most [`MAX_TABLE_ROWS`], and how many more there were.
#[derive(Serialize)]
struct Table<T> {
    rows: Vec<T>,
    not_shown: usize,
}

impl<T> Table<T> {
    fn of(rows: impl ExactSizeIterator<Item = T>) -> Table<T> {
        let total = rows.len();
        let rows: Vec<T> = rows.take(MAX_TABLE_ROWS).collect();
        Table {
            not_shown: total - rows.len(),
            rows,
        }
    }
}

#[derive(Serialize)]
struct NodeRow {
    name: String,
    sent: String,
    sent_exact: String,
    received: String,
    received_exact: String,
    /// How many downloads it served, and of which files.
    served: String,
    served_files: String,
    downloads_ok: u64,
    downloads_failed: u64,
}

#[derive(Serialize)]
struct DownloadRow {
    client: String,
    file: String,
    ok: bool,
    /// `from 10000, 5 B` or the error.
    outcome: String,
    /// Holders given up on first, with why.
    rejected: String,
    /// Swarm downloads: bytes per peer, when the log has them.
    sources: String,
}

#[derive(Serialize)]
struct FluidRow<'a> {
    bound: &'a FluidBound,
    measured: String,
    limit: String,
    /// measured / bound: 1.0 is the best possible.
    ratio: String,
}

impl<'a> Page<'a> {
    fn new(
        log: &Log,
        summary: &RunSummary,
        diagram: &Diagram,
        times: Option<&[f64]>,
        extras: &'a ReportExtras,
    ) -> Page<'a> {
        let scenario = summary.scenario.clone().unwrap_or_else(|| "an unnamed scenario".into());
        let failed = summary.downloads.iter().filter(|d| !d.is_ok()).map(DownloadRow::of);
        Page {
            title: format!("phile run of {scenario}"),
            verdict: verdict(&summary.outcome),
            summary_line: summary_line(&scenario, summary),
            script_failure: match &summary.outcome {
                RunOutcome::Failed { error, line, column } => Some(ScriptFailure {
                    error: error.clone(),
                    line: *line,
                    column: *column,
                }),
                _ => None,
            },
            failed_downloads: Table::of(failed.collect::<Vec<_>>().into_iter()),
            diagram: SvgDiagram::of(diagram),
            diagram_caption: diagram_caption(log, diagram),
            nodes: Table::of(summary.nodes.iter().map(NodeRow::of)),
            downloads: Table::of(summary.downloads.iter().map(DownloadRow::of)),
            has_sources: summary.downloads.iter().any(|d| !DownloadRow::sources(d).is_empty()),
            timeline: times.and_then(|times| SvgTimeline::of(log, times, &extras.download_spans, diagram)),
            fluid_bounds: extras.fluid_bounds.iter().map(FluidRow::of).collect(),
        }
    }
}

fn verdict(outcome: &RunOutcome) -> &'static str {
    match outcome {
        RunOutcome::Finished => "ok",
        RunOutcome::Failed { .. } => "failed",
        RunOutcome::Unfinished => "unfinished",
    }
}

fn summary_line(scenario: &str, summary: &RunSummary) -> String {
    let seed = summary
        .seed
        .map_or("seed unknown".to_string(), |seed| format!("seed {seed}"));
    let downloads = format!(
        "{}: {} ok, {} failed",
        plural(summary.downloads.len() as u64, "download"),
        thousands(summary.downloads_ok() as u64),
        thousands(summary.downloads_failed() as u64)
    );
    let end = match &summary.outcome {
        RunOutcome::Finished => "the script ran to its end".to_string(),
        RunOutcome::Failed { line, .. } => format!("the script failed at line {line}"),
        RunOutcome::Unfinished => "the log stops before the script's end".to_string(),
    };
    format!("{scenario} · {seed} · {downloads} · {end}")
}

fn diagram_caption(log: &Log, diagram: &Diagram) -> String {
    let mut caption = format!(
        "{} in log order (which is cause order), {}.",
        plural(diagram.steps.len() as u64, "step"),
        plural(log.events.len() as u64, "event")
    );
    if diagram.folded_nodes() > 0 {
        caption += &format!(
            " The last column stands for {} (only the first {} nodes to start have columns of their own).",
            plural(diagram.folded_nodes() as u64, "node"),
            diagram.participants.len() - 1
        );
    }
    if diagram.steps.iter().any(|step| {
        matches!(
            step,
            Step::Note {
                tone: Tone::Omitted,
                ..
            }
        )
    }) {
        caption += " The run is long: its start, its end and its faults are drawn, and notes count what was left out.";
    }
    caption
}

impl NodeRow {
    fn of(node: &NodeTotals) -> NodeRow {
        let served: u64 = node.served.iter().map(|(_, times)| times).sum();
        let files: Vec<String> = node
            .served
            .iter()
            .take(10)
            .map(|(file, times)| format!("{} ×{times}", clip(file, 40)))
            .collect();
        let more = node.served.len().saturating_sub(files.len());
        NodeRow {
            name: node.name.clone(),
            sent: bytes(node.bytes_sent),
            sent_exact: format!("{} bytes", thousands(node.bytes_sent)),
            received: bytes(node.bytes_received),
            received_exact: format!("{} bytes", thousands(node.bytes_received)),
            served: thousands(served),
            served_files: if more > 0 {
                format!("{}, {more} more", files.join(", "))
            } else {
                files.join(", ")
            },
            downloads_ok: node.downloads_ok,
            downloads_failed: node.downloads_failed,
        }
    }
}

impl DownloadRow {
    fn of(download: &Download) -> DownloadRow {
        let outcome = match &download.result {
            DownloadResult::Finished { from, bytes: size, .. } => format!("from {from}, {}", bytes(*size)),
            DownloadResult::Failed { error } => error.clone(),
        };
        let rejected: Vec<String> = download
            .rejected
            .iter()
            .map(|(peer, reason)| format!("{peer}: {reason}"))
            .collect();
        DownloadRow {
            client: download.client.clone(),
            file: download.file.clone(),
            ok: download.is_ok(),
            outcome,
            rejected: rejected.join("; "),
            sources: DownloadRow::sources(download),
        }
    }

    /// Extension point for swarm downloads: `10000: 1.0 MiB, 10001: 1.0 MiB`
    /// when the download's event carries a `sources` map, else empty.
    fn sources(download: &Download) -> String {
        let DownloadResult::Finished {
            sources: Some(sources), ..
        } = &download.result
        else {
            return String::new();
        };
        let parts: Vec<String> = sources
            .iter()
            .map(|(peer, size)| format!("{peer}: {}", bytes(*size)))
            .collect();
        parts.join(", ")
    }
}

impl<'a> FluidRow<'a> {
    fn of(bound: &'a FluidBound) -> FluidRow<'a> {
        FluidRow {
            bound,
            measured: format!("{:.3} s", bound.measured_secs),
            limit: format!("{:.3} s", bound.bound_secs),
            ratio: if bound.bound_secs > 0.0 {
                format!("{:.2}", bound.measured_secs / bound.bound_secs)
            } else {
                "–".into()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_MIDDLE_STEPS, MAX_STEPS};
    use super::*;

    const FAILED_RUN: &str = r#"{"seq":0,"node":"scenario","event":"scenario_started","scenario":"x.rhai","seed":7,"schema":1}
{"seq":1,"node":"tracker","event":"started"}
{"seq":2,"node":"10000","event":"started"}
{"seq":3,"node":"10001","event":"started"}
{"seq":4,"node":"tracker","event":"registered","client":10000}
{"seq":5,"node":"tracker","event":"registered","client":10001}
{"seq":6,"node":"tracker","event":"announced","client":10000,"file":"<script>alert(1)</script>"}
{"seq":7,"node":"tracker","event":"peer_chosen","client":10001,"file":"<script>alert(1)</script>","peer":10000}
{"seq":8,"node":"10000","event":"file_sent","file":"<script>alert(1)</script>","to":10001,"bytes":100}
{"seq":9,"node":"10001","event":"download_finished","file":"<script>alert(1)</script>","from":10000,"bytes":100,"sha1":"s"}
{"seq":10,"node":"10001","event":"download_failed","file":"a;b-->>c","error":"no peer has a;b-->>c"}
{"seq":11,"node":"10000","event":"file_sent","file":"b.txt","to":10001,"bytes":10}
{"seq":12,"node":"10001","event":"download_finished","file":"b.txt","from":10000,"bytes":10,"sha1":"s"}
{"seq":13,"node":"scenario","event":"scenario_failed","error":"assertion failed: <b>bold</b>","line":9,"column":1}"#;

    fn report(text: &str) -> String {
        html_report(&Log::parse(text).unwrap(), &ReportExtras::default()).unwrap()
    }

    /// The texts of the diagram's arrows, in document order.
    fn arrow_texts(html: &str) -> Vec<&str> {
        html.split("<g class=\"msg ")
            .skip(1)
            .map(|g| {
                let text = &g[g.find("<text").unwrap()..];
                &text[text.find('>').unwrap() + 1..text.find("</text>").unwrap()]
            })
            .collect()
    }

    #[test]
    fn the_report_opens_with_the_outcome_and_failures_first() {
        let html = report(FAILED_RUN);
        assert!(html.contains("x.rhai · seed 7 · 3 downloads: 2 ok, 1 failed · the script failed at line 9"));
        assert!(html.contains(r#"<header class="banner failed">"#));
        let failure = html.find("id=\"script-failure\"").unwrap();
        let failed_downloads = html.find("id=\"failed-downloads\"").unwrap();
        let diagram = html.find("id=\"diagram\"").unwrap();
        let downloads = html.find("id=\"downloads\"").unwrap();
        assert!(failure < failed_downloads && failed_downloads < diagram && diagram < downloads);
        assert!(html[failed_downloads..diagram].contains("no peer has a;b--&gt;&gt;c"));
    }

    #[test]
    fn every_name_from_the_log_is_escaped() {
        let html = report(FAILED_RUN);
        assert_eq!(html.matches("<script").count(), 2, "only the report's own scripts");
        assert!(!html.contains("<b>bold"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"));
        assert!(html.contains("assertion failed: &lt;b&gt;bold&lt;&#x2f;b&gt;"));
    }

    #[test]
    fn the_diagram_draws_arrows_in_log_order() {
        let html = report(FAILED_RUN);
        let esc = "&lt;script&gt;alert(1)&lt;&#x2f;script&gt;";
        let expected = [
            "register".to_string(),
            "ACK".into(),
            "register".into(),
            "ACK".into(),
            format!("announce {esc}"),
            format!("lookup {esc}"),
            "peer 10000".into(),
            format!("{esc} (100 B)"),
            "b.txt (10 B)".into(),
        ];
        assert_eq!(arrow_texts(&html), expected);
    }

    #[test]
    fn nodes_show_bytes_sent_and_received_and_downloads_served() {
        let html = report(FAILED_RUN);
        let nodes = &html[html.find("id=\"nodes\"").unwrap()..];
        let row = |node: &str| {
            let start = nodes.find(&format!("<td class=\"who\">{node}</td>")).unwrap();
            nodes[start..start + nodes[start..].find("</tr>").unwrap()].to_string()
        };
        let seeder = row("10000");
        assert!(seeder.contains(r#"title="110 bytes">110 B<"#), "{seeder}");
        assert!(seeder.contains(r#"title="0 bytes">0 B<"#), "{seeder}");
        assert!(
            seeder.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt; ×1, b.txt ×1"),
            "{seeder}"
        );
        let downloader = row("10001");
        assert!(downloader.contains(r#"title="110 bytes">110 B<"#), "{downloader}");
        assert!(
            downloader.contains(r#"<td class="num">2</td><td class="num">1</td>"#),
            "{downloader}"
        );
    }

    #[test]
    fn the_report_loads_nothing_from_the_network() {
        let html = report(FAILED_RUN);
        let without_svg_namespace = html.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        for needle in ["http:", "https:", "src=", "<link", "@import", "url(http"] {
            assert!(!without_svg_namespace.contains(needle), "found {needle}");
        }
    }

    #[test]
    fn a_big_run_is_aggregated_and_bounded() {
        let log = super::super::tests::synthetic_swarm(2000);
        let html = html_report(&log, &ReportExtras::default()).unwrap();
        assert!(html.len() < 1_500_000, "{} bytes", html.len());
        assert!(html.contains("The last column stands for 1,991 nodes"));
        assert!(html.contains("events not drawn"));
        assert!(arrow_texts(&html).len() <= MAX_STEPS + MAX_MIDDLE_STEPS);
        assert!(html.contains(&format!("and {} more nodes", 2002 - MAX_TABLE_ROWS)));
        // Every failed download is listed, whatever the size of the run.
        let failed = &html[html.find("id=\"failed-downloads\"").unwrap()..html.find("id=\"diagram\"").unwrap()];
        assert_eq!(failed.matches("<tr class=\"bad\">").count(), 4);
    }

    #[test]
    fn times_add_a_timeline_and_must_match_the_events() {
        let log = Log::parse(FAILED_RUN).unwrap();
        let times: Vec<f64> = (0..log.events.len()).map(|i| i as f64 * 0.01).collect();
        let extras = ReportExtras {
            times: Some(times),
            ..ReportExtras::default()
        };
        let html = html_report(&log, &extras).unwrap();
        assert!(html.contains("id=\"timeline\""));
        // One transfer, on the receiver's lane and the sender's (b.txt has
        // no lookup in this log, so no start).
        assert_eq!(html.matches("<rect class=\"ok\"").count(), 1);
        assert_eq!(html.matches("<rect class=\"ok upload\"").count(), 1);
        assert!(!report(FAILED_RUN).contains("id=\"timeline\""));
        let short = ReportExtras {
            times: Some(vec![0.0]),
            ..ReportExtras::default()
        };
        assert!(matches!(
            html_report(&log, &short),
            Err(ReportError::TimesMisaligned { times: 1, events: 14 })
        ));
    }

    #[test]
    fn a_swarm_download_is_drawn_from_its_span_on_its_lane_and_each_sources() {
        let lines = [
            r#"{"node":"tracker","event":"started"}"#,
            r#"{"node":"10000","event":"started"}"#,
            r#"{"node":"10001","event":"started"}"#,
            r#"{"node":"10002","event":"started"}"#,
            r#"{"node":"10002","event":"download_finished","file":"f","bytes":3072,"sha1":"s","swarm":true,"sources":{"10000":2048,"10001":1024}}"#,
        ];
        let log = Log::from_lines(lines).unwrap();
        let times = Some(vec![0.0, 0.0, 0.0, 0.0, 2.5]);
        let span = DownloadSpan {
            client: 10002,
            file: "f".into(),
            started: 1.0,
            finished: 2.5,
        };
        let extras = ReportExtras {
            times: times.clone(),
            download_spans: vec![span],
            ..ReportExtras::default()
        };
        let html = html_report(&log, &extras).unwrap();
        assert_eq!(html.matches("<rect class=\"ok\"").count(), 1, "the downloader's bar");
        assert_eq!(html.matches("<rect class=\"ok upload\"").count(), 2, "a bar per source");
        assert!(html.contains("f from 2 peers to 10002: ok (1.50 s)"), "{html}");
        // Without its span, a swarm download has no start to draw from.
        let unspanned = ReportExtras {
            times,
            ..ReportExtras::default()
        };
        assert!(!html_report(&log, &unspanned).unwrap().contains("id=\"timeline\""));
    }

    #[test]
    fn swarm_sources_and_fluid_bounds_show_only_when_present() {
        assert!(!report(FAILED_RUN).contains("sources (swarm)"));
        assert!(!report(FAILED_RUN).contains("fluid bound"));
        let swarm = r#"{"node":"10002","event":"download_finished","file":"f","from":10000,"bytes":3072,"sha1":"s","sources":{"10000":2048,"10001":1024}}"#;
        let extras = ReportExtras {
            fluid_bounds: vec![FluidBound {
                file: "f".into(),
                downloaders: 1,
                bound_secs: 0.5,
                measured_secs: 0.75,
            }],
            ..ReportExtras::default()
        };
        let html = html_report(&Log::parse(swarm).unwrap(), &extras).unwrap();
        assert!(html.contains("<td>10000: 2.0 KiB, 10001: 1.0 KiB</td>"));
        assert!(html.contains("<td class=\"num\">1.50</td>"));
    }
}

//! The run as a Mermaid `sequenceDiagram`, which GitHub, GitLab and most
//! Markdown editors draw.

use std::fmt::Write as _;

use super::diagram::{Arrow, Diagram, Step};
use super::log::Log;
use super::text::plural;

/// The Mermaid text of `log`'s diagram (see [`Diagram`] for what is drawn
/// and how big runs are aggregated). Columns are `n0`, `n1` … with the node
/// names as their labels, so no name can clash with Mermaid's keywords.
pub fn mermaid(log: &Log) -> String {
    render(&Diagram::of(log), log)
}

fn render(diagram: &Diagram, log: &Log) -> String {
    let mut out = String::from("sequenceDiagram\n");
    if let Some((scenario, seed)) = log.scenario() {
        // `%%` comments are ignored by Mermaid; this one names the run.
        let _ = writeln!(out, "    %% {} (seed {seed})", escape(scenario));
    }
    if diagram.folded_nodes() > 0 {
        let folded = plural(diagram.folded_nodes() as u64, "node");
        let _ = writeln!(out, "    %% {folded} share the last column");
    }
    for (index, participant) in diagram.participants.iter().enumerate() {
        let _ = writeln!(out, "    participant n{index} as {}", escape(&participant.label));
    }
    for step in &diagram.steps {
        out.push_str("    ");
        out.push_str(&statement(step));
        out.push('\n');
    }
    out
}

/// One step as a Mermaid statement.
fn statement(step: &Step) -> String {
    match step {
        Step::Message { from, to, arrow, text } => {
            let arrow = match arrow {
                Arrow::Request => "->>",
                Arrow::Reply => "-->>",
                Arrow::Rejected => "--x",
            };
            format!("n{from}{arrow}n{to}: {}", escape(text))
        }
        Step::Note { first, last, text, .. } if first == last => format!("Note over n{first}: {}", escape(text)),
        Step::Note { first, last, text, .. } => format!("Note over n{first},n{last}: {}", escape(text)),
    }
}

/// `text` made safe for a Mermaid label: every character that Mermaid's
/// grammar or its HTML output reads specially becomes an entity code
/// (`#59;`), which Mermaid draws as the character itself. `#` starts a
/// comment and `;` ends a statement; `:` can start a `wrap:` directive and
/// `%%` a comment; `<`, `>`, `&` and `"` would reach the HTML. Line breaks
/// and other control characters would end the statement: they become
/// spaces.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '#' | ';' | ':' | '%' | '<' | '>' | '&' | '"' | '\'' | '`' | '{' | '}' | '\\' => {
                let _ = write!(out, "#{};", u32::from(c));
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[&str]) -> Log {
        Log::from_lines(lines.iter().copied()).unwrap()
    }

    const DOWNLOAD: &[&str] = &[
        r#"{"seq":0,"node":"scenario","event":"scenario_started","scenario":"x.rhai","seed":1,"schema":1}"#,
        r#"{"seq":1,"node":"tracker","event":"started"}"#,
        r#"{"seq":2,"node":"10000","event":"started"}"#,
        r#"{"seq":3,"node":"tracker","event":"registered","client":10000}"#,
        r#"{"seq":4,"node":"10001","event":"started"}"#,
        r#"{"seq":5,"node":"tracker","event":"registered","client":10001}"#,
        r#"{"seq":6,"node":"tracker","event":"announced","client":10000,"file":"a.txt"}"#,
        r#"{"seq":7,"node":"tracker","event":"peer_chosen","client":10001,"file":"a.txt","peer":10000}"#,
        r#"{"seq":8,"node":"10000","event":"file_sent","file":"a.txt","to":10001,"bytes":5}"#,
        r#"{"seq":9,"node":"10001","event":"download_finished","file":"a.txt","from":10000,"bytes":5,"sha1":"x"}"#,
        r#"{"seq":10,"node":"tracker","event":"announced","client":10001,"file":"a.txt"}"#,
        r#"{"seq":11,"node":"10000","event":"killed"}"#,
        r#"{"seq":12,"node":"tracker","event":"client_lost","client":10000}"#,
        r#"{"seq":13,"node":"scenario","event":"note","text":"all done"}"#,
        r#"{"seq":14,"node":"scenario","event":"scenario_finished"}"#,
    ];

    #[test]
    fn the_diagram_draws_every_step_in_log_order() {
        let expected = "\
sequenceDiagram
    %% x.rhai (seed 1)
    participant n0 as tracker
    participant n1 as 10000
    participant n2 as 10001
    n1->>n0: register
    n0-->>n1: ACK
    n2->>n0: register
    n0-->>n2: ACK
    n1->>n0: announce a.txt
    n2->>n0: lookup a.txt
    n0-->>n2: peer 10000
    n1->>n2: a.txt (5 B)
    Note over n2: stored a.txt
    n2->>n0: announce a.txt
    Note over n1: killed
    Note over n0: lost 10000
    Note over n0,n2: all done
";
        assert_eq!(mermaid(&log(DOWNLOAD)), expected);
    }

    #[test]
    fn hostile_names_cannot_break_out_of_a_label() {
        let text = mermaid(&log(&[
            r#"{"node":"tracker","event":"started"}"#,
            r#"{"node":"1","event":"started"}"#,
            r#"{"node":"2","event":"started"}"#,
            r#"{"node":"1","event":"file_sent","file":"a;b-->>c","to":2,"bytes":1}"#,
            r#"{"node":"1","event":"file_sent","file":"<script>alert(1)</script>","to":2,"bytes":1}"#,
            r#"{"node":"1","event":"file_sent","file":"x\nNote over n0: injected #1 %%{init}%%","to":2,"bytes":1}"#,
            r#"{"node":"2","event":"transfer_rejected","file":"wrap:f","peer":1,"reason":"r"}"#,
        ]));
        let arrows: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("n1->>n2") || line.contains("n1--xn2"))
            .collect();
        assert_eq!(
            arrows,
            [
                "    n1->>n2: a#59;b--#62;#62;c (1 B)",
                "    n1->>n2: #60;script#62;alert(1)#60;/script#62; (1 B)",
                "    n1->>n2: x Note over n0#58; injected #35;1 #37;#37;#123;init#125;#37;#37; (1 B)",
                "    n1--xn2: wrap#58;f#58; r",
            ]
        );
        assert_eq!(text.lines().count(), 1 + 3 + 4, "a name added a line:\n{text}");
    }

    #[test]
    fn time_rates_and_the_simulated_network_are_notes_over_their_nodes() {
        let text = mermaid(&log(&[
            r#"{"node":"tracker","event":"started"}"#,
            r#"{"node":"1","event":"started"}"#,
            r#"{"node":"2","event":"started"}"#,
            r#"{"node":"1","event":"rate_set","up":1000000,"down":0}"#,
            r#"{"node":"scenario","event":"network_changed","change":"latency","a":"1","b":"2","ms":100}"#,
            r#"{"node":"scenario","event":"network_changed","change":"partition","a":"2","b":"tracker"}"#,
            r#"{"node":"scenario","event":"slept","seconds":45.0}"#,
        ]));
        let notes: Vec<&str> = text.lines().filter(|line| line.contains("Note")).collect();
        assert_eq!(
            notes,
            [
                "    Note over n1: caps up 1.0 MB/s, down none",
                "    Note over n1,n2: latency 100 ms",
                "    Note over n0,n2: partition",
                "    Note over n0,n2: 45 s pass",
            ],
            "{text}"
        );
    }

    #[test]
    fn a_hostile_node_name_is_escaped_in_its_column_label() {
        let text = mermaid(&log(&[r#"{"node":"evil; participant x","event":"started"}"#]));
        assert!(text.contains("participant n0 as evil#59; participant x\n"), "{text}");
    }

    #[test]
    fn a_huge_run_stays_within_what_mermaid_draws() {
        let log = super::super::tests::synthetic_swarm(2000);
        let text = mermaid(&log);
        // Mermaid refuses diagrams over 50,000 characters by default.
        assert!(text.len() < 50_000, "{} characters", text.len());
        assert_eq!(text.lines().filter(|line| line.contains("participant")).count(), 12);
        assert!(text.contains("register ×1,991"), "{text}");
        assert!(text.contains("events not drawn"), "{text}");
    }
}

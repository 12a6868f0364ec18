//! A text view of a log for snapshot tests, which reads like the script:
//! events grouped under the script line that caused them, one line each,
//! without `seq`, so inserting or removing an event changes only its own
//! lines in a diff.

use std::fmt::Write as _;

use serde_json::Value;

use super::log::{Log, LogEvent};

/// Width the node column is padded to: `scenario`, the longest name the
/// log uses for itself. Fixed, so one long name never re-pads every line.
const NODE_WIDTH: usize = 8;
/// Width the event column is padded to: the longest event name today
/// (`download_finished`). A longer one just pushes its own fields right.
const EVENT_WIDTH: usize = 17;

/// The view of `log`: a heading per run of consecutive events with the
/// same `line`, then one line per event:
///
/// ```text
/// -- line 31: b.download("album.zip");
/// tracker   peer_chosen        client=13001 file=album.zip peer=13000
/// 13000     file_sent          file=album.zip to=13001 bytes=2097152
/// ```
///
/// The heading quotes the script line when `script` (the script's source)
/// is given, else it is `-- line 31`; events without a line (the
/// scenario's start and end) come under `-- (no script line)`. Fields keep
/// the log's order, minus `seq` and `line`. A string is written bare when
/// that cannot be mistaken for anything else, otherwise as a JSON string
/// (`error="no peer has x.txt"`, `file="13000"`); numbers, booleans, lists
/// and maps are written as JSON. Ends with a line break.
pub fn snapshot_view(log: &Log, script: Option<&str>) -> String {
    let source: Vec<&str> = script.map(|s| s.lines().collect()).unwrap_or_default();
    let mut out = String::new();
    let mut current: Option<Option<u64>> = None;
    for event in &log.events {
        if current != Some(event.line) {
            current = Some(event.line);
            out.push_str(&heading(event.line, &source));
            out.push('\n');
        }
        out.push_str(&event_line(event));
        out.push('\n');
    }
    out
}

fn heading(line: Option<u64>, source: &[&str]) -> String {
    let Some(line) = line else {
        return "-- (no script line)".into();
    };
    let text = usize::try_from(line)
        .ok()
        .and_then(|line| source.get(line.checked_sub(1)?))
        .map(|text| text.trim())
        .filter(|text| !text.is_empty());
    match text {
        Some(text) => format!("-- line {line}: {text}"),
        None => format!("-- line {line}"),
    }
}

fn event_line(event: &LogEvent) -> String {
    let mut out = format!("{:<NODE_WIDTH$}  {:<EVENT_WIDTH$} ", event.node, event.name);
    for (key, value) in &event.fields {
        if key != "line" {
            let _ = write!(out, " {key}={}", value_text(value));
        }
    }
    out.truncate(out.trim_end().len());
    out
}

/// A field's value, unambiguous: a bare word only for strings that read as
/// nothing but themselves.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) if is_bare_word(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Whether a string can be written without quotes: not empty, only letters,
/// digits and `._-/+@$`, and not something JSON would read as a number,
/// a boolean or null.
fn is_bare_word(text: &str) -> bool {
    !text.is_empty()
        && text.chars().all(|c| c.is_ascii_alphanumeric() || "._-/+@$".contains(c))
        && serde_json::from_str::<Value>(text).map_or(true, |value| value.is_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "let t = tracker(8000);\nlet a = client(13000);\n\n  b.download(\"album.zip\");\n";

    fn view(lines: &[&str], script: Option<&str>) -> String {
        snapshot_view(&Log::from_lines(lines.iter().copied()).unwrap(), script)
    }

    #[test]
    fn events_group_under_their_script_line_without_seq() {
        let lines = [
            r#"{"seq":0,"node":"scenario","event":"scenario_started","scenario":"x.rhai","seed":1,"schema":1}"#,
            r#"{"seq":1,"node":"tracker","event":"started","line":1}"#,
            r#"{"seq":2,"node":"tracker","event":"peer_chosen","client":13001,"file":"album.zip","peer":13000,"line":4}"#,
            r#"{"seq":3,"node":"13000","event":"file_sent","file":"album.zip","to":13001,"bytes":2097152,"line":4}"#,
            r#"{"seq":4,"node":"13001","event":"download_failed","file":"album.zip","error":"no peer has album.zip","line":4}"#,
            r#"{"seq":5,"node":"scenario","event":"scenario_finished"}"#,
        ];
        let expected = "\
-- (no script line)
scenario  scenario_started   scenario=x.rhai seed=1 schema=1
-- line 1: let t = tracker(8000);
tracker   started
-- line 4: b.download(\"album.zip\");
tracker   peer_chosen        client=13001 file=album.zip peer=13000
13000     file_sent          file=album.zip to=13001 bytes=2097152
13001     download_failed    file=album.zip error=\"no peer has album.zip\"
-- (no script line)
scenario  scenario_finished
";
        assert_eq!(view(&lines, Some(SCRIPT)), expected);
    }

    #[test]
    fn without_the_script_or_past_its_end_a_heading_is_just_the_number() {
        let lines = [r#"{"node":"tracker","event":"started","line":3}"#];
        assert_eq!(view(&lines, None), "-- line 3\ntracker   started\n");
        // Line 3 of SCRIPT is blank; there is no line 99.
        assert_eq!(view(&lines, Some(SCRIPT)), "-- line 3\ntracker   started\n");
        let lines = [r#"{"node":"tracker","event":"started","line":99}"#];
        assert_eq!(view(&lines, Some(SCRIPT)), "-- line 99\ntracker   started\n");
    }

    #[test]
    fn inserting_an_event_changes_only_its_own_line() {
        let before = [
            r#"{"seq":0,"node":"tracker","event":"started","line":1}"#,
            r#"{"seq":1,"node":"tracker","event":"registered","client":1,"line":2}"#,
        ];
        let after = [
            r#"{"seq":0,"node":"tracker","event":"started","line":1}"#,
            r#"{"seq":1,"node":"scenario","event":"note","text":"new","line":1}"#,
            r#"{"seq":2,"node":"tracker","event":"registered","client":1,"line":2}"#,
        ];
        let (before, after) = (view(&before, None), view(&after, None));
        let added: Vec<&str> = after
            .lines()
            .filter(|line| !before.lines().any(|b| b == *line))
            .collect();
        assert_eq!(added, ["scenario  note               text=new"]);
        assert_eq!(before.lines().count() + 1, after.lines().count());
    }

    #[test]
    fn values_that_could_be_misread_are_quoted() {
        let lines = [
            r#"{"node":"1","event":"odd","a":"13000","b":"true","c":"","d":"x=y","e":"two words","f":null,"g":[1,"x"],"h":{"k":2},"i":"a\nb"}"#,
        ];
        assert_eq!(
            view(&lines, None),
            "-- (no script line)\n1         odd                a=\"13000\" b=\"true\" c=\"\" d=\"x=y\" e=\"two words\" f=null g=[1,\"x\"] h={\"k\":2} i=\"a\\nb\"\n"
        );
    }
}

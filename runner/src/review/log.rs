//! A typed model of an event log, read back from its JSON Lines.
//!
//! The log's contract (scenarios/README.md, "The event log") lets new events
//! and new fields appear at any time, so the model keeps every field of every
//! line, in the order the log wrote them, beside a typed view ([`EventKind`])
//! of the events the review tools know. An event the model does not know is
//! [`EventKind::Other`]; a field it does not know is ignored by the typed view
//! but kept in [`LogEvent::fields`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A whole event log, in log order (which is cause order).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Log {
    /// Every event, as the log lists them.
    pub events: Vec<LogEvent>,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogEvent {
    /// The `seq` field; absent only in hand-written logs.
    pub seq: Option<u64>,
    /// Who the event is about: `tracker`, a client id such as `10002`, or
    /// `scenario`.
    pub node: String,
    /// The event's name as written (`peer_chosen`), also for unknown events.
    pub name: String,
    /// The script line of the call that caused the event, when the log says.
    pub line: Option<u64>,
    /// Every field but `seq`, `node` and `event`, in the order of the line.
    pub fields: Vec<(String, Value)>,
    /// What the event means, for the events the review tools know.
    pub kind: EventKind,
}

/// A client id as the log writes it in fields such as `client` and `peer`.
pub type ClientId = u64;

/// The events the review tools understand, with the fields they use.
///
/// The names and fields are those of the table in scenarios/README.md.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// The first event: which script, which seed.
    ScenarioStarted {
        /// The script's file name.
        scenario: String,
        /// The seed of every random choice.
        seed: u64,
    },
    /// A tracker or client started.
    Started,
    /// The tracker acknowledged a client's registration.
    Registered {
        /// The client.
        client: ClientId,
    },
    /// The tracker recorded that a client holds a file.
    Announced {
        /// The holder.
        client: ClientId,
        /// The file.
        file: String,
    },
    /// The tracker chose a holder for a download.
    PeerChosen {
        /// Who asked.
        client: ClientId,
        /// The file.
        file: String,
        /// The holder chosen.
        peer: ClientId,
    },
    /// A peer finished sending a file and the receiver confirmed it.
    FileSent {
        /// The file.
        file: String,
        /// The receiver.
        to: ClientId,
        /// Its size.
        bytes: u64,
    },
    /// A client stored a verified file.
    DownloadFinished {
        /// The file.
        file: String,
        /// The peer that delivered it; none for a swarm download, which
        /// came in pieces from several.
        #[serde(default)]
        from: Option<ClientId>,
        /// Its size.
        bytes: u64,
        /// For a swarm download under `--sim`: how many bytes each peer
        /// gave, keyed by peer id (over TCP it depends on timing, and the
        /// log leaves it out).
        #[serde(default)]
        sources: Option<BTreeMap<String, u64>>,
    },
    /// A download ended without the file.
    DownloadFailed {
        /// The file.
        file: String,
        /// Why, as the script's result says.
        error: String,
    },
    /// The script called `note(text)`.
    Note {
        /// The text.
        text: String,
    },
    /// A downloader gave up on one holder and will ask for another.
    TransferRejected {
        /// The file.
        file: String,
        /// The holder given up on.
        peer: ClientId,
        /// Why.
        reason: String,
    },
    /// The tracker stopped offering a holder reported for a bad copy.
    HolderDropped {
        /// The holder.
        client: ClientId,
        /// The file.
        file: String,
        /// `wrong_size` or `wrong_content`.
        reason: String,
    },
    /// The client crashed.
    Killed {
        /// The file whose transfer a `kill_after` fault struck, if one did.
        #[serde(default)]
        file: Option<String>,
        /// How many bytes of it were sent then.
        #[serde(default)]
        sent: Option<u64>,
    },
    /// The tracker forgot a client whose session dropped.
    ClientLost {
        /// The client.
        client: ClientId,
    },
    /// The client left politely.
    Left,
    /// The tracker forgot a client that said goodbye.
    ClientLeft {
        /// The client.
        client: ClientId,
    },
    /// A stopped client came back.
    Restarted,
    /// The script flipped a byte of the client's copy of a file.
    Corrupted {
        /// The file.
        file: String,
    },
    /// The script armed a fault on the client.
    FaultArmed {
        /// `kill_after` or `stall_after`.
        fault: String,
        /// The file whose transfer triggers it.
        file: String,
        /// After how many bytes.
        after: u64,
    },
    /// The script capped a client's rates.
    RateSet {
        /// Upload cap, bytes per second (0: none).
        up: u64,
        /// Download cap, bytes per second (0: none).
        down: u64,
    },
    /// The script let time pass.
    Slept {
        /// How long, in seconds.
        seconds: f64,
    },
    /// The script changed the simulated network between two nodes.
    NetworkChanged {
        /// `latency`, `partition` or `heal`.
        change: String,
        /// One node.
        a: String,
        /// The other.
        b: String,
        /// The delay `latency` set, in milliseconds.
        #[serde(default)]
        ms: Option<u64>,
    },
    /// The script ran to its end.
    ScenarioFinished,
    /// The script stopped with an error.
    ScenarioFailed {
        /// The error, as printed.
        error: String,
        /// Its line in the script.
        line: u64,
        /// Its column.
        column: u64,
    },
    /// An event these tools do not know (yet): kept, drawn by name only.
    #[serde(skip)]
    Other,
}

/// A line of the log that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line_number}: {message}")]
pub struct ParseError {
    /// 1-based line number in the JSON Lines text.
    pub line_number: usize,
    /// What is wrong with it.
    pub message: String,
}

impl Log {
    /// Reads a log from JSON Lines text. Blank lines are skipped.
    pub fn parse(text: &str) -> Result<Log, ParseError> {
        Log::from_lines(text.lines())
    }

    /// Reads a log as [`Log::parse`] does, except that a last line cut
    /// short (no newline after it, and not whole JSON: a run killed while
    /// writing it) is left out. Returns the log and, if a line was left
    /// out, its number.
    pub fn parse_cut_short(text: &str) -> Result<(Log, Option<usize>), ParseError> {
        let body_end = text.rfind('\n').map_or(0, |newline| newline + 1);
        let tail = &text[body_end..];
        let cut = !tail.trim().is_empty()
            && serde_json::from_str::<serde_json::Value>(tail).is_err_and(|error| error.is_eof());
        if !cut {
            return Ok((Log::parse(text)?, None));
        }
        let log = Log::parse(&text[..body_end])?;
        Ok((log, Some(text[..body_end].lines().count() + 1)))
    }

    /// Reads a log from its lines, one JSON object each (what
    /// [`crate::Outcome::events`] holds).
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> Result<Log, ParseError> {
        let mut events = Vec::new();
        for (index, line) in lines.into_iter().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let event = LogEvent::parse(line).map_err(|message| ParseError {
                line_number: index + 1,
                message,
            })?;
            events.push(event);
        }
        Ok(Log { events })
    }

    /// The script's file name and seed, from `scenario_started`.
    pub fn scenario(&self) -> Option<(&str, u64)> {
        self.events.iter().find_map(|event| match &event.kind {
            EventKind::ScenarioStarted { scenario, seed } => Some((scenario.as_str(), *seed)),
            _ => None,
        })
    }
}

impl EventKind {
    /// The clients this event names in its fields (not its own node).
    pub fn clients(&self) -> Vec<ClientId> {
        match self {
            EventKind::Registered { client }
            | EventKind::Announced { client, .. }
            | EventKind::HolderDropped { client, .. }
            | EventKind::ClientLost { client }
            | EventKind::ClientLeft { client } => vec![*client],
            EventKind::PeerChosen { client, peer, .. } => vec![*client, *peer],
            EventKind::FileSent { to, .. } => vec![*to],
            EventKind::DownloadFinished { from, .. } => from.iter().copied().collect(),
            EventKind::TransferRejected { peer, .. } => vec![*peer],
            _ => Vec::new(),
        }
    }
}

impl LogEvent {
    /// Reads one line. Unknown events and fields are accepted; a known event
    /// that lacks one of its fields is an error, since the log's contract
    /// says fields are never removed.
    pub fn parse(line: &str) -> Result<LogEvent, String> {
        let OrderedObject(entries) =
            serde_json::from_str(line).map_err(|error| format!("not a JSON object: {error}"))?;
        let mut seq = None;
        let mut node = None;
        let mut name = None;
        let mut fields = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            match key.as_str() {
                "seq" => seq = Some(value.as_u64().ok_or("`seq` is not a whole number")?),
                "node" => node = Some(as_string(value).ok_or("`node` is not a string")?),
                "event" => name = Some(as_string(value).ok_or("`event` is not a string")?),
                _ => fields.push((key, value)),
            }
        }
        let node = node.ok_or("the event has no `node`")?;
        let name = name.ok_or("the event has no `event` name")?;
        let kind = typed_kind(&name, &fields)?;
        // `scenario_failed` has had a `line` (of the error) from the start;
        // it means the same as the `line` every event is to carry.
        let line = fields
            .iter()
            .find(|(key, _)| key == "line")
            .and_then(|(_, value)| value.as_u64());
        Ok(LogEvent {
            seq,
            node,
            name,
            line,
            fields,
            kind,
        })
    }

    /// The value of field `key`, if the event has it.
    pub fn field(&self, key: &str) -> Option<&Value> {
        self.fields.iter().find(|(name, _)| name == key).map(|(_, value)| value)
    }
}

fn as_string(value: Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text),
        _ => None,
    }
}

/// The typed view of an event, [`EventKind::Other`] for unknown names.
fn typed_kind(name: &str, fields: &[(String, Value)]) -> Result<EventKind, String> {
    let mut object: Map<String, Value> = fields.iter().cloned().collect();
    object.insert("event".into(), Value::String(name.into()));
    match serde_json::from_value(Value::Object(object)) {
        Ok(kind) => Ok(kind),
        Err(_) if !is_known(name) => Ok(EventKind::Other),
        Err(error) => Err(format!("`{name}`: {error}")),
    }
}

/// Whether [`EventKind`] has a variant for this event name.
fn is_known(name: &str) -> bool {
    const KNOWN: &[&str] = &[
        "scenario_started",
        "started",
        "registered",
        "announced",
        "peer_chosen",
        "file_sent",
        "download_finished",
        "download_failed",
        "note",
        "transfer_rejected",
        "holder_dropped",
        "killed",
        "client_lost",
        "left",
        "client_left",
        "restarted",
        "corrupted",
        "fault_armed",
        "rate_set",
        "slept",
        "network_changed",
        "scenario_finished",
        "scenario_failed",
    ];
    KNOWN.contains(&name)
}

/// A JSON object whose entries keep the order they were written in (a
/// `serde_json::Map` sorts them unless a crate-wide feature is switched on,
/// which would change other code's output).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(OrderedObjectVisitor)
    }
}

struct OrderedObjectVisitor;

impl<'de> Visitor<'de> for OrderedObjectVisitor {
    type Value = OrderedObject;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<OrderedObject, A::Error> {
        let mut entries: Vec<(String, Value)> = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((key, value)) = map.next_entry::<String, Value>()? {
            if entries.iter().any(|(seen, _)| *seen == key) {
                return Err(de::Error::custom(format!("field `{key}` appears twice")));
            }
            entries.push((key, value));
        }
        Ok(OrderedObject(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_events_are_typed_and_keep_their_fields_in_order() {
        let line =
            r#"{"seq":15,"node":"tracker","event":"peer_chosen","client":10002,"file":"test1.txt","peer":10000}"#;
        let event = LogEvent::parse(line).unwrap();
        assert_eq!(event.seq, Some(15));
        assert_eq!(event.node, "tracker");
        assert_eq!(
            event.kind,
            EventKind::PeerChosen {
                client: 10002,
                file: "test1.txt".into(),
                peer: 10000
            }
        );
        let keys: Vec<&str> = event.fields.iter().map(|(key, _)| key.as_str()).collect();
        assert_eq!(keys, ["client", "file", "peer"]);
    }

    #[test]
    fn unknown_events_and_fields_are_tolerated() {
        let log = Log::parse(concat!(
            r#"{"seq":0,"node":"10001","event":"piece_received","piece":3,"from":10000}"#,
            "\n\n",
            r#"{"seq":1,"node":"10001","event":"left","mood":"happy","line":7}"#,
        ))
        .unwrap();
        assert_eq!(log.events.len(), 2);
        assert_eq!(log.events[0].kind, EventKind::Other);
        assert_eq!(log.events[0].name, "piece_received");
        assert_eq!(log.events[1].kind, EventKind::Left);
        assert_eq!(log.events[1].line, Some(7));
        assert_eq!(log.events[1].field("mood"), Some(&Value::from("happy")));
    }

    #[test]
    fn a_known_event_missing_a_field_and_bad_json_are_errors_with_their_line() {
        let error = Log::parse(
            "{\"seq\":0,\"node\":\"tracker\",\"event\":\"started\"}\n{\"node\":\"tracker\",\"event\":\"registered\"}",
        )
        .unwrap_err();
        assert_eq!(error.line_number, 2);
        assert!(error.message.contains("client"), "{error}");
        assert_eq!(Log::parse("[1, 2]").unwrap_err().line_number, 1);
        assert!(Log::parse(r#"{"node":"tracker"}"#)
            .unwrap_err()
            .message
            .contains("event"));
    }

    #[test]
    fn a_last_line_cut_short_is_left_out_and_said_so() {
        let whole = "{\"seq\":0,\"node\":\"tracker\",\"event\":\"started\"}\n";
        let (log, cut) = Log::parse_cut_short(&format!("{whole}{{\"seq\":1,\"node\":\"trac")).unwrap();
        assert_eq!((log.events.len(), cut), (1, Some(2)));
        // A whole last line without its newline is read; a bad one is
        // still an error.
        let (log, cut) = Log::parse_cut_short(whole.trim_end()).unwrap();
        assert_eq!((log.events.len(), cut), (1, None));
        assert!(Log::parse_cut_short(&format!("{whole}[1, 2]")).is_err());
    }

    #[test]
    fn swarm_sources_are_read_when_present() {
        let line = r#"{"node":"10003","event":"download_finished","file":"a","from":10000,"bytes":8,"sha1":"x","sources":{"10000":5,"10001":3}}"#;
        match LogEvent::parse(line).unwrap().kind {
            EventKind::DownloadFinished {
                sources: Some(sources), ..
            } => {
                assert_eq!(sources.get("10001"), Some(&3));
            }
            other => panic!("{other:?}"),
        }
    }
}

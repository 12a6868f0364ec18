//! The event log: every event of a scenario, in an order that does not
//! depend on timing.
//!
//! Each script call that acts is an *operation*, numbered in script order.
//! Every request an operation sends carries its number and a step
//! ([`Trace`]); the tracker and peers tag the events a request causes with
//! it. The log is ordered by operation number, then by step: a concurrent
//! download's events are written together, at the place of the
//! `start_download` call that began it, however they interleaved in time.
//!
//! An operation's events are written when it ends and every earlier
//! operation has ended (a reorder buffer), so the log streams to its file as
//! the scenario runs, and a failed run still has everything before the
//! failure.
//!
//! One event has no request behind it: the tracker noticing that a crashed
//! client's session dropped (`client_lost`). The log files it under the
//! operation in which that client was killed, after that operation's other
//! events, and holds the operation open until it arrives
//! ([`EventLog::settle`]), so that it, too, has a fixed place.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use phile_core::events::{Event, EventSink, Node};
use phile_core::{ClientId, Trace};
use serde::Serialize;

/// The version of the log's format, written in its first event. Bumped when
/// an event changes meaning or loses a field; adding events or fields keeps it.
pub const SCHEMA_VERSION: u32 = 1;

/// Who an event is about, as the log writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    /// A tracker or a client.
    Node(Node),
    /// The scenario itself (its start, notes, its end).
    Scenario,
}

impl Serialize for Subject {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Subject::Node(node) => node.serialize(serializer),
            Subject::Scenario => serializer.serialize_str("scenario"),
        }
    }
}

/// Events the runner itself records.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ScenarioEvent {
    /// The first event of every log.
    ScenarioStarted {
        /// The script's file name.
        scenario: String,
        /// The seed of every random choice.
        seed: u64,
        /// [`SCHEMA_VERSION`].
        schema: u32,
    },
    /// A tracker or client was started by the script.
    Started,
    /// The script made a client leave (`c.leave()`).
    Left,
    /// The script restarted a stopped client (`c.restart()`).
    Restarted,
    /// The script flipped bytes of a client's copy of `file`.
    Corrupted {
        /// The file.
        file: String,
    },
    /// The script armed a fault (`c.kill_after`, `c.stall_after`).
    FaultArmed {
        /// `kill_after` or `stall_after`.
        fault: String,
        /// The file whose transfer triggers it.
        file: String,
        /// After how many bytes.
        after: u64,
    },
    /// The script called `note(text)`.
    Note {
        /// The text.
        text: String,
    },
    /// The script ran to its end.
    ScenarioFinished,
    /// The script stopped with an error.
    ScenarioFailed {
        /// The error, as printed.
        error: String,
        /// Its line in the script.
        line: usize,
        /// Its column.
        column: usize,
    },
}

/// Any event the log holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
enum AnyEvent {
    Node(Event),
    Scenario(ScenarioEvent),
}

/// One line of the log.
#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    node: Subject,
    #[serde(flatten)]
    event: &'a AnyEvent,
}

/// The log of one scenario run.
pub struct EventLog {
    /// A std mutex: held only to file or write an event, never across an
    /// `.await`, and recorded from both the script thread and tokio tasks.
    inner: Mutex<Inner>,
    /// Signalled whenever an awaited event arrives.
    arrived: Condvar,
}

struct Inner {
    /// The number the next operation gets.
    next_op: u64,
    /// Events of operations not yet written, by operation.
    pending: BTreeMap<u64, Operation>,
    /// The lowest operation not yet written.
    next_to_write: u64,
    /// The lines written so far.
    lines: Vec<String>,
    /// The JSON Lines file, when asked for.
    out: Option<BufWriter<File>>,
    /// The first error writing the file, reported at the end of the run.
    write_error: Option<io::Error>,
    /// Clients registered with a tracker, as its events tell.
    registered: HashSet<ClientId>,
    /// Killed clients whose `client_lost` has not come yet, with the
    /// operation it belongs to.
    awaiting: HashMap<ClientId, u64>,
    /// `client_lost` events that came before the `killed` they belong to
    /// (in process mode they travel on another process's pipe).
    lost_early: HashMap<ClientId, (Subject, AnyEvent)>,
}

#[derive(Default)]
struct Operation {
    /// Whether the operation has ended, so no more events can come.
    ended: bool,
    /// Its events with their step, in arrival order.
    events: Vec<(u32, Subject, AnyEvent)>,
}

impl EventLog {
    /// A log that also streams to `path` when given.
    pub fn create(path: Option<&Path>) -> io::Result<EventLog> {
        let out = match path {
            Some(path) => Some(BufWriter::new(File::create(path)?)),
            None => None,
        };
        Ok(EventLog {
            inner: Mutex::new(Inner {
                // Operation 0 is `Trace::default()`: "no operation".
                next_op: 1,
                pending: BTreeMap::new(),
                next_to_write: 1,
                lines: Vec::new(),
                out,
                write_error: None,
                registered: HashSet::new(),
                awaiting: HashMap::new(),
                lost_early: HashMap::new(),
            }),
            arrived: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("event log poisoned")
    }

    /// Begins the next operation; its requests carry the returned trace.
    pub fn begin(&self) -> Trace {
        let mut inner = self.lock();
        let op = inner.next_op;
        inner.next_op += 1;
        inner.pending.insert(op, Operation::default());
        Trace::new(op)
    }

    /// Ends operation `op`: its events, and those of any later operation
    /// that ended already, are written once every earlier one has ended.
    pub fn end(&self, op: u64) {
        let mut inner = self.lock();
        if let Some(operation) = inner.pending.get_mut(&op) {
            operation.ended = true;
        }
        inner.write_ended();
    }

    /// Records an event of the runner's, as one operation of its own.
    pub fn record_alone(&self, subject: Subject, event: ScenarioEvent) {
        let trace = self.begin();
        self.file(trace, subject, AnyEvent::Scenario(event));
        self.end(trace.op);
    }

    /// Records an event of the runner's within an operation.
    pub fn record_in(&self, trace: Trace, subject: Subject, event: ScenarioEvent) {
        self.file(trace, subject, AnyEvent::Scenario(event));
    }

    /// Waits until operation `op` has every event it awaits (the
    /// `client_lost` of a client killed in it), at most `limit`; then gives
    /// up on the missing ones, so a tracker that never answers cannot hang
    /// the run. Returns whether nothing was missing.
    pub fn settle(&self, op: u64, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut inner = self.lock();
        while inner.awaits(op) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(op, "gave up waiting for the tracker to notice a killed client");
                inner.awaiting.retain(|_, awaited| *awaited != op);
                inner.write_ended();
                return false;
            }
            inner = self.arrived.wait_timeout(inner, left).expect("event log poisoned").0;
        }
        true
    }

    fn file(&self, trace: Trace, subject: Subject, event: AnyEvent) {
        let mut inner = self.lock();
        if trace == Trace::default() {
            inner.file_untraced(subject, event);
            self.arrived.notify_all();
            return;
        }
        inner.track(trace.op, subject, &event);
        match inner.pending.get_mut(&trace.op) {
            Some(operation) if !operation.ended => operation.events.push((trace.step, subject, event)),
            // A request outside any open operation: a bug in the runner, or
            // a stray client. Its event has no place in the ordered log.
            _ => tracing::warn!(op = trace.op, ?event, "event outside an open operation; not logged"),
        }
    }

    /// The lines written so far (every line, once the run is over).
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// Flushes the file and reports the first error writing it, if any.
    pub fn finish(&self) -> io::Result<()> {
        let mut inner = self.lock();
        if let Some(error) = inner.write_error.take() {
            return Err(error);
        }
        match &mut inner.out {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Inner {
    /// Whether operation `op` still waits for an event.
    fn awaits(&self, op: u64) -> bool {
        self.awaiting.values().any(|awaited| *awaited == op)
    }

    /// Keeps track of who is registered, and of the events a kill makes
    /// the log wait for.
    fn track(&mut self, op: u64, subject: Subject, event: &AnyEvent) {
        match (subject, event) {
            (_, AnyEvent::Node(Event::Registered { client })) => {
                self.registered.insert(*client);
                self.lost_early.remove(client);
            }
            (_, AnyEvent::Node(Event::ClientLeft { client } | Event::ClientLost { client })) => {
                self.registered.remove(client);
            }
            (Subject::Node(Node::Client(client)), AnyEvent::Node(Event::Killed { .. })) => {
                if let Some((subject, lost)) = self.lost_early.remove(&client) {
                    if let Some(operation) = self.pending.get_mut(&op) {
                        operation.events.push((u32::MAX, subject, lost));
                    }
                } else if self.registered.contains(&client) {
                    self.awaiting.insert(client, op);
                }
            }
            _ => {}
        }
    }

    /// Files an event no request caused: a `client_lost` goes at the end of
    /// the operation that killed the client; anything else is not logged
    /// (it could land anywhere, so it would make the log flicker).
    fn file_untraced(&mut self, subject: Subject, event: AnyEvent) {
        let lost = match &event {
            AnyEvent::Node(Event::ClientLost { client }) => Some(*client),
            _ => None,
        };
        if let Some(op) = lost.and_then(|client| self.awaiting.remove(&client)) {
            self.track(op, subject, &event);
            if let Some(operation) = self.pending.get_mut(&op) {
                operation.events.push((u32::MAX, subject, event));
            }
            self.write_ended();
        } else if let Some(client) = lost {
            // Its `killed` may still be on its way: keep it for that.
            self.track(0, subject, &event);
            self.lost_early.insert(client, (subject, event));
        } else {
            self.track(0, subject, &event);
            tracing::debug!(?event, "event outside any operation; not logged");
        }
    }

    fn write_ended(&mut self) {
        while self.pending.get(&self.next_to_write).is_some_and(|op| op.ended) && !self.awaits(self.next_to_write) {
            let mut operation = self.pending.remove(&self.next_to_write).expect("checked above");
            // Stable: events of one step keep their causal arrival order.
            operation.events.sort_by_key(|(step, ..)| *step);
            for (_, subject, event) in &operation.events {
                self.write_line(*subject, event);
            }
            self.next_to_write += 1;
        }
    }

    fn write_line(&mut self, node: Subject, event: &AnyEvent) {
        let seq = self.lines.len() as u64;
        let line = serde_json::to_string(&Line { seq, node, event }).expect("events always serialise");
        if let Some(out) = &mut self.out {
            let written = writeln!(out, "{line}").and_then(|()| out.flush());
            if let Err(error) = written {
                self.write_error.get_or_insert(error);
                self.out = None;
            }
        }
        self.lines.push(line);
    }
}

impl EventSink for EventLog {
    fn record(&self, trace: Trace, node: Node, event: Event) {
        self.file(trace, Subject::Node(node), AnyEvent::Node(event));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(id: u64) -> Event {
        Event::Registered { client: ClientId(id) }
    }

    #[test]
    fn operations_are_written_in_order_whatever_order_they_end_in() {
        let log = EventLog::create(None).unwrap();
        let first = log.begin();
        let second = log.begin();
        log.record(Trace { op: second.op, step: 0 }, Node::Tracker, registered(2));
        log.end(second.op);
        assert!(
            log.lines().is_empty(),
            "a later operation was written before an open earlier one"
        );
        log.record(Trace { op: first.op, step: 1 }, Node::Tracker, registered(11));
        log.record(Trace { op: first.op, step: 0 }, Node::Tracker, registered(10));
        log.end(first.op);
        let clients: Vec<String> = log
            .lines()
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["client"].to_string())
            .collect();
        assert_eq!(clients, ["10", "11", "2"]);
    }

    #[test]
    fn lines_hold_seq_node_event_then_fields() {
        let log = EventLog::create(None).unwrap();
        log.record_alone(Subject::Scenario, ScenarioEvent::Note { text: "hi".into() });
        log.record_alone(Subject::Node(Node::Client(ClientId(7))), ScenarioEvent::Started);
        assert_eq!(
            log.lines(),
            [
                r#"{"seq":0,"node":"scenario","event":"note","text":"hi"}"#,
                r#"{"seq":1,"node":"7","event":"started"}"#
            ]
        );
    }

    #[test]
    fn a_killed_clients_loss_closes_the_operation_that_killed_it() {
        let (log, kill) = with_client_7();
        let killed = Event::Killed { file: None, sent: None };
        log.record(kill, Node::Client(ClientId(7)), killed);
        log.end(kill.op);
        assert_eq!(log.lines().len(), 1, "the kill was written before the tracker noticed");
        let later = log.begin();
        log.record_in(later, Subject::Scenario, ScenarioEvent::Note { text: "after".into() });
        log.end(later.op);
        log.record(
            Trace::default(),
            Node::Tracker,
            Event::ClientLost { client: ClientId(7) },
        );
        assert!(log.settle(kill.op, Duration::from_secs(1)));
        let events: Vec<String> = log
            .lines()
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["event"].to_string())
            .collect();
        assert_eq!(events, ["\"registered\"", "\"killed\"", "\"client_lost\"", "\"note\""]);
    }

    /// A log in which client 7 registered; returns it with a new operation.
    fn with_client_7() -> (EventLog, Trace) {
        let log = EventLog::create(None).unwrap();
        let register = log.begin();
        log.record(register, Node::Tracker, registered(7));
        log.end(register.op);
        let next = log.begin();
        (log, next)
    }

    #[test]
    fn a_loss_that_arrives_before_its_kill_still_closes_the_kill() {
        let (log, kill) = with_client_7();
        log.record(
            Trace::default(),
            Node::Tracker,
            Event::ClientLost { client: ClientId(7) },
        );
        log.record(
            kill,
            Node::Client(ClientId(7)),
            Event::Killed { file: None, sent: None },
        );
        log.end(kill.op);
        assert!(log.settle(kill.op, Duration::from_millis(10)));
        let last = log.lines().last().cloned().unwrap();
        assert!(last.contains("client_lost"), "{last}");
    }

    #[test]
    fn settle_gives_up_on_an_event_that_never_comes() {
        let (log, kill) = with_client_7();
        log.record(
            kill,
            Node::Client(ClientId(7)),
            Event::Killed { file: None, sent: None },
        );
        log.end(kill.op);
        assert!(!log.settle(kill.op, Duration::from_millis(10)));
        assert_eq!(log.lines().len(), 2);
    }

    #[test]
    fn events_of_ended_operations_are_not_logged() {
        let log = EventLog::create(None).unwrap();
        let op = log.begin();
        log.end(op.op);
        log.record(op, Node::Tracker, registered(1));
        assert!(log.lines().is_empty());
    }
}

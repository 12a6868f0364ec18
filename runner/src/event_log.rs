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
//! Some events have no request behind them. The tracker noticing that a
//! client's session dropped (`client_lost`) is awaited when a registered
//! client is killed (the log sees its `killed` event), or when the runner
//! says so ([`EventLog::await_move`]: a client moving to another tracker):
//! the log files it at the end of that operation and holds the operation
//! open until it arrives ([`EventLog::settle`]). Under simulation, anything else no
//! request caused (a session timing out while the script sleeps) belongs to
//! the operation the script is running: there, nothing happens between
//! operations, and the order of what happens is itself repeatable.
//!
//! Nothing is dropped quietly: an event that comes after its operation
//! ended, or one that has no place, is an error the run fails with.
//!
//! Nor does a port the system chose get in: an address in an event's text
//! (an error naming the tracker it lost) is written as the script gave it
//! ([`EventLog::name_address`]), whatever the node really listens on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use phile_core::events::{Event, EventSink, Node};
use phile_core::{ClientId, FileName, Trace};
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

/// Where events no request caused go, besides awaited losses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untraced {
    /// Nowhere: over real networks such an event could land anywhere, so
    /// it is an error.
    Refused,
    /// Into the operation the script is running (simulation).
    CurrentOperation,
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
        /// The network the run used: `tcp` or `sim`.
        network: &'static str,
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
    /// A client crashed (the core's `killed`), with where, when a
    /// scripted fault crashed it mid-transfer ([`Journal::fault_struck`]).
    Killed {
        /// The file being sent when the fault fired.
        #[serde(skip_serializing_if = "Option::is_none")]
        file: Option<String>,
        /// How many of its bytes had been sent.
        #[serde(skip_serializing_if = "Option::is_none")]
        sent: Option<u64>,
    },
    /// The script capped a client's rates (`c.set_rate(up, down)`).
    RateSet {
        /// Upload cap, bytes per second (0: none).
        up: u64,
        /// Download cap, bytes per second (0: none).
        down: u64,
    },
    /// The script let time pass (`sleep(seconds)`).
    Slept {
        /// How long.
        seconds: f64,
    },
    /// The script changed the simulated network between two nodes
    /// (`latency`, `partition`, `heal`).
    NetworkChanged {
        /// `latency`, `partition` or `heal`.
        change: &'static str,
        /// One node.
        a: Subject,
        /// The other.
        b: Subject,
        /// The one-way delay set by `latency`, in milliseconds.
        #[serde(skip_serializing_if = "Option::is_none")]
        ms: Option<u64>,
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
    /// The script line of the call that caused it.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
}

/// Seconds since the run started, as the run counts them (virtual under
/// simulation): when each event arrived, for the report's timeline. Never
/// written into the log itself.
pub type Clock = Box<dyn Fn() -> f64 + Send + Sync>;

/// The log of one scenario run.
pub struct EventLog {
    /// A std mutex: held only to file or write an event, never across an
    /// `.await`, and recorded from both the script thread and tokio tasks.
    inner: Mutex<Inner>,
    /// Signalled whenever an awaited event arrives.
    arrived: Condvar,
    /// When events arrive; set once the run's backend is up.
    clock: std::sync::OnceLock<Clock>,
}

struct Inner {
    /// Where unawaited events no request caused go.
    untraced: Untraced,
    /// The number the next operation gets.
    next_op: u64,
    /// The script line the next operations belong to.
    line: Option<u32>,
    /// The operation the script began last.
    current: u64,
    /// Events of operations not yet written, by operation.
    pending: BTreeMap<u64, Operation>,
    /// The lowest operation not yet written.
    next_to_write: u64,
    /// The lines written so far.
    lines: Vec<String>,
    /// When the event of each line arrived, in the run's seconds.
    times: Vec<f64>,
    /// The JSON Lines file, when asked for.
    out: Option<BufWriter<File>>,
    /// The first error writing the file, reported at the end of the run.
    write_error: Option<io::Error>,
    /// Clients registered with a tracker, as its events tell.
    registered: HashSet<ClientId>,
    /// Clients whose `client_lost` is awaited, with the operation it
    /// belongs to.
    awaiting: HashMap<ClientId, u64>,
    /// Clients moving to another tracker: the `client_lost` awaited is the
    /// old tracker's, and leaves them registered (with the new one, whose
    /// `registered` may come first).
    moving: HashSet<ClientId>,
    /// `client_lost` events that came before the `killed` they belong to
    /// (in process mode they travel on another process's pipe).
    lost_early: HashMap<ClientId, (Subject, AnyEvent, f64)>,
    /// The first event that had no place, described: the run fails with it.
    misplaced: Option<String>,
    /// Clients a fault crashed mid-transfer, by the operation they are
    /// filed under, with the file and the bytes sent, not yet told on the
    /// console ([`EventLog::take_fault_crashes`]).
    fault_crashes: Vec<(u64, ClientId, String, u64)>,
    /// Where scripted faults struck, by client and the trace of the
    /// transfer, until the `killed` event they cause comes.
    strikes: HashMap<(ClientId, Trace), (String, u64)>,
    /// Where nodes really listen, and the address the script gave each,
    /// as text: the first is written as the second.
    addresses: HashMap<String, String>,
}

/// An event filed under an operation: its step, who it is about, the
/// event, and when it arrived (the run's seconds).
type Filed = (u32, Subject, AnyEvent, f64);

#[derive(Default)]
struct Operation {
    /// Whether the operation has ended, so no more events can come.
    ended: bool,
    /// The script line that began it.
    line: Option<u32>,
    /// Its events with their step and arrival time, in arrival order.
    events: Vec<Filed>,
}

impl EventLog {
    /// A log that also streams to `path` when given, placing untraced
    /// events as `untraced` says.
    pub fn create(path: Option<&Path>, untraced: Untraced) -> io::Result<EventLog> {
        let out = match path {
            Some(path) => Some(BufWriter::new(File::create(path)?)),
            None => None,
        };
        Ok(EventLog {
            inner: Mutex::new(Inner {
                untraced,
                // Operation 0 is `Trace::default()`: "no operation".
                next_op: 1,
                line: None,
                current: 0,
                pending: BTreeMap::new(),
                next_to_write: 1,
                lines: Vec::new(),
                times: Vec::new(),
                out,
                write_error: None,
                registered: HashSet::new(),
                moving: HashSet::new(),
                awaiting: HashMap::new(),
                lost_early: HashMap::new(),
                misplaced: None,
                fault_crashes: Vec::new(),
                strikes: HashMap::new(),
                addresses: HashMap::new(),
            }),
            arrived: Condvar::new(),
            clock: std::sync::OnceLock::new(),
        })
    }

    /// Sets the clock that times events as they arrive (once).
    pub fn set_clock(&self, clock: Clock) {
        let _ = self.clock.set(clock);
    }

    fn now(&self) -> f64 {
        self.clock.get().map_or(0.0, |clock| clock())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("event log poisoned")
    }

    /// Writes `actual`, where a node really listens (a port the system
    /// chose, a simulated address), as `scripted`, the address the script
    /// gave it, wherever an event's text names it: the log then holds no
    /// port the run happened to get, and is the same on every network.
    pub fn name_address(&self, actual: SocketAddr, scripted: SocketAddr) {
        let mut inner = self.lock();
        let (actual, scripted) = (actual.to_string(), scripted.to_string());
        match actual == scripted {
            true => inner.addresses.remove(&actual),
            false => inner.addresses.insert(actual, scripted),
        };
    }

    /// Operations begun from now on come from script line `line`.
    pub fn at_line(&self, line: Option<u32>) {
        self.lock().line = line;
    }

    /// Begins the next operation; its requests carry the returned trace.
    pub fn begin(&self) -> Trace {
        let mut inner = self.lock();
        let op = inner.next_op;
        inner.next_op += 1;
        inner.current = op;
        let line = inner.line;
        inner.pending.insert(
            op,
            Operation {
                line,
                ..Operation::default()
            },
        );
        Trace::new(op)
    }

    /// The script waits on operation `op`, begun earlier (`x.wait()`):
    /// until it begins another, untraced events go there.
    pub fn resume(&self, op: u64) {
        self.lock().current = op;
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

    /// Expects the tracker `client` is registered with, if the log says it
    /// is registered, to forget it (its `client_lost`) because operation
    /// `op` moves it to another tracker. Returns whether it awaits it: a
    /// tracker that forgot the client already (its session timed out) has
    /// nothing more to say.
    pub fn await_move(&self, client: ClientId, op: u64) -> bool {
        let mut inner = self.lock();
        if !inner.registered.contains(&client) {
            return false;
        }
        inner.awaiting.insert(client, op);
        inner.moving.insert(client);
        true
    }

    /// A move that [`EventLog::await_move`] awaited failed: the client
    /// dropped its old session before it could open the new one, so it is
    /// registered nowhere (the old tracker's `client_lost` is still
    /// awaited, and it forgets the client too).
    pub fn move_failed(&self, client: ClientId) {
        let mut inner = self.lock();
        inner.moving.remove(&client);
        inner.registered.remove(&client);
    }

    /// Whether operation `op` still waits for an event.
    pub fn awaits(&self, op: u64) -> bool {
        self.lock().awaits(op)
    }

    /// Waits until operation `op` has every event it awaits, at most
    /// `limit`. An awaited event that does not come is an error naming it,
    /// and the run fails with it rather than with a log that silently
    /// differs.
    pub fn settle(&self, op: u64, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        let mut inner = self.lock();
        if let Some(client) = inner.lost_early.keys().min().copied() {
            inner.lost_early.remove(&client);
            return Err(format!(
                "the tracker forgot client {client}, which nothing in this step stopped"
            ));
        }
        while inner.awaits(op) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let mut missing: Vec<ClientId> = inner
                    .awaiting
                    .iter()
                    .filter(|(_, awaited)| **awaited == op)
                    .map(|(client, _)| *client)
                    .collect();
                missing.sort();
                for client in &missing {
                    inner.awaiting.remove(client);
                    inner.moving.remove(client);
                }
                inner.write_ended();
                let missing: Vec<String> = missing.iter().map(ToString::to_string).collect();
                // Under simulation the backend did the waiting: no limit here.
                let within = match limit.is_zero() {
                    true => String::new(),
                    false => format!(" within {} s", limit.as_secs()),
                };
                return Err(format!(
                    "the tracker did not notice{within} that client {} went away (its `client_lost` never came)",
                    missing.join(", ")
                ));
            }
            inner = self.arrived.wait_timeout(inner, left).expect("event log poisoned").0;
        }
        Ok(())
    }

    /// The first event that had no place in the log, described, if any.
    pub fn misplaced(&self) -> Option<String> {
        self.lock().misplaced.clone()
    }

    fn file(&self, trace: Trace, subject: Subject, event: AnyEvent) {
        let at = self.now();
        let mut inner = self.lock();
        if trace == Trace::default() {
            inner.file_untraced(subject, event, at);
            self.arrived.notify_all();
            return;
        }
        inner.track(trace.op, subject, &event);
        match inner.pending.get_mut(&trace.op) {
            Some(operation) if !operation.ended => operation.events.push((trace.step, subject, event, at)),
            _ => inner.misplace(format!(
                "{} ({}) arrived after the step that caused it had ended",
                subject_name(subject),
                as_logged(&event)
            )),
        }
    }

    /// The clients a `kill_after` fault crashed during operation `op`
    /// (a download), with the file and the bytes of it sent, by client.
    pub fn take_fault_crashes(&self, op: u64) -> Vec<(ClientId, String, u64)> {
        let mut inner = self.lock();
        let (mut taken, kept) = std::mem::take(&mut inner.fault_crashes)
            .into_iter()
            .partition::<Vec<_>, _>(|(filed, ..)| *filed == op);
        inner.fault_crashes = kept;
        taken.sort();
        taken
            .into_iter()
            .map(|(_, client, file, sent)| (client, file, sent))
            .collect()
    }

    /// The lines written so far (every line, once the run is over).
    pub fn lines(&self) -> Vec<String> {
        self.lock().lines.clone()
    }

    /// When the event of each line arrived, in the run's seconds (virtual
    /// under simulation), aligned with [`EventLog::lines`].
    pub fn times(&self) -> Vec<f64> {
        self.lock().times.clone()
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

/// An event as its line in the log shows it.
fn as_logged(event: &AnyEvent) -> String {
    serde_json::to_string(event).expect("events always serialise")
}

fn subject_name(subject: Subject) -> String {
    match subject {
        Subject::Node(Node::Tracker) => "an event of the tracker".to_owned(),
        Subject::Node(Node::Client(id)) => format!("an event of client {id}"),
        Subject::Scenario => "an event of the scenario".to_owned(),
    }
}

impl Inner {
    /// Whether operation `op` still waits for an event.
    fn awaits(&self, op: u64) -> bool {
        self.awaiting.values().any(|awaited| *awaited == op)
    }

    /// Keeps track of who is registered, and awaits the loss of a
    /// registered client that was killed.
    fn track(&mut self, op: u64, subject: Subject, event: &AnyEvent) {
        match (subject, event) {
            (_, AnyEvent::Node(Event::Registered { client })) => {
                self.registered.insert(*client);
            }
            (_, AnyEvent::Node(Event::ClientLeft { client } | Event::ClientLost { client })) => {
                // The old tracker of a client that moved: still registered.
                let moved = self.moving.remove(client);
                if !moved {
                    self.registered.remove(client);
                }
            }
            (Subject::Node(Node::Client(client)), AnyEvent::Scenario(ScenarioEvent::Killed { file, sent })) => {
                if let (Some(file), Some(sent)) = (file, sent) {
                    self.fault_crashes.push((op, client, file.clone(), *sent));
                }
                if let Some((subject, lost, lost_at)) = self.lost_early.remove(&client) {
                    if let Some(operation) = self.pending.get_mut(&op) {
                        operation.events.push((u32::MAX, subject, lost, lost_at));
                    }
                } else if self.registered.contains(&client) {
                    self.awaiting.insert(client, op);
                }
            }
            _ => {}
        }
    }

    fn misplace(&mut self, what: String) {
        tracing::error!("{what}");
        self.misplaced.get_or_insert(what);
    }

    /// Files an event no request caused: an awaited `client_lost` goes at
    /// the end of its operation; under simulation anything else goes into
    /// the operation the script is running; over real networks it has no
    /// place.
    fn file_untraced(&mut self, subject: Subject, event: AnyEvent, at: f64) {
        let lost = match &event {
            AnyEvent::Node(Event::ClientLost { client }) => Some(*client),
            _ => None,
        };
        let awaited = lost.and_then(|client| self.awaiting.remove(&client));
        let op = match (awaited, self.untraced, lost) {
            (Some(op), ..) => op,
            (None, Untraced::CurrentOperation, _) => self.current,
            // Its `killed` may still be on its way, on another pipe.
            (None, Untraced::Refused, Some(client)) if self.registered.contains(&client) => {
                self.track(0, subject, &event);
                self.lost_early.insert(client, (subject, event, at));
                return;
            }
            (None, Untraced::Refused, _) => {
                return self.misplace(format!(
                    "{} that no step of the script caused ({})",
                    subject_name(subject),
                    as_logged(&event)
                ))
            }
        };
        self.track(op, subject, &event);
        match self.pending.get_mut(&op) {
            Some(operation) if !operation.ended || awaited.is_some() => {
                operation.events.push((u32::MAX, subject, event, at));
            }
            _ => self.misplace(format!(
                "{} ({}) came between two steps of the script",
                subject_name(subject),
                as_logged(&event)
            )),
        }
        self.write_ended();
    }

    fn write_ended(&mut self) {
        while self.pending.get(&self.next_to_write).is_some_and(|op| op.ended) && !self.awaits(self.next_to_write) {
            let mut operation = self.pending.remove(&self.next_to_write).expect("checked above");
            // Stable: events of one step keep their causal arrival order.
            operation.events.sort_by_key(|(step, ..)| *step);
            order_races(&mut operation.events);
            for (_, subject, event, at) in &operation.events {
                self.write_line(*subject, event, operation.line);
                self.times.push(*at);
            }
            self.next_to_write += 1;
        }
    }

    fn write_line(&mut self, node: Subject, event: &AnyEvent, line: Option<u32>) {
        let seq = self.lines.len() as u64;
        let text = serde_json::to_string(&Line { seq, node, event, line }).expect("events always serialise");
        let text = with_scripted_addresses(text, &self.addresses);
        if let Some(out) = &mut self.out {
            let written = writeln!(out, "{text}").and_then(|()| out.flush());
            if let Err(error) = written {
                self.write_error.get_or_insert(error);
                self.out = None;
            }
        }
        self.lines.push(text);
    }
}

/// `text` with each address of `book` in it (an IPv4 address and port,
/// not part of a longer word or number) written as the book says. One
/// pass, whatever the size of the book, and an address written once is
/// never looked at again.
fn with_scripted_addresses(text: String, book: &HashMap<String, String>) -> String {
    if book.is_empty() {
        return text;
    }
    let is_address_char = |c: char| c.is_ascii_digit() || c == '.' || c == ':';
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let run_len = rest[start..]
            .find(|c| !is_address_char(c))
            .unwrap_or(rest.len() - start);
        // A sentence may go on right after the address: "at 1.2.3.4:5: ...".
        let run = rest[start..start + run_len].trim_end_matches(['.', ':']);
        let after_word = rest[..start].chars().next_back().is_some_and(|c| c.is_alphanumeric());
        out.push_str(&rest[..start]);
        match book.get(run).filter(|_| !after_word) {
            Some(scripted) => out.push_str(scripted),
            None => out.push_str(run),
        }
        rest = &rest[start + run.len()..];
    }
    out.push_str(rest);
    out
}

/// Orders by client the runs of events that only timing orders: holders
/// killed in one swarm download (its conversations share one step, so
/// over real TCP they would be listed in the order they crashed), and the
/// `client_lost` events filed together at the end of an operation (the
/// tracker noticing those crashes; under simulation, sessions timing out
/// in one `sleep` too).
fn order_races(events: &mut [Filed]) {
    // The kind of race (kills, losses), then the client it orders by.
    let racing = |(_, subject, event, _): &Filed| match (subject, event) {
        (Subject::Node(Node::Client(client)), AnyEvent::Scenario(ScenarioEvent::Killed { .. })) => Some((0, *client)),
        (_, AnyEvent::Node(Event::ClientLost { client })) => Some((1, *client)),
        _ => None,
    };
    let same_race = |a: &Filed, b: &Filed| a.0 == b.0 && racing(a).zip(racing(b)).is_some_and(|(a, b)| a.0 == b.0);
    for run in events.chunk_by_mut(same_race) {
        run.sort_by_key(|entry| racing(entry));
    }
}

impl EventSink for EventLog {
    fn record(&self, trace: Trace, node: Node, event: Event) {
        let event = match event {
            // Written with where a fault struck, if one caused it.
            Event::Killed => {
                let struck = match node {
                    Node::Client(client) => {
                        let mut inner = self.lock();
                        let struck = inner.strikes.remove(&(client, trace));
                        // A crashed client reports nothing more: a strike
                        // whose crash it never reported goes too.
                        inner.strikes.retain(|(struck, _), _| *struck != client);
                        struck
                    }
                    Node::Tracker => None,
                };
                let (file, sent) = struck.unzip();
                AnyEvent::Scenario(ScenarioEvent::Killed { file, sent })
            }
            // Over a real network, what depends on timing (the bytes each
            // peer of a swarm sent) stays out, so the log repeats; under
            // simulation everything repeats, and it stays in.
            event => AnyEvent::Node(match self.lock().untraced {
                Untraced::Refused => event.without_timing(),
                Untraced::CurrentOperation => event,
            }),
        };
        self.file(trace, Subject::Node(node), event);
    }
}

/// Where the events of the nodes a runner starts go: the core's, and what
/// a scripted fault tells of the crash it is about to cause, which the
/// core (which knows nothing of faults) does not report.
pub trait Journal: EventSink {
    /// A `kill_after` fault struck `client`'s transfer traced `trace`,
    /// after `sent` bytes of `file`: the client's `killed` event, which
    /// comes next with the same trace, says so.
    fn fault_struck(&self, client: ClientId, trace: Trace, file: FileName, sent: u64);
}

impl Journal for EventLog {
    fn fault_struck(&self, client: ClientId, trace: Trace, file: FileName, sent: u64) {
        self.lock().strikes.insert((client, trace), (file.to_string(), sent));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registered(id: u64) -> Event {
        Event::Registered { client: ClientId(id) }
    }

    fn log() -> EventLog {
        EventLog::create(None, Untraced::Refused).unwrap()
    }

    fn events(log: &EventLog) -> Vec<String> {
        log.lines()
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["event"].to_string())
            .collect()
    }

    #[test]
    fn operations_are_written_in_order_whatever_order_they_end_in() {
        let log = log();
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
    fn an_address_the_run_happened_to_get_is_written_as_the_script_gave_it() {
        let log = log();
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        log.name_address(at("127.0.0.1:41234"), at("127.0.0.1:8000"));
        log.name_address(at("10.0.0.1:49152"), at("127.0.0.1:0"));
        // One node's real address is another's scripted one: each is
        // written once, as its own node's.
        log.name_address(at("127.0.0.1:8000"), at("127.0.0.1:9000"));
        let texts = [
            "lost the session with the tracker at 127.0.0.1:41234: it closed",
            "the tracker at 10.0.0.1:49152 closed the session",
            "127.0.0.1:41234 and 127.0.0.1:8000.",
            // Longer addresses and ports, and a port alone, are left be.
            "127.0.0.1:412345 and 127.0.0.1:4123 and 110.0.0.1:49152 and port 41234",
        ];
        for text in texts {
            log.record_alone(Subject::Scenario, ScenarioEvent::Note { text: text.into() });
        }
        let written: Vec<String> = log
            .lines()
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["text"].to_string())
            .collect();
        assert_eq!(
            written,
            [
                r#""lost the session with the tracker at 127.0.0.1:8000: it closed""#,
                r#""the tracker at 127.0.0.1:0 closed the session""#,
                r#""127.0.0.1:8000 and 127.0.0.1:9000.""#,
                r#""127.0.0.1:412345 and 127.0.0.1:4123 and 110.0.0.1:49152 and port 41234""#,
            ]
        );
    }

    #[test]
    fn lines_hold_seq_node_event_fields_then_the_script_line() {
        let log = log();
        log.record_alone(Subject::Scenario, ScenarioEvent::Note { text: "hi".into() });
        log.at_line(Some(7));
        log.record_alone(Subject::Node(Node::Client(ClientId(7))), ScenarioEvent::Started);
        assert_eq!(
            log.lines(),
            [
                r#"{"seq":0,"node":"scenario","event":"note","text":"hi"}"#,
                r#"{"seq":1,"node":"7","event":"started","line":7}"#
            ]
        );
    }

    /// A log in which client 7 registered; returns it with a new operation.
    fn with_client_7() -> (EventLog, Trace) {
        let log = log();
        let register = log.begin();
        log.record(register, Node::Tracker, registered(7));
        log.end(register.op);
        let next = log.begin();
        (log, next)
    }

    #[test]
    fn a_killed_clients_loss_closes_the_operation_that_killed_it() {
        let (log, kill) = with_client_7();
        log.record(kill, Node::Client(ClientId(7)), Event::Killed);
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
        assert!(log.settle(kill.op, Duration::from_secs(1)).is_ok());
        assert_eq!(
            events(&log),
            ["\"registered\"", "\"killed\"", "\"client_lost\"", "\"note\""]
        );
    }

    #[test]
    fn a_client_moving_to_another_tracker_stays_registered_whichever_tracker_speaks_first() {
        let (log, moving) = with_client_7();
        assert!(log.await_move(ClientId(7), moving.op));
        // The new tracker's `registered`, then the old one's `client_lost`.
        log.record(moving, Node::Tracker, registered(7));
        log.end(moving.op);
        let lost = Event::ClientLost { client: ClientId(7) };
        log.record(Trace::default(), Node::Tracker, lost.clone());
        assert!(log.settle(moving.op, Duration::from_secs(1)).is_ok());
        // Killed now, its loss to the new tracker is awaited.
        let kill = log.begin();
        let killed = Event::Killed;
        log.record(kill, Node::Client(ClientId(7)), killed);
        log.end(kill.op);
        assert!(log.awaits(kill.op), "the kill does not wait for the tracker");
        log.record(Trace::default(), Node::Tracker, lost);
        assert!(log.settle(kill.op, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn a_client_whose_move_failed_is_registered_nowhere() {
        let (log, moving) = with_client_7();
        assert!(log.await_move(ClientId(7), moving.op));
        log.end(moving.op);
        let lost = Event::ClientLost { client: ClientId(7) };
        log.record(Trace::default(), Node::Tracker, lost);
        assert!(log.settle(moving.op, Duration::from_secs(1)).is_ok());
        log.move_failed(ClientId(7));
        // Killed now, nothing is awaited: no tracker knows it.
        let kill = log.begin();
        let killed = Event::Killed;
        log.record(kill, Node::Client(ClientId(7)), killed);
        log.end(kill.op);
        assert!(!log.awaits(kill.op));
    }

    #[test]
    fn a_client_its_tracker_forgot_already_moves_without_awaiting_a_loss() {
        let (log, left) = with_client_7();
        log.record(left, Node::Tracker, Event::ClientLeft { client: ClientId(7) });
        log.end(left.op);
        let moving = log.begin();
        assert!(!log.await_move(ClientId(7), moving.op));
        assert!(!log.awaits(moving.op));
    }

    #[test]
    fn holders_killed_in_one_step_are_listed_by_client_whatever_order_they_crash_in() {
        let log = log();
        let register = log.begin();
        for client in [7, 8] {
            log.record(register, Node::Tracker, registered(client));
        }
        log.end(register.op);
        let download = log.begin();
        let holders_step = Trace { step: 1, ..download };
        log.record(Trace { step: 0, ..download }, Node::Tracker, registered(9));
        for client in [8, 7] {
            let killed = Event::Killed;
            log.record(holders_step, Node::Client(ClientId(client)), killed);
        }
        log.record(Trace { step: 2, ..download }, Node::Tracker, registered(10));
        log.end(download.op);
        for client in [8, 7] {
            let lost = Event::ClientLost {
                client: ClientId(client),
            };
            log.record(Trace::default(), Node::Tracker, lost);
        }
        assert!(log.settle(download.op, Duration::from_secs(1)).is_ok());
        let written: Vec<String> = log.lines()[2..]
            .iter()
            .map(|line| {
                let line: serde_json::Value = serde_json::from_str(line).unwrap();
                format!("{} {} {}", line["node"], line["event"], line["client"])
            })
            .collect();
        assert_eq!(
            written,
            [
                r#""tracker" "registered" 9"#,
                r#""7" "killed" null"#,
                r#""8" "killed" null"#,
                r#""tracker" "registered" 10"#,
                r#""tracker" "client_lost" 7"#,
                r#""tracker" "client_lost" 8"#,
            ]
        );
    }

    #[test]
    fn fault_crashes_are_taken_by_the_download_they_cut() {
        let log = log();
        let (first, second) = (log.begin(), log.begin());
        for (download, client) in [(second, 8), (first, 7), (second, 6)] {
            log.fault_struck(ClientId(client), download, "f.bin".parse().unwrap(), 10);
            log.record(download, Node::Client(ClientId(client)), Event::Killed);
        }
        // A strike of another transfer says nothing of this kill.
        log.fault_struck(ClientId(5), second, "f.bin".parse().unwrap(), 10);
        log.record(first, Node::Client(ClientId(5)), Event::Killed);
        let crashed = |op| -> Vec<u64> { log.take_fault_crashes(op).iter().map(|(c, ..)| c.0).collect() };
        assert_eq!(crashed(second.op), [6, 8], "by client, only the second download's");
        assert_eq!(crashed(first.op), [7], "a kill by the script is not a fault's");
        assert!(crashed(first.op).is_empty(), "told once");
    }

    #[test]
    fn a_loss_that_arrives_before_its_kill_still_closes_the_kill() {
        let (log, kill) = with_client_7();
        log.record(
            Trace::default(),
            Node::Tracker,
            Event::ClientLost { client: ClientId(7) },
        );
        log.record(kill, Node::Client(ClientId(7)), Event::Killed);
        log.end(kill.op);
        assert!(log.settle(kill.op, Duration::from_millis(10)).is_ok());
        let last = log.lines().last().cloned().unwrap();
        assert!(last.contains("client_lost"), "{last}");
    }

    #[test]
    fn a_loss_that_never_comes_is_an_error_naming_the_client() {
        let (log, kill) = with_client_7();
        log.record(kill, Node::Client(ClientId(7)), Event::Killed);
        log.end(kill.op);
        let error = log.settle(kill.op, Duration::from_millis(10)).unwrap_err();
        assert!(error.contains("client 7"), "{error}");
    }

    #[test]
    fn an_event_after_its_operation_ended_is_an_error_not_a_silent_gap() {
        let log = log();
        let op = log.begin();
        log.end(op.op);
        log.record(op, Node::Tracker, registered(1));
        assert!(log.lines().is_empty());
        let misplaced = log.misplaced().expect("the late event was dropped quietly");
        assert!(
            misplaced.contains(r#"{"event":"registered","client":1}"#) && misplaced.contains("had ended"),
            "{misplaced}"
        );
    }

    #[test]
    fn unawaited_untraced_events_go_to_the_current_operation_only_in_simulation() {
        // Client 3 never registered: nothing awaits its loss.
        let lost = || Event::ClientLost { client: ClientId(3) };
        let real = log();
        let op = real.begin();
        real.record(Trace::default(), Node::Tracker, lost());
        real.end(op.op);
        assert!(real.misplaced().is_some());

        let simulated = EventLog::create(None, Untraced::CurrentOperation).unwrap();
        let op = simulated.begin();
        simulated.record(Trace::default(), Node::Tracker, lost());
        simulated.end(op.op);
        assert_eq!(events(&simulated), ["\"client_lost\""]);
        assert!(simulated.misplaced().is_none());
    }

    #[test]
    fn under_simulation_an_untraced_event_during_a_wait_goes_into_the_transfer_waited_on() {
        let log = EventLog::create(None, Untraced::CurrentOperation).unwrap();
        // A transfer begins and runs on; the script begins (and ends)
        // another operation meanwhile, then waits on the transfer.
        let transfer = log.begin();
        let other = log.begin();
        log.record_in(
            other,
            Subject::Scenario,
            ScenarioEvent::Note {
                text: "meanwhile".into(),
            },
        );
        log.end(other.op);
        log.resume(transfer.op);
        log.record(
            Trace::default(),
            Node::Tracker,
            Event::ClientLost { client: ClientId(3) },
        );
        log.end(transfer.op);
        assert!(log.misplaced().is_none(), "{:?}", log.misplaced());
        assert_eq!(events(&log), ["\"client_lost\"", "\"note\""]);
    }
}

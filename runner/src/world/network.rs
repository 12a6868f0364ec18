//! Time and the network: `sleep`, `now`, `c.set_rate`, and, on a simulated
//! network only, `latency`, `partition`, `heal`.

use std::time::Duration;

use phile_core::events::Node;

use super::{ClientRef, TrackerRef, Verdict, World};
use crate::backend::NodeKey;
use crate::command::{Command, Reply};
use crate::event_log::{ScenarioEvent, Subject};

/// The longest a script may sleep at once: a year, of real or virtual time.
const LONGEST_SLEEP: Duration = Duration::from_secs(365 * 24 * 3600);

/// A tracker or a client, for the verbs that take either.
#[derive(Clone, Debug)]
pub enum NodeRef {
    /// A tracker.
    Tracker(TrackerRef),
    /// A client.
    Client(ClientRef),
}

impl World {
    /// `sleep(seconds)`: lets time pass while the nodes go on.
    pub fn sleep(&self, seconds: f64) -> Verdict<()> {
        let duration = Duration::try_from_secs_f64(seconds)
            .ok()
            .filter(|duration| *duration <= LONGEST_SLEEP)
            .ok_or_else(|| format!("sleep({seconds}): give a number of seconds from 0 to 31536000 (a year)"))?;
        self.operation(|trace| {
            self.log
                .record_in(trace, Subject::Scenario, ScenarioEvent::Slept { seconds });
            self.backend.borrow_mut().sleep(duration);
        })?;
        self.say("scenario", format_args!("slept {seconds} s"));
        Ok(())
    }

    /// `now()`: seconds since the scenario started, virtual under
    /// simulation.
    pub fn seconds_now(&self) -> f64 {
        super::seconds(self.now())
    }

    /// `timestamp()`, Rhai's reading of the wall clock: refused under
    /// `--sim`, where it would make a run differ from the last.
    pub fn wall_clock(&self) -> Verdict<std::time::Instant> {
        if self.settings.sim {
            return Err("timestamp() reads the wall clock, which differs from run to run: \
                        under --sim use now(), the virtual seconds since the scenario started"
                .to_owned());
        }
        Ok(std::time::Instant::now())
    }

    /// `c.set_rate(up, down)`: caps `c`'s upload and download, in bytes per
    /// second over all its transfers together; 0 lifts a cap.
    pub fn set_rate(&self, c: &ClientRef, up: i64, down: i64) -> Verdict<()> {
        let rate = |value: i64, which: &str| {
            u64::try_from(value).map_err(|_| {
                format!("set_rate: the {which} cap {value} must be 0 (no cap) or a number of bytes per second")
            })
        };
        let (up, down) = (rate(up, "upload")?, rate(down, "download")?);
        let node = self.live(c)?;
        let reply = self.act_as(
            c,
            node,
            ScenarioEvent::RateSet { up, down },
            Command::SetRate { up, down },
        )?;
        if let Reply::Failed { error } = reply {
            return Err(format!("client {} cannot set its rates: {error}", c.id));
        }
        if let Some(slot) = self.clients.borrow_mut().get_mut(&c.id) {
            slot.rate = (up, down);
        }
        self.count(|s| s.steps += 1);
        self.say(
            c.id,
            format_args!("rates capped: up {up} B/s, down {down} B/s (0: none)"),
        );
        Ok(())
    }

    /// `latency(a, b, ms)`.
    pub fn latency(&self, a: &NodeRef, b: &NodeRef, ms: i64) -> Verdict<()> {
        let ms = u64::try_from(ms)
            .ok()
            .filter(|ms| Duration::from_millis(*ms) <= LONGEST_SLEEP)
            .ok_or_else(|| {
                format!("latency(a, b, {ms}): give a delay in milliseconds from 0 to 31536000000 (a year)")
            })?;
        self.change_network("latency", a, b, Some(ms), |network, a, b| {
            network.set_latency(a, b, Duration::from_millis(ms))
        })
    }

    /// `partition(a, b)`.
    pub fn partition(&self, a: &NodeRef, b: &NodeRef) -> Verdict<()> {
        self.change_network("partition", a, b, None, |network, a, b| network.partition(a, b))
    }

    /// `heal(a, b)`.
    pub fn heal(&self, a: &NodeRef, b: &NodeRef) -> Verdict<()> {
        self.change_network("heal", a, b, None, |network, a, b| network.heal(a, b))
    }

    fn change_network(
        &self,
        change: &'static str,
        a: &NodeRef,
        b: &NodeRef,
        ms: Option<u64>,
        apply: impl FnOnce(&mut dyn crate::backend::Network, NodeKey, NodeKey),
    ) -> Verdict<()> {
        let shape = if ms.is_some() { "a, b, ms" } else { "a, b" };
        let (key_a, subject_a) = self.resolve(a)?;
        let (key_b, subject_b) = self.resolve(b)?;
        if key_a == key_b {
            return Err(format!(
                "{change}({shape}) takes two different nodes, and both are {}",
                describe(a)
            ));
        }
        {
            let mut backend = self.backend.borrow_mut();
            let network = backend
                .network()
                .ok_or_else(|| format!("{change}({shape}) needs a simulated network: run the scenario with --sim"))?;
            apply(network, key_a, key_b);
        }
        let event = ScenarioEvent::NetworkChanged {
            change,
            a: subject_a,
            b: subject_b,
            ms,
        };
        self.log.record_alone(Subject::Scenario, event);
        self.count(|s| s.steps += 1);
        let detail = ms.map(|ms| format!(" {ms} ms")).unwrap_or_default();
        self.say(
            "network",
            format_args!("{change} {} and {}{detail}", describe(a), describe(b)),
        );
        Ok(())
    }

    /// The node and the log's name of `node`.
    fn resolve(&self, node: &NodeRef) -> Verdict<(NodeKey, Subject)> {
        match node {
            NodeRef::Tracker(tracker) => Ok((tracker.key, Subject::Node(Node::Tracker))),
            NodeRef::Client(c) => {
                let key = self.slot(c, |slot| slot.node)?;
                Ok((key, c.subject()))
            }
        }
    }
}

fn describe(node: &NodeRef) -> String {
    match node {
        NodeRef::Tracker(_) => "the tracker".to_owned(),
        NodeRef::Client(c) => format!("client {}", c.id),
    }
}

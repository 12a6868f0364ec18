//! Faults as scenario statements: `c.kill()`, `c.leave()`, `c.restart()`,
//! `c.corrupt(name)`, `c.kill_after(name, bytes)`, `c.stall_after(name, bytes)`.
//! Each is recorded in the event log like any other step.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use phile_core::events::Node;
use phile_core::faults::{Fault, FaultKind};
use phile_core::storage::Folder;
use phile_core::ClientId;

use super::{parse_name, ClientRef, Verdict, World};
use crate::event_log::{ScenarioEvent, Subject};

impl World {
    fn mark_down(&self, c: &ClientRef, why: &'static str) {
        if let Some(slot) = self.clients.borrow_mut().get_mut(&c.id) {
            slot.down = Some(why);
        }
    }

    /// `c.kill()`: a crash. Returns once the tracker has noticed.
    pub fn kill(&self, c: &ClientRef) -> Verdict<()> {
        let client = self.live(c)?;
        self.operation(|trace| client.kill(&self.runtime, &self.log, trace));
        self.mark_down(c, "killed");
        self.count(|s| s.steps += 1);
        self.say(c.id, "killed: server stopped, transfers cut, session dropped");
        Ok(())
    }

    /// `c.leave()`: says goodbye to the tracker, then stops.
    pub fn leave(&self, c: &ClientRef) -> Verdict<()> {
        let client = self.live(c)?;
        self.operation(|trace| {
            self.log.record_in(
                trace.advance(),
                Subject::Node(Node::Client(ClientId(c.id))),
                ScenarioEvent::Left,
            );
            client.leave(&self.runtime, trace)
        })
        .map_err(|error| format!("client {} could not leave cleanly: {error}", c.id))?;
        self.mark_down(c, "left");
        self.count(|s| s.steps += 1);
        self.say(c.id, "left: the tracker forgot it, server stopped");
        Ok(())
    }

    /// `c.restart()`: a killed or departed client comes back with its folder
    /// as it was, registers again and announces what it holds.
    pub fn restart(&self, c: &ClientRef) -> Verdict<()> {
        let (dir, port, tracker, down) = {
            let clients = self.clients.borrow();
            let slot = clients
                .get(&c.id)
                .ok_or_else(|| format!("client {} does not exist", c.id))?;
            // A fault may have crashed it without the script saying so.
            let down = slot.down.is_some() || slot.client.is_stopped();
            (slot.dir.clone(), slot.port, slot.tracker, down)
        };
        if !down {
            return Err(format!(
                "client {} is running: only a killed or departed client can restart",
                c.id
            ));
        }
        let folder = Folder::open(&dir).map_err(|e| format!("cannot reopen the folder of client {}: {e}", c.id))?;
        let client = self.start_client(c.id, folder, port)?;
        if let Some(slot) = self.clients.borrow_mut().get_mut(&c.id) {
            slot.client = client.clone();
            slot.down = None;
        }
        let announced = self.operation(|trace| {
            let subject = Subject::Node(Node::Client(ClientId(c.id)));
            self.log.record_in(trace.advance(), subject, ScenarioEvent::Restarted);
            let Some(tracker) = tracker else { return Ok(0) };
            client.register(&self.runtime, tracker, trace)?;
            client.announce_held(&self.runtime, trace)
        });
        let announced =
            announced.map_err(|error| format!("client {} restarted but could not rejoin: {error}", c.id))?;
        self.count(|s| s.steps += 1);
        match tracker {
            Some(_) => self.say(
                c.id,
                format_args!(
                    "restart: registered again, announced {announced} file{}",
                    if announced == 1 { "" } else { "s" }
                ),
            ),
            None => self.say(c.id, "restart: up again (it had never registered)"),
        }
        Ok(())
    }

    /// `c.corrupt(name)`: flips a byte of `c`'s copy of `name` on disk,
    /// telling nobody. Size and modification time stay as they were, so the
    /// client keeps believing its copy is good: a failing disk, a lying peer.
    pub fn corrupt(&self, c: &ClientRef, name: &str) -> Verdict<()> {
        let file = parse_name(name)?;
        let instance = self.instance(c)?;
        if !instance.folder().contains(&file) {
            return Err(format!(
                "client {} cannot corrupt {file}: its folder has no such file",
                c.id
            ));
        }
        let path = instance.folder().path(&file);
        flip_middle_byte(&path).map_err(|e| format!("client {} cannot corrupt {file}: {e}", c.id))?;
        let event = ScenarioEvent::Corrupted { file: file.to_string() };
        self.log
            .record_alone(Subject::Node(Node::Client(ClientId(c.id))), event);
        self.count(|s| s.steps += 1);
        self.say(
            c.id,
            format_args!("corrupt {file}: a byte flipped on disk, nobody told"),
        );
        Ok(())
    }

    /// `c.kill_after(name, bytes)` and `c.stall_after(name, bytes)`.
    pub fn arm(&self, c: &ClientRef, kind: FaultKind, name: &str, after: i64) -> Verdict<()> {
        let file = parse_name(name)?;
        let verb = match kind {
            FaultKind::Kill => "kill_after",
            FaultKind::Stall => "stall_after",
        };
        let after = u64::try_from(after).map_err(|_| format!("{verb}: {after} is not a byte count (0 or more)"))?;
        self.live(c)?.arm(Fault {
            kind,
            file: file.clone(),
            after,
        });
        let event = ScenarioEvent::FaultArmed {
            fault: verb.to_owned(),
            file: file.to_string(),
            after,
        };
        self.log
            .record_alone(Subject::Node(Node::Client(ClientId(c.id))), event);
        self.count(|s| s.steps += 1);
        self.say(c.id, format_args!("{verb} {file} {after}: armed"));
        Ok(())
    }
}

/// Inverts the byte in the middle of the file at `path`, keeping its size
/// and modification time.
fn flip_middle_byte(path: &std::path::Path) -> std::io::Result<()> {
    let mut file: File = OpenOptions::new().read(true).write(true).open(path)?;
    let metadata = file.metadata()?;
    if metadata.len() == 0 {
        return Err(std::io::Error::other("the file is empty: there is no byte to flip"));
    }
    let middle = metadata.len() / 2;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(middle))?;
    file.read_exact(&mut byte)?;
    byte[0] ^= 0xff;
    file.seek(SeekFrom::Start(middle))?;
    file.write_all(&byte)?;
    file.set_modified(metadata.modified()?)?;
    Ok(())
}

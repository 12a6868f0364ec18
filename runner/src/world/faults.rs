//! Faults as scenario statements: `c.kill()`, `c.leave()`, `c.restart()`,
//! `c.corrupt(name)`, `c.kill_after(name, bytes)`, `c.stall_after(name, bytes)`.
//! Each is recorded in the event log like any other step.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};

use phile_core::storage::Folder;

use super::{parse_name, ClientRef, Verdict, World};
use crate::command::{Command, Reply};
use crate::event_log::ScenarioEvent;
use crate::faults::{Fault, FaultKind};

impl World {
    fn mark_down(&self, c: &ClientRef, why: &'static str) {
        if let Some(slot) = self.clients.borrow_mut().get_mut(&c.id) {
            slot.down = Some(why);
        }
    }

    /// `c.kill()`: a crash. Returns once the tracker has noticed.
    pub fn kill(&self, c: &ClientRef) -> Verdict<()> {
        let node = self.live(c)?;
        // The tracker's noticing (`client_lost`) is awaited by the log,
        // which sees the client's `killed`.
        self.operation(|trace| self.call(node, trace, Command::Kill))?;
        self.mark_down(c, "killed");
        self.count(|s| s.steps += 1);
        self.say(c.id, "killed: server stopped, transfers cut, session dropped");
        Ok(())
    }

    /// `c.leave()`: says goodbye to the tracker, then stops.
    pub fn leave(&self, c: &ClientRef) -> Verdict<()> {
        let node = self.live(c)?;
        let reply = self.act_as(c, node, ScenarioEvent::Left, Command::Leave)?;
        // Stopped either way: a goodbye the tracker did not answer only
        // leaves it to notice the end of the session by itself.
        self.mark_down(c, "left");
        if let Reply::Failed { error } = reply {
            return Err(format!("client {} could not leave cleanly: {error}", c.id));
        }
        self.count(|s| s.steps += 1);
        self.say(c.id, "left: the tracker forgot it, server stopped");
        Ok(())
    }

    /// `c.restart()`: a killed or departed client comes back with its folder
    /// as it was, registers again and announces what it holds.
    pub fn restart(&self, c: &ClientRef) -> Verdict<()> {
        if self.down(c)?.is_none() {
            return Err(format!(
                "client {} is running: only a killed or departed client can restart",
                c.id
            ));
        }
        let (dir, port, tracker) = self.slot(c, |slot| (slot.dir.clone(), slot.port, slot.tracker))?;
        // Leftovers of the whole-file downloads it was making when it went
        // down go; those of swarm downloads stay, to resume.
        Folder::open(&dir).map_err(|e| format!("cannot reopen the folder of client {}: {e}", c.id))?;
        let node = self.start_client(c.id, &dir, port)?;
        if let Some(slot) = self.clients.borrow_mut().get_mut(&c.id) {
            slot.node = node;
            slot.down = None;
            // A new process: no cap until the script sets one again.
            slot.rate = (0, 0);
        }
        let reply = self.act_as(c, node, ScenarioEvent::Restarted, Command::Rejoin { tracker })?;
        let announced = match reply {
            Reply::Announced { files } => files,
            Reply::Failed { error } => return Err(format!("client {} restarted but could not rejoin: {error}", c.id)),
            other => return Err(format!("client {} answered {other:?} to a restart", c.id)),
        };
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
        let folder = self.folder_of(c)?;
        if !folder.contains(&file) {
            return Err(format!(
                "client {} cannot corrupt {file}: its folder has no such file",
                c.id
            ));
        }
        flip_middle_byte(&folder.path(&file)).map_err(|e| format!("client {} cannot corrupt {file}: {e}", c.id))?;
        let event = ScenarioEvent::Corrupted { file: file.to_string() };
        self.log.record_alone(c.subject(), event);
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
        let verb = kind.verb();
        let after = u64::try_from(after).map_err(|_| format!("{verb}: {after} is not a byte count (0 or more)"))?;
        let node = self.live(c)?;
        let fault = Fault {
            kind,
            file: file.clone(),
            after,
        };
        let event = ScenarioEvent::FaultArmed {
            fault: verb.to_owned(),
            file: file.to_string(),
            after,
        };
        let reply = self.act_as(c, node, event, Command::Arm { fault })?;
        if let Reply::Failed { error } = reply {
            return Err(format!("client {} cannot arm {verb}: {error}", c.id));
        }
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

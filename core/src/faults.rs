//! Faults a scenario arms on a client's peer server, so that a failure
//! happens at an exact point of a transfer (and its log never flickers).
//!
//! A real crash or stall strikes at a random byte; a test of failover needs
//! it to strike at the same byte on every run. An armed fault fires once,
//! on the next transfer of its file that reaches its byte count.

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::protocol::FileName;

/// What happens to the peer when the fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// The whole client crashes: server stopped, transfers cut, session
    /// dropped without a goodbye.
    Kill,
    /// The transfer stops sending but keeps its connection open, as a hung
    /// peer would; the downloader's idle timeout must notice.
    Stall,
}

/// One armed fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// What happens.
    pub kind: FaultKind,
    /// The file whose transfer triggers it.
    pub file: FileName,
    /// After how many bytes of that file.
    pub after: u64,
}

/// The faults armed on one client.
#[derive(Debug, Default)]
pub struct Faults {
    /// Armed and not yet fired. A std mutex: never held across an `.await`.
    armed: Mutex<Vec<Fault>>,
}

impl Faults {
    /// Arms `fault`.
    pub fn arm(&self, fault: Fault) {
        self.armed.lock().expect("faults poisoned").push(fault);
    }

    /// Takes the first fault armed for `file`, if any: it fires on this
    /// transfer, and never again.
    pub(crate) fn take(&self, file: &FileName) -> Option<Fault> {
        let mut armed = self.armed.lock().expect("faults poisoned");
        let index = armed.iter().position(|fault| &fault.file == file)?;
        Some(armed.remove(index))
    }
}

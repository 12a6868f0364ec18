//! What a script asks of a node, and what comes back: one type for every
//! backend. The in-process, process and simulated backends all carry a
//! [`Command`] to the node's [`crate::node::Node`], which executes it the
//! same way everywhere, and bring its [`Reply`] back.

use std::net::SocketAddr;
use std::time::Duration;

use phile_core::client::{Downloaded, SwarmOptions};
use phile_core::FileName;
use serde::{Deserialize, Serialize};

use crate::faults::Fault;

/// One request of the script to one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    /// Register with the tracker at `tracker`.
    Register {
        /// The tracker's address.
        tracker: SocketAddr,
    },
    /// Tell the tracker the node holds `file`.
    Upload {
        /// The file, which must be in the node's folder.
        file: FileName,
    },
    /// Locate, fetch, verify, store and announce `file`: whole from one
    /// holder, or in pieces from a swarm with `swarm`.
    Download {
        /// The file wanted.
        file: FileName,
        /// Swarm it, with these options.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        swarm: Option<SwarmOptions>,
    },
    /// Locate `file` now (or join its swarm, with `swarm`) and fetch it in
    /// the background, as transfer `transfer` (a number the runner chose).
    StartDownload {
        /// The file wanted.
        file: FileName,
        /// The runner's number for this transfer.
        transfer: u64,
        /// Swarm it, with these options.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        swarm: Option<SwarmOptions>,
    },
    /// Wait for background transfer `transfer`, then announce its file.
    FinishDownload {
        /// The runner's number for the transfer.
        transfer: u64,
    },
    /// Say goodbye to the tracker, then stop.
    Leave,
    /// Crash at once.
    Kill,
    /// After a restart: register with `tracker` (if the node had
    /// registered before) and announce every file held.
    Rejoin {
        /// The tracker the node last registered with.
        tracker: Option<SocketAddr>,
    },
    /// Arm a fault on the node's peer server.
    Arm {
        /// The fault.
        fault: Fault,
    },
    /// Cap the node's upload and download rates (bytes per second, 0 for
    /// no cap), over all its transfers together.
    SetRate {
        /// Upload cap.
        up: u64,
        /// Download cap.
        down: u64,
    },
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// Done.
    Done,
    /// Rejoined; this many files announced.
    Announced {
        /// How many files the tracker recorded.
        files: usize,
    },
    /// A background transfer started, from this holder.
    Started {
        /// The holder the tracker chose.
        from: u64,
    },
    /// A background swarm download started, with this many peers offered.
    Swarming {
        /// How many peers the tracker offered first.
        peers: usize,
    },
    /// A file arrived, verified and stored.
    Downloaded {
        /// From whom, and what.
        downloaded: Downloaded,
        /// For a download in the background, how long it took until the
        /// file was stored (the script may wait for it much later).
        #[serde(default)]
        took: Option<Duration>,
    },
    /// A download ended without the file, as downloads may (nobody holds
    /// it, every holder failed, the downloader stopped): a result, not a
    /// script error.
    NotDownloaded {
        /// Why, for the user.
        error: String,
    },
    /// A download failed because the client itself could not go on (not
    /// registered, its session lost, a refusal by the tracker): a script
    /// error, as [`Reply::Failed`], but the client tried, and the log
    /// holds its `download_failed`.
    DownloadFailed {
        /// Why.
        error: NodeError,
    },
    /// The command could not be carried out: a script error.
    Failed {
        /// Why.
        error: NodeError,
    },
}

/// Why a node could not carry out a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum NodeError {
    /// The client has no session with a tracker.
    #[error("client {0} is not registered: call c.register(tracker) first")]
    NotRegistered(u64),
    /// The node stopped (left, crashed, or shut down).
    #[error("client {0} stopped")]
    Stopped(u64),
    /// The tracker said no.
    #[error("the tracker refused: {0}")]
    Refused(String),
    /// The tracker could not be reached, or answered out of place.
    #[error("{0}")]
    Tracker(String),
    /// The client's session with its tracker ended (it broke off, the
    /// tracker closed it, or it went silent).
    #[error("{0}")]
    SessionEnded(String),
    /// The node's folder failed.
    #[error("{0}")]
    Folder(String),
    /// The command does not apply to this node (a tracker asked to
    /// download, a transfer that does not exist).
    #[error("{0}")]
    Misuse(String),
    /// The run's time limit struck while the node was busy.
    #[error("the scenario ran longer than its time limit of {0} s; raise it with --time-limit")]
    TimeLimit(u64),
}

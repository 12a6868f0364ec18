//! phile's core: a tracker and peers that move files over TCP, whole from
//! one holder or in pieces from a swarm.
//!
//! - [`protocol`]: the messages and their framing, free of I/O;
//! - [`host`]: the seam to the world a node runs in (real TCP and threads,
//!   or a simulator): sockets, tasks, blocking work;
//! - [`connection`]: one framed connection, plus raw file bodies;
//! - [`pieces`]: pieces of a file, the hash tree that vouches for them,
//!   and bitfields of the pieces a peer holds, free of I/O;
//! - [`server`]: the accept loop shared by tracker and peers (limits,
//!   making room at the connection cap or, for the tracker,
//!   back-pressure; shutdown);
//! - [`tracker`]: who holds which file, and the random choice of a holder;
//! - [`client`]: a client's tracker session, peer server and downloads;
//! - [`rate`]: upload and download caps, on tokio's clock;
//! - [`storage`]: a client's folder, where files only ever appear whole,
//!   and the partial files of swarm downloads, which survive restarts;
//! - [`swarm`]: the parts of a swarm download: its scheduler, its
//!   conversations, the pieces it serves while it runs;
//! - [`events`]: what nodes report, for logs and the scenario event log;
//! - [`trace`]: which scenario operation a request belongs to.

pub mod client;
pub mod connection;
pub mod events;
pub mod host;
pub mod origin;
pub mod pieces;
pub mod protocol;
pub mod rate;
pub mod server;
pub mod storage;
pub mod swarm;
pub mod trace;
pub mod tracker;

pub use client::{Client, ClientConfig};
pub use host::{Host, OsHost};
pub use protocol::{ClientId, Digest, FileInfo, FileName, Trace};
pub use server::Limits;
pub use tracker::{Tracker, TrackerConfig};

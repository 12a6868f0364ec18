//! phile's end-to-end suite: real trackers and peers over TCP, driven by
//! scenarios or spoken to directly. Every test uses its own temporary folder
//! and free ports, so they all run in parallel.

mod determinism;
mod fixture;
mod hostile;
mod load;
mod network;
mod scenarios;
mod simulation;
mod util;
mod verbs;

//! Tokio-shaped shim over the kernel socket layer.

pub mod net;

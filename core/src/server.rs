//! The accept loop shared by the tracker and the peer servers.
//!
//! As in mini-redis: the server takes an already-bound listener (so tests
//! bind port 0 and never guess ports), caps open connections with a
//! semaphore (a permit per socket, so a flood of connections waits instead
//! of exhausting memory or file descriptors), backs off when `accept` fails,
//! and never lets one connection's error stop the listener. Shutdown is a
//! cancellation token: the loop stops accepting, every handler is cut, and
//! [`ServerHandle::shutdown`] returns once all of them are gone.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::Connection;

/// Bounds that keep a server responsive whatever its clients do.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// The longest a read or write may make no progress before the
    /// connection is dropped (or a download fails over).
    pub idle_timeout: Duration,
    /// How often a client tells the tracker it is still there.
    pub heartbeat_interval: Duration,
    /// How long the tracker keeps a silent session: past it, the client is
    /// taken for gone (its host crashed or the network dropped it without
    /// closing the connection) and forgotten.
    pub session_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            session_timeout: Duration::from_secs(30),
        }
    }
}

/// A running server: its address, and the way to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    /// The address the listener is bound to.
    local_addr: SocketAddr,
    /// Cancelled to stop accepting new connections.
    accepting: CancellationToken,
    /// Cancelled to stop the server and cut every connection.
    shutdown: CancellationToken,
    /// Tracks the accept loop, which ends after every handler has ended.
    task: TaskTracker,
}

/// Dropping the handle stops the server: its port and tasks never outlive it.
impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, cuts every open connection, and waits until every
    /// connection task is gone.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        self.task.wait().await;
    }

    /// Stops accepting, lets the connections in progress finish for up to
    /// `grace`, then cuts what is left and waits until every task is gone.
    pub async fn drain(&self, grace: Duration) {
        self.accepting.cancel();
        if tokio::time::timeout(grace, self.task.wait()).await.is_err() {
            tracing::info!("grace period over; cutting the connections left");
        }
        self.shutdown().await;
    }
}

/// Serves every connection accepted on `listener` with `handle`, in its own
/// task, until the returned handle is shut down.
pub fn spawn<H, F>(listener: TcpListener, limits: Limits, handle: H) -> io::Result<ServerHandle>
where
    H: Fn(Connection) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    spawn_until(listener, limits, CancellationToken::new(), handle)
}

/// Like [`spawn`], stopping when `shutdown` is cancelled, by the handle or
/// by anyone else holding the token (a client's crash, say).
pub fn spawn_until<H, F>(
    listener: TcpListener,
    limits: Limits,
    shutdown: CancellationToken,
    handle: H,
) -> io::Result<ServerHandle>
where
    H: Fn(Connection) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let local_addr = listener.local_addr()?;
    let accepting = shutdown.child_token();
    let task = TaskTracker::new();
    task.spawn(accept_loop(
        listener,
        limits,
        accepting.clone(),
        shutdown.clone(),
        handle,
    ));
    task.close();
    Ok(ServerHandle {
        local_addr,
        accepting,
        shutdown,
        task,
    })
}

async fn accept_loop<H, F>(
    listener: TcpListener,
    limits: Limits,
    accepting: CancellationToken,
    shutdown: CancellationToken,
    handle: H,
) where
    H: Fn(Connection) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let handlers = TaskTracker::new();
    loop {
        // Wait for a free slot before accepting: back-pressure, not overload.
        let permit = tokio::select! {
            _ = accepting.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let stream = tokio::select! {
            _ = accepting.cancelled() => break,
            stream = accept(&listener) => stream,
        };
        let connection = match Connection::new(stream, limits.idle_timeout) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "connection closed before it could be served");
                continue;
            }
        };
        let handler = handle(connection);
        let cut = shutdown.clone();
        handlers.spawn(async move {
            tokio::select! {
                _ = handler => {}
                _ = cut.cancelled() => {}
            }
            drop(permit);
        });
    }
    // Stop listening at once (the port is free again), then wait for the
    // connections in progress.
    drop(listener);
    handlers.close();
    handlers.wait().await;
}

/// Accepts the next connection. Errors such as running out of file
/// descriptors are passing, so they are logged and retried with an
/// exponential backoff rather than ending the server.
async fn accept(listener: &TcpListener) -> TcpStream {
    let mut backoff = Duration::from_millis(10);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => return stream,
            Err(error) => {
                tracing::warn!(%error, "accept failed; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await; // backoff: the error is passing
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

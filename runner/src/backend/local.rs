//! Nodes as tasks of this process, over real TCP: the default backend.
//!
//! The nodes run on a multi-thread tokio runtime; the script thread blocks
//! on it for each command until the node has replied (or the run's time
//! limit strikes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use phile_core::host::OsHost;
use phile_core::Trace;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

use super::{loopback, past_time_limit, Backend, Deadline, FileBudget, NodeKey, StartError, WallTime};
use crate::command::{Command, Reply};
use crate::event_log::Journal;
use crate::node::{Environment, Node, NodeSpec};

/// Nodes in this process.
pub struct Local {
    /// The runtime the nodes run on; taken when the backend is dropped.
    runtime: Option<Runtime>,
    /// Every node started, by key.
    nodes: Vec<Arc<Node>>,
    /// Where events go.
    events: Arc<dyn Journal>,
    /// Bind free ports instead of the scripted ones.
    ephemeral_ports: bool,
    /// When the run must stop.
    deadline: Deadline,
    /// The wall clock of the run.
    time: WallTime,
    /// File descriptors left for more nodes.
    files: FileBudget,
}

impl Local {
    /// A backend with no nodes yet.
    pub fn new(events: Arc<dyn Journal>, ephemeral_ports: bool, deadline: Deadline) -> std::io::Result<Local> {
        super::raise_file_limit();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("phile-node")
            .build()?;
        Ok(Local {
            runtime: Some(runtime),
            nodes: Vec::new(),
            events,
            ephemeral_ports,
            deadline,
            time: WallTime::starting(deadline),
            files: FileBudget::default(),
        })
    }

    fn node(&self, key: NodeKey) -> &Arc<Node> {
        &self.nodes[key.0]
    }

    fn runtime(&self) -> &Runtime {
        self.runtime.as_ref().expect("the runtime lives as long as the backend")
    }
}

impl Backend for Local {
    fn start(&mut self, spec: &NodeSpec, port: u16) -> Result<NodeKey, StartError> {
        self.files.reserve_node()?;
        let addr = loopback(port, self.ephemeral_ports);
        let listener = self
            .runtime()
            .block_on(TcpListener::bind(addr))
            .map_err(|error| StartError::binding(port, error))?;
        let environment = Environment {
            host: OsHost::shared(),
            events: self.events.clone(),
            // Crashing a client in this process is the client's own doing.
            crash: Arc::new(|| {}),
        };
        let _inside = self.runtime().enter();
        let node = Node::start(spec, listener.into(), environment).map_err(|e| StartError::Other(e.to_string()))?;
        self.nodes.push(Arc::new(node));
        Ok(NodeKey(self.nodes.len() - 1))
    }

    fn addr(&self, node: NodeKey) -> SocketAddr {
        self.node(node).addr()
    }

    fn describe(&self, _node: NodeKey) -> String {
        String::new()
    }

    fn call(&mut self, node: NodeKey, trace: Trace, command: Command) -> Reply {
        let node = self.node(node).clone();
        let left = self.deadline.left();
        let replied = self
            .runtime()
            .block_on(async move { tokio::time::timeout(left, node.execute(trace, command)).await });
        replied.unwrap_or_else(|_| past_time_limit(self.deadline.limit))
    }

    fn is_down(&self, node: NodeKey) -> bool {
        self.node(node).is_stopped()
    }

    fn settle(&mut self, _done: &dyn Fn() -> bool) {}

    fn sleep(&mut self, duration: Duration) {
        self.time.sleep(duration);
    }

    fn now(&self) -> Duration {
        self.time.now()
    }

    fn clock(&self) -> crate::event_log::Clock {
        self.time.clock()
    }

    fn stop(&mut self, node: NodeKey) {
        let node = self.node(node).clone();
        self.runtime().block_on(async move { node.shutdown().await });
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // Tasks still running (a transfer cut by the time limit) must not
        // hold the run open.
        self.nodes.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

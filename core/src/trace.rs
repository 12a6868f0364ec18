//! Which operation a request belongs to, carried alongside the code rather
//! than through every call.
//!
//! A scenario runner numbers its operations, and every request sent on
//! behalf of one carries its [`Trace`]: the operation, and a step that grows
//! with each request. Servers copy the trace of a request into the events it
//! causes, so a log can order events by cause. The driver runs an
//! operation inside [`traced`]; the code that sends requests or reports
//! events takes the next step with [`next`]. Outside any operation (the
//! `phile` command, heartbeats) requests carry `Trace::default()`.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::protocol::Trace;

tokio::task_local! {
    /// The operation the running task works for.
    static CURRENT: Steps;
}

/// One operation's number and its step counter, shared by the tasks that
/// work for it.
#[derive(Clone, Debug)]
struct Steps {
    /// The operation's number.
    op: u64,
    /// The step the next request gets.
    next: Arc<AtomicU32>,
}

/// Runs `operation` as part of the operation traced `trace`: its requests
/// and events take steps from `trace.step` on. Returns its output and the
/// trace as the operation left it, to go on from there.
pub async fn traced<F: Future>(trace: Trace, operation: F) -> (F::Output, Trace) {
    let steps = Steps {
        op: trace.op,
        next: Arc::new(AtomicU32::new(trace.step)),
    };
    let output = CURRENT.scope(steps.clone(), operation).await;
    let step = steps.next.load(Ordering::SeqCst);
    (output, Trace { op: trace.op, step })
}

/// The next step of the current operation, moving it on; `Trace::default()`
/// outside any operation.
pub fn next() -> Trace {
    CURRENT
        .try_with(|steps| Trace {
            op: steps.op,
            step: steps.next.fetch_add(1, Ordering::SeqCst),
        })
        .unwrap_or_default()
}

/// Makes `task` (about to be spawned) work for the current operation, if
/// any: its requests take steps from the same count.
pub fn inherit<F: Future>(task: F) -> impl Future<Output = F::Output> {
    let current = CURRENT.try_with(Steps::clone).ok();
    async move {
        match current {
            Some(steps) => CURRENT.scope(steps, task).await,
            None => task.await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn steps_count_up_within_an_operation_and_carry_on_after_it() {
        assert_eq!(next(), Trace::default(), "outside an operation");
        let (steps, after) = traced(Trace { op: 4, step: 2 }, async {
            let first = next();
            let spawned = tokio::spawn(inherit(async { next() })).await.unwrap();
            (first, spawned, next())
        })
        .await;
        assert_eq!(
            steps,
            (
                Trace { op: 4, step: 2 },
                Trace { op: 4, step: 3 },
                Trace { op: 4, step: 4 }
            )
        );
        assert_eq!(after, Trace { op: 4, step: 5 });
    }
}

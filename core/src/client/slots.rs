//! A client's upload slots: how many pieces it sends at once over all its
//! swarm conversations, and which conversation sends next.
//!
//! Two lanes, each first come, first served. Conversations whose
//! downloaders read share [`UPLOAD_SLOTS`] slots. A conversation whose last
//! send stalled (its downloader took no byte for a while, so it gave its
//! slot back mid-piece) waits for the one slot of the lagging lane
//! instead, until a send of its goes through without stalling. So
//! downloaders that stop reading, however many, only ever hold up each
//! other, never the conversations whose downloaders read.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many pieces one client sends at once to downloaders that read.
pub(crate) const UPLOAD_SLOTS: usize = 2;

/// How many pieces it sends at once to downloaders whose last send
/// stalled.
pub(crate) const LAGGING_SLOTS: usize = 1;

/// The upload slots of one client.
#[derive(Debug)]
pub(crate) struct UploadSlots {
    /// For conversations whose downloaders read.
    prompt: Arc<Semaphore>,
    /// For conversations whose last send stalled.
    lagging: Arc<Semaphore>,
}

/// One upload slot, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl UploadSlots {
    /// All slots free.
    pub(crate) fn new() -> Arc<UploadSlots> {
        Arc::new(UploadSlots {
            prompt: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            lagging: Arc::new(Semaphore::new(LAGGING_SLOTS)),
        })
    }

    /// Waits for a slot of the lane of a conversation that is `lagging`
    /// (its last send stalled) or not.
    pub(crate) async fn acquire(self: Arc<Self>, lagging: bool) -> Slot {
        let lane = if lagging { &self.lagging } else { &self.prompt };
        let permit = lane.clone().acquire_owned().await;
        Slot(permit.expect("upload slots are never closed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn lagging_conversations_never_take_the_slots_of_those_that_read() {
        let slots = UploadSlots::new();
        let stalled = slots.clone().acquire(true).await;
        // Another lagging conversation waits for the lagging lane...
        let mut second = Box::pin(slots.clone().acquire(true));
        assert!((&mut second).now_or_never().is_none());
        // ... while those that read have every slot of theirs.
        let reading: Vec<Slot> = (0..UPLOAD_SLOTS)
            .map(|_| slots.clone().acquire(false).now_or_never().expect("free"))
            .collect();
        assert!(slots.clone().acquire(false).now_or_never().is_none());
        drop(stalled);
        assert!(second.now_or_never().is_some(), "handed on in its lane");
        drop(reading);
    }
}

//! One swarm conversation's turns at its client's upload slots
//! (`slots.rs`): its place in the queue, kept across the turns of its
//! loop, its lane, and the rule that takes a slot back from it.
//!
//! A slot is for moving a piece. Once the stream takes no byte for
//! [`SLOT_STALL`] ([`LAGGING_STALL`] in the lagging lane), because the
//! downloader stopped reading, the slot goes
//! to the next conversation waiting: from a piece's send, whose rest then
//! waits for the lagging lane ([`Turns::send`]), and from a slot that came
//! while the conversation was writing other replies (`Have`s, the piece
//! hashes), which would otherwise sit unused until the write went through
//! ([`Turns::beside`]). Either way the stall is remembered for the
//! downloader's address, and the conversation waits in the lagging lane
//! from then on.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::slots::{Slot, UploadSlots};
use crate::server::Origin;

/// How long a send may move no byte before its upload slot goes to the
/// next conversation waiting. Longer than an honest downloader leaves a
/// peer unread as a rule, even one whose download cap many peers share
/// (at 1 s, swarms of 128 under `--sim` finished 5 % later, as slots
/// went from sends that were only waiting their turn); short beside the
/// idle timeout, which is how long the send itself may go on so.
pub(crate) const SLOT_STALL: Duration = Duration::from_secs(3);

/// The same for the lagging lane's slot, shorter: a conversation there
/// stalled lately already, and while it holds the lane's one slot every
/// other lagging address waits. So a downloader that lagged once waits
/// 1 to 2 s for each lagging address ahead of it, not 3 to 6. Throttled
/// honest links move bytes every tenth of a second at most
/// ([`crate::rate::LONGEST_MOVE`]); one whose download cap many peers
/// share may go a second without reading this one, and then waits a
/// turn.
pub(crate) const LAGGING_STALL: Duration = Duration::from_secs(1);

/// A wait for an upload slot that keeps its place in the queue across
/// turns of the conversation's loop.
type SlotWait = Pin<Box<dyn Future<Output = Slot> + Send>>;

/// One conversation's turns at the upload slots.
pub(crate) struct Turns {
    /// The client's slots.
    slots: Arc<UploadSlots>,
    /// Where the downloader connects from.
    origin: Origin,
    /// The bytes the conversation's stream took so far (`Outbound::sent`).
    sent: Arc<AtomicU64>,
    /// Whether it waits in the lagging lane: a send of it stalled, or one
    /// to its address did lately.
    lagging: bool,
    /// Its wait for a slot, while it queues.
    waiting: Option<SlotWait>,
}

impl Turns {
    /// Not queued yet; in the lagging lane if a send to `origin` stalled
    /// lately.
    pub(crate) fn new(slots: Arc<UploadSlots>, origin: Origin, sent: Arc<AtomicU64>) -> Turns {
        Turns {
            lagging: slots.stalled_lately(origin),
            slots,
            origin,
            sent,
            waiting: None,
        }
    }

    /// Queues for a slot in its lane, unless it queues already.
    pub(crate) fn queue(&mut self) {
        if self.waiting.is_none() {
            self.waiting = Some(Box::pin(self.slots.clone().acquire(self.lagging, self.origin)));
        }
    }

    /// Leaves the queue, or gives back the slot that came: for a
    /// conversation about to end, or to be busy for long.
    pub(crate) fn leave(&mut self) {
        self.waiting = None;
    }

    /// Resolves with the slot it queued for; never while it does not
    /// queue. A slot of the lane of those that read, come after its
    /// address stalled, goes to the next: it queues in the lagging lane
    /// instead.
    pub(crate) async fn next(&mut self) -> Slot {
        loop {
            let slot = match &mut self.waiting {
                Some(waiting) => waiting.await,
                None => std::future::pending().await,
            };
            self.waiting = None;
            if self.lagging || !self.slots.stalled_lately(self.origin) {
                return slot;
            }
            self.lagging = true;
            drop(slot);
            self.queue();
        }
    }

    /// Runs `send`, a piece, only while it holds one of the slots,
    /// starting with `slot`: once the stream takes no byte for its lane's
    /// stall window, the slot goes to the next conversation waiting, and
    /// the send waits for a slot of the lagging lane before it goes on. So
    /// no more sends than there are slots ever move at once.
    pub(crate) async fn send<T>(&mut self, mut slot: Slot, send: impl Future<Output = T>) -> T {
        tokio::pin!(send);
        let mut stalled = false;
        let done = loop {
            if let Some(done) = until_still(send.as_mut(), &self.sent, stall_window(&slot)).await {
                break done;
            }
            stalled = true;
            self.slots.stalled_at(self.origin);
            drop(slot);
            slot = self.slots.clone().acquire(true, self.origin).await;
        };
        // A send that went through (into socket buffers, it may be) proves
        // little while the address stalls.
        self.lagging = stalled || self.slots.stalled_lately(self.origin);
        done
    }

    /// Runs `write`, replies other than pieces, while it may be queueing.
    /// A slot that comes meanwhile is kept for the piece to follow while
    /// the stream takes the write's bytes; once it takes none for its
    /// lane's stall window, the slot goes to the next conversation waiting, and
    /// the write goes on without it.
    pub(crate) async fn beside<T>(&mut self, write: impl Future<Output = T>) -> T {
        tokio::pin!(write);
        let slot = tokio::select! {
            biased;
            done = &mut write => return done,
            slot = self.next() => slot,
        };
        if let Some(done) = until_still(write.as_mut(), &self.sent, stall_window(&slot)).await {
            self.waiting = Some(Box::pin(std::future::ready(slot)));
            return done;
        }
        drop(slot);
        self.slots.stalled_at(self.origin);
        self.lagging = true;
        write.await
    }
}

/// How long a send holding `slot` may move no byte before the slot goes
/// to the next conversation waiting.
fn stall_window(slot: &Slot) -> Duration {
    if slot.is_lagging() {
        LAGGING_STALL
    } else {
        SLOT_STALL
    }
}

/// Runs `work` until it ends (`Some`) or `sent` stays put for `window`
/// (`None`, and `work` can be run on).
async fn until_still<F: Future>(mut work: Pin<&mut F>, sent: &AtomicU64, window: Duration) -> Option<F::Output> {
    let mut seen = sent.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(window, work.as_mut()).await {
            Ok(done) => return Some(done),
            Err(_) if sent.load(Ordering::Relaxed) == seen => return None,
            Err(_) => seen = sent.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::slots::UPLOAD_SLOTS;
    use futures::FutureExt;

    fn address(last: u8) -> Origin {
        Origin::from(std::net::IpAddr::from([10, 0, 0, last]))
    }

    /// Every slot of the lane of those that read held; the turns of
    /// 10.0.0.1 queued first behind them, and a wait from 10.0.0.2 behind
    /// those.
    fn crowded(slots: &Arc<UploadSlots>, sent: &Arc<AtomicU64>) -> (Vec<Slot>, Turns, SlotWait) {
        let held = (0..UPLOAD_SLOTS)
            .map(|_| slots.clone().acquire(false, address(9)).now_or_never().expect("free"))
            .collect();
        let mut turns = Turns::new(slots.clone(), address(1), sent.clone());
        turns.queue();
        assert!(turns.next().now_or_never().is_none());
        let mut next: SlotWait = Box::pin(slots.clone().acquire(false, address(2)));
        assert!((&mut next).now_or_never().is_none());
        (held, turns, next)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_comes_while_a_reply_is_stuck_goes_to_the_next_after_a_stall() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut held, mut turns, mut next) = crowded(&slots, &sent);
        // A reply the downloader takes nothing of for 10 s, then all.
        let stuck = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            sent.fetch_add(1, Ordering::Relaxed);
        };
        {
            let beside = turns.beside(stuck);
            tokio::pin!(beside);
            assert!(futures::poll!(&mut beside).is_pending());
            drop(held.pop()); // the slot comes, to the stuck conversation
            assert!(futures::poll!(&mut beside).is_pending());
            tokio::time::sleep(SLOT_STALL - Duration::from_millis(1)).await;
            assert!(futures::poll!(&mut beside).is_pending());
            assert!((&mut next).now_or_never().is_none(), "kept while the stall is young");
            tokio::time::sleep(Duration::from_millis(2)).await;
            assert!(futures::poll!(&mut beside).is_pending());
            assert!(next.now_or_never().is_some(), "the slot went to the next");
            beside.await;
        }
        assert!(turns.waiting.is_none(), "the conversation queues again");
        assert!(turns.lagging, "in the lagging lane");
        assert!(slots.stalled_lately(address(1)));
        assert!(!slots.stalled_lately(address(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_comes_while_a_reply_goes_out_is_kept_for_the_piece() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut held, mut turns, mut next) = crowded(&slots, &sent);
        // A reply that takes its time and moves every second.
        let slow = async {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        };
        {
            let beside = turns.beside(slow);
            tokio::pin!(beside);
            assert!(futures::poll!(&mut beside).is_pending());
            drop(held.pop()); // the slot comes while the reply goes out
            beside.await;
        }
        let kept = turns.next().now_or_never().expect("kept, ready at once");
        assert!((&mut next).now_or_never().is_none());
        drop(kept);
        assert!(!turns.lagging);
        assert!(!slots.stalled_lately(address(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_stalls_goes_on_in_the_lagging_lane() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let mut turns = Turns::new(slots.clone(), address(1), sent.clone());
        turns.queue();
        let slot = turns.next().await;
        // A piece the downloader takes nothing of for 10 s, then all.
        let piece = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            sent.fetch_add(1, Ordering::Relaxed);
        };
        {
            let send = turns.send(slot, piece);
            tokio::pin!(send);
            assert!(futures::poll!(&mut send).is_pending());
            tokio::time::sleep(SLOT_STALL + Duration::from_millis(1)).await;
            assert!(futures::poll!(&mut send).is_pending());
            // Its slot went back: every slot of those that read is free.
            let free: Vec<Slot> = (0..UPLOAD_SLOTS)
                .map(|_| slots.clone().acquire(false, address(2)).now_or_never().expect("free"))
                .collect();
            send.await;
            drop(free);
        }
        assert!(turns.lagging);
        assert!(slots.stalled_lately(address(1)));
        // Its next turn is in the lagging lane, even with slots free.
        let lagging = slots.clone().acquire(true, address(3)).await;
        turns.queue();
        assert!(
            turns.next().now_or_never().is_none(),
            "behind the lagging lane's one slot"
        );
        drop(lagging);
        assert!(turns.next().now_or_never().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_send_that_stalls_again_passes_the_lagging_slot_on_sooner() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        slots.stalled_at(address(1));
        let mut turns = Turns::new(slots.clone(), address(1), sent.clone());
        turns.queue();
        let slot = turns.next().await;
        assert!(slot.is_lagging());
        let piece = async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            sent.fetch_add(1, Ordering::Relaxed);
        };
        let mut other = Box::pin(slots.clone().acquire(true, address(2)));
        assert!((&mut other).now_or_never().is_none());
        let send = turns.send(slot, piece);
        tokio::pin!(send);
        assert!(futures::poll!(&mut send).is_pending());
        tokio::time::sleep(LAGGING_STALL - Duration::from_millis(1)).await;
        assert!(futures::poll!(&mut send).is_pending());
        assert!((&mut other).now_or_never().is_none(), "kept while the stall is young");
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(futures::poll!(&mut send).is_pending());
        assert!(other.now_or_never().is_some(), "the lagging lane's turn passed on");
    }
}

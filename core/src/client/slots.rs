//! A client's upload slots: how many pieces it sends at once over all its
//! swarm conversations, and which conversation sends next.
//!
//! Two lanes. Conversations whose downloaders read share [`UPLOAD_SLOTS`]
//! slots, first come, first served. A conversation whose send stalled
//! (its downloader took no byte for a while, so it gave its slot back
//! mid-piece; or, over TCP on Linux and under `--sim`, its downloader
//! trickled: `turns.rs`)
//! waits for the one slot of the lagging lane instead, and so
//! does every conversation from the same address ([`Origin`]), new ones
//! and ones already waiting too, until no send to it stalled for
//! [`LAGGING_MEMORY`]: else a downloader could stall, reconnect and stall
//! again, each time with a slot of those that read; and a send that goes
//! through proves little, since socket buffers take a piece or two unread.
//! So downloaders that stop reading, however many, hold up each other and
//! their neighbours behind the same address, not the conversations of
//! other addresses whose downloaders read (while those are served; see the
//! README, "What is not defended yet").
//!
//! The lagging lane goes round the addresses: each has one place in its
//! queue, which its conversations take in turn. So an address with a
//! hundred stalled conversations gets one turn a round, as one with a
//! single conversation does: a downloader that lagged once waits behind
//! one conversation of each other lagging address, not behind all of
//! them (which, at a stalled turn's 1 to 2 s each, `turns.rs`, could
//! outlast its idle timeout).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::server::Origin;

/// How many pieces one client sends at once to downloaders that read.
pub(crate) const UPLOAD_SLOTS: usize = 2;

/// How many pieces it sends at once to lagging downloaders.
pub(crate) const LAGGING_SLOTS: usize = 1;

/// How long an address where a send stalled starts its new conversations
/// in the lagging lane: longer than the idle timeout, so a conversation
/// that stalled for good and was cut cannot come straight back in front.
const LAGGING_MEMORY: Duration = Duration::from_secs(60);

/// The most addresses remembered for stalling; past it the oldest
/// memories go first (a flood of addresses costs memory, not slots).
const LAGGING_ADDRESSES: usize = 4096;

/// The upload slots of one client.
#[derive(Debug)]
pub(crate) struct UploadSlots {
    /// For conversations whose downloaders read.
    prompt: Arc<Semaphore>,
    /// For conversations whose last send stalled.
    lagging: Arc<Semaphore>,
    /// How many conversations wait for a slot of `prompt`.
    prompt_waiting: AtomicUsize,
    /// Each lagging address's one place in the lagging lane's queue. A
    /// std mutex: held for a lookup. An entry goes at the first lookup
    /// after no conversation holds or waits for it.
    lagging_places: Mutex<HashMap<Origin, Arc<Semaphore>>>,
    /// When a send to each address last stalled, lately. A std mutex:
    /// held for a map update, never across an `.await`.
    stalled: Mutex<HashMap<Origin, Instant>>,
}

/// One upload slot, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Held until the drop.
    _permit: OwnedSemaphorePermit,
    /// Whether it is the lagging lane's.
    lagging: bool,
    /// When it was had.
    granted: Instant,
}

impl Slot {
    /// Whether it is the lagging lane's slot.
    pub(crate) fn is_lagging(&self) -> bool {
        self.lagging
    }

    /// When it was had.
    pub(crate) fn granted(&self) -> Instant {
        self.granted
    }
}

impl UploadSlots {
    /// All slots free.
    pub(crate) fn new() -> Arc<UploadSlots> {
        Arc::new(UploadSlots {
            prompt: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            lagging: Arc::new(Semaphore::new(LAGGING_SLOTS)),
            prompt_waiting: AtomicUsize::new(0),
            lagging_places: Mutex::default(),
            stalled: Mutex::default(),
        })
    }

    fn stalled(&self) -> std::sync::MutexGuard<'_, HashMap<Origin, Instant>> {
        self.stalled.lock().expect("stall memory poisoned")
    }

    /// Whether a send to `origin` stalled lately: its new conversations
    /// start in the lagging lane.
    pub(crate) fn stalled_lately(&self, origin: Origin) -> bool {
        self.stalled()
            .get(&origin)
            .is_some_and(|at| at.elapsed() < LAGGING_MEMORY)
    }

    /// Remembers that a send to `origin` stalled now.
    pub(crate) fn stalled_at(&self, origin: Origin) {
        let mut stalled = self.stalled();
        if stalled.len() >= LAGGING_ADDRESSES {
            stalled.retain(|_, at| at.elapsed() < LAGGING_MEMORY);
        }
        if stalled.len() >= LAGGING_ADDRESSES {
            // Ties broken by address: the map's order is random per
            // process, and a run under `--sim` must repeat exactly.
            let oldest = stalled
                .iter()
                .min_by_key(|(origin, at)| (**at, **origin))
                .map(|(origin, _)| *origin);
            stalled.remove(&oldest.expect("not empty"));
        }
        stalled.insert(origin, Instant::now());
    }

    /// Waits for a slot of the lane of a conversation from `origin` that
    /// is `lagging` (its last send stalled) or not.
    pub(crate) async fn acquire(self: Arc<Self>, lagging: bool, origin: Origin) -> Slot {
        let never_closed = "upload slots are never closed";
        if !lagging {
            let _counted = Waiting::count(&self.prompt_waiting);
            let permit = self.prompt.clone().acquire_owned().await.expect(never_closed);
            return Slot {
                _permit: permit,
                lagging: false,
                granted: Instant::now(),
            };
        }
        // Queue for the lane only in the address's one place, given up
        // once the slot is had: the address's next conversation then
        // queues behind those of other addresses.
        let _place = self.lagging_place(origin).acquire_owned().await.expect(never_closed);
        let permit = self.lagging.clone().acquire_owned().await.expect(never_closed);
        Slot {
            _permit: permit,
            lagging: true,
            granted: Instant::now(),
        }
    }

    /// Whether a conversation waits for a slot of those that read.
    pub(crate) fn prompt_lane_wanted(&self) -> bool {
        self.prompt_waiting.load(Ordering::Relaxed) > 0
    }

    /// Whether a conversation waits for the lagging lane (its holder,
    /// having its slot, holds no place).
    pub(crate) fn lagging_lane_wanted(&self) -> bool {
        let places = self.lagging_places.lock().expect("lagging places poisoned");
        places.values().any(|place| Arc::strong_count(place) > 1)
    }

    /// The one place of `origin` in the lagging lane's queue.
    fn lagging_place(&self, origin: Origin) -> Arc<Semaphore> {
        let mut places = self.lagging_places.lock().expect("lagging places poisoned");
        // Places nobody holds or waits for go: at most one per address
        // with a conversation open.
        places.retain(|_, place| Arc::strong_count(place) > 1);
        places
            .entry(origin)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone()
    }
}

/// One wait counted in a tally for as long as it lasts, however it ends.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(tally: &'a AtomicUsize) -> Waiting<'a> {
        tally.fetch_add(1, Ordering::Relaxed);
        Waiting(tally)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn lagging_conversations_never_take_the_slots_of_those_that_read() {
        let slots = UploadSlots::new();
        let stalled = slots.clone().acquire(true, here()).await;
        // Another lagging conversation waits for the lagging lane...
        let mut second = Box::pin(slots.clone().acquire(true, here()));
        assert!((&mut second).now_or_never().is_none());
        // ... while those that read have every slot of theirs.
        let reading: Vec<Slot> = (0..UPLOAD_SLOTS)
            .map(|_| slots.clone().acquire(false, here()).now_or_never().expect("free"))
            .collect();
        assert!(slots.clone().acquire(false, here()).now_or_never().is_none());
        drop(stalled);
        assert!(second.now_or_never().is_some(), "handed on in its lane");
        drop(reading);
    }

    fn here() -> Origin {
        Origin::from(std::net::IpAddr::from([10, 0, 0, 1]))
    }

    #[tokio::test]
    async fn the_lagging_lane_goes_round_the_addresses() {
        let slots = UploadSlots::new();
        let (crowded, alone) = (here(), Origin::from(std::net::IpAddr::from([10, 0, 0, 2])));
        let held = slots.clone().acquire(true, crowded).await;
        // Three more conversations from the crowded address queue for the
        // lane, then one from another address.
        let mut crowd: Vec<_> = (0..3).map(|_| Box::pin(slots.clone().acquire(true, crowded))).collect();
        for waiting in &mut crowd {
            assert!(waiting.as_mut().now_or_never().is_none());
        }
        let mut single = Box::pin(slots.clone().acquire(true, alone));
        assert!(single.as_mut().now_or_never().is_none());
        drop(held);
        let second = crowd[0].as_mut().now_or_never().expect("first in the queue");
        assert!(crowd[1].as_mut().now_or_never().is_none());
        drop(second);
        // The other address's turn, not the crowd's third.
        assert!(crowd[1].as_mut().now_or_never().is_none());
        let turn = single.as_mut().now_or_never().expect("the other address's turn");
        // A conversation that goes away while it holds its address's place
        // passes the place on.
        drop(crowd.remove(1));
        drop(turn);
        let last = crowd[1].as_mut().now_or_never().expect("then the crowd again");
        drop(crowd);
        drop(single);
        drop(last);
        slots.lagging_place(alone);
        assert_eq!(
            slots.lagging_places.lock().unwrap().len(),
            1,
            "places nobody holds are gone"
        );
    }

    #[tokio::test]
    async fn a_wait_for_the_slots_of_those_that_read_is_counted_while_it_lasts() {
        let slots = UploadSlots::new();
        let held: Vec<Slot> = (0..UPLOAD_SLOTS)
            .map(|_| slots.clone().acquire(false, here()).now_or_never().expect("free"))
            .collect();
        assert!(!slots.prompt_lane_wanted());
        let mut waiting = Box::pin(slots.clone().acquire(false, here()));
        assert!((&mut waiting).now_or_never().is_none());
        assert!(slots.prompt_lane_wanted());
        drop(waiting);
        assert!(!slots.prompt_lane_wanted(), "a wait given up is not counted");
        let mut waiting = Box::pin(slots.clone().acquire(false, here()));
        assert!((&mut waiting).now_or_never().is_none());
        drop(held);
        let _slot = waiting.now_or_never().expect("granted");
        assert!(!slots.prompt_lane_wanted(), "nor one granted");
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_where_a_send_stalled_is_remembered_for_a_while() {
        let slots = UploadSlots::new();
        let here = Origin::from(std::net::IpAddr::from([10, 0, 0, 1]));
        let there = Origin::from(std::net::IpAddr::from([10, 0, 0, 2]));
        slots.stalled_at(here);
        assert!(slots.stalled_lately(here));
        assert!(!slots.stalled_lately(there));
        tokio::time::advance(LAGGING_MEMORY).await;
        assert!(!slots.stalled_lately(here), "forgotten after LAGGING_MEMORY");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_addresses_is_remembered_within_bounds() {
        let slots = UploadSlots::new();
        for n in 0..(LAGGING_ADDRESSES as u32 + 10) {
            slots.stalled_at(Origin::from(std::net::IpAddr::from(n.to_be_bytes())));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        assert_eq!(slots.stalled().len(), LAGGING_ADDRESSES);
        let newest = Origin::from(std::net::IpAddr::from((LAGGING_ADDRESSES as u32 + 9).to_be_bytes()));
        assert!(slots.stalled_lately(newest));
        assert!(!slots.stalled_lately(Origin::from(std::net::IpAddr::from([0, 0, 0, 0]))));
    }
}

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
//! A slot of those that read that nobody else wants is lent to a lagging
//! conversation rather than left idle: a seeder whose only downloaders
//! lag (honest ones with slow links, say) still sends with every slot. The
//! loan ends as soon as a conversation that reads wants the slot
//! (`turns.rs`).
//!
//! The lagging lane goes round the addresses: each has one place in its
//! queue, which its conversations take in turn. So an address with a
//! hundred stalled conversations gets one turn a round, as one with a
//! single conversation does: a downloader that lagged once waits behind
//! one conversation of each other lagging address, not behind all of
//! them (which, at a stalled turn's 1 to 2 s each, `turns.rs`, could
//! outlast its idle timeout).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::{AcquireError, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::origin::Origin;

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
    /// Told whenever a slot of `prompt` is given back, or a wait for one
    /// ends (given up, it may leave free a slot handed to it), so that a
    /// lagging conversation may borrow a free one if nobody else wants it.
    prompt_freed: Arc<Notify>,
    /// The queue of lagging conversations for a loan: only its head looks
    /// for one, so a conversation whose loan just ended, asking again at
    /// once, goes behind those that waited.
    loan_queue: Arc<Semaphore>,
    /// For conversations whose last send stalled.
    lagging: Arc<Semaphore>,
    /// How many conversations wait for a slot of `prompt`.
    prompt_waiting: AtomicUsize,
    /// Told once per conversation that starts waiting for a slot of
    /// `prompt` while none is free, so that one lagging conversation gives
    /// back a lent one.
    prompt_wanted: Notify,
    /// Each lagging address's one place in the lagging lane's queue. A
    /// std mutex: held for a lookup. An entry goes at the first lookup
    /// after no conversation holds or waits for it.
    lagging_places: Mutex<HashMap<Origin, Arc<Semaphore>>>,
    /// When a send to each address last stalled, lately. A std mutex:
    /// held for a map update, never across an `.await`.
    stalled: Mutex<HashMap<Origin, Instant>>,
}

/// Which lane a slot serves a conversation in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lane {
    /// One of the slots of the conversations that read.
    Reading,
    /// The lagging lane's own slot.
    Lagging,
    /// A slot of those that read, lent to a lagging conversation while
    /// none of them wanted it.
    Lent,
}

/// One upload slot, given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Held until the drop (`None` only in it).
    permit: Option<OwnedSemaphorePermit>,
    /// The lane it serves in.
    lane: Lane,
    /// When it was had.
    granted: Instant,
    /// Told once it is given back, for a slot of those that read.
    freed: Option<Arc<Notify>>,
}

impl Slot {
    /// The lane it serves in.
    pub(crate) fn lane(&self) -> Lane {
        self.lane
    }

    /// Whether a lagging conversation holds it: the lagging lane's slot,
    /// or one of those that read, lent.
    pub(crate) fn is_lagging(&self) -> bool {
        self.lane != Lane::Reading
    }

    /// Whether it is a slot of those that read, lent to a lagging
    /// conversation while nobody else wanted it.
    pub(crate) fn is_lent(&self) -> bool {
        self.lane == Lane::Lent
    }

    /// When it was had.
    pub(crate) fn granted(&self) -> Instant {
        self.granted
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Given back before the waiters look.
        drop(self.permit.take());
        if let Some(freed) = &self.freed {
            freed.notify_waiters();
        }
    }
}

impl UploadSlots {
    /// All slots free.
    pub(crate) fn new() -> Arc<UploadSlots> {
        Arc::new(UploadSlots {
            prompt: Arc::new(Semaphore::new(UPLOAD_SLOTS)),
            prompt_freed: Arc::default(),
            loan_queue: Arc::new(Semaphore::new(1)),
            lagging: Arc::new(Semaphore::new(LAGGING_SLOTS)),
            prompt_waiting: AtomicUsize::new(0),
            prompt_wanted: Notify::new(),
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
    /// is `lagging` (its last send stalled) or not. A lagging one also
    /// takes a slot of those that read that comes free while no
    /// conversation that reads waits for it, lent.
    pub(crate) async fn acquire(self: Arc<Self>, lagging: bool, origin: Origin) -> Slot {
        let never_closed = "upload slots are never closed";
        if !lagging {
            let permit = ReaderWait::start(&self).permit().await;
            return self.slot(permit.expect(never_closed), Lane::Reading);
        }
        // Queue for the lane only in the address's one place, given up
        // once the slot is had: the address's next conversation then
        // queues behind those of other addresses.
        let _place = self.lagging_place(origin).acquire_owned().await.expect(never_closed);
        // Its places in the queues of the lane and of loans are kept while
        // it waits for either.
        let lane = self.lagging.clone().acquire_owned();
        let loan_queue = self.loan_queue.clone().acquire_owned();
        tokio::pin!(lane, loan_queue);
        let mut head_of_loan_queue = None;
        loop {
            // Listening before looking, so a slot freed in between is heard.
            let freed = self.prompt_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            // The lane's own slot first, then a loan.
            if let Some(permit) = lane.as_mut().now_or_never() {
                return self.slot(permit.expect(never_closed), Lane::Lagging);
            }
            if head_of_loan_queue.is_some() {
                if let Some(lent) = self.lend_idle() {
                    return lent;
                }
            }
            tokio::select! {
                biased;
                permit = &mut lane => return self.slot(permit.expect(never_closed), Lane::Lagging),
                head = &mut loan_queue, if head_of_loan_queue.is_none() => {
                    head_of_loan_queue = Some(head.expect(never_closed));
                }
                () = &mut freed, if head_of_loan_queue.is_some() => {}
            }
        }
    }

    /// A slot of those that read, lent to a lagging conversation, if one is
    /// free and no conversation that reads waits for one.
    fn lend_idle(&self) -> Option<Slot> {
        if self.prompt_lane_wanted() {
            return None;
        }
        let permit = self.prompt.clone().try_acquire_owned().ok()?;
        Some(self.slot(permit, Lane::Lent))
    }

    /// A slot of `lane`, `permit`'s, had now.
    fn slot(&self, permit: OwnedSemaphorePermit, lane: Lane) -> Slot {
        let of_those_that_read = lane != Lane::Lagging;
        Slot {
            permit: Some(permit),
            lane,
            granted: Instant::now(),
            freed: of_those_that_read.then(|| self.prompt_freed.clone()),
        }
    }

    /// Whether a conversation waits for a slot of those that read.
    pub(crate) fn prompt_lane_wanted(&self) -> bool {
        self.prompt_waiting.load(Ordering::Relaxed) > 0
    }

    /// Resolves once a conversation waits for a slot of those that read.
    pub(crate) async fn prompt_lane_wanted_now(&self) {
        loop {
            // Listening before looking, so a wait that starts in between is
            // heard.
            let wanted = self.prompt_wanted.notified();
            tokio::pin!(wanted);
            wanted.as_mut().enable();
            if self.prompt_lane_wanted() {
                return;
            }
            wanted.await;
        }
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

/// A wait for a slot of those that read.
type PromptAcquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A conversation's wait for a slot of those that read, counted while it
/// lasts (`UploadSlots::prompt_lane_wanted`). However it ends, its claim
/// on the slots goes first, then the lagging conversations are told: a
/// wait given up may leave free a slot that was handed to it, to lend.
struct ReaderWait<'a> {
    slots: &'a UploadSlots,
    /// The claim, until the drop.
    acquire: Option<PromptAcquire>,
}

impl<'a> ReaderWait<'a> {
    /// Counted from now on; if no slot is free, one loan is called back.
    fn start(slots: &'a UploadSlots) -> ReaderWait<'a> {
        slots.prompt_waiting.fetch_add(1, Ordering::Relaxed);
        if slots.prompt.available_permits() == 0 {
            slots.prompt_wanted.notify_one();
        }
        ReaderWait {
            slots,
            acquire: Some(Box::pin(slots.prompt.clone().acquire_owned())),
        }
    }

    /// The slot, once it comes.
    async fn permit(mut self) -> Result<OwnedSemaphorePermit, AcquireError> {
        self.acquire.as_mut().expect("claimed until the drop").await
    }
}

impl Drop for ReaderWait<'_> {
    fn drop(&mut self) {
        drop(self.acquire.take());
        self.slots.prompt_waiting.fetch_sub(1, Ordering::Relaxed);
        self.slots.prompt_freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn lagging_conversations_take_the_slots_of_those_that_read_only_on_loan_while_none_waits() {
        let slots = UploadSlots::new();
        let stalled = slots.clone().acquire(true, here()).await;
        assert!(!stalled.is_lent(), "the lagging lane's own slot first");
        // The next lagging conversations borrow the idle slots of those
        // that read, and one more waits.
        let mut lent: Vec<Slot> = (0..UPLOAD_SLOTS)
            .map(|_| slots.clone().acquire(true, here()).now_or_never().expect("lent"))
            .collect();
        assert!(lent.iter().all(|slot| slot.is_lent() && slot.is_lagging()));
        let mut waiting = Box::pin(slots.clone().acquire(true, here()));
        assert!(waiting.as_mut().now_or_never().is_none());
        // A slot given back while a conversation that reads waits is its.
        let mut reading = Box::pin(slots.clone().acquire(false, there()));
        assert!(reading.as_mut().now_or_never().is_none());
        drop(lent.pop());
        assert!(
            waiting.as_mut().now_or_never().is_none(),
            "not lent while one that reads waits"
        );
        let reading = reading.now_or_never().expect("its own lane's slot");
        assert!(!reading.is_lent() && !reading.is_lagging());
        // Given back while none waits, it is lent to the lagging one.
        drop(reading);
        let last = waiting.now_or_never().expect("lent once free");
        assert!(last.is_lent());
        // And the lagging lane's slot goes on in its lane.
        let mut next = Box::pin(slots.clone().acquire(true, there()));
        assert!(next.as_mut().now_or_never().is_none());
        drop(stalled);
        assert!(!next.now_or_never().expect("handed on in its lane").is_lent());
        drop((lent, last));
    }

    #[tokio::test]
    async fn a_slot_left_free_by_a_wait_given_up_is_lent() {
        let slots = UploadSlots::new();
        let _lane = slots.clone().acquire(true, here()).await;
        let mut reading: Vec<Slot> = every_slot_of_those_that_read(&slots, there());
        let mut lagging = Box::pin(slots.clone().acquire(true, there()));
        assert!(lagging.as_mut().now_or_never().is_none());
        let mut reader = Box::pin(slots.clone().acquire(false, there()));
        assert!(reader.as_mut().now_or_never().is_none());
        // A slot comes back, handed to the reader's wait, which is given up
        // before it takes it.
        drop(reading.pop());
        assert!(lagging.as_mut().now_or_never().is_none(), "wanted by the reader");
        drop(reader);
        let lent = lagging.now_or_never().expect("the slot left free is lent");
        assert!(lent.is_lent());
    }

    #[tokio::test]
    async fn a_conversation_that_reads_calls_back_one_loan() {
        let slots = UploadSlots::new();
        let _reading: Vec<Slot> = every_slot_of_those_that_read(&slots, there());
        // Two holders of loans listen for a conversation that reads.
        let mut first = Box::pin(slots.prompt_lane_wanted_now());
        let mut second = Box::pin(slots.prompt_lane_wanted_now());
        assert!(first.as_mut().now_or_never().is_none() && second.as_mut().now_or_never().is_none());
        let mut reader = Box::pin(slots.clone().acquire(false, there()));
        assert!(reader.as_mut().now_or_never().is_none());
        let called_back = [first.now_or_never().is_some(), second.now_or_never().is_some()];
        assert_eq!(called_back, [true, false], "one loan per conversation waiting");
    }

    /// Every slot of those that read, held by conversations from `origin`.
    fn every_slot_of_those_that_read(slots: &Arc<UploadSlots>, origin: Origin) -> Vec<Slot> {
        (0..UPLOAD_SLOTS)
            .map(|_| slots.clone().acquire(false, origin).now_or_never().expect("free"))
            .collect()
    }

    fn there() -> Origin {
        Origin::from(std::net::IpAddr::from([10, 0, 0, 2]))
    }

    fn here() -> Origin {
        Origin::from(std::net::IpAddr::from([10, 0, 0, 1]))
    }

    #[tokio::test]
    async fn the_lagging_lane_goes_round_the_addresses() {
        let slots = UploadSlots::new();
        // Those that read hold their slots: nothing is lent.
        let _reading: Vec<Slot> = every_slot_of_those_that_read(&slots, here());
        let (crowded, alone) = (here(), there());
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
        let held: Vec<Slot> = every_slot_of_those_that_read(&slots, here());
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

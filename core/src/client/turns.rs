//! One swarm conversation's turns at its client's upload slots
//! (`slots.rs`): its place in the queue, kept across the turns of its
//! loop, its lane, and the rule that takes a slot back from it.
//!
//! A slot is for moving a piece. Once the stream takes no byte for
//! [`SLOT_STALL`] ([`LAGGING_STALL`] in the lagging lane, and there only
//! if another conversation wants that lane), because the downloader
//! stopped reading, the slot goes to the next conversation waiting: from
//! a piece's send, whose rest then waits for the lagging lane
//! ([`Turns::send`]), and from a slot that came while the conversation
//! was writing other replies (`Have`s, the piece hashes), which would
//! otherwise sit unused until the write went through
//! ([`Turns::while_queued`]). Either way the stall is remembered for the
//! downloader's address (for a minute: `slots.rs`), and the conversation
//! waits in the lagging lane from then on. So does one whose downloader
//! reads, but so slowly that the sends wait on its receive window at
//! least half the time while another conversation wants a slot
//! ([`TRICKLE_REVIEW`]; over TCP on Linux and under `--sim`). In the lagging lane a
//! turn also ends
//! after [`LAGGING_LEASE`], however the bytes move, while another
//! conversation wants the lane. A slot of those that read lent to a
//! lagging conversation, while none that reads wanted it, goes back as
//! soon as one wants it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::slots::{Lane, Slot, UploadSlots};
use crate::origin::Origin;

/// How long a send may move no byte before its upload slot goes to the
/// next conversation waiting. Longer than an honest downloader leaves a
/// peer unread as a rule, even one whose download cap many peers share
/// (at 1 s, swarms of 128 under `--sim` finished 5 % later, as slots
/// went from sends that were only waiting their turn); short beside the
/// idle timeout, which is how long the send itself may go on so.
pub(crate) const SLOT_STALL: Duration = Duration::from_secs(3);

/// The same for the lagging lane's slot while another conversation wants
/// that lane, shorter: a conversation there stalled lately already, and
/// while it holds the lane's one slot every other lagging address waits.
/// So a downloader that lagged once waits 1 to 2 s for each stalled
/// address ahead of it, not 3 to 6 (with [`SLOT_STALL`]). An honest
/// downloader that reads this peer less often than that (its download
/// cap shared by many peers, or socket buffers that wake a writer only
/// once a third of them drained) loses its turn only to another lagging
/// conversation, and has the next.
pub(crate) const LAGGING_STALL: Duration = Duration::from_secs(1);

/// How long a turn in the lagging lane lasts at most while another
/// conversation wants that lane, however the bytes move: a downloader
/// that reads a little now and then (in pieces as big as it likes) would
/// otherwise keep the lane's one slot from every other lagging address
/// for its whole piece. The lane holds only conversations that stalled
/// lately, so a lease costs no honest downloader that keeps up its turn
/// in the other lane (there, a lease could not tell a downloader that
/// trickles from a seeder whose own uplink is slow, and every honest
/// downloader of a slow seeder lagged: README, "What is not defended
/// yet"). A turn the lease ends is not remembered as a stall unless the
/// kernel's count finds the downloader trickled during it (the test of
/// [`TRICKLE_REVIEW`], over the whole turn), so a slow honest link is not
/// kept in this lane by it.
pub(crate) const LAGGING_LEASE: Duration = Duration::from_secs(6);

/// How often a send that holds a slot of those that read is looked at
/// for a downloader that trickles (every span, whoever waits; a look ends
/// the turn only while another conversation wants a slot of that lane):
/// one that reads a little now and then, in pieces as big as it
/// likes, never stalls, and would keep its slot for its whole piece. Its
/// turn ends if, since the last look, its sends waited on the
/// downloader's receive window ([`ReceiverLimited`]) at least half the
/// time; it is then remembered as a stall. Time a slow uplink holds the
/// sends up is not counted, so a seeder never takes its own slow link
/// for downloaders that trickle (a lease as in the lagging lane could
/// not tell them apart, and every honest downloader of a slow seeder
/// lagged). Long beside an honest piece, which takes this long only at
/// under 44 kB/s in the default 256 KiB pieces (2.8 MB/s in the largest,
/// 16 MiB).
pub(crate) const TRICKLE_REVIEW: Duration = Duration::from_secs(6);

/// How long, in all, the conversation's sends waited for the downloader
/// to make room (`Outbound::receiver_limited`); `None` where the stream
/// cannot tell (any stream off Linux, a kernel without the count, an
/// in-memory pipe, a stream already gone), and then nobody is taken for a
/// downloader that trickles.
pub(crate) type ReceiverLimited = Box<dyn Fn() -> Option<Duration> + Send + Sync>;

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
    /// How long its sends waited on the downloader's receive window.
    receiver_limited: ReceiverLimited,
    /// Whether it waits in the lagging lane: a send of it stalled, or one
    /// to its address did lately.
    lagging: bool,
    /// Its wait for a slot, while it queues.
    waiting: Option<SlotWait>,
}

impl Turns {
    /// Not queued yet; in the lagging lane if a send to `origin` stalled
    /// lately.
    pub(crate) fn new(
        slots: Arc<UploadSlots>,
        origin: Origin,
        sent: Arc<AtomicU64>,
        receiver_limited: ReceiverLimited,
    ) -> Turns {
        Turns {
            lagging: slots.stalled_lately(origin),
            slots,
            origin,
            sent,
            receiver_limited,
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
    /// queue. A slot of the lane of those that read that comes after its
    /// address stalled is passed on, and the wait moves to the lagging
    /// lane.
    pub(crate) async fn turn(&mut self) -> Slot {
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
    /// starting with `slot`: once its turn ends ([`Turns::hold`]: a
    /// stall, a look that finds the downloader trickling, or the lagging
    /// lane's lease), the slot goes to the next conversation waiting, and
    /// the send waits for a slot of the lagging lane before it goes on. So no more sends than there are slots ever
    /// move at once.
    pub(crate) async fn send<T>(&mut self, mut slot: Slot, send: impl Future<Output = T>) -> T {
        tokio::pin!(send);
        let mut stalled = false;
        let done = loop {
            match self.hold(slot, send.as_mut()).await {
                Ok((done, _slot)) => break done,
                Err(ended) => stalled |= ended.lags(),
            }
            slot = self.slots.clone().acquire(true, self.origin).await;
        };
        // A send that went through (into socket buffers, it may be) proves
        // little while the address stalls.
        self.lagging = stalled || self.slots.stalled_lately(self.origin);
        done
    }

    /// Runs `write`, replies other than pieces, while it may be queueing.
    /// A slot that comes meanwhile is kept for the piece to follow unless
    /// its turn ends while the write goes on ([`Turns::hold`]: the write
    /// stalls, or a look finds the downloader trickling); the write then
    /// goes on without it.
    pub(crate) async fn while_queued<T>(&mut self, write: impl Future<Output = T>) -> T {
        tokio::pin!(write);
        let slot = tokio::select! {
            biased;
            done = &mut write => return done,
            slot = self.turn() => slot,
        };
        match self.hold(slot, write.as_mut()).await {
            Ok((done, slot)) => {
                self.waiting = Some(Box::pin(std::future::ready(slot)));
                done
            }
            Err(_) => write.await,
        }
    }

    /// Runs `work` while it holds `slot`, until it ends (`Ok`, with the
    /// slot) or its turn does (`Err`, the slot gone to the next
    /// conversation waiting; `work` can be run on). A turn ends once the
    /// stream takes no byte for the slot's stall window. In the lane of
    /// those that read, it also ends at a look every [`TRICKLE_REVIEW`]
    /// that finds the downloader trickling, while another conversation
    /// wants a slot there. In the lagging lane, it also ends
    /// [`LAGGING_LEASE`] after the slot came, however the bytes move;
    /// there, only while another conversation (one of its own address
    /// too) wants that lane: nobody would have it sooner, and a slow
    /// honest link that has the lane to itself keeps its turn. A turn that
    /// ends because the downloader does not keep up is remembered as a
    /// stall of the address, and this conversation lags; so is a lease's
    /// end if the downloader trickled meanwhile, by the look above. Any
    /// other lease's end is not, so a lagging downloader on a slow link
    /// leaves the lagging lane a minute after its last stall, as any
    /// other. A slot of those that read lent to a lagging conversation
    /// (`slots.rs`) goes back as soon as a conversation that reads wants
    /// it; and, at a check every [`LAGGING_STALL`] that finds another
    /// lagging conversation wanting a slot, if the send stalled or the loan
    /// is [`LAGGING_LEASE`] old (a stall too, if the downloader trickled);
    /// till then it is kept, however slow the send.
    async fn hold<F: Future>(&mut self, slot: Slot, mut work: Pin<&mut F>) -> Result<(F::Output, Slot), TurnEnded> {
        let mut look = Look::now(&self.receiver_limited);
        let mut lease_end = match slot.lane() {
            Lane::Lent => look.at + LAGGING_STALL,
            Lane::Lagging => slot.granted() + LAGGING_LEASE,
            Lane::Reading => look.at + TRICKLE_REVIEW,
        };
        let ended = loop {
            let checked = within_turn(work.as_mut(), &self.sent, stall_window(&slot), lease_end);
            let outcome = if slot.is_lent() {
                // A loan goes back as soon as a conversation that reads
                // wants a slot, not at the next check: else it would wait
                // up to a check for each of its pieces.
                tokio::select! {
                    biased;
                    outcome = checked => outcome,
                    () = self.slots.prompt_lane_wanted_now() => Err(TurnEnded::LeaseOver),
                }
            } else {
                checked.await
            };
            match outcome {
                Ok(done) => return Ok((done, slot)),
                Err(ended) if slot.is_lent() => {
                    if self.loan_wanted_back(ended) {
                        break ended;
                    }
                    // A loan's lease, as the lagging lane's slot has.
                    let leased = Instant::now() >= slot.granted() + LAGGING_LEASE;
                    if leased && self.slots.lagging_lane_wanted() {
                        break self.lease_over(&look);
                    }
                    lease_end = Instant::now() + LAGGING_STALL;
                }
                Err(_) if slot.is_lagging() && !self.slots.lagging_lane_wanted() => continue,
                Err(TurnEnded::LeaseOver) if slot.is_lagging() => break self.lease_over(&look),
                Err(TurnEnded::LeaseOver) => {
                    let last = std::mem::replace(&mut look, Look::now(&self.receiver_limited));
                    if self.slots.prompt_lane_wanted() && look.finds_trickling_since(&last) {
                        break TurnEnded::Trickled;
                    }
                    lease_end = look.at + TRICKLE_REVIEW;
                }
                Err(ended) => break ended,
            }
        };
        drop(slot);
        if ended.lags() {
            self.slots.stalled_at(self.origin);
            self.lagging = true;
        }
        Err(ended)
    }

    /// How a lease that is over ended: as a stall if the downloader
    /// trickled since `look`, by the kernel's count; else as a lease.
    fn lease_over(&self, look: &Look) -> TurnEnded {
        match Look::now(&self.receiver_limited).finds_trickling_since(look) {
            true => TurnEnded::Trickled,
            false => TurnEnded::LeaseOver,
        }
    }

    /// Whether a lent slot, whose turn reached a check as `ended`, goes
    /// back: a conversation that reads wants a slot (it was lent only
    /// while none did), or the send stalled while another lagging
    /// conversation wants a slot.
    fn loan_wanted_back(&self, ended: TurnEnded) -> bool {
        self.slots.prompt_lane_wanted() || (ended == TurnEnded::Stalled && self.slots.lagging_lane_wanted())
    }
}

/// What a look at a send finds: when, and how long its sends had waited
/// on the downloader's receive window by then.
struct Look {
    at: Instant,
    receiver_limited: Option<Duration>,
}

impl Look {
    fn now(receiver_limited: &ReceiverLimited) -> Look {
        Look {
            at: Instant::now(),
            receiver_limited: receiver_limited(),
        }
    }

    /// Whether the sends waited on the downloader's window at least half
    /// the time since `earlier`.
    fn finds_trickling_since(&self, earlier: &Look) -> bool {
        match (earlier.receiver_limited, self.receiver_limited) {
            (Some(before), Some(now)) => 2 * now.saturating_sub(before) >= self.at - earlier.at,
            _ => false,
        }
    }
}

/// Why a turn ended before its work did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TurnEnded {
    /// The stream took no byte for the slot's stall window.
    Stalled,
    /// The stream took bytes, but the downloader's receive window held
    /// the sends up at least half the time.
    Trickled,
    /// The lease ran out, the bytes moving: the lagging lane's, or the
    /// time for a look at the sends in the lane of those that read.
    LeaseOver,
}

impl TurnEnded {
    /// Whether it ended because the downloader does not keep up.
    fn lags(self) -> bool {
        matches!(self, TurnEnded::Stalled | TurnEnded::Trickled)
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

/// Runs `work` until it ends (`Ok`) or its turn does (`Err`, and `work`
/// can be run on): at a check every `window`, `sent` stayed put since the
/// last, or the time is past `lease_end`.
async fn within_turn<F: Future>(
    mut work: Pin<&mut F>,
    sent: &AtomicU64,
    window: Duration,
    lease_end: Instant,
) -> Result<F::Output, TurnEnded> {
    let mut seen = sent.load(Ordering::Relaxed);
    loop {
        match tokio::time::timeout(window, work.as_mut()).await {
            Ok(done) => return Ok(done),
            Err(_) => {
                let moved = sent.load(Ordering::Relaxed);
                if moved == seen {
                    return Err(TurnEnded::Stalled);
                }
                if Instant::now() >= lease_end {
                    return Err(TurnEnded::LeaseOver);
                }
                seen = moved;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! Every test runs on tokio's paused clock: each `sleep` below is
    //! virtual time, the pace of a made-up downloader or how long a test
    //! lets a turn run, never a wait for something to happen.

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
        let mut turns = Turns::new(slots.clone(), address(1), sent.clone(), unknown_window());
        turns.queue();
        assert!(turns.turn().now_or_never().is_none());
        let mut next: SlotWait = Box::pin(slots.clone().acquire(false, address(2)));
        assert!((&mut next).now_or_never().is_none());
        (held, turns, next)
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_comes_while_a_reply_is_stuck_goes_to_the_next_after_a_stall() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut held, mut turns, mut next) = crowded(&slots, &sent);
        // A reply the downloader takes nothing of for 10 s, then all.
        let stuck = silent_then_all(&sent, Duration::from_secs(10));
        {
            let write = turns.while_queued(stuck);
            tokio::pin!(write);
            assert!(futures::poll!(&mut write).is_pending());
            drop(held.pop()); // the slot comes, to the stuck conversation
            assert!(futures::poll!(&mut write).is_pending());
            run_for(write.as_mut(), SLOT_STALL - Duration::from_millis(1)).await;
            assert!((&mut next).now_or_never().is_none(), "kept while the stall is young");
            run_for(write.as_mut(), Duration::from_millis(2)).await;
            assert!(next.now_or_never().is_some(), "the slot went to the next");
            write.await;
        }
        assert!(turns.waiting.is_none(), "neither queued nor holding a slot");
        assert!(turns.lagging, "in the lagging lane");
        assert!(slots.stalled_lately(address(1)));
        assert!(!slots.stalled_lately(address(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_comes_while_a_reply_goes_out_is_kept_for_the_piece() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut held, mut turns, mut next) = crowded(&slots, &sent);
        // A reply that takes its time and moves every half second.
        let slow = trickle(&sent, 10);
        {
            let write = turns.while_queued(slow);
            tokio::pin!(write);
            assert!(futures::poll!(&mut write).is_pending());
            drop(held.pop()); // the slot comes while the reply goes out
            write.await;
        }
        let kept = turns.turn().now_or_never().expect("kept, ready at once");
        assert!((&mut next).now_or_never().is_none());
        drop(kept);
        assert!(!turns.lagging);
        assert!(!slots.stalled_lately(address(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_stalls_goes_on_in_the_lagging_lane() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot) = first_turn(&slots, &sent, false).await;
        // A piece the downloader takes nothing of for 10 s, then all.
        let piece = silent_then_all(&sent, Duration::from_secs(10));
        {
            let send = turns.send(slot, piece);
            tokio::pin!(send);
            assert!(futures::poll!(&mut send).is_pending());
            run_for(send.as_mut(), SLOT_STALL + Duration::from_millis(1)).await;
            // Its slot went back: every slot of those that read is free.
            let free: Vec<Slot> = (0..UPLOAD_SLOTS)
                .map(|_| slots.clone().acquire(false, address(2)).now_or_never().expect("free"))
                .collect();
            send.await;
            drop(free);
        }
        assert!(turns.lagging);
        assert!(slots.stalled_lately(address(1)));
        // Its next turn is in the lagging lane: with the lane's slot taken,
        // it has a slot of those that read only on loan while they idle...
        let lagging = slots.clone().acquire(true, address(3)).await;
        turns.queue();
        let lent = turns.turn().now_or_never().expect("lent while idle");
        assert!(lent.is_lent());
        drop(lent);
        // ... and waits behind the lane's one slot while they are taken.
        let reading = readers_hold_every_slot(&slots);
        turns.queue();
        assert!(
            turns.turn().now_or_never().is_none(),
            "behind the lagging lane's one slot"
        );
        drop(lagging);
        assert!(!turns.turn().now_or_never().expect("the lane's slot").is_lent());
        drop(reading);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lagging_send_that_stalls_again_passes_the_lagging_slot_on_sooner() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot) = first_turn(&slots, &sent, true).await;
        let _reading = readers_hold_every_slot(&slots);
        let piece = silent_then_all(&sent, Duration::from_secs(10));
        let mut other = Box::pin(slots.clone().acquire(true, address(2)));
        assert!((&mut other).now_or_never().is_none());
        let send = turns.send(slot, piece);
        tokio::pin!(send);
        assert!(futures::poll!(&mut send).is_pending());
        run_for(send.as_mut(), LAGGING_STALL - Duration::from_millis(1)).await;
        assert!((&mut other).now_or_never().is_none(), "kept while the stall is young");
        run_for(send.as_mut(), Duration::from_millis(2)).await;
        assert!(other.now_or_never().is_some(), "the lagging lane's turn passed on");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slot_that_comes_after_the_address_stalled_is_passed_on_for_the_lagging_lane() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut held, mut turns, next) = crowded(&slots, &sent);
        // Another conversation from the same address stalls meanwhile.
        slots.stalled_at(address(1));
        drop(held.pop());
        let slot = turns.turn().now_or_never().expect("the lagging lane is free");
        assert!(slot.is_lagging());
        assert!(turns.lagging);
        assert!(
            next.now_or_never().is_some(),
            "the slot of those that read was passed on"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn queueing_again_keeps_the_place() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut held, mut turns, mut next) = crowded(&slots, &sent);
        turns.queue();
        drop(held.pop());
        let first = turns.turn().now_or_never().expect("still first");
        assert!((&mut next).now_or_never().is_none());
        drop(first);
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_that_goes_through_while_its_address_stalls_leaves_it_lagging() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot) = first_turn(&slots, &sent, false).await;
        // Another conversation from the address stalls during the send.
        let piece = async { slots.stalled_at(address(1)) };
        turns.send(slot, piece).await;
        assert!(turns.lagging);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lagging_lane_is_kept_by_a_slow_send_while_nobody_else_wants_it() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot) = first_turn(&slots, &sent, true).await;
        // Nothing moves for 61 s, past the stall memory, and nobody else
        // wants the lane: the slot is never passed on, so the stall is
        // never remembered again, and the address is forgiven.
        let piece = silent_then_all(&sent, Duration::from_secs(61));
        turns.send(slot, piece).await;
        assert!(!turns.lagging);
        assert!(!slots.stalled_lately(address(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_send_passes_the_lagging_lane_on_after_its_lease() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot) = first_turn(&slots, &sent, true).await;
        let _reading = readers_hold_every_slot(&slots);
        // A piece the downloader takes a byte of every half second, for
        // a little longer than an address is remembered as stalled (its
        // send ends at about 62 s, before a stall at the lease's end, at
        // 6 s, would be forgotten).
        let piece = trickle(&sent, 124);
        let mut other = Box::pin(slots.clone().acquire(true, address(2)));
        assert!((&mut other).now_or_never().is_none());
        {
            let send = turns.send(slot, piece);
            tokio::pin!(send);
            run_for(send.as_mut(), LAGGING_LEASE - Duration::from_millis(1)).await;
            assert!(
                (&mut other).now_or_never().is_none(),
                "kept while it moves, within the lease"
            );
            run_for(send.as_mut(), Duration::from_millis(2)).await;
            let turn = other.now_or_never().expect("the lease ended the turn");
            // The send waits for its next turn, which comes once the other's
            // ends; then it has the lane to itself.
            let paused_at = sent.load(Ordering::Relaxed);
            run_for(send.as_mut(), Duration::from_secs(3)).await;
            assert_eq!(
                sent.load(Ordering::Relaxed),
                paused_at,
                "paused while the other has the lane"
            );
            drop(turn);
            send.await;
        }
        // A lease that ends, with the count unknown, is no stall: the
        // address, last remembered at the start, is forgotten by now.
        assert!(!slots.stalled_lately(address(1)));
        assert!(!turns.lagging);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_that_ends_on_a_downloader_that_trickles_is_remembered_as_a_stall() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot) = first_turn(&slots, &sent, true).await;
        let _reading = readers_hold_every_slot(&slots);
        turns.receiver_limited = window_full_for(0.5);
        let mut other = Box::pin(slots.clone().acquire(true, address(2)));
        assert!((&mut other).now_or_never().is_none());
        {
            let send = turns.send(slot, trickle(&sent, 124));
            tokio::pin!(send);
            run_for(send.as_mut(), LAGGING_LEASE + Duration::from_millis(1)).await;
            drop(other.now_or_never().expect("the lease ended the turn"));
            send.await;
        }
        // The send ends at about 62 s: the address, remembered at 6 s, is
        // still lagging.
        assert!(slots.stalled_lately(address(1)));
        assert!(turns.lagging);
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_to_a_downloader_that_trickles_passes_its_slot_on_at_a_look() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        // A piece the downloader takes a byte of every half second, its
        // receive window full half the time.
        let (mut turns, slot, held, mut other) = turn_with_a_rival(&slots, &sent, window_full_for(0.5)).await;
        let piece = trickle(&sent, 40);
        {
            let send = turns.send(slot, piece);
            tokio::pin!(send);
            run_for(send.as_mut(), TRICKLE_REVIEW - Duration::from_millis(1)).await;
            assert!((&mut other).now_or_never().is_none(), "kept until the look");
            run_for(send.as_mut(), Duration::from_millis(2)).await;
            let turn = other.now_or_never().expect("the look ended the turn");
            drop(turn);
            // The rest goes out in the lagging lane.
            send.await;
        }
        assert!(turns.lagging);
        assert!(slots.stalled_lately(address(1)), "remembered as a stall");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn each_look_judges_the_span_since_the_last() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        // The downloader keeps up for two looks' spans, then trickles:
        // the third look, and only it, finds it trickling.
        let keeps_up = 2 * TRICKLE_REVIEW;
        let start = Instant::now();
        let gauge: ReceiverLimited = Box::new(move || Some(start.elapsed().saturating_sub(keeps_up)));
        let (mut turns, slot, held, mut other) = turn_with_a_rival(&slots, &sent, gauge).await;
        let send = turns.send(slot, trickle(&sent, 80));
        tokio::pin!(send);
        run_for(send.as_mut(), 3 * TRICKLE_REVIEW - Duration::from_millis(1)).await;
        assert!((&mut other).now_or_never().is_none(), "kept until the third look");
        run_for(send.as_mut(), Duration::from_millis(2)).await;
        assert!(other.now_or_never().is_some(), "the third look ended the turn");
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_send_held_up_by_the_link_keeps_its_slot_however_slow() {
        // Sends that waited on the downloader's window less than half the
        // time, not at all (the seeder's own uplink is slow), or that
        // cannot tell (a stream off Linux).
        for receiver_limited in [window_full_for(0.45), window_full_for(0.0), unknown_window()] {
            let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
            let (mut turns, slot, held, mut other) = turn_with_a_rival(&slots, &sent, receiver_limited).await;
            let piece = trickle(&sent, 40);
            {
                let send = turns.send(slot, piece);
                tokio::pin!(send);
                run_for(send.as_mut(), 3 * TRICKLE_REVIEW).await;
                assert!((&mut other).now_or_never().is_none(), "kept past every look");
                send.await;
            }
            assert!(!turns.lagging);
            drop(held);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_downloader_that_trickles_keeps_its_slot_while_nobody_else_wants_one() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot) = first_turn(&slots, &sent, false).await;
        turns.receiver_limited = window_full_for(1.0);
        turns.send(slot, trickle(&sent, 40)).await;
        assert!(!turns.lagging);
        assert!(!slots.stalled_lately(address(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_in_the_lagging_lane_is_remembered_again() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        slots.stalled_at(address(1));
        // Virtual time, on the paused clock: the memory of that stall ages.
        tokio::time::sleep(Duration::from_secs(59)).await;
        let mut turns = Turns::new(slots.clone(), address(1), sent.clone(), unknown_window());
        turns.queue();
        let slot = turns.turn().await;
        let _reading = readers_hold_every_slot(&slots);
        let piece = silent_then_all(&sent, Duration::from_secs(10));
        let other = slots.clone().acquire(true, address(2));
        tokio::pin!(other);
        assert!(futures::poll!(&mut other).is_pending());
        let send = turns.send(slot, piece);
        tokio::pin!(send);
        run_for(send.as_mut(), 2 * LAGGING_STALL + Duration::from_millis(1)).await;
        // At 61 s, a minute after the first stall: remembered since the
        // second, in the lagging lane.
        assert!(slots.stalled_lately(address(1)));
        drop(other.now_or_never());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_slot_goes_back_once_a_conversation_that_reads_wants_it() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot, _held) = lent_turn(&slots, &sent).await;
        let send = turns.send(slot, trickle(&sent, 40));
        tokio::pin!(send);
        run_for(send.as_mut(), Duration::from_secs(3)).await;
        let mut reader = Box::pin(slots.clone().acquire(false, address(2)));
        assert!(reader.as_mut().now_or_never().is_none());
        run_for(send.as_mut(), Duration::from_millis(1)).await;
        let turn = reader.now_or_never().expect("given back at once");
        let paused_at = sent.load(Ordering::Relaxed);
        run_for(send.as_mut(), Duration::from_secs(2)).await;
        assert_eq!(sent.load(Ordering::Relaxed), paused_at, "paused while lent out");
        // Free again, and nobody that reads waits: lent again.
        drop(turn);
        send.await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_slot_whose_send_stalls_goes_to_another_lagging_conversation() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot, _held) = lent_turn(&slots, &sent).await;
        let send = turns.send(slot, silent_then_all(&sent, Duration::from_secs(10)));
        tokio::pin!(send);
        let mut other = Box::pin(slots.clone().acquire(true, address(2)));
        assert!(other.as_mut().now_or_never().is_none());
        run_for(send.as_mut(), LAGGING_STALL - Duration::from_millis(1)).await;
        assert!(other.as_mut().now_or_never().is_none(), "kept while the stall is young");
        run_for(send.as_mut(), Duration::from_millis(2)).await;
        let lent = other.now_or_never().expect("lent on");
        assert!(lent.is_lent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_slot_passes_to_another_lagging_conversation_after_its_lease() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot, _held) = lent_turn(&slots, &sent).await;
        let send = turns.send(slot, trickle(&sent, 40));
        tokio::pin!(send);
        let mut other = Box::pin(slots.clone().acquire(true, address(2)));
        assert!(other.as_mut().now_or_never().is_none());
        run_for(send.as_mut(), LAGGING_LEASE - Duration::from_millis(1)).await;
        assert!(
            other.as_mut().now_or_never().is_none(),
            "kept while it moves, within the lease"
        );
        run_for(send.as_mut(), LAGGING_STALL + Duration::from_millis(2)).await;
        assert!(other
            .now_or_never()
            .expect("lent on at the first check past the lease")
            .is_lent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_lent_slot_is_kept_however_slow_while_nobody_else_wants_one() {
        let (slots, sent) = (UploadSlots::new(), Arc::new(AtomicU64::new(0)));
        let (mut turns, slot, _held) = lent_turn(&slots, &sent).await;
        turns.send(slot, silent_then_all(&sent, Duration::from_secs(10))).await;
        // Virtual time, on the paused clock: past the memory of the stall
        // at the start, which is all there was.
        tokio::time::sleep(Duration::from_secs(51)).await;
        assert!(!slots.stalled_lately(address(1)), "no stall remembered again");
    }

    /// The turn of a lagging conversation from 10.0.0.1 on a loan: the
    /// lagging lane's slot held by 10.0.0.3 and one slot of those that
    /// read by 10.0.0.9 (returned, to be held), the other idle and lent.
    async fn lent_turn(slots: &Arc<UploadSlots>, sent: &Arc<AtomicU64>) -> (Turns, Slot, [Slot; 2]) {
        slots.stalled_at(address(3));
        let lane = slots.clone().acquire(true, address(3)).await;
        assert!(!lane.is_lent());
        let reader = slots.clone().acquire(false, address(9)).await;
        let (turns, slot) = first_turn(slots, sent, true).await;
        assert!(slot.is_lent(), "the other slot of those that read, idle");
        (turns, slot, [lane, reader])
    }

    /// The turn of a conversation from 10.0.0.1 that queued first, in
    /// the lagging lane if `lagging` (its address stalled just now).
    async fn first_turn(slots: &Arc<UploadSlots>, sent: &Arc<AtomicU64>, lagging: bool) -> (Turns, Slot) {
        if lagging {
            slots.stalled_at(address(1));
        }
        let mut turns = Turns::new(slots.clone(), address(1), sent.clone(), unknown_window());
        turns.queue();
        let slot = turns.turn().await;
        assert_eq!(slot.is_lagging(), lagging);
        (turns, slot)
    }

    /// Every slot of those that read, held by conversations from 10.0.0.9,
    /// so that none is lent.
    fn readers_hold_every_slot(slots: &Arc<UploadSlots>) -> Vec<Slot> {
        (0..UPLOAD_SLOTS)
            .map(|_| slots.clone().acquire(false, address(9)).now_or_never().expect("free"))
            .collect()
    }

    /// The first turn of 10.0.0.1 in the lane of those that read, its
    /// sends gauged by `receiver_limited`; the lane's other slot held, by
    /// 10.0.0.3, and a wait for one from 10.0.0.2.
    async fn turn_with_a_rival(
        slots: &Arc<UploadSlots>,
        sent: &Arc<AtomicU64>,
        receiver_limited: ReceiverLimited,
    ) -> (Turns, Slot, Slot, SlotWait) {
        let (mut turns, slot) = first_turn(slots, sent, false).await;
        turns.receiver_limited = receiver_limited;
        let held = slots.clone().acquire(false, address(3)).await;
        let mut other: SlotWait = Box::pin(slots.clone().acquire(false, address(2)));
        assert!((&mut other).now_or_never().is_none());
        (turns, slot, held, other)
    }

    /// A gauge of a stream whose sends wait on the downloader's receive
    /// window `share` of the time from now on.
    fn window_full_for(share: f64) -> ReceiverLimited {
        let start = Instant::now();
        Box::new(move || Some(start.elapsed().mul_f64(share)))
    }

    /// The gauge of a stream that cannot tell.
    fn unknown_window() -> ReceiverLimited {
        Box::new(|| None)
    }

    /// A write the downloader takes nothing of for `silent`, then all.
    async fn silent_then_all(sent: &AtomicU64, silent: Duration) {
        // Virtual time: the downloader's silence, on the paused clock.
        tokio::time::sleep(silent).await;
        sent.fetch_add(1, Ordering::Relaxed);
    }

    /// A write the downloader takes a byte of every half second,
    /// `bytes` times.
    async fn trickle(sent: &AtomicU64, bytes: usize) {
        for _ in 0..bytes {
            // Virtual time: the downloader's pace, on the paused clock.
            tokio::time::sleep(Duration::from_millis(500)).await;
            sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs `work`, which must not end, for `time`.
    async fn run_for<F: Future>(work: Pin<&mut F>, time: Duration) {
        tokio::select! {
            biased;
            _ = work => panic!("ended"),
            // Virtual time, on the paused clock: how long the test lets it run.
            _ = tokio::time::sleep(time) => {}
        }
    }
}

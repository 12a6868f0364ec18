//! Which piece to ask which peer for, next. No I/O, no clock.
//!
//! The download keeps, per connected peer, the pieces it holds and the
//! requests in flight to it. Whenever a peer has room in its pipeline
//! ([`Scheduler::requests`]), it is asked for the pieces it holds that this
//! download lacks and nobody else is fetching, rarest first (fewest
//! connected peers hold them), ties broken by a seeded shuffle so that
//! downloaders that see the same peers still fetch different pieces and
//! have something to trade (a shuffle window by window, so the start of
//! the file comes first: [`SHUFFLE_WINDOW`]). Once every missing piece is asked of someone
//! (the endgame), a peer with room is also asked for pieces already in
//! flight elsewhere, so one slow peer cannot hold up the last piece; the
//! first copy to verify wins and the others are cancelled.
//!
//! Copies cost nothing while they wait in the senders' queues, but two
//! peers sending one piece at once share the downloader's link: on a slow
//! link, every copy takes bytes from the piece it copies. So a piece that
//! waits is copied, and the first peer to begin it takes it
//! ([`Scheduler::started`]: the others' requests are cancelled); a piece
//! under way is copied only by a peer that should bring it in half the
//! time, by the paces the caller measured ([`Scheduler::set_pace`]).
//!
//! A piece that arrives is checked against its hash by the caller
//! ([`Scheduler::arrived`], then [`Scheduler::checked`]). A bad one is
//! simply missing again; the caller drops the peer that sent it
//! ([`Scheduler::leave`]), which releases what was in flight to it.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::pieces::{Bitfield, Layout};
use crate::protocol::ClientId;

/// How many peers may be asked for one piece at once in the endgame.
pub const ENDGAME_COPIES: u8 = 3;

/// The endgame waits until at most this many pieces are missing. Every
/// missing piece can be in flight long before the end (a small file, many
/// peers with deep pipelines), and duplicate requests then would spend the
/// upload of the peers that hold the rarest pieces (the seeder, early on)
/// on copies: in a swarm, that upload is what bounds everyone's time. Near
/// the end, though, upload sits idle while the last pieces wait in the
/// queues of busy peers; measured with bench/swarm.rhai, 16 pieces finished
/// 31 downloaders 3 % sooner than 8, 4 % sooner than 4, and 64 downloaders
/// 11 % sooner than 4.
pub const ENDGAME_PIECES: usize = 16;

/// What became of a piece that arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Check it against its hash, then report with [`Scheduler::checked`].
    Check,
    /// Already held or being checked (an endgame duplicate): drop it.
    Unwanted,
}

/// A piece's place in [`Scheduler::fresh`]: its availability, its rank,
/// the piece.
type FreshKey = (u32, u32, usize);

/// One connected peer, as far as pieces go.
#[derive(Clone, Debug)]
struct PeerPieces {
    /// What it holds.
    bits: Bitfield,
    /// What it was asked for and has not sent yet.
    in_flight: BTreeSet<usize>,
    /// How many requests it may have in flight.
    pipeline: usize,
    /// The bytes a second it lately sent this download, once measured.
    pace: Option<u64>,
    /// The piece it has begun to send, if any.
    sending: Option<usize>,
}

impl PeerPieces {
    /// Piece `index` is no longer asked of this peer (it came, or the
    /// request was taken back): returns whether it was.
    fn unask(&mut self, index: usize) -> bool {
        if self.sending == Some(index) {
            self.sending = None;
        }
        self.in_flight.remove(&index)
    }
}

/// The piece plan of one download.
#[derive(Clone, Debug)]
pub struct Scheduler {
    /// The pieces.
    layout: Layout,
    /// The pieces held and verified.
    have: Bitfield,
    /// The pieces that arrived and are being checked.
    checking: Bitfield,
    /// Every piece before this one is settled (held or being checked):
    /// scans for pieces to ask for start here, so that a download costs
    /// less per piece as it goes on.
    unsettled_from: usize,
    /// How many connected peers hold each piece.
    availability: Vec<u32>,
    /// How many peers each piece is in flight from.
    requesters: Vec<u8>,
    /// Each piece's place in the seeded shuffle that breaks ties.
    rank: Vec<u32>,
    /// The pieces to ask for first, in the order to ask for them: those
    /// not settled, asked of nobody, and held by some peer, rarest first,
    /// then by rank. Kept in step with every count it depends on, so that
    /// finding a peer's next pieces does not look at every piece left for
    /// every piece that arrives (quadratic in the pieces of a big file).
    fresh: BTreeSet<FreshKey>,
    /// The connected peers, by id.
    peers: BTreeMap<ClientId, PeerPieces>,
    /// How many requests a peer may have in flight until told otherwise
    /// ([`Scheduler::set_pipeline`]).
    pipeline: usize,
}

impl Scheduler {
    /// A plan for the pieces of `layout`, holding `have` already, asking
    /// each peer for at most `pipeline` pieces at once; `seed` shuffles the
    /// order among pieces equally rare.
    pub fn new(layout: Layout, have: Bitfield, seed: u64, pipeline: usize) -> Scheduler {
        let count = layout.count();
        assert_eq!(have.len(), count, "a bitfield of another layout");
        let mut plan = Scheduler {
            layout,
            have,
            checking: Bitfield::empty(count),
            unsettled_from: 0,
            availability: vec![0; count],
            requesters: vec![0; count],
            rank: shuffled(count, seed),
            fresh: BTreeSet::new(),
            peers: BTreeMap::new(),
            pipeline: pipeline.max(1),
        };
        plan.skip_settled();
        plan
    }

    /// The pieces held and verified.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// The pieces.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether every piece is held.
    pub fn is_complete(&self) -> bool {
        self.have.is_complete()
    }

    /// Whether `peer` is connected (only the tests ask).
    #[cfg(test)]
    pub fn knows(&self, peer: ClientId) -> bool {
        self.peers.contains_key(&peer)
    }

    /// How many requests are in flight to `peer`.
    pub fn in_flight(&self, peer: ClientId) -> usize {
        self.peers.get(&peer).map_or(0, |p| p.in_flight.len())
    }

    /// Whether `peer` is known to hold piece `index`.
    pub fn holds(&self, peer: ClientId, index: usize) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.bits.has(index))
    }

    /// The first piece `peer` is known to hold that this download holds
    /// too, if any.
    pub fn first_held_of(&self, peer: ClientId) -> Option<usize> {
        let p = self.peers.get(&peer)?;
        p.bits.iter_held().find(|index| self.have.has(*index))
    }

    /// Whether `peer` holds any piece at all.
    pub fn holds_any(&self, peer: ClientId) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.bits.held() > 0)
    }

    /// Whether `peer` holds a piece this download lacks.
    pub fn useful(&self, peer: ClientId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| p.bits.iter_held().any(|index| !self.have.has(index)))
    }

    /// Whether some piece this download lacks is held by no connected peer.
    pub fn lacks_a_source(&self) -> bool {
        (0..self.layout.count()).any(|index| !self.have.has(index) && self.availability[index] == 0)
    }

    /// Whether the download is in its endgame: at most
    /// [`ENDGAME_PIECES`] pieces are missing, and every one of them is
    /// asked of someone already.
    pub fn endgame(&self) -> bool {
        let mut missing = 0;
        for index in self.unsettled_from..self.layout.count() {
            if self.settled(index) {
                continue;
            }
            missing += 1;
            if missing > ENDGAME_PIECES || self.requesters[index] == 0 {
                return false;
            }
        }
        true
    }

    /// Whether piece `index` needs no more asking: held, or being checked.
    fn settled(&self, index: usize) -> bool {
        self.have.has(index) || self.checking.has(index)
    }

    /// Moves [`Scheduler::unsettled_from`] past the pieces settled since.
    fn skip_settled(&mut self) {
        while self.unsettled_from < self.layout.count() && self.settled(self.unsettled_from) {
            self.unsettled_from += 1;
        }
    }

    /// Piece `index` needs asking again.
    fn unsettle(&mut self, index: usize) {
        self.unsettled_from = self.unsettled_from.min(index);
    }

    /// Piece `index`'s key in [`Scheduler::fresh`], if it belongs there.
    fn fresh_key(&self, index: usize) -> Option<FreshKey> {
        let fresh = !self.settled(index) && self.requesters[index] == 0 && self.availability[index] > 0;
        fresh.then(|| (self.availability[index], self.rank[index], index))
    }

    /// Changes what is known of piece `index` with `change`, keeping
    /// [`Scheduler::fresh`] in step.
    fn change<R>(&mut self, index: usize, change: impl FnOnce(&mut Scheduler) -> R) -> R {
        let before = self.fresh_key(index);
        let changed = change(self);
        let after = self.fresh_key(index);
        if before != after {
            if let Some(key) = before {
                self.fresh.remove(&key);
            }
            if let Some(key) = after {
                self.fresh.insert(key);
            }
        }
        changed
    }

    /// `peer` connected, holding `bits` (replacing what was known of it).
    pub fn join(&mut self, peer: ClientId, bits: Bitfield) {
        assert_eq!(bits.len(), self.layout.count(), "a bitfield of another layout");
        self.leave(peer);
        for index in bits.iter_held() {
            self.change(index, |plan| plan.availability[index] += 1);
        }
        let in_flight = BTreeSet::new();
        let pipeline = self.pipeline;
        self.peers.insert(
            peer,
            PeerPieces {
                bits,
                in_flight,
                pipeline,
                pace: None,
                sending: None,
            },
        );
    }

    /// Lets `peer` have `pipeline` requests in flight (at least one): as
    /// many as it delivers in a while, so a slow peer does not sit on
    /// pieces a faster one could send.
    pub fn set_pipeline(&mut self, peer: ClientId, pipeline: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.pipeline = pipeline.max(1);
        }
    }

    /// `peer` lately sent this download `pace` bytes a second, while it
    /// was sending: what the endgame weighs before it asks `peer` for a
    /// copy of a piece under way elsewhere, or another peer for a copy of
    /// the piece `peer` is sending. Until measured, a peer takes copies of
    /// waiting pieces only, and its piece under way is copied only once
    /// it is measured.
    pub fn set_pace(&mut self, peer: ClientId, pace: u64) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.pace = Some(pace);
        }
    }

    /// `peer` gained piece `index`; returns whether this download lacks it.
    pub fn gained(&mut self, peer: ClientId, index: usize) -> bool {
        let Some(p) = self.peers.get_mut(&peer).filter(|_| index < self.layout.count()) else {
            return false;
        };
        if p.bits.set(index) {
            self.change(index, |plan| plan.availability[index] += 1);
        }
        !self.have.has(index)
    }

    /// `peer` says it does not hold piece `index` (any more).
    pub fn lost(&mut self, peer: ClientId, index: usize) {
        let Some(p) = self.peers.get_mut(&peer).filter(|_| index < self.layout.count()) else {
            return;
        };
        let (held, asked) = (p.bits.clear(index), p.unask(index));
        self.change(index, |plan| {
            plan.availability[index] -= u32::from(held);
            plan.requesters[index] -= u8::from(asked);
        });
    }

    /// `peer` is gone (or dropped): returns the pieces that were in flight
    /// to it, free to be asked of others.
    pub fn leave(&mut self, peer: ClientId) -> Vec<usize> {
        let Some(p) = self.peers.remove(&peer) else {
            return Vec::new();
        };
        for index in p.bits.iter_held() {
            self.change(index, |plan| plan.availability[index] -= 1);
        }
        for &index in &p.in_flight {
            self.change(index, |plan| plan.requesters[index] -= 1);
        }
        p.in_flight.into_iter().collect()
    }

    /// The pieces to ask `peer` for now, filling its pipeline: rarest
    /// first among those nobody is fetching; in the endgame, also pieces in
    /// flight elsewhere. They count as in flight from here on.
    pub fn requests(&mut self, peer: ClientId) -> Vec<usize> {
        let Some(p) = self.peers.get(&peer) else {
            return Vec::new();
        };
        let room = p.pipeline.saturating_sub(p.in_flight.len());
        if room == 0 {
            return Vec::new();
        }
        let mut picks: Vec<usize> = (self.fresh.iter())
            .map(|&(_, _, index)| index)
            .filter(|index| p.bits.has(*index))
            .take(room)
            .collect();
        if picks.len() < room && self.endgame() {
            let copy = |index: &usize| {
                !self.settled(*index)
                    && self.requesters[*index] < ENDGAME_COPIES
                    && !p.in_flight.contains(index)
                    && self.copy_pays(p, *index)
            };
            let key = |index: usize| (self.requesters[index], self.availability[index], self.rank[index]);
            let more = self.pick(
                p,
                room - picks.len(),
                |index| copy(index) && !picks.contains(index),
                key,
            );
            picks.extend(more);
        }
        let p = self.peers.get_mut(&peer).expect("checked above");
        p.in_flight.extend(picks.iter().copied());
        for &index in &picks {
            self.change(index, |plan| plan.requesters[index] += 1);
        }
        picks
    }

    /// Whether `taker` should be asked for a copy of piece `index`. A piece
    /// that waits in its senders' queues is copied: the first to begin it
    /// takes it ([`Scheduler::started`]). A piece under way is copied only
    /// if `taker`, with its own queue before it, should bring it in half
    /// the time that its sender needs for the whole piece, at their paces
    /// ([`faster`]). On a link that is the bottleneck every sender gets a
    /// share of it, so none is twice as fast as another, and no copy takes
    /// bytes from a piece under way; a sender that is slow, or stopped, is
    /// copied by a peer measured faster.
    fn copy_pays(&self, taker: &PeerPieces, index: usize) -> bool {
        let queue = taker.in_flight.len() as u64 + 1;
        let mut senders = self.peers.values().filter(|p| p.in_flight.contains(&index));
        senders.all(|sender| sender.sending != Some(index) || faster(taker.pace, queue, sender.pace))
    }

    /// Up to `room` pieces `p` holds that pass `eligible`, lowest `key`
    /// first (for the endgame's copies: one scan of the pieces from the
    /// first one not settled, with a heap of `room`).
    fn pick<K: Ord>(
        &self,
        p: &PeerPieces,
        room: usize,
        eligible: impl Fn(&usize) -> bool,
        key: impl Fn(usize) -> K,
    ) -> Vec<usize> {
        // The `room` lowest so far, the highest of them on top: a piece
        // that does not beat it is passed over without a push. Called for
        // every peer with room at every piece that arrives in the
        // endgame, so it must not sort the whole file.
        let mut best: BinaryHeap<(K, usize)> = BinaryHeap::with_capacity(room + 1);
        let held = (self.unsettled_from..self.layout.count()).filter(|index| p.bits.has(*index));
        for index in held.filter(|index| eligible(index)) {
            let candidate = (key(index), index);
            if best.len() == room && best.peek().is_some_and(|worst| candidate >= *worst) {
                continue;
            }
            best.push(candidate);
            if best.len() > room {
                best.pop();
            }
        }
        best.into_sorted_vec().into_iter().map(|(_, index)| index).collect()
    }

    /// Takes back the requests in flight to `peer` for pieces one of
    /// `to` holds and has room in its pipeline for, so they can be asked
    /// of it (the caller cancels them): returns those pieces. Not the
    /// piece `peer` has begun to send: it comes all the same, and `peer`
    /// could be asked for it again meanwhile; if it stopped, the endgame
    /// copies it once its pace shows it.
    pub fn withdraw(&mut self, peer: ClientId, to: &[ClientId]) -> Vec<usize> {
        let Some(p) = self.peers.get(&peer) else {
            return Vec::new();
        };
        let mut room: Vec<(ClientId, usize)> = (to.iter())
            .filter(|other| **other != peer)
            .filter_map(|other| {
                let o = self.peers.get(other)?;
                Some((*other, o.pipeline.saturating_sub(o.in_flight.len())))
            })
            .collect();
        let mut movable = Vec::new();
        for &index in p.in_flight.iter().filter(|index| p.sending != Some(**index)) {
            let taker = room
                .iter_mut()
                .find(|(other, free)| *free > 0 && self.peers[other].bits.has(index));
            if let Some((_, free)) = taker {
                *free -= 1;
                movable.push(index);
            }
        }
        for &index in &movable {
            self.peers.get_mut(&peer).expect("checked above").unask(index);
            self.change(index, |plan| plan.requesters[index] -= 1);
        }
        movable
    }

    /// `peer` began to send piece `index`: takes back the requests for it
    /// that wait in other peers' queues, unless one of them, its queue
    /// counted, should bring it in half the time `peer` will (by their
    /// paces: [`Scheduler::set_pace`]), and returns them (the caller
    /// cancels them). So an endgame copy of a piece that waited is sent by
    /// one peer, not by several at once.
    ///
    /// A piece a peer holds and begins is in flight from it from then on,
    /// asked or not: a request taken back a moment too late (the cancel
    /// crossed the piece on the wire) is answered all the same, and the
    /// peer must not be asked for the piece again meanwhile, nor left out
    /// of the cancels once it is in. A peer sends one piece at a time, so
    /// one that begins pieces nobody asked of it claims one at most.
    pub fn started(&mut self, peer: ClientId, index: usize) -> Vec<(ClientId, usize)> {
        if index >= self.layout.count() || self.settled(index) {
            return Vec::new();
        }
        let Some(p) = self.peers.get_mut(&peer).filter(|p| p.bits.has(index)) else {
            return Vec::new();
        };
        p.sending = Some(index);
        if p.in_flight.insert(index) {
            self.change(index, |plan| plan.requesters[index] += 1);
        }
        let pace = self.peers[&peer].pace;
        let waiting: Vec<ClientId> = (self.peers.iter())
            .filter(|(other, o)| **other != peer && o.in_flight.contains(&index) && o.sending != Some(index))
            .filter(|(_, o)| !faster(o.pace, o.in_flight.len() as u64, pace))
            .map(|(other, _)| *other)
            .collect();
        for other in &waiting {
            let o = self.peers.get_mut(other).expect("found above");
            o.unask(index);
            self.change(index, |plan| plan.requesters[index] -= 1);
        }
        waiting.into_iter().map(|other| (other, index)).collect()
    }

    /// Piece `index` arrived from `peer`.
    pub fn arrived(&mut self, peer: ClientId, index: usize) -> Arrival {
        if index >= self.layout.count() {
            return Arrival::Unwanted;
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            if p.unask(index) {
                self.change(index, |plan| plan.requesters[index] -= 1);
            }
        }
        if self.settled(index) {
            return Arrival::Unwanted;
        }
        self.change(index, |plan| plan.checking.set(index));
        self.skip_settled();
        Arrival::Check
    }

    /// Piece `index` was checked: `good`, it is held, and the returned
    /// requests for it still in flight elsewhere are to be cancelled; not
    /// good, it is missing again.
    pub fn checked(&mut self, index: usize, good: bool) -> Vec<(ClientId, usize)> {
        if !good {
            self.change(index, |plan| plan.checking.clear(index));
            self.unsettle(index);
            return Vec::new();
        }
        let mut cancels = Vec::new();
        self.change(index, |plan| {
            plan.checking.clear(index);
            plan.have.set(index);
            for (peer, p) in &mut plan.peers {
                if p.unask(index) {
                    plan.requesters[index] -= 1;
                    cancels.push((*peer, index));
                }
            }
        });
        cancels
    }

    /// Piece `index`, held, turned out bad on disk: missing again.
    pub fn forget(&mut self, index: usize) {
        self.change(index, |plan| plan.have.clear(index));
        self.unsettle(index);
    }
}

/// Whether a peer at pace `taker`, with `queue` pieces to send before and
/// including the one in question, should bring it in at most half the
/// time a peer at pace `sender` needs for one piece; not when either pace
/// is unknown. A peer not measured yet may be slow itself: on a slow
/// link, its copy would take bytes from the piece under way.
fn faster(taker: Option<u64>, queue: u64, sender: Option<u64>) -> bool {
    match (taker, sender) {
        (Some(taker), Some(sender)) => 2 * u128::from(queue) * u128::from(sender) <= u128::from(taker),
        _ => false,
    }
}

/// How many pieces the tie-breaking shuffle mixes at a time: the pieces
/// of the first window rank before those of the second, and so on. Among
/// pieces equally rare, a download so fetches the start of the file
/// first, in a seeded order, and the whole-file hash (which can only go
/// from the start) keeps up with it; downloaders still fetch different
/// pieces within a window to trade.
pub const SHUFFLE_WINDOW: usize = 64;

/// Each piece's rank in a seeded shuffle of `0..count`, window by window
/// ([`SHUFFLE_WINDOW`]).
fn shuffled(count: usize, seed: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..count as u32).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for window in order.chunks_mut(SHUFFLE_WINDOW) {
        for top in (1..window.len()).rev() {
            window.swap(top, rng.random_range(0..=top));
        }
    }
    let mut rank = vec![0; count];
    for (place, index) in order.into_iter().enumerate() {
        rank[index as usize] = place as u32;
    }
    rank
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pieces::PieceSize;

    fn layout(pieces: u64) -> Layout {
        Layout::new(pieces * 16384, PieceSize::SMALLEST)
    }

    fn bits(count: usize, held: &[usize]) -> Bitfield {
        let mut bits = Bitfield::empty(count);
        for index in held {
            bits.set(*index);
        }
        bits
    }

    fn peer(id: u64) -> ClientId {
        ClientId(id)
    }

    #[test]
    fn the_rarest_piece_comes_first() {
        let mut plan = Scheduler::new(layout(4), Bitfield::empty(4), 1, 1);
        plan.join(peer(1), bits(4, &[0, 1, 2, 3]));
        plan.join(peer(2), bits(4, &[0, 1, 2]));
        plan.join(peer(3), bits(4, &[0, 2]));
        // Piece 3 only peer 1 has; then 1 (two peers); then 0 and 2.
        assert_eq!(plan.requests(peer(1)), [3]);
        assert_eq!(plan.requests(peer(2)), [1]);
        let third = plan.requests(peer(3));
        assert!(third == [0] || third == [2], "{third:?}");
    }

    #[test]
    fn pieces_in_flight_are_not_asked_twice_before_the_endgame() {
        let mut plan = Scheduler::new(layout(10), Bitfield::empty(10), 7, 3);
        let all: Vec<usize> = (0..10).collect();
        plan.join(peer(1), bits(10, &all));
        plan.join(peer(2), bits(10, &all));
        let (first, second) = (plan.requests(peer(1)), plan.requests(peer(2)));
        assert_eq!((first.len(), second.len()), (3, 3));
        assert!(
            first.iter().all(|index| !second.contains(index)),
            "{first:?} {second:?}"
        );
        assert!(plan.requests(peer(1)).is_empty(), "the pipeline overflowed");
        assert!(!plan.endgame());

        // Every missing piece in flight, but many of them: no endgame yet,
        // so no peer is asked for a copy of what another is sending.
        let many = ENDGAME_PIECES + 1;
        let mut plan = Scheduler::new(layout(many as u64), Bitfield::empty(many), 7, many);
        plan.join(peer(1), Bitfield::full(many));
        plan.join(peer(2), Bitfield::full(many));
        assert_eq!(plan.requests(peer(1)).len(), many);
        assert!(!plan.endgame());
        assert!(plan.requests(peer(2)).is_empty(), "copies before the endgame");
    }

    #[test]
    fn requests_withdrawn_from_a_peer_go_to_holders_with_room() {
        // More pieces than the endgame's: no copies are asked for.
        let count = ENDGAME_PIECES + 4;
        let mut plan = Scheduler::new(layout(count as u64), Bitfield::empty(count), 3, count);
        plan.join(peer(1), Bitfield::full(count));
        assert_eq!(plan.requests(peer(1)).len(), count);
        // Peers 2 and 3 gain pieces while peer 1 sits on every request;
        // peer 2 has room for two requests. Peer 3 is not among those the
        // pieces may go to.
        plan.join(peer(2), bits(count, &[1, 2, 3]));
        plan.join(peer(3), bits(count, &[4, 5]));
        plan.set_pipeline(peer(2), 2);
        assert!(plan.requests(peer(2)).is_empty(), "copies before the endgame");
        let mut withdrawn = plan.withdraw(peer(1), &[peer(2)]);
        withdrawn.sort_unstable();
        assert_eq!(withdrawn, [1, 2], "only as many as peer 2 has room for");
        assert_eq!(plan.in_flight(peer(1)), count - 2);
        let mut moved = plan.requests(peer(2));
        moved.sort_unstable();
        assert_eq!(moved, [1, 2]);
        assert!(plan.requests(peer(1)).is_empty(), "asked twice");
    }

    #[test]
    fn the_seed_breaks_ties_so_downloaders_fetch_different_pieces() {
        let order = |seed| {
            let mut plan = Scheduler::new(layout(64), Bitfield::empty(64), seed, 8);
            plan.join(peer(1), Bitfield::full(64));
            plan.requests(peer(1))
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
    }

    #[test]
    fn among_equally_rare_pieces_the_start_of_the_file_comes_first() {
        let count = 3 * SHUFFLE_WINDOW;
        let mut plan = Scheduler::new(layout(count as u64), Bitfield::empty(count), 5, SHUFFLE_WINDOW);
        plan.join(peer(1), Bitfield::full(count));
        let first = plan.requests(peer(1));
        let mut sorted = first.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (0..SHUFFLE_WINDOW).collect::<Vec<_>>(),
            "the first window, whole"
        );
        assert_ne!(first, sorted, "shuffled within it");
        // A rarer piece still comes first, wherever it is.
        let mut plan = Scheduler::new(layout(count as u64), Bitfield::empty(count), 5, 1);
        plan.join(peer(1), Bitfield::full(count));
        plan.join(peer(2), bits(count, &(0..count - 1).collect::<Vec<_>>()));
        assert_eq!(plan.requests(peer(1)), [count - 1]);
    }

    #[test]
    fn the_endgame_asks_several_peers_and_the_first_good_copy_cancels_the_rest() {
        let mut plan = Scheduler::new(layout(3), bits(3, &[0, 1]), 1, 4);
        plan.join(peer(1), Bitfield::full(3));
        plan.join(peer(2), Bitfield::full(3));
        assert_eq!(plan.requests(peer(1)), [2]);
        assert!(plan.endgame());
        plan.set_pace(peer(1), 1_000);
        plan.set_pace(peer(2), 2_000);
        assert_eq!(plan.requests(peer(2)), [2], "no duplicate in the endgame");
        assert!(plan.requests(peer(2)).is_empty(), "asked twice of one peer");
        assert_eq!(plan.arrived(peer(2), 2), Arrival::Check);
        assert_eq!(plan.arrived(peer(1), 2), Arrival::Unwanted, "a duplicate was checked");
        plan.join(peer(3), Bitfield::full(3));
        assert_eq!(plan.checked(2, true), []);
        assert!(plan.is_complete());

        let mut plan = Scheduler::new(layout(2), bits(2, &[0]), 1, 4);
        for id in 1..=5 {
            plan.join(peer(id), Bitfield::full(2));
            plan.set_pace(peer(id), 10u64.pow(id as u32));
        }
        let asked: usize = (1..=5).map(|id| plan.requests(peer(id)).len()).sum();
        assert_eq!(asked, ENDGAME_COPIES as usize, "copies are capped");
        assert_eq!(plan.arrived(peer(1), 1), Arrival::Check);
        assert_eq!(plan.checked(1, true), [(peer(2), 1), (peer(3), 1)]);
    }

    #[test]
    fn a_piece_under_way_is_copied_only_by_a_peer_twice_as_fast_as_its_sender() {
        let mut plan = Scheduler::new(layout(3), bits(3, &[0]), 1, 4);
        for id in 1..=3 {
            plan.join(peer(id), Bitfield::full(3));
        }
        plan.set_pipeline(peer(1), 2);
        let first = plan.requests(peer(1));
        assert_eq!(first.len(), 2);
        assert!(plan.endgame());
        let (under_way, waiting) = (first[0], first[1]);
        assert!(plan.started(peer(1), under_way).is_empty(), "nobody else asked");
        // Paces unknown: only the piece that waits is copied.
        assert_eq!(plan.requests(peer(2)), [waiting]);
        // Peer 1 sends at 1 MB/s; peer 3, with nothing queued, at 1.9 MB/s
        // would not bring the piece in half the time, at 2 MB/s it would.
        plan.set_pace(peer(1), 1_000_000);
        plan.set_pipeline(peer(3), 1);
        plan.set_pace(peer(3), 1_900_000);
        assert_eq!(plan.requests(peer(3)), [waiting], "a copy from a peer not fast enough");
        let mut plan_again = plan.clone();
        plan_again.set_pipeline(peer(3), 2);
        plan_again.set_pace(peer(3), 2_000_000);
        assert!(
            plan_again.requests(peer(3)).is_empty(),
            "with one piece queued, 2 MB/s is not fast enough"
        );
        plan_again.set_pace(peer(3), 4_000_000);
        assert_eq!(plan_again.requests(peer(3)), [under_way]);
        plan.set_pipeline(peer(3), 2);
        plan.leave(peer(3));
        plan.join(peer(3), Bitfield::full(3));
        plan.set_pace(peer(3), 2_000_000);
        let mut copies = plan.requests(peer(3));
        copies.sort_unstable();
        assert_eq!(copies, [1, 2], "a copy from a peer fast enough");

        // A sender that stopped (its pace fell to nothing) is copied by any
        // peer measured, however slow.
        let mut plan = Scheduler::new(layout(2), bits(2, &[0]), 1, 4);
        plan.join(peer(1), Bitfield::full(2));
        plan.join(peer(2), Bitfield::full(2));
        assert_eq!(plan.requests(peer(1)), [1]);
        plan.started(peer(1), 1);
        plan.set_pace(peer(1), 0);
        assert!(plan.requests(peer(2)).is_empty(), "a copy from a peer of unknown pace");
        plan.set_pace(peer(2), 1);
        assert_eq!(plan.requests(peer(2)), [1]);
    }

    #[test]
    fn the_first_peer_to_begin_a_piece_copied_takes_it_from_those_not_twice_as_fast() {
        let copied = || {
            let mut plan = Scheduler::new(layout(2), bits(2, &[0]), 1, 4);
            plan.join(peer(1), Bitfield::full(2));
            plan.join(peer(2), Bitfield::full(2));
            assert_eq!(plan.requests(peer(1)), [1]);
            assert_eq!(plan.requests(peer(2)), [1], "a piece that waits is copied");
            plan
        };
        let mut plan = copied();
        assert_eq!(plan.started(peer(2), 1), [(peer(1), 1)]);
        assert_eq!(plan.in_flight(peer(1)), 0);
        assert!(plan.requests(peer(1)).is_empty(), "a piece under way copied");
        assert_eq!(plan.arrived(peer(2), 1), Arrival::Check);
        assert_eq!(plan.checked(1, true), []);
        assert!(plan.is_complete());

        // Peer 1, twice as fast, keeps its request; and once it began too,
        // neither is taken back.
        let mut plan = copied();
        plan.set_pace(peer(1), 2_000);
        plan.set_pace(peer(2), 1_000);
        assert_eq!(plan.started(peer(2), 1), []);
        assert_eq!(plan.started(peer(1), 1), []);
        assert_eq!(plan.arrived(peer(1), 1), Arrival::Check);
        assert_eq!(plan.checked(1, true), [(peer(2), 1)]);

        // Peer 1 had begun the piece as its request was taken back (the
        // cancel crossed it on the wire): it is in flight from peer 1 all
        // the same, not asked of it again, and cancelled once in.
        let mut plan = copied();
        assert_eq!(plan.started(peer(2), 1), [(peer(1), 1)]);
        assert_eq!(plan.started(peer(1), 1), [], "peer 2 sends it too");
        assert_eq!(plan.in_flight(peer(1)), 1);
        assert!(plan.requests(peer(1)).is_empty(), "asked again for the piece it sends");
        assert_eq!(plan.arrived(peer(2), 1), Arrival::Check);
        assert_eq!(plan.checked(1, true), [(peer(1), 1)], "not cancelled once in");

        // A piece held already, past the end, or begun by a peer not
        // connected changes nothing.
        let mut plan = copied();
        assert!(plan.started(peer(3), 1).is_empty());
        assert!(plan.started(peer(1), 0).is_empty());
        assert!(plan.started(peer(1), 2).is_empty());
        assert_eq!((plan.in_flight(peer(1)), plan.in_flight(peer(2))), (1, 1));
    }

    #[test]
    fn the_piece_a_peer_is_sending_is_not_withdrawn_from_it() {
        // More pieces than the endgame's: no copies are asked for.
        let count = ENDGAME_PIECES + 4;
        let mut plan = Scheduler::new(layout(count as u64), Bitfield::empty(count), 3, count);
        plan.join(peer(1), Bitfield::full(count));
        let asked = plan.requests(peer(1));
        plan.join(peer(2), Bitfield::full(count));
        assert!(plan.started(peer(1), asked[0]).is_empty());
        let moved = plan.withdraw(peer(1), &[peer(2)]);
        assert!(!moved.contains(&asked[0]), "the piece under way was taken back");
        assert_eq!(moved.len(), asked.len() - 1);
        assert_eq!(plan.in_flight(peer(1)), 1);
    }

    #[test]
    fn a_piece_begun_unasked_is_in_flight_from_its_sender_one_at_a_time() {
        let mut plan = Scheduler::new(layout(3), Bitfield::empty(3), 1, 1);
        plan.join(peer(1), Bitfield::full(3));
        plan.join(peer(2), bits(3, &[2]));
        let asked = plan.requests(peer(1));
        assert_eq!(asked.len(), 1);
        assert!(plan.started(peer(2), 0).is_empty(), "a piece it does not hold");
        assert_eq!(plan.in_flight(peer(2)), 0);
        assert!(plan.started(peer(2), 2).is_empty());
        assert_eq!(plan.in_flight(peer(2)), 1, "the piece it sends");
        assert_eq!(plan.arrived(peer(2), 2), Arrival::Check);
        assert_eq!(plan.in_flight(peer(2)), 0, "its piece in, it claims nothing");
    }

    #[test]
    fn a_bad_piece_is_missing_again_and_its_sender_is_dropped() {
        let mut plan = Scheduler::new(layout(2), Bitfield::empty(2), 1, 2);
        plan.join(peer(1), Bitfield::full(2));
        assert_eq!(plan.requests(peer(1)).len(), 2);
        plan.join(peer(2), bits(2, &[0, 1]));
        let sent = plan.requests(peer(1))[..].to_vec();
        assert!(sent.is_empty());
        assert_eq!(plan.arrived(peer(1), 0), Arrival::Check);
        assert!(plan.checked(0, false).is_empty());
        assert_eq!(plan.leave(peer(1)), [1], "what was in flight to the liar");
        assert!(!plan.knows(peer(1)));
        let again = plan.requests(peer(2));
        assert_eq!(again.len(), 2, "{again:?}");
        assert!(!plan.useful(peer(1)));
    }

    #[test]
    fn a_piece_lost_on_disk_is_asked_again_though_every_piece_after_it_is_held() {
        let mut plan = Scheduler::new(layout(3), bits(3, &[0, 1]), 1, 4);
        plan.join(peer(1), Bitfield::full(3));
        assert_eq!(plan.requests(peer(1)), [2]);
        assert_eq!(plan.arrived(peer(1), 2), Arrival::Check);
        assert!(plan.checked(2, true).is_empty());
        assert!(plan.is_complete());
        plan.forget(0);
        assert_eq!(plan.requests(peer(1)), [0]);
    }

    #[test]
    fn a_peers_pipeline_can_shrink_and_grow() {
        let mut plan = Scheduler::new(layout(10), Bitfield::empty(10), 1, 4);
        plan.join(peer(1), Bitfield::full(10));
        plan.set_pipeline(peer(1), 1);
        assert_eq!(plan.requests(peer(1)).len(), 1);
        plan.set_pipeline(peer(1), 3);
        assert_eq!(plan.requests(peer(1)).len(), 2);
        assert_eq!(plan.in_flight(peer(1)), 3);
    }

    #[test]
    fn peers_gain_and_lose_pieces_and_availability_follows() {
        let mut plan = Scheduler::new(layout(3), Bitfield::empty(3), 1, 1);
        plan.join(peer(1), Bitfield::empty(3));
        assert!(!plan.useful(peer(1)));
        assert!(plan.lacks_a_source());
        assert!(plan.gained(peer(1), 2));
        assert_eq!(plan.requests(peer(1)), [2]);
        plan.lost(peer(1), 2);
        assert_eq!(plan.in_flight(peer(1)), 0);
        assert!(plan.requests(peer(1)).is_empty());
        assert!(!plan.gained(peer(9), 0), "an unknown peer");
        assert!(!plan.gained(peer(1), 99), "a piece past the end");
        plan.lost(peer(1), 99);
    }

    /// What [`Scheduler::fresh`] must hold, from the counts, and the counts
    /// from the peers: computed the slow way.
    fn check_in_step(plan: &Scheduler) {
        let count = plan.layout.count();
        for index in 0..count {
            let holders = plan.peers.values().filter(|p| p.bits.has(index)).count();
            let asked = plan.peers.values().filter(|p| p.in_flight.contains(&index)).count();
            let sending_unasked =
                (plan.peers.values()).any(|p| p.sending == Some(index) && !p.in_flight.contains(&index));
            assert!(!sending_unasked, "piece {index} under way, not asked for");
            assert_eq!(plan.availability[index] as usize, holders, "availability of {index}");
            assert_eq!(plan.requesters[index] as usize, asked, "requesters of {index}");
        }
        let expected: BTreeSet<FreshKey> = (0..count)
            .filter(|&index| !plan.settled(index) && plan.requesters[index] == 0 && plan.availability[index] > 0)
            .map(|index| (plan.availability[index], plan.rank[index], index))
            .collect();
        assert_eq!(plan.fresh, expected);
    }

    #[test]
    fn the_pieces_to_ask_for_first_stay_in_step_with_every_change() {
        let count = 200;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut plan = Scheduler::new(layout(count as u64), bits(count, &[3, 50, 51]), 1, 4);
        for _ in 0..5_000 {
            let who = peer(rng.random_range(1..=6));
            let index = rng.random_range(0..count);
            match rng.random_range(0..9) {
                0 => {
                    let held: Vec<usize> = (0..count).filter(|_| rng.random_bool(0.3)).collect();
                    plan.join(who, bits(count, &held));
                }
                1 => {
                    plan.gained(who, index);
                }
                2 => plan.lost(who, index),
                3 if rng.random_bool(0.1) => {
                    plan.leave(who);
                }
                4 => {
                    plan.set_pipeline(who, rng.random_range(1..8));
                    plan.set_pace(who, rng.random_range(0..4));
                }
                5 | 6 => {
                    let asked = plan.requests(who);
                    let held = plan.peers.get(&who).map(|p| p.bits.clone());
                    assert!(asked
                        .iter()
                        .all(|index| held.as_ref().is_some_and(|bits| bits.has(*index))));
                }
                7 => {
                    // An arrival: mostly of a piece asked for, now and then
                    // of one nobody asked for.
                    let asked = plan.peers.get(&who).and_then(|p| p.in_flight.iter().next().copied());
                    let piece = asked.unwrap_or(index);
                    // Begun first, now and then while others wait to send it.
                    if rng.random_bool(0.5) {
                        plan.started(who, piece);
                    }
                    if plan.arrived(who, piece) == Arrival::Check {
                        plan.checked(piece, rng.random_bool(0.9));
                    }
                }
                8 if plan.have.has(index) && rng.random_bool(0.2) => plan.forget(index),
                _ => {}
            }
            check_in_step(&plan);
        }
        assert!(
            plan.have.held() > 100,
            "the run got somewhere: {} held",
            plan.have.held()
        );
    }
}

//! How a client spreads the pieces of a file it holds whole: which piece
//! to send first, and which to show a downloader. No I/O, no clock.
//!
//! In a swarm, the seeder's upload is the only way new pieces enter; every
//! copy of a piece it sends twice while others were never sent delays the
//! whole swarm. Downloaders cannot know what the seeder sent to others (a
//! piece becomes visible only once its receiver has checked it), so left
//! to themselves they ask the seeder for the same pieces.
//!
//! Two rules keep the seeder's upload on fresh pieces:
//!
//! - **Least sent first.** Of the pieces a downloader asked for, the one
//!   sent least often (to anyone) goes first.
//! - **Super-seeding.** While some piece was never sent, a downloader that
//!   joins beside others is not shown the whole file: only
//!   [`REVEALED`] pieces, those shown and sent least often so far, and a
//!   new one each time one of them is sent or no longer wanted. It can ask
//!   only for those, so each goes to one downloader, which then trades it.
//!   Once every piece went out at least once, the rest of the file is
//!   shown to everyone.

use std::collections::BTreeSet;

use crate::pieces::Bitfield;

/// How many pieces a downloader that joins beside others is shown at once
/// while the seeder super-seeds. One: the seeder's queue holds a request
/// from every downloader anyway, so it never waits for one, and each piece
/// shown goes to as few downloaders as can be (measured with
/// bench/swarm.rhai, 2 and 3 were slower).
pub const REVEALED: usize = 1;

/// The most pieces a reveal looks at: the pieces a downloader was shown
/// and did not take come first in the order, and an honest one holds a
/// few; one that piles them up (cancelling what it is shown) is shown
/// nothing more, so that no reveal costs a look at every piece.
pub const REVEAL_LOOK: usize = 1024;

/// How a client spread the pieces of one file cut one way.
#[derive(Clone, Debug)]
pub struct Tally {
    /// How many times each piece went out.
    sent: Vec<u32>,
    /// How many downloaders were shown each piece while it was hidden.
    shown: Vec<u32>,
    /// Every piece, by (times sent, times shown, index), once a piece was
    /// shown: the next piece to show is the first here that the
    /// downloader was not shown, found without looking at every piece (a
    /// look at each, for each piece shown, is quadratic in the pieces of a
    /// file cut small). `None` until the first reveal: most tallies never
    /// hide anything.
    order: Option<BTreeSet<(u32, u32, usize)>>,
    /// How many pieces never went out.
    unsent: usize,
}

impl Tally {
    /// Nothing of `count` pieces sent or shown.
    pub fn new(count: usize) -> Tally {
        Tally {
            sent: vec![0; count],
            shown: vec![0; count],
            order: None,
            unsent: count,
        }
    }

    /// Whether every piece went out at least once: nothing is hidden any
    /// more.
    pub fn spread(&self) -> bool {
        self.unsent == 0
    }

    /// Of `asked` (in the order asked), the piece sent least often, the
    /// first asked among equals; `None` if `asked` is empty. A piece past
    /// the end counts as never sent (it is refused when its turn comes).
    pub fn least_sent(&self, asked: impl IntoIterator<Item = usize>) -> Option<usize> {
        let count = |index: usize| self.sent.get(index).copied().unwrap_or(0);
        asked
            .into_iter()
            .enumerate()
            .min_by_key(|(at, index)| (count(*index), *at))
            .map(|(_, index)| index)
    }

    /// Piece `index` goes out.
    pub fn send(&mut self, index: usize) {
        if index >= self.sent.len() {
            return;
        }
        if self.sent[index] == 0 {
            self.unsent -= 1;
        }
        self.count(index, 1, 0);
    }

    /// The next piece to show a downloader that was shown `told`: the one
    /// sent, then shown, least often (lowest index among equals), counted
    /// as shown; `None` if it was shown everything, or if more than
    /// [`REVEAL_LOOK`] pieces it was shown come before it (no honest
    /// downloader is shown that many pieces it did not take; it sees the
    /// rest once every piece went out).
    pub fn reveal(&mut self, told: &Bitfield) -> Option<usize> {
        let (sent, shown) = (&self.sent, &self.shown);
        let order = self.order.get_or_insert_with(|| {
            (0..sent.len())
                .map(|index| (sent[index], shown[index], index))
                .collect()
        });
        let (_, _, index) = *order.iter().take(REVEAL_LOOK).find(|(_, _, index)| !told.has(*index))?;
        self.count(index, 0, 1);
        Some(index)
    }

    /// Adds `more_sent` and `more_shown` to the counts of piece `index`,
    /// keeping [`Tally::order`] in step.
    fn count(&mut self, index: usize, more_sent: u32, more_shown: u32) {
        let before = (self.sent[index], self.shown[index], index);
        self.sent[index] += more_sent;
        self.shown[index] += more_shown;
        if let Some(order) = &mut self.order {
            order.remove(&before);
            order.insert((self.sent[index], self.shown[index], index));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_piece_sent_least_goes_first_and_the_first_asked_among_equals() {
        let mut tally = Tally::new(4);
        tally.send(2);
        tally.send(2);
        tally.send(0);
        assert_eq!(tally.least_sent([2, 0, 3, 1]), Some(3));
        assert_eq!(tally.least_sent([2, 0]), Some(0));
        assert_eq!(tally.least_sent([]), None);
        assert_eq!(
            tally.least_sent([2, 9]),
            Some(9),
            "a piece past the end is refused first"
        );
    }

    #[test]
    fn a_reveal_is_the_piece_sent_then_shown_least_that_was_not_shown() {
        // Against the plain definition, over a seeded mix of sends and of
        // reveals to three downloaders.
        let mut tally = Tally::new(64);
        let mut told = vec![Bitfield::empty(64); 3];
        let mut state = 7u64;
        for _ in 0..2000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let (who, index) = ((state >> 33) as usize % 3, (state >> 40) as usize % 64);
            if state >> 62 == 0 {
                tally.send(index);
                continue;
            }
            let least = (told[who].iter_missing()).min_by_key(|i| (tally.sent[*i], tally.shown[*i], *i));
            let shown = tally.reveal(&told[who]);
            assert_eq!(shown, least);
            if let Some(index) = shown {
                told[who].set(index);
            }
        }
    }

    #[test]
    fn a_downloader_that_piles_up_pieces_it_was_shown_is_shown_no_more() {
        let count = REVEAL_LOOK + 8;
        let mut tally = Tally::new(count);
        let mut hoarder = Bitfield::empty(count);
        for _ in 0..=REVEAL_LOOK {
            hoarder.set(tally.reveal(&hoarder).unwrap());
        }
        // Two others are shown the rest (each is shown the rest only):
        // now every piece the hoarder was not shown comes after the ones
        // it was, shown more often.
        for _ in 0..2 {
            let mut other = hoarder.clone();
            while let Some(index) = tally.reveal(&other) {
                other.set(index);
            }
        }
        assert_eq!(tally.reveal(&hoarder), None, "a look past {REVEAL_LOOK} pieces");
    }

    #[test]
    fn downloaders_are_shown_different_pieces_until_each_went_out_once() {
        let mut tally = Tally::new(4);
        let mut first = Bitfield::empty(4);
        let mut second = Bitfield::empty(4);
        for told in [&mut first, &mut second] {
            for _ in 0..2 {
                let index = tally.reveal(told).unwrap();
                told.set(index);
            }
        }
        assert_eq!(first.iter_held().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(second.iter_held().collect::<Vec<_>>(), [2, 3]);

        // Piece 0 goes out: the first downloader is shown a piece that went
        // out least, of those it was not shown.
        tally.send(0);
        assert_eq!(tally.reveal(&first), Some(2));
        assert!(!tally.spread());
        for index in 1..4 {
            tally.send(index);
        }
        assert!(tally.spread());
        assert_eq!(tally.reveal(&Bitfield::full(4)), None);
    }
}

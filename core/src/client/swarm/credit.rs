//! Who sent the pieces of a swarm download: the bytes each peer sent, as
//! the download's `sources` report them, and each piece's sender, so that
//! a piece later found bad on disk is taken back from whoever sent it.

use std::collections::BTreeMap;

use crate::protocol::ClientId;

/// The senders of one download's checked pieces.
#[derive(Debug)]
pub(super) struct Credit {
    /// Bytes of checked pieces from each peer.
    sources: BTreeMap<ClientId, u64>,
    /// Who sent each checked piece (`None`: none, or it was on disk when
    /// the download began): a piece fetched again counts once.
    sent_by: Vec<Option<ClientId>>,
    /// Bytes already on disk when the download began (and still good).
    resumed: u64,
}

impl Credit {
    /// Nothing sent yet of `count` pieces, `resumed` bytes of them on
    /// disk already.
    pub(super) fn new(count: usize, resumed: u64) -> Credit {
        Credit {
            sources: BTreeMap::new(),
            sent_by: vec![None; count],
            resumed,
        }
    }

    /// Piece `index`, of `bytes`, came from `peer` and checked out.
    pub(super) fn sent(&mut self, index: usize, peer: ClientId, bytes: u64) {
        *self.sources.entry(peer).or_default() += bytes;
        self.sent_by[index] = Some(peer);
    }

    /// Piece `index`, of `bytes`, went bad on disk: it counts neither for
    /// its sender nor as resumed any more.
    pub(super) fn take_back(&mut self, index: usize, bytes: u64) {
        match self.sent_by[index].take() {
            Some(sender) => {
                if let Some(sent) = self.sources.get_mut(&sender) {
                    *sent = sent.saturating_sub(bytes);
                    if *sent == 0 {
                        self.sources.remove(&sender);
                    }
                }
            }
            None => self.resumed = self.resumed.saturating_sub(bytes),
        }
    }

    /// Bytes of checked pieces from each peer.
    pub(super) fn sources(&self) -> &BTreeMap<ClientId, u64> {
        &self.sources
    }

    /// Bytes that were on disk when the download began, and still good.
    pub(super) fn resumed(&self) -> u64 {
        self.resumed
    }

    /// The peer that sent most (the lowest id among equals), if any did.
    pub(super) fn most(&self) -> Option<ClientId> {
        let most = self
            .sources
            .iter()
            .max_by_key(|(peer, bytes)| (**bytes, std::cmp::Reverse(**peer)));
        most.map(|(peer, _)| *peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_piece_taken_back_counts_for_nobody() {
        let mut credit = Credit::new(4, 100);
        credit.sent(0, ClientId(7), 10);
        credit.sent(1, ClientId(8), 10);
        credit.sent(2, ClientId(8), 10);
        assert_eq!(credit.most(), Some(ClientId(8)));
        credit.take_back(2, 10);
        assert_eq!(credit.most(), Some(ClientId(7)), "the lowest id among equals");
        credit.take_back(0, 10);
        assert_eq!(credit.sources().keys().collect::<Vec<_>>(), [&ClientId(8)]);
        // A piece no peer sent was on disk when the download began.
        credit.take_back(3, 10);
        assert_eq!(credit.resumed(), 90);
        // Taken back once: a second time changes nothing.
        credit.take_back(1, 10);
        credit.take_back(1, 10);
        assert_eq!((credit.most(), credit.resumed()), (None, 80));
    }
}

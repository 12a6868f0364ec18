//! Status answers: what the tracker knows (its clients, then its files
//! with their holders), read from the [`Records`] a page at a time, so an
//! answer never costs a copy of the records. A [`StatusCursor`] says where
//! the next page goes on from, whatever changed in between.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::Mutex;

use super::records::{FileRecord, Records};
use crate::origin::Origin;
use crate::protocol::{ClientId, FileInfo, FileName, STATUS_HOLDERS_PER_FRAME};

/// The most status answers a tracker sends at once: each holds a page
/// while its reader takes it, and a reader may never take it. Status is
/// for people looking; downloads never need it.
pub const STATUS_ANSWERS: usize = 64;

/// The most status answers a tracker sends at once to one address (an
/// IPv6 one by its /64), so one host cannot take them all.
pub const STATUS_ANSWERS_PER_ADDRESS: usize = 4;

/// The status answers being sent, by the address they go to.
#[derive(Debug, Default)]
pub(super) struct StatusTurns(Mutex<HashMap<Origin, usize>>);

/// One status answer's place among those being sent; given back on drop.
pub(super) struct StatusTurn<'a> {
    turns: &'a StatusTurns,
    origin: Origin,
}

impl StatusTurns {
    /// A place for one more answer to `origin`, or the reason there is
    /// none, for the asker.
    pub(super) fn enter(&self, origin: Origin) -> Result<StatusTurn<'_>, String> {
        let mut sending = self.0.lock().expect("status turns poisoned");
        if sending.values().sum::<usize>() >= STATUS_ANSWERS {
            return Err(format!(
                "the tracker is sending {STATUS_ANSWERS} status answers already, the most it sends at once; try again shortly"
            ));
        }
        let from_here = sending.entry(origin).or_default();
        if *from_here >= STATUS_ANSWERS_PER_ADDRESS {
            return Err(format!(
                "the tracker is sending {STATUS_ANSWERS_PER_ADDRESS} status answers to {origin} already, the most it sends one address at once; try again once they are read"
            ));
        }
        *from_here += 1;
        Ok(StatusTurn { turns: self, origin })
    }
}

impl Drop for StatusTurn<'_> {
    fn drop(&mut self) {
        let mut sending = self.turns.0.lock().expect("status turns poisoned");
        if let Some(count) = sending.get_mut(&self.origin) {
            *count -= 1;
            if *count == 0 {
                sending.remove(&self.origin);
            }
        }
    }
}

/// One entry of a status answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StatusEntry {
    /// A registered client.
    Client {
        /// The client.
        client: ClientId,
        /// Where its peer server listens.
        addr: SocketAddr,
        /// How many files it holds.
        files: u64,
    },
    /// A file and some of its holders: a file with more holders than fit a
    /// frame comes as several consecutive entries.
    File {
        /// The file.
        file: FileName,
        /// Its recorded size and SHA-1.
        info: FileInfo,
        /// Holders, in id order.
        holders: Vec<ClientId>,
    },
}

/// Where a status answer stands between two pages: the next page goes on
/// from here, whatever changed in between.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum StatusCursor {
    /// Nothing sent yet.
    #[default]
    Start,
    /// The clients after this one are still to send.
    AfterClient(ClientId),
    /// The clients are sent; the files are still to send.
    Files,
    /// This file's holders after this one are still to send.
    InFile(FileName, ClientId),
    /// The files after this one are still to send.
    AfterFile(FileName),
    /// Everything is sent.
    Done,
}

impl Records {
    /// The next page of a status answer, from `cursor` on: registered
    /// clients in id order, then files in name order with their holders.
    /// A page holds at most `budget` ids (an entry counts one, each holder
    /// listed one more; a page always holds something), so building it
    /// costs a page of memory however large the records: the tracker sends
    /// a page, then reads the next one from where the cursor stands. Returns the page and the cursor of
    /// the next one ([`StatusCursor::Done`] after the last).
    pub fn status_page(&self, mut cursor: StatusCursor, budget: usize) -> (Vec<StatusEntry>, StatusCursor) {
        let mut page = Vec::new();
        let mut spent = 0;
        while spent < budget.max(1) && cursor != StatusCursor::Done {
            let (entry, next) = match &cursor {
                StatusCursor::Start | StatusCursor::AfterClient(_) => self.next_client(&cursor),
                StatusCursor::Done => (None, StatusCursor::Done),
                _ => {
                    let room = budget.saturating_sub(spent + 1).min(STATUS_HOLDERS_PER_FRAME);
                    match self.next_file_part(&cursor, room, page.is_empty()) {
                        Some(step) => step,
                        None => break, // no room left for a holder: next page
                    }
                }
            };
            if let Some(entry) = entry {
                spent += match &entry {
                    StatusEntry::Client { .. } => 1,
                    StatusEntry::File { holders, .. } => 1 + holders.len(),
                };
                page.push(entry);
            }
            cursor = next;
        }
        (page, cursor)
    }

    /// The entry of the client after `cursor` (at the start, or after a
    /// client), and the cursor after it: the files once no client is left.
    fn next_client(&self, cursor: &StatusCursor) -> (Option<StatusEntry>, StatusCursor) {
        let next = match cursor {
            StatusCursor::AfterClient(after) => self.clients.range((Bound::Excluded(*after), Bound::Unbounded)).next(),
            _ => self.clients.iter().next(),
        };
        match next {
            Some((client, record)) => {
                let entry = StatusEntry::Client {
                    client: *client,
                    addr: record.addr,
                    files: record.files.len() as u64,
                };
                (Some(entry), StatusCursor::AfterClient(*client))
            }
            None => (None, StatusCursor::Files),
        }
    }

    /// The next part of a file's entry after `cursor` (among the files),
    /// with at most `room` of its holders (one, if the page is `empty`, so
    /// every page holds something), and the cursor after it. A file's first
    /// part goes out even with no holder, a later one only with holders:
    /// no entry, if there is none left. `None` if a holder is left that
    /// the page has no room for.
    fn next_file_part(
        &self,
        cursor: &StatusCursor,
        room: usize,
        empty: bool,
    ) -> Option<(Option<StatusEntry>, StatusCursor)> {
        let (next, after) = match cursor {
            StatusCursor::InFile(file, holder) => match self.files.get_key_value(file) {
                Some(next) => (Some(next), Some(*holder)),
                None => (self.files_after(file), None),
            },
            StatusCursor::AfterFile(file) => (self.files_after(file), None),
            _ => (self.files.iter().next(), None),
        };
        let Some((file, record)) = next else {
            return Some((None, StatusCursor::Done));
        };
        let rest = record.holders.after(after);
        if room == 0 && !rest.is_empty() && !empty {
            return None;
        }
        let holders = &rest[..rest.len().min(room.max(1))];
        let next = match holders.last() {
            Some(last) if holders.len() < rest.len() => StatusCursor::InFile(file.clone(), *last),
            _ => StatusCursor::AfterFile(file.clone()),
        };
        let entry = (after.is_none() || !holders.is_empty()).then(|| StatusEntry::File {
            file: file.clone(),
            info: record.content.info,
            holders: holders.to_vec(),
        });
        Some((entry, next))
    }

    fn files_after(&self, file: &FileName) -> Option<(&FileName, &FileRecord)> {
        self.files
            .range::<FileName, _>((Bound::Excluded(file), Bound::Unbounded))
            .next()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::tracker::records::tests::{addr, content, file, host, records};

    /// Every entry of a status answer, read in pages of `budget`.
    pub(in crate::tracker) fn status(records: &Records, budget: usize) -> Vec<StatusEntry> {
        let (mut all, mut cursor) = (Vec::new(), StatusCursor::Start);
        while cursor != StatusCursor::Done {
            let (page, next) = records.status_page(cursor, budget);
            all.extend(page);
            cursor = next;
        }
        all
    }

    #[test]
    fn status_pages_stay_within_their_budget_and_miss_nothing() {
        let mut records = records(0, 2);
        for holder in 10..5_010 {
            records.register(ClientId(holder), addr(3), holder, host()).unwrap();
            records
                .announce(ClientId(holder), &file("popular"), content(b"p"))
                .unwrap();
        }
        for n in 0..300 {
            records
                .announce(ClientId(1), &file(&format!("f{n:03}")), content(b"x"))
                .unwrap();
        }
        let budget = 100;
        let (mut cursor, mut entries) = (StatusCursor::Start, Vec::new());
        while cursor != StatusCursor::Done {
            let (page, next) = records.status_page(cursor, budget);
            let cost: usize = page
                .iter()
                .map(|entry| match entry {
                    StatusEntry::Client { .. } => 1,
                    StatusEntry::File { holders, .. } => 1 + holders.len(),
                })
                .sum();
            assert!(cost <= budget, "a page of {cost} ids");
            entries.extend(page);
            cursor = next;
        }
        let clients = entries
            .iter()
            .filter(|e| matches!(e, StatusEntry::Client { .. }))
            .count();
        assert_eq!(clients, 5_002);
        let mut popular = Vec::new();
        let mut names = Vec::new();
        for entry in &entries {
            if let StatusEntry::File { file, holders, .. } = entry {
                if names.last() != Some(file) {
                    names.push(file.clone());
                }
                if file.as_str() == "popular" {
                    popular.extend(holders.iter().copied());
                }
            }
        }
        assert_eq!(names.len(), 301);
        assert!(names.windows(2).all(|pair| pair[0] < pair[1]), "files out of order");
        assert_eq!(popular, (10..5_010).map(ClientId).collect::<Vec<_>>());
        // One big page carries as much as a frame allows per part.
        assert_eq!(status(&records, usize::MAX), status(&records, 1_000_000));
    }

    #[test]
    fn a_status_answer_goes_on_from_its_cursor_whatever_changed() {
        let mut records = records(0, 3);
        for name in ["a", "b", "c"] {
            records.announce(ClientId(1), &file(name), content(b"x")).unwrap();
        }
        let (page, cursor) = records.status_page(StatusCursor::Start, 5);
        assert_eq!(page.len(), 4, "{page:?}");
        assert_eq!(cursor, StatusCursor::AfterFile(file("a")));
        // Between two pages, b goes and d comes.
        records.drop_holding(ClientId(1), &file("b"), None);
        records.announce(ClientId(2), &file("d"), content(b"x")).unwrap();
        let (rest, done) = records.status_page(cursor, 100);
        assert_eq!(done, StatusCursor::Done);
        let names: Vec<&str> = rest
            .iter()
            .map(|entry| match entry {
                StatusEntry::File { file, .. } => file.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(names, ["c", "d"]);
    }

    #[test]
    fn a_few_status_answers_go_out_at_once_and_one_address_cannot_take_them_all() {
        let turns = StatusTurns::default();
        let origin = |n: u8| Origin::from(std::net::IpAddr::from([10, 0, 0, n]));
        let here: Vec<_> = (0..STATUS_ANSWERS_PER_ADDRESS)
            .map(|_| turns.enter(origin(1)).unwrap())
            .collect();
        let refused = turns.enter(origin(1)).err().unwrap();
        assert!(refused.contains("to 10.0.0.1 already"), "{refused}");
        // Another address has its own, until the tracker's are all taken.
        let mut elsewhere = Vec::new();
        for n in 2.. {
            match turns.enter(origin(n)) {
                Ok(turn) => elsewhere.push(turn),
                Err(refused) => {
                    assert!(refused.contains("the most it sends at once"), "{refused}");
                    break;
                }
            }
        }
        assert_eq!(here.len() + elsewhere.len(), STATUS_ANSWERS);
        // An answer that ends gives its place back.
        drop(here);
        let again = turns.enter(origin(1));
        assert!(again.is_ok());
        drop((again, elsewhere));
        assert!(turns.0.lock().unwrap().is_empty(), "a place was not given back");
    }
}

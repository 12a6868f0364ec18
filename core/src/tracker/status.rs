//! Status answers: what the tracker knows (its clients, then its files
//! with their holders), read from the [`Records`] a page at a time, so an
//! answer never costs a copy of the records. A [`StatusCursor`] says where
//! the next page goes on from, whatever changed in between.

use std::net::SocketAddr;
use std::ops::Bound;

use super::records::{FileRecord, Records};
use crate::protocol::{ClientId, FileInfo, FileName, STATUS_HOLDERS_PER_FRAME};

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
            cursor = match &cursor {
                StatusCursor::Start | StatusCursor::AfterClient(_) => {
                    let next = match &cursor {
                        StatusCursor::AfterClient(after) => {
                            self.clients.range((Bound::Excluded(*after), Bound::Unbounded)).next()
                        }
                        _ => self.clients.iter().next(),
                    };
                    match next {
                        Some((client, record)) => {
                            page.push(StatusEntry::Client {
                                client: *client,
                                addr: record.addr,
                                files: record.files.len() as u64,
                            });
                            spent += 1;
                            StatusCursor::AfterClient(*client)
                        }
                        None => StatusCursor::Files,
                    }
                }
                StatusCursor::Files | StatusCursor::AfterFile(_) | StatusCursor::InFile(..) => {
                    let (next, after) = match &cursor {
                        StatusCursor::InFile(file, holder) => match self.files.get_key_value(file) {
                            Some(next) => (Some(next), Some(*holder)),
                            None => (self.files_after(file), None),
                        },
                        StatusCursor::AfterFile(file) => (self.files_after(file), None),
                        _ => (self.files.iter().next(), None),
                    };
                    match next {
                        Some((file, record)) => {
                            let rest = record.holders.after(after);
                            let room = budget.saturating_sub(spent + 1).min(STATUS_HOLDERS_PER_FRAME);
                            if room == 0 && !rest.is_empty() && !page.is_empty() {
                                break; // no room left for a holder: next page
                            }
                            let holders = &rest[..rest.len().min(room.max(1))];
                            // A file's first part goes out even with no
                            // holder; a later part only with holders in it.
                            if after.is_none() || !holders.is_empty() {
                                spent += 1 + holders.len();
                                page.push(StatusEntry::File {
                                    file: file.clone(),
                                    info: record.content.info,
                                    holders: holders.to_vec(),
                                });
                            }
                            match holders.last() {
                                Some(last) if holders.len() < rest.len() => StatusCursor::InFile(file.clone(), *last),
                                _ => StatusCursor::AfterFile(file.clone()),
                            }
                        }
                        None => StatusCursor::Done,
                    }
                }
                StatusCursor::Done => StatusCursor::Done,
            };
        }
        (page, cursor)
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
}

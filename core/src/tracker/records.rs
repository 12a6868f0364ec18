//! The tracker's records: who is registered, who holds what. No I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::Bound;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha1::{Digest as _, Sha1};

use crate::protocol::{ClientId, FileInfo, FileName, STATUS_HOLDERS_PER_FRAME};

/// Identifies one session (one TCP connection) on the tracker, so that the
/// end of an old session never removes a client that registered again.
pub type SessionId = u64;

/// Why the tracker refuses a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another live session registered this id.
    #[error("client {0} is already registered from another connection (another peer uses this id: pick another)")]
    IdTaken(ClientId),
    /// This session registered as someone else.
    #[error("this connection is registered as client {registered}, not {asked}")]
    OtherId {
        /// The id this session registered.
        registered: ClientId,
        /// The id asked for now.
        asked: ClientId,
    },
    /// The session has not registered.
    #[error("register first: this connection has not registered a client")]
    NotRegistered,
    /// The same name was announced with other content before.
    #[error("{file} is recorded with size {} and sha1 {}; this copy has size {} and sha1 {} (files of the same name must have the same content)",
        .recorded.size, .recorded.sha1, .announced.size, .announced.sha1)]
    ContentMismatch {
        /// The file.
        file: FileName,
        /// What the first announce recorded.
        recorded: FileInfo,
        /// What this announce claims.
        announced: FileInfo,
    },
}

/// A holder picked for a download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's id.
    pub peer: ClientId,
    /// Where its peer server listens.
    pub addr: SocketAddr,
    /// The file's recorded size and SHA-1.
    pub info: FileInfo,
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

/// Everything the tracker knows.
#[derive(Debug)]
pub struct Records {
    /// Every random choice derives from this.
    seed: u64,
    /// Registered clients, in id order (status answers page through them).
    clients: BTreeMap<ClientId, ClientRecord>,
    /// Every file some registered client holds, with its content and
    /// holders, in name order.
    files: BTreeMap<FileName, FileRecord>,
    /// How many lookups each client made for each file: with the seed, it
    /// decides the lookup's random choice, so that lookups of different
    /// clients never change each other's outcome.
    lookups: HashMap<(ClientId, FileName), u64>,
    /// The holders each registered client was given for each file: a report
    /// about a holder is believed only from a client that was sent to it.
    offered: HashMap<ClientId, HashMap<FileName, BTreeSet<ClientId>>>,
}

/// A registered client.
#[derive(Debug)]
struct ClientRecord {
    /// Where its peer server listens.
    addr: SocketAddr,
    /// The session it registered on.
    session: SessionId,
    /// The files it announced.
    files: BTreeSet<FileName>,
}

/// A file ever announced.
#[derive(Debug)]
struct FileRecord {
    /// Size and SHA-1 from its first announce; later announces must match.
    info: FileInfo,
    /// Who holds it now, ordered so a seeded choice is reproducible.
    holders: Holders,
}

/// The holders of one file: a sorted list, so that a lookup picks the k-th
/// eligible holder in O(log n) instead of copying a list that, for a popular
/// file, holds most of the swarm.
#[derive(Debug, Default)]
struct Holders(Vec<ClientId>);

impl Holders {
    fn insert(&mut self, client: ClientId) {
        if let Err(at) = self.0.binary_search(&client) {
            self.0.insert(at, client);
        }
    }

    fn remove(&mut self, client: &ClientId) -> bool {
        match self.0.binary_search(client) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &ClientId> {
        self.0.iter()
    }

    /// The holders after `after` (all of them for `None`).
    fn after(&self, after: Option<ClientId>) -> &[ClientId] {
        let from = match after.map(|after| self.0.binary_search(&after)) {
            None => 0,
            Some(Ok(at)) => at + 1,
            Some(Err(at)) => at,
        };
        &self.0[from..]
    }

    /// How many holders are not in `skip`, and a way to find the k-th of
    /// them: the (sorted, distinct) positions of the skipped ones.
    fn eligible(&self, skip: impl IntoIterator<Item = ClientId>) -> (usize, Vec<usize>) {
        let mut skipped: Vec<usize> = skip.into_iter().filter_map(|c| self.0.binary_search(&c).ok()).collect();
        skipped.sort_unstable();
        skipped.dedup();
        (self.0.len() - skipped.len(), skipped)
    }

    /// The k-th holder (in id order) whose position is not in `skipped`.
    fn nth_eligible(&self, k: usize, skipped: &[usize]) -> ClientId {
        let mut at = k;
        for &position in skipped {
            if position <= at {
                at += 1;
            } else {
                break;
            }
        }
        self.0[at]
    }
}

impl Records {
    /// Empty records whose random choices derive from `seed`.
    pub fn new(seed: u64) -> Records {
        Records {
            seed,
            clients: BTreeMap::new(),
            files: BTreeMap::new(),
            lookups: HashMap::new(),
            offered: HashMap::new(),
        }
    }

    /// Records `client`, reachable at `addr`, as registered on `session`.
    /// Registering again on the same session updates the address.
    pub fn register(&mut self, client: ClientId, addr: SocketAddr, session: SessionId) -> Result<(), Refusal> {
        match self.clients.get_mut(&client) {
            Some(record) if record.session != session => Err(Refusal::IdTaken(client)),
            Some(record) => {
                record.addr = addr;
                Ok(())
            }
            None => {
                let files = BTreeSet::new();
                self.clients.insert(client, ClientRecord { addr, session, files });
                Ok(())
            }
        }
    }

    /// Records that `client` holds `file` with content `info`.
    pub fn announce(&mut self, client: ClientId, file: &FileName, info: FileInfo) -> Result<(), Refusal> {
        let record = self.clients.get_mut(&client).ok_or(Refusal::NotRegistered)?;
        let entry = self.files.entry(file.clone()).or_insert_with(|| FileRecord {
            info,
            holders: Holders::default(),
        });
        if entry.info != info {
            return Err(Refusal::ContentMismatch {
                file: file.clone(),
                recorded: entry.info,
                announced: info,
            });
        }
        entry.holders.insert(client);
        record.files.insert(file.clone());
        Ok(())
    }

    /// Picks a holder of `file` at random for `client`, never `client`
    /// itself nor anyone in `exclude`; `None` if nobody is left.
    pub fn lookup(&mut self, client: ClientId, file: &FileName, exclude: &[ClientId]) -> Option<Holder> {
        let record = self.files.get(file)?;
        let skip = std::iter::once(client).chain(exclude.iter().copied());
        let (eligible, skipped) = record.holders.eligible(skip);
        if eligible == 0 {
            return None;
        }
        let nth = self.lookups.entry((client, file.clone())).or_insert(0);
        let mut rng = choice_rng(self.seed, client, file, *nth);
        *nth += 1;
        let peer = record.holders.nth_eligible(rng.random_range(0..eligible), &skipped);
        let info = record.info;
        self.offered
            .entry(client)
            .or_default()
            .entry(file.clone())
            .or_default()
            .insert(peer);
        let addr = self.clients[&peer].addr;
        Some(Holder { peer, addr, info })
    }

    /// Forgets `client` and everything it held, if it is still registered on
    /// `session`. Returns whether it was.
    pub fn forget(&mut self, client: ClientId, session: SessionId) -> bool {
        if self.clients.get(&client).is_none_or(|record| record.session != session) {
            return false;
        }
        let record = self.clients.remove(&client).expect("checked above");
        for file in record.files {
            self.unhold(client, &file);
        }
        self.offered.remove(&client);
        true
    }

    /// Stops offering `client` as a holder of `file` (its copy is bad).
    /// Returns whether it was offered.
    pub fn drop_holding(&mut self, client: ClientId, file: &FileName) -> bool {
        if let Some(record) = self.clients.get_mut(&client) {
            record.files.remove(file);
        }
        self.unhold(client, file)
    }

    /// Removes one holding; a file nobody holds any more is forgotten with
    /// it, so its name is free for new content. Returns whether it was held.
    fn unhold(&mut self, client: ClientId, file: &FileName) -> bool {
        let Some(entry) = self.files.get_mut(file) else {
            return false;
        };
        let held = entry.holders.remove(&client);
        if entry.holders.0.is_empty() {
            self.files.remove(file);
        }
        held
    }

    /// Whether `client` was given `peer` as a holder of `file`.
    pub fn was_offered(&self, client: ClientId, file: &FileName, peer: ClientId) -> bool {
        self.offered
            .get(&client)
            .and_then(|files| files.get(file))
            .is_some_and(|peers| peers.contains(&peer))
    }

    /// The current holders of `file`, in id order.
    pub fn holders(&self, file: &FileName) -> Vec<ClientId> {
        self.files
            .get(file)
            .map(|record| record.holders.iter().copied().collect())
            .unwrap_or_default()
    }

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
                                    info: record.info,
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

    /// Whether `client` is registered.
    pub fn is_registered(&self, client: ClientId) -> bool {
        self.clients.contains_key(&client)
    }
}

/// The random generator of one lookup: a function of the seed, the asker, the
/// file and how many times the asker looked it up before, and of nothing
/// else (not the order in which concurrent lookups arrive).
fn choice_rng(seed: u64, client: ClientId, file: &FileName, nth: u64) -> ChaCha8Rng {
    let mut hasher = Sha1::new();
    hasher.update(b"phile peer choice");
    hasher.update(seed.to_le_bytes());
    hasher.update(client.0.to_le_bytes());
    hasher.update(nth.to_le_bytes());
    hasher.update(file.as_str().as_bytes());
    let digest = hasher.finalize();
    let mut key = [0u8; 32];
    key[..20].copy_from_slice(&digest);
    ChaCha8Rng::from_seed(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Digest;

    fn file(name: &str) -> FileName {
        name.parse().unwrap()
    }

    fn info(content: &[u8]) -> FileInfo {
        FileInfo {
            size: content.len() as u64,
            sha1: Digest::of(content),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Records with clients 1..=n registered, each on its own session.
    fn records(seed: u64, n: u64) -> Records {
        let mut records = Records::new(seed);
        for id in 1..=n {
            records.register(ClientId(id), addr(id as u16), id).unwrap();
        }
        records
    }

    /// Every entry of a status answer, read in pages of `budget`.
    fn status(records: &Records, budget: usize) -> Vec<StatusEntry> {
        let (mut all, mut cursor) = (Vec::new(), StatusCursor::Start);
        while cursor != StatusCursor::Done {
            let (page, next) = records.status_page(cursor, budget);
            all.extend(page);
            cursor = next;
        }
        all
    }

    #[test]
    fn a_lookup_finds_an_announced_holder_but_never_the_asker() {
        let mut records = records(0, 2);
        assert_eq!(records.lookup(ClientId(2), &file("a"), &[]), None);
        records.announce(ClientId(1), &file("a"), info(b"x")).unwrap();
        let holder = records.lookup(ClientId(2), &file("a"), &[]).unwrap();
        assert_eq!(
            holder,
            Holder {
                peer: ClientId(1),
                addr: addr(1),
                info: info(b"x")
            }
        );
        assert_eq!(records.lookup(ClientId(1), &file("a"), &[]), None);
        assert_eq!(records.lookup(ClientId(2), &file("a"), &[ClientId(1)]), None);
    }

    #[test]
    fn announcing_needs_registration_and_matching_content() {
        let mut records = records(0, 2);
        assert_eq!(
            records.announce(ClientId(9), &file("a"), info(b"x")),
            Err(Refusal::NotRegistered)
        );
        records.announce(ClientId(1), &file("a"), info(b"x")).unwrap();
        let refused = records.announce(ClientId(2), &file("a"), info(b"y"));
        assert!(matches!(refused, Err(Refusal::ContentMismatch { .. })));
        assert_eq!(records.holders(&file("a")), vec![ClientId(1)]);
    }

    #[test]
    fn an_id_belongs_to_one_live_session() {
        let mut records = records(0, 1);
        assert_eq!(
            records.register(ClientId(1), addr(9), 99),
            Err(Refusal::IdTaken(ClientId(1)))
        );
        records.register(ClientId(1), addr(9), 1).unwrap();
        records.forget(ClientId(1), 99);
        assert!(
            records.is_registered(ClientId(1)),
            "another session's end removed the client"
        );
        records.forget(ClientId(1), 1);
        assert!(!records.is_registered(ClientId(1)));
        records.register(ClientId(1), addr(9), 99).unwrap();
    }

    #[test]
    fn the_kth_eligible_holder_skips_the_asker_and_the_excluded() {
        let mut holders = Holders::default();
        for id in [5, 1, 3, 9, 7, 3] {
            holders.insert(ClientId(id));
        }
        let (count, skipped) = holders.eligible([ClientId(3), ClientId(9), ClientId(4), ClientId(3)]);
        assert_eq!(count, 3);
        let picks: Vec<u64> = (0..count).map(|k| holders.nth_eligible(k, &skipped).0).collect();
        assert_eq!(picks, [1, 5, 7]);
        assert!(holders.remove(&ClientId(1)) && !holders.remove(&ClientId(1)));
    }

    #[test]
    fn a_file_nobody_holds_is_forgotten_and_its_name_freed() {
        let mut records = records(0, 2);
        records.announce(ClientId(1), &file("a"), info(b"x")).unwrap();
        records.forget(ClientId(1), 1);
        assert!(status(&records, 100)
            .iter()
            .all(|e| !matches!(e, StatusEntry::File { .. })));
        records.announce(ClientId(2), &file("a"), info(b"new")).unwrap();
    }

    #[test]
    fn only_a_client_sent_to_a_holder_is_believed_about_it() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), info(b"x")).unwrap();
        assert!(!records.was_offered(ClientId(3), &file("a"), ClientId(1)));
        records.lookup(ClientId(3), &file("a"), &[]).unwrap();
        assert!(records.was_offered(ClientId(3), &file("a"), ClientId(1)));
        assert!(!records.was_offered(ClientId(2), &file("a"), ClientId(1)));
    }

    #[test]
    fn a_dropped_holding_is_no_longer_offered() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), info(b"x")).unwrap();
        records.announce(ClientId(2), &file("a"), info(b"x")).unwrap();
        assert!(records.drop_holding(ClientId(1), &file("a")));
        assert!(!records.drop_holding(ClientId(1), &file("a")));
        assert_eq!(records.holders(&file("a")), vec![ClientId(2)]);
        assert!(
            records.is_registered(ClientId(1)),
            "dropping a holding unregistered the client"
        );
    }

    #[test]
    fn a_forgotten_client_is_never_chosen() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), info(b"x")).unwrap();
        records.announce(ClientId(2), &file("a"), info(b"x")).unwrap();
        records.forget(ClientId(1), 1);
        for _ in 0..20 {
            assert_eq!(records.lookup(ClientId(3), &file("a"), &[]).unwrap().peer, ClientId(2));
        }
        // The file's content stays recorded: a later copy must still match.
        assert!(records.announce(ClientId(3), &file("a"), info(b"y")).is_err());
    }

    #[test]
    fn choices_are_seeded_spread_and_independent_of_other_clients() {
        let choices = |seed: u64, interleave: bool| {
            let mut records = records(seed, 12);
            for holder in 1..=10 {
                records.announce(ClientId(holder), &file("a"), info(b"x")).unwrap();
            }
            (0..50)
                .map(|_| {
                    if interleave {
                        records.lookup(ClientId(12), &file("a"), &[]);
                    }
                    records.lookup(ClientId(11), &file("a"), &[]).unwrap().peer
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(choices(7, false), choices(7, false), "same seed, different choices");
        assert_eq!(
            choices(7, false),
            choices(7, true),
            "another client's lookups changed the choices"
        );
        assert_ne!(choices(7, false), choices(8, false), "the seed does not matter");
        let distinct: BTreeSet<_> = choices(7, false).into_iter().collect();
        assert!(distinct.len() >= 8, "50 choices among 10 holders hit only {distinct:?}");
    }

    #[test]
    fn status_pages_stay_within_their_budget_and_miss_nothing() {
        let mut records = records(0, 2);
        for holder in 10..5_010 {
            records.register(ClientId(holder), addr(3), holder).unwrap();
            records
                .announce(ClientId(holder), &file("popular"), info(b"p"))
                .unwrap();
        }
        for n in 0..300 {
            records
                .announce(ClientId(1), &file(&format!("f{n:03}")), info(b"x"))
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
            records.announce(ClientId(1), &file(name), info(b"x")).unwrap();
        }
        let (page, cursor) = records.status_page(StatusCursor::Start, 5);
        assert_eq!(page.len(), 4, "{page:?}");
        assert_eq!(cursor, StatusCursor::AfterFile(file("a")));
        // Between two pages, b goes and d comes.
        records.drop_holding(ClientId(1), &file("b"));
        records.announce(ClientId(2), &file("d"), info(b"x")).unwrap();
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

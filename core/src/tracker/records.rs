//! The tracker's records: who is registered, who holds what, and what each
//! client's downloads under way have learned. No I/O.
//!
//! Everything a client makes the tracker keep lives in that client's
//! record and goes with it: the files it announced, and for each file it
//! looked up, how many lookups it made (for the seeded choice) and the
//! holders it reported during its current download. Each of these is capped
//! per client ([`Quotas`]), so no client, whatever it sends, can make the
//! tracker hold more than its share; past a cap the request is refused with
//! a reason.
//!
//! A file's swarm is its holders plus its *members*: clients downloading it
//! in pieces, which serve the pieces they have to other swarm downloads
//! (never to whole-file ones). A member becomes a holder when it announces
//! the whole file, and stops being one when it withdraws or goes.
//!
//! A report is a claim, not a proof: it only stops the tracker offering that
//! holder *to the reporter*. Only a holder itself (a `Withdraw`, or its
//! session ending) removes its copy from what everyone else is offered, so
//! no client can unlist an honest holder, nor free a name for other content
//! while a holder of the recorded content is registered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha1::{Digest as _, Sha1};

use crate::origin::Origin;
use crate::pieces::{MAX_PIECES, MAX_PIECE_LEN};
use crate::protocol::{ClientId, Digest, FileInfo, FileName, SWARM_PEERS_PER_ANSWER};

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
    #[error("{file} is recorded with size {} and sha1 {} (hash tree root {}); this copy has size {} and sha1 {} (root {}) (files of the same name must have the same content)",
        .recorded.info.size, .recorded.info.sha1, .recorded.root, .announced.info.size, .announced.info.sha1, .announced.root)]
    ContentMismatch {
        /// The file.
        file: FileName,
        /// What the first announce recorded.
        recorded: Box<Content>,
        /// What this announce claims.
        announced: Box<Content>,
    },
    /// The announced size is past what any download can take.
    #[error(
        "{file} is announced with {size} bytes, more than the {} a download can take",
        MAX_FILE_SIZE
    )]
    TooLarge {
        /// The file.
        file: FileName,
        /// The size announced.
        size: u64,
    },
    /// The client announced (or is downloading in a swarm) as many files
    /// as one client may.
    #[error("client {client} already holds {limit} files (or downloads them in a swarm), the most one client may announce to this tracker (withdraw some first)")]
    TooManyFiles {
        /// The client.
        client: ClientId,
        /// [`Quotas::files`].
        limit: usize,
    },
    /// The clients of the client's address hold (or download in a swarm)
    /// as many files as one address may.
    #[error("clients from {host} already hold {limit} files (or download them in a swarm), the most one address may announce to this tracker (withdraw some first)")]
    TooManyFilesFromHost {
        /// The address.
        host: Origin,
        /// [`Quotas::files_per_host`].
        limit: usize,
    },
    /// All clients together hold (or download in a swarm) as many files as
    /// the tracker records.
    #[error("the tracker already records {limit} files over all its clients, the most it holds (try again once some are withdrawn)")]
    Full {
        /// [`Quotas::files_total`].
        limit: usize,
    },
    /// The client is in the middle of downloading as many files as one
    /// client may.
    #[error("client {client} is failing over on {limit} files at once, the most this tracker follows for one client (finish some downloads first)")]
    TooManyDownloads {
        /// The client.
        client: ClientId,
        /// [`Quotas::lookups`].
        limit: usize,
    },
    /// The clients of the client's address are in the middle of
    /// downloading as many files as one address may.
    #[error("clients from {host} are failing over on {limit} files at once, the most this tracker follows for one address (finish some downloads first)")]
    TooManyDownloadsFromHost {
        /// The address.
        host: Origin,
        /// [`Quotas::lookups_per_host`].
        limit: usize,
    },
    /// All clients together are in the middle of downloading as many
    /// files as the tracker follows.
    #[error("the tracker already follows {limit} downloads over all its clients, the most it holds (try again once some end)")]
    LookupsFull {
        /// [`Quotas::lookups_total`].
        limit: usize,
    },
    /// The client reported as many holders as one client may.
    #[error("client {client} has reported {limit} holders in its downloads under way, the most this tracker keeps for one client (start a new download to clear them)")]
    TooManyReports {
        /// The client.
        client: ClientId,
        /// [`Quotas::reports`].
        limit: usize,
    },
    /// The clients of one address reported as many holders as they may.
    #[error("clients from {host} have reported {limit} holders in their downloads under way, the most this tracker keeps for one address (start new downloads to clear them)")]
    TooManyReportsFromHost {
        /// The address.
        host: Origin,
        /// [`Quotas::reports_per_host`].
        limit: usize,
    },
    /// All clients together reported as many holders as the tracker keeps.
    #[error(
        "the tracker already keeps {limit} reports of holders, the most it keeps (try again once some downloads end)"
    )]
    ReportsFull {
        /// [`Quotas::reports_total`].
        limit: usize,
    },
}

impl Refusal {
    /// Whether this is a cap on lookup state (the client's, its
    /// address's or the tracker's): a lookup past one is answered without
    /// keeping state ([`Quotas::lookups`]); only a report is refused.
    fn is_lookup_cap(&self) -> bool {
        matches!(
            self,
            Refusal::TooManyDownloads { .. } | Refusal::TooManyDownloadsFromHost { .. } | Refusal::LookupsFull { .. }
        )
    }
}

/// The largest file the tracker records: the most a swarm download can
/// cut into pieces (16 TiB). A bigger size can only be a lie, which would
/// cost every downloader of the name memory for nothing.
pub const MAX_FILE_SIZE: u64 = MAX_PIECES * MAX_PIECE_LEN;

/// How much one client may make the tracker hold. Each cap bounds the
/// memory a client costs whatever it sends; an honest client stays far
/// below them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quotas {
    /// Files one client may hold (announced and not withdrawn) at once.
    pub files: usize,
    /// Files one client may have lookup state for: the count of its lookups
    /// (which seeds the choice of holder) and its reports. State of files
    /// with no reports pending is dropped when this fills; only files in
    /// the middle of a failover count against it.
    ///
    /// Past this cap, or [`Quotas::lookups_per_host`], or
    /// [`Quotas::lookups_total`], a lookup or swarm request is still
    /// answered, without keeping any state, as the client's first of the
    /// file would be: a cap bounds memory, and an answer kept nowhere
    /// costs none. (Clients of 20 addresses could fill the total, and a
    /// full tracker refused every new download.) What cannot be kept is
    /// what needs state: the count that spreads a client's repeated
    /// lookups over the holders, and the reports of a failover, which are
    /// refused with the cap's name.
    ///
    /// The total is shared fairly, though: once it is taken, a client
    /// whose address holds less than the one that holds the most (by two
    /// or more) gets room, made by dropping all the lookup state of that
    /// address's client that holds the most. So is
    /// [`Quotas::reports_total`].
    pub lookups: usize,
    /// Holders one client may have reported, over all its downloads under
    /// way (a report lasts until the client begins a new download of that
    /// file, or leaves).
    pub reports: usize,
    /// Files the clients of one address ([`Origin`]) may hold (or download
    /// in a swarm) at once, together: ids cost nothing, so without it one
    /// host could register thousands and make the tracker hold `files` for
    /// each.
    pub files_per_host: usize,
    /// Files all clients together may hold (or download in a swarm): what
    /// bounds the memory files cost the tracker however many addresses
    /// send (about a kilobyte a file at most; a file held by many costs
    /// less).
    pub files_total: usize,
    /// Files the clients of one address may have lookup state for,
    /// together ([`Quotas::lookups`] for one client): a lookup keeps
    /// state, and ids cost nothing.
    pub lookups_per_host: usize,
    /// Files all clients together may have lookup state for (about 500
    /// bytes each).
    pub lookups_total: usize,
    /// Holders the clients of one address may have reported, together
    /// ([`Quotas::reports`] for one client): ids cost nothing, so without
    /// it one host could register thousands and have each report as many.
    pub reports_per_host: usize,
    /// Holders all clients together may have reported (about 40 bytes
    /// each).
    pub reports_total: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            files: 100_000,
            lookups: 10_000,
            reports: 10_000,
            files_per_host: 200_000,
            files_total: 4_000_000,
            lookups_per_host: 200_000,
            lookups_total: 4_000_000,
            reports_per_host: 200_000,
            reports_total: 4_000_000,
        }
    }
}

/// What identifies a file's content at the tracker: its size and SHA-1,
/// and the root of its hash tree ([`crate::pieces`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Content {
    /// Size and SHA-1.
    pub info: FileInfo,
    /// The root of the hash tree.
    pub root: Digest,
}

/// A holder picked for a download.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The holder's id.
    pub peer: ClientId,
    /// Where its peer server listens.
    pub addr: SocketAddr,
    /// The file's recorded content.
    pub content: Content,
}

/// The answer to a swarm lookup: what the file is, and peers to trade
/// pieces with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Swarm {
    /// The file's recorded content.
    pub content: Content,
    /// Holders and members, chosen at random (at most
    /// [`SWARM_PEERS_PER_ANSWER`]), holders first.
    pub peers: Vec<SwarmMember>,
}

/// A peer a swarm lookup offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SwarmMember {
    /// The peer.
    pub peer: ClientId,
    /// Where its peer server listens.
    pub addr: SocketAddr,
    /// Whether it holds the whole file.
    pub complete: bool,
}

/// Everything the tracker knows.
#[derive(Debug)]
pub struct Records {
    /// Every random choice derives from this.
    seed: u64,
    /// What one client may make the tracker hold.
    quotas: Quotas,
    /// Registered clients, in id order (status answers page through them).
    pub(super) clients: BTreeMap<ClientId, ClientRecord>,
    /// Every file some registered client holds, with its content and
    /// holders, in name order.
    pub(super) files: BTreeMap<FileName, FileRecord>,
    /// Counts changes to holder lists: each list is stamped with the count
    /// at its last change, so a lookup can tell whether what it worked out
    /// from a list still holds.
    changes: u64,
    /// How many files the clients of each address hold or download in a
    /// swarm, and all of them together.
    held: Held,
    /// How many files the clients of each address have lookup state for
    /// (`ClientRecord::wants`), and all of them together.
    wanted: Held,
    /// How many holders the clients of each address have reported
    /// (`ClientRecord::reported`), and all of them together.
    reports: Held,
    /// The clients of each address with lookup state, by how much they
    /// have, and those with reports, by how many: where room is made once
    /// the tracker's total is taken ([`Records::make_room`]). Kept in step
    /// by [`Records::listing`].
    wanting: HashMap<Origin, Listed>,
    reporting: HashMap<Origin, Listed>,
}

/// The clients of one address with some state, by how much they hold
/// (then by id): the last holds the most.
type Listed = BTreeSet<(usize, ClientId)>;

/// One of the tracker's totals that room is made in when it is taken.
#[derive(Clone, Copy, Debug)]
enum Budget {
    /// Lookup state ([`Quotas::lookups_total`]).
    Lookups,
    /// Reports ([`Quotas::reports_total`]).
    Reports,
}

/// Which cap of a [`Held`] count is reached.
enum Full {
    /// The count over all hosts.
    Total,
    /// The count of one host.
    Host,
}

/// How many files the clients of each host hold or download in a swarm
/// (or have lookup state for), and how many all of them do: the counts
/// the per-host and total quotas cap.
#[derive(Debug, Default)]
struct Held {
    /// By host; a host whose clients hold none is not listed.
    per_host: HashMap<Origin, usize>,
    /// The listed hosts by how many they hold: the last holds the most.
    ranking: BTreeSet<(usize, Origin)>,
    /// Over all hosts.
    total: usize,
}

impl Held {
    /// Why the clients of `host` may not hold one file more, if they may
    /// not.
    fn refusal(&self, host: Origin, quotas: &Quotas) -> Option<Refusal> {
        let (total, limit) = (quotas.files_total, quotas.files_per_host);
        self.full(host, limit, total).map(|full| match full {
            Full::Total => Refusal::Full { limit: total },
            Full::Host => Refusal::TooManyFilesFromHost { host, limit },
        })
    }

    /// Which cap one more for `host` would pass, if any: `total` over all
    /// hosts, or `per_host`.
    fn full(&self, host: Origin, per_host: usize, total: usize) -> Option<Full> {
        if self.total >= total {
            return Some(Full::Total);
        }
        let full = self.per_host.get(&host).is_some_and(|held| *held >= per_host);
        full.then_some(Full::Host)
    }

    /// Counts one file more for `host`.
    fn take(&mut self, host: Origin) {
        let held = self.per_host.entry(host).or_default();
        self.ranking.remove(&(*held, host));
        *held += 1;
        self.ranking.insert((*held, host));
        self.total += 1;
    }

    /// Takes `count` files off what the clients of `host` hold.
    fn release(&mut self, host: Origin, count: usize) {
        if count == 0 {
            return;
        }
        let held = self.per_host.entry(host).or_default();
        debug_assert!(*held >= count && self.total >= count, "released more than was taken");
        self.ranking.remove(&(*held, host));
        // Saturating: a counting slip must never wrap into "full forever".
        *held = held.saturating_sub(count);
        self.total = self.total.saturating_sub(count);
        match *held {
            0 => _ = self.per_host.remove(&host),
            left => _ = self.ranking.insert((left, host)),
        }
    }

    /// How many the clients of `host` hold.
    fn of(&self, host: Origin) -> usize {
        self.per_host.get(&host).copied().unwrap_or(0)
    }

    /// The host whose clients hold the most (of those that hold as many,
    /// the greatest address), with how many.
    fn most(&self) -> Option<(usize, Origin)> {
        self.ranking.last().copied()
    }

    fn is_empty(&self) -> bool {
        self.per_host.is_empty() && self.ranking.is_empty() && self.total == 0
    }
}

/// A registered client.
#[derive(Debug)]
pub(super) struct ClientRecord {
    /// Where its peer server listens.
    pub(super) addr: SocketAddr,
    /// The address its session comes from (never the one it advertises):
    /// what it holds counts against that address's quota.
    host: Origin,
    /// The session it registered on.
    session: SessionId,
    /// The files it announced.
    pub(super) files: BTreeSet<FileName>,
    /// The files whose swarm it is a member of (downloading in pieces).
    joined: BTreeSet<FileName>,
    /// What its lookups of each file have left behind.
    wants: BTreeMap<FileName, Want>,
    /// How many holders `wants` holds as reported, over all files.
    reported: usize,
}

/// One client's lookups of one file.
#[derive(Debug)]
struct Want {
    /// How many holders it was given for this file: with the seed, it keys
    /// the next choice, so repeated lookups spread over the holders and
    /// lookups by different clients never change each other's outcome.
    lookups: u64,
    /// The version the reports are about: reports about another version
    /// than the one recorded now no longer apply.
    sha1: Digest,
    /// Holders reported during the current download, with the session they
    /// were on: one that comes back on a new session gets a fresh chance.
    reported: BTreeMap<ClientId, SessionId>,
    /// The positions a lookup skips in the file's holder list (the asker's
    /// and those of the reported holders still on their session), sorted,
    /// with the stamp of the list they were worked out from. Kept up to
    /// date by each report while the list stays unchanged, so a failover
    /// through thousands of holders costs each lookup O(log n), not a pass
    /// over every holder reported.
    skipped: Option<(u64, Vec<usize>)>,
}

/// A file some registered client holds, or downloads in a swarm.
#[derive(Debug)]
pub(super) struct FileRecord {
    /// Size, SHA-1 and hash tree root from its first announce; later
    /// announces must match (but see [`FileRecord::first`]).
    pub(super) content: Content,
    /// Who holds it now, ordered so a seeded choice is reproducible.
    pub(super) holders: Holders,
    /// Who downloads it in pieces now (swarm members), in id order.
    members: Holders,
    /// [`Records::changes`] when `holders` last changed.
    stamp: u64,
    /// The client whose announce recorded it, and its session then: once
    /// nobody holds the file, that session may announce a new version
    /// under the name. Not a later session of the same id: ids are free
    /// once their session ends, and anyone may take one.
    first: (ClientId, SessionId),
}

/// The holders of one file: a sorted list, so that a lookup picks the k-th
/// eligible holder in O(log n) instead of copying a list that, for a popular
/// file, holds most of the swarm.
#[derive(Debug, Default)]
pub(super) struct Holders(Vec<ClientId>);

impl Holders {
    /// Adds `client`; returns whether it was not there yet.
    fn insert(&mut self, client: ClientId) -> bool {
        match self.0.binary_search(&client) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, client);
                true
            }
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

    fn position(&self, client: &ClientId) -> Option<usize> {
        self.0.binary_search(client).ok()
    }

    fn iter(&self) -> impl Iterator<Item = &ClientId> {
        self.0.iter()
    }

    /// The sorted, distinct positions of the holders in `skip`.
    fn positions(&self, skip: impl IntoIterator<Item = ClientId>) -> Vec<usize> {
        let mut skipped: Vec<usize> = skip.into_iter().filter_map(|c| self.position(&c)).collect();
        skipped.sort_unstable();
        skipped.dedup();
        skipped
    }

    /// The k-th holder (in id order) whose position is not in `skipped`
    /// (sorted, distinct), in O(log n): before the j-th skipped position
    /// lie `skipped[j] - j` holders not skipped, a count that never falls
    /// as j grows, so a binary search finds how many skipped positions
    /// come before the answer.
    fn nth_eligible(&self, k: usize, skipped: &[usize]) -> ClientId {
        let (mut low, mut high) = (0, skipped.len());
        while low < high {
            let middle = (low + high) / 2;
            if skipped[middle] - middle <= k {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        self.0[k + low]
    }

    /// The holders after `after` (all of them for `None`).
    pub(super) fn after(&self, after: Option<ClientId>) -> &[ClientId] {
        let from = match after.map(|after| self.0.binary_search(&after)) {
            None => 0,
            Some(Ok(at)) => at + 1,
            Some(Err(at)) => at,
        };
        &self.0[from..]
    }
}

impl ClientRecord {
    /// The state of `file`'s lookups, made if need be (and counted in
    /// `wanted`): when the client, its address or the tracker has state for
    /// as many files as it may, the client's state of files with no
    /// reports pending (a lookup count only) is dropped first, but for the
    /// swarms it is a member of (their count varies the peers each request
    /// for more is offered; memberships have caps of their own).
    fn want(
        &mut self,
        client: ClientId,
        file: &FileName,
        sha1: Digest,
        quotas: &Quotas,
        wanted: &mut Held,
        reports: &mut Held,
    ) -> Result<&mut Want, Refusal> {
        if !self.wants.contains_key(file) {
            if self.want_refusal(client, quotas, wanted).is_some() {
                let before = self.wants.len();
                self.wants
                    .retain(|file, want| !want.reported.is_empty() || self.joined.contains(file));
                wanted.release(self.host, before - self.wants.len());
                if let Some(refusal) = self.want_refusal(client, quotas, wanted) {
                    return Err(refusal);
                }
            }
            wanted.take(self.host);
        }
        let want = self.wants.entry(file.clone()).or_insert_with(|| Want {
            lookups: 0,
            sha1,
            reported: BTreeMap::new(),
            skipped: None,
        });
        if want.sha1 != sha1 {
            // The name now holds other content: reports about the old one
            // say nothing about the new.
            self.reported -= want.reported.len();
            reports.release(self.host, want.reported.len());
            want.reported.clear();
            want.skipped = None;
            want.sha1 = sha1;
        }
        Ok(want)
    }

    /// Whether `file` would be one file more for the client: it neither
    /// holds it nor downloads it in its swarm.
    fn lacks(&self, file: &FileName) -> bool {
        !self.files.contains(file) && !self.joined.contains(file)
    }

    /// Why the client may not hold, or join the swarm of, one file more,
    /// if it may not: its own cap, its address's or the tracker's.
    fn file_refusal(&self, client: ClientId, quotas: &Quotas, held: &Held) -> Option<Refusal> {
        if self.files.len() + self.joined.len() >= quotas.files {
            let limit = quotas.files;
            return Some(Refusal::TooManyFiles { client, limit });
        }
        held.refusal(self.host, quotas)
    }

    /// Why the client may not have lookup state for one file more, if it
    /// may not: its own cap, its address's or the tracker's.
    fn want_refusal(&self, client: ClientId, quotas: &Quotas, wanted: &Held) -> Option<Refusal> {
        if self.wants.len() >= quotas.lookups {
            let limit = quotas.lookups;
            return Some(Refusal::TooManyDownloads { client, limit });
        }
        let (host, limit) = (self.host, quotas.lookups_per_host);
        wanted.full(host, limit, quotas.lookups_total).map(|full| match full {
            Full::Total => Refusal::LookupsFull {
                limit: quotas.lookups_total,
            },
            Full::Host => Refusal::TooManyDownloadsFromHost { host, limit },
        })
    }

    /// Forgets the holders reported about `file`: a new download begins.
    fn clear_reports(&mut self, file: &FileName, reports: &mut Held) {
        if let Some(want) = self.wants.get_mut(file) {
            self.reported -= want.reported.len();
            reports.release(self.host, want.reported.len());
            want.reported.clear();
            want.skipped = None;
        }
    }
}

impl Records {
    /// Empty records whose random choices derive from `seed`, with the
    /// default quotas.
    pub fn new(seed: u64) -> Records {
        Records::with_quotas(seed, Quotas::default())
    }

    /// Empty records whose random choices derive from `seed`.
    pub fn with_quotas(seed: u64, quotas: Quotas) -> Records {
        Records {
            seed,
            quotas,
            clients: BTreeMap::new(),
            files: BTreeMap::new(),
            changes: 0,
            held: Held::default(),
            wanted: Held::default(),
            reports: Held::default(),
            wanting: HashMap::new(),
            reporting: HashMap::new(),
        }
    }

    /// Records `client`, reachable at `addr`, as registered on `session`,
    /// which comes from `host`. Registering again on the same session
    /// updates the address.
    pub fn register(
        &mut self,
        client: ClientId,
        addr: SocketAddr,
        session: SessionId,
        host: IpAddr,
    ) -> Result<(), Refusal> {
        match self.clients.get_mut(&client) {
            Some(record) if record.session != session => Err(Refusal::IdTaken(client)),
            Some(record) => {
                record.addr = addr;
                Ok(())
            }
            None => {
                let record = ClientRecord {
                    addr,
                    host: Origin::from(host),
                    session,
                    files: BTreeSet::new(),
                    joined: BTreeSet::new(),
                    wants: BTreeMap::new(),
                    reported: 0,
                };
                self.clients.insert(client, record);
                Ok(())
            }
        }
    }

    /// Records that `client` holds `file` with content `content`; it is no
    /// longer a member of the file's swarm, if it was. Other content under
    /// the name is refused, unless nobody holds the recorded content whole
    /// any more and `client` is the one that recorded it: downloaders of
    /// its swarm keep the name bound to the content they fetch, from
    /// anyone but its owner.
    pub fn announce(&mut self, client: ClientId, file: &FileName, content: Content) -> Result<(), Refusal> {
        if !self.clients.contains_key(&client) {
            return Err(Refusal::NotRegistered);
        }
        if content.info.size > MAX_FILE_SIZE {
            let (file, size) = (file.clone(), content.info.size);
            return Err(Refusal::TooLarge { file, size });
        }
        let session = self.clients[&client].session;
        let other = self.files.get(file).filter(|entry| entry.content != content);
        if let Some(entry) = other {
            if !entry.holders.0.is_empty() || entry.first != (client, session) {
                return Err(Refusal::ContentMismatch {
                    file: file.clone(),
                    recorded: Box::new(entry.content),
                    announced: Box::new(content),
                });
            }
        }
        let new_version = other.is_some();
        let record = &self.clients[&client];
        let (new, host) = (record.lacks(file), record.host);
        if let Some(refusal) = record.file_refusal(client, &self.quotas, &self.held).filter(|_| new) {
            return Err(refusal);
        }
        if new_version {
            // Its owner's, as checked above; only now that nothing can
            // refuse it is the old record forgotten.
            self.free_name(file);
        }
        let record = self.clients.get_mut(&client).expect("registered, as checked above");
        // Counted already unless new, or unless it was a member of the old
        // version's swarm, a membership `free_name` just gave back.
        let counted = record.files.contains(file) || record.joined.contains(file);
        let entry = self.files.entry(file.clone()).or_insert_with(|| FileRecord {
            content,
            holders: Holders::default(),
            members: Holders::default(),
            stamp: 0,
            first: (client, session),
        });
        entry.members.remove(&client);
        if entry.holders.insert(client) {
            self.changes += 1;
            entry.stamp = self.changes;
        }
        record.joined.remove(file);
        record.files.insert(file.clone());
        if !counted {
            self.held.take(host);
        }
        Ok(())
    }

    /// Picks a holder of `file` at random for `client`, never `client`
    /// itself nor a holder it reported during this download; `None` if
    /// nobody is left. Without `failover`, a new download begins: the
    /// client's reports about `file` are forgotten first.
    pub fn lookup(&mut self, client: ClientId, file: &FileName, failover: bool) -> Result<Option<Holder>, Refusal> {
        self.listing(client, |records| records.lookup_listed(client, file, failover))
    }

    /// [`Records::lookup`], but for the lists of clients with state.
    fn lookup_listed(&mut self, client: ClientId, file: &FileName, failover: bool) -> Result<Option<Holder>, Refusal> {
        self.room_for_want(client, file);
        // Borrowed field by field: the asker's record changes while the
        // file's record and other clients' records are read.
        let Records {
            seed,
            quotas,
            clients,
            files,
            wanted,
            reports,
            ..
        } = self;
        let asker = clients.get_mut(&client).ok_or(Refusal::NotRegistered)?;
        if !failover {
            asker.clear_reports(file, reports);
        }
        let Some(record) = files.get(file) else {
            return Ok(None);
        };
        let (content, stamp) = (record.content, record.stamp);
        let want = match asker.want(client, file, content.info.sha1, quotas, wanted, reports) {
            Ok(want) => want,
            Err(refusal) if refusal.is_lookup_cap() => {
                // Answered without state (`Quotas::lookups`). The client
                // has none for the file, so no report about it either:
                // only itself is skipped.
                let skipped = record.holders.positions(std::iter::once(client));
                let peer = pick(*seed, client, file, 0, &record.holders, &skipped);
                return Ok(peer.map(|peer| Holder {
                    peer,
                    addr: clients[&peer].addr,
                    content,
                }));
            }
            Err(refusal) => return Err(refusal),
        };
        if want.skipped.as_ref().is_none_or(|(at, _)| *at != stamp) {
            // The holder list changed since the skipped positions were
            // worked out (or they never were): work them out again. A
            // report names the holder's session: one that went and came
            // back is another chance, not the holder that failed.
            let reported = want.reported.clone();
            let still = still_reported(&reported, clients);
            let positions = record.holders.positions(std::iter::once(client).chain(still));
            let want = want_mut(clients, client, file);
            want.skipped = Some((stamp, positions));
        }
        let want = want_mut(clients, client, file);
        let (_, skipped) = want.skipped.as_ref().expect("worked out above");
        let Some(peer) = pick(*seed, client, file, want.lookups, &record.holders, skipped) else {
            return Ok(None);
        };
        want.lookups += 1;
        let addr = clients[&peer].addr;
        Ok(Some(Holder { peer, addr, content }))
    }

    /// A swarm lookup by `client` for `file`: records `client` as a member
    /// of the file's swarm (unless it holds the file) and picks, at random,
    /// up to [`SWARM_PEERS_PER_ANSWER`] other holders and members, never a
    /// peer it reported during this download. `None` if nobody holds or
    /// downloads the file. With `fresh`, a new download begins: the
    /// client's reports about `file` are forgotten first.
    pub fn swarm(&mut self, client: ClientId, file: &FileName, fresh: bool) -> Result<Option<Swarm>, Refusal> {
        self.listing(client, |records| records.swarm_listed(client, file, fresh))
    }

    /// [`Records::swarm`], but for the lists of clients with state.
    fn swarm_listed(&mut self, client: ClientId, file: &FileName, fresh: bool) -> Result<Option<Swarm>, Refusal> {
        let quotas = self.quotas;
        let asker = self.clients.get_mut(&client).ok_or(Refusal::NotRegistered)?;
        if fresh {
            asker.clear_reports(file, &mut self.reports);
        }
        if !self.files.contains_key(file) {
            return Ok(None);
        }
        let joining = asker.lacks(file);
        if let Some(refusal) = asker.file_refusal(client, &quotas, &self.held).filter(|_| joining) {
            return Err(refusal);
        }
        // After the refusals: a refused request makes no room.
        self.room_for_want(client, file);
        let asker = self.clients.get_mut(&client).expect("checked above");
        let record = self.files.get_mut(file).expect("checked above");
        let content = record.content;
        // Before the membership is recorded: a refused request leaves none.
        let kept = asker.want(
            client,
            file,
            content.info.sha1,
            &quotas,
            &mut self.wanted,
            &mut self.reports,
        );
        let (nth, reported) = match kept {
            Ok(want) => {
                let nth = want.lookups;
                want.lookups += 1;
                (nth, want.reported.clone())
            }
            // Answered without state (`Quotas::lookups`), as the client's
            // first request would be.
            Err(refusal) if refusal.is_lookup_cap() => (0, BTreeMap::new()),
            Err(refusal) => return Err(refusal),
        };
        if joining {
            asker.joined.insert(file.clone());
            self.held.take(asker.host);
            record.members.insert(client);
        }
        let record = &self.files[file];
        let clients = &self.clients;
        let skip: Vec<ClientId> = std::iter::once(client)
            .chain(still_reported(&reported, clients))
            .collect();
        let (held_skip, member_skip) = (
            record.holders.positions(skip.iter().copied()),
            record.members.positions(skip.iter().copied()),
        );
        let held = record.holders.0.len() - held_skip.len();
        let joined = record.members.0.len() - member_skip.len();
        let mut rng = choice_rng(self.seed, client, file, nth);
        let peers = sample(&mut rng, held + joined, SWARM_PEERS_PER_ANSWER)
            .into_iter()
            .map(|k| {
                let (peer, complete) = match k < held {
                    true => (record.holders.nth_eligible(k, &held_skip), true),
                    false => (record.members.nth_eligible(k - held, &member_skip), false),
                };
                let addr = clients[&peer].addr;
                SwarmMember { peer, addr, complete }
            })
            .collect();
        Ok(Some(Swarm { content, peers }))
    }

    /// Records that `peer` failed `client` with version `sha1` of `file`:
    /// `client` is not offered `peer` for it again during this download.
    /// Nobody else's choices change. A report about a version other than
    /// the one recorded, or about a client that does not hold the file, is
    /// ignored. Returns whether it was recorded.
    pub fn report(&mut self, client: ClientId, file: &FileName, peer: ClientId, sha1: Digest) -> Result<bool, Refusal> {
        self.listing(client, |records| records.report_listed(client, file, peer, sha1))
    }

    /// [`Records::report`], but for the lists of clients with state.
    fn report_listed(
        &mut self,
        client: ClientId,
        file: &FileName,
        peer: ClientId,
        sha1: Digest,
    ) -> Result<bool, Refusal> {
        if !self.clients.contains_key(&client) {
            return Err(Refusal::NotRegistered);
        }
        let (holder_session, position, stamp) = match (self.files.get(file), self.clients.get(&peer)) {
            (Some(record), Some(holder)) if record.content.info.sha1 == sha1 && peer != client => {
                match (record.holders.position(&peer), record.members.position(&peer)) {
                    (Some(position), _) => (holder.session, Some(position), record.stamp),
                    (None, Some(_)) => (holder.session, None, record.stamp),
                    (None, None) => return Ok(false),
                }
            }
            _ => return Ok(false),
        };
        self.room_for_want(client, file);
        self.room_for_report(client, file, peer, sha1);
        let quotas = self.quotas;
        let asker = self.clients.get_mut(&client).expect("checked above");
        // Made first: it drops the reports about a version since replaced.
        asker.want(client, file, sha1, &quotas, &mut self.wanted, &mut self.reports)?;
        let (host, reported) = (asker.host, asker.reported);
        let refusal = self.report_refusal(client, host, reported);
        let want = want_mut(&mut self.clients, client, file);
        // A holder reported before, on an earlier session of its, counts
        // once against the quotas, but its new session is skipped too.
        let earlier = want.reported.insert(peer, holder_session);
        if earlier == Some(holder_session) {
            return Ok(true);
        }
        if let Some(refusal) = refusal.filter(|_| earlier.is_none()) {
            want.reported.remove(&peer);
            return Err(refusal);
        }
        // Keep the skipped positions of the next lookup up to date.
        let holding = want.skipped.as_mut().filter(|(at, _)| *at == stamp).zip(position);
        if let Some(((_, skipped), position)) = holding {
            if let Err(at) = skipped.binary_search(&position) {
                skipped.insert(at, position);
            }
        }
        if earlier.is_none() {
            self.clients.get_mut(&client).expect("checked above").reported += 1;
            self.reports.take(host);
        }
        Ok(true)
    }

    /// Runs `request` for `client`, keeping its places in the lists of
    /// clients with state ([`Records::wanting`], [`Records::reporting`])
    /// in step with what its record holds after it: every change to a
    /// client's state goes through a request of its own, or
    /// [`Records::make_room`] and [`Records::forget`], which keep them
    /// too.
    fn listing<T>(&mut self, client: ClientId, request: impl FnOnce(&mut Records) -> T) -> T {
        let before = self
            .clients
            .get(&client)
            .map(|record| (record.host, record.wants.len(), record.reported));
        let answer = request(self);
        if let Some((host, wants, reported)) = before {
            let after = self.clients.get(&client);
            let (wants_after, reported_after) = after.map_or((0, 0), |record| (record.wants.len(), record.reported));
            relist(&mut self.wanting, host, client, wants, wants_after);
            relist(&mut self.reporting, host, client, reported, reported_after);
        }
        answer
    }

    /// Makes room in the tracker's total of lookup state for `client`'s
    /// state of `file`, if the total is taken and the client would keep
    /// some: it has none for the file, the file is known, and neither the
    /// client nor its address is at its own cap.
    fn room_for_want(&mut self, client: ClientId, file: &FileName) {
        let Some(record) = self.clients.get(&client) else {
            return;
        };
        let (quotas, host) = (&self.quotas, record.host);
        let needed = self.wanted.total >= quotas.lookups_total
            && !record.wants.contains_key(file)
            && self.files.contains_key(file)
            && record.wants.len() < quotas.lookups
            && self.wanted.of(host) < quotas.lookups_per_host;
        if needed {
            self.make_room(host, Budget::Lookups);
        }
    }

    /// Makes room in the tracker's total of reports for `client`'s report
    /// of `peer` for version `sha1` of `file`, if the total is taken and
    /// the report would cost one more: it is new, and neither the client
    /// nor its address is at its own cap.
    fn room_for_report(&mut self, client: ClientId, file: &FileName, peer: ClientId, sha1: Digest) {
        let Some(record) = self.clients.get(&client) else {
            return;
        };
        let (quotas, host) = (&self.quotas, record.host);
        let known = record
            .wants
            .get(file)
            .is_some_and(|want| want.sha1 == sha1 && want.reported.contains_key(&peer));
        let needed = self.reports.total >= quotas.reports_total
            && !known
            && record.reported < quotas.reports
            && self.reports.of(host) < quotas.reports_per_host;
        if needed {
            self.make_room(host, Budget::Reports);
        }
    }

    /// Makes room for one more of `budget` for a client of `host`, the
    /// tracker's total being taken: drops everything the lookups of the
    /// client that holds the most of the address that holds the most left
    /// behind (its counts and its reports), if that address holds more
    /// than `host` would with one more.
    ///
    /// Without it, clients of 20 addresses (one IPv6 /59) that filled a
    /// total kept every other client's download from reporting a bad
    /// holder until they left. With it, filling a total keeps out only
    /// addresses that hold as much. What is dropped is what a lookup
    /// left behind: the victim's repeated lookups pick the same holder
    /// again, and a holder it reported may be offered to it again. Each
    /// piece of state is dropped at most once after it was made, so
    /// however much one call drops, the cost is O(log n) per piece made.
    /// Room is not made for a request refused for another reason first.
    fn make_room(&mut self, host: Origin, budget: Budget) {
        let (counts, listed) = match budget {
            Budget::Lookups => (&self.wanted, &self.wanting),
            Budget::Reports => (&self.reports, &self.reporting),
        };
        let Some((most, heaviest)) = counts.most() else {
            return;
        };
        if heaviest == host || most <= counts.of(host) + 1 {
            return;
        }
        // The client of that address that holds the most: ids cost
        // nothing, so the one that took the most pays, not the one with
        // the smallest id.
        let Some(&(_, victim)) = listed.get(&heaviest).and_then(BTreeSet::last) else {
            return;
        };
        let Some(record) = self.clients.get_mut(&victim) else {
            return;
        };
        let (wants, reported) = (record.wants.len(), record.reported);
        record.wants.clear();
        record.reported = 0;
        self.let_go(heaviest, victim, wants, reported);
    }

    /// Takes `wants` lookup states and `reported` reports, just dropped
    /// from `client`'s record, off the counts and lists of `host`.
    fn let_go(&mut self, host: Origin, client: ClientId, wants: usize, reported: usize) {
        self.wanted.release(host, wants);
        self.reports.release(host, reported);
        relist(&mut self.wanting, host, client, wants, 0);
        relist(&mut self.reporting, host, client, reported, 0);
    }

    /// Why `client`, from `host`, which has `reported` holders reported,
    /// may not report one more, if it may not: its own cap, its address's
    /// or the tracker's.
    fn report_refusal(&self, client: ClientId, host: Origin, reported: usize) -> Option<Refusal> {
        let quotas = &self.quotas;
        if reported >= quotas.reports {
            let limit = quotas.reports;
            return Some(Refusal::TooManyReports { client, limit });
        }
        let full = self.reports.full(host, quotas.reports_per_host, quotas.reports_total);
        full.map(|full| match full {
            Full::Host => Refusal::TooManyReportsFromHost {
                host,
                limit: quotas.reports_per_host,
            },
            Full::Total => Refusal::ReportsFull {
                limit: quotas.reports_total,
            },
        })
    }

    /// Forgets `client`, everything it held and everything its lookups
    /// left behind, if it is still registered on `session`. Returns whether
    /// it was.
    pub fn forget(&mut self, client: ClientId, session: SessionId) -> bool {
        if self.clients.get(&client).is_none_or(|record| record.session != session) {
            return false;
        }
        let record = self.clients.remove(&client).expect("checked above");
        self.held.release(record.host, record.files.len() + record.joined.len());
        self.let_go(record.host, client, record.wants.len(), record.reported);
        for file in record.files.iter().chain(&record.joined) {
            self.unhold(client, file);
        }
        true
    }

    /// Stops offering `client` as a holder (or swarm member) of `file`, at
    /// its own request (it deleted the file, found it bad, or gave up its
    /// swarm download). With `sha1`, only if that is the version recorded:
    /// a late withdrawal never removes a version announced after it.
    /// Returns whether it held the file (a membership does not count).
    pub fn drop_holding(&mut self, client: ClientId, file: &FileName, sha1: Option<Digest>) -> bool {
        let recorded = self.files.get(file).map(|record| record.content.info.sha1);
        if sha1.is_some_and(|sha1| recorded != Some(sha1)) {
            return false;
        }
        if let Some(record) = self.clients.get_mut(&client) {
            let removed = usize::from(record.files.remove(file)) + usize::from(record.joined.remove(file));
            self.held.release(record.host, removed);
        }
        self.unhold(client, file)
    }

    /// Forgets the record of `file`, which nobody holds whole, for its
    /// owner's new version: the clients that joined its swarm are members
    /// no more (their next ask finds the new content). Else any client
    /// could keep a name from its owner by joining the swarm and staying.
    fn free_name(&mut self, file: &FileName) {
        let Some(entry) = self.files.remove(file) else {
            return;
        };
        for member in entry.members.iter() {
            if let Some(record) = self.clients.get_mut(member) {
                if record.joined.remove(file) {
                    self.held.release(record.host, 1);
                }
            }
        }
    }

    /// Removes one holding or membership; a file nobody holds or downloads
    /// any more is forgotten with it, so its name is free for new content.
    /// Returns whether it was held.
    fn unhold(&mut self, client: ClientId, file: &FileName) -> bool {
        let Some(entry) = self.files.get_mut(file) else {
            return false;
        };
        let held = entry.holders.remove(&client);
        if held {
            self.changes += 1;
            entry.stamp = self.changes;
        }
        entry.members.remove(&client);
        if entry.holders.0.is_empty() && entry.members.0.is_empty() {
            self.files.remove(file);
        }
        held
    }

    /// The current swarm members of `file` (downloading it in pieces), in
    /// id order.
    pub fn members(&self, file: &FileName) -> Vec<ClientId> {
        self.files
            .get(file)
            .map(|record| record.members.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The current holders of `file`, in id order.
    pub fn holders(&self, file: &FileName) -> Vec<ClientId> {
        self.files
            .get(file)
            .map(|record| record.holders.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether `client` is registered.
    pub fn is_registered(&self, client: ClientId) -> bool {
        self.clients.contains_key(&client)
    }

    /// Whether the records hold nothing at all: no client, no file, no
    /// state of any kind (what is left once everyone has gone).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
            && self.files.is_empty()
            && self.held.is_empty()
            && self.wanted.is_empty()
            && self.reports.is_empty()
            && self.wanting.is_empty()
            && self.reporting.is_empty()
    }
}

/// Moves `client`, of `host`, in a list of clients with state, from
/// holding `before` to holding `after` (none: off the list).
fn relist(listed: &mut HashMap<Origin, Listed>, host: Origin, client: ClientId, before: usize, after: usize) {
    if before == after {
        return;
    }
    let clients = listed.entry(host).or_default();
    clients.remove(&(before, client));
    if after > 0 {
        clients.insert((after, client));
    }
    if clients.is_empty() {
        listed.remove(&host);
    }
}

/// The holders in `reported` still on the session they were reported on:
/// one that went and came back is another chance, not the holder that
/// failed.
fn still_reported(
    reported: &BTreeMap<ClientId, SessionId>,
    clients: &BTreeMap<ClientId, ClientRecord>,
) -> Vec<ClientId> {
    let still =
        |(peer, session): (&ClientId, &SessionId)| clients.get(peer).is_some_and(|holder| holder.session == *session);
    reported
        .iter()
        .filter(|entry| still(*entry))
        .map(|(peer, _)| *peer)
        .collect()
}

/// The holder the `nth` lookup of `file` by `client` picks among
/// `holders`, but those at the `skipped` positions; `None` if none is left.
fn pick(
    seed: u64,
    client: ClientId,
    file: &FileName,
    nth: u64,
    holders: &Holders,
    skipped: &[usize],
) -> Option<ClientId> {
    let eligible = holders.0.len() - skipped.len();
    if eligible == 0 {
        return None;
    }
    let mut rng = choice_rng(seed, client, file, nth);
    Some(holders.nth_eligible(rng.random_range(0..eligible), skipped))
}

/// The lookup state of `client` for `file`, which must exist.
fn want_mut<'a>(clients: &'a mut BTreeMap<ClientId, ClientRecord>, client: ClientId, file: &FileName) -> &'a mut Want {
    let asker = clients.get_mut(&client).expect("a registered client");
    asker.wants.get_mut(file).expect("a file it looked up")
}

/// `count` distinct numbers below `range`, chosen at random (Floyd's
/// algorithm: `count` draws, whatever `range`), in increasing order.
fn sample(rng: &mut ChaCha8Rng, range: usize, count: usize) -> Vec<usize> {
    let mut chosen = BTreeSet::new();
    for top in range.saturating_sub(count)..range {
        let pick = rng.random_range(0..=top);
        if !chosen.insert(pick) {
            chosen.insert(top);
        }
    }
    chosen.into_iter().collect()
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
pub(super) mod tests {
    use super::*;
    use crate::tracker::status::tests::status;
    use crate::tracker::StatusEntry;

    pub(in crate::tracker) fn file(name: &str) -> FileName {
        name.parse().unwrap()
    }

    fn info(content: &[u8]) -> FileInfo {
        FileInfo {
            size: content.len() as u64,
            sha1: Digest::of(content),
        }
    }

    pub(in crate::tracker) fn content(bytes: &[u8]) -> Content {
        Content {
            info: info(bytes),
            root: crate::pieces::Tree::of(bytes).root(),
        }
    }

    /// The address every test client's session comes from.
    pub(in crate::tracker) fn host() -> IpAddr {
        IpAddr::from([127, 0, 0, 1])
    }

    pub(in crate::tracker) fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Records with clients 1..=n registered, each on its own session.
    pub(in crate::tracker) fn records(seed: u64, n: u64) -> Records {
        records_with(seed, n, Quotas::default())
    }

    fn records_with(seed: u64, n: u64, quotas: Quotas) -> Records {
        let mut records = Records::with_quotas(seed, quotas);
        for id in 1..=n {
            records.register(ClientId(id), addr(id as u16), id, host()).unwrap();
        }
        records
    }

    /// The holder `client` is offered for `file` in a new download.
    fn first(records: &mut Records, client: u64, name: &str) -> Option<ClientId> {
        let found = records.lookup(ClientId(client), &file(name), false).unwrap();
        found.map(|holder| holder.peer)
    }

    /// The holder `client` is offered next in the download under way.
    fn next(records: &mut Records, client: u64, name: &str) -> Option<ClientId> {
        let found = records.lookup(ClientId(client), &file(name), true).unwrap();
        found.map(|holder| holder.peer)
    }

    #[test]
    fn a_lookup_finds_an_announced_holder_but_never_the_asker() {
        let mut records = records(0, 2);
        assert_eq!(records.lookup(ClientId(2), &file("a"), false), Ok(None));
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        let holder = records.lookup(ClientId(2), &file("a"), false).unwrap().unwrap();
        assert_eq!(
            holder,
            Holder {
                peer: ClientId(1),
                addr: addr(1),
                content: content(b"x")
            }
        );
        assert_eq!(first(&mut records, 1, "a"), None);
        assert_eq!(
            records.lookup(ClientId(9), &file("a"), false),
            Err(Refusal::NotRegistered)
        );
    }

    #[test]
    fn announcing_needs_registration_and_matching_content() {
        let mut records = records(0, 2);
        assert_eq!(
            records.announce(ClientId(9), &file("a"), content(b"x")),
            Err(Refusal::NotRegistered)
        );
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        let refused = records.announce(ClientId(2), &file("a"), content(b"y"));
        assert!(matches!(refused, Err(Refusal::ContentMismatch { .. })));
        assert_eq!(records.holders(&file("a")), vec![ClientId(1)]);
    }

    #[test]
    fn an_id_belongs_to_one_live_session() {
        let mut records = records(0, 1);
        assert_eq!(
            records.register(ClientId(1), addr(9), 99, host()),
            Err(Refusal::IdTaken(ClientId(1)))
        );
        records.register(ClientId(1), addr(9), 1, host()).unwrap();
        records.forget(ClientId(1), 99);
        assert!(
            records.is_registered(ClientId(1)),
            "another session's end removed the client"
        );
        records.forget(ClientId(1), 1);
        assert!(!records.is_registered(ClientId(1)));
        records.register(ClientId(1), addr(9), 99, host()).unwrap();
    }

    #[test]
    fn the_kth_eligible_holder_skips_the_asker_and_the_excluded() {
        let mut holders = Holders::default();
        for id in [5, 1, 3, 9, 7, 3] {
            holders.insert(ClientId(id));
        }
        let skipped = holders.positions([ClientId(3), ClientId(9), ClientId(4), ClientId(3)]);
        let count = holders.0.len() - skipped.len();
        assert_eq!(count, 3);
        let picks: Vec<u64> = (0..count).map(|k| holders.nth_eligible(k, &skipped).0).collect();
        assert_eq!(picks, [1, 5, 7]);
        // Every way of skipping some of ten holders: the k-th eligible is
        // the k-th of those not skipped.
        let mut ten = Holders::default();
        for id in 0..10 {
            ten.insert(ClientId(id));
        }
        for mask in 0u32..1024 {
            let skip: Vec<ClientId> = (0..10).filter(|id| mask & (1 << id) != 0).map(ClientId).collect();
            let skipped = ten.positions(skip.iter().copied());
            let expected: Vec<ClientId> = (0..10).map(ClientId).filter(|id| !skip.contains(id)).collect();
            let picked: Vec<ClientId> = (0..expected.len()).map(|k| ten.nth_eligible(k, &skipped)).collect();
            assert_eq!(picked, expected, "skipping {skip:?}");
        }
        assert!(holders.remove(&ClientId(1)) && !holders.remove(&ClientId(1)));
    }

    #[test]
    fn a_file_nobody_holds_is_forgotten_and_its_name_freed() {
        let mut records = records(0, 2);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        records.forget(ClientId(1), 1);
        assert!(status(&records, 100)
            .iter()
            .all(|e| !matches!(e, StatusEntry::File { .. })));
        records.announce(ClientId(2), &file("a"), content(b"new")).unwrap();
    }

    #[test]
    fn a_report_only_hides_the_holder_from_the_reporter() {
        let mut records = records(0, 4);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        assert_eq!(first(&mut records, 3, "a"), Some(ClientId(1)));
        // Client 3 says 1's copy is bad. Maybe it is, maybe 3 lies: only 3
        // stops being sent there.
        assert_eq!(
            records.report(ClientId(3), &file("a"), ClientId(1), info(b"x").sha1),
            Ok(true)
        );
        assert_eq!(next(&mut records, 3, "a"), None);
        assert_eq!(first(&mut records, 4, "a"), Some(ClientId(1)));
        assert_eq!(records.holders(&file("a")), vec![ClientId(1)]);
        // The name stays bound to 1's content while 1 holds it.
        let hijack = records.announce(ClientId(3), &file("a"), content(b"evil"));
        assert!(matches!(hijack, Err(Refusal::ContentMismatch { .. })), "{hijack:?}");
        // A new download by 3 gives 1 a fresh chance.
        assert_eq!(first(&mut records, 3, "a"), Some(ClientId(1)));
    }

    #[test]
    fn failover_goes_through_every_holder_once() {
        let mut records = records(5, 40);
        for holder in 1..=30 {
            records.announce(ClientId(holder), &file("a"), content(b"x")).unwrap();
        }
        let mut tried = BTreeSet::new();
        let mut offered = first(&mut records, 40, "a");
        while let Some(peer) = offered {
            assert!(tried.insert(peer), "{peer} offered twice in one download");
            records.report(ClientId(40), &file("a"), peer, info(b"x").sha1).unwrap();
            // Holders come and go meanwhile.
            if tried.len() == 10 {
                for holder in 31..=35 {
                    records.announce(ClientId(holder), &file("a"), content(b"x")).unwrap();
                }
                let untried = (1..=30).map(ClientId).find(|id| !tried.contains(id)).unwrap();
                records.drop_holding(untried, &file("a"), None);
                tried.insert(untried);
            }
            offered = next(&mut records, 40, "a");
        }
        assert_eq!(tried, (1..=35).map(ClientId).collect());
    }

    #[test]
    fn a_report_about_another_version_changes_nothing() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"v1")).unwrap();
        assert_eq!(first(&mut records, 3, "a"), Some(ClientId(1)));
        // 1 changes the file in place and announces the new version.
        assert!(records.drop_holding(ClientId(1), &file("a"), Some(info(b"v1").sha1)));
        records.announce(ClientId(1), &file("a"), content(b"v2")).unwrap();
        // 3's complaint about v1 arrives late: it is about v1, not v2.
        assert_eq!(
            records.report(ClientId(3), &file("a"), ClientId(1), info(b"v1").sha1),
            Ok(false)
        );
        assert_eq!(next(&mut records, 3, "a"), Some(ClientId(1)));
        assert_eq!(first(&mut records, 2, "a"), Some(ClientId(1)));
        // A late withdrawal of v1 leaves v2 alone.
        assert!(!records.drop_holding(ClientId(1), &file("a"), Some(info(b"v1").sha1)));
        assert_eq!(records.holders(&file("a")), vec![ClientId(1)]);
        // Reports made about v1 do not carry over to v2 either.
        records.announce(ClientId(2), &file("b"), content(b"b1")).unwrap();
        assert_eq!(first(&mut records, 3, "b"), Some(ClientId(2)));
        records
            .report(ClientId(3), &file("b"), ClientId(2), info(b"b1").sha1)
            .unwrap();
        records.drop_holding(ClientId(2), &file("b"), None);
        records.announce(ClientId(2), &file("b"), content(b"b2")).unwrap();
        assert_eq!(next(&mut records, 3, "b"), Some(ClientId(2)));
    }

    #[test]
    fn a_reported_holder_that_comes_back_gets_a_fresh_chance() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        assert_eq!(first(&mut records, 3, "a"), Some(ClientId(1)));
        records
            .report(ClientId(3), &file("a"), ClientId(1), info(b"x").sha1)
            .unwrap();
        records.forget(ClientId(1), 1);
        records.register(ClientId(1), addr(1), 77, host()).unwrap();
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        assert_eq!(next(&mut records, 3, "a"), Some(ClientId(1)));
    }

    #[test]
    fn an_owners_right_to_a_new_version_ends_with_its_session() {
        let mut records = records(0, 2);
        records.announce(ClientId(1), &file("a"), content(b"real")).unwrap();
        assert!(records.swarm(ClientId(2), &file("a"), true).unwrap().is_some());
        // The owner goes while client 2 downloads; anyone may take id 1,
        // from anywhere, and may not replace what client 2 fetches.
        assert!(records.forget(ClientId(1), 1));
        records
            .register(ClientId(1), addr(9), 999, IpAddr::from([10, 9, 9, 9]))
            .unwrap();
        assert!(matches!(
            records.announce(ClientId(1), &file("a"), content(b"poison")),
            Err(Refusal::ContentMismatch { .. })
        ));
        assert_eq!(records.members(&file("a")), [ClientId(2)]);
        // The same content is still welcome from it.
        assert_eq!(records.announce(ClientId(1), &file("a"), content(b"real")), Ok(()));
    }

    #[test]
    fn a_holder_reported_again_after_coming_back_is_not_offered_again() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        let sha1 = info(b"x").sha1;
        assert_eq!(first(&mut records, 3, "a"), Some(ClientId(1)));
        records.report(ClientId(3), &file("a"), ClientId(1), sha1).unwrap();
        // It comes back on a new session: another chance.
        records.forget(ClientId(1), 1);
        records.register(ClientId(1), addr(1), 77, host()).unwrap();
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        assert_eq!(next(&mut records, 3, "a"), Some(ClientId(1)));
        // It fails again: reported on its new session, and counted once.
        assert_eq!(records.report(ClientId(3), &file("a"), ClientId(1), sha1), Ok(true));
        assert_eq!(next(&mut records, 3, "a"), None, "offered again after a second report");
        assert_eq!(records.clients[&ClientId(3)].reported, 1);
    }

    #[test]
    fn reports_about_non_holders_or_oneself_are_ignored() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        let sha1 = info(b"x").sha1;
        assert_eq!(records.report(ClientId(3), &file("a"), ClientId(2), sha1), Ok(false));
        assert_eq!(records.report(ClientId(3), &file("zz"), ClientId(1), sha1), Ok(false));
        assert_eq!(records.report(ClientId(1), &file("a"), ClientId(1), sha1), Ok(false));
        assert_eq!(
            records.report(ClientId(9), &file("a"), ClientId(1), sha1),
            Err(Refusal::NotRegistered)
        );
        assert_eq!(records.clients[&ClientId(3)].reported, 0);
    }

    #[test]
    fn a_withdrawn_holding_is_no_longer_offered() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        records.announce(ClientId(2), &file("a"), content(b"x")).unwrap();
        assert!(records.drop_holding(ClientId(1), &file("a"), None));
        assert!(!records.drop_holding(ClientId(1), &file("a"), None));
        assert_eq!(records.holders(&file("a")), vec![ClientId(2)]);
        assert!(
            records.is_registered(ClientId(1)),
            "dropping a holding unregistered the client"
        );
    }

    #[test]
    fn a_forgotten_client_is_never_chosen() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        records.announce(ClientId(2), &file("a"), content(b"x")).unwrap();
        records.forget(ClientId(1), 1);
        for _ in 0..20 {
            assert_eq!(first(&mut records, 3, "a"), Some(ClientId(2)));
        }
        // The file's content stays recorded: a later copy must still match.
        assert!(records.announce(ClientId(3), &file("a"), content(b"y")).is_err());
    }

    #[test]
    fn choices_are_seeded_spread_and_independent_of_other_clients() {
        let choices = |seed: u64, interleave: bool| {
            let mut records = records(seed, 12);
            for holder in 1..=10 {
                records.announce(ClientId(holder), &file("a"), content(b"x")).unwrap();
            }
            (0..50)
                .map(|_| {
                    if interleave {
                        first(&mut records, 12, "a");
                    }
                    first(&mut records, 11, "a").unwrap()
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
    fn clients_that_come_and_go_leave_nothing_behind() {
        // Register, look up, report, leave: 300,000 times, each a new id, as
        // one connection can do. Everything goes with the client.
        let mut records = records(0, 1);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        for id in 2..300_002 {
            let session = id;
            records.register(ClientId(id), addr(2), session, host()).unwrap();
            let holder = records.lookup(ClientId(id), &file("a"), false).unwrap().unwrap();
            records
                .report(ClientId(id), &file("a"), holder.peer, holder.content.info.sha1)
                .unwrap();
            assert!(records.forget(ClientId(id), session));
        }
        records.forget(ClientId(1), 1);
        assert!(records.is_empty(), "{records:?}");
    }

    #[test]
    fn one_client_cannot_hold_more_than_its_quotas() {
        let quotas = Quotas {
            files: 3,
            lookups: 2,
            reports: 2,
            ..Quotas::default()
        };
        let mut records = records_with(0, 6, quotas);
        for name in ["a", "b", "c"] {
            records.announce(ClientId(1), &file(name), content(b"x")).unwrap();
        }
        let refused = records.announce(ClientId(1), &file("d"), content(b"x")).unwrap_err();
        assert_eq!(
            refused,
            Refusal::TooManyFiles {
                client: ClientId(1),
                limit: 3
            }
        );
        assert!(refused.to_string().contains("3 files"), "{refused}");
        let mut huge = content(b"y");
        huge.info.size = MAX_FILE_SIZE + 1;
        let refused = records.announce(ClientId(2), &file("e"), huge).unwrap_err();
        assert!(matches!(refused, Refusal::TooLarge { .. }), "{refused}");
        assert!(
            records.holders(&file("d")).is_empty(),
            "a refused announce left a record"
        );
        // Announcing a file it holds again is no new file.
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();

        // Lookup state: files with nothing but a count make room.
        for name in ["a", "b", "c"] {
            first(&mut records, 6, name);
        }
        // Reports pending on two files fill the lookup quota ...
        for holder in [2, 3] {
            records.announce(ClientId(holder), &file("a"), content(b"x")).unwrap();
        }
        records.announce(ClientId(2), &file("b"), content(b"x")).unwrap();
        first(&mut records, 6, "a");
        records
            .report(ClientId(6), &file("a"), ClientId(1), info(b"x").sha1)
            .unwrap();
        first(&mut records, 6, "b");
        records
            .report(ClientId(6), &file("b"), ClientId(1), info(b"x").sha1)
            .unwrap();
        // Past the cap, a lookup is answered, but nothing is kept for it:
        // a report, which needs state, is refused.
        assert_eq!(first(&mut records, 6, "c"), Some(ClientId(1)));
        assert!(!records.clients[&ClientId(6)].wants.contains_key(&file("c")));
        let full = records.report(ClientId(6), &file("c"), ClientId(1), info(b"x").sha1);
        assert_eq!(
            full,
            Err(Refusal::TooManyDownloads {
                client: ClientId(6),
                limit: 2
            })
        );
        // ... and the report quota: a third holder reported is refused.
        let refused = records.report(ClientId(6), &file("a"), ClientId(2), info(b"x").sha1);
        assert_eq!(
            refused,
            Err(Refusal::TooManyReports {
                client: ClientId(6),
                limit: 2
            })
        );
        // A new download of `a` clears its reports, and makes room.
        first(&mut records, 6, "a");
        records
            .report(ClientId(6), &file("a"), ClientId(2), info(b"x").sha1)
            .unwrap();
        assert_eq!(records.clients[&ClientId(6)].reported, 2);
    }

    /// The peers `client`'s swarm lookup of `name` offers, with whether each
    /// is complete.
    fn swarm(records: &mut Records, client: u64, name: &str, fresh: bool) -> Option<Vec<(u64, bool)>> {
        let answer = records.swarm(ClientId(client), &file(name), fresh).unwrap()?;
        Some(answer.peers.iter().map(|peer| (peer.peer.0, peer.complete)).collect())
    }

    #[test]
    fn a_swarm_lookup_joins_the_swarm_and_offers_holders_and_members() {
        let mut records = records(0, 5);
        assert_eq!(swarm(&mut records, 2, "a", true), None, "nobody has a yet");
        assert!(records.members(&file("a")).is_empty(), "joined a file nobody holds");
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        assert_eq!(swarm(&mut records, 2, "a", true), Some(vec![(1, true)]));
        assert_eq!(swarm(&mut records, 3, "a", true), Some(vec![(1, true), (2, false)]));
        assert_eq!(records.members(&file("a")), [ClientId(2), ClientId(3)]);
        // A whole-file download is never offered a member.
        for _ in 0..20 {
            assert_eq!(first(&mut records, 4, "a"), Some(ClientId(1)));
        }
        // Announcing the whole file turns a member into a holder.
        records.announce(ClientId(2), &file("a"), content(b"x")).unwrap();
        assert_eq!(records.members(&file("a")), [ClientId(3)]);
        assert_eq!(records.holders(&file("a")), [ClientId(1), ClientId(2)]);
        let answer = records.swarm(ClientId(4), &file("a"), true).unwrap().unwrap();
        assert_eq!(answer.content, content(b"x"));
        assert_eq!(answer.peers.len(), 3);
    }

    #[test]
    fn a_name_only_swarm_members_keep_is_free_for_its_owners_new_version() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        assert_eq!(swarm(&mut records, 2, "a", true), Some(vec![(1, true)]));
        // While someone holds the recorded content, other content is refused.
        let refused = records.announce(ClientId(3), &file("a"), content(b"y"));
        assert!(matches!(refused, Err(Refusal::ContentMismatch { .. })), "{refused:?}");
        // Its holder withdraws it (it changed its file): client 2, which
        // joined the swarm and stays, does not keep the name from the
        // owner's new version, though it keeps it from anyone else's.
        assert!(records.drop_holding(ClientId(1), &file("a"), None));
        assert!(records.announce(ClientId(3), &file("a"), content(b"y")).is_err());
        assert_eq!(records.members(&file("a")), [ClientId(2)]);
        records.announce(ClientId(1), &file("a"), content(b"y")).unwrap();
        assert!(records.members(&file("a")).is_empty());
        assert_eq!(records.holders(&file("a")), [ClientId(1)]);
        // The old version's downloader, asking again, hears of the new one,
        // and gives back the membership the ask made (its download goes on
        // with the peers it knows).
        let answer = records.swarm(ClientId(2), &file("a"), false).unwrap().unwrap();
        assert_eq!(answer.content, content(b"y"));
        let new_version = Some(content(b"y").info.sha1);
        assert!(!records.drop_holding(ClientId(2), &file("a"), new_version));
        assert!(records.members(&file("a")).is_empty());
    }

    /// The clients `(id, session)` leave, the last ones registered: the
    /// records must hold nothing after.
    fn all_leave(records: &mut Records, clients: &[(u64, SessionId)]) {
        for (id, session) in clients {
            assert!(records.forget(ClientId(*id), *session));
        }
        assert!(records.is_empty(), "{records:?}");
    }

    #[test]
    fn the_clients_of_one_address_share_a_quota_and_give_it_back_as_they_go() {
        let quotas = Quotas {
            files_per_host: 3,
            ..Quotas::default()
        };
        let mut records = Records::with_quotas(0, quotas);
        let (here, there) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for (id, host) in [(1, here), (2, here), (3, there)] {
            records.register(ClientId(id), addr(id as u16), id, host).unwrap();
        }
        records.announce(ClientId(1), &file("a"), content(b"a")).unwrap();
        records.announce(ClientId(1), &file("b"), content(b"b")).unwrap();
        records.swarm(ClientId(2), &file("a"), true).unwrap();
        // Three files from here, by two ids: a fourth is refused, by
        // announce or by joining a swarm, from either id.
        let refused = records.announce(ClientId(2), &file("c"), content(b"c"));
        assert!(
            matches!(refused, Err(Refusal::TooManyFilesFromHost { .. })),
            "{refused:?}"
        );
        let refused = records.swarm(ClientId(1), &file("x"), true);
        assert!(refused.is_ok(), "nobody holds x: nothing to join");
        records.announce(ClientId(3), &file("x"), content(b"x")).unwrap();
        let refused = records.swarm(ClientId(2), &file("x"), true);
        assert!(
            matches!(refused, Err(Refusal::TooManyFilesFromHost { .. })),
            "{refused:?}"
        );
        // Another address has its own; and what a client gives back (a
        // withdrawal, a departure) is free again.
        records.announce(ClientId(3), &file("y"), content(b"y")).unwrap();
        assert!(records.drop_holding(ClientId(1), &file("b"), None));
        records.announce(ClientId(2), &file("c"), content(b"c")).unwrap();
        assert!(records.forget(ClientId(2), 2));
        records.announce(ClientId(1), &file("d"), content(b"d")).unwrap();
        all_leave(&mut records, &[(1, 1), (3, 3)]);
    }

    #[test]
    fn the_clients_of_one_address_share_a_report_quota_and_give_it_back_as_they_go() {
        let quotas = Quotas {
            reports_per_host: 3,
            reports_total: 4,
            ..Quotas::default()
        };
        let mut records = Records::with_quotas(0, quotas);
        let (here, there) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for (id, host) in [(1, here), (2, here), (3, there)] {
            records.register(ClientId(id), addr(id as u16), id, host).unwrap();
        }
        // Five holders of one file, from a third address.
        for id in 5..10 {
            records.register(ClientId(id), addr(id as u16), id, host()).unwrap();
            records.announce(ClientId(id), &file("a"), content(b"x")).unwrap();
        }
        let sha1 = info(b"x").sha1;
        let report = |records: &mut Records, id: u64, holder: u64| {
            records.report(ClientId(id), &file("a"), ClientId(holder), sha1)
        };
        // Two ids from here report three holders: a fourth is refused,
        // from either, though each is far from its own quota.
        for (id, holder) in [(1, 5), (1, 6), (2, 5)] {
            assert_eq!(report(&mut records, id, holder), Ok(true));
        }
        for id in [1, 2] {
            let refused = report(&mut records, id, 7);
            assert!(
                matches!(refused, Err(Refusal::TooManyReportsFromHost { limit: 3, .. })),
                "{refused:?}"
            );
        }
        // Another address has its own. Once the tracker's total is taken,
        // room is made from the address that holds the most (client 1's
        // reports go), while it holds more than this one would with one
        // more.
        assert_eq!(report(&mut records, 3, 5), Ok(true));
        assert_eq!(report(&mut records, 3, 6), Ok(true));
        assert_eq!(records.clients[&ClientId(1)].reported, 0);
        assert_eq!(report(&mut records, 3, 7), Ok(true));
        let refused = report(&mut records, 3, 8);
        assert!(matches!(refused, Err(Refusal::ReportsFull { limit: 4 })), "{refused:?}");
        // A new download clears a client's reports, and a client that goes
        // takes its own: each makes room again.
        first(&mut records, 3, "a");
        assert_eq!(report(&mut records, 3, 8), Ok(true));
        assert!(records.forget(ClientId(2), 2));
        assert_eq!(report(&mut records, 1, 7), Ok(true));
        for id in 1..10 {
            records.forget(ClientId(id), id);
        }
        assert!(records.is_empty(), "{records:?}");
    }

    #[test]
    fn the_clients_of_one_address_share_a_lookup_quota_and_give_it_back_as_they_go() {
        let quotas = Quotas {
            lookups_per_host: 3,
            lookups_total: 5,
            ..Quotas::default()
        };
        let mut records = Records::with_quotas(0, quotas);
        let (here, there, holder) = (
            IpAddr::from([10, 0, 0, 1]),
            IpAddr::from([10, 0, 0, 2]),
            IpAddr::from([10, 0, 0, 3]),
        );
        for (id, host) in [(1, here), (2, here), (3, there), (4, there), (9, holder)] {
            records.register(ClientId(id), addr(id as u16), id, host).unwrap();
        }
        let sha1 = info(b"x").sha1;
        for name in ["a", "b", "c", "d", "e"] {
            records.announce(ClientId(9), &file(name), content(b"x")).unwrap();
        }
        // Lookups with a report pending (a failover under way) on three
        // files from here, by two ids: a fourth is answered, from either,
        // but kept nowhere, so its report is refused.
        for (id, name) in [(1, "a"), (1, "b"), (2, "c")] {
            assert_eq!(first(&mut records, id, name), Some(ClientId(9)));
            assert_eq!(records.report(ClientId(id), &file(name), ClientId(9), sha1), Ok(true));
        }
        for id in [1, 2] {
            assert_eq!(first(&mut records, id, "d"), Some(ClientId(9)));
            let refused = records.report(ClientId(id), &file("d"), ClientId(9), sha1);
            assert!(
                matches!(refused, Err(Refusal::TooManyDownloadsFromHost { .. })),
                "{refused:?}"
            );
        }
        assert_eq!(records.wanted.total, 3, "state was kept past the address's cap");
        // Another address has its own, until the tracker's total is taken.
        assert_eq!(first(&mut records, 3, "d"), Some(ClientId(9)));
        assert_eq!(records.report(ClientId(3), &file("d"), ClientId(9), sha1), Ok(true));
        assert_eq!(first(&mut records, 4, "e"), Some(ClientId(9)));
        // The tracker's total is taken: a lookup is still answered, and a
        // swarm request too (its membership has caps of its own), but
        // nothing is kept for them, so a report, which needs state, is
        // refused.
        assert_eq!(first(&mut records, 3, "a"), Some(ClientId(9)));
        let swarm = records.swarm(ClientId(3), &file("b"), true).unwrap().unwrap();
        assert_eq!(
            swarm.peers.iter().map(|member| member.peer).collect::<Vec<_>>(),
            [ClientId(9)]
        );
        assert_eq!(records.members(&file("b")), [ClientId(3)]);
        assert_eq!(records.wanted.total, 5, "state was kept past the total");
        let refused = records.report(ClientId(3), &file("a"), ClientId(9), sha1);
        assert!(matches!(refused, Err(Refusal::LookupsFull { limit: 5 })), "{refused:?}");
        // A lookup with no report pending is only a count: its own client
        // drops it to make room.
        assert_eq!(first(&mut records, 4, "a"), Some(ClientId(9)));
        let wants = &records.clients[&ClientId(4)].wants;
        assert!(
            wants.contains_key(&file("a")) && !wants.contains_key(&file("e")),
            "its count for e made room"
        );
        assert!(records.forget(ClientId(3), 3));
        // What a departing client held is free again.
        assert!(records.forget(ClientId(1), 1));
        assert_eq!(first(&mut records, 2, "d"), Some(ClientId(9)));
        assert!(records.clients[&ClientId(2)].wants.contains_key(&file("d")));
        all_leave(&mut records, &[(2, 2), (4, 4), (9, 9)]);
    }

    /// Records with the tracker's totals of lookup state and reports at
    /// `lookups` and `reports`, clients 1 and 2 on one address, 3 on
    /// another, and 9 holding files a to h from a third.
    fn records_with_totals(lookups: usize, reports: usize) -> Records {
        let quotas = Quotas {
            lookups_total: lookups,
            reports_total: reports,
            ..Quotas::default()
        };
        let mut records = Records::with_quotas(0, quotas);
        let hosts = [
            (1, [10, 0, 0, 1]),
            (2, [10, 0, 0, 1]),
            (3, [10, 0, 0, 2]),
            (9, [10, 0, 0, 9]),
        ];
        for (id, host) in hosts {
            records
                .register(ClientId(id), addr(id as u16), id, host.into())
                .unwrap();
        }
        for name in ["a", "b", "c", "d", "e", "f", "g", "h"] {
            records.announce(ClientId(9), &file(name), content(b"x")).unwrap();
        }
        records
    }

    #[test]
    fn a_full_tracker_makes_room_for_lookup_state_from_the_address_that_holds_the_most() {
        let mut records = records_with_totals(5, Quotas::default().reports_total);
        let sha1 = info(b"x").sha1;
        // One address holds four: client 1 in a failover on a, client 2
        // with counts for b, c and d.
        for (id, name) in [(1, "a"), (2, "b"), (2, "c"), (2, "d")] {
            assert_eq!(first(&mut records, id, name), Some(ClientId(9)));
        }
        assert_eq!(records.report(ClientId(1), &file("a"), ClientId(9), sha1), Ok(true));
        // Another address fills the total, and then keeps state past it:
        // the client of the first address that holds the most (not the
        // smallest id) drops everything its lookups left.
        assert_eq!(first(&mut records, 3, "e"), Some(ClientId(9)));
        assert_eq!(first(&mut records, 3, "f"), Some(ClientId(9)));
        assert!(records.clients[&ClientId(2)].wants.is_empty());
        assert_eq!(records.clients[&ClientId(1)].reported, 1);
        assert_eq!(records.report(ClientId(3), &file("f"), ClientId(9), sha1), Ok(true));
        assert_eq!(next(&mut records, 3, "f"), None, "its report was kept");
        assert_eq!((records.wanted.total, records.reports.total), (3, 2));
        // The first address fills the total again, and then makes room
        // only from itself (its client's own counts, as before): nobody
        // holds more than it would.
        assert_eq!(first(&mut records, 1, "b"), Some(ClientId(9)));
        assert_eq!(first(&mut records, 1, "c"), Some(ClientId(9)));
        assert_eq!(first(&mut records, 1, "d"), Some(ClientId(9)));
        let wants = &records.clients[&ClientId(1)].wants;
        let kept: Vec<&str> = wants.keys().map(|name| name.as_str()).collect();
        assert_eq!(kept, ["a", "d"], "its report on a stays, its counts made room");
        assert_eq!(records.clients[&ClientId(3)].wants.len(), 2);
        all_leave(&mut records, &[(1, 1), (2, 2), (3, 3), (9, 9)]);
    }

    #[test]
    fn a_full_tracker_makes_room_for_reports_from_the_address_that_holds_the_most() {
        let mut records = records_with_totals(Quotas::default().lookups_total, 3);
        let sha1 = info(b"x").sha1;
        let report = |records: &mut Records, id: u64, name: &str| {
            assert_eq!(first(records, id, name), Some(ClientId(9)));
            records.report(ClientId(id), &file(name), ClientId(9), sha1)
        };
        for (id, name) in [(1, "a"), (2, "b"), (2, "c")] {
            assert_eq!(report(&mut records, id, name), Ok(true));
        }
        // Another address's report makes room: client 2's go, the client
        // of the full address that reported the most.
        assert_eq!(report(&mut records, 3, "d"), Ok(true));
        assert_eq!(records.clients[&ClientId(2)].reported, 0);
        assert_eq!(records.clients[&ClientId(1)].reported, 1);
        assert_eq!(records.reports.total, 2);
        // The full address can fill the total again, but not make room
        // from an address that holds fewer.
        assert_eq!(report(&mut records, 1, "e"), Ok(true));
        let refused = report(&mut records, 1, "f");
        assert!(matches!(refused, Err(Refusal::ReportsFull { limit: 3 })), "{refused:?}");
        assert_eq!(records.clients[&ClientId(3)].reported, 1);
        // Reporting a holder reported already costs nothing: no room made.
        assert_eq!(records.report(ClientId(3), &file("d"), ClientId(9), sha1), Ok(true));
        assert_eq!(records.clients[&ClientId(1)].reported, 2);
        all_leave(&mut records, &[(1, 1), (2, 2), (3, 3), (9, 9)]);
    }

    #[test]
    fn a_full_lookup_quota_keeps_the_state_of_the_swarms_a_client_is_in() {
        let quotas = Quotas {
            lookups: 2,
            ..Quotas::default()
        };
        let mut records = records_with(0, 2, quotas);
        for name in ["a", "b", "c"] {
            records.announce(ClientId(1), &file(name), content(b"x")).unwrap();
        }
        assert!(records.swarm(ClientId(2), &file("a"), true).unwrap().is_some());
        assert_eq!(first(&mut records, 2, "b"), Some(ClientId(1)));
        // At the cap, the count of a whole-file lookup makes room; that of
        // a swarm it is in stays (it varies the peers each refresh gets).
        assert_eq!(first(&mut records, 2, "c"), Some(ClientId(1)));
        let wants = &records.clients[&ClientId(2)].wants;
        assert!(
            wants.contains_key(&file("a")) && !wants.contains_key(&file("b")),
            "{wants:?}"
        );
    }

    #[test]
    fn an_owner_that_joined_its_own_files_swarm_and_then_replaced_it_is_counted_once() {
        let mut records = Records::with_quotas(0, Quotas::default());
        for id in [1, 2] {
            records.register(ClientId(id), addr(id as u16), id, host()).unwrap();
        }
        records.announce(ClientId(1), &file("f"), content(b"old")).unwrap();
        records.swarm(ClientId(2), &file("f"), true).unwrap();
        // The owner withdraws its copy, joins the swarm of what it
        // published (as a download of it would), then publishes anew.
        assert!(records.drop_holding(ClientId(1), &file("f"), None));
        records.swarm(ClientId(1), &file("f"), true).unwrap();
        records.announce(ClientId(1), &file("f"), content(b"new")).unwrap();
        assert_eq!(records.held.total, 1, "{records:?}");
        all_leave(&mut records, &[(1, 1), (2, 2)]);
    }

    #[test]
    fn all_clients_together_share_the_tracker_budget_and_give_it_back_as_they_go() {
        let quotas = Quotas {
            files_total: 3,
            ..Quotas::default()
        };
        let mut records = Records::with_quotas(0, quotas);
        // Three addresses, the last two in one IPv6 /64: all share the budget.
        let hosts = ["10.0.0.1", "2001:db8::1", "2001:db8::2"].map(|text| text.parse::<IpAddr>().unwrap());
        for (id, host) in (1..).zip(hosts) {
            records.register(ClientId(id), addr(id as u16), id, host).unwrap();
        }
        records.announce(ClientId(1), &file("a"), content(b"a")).unwrap();
        records.announce(ClientId(2), &file("b"), content(b"b")).unwrap();
        records.swarm(ClientId(3), &file("a"), true).unwrap();
        let refused = records.announce(ClientId(1), &file("c"), content(b"c"));
        assert!(matches!(refused, Err(Refusal::Full { limit: 3 })), "{refused:?}");
        let refused = records.swarm(ClientId(3), &file("b"), true);
        assert!(matches!(refused, Err(Refusal::Full { .. })), "{refused:?}");
        // A client holding more of what it holds costs nothing new.
        records.announce(ClientId(3), &file("a"), content(b"a")).unwrap();
        assert!(records.forget(ClientId(2), 2));
        records.announce(ClientId(1), &file("c"), content(b"c")).unwrap();
        all_leave(&mut records, &[(1, 1), (3, 3)]);
    }

    #[test]
    fn an_owners_new_version_refused_for_a_quota_leaves_the_old_record() {
        let quotas = Quotas {
            files: 1,
            ..Quotas::default()
        };
        let mut records = records_with(0, 2, quotas);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        records.swarm(ClientId(2), &file("a"), true).unwrap();
        assert!(records.drop_holding(ClientId(1), &file("a"), None));
        records.announce(ClientId(1), &file("b"), content(b"b")).unwrap();
        let refused = records.announce(ClientId(1), &file("a"), content(b"y"));
        assert!(matches!(refused, Err(Refusal::TooManyFiles { .. })), "{refused:?}");
        assert_eq!(records.members(&file("a")), [ClientId(2)], "the refusal freed the name");
    }

    #[test]
    fn a_swarm_answer_is_capped_seeded_and_never_names_the_asker() {
        let answer = |seed: u64| {
            let mut records = records(seed, 60);
            for holder in 1..=30 {
                records.announce(ClientId(holder), &file("a"), content(b"x")).unwrap();
            }
            for member in 31..=50 {
                records.swarm(ClientId(member), &file("a"), true).unwrap();
            }
            swarm(&mut records, 45, "a", true).unwrap()
        };
        let peers = answer(3);
        assert_eq!(peers.len(), SWARM_PEERS_PER_ANSWER);
        let distinct: BTreeSet<u64> = peers.iter().map(|(peer, _)| *peer).collect();
        assert_eq!(distinct.len(), peers.len(), "a peer offered twice: {peers:?}");
        assert!(!distinct.contains(&45), "the asker was offered to itself");
        assert!(peers.iter().all(|(peer, complete)| *complete == (*peer <= 30)));
        assert_eq!(answer(3), peers, "same seed, other peers");
        assert_ne!(answer(4), peers, "the seed does not matter");
    }

    #[test]
    fn a_swarm_report_hides_a_holder_or_member_from_the_reporter_only() {
        let mut records = records(0, 5);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        records.swarm(ClientId(2), &file("a"), true).unwrap();
        swarm(&mut records, 3, "a", true).unwrap();
        let sha1 = info(b"x").sha1;
        assert_eq!(records.report(ClientId(3), &file("a"), ClientId(1), sha1), Ok(true));
        assert_eq!(records.report(ClientId(3), &file("a"), ClientId(2), sha1), Ok(true));
        assert_eq!(swarm(&mut records, 3, "a", false), Some(vec![]));
        assert_eq!(
            swarm(&mut records, 4, "a", true),
            Some(vec![(1, true), (2, false), (3, false)])
        );
        // A new download gives both a fresh chance.
        assert_eq!(
            swarm(&mut records, 3, "a", true),
            Some(vec![(1, true), (2, false), (4, false)])
        );
    }

    #[test]
    fn a_member_that_gives_up_or_goes_leaves_the_swarm() {
        let mut records = records(0, 3);
        records.announce(ClientId(1), &file("a"), content(b"x")).unwrap();
        records.swarm(ClientId(2), &file("a"), true).unwrap();
        records.swarm(ClientId(3), &file("a"), true).unwrap();
        assert!(!records.drop_holding(ClientId(2), &file("a"), Some(info(b"x").sha1)));
        assert_eq!(records.members(&file("a")), [ClientId(3)]);
        // With its last holder gone, the file lives on while it has members:
        // its name stays bound to its content.
        records.forget(ClientId(1), 1);
        assert!(records.announce(ClientId(2), &file("a"), content(b"evil")).is_err());
        records.forget(ClientId(3), 3);
        assert!(records.members(&file("a")).is_empty());
        records.announce(ClientId(2), &file("a"), content(b"new")).unwrap();
    }

    #[test]
    fn sampling_picks_distinct_numbers_in_range() {
        let mut rng = choice_rng(1, ClientId(1), &file("a"), 0);
        for (range, count) in [(0, 5), (3, 5), (10, 10), (1000, 24)] {
            let picked = sample(&mut rng, range, count);
            assert_eq!(picked.len(), count.min(range));
            assert!(picked.windows(2).all(|pair| pair[0] < pair[1]));
            assert!(picked.iter().all(|pick| *pick < range));
        }
    }
}

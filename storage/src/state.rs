//! One group's state machine on sled: auctions, each auction's decision log, listing and
//! deadline indexes, the applied Raft position, and the latest snapshot. Idempotency keys are
//! looked up in memory, in an index built from the decision logs (`idempotency.rs`).
//!
//! All of it lives in one tree (`sm/{group}`). Applying a batch of log entries must land
//! together or not at all after a crash: decisions, auction state, indexes and the
//! applied log id. sled's own atomic batch does that by sealing and writing its IO buffer twice
//! per batch (a `pwrite` and a `sync_file_range` each), which cost more than everything else an
//! apply does. So a commit is journaled instead, with an undo record: first one record of the
//! `apply-journal` tree (one insert, atomic by itself) holds what each key the batch writes
//! held before it (a decision-log key is always new, so its entry is a bare key: the record
//! stays small), then the writes go into `sm/{group}` one by one. The last of them is one that
//! changes its key's value (the smallest such: usually the applied log id), and the record
//! names it with its new value. sled recovers a prefix of its log, so after a crash either the
//! record is missing and none of the writes happened, or that last write is there and all of
//! them did, or `finish_journals` (run when the store opens) finds the record with its last
//! write missing and puts back what the record holds, which sets final values and so can be
//! done any number of times; the Raft log then applies the commit's entries again. A redo
//! record (the batch's new values: how versions before undo records journaled) doubled what
//! sled wrote per decision, and sled's IO threads copying it were a tenth of a node's CPU in
//! the spread benchmark; such a record left by an older version is still redone.
//! `StateWriter` reads through its own pending writes, so later entries of a batch see what
//! earlier ones did, and then through what earlier commits left decoded in memory
//! (`CommittedAuctions`, which readers use too): most batches bid on auctions the previous one
//! wrote, and reading and decoding those again from sled was most of the cost of looking them
//! up. `Committed` holds the idempotency index, which commits extend the same way.
//!
//! An auction's decision log is stored in runs: one record per auction per write of the tree
//! (split at `DECISIONS_PER_RECORD_MAX`), keyed by the first decision's `seq`. A hot auction's
//! entry carries dozens of decisions, and one sled insert each was a quarter of the cluster's
//! CPU per decision on the hot-auction benchmark. Records written before runs hold one
//! decision each and read as runs of one.
//!
//! Bids are not written at every commit. A commit that only decides bids (and sets the stamp,
//! the applied log id or the membership) leaves its decisions and those meta records
//! unwritten, in memory (`Unwritten`), where every reader looks first; the commit that brings
//! the count to `UNWRITTEN_DECISIONS_MAX`, or that changes anything else (a create, a control,
//! a deadline, an auction's record), writes them all with its own writes, journaled as above.
//! So do a snapshot point, a snapshot's copy (`begin_copy`) and a clean shutdown
//! (`write_unwritten`). Nothing is
//! lost in a crash: the state machine's tree was never synced with the Raft log anyway, and
//! what it has not written is applied again from the log, as after any crash, since the
//! applied log id written with the rest stays behind too. In the spread benchmark (about one
//! decision per auction per entry) the runs written at each entry were an insert per
//! decision, and leaving them to the next write cut the cluster's CPU per decision by a
//! quarter or more. Replicas leave different decisions unwritten, so their trees hold the same
//! decisions in different runs: `digest` reads what the records say, not their bytes.
//!
//! A bid does not rewrite its auction's record. The last run an entry writes for an auction
//! also carries what decisions change of the auction, as the entry left it
//! (`AuctionProgress`: status, times, price, winner, counts, version), and the auction is its
//! record with the newer of the record's and that run's progress: in the spread benchmark (a
//! bid or two per auction per entry) the auction record was every other insert of an apply,
//! and dropping it cut the cluster's CPU per decision by 13-34% in alternating runs. Runs
//! carried the whole auction until 2026-12-04 (still read): more than half the bytes of a
//! bid's record, and carrying only the progress cut CPU per decision by another 3-9%. Changes
//! without a decision (create, control, deadlines), or that change more than the progress,
//! still write the record.
//!
//! The tree never decides anything: `gavel_rules::apply` does, this file persists its effects.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use gavel_rules::{
    next_deadline_ms, Auction, BidDecision, BidStatus, Command, Decimal, Effects, StampMs, Status,
};
use serde::{Deserialize, Serialize};

use crate::codec::{decode, decode_as, encode, encode_as, format_of};
use crate::compressed;
use crate::idempotency::{AuctionKeys, IdempotencyIndex, INDEX_ENTRIES_MAX};
use crate::keys;
use crate::snapshot_files::SnapshotFiles;
use crate::StorageError;

/// The most index rows one listing call reads before it answers with what it has and a cursor,
/// so a filter that matches rarely cannot make one request scan everything.
pub const LIST_SCAN_ROWS_MAX: usize = 10_000;

pub(crate) const META_STAMP: &str = "stamp";
/// Where versions before snapshot files kept a group's snapshot: the tree `snap/{group}`, with
/// the snapshot and how far into the log it reaches (u64, big-endian).
const LEGACY_SNAPSHOT_TREE_PREFIX: &[u8] = b"snap/";
const LEGACY_SNAPSHOT_CURRENT: &str = "current";
const LEGACY_SNAPSHOT_POSITION: &str = "position";

/// The node-level tree holding, per group, the undo record of its last commit (see above).
const JOURNAL_TREE: &str = "apply-journal";

/// Keys with a value each, `None` for no key: the writes of a commit, in the order made, or
/// what those keys held before it (an undo record's).
type JournalWrites = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The format byte of an undo record (`UndoRecord`). Records of `FORMAT_VERSION` are redo
/// records: a commit's new values, written by versions before undo records.
const UNDO_RECORD_FORMAT: u8 = 2;

/// A commit's journal record: its last write, whose key it changes (the commit finished if
/// the key holds that value), and what each key it writes held before (a decision-log key,
/// always new, holds nothing: `None`).
#[derive(Serialize, Deserialize)]
struct UndoRecord {
    last: (Vec<u8>, Option<Vec<u8>>),
    before: JournalWrites,
}

/// Most decisions in one record of an auction's decision log. Reading one decision decodes its
/// whole record, and sled rewrites a leaf (up to 16 records) whole and stores one over 128 KiB
/// apart as a file of its own: 16 decisions of a few hundred bytes keep a leaf near 64 KiB.
const DECISIONS_PER_RECORD_MAX: usize = 16;

/// The format byte of a decision-log record holding a run of decisions in `seq` order. Records
/// with `FORMAT_VERSION` hold one decision (written before runs).
const DECISION_RUN_FORMAT: u8 = 2;

/// The format byte of the last decision-log record an entry writes for an auction, in versions
/// before `DECISION_RUN_WITH_PROGRESS_FORMAT`: the whole auction as the entry left it, then the
/// run. Still read.
const DECISION_RUN_WITH_AUCTION_FORMAT: u8 = 3;

/// The format byte of the last decision-log record an entry writes for an auction: the part of
/// the auction decisions change (`AuctionProgress`), as the entry left it, then the run.
const DECISION_RUN_WITH_PROGRESS_FORMAT: u8 = 4;

/// What decisions change in an auction: the last run of each entry carries it, so that bids
/// never rewrite the auction's record; the rest of the auction is fixed when it is created and
/// read from the record. A third of the bytes of the whole auction, which had been more than
/// half of what a bid wrote.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct AuctionProgress {
    status: Status,
    start_at_ms: StampMs,
    end_at_ms: StampMs,
    current_price: Decimal,
    current_winner_id: Option<String>,
    bid_count: u64,
    decision_count: u64,
    version: u64,
    ended_at_ms: Option<StampMs>,
    paused_at_ms: Option<StampMs>,
}

impl AuctionProgress {
    fn of(auction: &Auction) -> AuctionProgress {
        AuctionProgress {
            status: auction.status,
            start_at_ms: auction.start_at_ms,
            end_at_ms: auction.end_at_ms,
            current_price: auction.current_price,
            current_winner_id: auction.current_winner_id.clone(),
            bid_count: auction.bid_count,
            decision_count: auction.decision_count,
            version: auction.version,
            ended_at_ms: auction.ended_at_ms,
            paused_at_ms: auction.paused_at_ms,
        }
    }

    /// The auction `record` with this progress, if it is newer than the record's own (see
    /// `newer`); otherwise the record.
    pub(crate) fn newer_than(self, mut record: Auction) -> Auction {
        if (self.version, self.decision_count) > (record.version, record.decision_count) {
            record.status = self.status;
            record.start_at_ms = self.start_at_ms;
            record.end_at_ms = self.end_at_ms;
            record.current_price = self.current_price;
            record.current_winner_id = self.current_winner_id;
            record.bid_count = self.bid_count;
            record.decision_count = self.decision_count;
            record.version = self.version;
            record.ended_at_ms = self.ended_at_ms;
            record.paused_at_ms = self.paused_at_ms;
        }
        record
    }
}

/// Whether two copies of an auction differ at most in their `AuctionProgress`: then a run's
/// progress is all a change needs to store. Every field is named, so a field added to
/// `Auction` must be placed on one side or the other here.
fn only_progress_differs(a: &Auction, b: &Auction) -> bool {
    let Auction {
        id,
        post_id,
        creator_id,
        status: _,
        start_at_ms: _,
        end_at_ms: _,
        start_price,
        min_increment,
        anti_sniping_seconds,
        current_price: _,
        current_winner_id: _,
        bid_count: _,
        decision_count: _,
        version: _,
        created_at_ms,
        ended_at_ms: _,
        paused_at_ms: _,
        create_key,
        create_request,
    } = a;
    (
        id,
        post_id,
        creator_id,
        start_price,
        min_increment,
        anti_sniping_seconds,
    ) == (
        &b.id,
        &b.post_id,
        &b.creator_id,
        &b.start_price,
        &b.min_increment,
        &b.anti_sniping_seconds,
    ) && (created_at_ms, create_key, create_request)
        == (&b.created_at_ms, &b.create_key, &b.create_request)
}

/// A decision-log record of format `DECISION_RUN_WITH_PROGRESS_FORMAT`, as written (bincode
/// encodes a slice as it does a `Vec`, and a struct as the tuple of its fields).
#[derive(Serialize)]
struct RunWithProgress<'a> {
    progress: &'a AuctionProgress,
    decisions: &'a [BidDecision],
}

/// What a decision-log record carries of its auction, by format.
pub(crate) enum Carried {
    /// Runs of versions before progress (rare, and short-lived: read once, then merged).
    Auction(Box<Auction>),
    Progress(AuctionProgress),
}

impl Carried {
    /// The auction as the newer of its record and this copy.
    pub(crate) fn newer_than(self, record: Option<Auction>) -> Result<Auction, StorageError> {
        match (self, record) {
            (Carried::Auction(auction), None) => Ok(*auction),
            (Carried::Auction(auction), Some(record)) => Ok(newest(record, *auction)),
            (Carried::Progress(progress), Some(record)) => Ok(progress.newer_than(record)),
            (Carried::Progress(_), None) => Err(StorageError::Corrupt(
                "a decision-log record carries the progress of an auction without a record".into(),
            )),
        }
    }
}

/// The decisions of one decision-log record, whichever format it was written in, and what it
/// carries of the auction if its format carries anything.
pub(crate) fn decode_run(
    bytes: &[u8],
) -> Result<(Option<Carried>, Vec<BidDecision>), StorageError> {
    match format_of(bytes)? {
        DECISION_RUN_FORMAT => Ok((None, decode_as(DECISION_RUN_FORMAT, bytes)?)),
        DECISION_RUN_WITH_PROGRESS_FORMAT => {
            let (progress, decisions) = decode_as(DECISION_RUN_WITH_PROGRESS_FORMAT, bytes)?;
            Ok((Some(Carried::Progress(progress)), decisions))
        }
        DECISION_RUN_WITH_AUCTION_FORMAT => {
            let (auction, decisions) = decode_as(DECISION_RUN_WITH_AUCTION_FORMAT, bytes)?;
            Ok((Some(Carried::Auction(Box::new(auction))), decisions))
        }
        _ => Ok((None, vec![decode(bytes)?])),
    }
}

/// The decisions of one decision-log record, whichever format it was written in.
pub(crate) fn decode_decisions(bytes: &[u8]) -> Result<Vec<BidDecision>, StorageError> {
    Ok(decode_run(bytes)?.1)
}

/// What a decision-log record carries of its auction, if its format carries anything; the run
/// behind it is not decoded (bincode reads a prefix and leaves the rest).
pub(crate) fn decode_carried(bytes: &[u8]) -> Result<Option<Carried>, StorageError> {
    match format_of(bytes)? {
        DECISION_RUN_WITH_PROGRESS_FORMAT => {
            let (progress,): (AuctionProgress,) =
                decode_as(DECISION_RUN_WITH_PROGRESS_FORMAT, bytes)?;
            Ok(Some(Carried::Progress(progress)))
        }
        DECISION_RUN_WITH_AUCTION_FORMAT => {
            let (auction,): (Auction,) = decode_as(DECISION_RUN_WITH_AUCTION_FORMAT, bytes)?;
            Ok(Some(Carried::Auction(Box::new(auction))))
        }
        _ => Ok(None),
    }
}

/// The newer of two copies of one auction, if any.
pub(crate) fn newer(a: Option<Auction>, b: Option<Auction>) -> Option<Auction> {
    match (a, b) {
        (Some(a), Some(b)) => Some(newest(a, b)),
        (a, b) => a.or(b),
    }
}

/// The newer of two copies of one auction. Every change bumps `version` or (a rejected bid)
/// `decision_count`, and neither ever goes down, so the pair orders an auction's states.
fn newest(a: Auction, b: Auction) -> Auction {
    if (b.version, b.decision_count) > (a.version, a.decision_count) {
        b
    } else {
        a
    }
}

/// Rebuilds of an auction's idempotency index from at least this many decisions are logged:
/// they hold up the group's apply for a noticeable time (see `index_decisions`).
const INDEX_REBUILD_LOGGED_MIN: u64 = 10_000;

/// Most auctions `CommittedAuctions` keeps per group; past it, it starts afresh.
const COMMITTED_AUCTIONS_MAX: usize = 4_096;

/// What the group's commits left, decoded, for the next batch's writer: the newest stamp and
/// the idempotency index. Only the state machine writes the tree (`commit`, `import`), and both
/// keep this equal to the tree.
struct Committed {
    last_stamp: Option<StampMs>,
    keys: IdempotencyIndex,
}

/// The auctions the group's recent commits wrote, as they left them: what the next batch's
/// writer and every reader look at before the tree. Reading an auction from the tree takes a
/// get, a reverse scan for its newest decision-log record and two decodes (see `newer`); this
/// is one clone. A commit updates it after its writes reach the tree and before its entries
/// count as applied, so a reader that must see an entry (a linearizable read waits for it to be
/// applied) finds it here or, once evicted, in the tree. Readers never add to it: a copy read
/// from the tree may already be older than a commit that raced the read.
type CommittedAuctions = Arc<RwLock<HashMap<String, Auction>>>;

impl Committed {
    fn new() -> Committed {
        Committed {
            last_stamp: None,
            keys: IdempotencyIndex::new(INDEX_ENTRIES_MAX),
        }
    }

    /// Forgets everything, for when the tree changed under it (import, failed commit).
    fn reset(&mut self) {
        self.last_stamp = None;
        self.keys.clear();
    }
}

#[derive(Clone)]
pub struct StateTree {
    tree: sled::Tree,
    snapshots: SnapshotFiles,
    journal: sled::Tree,
    /// This group's key in `journal`.
    journal_key: [u8; 4],
    committed: Arc<Mutex<Committed>>,
    committed_auctions: CommittedAuctions,
    unwritten: Arc<RwLock<Unwritten>>,
    copies: Copies,
    _open: crate::HandleToken,
}

/// Copies of the tree in progress (`StateTree::begin_copy`), by id, each with what the keys
/// written since it began held before. Changed only under the `committed` lock, which every
/// write of the tree holds.
#[derive(Default)]
struct CopiesInProgress {
    next_id: u64,
    logs: HashMap<u64, CopyLog>,
}

type Copies = Arc<Mutex<CopiesInProgress>>;

/// What each key written since a copy began held when it began (`None`: no such key), from
/// the undo values of the commits since; whether an import replaced the whole tree since.
#[derive(Default)]
struct CopyLog {
    replaced: bool,
    held_at_begin: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// A copy of a group's tree for a snapshot, taken while commits go on (`StateTree::begin_copy`).
pub struct TreeCopy {
    state: StateTree,
    id: u64,
}

impl TreeCopy {
    /// The tree as `begin_copy` left it. The tree is read while commits may write it, so the
    /// read may hold some of their writes and not others: every key written since the copy
    /// began then takes the value it held at the beginning, which makes the copy exact. A
    /// commit leaves the tree whole (what it leaves unwritten has its applied log id unwritten
    /// too) and `begin_copy` writes what was unwritten, so the copy is the state the group was
    /// in then, its applied log id included: known before the copy is read.
    pub fn finish(self) -> Result<SnapshotBlob, StorageError> {
        let read: Vec<KeyValue> = self
            .state
            .tree
            .iter()
            .map(|item| {
                // A snapshot's thread paces itself (`pace`) record by record.
                crate::pace::pace();
                item.map(|(k, v)| (k.to_vec(), v.to_vec()))
            })
            .collect::<Result<_, _>>()?;
        let log = {
            // No commit is half done while the log is taken.
            let _committed = self.state.committed();
            self.state
                .copies()
                .logs
                .remove(&self.id)
                .unwrap_or_default()
        };
        if log.replaced {
            return Err(StorageError::Replaced);
        }
        let mut pairs = Vec::with_capacity(read.len());
        let mut held = log.held_at_begin.into_iter().peekable();
        for (key, value) in read {
            while let Some((written, _)) = held.peek() {
                if *written >= key {
                    break;
                }
                // Gone from the tree before the read came to it: as it was.
                if let Some((written, Some(value))) = held.next() {
                    pairs.push((written, value));
                }
            }
            match held.peek() {
                Some((written, _)) if *written == key => {
                    if let Some((_, Some(value))) = held.next() {
                        pairs.push((key, value));
                    }
                }
                _ => pairs.push((key, value)),
            }
        }
        pairs.extend(held.filter_map(|(key, value)| value.map(|value| (key, value))));
        Ok(SnapshotBlob { pairs })
    }
}

impl Drop for TreeCopy {
    fn drop(&mut self) {
        // An abandoned copy stops collecting writes (after `finish`, nothing to do).
        self.state.copies().logs.remove(&self.id);
    }
}

/// Most decisions a group keeps unwritten (see the top of this file): the commit that reaches
/// it writes them. In the spread benchmark (about 43 auctions a group) that is about 24
/// decisions an auction, two runs, where writing each entry's runs took one insert a decision.
/// Bounds the memory (a few hundred KiB a group) and what a restart applies again.
const UNWRITTEN_DECISIONS_MAX: usize = 1_024;

/// What commits applied but left out of the tree: bids' decisions, the meta records (stamp,
/// applied log id, membership), and each auction with unwritten decisions as the newest commit
/// left it. Readers look here first. Only the state machine's commits change it.
#[derive(Clone, Default)]
struct Unwritten {
    /// Per auction, its decisions the tree does not hold, in `seq` order; it holds every
    /// earlier one.
    decisions: HashMap<String, Vec<BidDecision>>,
    /// The auctions of `decisions`, newest.
    auctions: HashMap<String, Auction>,
    /// Meta records by key, newest values.
    meta: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// How many decisions `decisions` holds.
    count: usize,
}

impl Unwritten {
    /// The decision-log records that write `decisions`: per auction, runs of at most
    /// `DECISIONS_PER_RECORD_MAX`, the last carrying the auction's progress.
    fn runs(&self) -> Result<JournalWrites, StorageError> {
        let mut records = Vec::new();
        for (auction_id, decisions) in &self.decisions {
            let Some(auction) = self.auctions.get(auction_id) else {
                return Err(StorageError::Corrupt(format!(
                    "auction {auction_id} has unwritten decisions but no unwritten state"
                )));
            };
            let mut runs = decisions.chunks(DECISIONS_PER_RECORD_MAX).peekable();
            while let Some(run) = runs.next() {
                let record = if runs.peek().is_some() {
                    encode_as(DECISION_RUN_FORMAT, &run)?
                } else {
                    let last = RunWithProgress {
                        progress: &AuctionProgress::of(auction),
                        decisions: run,
                    };
                    encode_as(DECISION_RUN_WITH_PROGRESS_FORMAT, &last)?
                };
                records.push((keys::decision(auction_id, run[0].seq), Some(record)));
            }
        }
        Ok(records)
    }

    /// The auction's unwritten decisions after `after_seq`, and the first unwritten `seq`
    /// (the tree holds every decision before it).
    fn decisions_after(&self, auction_id: &str, after_seq: u64) -> (Vec<BidDecision>, Option<u64>) {
        match self.decisions.get(auction_id) {
            Some(decisions) => (
                decisions
                    .iter()
                    .filter(|decision| decision.seq > after_seq)
                    .cloned()
                    .collect(),
                decisions.first().map(|decision| decision.seq),
            ),
            None => (Vec::new(), None),
        }
    }

    fn clear(&mut self) {
        *self = Unwritten::default();
    }
}

/// Finishes every group's last journaled commit that a crash cut short: an undo record whose
/// last write the tree does not hold is put back, so the state is the one before that commit
/// (its entries are applied again from the Raft log); a redo record of an older version is
/// redone. Runs once, when the store opens and before any group reads its state.
pub(crate) fn finish_journals(db: &sled::Db) -> Result<(), StorageError> {
    let journal = db.open_tree(JOURNAL_TREE)?;
    for item in journal.iter() {
        let (key, bytes) = item?;
        let group = u32::from_be_bytes(key.as_ref().try_into().map_err(|_| {
            StorageError::Corrupt(format!("apply journal key has {} bytes, not 4", key.len()))
        })?);
        let tree = db.open_tree(format!("sm/{group}"))?;
        if format_of(&bytes)? == UNDO_RECORD_FORMAT {
            let undo: UndoRecord = decode_as(UNDO_RECORD_FORMAT, &bytes)?;
            let (last_key, last_value) = &undo.last;
            if tree.get(last_key)?.as_deref() != last_value.as_deref() {
                tracing::info!(
                    group,
                    keys = undo.before.len(),
                    "undid a state machine commit a crash cut short; its entries apply again"
                );
                write_each(&tree, undo.before)?;
            }
        } else {
            let writes: JournalWrites = decode(&bytes)?;
            write_each(&tree, writes)?;
        }
    }
    Ok(())
}

fn write_each(tree: &sled::Tree, writes: JournalWrites) -> Result<(), StorageError> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.insert(key, value)?,
            None => tree.remove(key)?,
        };
    }
    Ok(())
}

/// Fills a page of an auction's decision log from its decisions in `seq` order.
struct BidPageBuilder<'a> {
    filter: &'a BidFilter,
    page: BidPage,
    last_seq: u64,
    scanned: usize,
}

impl BidPageBuilder<'_> {
    fn new(filter: &BidFilter) -> BidPageBuilder<'_> {
        BidPageBuilder {
            filter,
            page: BidPage::default(),
            last_seq: filter.after_seq,
            scanned: 0,
        }
    }

    /// Takes the next decision; false once the page is full (it then names where to go on).
    fn push(&mut self, decision: BidDecision) -> bool {
        if decision.seq <= self.filter.after_seq {
            return true;
        }
        if self.page.bids.len() == self.filter.limit || self.scanned == LIST_SCAN_ROWS_MAX {
            self.page.next_after_seq = Some(self.last_seq);
            return false;
        }
        self.scanned += 1;
        self.last_seq = decision.seq;
        if !self.filter.accepted_only || decision.status == BidStatus::Accepted {
            self.page.bids.push(decision);
        }
        true
    }
}

/// A position in the newest-first auction listing: continue strictly below it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AuctionCursor {
    pub created_at_ms: StampMs,
    pub id: String,
}

impl AuctionCursor {
    pub fn of(auction: &Auction) -> AuctionCursor {
        AuctionCursor {
            created_at_ms: auction.created_at_ms,
            id: auction.id.clone(),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct AuctionFilter {
    pub status: Option<Status>,
    pub creator_id: Option<String>,
    pub limit: usize,
    pub before: Option<AuctionCursor>,
}

#[derive(Clone, Debug, Default)]
pub struct AuctionPage {
    /// Matches, newest first, at most `limit`.
    pub auctions: Vec<Auction>,
    /// Where scanning stopped when it did not reach the end: everything newer was scanned.
    pub frontier: Option<AuctionCursor>,
}

#[derive(Clone, Debug)]
pub struct BidFilter {
    pub accepted_only: bool,
    pub limit: usize,
    /// Continue after this `seq` (0 = from the start).
    pub after_seq: u64,
}

#[derive(Clone, Debug, Default)]
pub struct BidPage {
    pub bids: Vec<BidDecision>,
    /// The `seq` to continue after, when more decisions may follow.
    pub next_after_seq: Option<u64>,
}

/// A whole state machine as key/value pairs, the payload of a Raft snapshot and of a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotBlob {
    /// Keys and values as byte strings, not sequences of `u8`: the same bincode bytes, but
    /// copied whole instead of one byte at a time, which for a hot group's 12 MB took 0.5 s of
    /// a core on each replica at once.
    #[serde(with = "byte_pairs")]
    pub pairs: Vec<KeyValue>,
}

/// A state machine key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

mod byte_pairs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    use super::KeyValue;

    pub fn serialize<S: Serializer>(pairs: &[KeyValue], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            pairs
                .iter()
                .map(|(key, value)| (Bytes::new(key), Bytes::new(value))),
        )
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<KeyValue>, D::Error> {
        let pairs = Vec::<(ByteBuf, ByteBuf)>::deserialize(deserializer)?;
        Ok(pairs
            .into_iter()
            .map(|(key, value)| (key.into_vec(), value.into_vec()))
            .collect())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn the_encoding_is_the_one_of_plain_byte_vectors() {
            // Stored snapshots and backups from before must read the same.
            let pairs = vec![(b"key".to_vec(), vec![0, 1, 255]), (vec![], b"v".to_vec())];
            let blob = super::super::SnapshotBlob {
                pairs: pairs.clone(),
            };
            let plain = bincode::serialize(&pairs).unwrap();
            assert_eq!(bincode::serialize(&blob).unwrap(), plain);
            let back: super::super::SnapshotBlob = bincode::deserialize(&plain).unwrap();
            assert_eq!(back.pairs, pairs);
        }
    }
}

/// The format of a state copy compressed with zstd (`compressed::pack`): format 5's bincode in
/// one frame. A version from before refuses it: it reads only formats 1 to 5.
pub const SNAPSHOT_FORMAT: u8 = 6;
/// The format of a state copy whose decision logs may hold runs that carry their auction's
/// progress (`DECISION_RUN_WITH_PROGRESS_FORMAT`). A version from before must refuse such a
/// copy (it cannot read those runs), and it does: it reads only formats 1 to 4.
const SNAPSHOT_FORMAT_PROGRESS_RUNS: u8 = 5;
/// A copy whose decision logs may hold runs that carry their whole auction
/// (`DECISION_RUN_WITH_AUCTION_FORMAT`). A version before those refuses it: it reads only
/// formats 1 to 3.
const SNAPSHOT_FORMAT_AUCTION_RUNS: u8 = 4;
/// A copy whose decision logs may hold runs (`DECISION_RUN_FORMAT`), none carrying an auction.
const SNAPSHOT_FORMAT_RUNS: u8 = 3;
/// A copy without idempotency records, from before runs. A version that still decides retries
/// by those records refuses it: it reads only format 1.
const SNAPSHOT_FORMAT_BEFORE_RUNS: u8 = 2;

impl SnapshotBlob {
    pub fn to_bytes(&self) -> Result<Vec<u8>, StorageError> {
        compressed::pack(SNAPSHOT_FORMAT, self)
    }

    /// How many bytes the copy's records take unpacked: what packing it costs, whatever it
    /// packs into.
    pub fn plain_len(&self) -> Result<u64, StorageError> {
        bincode::serialized_size(self).map_err(|e| StorageError::Encode(e.to_string()))
    }

    /// Reads a copy of any format; one from a version before the in-memory idempotency index
    /// (format 1) loses its idempotency records, which this version neither reads nor keeps.
    pub fn from_bytes(bytes: &[u8]) -> Result<SnapshotBlob, StorageError> {
        match format_of(bytes)? {
            SNAPSHOT_FORMAT => {
                let plain = compressed::unpack(&bytes[1..])?;
                bincode::deserialize(&plain).map_err(|e| StorageError::Decode(e.to_string()))
            }
            format @ (SNAPSHOT_FORMAT_PROGRESS_RUNS
            | SNAPSHOT_FORMAT_AUCTION_RUNS
            | SNAPSHOT_FORMAT_RUNS
            | SNAPSHOT_FORMAT_BEFORE_RUNS) => decode_as(format, bytes),
            _ => {
                let mut blob: SnapshotBlob = decode(bytes)?;
                blob.pairs
                    .retain(|(key, _)| key.first() != Some(&keys::IDEMPOTENCY));
                Ok(blob)
            }
        }
    }
}

/// Removes the idempotency records an older version wrote (see `keys::IDEMPOTENCY`) from every
/// group's state, once, when the store opens after the journals are replayed. Nothing reads
/// them; removing them keeps replicas' states (and digests) equal whichever version wrote them.
pub(crate) fn drop_idempotency_records(db: &sled::Db) -> Result<(), StorageError> {
    for name in db.tree_names() {
        if !name.starts_with(b"sm/") {
            continue;
        }
        let tree = db.open_tree(&name)?;
        let mut dropped = 0u64;
        for key in tree.scan_prefix([keys::IDEMPOTENCY]).keys() {
            tree.remove(key?)?;
            dropped += 1;
        }
        if dropped > 0 {
            tracing::info!(
                tree = %String::from_utf8_lossy(&name),
                dropped,
                "removed idempotency records of an older version"
            );
        }
    }
    Ok(())
}

impl StateTree {
    pub(crate) fn open(
        db: &sled::Db,
        db_dir: &std::path::Path,
        group: u32,
        open: crate::HandleToken,
    ) -> Result<StateTree, StorageError> {
        Ok(StateTree {
            _open: open,
            tree: db.open_tree(format!("sm/{group}"))?,
            snapshots: SnapshotFiles::new(db_dir, group),
            journal: db.open_tree(JOURNAL_TREE)?,
            journal_key: group.to_be_bytes(),
            committed: Arc::new(Mutex::new(Committed::new())),
            committed_auctions: Arc::default(),
            unwritten: Arc::default(),
            copies: Arc::default(),
        })
    }

    /// The same tree with another idempotency index (a small bound, shared fingerprints), to
    /// test what happens past the bound and on fingerprint collisions.
    #[cfg(test)]
    pub(crate) fn with_index(self, index: IdempotencyIndex) -> StateTree {
        self.committed().keys = index;
        self
    }

    fn committed(&self) -> MutexGuard<'_, Committed> {
        self.committed.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn committed_auctions(&self) -> RwLockReadGuard<'_, HashMap<String, Auction>> {
        self.committed_auctions
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn committed_auctions_mut(&self) -> RwLockWriteGuard<'_, HashMap<String, Auction>> {
        self.committed_auctions
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn unwritten(&self) -> RwLockReadGuard<'_, Unwritten> {
        self.unwritten.read().unwrap_or_else(|e| e.into_inner())
    }

    fn unwritten_mut(&self) -> RwLockWriteGuard<'_, Unwritten> {
        self.unwritten.write().unwrap_or_else(|e| e.into_inner())
    }

    fn copies(&self) -> MutexGuard<'_, CopiesInProgress> {
        self.copies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps, for every copy in progress, what the keys a commit writes held before it, where
    /// no earlier commit since the copy began wrote them. Called with the `committed` lock held.
    fn log_for_copies(&self, held_before: &JournalWrites) {
        let mut copies = self.copies();
        for log in copies.logs.values_mut() {
            for (key, value) in held_before {
                log.held_at_begin
                    .entry(key.clone())
                    .or_insert_with(|| value.clone());
            }
        }
    }

    /// Begins a copy of the state machine for a snapshot, after writing what commits left
    /// unwritten, so that it covers everything applied so far. Call it where no apply runs
    /// (the state machine's task); `TreeCopy::finish` then reads the tree on any thread while
    /// the group goes on applying. Copying a group's whole state (its bid log too: tens of
    /// megabytes) while applies waited stopped the group's bids for up to 2-3 s.
    pub fn begin_copy(&self) -> Result<TreeCopy, StorageError> {
        self.write_unwritten()?;
        let committed = self.committed();
        Ok(self.copy_from_now(&committed))
    }

    /// Starts collecting what commits write over the tree, for a copy of it as it is now.
    /// Taking the `committed` lock is what makes "now" a point between two commits.
    fn copy_from_now(&self, _no_commit_half_done: &MutexGuard<'_, Committed>) -> TreeCopy {
        let mut copies = self.copies();
        let id = copies.next_id;
        copies.next_id += 1;
        copies.logs.insert(id, CopyLog::default());
        TreeCopy {
            state: self.clone(),
            id,
        }
    }

    /// Writes what commits left unwritten (see the top of this file), journaled like any
    /// commit. Only where no apply runs concurrently: the state machine's task, or once it
    /// stopped (a clean shutdown, so that the tree holds everything applied).
    pub fn write_unwritten(&self) -> Result<(), StorageError> {
        self.writer()?.finish(true)
    }

    /// Forgets what commits left in memory, for when the tree changed under it (import, a
    /// failed commit).
    fn forget_committed(&self, committed: &mut Committed) {
        committed.reset();
        self.committed_auctions_mut().clear();
    }

    /// The auction: as a recent commit left it (`Unwritten`, then `CommittedAuctions`), or else
    /// the newer of its record and the progress its newest decision-log record carries (see the
    /// top of this file).
    pub fn auction(&self, id: &str) -> Result<Option<Auction>, StorageError> {
        if let Some(auction) = self.unwritten().auctions.get(id) {
            return Ok(Some(auction.clone()));
        }
        if let Some(auction) = self.committed_auctions().get(id) {
            return Ok(Some(auction.clone()));
        }
        let record = self.tree.get(keys::auction(id))?;
        let last_run = match self.tree.scan_prefix(keys::decision_prefix(id)).next_back() {
            Some(item) => Some(item?.1),
            None => None,
        };
        auction_as_stored(record.as_deref(), last_run.as_deref())
    }

    /// Decision `seq` of the auction's log.
    pub fn decision(
        &self,
        auction_id: &str,
        seq: u64,
    ) -> Result<Option<BidDecision>, StorageError> {
        {
            let unwritten = self.unwritten();
            if let Some(decisions) = unwritten.decisions.get(auction_id) {
                if decisions.first().is_some_and(|first| first.seq <= seq) {
                    let found = decisions.binary_search_by_key(&seq, |decision| decision.seq);
                    return Ok(found.ok().map(|i| decisions[i].clone()));
                }
            }
        }
        let Some((_, record)) = self.record_holding(auction_id, seq)? else {
            return Ok(None);
        };
        Ok(decode_decisions(&record)?
            .into_iter()
            .find(|decision| decision.seq == seq))
    }

    /// The decision-log record that would hold `seq`: the last one starting at or before it.
    fn record_holding(
        &self,
        auction_id: &str,
        seq: u64,
    ) -> Result<Option<(sled::IVec, sled::IVec)>, StorageError> {
        // Every key between the prefix and the prefix + `seq` starts with the prefix.
        let range = keys::decision_prefix(auction_id)..=keys::decision(auction_id, seq);
        Ok(self.tree.range(range).next_back().transpose()?)
    }

    /// Every (bidder, key) of the auction's decision log, for the idempotency index, on the
    /// apply path of the bid that needs it. Measured at 2-3 µs a decision, mostly sled's
    /// iterator: 0.2 s for 100,000 decisions, 2.4-2.8 s for the most an auction may hold
    /// (`DECISIONS_PER_AUCTION_MAX`).
    fn index_decisions(
        &self,
        auction_id: &str,
        index: &IdempotencyIndex,
    ) -> Result<AuctionKeys, StorageError> {
        let started = std::time::Instant::now();
        let mut keys = AuctionKeys::default();
        let mut decisions = 0u64;
        let (unwritten, first_unwritten) = self.unwritten().decisions_after(auction_id, 0);
        let mut add = |decision: &BidDecision| {
            let fingerprint = index.fingerprint(&decision.bidder_id, &decision.idempotency_key);
            keys.insert(fingerprint, decision.seq);
            decisions += 1;
        };
        for record in self
            .tree
            .scan_prefix(keys::decision_prefix(auction_id))
            .values()
        {
            for decision in decode_decisions(&record?)? {
                // A commit may have written them since they were copied.
                if first_unwritten.is_none_or(|first| decision.seq < first) {
                    add(&decision);
                }
            }
        }
        unwritten.iter().for_each(add);
        if decisions >= INDEX_REBUILD_LOGGED_MIN {
            tracing::info!(
                auction = auction_id,
                decisions,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rebuilt an auction's idempotency index from its decision log"
            );
        }
        Ok(keys)
    }

    /// A page of the auction's decision log in decision order.
    pub fn bids(&self, auction_id: &str, filter: &BidFilter) -> Result<BidPage, StorageError> {
        let prefix = keys::decision_prefix(auction_id);
        let first_wanted = filter.after_seq.saturating_add(1);
        // The record holding the first wanted decision may start before it.
        let start = match self.record_holding(auction_id, first_wanted)? {
            Some((key, _)) => key.to_vec(),
            None => keys::decision(auction_id, first_wanted),
        };
        // Copied first: a commit that writes them meanwhile leaves them in the tree as well,
        // where they are skipped.
        let (unwritten, first_unwritten) = self
            .unwritten()
            .decisions_after(auction_id, filter.after_seq);
        let mut page = BidPageBuilder::new(filter);
        for item in self.tree.range(start..) {
            let (key, record) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            for decision in decode_decisions(&record)? {
                if first_unwritten.is_some_and(|first| decision.seq >= first) {
                    break;
                }
                if !page.push(decision) {
                    return Ok(page.page);
                }
            }
        }
        for decision in unwritten {
            if !page.push(decision) {
                break;
            }
        }
        Ok(page.page)
    }

    /// Auctions of this group, newest first, matching `filter`.
    pub fn list_auctions(&self, filter: &AuctionFilter) -> Result<AuctionPage, StorageError> {
        let prefix = match &filter.creator_id {
            Some(creator) => keys::by_creator_prefix(creator),
            None => vec![keys::BY_CREATED],
        };
        let end = match &filter.before {
            Some(cursor) => {
                let mut key = prefix.clone();
                key.extend_from_slice(&keys::stamp_bytes(cursor.created_at_ms));
                key.extend_from_slice(cursor.id.as_bytes());
                key
            }
            None => prefix_end(&prefix),
        };
        let mut page = AuctionPage::default();
        for (scanned, item) in self.tree.range(prefix.clone()..end).rev().enumerate() {
            let (key, _) = item?;
            let Some(stamp) = keys::stamp_from(&key[prefix.len()..]) else {
                return Err(StorageError::Corrupt("short listing key".into()));
            };
            let id = String::from_utf8_lossy(&key[prefix.len() + 8..]).into_owned();
            if scanned == LIST_SCAN_ROWS_MAX {
                page.frontier = Some(AuctionCursor {
                    created_at_ms: stamp,
                    id,
                });
                return Ok(page);
            }
            let Some(auction) = self.auction(&id)? else {
                return Err(StorageError::Corrupt(format!(
                    "listing names missing auction {id}"
                )));
            };
            if filter.status.is_none_or(|status| status == auction.status) {
                page.auctions.push(auction);
                if page.auctions.len() == filter.limit {
                    page.frontier = Some(AuctionCursor {
                        created_at_ms: stamp,
                        id,
                    });
                    return Ok(page);
                }
            }
        }
        Ok(page)
    }

    /// The earliest pending start/end deadline in this group.
    pub fn next_deadline(&self) -> Result<Option<StampMs>, StorageError> {
        let prefix = [keys::DEADLINE];
        match self.tree.scan_prefix(prefix).next() {
            Some(item) => Ok(keys::stamp_from(&item?.0[1..])),
            None => Ok(None),
        }
    }

    /// Ids of auctions whose deadline is at or before `now_ms`, earliest first, at most `max`.
    pub fn due_deadlines(&self, now_ms: StampMs, max: usize) -> Result<Vec<String>, StorageError> {
        let end = keys::deadline(now_ms.saturating_add(1), "");
        let mut ids = Vec::new();
        for item in self.tree.range(vec![keys::DEADLINE]..end).take(max) {
            let (key, _) = item?;
            ids.push(String::from_utf8_lossy(&key[9..]).into_owned());
        }
        Ok(ids)
    }

    /// A small record the raft layer keeps beside the state (applied log id, membership).
    pub fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let key = keys::meta(name);
        if let Some(value) = self.unwritten().meta.get(&key) {
            return Ok(value.clone());
        }
        Ok(self.tree.get(key)?.map(|b| b.to_vec()))
    }

    /// The stamp of the newest applied entry: stamps given to `apply` never go below it.
    pub fn last_stamp(&self) -> Result<StampMs, StorageError> {
        match self.meta(META_STAMP)? {
            Some(bytes) => decode(&bytes),
            None => Ok(StampMs::MIN),
        }
    }

    pub fn writer(&self) -> Result<StateWriter<'_>, StorageError> {
        let last_stamp = match self.committed().last_stamp {
            Some(stamp) => stamp,
            None => self.last_stamp()?,
        };
        Ok(StateWriter {
            state: self,
            writes: BTreeMap::new(),
            auctions: BTreeMap::new(),
            decisions: BTreeMap::new(),
            new_decisions: BTreeMap::new(),
            last_stamp,
        })
    }

    /// Every key/value pair of the state machine, for a snapshot, after writing what commits
    /// left unwritten. Call it where no apply runs concurrently (openraft's state machine task)
    /// so the copy is consistent.
    pub fn export(&self) -> Result<SnapshotBlob, StorageError> {
        self.begin_copy()?.finish()
    }

    /// Replaces the whole state machine with `blob` in one atomic batch (rare, so sled's batch).
    pub fn import(&self, blob: &SnapshotBlob) -> Result<(), StorageError> {
        // Held throughout, as by a commit.
        let mut committed = self.committed();
        self.forget_committed(&mut committed);
        self.unwritten_mut().clear();
        // The last journaled commit must never be redone over the imported state. Removed first:
        // a crash between the two leaves the old state, complete since that commit was.
        self.journal.remove(self.journal_key)?;
        let mut batch = sled::Batch::default();
        for key in self.tree.iter().keys() {
            batch.remove(key?);
        }
        for (key, value) in &blob.pairs {
            batch.insert(key.as_slice(), value.as_slice());
        }
        self.tree.apply_batch(batch)?;
        // A copy in progress was of the state replaced: it fails rather than keep the old
        // state's values of every key (a whole tree's worth, for a copy rarely wanted then).
        for log in self.copies().logs.values_mut() {
            log.replaced = true;
            log.held_at_begin.clear();
        }
        Ok(())
    }

    /// A digest of the state machine's contents, and the meta record `meta_name` (the raft
    /// layer's applied log id) of the very state it digests: equal digests at equal applied ids
    /// mean equal replicas. Replicas write the same decisions in different runs (what each left
    /// unwritten differs), so it digests what the records say, not their bytes (`digest_of`).
    ///
    /// A point-in-time read that never holds up the applies: between two commits it takes what
    /// commits left unwritten and begins a copy of the tree, as a snapshot does (`TreeCopy`),
    /// then reads the tree while commits go on. Read as it stood instead, a busy group's digest
    /// mixed states of several applied ids, and could differ between two equal replicas.
    pub fn digest_with_meta(
        &self,
        meta_name: &str,
    ) -> Result<(u64, Option<Vec<u8>>), StorageError> {
        self.point_in_time_digest(Some(meta_name))
    }

    /// The digest alone (`digest_with_meta`).
    pub fn digest(&self) -> Result<u64, StorageError> {
        Ok(self.point_in_time_digest(None)?.0)
    }

    fn point_in_time_digest(
        &self,
        meta_name: Option<&str>,
    ) -> Result<(u64, Option<Vec<u8>>), StorageError> {
        let mut replaced_reads = 0;
        loop {
            match self.begin_digest(meta_name)?.finish() {
                // A snapshot installed over the state while it was read: read the new one.
                Err(StorageError::Replaced) if replaced_reads < DIGEST_READS_REPLACED_MAX => {
                    replaced_reads += 1;
                }
                result => return result,
            }
        }
    }

    /// Takes, between two commits, what the digest needs at once: what commits left
    /// unwritten, the meta record, and the beginning of a copy of the tree. Called where no
    /// commit runs meanwhile (the state machine's task), the digest is of exactly the state
    /// the last commit left; it is read when it finishes, on any thread.
    pub fn begin_digest(&self, meta_name: Option<&str>) -> Result<DigestRead, StorageError> {
        let committed = self.committed();
        let unwritten = self.unwritten().clone();
        let meta = match meta_name {
            Some(name) => self.meta(name)?,
            None => None,
        };
        Ok(DigestRead {
            tree: self.copy_from_now(&committed),
            unwritten,
            meta,
        })
    }

    /// Saves `bytes` as the group's snapshot unless the stored one reaches at least as far:
    /// `position` orders snapshots (how far into the log each reaches, the caller's measure).
    /// Returns whether it saved.
    ///
    /// Durable when it returns (the snapshot is a file of its own, synced). Of two saves racing
    /// (a slow build of an older state and an install of a newer one) the older never lands
    /// over the newer.
    pub fn save_snapshot_if_newer(
        &self,
        position: u64,
        bytes: &[u8],
    ) -> Result<bool, StorageError> {
        self.snapshots.save_if_newer(position, bytes)
    }

    pub fn load_snapshot(&self) -> Result<Option<Vec<u8>>, StorageError> {
        self.snapshots.load()
    }

    /// Removes the stored snapshot, durably: for a state found to differ from its peers', whose
    /// snapshot may hold the same difference and must not be sent or adopted.
    pub fn discard_snapshot(&self) -> Result<(), StorageError> {
        self.snapshots.discard()
    }
}

/// Moves each group's snapshot that an older version kept in sled (`snap/{group}`) to its file,
/// then drops the tree. Runs when the store opens; a crash in between leaves the tree, and the
/// next open moves it again (the file is then not newer, and kept).
pub(crate) fn move_snapshots_out_of_sled(
    db: &sled::Db,
    db_dir: &std::path::Path,
) -> Result<(), StorageError> {
    for name in db.tree_names() {
        let Some(group) = name.strip_prefix(LEGACY_SNAPSHOT_TREE_PREFIX) else {
            continue;
        };
        let group: u32 = std::str::from_utf8(group)
            .ok()
            .and_then(|g| g.parse().ok())
            .ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "snapshot tree {} is not named by a group",
                    String::from_utf8_lossy(&name)
                ))
            })?;
        let tree = db.open_tree(&name)?;
        let current = tree.get(LEGACY_SNAPSHOT_CURRENT)?;
        let position = tree.get(LEGACY_SNAPSHOT_POSITION)?;
        if let Some(current) = current {
            // Versions before positions were kept stored none: such a snapshot is older than
            // any other, as it was for them.
            let position = position.map_or(Ok(0), |raw| snapshot_position(&raw))?;
            SnapshotFiles::new(db_dir, group).save_if_newer(position, &current)?;
            tracing::info!(
                group,
                position,
                "moved the group's snapshot out of sled into a file"
            );
        }
        drop(tree);
        db.drop_tree(&name)?;
    }
    Ok(())
}

fn snapshot_position(raw: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = raw.try_into().map_err(|_| {
        StorageError::Corrupt(format!("snapshot position has {} bytes, not 8", raw.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// A digest begun between two commits (`StateTree::begin_digest`): the tree is read when it
/// finishes, while commits may go on.
pub struct DigestRead {
    tree: TreeCopy,
    unwritten: Unwritten,
    meta: Option<Vec<u8>>,
}

impl DigestRead {
    /// The digest of the state as it was when the read began, and the meta record of that
    /// state; `StorageError::Replaced` if a snapshot was installed over the state meanwhile.
    pub fn finish(self) -> Result<(u64, Option<Vec<u8>>), StorageError> {
        let tree = self.tree.finish()?;
        Ok((digest_of(&tree.pairs, &self.unwritten)?, self.meta))
    }
}

/// How many times a digest reads the tree again after a snapshot was installed over it while
/// it read. Installs come seconds apart at the most, so a second read nearly always does.
const DIGEST_READS_REPLACED_MAX: u32 = 3;

/// The digest of a tree's records (`pairs`, in key order) with what commits left unwritten
/// over them: every auction as read, every decision, every meta record as read, every other
/// record as stored. Each is hashed alone and the hashes summed, so the order they are met in
/// does not matter.
fn digest_of(pairs: &[KeyValue], unwritten: &Unwritten) -> Result<u64, StorageError> {
    let mut sum = 0u64;
    let mut add = |key: &[u8], value: &[u8]| sum = sum.wrapping_add(Fnv64::of(key, value));
    for (key, value) in pairs {
        // On a paced thread (a checkpoint's), a record at a time like the read before it.
        crate::pace::pace();
        match key.first().copied() {
            Some(keys::AUCTION) => {
                let id = keys::auction_id(key)
                    .ok_or_else(|| StorageError::Corrupt("short auction key".into()))?;
                let encoded = match unwritten.auctions.get(&id) {
                    Some(auction) => encode(auction)?,
                    None => match auction_as_stored(Some(value), last_decision_record(pairs, &id))?
                    {
                        Some(auction) => encode(&auction)?,
                        None => continue,
                    },
                };
                add(key, &encoded);
            }
            Some(keys::DECISION) => {
                for decision in decode_decisions(value)? {
                    let first_unwritten = unwritten
                        .decisions
                        .get(&decision.auction_id)
                        .and_then(|decisions| decisions.first())
                        .map(|decision| decision.seq);
                    if first_unwritten.is_none_or(|first| decision.seq < first) {
                        let key = keys::decision(&decision.auction_id, decision.seq);
                        add(&key, &encode(&decision)?);
                    }
                }
            }
            Some(keys::META) if unwritten.meta.contains_key(key) => {}
            _ => add(key, value),
        }
    }
    for decision in unwritten.decisions.values().flatten() {
        let key = keys::decision(&decision.auction_id, decision.seq);
        add(&key, &encode(&decision)?);
    }
    for (key, value) in &unwritten.meta {
        if let Some(value) = value {
            add(key, value);
        }
    }
    Ok(sum)
}

/// An auction as the tree holds it: the newer of its record and the progress its decision
/// log's last record carries (see the top of this file).
fn auction_as_stored(
    record: Option<&[u8]>,
    last_run: Option<&[u8]>,
) -> Result<Option<Auction>, StorageError> {
    let record = record.map(decode).transpose()?;
    match last_run.map(decode_carried).transpose()?.flatten() {
        Some(carried) => carried.newer_than(record).map(Some),
        None => Ok(record),
    }
}

/// The value of the auction's last decision-log record in `pairs` (in key order), which
/// carries the auction's progress.
fn last_decision_record<'a>(pairs: &'a [KeyValue], auction_id: &str) -> Option<&'a [u8]> {
    let prefix = keys::decision_prefix(auction_id);
    let end = prefix_end(&prefix);
    let past_last = pairs.partition_point(|(key, _)| key.as_slice() < end.as_slice());
    let (key, value) = pairs.get(past_last.checked_sub(1)?)?;
    key.starts_with(&prefix).then_some(value.as_slice())
}

/// The smallest key greater than every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// FNV-1a, 64-bit: stable across versions and platforms, unlike std's hashers.
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    /// The hash of one record, its key and value each preceded by its length.
    fn of(key: &[u8], value: &[u8]) -> u64 {
        let mut hash = Fnv64::default();
        hash.write(&(key.len() as u64).to_be_bytes());
        hash.write(key);
        hash.write(&(value.len() as u64).to_be_bytes());
        hash.write(value);
        hash.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Applies commands into pending writes; `commit` writes them atomically (journaled).
pub struct StateWriter<'a> {
    state: &'a StateTree,
    /// The last write staged per key (`None`: remove).
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Auctions written by this batch (read-through cache).
    auctions: BTreeMap<String, Auction>,
    /// Decisions written by this batch, by idempotency key bytes.
    decisions: BTreeMap<Vec<u8>, BidDecision>,
    /// This batch's decisions per auction, in order: left unwritten or written as runs.
    new_decisions: BTreeMap<String, Vec<BidDecision>>,
    last_stamp: StampMs,
}

/// What one applied command did, with the stamp it was decided at.
pub struct Applied {
    pub effects: Effects,
    pub stamp: StampMs,
    /// Whether the auction's next start/end deadline moved (so timers must look again).
    pub deadline_moved: bool,
}

impl StateTree {
    /// The writes of a commit: `others` (its records other than meta and decisions) and all
    /// that is unwritten, with its undo record; the last write is one that changes its key
    /// (see the top of this file). `None` if no write changes anything.
    fn journaled_writes(
        &self,
        others: JournalWrites,
    ) -> Result<Option<JournaledCommit>, StorageError> {
        let mut all: BTreeMap<Vec<u8>, Option<Vec<u8>>> = others.into_iter().collect();
        {
            let unwritten = self.unwritten();
            all.extend(unwritten.meta.iter().map(|(k, v)| (k.clone(), v.clone())));
            all.extend(unwritten.runs()?);
        }
        let mut writes: JournalWrites = all.into_iter().collect();
        let mut before = Vec::with_capacity(writes.len());
        // The smallest write that changes its key: the last one, which the record names.
        let mut last: Option<(usize, usize)> = None;
        for (i, (key, value)) in writes.iter().enumerate() {
            // A decision's `seq` is written once (every run starts past what the tree holds of
            // the auction's log), so its key is new and needs no read.
            let held = if key.first() == Some(&keys::DECISION) {
                None
            } else {
                self.tree.get(key)?.map(|value| value.to_vec())
            };
            let size = value.as_ref().map_or(0, Vec::len);
            if held != *value && last.is_none_or(|(_, smallest)| size < smallest) {
                last = Some((i, size));
            }
            before.push((key.clone(), held));
        }
        let Some((last, _)) = last else {
            return Ok(None);
        };
        let last_write = writes.remove(last);
        writes.push(last_write.clone());
        let record = UndoRecord {
            last: last_write,
            before,
        };
        let undo = encode_as(UNDO_RECORD_FORMAT, &record)?;
        Ok(Some(JournaledCommit {
            undo,
            writes,
            held_before: record.before,
        }))
    }
}

/// A commit's journal record, its writes (the last one last) and what their keys held before.
struct JournaledCommit {
    undo: Vec<u8>,
    writes: JournalWrites,
    held_before: JournalWrites,
}

impl StateWriter<'_> {
    /// The group's clock: the stamp of the newest command applied, which never goes back.
    pub fn last_stamp(&self) -> StampMs {
        self.last_stamp
    }

    /// Decides `command` with the rules and stages its effects. The stamp is clamped so it never
    /// goes below the previous entry's: time is monotonic per group, across leader changes too.
    pub fn apply(&mut self, stamp: StampMs, command: &Command) -> Result<Applied, StorageError> {
        let stamp = stamp.max(self.last_stamp);
        self.last_stamp = stamp;
        let auction_id = command.auction_id();
        let current = self.auction(auction_id)?;
        let prior = match command {
            Command::Bid {
                bidder_id,
                idempotency_key,
                ..
            } => self.decision_by_key(auction_id, bidder_id, idempotency_key)?,
            _ => None,
        };
        let effects = gavel_rules::apply(current.as_ref(), prior.as_ref(), command, stamp);
        let deadline_moved = effects.auction_changed
            && current.as_ref().and_then(next_deadline_ms)
                != effects.auction.as_ref().and_then(next_deadline_ms);
        if let Some(decision) = &effects.decision {
            self.stage_decision(decision)?;
        }
        if effects.auction_changed {
            if let Some(auction) = &effects.auction {
                // A decision's run carries the auction's progress (`Unwritten::runs`); anything else
                // a change made goes to the record.
                let write_record = effects.decision.is_none()
                    || !current
                        .as_ref()
                        .is_some_and(|before| only_progress_differs(before, auction));
                self.stage_auction(current.as_ref(), auction, write_record)?;
            }
        }
        Ok(Applied {
            effects,
            stamp,
            deadline_moved,
        })
    }

    pub fn set_meta(&mut self, name: &str, bytes: Vec<u8>) {
        self.stage(keys::meta(name), bytes);
    }

    fn stage(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), Some(value.into()));
    }

    fn stage_removal(&mut self, key: impl Into<Vec<u8>>) {
        self.writes.insert(key.into(), None);
    }

    /// Ends the batch: what only bids changed (their decisions, the stamp, the applied log id)
    /// may stay unwritten, in memory, until `UNWRITTEN_DECISIONS_MAX` decisions wait or a
    /// change of anything else comes; then it is all written, journaled (see the top of this
    /// file).
    pub fn commit(self) -> Result<(), StorageError> {
        self.finish(false)
    }

    fn finish(mut self, write_all: bool) -> Result<(), StorageError> {
        let state = self.state;
        let mut committed = state.committed();
        if let Some(others) = self.hand_over(write_all)? {
            let written = state.journaled_writes(others).and_then(|journaled| {
                // A batch that changes nothing writes nothing.
                if let Some(commit) = journaled {
                    state.journal.insert(state.journal_key, commit.undo)?;
                    state.log_for_copies(&commit.held_before);
                    write_each(&state.tree, commit.writes)?;
                }
                Ok(())
            });
            if let Err(e) = written {
                // Half written, perhaps: nothing in memory may stand for what the tree holds,
                // but `Unwritten`, which is newer than anything the tree holds.
                state.forget_committed(&mut committed);
                return Err(e);
            }
            state.unwritten_mut().clear();
        }
        committed.last_stamp = Some(self.last_stamp);
        for decision in self.decisions.values() {
            let fingerprint = committed
                .keys
                .fingerprint(&decision.bidder_id, &decision.idempotency_key);
            committed
                .keys
                .record(&decision.auction_id, fingerprint, decision.seq);
        }
        Ok(())
    }

    /// Hands the batch's decisions, meta records and auctions to `Unwritten` and
    /// `CommittedAuctions`, where readers see them from here on (its entries are committed in
    /// the Raft log). Returns the batch's other writes if the tree must be written now (with
    /// all that is unwritten), `None` if everything may wait.
    fn hand_over(&mut self, write_all: bool) -> Result<Option<JournalWrites>, StorageError> {
        let state = self.state;
        if self.last_stamp != StampMs::MIN {
            let stamp = encode(&self.last_stamp)?;
            self.stage(keys::meta(META_STAMP), stamp);
        }
        let (meta, others): (Vec<_>, Vec<_>) = std::mem::take(&mut self.writes)
            .into_iter()
            .partition(|(key, _)| key.first() == Some(&keys::META));
        let write_now = {
            // Readers see the batch from here on: its entries are committed in the Raft log.
            let mut unwritten = state.unwritten_mut();
            for (auction_id, decisions) in std::mem::take(&mut self.new_decisions) {
                unwritten.count += decisions.len();
                unwritten
                    .decisions
                    .entry(auction_id)
                    .or_default()
                    .extend(decisions);
            }
            for (id, auction) in &self.auctions {
                if unwritten.decisions.contains_key(id) {
                    unwritten.auctions.insert(id.clone(), auction.clone());
                }
            }
            unwritten.meta.extend(meta);
            write_all || !others.is_empty() || unwritten.count >= UNWRITTEN_DECISIONS_MAX
        };
        // Before the tree is written and `Unwritten` emptied, so that a reader never finds an
        // older copy here than the one it found there.
        let mut auctions = state.committed_auctions_mut();
        if auctions.len() + self.auctions.len() > COMMITTED_AUCTIONS_MAX {
            auctions.clear();
        }
        if self.auctions.len() <= COMMITTED_AUCTIONS_MAX {
            auctions.extend(std::mem::take(&mut self.auctions));
        }
        Ok(write_now.then_some(others))
    }

    /// The undo record and writes `commit` would make if it wrote now, for tests that cut a
    /// commit short.
    #[cfg(test)]
    pub(crate) fn journaled_writes(
        mut self,
    ) -> Result<Option<(Vec<u8>, JournalWrites)>, StorageError> {
        let others = self.hand_over(true)?.unwrap_or_default();
        Ok(self
            .state
            .journaled_writes(others)?
            .map(|commit| (commit.undo, commit.writes)))
    }

    fn auction(&self, id: &str) -> Result<Option<Auction>, StorageError> {
        if let Some(auction) = self.auctions.get(id) {
            return Ok(Some(auction.clone()));
        }
        self.state.auction(id)
    }

    /// The decision an earlier bid with this (bidder, key) got: from this batch, or through the
    /// idempotency index (built from the auction's log the first time it is needed).
    fn decision_by_key(
        &self,
        auction_id: &str,
        bidder_id: &str,
        key: &str,
    ) -> Result<Option<BidDecision>, StorageError> {
        let idempotency = keys::idempotency(auction_id, bidder_id, key);
        if let Some(decision) = self.decisions.get(&idempotency) {
            return Ok(Some(decision.clone()));
        }
        let candidates = {
            let mut committed = self.state.committed();
            let index = &mut committed.keys;
            let fingerprint = index.fingerprint(bidder_id, key);
            match index.candidates(auction_id, fingerprint) {
                Some(candidates) => candidates,
                None => {
                    let keys = self.state.index_decisions(auction_id, index)?;
                    index.load(auction_id, keys);
                    index
                        .candidates(auction_id, fingerprint)
                        .unwrap_or_default()
                }
            }
        };
        for seq in candidates.seqs() {
            let Some(decision) = self.state.decision(auction_id, seq)? else {
                return Err(StorageError::Corrupt(format!(
                    "idempotency index of auction {auction_id} names missing decision {seq}"
                )));
            };
            if decision.bidder_id == bidder_id && decision.idempotency_key == key {
                return Ok(Some(decision));
            }
        }
        Ok(None)
    }

    fn stage_decision(&mut self, decision: &BidDecision) -> Result<(), StorageError> {
        let idempotency = keys::idempotency(
            &decision.auction_id,
            &decision.bidder_id,
            &decision.idempotency_key,
        );
        self.new_decisions
            .entry(decision.auction_id.clone())
            .or_default()
            .push(decision.clone());
        self.decisions.insert(idempotency, decision.clone());
        Ok(())
    }

    fn stage_auction(
        &mut self,
        before: Option<&Auction>,
        after: &Auction,
        write_record: bool,
    ) -> Result<(), StorageError> {
        if before.is_none() {
            self.stage(keys::by_created(after.created_at_ms, &after.id), []);
            let by_creator = keys::by_creator(&after.creator_id, after.created_at_ms, &after.id);
            self.stage(by_creator, []);
        }
        // An unchanged deadline is not written again (most bids): `before` is this batch's own
        // view, so no removal of that key is staged either.
        let due_before = before.and_then(next_deadline_ms);
        let due_after = next_deadline_ms(after);
        if due_before != due_after {
            if let Some(due) = due_before {
                self.stage_removal(keys::deadline(due, &after.id));
            }
            if let Some(due) = due_after {
                self.stage(keys::deadline(due, &after.id), []);
            }
        }
        if write_record {
            self.stage(keys::auction(&after.id), encode(after)?);
        }
        self.auctions.insert(after.id.clone(), after.clone());
        Ok(())
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
pub(crate) mod tests;

#[cfg(test)]
#[path = "digest_tests.rs"]
mod digest_tests;

//! One group's Raft log store (openraft storage-v2 `RaftLogStorage`) on the storage crate's
//! `GroupLog` (the node's write-ahead log): entries, vote, committed and purged log ids.
//!
//! An append is reported done only after the log is synced (through the node's `Flusher`);
//! the vote is synced before `save_vote` returns, because a forgotten vote can elect two leaders.
//!
//! The newest entries are also kept decoded in memory (`RecentEntries`): a leader reads each
//! entry back right after appending it, once per follower to replicate it and once to apply it,
//! and reading those from storage and decoding them again was 6% of the consensus threads.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use gavel_storage::{decode, decode_as, encode, encode_as, format_of, GroupLog, Store};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use crate::flusher::Flusher;
use crate::types::{
    upgrade_entry, Entry, LogId, NodeId, RaftStorageError, TypeConfig, TypeConfigV1, Vote,
    ENTRY_FORMAT_VERSION,
};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
pub(crate) const PURGED: &str = "purged";

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    log: GroupLog,
    flusher: Flusher,
    /// The committed index as last saved, for lag metrics (0 = nothing committed).
    committed_index: Arc<AtomicU64>,
    /// The newest appended entries, shared with every reader openraft got from this store.
    recent: Arc<Mutex<RecentEntries>>,
}

/// Most entries `RecentEntries` keeps: enough for replication and apply to find what they read
/// right after an append, and for a follower a few round trips behind.
const RECENT_ENTRIES_MAX: usize = 256;
/// Most commands the kept entries hold in all, so full batches (512 commands) cannot make the
/// cache large: 16 groups keep at most a few MiB each.
const RECENT_COMMANDS_MAX: usize = 8_192;

/// The newest entries of the log, in memory, with consecutive indexes: always exactly what the
/// log holds at those indexes. Appends add to the back; a truncation drops from the back, a
/// purge from the front; the oldest go once past the bounds.
#[derive(Default)]
struct RecentEntries {
    entries: VecDeque<Entry>,
    commands: usize,
}

impl RecentEntries {
    fn push(&mut self, entry: Entry) {
        let follows = self
            .entries
            .back()
            .is_none_or(|last| last.log_id.index + 1 == entry.log_id.index);
        if !follows {
            // openraft truncates before it appends out of order; start afresh all the same.
            self.entries.clear();
            self.commands = 0;
        }
        self.commands += commands_in(&entry);
        self.entries.push_back(entry);
        while self.entries.len() > RECENT_ENTRIES_MAX || self.commands > RECENT_COMMANDS_MAX {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(entry) = self.entries.pop_front() {
            self.commands -= commands_in(&entry);
        }
    }

    fn pop_back(&mut self) {
        if let Some(entry) = self.entries.pop_back() {
            self.commands -= commands_in(&entry);
        }
    }

    /// Drops every entry with an index at or above `index`.
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            self.pop_back();
        }
    }

    /// Drops every entry with an index at or below `index`.
    fn purge_through(&mut self, index: u64) {
        while self
            .entries
            .front()
            .is_some_and(|e| e.log_id.index <= index)
        {
            self.pop_front();
        }
    }

    /// The entries in `[start, end)`, if all of them are kept.
    fn get(&self, start: u64, end: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.log_id.index;
        let last = self.entries.back()?.log_id.index;
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(self.entries.range(from..to).cloned().collect())
    }
}

fn commands_in(entry: &Entry) -> usize {
    match &entry.payload {
        openraft::EntryPayload::Normal(proposal) => proposal.commands.len(),
        _ => 0,
    }
}

/// `range` as `[start, end)` log indexes (`end` saturates: unbounded reads go to storage).
fn index_span(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&i) => i,
        Bound::Excluded(&i) => i.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&i) => i.saturating_add(1),
        Bound::Excluded(&i) => i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl LogStore {
    pub fn new(store: Store, log: GroupLog, flusher: Flusher) -> LogStore {
        LogStore {
            store,
            log,
            flusher,
            committed_index: Arc::new(AtomicU64::new(0)),
            recent: Arc::default(),
        }
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps entries just written to the log (in index order) for readers.
    fn remember(&self, entries: Vec<Entry>) {
        let mut recent = self.recent();
        for entry in entries {
            recent.push(entry);
        }
    }

    /// A live view of the committed index this store has saved.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed_index.clone()
    }

    /// Run before the group's openraft instance starts: if the saved vote is this node's own
    /// committed vote (it led the group when it stopped), keeps the vote but uncommitted, so the
    /// node comes back a follower and the group elects a leader. Returns whether it did.
    ///
    /// Why: openraft 0.9 restores such a node as leader at once, without an election
    /// (`Engine::startup`). That leader's read index is the larger of its term's first entry
    /// and the committed index it saved, and the saved one may be older than writes it
    /// acknowledged just before it stopped (it is not flushed; the entries are). Reads through
    /// it then miss acknowledged writes: the fault suite saw it after kill -9 and after a
    /// restart under clock skew. A newly elected leader appends a blank entry in a new term,
    /// which orders after everything acknowledged, so its read index covers them.
    ///
    /// The promise for the term is kept: an uncommitted vote for this node is below the
    /// committed one only, so the node grants no vote it would have refused.
    pub fn give_up_leadership_on_restart(
        &self,
        node_id: NodeId,
    ) -> Result<bool, gavel_storage::StorageError> {
        let Some(vote) = self.record::<Vote>(VOTE)? else {
            return Ok(false);
        };
        if !vote.is_committed() || vote.leader_id().voted_for() != Some(node_id) {
            return Ok(false);
        }
        let uncommitted = Vote::new(vote.leader_id().term, node_id);
        self.log.set_record(VOTE, encode(&uncommitted)?)?;
        Ok(true)
    }

    fn record<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, gavel_storage::StorageError> {
        self.log
            .record(name)?
            .map(|bytes| decode(&bytes))
            .transpose()
    }
}

/// Decodes a log entry of any format this build reads: today's, or format 1 (one command per
/// entry), which data dirs written before batching still hold.
pub(crate) fn decode_entry(bytes: &[u8]) -> Result<Entry, gavel_storage::StorageError> {
    match format_of(bytes)? {
        1 => decode_as::<openraft::Entry<TypeConfigV1>>(1, bytes).map(upgrade_entry),
        _ => decode_as(ENTRY_FORMAT_VERSION, bytes),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let (start, end) = index_span(&range);
        if let Some(entries) = self.recent().get(start, end) {
            return Ok(entries);
        }
        let rows = self
            .log
            .range(range)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        rows.into_iter()
            .map(|(_, bytes)| {
                decode_entry(&bytes).map_err(|e| StorageIOError::read_logs(&e).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let purged: Option<LogId> = self
            .record(PURGED)
            .map_err(|e| StorageIOError::read_logs(&e))?;
        let last = match self.log.last().map_err(|e| StorageIOError::read_logs(&e))? {
            Some((_, bytes)) => {
                let entry = decode_entry(&bytes).map_err(|e| StorageIOError::read_logs(&e))?;
                Some(entry.log_id)
            }
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), RaftStorageError> {
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        self.log
            .set_record(VOTE, bytes)
            .map_err(|e| StorageIOError::write_vote(&e))?;
        self.store
            .sync_log()
            .await
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, RaftStorageError> {
        Ok(self
            .record(VOTE)
            .map_err(|e| StorageIOError::read_vote(&e))?)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        let bytes = encode(&committed).map_err(|e| StorageIOError::write(&e))?;
        self.log
            .set_record(COMMITTED, bytes)
            .map_err(|e| StorageIOError::write(&e))?;
        let index = committed.map_or(0, |id| id.index);
        self.committed_index.store(index, Ordering::Relaxed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        let committed: Option<Option<LogId>> = self
            .record(COMMITTED)
            .map_err(|e| StorageIOError::read(&e))?;
        let committed = committed.flatten();
        self.committed_index
            .store(committed.map_or(0, |id| id.index), Ordering::Relaxed);
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let rows = entries
            .iter()
            .map(|entry| {
                let bytes = encode_as(ENTRY_FORMAT_VERSION, entry)?;
                Ok((entry.log_id.index, bytes))
            })
            .collect::<Result<Vec<_>, gavel_storage::StorageError>>()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.log
            .append(rows)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.remember(entries);
        self.flusher
            .submit(callback)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.recent().truncate_from(log_id.index);
        self.log
            .truncate_from(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // Record the purge point first: a crash between the two steps leaves entries that are
        // already covered, never a gap that nothing accounts for.
        let bytes = encode(&log_id).map_err(|e| StorageIOError::write_logs(&e))?;
        self.log
            .set_record(PURGED, bytes)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.recent().purge_through(log_id.index);
        // One record in the log, and the entries' places dropped from memory: cheap enough for
        // the consensus thread even when a snapshot purges 18,000 entries.
        self.log
            .purge_through(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// Records that the log is purged through `log_id`: what a purge leaves, for a data dir built
/// from a restored snapshot (the log before it never existed here).
pub(crate) fn record_purged(
    log: &GroupLog,
    log_id: LogId,
) -> Result<(), gavel_storage::StorageError> {
    log.set_record(PURGED, encode(&log_id)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gavel_rules::Command;
    use openraft::{CommittedLeaderId, EntryPayload, Membership};
    use std::collections::BTreeSet;

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(3, 1), index)
    }

    fn deadline(auction: &str) -> Command {
        Command::Deadline {
            auction_id: auction.into(),
        }
    }

    /// Data dirs written before batching hold format-1 entries (one command each), written as
    /// `encode` wrote every record then: version byte 1, then openraft's entry.
    #[test]
    fn format_1_entries_still_decode_as_batches_of_one() {
        let old = openraft::Entry::<TypeConfigV1> {
            log_id: log_id(7),
            payload: EntryPayload::Normal(crate::types::ProposalV1 {
                stamp_ms: 1_764_547_200_000,
                command: deadline("a"),
            }),
        };
        let bytes = gavel_storage::encode(&old).unwrap();
        assert_eq!(bytes[0], 1);
        let entry = decode_entry(&bytes).unwrap();
        assert_eq!(entry.log_id, log_id(7));
        let EntryPayload::Normal(proposal) = entry.payload else {
            panic!("a normal entry stays normal");
        };
        assert_eq!(proposal.stamp_ms, 1_764_547_200_000);
        assert_eq!(*proposal.commands, [deadline("a")]);

        let members = Membership::new(vec![BTreeSet::from([1u64])], None);
        for payload in [EntryPayload::Blank, EntryPayload::Membership(members)] {
            let old = openraft::Entry::<TypeConfigV1> {
                log_id: log_id(8),
                payload,
            };
            let entry = decode_entry(&gavel_storage::encode(&old).unwrap()).unwrap();
            assert_eq!(entry.log_id, log_id(8));
            assert!(!matches!(entry.payload, EntryPayload::Normal(_)));
        }
    }

    #[tokio::test]
    async fn only_this_nodes_committed_vote_is_given_up_on_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &gavel_storage::StoreConfig::default()).unwrap();
        let mut log_store =
            LogStore::new(store.clone(), store.log(0).unwrap(), Flusher::start(store));
        assert!(
            !log_store.give_up_leadership_on_restart(1).unwrap(),
            "no vote saved"
        );
        let cases = [
            (Vote::new_committed(4, 1), true, Vote::new(4, 1)),
            (Vote::new_committed(4, 2), false, Vote::new_committed(4, 2)),
            (Vote::new(5, 1), false, Vote::new(5, 1)),
        ];
        for (saved, given_up, read_back) in cases {
            log_store.save_vote(&saved).await.unwrap();
            assert_eq!(
                log_store.give_up_leadership_on_restart(1).unwrap(),
                given_up
            );
            assert_eq!(log_store.read_vote().await.unwrap(), Some(read_back));
        }
    }

    fn entry(index: u64, commands: usize) -> Entry {
        Entry {
            log_id: log_id(index),
            payload: EntryPayload::Normal(crate::types::Proposal {
                stamp_ms: 5,
                commands: vec![deadline("a"); commands].into(),
            }),
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|entries| entries.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_answer_only_ranges_they_hold_whole() {
        let mut recent = RecentEntries::default();
        for index in 5..=9 {
            recent.push(entry(index, 1));
        }
        assert_eq!(indexes(recent.get(5, 10)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(recent.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(recent.get(4, 6), None, "starts before the oldest kept");
        assert_eq!(recent.get(9, 11), None, "runs past the newest");
        assert_eq!(recent.get(7, 7), None, "empty");

        recent.truncate_from(8);
        assert_eq!(indexes(recent.get(5, 8)), Some(vec![5, 6, 7]));
        assert_eq!(recent.get(8, 9), None);
        recent.push(entry(8, 1));
        assert_eq!(indexes(recent.get(7, 9)), Some(vec![7, 8]));

        recent.purge_through(6);
        assert_eq!(recent.get(6, 8), None);
        assert_eq!(indexes(recent.get(7, 9)), Some(vec![7, 8]));
        assert_eq!(recent.commands, 2);

        // A gap (never made by openraft) starts afresh rather than mislabel indexes.
        recent.push(entry(20, 1));
        assert_eq!(recent.get(7, 9), None);
        assert_eq!(indexes(recent.get(20, 21)), Some(vec![20]));
    }

    #[test]
    fn recent_entries_stay_within_their_bounds() {
        let mut recent = RecentEntries::default();
        for index in 1..=(RECENT_ENTRIES_MAX as u64 + 10) {
            recent.push(entry(index, 0));
        }
        assert_eq!(recent.entries.len(), RECENT_ENTRIES_MAX);
        assert_eq!(recent.entries.front().unwrap().log_id.index, 11);

        let mut recent = RecentEntries::default();
        for index in 1..=40 {
            recent.push(entry(index, 512));
        }
        assert!(
            recent.commands <= RECENT_COMMANDS_MAX,
            "{}",
            recent.commands
        );
        assert_eq!(recent.entries.len(), RECENT_COMMANDS_MAX / 512);
        assert_eq!(recent.entries.back().unwrap().log_id.index, 40);
    }

    /// What a reader gets is what storage holds, whether the range is kept in memory or not.
    #[tokio::test]
    async fn reads_agree_with_storage_after_appends_truncations_and_purges() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &gavel_storage::StoreConfig::default()).unwrap();
        let mut log_store = LogStore::new(
            store.clone(),
            store.log(0).unwrap(),
            Flusher::start(store.clone()),
        );
        let rows: Vec<(u64, Vec<u8>)> = (1..=300)
            .map(|i| (i, encode_as(ENTRY_FORMAT_VERSION, &entry(i, 2)).unwrap()))
            .collect();
        log_store.log.append(rows).unwrap();
        log_store.remember((1..=300).map(|i| entry(i, 2)).collect());
        log_store.truncate(log_id(290)).await.unwrap();
        log_store.purge(log_id(20)).await.unwrap();
        let log = log_store.log.clone();
        let from_storage = |range: std::ops::Range<u64>| {
            log.range(range)
                .unwrap()
                .into_iter()
                .map(|(_, bytes)| decode_entry(&bytes).unwrap())
                .collect::<Vec<_>>()
        };
        // Kept in memory: 45..=289 (the newest 256 appended, less the truncated).
        for range in [21..290, 45..290, 285..289, 30..120, 289..290, 10..30] {
            let read = log_store.try_get_log_entries(range.clone()).await.unwrap();
            assert_eq!(read, from_storage(range.clone()), "{range:?}");
        }
        assert!(from_storage(0..21).is_empty(), "purged entries removed");
        assert_eq!(from_storage(21..22).len(), 1, "the next one kept");
        assert!(log_store.recent().get(45, 290).is_some(), "kept");
        assert!(log_store.recent().get(44, 290).is_none(), "older than kept");
    }

    #[test]
    fn batches_round_trip_under_their_own_format() {
        let entry = Entry {
            log_id: log_id(9),
            payload: EntryPayload::Normal(crate::types::Proposal {
                stamp_ms: 5,
                commands: vec![deadline("a"), deadline("b")].into(),
            }),
        };
        let bytes = encode_as(ENTRY_FORMAT_VERSION, &entry).unwrap();
        assert_eq!(bytes[0], ENTRY_FORMAT_VERSION);
        assert_eq!(decode_entry(&bytes).unwrap(), entry);
        let mut future = bytes.clone();
        future[0] = ENTRY_FORMAT_VERSION + 1;
        assert!(decode_entry(&future).is_err());
        assert!(decode_entry(&[]).is_err());
    }
}

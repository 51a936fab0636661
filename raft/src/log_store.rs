//! One group's Raft log store (openraft storage-v2 `RaftLogStorage`) on the storage crate's
//! `LogTree`: entries, vote, committed and purged log ids.
//!
//! An append is reported done only after sled has flushed it (through the node's `Flusher`);
//! the vote is flushed before `save_vote` returns, because a forgotten vote can elect two leaders.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gavel_storage::{decode, decode_as, encode, encode_as, format_of, LogTree, Store};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use crate::flusher::Flusher;
use crate::types::{
    upgrade_entry, Entry, LogId, NodeId, RaftStorageError, TypeConfig, TypeConfigV1, Vote,
    ENTRY_FORMAT_VERSION,
};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    log: LogTree,
    flusher: Flusher,
    /// The committed index as last saved, for lag metrics (0 = nothing committed).
    committed_index: Arc<AtomicU64>,
}

impl LogStore {
    pub fn new(store: Store, log: LogTree, flusher: Flusher) -> LogStore {
        LogStore {
            store,
            log,
            flusher,
            committed_index: Arc::new(AtomicU64::new(0)),
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
fn decode_entry(bytes: &[u8]) -> Result<Entry, gavel_storage::StorageError> {
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
            .flush()
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
        let rows = entries
            .into_iter()
            .map(|entry| {
                let bytes = encode_as(ENTRY_FORMAT_VERSION, &entry)?;
                Ok((entry.log_id.index, bytes))
            })
            .collect::<Result<Vec<_>, gavel_storage::StorageError>>()
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.log
            .append(rows)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        self.flusher
            .submit(callback)
            .await
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
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
        self.log
            .purge_through(log_id.index)
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// Records that the log is purged through `log_id`: what a purge leaves, for a data dir built
/// from a restored snapshot (the log before it never existed here).
pub(crate) fn record_purged(
    log: &LogTree,
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
        assert_eq!(proposal.commands, vec![deadline("a")]);

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

    #[test]
    fn batches_round_trip_under_their_own_format() {
        let entry = Entry {
            log_id: log_id(9),
            payload: EntryPayload::Normal(crate::types::Proposal {
                stamp_ms: 5,
                commands: vec![deadline("a"), deadline("b")],
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

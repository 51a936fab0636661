//! One group's Raft log store (openraft storage-v2 `RaftLogStorage`) on the storage crate's
//! `LogTree`: entries, vote, committed and purged log ids.
//!
//! An append is reported done only after sled has flushed it (through the node's `Flusher`);
//! the vote is flushed before `save_vote` returns, because a forgotten vote can elect two leaders.

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use gavel_storage::{decode, encode, LogTree, Store};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use crate::flusher::Flusher;
use crate::types::{Entry, LogId, RaftStorageError, TypeConfig, Vote};

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
                decode::<Entry>(&bytes).map_err(|e| StorageIOError::read_logs(&e).into())
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
                let entry: Entry = decode(&bytes).map_err(|e| StorageIOError::read_logs(&e))?;
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
            .map(|entry| Ok((entry.log_id.index, encode(&entry)?)))
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

//! One group's Raft log and its small Raft records (vote, committed, purged).
//!
//! Entries are opaque bytes keyed by their log index. Writes here are not durable until
//! `Store::flush` returns; the raft layer awaits that before it reports an append done.

use std::ops::{Bound, RangeBounds};

use crate::StorageError;

#[derive(Clone)]
pub struct LogTree {
    entries: sled::Tree,
    records: sled::Tree,
    _open: crate::HandleToken,
}

impl LogTree {
    pub(crate) fn open(
        db: &sled::Db,
        group: u32,
        open: crate::HandleToken,
    ) -> Result<LogTree, StorageError> {
        Ok(LogTree {
            _open: open,
            entries: db.open_tree(format!("log/{group}"))?,
            records: db.open_tree(format!("raft/{group}"))?,
        })
    }

    /// Writes entries in index order. One by one, not as a sled batch: a batch seals and writes
    /// sled's IO buffer twice, and an append needs no atomicity. sled recovers a prefix of its
    /// log, so a crash leaves a prefix of these entries, and Raft counts none of them before the
    /// flush that follows reports the append done.
    pub fn append(
        &self,
        entries: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<(), StorageError> {
        for (index, bytes) in entries {
            self.entries.insert(index.to_be_bytes(), bytes)?;
        }
        Ok(())
    }

    /// Entries with indexes in `range`, in order.
    pub fn range(&self, range: impl RangeBounds<u64>) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let (start, end) = key_bounds(&range);
        self.entries
            .range::<[u8; 8], _>((start, end))
            .map(|item| {
                let (key, value) = item?;
                Ok((index_of(&key)?, value.to_vec()))
            })
            .collect()
    }

    /// The entry with the highest index, if any.
    pub fn last(&self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        match self.entries.last()? {
            Some((key, value)) => Ok(Some((index_of(&key)?, value.to_vec()))),
            None => Ok(None),
        }
    }

    /// Removes every entry with index <= `index` (covered by a snapshot).
    pub fn purge_through(&self, index: u64) -> Result<(), StorageError> {
        // One removal at a time, oldest first, not one batch: sled applies a batch under a lock
        // that holds up every write to the database, and a purge after a snapshot removes
        // 18,000 entries (8,000 took 60-120 ms). A crash midway leaves the newest of them, which the purge
        // point covers.
        for key in self.keys(..=index)? {
            self.entries.remove(key)?;
        }
        Ok(())
    }

    /// Removes every entry with index >= `index` (conflicting entries from an old leader),
    /// newest first so that a crash midway never leaves a hole. One batch: a truncation
    /// removes the few entries of an uncommitted tail.
    pub fn truncate_from(&self, index: u64) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for key in self.keys(index..)?.into_iter().rev() {
            batch.remove(key);
        }
        self.entries.apply_batch(batch)?;
        Ok(())
    }

    /// The keys of the entries in `range`, oldest first.
    fn keys(&self, range: impl RangeBounds<u64>) -> Result<Vec<sled::IVec>, StorageError> {
        Ok(self
            .entries
            .range::<[u8; 8], _>(key_bounds(&range))
            .keys()
            .collect::<Result<_, _>>()?)
    }

    pub fn record(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.records.get(name)?.map(|bytes| bytes.to_vec()))
    }

    pub fn set_record(&self, name: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.records.insert(name, bytes)?;
        Ok(())
    }
}

/// `range` over log indexes as bounds over their keys.
fn key_bounds(range: &impl RangeBounds<u64>) -> (Bound<[u8; 8]>, Bound<[u8; 8]>) {
    let key = |bound: Bound<&u64>| match bound {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    };
    (key(range.start_bound()), key(range.end_bound()))
}

fn index_of(key: &[u8]) -> Result<u64, StorageError> {
    let array: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("log key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use crate::{Store, StoreConfig};

    #[test]
    fn append_range_truncate_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), &StoreConfig::default()).unwrap();
        let log = store.log(3).unwrap();
        log.append((1..=10).map(|i| (i, vec![i as u8]))).unwrap();
        assert_eq!(log.range(3..5).unwrap(), vec![(3, vec![3]), (4, vec![4])]);
        assert_eq!(log.last().unwrap(), Some((10, vec![10])));
        log.truncate_from(8).unwrap();
        assert_eq!(log.last().unwrap().map(|(i, _)| i), Some(7));
        log.purge_through(2).unwrap();
        let left: Vec<u64> = log.range(..).unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(left, (3..=7).collect::<Vec<_>>());
        // Groups do not see each other's entries.
        assert!(store.log(4).unwrap().last().unwrap().is_none());
    }
}

//! A replica whose state machine was lost while its Raft log survived: a crash or power cut
//! left sled's files in a state it cannot recover (it refuses to open, or opens without the
//! state it had flushed), and the log was purged behind a snapshot point, so the log alone
//! cannot re-apply the state (openraft would stop at start, the entries it needs are gone).
//!
//! The log must stay: its vote and its entries are promises to the group (an entry this
//! replica acknowledged may count towards a commit), so wiping them could lose a committed
//! write. The state can come back from any copy of the group's state at a committed point at
//! or past the purge point, a peer's or a stored snapshot file: such a copy is installed
//! exactly as openraft installs a snapshot a leader sends, and the log is lined up behind it.

use gavel_storage::{decode, GroupLog, SnapshotBlob, StorageError, Store};

use crate::log_store::{decode_entry, record_purged, PURGED};
use crate::state_machine::{install_blob, stored_snapshot, APPLIED};
use crate::types::{LogId, SnapshotMeta};

/// Where group `group`'s log was purged through, when its state machine holds less than
/// that: the state was lost, and only a copy reaching at least that log id brings it back.
/// `None` for a state that the log can bring up to date by itself (the normal case).
pub fn state_behind_log(store: &Store, group: u32) -> Result<Option<LogId>, StorageError> {
    let Some(purged) = purged_through(&store.log(group)?)? else {
        return Ok(None);
    };
    Ok((applied_index(store, group)? < Some(purged.index)).then_some(purged))
}

/// The log index group `group`'s stored state was applied through, if any.
pub fn applied_index(store: &Store, group: u32) -> Result<Option<u64>, StorageError> {
    let applied: Option<LogId> = store
        .state(group)?
        .meta(APPLIED)?
        .map(|bytes| decode::<Option<LogId>>(&bytes))
        .transpose()?
        .flatten();
    Ok(applied.map(|id| id.index))
}

/// The log id the log was last purged through, if it ever was.
fn purged_through(log: &GroupLog) -> Result<Option<LogId>, StorageError> {
    log.record(PURGED)?
        .map(|bytes| decode::<LogId>(&bytes))
        .transpose()
}

/// The group's stored snapshot (the file kept beside sled), when it reaches `index`.
pub fn stored_copy_reaching(
    store: &Store,
    group: u32,
    index: u64,
) -> Result<Option<(SnapshotMeta, SnapshotBlob)>, StorageError> {
    let Some((meta, data)) = stored_snapshot(&store.state(group)?)? else {
        return Ok(None);
    };
    if meta.last_log_id.is_none_or(|id| id.index < index) {
        return Ok(None);
    }
    Ok(Some((meta, SnapshotBlob::from_bytes(&data)?)))
}

/// Makes `blob`, a copy of the group's state as of `meta`, this replica's state, and lines the
/// log up behind it as openraft does when it installs a snapshot: entries the copy covers are
/// purged; if the log holds the copy's last entry (or was purged through exactly that entry),
/// the entries after it stay (they may be
/// acknowledged and not yet committed); if it holds another entry at that index, or none, every
/// entry goes, since none of them can ever be committed (a committed entry is there in their
/// place). The vote and the committed index stay as they are. Durable when it returns.
///
/// A crash midway is safe to repeat: the state is flushed before the log changes, and a log
/// purged ahead of an unflushed state is found by [`state_behind_log`] at the next start.
pub async fn adopt_copy(
    store: &Store,
    group: u32,
    meta: &SnapshotMeta,
    blob: SnapshotBlob,
) -> Result<(), StorageError> {
    let Some(last) = meta.last_log_id else {
        return Err(StorageError::Corrupt(format!(
            "group {group}: a state copy that reaches no log entry"
        )));
    };
    install_blob(&store.state(group)?, meta, blob)?;
    store.flush().await?;
    let log = store.log(group)?;
    let holds_last = purged_through(&log)? == Some(last)
        || match log.range(last.index..=last.index)?.first() {
            Some((_, bytes)) => decode_entry(bytes)?.log_id == last,
            None => false,
        };
    record_purged(&log, last)?;
    if holds_last {
        log.purge_through(last.index)?;
    } else {
        log.truncate_from(0)?;
    }
    store.sync_log().await?;
    tracing::info!(group, snapshot = %meta.snapshot_id, kept_log_after_it = holds_last, "the group's state is a copy now");
    Ok(())
}

#[cfg(test)]
#[path = "recover_tests.rs"]
mod tests;

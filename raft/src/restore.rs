//! Seeding a group of a new cluster from a backed-up state machine copy, offline (no Raft
//! instance runs): the data dir is left exactly as installing that copy as a snapshot would
//! leave it, with the new cluster's membership, so the group starts already initialized.
//!
//! What it writes, per group: the state machine tree replaced by the copy, with the applied log
//! id and membership set to the restored ones (`install_blob`, the snapshot install path); the
//! same copy as the group's stored snapshot (so a member added later catches up from it); and
//! the log's purge point at that log id (the log before it never existed on this node). No
//! vote, no log entries: the first election of the new cluster starts from there.

use std::collections::{BTreeMap, BTreeSet};

use gavel_storage::{SnapshotBlob, StorageError, Store};
use openraft::{CommittedLeaderId, Membership};

use crate::log_store::record_purged;
use crate::state_machine::install_blob;
use crate::types::{GavelNode, LogId, NodeId, SnapshotMeta, StoredMembership};

/// The log id a restored state is installed at: the backed-up applied index, under the leader
/// id of no leader yet (term 0, node 0), which is also the one `initialize` writes its
/// membership entry under. Every election of the new cluster is at term 1 or later, so the
/// first entry it appends orders after the restored state whatever term the old cluster had
/// reached; the old terms mean nothing to the new members.
pub fn restored_log_id(index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(0, 0), index)
}

/// Installs `blob` as group `group`'s whole state at [`restored_log_id`]`(index)`, with
/// `members` (peer addresses) as its voters. Every member of the new cluster must be restored
/// from the same copy with the same members, so their states are byte-identical. The store
/// is not flushed: the caller flushes once after every group.
pub fn restore_group(
    store: &Store,
    group: u32,
    blob: SnapshotBlob,
    index: u64,
    members: &BTreeMap<NodeId, GavelNode>,
) -> Result<LogId, StorageError> {
    if members.is_empty() {
        return Err(StorageError::Corrupt(
            "a restored group needs at least one member".into(),
        ));
    }
    let log_id = restored_log_id(index);
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = Membership::new(vec![voters], members.clone());
    let meta = SnapshotMeta {
        last_log_id: Some(log_id),
        last_membership: StoredMembership::new(Some(log_id), membership),
        snapshot_id: format!("restored-{index}"),
    };
    let state = store.state(group)?;
    if !install_blob(&state, &meta, blob)? {
        return Err(StorageError::Corrupt(format!(
            "group {group} already holds a snapshot: restore only into an empty data dir"
        )));
    }
    record_purged(&store.log(group)?, log_id)?;
    tracing::debug!(group, index, "restored group state");
    Ok(log_id)
}

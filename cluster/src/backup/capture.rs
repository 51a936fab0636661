//! Taking a backup on a running node: a linearizable copy of every group's state machine,
//! streamed as the backup file (`format`) through a bounded channel.
//!
//! Why each group's copy is linearizable and complete: before the first byte, the node obtains
//! every group's read index through the read path (the group's leader confirms with a quorum
//! that it still leads and names its commit index; every write acknowledged before the backup
//! began is at or below it) and waits until its own replica applied that far. Then, one group
//! at a time, it makes sure the group's latest Raft snapshot point reaches that index (taking
//! one when it does not) and sends the copy of the state the group hands out for that snapshot
//! (the stored one, or one packed then). A copy begins in the state machine task between two
//! applies, so it is the state after a prefix of the group's log: all of it, nothing
//! half-applied, and at or past the read index. Groups are independent (no
//! command spans two), so each is captured at its own point.
//!
//! It sees a group only through its `Group` handle: no `Node` beyond the read index.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gavel_raft::{Group, RaftMetrics};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::format::{AppliedAt, BackupHeader, Encoder, GroupRecord};
use super::BackupError;
use crate::api::ReadError;
use crate::node::Node;

/// Pieces of the file queued for the HTTP body at most. One piece is a whole group's state, so
/// this bounds how many groups' copies the node holds beyond the one it is capturing.
pub const BACKUP_PIECES_QUEUED_MAX: usize = 2;
/// How long one snapshot build may take before the node asks for another.
const SNAPSHOT_BUILD_WAIT: Duration = Duration::from_secs(10);
/// Builds asked for per group before the backup gives up. A request finds a build already
/// running at most once per running build, so a few attempts suffice.
const SNAPSHOT_BUILDS_MAX: u32 = 4;

/// A backup on its way: the file's bytes in order. An `Err` piece, or the channel closing
/// before the trailer, means the file is incomplete: its reader must discard it.
pub struct BackupStream {
    pub pieces: mpsc::Receiver<Result<Vec<u8>, BackupError>>,
}

impl Node {
    /// Starts a backup of every group. Fails before anything is sent when a group cannot be
    /// read linearizably (no leader, no quorum).
    pub async fn backup(self: &Arc<Self>) -> Result<BackupStream, ReadError> {
        let mut read_indexes = vec![0u64; self.groups.len()];
        let mut checks = JoinSet::new();
        for group in &self.groups {
            let (node, group) = (self.clone(), group.clone());
            checks.spawn(async move {
                let index = node.linearizable_index(&group).await?;
                Ok::<_, ReadError>((group.id as usize, index))
            });
        }
        while let Some(done) = checks.join_next().await {
            let (group, index) = done.map_err(|e| ReadError::Internal(e.to_string()))??;
            read_indexes[group] = index;
        }
        let voters = self
            .groups
            .first()
            .map_or(0, |group| crate::raft_ops::members(group).0.len());
        let header = BackupHeader {
            groups: self.groups(),
            node_count: u32::try_from(voters).unwrap_or(u32::MAX),
            created_at_ms: gavel_raft::wall_clock_ms(),
            source_node: self.node_id(),
            gavel_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let targets = self.groups.iter().cloned().zip(read_indexes).collect();
        let (sender, pieces) = mpsc::channel(BACKUP_PIECES_QUEUED_MAX);
        tokio::spawn(produce(header, targets, sender));
        Ok(BackupStream { pieces })
    }
}

type Sender = mpsc::Sender<Result<Vec<u8>, BackupError>>;

/// Sends the whole file, or an error piece where it stopped.
async fn produce(header: BackupHeader, targets: Vec<(Arc<Group>, u64)>, sender: Sender) {
    let started = Instant::now();
    match send_file(&header, targets, &sender).await {
        Ok(bytes) => tracing::info!(
            groups = header.groups,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "backup sent"
        ),
        Err(BackupError::Abandoned) => tracing::info!("backup abandoned by its reader"),
        Err(error) => {
            tracing::warn!(error = %error, "backup failed");
            let _ = sender.send(Err(error)).await;
        }
    }
}

async fn send_file(
    header: &BackupHeader,
    targets: Vec<(Arc<Group>, u64)>,
    sender: &Sender,
) -> Result<u64, BackupError> {
    let (mut encoder, head) = Encoder::start(header)?;
    let mut bytes = send(sender, head).await?;
    for (group, read_index) in targets {
        let record = tokio::select! {
            record = capture_group(&group, read_index) => record?,
            _ = sender.closed() => return Err(BackupError::Abandoned),
        };
        tracing::debug!(
            group = group.id,
            read_index,
            applied_index = record.applied.index,
            state_bytes = record.state.len(),
            "group captured"
        );
        for piece in encoder.group(record)? {
            bytes += send(sender, piece).await?;
        }
    }
    bytes += send(sender, encoder.finish()?).await?;
    Ok(bytes)
}

async fn send(sender: &Sender, piece: Vec<u8>) -> Result<u64, BackupError> {
    let len = piece.len() as u64;
    sender
        .send(Ok(piece))
        .await
        .map_err(|_| BackupError::Abandoned)?;
    Ok(len)
}

/// The group's snapshot copy, once its snapshot reaches `read_index`, as a backup record.
async fn capture_group(group: &Group, read_index: u64) -> Result<GroupRecord, BackupError> {
    let (snapshot, last) = snapshot_reaching(group, read_index).await?;
    Ok(GroupRecord {
        group: group.id,
        applied: AppliedAt {
            term: last.leader_id.term,
            leader_node: last.leader_id.node_id,
            index: last.index,
        },
        state: snapshot
            .snapshot
            .into_bytes()
            .await
            .map_err(|e| BackupError::Unavailable(format!("group {}'s copy: {e}", group.id)))?,
    })
}

/// The group's snapshot (its metadata and its copy of the state, packed when first read), once
/// one reaches `index`, and the log id it reaches. Any replica's: a snapshot holds applied,
/// so committed, state.
pub(crate) async fn snapshot_reaching(
    group: &Group,
    index: u64,
) -> Result<(gavel_raft::Snapshot, gavel_raft::LogId), BackupError> {
    await_snapshot_reaching(group, index).await?;
    let snapshot = group
        .raft
        .get_snapshot()
        .await
        .map_err(|e| BackupError::Unavailable(format!("group {} stopped: {e}", group.id)))?
        .ok_or_else(|| BackupError::Unavailable(format!("group {} has no snapshot", group.id)))?;
    match snapshot.meta.last_log_id.filter(|id| id.index >= index) {
        Some(last) => Ok((snapshot, last)),
        // Stored snapshots only ever move forward, so this would be a broken invariant of
        // the snapshot store; refuse rather than send an older state.
        None => Err(BackupError::Unavailable(format!(
            "group {}'s stored snapshot is older than index {index}",
            group.id
        ))),
    }
}

/// Waits (bounded) until the group's latest snapshot reaches `index`, asking for a build when
/// it does not. A request made while a build runs is ignored by openraft: wait for that build
/// to land, then ask again.
async fn await_snapshot_reaching(group: &Group, index: u64) -> Result<(), BackupError> {
    let reaches = |m: &RaftMetrics| m.snapshot.is_some_and(|id| id.index >= index);
    let mut metrics = group.raft.metrics();
    for attempt in 0..=SNAPSHOT_BUILDS_MAX {
        let before = {
            let now = metrics.borrow_and_update();
            if reaches(&now) {
                return Ok(());
            }
            now.snapshot
        };
        if attempt == SNAPSHOT_BUILDS_MAX {
            break;
        }
        group
            .raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| BackupError::Unavailable(format!("group {} stopped: {e}", group.id)))?;
        let landed = metrics.wait_for(|m| reaches(m) || m.snapshot != before);
        match tokio::time::timeout(SNAPSHOT_BUILD_WAIT, landed).await {
            Ok(Ok(_)) | Err(_) => continue,
            Ok(Err(_)) => {
                return Err(BackupError::Unavailable(format!(
                    "group {} stopped during the backup",
                    group.id
                )))
            }
        }
    }
    Err(BackupError::Unavailable(format!(
        "group {} built no snapshot reaching index {index} in {SNAPSHOT_BUILDS_MAX} attempts",
        group.id
    )))
}

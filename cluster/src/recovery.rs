//! A node whose state machines were lost brings them back before its groups start.
//!
//! How they get lost: a crash or a power cut leaves sled's files in a state sled 0.34 cannot
//! always recover. It then refuses to open them, or panics opening them (`gavel_storage`'s
//! `damaged`), or opens them without state it had flushed. The Raft log is the node's own
//! file and survives, but it was purged behind each snapshot point, so it cannot re-apply the
//! state by itself, and it must not be wiped either (`gavel_raft`'s `recover` says why).
//!
//! - [`open_store`]: opens the database; if its engine will not open, its files are set aside
//!   (kept for whoever wants to look) and a fresh engine opens beside the Raft log.
//! - [`recover_lost_states`]: every group whose log was purged past its state gets a copy
//!   of the group's state at a committed point at or past the purge point: the group's stored
//!   snapshot if it reaches that far, else a peer's (any member's: a snapshot holds committed
//!   state only), sent in pieces over the peer transport. The copy is adopted as openraft
//!   adopts a snapshot from a leader, and Raft brings the group up to date from there.
//! - [`CopiesServed`]: the other side, the copies this node sends, held between pieces.
//!
//! A node with no peer (a single node) cannot get its state back this way; it stops with an
//! error that says so, and its backup is what restores it (`gavel snapshot restore`).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gavel_raft::transport::{PeerRequest, PeerResponse, Transport};
use gavel_raft::{Group, SnapshotMeta};
use gavel_storage::{set_aside_engine_files, SnapshotBlob, Store, StoreConfig};

use crate::api::{NodeConfig, NodeError};
use crate::backup::{snapshot_reaching, GROUP_STATE_BYTES_MAX};
use crate::consistency::META_DIVERGED;
use crate::node::META_GROUPS;
use crate::peer_api::{
    decode_answer, encode_call, AppAnswer, AppCall, RemoteFailure, StateCopyPiece,
};

/// Bytes of a state copy per peer frame (frames are at most 16 MiB).
const STATE_COPY_PIECE_BYTES: usize = 4 << 20;
/// How long the first piece may take: the peer may build a snapshot first (the backup's bound
/// on builds, `SNAPSHOT_BUILDS_MAX` of `SNAPSHOT_BUILD_WAIT`) and then pack the copy.
const FIRST_PIECE_WAIT: Duration = Duration::from_secs(60);
const PIECE_WAIT: Duration = Duration::from_secs(15);
/// How long a node keeps asking its peers for a group's copy before it gives up starting.
const COPY_WAIT: Duration = Duration::from_secs(180);
/// How long a node that knows no peer waits for one to connect (a member added to a cluster
/// with `--join`, or the first node of a cluster that grew, learns of its peers when their
/// leaders reach out) before it concludes it has none.
const PEER_WAIT: Duration = Duration::from_secs(10);
/// How long a copy stays held for its next piece after the last one was asked for.
const COPY_HELD_IDLE: Duration = Duration::from_secs(60);

/// Opens the database in `db_dir`. One whose engine will not open because of what its files
/// hold has them set aside, and a fresh engine opens beside the Raft log it kept. The group
/// count is then the log's (its groups' votes are there) rather than the flag's, which may
/// differ from what the cluster was formed with.
pub(crate) fn open_store(db_dir: &Path, config: &NodeConfig) -> Result<Store, NodeError> {
    let damage = match Store::open(db_dir, &StoreConfig::default()) {
        Ok(store) => return Ok(store),
        Err(e) if e.is_damaged_engine() => e,
        Err(e) => return Err(e.into()),
    };
    let aside = set_aside_engine_files(db_dir)?;
    tracing::error!(
        error = %damage,
        set_aside = %aside.display(),
        "the storage engine would not open its files; they are set aside (delete them once \
         nothing in them is wanted), and the state machines will come back from copies"
    );
    let store = Store::open(db_dir, &StoreConfig::default())?;
    let groups = store
        .log_groups()
        .last()
        .map_or(config.groups, |last| last + 1);
    store.set_node_meta(META_GROUPS, &groups)?;
    Ok(store)
}

/// Brings back every group whose state was lost (its log purged past it), from its stored
/// snapshot or from a peer, and every group whose state was found to differ from its peers'
/// (`consistency`), from a peer; returns once each is adopted and durable. `transport` must be
/// started and know the initial cluster's addresses; no handler needs to be set.
pub(crate) async fn recover_lost_states(
    store: &Store,
    transport: &Transport,
    config: &NodeConfig,
) -> Result<(), NodeError> {
    let mut diverged: BTreeSet<u32> = store.node_meta(META_DIVERGED)?.unwrap_or_default();
    let mut lost = Vec::new();
    for group in 0..config.groups {
        if diverged.contains(&group) {
            // Its own stored snapshot may hold the same difference: only a peer's copy, at
            // least as far as the state claimed to be.
            let applied = gavel_raft::applied_index(store, group)?;
            let purged = gavel_raft::state_behind_log(store, group)?.map(|id| id.index);
            lost.push((group, applied.max(purged).unwrap_or(0), true));
        } else if let Some(purged) = gavel_raft::state_behind_log(store, group)? {
            lost.push((group, purged.index, false));
        }
    }
    if lost.is_empty() {
        return Ok(());
    }
    tracing::warn!(
        groups = ?lost.iter().map(|(group, _, _)| group).collect::<Vec<_>>(),
        found_to_differ = ?diverged,
        "state machines lost (their logs were purged past what they hold) or found to differ \
         from their peers': bringing them back from copies"
    );
    for (group, at_least, differed) in lost {
        let started = Instant::now();
        let stored = match differed {
            true => {
                store.state(group)?.discard_snapshot()?;
                None
            }
            false => stored_copy(store, group, at_least),
        };
        let (meta, blob, source) = match stored {
            Some((meta, blob)) => (meta, blob, "its stored snapshot".to_string()),
            None => {
                let why = match differed {
                    true => format!(
                        "was found to differ from its peers' (applied through index {at_least})"
                    ),
                    false => format!(
                        "was lost (its log was purged through index {at_least}, past what it \
                         holds)"
                    ),
                };
                let (meta, blob, peer) =
                    copy_from_peers(transport, config, group, at_least, &why).await?;
                (meta, blob, format!("node {peer}"))
            }
        };
        gavel_raft::adopt_copy(store, group, &meta, blob).await?;
        if diverged.remove(&group) {
            store.set_node_meta(META_DIVERGED, &diverged)?;
            store.flush().await?;
        }
        tracing::warn!(
            group,
            from = %source,
            snapshot = %meta.snapshot_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "group's state brought back"
        );
    }
    Ok(())
}

/// The group's stored snapshot, if it reaches `index` and reads whole.
fn stored_copy(store: &Store, group: u32, index: u64) -> Option<(SnapshotMeta, SnapshotBlob)> {
    match gavel_raft::stored_copy_reaching(store, group, index) {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(group, error = %e, "the group's stored snapshot does not read; asking the peers");
            None
        }
    }
}

/// A copy of the group's state reaching `at_least`, from the first peer that sends one whole;
/// `why` says what happened to the node's own, for the error when none comes.
async fn copy_from_peers(
    transport: &Transport,
    config: &NodeConfig,
    group: u32,
    at_least: u64,
    why: &str,
) -> Result<(SnapshotMeta, SnapshotBlob, u64), NodeError> {
    let started = Instant::now();
    let mut last_failure = String::from("no peer known");
    loop {
        let peers = peers_of(transport, config);
        for &peer in &peers {
            match fetch_copy(transport, peer, group, at_least).await {
                Ok((meta, blob)) => return Ok((meta, blob, peer)),
                Err(why) => {
                    tracing::warn!(group, peer, error = %why, "no state copy from this peer");
                    last_failure = format!("node {peer}: {why}");
                }
            }
        }
        let waited = started.elapsed();
        if waited >= COPY_WAIT || (peers.is_empty() && waited >= PEER_WAIT) {
            return Err(NodeError::Config(format!(
                "group {group}'s state machine {why} and no peer sent a copy in {} s (last: \
                 {last_failure}). In a cluster, start the other members, or remove this one, \
                 empty its data dir and add it back (docs/OPERATIONS.md, \"A node that will not \
                 start after a power loss\"); a single node is restored from its backup \
                 (`gavel snapshot restore`)",
                waited.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Every peer this node knows: the initial cluster's, and whoever connected since.
fn peers_of(transport: &Transport, config: &NodeConfig) -> Vec<u64> {
    let mut peers: BTreeSet<u64> = config.initial_cluster.iter().map(|(id, _)| *id).collect();
    peers.extend(transport.peers().into_iter().map(|peer| peer.node_id));
    peers.remove(&config.node_id);
    peers.into_iter().collect()
}

/// Fetches one whole copy from `peer`, piece by piece, and checks it before it is used.
async fn fetch_copy(
    transport: &Transport,
    peer: u64,
    group: u32,
    at_least: u64,
) -> Result<(SnapshotMeta, SnapshotBlob), String> {
    let mut bytes = Vec::new();
    let mut copy: Option<SnapshotMeta> = None;
    loop {
        let call = AppCall::StateCopy {
            at_least,
            copy: copy.as_ref().map(|meta| meta.snapshot_id.clone()),
            offset: bytes.len() as u64,
        };
        let wait = if copy.is_none() {
            FIRST_PIECE_WAIT
        } else {
            PIECE_WAIT
        };
        let request = PeerRequest::App(encode_call(&call)?);
        let answer = match transport.call(peer, group, request, wait).await {
            Ok(PeerResponse::App(answer)) => decode_answer(&answer)?,
            Ok(PeerResponse::Refused(why)) => return Err(why),
            Ok(other) => return Err(format!("unexpected answer {}", other.name())),
            Err(e) => return Err(e.to_string()),
        };
        let piece = match answer {
            AppAnswer::StateCopy(Ok(piece)) => piece,
            AppAnswer::StateCopy(Err(failure)) => return Err(format!("{failure:?}")),
            _ => return Err("answered with something else than a state copy".into()),
        };
        check_piece(&piece, copy.as_ref(), bytes.len() as u64, at_least)?;
        if bytes.is_empty() {
            bytes.reserve_exact(piece.total_bytes as usize);
        }
        bytes.extend_from_slice(&piece.bytes);
        let total = piece.total_bytes;
        let meta = copy.get_or_insert(piece.meta);
        if bytes.len() as u64 == total {
            let blob = SnapshotBlob::from_bytes(&bytes).map_err(|e| e.to_string())?;
            return Ok((meta.clone(), blob));
        }
    }
}

/// Refuses a piece that does not continue the copy as asked (a peer of another version, or a
/// broken one): wrong copy, wrong place, an empty piece before the end, or a copy that does not
/// reach far enough or is larger than any state a node holds.
fn check_piece(
    piece: &StateCopyPiece,
    copy: Option<&SnapshotMeta>,
    received: u64,
    at_least: u64,
) -> Result<(), String> {
    if piece.meta.last_log_id.is_none_or(|id| id.index < at_least) {
        return Err(format!(
            "its copy reaches {:?}, short of index {at_least}",
            piece.meta.last_log_id
        ));
    }
    if copy.is_some_and(|meta| *meta != piece.meta) {
        return Err("a piece of another copy".into());
    }
    if piece.total_bytes > GROUP_STATE_BYTES_MAX {
        return Err(format!(
            "a copy of {} bytes, more than a group's state may be ({GROUP_STATE_BYTES_MAX})",
            piece.total_bytes
        ));
    }
    let end = piece.offset.saturating_add(piece.bytes.len() as u64);
    if piece.offset != received || end > piece.total_bytes {
        return Err(format!(
            "bytes {}..{end} of {}, when {received} were received",
            piece.offset, piece.total_bytes
        ));
    }
    if piece.bytes.is_empty() && end < piece.total_bytes {
        return Err("an empty piece before the copy's end".into());
    }
    Ok(())
}

/// The state copies this node sends to peers that lost theirs, one per group at most, held
/// from the first piece to the last and dropped once unasked for `COPY_HELD_IDLE`.
#[derive(Default)]
pub(crate) struct CopiesServed {
    held: Mutex<HashMap<u32, HeldCopy>>,
}

struct HeldCopy {
    meta: SnapshotMeta,
    bytes: Arc<Vec<u8>>,
    asked: Instant,
}

impl CopiesServed {
    /// The piece of a copy of `group`'s state asked for (see `AppCall::StateCopy`).
    pub(crate) async fn serve(
        self: &Arc<Self>,
        group: &Group,
        at_least: u64,
        copy: Option<String>,
        offset: u64,
    ) -> Result<StateCopyPiece, RemoteFailure> {
        let (meta, bytes) = match copy {
            None => self.new_copy(group, at_least).await?,
            Some(id) => self.held_copy(group.id, &id)?,
        };
        let total = bytes.len() as u64;
        if offset > total {
            return Err(RemoteFailure::Refused(format!(
                "offset {offset} is past the copy's {total} bytes"
            )));
        }
        let start = offset as usize;
        let end = start
            .saturating_add(STATE_COPY_PIECE_BYTES)
            .min(bytes.len());
        Ok(StateCopyPiece {
            meta,
            total_bytes: total,
            offset,
            bytes: bytes[start..end].to_vec(),
        })
    }

    async fn new_copy(
        self: &Arc<Self>,
        group: &Group,
        at_least: u64,
    ) -> Result<(SnapshotMeta, Arc<Vec<u8>>), RemoteFailure> {
        let unavailable = |e: &dyn std::fmt::Display| RemoteFailure::Unavailable(e.to_string());
        // A replica whose log has not reached the index cannot take a snapshot there soon:
        // say so at once rather than after a round of snapshot builds.
        let last_log = group.raft.metrics().borrow().last_log_index.unwrap_or(0);
        if at_least > last_log {
            return Err(RemoteFailure::Unavailable(format!(
                "this replica's log of group {} ends at index {last_log}, before {at_least}",
                group.id
            )));
        }
        let (snapshot, _) = snapshot_reaching(group, at_least)
            .await
            .map_err(|e| unavailable(&e))?;
        let meta = snapshot.meta.clone();
        let bytes = Arc::new(
            snapshot
                .snapshot
                .into_bytes()
                .await
                .map_err(|e| unavailable(&e))?,
        );
        tracing::info!(group = group.id, snapshot = %meta.snapshot_id, bytes = bytes.len(), "sending a copy of the group's state to a peer that lost its own");
        let copy = HeldCopy {
            meta: meta.clone(),
            bytes: bytes.clone(),
            asked: Instant::now(),
        };
        let replaced = self.lock().insert(group.id, copy).is_some();
        if !replaced {
            self.drop_when_idle(group.id);
        }
        Ok((meta, bytes))
    }

    fn held_copy(
        &self,
        group: u32,
        id: &str,
    ) -> Result<(SnapshotMeta, Arc<Vec<u8>>), RemoteFailure> {
        let mut held = self.lock();
        match held
            .get_mut(&group)
            .filter(|copy| copy.meta.snapshot_id == id)
        {
            Some(copy) => {
                copy.asked = Instant::now();
                Ok((copy.meta.clone(), copy.bytes.clone()))
            }
            None => Err(RemoteFailure::Unavailable(format!(
                "copy {id} of group {group} is no longer held; ask for a new one"
            ))),
        }
    }

    fn drop_when_idle(self: &Arc<Self>, group: u32) {
        let served = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(COPY_HELD_IDLE).await;
                let Some(served) = served.upgrade() else {
                    return;
                };
                let mut held = served.lock();
                if held
                    .get(&group)
                    .is_none_or(|copy| copy.asked.elapsed() >= COPY_HELD_IDLE)
                {
                    held.remove(&group);
                    return;
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, HeldCopy>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::CommittedLeaderId;

    fn piece(index: u64, offset: u64, len: usize, total: u64) -> StateCopyPiece {
        StateCopyPiece {
            meta: SnapshotMeta {
                last_log_id: Some(gavel_raft::LogId::new(CommittedLeaderId::new(2, 1), index)),
                snapshot_id: format!("2-{index}"),
                ..SnapshotMeta::default()
            },
            total_bytes: total,
            offset,
            bytes: vec![7; len],
        }
    }

    #[test]
    fn a_piece_must_continue_the_copy_asked_for() {
        let first = piece(40, 0, 10, 25);
        assert_eq!(check_piece(&first, None, 0, 40), Ok(()));
        let next = piece(40, 10, 15, 25);
        assert_eq!(check_piece(&next, Some(&first.meta), 10, 40), Ok(()));

        let refusals = [
            (
                check_piece(&piece(39, 0, 10, 25), None, 0, 40),
                "short of index 40",
            ),
            (
                check_piece(&piece(41, 10, 15, 25), Some(&first.meta), 10, 40),
                "another copy",
            ),
            (
                check_piece(&piece(40, 12, 13, 25), Some(&first.meta), 10, 40),
                "when 10 were received",
            ),
            (
                check_piece(&piece(40, 10, 16, 25), Some(&first.meta), 10, 40),
                "bytes 10..26 of 25",
            ),
            (
                check_piece(&piece(40, 10, 0, 25), Some(&first.meta), 10, 40),
                "empty piece",
            ),
            (
                check_piece(&piece(40, 0, 0, GROUP_STATE_BYTES_MAX + 1), None, 0, 40),
                "more than a group's state",
            ),
        ];
        for (checked, why) in refusals {
            let refused = checked.expect_err(why);
            assert!(refused.contains(why), "{refused:?} should say {why:?}");
        }
        let empty_state = piece(40, 0, 0, 0);
        assert_eq!(
            check_piece(&empty_state, None, 0, 40),
            Ok(()),
            "an empty copy is whole"
        );
    }
}

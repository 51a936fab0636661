//! Opening one Raft group: its log store, state machine and openraft instance, with every
//! openraft option set explicitly.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use gavel_storage::{decode, StateTree, Store};
use openraft::error::Fatal;
use openraft::{Config, SnapshotPolicy};

use crate::checkpoint::CheckpointRule;
use crate::flusher::Flusher;
use crate::log_store::LogStore;
use crate::network::Network;
use crate::state_machine::{AppliedChannel, GroupObserver, StateMachine, APPLIED};
use crate::transport::Transport;
use crate::types::{LogId, NodeId, Raft, RaftMetrics};

/// Raft timing and log-retention settings shared by every group of a node.
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Take a snapshot (let the log behind it go) after this many entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind the snapshot, so briefly lagging followers catch up by log.
    pub log_entries_kept_after_snapshot: u64,
    /// Most entries in one AppendEntries message.
    pub append_entries_max: u64,
    /// The log is purged only once at least this many entries can go at once.
    pub purge_batch_entries: u64,
    /// Snapshots travel in chunks of at most this many bytes (well under the frame limit).
    pub snapshot_chunk_bytes: u64,
    /// How long one snapshot chunk may take to be sent and acknowledged.
    pub install_snapshot_timeout_ms: u64,
    /// Whether the election timer may start campaigns as soon as the group opens. Gavel's
    /// nodes open with it off and turn it on once their clock is known to be healthy
    /// (`runtime_config().elect`).
    pub elect_at_start: bool,
    /// Consistency checkpoints every this many milliseconds of the group's clock
    /// (`checkpoint`); 0: none. The same on every replica of a group.
    pub checkpoint_interval_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 150,
            election_timeout_min_ms: 600,
            election_timeout_max_ms: 1200,
            snapshot_after_entries: 20_000,
            log_entries_kept_after_snapshot: 2_000,
            append_entries_max: 500,
            purge_batch_entries: 256,
            snapshot_chunk_bytes: 1024 * 1024,
            install_snapshot_timeout_ms: 10_000,
            elect_at_start: true,
            checkpoint_interval_ms: 0,
        }
    }
}

impl RaftSettings {
    fn openraft_config(&self, group: u32) -> Result<Config, openraft::ConfigError> {
        Config {
            cluster_name: format!("gavel-group-{group}"),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // A snapshot costs a flush (see `state_machine`): the log behind it may go.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.log_entries_kept_after_snapshot,
            max_payload_entries: self.append_entries_max,
            purge_batch_size: self.purge_batch_entries,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            install_snapshot_timeout: self.install_snapshot_timeout_ms,
            enable_tick: true,
            enable_heartbeat: true,
            enable_elect: self.elect_at_start,
            ..Config::default()
        }
        .validate()
    }
}

/// One group as this node hosts it.
pub struct Group {
    pub id: u32,
    pub raft: Raft,
    /// Read side of the state machine: applied state, for queries.
    pub state: StateTree,
    pub observer: Arc<GroupObserver>,
    /// The committed index the log store last saved.
    pub committed_index: Arc<AtomicU64>,
    /// The last digest of the state (`state_digest`) and the applied log id it was read at.
    digest_memo: Mutex<Option<DigestMemo>>,
}

/// A digest of a group's state and the applied log index of the state it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateDigest {
    pub applied_index: u64,
    pub digest: u64,
}

/// A state digest and the applied log id (as stored) of the state it was read from.
#[derive(Clone)]
struct DigestMemo {
    applied: Option<Vec<u8>>,
    digest: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("storage: {0}")]
    Storage(#[from] gavel_storage::StorageError),
    #[error("raft config: {0}")]
    Config(#[from] openraft::ConfigError),
    #[error("raft: {0}")]
    Raft(String),
}

impl Group {
    pub async fn open(
        id: u32,
        node_id: NodeId,
        store: &Store,
        flusher: &Flusher,
        settings: &RaftSettings,
        applied: &AppliedChannel,
        transport: &Transport,
    ) -> Result<Group, GroupError> {
        let config = Arc::new(settings.openraft_config(id)?);
        let log = store.log(id)?;
        let log_store = LogStore::new(store.clone(), log, flusher.clone());
        if log_store.give_up_leadership_on_restart(node_id)? {
            tracing::info!(
                group = id,
                "led this group when it stopped: back as a follower"
            );
        }
        let committed_index = log_store.committed_index();
        let state = store.state(id)?;
        let observer = Arc::new(GroupObserver::new(applied.clone()));
        let state_machine = StateMachine::new(id, store.clone(), state.clone(), observer.clone())
            .with_checkpoints(CheckpointRule::new(settings.checkpoint_interval_ms, id));
        let network = Network {
            transport: transport.clone(),
            group: id,
        };
        let raft = Raft::new(node_id, config, network, log_store, state_machine)
            .await
            .map_err(|e| GroupError::Raft(e.to_string()))?;
        Ok(Group {
            id,
            raft,
            state,
            observer,
            committed_index,
            digest_memo: Mutex::default(),
        })
    }

    /// The digest of the group's state and the applied log index it is exact for
    /// (`StateTree::digest_with_meta`). It reads all of the state: a second of a core for a
    /// few hundred MB. Blocking; call it off the runtimes. Remembered with that applied log id:
    /// only an applied entry (or an installed snapshot, which moves the applied id too) changes
    /// the state, so while that id stands the digest does too, and a quiet group's digest is
    /// read once, not at every `/cluster`.
    pub fn state_digest(&self) -> Result<StateDigest, gavel_storage::StorageError> {
        let applied = self.state.meta(APPLIED)?;
        let memo = self.digest_memo().clone();
        let (digest, applied) = match memo {
            Some(memo) if memo.applied == applied => (memo.digest, applied),
            _ => {
                let (digest, applied) = self.state.digest_with_meta(APPLIED)?;
                *self.digest_memo() = Some(DigestMemo {
                    applied: applied.clone(),
                    digest,
                });
                (digest, applied)
            }
        };
        let applied: Option<Option<LogId>> = applied.map(|raw| decode(&raw)).transpose()?;
        Ok(StateDigest {
            applied_index: applied.flatten().map_or(0, |id| id.index),
            digest,
        })
    }

    /// Why the group's Raft core stopped, if it stopped on an error (a log or state write that
    /// failed, a panic) rather than because the node asked it to. It never runs again in this
    /// process: openraft's core stops for good on a storage error.
    pub fn failure(&self) -> Option<String> {
        failure_of(&self.raft.metrics().borrow())
    }

    /// Resolves once the group's Raft core stopped on an error, with why (see `failure`).
    pub async fn failed(&self) -> String {
        let mut metrics = self.raft.metrics();
        loop {
            if let Some(failure) = failure_of(&metrics.borrow_and_update()) {
                return failure;
            }
            if metrics.changed().await.is_err() {
                // The core is gone: what it said last is all there will be.
                return match failure_of(&metrics.borrow()) {
                    Some(failure) => failure,
                    None => std::future::pending().await,
                };
            }
        }
    }

    fn digest_memo(&self) -> std::sync::MutexGuard<'_, Option<DigestMemo>> {
        self.digest_memo
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn failure_of(metrics: &RaftMetrics) -> Option<String> {
    match &metrics.running_state {
        Ok(()) | Err(Fatal::Stopped) => None,
        Err(fatal) => Some(fatal.to_string()),
    }
}

//! One group's replicated state machine (openraft storage-v2 `RaftStateMachine`).
//!
//! `apply` decodes a batch of committed entries, lets the storage crate decide each command
//! with the auction rules, and writes all of it, with the applied log id and membership, as one
//! commit that lands whole or not at all (journaled, see `gavel_storage`'s `state.rs`).
//! The state tree is durable by itself (sled, flushed), so taking a snapshot copies nothing:
//! it writes what is unwritten and flushes, and openraft may then let the log behind that point
//! go. What a follower that lacks that log is sent is a copy of the whole state tree as
//! key/value pairs, packed only when asked for (`get_current_snapshot`) and kept as a file
//! beside sled (see `gavel_storage`'s `snapshot_files.rs`) for as long as no later snapshot
//! point passes it; installed atomically; a copy is stored only if it reaches further than the
//! stored one. A group of about 700,000 decisions has a 130-170 MB state: copied at every
//! snapshot, by every replica, it took seconds of a core each time, and a single client's bids
//! had p99 / p99.9 / max of 4.4-5.0 / 10-20 / 35-40 ms while it went on, against 2.1 / 3.2 /
//! 4.5 ms without the copies.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use gavel_rules::{Auction, Change, StampMs};
use gavel_storage::{
    decode, encode, on_background_thread, on_idle_background_thread, SnapshotBlob, StateTree,
    Store, TreeCopy,
};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use tokio::sync::{broadcast, Notify};

use crate::checkpoint::{CheckpointRule, Checkpoints};
use crate::clock::wall_clock_ms;
use crate::snapshot_data::SnapshotData;
use crate::types::{
    Entry, LogId, RaftStorageError, Response, Snapshot, SnapshotMeta, StoredMembership, TypeConfig,
};

/// `Option<LogId>`: the last applied entry.
pub(crate) const APPLIED: &str = "applied";
/// `StoredMembership`: the last applied membership.
const MEMBERSHIP: &str = "membership";

/// Applied batches the node's event channel holds for a lagging subscriber before it starts
/// dropping the oldest (the subscriber then sees `Lagged` and re-reads state).
pub const APPLIED_EVENTS_QUEUE_MAX: usize = 16_384;

/// What one apply call changed in auctions that may have viewers on this node: each such
/// auction once, with its newest state and all its changes, in the order the auctions were
/// first changed. One channel message per batch, not per bid, and none for a batch nobody
/// watches: every message wakes the live fan-out's runtime, which cost about 9% of a core at
/// 4,000 decisions/s with nobody watching when every change was a message of its own.
pub type AppliedEvents = Arc<[AuctionEvent]>;

/// Slots of [`Watched`]: more than the auctions a node's viewers usually watch at once, so
/// that an unwatched auction rarely shares a slot with a watched one.
const WATCHED_SLOTS: usize = 4096;

/// Which auctions someone on this node watches, as a count of watched auctions per hashed
/// slot: lock-free for the apply path, and wrong only in the safe direction (an unwatched
/// auction that shares a slot with a watched one is published for nothing).
///
/// Why nothing is missed: a viewer's hub counts the auction in *before* it reads the
/// auction's state, and apply commits a batch *before* it checks the counts (a sequentially
/// consistent fence between). So a change that apply did not publish was committed before the
/// viewer's read, which sees it.
pub struct Watched {
    slots: Box<[AtomicU32]>,
    hasher: RandomState,
}

impl Default for Watched {
    fn default() -> Self {
        Watched {
            slots: (0..WATCHED_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }
}

impl Watched {
    fn slot(&self, auction_id: &str) -> &AtomicU32 {
        let at = self.hasher.hash_one(auction_id) as usize % self.slots.len();
        &self.slots[at]
    }

    /// The node's viewers started watching `auction_id`; call once per auction, not per viewer.
    pub fn watch(&self, auction_id: &str) {
        self.slot(auction_id).fetch_add(1, Ordering::SeqCst);
    }

    /// The last viewer of `auction_id` left (undoes one `watch`).
    pub fn unwatch(&self, auction_id: &str) {
        let slot = self.slot(auction_id);
        // Never below zero, even if called without its `watch`.
        let _ = slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Whether `auction_id` may have viewers (false: it certainly has none).
    pub fn may_be_watched(&self, auction_id: &str) -> bool {
        self.slot(auction_id).load(Ordering::SeqCst) > 0
    }
}

/// Where a node's groups publish what they apply, and which auctions are worth publishing.
/// One per node, shared by all its groups. Cheap to clone.
#[derive(Clone)]
pub struct AppliedChannel {
    pub events: broadcast::Sender<AppliedEvents>,
    pub watched: Arc<Watched>,
}

impl Default for AppliedChannel {
    fn default() -> Self {
        AppliedChannel {
            events: broadcast::channel(APPLIED_EVENTS_QUEUE_MAX).0,
            watched: Arc::default(),
        }
    }
}

/// An auction changed by an applied entry, as live viewers should hear it.
#[derive(Clone, Debug)]
pub struct AuctionEvent {
    pub group: u32,
    /// The auction's state after the entry.
    pub auction: Arc<Auction>,
    /// What changed, oldest first (never empty).
    pub changes: Vec<Change>,
    /// When the entry's batch was committed to the state machine on this node, for
    /// apply-to-send latency.
    pub applied_at: Instant,
}

/// What the rest of the node hears from a group's apply path. Nothing here can make apply
/// wait: `Notify` stores a permit, the broadcast channel overwrites its oldest entry.
pub struct GroupObserver {
    /// Signalled when an applied command moved an auction's start/end deadline (or a snapshot
    /// replaced the state), so the leader's deadline timer looks at the deadline index again.
    pub deadlines_changed: Notify,
    /// Every applied change of every group of the node to a watched auction, a batch at a
    /// time, for live fan-out.
    pub applied: AppliedChannel,
    /// The digests of the state at the group's recent consistency checkpoints.
    pub checkpoints: Checkpoints,
}

impl GroupObserver {
    pub fn new(applied: AppliedChannel) -> GroupObserver {
        GroupObserver {
            deadlines_changed: Notify::new(),
            applied,
            checkpoints: Checkpoints::default(),
        }
    }
}

impl Default for GroupObserver {
    fn default() -> Self {
        GroupObserver::new(AppliedChannel::default())
    }
}

/// The auctions an apply call changed so far, merged per auction (see [`AppliedEvents`]).
#[derive(Default)]
struct ChangedAuctions {
    /// Per changed auction, first changed first: its newest state and every change, in order.
    changed: Vec<(Auction, Vec<Change>)>,
    /// Where each auction is in `changed`.
    position: HashMap<String, usize>,
}

impl ChangedAuctions {
    fn record(&mut self, auction: Auction, changes: Vec<Change>) {
        match self.position.get(&auction.id) {
            Some(&at) => {
                let (newest, all) = &mut self.changed[at];
                *newest = auction;
                all.extend(changes);
            }
            None => {
                self.position.insert(auction.id.clone(), self.changed.len());
                self.changed.push((auction, changes));
            }
        }
    }

    /// The batch to publish, of the auctions `watched` marks, stamped with when it was
    /// committed; `None` if none of them changed. Call after the commit (see [`Watched`]).
    fn into_batch(
        self,
        group: u32,
        applied_at: Instant,
        watched: &Watched,
    ) -> Option<AppliedEvents> {
        if self.changed.is_empty() {
            return None;
        }
        // The commit's writes before the marks' reads (the hub marks, then reads the state).
        fence(Ordering::SeqCst);
        let events: Vec<AuctionEvent> = self
            .changed
            .into_iter()
            .filter(|(auction, _)| watched.may_be_watched(&auction.id))
            .map(|(auction, changes)| AuctionEvent {
                group,
                auction: Arc::new(auction),
                changes,
                applied_at,
            })
            .collect();
        (!events.is_empty()).then(|| events.into())
    }
}

pub struct StateMachine {
    group: u32,
    store: Store,
    state: StateTree,
    observer: Arc<GroupObserver>,
    /// How far openraft may have purged the log (`snapshot_position` of the newest snapshot
    /// point it was given): a stored copy short of it cannot bring a follower up to the log.
    purgeable: Arc<AtomicU64>,
    /// Whether `purgeable` counts what an earlier run of the node may have purged.
    purgeable_since_start: bool,
    checkpoint_rule: CheckpointRule,
}

impl StateMachine {
    pub fn new(
        group: u32,
        store: Store,
        state: StateTree,
        observer: Arc<GroupObserver>,
    ) -> StateMachine {
        StateMachine {
            group,
            store,
            state,
            observer,
            purgeable: Arc::default(),
            purgeable_since_start: false,
            checkpoint_rule: CheckpointRule::new(0, group),
        }
    }

    /// Digests the state at the group's consistency checkpoints (`checkpoint`), into
    /// `GroupObserver::checkpoints`.
    pub fn with_checkpoints(mut self, rule: CheckpointRule) -> StateMachine {
        self.checkpoint_rule = rule;
        self
    }

    /// Begins the digest of the state the last commit left, at checkpoint `index`, and reads it
    /// on a background thread while the applies go on: it reads the whole state, paced to a
    /// sixteenth of a core (every replica reads at once, and a burst of it shows in the bids'
    /// latency; nothing waits for it).
    fn begin_checkpoint(&self, index: u64) {
        let observer = self.observer.clone();
        if !observer.checkpoints.begin(index) {
            return;
        }
        let read = match self.state.begin_digest(None) {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(group = self.group, index, error = %e, "could not begin a checkpoint's digest");
                observer.checkpoints.finish(index, None);
                return;
            }
        };
        let group = self.group;
        tokio::spawn(async move {
            let began = Instant::now();
            let digest = match on_idle_background_thread("checkpoint", move || read.finish()).await
            {
                Ok((digest, _)) => {
                    tracing::debug!(
                        group,
                        index,
                        elapsed_ms = began.elapsed().as_millis() as u64,
                        "read a checkpoint's digest"
                    );
                    Some(digest)
                }
                // A snapshot replaced the state meanwhile: what was read is not that state.
                Err(gavel_storage::StorageError::Replaced) => None,
                Err(e) => {
                    tracing::warn!(group, index, error = %e, "could not read a checkpoint's digest");
                    None
                }
            };
            observer.checkpoints.finish(index, digest);
        });
    }

    /// The last applied log id and membership (what commits left unwritten included).
    fn applied_state_now(
        &self,
    ) -> Result<(Option<LogId>, StoredMembership), gavel_storage::StorageError> {
        let applied: Option<LogId> = self.stored::<Option<LogId>>(APPLIED)?.flatten();
        let membership: StoredMembership = self.stored(MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    /// The snapshot the state is at: its applied log id and membership. Only in the state
    /// machine task, where nothing applies meanwhile.
    fn snapshot_meta(&self) -> Result<SnapshotMeta, gavel_storage::StorageError> {
        let (applied, membership) = self.applied_state_now()?;
        Ok(SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
            snapshot_id: match applied {
                Some(id) => format!("{}-{}", id.leader_id.term, id.index),
                None => "empty".to_string(),
            },
        })
    }

    /// A value the state machine keeps in its meta records (the applied log id, the membership).
    fn stored<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, gavel_storage::StorageError> {
        self.state
            .meta(name)?
            .map(|bytes| decode(&bytes))
            .transpose()
    }

    fn record_lateness(&self, deadline_ms: StampMs) {
        let lateness_ms = wall_clock_ms().saturating_sub(deadline_ms).max(0);
        metrics::histogram!("gavel_end_event_lateness_seconds").record(lateness_ms as f64 / 1000.0);
        tracing::debug!(
            group = self.group,
            lateness_ms,
            "auction ended at its deadline"
        );
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok(self
            .applied_state_now()
            .map_err(|e| StorageIOError::read_state_machine(&e))?)
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let sm_error = |e: gavel_storage::StorageError| StorageIOError::write_state_machine(&e);
        let mut writer = self.state.writer().map_err(sm_error)?;
        let mut responses = Vec::new();
        let mut ended_at_deadlines = Vec::new();
        let mut deadlines_moved = false;
        let mut events = ChangedAuctions::default();
        let mut last_applied = None;
        for entry in entries {
            last_applied = Some(entry.log_id);
            let mut checkpoint = false;
            let response = match entry.payload {
                EntryPayload::Blank => Response::default(),
                EntryPayload::Normal(proposal) => {
                    let stamp_before = writer.last_stamp();
                    // In order, each with the entry's stamp, exactly as if alone in its entry.
                    let mut replies = Vec::with_capacity(proposal.commands.len());
                    for command in proposal.commands.iter() {
                        let applied = writer.apply(proposal.stamp_ms, command).map_err(sm_error)?;
                        deadlines_moved |= applied.deadline_moved;
                        if let (false, Some(auction)) =
                            (applied.effects.changes.is_empty(), applied.effects.auction)
                        {
                            events.record(auction, applied.effects.changes);
                        }
                        ended_at_deadlines.extend(applied.effects.ended_at_deadline_ms);
                        replies.push(applied.effects.reply);
                    }
                    checkpoint = self
                        .checkpoint_rule
                        .is_checkpoint(stamp_before, writer.last_stamp());
                    Response(replies)
                }
                EntryPayload::Membership(membership) => {
                    let stored = StoredMembership::new(Some(entry.log_id), membership);
                    writer.set_meta(MEMBERSHIP, encode(&stored).map_err(sm_error)?);
                    Response::default()
                }
            };
            responses.push(response);
            if checkpoint {
                // The checkpoint's digest is of the state this very entry left: what was
                // applied up to it commits first, and the rest of the call after it (once per
                // checkpoint interval).
                writer.set_meta(APPLIED, encode(&Some(entry.log_id)).map_err(sm_error)?);
                writer.commit().map_err(sm_error)?;
                last_applied = None;
                self.begin_checkpoint(entry.log_id.index);
                writer = self.state.writer().map_err(sm_error)?;
            }
        }
        if let Some(applied) = last_applied {
            writer.set_meta(APPLIED, encode(&Some(applied)).map_err(sm_error)?);
        }
        writer.commit().map_err(sm_error)?;
        for deadline_ms in ended_at_deadlines {
            self.record_lateness(deadline_ms);
        }
        if deadlines_moved {
            self.observer.deadlines_changed.notify_one();
        }
        let watched = &self.observer.applied.watched;
        if let Some(batch) = events.into_batch(self.group, Instant::now(), watched) {
            // No subscriber is fine: nobody is watching.
            let _ = self.observer.applied.events.send(batch);
        }
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            group: self.group,
            store: self.store.clone(),
            // The point must be in the tree, which the build flushes.
            point: Some(
                self.state
                    .write_unwritten()
                    .and_then(|()| self.snapshot_meta()),
            ),
            purgeable: self.purgeable.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, RaftStorageError> {
        Ok(Box::new(SnapshotData::ready(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), RaftStorageError> {
        let signature = Some(meta.signature());
        let error =
            |e: gavel_storage::StorageError| StorageIOError::write_snapshot(signature.clone(), &e);
        let data = snapshot
            .into_bytes()
            .await
            .map_err(|e| error(gavel_storage::StorageError::File(e)))?;
        let blob = SnapshotBlob::from_bytes(&data).map_err(error)?;
        if !install_blob(&self.state, meta, blob).map_err(error)? {
            // openraft installs only snapshots past what this replica committed, and snapshot
            // points stop at applied, so this does not happen; keeping the stored one is still
            // right.
            tracing::warn!(group = self.group, snapshot = %meta.snapshot_id, "installed a snapshot older than the stored one; kept the stored one");
        }
        self.store.flush().await.map_err(error)?;
        // openraft lets this replica's log up to it go; the stored copy is this one.
        self.purgeable
            .fetch_max(snapshot_position(meta.last_log_id), Ordering::Relaxed);
        self.observer.deadlines_changed.notify_one();
        tracing::info!(group = self.group, snapshot = %meta.snapshot_id, "installed snapshot");
        Ok(())
    }

    /// The stored copy if it reaches as far as the log may have been purged; else a copy of
    /// the state as it is now, packed on a background thread when first read (openraft waits
    /// for this call in the state machine task: a copy packed here would stop the group's
    /// applies for seconds). openraft asks when a follower lacks log the leader let go of, when
    /// a backup is taken, and once when the group starts, for the metadata only: a copy nobody
    /// reads is never packed. Two followers that both need one each get a copy of their own.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, RaftStorageError> {
        let error = |e: gavel_storage::StorageError| StorageIOError::read_snapshot(None, &e);
        if !self.purgeable_since_start {
            // An earlier run may have purged up to its last snapshot point, whose state it
            // had flushed: not past what the state holds now.
            let (applied, _) = self.applied_state_now().map_err(error)?;
            self.purgeable
                .fetch_max(snapshot_position(applied), Ordering::Relaxed);
            self.purgeable_since_start = true;
        }
        if let Some((meta, data)) = stored_snapshot(&self.state).map_err(error)? {
            if snapshot_position(meta.last_log_id) >= self.purgeable.load(Ordering::Relaxed) {
                return Ok(Some(Snapshot {
                    meta,
                    snapshot: Box::new(SnapshotData::ready(data.into_vec())),
                }));
            }
        }
        let copy = self.state.begin_copy().map_err(error)?;
        let meta = self.snapshot_meta().map_err(error)?;
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        // Not flushed, and not counted in `purgeable`: openraft purges the log only behind the
        // snapshots it takes or installs, never behind one it sends (at start it keeps this
        // one's metadata, and purges nothing until it takes one). A flush here held the
        // group's applies for seconds behind the other groups' flushes under load. Not
        // counted, a copy packed here serves the followers after it until the next point.
        let packing = pack_copy(self.group, self.state.clone(), copy, meta.clone());
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::packed_by(packing)),
        }))
    }
}

/// The group's stored snapshot (the file beside sled), as `install_blob` and `pack_copy` store
/// it: its metadata and its packed state.
pub(crate) fn stored_snapshot(
    state: &StateTree,
) -> Result<Option<(SnapshotMeta, serde_bytes::ByteBuf)>, gavel_storage::StorageError> {
    state
        .load_snapshot()?
        .map(|stored| decode(&stored))
        .transpose()
}

/// How far into the log a snapshot reaches, for `save_snapshot_if_newer`. A snapshot holds only
/// applied (so committed) state, and a group commits one log, so the index alone orders them.
fn snapshot_position(last_log_id: Option<LogId>) -> u64 {
    last_log_id.map_or(0, |id| id.index + 1)
}

/// Makes `blob` the whole state machine, as of `meta` (the authority on what it covers: its
/// applied log id and membership replace the blob's own), and stores it as the group's
/// snapshot unless a newer one is stored. Returns whether it stored it. Not flushed.
pub(crate) fn install_blob(
    state: &StateTree,
    meta: &SnapshotMeta,
    mut blob: SnapshotBlob,
) -> Result<bool, gavel_storage::StorageError> {
    set_pair(&mut blob, APPLIED, encode(&meta.last_log_id)?);
    set_pair(&mut blob, MEMBERSHIP, encode(&meta.last_membership)?);
    state.import(&blob)?;
    let stored = encode(&(meta, serde_bytes::ByteBuf::from(blob.to_bytes()?)))?;
    state.save_snapshot_if_newer(snapshot_position(meta.last_log_id), &stored)
}

/// Replaces (or adds) the meta pair `name` in a snapshot blob.
fn set_pair(blob: &mut SnapshotBlob, name: &str, value: Vec<u8>) {
    match meta_pair(blob, name) {
        Ok(i) => blob.pairs[i].1 = value,
        Err(i) => blob.pairs.insert(i, (gavel_storage::meta_key(name), value)),
    }
}

/// Makes a snapshot point durable: openraft keeps only the metadata of what it builds, and
/// purges the log behind it.
pub struct SnapshotBuilder {
    group: u32,
    store: Store,
    /// Read in the state machine task; taken by the one build.
    point: Option<Result<SnapshotMeta, gavel_storage::StorageError>>,
    purgeable: Arc<AtomicU64>,
}

/// Copies and packs the state `copy` began at (`meta`) on a background thread, and stores it
/// as the group's snapshot unless a newer one is stored.
async fn pack_copy(
    group: u32,
    state: StateTree,
    copy: TreeCopy,
    meta: SnapshotMeta,
) -> std::io::Result<Vec<u8>> {
    // Copying, encoding and storing the whole state takes a while for a hot group: on a
    // thread of its own, off the runtimes (it held up every group of the node, heartbeats and
    // bids, for up to 1.4 s each time), at a lower priority, paced, so that it takes the CPU
    // bids leave.
    on_background_thread("snapshot", move || {
        let began = std::time::Instant::now();
        let blob = copy.finish()?;
        let copied_at = std::time::Instant::now();
        let applied: Option<LogId> = copied::<Option<LogId>>(&blob, APPLIED)?.flatten();
        if applied != meta.last_log_id {
            return Err(gavel_storage::StorageError::Corrupt(format!(
                "a copy of the state at {:?} holds the state at {applied:?}",
                meta.last_log_id
            )));
        }
        let records = blob.pairs.len();
        let plain_len = blob.plain_len()?;
        let data = blob.to_bytes()?;
        drop(blob);
        let stored = encode(&(&meta, serde_bytes::Bytes::new(&data)))?;
        let packed_at = std::time::Instant::now();
        // An install may have stored a newer snapshot since the copy began: that one stays.
        // Storing is only so that the next follower gets the same copy without packing it
        // again: a failed save (a full disk) does not fail this copy's follower or backup.
        let saved = state
            .save_snapshot_if_newer(snapshot_position(meta.last_log_id), &stored)
            .unwrap_or_else(|e| {
                tracing::warn!(group, snapshot = %meta.snapshot_id, error = %e, "could not store a packed snapshot copy; it is sent all the same");
                false
            });
        // What a copy cost, for whoever wonders where a slow second went.
        tracing::info!(
            group,
            snapshot = %meta.snapshot_id,
            records,
            state_bytes = plain_len,
            file_bytes = stored.len(),
            copy_ms = (copied_at - began).as_millis() as u64,
            pack_ms = (packed_at - copied_at).as_millis() as u64,
            save_ms = packed_at.elapsed().as_millis() as u64,
            saved,
            "packed snapshot"
        );
        Ok(data)
    })
    .await
    .map_err(std::io::Error::other)
}

/// A meta record of a state copy (the applied log id, the membership), if it holds one.
fn copied<T: serde::de::DeserializeOwned>(
    blob: &SnapshotBlob,
    name: &str,
) -> Result<Option<T>, gavel_storage::StorageError> {
    match meta_pair(blob, name) {
        Ok(i) => Ok(Some(decode(&blob.pairs[i].1)?)),
        Err(_) => Ok(None),
    }
}

/// Where the meta pair `name` is in a snapshot blob (pairs are in key order), or would go.
fn meta_pair(blob: &SnapshotBlob, name: &str) -> Result<usize, usize> {
    let key = gavel_storage::meta_key(name);
    blob.pairs.binary_search_by(|(k, _)| k.as_slice().cmp(&key))
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, RaftStorageError> {
        let error = |e: gavel_storage::StorageError| StorageIOError::write_snapshot(None, &e);
        let meta = match self.point.take() {
            Some(point) => point.map_err(error)?,
            None => {
                return Err(error(gavel_storage::StorageError::Corrupt(
                    "this snapshot was built already".into(),
                ))
                .into())
            }
        };
        // openraft purges the log behind the point once it hears of it: the state at the
        // point must be durable first, so that a restart never finds its state machine behind
        // a purged log.
        self.store.flush().await.map_err(error)?;
        self.purgeable
            .fetch_max(snapshot_position(meta.last_log_id), Ordering::Relaxed);
        tracing::info!(group = self.group, snapshot = %meta.snapshot_id, "took snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(SnapshotData::ready(Vec::new())),
        })
    }
}

//! Snapshots and log compaction through a real openraft group on sled: a group that compacts
//! its log restarts from its state + remaining log to the identical state; a copy of real
//! auction state, packed when asked for, installs into an empty state machine byte for byte,
//! and is the stored copy until a later snapshot point passes it; a copy packed after a newer
//! snapshot was installed never replaces it; a group restored offline from a snapshot copy
//! starts from it with new members.

#![allow(clippy::result_large_err)] // openraft's errors are large by design.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gavel_raft::transport::{Transport, TransportConfig};
use gavel_raft::{
    AppliedChannel, Flusher, GavelNode, Group, GroupObserver, Proposal, RaftSettings, Reply,
    Snapshot, SnapshotData, StateMachine,
};
use gavel_raft::{Entry, LogId};
use gavel_rules::{BidStatus, Command, Decimal};
use gavel_storage::{StateTree, Store, StoreConfig};
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;
use openraft::RaftSnapshotBuilder;

mod fixtures;
use fixtures::{create, START_MS};

const GROUP: u32 = 2;

fn settings() -> RaftSettings {
    RaftSettings {
        snapshot_after_entries: 40,
        log_entries_kept_after_snapshot: 5,
        purge_batch_entries: 10,
        ..RaftSettings::default()
    }
}

async fn open(dir: &Path) -> (Store, Group) {
    let store = Store::open(dir, &StoreConfig::default()).unwrap();
    let flusher = Flusher::start(store.clone());
    let applied = AppliedChannel::default();
    let config = TransportConfig::new(1, String::new(), String::new());
    let (transport, _) = Transport::start(config, "127.0.0.1:0").await.unwrap();
    let group = Group::open(
        GROUP,
        1,
        &store,
        &flusher,
        &settings(),
        &applied,
        &transport,
    )
    .await
    .unwrap();
    (store, group)
}

/// Makes the group a one-member cluster and waits until this node leads it.
async fn lead_alone(group: &Group) {
    let members = BTreeMap::from([(1, GavelNode::default())]);
    group.raft.initialize(members).await.unwrap();
    group
        .raft
        .wait(Some(Duration::from_secs(10)))
        .state(
            openraft::ServerState::Leader,
            "single member becomes leader",
        )
        .await
        .unwrap();
}

async fn write(group: &Group, stamp_ms: i64, command: Command) -> Reply {
    let proposal = Proposal {
        stamp_ms,
        commands: vec![command].into(),
    };
    let response = group.raft.client_write(proposal).await.unwrap();
    // openraft answers before it publishes the apply in its metrics, which tests read next.
    group
        .raft
        .wait(Some(Duration::from_secs(10)))
        .applied_index_at_least(Some(response.log_id.index), "the write is applied")
        .await
        .unwrap();
    let mut replies = response.data.0;
    assert_eq!(replies.len(), 1, "one reply per command");
    replies.remove(0)
}

fn bid(auction: &str, n: i64) -> Command {
    Command::Bid {
        auction_id: auction.into(),
        bid_id: format!("bid-{n}"),
        bidder_id: format!("bidder-{}", n % 3),
        idempotency_key: format!("key-{n}"),
        amount: Decimal::new(n, 0),
    }
}

async fn wait_for_purge(group: &Group) {
    let mut metrics = group.raft.metrics();
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if metrics.borrow_and_update().purged.is_some() {
                return;
            }
            metrics.changed().await.unwrap();
        }
    })
    .await;
    assert!(waited.is_ok(), "the log was never purged after snapshots");
}

/// Waits (bounded) until only `store` keeps the database open: openraft's state machine
/// worker and the log flusher let go shortly after the group stopped, and sled releases the
/// dir's lock only with the last handle (reopening at once failed now and then).
async fn await_released(store: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.handles_elsewhere() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} handles still hold the database",
            store.handles_elsewhere()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compacted_group_restarts_to_identical_state() {
    let dir = tempfile::tempdir().unwrap();
    let (store, group) = open(dir.path()).await;
    lead_alone(&group).await;

    write(&group, START_MS + 1, create("a")).await;
    let mut accepted = 0;
    for n in 1..=150 {
        if let Reply::Bid { decision, .. } = write(&group, START_MS + 10 + n, bid("a", n)).await {
            accepted += u32::from(decision.status == BidStatus::Accepted);
        }
    }
    assert_eq!(accepted, 150, "every bid outbids the previous one");
    wait_for_purge(&group).await;
    let digest_before = group.state.digest().unwrap();
    let applied_before = group.raft.metrics().borrow().last_applied;
    group.raft.shutdown().await.unwrap();
    drop(group);
    await_released(&store).await;
    drop(store);

    let (_store, group) = open(dir.path()).await;
    let mut metrics = group.raft.metrics();
    tokio::time::timeout(Duration::from_secs(20), async {
        while metrics.borrow_and_update().last_applied < applied_before {
            metrics.changed().await.unwrap();
        }
    })
    .await
    .expect("restarted group re-applies to where it was");
    assert_eq!(group.state.digest().unwrap(), digest_before);
    let auction = group.state.auction("a").unwrap().unwrap();
    assert_eq!(auction.bid_count, 150);
    assert_eq!(auction.current_price, Decimal::new(150, 0));
    group.raft.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_byte_identical_state() {
    let source_dir = tempfile::tempdir().unwrap();
    let (_source_store, group) = open(source_dir.path()).await;
    lead_alone(&group).await;
    for auction in ["x", "y", "z"] {
        write(&group, START_MS + 1, create(auction)).await;
        for n in 1..=5 {
            write(&group, START_MS + 100 + n, bid(auction, n)).await;
        }
    }
    group.raft.trigger().snapshot().await.unwrap();
    let mut metrics = group.raft.metrics();
    tokio::time::timeout(Duration::from_secs(20), async {
        while metrics.borrow_and_update().snapshot.is_none() {
            metrics.changed().await.unwrap();
        }
    })
    .await
    .expect("snapshot built");
    let snapshot = group
        .raft
        .get_snapshot()
        .await
        .unwrap()
        .expect("a snapshot exists");
    let source_digest = group.state.digest().unwrap();
    let meta = snapshot.meta.clone();
    // What a follower is sent is the compressed copy, smaller than its records unpacked.
    let sent = snapshot.snapshot.into_bytes().await.unwrap();
    assert_eq!(sent[0], gavel_storage::SNAPSHOT_FORMAT);
    let plain_len = gavel_storage::SnapshotBlob::from_bytes(&sent)
        .unwrap()
        .plain_len()
        .unwrap();
    assert!(
        (sent.len() as u64) < plain_len,
        "{} bytes sent for {plain_len} of state",
        sent.len()
    );

    let target_dir = tempfile::tempdir().unwrap();
    let (_target_store, target_state, mut target) = bare_state_machine(target_dir.path());
    // A copy damaged on its way is refused (its frame's checksum), and changes nothing.
    let empty_digest = target_state.digest().unwrap();
    let mut damaged = sent.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x5a;
    let refused = target
        .install_snapshot(&meta, Box::new(SnapshotData::ready(damaged)))
        .await;
    assert!(refused.is_err(), "a damaged snapshot was installed");
    assert_eq!(target_state.digest().unwrap(), empty_digest);
    target
        .install_snapshot(&meta, Box::new(SnapshotData::ready(sent.clone())))
        .await
        .unwrap();
    assert_eq!(target_state.digest().unwrap(), source_digest);
    assert_eq!(
        target_state.auction("y").unwrap(),
        group.state.auction("y").unwrap()
    );

    // A snapshot point taken on the installed state is the same point.
    let rebuilt = target
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    assert_eq!(rebuilt.meta.last_log_id, meta.last_log_id);

    // The packed copy was stored: asked again with nothing new, the group sends the same
    // bytes. Once a later snapshot point passes it (the log behind that point may be gone),
    // a new copy is packed, of the state as it is then.
    let again = group.raft.get_snapshot().await.unwrap().unwrap();
    assert_eq!(again.meta, meta);
    assert_eq!(again.snapshot.into_bytes().await.unwrap(), sent);
    write(&group, START_MS + 200, bid("x", 6)).await;
    let applied = group.raft.metrics().borrow().last_applied.unwrap().index;
    let later = snapshot_at_least(&group, applied).await;
    assert_eq!(later.meta.last_log_id.unwrap().index, applied);
    let later_bytes = later.snapshot.into_bytes().await.unwrap();
    assert_ne!(later_bytes, sent);
    let later_target_dir = tempfile::tempdir().unwrap();
    let (_later_store, later_state, mut later_target) = bare_state_machine(later_target_dir.path());
    later_target
        .install_snapshot(&later.meta, Box::new(SnapshotData::ready(later_bytes)))
        .await
        .unwrap();
    assert_eq!(later_state.digest().unwrap(), group.state.digest().unwrap());
    group.raft.shutdown().await.unwrap();
}

/// Triggers a snapshot on `group` and waits until it covers at least `index`.
async fn snapshot_at_least(group: &Group, index: u64) -> Snapshot {
    group.raft.trigger().snapshot().await.unwrap();
    let mut metrics = group.raft.metrics();
    tokio::time::timeout(Duration::from_secs(20), async {
        while metrics
            .borrow_and_update()
            .snapshot
            .is_none_or(|id| id.index < index)
        {
            metrics.changed().await.unwrap();
        }
    })
    .await
    .expect("snapshot built");
    let snapshot = group
        .raft
        .get_snapshot()
        .await
        .unwrap()
        .expect("a snapshot exists");
    let bytes = snapshot.snapshot.into_bytes().await.unwrap();
    Snapshot {
        meta: snapshot.meta,
        snapshot: Box::new(SnapshotData::ready(bytes)),
    }
}

/// A state machine of its own on an empty store in `dir`, outside any Raft group.
fn bare_state_machine(dir: &Path) -> (Store, StateTree, StateMachine) {
    let store = Store::open(dir, &StoreConfig::default()).unwrap();
    let state = store.state(GROUP).unwrap();
    let machine = StateMachine::new(
        GROUP,
        store.clone(),
        state.clone(),
        Arc::new(GroupObserver::default()),
    );
    (store, state, machine)
}

/// Applies `command` to a bare state machine as the entry after `after`.
async fn apply_after(target: &mut StateMachine, after: LogId, stamp_ms: i64, command: Command) {
    let entry = Entry {
        log_id: LogId::new(after.leader_id, after.index + 1),
        payload: EntryPayload::Normal(Proposal {
            stamp_ms,
            commands: vec![command].into(),
        }),
    };
    target.apply(vec![entry]).await.unwrap();
}

// A copy is packed after `get_current_snapshot` returns, outside the state machine task, so an
// install can complete while a copy (begun earlier) is still to be packed. The late copy must
// not replace the newer installed snapshot: a lagging follower would then be sent a stale one.
// A copy whose state an install replaced fails, and one packed before the install is not saved
// over it (`save_snapshot_if_newer`, tested in the storage crate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_copy_never_replaces_a_newer_installed_snapshot() {
    let source_dir = tempfile::tempdir().unwrap();
    let (_source_store, source) = open(source_dir.path()).await;
    lead_alone(&source).await;
    write(&source, START_MS + 1, create("a")).await;
    let applied = source.raft.metrics().borrow().last_applied.unwrap().index;
    let older = snapshot_at_least(&source, applied).await;
    for n in 1..=5 {
        write(&source, START_MS + 10 + n, bid("a", n)).await;
    }
    let applied = source.raft.metrics().borrow().last_applied.unwrap().index;
    let newer = snapshot_at_least(&source, applied).await;
    assert!(older.meta.last_log_id < newer.meta.last_log_id);

    let target_dir = tempfile::tempdir().unwrap();
    let (_target_store, _, mut target) = bare_state_machine(target_dir.path());
    target
        .install_snapshot(&older.meta, older.snapshot)
        .await
        .unwrap();
    // A snapshot point past the installed copy, so that the stored copy no longer serves:
    // the copy begins here, at the older state; it is packed only after the install.
    apply_after(
        &mut target,
        older.meta.last_log_id.unwrap(),
        START_MS + 5,
        bid("a", 1),
    )
    .await;
    target
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let late_copy = target
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("the state is copied");
    assert!(late_copy.meta.last_log_id > older.meta.last_log_id);
    assert!(late_copy.meta.last_log_id < newer.meta.last_log_id);
    let newer_meta = newer.meta.clone();
    target
        .install_snapshot(&newer.meta, newer.snapshot)
        .await
        .unwrap();
    let packed = late_copy.snapshot.into_bytes().await;
    assert!(packed.is_err(), "a copy of a replaced state was packed");

    let stored = target
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("a snapshot is stored");
    assert_eq!(
        stored.meta, newer_meta,
        "the late build of an older state replaced the newer installed snapshot"
    );
    source.raft.shutdown().await.unwrap();
}

/// A batch entry decides each of its commands exactly as if each were alone in its own entry
/// with the same stamp: same replies, in order (accepted, outbid, duplicate key, too low).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_decides_each_command_as_if_alone() {
    let commands = vec![
        create("batch"),
        bid("batch", 5),
        bid("batch", 7),
        bid("batch", 7),
        bid("batch", 6),
        bid("batch", 9),
    ];
    let stamp_ms = START_MS + 10;

    let alone_dir = tempfile::tempdir().unwrap();
    let (_alone_store, alone) = open(alone_dir.path()).await;
    lead_alone(&alone).await;
    let mut one_by_one = Vec::new();
    for command in &commands {
        one_by_one.push(write(&alone, stamp_ms, command.clone()).await);
    }

    let batch_dir = tempfile::tempdir().unwrap();
    let (_batch_store, batched) = open(batch_dir.path()).await;
    lead_alone(&batched).await;
    let proposal = Proposal {
        stamp_ms,
        commands: commands.clone().into(),
    };
    let replies = batched.raft.client_write(proposal).await.unwrap().data.0;

    assert_eq!(replies.len(), commands.len(), "one reply per command");
    assert_eq!(replies, one_by_one);
    alone.raft.shutdown().await.unwrap();
    batched.raft.shutdown().await.unwrap();
}

/// A group restored offline from another group's snapshot (`restore_group`, as
/// `gavel snapshot restore` does) starts initialized with the new members, its state and its
/// stored snapshot at the restored log id, campaigns, and goes on deciding from that state: its
/// first entries order after the restored one although the source's term was higher.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_group_starts_from_the_copy_with_new_members() {
    let source_dir = tempfile::tempdir().unwrap();
    let (_source_store, source) = open(source_dir.path()).await;
    lead_alone(&source).await;
    write(&source, START_MS + 1, create("a")).await;
    for n in 1..=4 {
        write(&source, START_MS + 10 + n, bid("a", n)).await;
    }
    let applied = source.raft.metrics().borrow().last_applied.unwrap();
    assert!(applied.leader_id.term >= 1);
    let snapshot = snapshot_at_least(&source, applied.index).await;
    source.raft.shutdown().await.unwrap();
    let bytes = snapshot.snapshot.into_bytes().await.unwrap();
    let blob = gavel_storage::SnapshotBlob::from_bytes(&bytes).unwrap();

    let target_dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(target_dir.path(), &StoreConfig::default()).unwrap();
        let members = BTreeMap::from([(1, GavelNode::default())]);
        let log_id = gavel_raft::restore_group(&store, GROUP, blob, applied.index, &members)
            .expect("restore into an empty store");
        assert_eq!(log_id, gavel_raft::restored_log_id(applied.index));
        store.flush().await.unwrap();
    }
    let (_store, group) = open(target_dir.path()).await;
    assert!(group.raft.is_initialized().await.unwrap());
    group
        .raft
        .wait(Some(Duration::from_secs(10)))
        .state(openraft::ServerState::Leader, "the restored member leads")
        .await
        .unwrap();
    let metrics = group.raft.metrics().borrow().clone();
    assert_eq!(
        metrics.snapshot,
        Some(gavel_raft::restored_log_id(applied.index))
    );
    assert_eq!(
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .collect::<Vec<_>>(),
        vec![1]
    );
    let auction = group.state.auction("a").unwrap().unwrap();
    assert_eq!(auction.current_price, Decimal::new(4, 0));
    let Reply::Bid { decision, .. } = write(&group, START_MS + 100, bid("a", 9)).await else {
        panic!("a bid answers with a decision");
    };
    assert_eq!(decision.status, BidStatus::Accepted);
    assert_eq!(
        decision.seq, 5,
        "the decision log continues where the copy ended"
    );
    let last = group.raft.metrics().borrow().last_applied.unwrap();
    assert!(last.index > applied.index && last.leader_id.term >= 1);
    group.raft.shutdown().await.unwrap();
}

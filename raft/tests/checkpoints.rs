//! Consistency checkpoints through real state machines on sled: replicas that apply the same
//! entries, in whatever apply calls, a restart or a snapshot between them, digest their states
//! at the same entries and find the same digests; a replica whose state differs finds another.

use std::sync::Arc;
use std::time::Duration;

use gavel_raft::{
    CheckpointDigest, CheckpointRule, Entry, GroupObserver, LogId, NodeId, Proposal, StateMachine,
};
use gavel_rules::{Command, Decimal};
use gavel_storage::{StateTree, Store, StoreConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};

mod fixtures;
use fixtures::{create, START_MS};

const GROUP: u32 = 2;
const INTERVAL_MS: u64 = 1_000;
/// Entries of the test's log; a stamp 150 ms apart each, so a checkpoint every 6 or 7 entries.
const ENTRIES: u64 = 60;

fn bid(n: u64) -> Command {
    Command::Bid {
        auction_id: "lot".into(),
        bid_id: format!("bid-{n}"),
        bidder_id: format!("bidder-{}", n % 5),
        idempotency_key: format!("key-{n}"),
        amount: Decimal::new(n as i64 + 1, 0),
    }
}

fn stamp(index: u64) -> i64 {
    START_MS + 150 * index as i64
}

fn entry(index: u64) -> Entry {
    let leader: NodeId = 1;
    let commands = if index == 1 {
        vec![create("lot")]
    } else {
        vec![bid(index), bid(index + 1000)]
    };
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, leader), index),
        payload: EntryPayload::Normal(Proposal {
            stamp_ms: stamp(index),
            commands: commands.into(),
        }),
    }
}

struct Replica {
    machine: StateMachine,
    observer: Arc<GroupObserver>,
    /// The machine's own state (what its commits left unwritten included).
    state: StateTree,
}

fn open(dir: &std::path::Path) -> Replica {
    let store = Store::open(dir, &StoreConfig::default()).unwrap();
    let state = store.state(GROUP).unwrap();
    let observer = Arc::new(GroupObserver::default());
    let machine = StateMachine::new(GROUP, store, state.clone(), observer.clone())
        .with_checkpoints(CheckpointRule::new(INTERVAL_MS, GROUP));
    Replica {
        machine,
        observer,
        state,
    }
}

/// The replica opened again after a crash, and the entry it applies next (as openraft would
/// apply again what its state does not hold: commits may leave decisions unwritten).
async fn reopen_after_crash(replica: Replica, dir: &std::path::Path) -> (Replica, u64) {
    drop(replica);
    let mut replica = open(dir);
    let (applied, _) = replica.machine.applied_state().await.unwrap();
    (replica, applied.map_or(1, |id| id.index + 1))
}

/// Applies entries `from..=to` in calls of `per_call` entries, each once the replica's last
/// checkpoint is read (one it applies meanwhile would be skipped, as a replica catching up
/// skips them; here every replica must take the same ones).
async fn apply(replica: &mut Replica, from: u64, to: u64, per_call: usize) {
    let entries: Vec<Entry> = (from..=to).map(entry).collect();
    for call in entries.chunks(per_call) {
        while replica.observer.checkpoints.reading() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        replica.machine.apply(call.to_vec()).await.unwrap();
    }
}

/// The checkpoints `replica` digested among `indexes`, waiting for the digests being read.
async fn digests(replica: &Replica, applied: u64) -> Vec<(u64, u64)> {
    let mut found = Vec::new();
    for index in 1..=applied {
        for _ in 0..500 {
            match replica.observer.checkpoints.digest_at(index, applied) {
                CheckpointDigest::Digest(digest) => {
                    found.push((index, digest));
                    break;
                }
                CheckpointDigest::Pending => tokio::time::sleep(Duration::from_millis(10)).await,
                CheckpointDigest::Unknown => break,
            }
        }
    }
    found
}

#[tokio::test]
async fn replicas_digest_the_same_entries_alike_however_they_apply_them() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let mut first = open(one.path());
    let mut second = open(two.path());
    apply(&mut first, 1, ENTRIES, 1).await;
    // The second replica applies in bigger calls (no two checkpoints in one), and restarts
    // halfway.
    apply(&mut second, 1, 29, 5).await;
    let (mut second, next) = reopen_after_crash(second, two.path()).await;
    assert!(next <= 30);
    apply(&mut second, next, ENTRIES, 6).await;

    // One that catches up in one call reads one checkpoint's digest at a time: it skips those
    // it applies meanwhile.
    let four = tempfile::tempdir().unwrap();
    let mut catching_up = open(four.path());
    apply(&mut catching_up, 1, ENTRIES, ENTRIES as usize).await;

    let first_digests = digests(&first, ENTRIES).await;
    let kept_by_second = digests(&second, ENTRIES).await;
    let taken_catching_up = digests(&catching_up, ENTRIES).await;
    let rule = CheckpointRule::new(INTERVAL_MS, GROUP);
    let expected: Vec<u64> = (2..=ENTRIES)
        .filter(|&index| rule.is_checkpoint(stamp(index - 1), stamp(index)))
        .collect();
    assert_eq!(
        taken_catching_up
            .iter()
            .map(|(index, _)| *index)
            .collect::<Vec<_>>(),
        vec![expected[0]],
        "only the first of the call's checkpoints"
    );
    assert_eq!(first_digests, kept_by_second, "same entries, same digests");
    let indexes: Vec<u64> = first_digests.iter().map(|(index, _)| *index).collect();
    assert_eq!(
        indexes,
        expected[expected.len() - 4..],
        "the entries that move the clock into another second (shifted for the group), the \
         last 4 kept"
    );
    let distinct: std::collections::BTreeSet<u64> =
        first_digests.iter().map(|(_, digest)| *digest).collect();
    assert_eq!(distinct.len(), indexes.len(), "each checkpoint's own state");
    assert_eq!(
        first.observer.checkpoints.latest(),
        first_digests.last().copied()
    );
    // A checkpoint's digest is the whole state's at that entry, as a digest read then says.
    let applied_to_last = *indexes.last().unwrap();
    let three = tempfile::tempdir().unwrap();
    let mut third = open(three.path());
    apply(&mut third, 1, applied_to_last, 5).await;
    assert_eq!(
        third.state.digest().unwrap(),
        first_digests.last().unwrap().1,
        "the digest of the state at the checkpoint's entry"
    );
}

#[tokio::test]
async fn a_replica_whose_state_differs_digests_differently() {
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    let mut healthy = open(one.path());
    let mut damaged = open(two.path());
    apply(&mut healthy, 1, 20, 4).await;
    apply(&mut damaged, 1, 20, 4).await;
    // The replica stops; a decision the log never held is written under its state, as a
    // damaged disk could, and the applied log id is left as it was.
    digests(&damaged, 20).await;
    let applied_before = damaged.state.meta("applied").unwrap();
    damaged.state.write_unwritten().unwrap();
    drop(damaged);
    {
        let store = Store::open(two.path(), &StoreConfig::default()).unwrap();
        let state = store.state(GROUP).unwrap();
        let mut writer = state.writer().unwrap();
        // At the group's clock, which it leaves as it was.
        writer.apply(START_MS + 3_000, &bid(9_999)).unwrap();
        writer.commit().unwrap();
        state.write_unwritten().unwrap();
        assert_eq!(state.meta("applied").unwrap(), applied_before);
    }
    let (mut damaged, next) = reopen_after_crash(open(two.path()), two.path()).await;
    assert_eq!(next, 21);
    apply(&mut healthy, 21, ENTRIES, 4).await;
    apply(&mut damaged, 21, ENTRIES, 4).await;
    let healthy_digests = digests(&healthy, ENTRIES).await;
    let damaged_digests = digests(&damaged, ENTRIES).await;
    let healthy_indexes: Vec<u64> = healthy_digests.iter().map(|(index, _)| *index).collect();
    let damaged_indexes: Vec<u64> = damaged_digests.iter().map(|(index, _)| *index).collect();
    assert_eq!(healthy_indexes, damaged_indexes, "the same checkpoints");
    for ((index, good), (_, bad)) in healthy_digests.iter().zip(&damaged_digests) {
        assert_ne!(good, bad, "checkpoint {index} shows the difference");
    }
}

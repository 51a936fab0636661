//! What the state machine publishes for live fan-out, through a real state machine on sled: one
//! channel message per apply call, each changed auction once with all its changes in order, and
//! nothing about auctions that no viewer on the node watches.

use std::sync::Arc;

use gavel_raft::{
    AppliedChannel, Entry, GroupObserver, LogId, NodeId, Proposal, StateMachine, Watched,
};
use gavel_rules::{ChangeKind, Command, Decimal};
use gavel_storage::{Store, StoreConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload};
use tokio::sync::broadcast::error::TryRecvError;

mod fixtures;
use fixtures::{create, START_MS};

const GROUP: u32 = 0;

fn bid(auction: &str, n: i64) -> Command {
    Command::Bid {
        auction_id: auction.into(),
        bid_id: format!("bid-{auction}-{n}"),
        bidder_id: format!("bidder-{n}"),
        idempotency_key: format!("key-{n}"),
        amount: Decimal::new(n, 0),
    }
}

/// A state machine on a fresh store, and the channel it publishes into.
fn open(dir: &std::path::Path) -> (StateMachine, AppliedChannel) {
    let store = Store::open(dir, &StoreConfig::default()).unwrap();
    let state = store.state(GROUP).unwrap();
    let applied = AppliedChannel::default();
    let observer = Arc::new(GroupObserver::new(applied.clone()));
    (StateMachine::new(GROUP, store, state, observer), applied)
}

fn entry(index: u64, commands: Vec<Command>) -> Entry {
    let leader: NodeId = 1;
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, leader), index),
        payload: EntryPayload::Normal(Proposal {
            stamp_ms: START_MS + index as i64,
            commands: commands.into(),
        }),
    }
}

/// Applies `commands` as entry `index`, alone in its apply call.
async fn apply_alone(machine: &mut StateMachine, index: u64, commands: Vec<Command>) {
    machine.apply(vec![entry(index, commands)]).await.unwrap();
}

#[tokio::test]
async fn one_message_per_apply_for_watched_auctions_only() {
    let dir = tempfile::tempdir().unwrap();
    let (mut machine, applied) = open(dir.path());
    let mut events = applied.events.subscribe();
    applied.watched.watch("hot");

    // Two entries in one apply call, bids on a watched and an unwatched auction interleaved.
    let first = entry(1, vec![create("hot"), create("quiet"), bid("hot", 2)]);
    let second = entry(2, vec![bid("quiet", 2), bid("hot", 3), bid("hot", 4)]);
    machine.apply(vec![first, second]).await.unwrap();

    let batch = events
        .try_recv()
        .expect("the apply call published its batch");
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);
    assert_eq!(batch.len(), 1, "only the watched auction: {batch:?}");
    let hot = &batch[0];
    assert_eq!(hot.auction.id, "hot");
    assert_eq!(
        hot.auction.current_price,
        Decimal::new(4, 0),
        "its newest state"
    );
    let kinds: Vec<ChangeKind> = hot.changes.iter().map(|c| c.kind).collect();
    assert!(
        kinds.iter().filter(|k| **k == ChangeKind::Bid).count() == 3,
        "every change of the auction, in order: {kinds:?}"
    );

    // Nobody watches `quiet`: a batch of its changes only publishes nothing.
    apply_alone(&mut machine, 3, vec![bid("quiet", 5)]).await;
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);

    // Once its last viewer left, `hot` is not published either.
    applied.watched.unwatch("hot");
    apply_alone(&mut machine, 4, vec![bid("hot", 6)]).await;
    assert_eq!(events.try_recv().unwrap_err(), TryRecvError::Empty);

    // Watched again (its state read by the new viewer), its next change is published.
    applied.watched.watch("hot");
    apply_alone(&mut machine, 5, vec![bid("hot", 7)]).await;
    let batch = events.try_recv().expect("published again");
    assert_eq!(batch[0].auction.current_price, Decimal::new(7, 0));
}

#[test]
fn watch_marks_count_per_auction_and_never_go_below_zero() {
    let watched = Watched::default();
    assert!(!watched.may_be_watched("a"));
    watched.watch("a");
    watched.watch("a");
    watched.unwatch("a");
    assert!(watched.may_be_watched("a"), "one watch is left");
    watched.unwatch("a");
    assert!(!watched.may_be_watched("a"));
    // An unwatch without its watch leaves the mark at zero, so a later watch still counts.
    watched.unwatch("a");
    watched.watch("a");
    assert!(watched.may_be_watched("a"));
}

//! A replica whose state differs from the other replicas' while its Raft log agrees (what a
//! disk that damages synced data can leave, and sled may read back without a word): the
//! replicas compare their states at consistency checkpoints, the differing node stops with an
//! error that says so, and its next start brings the group's state back from a peer. The
//! healthy nodes never stop, and every acknowledged bid is on every node at the end.

use std::path::Path;
use std::time::Duration;

use gavel_rules::{Command, CreateAuction};
use gavel_storage::{Store, StoreConfig};

use crate::common::cluster::*;
use crate::common::*;

/// Checkpoints every second of a group's time, so the test sees one within seconds.
const CHECK_INTERVAL_MS: u64 = 1_000;
/// How long one bid may take to be decided, retries across the outage included.
const BID_WITHIN: Duration = Duration::from_secs(60);
/// The group whose state the test makes differ on one node.
const DAMAGED_GROUP: u32 = 1;

/// Writes an auction that no log entry created into the group's state in `db_dir` (the node is
/// down), at the group's own clock and leaving its applied log id as it was: the state then
/// differs from the other replicas' as damage under the storage engine could make it.
async fn write_under_the_state(db_dir: &Path, group: u32, auction_id: &str) {
    let store =
        Store::open(db_dir, &StoreConfig::default()).expect("open the stopped node's store");
    let state = store.state(group).expect("the group's state");
    let applied = state.meta("applied").expect("read the applied log id");
    let clock = state.last_stamp().expect("the group's clock");
    let ghost = Command::Create {
        auction_id: auction_id.into(),
        creator_id: "nobody".into(),
        idempotency_key: None,
        request: CreateAuction {
            post_id: "ghost-post".into(),
            start_at_ms: clock + 60_000,
            end_at_ms: clock + 3_600_000,
            start_price: rust_decimal::Decimal::ONE,
            min_increment: rust_decimal::Decimal::ONE,
            anti_sniping_seconds: 0,
        },
    };
    let mut writer = state.writer().expect("a writer");
    writer
        .apply(clock, &ghost)
        .expect("apply the ghost command");
    writer.commit().expect("commit it");
    state.write_unwritten().expect("write it to the tree");
    assert!(
        state.auction(auction_id).expect("read it back").is_some(),
        "the state now holds an auction no entry created"
    );
    assert_eq!(
        state.meta("applied").expect("read the applied log id"),
        applied,
        "the applied log id stays"
    );
    drop(state);
    store.flush().await.expect("flush the store");
}

/// An auction id that routes to `group`.
fn auction_id_in(group: u32) -> String {
    (0..)
        .map(|i| format!("ghost-{i}"))
        .find(|id| gavel_cluster::group_of(id, CLUSTER_GROUPS) == group)
        .expect("some id routes to every group")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_whose_state_differs_stops_and_gets_the_groups_state_back() {
    let seed = test_seed();
    let check_args = vec![
        "--consistency-check-interval-ms".to_string(),
        CHECK_INTERVAL_MS.to_string(),
    ];
    let mut cluster = Cluster::start(ClusterConfig {
        node_args: (1..=3).map(|id| (id, check_args.clone())).collect(),
        ..ClusterConfig::default()
    })
    .await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    let ledger = Ledger::new();
    // Through nodes 1 and 2 only, so that bidding goes on while node 3 is down; on every
    // group, so that every group's clock moves past checkpoints.
    let bidders = Bidders::spawn(
        BiddersConfig {
            round: "r0",
            bidders: 3,
            seed,
            via: cluster.apis(&ids[..2]),
            auctions: auctions.clone(),
            bid_within: BID_WITHIN,
        },
        &ledger,
    );
    await_decisions(&ledger, 200).await;
    let damaged = ids[2];
    cluster.terminate(damaged, Duration::from_secs(30)).await;
    let ghost = auction_id_in(DAMAGED_GROUP);
    write_under_the_state(
        &cluster.member(damaged).data_dir().join("db"),
        DAMAGED_GROUP,
        &ghost,
    )
    .await;

    cluster.spawn_again(damaged);
    let status = cluster.await_exit(damaged, Duration::from_secs(60)).await;
    let log = cluster.member(damaged).log();
    assert_eq!(
        status.code(),
        Some(1),
        "a differing replica exits 1:\n{log}"
    );
    for said in [
        "this replica's state differs from the majority's",
        &format!("group {DAMAGED_GROUP}'s state at log index"),
        "start it again and it brings group",
    ] {
        assert!(
            log.contains(said),
            "node {damaged}'s log says {said:?}:\n{log}"
        );
    }

    cluster.restart(&[damaged]).await;
    let log = cluster.member(damaged).log();
    for line in log.lines().filter(|line| {
        line.contains("differ") || line.contains("brought back") || line.contains("exited")
    }) {
        eprintln!("node {damaged}: {line}");
    }
    assert!(
        log.contains("found to differ from their peers'"),
        "the start knows the group differed:\n{log}"
    );
    assert_eq!(
        log.matches("group's state brought back").count(),
        1,
        "only the differing group is replaced:\n{log}"
    );
    // Checks go on after it: the node stays up through more checkpoints.
    await_decisions(&ledger, ledger.len() + 300).await;
    let placed = bidders.stop().await;
    eprintln!("{placed} bids decided, {} accepted", ledger.accepted());
    cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    cluster.assert_ledger(&ids, &auctions, &ledger).await;
    for id in ids {
        let log = cluster.member(id).log();
        assert!(
            cluster.member(id).is_running(),
            "node {id} is up at the end:\n{log}"
        );
        let stops = log.matches("this replica's state differs").count();
        let expected = usize::from(id == damaged);
        assert_eq!(stops, expected, "node {id} stopped {stops} times:\n{log}");
    }
    let auction = cluster
        .api(damaged)
        .get(&format!("/auctions/{ghost}?consistency=local"), &creator)
        .await;
    assert_eq!(auction.status, 404, "the auction no entry created is gone");
}

#[test]
fn a_check_interval_out_of_range_is_refused_before_the_node_starts() {
    assert_serve_refused(vec![
        (
            vec!["--consistency-check-interval-ms", "500"],
            vec![],
            "give 0 (no checks) or 1000",
        ),
        (
            vec!["--consistency-check-interval-ms", "1.5"],
            vec![],
            "not a whole number of milliseconds",
        ),
        (
            vec![],
            vec![("GAVEL_CONSISTENCY_CHECK_INTERVAL_MS", "ten")],
            "not a whole number of milliseconds",
        ),
    ]);
}

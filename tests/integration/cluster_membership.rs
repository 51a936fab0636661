//! Membership changes on a cluster of real processes, driven by the `gavel cluster` CLI: a node
//! started with `--join` is added (learner, caught up, promoted to voter) and catches up by log;
//! after enough writes that every group snapshotted and purged its log, another joins as a voter
//! and a third as a fan-out-only learner (`--learner`), both caught up by snapshot; then a voter
//! that leads a group and the learner are removed. At every step every member shows the new
//! membership, the replicas converge to byte-identical state, the new nodes serve the right data
//! from their own replica, and no acknowledged bid is lost.

use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

/// A small snapshot interval, so that a few hundred bids make every group purge its log.
const SNAPSHOT_AFTER_ENTRIES: u64 = 50;
/// Bids written before the learner joins: well over the snapshot interval in every group.
const BIDS_BEFORE_SNAPSHOT_JOIN: usize = 360;
const BID_WITHIN: Duration = Duration::from_secs(30);
/// How long every member may take to snapshot every group once the writes are in.
const SNAPSHOTS_TAKEN_WITHIN: Duration = Duration::from_secs(20);
/// How long after a committed membership change every member may take to show it.
const MEMBERSHIP_SEEN_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_by_log_and_by_snapshot_and_leave() {
    let seed = test_seed();
    let mut cluster = Cluster::start(ClusterConfig {
        snapshot_after_entries: Some(SNAPSHOT_AFTER_ENTRIES),
        ..ClusterConfig::default()
    })
    .await;
    let initial = cluster.ids();
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(initial[0], &creator).await;
    let ledger = Ledger::new();
    write_bids(&cluster, &initial, &auctions, &ledger, (seed, "r0"), 12).await;

    // Node 4 starts empty with --join: alive, not ready, unknown to the cluster.
    let joiner = cluster.start_joiner(4).await;
    let (client4, peer4) = (joiner.client_addr(), joiner.peer_addr());
    let readyz = cluster.api(4).get_anonymous("/readyz").await;
    assert_eq!(
        readyz.status,
        503,
        "a --join node is not ready before it is added: {}",
        readyz.text()
    );
    let status = cluster.status(1).await;
    assert!(
        status["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["id"] != 4),
        "node 4 is not a member yet: {status}"
    );

    let added = cluster
        .cli_ok(
            1,
            &[
                "add",
                "--id",
                "4",
                "--client-addr",
                &client4,
                "--peer-addr",
                &peer4,
            ],
        )
        .await;
    assert!(added.contains("added node 4"), "{added}");
    let members = [1, 2, 3, 4];
    cluster
        .await_members(&members, &members, &[], MEMBERSHIP_SEEN_WITHIN)
        .await;
    cluster.await_converged(4, &members, CONVERGE_TIMEOUT).await;
    await_ready(&cluster, 4).await;
    assert_local_state_equal(&cluster, 4, &auctions).await;

    // Enough writes through every node (node 4 included) that every group snapshots and
    // purges the log entries a new node would need.
    write_bids(
        &cluster,
        &members,
        &auctions,
        &ledger,
        (seed ^ 1, "r1"),
        BIDS_BEFORE_SNAPSHOT_JOIN,
    )
    .await;
    cluster.await_converged(1, &members, CONVERGE_TIMEOUT).await;
    await_snapshots_taken(&cluster, &members).await;

    // Node 5 joins as a voter and can only catch up by snapshot; node 6 then joins as a
    // fan-out-only learner (by snapshot as well) and must stay a learner.
    let voters5 = [1, 2, 3, 4, 5];
    join(&mut cluster, 5, 3, false).await;
    cluster
        .await_members(&voters5, &voters5, &[], MEMBERSHIP_SEEN_WITHIN)
        .await;
    cluster.await_converged(5, &voters5, CONVERGE_TIMEOUT).await;
    await_ready(&cluster, 5).await;
    assert_local_state_equal(&cluster, 5, &auctions).await;
    assert_caught_up_by_snapshot(&cluster, 5);

    join(&mut cluster, 6, 2, true).await;
    let all = [1, 2, 3, 4, 5, 6];
    cluster
        .await_members(&all, &voters5, &[6], MEMBERSHIP_SEEN_WITHIN)
        .await;
    cluster.await_converged(6, &all, CONVERGE_TIMEOUT).await;
    await_ready(&cluster, 6).await;
    assert_local_state_equal(&cluster, 6, &auctions).await;
    assert_caught_up_by_snapshot(&cluster, 6);
    // A learner cannot lead.
    cluster
        .api(1)
        .post(
            "/cluster/groups/0/transfer-leader",
            cluster.admin(),
            Some(&json!({ "to": 6 })),
            None,
        )
        .await
        .expect_problem(409);

    // Node 4 leaves while it leads a group (removing a leader is the delicate case); the
    // others, the learner included, go on taking writes.
    let led_by_4 = cluster
        .api(4)
        .post(
            "/cluster/groups/1/transfer-leader",
            cluster.admin(),
            Some(&json!({ "to": 4 })),
            None,
        )
        .await
        .expect_json(200)
        .json();
    assert_eq!(
        group_view(&led_by_4, 1)["leader"],
        4,
        "node 4 leads group 1 before it is removed: {led_by_4}"
    );
    let removed = cluster.cli_ok(2, &["remove", "--id", "4"]).await;
    assert!(removed.contains("removed node 4"), "{removed}");
    let voters = [1, 2, 3, 5];
    let remaining = [1, 2, 3, 5, 6];
    cluster
        .await_members(&remaining, &voters, &[6], MEMBERSHIP_SEEN_WITHIN)
        .await;
    write_bids(
        &cluster,
        &remaining,
        &auctions,
        &ledger,
        (seed ^ 2, "r2"),
        24,
    )
    .await;
    cluster
        .await_converged(1, &remaining, CONVERGE_TIMEOUT)
        .await;
    cluster.assert_ledger(&remaining, &auctions, &ledger).await;

    // The learner leaves as well.
    cluster.cli_ok(1, &["remove", "--id", "6"]).await;
    cluster
        .await_members(&voters, &voters, &[], MEMBERSHIP_SEEN_WITHIN)
        .await;
    write_bids(&cluster, &voters, &auctions, &ledger, (seed ^ 3, "r3"), 8).await;
    cluster.await_converged(1, &voters, CONVERGE_TIMEOUT).await;
    cluster.assert_ledger(&voters, &auctions, &ledger).await;
}

/// Starts node `id` with `--join` and adds it with `gavel cluster add` through node `via`
/// (as a learner when `learner`), which must exit 0 and say so.
async fn join(cluster: &mut Cluster, id: u64, via: u64, learner: bool) {
    let joiner = cluster.start_joiner(id).await;
    let (client, peer) = (joiner.client_addr(), joiner.peer_addr());
    let id_text = id.to_string();
    let mut args = vec![
        "add",
        "--id",
        &id_text,
        "--client-addr",
        &client,
        "--peer-addr",
        &peer,
    ];
    if learner {
        args.push("--learner");
    }
    let added = cluster.cli_ok(via, &args).await;
    let role = if learner { "learner" } else { "voter" };
    assert!(
        added.contains(&format!("added node {id} to every group as a {role}")),
        "{added}"
    );
}

/// Waits (bounded) until every member of `ids` has taken a snapshot of every group, so that no
/// group keeps the log entries a new node would need.
async fn await_snapshots_taken(cluster: &Cluster, ids: &[u64]) {
    poll_until(
        "a snapshot of every group taken by every member",
        SNAPSHOTS_TAKEN_WITHIN,
        || async {
            ids.iter()
                .all(|&id| {
                    let log = cluster.member(id).log();
                    (0..cluster.config.groups)
                        .all(|group| logged_for_group(&log, "took snapshot", group))
                })
                .then_some(())
        },
    )
    .await;
}

/// Node `id` joined after every group had purged the log entries it lacked, so it must have
/// installed a snapshot in every group (its log says so).
fn assert_caught_up_by_snapshot(cluster: &Cluster, id: u64) {
    let log = cluster.member(id).log();
    for group in 0..cluster.config.groups {
        assert!(
            logged_for_group(&log, "installed snapshot", group),
            "node {id} joined after group {group} purged its log, so it must have caught up by snapshot; its log:\n{log}"
        );
    }
}

/// `count` bids from three concurrent bidders through the nodes of `via`; `round` keeps their
/// idempotency keys apart from other rounds'.
async fn write_bids(
    cluster: &Cluster,
    via: &[u64],
    auctions: &[Value],
    ledger: &std::sync::Arc<Ledger>,
    (seed, round): (u64, &'static str),
    count: usize,
) {
    let target = ledger.len() + count;
    let mut bidders = Bidders::spawn(
        BiddersConfig {
            round,
            bidders: 3,
            seed,
            via: cluster.apis(via),
            auctions: auctions.to_vec(),
            bid_within: BID_WITHIN,
        },
        ledger,
    );
    bidders
        .until_decided(ledger, target, Duration::from_secs(60))
        .await;
    bidders.stop().await;
}

async fn await_ready(cluster: &Cluster, node: u64) {
    let api = cluster.api(node);
    poll_until(
        &format!("node {node} /readyz 200"),
        CONVERGE_TIMEOUT,
        || {
            let api = api.clone();
            async move { (api.get_anonymous("/readyz").await.status == 200).then_some(()) }
        },
    )
    .await;
}

/// `node` answers every auction and its history from its own replica (`consistency=local`)
/// exactly as node 1 answers them linearizably.
async fn assert_local_state_equal(cluster: &Cluster, node: u64, auctions: &[Value]) {
    let viewer = token("vic", &["viewer"]);
    let local = [("consistency", "local"), ("limit", "1000")];
    for auction in auctions {
        let id = auction["id"].as_str().expect("id");
        let expected = read_auction(&cluster.api(1), &viewer, id).await;
        let seen = cluster.api(node).get_auction_local(&viewer, id).await;
        assert_eq!(seen, expected, "node {node}'s local read of {id}");
        let path = format!("/auctions/{id}/bids");
        let expected = read_json(&cluster.api(1), &path, &viewer, &local[1..]).await;
        let seen = cluster
            .api(node)
            .get_query(&path, &viewer, &local)
            .await
            .expect_json(200)
            .json();
        assert_eq!(seen, expected, "node {node}'s local history of {id}");
    }
}

/// Whether a node's `log` has an `event` line for `group` (its `group=` field, whole).
fn logged_for_group(log: &str, event: &str, group: u32) -> bool {
    let field = format!("group={group}");
    log.lines()
        .any(|line| line.contains(event) && line.split_whitespace().any(|word| word == field))
}

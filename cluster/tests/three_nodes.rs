//! Three real `Node`s in one process, talking over the real peer transport on loopback:
//! bootstrap, forwarded writes, linearizable reads on followers, leader placement, leadership
//! transfer, and adding/removing a fourth node.

#![allow(clippy::result_large_err)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use gavel_cluster::{wall_clock_ms, BidFilter, Consistency, Node, NodeConfig};
use gavel_rules::{BidStatus, Command, CreateAuction, Decimal, Reply};

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

fn config(
    dir: &std::path::Path,
    id: u64,
    peer: &str,
    cluster: &[(u64, String)],
    join: bool,
) -> NodeConfig {
    NodeConfig {
        node_id: id,
        data_dir: dir.join(format!("n{id}")),
        groups: 4,
        client_addr: format!("127.0.0.1:{}", 18000 + id),
        peer_addr: peer.to_string(),
        peer_listen: peer.to_string(),
        initial_cluster: cluster.to_vec(),
        join,
        propose_timeout_ms: 5_000,
        snapshot_after_entries: 20_000,
        max_clock_offset_ms: 500,
        peer_tls: None,
        consistency_check_interval_ms: 1_000,
    }
}

async fn until<F: Fn() -> bool>(what: &str, limit: Duration, check: F) {
    let end = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn create(id: &str) -> Command {
    let now = wall_clock_ms();
    Command::Create {
        auction_id: id.into(),
        creator_id: "carol".into(),
        idempotency_key: None,
        request: CreateAuction {
            post_id: "p".into(),
            start_at_ms: now - 1_000,
            end_at_ms: now + 600_000,
            start_price: Decimal::ONE,
            min_increment: Decimal::ONE,
            anti_sniping_seconds: 0,
        },
    }
}

fn bid(auction: &str, bidder: &str, n: i64) -> Command {
    Command::Bid {
        auction_id: auction.into(),
        bid_id: format!("{bidder}-{n}"),
        bidder_id: bidder.into(),
        idempotency_key: format!("k-{bidder}-{n}"),
        amount: Decimal::new(n, 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_forward_and_rebalance() {
    let dir = tempfile::tempdir().unwrap();
    let peers: Vec<(u64, String)> = (1..=3).map(|id| (id, free_addr())).collect();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    for (id, peer) in &peers {
        nodes.push(
            Node::start(config(dir.path(), *id, peer, &peers, false))
                .await
                .unwrap(),
        );
    }
    until(
        "all groups ready on all nodes",
        Duration::from_secs(20),
        || nodes.iter().all(|n| n.readiness().is_ok()),
    )
    .await;

    // Writes through every node, reads on every node.
    nodes[2].propose(create("a")).await.unwrap();
    for (i, node) in nodes.iter().enumerate() {
        let auction = node.auction("a", Consistency::Linearizable).await.unwrap();
        assert!(auction.is_some(), "node {} sees the auction at once", i + 1);
    }
    for n in 1..=30 {
        let node = &nodes[n as usize % 3];
        let reply = node
            .propose(bid("a", &format!("b{}", n % 4), n))
            .await
            .unwrap();
        let Reply::Bid { decision, .. } = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(decision.status, BidStatus::Accepted);
    }
    for node in &nodes {
        let page = node
            .bids(
                "a",
                BidFilter {
                    accepted_only: true,
                    limit: 100,
                    after_seq: 0,
                },
                Consistency::Linearizable,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(page.bids.len(), 30);
    }

    // Leaders spread: no node leads every group once placement has run.
    let spread_by = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let status = nodes[0].cluster_status(false).await;
        let leaders: BTreeSet<Option<u64>> = status.groups.iter().map(|g| g.leader).collect();
        if leaders.len() >= 3 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < spread_by,
            "leaders never spread: {leaders:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Transfer leadership of group 0 to node 3.
    nodes[0].transfer_leader(0, 3).await.unwrap();

    // Add a fourth node, it catches up, then remove it.
    let peer4 = free_addr();
    let node4 = Node::start(config(dir.path(), 4, &peer4, &[], true))
        .await
        .unwrap();
    nodes[1]
        .add_node(4, "127.0.0.1:18004".into(), peer4.clone(), true)
        .await
        .unwrap();
    let auction = node4
        .auction("a", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auction.bid_count, 30);
    nodes[0].remove_node(4).await.unwrap();
    node4.shutdown().await;
    for node in &nodes {
        node.shutdown().await;
    }
}

/// The highest log index any replica of group 0 has, as `node` sees it.
async fn last_log_index(node: &Node) -> u64 {
    let status = node.cluster_status(false).await;
    status.groups[0]
        .replicas
        .iter()
        .map(|r| r.last_log_index)
        .max()
        .unwrap_or(0)
}

/// Forwarded writes in flight on each follower's connection to the leader, well past the peer
/// transport's per-connection budget for application requests (256).
const FORWARDED_WRITES_PER_FOLLOWER: usize = 400;

/// The peer transport must never stall itself: a forwarded write holds its slot on the
/// leader's reader until it is committed, and commit needs the AppendEntries answers that
/// arrive on those same connections. With more forwarded writes in flight than the reader has
/// slots, on both followers' connections, a reader that waited for a slot stopped reading those
/// answers, nothing committed, and every write ended as "unknown" after its whole propose
/// timeout. Now every write is answered well within that timeout, decided or "unavailable"
/// (never proposed), and none is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_write_spike_never_stalls_the_transport() {
    let dir = tempfile::tempdir().unwrap();
    let peers: Vec<(u64, String)> = (1..=3).map(|id| (id, free_addr())).collect();
    let mut nodes: Vec<Arc<Node>> = Vec::new();
    for (id, peer) in &peers {
        let mut config = config(dir.path(), *id, peer, &peers, false);
        config.groups = 1;
        nodes.push(Node::start(config).await.unwrap());
    }
    until(
        "the group ready on all nodes",
        Duration::from_secs(20),
        || nodes.iter().all(|n| n.readiness().is_ok()),
    )
    .await;
    let status = nodes[0].cluster_status(false).await;
    let leader = status.groups[0].leader.expect("a leader");
    let followers: Vec<Arc<Node>> = nodes
        .iter()
        .filter(|n| n.node_id() != leader)
        .cloned()
        .collect();
    for a in 0..8 {
        followers[a % 2]
            .propose(create(&format!("spike-{a}")))
            .await
            .unwrap();
    }

    let log_before = last_log_index(&nodes[0]).await;
    let started = tokio::time::Instant::now();
    let mut writes = tokio::task::JoinSet::new();
    for n in 0..2 * FORWARDED_WRITES_PER_FOLLOWER {
        let follower = followers[n % 2].clone();
        writes.spawn(async move {
            let auction = format!("spike-{}", n % 8);
            follower
                .propose(bid(&auction, &format!("b{n}"), n as i64 + 1))
                .await
        });
    }
    let (mut decided, mut unavailable) = (0, 0);
    while let Some(outcome) = writes.join_next().await {
        match outcome.unwrap() {
            Ok(_) => decided += 1,
            Err(gavel_cluster::ProposeError::Unavailable { .. }) => unavailable += 1,
            Err(e) => panic!("a forwarded write ended as {e:?} ({decided} decided so far)"),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("{decided} decided, {unavailable} answered unavailable, in {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(4),
        "{} forwarded writes took {elapsed:?}",
        2 * FORWARDED_WRITES_PER_FOLLOWER
    );
    // The leader takes on 2,048 writes per group at once (`WRITES_QUEUED_PER_GROUP_MAX`) and
    // sheds the rest with 503: more than the transport's 256 slots were decided.
    assert!(decided > 256, "{decided} decided, {unavailable} shed");
    // Every decided write is in the decision logs and no shed one is: shed means never proposed.
    let mut logged = 0;
    for a in 0..8 {
        let filter = BidFilter {
            accepted_only: false,
            limit: 1_000,
            after_seq: 0,
        };
        let page = nodes[0]
            .bids(&format!("spike-{a}"), filter, Consistency::Linearizable)
            .await
            .unwrap()
            .unwrap();
        logged += page.bids.len();
    }
    assert_eq!(
        logged, decided,
        "decision logs hold exactly the decided writes"
    );
    // The leader batches the writes that arrive while a proposal is in flight.
    let entries = last_log_index(&nodes[0]).await - log_before;
    eprintln!("{decided} decided writes in {entries} entries");
    assert!(
        entries < decided as u64,
        "{decided} writes took {entries} entries"
    );
    for node in &nodes {
        node.shutdown().await;
    }
}

//! Restarts of a three-node cluster of real processes while clients bid. The whole cluster dies
//! at once (SIGKILL of all three) and comes back on its data dirs: every acknowledged decision
//! must still be there, on every node, exactly once; bids whose outcome the crash left unknown
//! are decided exactly once when their clients retry with the same key. And a rolling restart
//! (SIGTERM, node by node) exits cleanly and loses nothing. The replicas converge after each.

use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

/// How long one bid may take to be decided, retries across the outage included.
const BID_WITHIN: Duration = Duration::from_secs(60);
/// How long a node may take to exit after SIGTERM (its in-flight requests get 10 s of grace).
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_every_node_loses_no_acknowledged_bid() {
    let seed = test_seed();
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    let ledger = Ledger::new();
    // The bidders keep going across the outage: a bid in flight at the crash is retried with
    // its key until the restarted cluster decides it.
    let bidders = Bidders::spawn(
        BiddersConfig {
            round: "r0",
            bidders: 3,
            seed,
            via: cluster.apis(&ids),
            auctions: auctions.clone(),
            bid_within: BID_WITHIN,
        },
        &ledger,
    );
    await_decisions(&ledger, 60).await;
    let before = ledger.len();
    for &id in &ids {
        cluster.kill9(id);
    }
    eprintln!("killed every node after {before} decisions");

    // What was acknowledged before the crash is on every node once it is back, before any
    // client writes again (the bidders are still retrying their in-flight bids).
    cluster.restart(&ids).await;
    let acknowledged = Ledger::new();
    for auction in &auctions {
        let id = auction["id"].as_str().expect("id");
        for decided in ledger.for_auction(id) {
            acknowledged.record(id, &decided.bidder, &decided.key, &decided.reply);
        }
    }
    assert_acknowledged_present(&cluster, &ids, &auctions, &acknowledged).await;

    await_decisions(&ledger, before + 30).await;
    let placed = bidders.stop().await;
    eprintln!(
        "{placed} bids decided, {} accepted, {} of them before the crash",
        ledger.accepted(),
        before
    );
    cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    cluster.assert_ledger(&ids, &auctions, &ledger).await;
}

/// A rolling restart: each node in turn gets SIGTERM, must exit cleanly (status 0) within the
/// shutdown budget, and comes back on its data dir, while clients bid through the other nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_with_sigterm_loses_nothing() {
    let seed = test_seed();
    let mut cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    let ledger = Ledger::new();
    for &node in &ids {
        let others: Vec<u64> = ids.iter().copied().filter(|&n| n != node).collect();
        let mut bidders = Bidders::spawn(
            BiddersConfig {
                round: ["r1", "r2", "r3"][(node - 1) as usize % 3],
                bidders: 2,
                seed: seed ^ node,
                via: cluster.apis(&others),
                auctions: auctions.clone(),
                bid_within: BID_WITHIN,
            },
            &ledger,
        );
        let decided = ledger.len();
        bidders
            .until_decided(&ledger, decided + 10, BID_WITHIN)
            .await;
        let stopping = std::time::Instant::now();
        let status = cluster.terminate(node, SHUTDOWN_WITHIN).await;
        eprintln!(
            "node {node} exited {:?} after SIGTERM: {status}",
            stopping.elapsed()
        );
        assert!(
            status.success(),
            "node {node} exited with {status} after SIGTERM"
        );
        bidders
            .until_decided(&ledger, decided + 20, BID_WITHIN)
            .await;
        cluster.restart(&[node]).await;
        bidders
            .until_decided(&ledger, decided + 30, BID_WITHIN)
            .await;
        bidders.stop().await;
        cluster.await_converged(node, &ids, CONVERGE_TIMEOUT).await;
    }
    cluster.assert_ledger(&ids, &auctions, &ledger).await;
}

/// Every decision of `acknowledged` is in the history of every node, exactly as acknowledged.
async fn assert_acknowledged_present(
    cluster: &Cluster,
    nodes: &[u64],
    auctions: &[Value],
    acknowledged: &Ledger,
) {
    let viewer = token("auditor", &["viewer"]);
    for auction in auctions {
        let id = auction["id"].as_str().expect("id");
        for &node in nodes {
            let history = read_history(&cluster.api(node), &viewer, id).await;
            check_chain(auction, &history);
            for decided in acknowledged.for_auction(id) {
                let entry = history
                    .iter()
                    .find(|h| h["bidId"] == decided.reply["bidId"])
                    .unwrap_or_else(|| {
                        panic!(
                            "node {node} lost acknowledged bid {} ({}) of auction {id}",
                            decided.reply["bidId"], decided.key
                        )
                    });
                for field in ["amount", "status", "version"] {
                    assert_eq!(entry[field], decided.reply[field], "{entry}");
                }
            }
        }
    }
}

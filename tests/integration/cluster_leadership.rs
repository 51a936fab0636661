//! Leadership transfer on a three-node cluster of real processes, through
//! `POST /cluster/groups/{g}/transfer-leader` and `gavel cluster transfer-leader`: the target
//! leads the group when the command returns, writes keep being decided during and after the
//! moves, and no decision is lost.

use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

const BID_WITHIN: Duration = Duration::from_secs(30);
/// How long after a transfer the other nodes may take to hear of the new leader.
const LEADER_SEEN_WITHIN: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transfer_leader_moves_a_group_and_writes_go_on() {
    let seed = test_seed();
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    let group = (seed % u64::from(cluster.config.groups)) as u32;
    let ledger = Ledger::new();
    let mut bidders = Bidders::spawn(
        BiddersConfig {
            round: "r0",
            bidders: 2,
            seed,
            via: cluster.apis(&ids),
            auctions: auctions.clone(),
            bid_within: BID_WITHIN,
        },
        &ledger,
    );

    // Group g's leader settles on voter g mod 3 (leader placement, cluster/src/placement.rs).
    // Move it elsewhere with the HTTP endpoint, then back with the CLI: the final leader is
    // then the one placement keeps, so what the test sees is the transfer's doing.
    let preferred = ids[group as usize % ids.len()];
    let elsewhere = ids[(group as usize + 1) % ids.len()];
    let before = cluster.status(ids[0]).await;
    let term_before = group_view(&before, group)["term"].as_u64().expect("term");
    let moved = cluster
        .api(elsewhere)
        .post(
            &format!("/cluster/groups/{group}/transfer-leader"),
            cluster.admin(),
            Some(&json!({ "to": elsewhere })),
            None,
        )
        .await
        .expect_json(200)
        .json();
    assert_status_shape_without_digests(&moved);
    let view = group_view(&moved, group);
    assert_eq!(
        view["leader"], elsewhere,
        "the answer shows node {elsewhere} leading group {group}: {moved}"
    );
    let term_moved = view["term"].as_u64().expect("term");
    assert!(
        term_moved > term_before || group_view(&before, group)["leader"] == elsewhere,
        "a transfer elects in a later term ({term_before} -> {term_moved})"
    );
    let decided = ledger.len();
    write_once(
        &cluster,
        &ids,
        &auctions[group as usize],
        &ledger,
        ("after-http", 1_000_000),
    )
    .await;

    let stdout = cluster
        .cli_ok(
            ids[0],
            &[
                "transfer-leader",
                "--group",
                &group.to_string(),
                "--to",
                &preferred.to_string(),
            ],
        )
        .await;
    assert!(
        stdout.contains(&format!("node {preferred} now leads group {group}")),
        "{stdout}"
    );
    let (leader, _) = cluster
        .await_leader(preferred, group, Duration::ZERO, |_, _| true)
        .await;
    assert_eq!(
        leader, preferred,
        "node {preferred}'s own view right after the CLI"
    );
    for &node in &ids {
        cluster
            .await_leader(node, group, LEADER_SEEN_WITHIN, |l, t| {
                l == preferred && t >= term_moved
            })
            .await;
    }
    // Transferring to the current leader is a no-op that succeeds.
    cluster
        .cli_ok(
            ids[1],
            &[
                "transfer-leader",
                "--group",
                &group.to_string(),
                "--to",
                &preferred.to_string(),
            ],
        )
        .await;
    write_once(
        &cluster,
        &ids,
        &auctions[group as usize],
        &ledger,
        ("after-cli", 2_000_000),
    )
    .await;

    bidders
        .until_decided(&ledger, decided + 20, BID_WITHIN)
        .await;
    bidders.stop().await;
    cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    cluster.assert_ledger(&ids, &auctions, &ledger).await;
}

/// One accepted bid through every node in turn, from `base` up, far above the background bids.
async fn write_once(
    cluster: &Cluster,
    ids: &[u64],
    auction: &Value,
    ledger: &Ledger,
    (round, base): (&str, u64),
) {
    let bidder = format!("bidder-{round}");
    let token = token(&bidder, &["bidder"]);
    let id = auction["id"].as_str().expect("id");
    for (n, &node) in ids.iter().enumerate() {
        let key = format!("{round}-{n}");
        // Background bidders outbid by at most 3 increments a bid: a step of 1000 stays ahead.
        let amount = money_text(Decimal::from(base + 1_000 * n as u64));
        let via = cluster.apis(&[node]);
        let bid = BidRequest {
            token: &token,
            auction_id: id,
            key: &key,
            amount: &amount,
            within: BID_WITHIN,
        };
        let reply = bid_until_decided(&via, &mut 0, &bid)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply["status"], "accepted", "{reply}");
        ledger.record(id, &bidder, &key, &reply);
    }
}

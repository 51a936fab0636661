//! Advertised addresses (`--advertise-client-url`, `--advertise-peer-addr` and their
//! environment variables): nodes that bind every interface (0.0.0.0) on distinct ports and
//! announce 127.0.0.x addresses form a cluster, forward writes to leaders and fail over, all
//! over the addresses they announce, and `/cluster` shows those. A node that binds every
//! interface without announcing an address, or is given a malformed one, refuses to start,
//! and no wildcard is accepted where a node's address is named (`--initial-cluster`,
//! `POST /cluster/nodes`).

use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

const BID_WITHIN: Duration = Duration::from_secs(30);
/// How long the survivors may take to elect a new leader after the old one is killed.
const FAILOVER_WITHIN: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_on_every_interface_form_forward_and_fail_over_on_their_advertised_addresses() {
    let seed = test_seed();
    let mut cluster = Cluster::start(ClusterConfig {
        advertise: Advertise::Flags,
        ..ClusterConfig::default()
    })
    .await;
    let ids = cluster.ids();
    cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    for &via in &ids {
        assert_advertised(&cluster, &cluster.status(via).await, &ids);
    }
    // Nor may an operator add a node by a wildcard address.
    let wildcard = json!({ "id": 9, "clientAddr": "0.0.0.0:1", "peerAddr": "127.0.0.9:2" });
    cluster
        .api(ids[0])
        .post("/cluster/nodes", cluster.admin(), Some(&wildcard), None)
        .await
        .expect_problem(400);
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    let ledger = Ledger::new();

    // A write sent to a follower is forwarded to the leader over the announced peer address.
    let status = cluster.status(ids[0]).await;
    for (group, leader) in leaders(&status) {
        let leader = leader.expect("every group has a leader");
        let follower = *ids.iter().find(|&&id| id != leader).expect("a follower");
        let auction = &auctions[group as usize];
        bid_through(
            &cluster,
            follower,
            auction,
            &format!("fwd-{group}"),
            &ledger,
        )
        .await;
    }

    // kill -9 of a group's leader: the survivors elect another and writes go on.
    let group = (seed % u64::from(cluster.config.groups)) as u32;
    let (leader, term) = cluster
        .await_leader(ids[0], group, Duration::ZERO, |_, _| true)
        .await;
    let mut bidders = Bidders::spawn(
        BiddersConfig {
            round: "r1",
            bidders: 2,
            seed,
            via: cluster.apis(&ids),
            auctions: auctions.clone(),
            bid_within: BID_WITHIN,
        },
        &ledger,
    );
    let decided = ledger.len();
    bidders
        .until_decided(&ledger, decided + 10, BID_WITHIN)
        .await;
    cluster.kill9(leader);
    let survivors: Vec<u64> = ids.iter().copied().filter(|&id| id != leader).collect();
    let (new_leader, _) = cluster
        .await_leader(survivors[0], group, FAILOVER_WITHIN, |l, t| {
            l != leader && t > term
        })
        .await;
    let decided = ledger.len();
    bidders
        .until_decided(&ledger, decided + 20, BID_WITHIN)
        .await;
    bidders.stop().await;
    // And a write to that very group through the survivor that does not lead it.
    let via = *survivors
        .iter()
        .find(|&&id| id != new_leader)
        .expect("a survivor that does not lead the group");
    let auction = &auctions[group as usize];
    bid_through(&cluster, via, auction, "after-failover", &ledger).await;

    cluster
        .await_converged(survivors[0], &survivors, CONVERGE_TIMEOUT)
        .await;
    cluster.assert_ledger(&survivors, &auctions, &ledger).await;
}

/// The same addresses, given through the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertised_addresses_may_come_from_the_environment() {
    let cluster = Cluster::start(ClusterConfig {
        nodes: 1,
        advertise: Advertise::Env,
        ..ClusterConfig::default()
    })
    .await;
    let ids = cluster.ids();
    assert_advertised(&cluster, &cluster.status(ids[0]).await, &ids);
}

#[test]
fn every_interface_without_an_advertised_address_or_a_malformed_one_is_refused() {
    let (client, peer) = (free_port(), free_port());
    let on = |host: &str, port: u16| format!("{host}:{port}");
    let any_client = on("0.0.0.0", client);
    let any_peer = on("0.0.0.0", peer);
    let v6_client = on("[::]", client);
    let loop_client = on("127.0.0.1", client);
    let loop_peer = on("127.0.0.1", peer);
    let url = format!("http://127.0.0.2:{client}");
    let cases: Vec<Refusal> = vec![
        (
            vec!["--listen", &any_client, "--peer-listen", &loop_peer],
            vec![],
            "--advertise-client-url",
        ),
        (
            vec!["--listen", &v6_client, "--peer-listen", &loop_peer],
            vec![],
            "--advertise-client-url",
        ),
        (
            vec!["--listen", &loop_client, "--peer-listen", &any_peer],
            vec![],
            "--advertise-peer-addr",
        ),
        (
            vec![
                "--listen",
                &any_client,
                "--peer-listen",
                &any_peer,
                "--advertise-client-url",
                &url,
            ],
            vec![],
            "--advertise-peer-addr",
        ),
        (
            vec!["--advertise-client-url", "ftp://127.0.0.2:1"],
            vec![],
            "http or https",
        ),
        (
            vec!["--advertise-client-url", "127.0.0.2:8080"],
            vec![],
            "no scheme",
        ),
        (
            vec!["--advertise-client-url", "http://0.0.0.0:8080"],
            vec![],
            "every interface",
        ),
        (
            vec!["--advertise-client-url", "http://127.0.0.2:8080/gavel"],
            vec![],
            "no path",
        ),
        (
            vec!["--advertise-peer-addr", "127.0.0.2"],
            vec![],
            "HOST:PORT",
        ),
        (
            vec!["--advertise-peer-addr", "[::]:9080"],
            vec![],
            "every interface",
        ),
        (
            vec!["--initial-cluster", "1=0.0.0.0:9080"],
            vec![],
            "every interface",
        ),
        (
            vec![],
            vec![("GAVEL_ADVERTISE_PEER_ADDR", "0.0.0.0:9080")],
            "every interface",
        ),
        (
            vec![],
            vec![("GAVEL_ADVERTISE_CLIENT_URL", "tcp://x:1")],
            "http or https",
        ),
    ];
    assert_serve_refused(cases);
}

/// `/cluster` names every node by the addresses it announces, never by a wildcard.
#[track_caller]
fn assert_advertised(cluster: &Cluster, status: &Value, ids: &[u64]) {
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), ids.len(), "{status}");
    for node in nodes {
        let member = cluster.member(node["id"].as_u64().expect("id"));
        assert_eq!(node["clientAddr"], member.client_addr(), "{node}");
        assert_eq!(node["peerAddr"], member.peer_addr(), "{node}");
        assert_eq!(node["reachable"], true, "{node}");
        assert!(!node.to_string().contains("0.0.0.0"), "{node}");
    }
}

/// One bid on `auction` through node `via` only, retried there until decided, and recorded.
async fn bid_through(cluster: &Cluster, via: u64, auction: &Value, key: &str, ledger: &Ledger) {
    let bidder = "fiona";
    let token = token(bidder, &["bidder"]);
    let auction_id = auction["id"].as_str().expect("id");
    let history = read_history(&cluster.api(via), &token, auction_id).await;
    let amount = check_chain(auction, &history).map_or(money(&auction["startPrice"]), |last| {
        money(&last["amount"]) + money(&auction["minIncrement"])
    });
    let amount = money_text(amount);
    let bid = BidRequest {
        token: &token,
        auction_id,
        key,
        amount: &amount,
        within: BID_WITHIN,
    };
    let reply = bid_until_decided(&cluster.apis(&[via]), &mut 0, &bid)
        .await
        .unwrap_or_else(|failure| panic!("{failure}\n{}", cluster.all_logs()));
    assert_eq!(reply["status"], "accepted", "{reply}");
    ledger.record(auction_id, bidder, key, &reply);
}

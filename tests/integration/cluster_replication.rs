//! Replication on a healthy three-node cluster of real processes: whatever node a client
//! writes through, every node reads it at once (linearizable by default), concurrent bidders
//! spread over all nodes produce one valid chain that every replica holds identically, and the
//! replicas converge to byte-identical state machines (equal applied index, equal digest).

use crate::common::cluster::*;
use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Concurrent bidders in the concurrency test.
const BIDDERS: usize = 4;
/// Bids each of them places.
const BIDS_PER_BIDDER: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_any_node_is_read_at_once_on_every_node() {
    let seed = test_seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    let viewer = token("vic", &["viewer"]);
    let bidder = token("bob", &["bidder"]);

    // Create through each node in turn, then through random ones; every other node must
    // answer the auction, exactly as created, right away: its first 200 is never stale. (A 503
    // "no leader yet, retry" is allowed while a group changes leader, e.g. when leader
    // placement moves it; `read_auction` retries those.)
    let mut groups_seen = std::collections::BTreeSet::new();
    for round in 0..8 {
        let on = match ids.get(round) {
            Some(&id) => id,
            None => ids[rng.gen_range(0..ids.len())],
        };
        let created = cluster
            .api(on)
            .create_auction(&creator, &active_auction_body(&format!("post-{round}")))
            .await;
        let id = created["id"].as_str().expect("id");
        groups_seen.insert(cluster.group_of(id));
        for &other in &ids {
            let read = read_auction(&cluster.api(other), &viewer, id).await;
            assert_eq!(
                read, created,
                "node {other} right after the create on node {on}"
            );
        }
        // A bid through yet another node is visible everywhere at once as well.
        let through = ids[(round + 1) % ids.len()];
        let reply = cluster
            .api(through)
            .bid_ok(&bidder, id, &fresh_key(), json!("10.00"))
            .await;
        assert_eq!(reply["status"], "accepted", "{reply}");
        for &other in &ids {
            let read = read_auction(&cluster.api(other), &viewer, id).await;
            assert_eq!(read["version"], reply["version"], "node {other}: {read}");
            assert_eq!(read["currentPrice"], reply["currentPrice"], "node {other}");
            assert_eq!(read["currentWinnerId"], "bob", "node {other}");
            let history = read_history(&cluster.api(other), &viewer, id).await;
            assert_eq!(history.len(), 1, "node {other}: {history:?}");
            assert_eq!(history[0]["bidId"], reply["bidId"], "node {other}");
        }
    }
    eprintln!(
        "the auctions landed in groups {groups_seen:?} of {}",
        cluster.config.groups
    );
    assert!(
        groups_seen.len() >= 2,
        "8 auctions should span several groups"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_bids_through_every_node_form_one_chain_on_every_replica() {
    let seed = test_seed();
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    // Two auctions in different groups, so two leaders decide at once.
    let per_group = cluster.auction_per_group(ids[0], &creator).await;
    let auctions = vec![per_group[0].clone(), per_group[1].clone()];
    let ledger = Ledger::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..BIDDERS {
        let via = cluster.apis(&ids);
        let auctions = auctions.clone();
        let ledger = ledger.clone();
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i as u64));
        tasks.spawn(async move {
            let name = format!("bidder-{i}");
            let token = token(&name, &["bidder"]);
            let mut prices: Vec<Decimal> =
                auctions.iter().map(|a| money(&a["startPrice"])).collect();
            let mut nodes_used = std::collections::BTreeSet::new();
            for n in 0..BIDS_PER_BIDDER {
                // The first bids visit every node; then the node is random.
                let (node, api) = match via.get((i + n) % via.len()).filter(|_| n < via.len()) {
                    Some(target) => target.clone(),
                    None => via[rng.gen_range(0..via.len())].clone(),
                };
                nodes_used.insert(node);
                let which = rng.gen_range(0..auctions.len());
                let id = auctions[which]["id"].as_str().expect("id");
                let increment = money(&auctions[which]["minIncrement"]);
                let amount = next_amount(&mut rng, prices[which], increment);
                let key = format!("{name}-{n}");
                // A healthy cluster decides every bid at the first attempt, on any node.
                let reply = api.bid_ok(&token, id, &key, json!(amount)).await;
                ledger.record(id, &name, &key, &reply);
                prices[which] = money(&reply["currentPrice"]);
            }
            nodes_used
        });
    }
    let mut nodes_used = std::collections::BTreeSet::new();
    while let Some(done) = tasks.join_next().await {
        nodes_used.extend(done.expect("a bidder panicked"));
    }
    assert_eq!(nodes_used.into_iter().collect::<Vec<_>>(), ids);
    eprintln!(
        "{} bids decided, {} accepted",
        ledger.len(),
        ledger.accepted()
    );
    assert!(ledger.accepted() >= 2, "some bids must have been accepted");

    cluster.assert_ledger(&ids, &auctions, &ledger).await;
    cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    // Once converged, every replica answers the same from its own state, without a quorum.
    let viewer = token("vic", &["viewer"]);
    for auction in &auctions {
        let id = auction["id"].as_str().expect("id");
        let reference = cluster.api(ids[0]).get_auction(&viewer, id).await;
        let path = format!("/auctions/{id}/bids");
        let local = [("consistency", "local"), ("limit", "1000")];
        let reference_history = cluster
            .api(ids[0])
            .get_query(&path, &viewer, &local)
            .await
            .expect_json(200)
            .json();
        for &node in &ids {
            let api = cluster.api(node);
            assert_eq!(
                api.get_auction_local(&viewer, id).await,
                reference,
                "node {node}"
            );
            let history = api
                .get_query(&path, &viewer, &local)
                .await
                .expect_json(200)
                .json();
            assert_eq!(history, reference_history, "node {node}'s local history");
        }
    }
}

/// `gavel cluster status` prints the cluster as a table, and the `/cluster` endpoints answer
/// bad requests with problems (never 500).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_and_bad_input_to_the_cluster_endpoints() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let status = cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    assert_eq!(status["nodeId"], ids[0]);
    let nodes = status["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), ids.len(), "{status}");
    for node in nodes {
        let id = node["id"].as_u64().expect("id");
        let member = cluster.member(id);
        assert_eq!(node["clientAddr"], member.client_addr(), "{node}");
        assert_eq!(node["peerAddr"], member.peer_addr(), "{node}");
        assert_eq!(node["reachable"], true, "{node}");
    }
    for group in 0..cluster.config.groups {
        let (voters, learners) = members_of(&status, group);
        assert_eq!(voters, ids, "group {group}");
        assert!(learners.is_empty(), "group {group}");
    }

    // The CLI refuses clearly and exits non-zero: a token that is not an admin's, no token,
    // an unreachable endpoint.
    let endpoint = cluster.api(ids[0]).base_url().to_owned();
    let viewer = token("vic", &["viewer"]);
    let refused = cluster
        .cli_raw(&["status"], &["--endpoint", &endpoint, "--token", &viewer])
        .await;
    assert_cli_failed(&refused, "403");
    let no_token = cluster
        .cli_raw(&["status"], &["--endpoint", &endpoint])
        .await;
    assert_cli_failed(&no_token, "token");
    let dead = format!("http://127.0.0.1:{}", free_port());
    let unreachable = cluster
        .cli_raw(
            &["status"],
            &["--endpoint", &dead, "--token", cluster.admin()],
        )
        .await;
    assert_cli_failed(&unreachable, "did not answer");
    let not_a_member = cluster
        .cli(ids[0], &["transfer-leader", "--group", "0", "--to", "9"])
        .await;
    assert_cli_failed(&not_a_member, "409");

    bad_requests_are_problems(&cluster).await;

    // Without digests: the same members and progress, every node reachable, no digest.
    let light = cluster
        .api(ids[0])
        .get("/cluster?digests=false", cluster.admin())
        .await
        .expect_json(200)
        .json();
    assert_status_shape_without_digests(&light);
    for node in light["nodes"].as_array().expect("nodes") {
        assert_eq!(node["reachable"], true, "{node}");
    }
    for group in 0..cluster.config.groups {
        assert_eq!(
            group_view(&light, group)["replicas"]
                .as_array()
                .map(Vec::len),
            Some(ids.len()),
            "{light}"
        );
    }

    let stdout = cluster.cli_ok(ids[1], &["status"]).await;
    assert_status_table(&stdout, &cluster, ids[1], false).await;
    let stdout = cluster.cli_ok(ids[2], &["status", "--digests"]).await;
    assert_status_table(&stdout, &cluster, ids[2], true).await;
}

/// `digests`: every replica cell ends with `#` and its digest, 16 hex digits.
async fn assert_status_table(stdout: &str, cluster: &Cluster, via: u64, digests: bool) {
    eprintln!("gavel cluster status:\n{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .first()
            .is_some_and(|l| l.contains(&format!("node {via}"))),
        "the first line names the answering node: {stdout}"
    );
    let header = lines
        .iter()
        .position(|l| {
            l.split_whitespace().collect::<Vec<_>>() == ["node", "client", "peer", "reachable"]
        })
        .unwrap_or_else(|| panic!("no node table header in:\n{stdout}"));
    for (row, id) in cluster.ids().into_iter().enumerate() {
        let member = cluster.member(id);
        let line = lines[header + 1 + row];
        let cells: Vec<&str> = line.split_whitespace().collect();
        let expected = [
            id.to_string(),
            member.client_addr(),
            member.peer_addr(),
            "true".to_owned(),
        ];
        assert_eq!(cells, expected, "node row {line:?}");
        assert_eq!(
            line.find(&member.client_addr()),
            lines[header].find("client"),
            "the client column is aligned under its header:\n{stdout}"
        );
    }
    let status = cluster.status(via).await;
    let group_header = lines
        .iter()
        .position(|l| l.starts_with("group"))
        .unwrap_or_else(|| panic!("no group table header in:\n{stdout}"));
    for (group, leader) in leaders(&status) {
        let line = lines
            .get(group_header + 1 + group as usize)
            .unwrap_or_else(|| panic!("no row for group {group} in:\n{stdout}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], group.to_string(), "group row {line:?}");
        let leader = leader.expect("a converged group has a leader");
        assert_eq!(
            cells[1],
            leader.to_string(),
            "leader of group {group}: {line:?}"
        );
        assert_eq!(cells[3], "1,2,3", "voters of group {group}: {line:?}");
        assert_eq!(cells[4], "-", "learners of group {group}: {line:?}");
        // One node:last/committed/applied cell per replica.
        assert_eq!(cells.len(), 5 + cluster.ids().len(), "group row {line:?}");
        for cell in &cells[5..] {
            let (node, progress) = cell.split_once(':').expect("node:progress");
            assert!(node.parse::<u64>().is_ok(), "{cell}");
            let progress = if digests {
                let (progress, digest) = progress.split_once('#').expect("progress#digest");
                assert!(
                    digest.len() == 16 && u64::from_str_radix(digest, 16).is_ok(),
                    "{cell}"
                );
                progress
            } else {
                assert!(!progress.contains('#'), "no digest unless asked: {cell}");
                progress
            };
            let parts: Vec<&str> = progress.split('/').collect();
            assert_eq!(parts.len(), 3, "{cell}");
            assert!(parts.iter().all(|p| p.parse::<u64>().is_ok()), "{cell}");
        }
    }
}

#[track_caller]
fn assert_cli_failed(output: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "gavel cluster should have failed; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    assert!(
        stderr.contains(needle),
        "the error should mention {needle:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "the CLI must fail cleanly: {stderr}"
    );
}

/// Every bad request to the cluster endpoints is a problem with the right status.
async fn bad_requests_are_problems(cluster: &Cluster) {
    let api = cluster.api(1);
    let admin = cluster.admin().to_owned();
    let status_before = cluster.status(1).await;
    for role in ["viewer", "bidder", "creator"] {
        let not_admin = token("mallory", &[role]);
        api.get("/cluster", &not_admin).await.expect_problem(403);
        let add = json!({ "id": 7, "clientAddr": "127.0.0.1:1", "peerAddr": "127.0.0.1:2" });
        api.post("/cluster/nodes", &not_admin, Some(&add), None)
            .await
            .expect_problem(403);
        send(api.request(
            reqwest::Method::DELETE,
            "/cluster/nodes/2",
            Some(&not_admin),
        ))
        .await
        .expect_problem(403);
        api.post(
            "/cluster/groups/0/transfer-leader",
            &not_admin,
            Some(&json!({ "to": 2 })),
            None,
        )
        .await
        .expect_problem(403);
    }
    api.get_anonymous("/cluster").await.expect_problem(401);
    for query in [
        "digests=maybe",
        "digests=",
        "digest=false",
        "digests=true&digests=false",
    ] {
        api.get(&format!("/cluster?{query}"), &admin)
            .await
            .expect_problem(400);
    }

    let bad_adds = [
        json!({}),
        json!({ "id": 0, "clientAddr": "127.0.0.1:1", "peerAddr": "127.0.0.1:2" }),
        json!({ "id": -1, "clientAddr": "127.0.0.1:1", "peerAddr": "127.0.0.1:2" }),
        json!({ "id": "7", "clientAddr": "127.0.0.1:1", "peerAddr": "127.0.0.1:2" }),
        json!({ "id": 7, "clientAddr": "nowhere", "peerAddr": "127.0.0.1:2" }),
        json!({ "id": 7, "clientAddr": "127.0.0.1:1", "peerAddr": "127.0.0.1:99999" }),
        json!({ "id": 7, "clientAddr": "127.0.0.1:1" }),
        json!({ "id": 7, "clientAddr": "127.0.0.1:1", "peerAddr": "127.0.0.1:2", "voter": "yes" }),
        json!({ "id": 7, "clientAddr": "127.0.0.1:1", "peerAddr": "127.0.0.1:2", "extra": 1 }),
        json!([7]),
    ];
    for body in &bad_adds {
        api.post("/cluster/nodes", &admin, Some(body), None)
            .await
            .expect_problem(400);
    }
    let not_json = api
        .request(reqwest::Method::POST, "/cluster/nodes", Some(&admin))
        .header("content-type", "application/json")
        .body("{\"id\": 7,");
    let resp = send(not_json).await;
    assert_eq!(resp.status, 400, "{}", resp.text());
    resp.assert_problem_body();

    let delete = |path: &str| send(api.request(reqwest::Method::DELETE, path, Some(&admin)));
    delete("/cluster/nodes/0").await.expect_problem(400);
    delete("/cluster/nodes/abc").await.expect_problem(404);

    let transfer = |group: &str, body: Value| {
        let path = format!("/cluster/groups/{group}/transfer-leader");
        let api = api.clone();
        let admin = admin.clone();
        async move { api.post(&path, &admin, Some(&body), None).await }
    };
    for body in [
        json!({}),
        json!({ "to": "2" }),
        json!({ "to": 0 }),
        json!({ "to": -2 }),
        json!({ "to": 2, "extra": true }),
        json!(2),
    ] {
        transfer("0", body).await.expect_problem(400);
    }
    transfer("99", json!({ "to": 2 })).await.expect_problem(404);
    transfer("abc", json!({ "to": 2 }))
        .await
        .expect_problem(404);
    transfer("0", json!({ "to": 9 })).await.expect_problem(409);

    // None of that changed the membership.
    let status_after = cluster.status(1).await;
    for group in 0..cluster.config.groups {
        assert_eq!(
            members_of(&status_after, group),
            members_of(&status_before, group),
            "group {group}"
        );
    }
}

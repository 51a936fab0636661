//! `GET /cluster/endpoints` on real processes: no token needed, a single node lists itself, and
//! in a cluster whose nodes bind every interface and advertise their own addresses every node
//! lists every voter, and then a learner too, at the URL it advertises. The live page's
//! `Content-Security-Policy` lets it connect to exactly those nodes.

use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

/// How long a node may take to learn a member's client address (from the membership, or from
/// the peer's transport handshake for members named by `--initial-cluster`).
const LEARN_WITHIN: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_single_node_lists_itself() {
    let server = Server::start().await;
    let resp = server
        .get_anonymous("/cluster/endpoints")
        .await
        .expect_json(200);
    assert_eq!(resp.json(), json!({ "endpoints": [server.base_url()] }));
    assert_eq!(
        resp.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let page = server.get_anonymous("/").await.expect_status(200);
    let policy = page.header("content-security-policy").unwrap_or_default();
    assert!(
        policy.contains(&format!("connect-src 'self' {};", server.base_url())),
        "{policy}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_lists_every_voter_and_learner_at_its_advertised_url() {
    let mut cluster = Cluster::start(ClusterConfig {
        advertise: Advertise::Flags,
        ..ClusterConfig::default()
    })
    .await;
    let voters = cluster.ids();
    await_endpoints(&cluster, &voters, &voters).await;

    let learner = cluster.start_joiner(4).await;
    let member = json!({
        "id": 4,
        "clientAddr": learner.client_addr(),
        "peerAddr": learner.peer_addr(),
        "voter": false,
    });
    cluster
        .api(voters[0])
        .post("/cluster/nodes", cluster.admin(), Some(&member), None)
        .await
        .expect_json(200);
    let everyone = cluster.ids();
    await_endpoints(&cluster, &everyone, &everyone).await;
    let status = cluster.status(voters[0]).await;
    assert_eq!(members_of(&status, 0).1, vec![4], "node 4 is a learner");
}

/// Polls `GET /cluster/endpoints` (no token) on every node of `via` until each lists exactly
/// the advertised URLs of `members`, by node id.
async fn await_endpoints(cluster: &Cluster, via: &[u64], members: &[u64]) {
    let expected: Vec<String> = members
        .iter()
        .map(|id| format!("http://{}", cluster.member(*id).client_addr()))
        .collect();
    for &id in via {
        let api = cluster.api(id);
        let what = format!("node {id} to list {expected:?}");
        let listed = poll_until(&what, LEARN_WITHIN, || async {
            let resp = try_send(api.request(reqwest::Method::GET, "/cluster/endpoints", None))
                .await
                .ok()?;
            let body: Value = serde_json::from_str(&resp.text()).ok()?;
            let endpoints = body["endpoints"].clone();
            (endpoints == json!(expected)).then_some(endpoints)
        })
        .await;
        assert!(!listed.to_string().contains("0.0.0.0"), "{listed}");
        let page = api
            .get_anonymous("/a/some-auction")
            .await
            .expect_status(200);
        let policy = page.header("content-security-policy").unwrap_or_default();
        let connect = format!("connect-src 'self' {};", expected.join(" "));
        assert!(policy.contains(&connect), "node {id}: {policy}");
    }
}

//! Live updates on a three-node cluster of real processes: viewers on every node (the group's
//! leader and its followers), each served from its own replica, see the very same frame
//! sequence while bids and control actions go through different nodes (and are forwarded to
//! the leader).

use crate::common::cluster::*;
use crate::common::*;
use crate::live_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn viewers_on_every_node_see_the_same_sequence() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let carol = token("carol", &["creator"]);
    let bidders = [token("bob", &["bidder"]), token("dave", &["bidder"])];
    let vera = token("vera", &["viewer"]);
    let auction = cluster
        .api(ids[0])
        .create_auction(&carol, &active_auction_body("live-cluster"))
        .await;
    let id = auction["id"].as_str().unwrap();

    let mut ws = Vec::new();
    let mut sse = Vec::new();
    for &node in &ids {
        let port = cluster.member(node).client_port;
        // A follower may not have applied the create yet: resume from version 1 waits for it.
        ws.push(
            WsViewer::open(port, id, Auth::Query(&vera), Some(1), None)
                .await
                .unwrap_or_else(|status| panic!("WebSocket on node {node}: {status}")),
        );
        let viewer = SseViewer::open(port, id, Auth::Header(&vera), Some(1), None, None).await;
        assert_eq!(viewer.status, 200, "SSE on node {node}: {}", viewer.headers);
        sse.push(viewer);
    }

    // Each step goes through another node and is seen everywhere before the next one.
    let mut version = 1;
    for step in 0..6usize {
        let via = cluster.api(ids[step % ids.len()]);
        let reply = match step {
            3 => via.control_ok(&carol, id, "pause").await,
            4 => via.control_ok(&carol, id, "resume").await,
            5 => via.control_ok(&carol, id, "end").await,
            n => {
                let amount = json!(format!("{}", 10 + n));
                via.bid_ok(&bidders[n % 2], id, &fresh_key(), amount).await
            }
        };
        version += 1;
        assert_eq!(reply["version"], version, "step {step}: {reply}");
        for viewer in &mut ws {
            viewer.until_version(version).await;
        }
        for viewer in &mut sse {
            viewer.until_version(version).await;
        }
    }

    let expected: Vec<(String, u64)> = [
        ("snapshot", 1),
        ("bid", 2),
        ("bid", 3),
        ("bid", 4),
        ("status", 5),
        ("status", 6),
        ("ended", 7),
    ]
    .iter()
    .map(|(kind, v)| (kind.to_string(), *v))
    .collect();
    for (node, (w, s)) in ids.iter().zip(ws.iter_mut().zip(sse.iter_mut())) {
        w.until_closed().await;
        s.until_closed().await;
        for frames in [&w.frames, &s.frames] {
            assert_sequence_rules(frames);
            assert_eq!(changes(frames), expected, "node {node}");
            let last = frames.last().unwrap();
            assert_eq!(last.json["currentPrice"], "12.00", "node {node}");
            assert_eq!(last.json["winnerId"], "bob", "node {node}");
        }
        assert_eq!(w.close_code, Some(1000), "node {node}");
    }
}

//! Operations endpoints against a real `gavel serve`: `/healthz` and `/readyz` without
//! credentials, `/metrics` in Prometheus text format with the bid and Raft metrics after bids,
//! and `/openapi.json` as an OpenAPI 3.1 document that lists every path and method of API.md.

use crate::common::*;

/// Every path of API.md (parameters written `{}`) with its methods.
const API_PATHS: [(&str, &[&str]); 17] = [
    ("/auctions", &["get", "post"]),
    ("/auctions/{}", &["get"]),
    ("/auctions/{}/start", &["post"]),
    ("/auctions/{}/pause", &["post"]),
    ("/auctions/{}/resume", &["post"]),
    ("/auctions/{}/end", &["post"]),
    ("/auctions/{}/bids", &["get", "post"]),
    ("/auctions/{}/stream", &["get"]),
    ("/auctions/{}/ws", &["get"]),
    ("/healthz", &["get"]),
    ("/readyz", &["get"]),
    ("/metrics", &["get"]),
    ("/openapi.json", &["get"]),
    ("/cluster", &["get"]),
    ("/cluster/nodes", &["post"]),
    ("/cluster/nodes/{}", &["delete"]),
    ("/cluster/groups/{}/transfer-leader", &["post"]),
];

/// `/a/{id}/b` -> `/a/{}/b`.
fn normalize(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

#[tokio::test]
async fn health_metrics_and_openapi() {
    let server = Server::start().await;
    server.get_anonymous("/healthz").await.expect_status(200);
    server.get_anonymous("/readyz").await.expect_status(200);

    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("post-ops"))
        .await;
    let id = auction["id"].as_str().unwrap();
    server.bid_ok(&bob, id, "1", json!("10")).await;
    server.bid_ok(&bob, id, "2", json!("10")).await;

    // Metrics: no auth, Prometheus text, every sample line well-formed.
    let metrics = server.get_anonymous("/metrics").await.expect_status(200);
    let content_type = metrics.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain"),
        "metrics Content-Type {content_type:?}"
    );
    let text = metrics.text();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let value = line.rsplit_once(' ').map(|(_, v)| v);
        assert!(
            value.is_some_and(|v| v.parse::<f64>().is_ok()),
            "not a Prometheus sample: {line:?}"
        );
    }
    let decisions = metric_samples(&text, "gavel_bid_decisions_total");
    let total: f64 = decisions.iter().map(|(_, v)| v).sum();
    assert!(total >= 2.0, "two bids decided, metrics say {decisions:?}");
    let latency = metric_samples(&text, "gavel_bid_latency_seconds");
    assert!(
        !latency.is_empty(),
        "no gavel_bid_latency_seconds samples:\n{text}"
    );
    let counted: f64 = latency
        .iter()
        .filter(|(series, _)| series.starts_with("gavel_bid_latency_seconds_count"))
        .map(|(_, v)| v)
        .sum();
    assert!(counted >= 2.0, "bid latency counts {counted}: {latency:?}");
    let lag = metric_samples(&text, "gavel_raft_apply_lag_entries");
    assert!(
        !lag.is_empty(),
        "no gavel_raft_apply_lag_entries samples:\n{text}"
    );
    assert!(lag.iter().all(|(_, v)| *v >= 0.0), "negative lag: {lag:?}");

    // OpenAPI: 3.1, and every path and method of API.md.
    let doc = server
        .get_anonymous("/openapi.json")
        .await
        .expect_status(200);
    let content_type = doc.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "openapi Content-Type {content_type:?}"
    );
    let doc = doc.json();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi version {version:?}");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths object");
    let documented: Vec<(String, &Value)> = paths
        .iter()
        .map(|(path, item)| (normalize(path), item))
        .collect();
    let mut missing = Vec::new();
    for (path, methods) in API_PATHS {
        let item = documented
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, item)| item);
        for method in methods {
            if item.is_none_or(|item| !item[method].is_object()) {
                missing.push(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(missing.is_empty(), "/openapi.json lacks: {missing:?}");
}

/// A node runs without transparent huge pages (see `disable_transparent_huge_pages` in
/// `main.rs`): with them, building a hot group's snapshot cost several times the CPU.
#[tokio::test]
async fn a_node_runs_without_transparent_huge_pages() {
    let server = Server::start().await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid()))
        .expect("read the node's /proc status");
    let thp = status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(str::trim);
    // Kernels before 5.0 do not report it; the prctl is then all there is to check.
    if let Some(thp) = thp {
        assert_eq!(thp, "0", "THP_enabled in /proc/{}/status", server.pid());
    }
}

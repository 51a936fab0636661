//! `gavel bench bids` works end to end, briefly: real processes (the tool, and the node it
//! starts for itself), a couple of seconds of load, and a summary whose numbers agree with each
//! other. The real measurements are `scripts/bench.sh`'s, in the README; they are not tests.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Far more than a run of a few seconds needs; the tool bounds its own waits too.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `gavel bench bids ARGS`, killing it if it outlives `RUN_TIMEOUT`.
fn bench_bids(args: &[&str]) -> Output {
    let _machine = crate::common::share_machine();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["bench", "bids"])
        .args(args)
        .env_remove("GAVEL_AUTH_SECRET")
        .env_remove("GAVEL_BENCH_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gavel bench bids");
    let started = Instant::now();
    while child.try_wait().expect("poll the bench").is_none() {
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            panic!("gavel bench bids did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("the bench's output")
}

/// The summary JSON of a successful run.
fn summary(args: &[&str]) -> Value {
    let output = bench_bids(args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {stdout}"))
}

fn count(summary: &Value, field: &str) -> u64 {
    summary[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a count: {summary}"))
}

/// Counts add up, rates agree with counts and time, percentiles are ordered.
fn assert_sane(summary: &Value) {
    let decisions = count(summary, "decisions");
    assert!(decisions > 0, "{summary}");
    let (accepted, rejected) = (count(summary, "accepted"), count(summary, "rejected"));
    assert_eq!(decisions, accepted + rejected, "{summary}");
    let requests = count(summary, "requests");
    assert_eq!(
        requests,
        decisions + count(summary, "shed") + count(summary, "errors"),
        "{summary}"
    );
    let reasons: u64 = summary["rejected_reasons"]
        .as_object()
        .expect("rejected_reasons")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(reasons, rejected, "{summary}");
    let elapsed_s = summary["elapsed_s"].as_f64().expect("elapsed_s");
    let per_s = summary["decisions_per_s"]
        .as_f64()
        .expect("decisions_per_s");
    assert!(elapsed_s > 0.0, "{summary}");
    assert!(
        (per_s * elapsed_s - decisions as f64).abs() < 1.0,
        "{summary}"
    );
    let latency = &summary["latency_ms"];
    let ordered: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|q| latency[*q].as_f64().expect("a percentile"))
        .collect();
    assert!(ordered[0] > 0.0, "{summary}");
    assert!(ordered.windows(2).all(|w| w[0] <= w[1]), "{summary}");
}

#[test]
fn a_closed_loop_run_reports_a_consistent_summary_and_a_plot() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let plot = dir.path().join("latency.png");
    let plot_arg = plot.to_str().expect("a UTF-8 path");
    let summary = summary(&[
        "--connections",
        "4",
        "--auctions",
        "4",
        "--groups",
        "2",
        "--duration",
        "2s",
        "--warmup",
        "500ms",
        "--json",
        "--plot",
        plot_arg,
    ]);
    assert_sane(&summary);
    assert!(
        summary.get("send_lag_ms").is_none(),
        "open loop only: {summary}"
    );
    assert_eq!(summary["loop"], "closed");
    assert_eq!(summary["target"], "gavel");
    assert_eq!(summary["connections"], 4);
    // One client per auction: every bid outbids the last, so every one is accepted.
    assert_eq!(count(&summary, "rejected"), 0, "{summary}");
    assert_eq!(summary["groups_covered"], 2, "{summary}");
    // The node the tool started is the server whose CPU it reports, and it did work.
    let cpu = &summary["server_cpu"];
    assert_eq!(cpu["pids"].as_array().map(Vec::len), Some(1), "{summary}");
    assert!(cpu["cores"].as_f64().is_some_and(|c| c > 0.0), "{summary}");
    assert!(
        cpu["us_per_decision"].as_f64().is_some_and(|us| us > 0.0),
        "{summary}"
    );
    let png = std::fs::read(&plot).expect("the plot was written");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn an_open_loop_run_on_a_hot_auction_holds_its_rate() {
    let summary = summary(&[
        "--rate",
        "200",
        "--connections",
        "16",
        "--hot",
        "--groups",
        "1",
        "--duration",
        "2s",
        "--warmup",
        "0s",
        "--json",
    ]);
    assert_sane(&summary);
    assert_eq!(summary["loop"], "open");
    // 200/s for 2 s: 400 requests due, and a node on loopback keeps up with that.
    assert_eq!(
        count(&summary, "requests") + count(&summary, "unsent"),
        400,
        "{summary}"
    );
    // Every client races for the same auction with the last price seen: most lose.
    assert!(count(&summary, "accepted") > 0, "{summary}");
    // How late the tool sent, which the latency from the due time includes.
    let lag = &summary["send_lag_ms"];
    let (lag_p50, lag_max) = (lag["p50"].as_f64(), lag["max"].as_f64());
    assert!(
        lag_p50
            .zip(lag_max)
            .is_some_and(|(p50, max)| 0.0 <= p50 && p50 <= max),
        "{summary}"
    );
    if count(&summary, "shed") + count(&summary, "errors") == 0 {
        assert!(
            lag_max <= summary["latency_ms"]["max"].as_f64(),
            "a request's lateness is part of its latency: {summary}"
        );
    }
}

#[test]
fn bad_flags_fail_with_a_message_before_any_node_starts() {
    let started = Instant::now();
    let output = bench_bids(&["--target", "etcd"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--target etcd needs --endpoints"),
        "{stderr}"
    );
    let output = bench_bids(&["--duration", "1.5s"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("whole number and a unit"), "{stderr}");
    let output = bench_bids(&["--server-pids", "4294967295"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no process 4294967295"), "{stderr}");
    let output = bench_bids(&["--server-pids", "12,x"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--server-pids"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// `--via leader` sends each auction's bids to the node leading its group, `--via follower` to
/// one that does not; the summary names the endpoint each auction's bids went to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_picks_the_leading_node_or_another() {
    use crate::common::cluster::*;

    let cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    cluster
        .await_preferred_leaders(ids[0], Duration::from_secs(60))
        .await;
    let secret = tempfile::NamedTempFile::new().expect("a temp file");
    std::fs::write(secret.path(), crate::common::SECRET).expect("write the secret");
    let endpoints: Vec<String> = ids
        .iter()
        .map(|&id| cluster.api(id).base_url().to_owned())
        .collect();
    let endpoints = endpoints.join(",");
    for via in ["leader", "follower"] {
        let mut before = Vec::new();
        for &id in &ids {
            before.push(bid_requests(&cluster, id).await);
        }
        let output = cluster
            .gavel(&[
                "bench",
                "bids",
                "--endpoints",
                &endpoints,
                "--auth-secret-file",
                secret.path().to_str().expect("a UTF-8 path"),
                "--via",
                via,
                // A client per auction (client c bids on auction c mod 3).
                "--connections",
                "3",
                "--auctions",
                "3",
                "--duration",
                "1s",
                "--warmup",
                "0s",
                "--json",
            ])
            .await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "--via {via} failed: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
        assert_sane(&summary);
        assert_eq!(summary["via"], via, "{summary}");
        let routes = summary["routes"].as_object().expect("routes per auction");
        assert_eq!(routes.len(), 3, "{summary}");
        let status = cluster.status(ids[0]).await;
        let mut routed = std::collections::BTreeSet::new();
        for (auction, endpoint) in routes {
            let group = cluster.group_of(auction);
            let leader = group_view(&status, group)["leader"]
                .as_u64()
                .expect("a leader");
            let node = ids
                .iter()
                .copied()
                .find(|&id| cluster.api(id).base_url() == endpoint.as_str().expect("a URL"))
                .expect("a route is one of the endpoints");
            assert_eq!(
                node == leader,
                via == "leader",
                "auction {auction} (group {group}, led by node {leader}) went to node {node}"
            );
            routed.insert(node);
        }
        // The bids went where the routes say, and nowhere else.
        let mut received = std::collections::BTreeSet::new();
        for (&id, before) in ids.iter().zip(before) {
            if bid_requests(&cluster, id).await > before {
                received.insert(id);
            }
        }
        assert_eq!(received, routed, "--via {via}: {summary}");
    }

    // One endpoint cannot offer a follower.
    let output = cluster
        .gavel(&[
            "bench",
            "bids",
            "--endpoints",
            cluster.api(ids[0]).base_url(),
            "--via",
            "follower",
        ])
        .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--via follower needs at least two"),
        "{stderr}"
    );
}

/// Bid requests `node` has answered, by its `/metrics`.
async fn bid_requests(cluster: &crate::common::cluster::Cluster, node: u64) -> f64 {
    let text = cluster.api(node).get_anonymous("/metrics").await.text();
    crate::common::metric_samples(&text, "gavel_http_requests_total")
        .iter()
        .filter(|(series, _)| series.contains("/bids"))
        .map(|(_, count)| count)
        .sum()
}

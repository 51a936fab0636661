//! Viewers whose node dies come back on the other nodes: `gavel bench viewers` spreads its
//! viewers over a three-node cluster of real processes and kills one node (SIGKILL) halfway
//! through the bids. The killed node's viewers reconnect elsewhere with `sinceVersion`, none
//! of them resumes from an older state than it showed, and every viewer sees every bid and the
//! final `ended` frame naming the winner.

use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

/// Far more than the run needs; the tool bounds its own waits too.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_of_a_killed_node_reconnect_elsewhere_and_see_the_end() {
    let cluster = Cluster::start(ClusterConfig::default()).await;
    let ids = cluster.ids();
    let endpoints: Vec<String> = ids
        .iter()
        .map(|id| format!("http://{}", cluster.member(*id).client_addr()))
        .collect();
    let victim = cluster.member(ids[2]).pid().expect("node 3 runs");
    let pids: Vec<String> = ids
        .iter()
        .map(|id| {
            cluster
                .member(*id)
                .pid()
                .expect("the node runs")
                .to_string()
        })
        .collect();
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["bench", "viewers", "--endpoints", &endpoints.join(",")])
        .args(["--viewers", "30", "--viewers-per-process", "10"])
        .args(["--bids", "12", "--bid-interval-ms", "100"])
        .args(["--kill-pid", &victim.to_string()])
        .args(["--server-pids", &pids.join(",")])
        .env("GAVEL_AUTH_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_TIMEOUT, run)
        .await
        .expect("the bench finishes in time")
        .expect("run gavel bench viewers");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for expected in [
        "30 connected, 0 failed",
        "12 accepted",
        "every viewer saw every bid: yes",
        "30 saw `ended` naming the winner, 0 another winner, 0 never saw it",
        "10 viewers came back",
        "resumed snapshots older than shown: 0",
    ] {
        assert!(
            stdout.contains(expected),
            "expected {expected:?} in:\n{stdout}"
        );
    }
    // The survivors' CPU during the bids is reported; the killed node's is not, nor a total
    // that would leave it out.
    let survivors = stdout
        .lines()
        .filter(|line| {
            line.starts_with("  during the bids:") && line.contains("fan-out threads on a CPU")
        })
        .count();
    assert_eq!(survivors, 2, "{stdout}");
    assert!(!stdout.contains("all nodes, during the bids"), "{stdout}");
}

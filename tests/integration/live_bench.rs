//! `gavel bench viewers` still works end to end, at a toy size: it starts its own node, spreads
//! its viewers over two worker processes, bids, ends the auction and reports, exiting 0 only
//! when every viewer saw every bid. (The real runs, 1,000 and 10,000 viewers, are in the
//! README; they are not tests.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far more than the run needs; the tool bounds its own waits too.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn the_viewer_bench_reports_connects_and_latencies() {
    let _machine = crate::common::share_machine();
    let mut child = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args([
            "bench",
            "viewers",
            "--viewers",
            "40",
            "--viewers-per-process",
            "20",
        ])
        .args(["--bids", "5", "--bid-interval-ms", "20", "--groups", "2"])
        .env_remove("GAVEL_AUTH_SECRET")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gavel bench viewers");
    let started = Instant::now();
    while child.try_wait().expect("poll the bench").is_none() {
        if started.elapsed() > RUN_TIMEOUT {
            let _ = child.kill();
            panic!("gavel bench viewers did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().expect("the bench's output");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the bench failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("40 WebSocket viewers of one auction over 1 node(s), 2 client processes"),
        "{stdout}"
    );
    assert!(stdout.contains("40 connected, 0 failed"), "{stdout}");
    assert!(stdout.contains("5 accepted"), "{stdout}");
    assert!(
        stdout.contains("every viewer saw every bid: yes"),
        "{stdout}"
    );
    // Five of the five bids, each named once by its place in the run.
    let slowest = stdout
        .lines()
        .find_map(|line| line.strip_prefix("slowest bids:"))
        .unwrap_or_else(|| panic!("no slowest bids line: {stdout}"));
    for place in 1..=5 {
        assert_eq!(
            slowest.matches(&format!("#{place} ")).count(),
            1,
            "{slowest}"
        );
    }
}

//! `gavel bench viewers` still works end to end, at a toy size: it starts its own node, spreads
//! its viewers over two worker processes, bids, ends the auction and reports, exiting 0 only
//! when every viewer saw every bid. (The real runs, 1,000 and 10,000 viewers, are in the
//! README; they are not tests.)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Far more than the run needs; the tool bounds its own waits too.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

fn bench_viewers(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["bench", "viewers"])
        .args(args)
        .env_remove("GAVEL_AUTH_SECRET")
        .stdin(Stdio::null())
        .output()
        .expect("run gavel bench viewers")
}

#[test]
fn flags_that_cannot_work_fail_with_a_message_before_anything_runs() {
    let started = Instant::now();
    for (args, expected) in [
        (
            &["--server-pids", "1"][..],
            "--server-pids needs --endpoints",
        ),
        (
            &["--endpoints", "http://127.0.0.1:9", "--server-pids", "1,2"][..],
            "one process id per --endpoints entry, in the same order (2 for 1)",
        ),
        (
            &[
                "--endpoints",
                "http://127.0.0.1:9",
                "--server-pids",
                "4294967295",
            ][..],
            "no process 4294967295",
        ),
        (
            &["--endpoints", "http://127.0.0.1:9", "--server-pids", "x"][..],
            "--server-pids",
        ),
        (&["--client-nice", "20"][..], "--client-nice"),
    ] {
        let output = bench_viewers(args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "{args:?}: {expected:?} in {stderr}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
}

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
        .args(["--client-nice", "5"])
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
    // What the node did during the bids: this tool started it, so it watches its process.
    let during = stdout
        .lines()
        .find_map(|line| line.strip_prefix("all nodes, during the bids: "))
        .unwrap_or_else(|| panic!("no line for the nodes during the bids: {stdout}"));
    let frames_per_s: f64 = during
        .split(" frames/s")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no frames/s in {during:?}"));
    assert!(frames_per_s > 0.0, "{during}");
    for expected in ["; node CPU ", " cores", "; fan-out threads on a CPU "] {
        assert!(during.contains(expected), "{expected:?} in {during:?}");
    }
    // Five of the five bids, each named once by its place in the run, by the time their
    // requests took and by the time they took to reach their last viewer.
    for prefix in ["slowest requests:", "slowest bids:"] {
        let slowest = stdout
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line: {stdout}"));
        for place in 1..=5 {
            assert_eq!(
                slowest.matches(&format!("#{place} ")).count(),
                1,
                "{slowest}"
            );
        }
    }
}

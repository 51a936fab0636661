//! A viewer that stops reading is coalesced, not queued for: when it reads again it gets the
//! newest state (and the end), having skipped what it could not take, while the viewers that
//! keep up see every change and bids are as fast as without it.
//!
//! The slow viewers (one WebSocket, one SSE) use a small receive buffer so that the server's
//! socket to them fills after a few hundred frames; the node bounds its own send buffers.
//! Each bid is placed once every fast viewer has seen the previous one: the fast viewers prove
//! they are served while the slow ones stall, and the bids are timed under the same load
//! before and during the stall.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::live_common::*;
use tokio::sync::watch;

/// Viewers that read everything as it comes.
const FAST_WS_VIEWERS: usize = 8;
const FAST_SSE_VIEWERS: usize = 2;
/// Bids before the slow viewers exist (the baseline latency) and while they stall.
const BASELINE_BIDS: u64 = 60;
const STALLED_BIDS: u64 = 500;
/// The slow viewers' receive buffer, in bytes.
const SLOW_RECV_BUFFER_BYTES: u32 = 4096;
/// How much slower the median bid may be while a viewer stalls (plus `LATENCY_SLACK_MS`).
const LATENCY_FACTOR_MAX: f64 = 2.0;
const LATENCY_SLACK_MS: f64 = 10.0;

/// Bidders taking turns, so that no one hits the node's per-bidder rate limit.
const BIDDERS: usize = 20;

/// Places `count` bids one after another, each outbidding the last and each once every fast
/// viewer has seen the one before; returns the bid request latencies.
async fn bid_run(
    api: &Api,
    bidders: &[String],
    id: &str,
    from: u64,
    count: u64,
    fast: &mut [watch::Receiver<u64>],
) -> Vec<Duration> {
    let mut latencies = Vec::new();
    for n in from..from + count {
        let bidder = &bidders[n as usize % bidders.len()];
        let started = Instant::now();
        let reply = api
            .bid_ok(bidder, id, &fresh_key(), json!(n.to_string()))
            .await;
        latencies.push(started.elapsed());
        assert_eq!(reply["status"], "accepted", "{reply}");
        let version = reply["version"].as_u64().unwrap();
        for seen in fast.iter_mut() {
            tokio::time::timeout(FRAME_TIMEOUT, seen.wait_for(|v| *v >= version))
                .await
                .expect("every fast viewer sees each bid")
                .expect("a fast viewer is still reading");
        }
    }
    latencies
}

fn median_ms(latencies: &mut [Duration]) -> f64 {
    latencies.sort();
    latencies[latencies.len() / 2].as_secs_f64() * 1000.0
}

#[tokio::test]
async fn a_stalled_viewer_is_coalesced_and_slows_nobody() {
    let server = Server::start().await;
    let port = server.client_port;
    let carol = token("carol", &["creator"]);
    let bidders: Vec<String> = (0..BIDDERS)
        .map(|i| token(&format!("bidder-{i}"), &["bidder"]))
        .collect();
    let vera = token("vera", &["viewer"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-slow"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();

    let mut fast = tokio::task::JoinSet::new();
    let mut fast_seen = Vec::new();
    for i in 0..FAST_WS_VIEWERS + FAST_SSE_VIEWERS {
        let (id, vera) = (id.clone(), vera.clone());
        let (seen_tx, seen_rx) = watch::channel(0u64);
        fast_seen.push(seen_rx);
        fast.spawn(async move {
            if i < FAST_WS_VIEWERS {
                let mut ws = WsViewer::open(port, &id, Auth::Query(&vera), None, None)
                    .await
                    .unwrap();
                while let Some(frame) = ws.next().await {
                    seen_tx.send_replace(frame.version);
                }
                ws.frames
            } else {
                let mut sse =
                    SseViewer::open(port, &id, Auth::Query(&vera), None, None, None).await;
                while let Some(frame) = sse.next().await {
                    seen_tx.send_replace(frame.version);
                }
                sse.frames
            }
        });
    }
    for seen in &mut fast_seen {
        seen.wait_for(|v| *v >= 1)
            .await
            .expect("a fast viewer's snapshot");
    }
    let api = server.api();
    let mut baseline = bid_run(&api, &bidders, &id, 10, BASELINE_BIDS, &mut fast_seen).await;

    // The slow viewers take their snapshot, then stop reading.
    let mut slow_ws = WsViewer::open(
        port,
        &id,
        Auth::Query(&vera),
        None,
        Some(SLOW_RECV_BUFFER_BYTES),
    )
    .await
    .unwrap();
    let mut slow_sse = SseViewer::open(
        port,
        &id,
        Auth::Query(&vera),
        None,
        None,
        Some(SLOW_RECV_BUFFER_BYTES),
    )
    .await;
    let snapshot_version = slow_ws.next().await.unwrap().version;
    assert_eq!(slow_sse.next().await.unwrap().version, snapshot_version);
    let mut stalled = bid_run(
        &api,
        &bidders,
        &id,
        10 + BASELINE_BIDS,
        STALLED_BIDS,
        &mut fast_seen,
    )
    .await;
    let ended = server.control_ok(&carol, &id, "end").await;
    let final_version = ended["version"].as_u64().unwrap();

    // Reading again, the slow viewers get the newest state and the end, not every change.
    slow_ws.until_closed().await;
    slow_sse.until_closed().await;
    for frames in [&slow_ws.frames, &slow_sse.frames] {
        assert_sequence_rules(frames);
        let bids_seen = frames.iter().filter(|f| f.kind == "bid").count() as u64;
        let last = frames.last().unwrap();
        assert_eq!((last.kind.as_str(), last.version), ("ended", final_version));
        assert_eq!(last.json["currentPrice"], ended["currentPrice"]);
        eprintln!("slow viewer: {bids_seen} of {STALLED_BIDS} bid frames");
        assert!(
            bids_seen < STALLED_BIDS,
            "a stalled viewer must skip versions, saw all {bids_seen}"
        );
    }
    assert_eq!(slow_ws.close_code, Some(1000));

    // Everybody else saw every change, in order.
    let expected_bids = (BASELINE_BIDS + STALLED_BIDS) as usize;
    while let Some(frames) = fast.join_next().await {
        let frames = frames.unwrap();
        assert_sequence_rules(&frames);
        let bids = frames.iter().filter(|f| f.kind == "bid").count();
        assert_eq!(bids, expected_bids, "a viewer that keeps up sees every bid");
        assert_eq!(frames.last().unwrap().version, final_version);
    }

    let (base_ms, stalled_ms) = (median_ms(&mut baseline), median_ms(&mut stalled));
    eprintln!(
        "median bid latency: {base_ms:.2} ms before, {stalled_ms:.2} ms while a viewer stalled"
    );
    assert!(
        stalled_ms <= base_ms * LATENCY_FACTOR_MAX + LATENCY_SLACK_MS,
        "bids slowed down while a viewer stalled: {base_ms:.2} ms -> {stalled_ms:.2} ms"
    );
    let metrics = server.get_anonymous("/metrics").await.text();
    let coalesced: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("gavel_viewer_frames_coalesced_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(coalesced > 0.0, "the coalesced counter moved: {metrics}");
}

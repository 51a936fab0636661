//! The node's viewer limits against a real `gavel serve` started with small ones: beyond
//! `--viewers-max` a stream is refused with a 503 (and a slot frees when a viewer leaves), and
//! a WebSocket viewer that stops reading (so never answers pings) is dropped within a bounded
//! time, freeing its slot.
//!
//! The limits reach the server as flags, so no other test's server sees them.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::live_common::*;

const VIEWERS_MAX: usize = 3;
const PING_INTERVAL_MS: u64 = 300;
/// Dropped after three silent ping intervals; this bounds it with room for a slow machine.
const DROP_WITHIN: Duration = Duration::from_secs(10);

/// Opens WebSocket viewers until one is refused; panics if that takes too long.
async fn admitted(port: u16, id: &str, token: &str) -> WsViewer {
    poll_until("a free viewer slot", DROP_WITHIN, || async {
        WsViewer::open(port, id, Auth::Query(token), None, None)
            .await
            .ok()
    })
    .await
}

#[tokio::test]
async fn beyond_the_limit_is_503_and_a_viewer_that_stops_reading_is_dropped() {
    let limits = ServerOptions {
        args: vec![
            "--viewers-max".into(),
            VIEWERS_MAX.to_string(),
            "--viewer-ping-interval-ms".into(),
            PING_INTERVAL_MS.to_string(),
            "--viewer-send-timeout-ms".into(),
            "1000".into(),
        ],
        ..ServerOptions::default()
    };
    let server = Server::start_with(None, limits).await;
    let port = server.client_port;
    let carol = token("carol", &["creator"]);
    let vera = token("vera", &["viewer"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-limits"))
        .await;
    let id = auction["id"].as_str().unwrap();

    // Fill every slot with viewers of both kinds. The reading WebSocket viewer reads all the
    // time (answering pings as it does) in a task of its own.
    let mut ws = WsViewer::open(port, id, Auth::Query(&vera), None, None)
        .await
        .unwrap();
    assert_eq!(ws.next().await.unwrap().kind, "snapshot");
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel(64);
    let reader = tokio::spawn(async move {
        while let Some(frame) = ws.next().await {
            if frames_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let mut sse = SseViewer::open(port, id, Auth::Query(&vera), None, None, None).await;
    assert_eq!(sse.status, 200);
    let mut silent = WsViewer::open(port, id, Auth::Query(&vera), None, Some(4096))
        .await
        .unwrap();
    assert_eq!(sse.next().await.unwrap().kind, "snapshot");

    // One more: refused on both transports, as problems with Retry-After.
    assert_eq!(
        WsViewer::open(port, id, Auth::Query(&vera), None, None)
            .await
            .err(),
        Some(503)
    );
    let refused = SseViewer::open(port, id, Auth::Query(&vera), None, None, None).await;
    assert_eq!(refused.status, 503, "{}", refused.headers);
    assert!(refused.header("retry-after").is_some());
    assert!(refused
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/problem+json")));

    // `silent` never reads, so it never answers a ping: the node drops it and its slot frees.
    let started = Instant::now();
    let mut replacement = admitted(port, id, &vera).await;
    let dropped_after = started.elapsed();
    eprintln!("the silent viewer was dropped after {dropped_after:?}");
    assert!(dropped_after >= Duration::from_millis(PING_INTERVAL_MS));
    assert_eq!(replacement.next().await.unwrap().kind, "snapshot");
    // The readers were kept: they still get ticks.
    while frames_rx.try_recv().is_ok() {}
    let tick = tokio::time::timeout(FRAME_TIMEOUT, frames_rx.recv())
        .await
        .unwrap();
    assert_eq!(tick.map(|f| f.kind).as_deref(), Some("tick"));
    assert_eq!(sse.next().await.unwrap().kind, "tick");
    silent.until_closed().await;
    assert_eq!(silent.close_code, None, "dropped, not closed with a code");
    let metrics = server.get_anonymous("/metrics").await.text();
    assert!(
        metrics.contains("gavel_viewers_dropped_total{transport=\"ws\",reason=\"unresponsive\"} 1"),
        "{metrics}"
    );
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("gavel_viewers_refused_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 2, "both refusals counted: {metrics}");

    // A viewer that leaves frees its slot too.
    reader.abort();
    let mut another = admitted(port, id, &vera).await;
    assert_eq!(another.next().await.unwrap().kind, "snapshot");
}

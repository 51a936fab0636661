//! Live updates against a real `gavel serve`: SSE and WebSocket viewers see a snapshot, every
//! bid and status change as it is applied, ticks, `ended` and a clean close; the frame rules of
//! API.md hold on every connection; streams need a token (header or `?access_token=`); resume
//! with `sinceVersion` / `Last-Event-ID` starts from a snapshot at least that new.
//!
//! A single node for now (every node serves streams from its own replica; cluster-wide stream
//! tests belong with the cluster tests).

use std::time::{Duration, Instant};

use crate::common::*;
use crate::live_common::*;

/// Opens one viewer of each kind on `id`, authenticated differently.
async fn viewers(server: &Server, id: &str, token: &str) -> (SseViewer, WsViewer, WsViewer) {
    let sse = SseViewer::open(server.client_port, id, Auth::Query(token), None, None, None).await;
    assert_eq!(sse.status, 200, "{}", sse.headers);
    assert!(sse
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/event-stream")));
    let ws_query = WsViewer::open(server.client_port, id, Auth::Query(token), None, None)
        .await
        .expect("WebSocket with ?access_token=");
    let ws_header = WsViewer::open(server.client_port, id, Auth::Header(token), None, None)
        .await
        .expect("WebSocket with Authorization");
    (sse, ws_query, ws_header)
}

#[tokio::test]
async fn viewers_see_snapshot_bids_pause_resume_ended_and_a_clean_close() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let dave = token("dave", &["bidder"]);
    let vera = token("vera", &["viewer"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-flow"))
        .await;
    let id = auction["id"].as_str().unwrap();
    let (mut sse, mut ws1, mut ws2) = viewers(&server, id, &vera).await;

    let snapshot = sse.next().await.unwrap();
    assert_eq!((snapshot.kind.as_str(), snapshot.version), ("snapshot", 1));
    assert_eq!(snapshot.json["currentPrice"], "10.00");
    assert_eq!(snapshot.json["winnerId"], Value::Null);
    assert_eq!(snapshot.json["endAt"], auction["endAt"]);
    assert_eq!(
        sse.retry_ms,
        Some(2000),
        "the first record tells EventSource its retry"
    );
    for ws in [&mut ws1, &mut ws2] {
        let first = ws.next().await.unwrap();
        assert_eq!((first.kind.as_str(), first.version), ("snapshot", 1));
    }

    // Each step is seen by every viewer before the next, so the sequence is exact.
    let mut version = 1;
    let mut step = |expect: u64| {
        version += 1;
        assert_eq!(version, expect);
        version
    };
    for (who, amount) in [(&bob, "10"), (&dave, "12.5"), (&bob, "14")] {
        let reply = server.bid_ok(who, id, &fresh_key(), json!(amount)).await;
        assert_eq!(reply["status"], "accepted");
        let v = step(reply["version"].as_u64().unwrap());
        for frame in [
            sse.until_version(v).await,
            ws1.until_version(v).await,
            ws2.until_version(v).await,
        ] {
            assert_eq!((frame.kind.as_str(), frame.version), ("bid", v));
            assert_eq!(frame.json["currentPrice"], reply["currentPrice"]);
            assert_eq!(frame.json["winnerId"], reply["currentWinnerId"]);
            assert_eq!(frame.json["status"], "active");
        }
    }
    // A rejected bid changes nothing, so nobody hears of it.
    let low = server.bid_ok(&dave, id, &fresh_key(), json!("1")).await;
    assert_eq!(low["status"], "rejected");

    for (action, status) in [("pause", "paused"), ("resume", "active")] {
        let state = server.control_ok(&carol, id, action).await;
        let v = step(state["version"].as_u64().unwrap());
        for frame in [
            sse.until_version(v).await,
            ws1.until_version(v).await,
            ws2.until_version(v).await,
        ] {
            assert_eq!((frame.kind.as_str(), frame.version), ("status", v));
            assert_eq!(frame.json["status"], status);
            assert_eq!(frame.json["endAt"], state["endAt"]);
        }
    }

    let ended = server.control_ok(&carol, id, "end").await;
    let v = step(ended["version"].as_u64().unwrap());
    sse.until_closed().await;
    ws1.until_closed().await;
    ws2.until_closed().await;
    let expected: Vec<(String, u64)> = [
        ("snapshot", 1),
        ("bid", 2),
        ("bid", 3),
        ("bid", 4),
        ("status", 5),
        ("status", 6),
        ("ended", v),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), *v))
    .collect();
    for frames in [&sse.frames, &ws1.frames, &ws2.frames] {
        assert_sequence_rules(frames);
        assert_eq!(changes(frames), expected);
        let last = frames.last().unwrap();
        assert_eq!(last.json["winnerId"], "bob");
        assert_eq!(last.json["currentPrice"], "14.00");
        assert_eq!(last.json["status"], "ended");
    }
    assert_eq!(
        ws1.close_code,
        Some(1000),
        "WebSocket closes with 1000 after ended"
    );
    assert_eq!(ws2.close_code, Some(1000));
    assert!(
        sse.connection_closed().await,
        "SSE closes the connection after ended"
    );
}

#[tokio::test]
async fn an_ended_auction_gives_snapshot_ended_close() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-ended"))
        .await;
    let id = auction["id"].as_str().unwrap();
    server.bid_ok(&bob, id, "k1", json!("11")).await;
    server.control_ok(&carol, id, "end").await;
    let (mut sse, mut ws1, mut ws2) = viewers(&server, id, &bob).await;
    sse.until_closed().await;
    ws1.until_closed().await;
    ws2.until_closed().await;
    for frames in [&sse.frames, &ws1.frames, &ws2.frames] {
        assert_sequence_rules(frames);
        assert_eq!(
            changes(frames),
            vec![("snapshot".to_string(), 3), ("ended".to_string(), 3)]
        );
        assert_eq!(frames.len(), 2, "no tick after ended: {frames:#?}");
        assert_eq!(frames[1].json["winnerId"], "bob");
    }
    assert_eq!(ws1.close_code, Some(1000));
    assert!(sse.connection_closed().await);
}

#[tokio::test]
async fn streams_need_a_valid_token_and_a_known_auction() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-auth"))
        .await;
    let id = auction["id"].as_str().unwrap();
    let port = server.client_port;
    let expired = sign_jwt(
        SECRET.as_bytes(),
        &json!({ "sub": "vera", "roles": ["viewer"], "exp": now_s() - 10 }),
    );
    let forged = sign_jwt(
        b"another-secret-entirely-0123456789",
        &json!({ "sub": "vera", "roles": ["viewer"], "exp": now_s() + 60 }),
    );
    for auth in [
        Auth::None,
        Auth::Query(&expired),
        Auth::Header(&forged),
        Auth::Query("x.y.z"),
    ] {
        assert_eq!(
            WsViewer::open(port, id, auth, None, None).await.err(),
            Some(401),
            "{auth:?}"
        );
        let sse = SseViewer::open(port, id, auth, None, None, None).await;
        assert_eq!(sse.status, 401, "{auth:?}: {}", sse.headers);
        assert!(sse
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/problem+json")));
    }
    // A bad header is not rescued by a good query token.
    let vera = token("vera", &["viewer"]);
    let path = format!("/auctions/{id}/stream?access_token={vera}");
    let resp = send(server.request(reqwest::Method::GET, &path, Some(&forged))).await;
    resp.expect_problem(401);
    // No role at all: 403.
    let nobody = token("nobody", &[]);
    assert_eq!(
        WsViewer::open(port, id, Auth::Query(&nobody), None, None)
            .await
            .err(),
        Some(403)
    );
    // Unknown auction: 404; unknown parameter or bad resume version: 400.
    assert_eq!(
        WsViewer::open(port, "no-such-auction", Auth::Query(&vera), None, None)
            .await
            .err(),
        Some(404)
    );
    for query in ["&limit=3", "&sinceVersion=zero"] {
        let path = format!("/auctions/{id}/stream?access_token={vera}{query}");
        send(server.request(reqwest::Method::GET, &path, None))
            .await
            .expect_problem(400);
    }
    // A plain GET of the WebSocket endpoint (no upgrade) is a 400 problem too.
    send(server.request(
        reqwest::Method::GET,
        &format!("/auctions/{id}/ws"),
        Some(&vera),
    ))
    .await
    .expect_problem(400);
}

#[tokio::test]
async fn resume_starts_from_a_snapshot_at_least_as_new() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-resume"))
        .await;
    let id = auction["id"].as_str().unwrap();
    for (i, amount) in ["10", "11", "12"].iter().enumerate() {
        server
            .bid_ok(&bob, id, &format!("k{i}"), json!(amount))
            .await;
    }
    let port = server.client_port;
    let mut by_header = SseViewer::open(port, id, Auth::Header(&bob), None, Some("3"), None).await;
    let mut by_query = WsViewer::open(port, id, Auth::Query(&bob), Some(4), None)
        .await
        .unwrap();
    for first in [
        by_header.next().await.unwrap(),
        by_query.next().await.unwrap(),
    ] {
        assert_eq!((first.kind.as_str(), first.version), ("snapshot", 4));
    }
    server.bid_ok(&bob, id, "k3", json!("13")).await;
    assert_eq!(by_header.until_version(5).await.kind, "bid");
    assert_eq!(by_query.until_version(5).await.kind, "bid");
    // Asking for a version this replica does not have is refused (after a bounded wait),
    // never answered with an older snapshot.
    let started = Instant::now();
    let ahead = SseViewer::open(port, id, Auth::Header(&bob), Some(99), None, None).await;
    assert_eq!(ahead.status, 503, "{}", ahead.headers);
    assert!(ahead.header("retry-after").is_some());
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test]
async fn ticks_come_about_every_second_with_the_time_left() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-ticks"))
        .await;
    let id = auction["id"].as_str().unwrap();
    let mut ws = WsViewer::open(server.client_port, id, Auth::Query(&carol), None, None)
        .await
        .unwrap();
    let snapshot = ws.next().await.unwrap();
    let end_ms = time_ms(&auction["endAt"]);
    let mut ticks = Vec::new();
    while ticks.len() < 3 {
        let frame = ws.next().await.unwrap();
        assert_eq!(frame.kind, "tick");
        ticks.push((Instant::now(), frame));
    }
    assert_sequence_rules(&ws.frames);
    for (_, tick) in &ticks {
        assert_eq!(tick.version, snapshot.version);
        let remaining = tick.json["remainingMs"].as_i64().unwrap();
        let server_ms = time_ms(&tick.json["serverTime"]);
        assert_eq!(
            remaining,
            end_ms - server_ms,
            "remainingMs = endAt - serverTime"
        );
    }
    for pair in ticks.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(
            gap > Duration::from_millis(500) && gap < Duration::from_millis(2_500),
            "ticks about every second, got {gap:?}"
        );
        assert!(pair[1].1.json["remainingMs"].as_i64() < pair[0].1.json["remainingMs"].as_i64());
    }
}

#[tokio::test]
async fn a_deadline_end_reaches_viewers_and_the_metrics_count_them() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &auction_body("live-deadline", -1_000, 2_500))
        .await;
    let id = auction["id"].as_str().unwrap();
    let mut ws = WsViewer::open(server.client_port, id, Auth::Query(&bob), None, None)
        .await
        .unwrap();
    let mut sse =
        SseViewer::open(server.client_port, id, Auth::Query(&bob), None, None, None).await;
    ws.next().await.unwrap();
    let metrics = server
        .get_anonymous("/metrics")
        .await
        .expect_status(200)
        .text();
    assert!(
        metrics.contains("gavel_viewers{transport=\"ws\"} 1"),
        "viewers gauge: {metrics}"
    );
    server.bid_ok(&bob, id, "k", json!("10")).await;
    ws.until_closed().await;
    sse.until_closed().await;
    for frames in [&ws.frames, &sse.frames] {
        assert_sequence_rules(frames);
        let last = frames.last().unwrap();
        assert_eq!((last.kind.as_str(), last.version), ("ended", 3));
        assert_eq!(last.json["winnerId"], "bob");
    }
    assert_eq!(ws.close_code, Some(1000));
    let metrics = poll_until(
        "the viewers gauge back at 0",
        Duration::from_secs(10),
        || async {
            let text = server.get_anonymous("/metrics").await.text();
            text.contains("gavel_viewers{transport=\"ws\"} 0")
                .then_some(text)
        },
    )
    .await;
    for name in [
        "gavel_viewer_frames_sent_total{transport=\"ws\"}",
        "gavel_viewer_frames_sent_total{transport=\"sse\"}",
        "gavel_viewer_apply_to_send_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn shutdown_ends_open_streams_at_once() {
    let mut server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("live-shutdown"))
        .await;
    let id = auction["id"].as_str().unwrap();
    let mut ws = WsViewer::open(server.client_port, id, Auth::Query(&carol), None, None)
        .await
        .unwrap();
    let mut sse = SseViewer::open(
        server.client_port,
        id,
        Auth::Query(&carol),
        None,
        None,
        None,
    )
    .await;
    ws.next().await.unwrap();
    sse.next().await.unwrap();
    // Well within --shutdown-grace-ms (10 s): open streams do not hold shutdown up.
    let status = server.terminate(Duration::from_secs(5)).await;
    assert!(status.success(), "{status}; log:\n{}", server.log_tail());
    ws.until_closed().await;
    sse.until_closed().await;
    assert_eq!(ws.close_code, Some(1001), "going away");
}

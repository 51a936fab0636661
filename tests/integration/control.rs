//! Control actions against a real `gavel serve`: start/pause/resume/end move the status as
//! API.md allows (409 problems otherwise, changing nothing), each is exactly one `version`,
//! resume moves `endAt` later by exactly the paused duration as the server stamped it, and the
//! winner at a manual end is the current highest bidder.

use std::time::Duration;

use crate::common::*;

/// Slack for the server's monotonic stamps against the test's clock readings, in ms.
const STAMP_SLACK_MS: i64 = 5;

#[tokio::test]
async fn pause_resume_moves_end_by_the_paused_duration() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("post-pause"))
        .await;
    let id = auction["id"].as_str().unwrap();
    let end0 = time_ms(&auction["endAt"]);
    server.bid_ok(&bob, id, "before", json!("10")).await;

    let pause_sent = now_ms();
    let paused = server.control_ok(&carol, id, "pause").await;
    let pause_seen = now_ms();
    assert_eq!(paused["status"], "paused");
    assert_eq!(paused["version"], 3);
    assert_eq!(
        time_ms(&paused["endAt"]),
        end0,
        "pausing does not move endAt"
    );

    let refused = server.bid_ok(&bob, id, "while-paused", json!("11")).await;
    assert_eq!(
        (&refused["status"], &refused["reason"]),
        (&json!("rejected"), &json!("paused"))
    );
    assert_eq!(refused["version"], 3);
    for illegal in ["pause", "start"] {
        server
            .control(&carol, id, illegal)
            .await
            .expect_problem(409);
    }

    // Let a measurable time pass while paused.
    tokio::time::sleep(Duration::from_millis(800)).await;

    let resume_sent = now_ms();
    let resumed = server.control_ok(&carol, id, "resume").await;
    let resume_seen = now_ms();
    assert_eq!(resumed["status"], "active");
    assert_eq!(resumed["version"], 4);
    let shift = time_ms(&resumed["endAt"]) - end0;
    // The pause and resume stamps lie inside their request windows, so the shift lies between
    // the inner and the outer distance of those windows.
    let (inner, outer) = (resume_sent - pause_seen, resume_seen - pause_sent);
    assert!(
        shift >= inner - STAMP_SLACK_MS && shift <= outer + STAMP_SLACK_MS,
        "endAt moved by {shift} ms; the pause lasted between {inner} and {outer} ms"
    );
    assert!(
        shift >= 800,
        "we waited 800 ms while paused, endAt moved {shift} ms"
    );
    assert_eq!(
        server.get_auction(&carol, id).await["endAt"],
        resumed["endAt"]
    );

    for illegal in ["resume", "start"] {
        server
            .control(&carol, id, illegal)
            .await
            .expect_problem(409);
    }
    let ok = server.bid_ok(&bob, id, "after", json!("11")).await;
    assert_eq!(ok["status"], "accepted");
    assert_eq!(ok["version"], 5);
    assert_eq!(ok["endAt"], resumed["endAt"]);

    let end_sent = now_ms();
    let ended = server.control_ok(&carol, id, "end").await;
    let end_seen = now_ms();
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["version"], 6);
    assert_eq!(ended["currentWinnerId"], "bob");
    assert_eq!(ended["currentPrice"], "11.00");
    let ended_at = time_ms(&ended["endedAt"]);
    assert!(
        (end_sent - STAMP_SLACK_MS..=end_seen + STAMP_SLACK_MS).contains(&ended_at),
        "a manual end happens now: endedAt {ended_at} outside [{end_sent}, {end_seen}]"
    );

    // Nothing is allowed after the end, and nothing changes.
    for illegal in ["start", "pause", "resume", "end"] {
        server
            .control(&carol, id, illegal)
            .await
            .expect_problem(409);
    }
    assert_eq!(server.get_auction(&carol, id).await, ended);
}

#[tokio::test]
async fn transitions_from_every_status() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let root = token("root", &["admin"]);
    let later = auction_body("post-later", 3_600_000, 7_200_000);

    // scheduled: pause and resume are 409; start makes it active now.
    let scheduled = server.create_auction(&carol, &later).await;
    let id = scheduled["id"].as_str().unwrap();
    for illegal in ["pause", "resume"] {
        server
            .control(&carol, id, illegal)
            .await
            .expect_problem(409);
    }
    assert_eq!(
        server.get_auction(&carol, id).await,
        scheduled,
        "409 changed nothing"
    );
    let started = server.control_ok(&carol, id, "start").await;
    assert_eq!(
        (&started["status"], &started["version"]),
        (&json!("active"), &json!(2))
    );
    assert_eq!(started["endAt"], scheduled["endAt"]);
    let bid = server.bid_ok(&bob, id, "k", json!("10")).await;
    assert_eq!(
        bid["status"], "accepted",
        "bids count once started by hand: {bid}"
    );

    // scheduled -> ended directly: no winner, the start price stays.
    let scheduled = server.create_auction(&carol, &later).await;
    let id = scheduled["id"].as_str().unwrap();
    let ended = server.control_ok(&root, id, "end").await;
    assert_eq!(
        (&ended["status"], &ended["version"]),
        (&json!("ended"), &json!(2))
    );
    assert_eq!(ended["currentWinnerId"], Value::Null);
    assert_eq!(ended["currentPrice"], "10.00");
    assert_eq!(ended["bidCount"], 0);

    // paused -> ended: the winner is the highest bidder at the pause.
    let active = server
        .create_auction(&carol, &active_auction_body("post-active"))
        .await;
    let id = active["id"].as_str().unwrap();
    server.bid_ok(&bob, id, "k", json!("15")).await;
    server.control_ok(&carol, id, "pause").await;
    let ended = server.control_ok(&carol, id, "end").await;
    assert_eq!(
        (&ended["status"], &ended["version"]),
        (&json!("ended"), &json!(4))
    );
    assert_eq!(ended["currentWinnerId"], "bob");
    assert_eq!(ended["currentPrice"], "15.00");
    assert_eq!(ended["bidCount"], 1);
    for illegal in ["start", "pause", "resume", "end"] {
        server.control(&root, id, illegal).await.expect_problem(409);
    }

    // Unknown auctions are 404 for every action.
    for action in ["start", "pause", "resume", "end"] {
        server
            .control(&root, "no-such-auction", action)
            .await
            .expect_problem(404);
    }
}

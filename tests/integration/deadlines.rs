//! Punctuality against a real `gavel serve`: a scheduled auction becomes active by the timer
//! within a second of `startAt` (never before); an auction ends within a second of `endAt`,
//! with `endedAt == endAt`, the last accepted bidder as winner, and every bid stamped at or after
//! `endAt` rejected `ended`; anti-sniping moves `endAt` to the bid's time + the window and the
//! old deadline no longer fires; a paused auction outlives its original `endAt`.
//!
//! Timing bounds use the test's wall clock, which is the server's (same machine).

use std::time::Duration;

use crate::common::*;

/// How late after its deadline a start or end may become visible.
const DEADLINE_SLA_MS: i64 = 1_000;

/// Polls the local replica until `status` leaves `from`; returns (auction, wall time seen).
/// Panics if the new status is seen before `not_before_ms` or nothing changes in time.
async fn await_status_change(
    server: &Server,
    token: &str,
    id: &str,
    from: &str,
    not_before_ms: i64,
) -> (Value, i64) {
    let timeout_ms = (not_before_ms - now_ms()).max(0) + DEADLINE_SLA_MS + 5_000;
    poll_until(
        &format!("auction {id} to leave {from}"),
        Duration::from_millis(timeout_ms as u64),
        move || async move {
            let auction = server.get_auction_local(token, id).await;
            let seen_ms = now_ms();
            if auction["status"] == from {
                return None;
            }
            assert!(
                seen_ms >= not_before_ms,
                "status changed before its deadline ({seen_ms} < {not_before_ms}): {auction}"
            );
            Some((auction, seen_ms))
        },
    )
    .await
}

#[tokio::test]
async fn scheduled_auction_starts_on_time() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let start_ms = now_ms() + 1_500;
    let auction = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-start",
                "startAt": rfc3339(start_ms),
                "endAt": rfc3339(start_ms + 3_600_000),
                "startPrice": "10.00",
                "minIncrement": "1.00",
            }),
        )
        .await;
    assert_eq!(
        (&auction["status"], &auction["version"]),
        (&json!("scheduled"), &json!(1))
    );
    let id = auction["id"].as_str().unwrap();

    let early = server.bid_ok(&bob, id, "early", json!("10")).await;
    if now_ms() < start_ms {
        // Stamped before it came back, so before startAt.
        assert_eq!(early["reason"], "not_started", "{early}");
        assert_eq!(early["version"], 1);
    }

    let (active, seen_ms) = await_status_change(&server, &bob, id, "scheduled", start_ms).await;
    assert_eq!(active["status"], "active");
    assert!(
        seen_ms <= start_ms + DEADLINE_SLA_MS,
        "started {} ms after startAt",
        seen_ms - start_ms
    );
    assert_eq!(active["version"], 2, "the start is one status change");
    assert_eq!(active["startAt"], rfc3339(start_ms));

    let on_time = server.bid_ok(&bob, id, "on-time", json!("10")).await;
    assert_eq!(on_time["status"], "accepted");
    assert_eq!(on_time["version"], 3);
    let history = server.history(&bob, id, "all").await;
    for entry in &history {
        let stamped = time_ms(&entry["createdAt"]);
        let accepted = entry["status"] == "accepted";
        assert_eq!(
            accepted,
            stamped >= start_ms,
            "accepted iff stamped after startAt: {entry}"
        );
    }
}

#[tokio::test]
async fn auction_ends_on_time_and_seals_late_bids() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    // Four bidders in turn, to stay well under the per-bidder rate limit.
    let bidders: Vec<(String, String)> = (0..4)
        .map(|i| {
            (
                format!("bidder-{i}"),
                token(&format!("bidder-{i}"), &["bidder"]),
            )
        })
        .collect();
    let now = now_ms();
    let end_ms = now + 2_000;
    let auction = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-end",
                "startAt": rfc3339(now - 1_000),
                "endAt": rfc3339(end_ms),
                "startPrice": "10.00",
                "minIncrement": "1.00",
            }),
        )
        .await;
    let id = auction["id"].as_str().unwrap();

    // Outbid each other back to back until the auction refuses: the last bids straddle endAt.
    let mut next = dec("10");
    let mut last_accepted: Option<(&str, Decimal)> = None;
    let mut accepted = 0u64;
    // One bid per 5 ms at most: each bidder stays at 50 bids/s, under the per-bidder limit.
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for round in 0.. {
        pace.tick().await;
        assert!(
            now_ms() < end_ms + 5_000,
            "bids still decided 5 s after endAt"
        );
        let (who, tok) = &bidders[round % bidders.len()];
        let reply = server
            .bid_ok(tok, id, &format!("{who}-{round}"), json!(next.to_string()))
            .await;
        if reply["status"] == "accepted" {
            accepted += 1;
            last_accepted = Some((who.as_str(), next));
            next += dec("1");
            continue;
        }
        assert_eq!(
            reply["reason"], "ended",
            "the only possible refusal: {reply}"
        );
        break;
    }
    let (winner, price) = last_accepted.expect("bids were accepted during 2 s");

    let (ended, seen_ms) = await_status_change(&server, &carol, id, "active", end_ms).await;
    assert_eq!(ended["status"], "ended");
    assert!(
        seen_ms <= end_ms + DEADLINE_SLA_MS,
        "ended {} ms after endAt",
        seen_ms - end_ms
    );
    assert_eq!(ended["endAt"], rfc3339(end_ms));
    assert_eq!(
        ended["endedAt"],
        rfc3339(end_ms),
        "a timed end happens at endAt"
    );
    assert_eq!(ended["currentWinnerId"], json!(winner));
    assert_eq!(money(&ended["currentPrice"]), price);
    assert_eq!(ended["bidCount"], accepted);
    assert_eq!(
        ended["version"],
        accepted + 2,
        "create + accepted bids + end"
    );
    assert_eq!(server.get_auction(&carol, id).await, ended);

    let history = server.history(&carol, id, "all").await;
    for entry in &history {
        let stamped = time_ms(&entry["createdAt"]);
        if entry["status"] == "accepted" {
            assert!(stamped < end_ms, "accepted at or after endAt: {entry}");
        } else {
            assert_eq!(entry["reason"], "ended");
            assert!(stamped >= end_ms, "rejected `ended` before endAt: {entry}");
        }
    }

    let late = server
        .bid_ok(&bidders[0].1, id, "late", json!("1000"))
        .await;
    assert_eq!(
        (&late["status"], &late["reason"]),
        (&json!("rejected"), &json!("ended"))
    );
    assert_eq!(late["version"], ended["version"]);
    assert_eq!(late["currentWinnerId"], json!(winner));
}

/// The history entry of one bid.
async fn stamp_of(server: &Server, token: &str, id: &str, bid_id: &Value) -> i64 {
    let history = server.history(token, id, "all").await;
    let entry = history
        .iter()
        .find(|h| &h["bidId"] == bid_id)
        .unwrap_or_else(|| panic!("bid {bid_id} not in the history"));
    time_ms(&entry["createdAt"])
}

#[tokio::test]
async fn anti_sniping_moves_the_end() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let dave = token("dave", &["bidder"]);
    let now = now_ms();
    let end_ms = now + 3_000;
    let window_ms = 30_000;
    let body = json!({
        "postId": "post-snipe",
        "startAt": rfc3339(now - 1_000),
        "endAt": rfc3339(end_ms),
        "startPrice": "10.00",
        "minIncrement": "1.00",
        "antiSnipingSeconds": 30,
    });
    let auction = server.create_auction(&carol, &body).await;
    let id = auction["id"].as_str().unwrap();

    let mut previous_end = end_ms;
    for (i, (tok, amount)) in [(&bob, "10"), (&dave, "11")].into_iter().enumerate() {
        let reply = server
            .bid_ok(tok, id, &format!("snipe-{i}"), json!(amount))
            .await;
        assert_eq!(reply["status"], "accepted");
        let stamped = stamp_of(&server, &carol, id, &reply["bidId"]).await;
        let new_end = time_ms(&reply["endAt"]);
        assert_eq!(
            new_end,
            stamped + window_ms,
            "endAt = bid time + antiSnipingSeconds: {reply}"
        );
        assert!(new_end >= previous_end);
        previous_end = new_end;
        let now = server.get_auction(&carol, id).await;
        assert_eq!(now["endAt"], reply["endAt"]);
    }

    // The original deadline passes: the auction stays active.
    sleep_until_wall_ms(end_ms + 500).await;
    let still = server.get_auction_local(&carol, id).await;
    assert_eq!(
        still["status"], "active",
        "ended at the superseded endAt: {still}"
    );
    assert_eq!(time_ms(&still["endAt"]), previous_end);
    assert_eq!(still["version"], 3);

    let reply = server.bid_ok(&bob, id, "snipe-late", json!("12")).await;
    assert_eq!(
        reply["status"], "accepted",
        "a bid before the extended end: {reply}"
    );
    let stamped = stamp_of(&server, &carol, id, &reply["bidId"]).await;
    assert_eq!(time_ms(&reply["endAt"]), stamped + window_ms);

    // With more than the window left, the end does not move.
    let calm = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-calm",
                "startAt": rfc3339(now_ms() - 1_000),
                "endAt": rfc3339(now_ms() + 3_600_000),
                "startPrice": "10.00",
                "minIncrement": "1.00",
                "antiSnipingSeconds": 30,
            }),
        )
        .await;
    let calm_id = calm["id"].as_str().unwrap();
    let reply = server.bid_ok(&bob, calm_id, "calm", json!("10")).await;
    assert_eq!(reply["status"], "accepted");
    assert_eq!(
        reply["endAt"], calm["endAt"],
        "no extension with an hour left"
    );
}

#[tokio::test]
async fn paused_auction_outlives_its_original_end() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let now = now_ms();
    let end_ms = now + 1_500;
    let auction = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-pause-end",
                "startAt": rfc3339(now - 1_000),
                "endAt": rfc3339(end_ms),
                "startPrice": "10.00",
                "minIncrement": "1.00",
            }),
        )
        .await;
    let id = auction["id"].as_str().unwrap();
    let paused = server.control_ok(&carol, id, "pause").await;
    let paused_seen_ms = now_ms();
    assert_eq!(paused["status"], "paused");
    assert_eq!(
        paused["endAt"],
        rfc3339(end_ms),
        "pausing does not move endAt yet"
    );
    let refused = server.bid_ok(&bob, id, "while-paused", json!("10")).await;
    assert_eq!(refused["reason"], "paused");

    sleep_until_wall_ms(end_ms + 500).await;
    let still = server.get_auction_local(&carol, id).await;
    assert_eq!(
        still["status"], "paused",
        "a paused auction must not end: {still}"
    );
    assert_eq!(still["version"], 2);

    let resume_sent_ms = now_ms();
    let resumed = server.control_ok(&carol, id, "resume").await;
    assert_eq!(
        (&resumed["status"], &resumed["version"]),
        (&json!("active"), &json!(3))
    );
    let new_end = time_ms(&resumed["endAt"]);
    assert!(
        new_end - end_ms >= resume_sent_ms - paused_seen_ms,
        "endAt moved by {} ms, less than the pause ({} ms)",
        new_end - end_ms,
        resume_sent_ms - paused_seen_ms
    );

    let bid = server.bid_ok(&bob, id, "after-resume", json!("10")).await;
    assert_eq!(bid["status"], "accepted", "still open after resume: {bid}");
    assert_eq!(bid["version"], 4);

    let (ended, seen_ms) = await_status_change(&server, &carol, id, "active", new_end).await;
    assert!(
        seen_ms <= new_end + DEADLINE_SLA_MS,
        "ended {} ms after the moved endAt",
        seen_ms - new_end
    );
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["endedAt"], resumed["endAt"]);
    assert_eq!(ended["currentWinnerId"], "bob");
    assert_eq!(ended["version"], 5);
}

/// Many deadlines spread over every group, 60 ms apart: each fires on time, at its own endAt.
#[tokio::test]
async fn many_deadlines_across_groups_all_fire() {
    const AUCTIONS: i64 = 24;
    const SPACING_MS: i64 = 60;
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let first_end_ms = now_ms() + 1_500;
    let mut pending = Vec::new();
    for i in 0..AUCTIONS {
        let end_ms = first_end_ms + i * SPACING_MS;
        let body = json!({
            "postId": format!("post-many-{i}"),
            "startAt": rfc3339(now_ms() - 1_000),
            "endAt": rfc3339(end_ms),
            "startPrice": "10.00",
            "minIncrement": "1.00",
        });
        let id = server.create_auction(&carol, &body).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let with_bid = i % 2 == 1;
        if with_bid {
            let bid = server.bid_ok(&bob, &id, "k", json!("10")).await;
            assert_eq!(bid["status"], "accepted", "{bid}");
        }
        pending.push((id, end_ms, with_bid));
    }
    let last_end_ms = first_end_ms + (AUCTIONS - 1) * SPACING_MS;
    assert!(
        now_ms() < first_end_ms,
        "setup took too long for this test's timing"
    );

    let deadline_ms = last_end_ms + DEADLINE_SLA_MS + 5_000;
    while !pending.is_empty() {
        assert!(
            now_ms() < deadline_ms,
            "{} auctions never ended",
            pending.len()
        );
        let mut still = Vec::new();
        for (id, end_ms, with_bid) in pending {
            let auction = server.get_auction_local(&carol, &id).await;
            let seen_ms = now_ms();
            if auction["status"] != "ended" {
                assert_eq!(auction["status"], "active");
                still.push((id, end_ms, with_bid));
                continue;
            }
            assert!(seen_ms >= end_ms, "ended before endAt: {auction}");
            assert!(
                seen_ms <= end_ms + DEADLINE_SLA_MS,
                "ended {} ms after endAt: {auction}",
                seen_ms - end_ms
            );
            assert_eq!(auction["endedAt"], rfc3339(end_ms));
            let winner = if with_bid { json!("bob") } else { Value::Null };
            assert_eq!(auction["currentWinnerId"], winner);
            assert_eq!(auction["version"], if with_bid { 3 } else { 2 });
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
}

/// Pauses sent around the deadline: one answered before endAt must have paused it (and the
/// auction then does not end); one sent at or after endAt must be 409 and the auction ended at
/// endAt. A pause must never revive an auction past its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pauses_racing_the_deadline_never_revive_an_auction() {
    const AUCTIONS: i64 = 12;
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let end_ms = now_ms() + 1_000;
    let mut ids = Vec::new();
    for i in 0..AUCTIONS {
        let body = json!({
            "postId": format!("post-race-{i}"),
            "startAt": rfc3339(now_ms() - 1_000),
            "endAt": rfc3339(end_ms),
            "startPrice": "10.00",
            "minIncrement": "1.00",
        });
        ids.push(
            server.create_auction(&carol, &body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let tasks: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (api, tok, id) = (server.api(), carol.clone(), id.clone());
            // From 12 ms before the deadline to 10 ms after it.
            let at_ms = end_ms - 12 + 2 * i as i64;
            tokio::spawn(async move {
                sleep_until_wall_ms(at_ms).await;
                let sent_ms = now_ms();
                let resp = api.control(&tok, &id, "pause").await;
                (id, sent_ms, now_ms(), resp)
            })
        })
        .collect();
    for task in tasks {
        let (id, sent_ms, answered_ms, resp) = task.await.expect("pause task");
        match resp.status {
            200 => {
                assert!(
                    sent_ms < end_ms,
                    "paused by a request sent {} ms after endAt",
                    sent_ms - end_ms
                );
                let auction = server.get_auction(&carol, &id).await;
                assert_eq!(auction["status"], "paused");
            }
            409 => {
                assert!(
                    answered_ms >= end_ms,
                    "409 for a pause answered {} ms before endAt",
                    end_ms - answered_ms
                );
                resp.assert_problem_body();
                let ended = server.get_auction(&carol, &id).await;
                assert_eq!(ended["status"], "ended");
                assert_eq!(ended["endedAt"], rfc3339(end_ms));
            }
            other => panic!("pause answered HTTP {other}: {}", resp.text()),
        }
    }
}

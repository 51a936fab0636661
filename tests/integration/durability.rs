//! Durability against a real `gavel serve`: bidders race while the server is killed with
//! SIGKILL; after a restart on the same data dir every acknowledged decision is in the history
//! unchanged, the auction's state is its last accepted bid, idempotent retries still get the
//! first answer byte for byte, and a deadline that passed while the server was down is applied
//! at once (`endedAt == endAt`). A SIGTERM stop exits 0 within seconds and keeps everything.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

const WRITERS: usize = 6;
/// Acknowledged decisions to collect before the SIGKILL.
const ACKS_BEFORE_KILL: usize = 60;
/// How long collecting them may take.
const ACKS_TIMEOUT_MS: u64 = 60_000;
/// Pause before bidding again after a 429/503/504.
const RETRY_BACKOFF_MS: u64 = 50;
/// How soon after readiness an overdue deadline must have been applied.
const GUARD_SLA_MS: u64 = 5_000;

/// An acknowledged decision: the bidder, key, amount sent and the exact response body.
struct Ack {
    bidder: String,
    key: String,
    amount: Value,
    body: Vec<u8>,
}

impl Ack {
    fn reply(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON reply")
    }
}

/// Bids above the current price until the server stops answering; records every 200.
async fn writer(
    api: Api,
    id: String,
    name: String,
    acks: Arc<Mutex<Vec<Ack>>>,
    count: Arc<AtomicUsize>,
) {
    let tok = token(&name, &["bidder"]);
    let path = format!("/auctions/{id}");
    loop {
        let read = api
            .request(reqwest::Method::GET, &path, Some(&tok))
            .query(&[("consistency", "local")]);
        let Ok(state) = try_send(read).await else {
            return;
        };
        if state.status != 200 {
            return;
        }
        let state = state.json();
        let amount = if state["currentWinnerId"].is_null() {
            money(&state["startPrice"])
        } else {
            money(&state["currentPrice"]) + money(&state["minIncrement"])
        };
        let amount = json!(amount.to_string());
        let key = fresh_key();
        let send_bid = api
            .request(reqwest::Method::POST, &format!("{path}/bids"), Some(&tok))
            .header("Idempotency-Key", &key)
            .json(&json!({ "amount": amount }));
        let Ok(resp) = try_send(send_bid).await else {
            return;
        };
        match resp.status {
            200 => {
                acks.lock().unwrap().push(Ack {
                    bidder: name.clone(),
                    key,
                    amount,
                    body: resp.body,
                });
                count.fetch_add(1, Ordering::SeqCst);
            }
            // Shed, rate limited or undecided: nothing to record; go again.
            429 | 503 | 504 => tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await,
            other => panic!("bid answered HTTP {other}: {}", resp.text()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_no_acknowledged_bid() {
    let mut server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("post-durable"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();
    // An auction whose end passes while the server is down.
    let end_ms = now_ms() + 2_500;
    let doomed = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-doomed",
                "startAt": rfc3339(now_ms() - 1_000),
                "endAt": rfc3339(end_ms),
                "startPrice": "10.00",
                "minIncrement": "1.00",
            }),
        )
        .await;
    let doomed_id = doomed["id"].as_str().unwrap().to_owned();
    let doomed_bid = server.bid_ok(&bob, &doomed_id, "doomed", json!("10")).await;
    assert_eq!(doomed_bid["status"], "accepted");
    // One that starts while the server is down, and one paused just before the crash.
    let start_ms = now_ms() + 1_000;
    let sleeper = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-sleeper",
                "startAt": rfc3339(start_ms),
                "endAt": rfc3339(start_ms + 3_600_000),
                "startPrice": "10.00",
                "minIncrement": "1.00",
            }),
        )
        .await;
    let sleeper_id = sleeper["id"].as_str().unwrap().to_owned();
    let held = server
        .create_auction(&carol, &active_auction_body("post-held"))
        .await;
    let held_id = held["id"].as_str().unwrap().to_owned();
    let held = server.control_ok(&carol, &held_id, "pause").await;

    let acks = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            tokio::spawn(writer(
                server.api(),
                id.clone(),
                format!("writer-{i}"),
                acks.clone(),
                count.clone(),
            ))
        })
        .collect();
    poll_until(
        "enough acknowledged bids",
        Duration::from_millis(ACKS_TIMEOUT_MS),
        || async { (count.load(Ordering::SeqCst) >= ACKS_BEFORE_KILL).then_some(()) },
    )
    .await;
    server.kill9();
    for writer in writers {
        writer.await.expect("a writer panicked");
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    eprintln!("{} decisions acknowledged before SIGKILL", acks.len());

    // Let the doomed auction's deadline pass while the server is down.
    sleep_until_wall_ms(end_ms + 200).await;
    server.restart().await;

    let history = server.history(&carol, &id, "all").await;
    check_chain(&auction, &history);
    assert!(
        history.len() >= acks.len(),
        "decisions lost: {} < {}",
        history.len(),
        acks.len()
    );
    for ack in &acks {
        assert_kept(&history, &ack.reply(), &ack.bidder);
    }
    let state = server.get_auction(&carol, &id).await;
    assert_state_matches(&auction, &state, &history);

    // Retries after the crash get the first answers, byte for byte.
    for ack in acks.iter().step_by(5) {
        let tok = token(&ack.bidder, &["bidder"]);
        let resp = server
            .bid(&tok, &id, &ack.key, ack.amount.clone())
            .await
            .expect_status(200);
        assert_eq!(resp.header("idempotent-replayed").as_deref(), Some("true"));
        assert_eq!(
            resp.text(),
            String::from_utf8_lossy(&ack.body),
            "replay after restart"
        );
    }

    // Control actions survive like bids; a start that fell due while down is applied.
    assert_eq!(server.get_auction(&carol, &held_id).await, held);
    let started = poll_until(
        "the overdue start to be applied after the restart",
        Duration::from_millis(GUARD_SLA_MS),
        || async {
            let a = server.get_auction_local(&carol, &sleeper_id).await;
            (a["status"] == "active").then_some(a)
        },
    )
    .await;
    assert_eq!(started["version"], 2);

    // The overdue deadline was applied on its own, at endAt.
    let ended = poll_until(
        "the overdue auction to end after the restart",
        Duration::from_millis(GUARD_SLA_MS),
        || async {
            let a = server.get_auction_local(&carol, &doomed_id).await;
            (a["status"] == "ended").then_some(a)
        },
    )
    .await;
    assert_eq!(ended["endedAt"], rfc3339(end_ms));
    assert_eq!(ended["currentWinnerId"], "bob");
    assert_eq!(ended["version"], 3, "create, bid, end");

    // And the auction takes new bids, continuing the version sequence.
    let next = money(&state["currentPrice"]) + money(&state["minIncrement"]);
    let reply = server
        .bid_ok(&bob, &id, "after-restart", json!(next.to_string()))
        .await;
    assert_eq!(reply["status"], "accepted");
    assert_eq!(reply["version"], state["version"].as_u64().unwrap() + 1);
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_keeps_everything() {
    let mut server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bidders = [token("bob", &["bidder"]), token("dave", &["bidder"])];
    let auction = server
        .create_auction(&carol, &active_auction_body("post-term"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();
    server
        .create_auction(
            &carol,
            &auction_body("post-term-later", 3_600_000, 7_200_000),
        )
        .await;
    for (i, amount) in ["10", "11", "11.5", "12", "20"].into_iter().enumerate() {
        server
            .bid_ok(&bidders[i % 2], &id, &format!("k{i}"), json!(amount))
            .await;
    }
    server.control_ok(&carol, &id, "pause").await;
    let keyed_body = active_auction_body("post-term-keyed");
    let keyed = server
        .post("/auctions", &carol, Some(&keyed_body), Some("term-key"))
        .await
        .expect_json(201)
        .json();
    let state = server.get_auction(&carol, &id).await;
    let history = server.history(&carol, &id, "all").await;
    let listing = server.pages("/auctions", &carol, &[], "auctions").await;

    let status = server.terminate(Duration::from_secs(5)).await;
    assert!(status.success(), "SIGTERM must exit 0, got {status}");

    server.restart().await;
    assert_eq!(server.get_auction(&carol, &id).await, state);
    assert_eq!(server.history(&carol, &id, "all").await, history);
    assert_eq!(
        server.pages("/auctions", &carol, &[], "auctions").await,
        listing
    );
    let resumed = server.control_ok(&carol, &id, "resume").await;
    assert_eq!(resumed["version"], state["version"].as_u64().unwrap() + 1);
    // Idempotency keys outlive the process too.
    let retried = server
        .post("/auctions", &carol, Some(&keyed_body), Some("term-key"))
        .await
        .expect_json(201)
        .json();
    assert_eq!(retried["id"], keyed["id"]);
}

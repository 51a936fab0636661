//! Idempotency against a real `gavel serve`: a bid retried with the same key and body gets the
//! first decision byte for byte plus `Idempotent-Replayed: true`, even after the auction moved
//! on; the same key with another amount is a 422 problem and decides nothing; the scope is
//! (auction, bidder, key); and `POST /auctions` with an `Idempotency-Key` replays (201, same id)
//! or conflicts (422), scoped per creator.

use crate::common::*;
use reqwest::Method;

fn replayed(resp: &Resp) -> bool {
    resp.header("idempotent-replayed").as_deref() == Some("true")
}

#[tokio::test]
async fn bid_retries_get_the_first_decision() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let dave = token("dave", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("post-idem"))
        .await;
    let id = auction["id"].as_str().unwrap();

    let first = server
        .bid(&bob, id, "k-1", json!("10"))
        .await
        .expect_status(200);
    assert!(!replayed(&first), "a first decision is not a replay");
    let first_reply = first.json();
    assert_bid_reply_shape(&first_reply);
    assert_eq!(first_reply["status"], "accepted");

    let again = server
        .bid(&bob, id, "k-1", json!("10"))
        .await
        .expect_status(200);
    assert!(replayed(&again), "retry must say Idempotent-Replayed: true");
    assert_eq!(again.text(), first.text(), "byte-identical replay");

    // Another bidder with the same key is a different bid.
    let other = server
        .bid(&dave, id, "k-1", json!("11"))
        .await
        .expect_status(200);
    assert!(!replayed(&other));
    let other_reply = other.json();
    assert_eq!(other_reply["status"], "accepted");
    assert_ne!(other_reply["bidId"], first_reply["bidId"]);

    // After the auction moved on, the replay still shows the first decision's state.
    let later = server
        .bid(&bob, id, "k-1", json!("10"))
        .await
        .expect_status(200);
    assert!(replayed(&later));
    assert_eq!(
        later.text(),
        first.text(),
        "replay after other bids is still the first answer"
    );

    // Same key, different amount: 422, nothing decided.
    server
        .bid(&bob, id, "k-1", json!("12"))
        .await
        .expect_problem(422);
    assert_eq!(server.get_auction(&carol, id).await["version"], 3);

    // Rejections replay too.
    let low = server
        .bid(&bob, id, "k-2", json!("5"))
        .await
        .expect_status(200);
    assert_eq!(low.json()["reason"], "below_minimum");
    let low_again = server
        .bid(&bob, id, "k-2", json!("5"))
        .await
        .expect_status(200);
    assert!(replayed(&low_again));
    assert_eq!(low_again.text(), low.text());

    // The longest key: 255 printable characters, spaces and punctuation inside (not at the
    // ends, where HTTP strips whitespace).
    let long_key: String = (0..255u32)
        .map(|i| char::from(b' ' + ((i + 1) % 95) as u8))
        .collect();
    assert_eq!(long_key.trim().len(), 255);
    let long = server
        .bid(&bob, id, &long_key, json!("12"))
        .await
        .expect_status(200);
    assert_eq!(long.json()["status"], "accepted");
    let long_again = server
        .bid(&bob, id, &long_key, json!("12"))
        .await
        .expect_status(200);
    assert!(replayed(&long_again));
    assert_eq!(long_again.text(), long.text());

    // Replays added no decisions: 4 distinct bids in the log.
    let history = server.history(&carol, id, "all").await;
    let bid_ids: Vec<&Value> = history.iter().map(|h| &h["bidId"]).collect();
    assert_eq!(
        bid_ids,
        vec![
            &first_reply["bidId"],
            &other_reply["bidId"],
            &low.json()["bidId"],
            &long.json()["bidId"]
        ]
    );
    let a = server.get_auction(&carol, id).await;
    assert_eq!((&a["version"], &a["bidCount"]), (&json!(4), &json!(3)));

    // Once the auction has ended, retries still get the first decisions, and a changed
    // amount is still a key reuse (not a fresh `ended` decision).
    server.control_ok(&carol, id, "end").await;
    let after_end = server
        .bid(&bob, id, "k-1", json!("10"))
        .await
        .expect_status(200);
    assert!(replayed(&after_end));
    assert_eq!(after_end.text(), first.text(), "replay after the end");
    let low_after_end = server
        .bid(&bob, id, "k-2", json!("5"))
        .await
        .expect_status(200);
    assert_eq!(low_after_end.text(), low.text());
    server
        .bid(&bob, id, "k-1", json!("13"))
        .await
        .expect_problem(422);
    assert_eq!(server.history(&carol, id, "all").await.len(), 4);

    // The same key on another auction is another bid.
    let second = server
        .create_auction(&carol, &active_auction_body("post-idem-2"))
        .await;
    let second_id = second["id"].as_str().unwrap();
    let elsewhere = server
        .bid(&bob, second_id, "k-1", json!("10"))
        .await
        .expect_status(200);
    assert!(!replayed(&elsewhere));
    assert_eq!(elsewhere.json()["status"], "accepted");
    assert_eq!(elsewhere.json()["version"], 2);
}

#[tokio::test]
async fn create_retries_replay_and_conflicts_are_422() {
    let server = Server::start().await;
    let alice = token("alice", &["creator"]);
    let bert = token("bert", &["creator"]);
    let body = active_auction_body("post-idem-create");

    let first = server
        .post("/auctions", &alice, Some(&body), Some("create-1"))
        .await
        .expect_status(201);
    let created = first.json();
    assert_auction_shape(&created);
    let id = created["id"].as_str().unwrap();

    let again = server
        .post("/auctions", &alice, Some(&body), Some("create-1"))
        .await
        .expect_status(201);
    let replay = again.json();
    assert_eq!(replay["id"], id, "a retry gets the same auction");
    assert_eq!(replay, created);
    assert_eq!(again.header("location"), first.header("location"));

    // Same key, different request: 422, nothing created.
    let mut changed = body.clone();
    changed["postId"] = json!("another-post");
    server
        .post("/auctions", &alice, Some(&changed), Some("create-1"))
        .await
        .expect_problem(422);
    let mut cheaper = body.clone();
    cheaper["startPrice"] = json!("9.00");
    server
        .post("/auctions", &alice, Some(&cheaper), Some("create-1"))
        .await
        .expect_problem(422);

    // Keys are per creator: bert's "create-1" is his own auction.
    let berts = server
        .post("/auctions", &bert, Some(&body), Some("create-1"))
        .await
        .expect_status(201)
        .json();
    assert_ne!(
        berts["id"], id,
        "another creator's key must not return alice's auction"
    );
    assert_eq!(berts["creatorId"], "bert");

    // Without a key, every POST creates.
    let one = server.create_auction(&alice, &body).await;
    let two = server.create_auction(&alice, &body).await;
    assert_ne!(one["id"], two["id"]);

    let listed = server
        .pages("/auctions", &alice, &[("creatorId", "alice")], "auctions")
        .await;
    let listed: Vec<Value> = listed.into_iter().flatten().collect();
    assert_eq!(listed.len(), 3, "alice has exactly 3 auctions: {listed:?}");
}

/// Identical requests racing each other in the log: one decision, every answer its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_retries_get_one_decision() {
    const RACERS: usize = 8;
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("post-racing"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();

    let race = |amounts: Vec<&'static str>, key: &'static str| {
        let handles: Vec<_> = amounts
            .into_iter()
            .map(|amount| {
                let (api, tok, id) = (server.api(), bob.clone(), id.clone());
                tokio::spawn(async move { api.bid(&tok, &id, key, json!(amount)).await })
            })
            .collect();
        async move {
            let mut resps = Vec::new();
            for handle in handles {
                resps.push(handle.await.expect("racer"));
            }
            resps
        }
    };

    // Same key, same body: all 200 with the same bytes, exactly one not a replay.
    let resps = race(vec!["10"; RACERS], "same").await;
    for resp in &resps {
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(
            resp.body, resps[0].body,
            "racing retries got different answers"
        );
    }
    let fresh = resps.iter().filter(|r| !replayed(r)).count();
    assert_eq!(fresh, 1, "exactly one racer decides, the rest are replays");

    // Same key, different bodies: one decision, every other racer 422.
    let amounts = vec!["11", "12", "13", "14", "15", "16", "17", "18"];
    let resps = race(amounts, "mixed").await;
    let decided: Vec<&Resp> = resps.iter().filter(|r| r.status == 200).collect();
    assert_eq!(decided.len(), 1, "one amount wins the key");
    for resp in resps.iter().filter(|r| r.status != 200) {
        assert_eq!(resp.status, 422, "{}", resp.text());
        resp.assert_problem_body();
    }
    let history = server.history(&carol, &id, "all").await;
    assert_eq!(history.len(), 2, "two keys, two decisions: {history:?}");

    // Creates racing with one key: one auction, every answer 201 naming it.
    let body = active_auction_body("post-racing-create");
    let handles: Vec<_> = (0..RACERS)
        .map(|_| {
            let (api, tok, body) = (server.api(), carol.clone(), body.clone());
            tokio::spawn(async move {
                send(
                    api.request(Method::POST, "/auctions", Some(&tok))
                        .header("Idempotency-Key", "create-race")
                        .json(&body),
                )
                .await
            })
        })
        .collect();
    let mut created_ids = Vec::new();
    for handle in handles {
        let resp = handle.await.expect("racer").expect_status(201);
        created_ids.push(resp.json()["id"].clone());
    }
    assert!(
        created_ids.iter().all(|c| *c == created_ids[0]),
        "{created_ids:?}"
    );
    let listed = server
        .pages("/auctions", &carol, &[("creatorId", "carol")], "auctions")
        .await
        .concat();
    assert_eq!(listed.len(), 2, "the racing creates made one auction");
}

/// A create retried after its auction's `endAt` passed (the first answer was lost, say) still
/// names the auction it created: the key, not today's clock, decides a retry.
#[tokio::test]
async fn create_retry_after_the_end_still_replays() {
    let server = Server::start().await;
    let alice = token("alice", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let end_ms = now_ms() + 1_000;
    let body = json!({
        "postId": "post-short",
        "startAt": rfc3339(now_ms() - 1_000),
        "endAt": rfc3339(end_ms),
        "startPrice": "10.00",
        "minIncrement": "1.00",
    });
    let created = server
        .post("/auctions", &alice, Some(&body), Some("short-1"))
        .await
        .expect_json(201)
        .json();
    let id = created["id"].as_str().unwrap();
    server.bid_ok(&bob, id, "b", json!("10")).await;

    sleep_until_wall_ms(end_ms + 100).await;
    let retry = server
        .post("/auctions", &alice, Some(&body), Some("short-1"))
        .await;
    assert_eq!(
        retry.status,
        201,
        "a retry of a create that succeeded must not fail: {}",
        retry.text()
    );
    assert_eq!(retry.json()["id"], id);
}

//! Fairness under contention against a real `gavel serve`: 24 bidders race on one auction, each
//! reading the price and bidding above it with fresh idempotency keys (retrying 503/504 with the
//! same key). Afterwards the decision log is replayed through a model of the rules: accepted
//! bids form a valid chain with versions +1 each, every rejection is justified, every
//! acknowledged decision is in the log unchanged, and the auction's final state is the last
//! accepted bid. Amounts and jitter come from a seeded RNG (`GAVEL_TEST_SEED` replays it).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIDDERS: usize = 24;
const ROUNDS_PER_BIDDER: usize = 10;
/// Attempts of one bid while the server answers 429/503/504.
const ATTEMPTS_MAX: usize = 50;
const RETRY_BACKOFF_MS: u64 = 50;
const JITTER_MS_MAX: u64 = 15;

/// One acknowledged bid: who sent it, with which key, and the decision answered.
struct Ack {
    bidder: String,
    key: String,
    amount: Value,
    body: Vec<u8>,
    reply: Value,
}

/// What this bidder believes is the least amount that could win right now.
fn next_amount(auction: &Value, rng: &mut StdRng) -> Decimal {
    let base = if auction["currentWinnerId"].is_null() {
        money(&auction["startPrice"])
    } else {
        money(&auction["currentPrice"]) + money(&auction["minIncrement"])
    };
    // Mostly the minimum, sometimes a few cents or increments more.
    match rng.gen_range(0..4) {
        0 | 1 => base,
        2 => base + Decimal::new(rng.gen_range(1..300), 2),
        _ => base + money(&auction["minIncrement"]) * Decimal::from(rng.gen_range(1..4)),
    }
}

async fn bidder(server: Arc<Server>, id: String, name: String, seed: u64) -> Vec<Ack> {
    let mut rng = StdRng::seed_from_u64(seed);
    let tok = token(&name, &["bidder"]);
    let mut acks = Vec::new();
    for round in 0..ROUNDS_PER_BIDDER {
        let auction = server.get_auction_local(&tok, &id).await;
        let amount = next_amount(&auction, &mut rng);
        // Alternate the two accepted encodings of money.
        let amount = if round % 2 == 0 {
            json!(amount.to_string())
        } else {
            raw_number(&amount.to_string())
        };
        let key = format!("{name}-{round}-{}", fresh_key());
        let resp = bid_until_decided(&server, &tok, &id, &key, &amount).await;
        let reply = resp.json();
        assert_bid_reply_shape(&reply);
        acks.push(Ack {
            bidder: name.clone(),
            key,
            amount,
            body: resp.body,
            reply,
        });
        let jitter = rng.gen_range(0..=JITTER_MS_MAX);
        tokio::time::sleep(Duration::from_millis(jitter)).await;
    }
    acks
}

/// Sends the bid, retrying 429, 503 and 504 with the same key, until it is decided (200).
async fn bid_until_decided(
    server: &Server,
    tok: &str,
    id: &str,
    key: &str,
    amount: &Value,
) -> Resp {
    for _ in 0..ATTEMPTS_MAX {
        let resp = server.bid(tok, id, key, amount.clone()).await;
        match resp.status {
            200 => return resp,
            // 429 too: the per-bidder rate limit may bite in a burst; the key makes it safe.
            429 | 503 | 504 => {
                resp.assert_problem_body();
                tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
            }
            other => panic!("bid {key}: HTTP {other}: {}", resp.text()),
        }
    }
    panic!("bid {key} was not decided in {ATTEMPTS_MAX} attempts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_bidders_form_a_valid_chain() {
    let seed = test_seed();
    let server = Arc::new(Server::start().await);
    let carol = token("carol", &["creator"]);
    let auction = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-race",
                "startAt": rfc3339(now_ms() - 1_000),
                "endAt": rfc3339(now_ms() + 3_600_000),
                "startPrice": "100.00",
                "minIncrement": "2.50",
            }),
        )
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();

    let tasks: Vec<_> = (0..BIDDERS)
        .map(|i| {
            let name = format!("bidder-{i:02}");
            tokio::spawn(bidder(
                server.clone(),
                id.clone(),
                name,
                seed.wrapping_add(i as u64),
            ))
        })
        .collect();
    let mut acks = Vec::new();
    for task in tasks {
        acks.extend(task.await.expect("a bidder task panicked"));
    }
    assert_eq!(acks.len(), BIDDERS * ROUNDS_PER_BIDDER);

    let history = server.history(&carol, &id, "all").await;
    check_chain(&auction, &history).expect("some bid was accepted");
    check_acks_in_history(&acks, &history);

    let final_state = server.get_auction(&carol, &id).await;
    assert_state_matches(&auction, &final_state, &history);
    let accepted = history.iter().filter(|h| h["status"] == "accepted").count();
    assert_eq!(
        final_state["version"],
        1 + accepted,
        "one version per accepted bid"
    );
    eprintln!(
        "{} decisions, {accepted} accepted, final price {}",
        history.len(),
        final_state["currentPrice"]
    );

    // Retries after the race still get the first answers, byte for byte.
    for ack in acks.iter().step_by(7) {
        let tok = token(&ack.bidder, &["bidder"]);
        let resp = server
            .bid(&tok, &id, &ack.key, ack.amount.clone())
            .await
            .expect_status(200);
        assert_eq!(resp.header("idempotent-replayed").as_deref(), Some("true"));
        assert_eq!(resp.body, ack.body, "replay of {} differs", ack.key);
    }
    assert_eq!(
        server.history(&carol, &id, "all").await.len(),
        history.len(),
        "replays added decisions"
    );
}

/// Every acknowledged decision is in the log with the same id, bidder, amount and outcome.
fn check_acks_in_history(acks: &[Ack], history: &[Value]) {
    let by_id: HashMap<&str, &Value> = history
        .iter()
        .map(|h| (h["bidId"].as_str().expect("bidId"), h))
        .collect();
    assert_eq!(by_id.len(), history.len(), "bidIds are unique");
    assert_eq!(
        history.len(),
        acks.len(),
        "one decision per acknowledged bid (every key was fresh)"
    );
    for ack in acks {
        let reply = &ack.reply;
        let bid_id = reply["bidId"].as_str().unwrap();
        let entry = by_id
            .get(bid_id)
            .unwrap_or_else(|| panic!("acknowledged bid {bid_id} missing from the history"));
        assert_eq!(entry["bidderId"], ack.bidder.as_str());
        for field in ["amount", "status", "reason", "version"] {
            assert_eq!(entry[field], reply[field], "{field} of {bid_id}");
        }
        assert_eq!(money(&reply["amount"]), money_of_sent(&ack.amount));
        if reply["status"] == "accepted" {
            assert_eq!(reply["currentWinnerId"], ack.bidder.as_str());
        }
    }
}

fn money_of_sent(amount: &Value) -> Decimal {
    match amount {
        Value::String(text) => dec(text),
        other => dec(&other.to_string()),
    }
}

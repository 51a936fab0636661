//! A full disk against a real `gavel serve` whose data dir is a small tmpfs (needs root, as the
//! fault suite does): bidders race until the node cannot write. Meanwhile every answer is a
//! decision, a 503 or a 504, never a 500; the node then stops by itself, exits non-zero and
//! says why. Given room and started again, it holds every acknowledged decision, and retries
//! get their first answers byte for byte.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// The data dir's size: the first Raft log segment (1 MiB) and the next one, filled with zeroes
/// in advance (16 MiB), leave a few MiB for the state machine.
const DISK_BYTES: u64 = 20 * 1024 * 1024;
/// Room enough to start again and read everything back.
const ROOMY_DISK_BYTES: u64 = 256 * 1024 * 1024;
const AUCTIONS: usize = 4;
const WRITERS: usize = 8;
/// How long filling the disk and the node's stop may take.
const FILL_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause before bidding again after a 503/504.
const RETRY_BACKOFF_MS: u64 = 20;

/// An acknowledged decision: who sent what on which auction, and the exact response body.
struct Ack {
    auction_id: String,
    bidder: String,
    key: String,
    amount: Value,
    body: Vec<u8>,
}

/// Bids until the server stops answering; records every decision, and panics on any answer
/// that is neither a decision nor a 503/504.
async fn writer(api: Api, auction_id: String, bidder: String, acks: Arc<Mutex<Vec<Ack>>>) {
    let tok = token(&bidder, &["bidder"]);
    for n in 0u64.. {
        let key = fresh_key();
        let amount = json!((10 + n).to_string());
        let send = api
            .request(
                reqwest::Method::POST,
                &format!("/auctions/{auction_id}/bids"),
                Some(&tok),
            )
            .header("Idempotency-Key", &key)
            .json(&json!({ "amount": amount }));
        let Ok(resp) = try_send(send).await else {
            return;
        };
        match resp.status {
            200 => acks.lock().unwrap().push(Ack {
                auction_id: auction_id.clone(),
                bidder: bidder.clone(),
                key,
                amount,
                body: resp.body,
            }),
            503 | 504 => tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await,
            other => panic!("bid answered HTTP {other}: {}", resp.text()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_disk_stops_the_node_and_loses_no_acknowledged_bid() {
    let options = ServerOptions {
        args: vec!["--bid-rate-per-bidder".into(), "0".into()],
        disk_bytes: Some(DISK_BYTES),
        ..ServerOptions::default()
    };
    let mut server = Server::start_with(None, options).await;
    let carol = token("carol", &["creator"]);
    let mut auctions = Vec::new();
    for i in 0..AUCTIONS {
        let body = active_auction_body(&format!("post-full-{i}"));
        auctions.push(server.create_auction(&carol, &body).await);
    }
    let acks = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|i| {
            let id = auctions[i % AUCTIONS]["id"].as_str().unwrap().to_owned();
            tokio::spawn(writer(server.api(), id, format!("w{i}"), acks.clone()))
        })
        .collect();

    let status = server.await_exit(FILL_TIMEOUT).await;
    for writer in writers {
        writer
            .await
            .expect("a writer saw an answer other than a decision, 503 or 504");
    }
    let log = server.log_tail();
    assert!(
        !status.success(),
        "a node whose disk filled exited with {status}; log:\n{log}"
    );
    for said in ["No space left on device", "stopping this node"] {
        assert!(log.contains(said), "the log does not say {said:?}:\n{log}");
    }
    let acks = std::mem::take(&mut *acks.lock().unwrap());
    assert!(
        !acks.is_empty(),
        "no bid was decided before the disk filled"
    );
    eprintln!(
        "{} decisions acknowledged before the disk filled",
        acks.len()
    );

    server.resize_disk(ROOMY_DISK_BYTES);
    server.restart().await;
    for auction in &auctions {
        let id = auction["id"].as_str().unwrap();
        let history = server.history(&carol, id, "all").await;
        check_chain(auction, &history);
        for ack in acks.iter().filter(|ack| ack.auction_id == id) {
            let reply: Value = serde_json::from_slice(&ack.body).expect("a JSON reply");
            assert_kept(&history, &reply, &ack.bidder);
        }
        let state = server.get_auction(&carol, id).await;
        assert_state_matches(auction, &state, &history);
    }
    for ack in acks.iter().step_by(acks.len().div_ceil(20)) {
        let tok = token(&ack.bidder, &["bidder"]);
        let resp = server
            .bid(&tok, &ack.auction_id, &ack.key, ack.amount.clone())
            .await
            .expect_status(200);
        assert_eq!(resp.header("idempotent-replayed").as_deref(), Some("true"));
        assert_eq!(resp.text(), String::from_utf8_lossy(&ack.body));
    }
}

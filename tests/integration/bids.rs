//! Bids against a real `gavel serve`: every decision (accepted, and rejected for each reason of
//! API.md), the state each decision reports, `version` accounting (exactly +1 per accepted bid
//! and per status change, nothing else), and the bid history (1-based consecutive `seq`,
//! `status=accepted`, `limit` + cursor pagination) checked against the decisions as answered.

use crate::common::*;

/// What one bid was answered, with who placed it.
struct Placed {
    bidder: &'static str,
    reply: Value,
}

/// Checks one decision against what the test expects, and records it.
#[allow(clippy::too_many_arguments)]
#[track_caller]
fn expect_decision(
    ledger: &mut Vec<Placed>,
    bidder: &'static str,
    reply: Value,
    status: &str,
    reason: Option<&str>,
    amount: &str,
    price: &str,
    winner: Option<&str>,
    version: u64,
) {
    assert_eq!(reply["status"], status, "{reply}");
    assert_eq!(reply["reason"], json!(reason), "{reply}");
    assert_eq!(reply["amount"], amount, "{reply}");
    assert_eq!(reply["currentPrice"], price, "{reply}");
    assert_eq!(reply["currentWinnerId"], json!(winner), "{reply}");
    assert_eq!(reply["version"], version, "{reply}");
    let bid_id = reply["bidId"].as_str().unwrap();
    assert!(
        ledger.iter().all(|p| p.reply["bidId"] != bid_id),
        "bidId {bid_id} reused"
    );
    ledger.push(Placed { bidder, reply });
}

#[tokio::test]
async fn every_decision_and_the_history() {
    let server = Server::start().await;
    // The creator also holds the bidder role, so its bid reaches the rules: self_bid.
    let carol = token("carol", &["creator", "bidder"]);
    let bob = token("bob", &["bidder"]);
    let dave = token("dave", &["bidder"]);
    let root = token("root", &["admin"]);
    let viewer = token("vera", &["viewer"]);

    let auction = server
        .create_auction(&carol, &active_auction_body("post-bids"))
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();
    let end_at = auction["endAt"].clone();
    let scheduled = server
        .create_auction(&carol, &auction_body("post-later", 3_600_000, 7_200_000))
        .await;
    let scheduled_id = scheduled["id"].as_str().unwrap();

    let mut ledger = Vec::new();
    let l = &mut ledger;
    let r = server.bid_ok(&bob, &id, "b1", json!("9.99")).await;
    assert_eq!(r["endAt"], end_at, "rejected bids report the current endAt");
    expect_decision(
        l,
        "bob",
        r,
        "rejected",
        Some("below_minimum"),
        "9.99",
        "10.00",
        None,
        1,
    );
    let r = server.bid_ok(&bob, &id, "b2", raw_number("10")).await;
    expect_decision(
        l,
        "bob",
        r,
        "accepted",
        None,
        "10.00",
        "10.00",
        Some("bob"),
        2,
    );
    let r = server.bid_ok(&dave, &id, "d1", raw_number("10.99")).await;
    expect_decision(
        l,
        "dave",
        r,
        "rejected",
        Some("below_minimum"),
        "10.99",
        "10.00",
        Some("bob"),
        2,
    );
    let r = server.bid_ok(&dave, &id, "d2", json!("11.00")).await;
    expect_decision(
        l,
        "dave",
        r,
        "accepted",
        None,
        "11.00",
        "11.00",
        Some("dave"),
        3,
    );
    let r = server.bid_ok(&carol, &id, "c1", json!("50")).await;
    expect_decision(
        l,
        "carol",
        r,
        "rejected",
        Some("self_bid"),
        "50.00",
        "11.00",
        Some("dave"),
        3,
    );
    let r = server.bid_ok(&bob, &id, "b3", json!("11.999999")).await;
    expect_decision(
        l,
        "bob",
        r,
        "rejected",
        Some("below_minimum"),
        "11.999999",
        "11.00",
        Some("dave"),
        3,
    );
    let r = server.bid_ok(&bob, &id, "b4", raw_number("12")).await;
    assert_eq!(
        r["endAt"], end_at,
        "no anti-sniping configured: endAt unchanged"
    );
    expect_decision(
        l,
        "bob",
        r,
        "accepted",
        None,
        "12.00",
        "12.00",
        Some("bob"),
        4,
    );

    let paused = server.control_ok(&carol, &id, "pause").await;
    assert_eq!(
        (&paused["status"], &paused["version"]),
        (&json!("paused"), &json!(5))
    );
    let r = server.bid_ok(&dave, &id, "d3", json!("100")).await;
    expect_decision(
        l,
        "dave",
        r,
        "rejected",
        Some("paused"),
        "100.00",
        "12.00",
        Some("bob"),
        5,
    );
    let resumed = server.control_ok(&carol, &id, "resume").await;
    assert_eq!(
        (&resumed["status"], &resumed["version"]),
        (&json!("active"), &json!(6))
    );

    let r = server.bid_ok(&dave, &id, "d4", json!("13.000001")).await;
    expect_decision(
        l,
        "dave",
        r,
        "accepted",
        None,
        "13.000001",
        "13.000001",
        Some("dave"),
        7,
    );
    // Admins may bid too.
    let r = server.bid_ok(&root, &id, "r1", json!("20.5")).await;
    expect_decision(
        l,
        "root",
        r,
        "accepted",
        None,
        "20.50",
        "20.50",
        Some("root"),
        8,
    );
    let r = server.bid_ok(&dave, &id, "d5", json!("21.49")).await;
    expect_decision(
        l,
        "dave",
        r,
        "rejected",
        Some("below_minimum"),
        "21.49",
        "20.50",
        Some("root"),
        8,
    );

    let ended = server.control_ok(&carol, &id, "end").await;
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["version"], 9);
    assert_eq!(ended["currentWinnerId"], "root");
    assert_eq!(ended["currentPrice"], "20.50");
    let r = server.bid_ok(&bob, &id, "b5", json!("1000")).await;
    expect_decision(
        l,
        "bob",
        r,
        "rejected",
        Some("ended"),
        "1000.00",
        "20.50",
        Some("root"),
        9,
    );

    // The scheduled auction: not_started, and its version does not move.
    let r = server.bid_ok(&bob, scheduled_id, "s1", json!("10")).await;
    assert_eq!(r["status"], "rejected");
    assert_eq!(r["reason"], "not_started");
    assert_eq!(r["currentWinnerId"], Value::Null);
    assert_eq!(r["version"], 1);
    assert_eq!(
        server.get_auction(&viewer, scheduled_id).await["version"],
        1
    );

    // Final state: rejected decisions changed nothing.
    let accepted: Vec<&Placed> = ledger
        .iter()
        .filter(|p| p.reply["status"] == "accepted")
        .collect();
    let now = server.get_auction(&viewer, &id).await;
    assert_eq!(now, ended, "nothing changed after the end");
    assert_eq!(now["bidCount"], accepted.len());
    assert_eq!(
        server.get_auction_local(&viewer, &id).await,
        now,
        "consistency=local agrees on one node"
    );

    check_history(&server, &viewer, &id, &ledger).await;
}

/// The history equals the ledger, in order, with consecutive `seq`; filters and pages agree.
async fn check_history(server: &Server, viewer: &str, id: &str, ledger: &[Placed]) {
    let history = server.history(viewer, id, "all").await;
    assert_eq!(
        history.len(),
        ledger.len(),
        "one entry per decision: {history:?}"
    );
    for (i, (entry, placed)) in history.iter().zip(ledger).enumerate() {
        assert_eq!(entry["seq"], i + 1, "seq is 1-based and consecutive");
        assert_eq!(entry["bidderId"], placed.bidder);
        for field in ["bidId", "amount", "status", "reason", "version"] {
            assert_eq!(entry[field], placed.reply[field], "{field} of {entry}");
        }
    }
    let times: Vec<i64> = history.iter().map(|h| time_ms(&h["createdAt"])).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "createdAt in log order: {times:?}"
    );

    // The default query is status=all with room for everything.
    let plain = server
        .get(&format!("/auctions/{id}/bids"), viewer)
        .await
        .expect_status(200)
        .json();
    assert_eq!(plain["bids"], json!(history));
    assert_eq!(plain["nextCursor"], Value::Null);

    let accepted = server.history(viewer, id, "accepted").await;
    let expected: Vec<&Value> = history
        .iter()
        .filter(|h| h["status"] == "accepted")
        .collect();
    assert_eq!(
        accepted.iter().collect::<Vec<_>>(),
        expected,
        "status=accepted"
    );

    // limit + cursor: the same entries, in the same order, pages of the asked size.
    let path = format!("/auctions/{id}/bids");
    for (status, all) in [("all", &history), ("accepted", &accepted)] {
        let pages = server
            .pages(&path, viewer, &[("status", status), ("limit", "3")], "bids")
            .await;
        let (full, last) = pages.split_at(pages.len() - 1);
        assert!(full.iter().all(|p| p.len() == 3), "full pages of 3");
        assert!(last[0].len() <= 3);
        let flat: Vec<Value> = pages.into_iter().flatten().collect();
        assert_eq!(&flat, all, "status={status} paginated by 3");
    }
    let one_by_one = server.pages(&path, viewer, &[("limit", "1")], "bids").await;
    let flat: Vec<Value> = one_by_one.into_iter().flatten().collect();
    assert_eq!(flat, history, "paginated by 1");
}

#[tokio::test]
async fn bids_on_unknown_auctions_are_404() {
    let server = Server::start().await;
    let bob = token("bob", &["bidder"]);
    server
        .bid(&bob, "no-such-auction", "k", json!("10"))
        .await
        .expect_problem(404);
    server
        .get("/auctions/no-such-auction/bids", &bob)
        .await
        .expect_problem(404);
}

/// The first bid may equal the start price; later ones need exactly + minIncrement; a start
/// price of zero is a valid first bid.
#[tokio::test]
async fn minimums_are_inclusive_and_exact() {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let dave = token("dave", &["bidder"]);
    let now = now_ms();
    let auction = server
        .create_auction(
            &carol,
            &json!({
                "postId": "post-zero",
                "startAt": rfc3339(now - 1000),
                "endAt": rfc3339(now + 3_600_000),
                "startPrice": "0",
                "minIncrement": "0.000001",
            }),
        )
        .await;
    let id = auction["id"].as_str().unwrap();
    let r = server.bid_ok(&bob, id, "1", json!("0")).await;
    assert_eq!(
        (&r["status"], &r["amount"]),
        (&json!("accepted"), &json!("0.00"))
    );
    // Same amount again: below the minimum (needs + 0.000001).
    let r = server.bid_ok(&dave, id, "1", json!("0.00")).await;
    assert_eq!(r["reason"], "below_minimum");
    let r = server.bid_ok(&dave, id, "2", json!("0.000001")).await;
    assert_eq!(
        r["status"], "accepted",
        "exactly current + minIncrement: {r}"
    );
    // Money is exact: 1e12 is the maximum, and 999999999999.999999 + 0.000001 reaches it.
    let r = server
        .bid_ok(&bob, id, "2", json!("999999999999.999999"))
        .await;
    assert_eq!(r["status"], "accepted");
    assert_eq!(r["currentPrice"], "999999999999.999999");
    let r = server.bid_ok(&dave, id, "3", raw_number("1e12")).await;
    assert_eq!(r["status"], "accepted", "{r}");
    assert_eq!(r["amount"], "1000000000000.00");
    let a = server.get_auction(&carol, id).await;
    assert_eq!(a["currentPrice"], "1000000000000.00");
    assert_eq!(a["currentWinnerId"], "dave");
    assert_eq!(a["bidCount"], 4);
    assert_eq!(a["version"], 5);
}

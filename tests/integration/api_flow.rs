//! The auction resource end to end against a real `gavel serve`: create (201, `Location`,
//! every field and its type), read one (`ETag`, `If-None-Match`, `?consistency=local`, 404) and
//! the listing (newest first, `limit`, cursor pagination, `status=` and `creatorId=` filters).
//!
//! Bids, control actions and auth have their own files; this one stays on the auction itself.

use std::collections::HashSet;

use crate::common::*;
use chrono::{DateTime, FixedOffset, SecondsFormat};

/// `ms` as RFC 3339 in a +02:00 offset with milliseconds, to check the server normalizes to UTC.
fn rfc3339_plus_two(ms: i64) -> String {
    let offset = FixedOffset::east_opt(2 * 3600).expect("valid offset");
    DateTime::from_timestamp_millis(ms)
        .expect("representable")
        .with_timezone(&offset)
        .to_rfc3339_opts(SecondsFormat::Millis, false)
}

#[tokio::test]
async fn create_then_read_one_auction() {
    let server = Server::start().await;
    let alice = token("alice", &["creator"]);
    let viewer = token("vera", &["viewer"]);

    let now = now_ms();
    let (start_ms, end_ms) = (now - 60_000, now + 3_600_000);
    let body = json!({
        "postId": "post-1",
        "startAt": rfc3339_plus_two(start_ms),
        "endAt": rfc3339_plus_two(end_ms),
        "startPrice": 10,
        "minIncrement": "0.5",
    });
    let before = now_ms();
    let created = server.create_auction(&alice, &body).await;
    let after = now_ms();

    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["postId"], "post-1");
    assert_eq!(created["creatorId"], "alice");
    assert_eq!(
        created["status"], "active",
        "startAt in the past: active at once"
    );
    assert_eq!(created["startAt"], rfc3339(start_ms), "normalized to UTC");
    assert_eq!(created["endAt"], rfc3339(end_ms), "normalized to UTC");
    assert_eq!(created["startPrice"], "10.00");
    assert_eq!(created["minIncrement"], "0.50");
    assert_eq!(
        created["antiSnipingSeconds"], 0,
        "default antiSnipingSeconds"
    );
    assert_eq!(created["currentPrice"], "10.00");
    assert_eq!(created["currentWinnerId"], Value::Null);
    assert_eq!(created["bidCount"], 0);
    assert_eq!(created["version"], 1);
    assert_eq!(created["endedAt"], Value::Null);
    let created_at = time_ms(&created["createdAt"]);
    assert!(
        (before - 5..=after + 5).contains(&created_at),
        "createdAt {created_at} outside the request window [{before}, {after}]"
    );

    // GET: the same auction, ETag "<version>", conditional requests.
    let path = format!("/auctions/{id}");
    let resp = server.get(&path, &viewer).await.expect_status(200);
    assert_eq!(resp.json(), created, "GET returns what POST returned");
    assert_eq!(resp.header("etag").as_deref(), Some("\"1\""));
    let content_type = resp.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );

    let not_modified = send(
        server
            .request(reqwest::Method::GET, &path, Some(&viewer))
            .header("If-None-Match", "\"1\""),
    )
    .await
    .expect_status(304);
    assert!(not_modified.body.is_empty(), "304 has no body");
    assert_eq!(
        not_modified.header("etag").as_deref(),
        Some("\"1\""),
        "a 304 carries the ETag (RFC 9110 15.4.5)"
    );
    for matching in ["W/\"1\"", "\"0\", \"1\"", "*"] {
        send(
            server
                .request(reqwest::Method::GET, &path, Some(&viewer))
                .header("If-None-Match", matching),
        )
        .await
        .expect_status(304);
    }

    let modified = send(
        server
            .request(reqwest::Method::GET, &path, Some(&viewer))
            .header("If-None-Match", "\"7\""),
    )
    .await
    .expect_status(200);
    assert_eq!(modified.json(), created);

    // consistency=local answers from the replica: on one node, the same state.
    let local = server
        .get_query(&path, &viewer, &[("consistency", "local")])
        .await
        .expect_status(200);
    assert_eq!(local.json(), created);
    assert_eq!(local.header("etag").as_deref(), Some("\"1\""));

    // Unknown ids are 404 problems, whatever the consistency.
    server
        .get("/auctions/no-such-auction", &viewer)
        .await
        .expect_problem(404);
    server
        .get_query(
            "/auctions/no-such-auction",
            &viewer,
            &[("consistency", "local")],
        )
        .await
        .expect_problem(404);
}

#[tokio::test]
async fn create_echoes_exact_money_times_and_settings() {
    let server = Server::start().await;
    let alice = token("alice", &["creator"]);
    let now = now_ms();
    let (start_ms, end_ms) = (now + 3_600_000, now + 7_200_000);
    let created = server
        .create_auction(
            &alice,
            &json!({
                "postId": "post-exact",
                "startAt": rfc3339(start_ms),
                "endAt": rfc3339(end_ms),
                "startPrice": "123456789012.123456",
                "minIncrement": raw_number("0.000001"),
                "antiSnipingSeconds": 3600,
            }),
        )
        .await;
    assert_eq!(created["status"], "scheduled", "startAt in the future");
    assert_eq!(created["startPrice"], "123456789012.123456");
    assert_eq!(created["currentPrice"], "123456789012.123456");
    assert_eq!(created["minIncrement"], "0.000001");
    assert_eq!(created["antiSnipingSeconds"], 3600);
    assert_eq!(created["startAt"], rfc3339(start_ms));
    assert_eq!(created["endAt"], rfc3339(end_ms));

    // The extremes of the money range, one as a JSON number with an exponent.
    let created = server
        .create_auction(
            &alice,
            &json!({
                "postId": "post-extremes",
                "startAt": rfc3339(now - 1000),
                "endAt": rfc3339(now + 30 * 24 * 3_600_000 - 60_000),
                "startPrice": 0,
                "minIncrement": raw_number("1e12"),
                "antiSnipingSeconds": 0,
            }),
        )
        .await;
    assert_eq!(created["startPrice"], "0.00");
    assert_eq!(created["minIncrement"], "1000000000000.00");
}

/// Creates the listing fixture: 4 auctions of alice, 3 of bert; one scheduled, one paused,
/// one ended. Returns the ids in creation order with their creator.
async fn listing_fixture(server: &Server) -> Vec<(String, &'static str)> {
    let alice = token("alice", &["creator"]);
    let bert = token("bert", &["creator"]);
    let mut made = Vec::new();
    for i in 0..7 {
        let (who, tok) = if i % 2 == 0 {
            ("alice", &alice)
        } else {
            ("bert", &bert)
        };
        let body = if i == 3 {
            auction_body(&format!("post-{i}"), 3_600_000, 7_200_000)
        } else {
            active_auction_body(&format!("post-{i}"))
        };
        let auction = server.create_auction(tok, &body).await;
        made.push((auction["id"].as_str().unwrap().to_owned(), who));
    }
    // #4 (alice) paused, #5 (bert) ended.
    server.control_ok(&alice, &made[4].0, "pause").await;
    server.control_ok(&bert, &made[5].0, "end").await;
    made
}

fn ids(auctions: &[Value]) -> Vec<String> {
    auctions
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect()
}

#[track_caller]
fn assert_newest_first(auctions: &[Value]) {
    for pair in auctions.windows(2) {
        let (a, b) = (
            time_ms(&pair[0]["createdAt"]),
            time_ms(&pair[1]["createdAt"]),
        );
        assert!(
            a >= b,
            "listing not newest first: {} then {}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test]
async fn list_is_newest_first_paginated_and_filtered() {
    let server = Server::start().await;
    let viewer = token("vera", &["viewer"]);
    let made = listing_fixture(&server).await;
    let all_ids: Vec<String> = made.iter().map(|(id, _)| id.clone()).collect();

    // Default limit (20): everything on one page, newest first. Auctions created within the
    // same millisecond (in different groups) may come in either order, so the listing's own
    // order is the reference for every other query below.
    let pages = server.pages("/auctions", &viewer, &[], "auctions").await;
    assert_eq!(pages.len(), 1, "7 auctions fit the default page");
    for auction in &pages[0] {
        assert_auction_shape(auction);
    }
    assert_newest_first(&pages[0]);
    let newest_first = ids(&pages[0]);
    let mut sorted_listed = newest_first.clone();
    sorted_listed.sort();
    let mut sorted_made = all_ids.clone();
    sorted_made.sort();
    assert_eq!(
        sorted_listed, sorted_made,
        "the listing holds every auction once"
    );
    let in_listing_order = |wanted: &[usize]| -> Vec<String> {
        let wanted: Vec<&String> = wanted.iter().map(|i| &all_ids[*i]).collect();
        newest_first
            .iter()
            .filter(|id| wanted.contains(id))
            .cloned()
            .collect()
    };
    // Each listed auction is the same as GET returns.
    for auction in &pages[0] {
        let id = auction["id"].as_str().unwrap();
        assert_eq!(&server.get_auction(&viewer, id).await, auction);
    }

    // limit=3: pages of 3, 3, 1 covering everything exactly once, in the same order.
    let pages = server
        .pages("/auctions", &viewer, &[("limit", "3")], "auctions")
        .await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, vec![3, 3, 1], "page sizes with limit=3");
    let paged: Vec<String> = pages.iter().flat_map(|p| ids(p)).collect();
    assert_eq!(paged, newest_first, "pagination covers all once, in order");

    // limit=1: seven pages, no duplicates.
    let pages = server
        .pages("/auctions", &viewer, &[("limit", "1")], "auctions")
        .await;
    let paged: Vec<String> = pages.iter().flat_map(|p| ids(p)).collect();
    let unique: HashSet<&String> = paged.iter().collect();
    assert_eq!(
        unique.len(),
        paged.len(),
        "duplicates across pages: {paged:?}"
    );
    assert_eq!(paged, newest_first);

    // limit=7 and limit=100: if a cursor is given, the next page is empty.
    for limit in ["7", "100"] {
        let pages = server
            .pages("/auctions", &viewer, &[("limit", limit)], "auctions")
            .await;
        let paged: Vec<String> = pages.iter().flat_map(|p| ids(p)).collect();
        assert_eq!(paged, newest_first, "limit={limit}");
    }

    // status= filters.
    let expect_status = |status: &str| -> Vec<String> {
        match status {
            "scheduled" => in_listing_order(&[3]),
            "paused" => in_listing_order(&[4]),
            "ended" => in_listing_order(&[5]),
            _ => in_listing_order(&[0, 1, 2, 6]),
        }
    };
    for status in ["scheduled", "active", "paused", "ended"] {
        let pages = server
            .pages(
                "/auctions",
                &viewer,
                &[("status", status), ("limit", "2")],
                "auctions",
            )
            .await;
        let listed: Vec<Value> = pages.into_iter().flatten().collect();
        assert!(
            listed.iter().all(|a| a["status"] == status),
            "status={status}"
        );
        assert_eq!(ids(&listed), expect_status(status), "status={status}");
    }

    // creatorId= filter, alone and with status=, paginated.
    for creator in ["alice", "bert"] {
        let pages = server
            .pages(
                "/auctions",
                &viewer,
                &[("creatorId", creator), ("limit", "2")],
                "auctions",
            )
            .await;
        let listed: Vec<Value> = pages.into_iter().flatten().collect();
        let theirs: Vec<usize> = (0..made.len()).filter(|i| made[*i].1 == creator).collect();
        let expected = in_listing_order(&theirs);
        assert_eq!(ids(&listed), expected, "creatorId={creator}");
    }
    let pages = server
        .pages(
            "/auctions",
            &viewer,
            &[("creatorId", "alice"), ("status", "active"), ("limit", "1")],
            "auctions",
        )
        .await;
    let listed: Vec<Value> = pages.into_iter().flatten().collect();
    assert_eq!(
        ids(&listed),
        in_listing_order(&[0, 2, 6]),
        "creatorId=alice&status=active"
    );
    let nobody = server
        .pages("/auctions", &viewer, &[("creatorId", "nobody")], "auctions")
        .await;
    assert_eq!(
        nobody,
        vec![Vec::<Value>::new()],
        "unknown creator: one empty page"
    );
}

/// A cursor continues where its page ended even when newer auctions are created in between:
/// they are not mixed into the older pages, nothing repeats, nothing is skipped.
#[tokio::test]
async fn cursors_are_stable_while_auctions_are_created() {
    let server = Server::start().await;
    let alice = token("alice", &["creator"]);
    let mut older = Vec::new();
    for i in 0..5 {
        let auction = server
            .create_auction(&alice, &active_auction_body(&format!("post-{i}")))
            .await;
        let created_at = auction["createdAt"].as_str().unwrap().to_owned();
        older.push((created_at, auction["id"].as_str().unwrap().to_owned()));
    }
    let first = server
        .get_query("/auctions", &alice, &[("limit", "2")])
        .await
        .expect_status(200)
        .json();
    let mut seen = ids(first["auctions"].as_array().unwrap());
    let mut cursor = first["nextCursor"].as_str().expect("more pages").to_owned();
    for i in 0..3 {
        server
            .create_auction(&alice, &active_auction_body(&format!("post-new-{i}")))
            .await;
    }
    loop {
        let page = server
            .get_query("/auctions", &alice, &[("limit", "2"), ("cursor", &cursor)])
            .await
            .expect_status(200)
            .json();
        seen.extend(ids(page["auctions"].as_array().unwrap()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    // Newest first is by createdAt (milliseconds), ties broken by id, both descending:
    // auctions in different Raft groups can be created within the same millisecond.
    older.sort();
    let expected: Vec<String> = older.into_iter().rev().map(|(_, id)| id).collect();
    assert_eq!(seen, expected, "the listing continued from its cursor");
}

//! The HTTP contract of API.md, driven through the real router against the in-memory engine
//! (`engine::fake`), which applies commands with the real auction rules.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use axum::response::Response;
use axum::Router;
use gavel_cluster::ProposeError;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::http::auth::{Role, Secret, TokenVerifier};
use crate::http::engine::fake::FakeEngine;
use crate::http::json::format_time;
use crate::http::limits::BidRateLimiter;
use crate::http::server::{app, AppState, HttpLimits};

/// 2026-11-25T22:00:00Z
pub(super) const NOW_MS: i64 = 1_795_644_000_000;
pub(super) const HOUR_MS: i64 = 3_600_000;
const BODY_LIMIT_BYTES: usize = 4096;
const LIVE_CONFIG: crate::live::LiveConfig = crate::live::LiveConfig {
    viewers_max: 16,
    send_timeout_ms: 1_000,
    ping_interval_ms: 1_000,
};

pub(super) struct Harness {
    pub(super) engine: Arc<FakeEngine>,
    pub(super) app: Router,
    pub(super) secret: Secret,
}

impl Harness {
    pub(super) fn new() -> Harness {
        Harness::with_rate(0)
    }

    pub(super) fn with_rate(bids_per_s: u32) -> Harness {
        Harness::with_limits(bids_per_s, 64)
    }

    /// A harness whose API takes at most `requests_in_flight_max` requests at once.
    pub(super) fn with_limits(bids_per_s: u32, requests_in_flight_max: usize) -> Harness {
        Harness::build(bids_per_s, requests_in_flight_max, "http")
    }

    /// A harness whose clients reach it over `client_scheme` (`http` or `https`).
    pub(super) fn serving(client_scheme: &'static str) -> Harness {
        Harness::build(0, 64, client_scheme)
    }

    fn build(
        bids_per_s: u32,
        requests_in_flight_max: usize,
        client_scheme: &'static str,
    ) -> Harness {
        let engine = Arc::new(FakeEngine::new(NOW_MS));
        let secret = Secret::new(b"test-secret-test-secret-test-secret".to_vec()).unwrap();
        let state = AppState {
            engine: engine.clone(),
            auth: TokenVerifier::hs256(&secret).unwrap(),
            bid_limiter: Arc::new(BidRateLimiter::new(bids_per_s, bids_per_s)),
            metrics: None,
            node_id: 7,
            client_scheme,
            live: crate::live::Hub::start(engine.clone(), LIVE_CONFIG).expect("the hub starts"),
        };
        let limits = HttpLimits {
            body_limit_bytes: BODY_LIMIT_BYTES,
            requests_in_flight_max,
        };
        Harness {
            engine,
            app: app(state, limits),
            secret,
        }
    }

    pub(super) fn token(&self, sub: &str, roles: &[Role]) -> String {
        let now_s = crate::http::auth::now_s();
        self.secret.sign(sub, roles, now_s, now_s + 3600)
    }

    pub(super) async fn send(&self, request: Request<Body>) -> Response {
        self.app.clone().oneshot(request).await.unwrap()
    }

    pub(super) async fn call(
        &self,
        method: Method,
        uri: &str,
        who: Option<(&str, Role)>,
        body: Option<Value>,
    ) -> Response {
        self.call_with(method, uri, who, body, &[]).await
    }

    pub(super) async fn call_with(
        &self,
        method: Method,
        uri: &str,
        who: Option<(&str, Role)>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some((sub, role)) = who {
            builder = builder.header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token(sub, &[role])),
            );
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let body = match body {
            Some(body) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.send(builder.body(body).unwrap()).await
    }

    /// Creates an active auction by `alice` and returns its id.
    pub(super) async fn auction(&self) -> String {
        let response = self
            .call(
                Method::POST,
                "/auctions",
                Some(("alice", Role::Creator)),
                Some(create_body()),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        json_of(response).await["id"].as_str().unwrap().to_owned()
    }

    pub(super) async fn bid(&self, id: &str, bidder: &str, key: &str, amount: Value) -> Response {
        self.call_with(
            Method::POST,
            &format!("/auctions/{id}/bids"),
            Some((bidder, Role::Bidder)),
            Some(json!({ "amount": amount })),
            &[("idempotency-key", key)],
        )
        .await
    }
}

pub(super) fn create_body() -> Value {
    json!({
        "postId": "post-1",
        "startAt": format_time(NOW_MS - HOUR_MS),
        "endAt": format_time(NOW_MS + HOUR_MS),
        "startPrice": "100",
        "minIncrement": 5,
        "antiSnipingSeconds": 30,
    })
}

pub(super) async fn bytes_of(response: Response) -> Vec<u8> {
    axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap()
        .to_vec()
}

pub(super) async fn json_of(response: Response) -> Value {
    serde_json::from_slice(&bytes_of(response).await).unwrap()
}

/// Asserts a problem response with `status` and `slug`; returns its detail.
async fn problem(response: Response, status: StatusCode, slug: &str) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/problem+json"
    );
    let body = json_of(response).await;
    assert_eq!(body["type"], format!("/problems/{slug}"), "{body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string());
    body["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn create_returns_the_auction_with_location_and_etag() {
    let h = Harness::new();
    let response = h
        .call(
            Method::POST,
            "/auctions",
            Some(("alice", Role::Creator)),
            Some(create_body()),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.headers()[header::ETAG], "\"1\"");
    assert!(response.headers().get("idempotent-replayed").is_none());
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let body = json_of(response).await;
    assert_eq!(
        location,
        format!("/auctions/{}", body["id"].as_str().unwrap())
    );
    let expected = json!({
        "id": body["id"],
        "postId": "post-1",
        "creatorId": "alice",
        "status": "active",
        "startAt": "2026-11-25T21:00:00.000Z",
        "endAt": "2026-11-25T23:00:00.000Z",
        "startPrice": "100.00",
        "minIncrement": "5.00",
        "antiSnipingSeconds": 30,
        "currentPrice": "100.00",
        "currentWinnerId": null,
        "bidCount": 0,
        "version": 1,
        "createdAt": "2026-11-25T22:00:00.000Z",
        "endedAt": null,
    });
    assert_eq!(body, expected);
}

#[tokio::test]
async fn create_with_a_key_is_idempotent() {
    let h = Harness::new();
    let alice = Some(("alice", Role::Creator));
    let key = [("idempotency-key", "create-1")];
    let first = h
        .call_with(Method::POST, "/auctions", alice, Some(create_body()), &key)
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json_of(first).await;
    h.engine.advance_ms(1000);
    let again = h
        .call_with(Method::POST, "/auctions", alice, Some(create_body()), &key)
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(again).await, first);
    let mut other = create_body();
    other["postId"] = json!("post-2");
    let reused = h
        .call_with(Method::POST, "/auctions", alice, Some(other), &key)
        .await;
    problem(
        reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
    )
    .await;
    // Another creator's same key is another auction.
    let bob = h
        .call_with(
            Method::POST,
            "/auctions",
            Some(("bob", Role::Creator)),
            Some(create_body()),
            &key,
        )
        .await;
    assert_eq!(bob.status(), StatusCode::CREATED);
    assert_ne!(json_of(bob).await["id"], first["id"]);
}

#[tokio::test]
async fn create_refuses_bad_input_with_400() {
    let h = Harness::new();
    let alice = Some(("alice", Role::Creator));
    let cases = [
        (
            "endAt",
            json!(format_time(NOW_MS - 2 * HOUR_MS)),
            "endAt must be after startAt",
        ),
        ("endAt", json!("soon"), "endAt must be an RFC 3339 time"),
        ("startPrice", json!("-1"), "startPrice must not be negative"),
        (
            "startPrice",
            serde_json::from_str::<Value>("1e400").unwrap(),
            "at most",
        ),
        (
            "minIncrement",
            json!("0"),
            "minIncrement must be greater than 0",
        ),
        ("minIncrement", json!("0.0000001"), "fractional digits"),
        ("antiSnipingSeconds", json!(3601), "antiSnipingSeconds"),
        ("antiSnipingSeconds", json!(-1), "invalid value"),
        ("postId", json!(""), "postId"),
        ("postId", json!(5), "invalid type"),
        ("extra", json!(1), "unknown field `extra`"),
    ];
    for (field, value, expected) in cases {
        let mut body = create_body();
        body[field] = value;
        let response = h.call(Method::POST, "/auctions", alice, Some(body)).await;
        let detail = problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
        assert!(detail.contains(expected), "{field}: {detail}");
    }
    let mut body = create_body();
    body.as_object_mut().unwrap().remove("endAt");
    let response = h.call(Method::POST, "/auctions", alice, Some(body)).await;
    let detail = problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert!(detail.contains("missing field `endAt`"), "{detail}");
    let long = json!("x".repeat(300));
    let mut body = create_body();
    body["postId"] = long;
    let response = h.call(Method::POST, "/auctions", alice, Some(body)).await;
    problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
}

#[tokio::test]
async fn body_hygiene() {
    let h = Harness::new();
    let token = h.token("alice", &[Role::Creator]);
    let post = |content_type: Option<&str>, body: Vec<u8>| {
        let mut builder =
            Request::post("/auctions").header(header::AUTHORIZATION, format!("Bearer {token}"));
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(Body::from(body)).unwrap()
    };
    let response = h.send(post(None, b"{}".to_vec())).await;
    problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
    let response = h.send(post(Some("text/plain"), b"{}".to_vec())).await;
    problem(
        response,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
    let response = h
        .send(post(
            Some("application/json"),
            vec![b' '; BODY_LIMIT_BYTES + 1],
        ))
        .await;
    problem(response, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    let response = h
        .send(post(
            Some("application/json; charset=utf-8"),
            b"{\"postId\":".to_vec(),
        ))
        .await;
    let detail = problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert!(detail.contains("malformed JSON"), "{detail}");
    let response = h
        .send(post(Some("application/json"), b"\xff{}".to_vec()))
        .await;
    let detail = problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert!(detail.contains("UTF-8"), "{detail}");
    let response = h.send(post(Some("application/json"), Vec::new())).await;
    problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
}

#[tokio::test]
async fn authentication_and_roles() {
    let h = Harness::new();
    let response = h.call(Method::GET, "/auctions", None, None).await;
    assert!(response.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let response = h
        .send(
            Request::get("/auctions")
                .header(header::AUTHORIZATION, "Bearer nope")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let expired = h.secret.sign("alice", &[Role::Admin], 1, 2);
    let response = h
        .send(
            Request::get("/auctions")
                .header(header::AUTHORIZATION, format!("Bearer {expired}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let detail = problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(detail.contains("expired"), "{detail}");
    // Wrong role is a 403 before the body is looked at.
    for role in [Role::Viewer, Role::Bidder] {
        let response = h
            .call(
                Method::POST,
                "/auctions",
                Some(("eve", role)),
                Some(json!({})),
            )
            .await;
        problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let id = h.auction().await;
    for role in [Role::Viewer, Role::Creator] {
        let response = h
            .call_with(
                Method::POST,
                &format!("/auctions/{id}/bids"),
                Some(("eve", role)),
                Some(json!({"amount": "1"})),
                &[("idempotency-key", "k")],
            )
            .await;
        problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    let response = h
        .call(
            Method::POST,
            &format!("/auctions/{id}/pause"),
            Some(("eve", Role::Bidder)),
            None,
        )
        .await;
    problem(response, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test]
async fn read_one_with_etag_and_consistency() {
    let h = Harness::new();
    let id = h.auction().await;
    let viewer = Some(("vic", Role::Viewer));
    let response = h
        .call(Method::GET, &format!("/auctions/{id}"), viewer, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::ETAG], "\"1\"");
    let response = h
        .call_with(
            Method::GET,
            &format!("/auctions/{id}"),
            viewer,
            None,
            &[("if-none-match", "\"1\"")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(response.headers()[header::ETAG], "\"1\"");
    assert!(bytes_of(response).await.is_empty());
    let response = h
        .call(
            Method::GET,
            &format!("/auctions/{id}?consistency=local"),
            viewer,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = h
        .call(
            Method::GET,
            &format!("/auctions/{id}?consistency=eventual"),
            viewer,
            None,
        )
        .await;
    problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    let response = h
        .call(Method::GET, &format!("/auctions/{id}?foo=1"), viewer, None)
        .await;
    problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    let response = h.call(Method::GET, "/auctions/nope", viewer, None).await;
    problem(response, StatusCode::NOT_FOUND, "not-found").await;
    let long = "a".repeat(129);
    let response = h
        .call(Method::GET, &format!("/auctions/{long}"), viewer, None)
        .await;
    problem(response, StatusCode::NOT_FOUND, "not-found").await;
    let response = h.call(Method::GET, "/auctions/a%2Fb", viewer, None).await;
    problem(response, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test]
async fn bids_decide_and_replay_byte_for_byte() {
    let h = Harness::new();
    let id = h.auction().await;
    let first = h.bid(&id, "bob", "b-1", json!(100.5)).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first = bytes_of(first).await;
    let decision: Value = serde_json::from_slice(&first).unwrap();
    assert_eq!(decision["status"], "accepted");
    assert_eq!(decision["reason"], Value::Null);
    assert_eq!(decision["amount"], "100.50");
    assert_eq!(decision["currentPrice"], "100.50");
    assert_eq!(decision["currentWinnerId"], "bob");
    assert_eq!(decision["version"], 2);
    assert_eq!(decision["endAt"], "2026-11-25T23:00:00.000Z");
    let keys: Vec<&String> = decision.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 8);

    h.engine.advance_ms(5000);
    let again = h.bid(&id, "bob", "b-1", json!("100.50")).await;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(bytes_of(again).await, first);

    let reused = h.bid(&id, "bob", "b-1", json!("101")).await;
    problem(
        reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
    )
    .await;

    let low = json_of(h.bid(&id, "carol", "c-1", json!("104")).await).await;
    assert_eq!(low["status"], "rejected");
    assert_eq!(low["reason"], "below_minimum");
    assert_eq!(low["currentWinnerId"], "bob");
    let own = json_of(h.bid(&id, "alice", "a-1", json!("500")).await).await;
    assert_eq!(own["status"], "rejected");
    assert_eq!(own["reason"], "self_bid");
}

#[tokio::test]
async fn bid_errors() {
    let h = Harness::new();
    let id = h.auction().await;
    let bob = Some(("bob", Role::Bidder));
    let uri = format!("/auctions/{id}/bids");
    let response = h
        .call(Method::POST, &uri, bob, Some(json!({"amount": "200"})))
        .await;
    let detail = problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    assert!(detail.contains("Idempotency-Key"), "{detail}");
    let response = h.bid(&id, "bob", "k", json!("abc")).await;
    problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    let response = h.bid(&id, "bob", "k", json!(null)).await;
    problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    let response = h.bid("missing", "bob", "k", json!("200")).await;
    problem(response, StatusCode::NOT_FOUND, "not-found").await;
    h.engine
        .failures
        .lock()
        .unwrap()
        .push(ProposeError::Unavailable {
            reason: "no leader".into(),
            retry_after_s: 3,
        });
    let response = h.bid(&id, "bob", "k", json!("200")).await;
    assert_eq!(response.headers()[header::RETRY_AFTER], "3");
    problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    h.engine
        .failures
        .lock()
        .unwrap()
        .push(ProposeError::Unknown("timeout".into()));
    let response = h.bid(&id, "bob", "k", json!("200")).await;
    problem(response, StatusCode::GATEWAY_TIMEOUT, "outcome-unknown").await;
    h.engine
        .failures
        .lock()
        .unwrap()
        .push(ProposeError::Internal("disk on fire".into()));
    let response = h.bid(&id, "bob", "k", json!("200")).await;
    let detail = problem(response, StatusCode::INTERNAL_SERVER_ERROR, "internal").await;
    assert!(!detail.contains("disk"));
}

#[tokio::test]
async fn bids_are_rate_limited_per_bidder() {
    let h = Harness::with_rate(2);
    let id = h.auction().await;
    for i in 0..2 {
        assert_eq!(
            h.bid(&id, "bob", &format!("k{i}"), json!("200"))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let response = h.bid(&id, "bob", "k9", json!("300")).await;
    assert!(response.headers().contains_key(header::RETRY_AFTER));
    problem(response, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;
    assert_eq!(
        h.bid(&id, "carol", "k", json!("300")).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn bid_history_pages_in_decision_order() {
    let h = Harness::new();
    let id = h.auction().await;
    for (i, amount) in ["100", "101", "110", "120"].iter().enumerate() {
        h.bid(&id, "bob", &format!("k{i}"), json!(amount)).await;
    }
    let viewer = Some(("vic", Role::Viewer));
    let page = json_of(
        h.call(
            Method::GET,
            &format!("/auctions/{id}/bids?limit=3"),
            viewer,
            None,
        )
        .await,
    )
    .await;
    let seqs: Vec<u64> = page["bids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(page["bids"][1]["status"], "rejected");
    assert_eq!(page["bids"][1]["reason"], "below_minimum");
    assert_eq!(page["bids"][0]["bidderId"], "bob");
    assert_eq!(page["bids"][0]["createdAt"], "2026-11-25T22:00:00.000Z");
    let cursor = page["nextCursor"].as_str().unwrap();
    let rest = json_of(
        h.call(
            Method::GET,
            &format!("/auctions/{id}/bids?limit=3&cursor={cursor}"),
            viewer,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(rest["bids"][0]["seq"], 4);
    assert_eq!(rest["nextCursor"], Value::Null);
    let accepted = json_of(
        h.call(
            Method::GET,
            &format!("/auctions/{id}/bids?status=accepted"),
            viewer,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(accepted["bids"].as_array().unwrap().len(), 3);
    for bad in [
        "limit=0",
        "limit=1001",
        "limit=x",
        "status=rejected",
        "cursor=zzz",
        "foo=bar",
    ] {
        let response = h
            .call(
                Method::GET,
                &format!("/auctions/{id}/bids?{bad}"),
                viewer,
                None,
            )
            .await;
        problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    }
    let response = h
        .call(Method::GET, "/auctions/missing/bids", viewer, None)
        .await;
    problem(response, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test]
async fn listing_is_newest_first_with_cursors() {
    let h = Harness::new();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(h.auction().await);
        h.engine.advance_ms(10);
    }
    let viewer = Some(("vic", Role::Viewer));
    let mut seen = Vec::new();
    let mut uri = "/auctions?limit=2".to_owned();
    loop {
        let page = json_of(h.call(Method::GET, &uri, viewer, None).await).await;
        for auction in page["auctions"].as_array().unwrap() {
            seen.push(auction["id"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(cursor) => uri = format!("/auctions?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids);
    let page = json_of(
        h.call(
            Method::GET,
            "/auctions?status=scheduled&creatorId=alice",
            viewer,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(page["auctions"].as_array().unwrap().len(), 0);
    let page = json_of(
        h.call(
            Method::GET,
            "/auctions?status=active&creatorId=alice",
            viewer,
            None,
        )
        .await,
    )
    .await;
    assert_eq!(page["auctions"].as_array().unwrap().len(), 5);
    for bad in [
        "limit=0",
        "limit=101",
        "status=open",
        "creatorId=a%20b",
        "cursor=",
        "cursor=abc",
        "x=1",
    ] {
        let response = h
            .call(Method::GET, &format!("/auctions?{bad}"), viewer, None)
            .await;
        problem(response, StatusCode::BAD_REQUEST, "invalid-request").await;
    }
}

#[tokio::test]
async fn control_actions() {
    let h = Harness::new();
    let id = h.auction().await;
    let alice = Some(("alice", Role::Creator));
    let response = h
        .call(
            Method::POST,
            &format!("/auctions/{id}/pause"),
            Some(("mallory", Role::Creator)),
            None,
        )
        .await;
    problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    let response = h
        .call(Method::POST, &format!("/auctions/{id}/pause"), alice, None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::ETAG], "\"2\"");
    let paused = json_of(response).await;
    assert_eq!(paused["status"], "paused");
    let response = h
        .call(Method::POST, &format!("/auctions/{id}/pause"), alice, None)
        .await;
    let detail = problem(response, StatusCode::CONFLICT, "conflict").await;
    assert_eq!(detail, "cannot pause an auction that is paused");
    let rejected = json_of(h.bid(&id, "bob", "k", json!("200")).await).await;
    assert_eq!(rejected["reason"], "paused");
    h.engine.advance_ms(60_000);
    let resumed = json_of(
        h.call(Method::POST, &format!("/auctions/{id}/resume"), alice, None)
            .await,
    )
    .await;
    assert_eq!(resumed["endAt"], "2026-11-25T23:01:00.000Z");
    let ended = json_of(
        h.call(
            Method::POST,
            &format!("/auctions/{id}/end"),
            Some(("root", Role::Admin)),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(ended["status"], "ended");
    assert_eq!(ended["endedAt"], "2026-11-25T22:01:00.000Z");
    assert_eq!(ended["version"], 4);
    let response = h
        .call(Method::POST, &format!("/auctions/{id}/start"), alice, None)
        .await;
    problem(response, StatusCode::CONFLICT, "conflict").await;
    let response = h
        .call(Method::POST, "/auctions/missing/end", alice, None)
        .await;
    problem(response, StatusCode::NOT_FOUND, "not-found").await;
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let h = Harness::new();
    let response = h.call(Method::GET, "/nope", None, None).await;
    problem(response, StatusCode::NOT_FOUND, "not-found").await;
    let response = h
        .call(
            Method::DELETE,
            "/auctions",
            Some(("root", Role::Admin)),
            None,
        )
        .await;
    assert!(response.headers().contains_key(header::ALLOW));
    problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
    let response = h.call(Method::POST, "/healthz", None, None).await;
    problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
}

#[tokio::test]
async fn ops_endpoints() {
    let h = Harness::new();
    let response = h.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["nodeId"], 7);
    assert_eq!(
        h.call(Method::GET, "/readyz", None, None).await.status(),
        StatusCode::OK
    );
    *h.engine.not_ready.lock().unwrap() = Some("group 3 has no leader".into());
    let response = h.call(Method::GET, "/readyz", None, None).await;
    let detail = problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(detail.contains("group 3 has no leader"));
    let response = h.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = h.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let doc = json_of(response).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
}

/// Every `$ref` in the document resolves (the contract test follows only the ones bodies reach).
#[tokio::test]
async fn backups_are_for_admins_only() {
    let h = Harness::new();
    let response = h.call(Method::GET, "/cluster/backup", None, None).await;
    problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let viewer = Some(("vera", Role::Viewer));
    let response = h.call(Method::GET, "/cluster/backup", viewer, None).await;
    problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    // The fake engine streams a stand-in; the real backup is tested in tests/integration/backup.rs.
    let admin = Some(("root", Role::Admin));
    let response = h.call(Method::GET, "/cluster/backup", admin, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        bytes_of(response).await,
        crate::http::engine::fake::FAKE_BACKUP
    );
}

#[test]
fn openapi_refs_all_resolve() {
    let doc: Value = serde_json::from_str(crate::http::api::ops::OPENAPI_JSON).unwrap();
    // Every $ref resolves.
    let text = crate::http::api::ops::OPENAPI_JSON;
    for part in text.split("\"$ref\": \"#/").skip(1) {
        let pointer = format!("/{}", &part[..part.find('"').unwrap()]);
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
}

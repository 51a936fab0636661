//! The contract test: the router and `openapi.json` agree, both ways, on every route (path and
//! method), every status each operation answers, every field of every JSON body it sends or
//! takes, every query parameter and the headers the API defines.
//!
//! The cases drive the real router against the in-memory engine, which applies the real
//! auction rules; what that engine cannot do by itself (lose its quorum, time out, fail its
//! disk) is injected. A documented status, field or parameter that no case produced fails the
//! test by name, as does anything produced but undocumented. The few statuses no request can
//! provoke are listed in `UNREACHABLE` with the reason.

mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use gavel_cluster::{MembershipError, ProposeError, ReadError};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests::{bytes_of, create_body, Harness, HOUR_MS, NOW_MS};
use crate::http::auth::Role;
use crate::http::json::format_time;
use spec::{Op, Spec, Validator};

/// Documented statuses that no request can provoke, each with the reason it stays documented.
const UNREACHABLE: &[(&str, &str, u16, &str)] = &[(
    "POST",
    "/auctions",
    409,
    "the id derived from (creator, Idempotency-Key) names another auction: a UUIDv5 collision",
)];

/// Headers the API defines; one on a response must be documented for that response.
const API_HEADERS: [&str; 5] = [
    "etag",
    "location",
    "idempotent-replayed",
    "retry-after",
    "www-authenticate",
];

/// How long a case may take to answer (streams included), in milliseconds.
const CASE_TIMEOUT_MS: u64 = 5_000;
/// The viewers each harness admits (`LIVE_CONFIG.viewers_max` in `tests.rs`).
const VIEWERS_MAX: usize = 16;

/// Which harness a request goes to.
#[derive(Clone, Copy)]
enum Via {
    /// No bid rate limit, room for 64 requests at once.
    Open,
    /// One bid per second per bidder.
    RateLimited,
    /// Room for no request at once: every API request is shed.
    Shedding,
}

/// Who calls.
#[derive(Clone)]
enum Who {
    Nobody,
    As(&'static str, Role),
    /// A valid token that grants no role.
    NoRole,
    /// Everything, through `?access_token=` rather than the header.
    QueryToken(&'static str, Role),
}

#[derive(Clone)]
struct Req {
    method: Method,
    template: &'static str,
    path_value: String,
    query: String,
    who: Who,
    body: Option<(String, Vec<u8>)>,
    headers: Vec<(&'static str, String)>,
    via: Via,
}

fn req(method: Method, template: &'static str, path_value: &str) -> Req {
    Req {
        method,
        template,
        path_value: path_value.to_owned(),
        query: String::new(),
        who: Who::As("root", Role::Admin),
        body: None,
        headers: Vec::new(),
        via: Via::Open,
    }
}

impl Req {
    fn who(mut self, who: Who) -> Req {
        self.who = who;
        self
    }
    fn json(mut self, body: Value) -> Req {
        self.body = Some(("application/json".into(), body.to_string().into_bytes()));
        self
    }
    fn raw(mut self, content_type: &str, body: &[u8]) -> Req {
        self.body = Some((content_type.into(), body.to_vec()));
        self
    }
    fn query(mut self, query: &str) -> Req {
        self.query = query.to_owned();
        self
    }
    fn header(mut self, name: &'static str, value: &str) -> Req {
        self.headers.push((name, value.to_owned()));
        self
    }
    fn via(mut self, via: Via) -> Req {
        self.via = via;
        self
    }

    fn op(&self) -> Op {
        (self.method.to_string(), self.template.to_owned())
    }

    /// The template with its one path parameter filled in.
    fn path(&self) -> String {
        match (self.template.find('{'), self.template.find('}')) {
            (Some(open), Some(close)) => format!(
                "{}{}{}",
                &self.template[..open],
                self.path_value,
                &self.template[close + 1..]
            ),
            _ => self.template.to_owned(),
        }
    }
}

/// What a response showed, for the checks at the end.
#[derive(Default)]
struct Seen {
    statuses: BTreeMap<Op, BTreeSet<u16>>,
    headers: BTreeSet<(Op, u16, String)>,
    declared_headers: BTreeSet<(Op, u16, String)>,
    query_parameters: BTreeSet<(Op, String)>,
}

struct Run {
    open: Harness,
    rate_limited: Harness,
    shedding: Harness,
    spec: &'static Spec,
    validator: Validator<'static>,
    seen: Seen,
    errors: Vec<String>,
}

impl Run {
    fn new() -> Run {
        let spec: &'static Spec = Box::leak(Box::new(Spec::load()));
        Run {
            open: Harness::new(),
            rate_limited: Harness::with_limits(1, 64),
            shedding: Harness::with_limits(0, 0),
            spec,
            validator: Validator::new(spec),
            seen: Seen::default(),
            errors: Vec::new(),
        }
    }

    fn harness(&self, via: Via) -> &Harness {
        match via {
            Via::Open => &self.open,
            Via::RateLimited => &self.rate_limited,
            Via::Shedding => &self.shedding,
        }
    }

    fn request(&self, r: &Req) -> Request<Body> {
        let h = self.harness(r.via);
        let mut query = r.query.clone();
        let mut builder = Request::builder().method(r.method.clone());
        match &r.who {
            Who::Nobody => {}
            Who::As(sub, role) => {
                let token = h.token(sub, &[*role]);
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            Who::NoRole => {
                let token = h.token("nobody", &[]);
                builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            Who::QueryToken(sub, role) => {
                let token = h.token(sub, &[*role]);
                let sep = if query.is_empty() { "" } else { "&" };
                query = format!("{query}{sep}access_token={token}");
            }
        }
        let uri = match query.is_empty() {
            true => r.path(),
            false => format!("{}?{query}", r.path()),
        };
        builder = builder.uri(uri);
        for (name, value) in &r.headers {
            builder = builder.header(*name, value);
        }
        let body = match &r.body {
            Some((content_type, bytes)) => {
                builder = builder.header(header::CONTENT_TYPE, content_type);
                Body::from(bytes.clone())
            }
            None => Body::empty(),
        };
        builder.body(body).expect("a well-formed test request")
    }

    /// Sends `r` without recording it (set-up steps and held-open streams).
    async fn send(&self, r: &Req) -> axum::response::Response {
        let h = self.harness(r.via);
        h.send(self.request(r)).await
    }

    /// Sends `r`, asserts it answers `status`, and holds the answer to the document.
    async fn expect(&mut self, r: Req, status: u16) -> (HeaderMap, Value) {
        let response = self.send(&r).await;
        let got = response.status().as_u16();
        let headers = response.headers().clone();
        let body = tokio::time::timeout(Duration::from_millis(CASE_TIMEOUT_MS), bytes_of(response))
            .await
            .unwrap_or_else(|_| panic!("{} {} did not finish its body", r.method, r.path()));
        assert_eq!(
            got,
            status,
            "{} {}?{}: {}",
            r.method,
            r.path(),
            r.query,
            String::from_utf8_lossy(&body)
        );
        self.record(&r, status, &headers, &body)
    }

    fn record(
        &mut self,
        r: &Req,
        status: u16,
        headers: &HeaderMap,
        body: &[u8],
    ) -> (HeaderMap, Value) {
        let op = r.op();
        self.seen
            .statuses
            .entry(op.clone())
            .or_default()
            .insert(status);
        self.check_query(r);
        if (200..300).contains(&status) {
            self.check_request_body(r);
        }
        let Some(response) = self.spec.response(&op, status) else {
            self.errors.push(format!(
                "{} {}: status {status} is not documented",
                op.0, op.1
            ));
            return (headers.clone(), Value::Null);
        };
        self.check_headers(&op, status, response, headers);
        let value = self.check_body(&op, status, response, headers, body);
        (headers.clone(), value)
    }

    fn check_query(&mut self, r: &Req) {
        let op = r.op();
        let documented = self.spec.query_parameters(&op);
        let token = matches!(r.who, Who::QueryToken(..)).then_some("access_token");
        let pairs = r.query.split('&').chain(token);
        for pair in pairs.filter(|pair| !pair.is_empty()) {
            let name = pair.split('=').next().unwrap_or_default().to_owned();
            if !documented.contains(&name) {
                self.errors.push(format!(
                    "{} {}: query parameter {name} is not documented",
                    op.0, op.1
                ));
            }
            self.seen.query_parameters.insert((op.clone(), name));
        }
    }

    fn check_request_body(&mut self, r: &Req) {
        let (Some(schema), Some((_, bytes))) = (self.spec.request_schema(&r.op()), &r.body) else {
            return;
        };
        let value: Value = serde_json::from_slice(bytes).expect("accepted bodies are JSON");
        let location = format!("request {} {}", r.method, r.template);
        for error in self.validator.check(schema, &location, &value) {
            self.errors.push(format!("{location}: {error}"));
        }
    }

    fn check_headers(&mut self, op: &Op, status: u16, response: &Value, headers: &HeaderMap) {
        let documented: BTreeSet<String> = response["headers"]
            .as_object()
            .map(|h| h.keys().map(|name| name.to_lowercase()).collect())
            .unwrap_or_default();
        for name in &documented {
            self.seen
                .declared_headers
                .insert((op.clone(), status, name.clone()));
            if headers.contains_key(name.as_str()) {
                self.seen.headers.insert((op.clone(), status, name.clone()));
            }
        }
        for name in API_HEADERS {
            if headers.contains_key(name) && !documented.contains(name) {
                self.errors.push(format!(
                    "{} {} {status}: header {name} is sent but not documented",
                    op.0, op.1
                ));
            }
        }
        if matches!(status, 429 | 503) && !headers.contains_key(header::RETRY_AFTER) {
            self.errors
                .push(format!("{} {} {status}: no Retry-After", op.0, op.1));
        }
    }

    /// Checks the body's media type and shape; returns it as JSON (`Null` when it is not JSON).
    fn check_body(
        &mut self,
        op: &Op,
        status: u16,
        response: &Value,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Value {
        let where_ = format!("{} {} {status}", op.0, op.1);
        let Some(content) = response["content"].as_object() else {
            if !body.is_empty() {
                self.errors
                    .push(format!("{where_}: a body where none is documented"));
            }
            return Value::Null;
        };
        let media_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let Some(documented) = content.get(&media_type) else {
            self.errors.push(format!(
                "{where_}: content type {media_type:?} is not documented"
            ));
            return Value::Null;
        };
        let Some(schema) = documented.get("schema") else {
            return Value::Null;
        };
        let values: Vec<Value> = match media_type.as_str() {
            "application/json" | "application/problem+json" => match serde_json::from_slice(body) {
                Ok(value) => vec![value],
                Err(e) => {
                    self.errors
                        .push(format!("{where_}: the body is not JSON: {e}"));
                    return Value::Null;
                }
            },
            "text/event-stream" => sse_events(body),
            _ => return Value::Null,
        };
        for value in &values {
            for error in self.validator.check(schema, &where_, value) {
                self.errors.push(format!("{where_}: {error}"));
            }
        }
        values.into_iter().next().unwrap_or(Value::Null)
    }
}

/// The JSON `data:` payloads of an SSE body.
fn sse_events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| serde_json::from_str(data.trim()).expect("SSE data is JSON"))
        .collect()
}

fn unavailable() -> ProposeError {
    ProposeError::Unavailable {
        reason: "no leader".into(),
        retry_after_s: 1,
    }
}

fn read_unavailable() -> ReadError {
    ReadError::Unavailable {
        reason: "no quorum".into(),
        retry_after_s: 1,
    }
}

#[tokio::test]
async fn the_router_and_openapi_json_agree_on_routes_statuses_and_fields() {
    let mut run = Run::new();
    let auction = auctions(&mut run).await;
    bids(&mut run, &auction).await;
    streams(&mut run).await;
    operations(&mut run).await;
    cluster(&mut run).await;
    page(&mut run, &auction).await;
    shed_everywhere(&mut run, &auction).await;
    let routed = routed_operations(&run).await;
    let mut errors = std::mem::take(&mut run.errors);
    errors.extend(route_mismatches(&run, &routed));
    errors.extend(status_mismatches(&run));
    errors.extend(field_mismatches(&run));
    let errors: BTreeSet<String> = errors.into_iter().collect();
    assert!(
        errors.is_empty(),
        "the router and openapi.json disagree:\n{}",
        errors.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// Exercises the auction resource; returns an active auction by `alice` with no bids.
async fn auctions(run: &mut Run) -> String {
    let creator = Who::As("alice", Role::Creator);
    let post = || req(Method::POST, "/auctions", "").who(Who::As("alice", Role::Creator));
    let (_, created) = run
        .expect(
            post().json(create_body()).header("idempotency-key", "c-1"),
            201,
        )
        .await;
    let id = created["id"].as_str().expect("an id").to_owned();
    run.expect(
        post().json(create_body()).header("idempotency-key", "c-1"),
        201,
    )
    .await;
    let mut other = create_body();
    other["postId"] = json!("post-2");
    run.expect(post().json(other).header("idempotency-key", "c-1"), 422)
        .await;
    let mut backwards = create_body();
    backwards["endAt"] = json!(format_time(NOW_MS - 2 * HOUR_MS));
    run.expect(post().json(backwards), 400).await;
    run.expect(post().who(Who::Nobody).json(create_body()), 401)
        .await;
    run.expect(
        post().who(Who::As("bob", Role::Bidder)).json(create_body()),
        403,
    )
    .await;
    run.expect(post().raw("text/plain", b"{}"), 415).await;
    let huge = json!({ "postId": "x".repeat(8_192) });
    run.expect(post().json(huge), 413).await;
    for (failure, status) in [
        (ProposeError::Internal("disk".into()), 500),
        (unavailable(), 503),
        (ProposeError::Unknown("timeout".into()), 504),
    ] {
        run.open.engine.failures.lock().unwrap().push(failure);
        run.expect(post().json(create_body()), status).await;
    }

    read_one(run, &id).await;
    list(run).await;
    control(run, &creator).await;
    id
}

async fn read_one(run: &mut Run, id: &str) {
    let get = |id: &str| req(Method::GET, "/auctions/{id}", id).who(Who::As("vera", Role::Viewer));
    let (headers, _) = run.expect(get(id).query("consistency=local"), 200).await;
    let etag = headers[header::ETAG].to_str().expect("ascii").to_owned();
    run.expect(get(id).header("if-none-match", &etag), 304)
        .await;
    run.expect(get(id).query("consistency=sometimes"), 400)
        .await;
    run.expect(get(id).who(Who::Nobody), 401).await;
    run.expect(get(id).who(Who::NoRole), 403).await;
    run.expect(get("no-such-auction"), 404).await;
    read_failures(run, get(id)).await;
}

async fn list(run: &mut Run) {
    let post = req(Method::POST, "/auctions", "").who(Who::As("alice", Role::Creator));
    run.expect(post.json(create_body()), 201).await;
    let list = || req(Method::GET, "/auctions", "").who(Who::As("vera", Role::Viewer));
    let first = "status=active&creatorId=alice&limit=1&consistency=local";
    paged_listing(run, list, first, "").await;
}

/// A paged listing through its statuses: a first page of one, the next by its cursor, a bad
/// limit, no token, no role, and the engine's read failures.
async fn paged_listing(run: &mut Run, list: impl Fn() -> Req, first: &str, next: &str) {
    let (_, page) = run.expect(list().query(first), 200).await;
    let cursor = page["nextCursor"]
        .as_str()
        .expect("a second page")
        .to_owned();
    run.expect(list().query(&format!("{next}cursor={cursor}")), 200)
        .await;
    run.expect(list().query("limit=0"), 400).await;
    run.expect(list().who(Who::Nobody), 401).await;
    run.expect(list().who(Who::NoRole), 403).await;
    read_failures(run, list()).await;
}

/// A read that fails inside the engine: 500 for a broken replica, 503 for no quorum.
async fn read_failures(run: &mut Run, r: Req) {
    run.open
        .engine
        .read_failures
        .lock()
        .unwrap()
        .push(ReadError::Internal("disk".into()));
    run.expect(r.clone(), 500).await;
    run.open
        .engine
        .read_failures
        .lock()
        .unwrap()
        .push(read_unavailable());
    run.expect(r, 503).await;
}

/// start, pause, resume and end, each through every status it documents.
async fn control(run: &mut Run, creator: &Who) {
    let (_, scheduled) = {
        let mut later = create_body();
        later["startAt"] = json!(format_time(NOW_MS + HOUR_MS / 2));
        run.expect(
            req(Method::POST, "/auctions", "")
                .who(creator.clone())
                .json(later),
            201,
        )
        .await
    };
    let id = scheduled["id"].as_str().expect("an id").to_owned();
    for (action, refused_while_scheduled) in [
        ("/auctions/{id}/pause", true),
        ("/auctions/{id}/resume", true),
        ("/auctions/{id}/start", false),
        ("/auctions/{id}/pause", false),
        ("/auctions/{id}/resume", false),
        ("/auctions/{id}/end", false),
    ] {
        let call = || req(Method::POST, action, &id).who(creator.clone());
        if refused_while_scheduled {
            run.expect(call(), 409).await;
            continue;
        }
        run.expect(call().who(Who::Nobody), 401).await;
        run.expect(call().who(Who::As("mallory", Role::Creator)), 403)
            .await;
        run.expect(req(Method::POST, action, "no-such-auction"), 404)
            .await;
        for (failure, status) in [
            (ProposeError::Internal("disk".into()), 500),
            (unavailable(), 503),
            (ProposeError::Unknown("timeout".into()), 504),
        ] {
            run.open.engine.failures.lock().unwrap().push(failure);
            run.expect(call(), status).await;
        }
        run.expect(call(), 200).await;
    }
    run.expect(
        req(Method::POST, "/auctions/{id}/start", &id).who(creator.clone()),
        409,
    )
    .await;
    run.expect(
        req(Method::POST, "/auctions/{id}/end", &id).who(creator.clone()),
        409,
    )
    .await;
}

async fn bids(run: &mut Run, id: &str) {
    let bid = |key: &str| {
        req(Method::POST, "/auctions/{id}/bids", id)
            .who(Who::As("bob", Role::Bidder))
            .header("idempotency-key", key)
    };
    run.expect(bid("b-1").json(json!({ "amount": "100" })), 200)
        .await;
    let (headers, _) = run
        .expect(bid("b-1").json(json!({ "amount": "100" })), 200)
        .await;
    assert_eq!(headers["idempotent-replayed"], "true");
    run.expect(bid("b-1").json(json!({ "amount": "200" })), 422)
        .await;
    run.expect(bid("b-2").json(json!({ "amount": "101" })), 200)
        .await;
    run.expect(
        req(Method::POST, "/auctions/{id}/bids", id)
            .who(Who::As("bob", Role::Bidder))
            .json(json!({ "amount": "300" })),
        400,
    )
    .await;
    run.expect(
        bid("b-3").who(Who::Nobody).json(json!({ "amount": "300" })),
        401,
    )
    .await;
    run.expect(
        bid("b-3")
            .who(Who::As("vera", Role::Viewer))
            .json(json!({ "amount": "300" })),
        403,
    )
    .await;
    run.expect(
        req(Method::POST, "/auctions/{id}/bids", "no-such-auction")
            .header("idempotency-key", "b-3")
            .json(json!({ "amount": "300" })),
        404,
    )
    .await;
    run.expect(bid("b-3").raw("text/plain", b"{\"amount\":\"300\"}"), 415)
        .await;
    run.expect(bid("b-3").json(json!({ "amount": "9".repeat(8_192) })), 413)
        .await;
    for (failure, status) in [
        (ProposeError::Internal("disk".into()), 500),
        (unavailable(), 503),
        (ProposeError::Unknown("timeout".into()), 504),
    ] {
        run.open.engine.failures.lock().unwrap().push(failure);
        run.expect(bid("b-4").json(json!({ "amount": "300" })), status)
            .await;
    }
    run.open
        .engine
        .set_decision_count(id, gavel_rules::DECISIONS_PER_AUCTION_MAX);
    run.expect(bid("b-5").json(json!({ "amount": "400" })), 409)
        .await;
    run.open.engine.set_decision_count(id, 2);
    rate_limited_bid(run).await;

    bid_history(run, id).await;
}

async fn bid_history(run: &mut Run, id: &str) {
    let history = || req(Method::GET, "/auctions/{id}/bids", id).who(Who::As("vera", Role::Viewer));
    let first = "status=accepted&limit=1&consistency=local";
    paged_listing(run, history, first, "status=all&").await;
    run.expect(
        req(Method::GET, "/auctions/{id}/bids", "no-such-auction"),
        404,
    )
    .await;
}

/// Two bids in a row from one bidder where one per second is allowed: the second is 429.
async fn rate_limited_bid(run: &mut Run) {
    let create = req(Method::POST, "/auctions", "")
        .who(Who::As("alice", Role::Creator))
        .json(create_body())
        .via(Via::RateLimited);
    let response = run.send(&create).await;
    let created: Value = serde_json::from_slice(&bytes_of(response).await).expect("JSON");
    let id = created["id"].as_str().expect("an id").to_owned();
    for (key, status) in [("r-1", 200), ("r-2", 429)] {
        let bid = req(Method::POST, "/auctions/{id}/bids", &id)
            .who(Who::As("bob", Role::Bidder))
            .header("idempotency-key", key)
            .json(json!({ "amount": "500" }))
            .via(Via::RateLimited);
        run.expect(bid, status).await;
    }
}

/// SSE and WebSocket: an ended auction streams its snapshot and `ended` and closes.
async fn streams(run: &mut Run) {
    let (_, ended) = run
        .expect(
            req(Method::POST, "/auctions", "")
                .who(Who::As("alice", Role::Creator))
                .json(create_body()),
            201,
        )
        .await;
    let id = ended["id"].as_str().expect("an id").to_owned();
    run.expect(
        req(Method::POST, "/auctions/{id}/end", &id).who(Who::As("alice", Role::Creator)),
        200,
    )
    .await;
    for template in ["/auctions/{id}/stream", "/auctions/{id}/ws"] {
        let watch = || req(Method::GET, template, &id).who(Who::QueryToken("vera", Role::Viewer));
        run.expect(watch().query("sinceVersion=abc"), 400).await;
        run.expect(watch().who(Who::Nobody), 401).await;
        run.expect(watch().who(Who::NoRole), 403).await;
        if template == "/auctions/{id}/stream" {
            run.expect(req(Method::GET, template, "no-such-auction"), 404)
                .await;
            run.open
                .engine
                .read_failures
                .lock()
                .unwrap()
                .push(read_unavailable());
            run.expect(watch(), 503).await;
        }
    }
    let sse = req(Method::GET, "/auctions/{id}/stream", &id)
        .who(Who::QueryToken("vera", Role::Viewer))
        .query("sinceVersion=1&tickMs=5000");
    let (_, first) = run.expect(sse, 200).await;
    assert_eq!(first["type"], "snapshot");
    run.expect(req(Method::GET, "/auctions/{id}/ws", &id), 400)
        .await;
    // Before the WebSocket viewer, which holds its slot until its close handshake ends.
    viewers_full(run).await;
    websocket_upgrade(run, &id).await;
}

/// A WebSocket handshake can only be answered over a real socket: 101, or the refusals that
/// come after the upgrade headers are checked (404, 503).
async fn websocket_upgrade(run: &mut Run, id: &str) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("bound");
    let app = run.open.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    run.open
        .engine
        .read_failures
        .lock()
        .unwrap()
        .push(read_unavailable());
    for (auction, status) in [(id, 503), ("no-such-auction", 404), (id, 101)] {
        let (got, headers, body) = handshake(run, address, auction).await;
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
        let r = req(Method::GET, "/auctions/{id}/ws", auction)
            .who(Who::QueryToken("vera", Role::Viewer))
            .query("tickMs=5000");
        run.record(&r, status, &headers, &body);
    }
    server.abort();
}

/// Sends a WebSocket handshake; returns the status, the headers and (unless 101) the body.
async fn handshake(
    run: &Run,
    address: std::net::SocketAddr,
    id: &str,
) -> (u16, HeaderMap, Vec<u8>) {
    let token = run.open.token("vera", &[Role::Viewer]);
    let mut socket = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let request = format!(
        "GET /auctions/{id}/ws?access_token={token}&tickMs=5000 HTTP/1.1\r\nHost: {address}\r\n\
         Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.expect("write");
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(CASE_TIMEOUT_MS);
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, headers) = parse_head(&received[..end]);
            let body = &received[end + 4..];
            let length: usize = headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            if status == 101 || body.len() >= length {
                return (status, headers, body[..length.min(body.len())].to_vec());
            }
        }
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, socket.read(&mut chunk))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(read > 0, "the server closed the handshake early");
        received.extend_from_slice(&chunk[..read]);
    }
}

fn parse_head(head: &[u8]) -> (u16, HeaderMap) {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("a status line, not {status_line:?}"));
    let mut headers = HeaderMap::new();
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        let name = header::HeaderName::from_bytes(name.trim().as_bytes()).expect("a name");
        let value = header::HeaderValue::from_str(value.trim()).expect("a value");
        headers.append(name, value);
    }
    (status, headers)
}

/// With every viewer slot taken, one more stream is 503 (admission spreads, never drops).
async fn viewers_full(run: &mut Run) {
    let (_, active) = run
        .expect(
            req(Method::POST, "/auctions", "")
                .who(Who::As("alice", Role::Creator))
                .json(create_body()),
            201,
        )
        .await;
    let id = active["id"].as_str().expect("an id").to_owned();
    let watch =
        || req(Method::GET, "/auctions/{id}/stream", &id).who(Who::As("vera", Role::Viewer));
    let mut held = Vec::new();
    for _ in 0..VIEWERS_MAX {
        let response = run.send(&watch()).await;
        assert_eq!(response.status(), StatusCode::OK);
        held.push(response);
    }
    run.expect(watch(), 503).await;
}

async fn operations(run: &mut Run) {
    for path in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/cluster/endpoints",
    ] {
        run.expect(req(Method::GET, path, "").who(Who::Nobody), 200)
            .await;
    }
    *run.open.engine.not_ready.lock().unwrap() = Some("group 3 has no leader".into());
    run.expect(req(Method::GET, "/readyz", "").who(Who::Nobody), 503)
        .await;
    *run.open.engine.not_ready.lock().unwrap() = None;
}

async fn cluster(run: &mut Run) {
    let admin = Who::As("root", Role::Admin);
    let status = || req(Method::GET, "/cluster", "");
    let (_, full) = run.expect(status(), 200).await;
    assert!(
        full["groups"][0]["replicas"][0]["digest"].is_u64(),
        "{full}"
    );
    let (_, light) = run.expect(status().query("digests=false"), 200).await;
    let replica = &light["groups"][0]["replicas"][0];
    assert!(
        replica["appliedIndex"].is_u64() && replica.get("digest").is_none(),
        "{light}"
    );
    run.expect(status().query("digests=maybe"), 400).await;
    run.expect(status().who(Who::Nobody), 401).await;
    run.expect(status().who(Who::As("alice", Role::Creator)), 403)
        .await;

    let backup = || req(Method::GET, "/cluster/backup", "");
    run.expect(backup(), 200).await;
    run.expect(backup().who(Who::Nobody), 401).await;
    run.expect(backup().who(Who::As("alice", Role::Creator)), 403)
        .await;
    read_failures(run, backup()).await;

    let member = json!({ "id": 4, "clientAddr": "127.0.0.4:8080", "peerAddr": "127.0.0.4:9080", "voter": false });
    let add = req(Method::POST, "/cluster/nodes", "")
        .who(admin.clone())
        .json(member);
    let bad_add = add
        .clone()
        .json(json!({ "id": 4, "clientAddr": "nowhere", "peerAddr": "127.0.0.4:9080" }));
    membership_change(run, add, bad_add, &[200, 409, 503]).await;
    let remove = req(Method::DELETE, "/cluster/nodes/{id}", "4").who(admin.clone());
    let bad_remove = req(Method::DELETE, "/cluster/nodes/{id}", "0");
    membership_change(run, remove, bad_remove, &[200, 404, 409, 503]).await;
    let transfer = req(Method::POST, "/cluster/groups/{group}/transfer-leader", "0")
        .who(admin)
        .json(json!({ "to": 2 }));
    let bad_transfer = transfer.clone().json(json!({ "to": "two" }));
    membership_change(run, transfer, bad_transfer, &[200, 404, 409, 503]).await;
    // Names that are not UTF-8 once decoded name nothing: a problem 404, never axum's text.
    run.expect(req(Method::DELETE, "/cluster/nodes/{id}", "%FF"), 404)
        .await;
    let transfer_from = |group| {
        req(
            Method::POST,
            "/cluster/groups/{group}/transfer-leader",
            group,
        )
        .json(json!({ "to": 2 }))
    };
    run.expect(transfer_from("%FF"), 404).await;
    run.expect(transfer_from("two"), 404).await;
}

/// One membership or leadership change through its statuses; the engine's answer is injected.
async fn membership_change(run: &mut Run, change: Req, bad: Req, answered: &[u16]) {
    run.expect(bad, 400).await;
    run.expect(change.clone().who(Who::Nobody), 401).await;
    run.expect(change.clone().who(Who::As("alice", Role::Creator)), 403)
        .await;
    for &status in answered {
        let answer = match status {
            200 => Ok(()),
            404 => Err(MembershipError::NotFound("no such node or group".into())),
            409 => Err(MembershipError::Rejected("not allowed".into())),
            _ => Err(MembershipError::Unavailable("no quorum".into())),
        };
        run.open
            .engine
            .membership_answers
            .lock()
            .unwrap()
            .push(answer);
        run.expect(change.clone(), status).await;
    }
    if change.method == Method::POST {
        run.expect(change.clone().raw("text/plain", b"{}"), 415)
            .await;
        run.expect(change.json(json!({ "pad": "x".repeat(8_192) })), 413)
            .await;
    }
}

async fn page(run: &mut Run, id: &str) {
    for (template, value) in [
        ("/", ""),
        ("/a/{id}", id),
        ("/assets/app.js", ""),
        ("/assets/style.css", ""),
    ] {
        run.expect(req(Method::GET, template, value).who(Who::Nobody), 200)
            .await;
    }
    run.expect(req(Method::GET, "/a/{id}", "bad$id").who(Who::Nobody), 404)
        .await;
    // Not UTF-8 once decoded: still a problem, not axum's plain-text 400.
    run.expect(req(Method::GET, "/a/{id}", "%FF").who(Who::Nobody), 404)
        .await;
}

/// Every API route sheds with 503 when the node holds as many requests as it takes.
async fn shed_everywhere(run: &mut Run, id: &str) {
    let operations: Vec<Op> = run.spec.operations().into_keys().collect();
    for (method, path) in operations {
        let shed = run
            .spec
            .response(&(method.clone(), path.clone()), 503)
            .is_some();
        let ops_route =
            ["/healthz", "/readyz", "/metrics", "/openapi.json"].contains(&path.as_str());
        if !shed || ops_route || !path.starts_with("/auctions") && !path.starts_with("/cluster") {
            continue;
        }
        let template: &'static str = Box::leak(path.into_boxed_str());
        let method: Method = method.parse().expect("a method");
        run.expect(req(method, template, id).via(Via::Shedding), 503)
            .await;
    }
}

/// Which (method, path) pairs the router serves: every routed path, probed with each method.
async fn routed_operations(run: &Run) -> BTreeSet<Op> {
    let mut routed = BTreeSet::new();
    for path in crate::http::server::routed_paths() {
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let probe = req(method.clone(), path, "no-such-thing");
            if run.send(&probe).await.status() != StatusCode::METHOD_NOT_ALLOWED {
                routed.insert((method.to_string(), path.to_owned()));
            }
        }
    }
    routed
}

fn route_mismatches(run: &Run, routed: &BTreeSet<Op>) -> Vec<String> {
    let documented: BTreeSet<Op> = run.spec.operations().into_keys().collect();
    let undocumented = routed
        .difference(&documented)
        .map(|(m, p)| format!("{m} {p} is routed but not documented"));
    let unrouted = documented
        .difference(routed)
        .map(|(m, p)| format!("{m} {p} is documented but not routed"));
    undocumented.chain(unrouted).collect()
}

fn status_mismatches(run: &Run) -> Vec<String> {
    let mut errors = Vec::new();
    for (op, statuses) in run.spec.operations() {
        let seen = run.seen.statuses.get(&op).cloned().unwrap_or_default();
        for status in statuses.difference(&seen) {
            let exempt = UNREACHABLE
                .iter()
                .any(|(m, p, s, _)| *m == op.0 && *p == op.1 && s == status);
            if !exempt {
                errors.push(format!(
                    "{} {}: documented status {status} was never answered",
                    op.0, op.1
                ));
            }
        }
        for parameter in run.spec.query_parameters(&op) {
            if !run
                .seen
                .query_parameters
                .contains(&(op.clone(), parameter.clone()))
            {
                errors.push(format!(
                    "{} {}: documented query parameter {parameter} was never sent",
                    op.0, op.1
                ));
            }
        }
    }
    for key in run.seen.declared_headers.difference(&run.seen.headers) {
        let ((method, path), status, name) = key;
        errors.push(format!(
            "{method} {path} {status}: documented header {name} was never sent"
        ));
    }
    errors
}

fn field_mismatches(run: &Run) -> Vec<String> {
    let validator = &run.validator;
    validator
        .declared
        .difference(&validator.seen)
        .map(|field| format!("documented field {field} never appeared in a body"))
        .collect()
}

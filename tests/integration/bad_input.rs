//! Junk input against a real `gavel serve`: a table of malformed requests (bodies, money, times,
//! rules, headers, query parameters, credentials, routes), each of which must be answered with
//! the expected 4xx as an RFC 9457 problem (`application/problem+json` with type, title, status,
//! detail) and never a 5xx. Afterwards the server is healthy and nothing was created or decided.
//! Every case runs even when an earlier one fails; the failures are reported together.

use crate::common::*;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;

/// Bodies larger than this must be refused with 413 (API: huge body > 64 KiB).
const HUGE_BODY_BYTES: usize = 100 * 1024;

/// How a case authenticates.
#[derive(Clone)]
enum Auth {
    Token(String),
    /// A raw `Authorization` header value.
    Raw(Vec<u8>),
}

struct Case {
    name: String,
    method: Method,
    /// Path with an already-encoded query string.
    path: String,
    auth: Auth,
    content_type: Option<&'static str>,
    keys: Vec<Vec<u8>>,
    body: Option<Vec<u8>>,
    allowed: Vec<u16>,
}

impl Case {
    fn new(name: impl Into<String>, method: Method, path: impl Into<String>, auth: &Auth) -> Case {
        Case {
            name: name.into(),
            method,
            path: path.into(),
            auth: auth.clone(),
            content_type: None,
            keys: Vec::new(),
            body: None,
            allowed: vec![400],
        }
    }

    fn json(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.content_type = Some("application/json");
        self.body = Some(body.into());
        self
    }

    fn key(mut self, key: impl Into<Vec<u8>>) -> Case {
        self.keys.push(key.into());
        self
    }

    fn allow(mut self, statuses: &[u16]) -> Case {
        self.allowed = statuses.to_vec();
        self
    }
}

/// A valid create body with one field replaced (or removed when `value` is `None`).
fn create_with(field: &str, value: Option<Value>) -> Vec<u8> {
    let mut body = active_auction_body("post-junk");
    let object = body.as_object_mut().expect("object");
    match value {
        Some(value) => object.insert(field.to_owned(), value),
        None => object.remove(field),
    };
    body.to_string().into_bytes()
}

fn create_with_times(start_in_ms: i64, end_in_ms: i64) -> Vec<u8> {
    auction_body("post-junk", start_in_ms, end_in_ms)
        .to_string()
        .into_bytes()
}

/// Money texts and JSON values every money field must refuse.
fn bad_money() -> Vec<(&'static str, Value)> {
    vec![
        ("-1", raw_number("-1")),
        ("\"-1\"", json!("-1")),
        ("\"-0.01\"", json!("-0.01")),
        ("\"abc\"", json!("abc")),
        ("1e400", raw_number("1e400")),
        ("\"1e400\"", json!("1e400")),
        ("\"1.1234567\"", json!("1.1234567")),
        ("1.0000001", raw_number("1.0000001")),
        ("10000000000001", raw_number("10000000000001")),
        ("\"1000000000000.000001\"", json!("1000000000000.000001")),
        ("\"NaN\"", json!("NaN")),
        ("\"nan\"", json!("nan")),
        ("\"Infinity\"", json!("Infinity")),
        ("\"-Infinity\"", json!("-Infinity")),
        ("\"\"", json!("")),
        ("\" 10\"", json!(" 10")),
        ("\"10 \"", json!("10 ")),
        ("\"0x10\"", json!("0x10")),
        ("\"1,5\"", json!("1,5")),
        ("\"+5\"", json!("+5")),
        ("\".5\"", json!(".5")),
        ("true", json!(true)),
        ("null", Value::Null),
        ("[]", json!([])),
        ("{}", json!({})),
    ]
}

fn body_cases(
    cases: &mut Vec<Case>,
    what: &str,
    method: Method,
    path: &str,
    auth: &Auth,
    key: bool,
) {
    let with_key = |case: Case| if key { case.key(fresh_key()) } else { case };
    let valid = if key {
        br#"{"amount": "10"}"#.to_vec()
    } else {
        active_auction_body("post-junk").to_string().into_bytes()
    };
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", b"".to_vec()),
        ("whitespace body", b"  \n ".to_vec()),
        ("truncated JSON", br#"{"postId": "p","#.to_vec()),
        ("unquoted keys", br#"{amount: 10}"#.to_vec()),
        ("single quotes", br#"{'amount': '10'}"#.to_vec()),
        ("trailing garbage", [valid.as_slice(), b" x"].concat()),
        ("two objects", [valid.as_slice(), valid.as_slice()].concat()),
        ("JSON NaN token", br#"{"amount": NaN}"#.to_vec()),
        ("array body", b"[]".to_vec()),
        ("string body", br#""amount""#.to_vec()),
        ("number body", b"42".to_vec()),
        ("null body", b"null".to_vec()),
        ("empty object", b"{}".to_vec()),
        ("deeply nested arrays", "[".repeat(20_000).into_bytes()),
        ("invalid UTF-8", b"{\"amount\": \"1\xff\xfe\"}".to_vec()),
        ("lone surrogate escape", br#"{"amount": "\ud800"}"#.to_vec()),
        (
            "comment in JSON",
            [b"/* c */".as_slice(), valid.as_slice()].concat(),
        ),
    ];
    for (name, body) in raw {
        cases.push(with_key(
            Case::new(format!("{what}: {name}"), method.clone(), path, auth).json(body),
        ));
    }
    let mut huge = valid.clone();
    let close = huge.pop().expect("non-empty");
    huge.extend(std::iter::repeat_n(b' ', HUGE_BODY_BYTES));
    huge.push(close);
    cases.push(with_key(
        Case::new(format!("{what}: huge body"), method.clone(), path, auth)
            .json(huge)
            .allow(&[413]),
    ));
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut case = with_key(
            Case::new(
                format!("{what}: Content-Type {content_type:?}"),
                method.clone(),
                path,
                auth,
            )
            .json(valid.clone())
            .allow(&[400, 415]),
        );
        case.content_type = content_type;
        cases.push(case);
    }
}

fn create_cases(cases: &mut Vec<Case>, creator: &Auth) {
    let create = |name: String, body: Vec<u8>| {
        Case::new(
            format!("create: {name}"),
            Method::POST,
            "/auctions",
            creator,
        )
        .json(body)
    };
    body_cases(cases, "create", Method::POST, "/auctions", creator, false);
    for field in ["postId", "startAt", "endAt", "startPrice", "minIncrement"] {
        cases.push(create(format!("missing {field}"), create_with(field, None)));
        cases.push(create(
            format!("{field} null"),
            create_with(field, Some(Value::Null)),
        ));
    }
    cases.push(create(
        "unknown field".into(),
        create_with("colour", Some(json!("red"))),
    ));
    cases.push(create(
        "misspelled field".into(),
        create_with("startprice", Some(json!("1"))),
    ));
    cases.push(create(
        "postId a number".into(),
        create_with("postId", Some(json!(5))),
    ));
    cases.push(create(
        "postId an array".into(),
        create_with("postId", Some(json!(["p"]))),
    ));
    cases.push(create(
        "postId of 300 characters".into(),
        create_with("postId", Some(json!("p".repeat(300)))),
    ));
    let mut duplicated = active_auction_body("post-junk").to_string();
    duplicated.insert_str(1, r#""postId": "other", "#);
    cases.push(create("duplicated field".into(), duplicated.into_bytes()));
    for field in ["startPrice", "minIncrement"] {
        for (name, value) in bad_money() {
            cases.push(create(
                format!("{field} {name}"),
                create_with(field, Some(value)),
            ));
        }
    }
    for zero in [json!(0), json!("0"), json!("0.000000")] {
        cases.push(create(
            format!("minIncrement {zero}"),
            create_with("minIncrement", Some(zero)),
        ));
    }
    for (name, value) in [
        ("3601", json!(3601)),
        ("-1", json!(-1)),
        ("1.5", raw_number("1.5")),
        ("\"30\"", json!("30")),
        ("2^32", json!(4_294_967_296u64)),
        ("true", json!(true)),
    ] {
        cases.push(create(
            format!("antiSnipingSeconds {name}"),
            create_with("antiSnipingSeconds", Some(value)),
        ));
    }
    for field in ["startAt", "endAt"] {
        for bad in [
            json!("2026-13-01T00:00:00Z"),
            json!("2026-11-25T25:00:00Z"),
            json!("2026-02-30T00:00:00Z"),
            json!("2026-11-25T22:00:00"),
            json!("2026-11-25"),
            json!("tomorrow"),
            json!(""),
            json!(1_764_108_000),
            json!("2026-11-25T22:00:00Z".repeat(10)),
        ] {
            cases.push(create(
                format!("{field} {bad}"),
                create_with(field, Some(bad)),
            ));
        }
    }
    let hour = 3_600_000;
    let day = 24 * hour;
    cases.push(create(
        "endAt before startAt".into(),
        create_with_times(2 * hour, hour),
    ));
    cases.push(create(
        "endAt equal to startAt".into(),
        create_with_times(hour, hour),
    ));
    cases.push(create(
        "endAt in the past".into(),
        create_with_times(-2 * hour, -hour),
    ));
    cases.push(create(
        "longer than 30 days".into(),
        create_with_times(0, 30 * day + hour),
    ));
}

fn bid_cases(cases: &mut Vec<Case>, bidder: &Auth, id: &str) {
    let path = format!("/auctions/{id}/bids");
    let bid = |name: String, body: Vec<u8>| {
        Case::new(format!("bid: {name}"), Method::POST, path.clone(), bidder).json(body)
    };
    body_cases(cases, "bid", Method::POST, &path, bidder, true);
    for (name, value) in bad_money() {
        let body = json!({ "amount": value }).to_string().into_bytes();
        cases.push(bid(format!("amount {name}"), body).key(fresh_key()));
    }
    for (name, body) in [
        ("unknown field", r#"{"amount": "10", "maxAmount": "20"}"#),
        ("wrong case field", r#"{"Amount": "10"}"#),
        ("duplicated field", r#"{"amount": "10", "amount": "11"}"#),
    ] {
        cases.push(bid(name.into(), body.into()).key(fresh_key()));
    }
    let valid = br#"{"amount": "10"}"#.to_vec();
    cases.push(bid("missing Idempotency-Key".into(), valid.clone()));
    for (name, key) in [
        ("empty", b"".to_vec()),
        ("with a tab", b"a\tb".to_vec()),
        ("non-ASCII", "kl\u{e9}".as_bytes().to_vec()),
        ("raw byte 0x80", b"k\x80".to_vec()),
        ("256 characters", vec![b'k'; 256]),
    ] {
        cases.push(bid(format!("Idempotency-Key {name}"), valid.clone()).key(key));
    }
    cases.push(bid("two Idempotency-Keys".into(), valid).key("a").key("b"));
}

fn query_cases(cases: &mut Vec<Case>, viewer: &Auth, id: &str) {
    let get = |path: String| Case::new(format!("GET {path}"), Method::GET, path, viewer);
    for query in [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=99999999999999999999",
        "status=bogus",
        "cursor=garbage",
        "cursor=%ZZ",
        "cursor=%00%01",
    ] {
        cases.push(get(format!("/auctions?{query}")));
    }
    for query in ["consistency=bogus", "consistency=LOCAL%00"] {
        cases.push(get(format!("/auctions/{id}?{query}")));
    }
    for query in [
        "limit=0",
        "limit=1001",
        "limit=abc",
        "status=bogus",
        "cursor=garbage",
        "cursor=%ZZ",
    ] {
        cases.push(get(format!("/auctions/{id}/bids?{query}")));
    }
}

fn auth_and_route_cases(cases: &mut Vec<Case>, viewer: &Auth, id: &str) {
    for header in [
        b"Basic dXNlcjpwYXNz".to_vec(),
        b"Basic x".to_vec(),
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        b"Token abc".to_vec(),
        b"Bearer a b".to_vec(),
        b"Bearer \xff\xfe".to_vec(),
    ] {
        let name = format!("Authorization {:?}", String::from_utf8_lossy(&header));
        cases
            .push(Case::new(name, Method::GET, "/auctions", &Auth::Raw(header)).allow(&[400, 401]));
    }
    for (method, path, status) in [
        (Method::GET, "/nope".to_owned(), 404),
        (Method::GET, format!("/auctions/{id}/nope"), 404),
        (Method::DELETE, "/auctions".to_owned(), 405),
        (Method::PUT, format!("/auctions/{id}"), 405),
        (Method::DELETE, format!("/auctions/{id}/bids"), 405),
        (Method::GET, format!("/auctions/{id}/pause"), 405),
        (Method::GET, format!("/auctions/{}", "x".repeat(1000)), 404),
        (Method::GET, "/auctions/%00".to_owned(), 404),
        (
            Method::GET,
            "/auctions/..%2F..%2Fetc%2Fpasswd".to_owned(),
            404,
        ),
    ] {
        let name = format!("{method} {}", &path[..path.len().min(60)]);
        cases.push(Case::new(name, method, path, viewer).allow(&[status, 400]));
    }
}

/// Runs one case; returns what is wrong with the answer, if anything.
async fn check(server: &Server, case: &Case) -> Option<String> {
    let url = server.url(&case.path);
    let mut builder = server.client().request(case.method.clone(), url);
    builder = match &case.auth {
        Auth::Token(token) => builder.bearer_auth(token),
        Auth::Raw(raw) => builder.header(
            AUTHORIZATION,
            HeaderValue::from_bytes(raw).expect("a sendable header"),
        ),
    };
    if let Some(content_type) = case.content_type {
        builder = builder.header(CONTENT_TYPE, content_type);
    }
    for key in &case.keys {
        let value = HeaderValue::from_bytes(key).expect("a sendable header");
        builder = builder.header("Idempotency-Key", value);
    }
    if let Some(body) = &case.body {
        builder = builder.body(body.clone());
    }
    let resp = match try_send(builder).await {
        Ok(resp) => resp,
        Err(e) => return Some(format!("transport error {e:?}")),
    };
    let snippet: String = resp.text().chars().take(300).collect();
    if !case.allowed.contains(&resp.status) {
        return Some(format!(
            "HTTP {} (expected {:?}): {snippet}",
            resp.status, case.allowed
        ));
    }
    if let Some(wrong) = resp.problem_error() {
        return Some(wrong);
    }
    if resp.status == 401 && resp.header("www-authenticate").is_none() {
        return Some("401 without WWW-Authenticate".into());
    }
    if resp.status == 405 && resp.header("allow").is_none() {
        return Some("405 without Allow".into());
    }
    None
}

#[tokio::test]
async fn junk_is_refused_with_problems_never_500() {
    let server = Server::start().await;
    let creator = Auth::Token(token("carol", &["creator"]));
    let bidder = Auth::Token(token("bob", &["bidder"]));
    let viewer = Auth::Token(token("vera", &["viewer"]));
    let vera = token("vera", &["viewer"]);
    let auction = server
        .create_auction(
            &token("carol", &["creator"]),
            &active_auction_body("post-target"),
        )
        .await;
    let id = auction["id"].as_str().unwrap().to_owned();

    let mut cases = Vec::new();
    create_cases(&mut cases, &creator);
    bid_cases(&mut cases, &bidder, &id);
    query_cases(&mut cases, &viewer, &id);
    auth_and_route_cases(&mut cases, &viewer, &id);

    let mut failures = Vec::new();
    for case in &cases {
        if let Some(failure) = check(&server, case).await {
            failures.push(format!("{}: {failure}", case.name));
        }
    }
    eprintln!("{} junk requests, {} failed", cases.len(), failures.len());

    // Still healthy, and nothing was created or decided.
    server.get_anonymous("/healthz").await.expect_status(200);
    assert_eq!(
        server.get_auction(&vera, &id).await,
        auction,
        "junk changed the auction"
    );
    assert!(
        server.history(&vera, &id, "all").await.is_empty(),
        "junk placed bids"
    );
    let listed = server.pages("/auctions", &vera, &[], "auctions").await;
    let listed: Vec<Value> = listed.into_iter().flatten().collect();
    assert_eq!(listed.len(), 1, "junk created auctions: {listed:?}");

    assert!(
        failures.is_empty(),
        "{} of {} junk requests were mishandled:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

//! What one request of `gavel bench bids` is on each system it can drive, and the setup before
//! the run: on Gavel a bid (`POST /auctions/{id}/bids` with a fresh `Idempotency-Key`, the
//! amount the last seen price plus the increment), after creating the auctions balanced over
//! the Raft groups and waiting for the group leaders to spread; on etcd a put of a bid-sized
//! value under the auction's key through the v3 JSON gateway (`POST /v3/kv/put`).
//!
//! It classifies answers (accepted, rejected with a reason, shed, error); it does not time or
//! count them (`bids_load.rs` does).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::bids_route::{self, Via};
use crate::http::auth::{Role, Secret};

/// How long the tool waits for a cluster's group leaders to spread before it measures anyway.
const BALANCE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the leader placement is polled while waiting.
const BALANCE_POLL: Duration = Duration::from_millis(250);
/// Auctions created per auction used, at most, while balancing them over the groups (auction
/// ids are random, so some land in a group that already has its share).
const CREATE_ATTEMPTS_PER_AUCTION_MAX: u32 = 16;
/// How long creating one auction keeps retrying answers that may yet succeed (503, 504, a lost
/// connection, as after an overloaded run the leaders move), with the same `Idempotency-Key`
/// and body, as API.md asks of clients.
const CREATE_RETRY_MAX: Duration = Duration::from_secs(15);
const CREATE_RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long the auctions stay open beyond the run, so none ends under the load.
const AUCTION_SLACK: Duration = Duration::from_secs(3600);
/// How long the tokens this tool signs are valid beyond the run.
const TOKEN_SLACK_S: i64 = 3600;
/// The price step of every auction this tool creates, in whole currency units.
const INCREMENT_UNITS: u64 = 1;
/// The size of the value of an etcd put: about what a Gavel bid entry carries (auction, bidder,
/// key, amount, bid id) in its log.
const ETCD_VALUE_BYTES: usize = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    Gavel,
    Etcd,
}

/// The answer to one request.
#[derive(Debug)]
pub enum Outcome {
    /// Gavel accepted the bid; etcd stored the put.
    Accepted,
    /// Gavel decided the bid and rejected it, with this reason.
    Rejected(String),
    /// 503: the system refused before doing anything (no leader, overload).
    Shed,
    /// Anything else: another status (with its code), a timeout, a connection or body error.
    Error(String),
}

/// Everything a request needs, shared by every client.
pub struct Plan {
    pub kind: TargetKind,
    pub endpoints: Vec<String>,
    /// Gavel auction ids, or etcd keys.
    pub auctions: Vec<String>,
    /// One bidder token per client (Gavel; empty for etcd).
    bidders: Vec<String>,
    /// Per auction: the highest price any client has seen, in whole units.
    prices: Vec<AtomicU64>,
    /// Raft groups the auctions are spread over (Gavel), for the summary.
    pub groups_covered: Option<usize>,
    /// Per auction, the endpoint (index) all its requests go to (`--via`); else clients are
    /// spread round-robin over the endpoints.
    pub routes: Option<Vec<usize>>,
}

/// The tokens the run uses on Gavel.
pub struct Tokens {
    pub creator: String,
    /// One per client; a single one when the user gave `--token`.
    pub bidders: Vec<String>,
    /// To read `/cluster` (leader placement, group count), when the tool holds the secret.
    pub admin: Option<String>,
}

impl Tokens {
    /// Distinct bidders (`bench-bidder-<n>`), so no per-bidder limit and no self-bid shapes
    /// the result; the creator is a user of its own.
    pub fn signed(secret: &Secret, clients: usize, run: Duration) -> Tokens {
        let now_s = crate::http::auth::now_s();
        let run_s = i64::try_from(run.as_secs()).unwrap_or(i64::MAX / 2);
        let exp_s = now_s.saturating_add(run_s).saturating_add(TOKEN_SLACK_S);
        Tokens {
            creator: secret.sign("bench-creator", &[Role::Creator], now_s, exp_s),
            bidders: (0..clients)
                .map(|n| secret.sign(&format!("bench-bidder-{n}"), &[Role::Bidder], now_s, exp_s))
                .collect(),
            admin: Some(secret.sign("bench-admin", &[Role::Admin], now_s, exp_s)),
        }
    }
}

impl Plan {
    pub async fn gavel(
        http: &reqwest::Client,
        endpoints: Vec<String>,
        tokens: Tokens,
        auctions: u32,
        groups_default: u32,
        run: Duration,
        via: Via,
    ) -> anyhow::Result<Plan> {
        let base = endpoints.first().context("no endpoint")?.clone();
        let mut groups = groups_default;
        if let Some(admin) = &tokens.admin {
            groups = settle_leaders(http, &base, admin).await?.unwrap_or(groups);
        }
        let ids = create_balanced(http, &base, &tokens.creator, auctions, groups, run).await?;
        let covered = ids
            .iter()
            .map(|id| gavel_cluster::group_of(id, groups))
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        let admin = tokens.admin.as_deref();
        let routes = bids_route::gavel_routes(http, &endpoints, admin, &ids, via).await?;
        Ok(Plan {
            kind: TargetKind::Gavel,
            endpoints,
            prices: ids.iter().map(|_| AtomicU64::new(0)).collect(),
            auctions: ids,
            bidders: tokens.bidders,
            groups_covered: Some(covered),
            routes,
        })
    }

    pub async fn etcd(
        http: &reqwest::Client,
        endpoints: Vec<String>,
        auctions: u32,
        via: Via,
    ) -> anyhow::Result<Plan> {
        let routes = bids_route::etcd_routes(http, &endpoints, auctions as usize, via).await?;
        Ok(Plan {
            kind: TargetKind::Etcd,
            endpoints,
            auctions: (0..auctions)
                .map(|n| format!("gavel-bench/auction/{n:06}"))
                .collect(),
            bidders: Vec::new(),
            prices: Vec::new(),
            groups_covered: None,
            routes,
        })
    }

    /// The endpoints requests go to, as `--via` chose them, per auction; `None` when clients
    /// are spread over every endpoint.
    pub fn routed_endpoints(&self) -> Option<BTreeMap<String, String>> {
        let routes = self.routes.as_ref()?;
        let pairs = self.auctions.iter().zip(routes);
        Some(
            pairs
                .map(|(auction, &e)| (auction.clone(), self.endpoints[e].clone()))
                .collect(),
        )
    }

    /// One request of client `client` on auction number `auction`.
    pub async fn request(&self, http: &reqwest::Client, client: usize, auction: usize) -> Outcome {
        let endpoint = match &self.routes {
            Some(routes) => &self.endpoints[routes[auction % routes.len()]],
            None => &self.endpoints[client % self.endpoints.len()],
        };
        let key = &self.auctions[auction % self.auctions.len()];
        let result = match self.kind {
            TargetKind::Gavel => self.bid(http, endpoint, client, auction, key).await,
            TargetKind::Etcd => put(http, endpoint, client, key).await,
        };
        result.unwrap_or_else(|error| Outcome::Error(error_kind(&error)))
    }

    async fn bid(
        &self,
        http: &reqwest::Client,
        endpoint: &str,
        client: usize,
        auction: usize,
        id: &str,
    ) -> Result<Outcome, reqwest::Error> {
        let seen = &self.prices[auction % self.prices.len()];
        let amount = seen.load(Ordering::Relaxed) + INCREMENT_UNITS;
        let response = http
            .post(format!("{endpoint}/auctions/{id}/bids"))
            .bearer_auth(&self.bidders[client % self.bidders.len()])
            .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
            .json(&json!({ "amount": format!("{amount}.00") }))
            .send()
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            // Read the problem body so the connection can be reused.
            let _ = response.bytes().await;
            return Ok(status_outcome(status));
        }
        let decision: Decision = match response.json().await {
            Ok(decision) => decision,
            Err(_) => return Ok(Outcome::Error("bad-body".to_owned())),
        };
        if let Some(units) = decision.whole_units() {
            seen.fetch_max(units, Ordering::Relaxed);
        }
        Ok(match decision.status.as_str() {
            "accepted" => Outcome::Accepted,
            "rejected" => Outcome::Rejected(decision.reason.unwrap_or_default()),
            _ => Outcome::Error("bad-body".to_owned()),
        })
    }
}

/// The fields of a bid decision the tool reads.
#[derive(Deserialize)]
struct Decision {
    status: String,
    reason: Option<String>,
    #[serde(rename = "currentPrice")]
    current_price: Option<String>,
}

impl Decision {
    fn whole_units(&self) -> Option<u64> {
        let price = self.current_price.as_deref()?;
        price.split('.').next()?.parse().ok()
    }
}

fn status_outcome(status: u16) -> Outcome {
    match status {
        503 => Outcome::Shed,
        _ => Outcome::Error(status.to_string()),
    }
}

fn error_kind(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timeout"
    } else if error.is_connect() {
        "connect"
    } else {
        "transport"
    }
    .to_owned()
}

/// One etcd put: the auction's key, a bid-sized value with a fresh id (as a bid has).
async fn put(
    http: &reqwest::Client,
    endpoint: &str,
    client: usize,
    key: &str,
) -> Result<Outcome, reqwest::Error> {
    let mut value = json!({
        "bidder": format!("bench-bidder-{client}"),
        "bidId": uuid::Uuid::new_v4().to_string(),
        "idempotencyKey": uuid::Uuid::new_v4().to_string(),
        "amount": "1000.00",
    })
    .to_string();
    value.extend(std::iter::repeat_n(
        ' ',
        ETCD_VALUE_BYTES.saturating_sub(value.len()),
    ));
    let b64 = base64::engine::general_purpose::STANDARD;
    let response = http
        .post(format!("{endpoint}/v3/kv/put"))
        .json(&json!({ "key": b64.encode(key), "value": b64.encode(value) }))
        .send()
        .await?;
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    Ok(if status == 200 {
        Outcome::Accepted
    } else {
        status_outcome(status)
    })
}

/// On a cluster (per `/cluster`), waits until every group has a leader and no node leads more
/// than its fair share, so the run does not measure start-up leadership moves. Returns the
/// group count. A node that does not answer `/cluster` is measured as it is.
async fn settle_leaders(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
) -> anyhow::Result<Option<u32>> {
    let deadline = Instant::now() + BALANCE_TIMEOUT;
    loop {
        let status: Value = match http
            .get(format!("{base}/cluster?digests=false"))
            .bearer_auth(admin)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => response.json().await?,
            Ok(response) => {
                eprintln!(
                    "note: GET {base}/cluster answered {}; not waiting for leaders to spread",
                    response.status()
                );
                return Ok(None);
            }
            Err(error) => bail!("GET {base}/cluster: {error}"),
        };
        let (groups, balanced) = placement(&status);
        if balanced {
            return Ok(Some(groups));
        }
        if Instant::now() >= deadline {
            eprintln!(
                "note: group leaders did not spread within {BALANCE_TIMEOUT:?}; measuring anyway"
            );
            return Ok(Some(groups));
        }
        tokio::time::sleep(BALANCE_POLL).await;
    }
}

/// The group count, and whether every group has a leader and leaders are spread evenly.
fn placement(status: &Value) -> (u32, bool) {
    let nodes = status["nodes"].as_array().map_or(1, Vec::len).max(1);
    let groups = status["groups"].as_array().map_or(&[][..], Vec::as_slice);
    let mut led = BTreeMap::<u64, usize>::new();
    for leader in groups.iter().filter_map(|g| g["leader"].as_u64()) {
        *led.entry(leader).or_default() += 1;
    }
    let fair_share = groups.len().div_ceil(nodes);
    let all_led = led.values().sum::<usize>() == groups.len();
    let count = u32::try_from(groups.len()).unwrap_or(u32::MAX).max(1);
    (count, all_led && led.values().all(|&n| n <= fair_share))
}

/// Creates `count` auctions, at most `ceil(count / groups)` in any group, so the load spreads
/// over the groups as evenly as the count allows.
async fn create_balanced(
    http: &reqwest::Client,
    base: &str,
    creator: &str,
    count: u32,
    groups: u32,
    run: Duration,
) -> anyhow::Result<Vec<String>> {
    let per_group_max = count.div_ceil(groups.max(1)) as usize;
    let mut per_group = vec![0usize; groups.max(1) as usize];
    let mut ids = Vec::with_capacity(count as usize);
    let attempts_max = count.saturating_mul(CREATE_ATTEMPTS_PER_AUCTION_MAX);
    for _ in 0..attempts_max {
        if ids.len() == count as usize {
            break;
        }
        let id = create_auction(http, base, creator, run).await?;
        let slot = &mut per_group[gavel_cluster::group_of(&id, groups) as usize];
        if *slot < per_group_max {
            *slot += 1;
            ids.push(id);
        }
    }
    if ids.len() < count as usize {
        bail!("could not balance {count} auctions over {groups} groups in {attempts_max} creates");
    }
    Ok(ids)
}

async fn create_auction(
    http: &reqwest::Client,
    base: &str,
    creator: &str,
    run: Duration,
) -> anyhow::Result<String> {
    let now = chrono::Utc::now();
    let open = chrono::Duration::from_std(run + AUCTION_SLACK)?;
    let body = json!({
        "postId": "gavel-bench-bids",
        "startAt": (now - chrono::Duration::seconds(1)).to_rfc3339(),
        "endAt": (now + open).to_rfc3339(),
        "startPrice": format!("{INCREMENT_UNITS}.00"),
        "minIncrement": format!("{INCREMENT_UNITS}.00"),
    });
    let key = uuid::Uuid::new_v4().to_string();
    let started = std::time::Instant::now();
    let text = loop {
        let answer = http
            .post(format!("{base}/auctions"))
            .bearer_auth(creator)
            .header("Idempotency-Key", &key)
            .json(&body)
            .send()
            .await;
        let retryable = match answer {
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                if status == 201 {
                    break text;
                }
                if !matches!(status.as_u16(), 503 | 504) {
                    bail!("creating an auction at {base} answered {status}: {text}");
                }
                anyhow!("creating an auction at {base} answered {status}: {text}")
            }
            Err(error) => anyhow::Error::new(error).context(format!("POST {base}/auctions")),
        };
        if started.elapsed() >= CREATE_RETRY_MAX {
            return Err(retryable.context(format!("still failing after {CREATE_RETRY_MAX:?}")));
        }
        tokio::time::sleep(CREATE_RETRY_PAUSE).await;
    };
    let auction: Value = serde_json::from_str(&text).context("the created auction")?;
    auction["id"]
        .as_str()
        .map(str::to_owned)
        .context("the created auction has no id")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn placement_needs_every_group_led_and_spread() {
        let status = json!({
            "nodes": [{"id": 1}, {"id": 2}],
            "groups": [{"leader": 1}, {"leader": 1}, {"leader": 2}, {"leader": null}],
        });
        assert_eq!(placement(&status), (4, false));
        let status = json!({
            "nodes": [{"id": 1}, {"id": 2}],
            "groups": [{"leader": 1}, {"leader": 1}, {"leader": 2}, {"leader": 2}],
        });
        assert_eq!(placement(&status), (4, true));
        let status = json!({
            "nodes": [{"id": 1}, {"id": 2}],
            "groups": [{"leader": 1}, {"leader": 1}, {"leader": 1}, {"leader": 2}],
        });
        assert_eq!(placement(&status), (4, false));
    }

    /// A stand-in node on loopback that answers its first `POST /auctions` with `first` and
    /// the next with 201, recording each request's `Idempotency-Key` and body.
    async fn flaky_node(first: u16) -> (String, Arc<Mutex<Vec<(String, Value)>>>) {
        use axum::http::{HeaderMap, StatusCode};
        let seen = Arc::new(Mutex::new(Vec::<(String, Value)>::new()));
        let recorded = seen.clone();
        let app = axum::Router::new().route(
            "/auctions",
            axum::routing::post(move |headers: HeaderMap, body: axum::Json<Value>| {
                let seen = recorded.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    let mut seen = seen.lock().unwrap();
                    seen.push((key, body.0));
                    if seen.len() == 1 {
                        (StatusCode::from_u16(first).unwrap(), axum::Json(json!({})))
                    } else {
                        (StatusCode::CREATED, axum::Json(json!({"id": "created"})))
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (base, seen)
    }

    /// Creates an auction on `base` as the bench does.
    async fn create_on(base: &str) -> anyhow::Result<String> {
        create_auction(
            &reqwest::Client::new(),
            base,
            "token",
            Duration::from_secs(1),
        )
        .await
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_retried_with_the_same_key_and_body() {
        let (base, seen) = flaky_node(504).await;
        let id = create_on(&base).await.unwrap();
        assert_eq!(id, "created");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        assert!(!seen[0].0.is_empty(), "the request carries a key");
        assert_eq!(seen[0], seen[1], "the retry is the same request");
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        let (base, seen) = flaky_node(400).await;
        let error = create_on(&base).await.unwrap_err();
        assert!(error.to_string().contains("400"), "{error:#}");
        assert_eq!(seen.lock().unwrap().len(), 1);
    }

    #[test]
    fn prices_are_read_in_whole_units() {
        let decision = |price: &str| Decision {
            status: "accepted".into(),
            reason: None,
            current_price: Some(price.into()),
        };
        assert_eq!(decision("125.00").whole_units(), Some(125));
        assert_eq!(decision("7").whole_units(), Some(7));
        assert_eq!(decision("x").whole_units(), None);
    }
}

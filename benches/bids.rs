//! Bid benchmark: latency percentiles and decisions per second of real `gavel` processes (the
//! release binary), one node or a three-node cluster, driven over HTTP on loopback.
//!
//! Scenarios:
//! - `sequential`: one client, one auction, every bid outbids the last (all accepted);
//! - `hot-auction`: N clients racing on one auction, each bidding the price it last saw plus the
//!   increment (many lose the race: `below_minimum`), the contended case;
//! - `spread`: N clients, each on its own auction, so the auctions spread over the Raft groups.
//!
//! Every request is a real bid with a fresh idempotency key through the whole path: HTTP, auth,
//! Raft append (fsync), apply, response. Run: `cargo bench --bench bids`. Knobs (env):
//! `GAVEL_BENCH_SEQUENTIAL_BIDS` (default 2000), `GAVEL_BENCH_CLIENTS` (32),
//! `GAVEL_BENCH_SECONDS` per concurrent scenario (10), `GAVEL_BENCH_GROUPS` (16),
//! `GAVEL_BENCH_NODES` (1, or 3 for a replicated cluster: clients then spread over the nodes,
//! so two thirds of the bids are forwarded to their group's leader).
//!
//! In the concurrent scenarios an overloaded node's answers are counted, not fatal: `shed` is
//! 503 (never proposed; that client waits the `Retry-After` before its next bid) and `unknown`
//! is 504; neither is in the latency histogram or the decisions.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Value};

const SECRET: &str = "gavel-bench-secret-0123456789abcdef";

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{name} must be a number")),
        Err(_) => Ok(default),
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `nodes` servers; with more than one they form a cluster.
fn start_servers(dir: &Path, groups: u64, nodes: u64) -> Result<Vec<Server>> {
    let peers: Vec<String> = (0..nodes)
        .map(|_| Ok(format!("127.0.0.1:{}", free_port()?)))
        .collect::<Result<_>>()?;
    let initial: Vec<String> = peers
        .iter()
        .enumerate()
        .map(|(i, peer)| format!("{}={peer}", i + 1))
        .collect();
    let mut servers = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        let id = (i + 1).to_string();
        let listen = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::File::create(dir.join(format!("server-{id}.log")))?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_gavel"));
        command
            .args(["serve", "--node-id", &id, "--listen", &listen])
            .args(["--peer-listen", peer, "--groups", &groups.to_string()])
            .arg("--data-dir")
            .arg(dir.join(format!("data-{id}")))
            // Rate limiting is a policy, not a cost: the bench measures how fast bids decide.
            .args(["--bid-rate-per-bidder", "0"]);
        if nodes > 1 {
            command.args(["--initial-cluster", &initial.join(",")]);
        }
        let child = command
            .env("GAVEL_AUTH_SECRET", SECRET)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting gavel")?;
        servers.push(Server {
            child,
            base: format!("http://{listen}"),
        });
    }
    Ok(servers)
}

fn token(sub: &str, role: &str) -> Result<String> {
    let output = Command::new(env!("CARGO_BIN_EXE_gavel"))
        .args(["token", "--sub", sub, "--role", role, "--ttl", "2h"])
        .env("GAVEL_AUTH_SECRET", SECRET)
        .output()?;
    if !output.status.success() {
        bail!(
            "gavel token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

async fn wait_ready(client: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/readyz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("gavel did not become ready within 30 s")
}

/// On a cluster, waits until group leaders are spread over the nodes (placement has settled),
/// so the measurement does not include the start-up leadership moves.
async fn wait_balanced(
    client: &reqwest::Client,
    base: &str,
    nodes: u64,
    groups: u64,
) -> Result<()> {
    let admin = token("bench-admin", "admin")?;
    let fair_share = groups.div_ceil(nodes);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let status: Value = client
            .get(format!("{base}/cluster"))
            .bearer_auth(&admin)
            .send()
            .await?
            .json()
            .await?;
        let mut led = std::collections::BTreeMap::<u64, u64>::new();
        for group in status["groups"].as_array().into_iter().flatten() {
            if let Some(leader) = group["leader"].as_u64() {
                *led.entry(leader).or_default() += 1;
            }
        }
        if led.values().sum::<u64>() == groups && led.values().all(|&n| n <= fair_share) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("group leaders did not spread over the nodes within 60 s")
}

async fn create_auction(client: &reqwest::Client, base: &str, creator: &str) -> Result<String> {
    let now = chrono::Utc::now();
    let body = json!({
        "postId": "bench",
        "startAt": (now - chrono::Duration::seconds(1)).to_rfc3339(),
        "endAt": (now + chrono::Duration::hours(1)).to_rfc3339(),
        "startPrice": "1.00",
        "minIncrement": "1.00",
    });
    let response = client
        .post(format!("{base}/auctions"))
        .bearer_auth(creator)
        .json(&body)
        .send()
        .await?;
    if response.status() != 201 {
        bail!(
            "create answered {}: {}",
            response.status(),
            response.text().await?
        );
    }
    let auction: Value = response.json().await?;
    auction["id"]
        .as_str()
        .map(str::to_owned)
        .context("auction without id")
}

/// One bid; returns whether it was accepted and the price the response reports.
async fn bid(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    amount: &str,
) -> Result<(bool, f64)> {
    match try_bid(client, url, token, amount).await? {
        Answer::Decided { accepted, price } => Ok((accepted, price)),
        Answer::Shed { .. } => bail!("bid answered 503"),
        Answer::Unknown => bail!("bid answered 504"),
    }
}

/// How the node answered a bid.
enum Answer {
    Decided {
        accepted: bool,
        price: f64,
    },
    /// 503: not proposed; the client should come back after `retry_after`.
    Shed {
        retry_after: Duration,
    },
    /// 504: the outcome is unknown.
    Unknown,
}

/// One bid, with 503 and 504 counted rather than fatal (the concurrent scenarios drive the
/// node into overload on purpose).
async fn try_bid(client: &reqwest::Client, url: &str, token: &str, amount: &str) -> Result<Answer> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .json(&json!({ "amount": amount }))
        .send()
        .await?;
    if response.status() == 503 {
        let seconds = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        return Ok(Answer::Shed {
            retry_after: Duration::from_secs(seconds),
        });
    }
    if response.status() == 504 {
        return Ok(Answer::Unknown);
    }
    if response.status() != 200 {
        bail!(
            "bid answered {}: {}",
            response.status(),
            response.text().await?
        );
    }
    let decision: Value = response.json().await?;
    let accepted = decision["status"] == "accepted";
    let price = decision["currentPrice"]
        .as_str()
        .and_then(|p| p.parse().ok())
        .context("no price")?;
    Ok(Answer::Decided { accepted, price })
}

struct Outcome {
    latencies_us: Histogram<u64>,
    accepted: u64,
    /// Answered 503 (never proposed), and 504 (unknown); neither is in the histogram.
    shed: u64,
    unknown: u64,
    elapsed: Duration,
}

impl Outcome {
    fn new() -> Result<Outcome> {
        Ok(Outcome {
            latencies_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            accepted: 0,
            shed: 0,
            unknown: 0,
            elapsed: Duration::ZERO,
        })
    }

    fn print(&self, scenario: &str, clients: u64) {
        let h = &self.latencies_us;
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{scenario:<12} clients={clients:<3} decisions={:<7} decisions/s={:<8.0} accepted={:<7} shed={} unknown={} p50={:.2}ms p99={:.2}ms p999={:.2}ms max={:.2}ms",
            h.len(),
            h.len() as f64 / self.elapsed.as_secs_f64(),
            self.accepted,
            self.shed,
            self.unknown,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
        );
    }
}

async fn sequential(
    client: &reqwest::Client,
    base: &str,
    creator: &str,
    bidders: &[String],
    bids: u64,
) -> Result<Outcome> {
    let auction = create_auction(client, base, creator).await?;
    let url = format!("{base}/auctions/{auction}/bids");
    let mut outcome = Outcome::new()?;
    let started = Instant::now();
    for i in 0..bids {
        let amount = format!("{}.00", i + 1);
        let sent = Instant::now();
        let (accepted, _) = bid(client, &url, &bidders[(i % 2) as usize], &amount).await?;
        outcome
            .latencies_us
            .record(sent.elapsed().as_micros() as u64)?;
        outcome.accepted += u64::from(accepted);
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// `clients` tasks bid for `duration`; `urls[i % urls.len()]` is client i's auction.
async fn concurrent(
    client: &reqwest::Client,
    urls: Vec<String>,
    bidders: &[String],
    duration: Duration,
) -> Result<Outcome> {
    let urls = Arc::new(urls);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, token) in bidders.iter().enumerate() {
        let (client, urls, token) = (client.clone(), urls.clone(), token.clone());
        tasks.spawn(async move {
            let url = &urls[i % urls.len()];
            let mut outcome = Outcome::new()?;
            let mut price = 0.0f64;
            while started.elapsed() < duration {
                let sent = Instant::now();
                let amount = format!("{:.2}", price + 1.0);
                let (accepted, seen) = match try_bid(&client, url, &token, &amount).await? {
                    Answer::Decided { accepted, price } => (accepted, price),
                    // A well-behaved client comes back after Retry-After.
                    Answer::Shed { retry_after } => {
                        outcome.shed += 1;
                        tokio::time::sleep(retry_after).await;
                        continue;
                    }
                    Answer::Unknown => {
                        outcome.unknown += 1;
                        continue;
                    }
                };
                outcome
                    .latencies_us
                    .record(sent.elapsed().as_micros() as u64)?;
                outcome.accepted += u64::from(accepted);
                price = seen;
            }
            anyhow::Ok(outcome)
        });
    }
    let mut total = Outcome::new()?;
    while let Some(done) = tasks.join_next().await {
        let outcome = done??;
        total.latencies_us.add(&outcome.latencies_us)?;
        total.accepted += outcome.accepted;
        total.shed += outcome.shed;
        total.unknown += outcome.unknown;
    }
    total.elapsed = started.elapsed();
    Ok(total)
}

#[tokio::main]
async fn main() -> Result<()> {
    let sequential_bids = env_or("GAVEL_BENCH_SEQUENTIAL_BIDS", 2000)?;
    let clients = env_or("GAVEL_BENCH_CLIENTS", 32)?;
    let duration = Duration::from_secs(env_or("GAVEL_BENCH_SECONDS", 10)?);
    let groups = env_or("GAVEL_BENCH_GROUPS", 16)?;

    let nodes = env_or("GAVEL_BENCH_NODES", 1)?.clamp(1, 9);

    let dir = tempfile::tempdir()?;
    let servers = start_servers(dir.path(), groups, nodes)?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients as usize * 2)
        .build()?;
    for server in &servers {
        wait_ready(&client, &server.base).await?;
    }
    if nodes > 1 {
        wait_balanced(&client, &servers[0].base, nodes, groups).await?;
    }
    let base_of = |i: usize| servers[i % servers.len()].base.clone();
    let creator = token("bench-creator", "creator")?;
    let bidders = (0..clients.max(2))
        .map(|i| token(&format!("bidder-{i}"), "bidder"))
        .collect::<Result<Vec<_>>>()?;
    println!("gavel bid benchmark: {nodes} node(s), {groups} groups, release build, loopback HTTP");

    sequential(&client, &base_of(0), &creator, &bidders, sequential_bids)
        .await?
        .print("sequential", 1);

    // Client i talks to node i mod n: on a cluster most bids are forwarded to a leader.
    let hot = create_auction(&client, &base_of(0), &creator).await?;
    let bidders = &bidders[..clients as usize];
    let hot_urls = (0..clients as usize)
        .map(|i| format!("{}/auctions/{hot}/bids", base_of(i)))
        .collect();
    concurrent(&client, hot_urls, bidders, duration)
        .await?
        .print("hot-auction", clients);

    let mut spread_urls = Vec::new();
    for i in 0..clients as usize {
        let id = create_auction(&client, &base_of(i), &creator).await?;
        spread_urls.push(format!("{}/auctions/{id}/bids", base_of(i)));
    }
    concurrent(&client, spread_urls, bidders, duration)
        .await?
        .print("spread", clients);
    Ok(())
}

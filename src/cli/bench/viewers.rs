//! `gavel bench viewers`: the fan-out load tool. It holds N WebSocket viewers on one auction,
//! places bids over HTTP and reports the connect rate and the bid-to-last-viewer latency
//! (p50/p99/max over the bids): from just before a bid request is sent to the moment the last
//! of the N viewers received a frame showing that bid's version (or a newer one).
//!
//! The viewers live in worker processes (`gavel bench viewers-worker`, this same binary),
//! because one process may hold only so many open files. Workers report on stdout, one line per
//! fact: `connected <ok> <failed>` once every connection attempt finished, then `result <json>`
//! with, per version, the latest time one of their viewers first saw it and how many did. All
//! processes run on this machine, so their wall clocks agree.
//!
//! Without `--endpoint` it starts its own single node (this binary, a temporary data dir, a
//! random secret) sized for the run. Every wait is bounded; the tool talks to loopback or to
//! the endpoint it is given, nothing else.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::own_node::OwnNode;
use crate::http::auth::{load_secret, Role, Secret};

/// The environment variable workers get the viewer token from (not argv: `ps` shows argv).
const WORKER_TOKEN_ENV: &str = "GAVEL_BENCH_VIEWER_TOKEN";
/// How long connecting every viewer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long workers may take to report after the auction ended.
const RESULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Viewer slots the started node has beyond the viewers asked for.
const VIEWERS_SLACK: u32 = 100;
/// A client WebSocket's read buffer: frames are a few hundred bytes.
const CLIENT_READ_BUFFER_BYTES: usize = 4 * 1024;

#[derive(Args, Debug, Clone)]
pub struct ViewersArgs {
    /// A node to measure (e.g. http://127.0.0.1:8080). Default: start a single node for the run.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// WebSocket viewers to hold on the auction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    pub viewers: u32,
    /// Viewers per client process (each process may open only so many files).
    #[arg(long, default_value_t = 2500, value_parser = clap::value_parser!(u32).range(1..=15_000))]
    pub viewers_per_process: u32,
    /// Bids to place once every viewer is connected (each outbids the last).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub bids: u32,
    /// Pause between bids, in milliseconds.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=60_000))]
    pub bid_interval_ms: u64,
    /// Connection attempts in flight per client process.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub connect_concurrency: u32,
    /// Raft groups of the node this tool starts.
    #[arg(long, default_value_t = 4)]
    pub groups: u32,
    /// With --endpoint: the data dir whose auth secret signs the tokens (or GAVEL_AUTH_SECRET).
    #[arg(long, default_value = "./gavel-data")]
    pub data_dir: PathBuf,
    /// With --endpoint: a file holding the auth secret.
    #[arg(long)]
    pub auth_secret_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an https:// endpoint (a private CA).
    #[arg(long, env = "GAVEL_CACERT")]
    pub cacert: Option<PathBuf>,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The stream URL, without the token.
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub viewers: u32,
    #[arg(long)]
    pub connect_concurrency: u32,
    /// Versions to keep track of (1..=this).
    #[arg(long)]
    pub versions_max: u64,
    /// Give up after this many seconds.
    #[arg(long)]
    pub timeout_s: u64,
    /// CA certificates (PEM) to trust for a wss:// URL.
    #[arg(long)]
    pub cacert: Option<PathBuf>,
}

/// `gavel bench viewers`: the coordinator.
pub fn run(args: ViewersArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(coordinate(args))
}

/// `gavel bench viewers-worker`: one process's share of the viewers.
pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(worker(args))
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

// ---------------------------------------------------------------------------------------------
// The coordinator

/// The node under test and the tokens for it.
struct Target {
    base: String,
    creator: String,
    bidder: String,
    viewer: String,
    /// The node this tool started, if it started one.
    own: Option<OwnNode>,
}

impl Target {
    /// The resident memory of the node this tool started, in KiB.
    fn rss_kib(&self) -> Option<u64> {
        let pid = self.own.as_ref()?.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }
}

fn tokens(secret: &Secret) -> (String, String, String) {
    let now_s = crate::http::auth::now_s();
    let exp = now_s + 4 * 3600;
    (
        secret.sign("bench-creator", &[Role::Creator], now_s, exp),
        secret.sign("bench-bidder", &[Role::Bidder], now_s, exp),
        secret.sign("bench-viewer", &[Role::Viewer], now_s, exp),
    )
}

async fn target(args: &ViewersArgs, http: &reqwest::Client) -> anyhow::Result<Target> {
    if let Some(endpoint) = &args.endpoint {
        let (secret, _) = load_secret(args.auth_secret_file.as_deref(), &args.data_dir, false)?;
        let (creator, bidder, viewer) = tokens(&secret);
        return Ok(Target {
            base: endpoint.trim_end_matches('/').to_owned(),
            creator,
            bidder,
            viewer,
            own: None,
        });
    }
    let extra = [
        "--groups".to_owned(),
        args.groups.to_string(),
        "--viewers-max".to_owned(),
        (args.viewers + VIEWERS_SLACK).to_string(),
        "--bid-rate-per-bidder".to_owned(),
        "0".to_owned(),
    ];
    let node = OwnNode::start("bench-viewers", &extra, http).await?;
    let (creator, bidder, viewer) = tokens(&node.secret);
    Ok(Target {
        base: node.base.clone(),
        creator,
        bidder,
        viewer,
        own: Some(node),
    })
}

async fn post(
    http: &reqwest::Client,
    url: String,
    token: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let mut request = http
        .post(&url)
        .bearer_auth(token)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("POST {url} answered {status}: {body}");
    }
    Ok(body)
}

/// One worker process and its report lines.
struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    viewers: u32,
}

fn spawn_workers(
    args: &ViewersArgs,
    url: &str,
    token: &str,
    versions_max: u64,
) -> anyhow::Result<Vec<Worker>> {
    let mut workers = Vec::new();
    let mut left = args.viewers;
    while left > 0 {
        let viewers = left.min(args.viewers_per_process);
        left -= viewers;
        let mut command = Command::new(std::env::current_exe()?);
        command.args(["bench", "viewers-worker", "--url", url]);
        if let Some(cacert) = &args.cacert {
            command.arg("--cacert").arg(cacert);
        }
        let mut child = command
            .args(["--viewers", &viewers.to_string()])
            .args([
                "--connect-concurrency",
                &args.connect_concurrency.to_string(),
            ])
            .args(["--versions-max", &versions_max.to_string()])
            .args([
                "--timeout-s",
                &(CONNECT_TIMEOUT + RESULT_TIMEOUT).as_secs().to_string(),
            ])
            .env(WORKER_TOKEN_ENV, token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a worker process")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        workers.push(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
            viewers,
        });
    }
    Ok(workers)
}

/// The next line of a worker that starts with `tag`, within `timeout`.
async fn expect_line(worker: &mut Worker, tag: &str, timeout: Duration) -> anyhow::Result<String> {
    let line = tokio::time::timeout(timeout, worker.lines.next_line())
        .await
        .with_context(|| format!("a worker did not report `{tag}` within {timeout:?}"))??
        .with_context(|| format!("a worker exited before reporting `{tag}`"))?;
    line.strip_prefix(tag)
        .map(|rest| rest.trim().to_owned())
        .with_context(|| format!("a worker reported {line:?}, expected `{tag} ...`"))
}

async fn coordinate(args: ViewersArgs) -> anyhow::Result<()> {
    let http = crate::cli::tls::http_client(args.cacert.as_deref())?
        .timeout(Duration::from_secs(30))
        .build()?;
    let target = target(&args, &http).await?;
    let auction = create_auction(&http, &target).await?;
    let id = auction["id"].as_str().context("auction id")?.to_owned();
    let first_version = auction["version"].as_u64().context("auction version")?;
    let versions_max = first_version + u64::from(args.bids) + 2;
    let ws_base = target.base.replacen("http", "ws", 1);
    let url = format!("{ws_base}/auctions/{id}/ws");
    let rss_before_kib = target.rss_kib();
    let started = Instant::now();
    let mut workers = spawn_workers(&args, &url, &target.viewer, versions_max)?;
    let (connected, failed) = await_connected(&mut workers).await?;
    let connect_elapsed = started.elapsed();
    let rss_per_viewer_kib = rss_before_kib
        .zip(target.rss_kib())
        .map(|(before, after)| after.saturating_sub(before) as f64 / connected.max(1) as f64);
    let bids = place_bids(&http, &target, &id, &args, first_version).await?;
    post(
        &http,
        format!("{}/auctions/{id}/end", target.base),
        &target.creator,
        None,
    )
    .await?;
    let seen = collect(&mut workers, versions_max).await?;
    let metrics = http
        .get(format!("{}/metrics", target.base))
        .send()
        .await?
        .text()
        .await?;
    report(&args, connected, failed, connect_elapsed, &bids, &seen)?;
    print_node_view(&metrics, rss_per_viewer_kib);
    Ok(())
}

/// What the node itself says: its apply-to-send histogram (per viewer frame; bucket bounds
/// only) and, for a node this tool started, its memory per viewer.
fn print_node_view(metrics: &str, rss_per_viewer_kib: Option<f64>) {
    let prefix = "gavel_viewer_apply_to_send_seconds_bucket{transport=\"ws\",le=\"";
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix(prefix))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((le.to_owned(), count.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map_or(0.0, |(_, count)| *count);
    let bound = |q: f64| {
        buckets
            .iter()
            .find(|(_, count)| *count >= q * total)
            .map_or("?".to_owned(), |(le, _)| le.clone())
    };
    if total > 0.0 {
        println!(
            "node apply-to-send:  p50 <= {} s, p99 <= {} s (histogram bucket bounds, {total} frames)",
            bound(0.5),
            bound(0.99)
        );
    }
    if let Some(kib) = rss_per_viewer_kib {
        println!("node memory:        {kib:.1} KiB resident per connected viewer");
    }
}

async fn create_auction(http: &reqwest::Client, target: &Target) -> anyhow::Result<Value> {
    let now = chrono::Utc::now();
    let body = json!({
        "postId": "bench-viewers",
        "startAt": (now - chrono::Duration::seconds(1)).to_rfc3339(),
        "endAt": (now + chrono::Duration::hours(2)).to_rfc3339(),
        "startPrice": "1.00",
        "minIncrement": "1.00",
    });
    post(
        http,
        format!("{}/auctions", target.base),
        &target.creator,
        Some(body),
    )
    .await
}

async fn await_connected(workers: &mut [Worker]) -> anyhow::Result<(u64, u64)> {
    let (mut connected, mut failed) = (0u64, 0u64);
    for worker in workers.iter_mut() {
        let counts = expect_line(worker, "connected", CONNECT_TIMEOUT).await?;
        let mut parts = counts.split_whitespace().map(str::parse::<u64>);
        match (parts.next(), parts.next()) {
            (Some(Ok(ok)), Some(Ok(bad))) => {
                connected += ok;
                failed += bad;
            }
            _ => bail!("a worker reported `connected {counts}`"),
        }
    }
    Ok((connected, failed))
}

/// A placed bid: the version it made and when its request was sent.
struct PlacedBid {
    version: u64,
    sent_us: u64,
    request_us: u64,
}

async fn place_bids(
    http: &reqwest::Client,
    target: &Target,
    id: &str,
    args: &ViewersArgs,
    first_version: u64,
) -> anyhow::Result<Vec<PlacedBid>> {
    let url = format!("{}/auctions/{id}/bids", target.base);
    let mut placed = Vec::new();
    for n in 1..=u64::from(args.bids) {
        tokio::time::sleep(Duration::from_millis(args.bid_interval_ms)).await;
        let sent_us = now_us();
        let started = Instant::now();
        let body = json!({ "amount": format!("{n}.00") });
        let reply = post(http, url.clone(), &target.bidder, Some(body)).await?;
        let request_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        if reply["status"] != "accepted" || reply["version"] != first_version + n {
            bail!(
                "bid {n} was not accepted as version {}: {reply}",
                first_version + n
            );
        }
        placed.push(PlacedBid {
            version: first_version + n,
            sent_us,
            request_us,
        });
    }
    Ok(placed)
}

/// Per version: the latest first-sight time among all viewers, and how many saw it.
type Seen = Vec<(u64, u64)>;

async fn collect(workers: &mut [Worker], versions_max: u64) -> anyhow::Result<Seen> {
    let mut seen = vec![(0u64, 0u64); usize::try_from(versions_max + 1)?];
    for worker in workers.iter_mut() {
        let text = expect_line(worker, "result", RESULT_TIMEOUT).await?;
        let report: WorkerReport = serde_json::from_str(&text).context("a worker's result")?;
        for (version, (last_us, count)) in report.seen.into_iter().enumerate() {
            if let Some(slot) = seen.get_mut(version) {
                slot.0 = slot.0.max(last_us);
                slot.1 += count;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await;
        eprintln!(
            "worker of {} viewers: {} saw ended, {} closed early",
            worker.viewers, report.ended, report.lost
        );
    }
    Ok(seen)
}

fn report(
    args: &ViewersArgs,
    connected: u64,
    failed: u64,
    connect_elapsed: Duration,
    bids: &[PlacedBid],
    seen: &Seen,
) -> anyhow::Result<()> {
    let mut to_last = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut request = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut everyone_saw_all = true;
    for bid in bids {
        let (last_us, count) = seen.get(bid.version as usize).copied().unwrap_or((0, 0));
        everyone_saw_all &= count == connected;
        to_last.record(last_us.saturating_sub(bid.sent_us).max(1))?;
        request.record(bid.request_us.max(1))?;
    }
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let processes = args.viewers.div_ceil(args.viewers_per_process);
    let endpoint = args
        .endpoint
        .as_deref()
        .unwrap_or("a node started for the run");
    println!("gavel bench viewers: {} WebSocket viewers of one auction, {processes} client processes, node: {endpoint}", args.viewers);
    println!(
        "connect:            {connected} connected, {failed} failed in {:.2} s ({:.0} viewers/s)",
        connect_elapsed.as_secs_f64(),
        connected as f64 / connect_elapsed.as_secs_f64()
    );
    println!(
        "bids:               {} accepted, one every {} ms; bid request p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        bids.len(), args.bid_interval_ms, ms(&request, 0.5), ms(&request, 0.99), request.max() as f64 / 1000.0
    );
    println!(
        "bid-to-last-viewer: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (every viewer saw every bid: {})",
        ms(&to_last, 0.5), ms(&to_last, 0.99), to_last.max() as f64 / 1000.0,
        if everyone_saw_all { "yes" } else { "NO" }
    );
    if !everyone_saw_all || failed > 0 {
        bail!("some viewers failed to connect or missed bids");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A worker

#[derive(Serialize, Deserialize)]
struct WorkerReport {
    /// Index: version. Value: (latest first-sight time in µs, viewers that saw it).
    seen: Vec<(u64, u64)>,
    /// Viewers that received `ended`.
    ended: u64,
    /// Viewers whose connection closed or failed before `ended`.
    lost: u64,
}

#[derive(Deserialize)]
struct FrameLite {
    #[serde(rename = "type")]
    kind: String,
    version: u64,
}

struct Shared {
    seen: Mutex<Vec<(u64, u64)>>,
    ended: Mutex<(u64, u64)>,
}

impl Shared {
    /// One viewer first saw versions `from..=to` at `at_us`.
    fn saw(&self, from: u64, to: u64, at_us: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        for version in from..=to {
            if let Some(slot) = seen.get_mut(version as usize) {
                slot.0 = slot.0.max(at_us);
                slot.1 += 1;
            }
        }
    }
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let token = std::env::var(WORKER_TOKEN_ENV).context("the worker needs its token")?;
    let url = format!("{}?access_token={token}", args.url);
    let shared = Arc::new(Shared {
        seen: Mutex::new(vec![(0, 0); usize::try_from(args.versions_max + 1)?]),
        ended: Mutex::new((0, 0)),
    });
    let gate = Arc::new(Semaphore::new(args.connect_concurrency as usize));
    let tls = crate::cli::tls::ws_tls(args.cacert.as_deref())?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<bool>(args.viewers as usize);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.viewers {
        let (url, shared, gate, ready) =
            (url.clone(), shared.clone(), gate.clone(), ready_tx.clone());
        let connector = tls.clone().map(tokio_tungstenite::Connector::Rustls);
        tasks.spawn(async move { view(url, connector, shared, gate, ready).await });
    }
    drop(ready_tx);
    // Each viewer reports once (and keeps its sender while it watches).
    let (mut ok, mut failed) = (0u64, 0u64);
    while ok + failed < u64::from(args.viewers) {
        match ready_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) | None => failed += 1,
        }
    }
    println!("connected {ok} {failed}");
    let deadline = Duration::from_secs(args.timeout_s);
    let _ = tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let seen = shared
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let (ended, lost) = *shared.ended.lock().unwrap_or_else(|e| e.into_inner());
    println!(
        "result {}",
        serde_json::to_string(&WorkerReport { seen, ended, lost })?
    );
    Ok(())
}

/// One viewer: connect (through the gate), report, then record every version it sees.
async fn view(
    url: String,
    connector: Option<tokio_tungstenite::Connector>,
    shared: Arc<Shared>,
    gate: Arc<Semaphore>,
    ready: tokio::sync::mpsc::Sender<bool>,
) {
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER_BYTES)
        .write_buffer_size(0);
    let connected = {
        let _permit = gate.acquire().await;
        tokio_tungstenite::connect_async_tls_with_config(
            url.as_str(),
            Some(config),
            true,
            connector,
        )
        .await
    };
    let Ok((mut socket, _)) = connected else {
        let _ = ready.send(false).await;
        return;
    };
    let mut shown = 0u64;
    let mut reported = false;
    let mut ended = false;
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(frame) = serde_json::from_str::<FrameLite>(text.as_str()) else {
            continue;
        };
        if !reported {
            // The first frame is the snapshot: this viewer is connected.
            reported = true;
            shown = frame.version;
            let _ = ready.send(true).await;
            continue;
        }
        if frame.kind != "tick" && frame.version > shown {
            shared.saw(shown + 1, frame.version, now_us());
            shown = frame.version;
        }
        ended |= frame.kind == "ended";
    }
    if !reported {
        let _ = ready.send(false).await;
    }
    let mut counts = shared.ended.lock().unwrap_or_else(|e| e.into_inner());
    if ended {
        counts.0 += 1
    } else {
        counts.1 += 1
    }
}

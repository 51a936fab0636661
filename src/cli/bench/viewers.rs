//! `gavel bench viewers`: the fan-out load tool. It holds N WebSocket viewers on one auction,
//! spread evenly over the nodes it is given (voters and learners alike), places bids over HTTP
//! and reports, per node and in total: the connect rate, bid-to-last-viewer latency (from just
//! before a bid request is sent to the moment the last viewer received a frame showing that
//! bid's version or a newer one), frames, resident memory per viewer (each node's
//! `gavel_process_resident_memory_bytes` before and after the viewers connected), the bid
//! acknowledgement latency while the fan-out runs, and whether every viewer saw the final
//! `ended` frame with the right winner.
//!
//! With `--kill-pid` it kills a node (SIGKILL) halfway through the bids: that node's viewers
//! reconnect to the other nodes (`viewers_worker.rs`) and the report says how long each took
//! and whether any resumed snapshot went back.
//!
//! The viewers live in worker processes (`gavel bench viewers-worker`, this same binary),
//! because one process may hold only so many open files. All processes run on this machine, so
//! their wall clocks agree. Without `--endpoints` it starts its own single node (this binary,
//! a temporary data dir, a random secret) sized for the run. Every wait is bounded; the tool
//! talks to loopback or to the endpoints it is given, nothing else.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::own_node::OwnNode;
use super::server_cpu::{self, ThreadTimes};
use super::viewers_worker::{WorkerReport, WORKER_TOKEN_ENV};
use crate::cli::FANOUT_THREAD_NAME;
use crate::http::auth::{load_secret, Role, Secret};

/// How long connecting every viewer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long workers may take to report after the auction ended.
const RESULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Viewer slots the started node has beyond the viewers asked for.
const VIEWERS_SLACK: u32 = 100;
/// The bidder every bid comes from: the winner every `ended` frame must name.
const BIDDER: &str = "bench-bidder";
/// How long one bid is retried after 503/504 (an election after a node died), in milliseconds.
const BID_RETRY_MS_MAX: u64 = 15_000;
const BID_RETRY_PAUSE_MS: u64 = 100;
/// The metric a node reports its resident memory in.
const RSS_METRIC: &str = "gavel_process_resident_memory_bytes";
/// The metric a node counts frames handed to viewers in (one series per transport).
const FRAMES_METRIC: &str = "gavel_viewer_frames_sent_total";
/// Bids listed by `slowest bids`.
const SLOWEST_BIDS_SHOWN: usize = 5;

#[derive(Args, Debug, Clone)]
pub struct ViewersArgs {
    /// The nodes to spread viewers over, comma-separated (e.g.
    /// http://127.0.0.1:8081,http://127.0.0.1:8082). Bids go to the first unless
    /// --bid-endpoint says otherwise. Default: start a single node for the run.
    #[arg(long, alias = "endpoint", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// Where the auction is created, bid on and ended (a voter, typically, while the viewers
    /// are on learners). Default: the first of --endpoints.
    #[arg(long)]
    pub bid_endpoint: Option<String>,
    /// WebSocket viewers to hold on the auction.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=250_000))]
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
    /// The `tickMs` viewers ask for (the live page asks for 5000).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1000..=60_000))]
    pub tick_ms: u64,
    /// Kill this process (SIGKILL) after half of the bids: one of the nodes, not the first.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Raft groups of the node this tool starts.
    #[arg(long, default_value_t = 4)]
    pub groups: u32,
    /// With --endpoints: the data dir whose auth secret signs the tokens (or GAVEL_AUTH_SECRET).
    #[arg(long, default_value = "./gavel-data")]
    pub data_dir: PathBuf,
    /// With --endpoints: a file holding the auth secret.
    #[arg(long)]
    pub auth_secret_file: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for an https:// endpoint (a private CA).
    #[arg(long, env = "GAVEL_CACERT")]
    pub cacert: Option<PathBuf>,
    /// The process ids of the --endpoints' nodes, in the same order, when they run on this
    /// machine: the report then says what each node's CPU did during the bids (Linux,
    /// `/proc`). Default: the node this tool starts, if it starts one.
    #[arg(long, value_delimiter = ',')]
    pub server_pids: Vec<u32>,
    /// The niceness of the client processes (0-19, Linux). They stand in for the viewers' own
    /// machines: next to nodes run with `--fanout-nice N`, give them the same N, since clients
    /// at a higher priority than the fan-out take its CPU. Bids are sent at this tool's own
    /// priority either way.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub client_nice: u8,
}

/// `gavel bench viewers`: the coordinator.
pub fn run(args: ViewersArgs) -> anyhow::Result<()> {
    if !args.server_pids.is_empty() {
        if args.endpoints.is_empty() {
            bail!("--server-pids needs --endpoints (without them, this tool watches the node it starts)");
        }
        if args.server_pids.len() != args.endpoints.len() {
            bail!(
                "--server-pids takes one process id per --endpoints entry, in the same order ({} for {})",
                args.server_pids.len(),
                args.endpoints.len()
            );
        }
        server_cpu::cpu_seconds(&args.server_pids)?;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(coordinate(args))
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The nodes under test and the tokens for them.
struct Target {
    /// Where viewers connect.
    bases: Vec<String>,
    /// Where the auction is created, bid on and ended.
    bid_base: String,
    creator: String,
    bidder: String,
    viewer: String,
    /// The node this tool started, if it started one.
    own: Option<OwnNode>,
}

impl Target {
    /// The process of each of `bases`, where known: --server-pids, or the node this tool
    /// started.
    fn pids(&self, args: &ViewersArgs) -> Vec<Option<u32>> {
        match &self.own {
            Some(own) => vec![own.pid()],
            None if args.server_pids.is_empty() => vec![None; self.bases.len()],
            None => args.server_pids.iter().copied().map(Some).collect(),
        }
    }
}

fn tokens(secret: &Secret) -> (String, String, String) {
    let now_s = crate::http::auth::now_s();
    let exp = now_s + 4 * 3600;
    (
        secret.sign("bench-creator", &[Role::Creator], now_s, exp),
        secret.sign(BIDDER, &[Role::Bidder], now_s, exp),
        secret.sign("bench-viewer", &[Role::Viewer], now_s, exp),
    )
}

async fn target(args: &ViewersArgs, http: &reqwest::Client) -> anyhow::Result<Target> {
    if !args.endpoints.is_empty() {
        let (secret, _) = load_secret(args.auth_secret_file.as_deref(), &args.data_dir, false)?;
        let (creator, bidder, viewer) = tokens(&secret);
        let bases: Vec<String> = args
            .endpoints
            .iter()
            .map(|e| e.trim_end_matches('/').to_owned())
            .collect();
        let bid_base = args
            .bid_endpoint
            .as_deref()
            .map_or_else(|| bases[0].clone(), |e| e.trim_end_matches('/').to_owned());
        return Ok(Target {
            bases,
            bid_base,
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
        bases: vec![node.base.clone()],
        bid_base: node.base.clone(),
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
    let key = uuid::Uuid::new_v4().to_string();
    post_with_key(http, &url, token, body.as_ref(), &key)
        .await
        .map_err(|failure| anyhow::anyhow!("POST {url} answered {failure}"))
}

/// Why a POST did not succeed: its status and body, or a transport error.
enum Failure {
    Status(reqwest::StatusCode, Value),
    Transport(reqwest::Error),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status, body) => write!(f, "{status}: {body}"),
            Failure::Transport(e) => write!(f, "no answer ({e})"),
        }
    }
}

impl Failure {
    /// 503 (nothing done), 504 and no answer (outcome unknown): retried with the same key.
    fn is_retryable(&self) -> bool {
        match self {
            Failure::Status(status, _) => matches!(status.as_u16(), 503 | 504),
            Failure::Transport(_) => true,
        }
    }
}

async fn post_with_key(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Option<&Value>,
    key: &str,
) -> Result<Value, Failure> {
    let mut request = http
        .post(url)
        .bearer_auth(token)
        .header("Idempotency-Key", key);
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.map_err(Failure::Transport)?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(Failure::Status(status, body));
    }
    Ok(body)
}

/// Places one bid, retrying an unavailable or unknown outcome with the same key (a node may
/// have just died and its groups be electing) for up to `BID_RETRY_MS_MAX`.
async fn bid_until_decided(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let key = uuid::Uuid::new_v4().to_string();
    let deadline = Instant::now() + Duration::from_millis(BID_RETRY_MS_MAX);
    loop {
        match post_with_key(http, url, token, Some(body), &key).await {
            Ok(reply) => return Ok(reply),
            Err(failure) if failure.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(BID_RETRY_PAUSE_MS)).await;
            }
            Err(failure) => bail!("POST {url} answered {failure}"),
        }
    }
}

/// One worker process, the node it is homed on, and its report lines.
struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    home: usize,
    viewers: u32,
}

/// Starts the workers: each node gets an equal share of the viewers, split into processes.
fn spawn_workers(
    args: &ViewersArgs,
    stream_urls: &[String],
    token: &str,
    versions_max: u64,
) -> anyhow::Result<Vec<Worker>> {
    let nodes = stream_urls.len() as u32;
    let mut workers = Vec::new();
    for home in 0..stream_urls.len() {
        let mut left = args.viewers / nodes + u32::from((home as u32) < args.viewers % nodes);
        // Home first, then the others in order: where this node's viewers reconnect.
        let urls: Vec<&str> = (0..stream_urls.len())
            .map(|i| stream_urls[(home + i) % stream_urls.len()].as_str())
            .collect();
        while left > 0 {
            let viewers = left.min(args.viewers_per_process);
            left -= viewers;
            workers.push(spawn_worker(
                args,
                &urls,
                viewers,
                token,
                versions_max,
                home,
            )?);
        }
    }
    Ok(workers)
}

fn spawn_worker(
    args: &ViewersArgs,
    urls: &[&str],
    viewers: u32,
    token: &str,
    versions_max: u64,
    home: usize,
) -> anyhow::Result<Worker> {
    let timeout_s = (CONNECT_TIMEOUT + RESULT_TIMEOUT).as_secs()
        + u64::from(args.bids) * args.bid_interval_ms / 1000;
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["bench", "viewers-worker", "--urls", &urls.join(",")]);
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
        .args(["--tick-ms", &args.tick_ms.to_string()])
        .args(["--winner", BIDDER])
        .args(["--timeout-s", &timeout_s.to_string()])
        .args(["--nice", &args.client_nice.to_string()])
        .env(WORKER_TOKEN_ENV, token)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a worker process")?;
    let stdout = child.stdout.take().context("worker stdout")?;
    Ok(Worker {
        child,
        lines: BufReader::new(stdout).lines(),
        home,
        viewers,
    })
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

/// What one node said about itself, from its `/metrics`.
#[derive(Clone, Copy, Default)]
struct NodeReading {
    rss_bytes: Option<f64>,
    frames: f64,
}

async fn read_node(http: &reqwest::Client, base: &str) -> Option<NodeReading> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let value = |line: &str| line.rsplit(' ').next()?.parse::<f64>().ok();
    let rss_bytes = text
        .lines()
        .find(|l| l.starts_with(RSS_METRIC))
        .and_then(value);
    let frames = text
        .lines()
        .filter(|l| l.starts_with(FRAMES_METRIC))
        .filter_map(value)
        .sum();
    Some(NodeReading { rss_bytes, frames })
}

async fn read_nodes(http: &reqwest::Client, bases: &[String]) -> Vec<Option<NodeReading>> {
    let mut readings = Vec::new();
    for base in bases {
        readings.push(read_node(http, base).await);
    }
    readings
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
    let stream_urls: Vec<String> = target
        .bases
        .iter()
        .map(|base| format!("{}/auctions/{id}/ws", base.replacen("http", "ws", 1)))
        .collect();
    let before = read_nodes(&http, &target.bases).await;
    let started = Instant::now();
    let mut workers = spawn_workers(&args, &stream_urls, &target.viewer, versions_max)?;
    let (connected, failed) = await_connected(&mut workers).await?;
    let connect_elapsed = started.elapsed();
    let after_connect = read_nodes(&http, &target.bases).await;
    let pids = target.pids(&args);
    let bids_start = Sample::take(&http, &target.bases, &pids).await;
    let bids = place_bids(&http, &target, &id, &args, first_version).await?;
    let bids_end = Sample::take(&http, &target.bases, &pids).await;
    post(
        &http,
        format!("{}/auctions/{id}/end", target.bid_base),
        &target.creator,
        None,
    )
    .await?;
    let reports = collect(&mut workers).await?;
    let at_end = read_nodes(&http, &target.bases).await;
    let run = Run {
        args: &args,
        target: &target,
        connected,
        failed,
        connect_elapsed,
        bids: &bids,
        reports: &reports,
        readings: [&before, &after_connect, &at_end],
        during_bids: [&bids_start, &bids_end],
    };
    run.report()
}

/// What the nodes had done at one moment: their metrics and, for the ones running here, their
/// CPU so far and their fan-out threads' scheduling.
struct Sample {
    at: Instant,
    readings: Vec<Option<NodeReading>>,
    /// Per node: CPU seconds of the whole process, and its fan-out threads' times; `None` for
    /// a node not watched or gone (killed).
    cpu: Vec<Option<(f64, ThreadTimes)>>,
}

impl Sample {
    async fn take(http: &reqwest::Client, bases: &[String], pids: &[Option<u32>]) -> Sample {
        let readings = read_nodes(http, bases).await;
        let cpu = pids
            .iter()
            .map(|pid| {
                let pid = (*pid)?;
                let process = server_cpu::cpu_seconds(&[pid]).ok()?;
                let fanout = server_cpu::thread_times(pid, FANOUT_THREAD_NAME).ok()?;
                Some((process, fanout))
            })
            .collect();
        Sample {
            at: Instant::now(),
            readings,
            cpu,
        }
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
        format!("{}/auctions", target.bid_base),
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
    let url = format!("{}/auctions/{id}/bids", target.bid_base);
    let mut placed = Vec::new();
    for n in 1..=u64::from(args.bids) {
        if n == u64::from(args.bids / 2).max(1) {
            if let Some(pid) = args.kill_pid {
                kill(pid)?;
            }
        }
        tokio::time::sleep(Duration::from_millis(args.bid_interval_ms)).await;
        let sent_us = now_us();
        let started = Instant::now();
        let body = json!({ "amount": format!("{n}.00") });
        let reply = bid_until_decided(http, &url, &target.bidder, &body).await?;
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

fn kill(pid: u32) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    if !status.success() {
        bail!("kill -KILL {pid} failed");
    }
    eprintln!("killed node process {pid}");
    Ok(())
}

async fn collect(workers: &mut [Worker]) -> anyhow::Result<Vec<(usize, u32, WorkerReport)>> {
    let mut reports = Vec::new();
    for worker in workers.iter_mut() {
        let text = expect_line(worker, "result", RESULT_TIMEOUT).await?;
        let report: WorkerReport = serde_json::from_str(&text).context("a worker's result")?;
        let _ = tokio::time::timeout(Duration::from_secs(5), worker.child.wait()).await;
        reports.push((worker.home, worker.viewers, report));
    }
    Ok(reports)
}

/// Everything the report is made of.
struct Run<'a> {
    args: &'a ViewersArgs,
    target: &'a Target,
    connected: u64,
    failed: u64,
    connect_elapsed: Duration,
    bids: &'a [PlacedBid],
    reports: &'a [(usize, u32, WorkerReport)],
    /// Each node's reading before the viewers, once they connected, and at the end.
    readings: [&'a [Option<NodeReading>]; 3],
    /// The nodes just before the first bid and just after the last.
    during_bids: [&'a Sample; 2],
}

/// The `SLOWEST_BIDS_SHOWN` largest of `bids_us` (one value per bid, in bid order), with the
/// bids' places in the run: `#7 812.3 ms, #60 640.1 ms, ...`.
fn slowest(bids_us: Vec<u64>) -> String {
    let mut slowest: Vec<(usize, u64)> = bids_us.into_iter().enumerate().collect();
    slowest.sort_by_key(|(_, us)| std::cmp::Reverse(*us));
    slowest
        .iter()
        .take(SLOWEST_BIDS_SHOWN)
        .map(|(index, us)| format!("#{} {:.1} ms", index + 1, *us as f64 / 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

impl Run<'_> {
    /// Bid-to-last-viewer over the viewers homed on `home` (all of them with `None`), and
    /// whether each of them saw every bid.
    fn to_last_viewer(&self, home: Option<usize>) -> anyhow::Result<(Histogram<u64>, bool)> {
        let (lags_us, everyone) = self.last_viewer_lags(home);
        let mut to_last = histogram()?;
        for lag_us in lags_us {
            to_last.record(lag_us.max(1))?;
        }
        Ok((to_last, everyone))
    }

    /// Each bid's time to its last viewer homed on `home`, in microseconds and bid order.
    fn last_viewer_lags(&self, home: Option<usize>) -> (Vec<u64>, bool) {
        let homed = |h: &usize| home.is_none_or(|home| home == *h);
        let viewers: u64 = self
            .reports
            .iter()
            .filter(|(h, _, _)| homed(h))
            .map(|(_, n, _)| u64::from(*n))
            .sum();
        let mut everyone = true;
        let lags_us = self
            .bids
            .iter()
            .map(|bid| {
                let (mut last_us, mut count) = (0u64, 0u64);
                for (_, _, report) in self.reports.iter().filter(|(h, _, _)| homed(h)) {
                    let (at, n) = report
                        .seen
                        .get(bid.version as usize)
                        .copied()
                        .unwrap_or((0, 0));
                    last_us = last_us.max(at);
                    count += n;
                }
                everyone &= count == viewers;
                last_us.saturating_sub(bid.sent_us)
            })
            .collect();
        (lags_us, everyone)
    }

    /// The bids that took longest to reach their last viewer, with their place in the run: a
    /// tail made of the last bids points at the end of the auction, one spread over the run at
    /// the rounds themselves.
    fn slowest_bids(&self) -> String {
        slowest(self.last_viewer_lags(None).0)
    }

    fn report(&self) -> anyhow::Result<()> {
        let args = self.args;
        let processes = self.reports.len();
        let nodes = self.target.bases.len();
        println!("gavel bench viewers: {} WebSocket viewers of one auction over {nodes} node(s), {processes} client processes, tickMs={}", args.viewers, args.tick_ms);
        println!(
            "connect:            {} connected, {} failed in {:.2} s ({:.0} viewers/s)",
            self.connected,
            self.failed,
            self.connect_elapsed.as_secs_f64(),
            self.connected as f64 / self.connect_elapsed.as_secs_f64()
        );
        let mut request = histogram()?;
        for bid in self.bids {
            request.record(bid.request_us.max(1))?;
        }
        println!(
            "bids:               {} accepted, one every {} ms; bid request p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.bids.len(), args.bid_interval_ms, ms(&request, 0.5), ms(&request, 0.99), request.max() as f64 / 1000.0
        );
        println!(
            "slowest requests:   {} (of {}, numbered in order)",
            slowest(self.bids.iter().map(|bid| bid.request_us).collect()),
            self.bids.len()
        );
        let (to_last, everyone_saw_all) = self.to_last_viewer(None)?;
        println!(
            "bid-to-last-viewer: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (every viewer saw every bid: {})",
            ms(&to_last, 0.5), ms(&to_last, 0.99), to_last.max() as f64 / 1000.0,
            if everyone_saw_all { "yes" } else { "NO" }
        );
        println!(
            "slowest bids:       {} (of {}, numbered in order)",
            self.slowest_bids(),
            self.bids.len()
        );
        let ended_all = self.report_ends();
        self.report_reconnects()?;
        self.report_nodes()?;
        if self.failed > 0 || !ended_all || !everyone_saw_all {
            bail!("some viewers failed to connect, missed bids or missed the end");
        }
        Ok(())
    }

    /// Prints how the viewers ended; whether every one saw `ended` with the right winner.
    fn report_ends(&self) -> bool {
        let sum = |f: fn(&WorkerReport) -> u64| -> u64 {
            self.reports.iter().map(|(_, _, r)| f(r)).sum()
        };
        let (right, wrong, lost) = (
            sum(|r| r.ended_right),
            sum(|r| r.ended_wrong),
            sum(|r| r.lost),
        );
        let all = right == u64::from(self.args.viewers);
        println!(
            "ended:              {right} saw `ended` naming the winner, {wrong} another winner, {lost} never saw it (everyone, right winner: {})",
            if all { "yes" } else { "NO" }
        );
        all
    }

    fn report_reconnects(&self) -> anyhow::Result<()> {
        let (mut reconnects, mut handshakes) = (histogram()?, histogram()?);
        let (mut went_back, mut refused) = (0u64, 0u64);
        let mut failed = std::collections::BTreeMap::<&str, u64>::new();
        for (_, _, report) in self.reports {
            for ms in &report.reconnect_ms {
                reconnects.record((*ms).max(1))?;
            }
            for ms in &report.reconnect_handshake_ms {
                handshakes.record((*ms).max(1))?;
            }
            went_back += report.went_back;
            refused += report.refused;
            for (kind, count) in &report.failed {
                *failed.entry(kind.as_str()).or_default() += count;
            }
        }
        if reconnects.is_empty() && refused == 0 && failed.is_empty() {
            return Ok(());
        }
        println!(
            "reconnects:         {} viewers came back, p50 {} ms, p99 {} ms, max {} ms; {refused} attempts answered 503; resumed snapshots older than shown: {went_back}",
            reconnects.len(), reconnects.value_at_quantile(0.5), reconnects.value_at_quantile(0.99), reconnects.max()
        );
        println!(
            "  of which:         drop to new handshake p50 {} ms, p99 {} ms, max {} ms (the rest waits for the first frame)",
            handshakes.value_at_quantile(0.5), handshakes.value_at_quantile(0.99), handshakes.max()
        );
        if !failed.is_empty() {
            let kinds: Vec<String> = failed.iter().map(|(k, n)| format!("{n} {k}")).collect();
            println!(
                "  failed attempts:  {} (then backed off and retried)",
                kinds.join(", ")
            );
        }
        Ok(())
    }

    fn report_nodes(&self) -> anyhow::Result<()> {
        let [before, after_connect, at_end] = self.readings;
        for (home, base) in self.target.bases.iter().enumerate() {
            let homed: u64 = self
                .reports
                .iter()
                .filter(|(h, _, _)| *h == home)
                .map(|(_, n, _)| u64::from(*n))
                .sum();
            let rss_per_viewer = match (before[home], after_connect[home]) {
                (Some(b), Some(a)) => b
                    .rss_bytes
                    .zip(a.rss_bytes)
                    .map(|(b, a)| (a - b) / 1024.0 / homed.max(1) as f64),
                _ => None,
            };
            let frames = match (before[home], at_end[home]) {
                (Some(b), Some(e)) => format!("{:.0} frames sent", e.frames - b.frames),
                _ => "unreachable at the end".to_owned(),
            };
            let (to_last, _) = self.to_last_viewer(Some(home))?;
            println!(
                "node {base}: {homed} viewers, bid-to-last-viewer p50 {:.2} ms, p99 {:.2} ms; {frames}; {}",
                ms(&to_last, 0.5), ms(&to_last, 0.99),
                rss_per_viewer.map_or("memory unknown".to_owned(), |kib| format!("{kib:.2} KiB resident per viewer"))
            );
            if let Some(line) = self.during_bids_of(Some(home)) {
                println!("  during the bids:  {line}");
            }
        }
        if let Some(line) = self.during_bids_of(None) {
            println!("all nodes, during the bids: {line}");
        }
        Ok(())
    }

    /// Frames per second a node (every node with `None`) sent during the bids and, when its
    /// process was watched, the CPU it took for them and how its fan-out threads fared: on a
    /// CPU, or runnable and waiting for one. `None` when nothing was measured.
    fn during_bids_of(&self, home: Option<usize>) -> Option<String> {
        let [start, end] = self.during_bids;
        let seconds = end.at.duration_since(start.at).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        let nodes: Vec<usize> = match home {
            Some(home) => vec![home],
            None => (0..self.target.bases.len()).collect(),
        };
        let mut frames = 0.0;
        for &node in &nodes {
            let (Some(Some(a)), Some(Some(b))) = (start.readings.get(node), end.readings.get(node))
            else {
                return None;
            };
            frames += b.frames - a.frames;
        }
        let frames_per_s = frames / seconds;
        let mut line = format!("{frames_per_s:.0} frames/s");
        let (mut cores, mut on_cpu, mut waiting) = (0.0, 0.0, 0.0);
        for &node in &nodes {
            let (Some(Some(a)), Some(Some(b))) = (start.cpu.get(node), end.cpu.get(node)) else {
                return Some(line);
            };
            cores += (b.0 - a.0) / seconds;
            on_cpu += (b.1.on_cpu_s - a.1.on_cpu_s) / seconds;
            waiting += (b.1.waiting_s - a.1.waiting_s) / seconds;
        }
        line.push_str(&format!("; node CPU {cores:.2} cores"));
        if frames_per_s > 0.0 {
            line.push_str(&format!(" ({:.1} us a frame)", cores * 1e6 / frames_per_s));
        }
        line.push_str(&format!(
            "; fan-out threads on a CPU {on_cpu:.2} cores, waiting for one {waiting:.2} threads on average"
        ));
        Some(line)
    }
}

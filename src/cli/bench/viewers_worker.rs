//! `gavel bench viewers-worker`: one client process's share of the viewers of
//! `gavel bench viewers`. Each viewer is a WebSocket on its home node; when that connection
//! drops before `ended` (its node died, or shut down), the viewer reconnects, as the live page
//! does: after a random wait of up to half a second, to another node at random, with jittered
//! exponential backoff after failures, honouring a 503's `Retry-After`, and resumes
//! with `sinceVersion` set to the newest version it showed. It records when it first saw each
//! version, whether a resumed snapshot ever went back, and how long each reconnect took.
//!
//! The worker reports on stdout, one line per fact: `connected <ok> <failed>` once every first
//! connection attempt finished, then `result <json>` ([`WorkerReport`]).
//!
//! Workers share the benchmark's cores with the nodes, so what a frame costs here is taken
//! from the servers measured: ws:// viewers read through the lean client of `ws_client.rs`,
//! and the per-frame counters are atomics instead of the report's lock. wss:// viewers keep
//! tungstenite (and rustls).

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::viewers::now_us;
use super::ws_client::{self, HandshakeError, Incoming, LeanSocket};

/// The environment variable workers get the viewer token from (not argv: `ps` shows argv).
pub const WORKER_TOKEN_ENV: &str = "GAVEL_BENCH_VIEWER_TOKEN";
/// A wss:// client WebSocket's read buffer: frames are a few hundred bytes.
const CLIENT_READ_BUFFER_BYTES: usize = 4 * 1024;
/// Connection attempts a viewer makes before it gives up (first connect and each reconnect).
const CONNECT_ATTEMPTS_MAX: u32 = 12;
/// The first backoff after a failed attempt, doubled each time up to the cap, with jitter.
const BACKOFF_MS_MIN: u64 = 100;
const BACKOFF_MS_MAX: u64 = 2_000;
/// The most a viewer waits before its first reconnect attempt: the live page's
/// `RECONNECT_MS_MIN`, over which it spreads that attempt too.
const FIRST_RECONNECT_JITTER_MS: u64 = 500;
/// How long a viewer waits for the server's close after `ended` (the server spreads its
/// closes over `ENDED_CLOSE_SPREAD_MS`, 2 s) before it drops the connection itself.
const SERVER_CLOSE_WAIT_MS: u64 = 5_000;
/// The wait a 503 without a usable `Retry-After` gets, in seconds.
const RETRY_AFTER_S_DEFAULT: u64 = 1;

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// Stream URLs without the token, comma-separated: the home node first, then where to
    /// reconnect, in order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub urls: Vec<String>,
    #[arg(long)]
    pub viewers: u32,
    #[arg(long)]
    pub connect_concurrency: u32,
    /// Versions to keep track of (1..=this).
    #[arg(long)]
    pub versions_max: u64,
    /// The `tickMs` the viewers ask for.
    #[arg(long)]
    pub tick_ms: u64,
    /// The winner every viewer's `ended` frame must name.
    #[arg(long)]
    pub winner: String,
    /// Give up after this many seconds.
    #[arg(long)]
    pub timeout_s: u64,
    /// CA certificates (PEM) to trust for wss:// URLs.
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,
    /// The process's niceness (0-19).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=19))]
    pub nice: u8,
}

#[derive(Serialize, Deserialize, Default)]
pub struct WorkerReport {
    /// Index: version. Value: (latest first-sight time in µs, viewers that saw it).
    pub seen: Vec<(u64, u64)>,
    /// Viewers that received `ended` naming the expected winner.
    pub ended_right: u64,
    /// Viewers that received `ended` naming another winner.
    pub ended_wrong: u64,
    /// Viewers that never got to `ended` (gave up reconnecting, or the run timed out).
    pub lost: u64,
    /// Frames received, ticks included.
    pub frames: u64,
    /// Milliseconds from each dropped connection to the resumed snapshot.
    pub reconnect_ms: Vec<u64>,
    /// Milliseconds from each dropped connection to the new connection's WebSocket handshake
    /// (the rest of `reconnect_ms` is the wait for its first frame).
    pub reconnect_handshake_ms: Vec<u64>,
    /// Resumed snapshots older than what the viewer had shown (must stay 0).
    pub went_back: u64,
    /// Connection attempts answered 503 (admission full, or the replica behind).
    pub refused: u64,
    /// Other failed connection attempts, by what went wrong (`io: ConnectionRefused`, `http 401`).
    #[serde(default)]
    pub failed: std::collections::BTreeMap<String, u64>,
}

/// The fields of a frame the worker reads, borrowed from the frame's bytes (no allocation
/// unless a string has escapes); the others are skipped.
#[derive(Deserialize)]
struct FrameLite<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    version: u64,
    #[serde(rename = "winnerId", borrow, default)]
    winner_id: Option<Text<'a>>,
}

/// A borrowed-if-possible string inside an `Option`: serde borrows a `Cow` field only when
/// it is the field's whole type.
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// One version's first sightings: the latest first-sight time in µs, and the viewers.
#[derive(Default)]
struct Sightings {
    latest_us: AtomicU64,
    viewers: AtomicU64,
}

/// What every viewer of this process shares.
struct Crowd {
    urls: Vec<String>,
    token: String,
    tick_ms: u64,
    winner: String,
    gate: Semaphore,
    /// TLS for wss:// URLs with `--cacert` (`None`: the client's own roots).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The report but for `frames` and `seen`, which every frame updates: those are the
    /// atomics below, so a frame takes no lock (one thread: they are never contended).
    report: Mutex<WorkerReport>,
    frames: AtomicU64,
    /// Index: version.
    seen: Vec<Sightings>,
}

impl Crowd {
    fn report(&self) -> std::sync::MutexGuard<'_, WorkerReport> {
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One viewer first saw versions `from..=to` at `at_us`.
    fn saw(&self, from: u64, to: u64, at_us: u64) {
        for version in from..=to {
            if let Some(slot) = self.seen.get(version as usize) {
                slot.latest_us.fetch_max(at_us, Ordering::Relaxed);
                slot.viewers.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The whole report: the locked part with the per-frame counters added.
    fn take_report(&self) -> WorkerReport {
        let mut report = std::mem::take(&mut *self.report());
        report.frames = self.frames.load(Ordering::Relaxed);
        report.seen = self
            .seen
            .iter()
            .map(|slot| {
                let latest_us = slot.latest_us.load(Ordering::Relaxed);
                (latest_us, slot.viewers.load(Ordering::Relaxed))
            })
            .collect();
        report
    }

    fn url(&self, endpoint: usize, shown: u64) -> String {
        let base = &self.urls[endpoint % self.urls.len()];
        let mut url = format!("{base}?access_token={}&tickMs={}", self.token, self.tick_ms);
        if shown > 0 {
            url.push_str(&format!("&sinceVersion={shown}"));
        }
        url
    }
}

/// `gavel bench viewers-worker`.
pub fn run(args: WorkerArgs) -> anyhow::Result<()> {
    // Before any other thread starts: threads inherit their creator's niceness.
    crate::cli::lower_this_threads_priority(args.nice);
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(worker(args))
}

async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let token = std::env::var(WORKER_TOKEN_ENV).context("the worker needs its token")?;
    let context = Arc::new(Crowd {
        urls: args.urls.clone(),
        token,
        tick_ms: args.tick_ms,
        winner: args.winner.clone(),
        gate: Semaphore::new(args.connect_concurrency as usize),
        tls: crate::cli::tls::ws_tls(args.cacert.as_deref())?,
        report: Mutex::new(WorkerReport::default()),
        frames: AtomicU64::new(0),
        seen: (0..=args.versions_max)
            .map(|_| Sightings::default())
            .collect(),
    });
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(args.viewers as usize);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..args.viewers {
        tasks.spawn(view(context.clone(), ready_tx.clone()));
    }
    drop(ready_tx);
    let (mut ok, mut failed) = (0u64, 0u64);
    while ok + failed < u64::from(args.viewers) {
        match ready_rx.recv().await {
            Some(true) => ok += 1,
            Some(false) | None => failed += 1,
        }
    }
    println!("connected {ok} {failed}");
    let deadline = Duration::from_secs(args.timeout_s);
    let finished = tokio::time::timeout(deadline, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        context.report().lost += tasks.len() as u64;
        tasks.abort_all();
    }
    let report = context.take_report();
    println!("result {}", serde_json::to_string(&report)?);
    Ok(())
}

/// How a connection ended.
enum Outcome {
    Ended,
    /// Closed or failed before `ended`: reconnect.
    Dropped,
}

/// One viewer, from its first connection to `ended` (or giving up).
async fn view(context: Arc<Crowd>, ready: mpsc::Sender<bool>) {
    let mut shown = 0u64;
    let mut ready = Some(ready);
    let mut dropped_at: Option<Instant> = None;
    let mut endpoint = 0usize;
    loop {
        let Some(socket) = connect(&context, &mut endpoint, shown, ready.is_some()).await else {
            if let Some(ready) = ready.take() {
                let _ = ready.send(false).await;
            }
            context.report().lost += 1;
            return;
        };
        if let Some(at) = dropped_at {
            let handshake_ms = at.elapsed().as_millis() as u64;
            context.report().reconnect_handshake_ms.push(handshake_ms);
        }
        let mut first = true;
        let outcome = watch(socket, &context, &mut shown, |snapshot_version, shown| {
            if !std::mem::take(&mut first) {
                return;
            }
            if let Some(ready) = ready.take() {
                // Room for every viewer's one report: never full.
                let _ = ready.try_send(true);
            }
            if let Some(at) = dropped_at.take() {
                let mut report = context.report();
                report.reconnect_ms.push(at.elapsed().as_millis() as u64);
                report.went_back += u64::from(snapshot_version < shown);
            }
        })
        .await;
        match outcome {
            Outcome::Ended => return,
            Outcome::Dropped => {
                dropped_at = Some(Instant::now());
                // As the live page does (`nextAttempt` in app.js): even the first attempt waits
                // a random part of the shortest backoff, so a dead node's crowd, which notices
                // at the same instant, does not land on the survivors in one burst.
                let wait_ms = rand::thread_rng().gen_range(0..=FIRST_RECONNECT_JITTER_MS);
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                // Any other node, at random: a dead node's crowd spreads over the survivors
                // instead of all landing on the next one.
                let others = context.urls.len().saturating_sub(1).max(1);
                endpoint += 1 + rand::thread_rng().gen_range(0..others);
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open viewer connection.
enum Connection {
    /// ws://: the lean client.
    Plain(LeanSocket),
    /// wss://: tungstenite over rustls (boxed: several times the size of a lean socket, which
    /// every plain viewer's task would otherwise reserve).
    Tls(Box<Socket>),
}

/// Why a connection attempt failed.
enum AttemptError {
    /// 503 (admission full, or the replica behind), with its `Retry-After` in seconds.
    Refused { retry_after_s: Option<u64> },
    /// Anything else, as counted in `WorkerReport::failed`.
    Failed(String),
}

impl From<WsError> for AttemptError {
    fn from(error: WsError) -> Self {
        match error {
            WsError::Http(response) if response.status() == 503 => AttemptError::Refused {
                retry_after_s: response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok()),
            },
            error => AttemptError::Failed(failure_kind(&error)),
        }
    }
}

/// The same kinds as `failure_kind` gives tungstenite's errors.
impl From<HandshakeError> for AttemptError {
    fn from(error: HandshakeError) -> Self {
        match error {
            HandshakeError::Http {
                status: 503,
                retry_after_s,
            } => AttemptError::Refused { retry_after_s },
            HandshakeError::Http { status, .. } => AttemptError::Failed(format!("http {status}")),
            HandshakeError::Io(e) => AttemptError::Failed(format!("io: {:?}", e.kind())),
            HandshakeError::Protocol => AttemptError::Failed("protocol".to_owned()),
        }
    }
}

/// Connects to `endpoint` or, after failures, the next ones (the first connection stays on
/// its home node so the spread is the one asked for). `None` after `CONNECT_ATTEMPTS_MAX`.
async fn connect(
    context: &Crowd,
    endpoint: &mut usize,
    shown: u64,
    first: bool,
) -> Option<Connection> {
    for attempt in 0..CONNECT_ATTEMPTS_MAX {
        let url = context.url(*endpoint, shown);
        let result = {
            let _permit = context.gate.acquire().await;
            open(context, &url).await
        };
        let wait_ms = match result {
            Ok(connection) => return Some(connection),
            Err(AttemptError::Refused { retry_after_s }) => {
                context.report().refused += 1;
                retry_after_s.unwrap_or(RETRY_AFTER_S_DEFAULT) * 1_000
            }
            Err(AttemptError::Failed(kind)) => {
                *context.report().failed.entry(kind).or_default() += 1;
                (BACKOFF_MS_MIN << attempt.min(8)).min(BACKOFF_MS_MAX)
            }
        };
        // Half to one and a half times the wait: a crowd that failed together retries apart.
        let jittered = rand::thread_rng().gen_range(wait_ms / 2..=wait_ms + wait_ms / 2);
        tokio::time::sleep(Duration::from_millis(jittered)).await;
        if !first {
            *endpoint += 1;
        }
    }
    None
}

/// One connection attempt: the TCP connection, then the WebSocket handshake.
async fn open(context: &Crowd, url: &str) -> Result<Connection, AttemptError> {
    let stream = open_stream(url).await?;
    if url.starts_with("ws://") {
        let uri = url
            .parse()
            .map_err(|_| AttemptError::Failed("other".to_owned()))?;
        let socket = ws_client::handshake(stream, &uri).await?;
        return Ok(Connection::Plain(socket));
    }
    let config = WebSocketConfig::default()
        .read_buffer_size(CLIENT_READ_BUFFER_BYTES)
        .write_buffer_size(0);
    let connector = context
        .tls
        .clone()
        .map(tokio_tungstenite::Connector::Rustls);
    let (socket, _) =
        tokio_tungstenite::client_async_tls_with_config(url, stream, Some(config), connector)
            .await?;
    Ok(Connection::Tls(Box::new(socket)))
}

/// Source addresses a loopback client spreads its connections over (127.1.0.0/16 minus the
/// network and broadcast-looking ends of each /24).
const LOOPBACK_SOURCES: u32 = 250 * 254;

/// The TCP connection for a stream URL. To a server on IPv4 loopback it comes from a random
/// source address of 127.1.0.0/16: every connection from 127.0.0.1 to one node shares one
/// ephemeral port range (about 28,000 ports), and Linux finds a free port by probing the
/// ports in use one by one (`__inet_check_established`). With 15,000 viewers per node that
/// probing was most of the clients' CPU, and it made a reconnect storm a test of the kernel's
/// port allocator instead of the nodes. Real viewers come from addresses of their own.
async fn open_stream(url: &str) -> Result<tokio::net::TcpStream, WsError> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url.into_client_request()?;
    let uri = request.uri();
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        });
    let stream = match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) if ip.is_loopback() => {
            let n = rand::thread_rng().gen_range(0..LOOPBACK_SOURCES);
            let source = std::net::Ipv4Addr::new(127, 1, (n / 254) as u8, (n % 254 + 1) as u8);
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind((source, 0).into())?;
            socket.connect((ip, port).into()).await?
        }
        _ => tokio::net::TcpStream::connect((host, port)).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A failed attempt's kind, coarse enough to count: the I/O error kind or the HTTP status.
fn failure_kind(error: &WsError) -> String {
    match error {
        WsError::Io(e) => format!("io: {:?}", e.kind()),
        WsError::Http(response) => format!("http {}", response.status().as_u16()),
        WsError::Protocol(_) => "protocol".to_owned(),
        WsError::Tls(_) => "tls".to_owned(),
        WsError::ConnectionClosed | WsError::AlreadyClosed => "closed".to_owned(),
        _ => "other".to_owned(),
    }
}

/// After `ended`, as a browser does: waits (bounded) for the server's close frame, which
/// tungstenite answers, instead of dropping the connection while the server is still busy
/// taking `ended` to the rest of the crowd.
async fn await_server_close(socket: &mut Socket) {
    let closed = async { while let Some(Ok(_)) = socket.next().await {} };
    let _ = tokio::time::timeout(Duration::from_millis(SERVER_CLOSE_WAIT_MS), closed).await;
}

/// `await_server_close` on the lean client, which answers the close too.
async fn await_server_close_plain(socket: &mut LeanSocket) {
    let closed = async { while socket.next().await.is_ok() {} };
    let _ = tokio::time::timeout(Duration::from_millis(SERVER_CLOSE_WAIT_MS), closed).await;
}

/// What one connection's frames do to its viewer and the report, whichever the transport.
struct Viewing<'a, F> {
    context: &'a Crowd,
    /// The newest version the viewer showed.
    shown: &'a mut u64,
    /// Gets a snapshot's version and the version shown before it.
    on_snapshot: F,
}

impl<F: FnMut(u64, u64)> Viewing<'_, F> {
    /// One text message; true if it was `ended` (the connection's last frame). Anything but
    /// a frame is ignored.
    fn text(&mut self, text: &[u8]) -> bool {
        let Ok(frame) = serde_json::from_slice::<FrameLite>(text) else {
            return false;
        };
        let winner = frame.winner_id.as_ref().map(|winner| &*winner.0);
        self.frame(&frame.kind, frame.version, winner)
    }

    fn frame(&mut self, kind: &str, version: u64, winner: Option<&str>) -> bool {
        let context = self.context;
        context.frames.fetch_add(1, Ordering::Relaxed);
        if kind == "snapshot" {
            (self.on_snapshot)(version, *self.shown);
        }
        if kind != "tick" && version > *self.shown {
            // The first snapshot only places the viewer; later frames show new versions.
            if *self.shown > 0 {
                context.saw(*self.shown + 1, version, now_us());
            }
            *self.shown = version;
        }
        if kind != "ended" {
            return false;
        }
        let mut report = context.report();
        if winner == Some(context.winner.as_str()) {
            report.ended_right += 1;
        } else {
            report.ended_wrong += 1;
        }
        true
    }
}

/// Reads frames until `ended` or the connection drops; `on_snapshot` gets a snapshot's version
/// and the version shown before it.
async fn watch(
    connection: Connection,
    context: &Crowd,
    shown: &mut u64,
    on_snapshot: impl FnMut(u64, u64),
) -> Outcome {
    let mut viewing = Viewing {
        context,
        shown,
        on_snapshot,
    };
    match connection {
        Connection::Plain(socket) => watch_plain(socket, &mut viewing).await,
        Connection::Tls(socket) => watch_tls(*socket, &mut viewing).await,
    }
}

async fn watch_plain<F: FnMut(u64, u64)>(
    mut socket: LeanSocket,
    viewing: &mut Viewing<'_, F>,
) -> Outcome {
    while let Ok(incoming) = socket.next().await {
        let Incoming::Text(text) = incoming else {
            continue;
        };
        if viewing.text(text) {
            await_server_close_plain(&mut socket).await;
            return Outcome::Ended;
        }
    }
    Outcome::Dropped
}

async fn watch_tls<F: FnMut(u64, u64)>(
    mut socket: Socket,
    viewing: &mut Viewing<'_, F>,
) -> Outcome {
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if viewing.text(text.as_bytes()) {
            await_server_close(&mut socket).await;
            return Outcome::Ended;
        }
    }
    Outcome::Dropped
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

    use super::*;

    fn crowd(versions_max: u64) -> Crowd {
        Crowd {
            urls: vec!["ws://127.0.0.1:1/auctions/a/ws".to_owned()],
            token: "t".to_owned(),
            tick_ms: 1_000,
            winner: "bench-bidder".to_owned(),
            gate: Semaphore::new(1),
            tls: None,
            report: Mutex::new(WorkerReport::default()),
            frames: AtomicU64::new(0),
            seen: (0..=versions_max).map(|_| Sightings::default()).collect(),
        }
    }

    #[test]
    fn frames_parse_borrowed_whatever_the_other_fields() {
        let text = br#"{"type":"bid","auctionId":"a1","status":"active","currentPrice":"12.00","winnerId":"bench-bidder","version":7,"endAt":"2025-01-01T00:00:00Z","remainingMs":5,"serverTime":"x","extra":{"n":[1,2]}}"#;
        let frame: FrameLite = serde_json::from_slice(text).unwrap();
        assert!(matches!(frame.kind, Cow::Borrowed("bid")));
        assert_eq!(frame.version, 7);
        assert!(matches!(
            frame.winner_id,
            Some(Text(Cow::Borrowed("bench-bidder")))
        ));

        let frame: FrameLite =
            serde_json::from_slice(br#"{"type":"snapshot","winnerId":null,"version":0}"#).unwrap();
        assert!(frame.winner_id.is_none());
        let frame: FrameLite = serde_json::from_slice(br#"{"version":1,"type":"tick"}"#).unwrap();
        assert!(frame.winner_id.is_none());
        // An escaped string cannot be borrowed: it is unescaped, not rejected.
        let frame: FrameLite =
            serde_json::from_slice(br#"{"type":"ended","version":2,"winnerId":"a\"b"}"#).unwrap();
        assert_eq!(frame.winner_id.unwrap().0, "a\"b");
    }

    #[test]
    fn frames_count_into_the_report_as_before() {
        let context = crowd(10);
        let mut shown = 0;
        let mut snapshots = Vec::new();
        let mut viewing = Viewing {
            context: &context,
            shown: &mut shown,
            on_snapshot: |version, shown| snapshots.push((version, shown)),
        };
        let frame = |kind: &str, version: u64, winner: &str| {
            format!(r#"{{"type":"{kind}","version":{version},"winnerId":"{winner}"}}"#)
        };
        assert!(!viewing.text(frame("snapshot", 3, "x").as_bytes()));
        assert!(!viewing.text(b"not json"));
        assert!(!viewing.text(frame("tick", 9, "x").as_bytes()));
        assert!(!viewing.text(frame("bid", 5, "x").as_bytes()));
        // Past `versions_max`: counted up to it.
        assert!(!viewing.text(frame("bid", 12, "x").as_bytes()));
        assert!(viewing.text(frame("ended", 12, "bench-bidder").as_bytes()));
        assert!(viewing.text(frame("ended", 12, "someone-else").as_bytes()));
        assert_eq!(shown, 12);
        assert_eq!(snapshots, [(3, 0)]);
        let report = context.take_report();
        assert_eq!(report.frames, 6, "all frames but the one that is not JSON");
        assert_eq!((report.ended_right, report.ended_wrong), (1, 1));
        assert_eq!(report.seen.len(), 11);
        let viewers: Vec<u64> = report.seen.iter().map(|(_, viewers)| *viewers).collect();
        // The snapshot placed the viewer at 3; bids showed 4..=5, then 6..=10.
        assert_eq!(viewers, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]);
        assert!(report.seen[4].0 > 0 && report.seen[4].0 <= report.seen[10].0);
    }

    /// One connection attempt by `open` to a loopback server that answers `response(key)`.
    async fn open_answered(
        response: impl FnOnce(&str) -> String + Send + 'static,
    ) -> Result<Connection, AttemptError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "ws://{}/auctions/a/ws?tickMs=1000",
            listener.local_addr().unwrap()
        );
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let (_, key) = super::super::ws_client::tests::read_upgrade_request(&mut stream).await;
            stream.write_all(response(&key).as_bytes()).await.unwrap();
            stream
        });
        let result = open(&crowd(1), &url).await;
        drop(server.await.unwrap());
        result
    }

    #[tokio::test]
    async fn plain_urls_take_the_lean_client_and_count_failures_as_tungstenite_did() {
        let switched = open_answered(|key| {
            let accept = derive_accept_key(key.as_bytes());
            format!("HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {accept}\r\n\r\n")
        })
        .await;
        assert!(matches!(switched, Ok(Connection::Plain(_))));

        let refused =
            open_answered(|_| "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n\r\n".into())
                .await;
        assert!(matches!(
            refused,
            Err(AttemptError::Refused {
                retry_after_s: Some(3)
            })
        ));
        let kind = |result: Result<Connection, AttemptError>| match result {
            Err(AttemptError::Failed(kind)) => kind,
            Ok(_) => "connected".to_owned(),
            Err(AttemptError::Refused { .. }) => "refused".to_owned(),
        };
        let unauthorized = open_answered(|_| "HTTP/1.1 401 Unauthorized\r\n\r\n".into()).await;
        assert_eq!(kind(unauthorized), "http 401");
        let wrong_accept = open_answered(|_| {
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n".into()
        })
        .await;
        assert_eq!(kind(wrong_accept), "protocol");
        let io = AttemptError::from(HandshakeError::Io(
            std::io::ErrorKind::ConnectionReset.into(),
        ));
        assert_eq!(kind(Err(io)), "io: ConnectionReset");
    }
}

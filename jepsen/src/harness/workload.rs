//! The workload: a creator keeping a few hot auctions alive (short deadlines, anti-sniping,
//! creates with and without an `Idempotency-Key`), many bidders racing on them with idempotent
//! retries on another node after an unknown outcome, a controller pausing, resuming, starting
//! and ending them, readers doing linearizable and local reads, and one stream viewer per node
//! and auction. Every worker records each operation through the `Recorder` and stops by itself
//! when the stop signal comes or its operation budget runs out.
//!
//! Process ids follow Jepsen: after an `info` the worker's process is considered crashed (its
//! operation may still take effect) and it continues under a new process id.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gavel_jepsen::history::{Call, ControlAction, FrameKind, OpResult, StreamWhat, WallMs};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::harness::client::{format_time, parse_frame, Api};
use crate::harness::nodes::client_url;
use crate::harness::recorder::{wall_ms, Outcome, Recorder};
use crate::harness::NodeId;

/// Hot auctions the creator keeps open at once.
const HOT_AUCTIONS: usize = 3;
/// Operations one worker may issue in a run (a bound on every loop).
const OPS_PER_WORKER_MAX: u64 = 100_000;
/// Attempts of one bid or keyed create: the first plus retries on other nodes after `info`.
const ATTEMPTS_MAX: u32 = 3;
/// Times one viewer slot reconnects before it gives up.
const RECONNECTS_MAX: u32 = 30;
/// The longest silence on a stream before the viewer reconnects (ticks come every second).
const STREAM_SILENCE: Duration = Duration::from_secs(4);

#[derive(Clone, Debug)]
pub struct WorkloadSettings {
    pub bidders: usize,
    pub readers: usize,
    pub seed: u64,
    /// Auctions last this long (ms), before anti-sniping.
    pub auction_ms: (i64, i64),
    pub anti_sniping_s: u32,
}

/// Tokens minted for the run, by role.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub creator: String,
    pub admin: String,
    pub viewer: String,
    /// (bidder id, token)
    pub bidders: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct Hot {
    id: String,
    min_increment: Decimal,
    /// The highest price seen in any answer: bidders aim just above it.
    price: Decimal,
    end_at_ms: WallMs,
}

#[derive(Clone)]
struct Shared {
    api: Api,
    recorder: Recorder,
    tokens: Arc<Tokens>,
    nodes: Arc<Vec<NodeId>>,
    hot: Arc<Mutex<BTreeMap<String, Hot>>>,
    stop: watch::Receiver<bool>,
    /// Auctions that already have viewers, so each is watched once per node.
    watched: Arc<Mutex<Vec<String>>>,
    stream_http: reqwest::Client,
    next_viewer: Arc<std::sync::atomic::AtomicU64>,
    viewers: Arc<Mutex<JoinSet<()>>>,
}

pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    shared: Shared,
}

impl Shared {
    fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Auctions still open, or ended so recently that bids probe the deadline.
    fn hot_list(&self) -> Vec<Hot> {
        let recent = wall_ms() - 2_000;
        self.lock_hot()
            .values()
            .filter(|h| h.end_at_ms > recent)
            .cloned()
            .collect()
    }

    fn lock_hot(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Hot>> {
        self.hot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Learns from an answer: a higher price or a later end.
    fn observe(&self, auction_id: &str, price: Decimal, end_at_ms: WallMs) {
        if let Some(hot) = self.lock_hot().get_mut(auction_id) {
            hot.price = hot.price.max(price);
            hot.end_at_ms = hot.end_at_ms.max(end_at_ms);
        }
    }

    async fn pause_between(&self, rng: &mut StdRng, ms: (u64, u64)) {
        let wait = Duration::from_millis(rng.gen_range(ms.0..=ms.1));
        let mut stop = self.stop.clone();
        let _ = tokio::time::timeout(wait, stop.wait_for(|s| *s)).await;
    }

    /// A random open auction, or `None` after a short wait when there is none yet.
    async fn next_target(&self, rng: &mut StdRng) -> Option<Hot> {
        let hot = self.hot_list();
        if hot.is_empty() {
            self.pause_between(rng, (50, 100)).await;
            return None;
        }
        Some(hot[rng.gen_range(0..hot.len())].clone())
    }

    fn pick_node(&self, rng: &mut StdRng, not: Option<NodeId>) -> NodeId {
        let choices: Vec<NodeId> = self
            .nodes
            .iter()
            .copied()
            .filter(|&n| Some(n) != not || self.nodes.len() == 1)
            .collect();
        choices[rng.gen_range(0..choices.len())]
    }
}

impl Workload {
    pub fn start(
        api: Api,
        recorder: Recorder,
        tokens: Tokens,
        nodes: Vec<NodeId>,
        settings: WorkloadSettings,
    ) -> anyhow::Result<Workload> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let stream_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .build()?;
        let shared = Shared {
            api,
            recorder,
            tokens: Arc::new(tokens),
            nodes: Arc::new(nodes),
            hot: Arc::default(),
            stop: stop_rx,
            watched: Arc::default(),
            stream_http,
            next_viewer: Arc::new(std::sync::atomic::AtomicU64::new(1)),
            viewers: Arc::new(Mutex::new(JoinSet::new())),
        };
        let mut tasks = JoinSet::new();
        let seed = settings.seed;
        tasks.spawn(creator(shared.clone(), settings.clone(), seed));
        tasks.spawn(controller(shared.clone(), seed.wrapping_add(1)));
        for index in 0..settings.bidders {
            let s = shared.clone();
            tasks.spawn(bidder(s, index, seed.wrapping_add(100 + index as u64)));
        }
        for index in 0..settings.readers {
            let s = shared.clone();
            tasks.spawn(reader(s, index, seed.wrapping_add(200 + index as u64)));
        }
        Ok(Workload {
            stop: stop_tx,
            tasks,
            shared,
        })
    }

    /// The latest end of any auction the workload made.
    pub fn latest_end_ms(&self) -> WallMs {
        self.shared
            .lock_hot()
            .values()
            .map(|h| h.end_at_ms)
            .max()
            .unwrap_or(0)
    }

    /// Stops the clients (they finish their current operation, bounded by the request timeout)
    /// and then the viewers, which are given until `viewers_until_ms` to see their auctions end.
    pub async fn stop(mut self, viewers_grace: Duration) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let mut viewers = std::mem::take(
            &mut *self
                .shared
                .viewers
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let drained = tokio::time::timeout(viewers_grace, async {
            while viewers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            viewers.abort_all();
            while viewers.join_next().await.is_some() {}
        }
    }
}

fn process_id(worker: u64, generation: u64) -> u64 {
    worker * 1_000_000 + generation
}

async fn creator(shared: Shared, settings: WorkloadSettings, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut generation = 0;
    for serial in 0..OPS_PER_WORKER_MAX {
        if shared.stopped() {
            return;
        }
        let now = wall_ms();
        let open = shared
            .hot_list()
            .iter()
            .filter(|h| h.end_at_ms > now + 1_000)
            .count();
        if open >= HOT_AUCTIONS {
            shared.pause_between(&mut rng, (200, 400)).await;
            continue;
        }
        let keyed = rng.gen_bool(0.5);
        let key = keyed.then(|| format!("create-{seed}-{serial}"));
        // Some auctions start a little later, so the start deadline is exercised too.
        let start_at = if rng.gen_bool(0.3) {
            now + 1_500
        } else {
            now - 1_000
        };
        let end_at = now + rng.gen_range(settings.auction_ms.0..=settings.auction_ms.1);
        let call = Call::Create {
            key: key.clone(),
            post_id: format!("post-{seed}-{serial}"),
            start_at_ms: start_at,
            end_at_ms: end_at,
            start_price: Decimal::from(10),
            min_increment: Decimal::from(1),
            anti_sniping_s: settings.anti_sniping_s,
        };
        let mut node = shared.pick_node(&mut rng, None);
        for _attempt in 0..ATTEMPTS_MAX {
            let outcome = create_once(&shared, process_id(0, generation), node, &call).await;
            match outcome {
                Outcome::Ok(OpResult::Auction(view)) => {
                    shared.lock_hot().insert(
                        view.id.clone(),
                        Hot {
                            id: view.id.clone(),
                            min_increment: view.min_increment,
                            price: view.current_price,
                            end_at_ms: view.end_at_ms,
                        },
                    );
                    spawn_viewers(&shared, &view.id);
                    break;
                }
                Outcome::Info(_) if key.is_some() => {
                    generation += 1;
                    node = shared.pick_node(&mut rng, Some(node));
                }
                Outcome::Info(_) => {
                    generation += 1;
                    break;
                }
                _ => break,
            }
        }
        shared.pause_between(&mut rng, (100, 300)).await;
    }
}

async fn create_once(shared: &Shared, process: u64, node: NodeId, call: &Call) -> Outcome {
    let Call::Create {
        key,
        post_id,
        start_at_ms,
        end_at_ms,
        start_price,
        min_increment,
        anti_sniping_s,
    } = call
    else {
        return Outcome::Fail("not a create".into());
    };
    let body = serde_json::json!({
        "postId": post_id,
        "startAt": format_time(*start_at_ms),
        "endAt": format_time(*end_at_ms),
        "startPrice": start_price.to_string(),
        "minIncrement": min_increment.to_string(),
        "antiSnipingSeconds": anti_sniping_s,
    });
    let pending = shared.recorder.invoke(process, node, call.clone());
    let outcome = shared
        .api
        .create(node, &shared.tokens.creator, key.as_deref(), body)
        .await;
    shared.recorder.complete(pending, &outcome);
    outcome
}

async fn bidder(shared: Shared, index: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let worker = 10 + index as u64;
    let mut generation = 0;
    let (bidder, token) = shared.tokens.bidders[index % shared.tokens.bidders.len()].clone();
    for serial in 0..OPS_PER_WORKER_MAX {
        if shared.stopped() {
            return;
        }
        let Some(target) = shared.next_target(&mut rng).await else {
            continue;
        };
        // Mostly a valid raise, sometimes one below the minimum (a rejection to decide).
        let steps = if rng.gen_bool(0.1) {
            0
        } else {
            rng.gen_range(1..=3)
        };
        let amount = target.price + target.min_increment * Decimal::from(steps);
        let key = format!("{bidder}-{serial}");
        let mut node = shared.pick_node(&mut rng, None);
        let mut first: Option<u64> = None;
        for _attempt in 0..ATTEMPTS_MAX {
            let call = Call::Bid {
                auction_id: target.id.clone(),
                bidder: bidder.clone(),
                key: key.clone(),
                amount,
                retry_of: first,
            };
            let pending = shared
                .recorder
                .invoke(process_id(worker, generation), node, call);
            first.get_or_insert(pending.op_id());
            let outcome = shared.api.bid(node, &token, &target.id, &key, amount).await;
            shared.recorder.complete(pending, &outcome);
            match outcome {
                Outcome::Ok(OpResult::Bid(view)) => {
                    shared.observe(&target.id, view.current_price, view.end_at_ms);
                    break;
                }
                Outcome::Info(_) => {
                    generation += 1;
                    node = shared.pick_node(&mut rng, Some(node));
                    shared.pause_between(&mut rng, (50, 200)).await;
                }
                _ => {
                    shared.pause_between(&mut rng, (20, 80)).await;
                    break;
                }
            }
        }
    }
}

async fn controller(shared: Shared, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut generation = 0;
    for _ in 0..OPS_PER_WORKER_MAX {
        if shared.stopped() {
            return;
        }
        shared.pause_between(&mut rng, (800, 2_000)).await;
        let hot = shared.hot_list();
        if hot.is_empty() {
            continue;
        }
        let target = hot[rng.gen_range(0..hot.len())].id.clone();
        let plan: &[ControlAction] = match rng.gen_range(0..10) {
            0 => &[ControlAction::End],
            1 => &[ControlAction::Start],
            _ => &[ControlAction::Pause, ControlAction::Resume],
        };
        for &action in plan {
            let node = shared.pick_node(&mut rng, None);
            let call = Call::Control {
                auction_id: target.clone(),
                action,
            };
            let pending = shared
                .recorder
                .invoke(process_id(1, generation), node, call);
            let outcome = shared
                .api
                .control(node, &shared.tokens.creator, &target, action)
                .await;
            shared.recorder.complete(pending, &outcome);
            if let Outcome::Ok(OpResult::Auction(view)) = &outcome {
                shared.observe(&view.id, view.current_price, view.end_at_ms);
            }
            if matches!(outcome, Outcome::Info(_)) {
                generation += 1;
            }
            shared.pause_between(&mut rng, (300, 900)).await;
        }
    }
}

async fn reader(shared: Shared, index: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let worker = 5 + index as u64;
    for _ in 0..OPS_PER_WORKER_MAX {
        if shared.stopped() {
            return;
        }
        let Some(Hot { id: target, .. }) = shared.next_target(&mut rng).await else {
            continue;
        };
        let local = rng.gen_bool(0.3);
        let node = shared.pick_node(&mut rng, None);
        let call = Call::Read {
            auction_id: target.clone(),
            local,
        };
        let pending = shared.recorder.invoke(process_id(worker, 0), node, call);
        let outcome = shared
            .api
            .read(node, &shared.tokens.viewer, &target, local)
            .await;
        shared.recorder.complete(pending, &outcome);
        shared.pause_between(&mut rng, (30, 120)).await;
    }
}

/// One viewer per node for a new auction.
fn spawn_viewers(shared: &Shared, auction_id: &str) {
    {
        let mut watched = shared.watched.lock().unwrap_or_else(|e| e.into_inner());
        if watched.iter().any(|w| w == auction_id) {
            return;
        }
        watched.push(auction_id.to_string());
    }
    let mut viewers = shared.viewers.lock().unwrap_or_else(|e| e.into_inner());
    for &node in shared.nodes.iter() {
        viewers.spawn(viewer_slot(shared.clone(), node, auction_id.to_string()));
    }
}

/// Watches `auction_id` on `node` until it ends, reconnecting (as a new viewer) after errors.
async fn viewer_slot(shared: Shared, node: NodeId, auction_id: String) {
    for _ in 0..RECONNECTS_MAX {
        let viewer = shared
            .next_viewer
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if watch_once(&shared, viewer, node, &auction_id).await {
            return;
        }
        // Reconnects continue after the clients stop, until the auction ends: viewers are
        // bounded by their reconnect budget and by the grace the run gives them.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One SSE connection. Returns true once the stream delivered `ended`.
async fn watch_once(shared: &Shared, viewer: u64, node: NodeId, auction_id: &str) -> bool {
    let url = format!("{}/auctions/{auction_id}/stream", client_url(node));
    let request = shared
        .stream_http
        .get(&url)
        .query(&[("access_token", shared.tokens.viewer.as_str())]);
    let closed = |clean: bool, reason: String| {
        shared.recorder.stream(
            viewer,
            node,
            auction_id,
            StreamWhat::Closed { clean, reason },
        );
    };
    let mut response = match tokio::time::timeout(STREAM_SILENCE, request.send()).await {
        Ok(Ok(r)) if r.status().is_success() => r,
        Ok(Ok(r)) => {
            closed(false, format!("status {}", r.status()));
            return false;
        }
        Ok(Err(e)) => {
            closed(false, format!("connect: {e}"));
            return false;
        }
        Err(_) => {
            closed(false, "no answer".into());
            return false;
        }
    };
    shared
        .recorder
        .stream(viewer, node, auction_id, StreamWhat::Connected);
    let mut buffer = String::new();
    loop {
        let chunk = match tokio::time::timeout(STREAM_SILENCE, response.chunk()).await {
            Err(_) => {
                closed(false, "silent".into());
                return false;
            }
            Ok(Err(e)) => {
                closed(false, format!("read: {e}"));
                return false;
            }
            Ok(Ok(None)) => {
                closed(false, "closed before ended".into());
                return false;
            }
            Ok(Ok(Some(chunk))) => chunk,
        };
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let record: String = buffer.drain(..end + 2).collect();
            let Some(data) = record.lines().find_map(|l| l.strip_prefix("data:")) else {
                continue;
            };
            match parse_frame(data.trim()) {
                Ok(frame) => {
                    let ended = frame.kind == FrameKind::Ended;
                    shared
                        .recorder
                        .stream(viewer, node, auction_id, StreamWhat::Frame(frame));
                    if ended {
                        closed(true, "ended".into());
                        return true;
                    }
                }
                Err(e) => {
                    closed(false, format!("unreadable frame: {e}"));
                    return false;
                }
            }
        }
    }
}

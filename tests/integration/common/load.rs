//! Steady bid load for availability tests (rolling restarts, failover): per group, a few
//! clients bid on that group's auction without stopping, and the harness records when each
//! decision was acknowledged, every answer that was not a decision, and from those the longest
//! stall of each group.
//!
//! Clients send each request to the next node of a shared [`Rotation`], like a load balancer:
//! a client that cannot connect to a node takes it out of the rotation (a passive health check)
//! and tries the next node at once; the test puts the node back once it is ready again (the
//! active check). Every bid is retried with its key until decided, so an unknown outcome
//! (a 504, a dropped connection) is resolved idempotently, and 5xx answers are counted apart:
//! availability tests assert there are none.
//!
//! It knows nothing of the server's internals; which group an auction belongs to comes from
//! the caller.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::Method;

use super::cluster::{next_amount, Ledger, WRITE_ATTEMPT_TIMEOUT_MS};
use super::*;

/// How long a client waits after a 429 before it tries again.
const RATE_LIMITED_BACKOFF_MS: u64 = 50;
/// The most sample bodies of 5xx answers kept for the report.
const SERVER_ERROR_SAMPLES_MAX: usize = 20;

/// The nodes clients may send to, in turn. Shared by every client of a load.
pub struct Rotation {
    nodes: Mutex<BTreeMap<u64, (Api, bool)>>,
}

impl Rotation {
    pub fn new(nodes: Vec<(u64, Api)>) -> Arc<Rotation> {
        let nodes = nodes
            .into_iter()
            .map(|(id, api)| (id, (api, true)))
            .collect();
        Arc::new(Rotation {
            nodes: Mutex::new(nodes),
        })
    }

    /// The node after `*turn` among those in the rotation (all of them when none is).
    fn next(&self, turn: &mut usize) -> (u64, Api) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let serving: Vec<(u64, &Api)> = nodes
            .iter()
            .filter(|(_, (_, serving))| *serving)
            .map(|(id, (api, _))| (*id, api))
            .collect();
        let candidates = if serving.is_empty() {
            nodes.iter().map(|(id, (api, _))| (*id, api)).collect()
        } else {
            serving
        };
        *turn = turn.wrapping_add(1);
        let (id, api) = candidates[*turn % candidates.len()];
        (id, api.clone())
    }

    /// Takes `id` out of the rotation (a client could not connect to it).
    pub fn sideline(&self, id: u64) {
        if let Some(entry) = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            entry.1 = false;
        }
    }

    /// Puts `id` back (the test saw it ready).
    pub fn restore(&self, id: u64) {
        if let Some(entry) = self
            .nodes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(&id)
        {
            entry.1 = true;
        }
    }
}

/// One acknowledged decision: its group, when the client received it, from which node, and
/// whether the bid was accepted (a rejected bid is a decision too).
#[derive(Clone, Copy, Debug)]
pub struct Ack {
    pub group: u32,
    pub at: Instant,
    pub node: u64,
    pub accepted: bool,
}

/// Everything a load saw besides the decisions themselves (those are in the [`Ledger`]).
#[derive(Default)]
struct Tally {
    acks: Vec<Ack>,
    /// 5xx answers by status code.
    server_errors: BTreeMap<u16, usize>,
    server_error_samples: Vec<String>,
    connection_errors: usize,
    /// Requests sent whose answer never came (timeout, dropped connection).
    lost_answers: usize,
    rate_limited: usize,
}

/// The setup of a [`SteadyLoad`].
pub struct LoadConfig {
    /// Prefixes every idempotency key.
    pub round: &'static str,
    /// One auction per group, indexed by group.
    pub auctions: Vec<Value>,
    pub clients_per_group: usize,
    pub seed: u64,
    /// Each client's pause between two bids, which bounds the load a debug build must carry.
    pub think_time: Duration,
    /// How long one bid may take to be decided, retries included.
    pub bid_within: Duration,
}

/// Clients bidding in the background until stopped.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
    tasks: tokio::task::JoinSet<Result<usize, String>>,
    started: Instant,
}

impl SteadyLoad {
    pub fn spawn(config: LoadConfig, rotation: &Arc<Rotation>, ledger: &Arc<Ledger>) -> SteadyLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut tasks = tokio::task::JoinSet::new();
        for (group, auction) in config.auctions.iter().enumerate() {
            for i in 0..config.clients_per_group {
                let client = Client {
                    group: group as u32,
                    bidder: format!("{}-g{group}-c{i}", config.round),
                    auction: auction.clone(),
                    round: config.round,
                    rotation: rotation.clone(),
                    ledger: ledger.clone(),
                    tally: tally.clone(),
                    think_time: config.think_time,
                    bid_within: config.bid_within,
                };
                let seed = config.seed ^ ((group as u64) << 32 | i as u64);
                tasks.spawn(client.run(seed, stop.clone()));
            }
        }
        SteadyLoad {
            stop,
            tally,
            tasks,
            started: Instant::now(),
        }
    }

    /// Decisions acknowledged so far.
    pub fn acked(&self) -> usize {
        self.tally
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .acks
            .len()
    }

    /// Waits (at most `within`) until `count` decisions were acknowledged; panics at once
    /// with a client's failure.
    pub async fn until_acked(&mut self, count: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.acked() < count {
            if let Some(done) = self.tasks.try_join_next() {
                match done {
                    Ok(Ok(_)) => panic!("a load client stopped early"),
                    Ok(Err(failure)) => panic!("a load client failed: {failure}"),
                    Err(e) => panic!("a load client panicked: {e}"),
                }
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {count} bids were acknowledged within {within:?}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }

    /// Stops the clients once their current bids are decided and reports what they saw.
    pub async fn stop(mut self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        while let Some(done) = self.tasks.join_next().await {
            match done {
                Ok(Ok(_)) => {}
                Ok(Err(failure)) => panic!("a load client failed: {failure}"),
                Err(e) => panic!("a load client panicked: {e}"),
            }
        }
        let tally = std::mem::take(&mut *self.tally.lock().unwrap_or_else(|e| e.into_inner()));
        LoadReport {
            started: self.started,
            ended: Instant::now(),
            acks: tally.acks,
            server_errors: tally.server_errors,
            server_error_samples: tally.server_error_samples,
            connection_errors: tally.connection_errors,
            lost_answers: tally.lost_answers,
            rate_limited: tally.rate_limited,
        }
    }
}

/// One client: bids on its group's auction, one bid at a time, until stopped.
struct Client {
    group: u32,
    bidder: String,
    auction: Value,
    round: &'static str,
    rotation: Arc<Rotation>,
    ledger: Arc<Ledger>,
    tally: Arc<Mutex<Tally>>,
    think_time: Duration,
    bid_within: Duration,
}

impl Client {
    async fn run(self, seed: u64, stop: Arc<AtomicBool>) -> Result<usize, String> {
        let mut rng = StdRng::seed_from_u64(seed);
        let token = token(&self.bidder, &["bidder"]);
        let auction_id = self.auction["id"].as_str().expect("auction id").to_owned();
        let increment = money(&self.auction["minIncrement"]);
        let mut price = money(&self.auction["startPrice"]);
        let mut turn = rng.gen_range(0..64usize);
        let mut placed = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let amount = next_amount(&mut rng, price, increment);
            let key = format!("{}-{}-{placed}", self.round, self.bidder);
            let reply = self
                .bid_until_decided(&token, &auction_id, &key, &amount, &mut turn)
                .await?;
            self.ledger.record(&auction_id, &self.bidder, &key, &reply);
            price = money(&reply["currentPrice"]);
            placed += 1;
            tokio::time::sleep(self.think_time).await;
        }
        Ok(placed)
    }

    /// Sends the bid to node after node until one decides it (HTTP 200), recording the
    /// acknowledgement time and every other answer.
    async fn bid_until_decided(
        &self,
        token: &str,
        auction_id: &str,
        key: &str,
        amount: &str,
        turn: &mut usize,
    ) -> Result<Value, String> {
        let started = Instant::now();
        let path = format!("/auctions/{auction_id}/bids");
        let mut attempts: Vec<String> = Vec::new();
        while started.elapsed() < self.bid_within {
            let (node, api) = self.rotation.next(turn);
            let request = api
                .request(Method::POST, &path, Some(token))
                .header("Idempotency-Key", key)
                .json(&json!({ "amount": amount }))
                .timeout(Duration::from_millis(WRITE_ATTEMPT_TIMEOUT_MS));
            let sent = Instant::now();
            match try_send(request).await {
                Ok(resp) if resp.status == 200 => {
                    let at = Instant::now();
                    let reply = resp.json();
                    assert_bid_reply_shape(&reply);
                    let ack = Ack {
                        group: self.group,
                        at,
                        node,
                        accepted: reply["status"] == "accepted",
                    };
                    self.tally().acks.push(ack);
                    return Ok(reply);
                }
                Ok(resp) if resp.status >= 500 => {
                    let sample = format!(
                        "node {node} after {:?}: HTTP {} {}",
                        sent.elapsed(),
                        resp.status,
                        resp.text()
                    );
                    let mut tally = self.tally();
                    *tally.server_errors.entry(resp.status).or_default() += 1;
                    if tally.server_error_samples.len() < SERVER_ERROR_SAMPLES_MAX {
                        tally.server_error_samples.push(sample.clone());
                    }
                    attempts.push(sample);
                }
                Ok(resp) if resp.status == 429 => {
                    self.tally().rate_limited += 1;
                    tokio::time::sleep(Duration::from_millis(RATE_LIMITED_BACKOFF_MS)).await;
                }
                Ok(resp) => {
                    return Err(format!(
                        "bid {key} through node {node}: unexpected HTTP {} {}",
                        resp.status,
                        resp.text()
                    ))
                }
                Err(e) if e.is_connect() => {
                    // Nothing was sent: the node is down. Leave it to the test to restore.
                    self.rotation.sideline(node);
                    self.tally().connection_errors += 1;
                    attempts.push(format!("node {node}: {e}"));
                }
                Err(e) => {
                    // Sent, answer lost: retried with the same key, which is idempotent.
                    self.tally().lost_answers += 1;
                    attempts.push(format!("node {node} after {:?}: {e}", sent.elapsed()));
                }
            }
        }
        Err(format!(
            "bid {key} on {auction_id} was not decided within {:?}; attempts: {attempts:#?}",
            self.bid_within
        ))
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a stopped load saw.
pub struct LoadReport {
    pub started: Instant,
    pub ended: Instant,
    pub acks: Vec<Ack>,
    pub server_errors: BTreeMap<u16, usize>,
    pub server_error_samples: Vec<String>,
    pub connection_errors: usize,
    pub lost_answers: usize,
    pub rate_limited: usize,
}

/// The longest time a group went without an acknowledged decision, and when it ended.
#[derive(Clone, Copy, Debug)]
pub struct Stall {
    pub group: u32,
    pub longest: Duration,
    /// When the decision that ended the stall was acknowledged.
    pub ended_at: Instant,
}

impl LoadReport {
    /// 5xx answers of any kind.
    pub fn server_errors_total(&self) -> usize {
        self.server_errors.values().sum()
    }

    /// Per group, the longest gap between consecutive acknowledged decisions (counted from
    /// the load's start for the first one).
    pub fn stalls(&self, groups: u32) -> Vec<Stall> {
        self.stalls_of(groups, |_| true)
    }

    /// Like [`LoadReport::stalls`], counting accepted bids only.
    pub fn stalls_accepted(&self, groups: u32) -> Vec<Stall> {
        self.stalls_of(groups, |ack| ack.accepted)
    }

    fn stalls_of(&self, groups: u32, counts: impl Fn(&Ack) -> bool) -> Vec<Stall> {
        (0..groups)
            .map(|group| {
                let mut times: Vec<Instant> = self
                    .acks
                    .iter()
                    .filter(|a| a.group == group && counts(a))
                    .map(|a| a.at)
                    .collect();
                times.sort();
                let mut stall = Stall {
                    group,
                    longest: Duration::ZERO,
                    ended_at: self.started,
                };
                let mut previous = self.started;
                for at in times.into_iter().chain([self.ended]) {
                    let gap = at.saturating_duration_since(previous);
                    if gap > stall.longest {
                        stall.longest = gap;
                        stall.ended_at = at;
                    }
                    previous = at;
                }
                stall
            })
            .collect()
    }

    /// A human summary, with stall times relative to `origin`.
    pub fn summary(&self, groups: u32, origin: Instant) -> String {
        let mut out = format!(
            "{} decisions acknowledged; 5xx: {:?} ({} in all); connection errors: {}; lost answers: {}; 429: {}\n",
            self.acks.len(),
            self.server_errors,
            self.server_errors_total(),
            self.connection_errors,
            self.lost_answers,
            self.rate_limited
        );
        let accepted = self.stalls_accepted(groups);
        for (stall, accepted) in self.stalls(groups).into_iter().zip(accepted) {
            let end = stall.ended_at.saturating_duration_since(origin);
            out.push_str(&format!(
                "group {}: longest stall {} ms, ending at +{} ms (between accepted bids: {} ms)\n",
                stall.group,
                stall.longest.as_millis(),
                end.as_millis(),
                accepted.longest.as_millis()
            ));
        }
        for sample in &self.server_error_samples {
            out.push_str(&format!("5xx sample: {sample}\n"));
        }
        out
    }
}

/// Things a test did, with when, to read stalls against.
#[derive(Default)]
pub struct Timeline {
    events: Vec<(Instant, String)>,
}

impl Timeline {
    pub fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        eprintln!("timeline: {what}");
        self.events.push((Instant::now(), what));
    }

    /// Every event, relative to `origin`.
    pub fn render(&self, origin: Instant) -> String {
        self.events
            .iter()
            .map(|(at, what)| {
                format!(
                    "+{:>6} ms  {what}\n",
                    at.saturating_duration_since(origin).as_millis()
                )
            })
            .collect()
    }
}

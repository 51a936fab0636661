//! The clock guard: stamps are only as true as the leader's wall clock, so a node whose clock
//! is not within `--max-clock-offset-ms` of a majority of the voters must not lead.
//!
//! Every node probes every voter over the peer transport (every second; every 200 ms while its
//! clock is not known to be healthy, so a starting node is not held back long) and judges its
//! clock with the majority rule of `clock_offsets`. The verdict is published in a watch: the
//! write path refuses to stamp without a healthy verdict, the deadline timers do not propose,
//! `/readyz` reports it, and this loop gates elections (openraft's `enable_elect`, together
//! with the transfer holds) and hands every group this node leads to another voter. Why this
//! bounds every stamp: ARCHITECTURE.md, *Time*.
//!
//! Groups open with elections off (`RaftSettings::elect_at_start`), and a new cluster is
//! initialized (openraft campaigns at once on `initialize`) only once the clock is healthy, so
//! a node never campaigns before it measured its offset against a majority.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::join_all;
use gavel_raft::transport::Transport;
use gavel_raft::Group;
use tokio::sync::watch;

use crate::clock_offsets::{
    agrees, assess, ClockHealth, ClockNow, OffsetBook, CLOCK_STEP_SLACK_MS,
};
use crate::node::Node;
use crate::raft_ops::{is_leader, members};

/// How often each voter is probed while this node's clock is healthy.
const PROBE_INTERVAL_MS: u64 = 1_000;
/// How often while it is not (starting, skewed, or cut off): a starting node campaigns as soon
/// as a majority is measured.
const PROBE_INTERVAL_UNHEALTHY_MS: u64 = 200;
/// How long one probe may take; a slower answer is useless as an estimate anyway.
const PROBE_TIMEOUT_MS: u64 = 1_000;
/// A verdict older than this is treated as unknown (the guard loop stalled).
const VERDICT_TTL_MS: u64 = 5_000;

/// The guard's state, shared by the loop and the paths that consult it.
pub struct ClockGuard {
    node_id: u64,
    max_offset_ms: i64,
    book: Mutex<OffsetBook>,
    /// The latest verdict and when it was reached (both clocks, to notice a later step).
    verdict: watch::Sender<(ClockHealth, ClockNow)>,
    /// Whether elections may run as far as the clock is concerned (see `Holds`).
    elect_ok: Arc<AtomicBool>,
}

impl ClockGuard {
    pub fn new(node_id: u64, max_offset_ms: u64) -> ClockGuard {
        let max_offset_ms = i64::try_from(max_offset_ms).unwrap_or(i64::MAX);
        let unknown = (ClockHealth::unknown(max_offset_ms), ClockNow::read());
        ClockGuard {
            node_id,
            max_offset_ms,
            book: Mutex::new(OffsetBook::default()),
            verdict: watch::channel(unknown).0,
            elect_ok: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The flag the election holds consult before they re-enable elections.
    pub fn elect_ok(&self) -> Arc<AtomicBool> {
        self.elect_ok.clone()
    }

    /// Why this node's clock may not be trusted for stamps now; `None` when it may: the latest
    /// verdict is healthy, recent, and the wall clock has not stepped since it was reached.
    pub fn problem(&self) -> Option<String> {
        let verdict = self.verdict.borrow();
        let (health, judged) = &*verdict;
        let now = ClockNow::read();
        let age = now.at.saturating_duration_since(judged.at);
        if age > Duration::from_millis(VERDICT_TTL_MS) {
            return Some(format!(
                "clock offset unknown: last judged {} ms ago",
                age.as_millis()
            ));
        }
        let step_ms = now.wall_step_ms(judged.at, judged.wall_ms);
        if step_ms.abs() > CLOCK_STEP_SLACK_MS {
            return Some(format!(
                "clock stepped {step_ms:+} ms since its offset was last judged"
            ));
        }
        health.problem()
    }

    /// Like `problem`, but a problem seen between verdicts (a step since the last one, or
    /// a verdict gone stale) waits at most `within` for the next verdict, which judges on
    /// fresh probes: for decisions worth a moment's wait, such as taking over a group.
    pub async fn problem_after_next_verdict(&self, within: Duration) -> Option<String> {
        let mut verdicts = self.subscribe();
        verdicts.borrow_and_update();
        // No problem now: nothing to wait for.
        self.problem()?;
        // A timeout or a guard gone away leaves the problem as it stands.
        let _ = tokio::time::timeout(within, verdicts.changed()).await;
        self.problem()
    }

    pub fn healthy(&self) -> bool {
        self.problem().is_none()
    }

    /// Whether this node measured `peer`'s clock within the bound (placement only hands a group
    /// to a voter it knows to agree).
    pub fn agrees_with(&self, peer: u64) -> bool {
        let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.estimate(peer, ClockNow::read())
            .is_some_and(|s| agrees(&s, self.max_offset_ms))
    }

    pub fn subscribe(&self) -> watch::Receiver<(ClockHealth, ClockNow)> {
        self.verdict.subscribe()
    }

    /// Waits until the clock is healthy; `false` when the guard went away first.
    pub async fn await_healthy(&self) -> bool {
        let mut verdicts = self.subscribe();
        let healthy = verdicts
            .wait_for(|(health, _)| health.healthy)
            .await
            .is_ok();
        healthy
    }

    /// Probes every voter but this node at once and records what comes back.
    async fn probe(&self, transport: &Transport, voters: &BTreeSet<u64>) {
        let timeout = Duration::from_millis(PROBE_TIMEOUT_MS);
        let peers = voters.iter().filter(|&&v| v != self.node_id);
        let probes =
            peers.map(|&peer| async move { (peer, transport.probe_clock(peer, timeout).await) });
        let results = join_all(probes).await;
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        book.retain(voters);
        for (peer, result) in results {
            match result {
                Ok(sample) => book.record(peer, sample),
                Err(e) => tracing::debug!(peer, error = %e, "clock probe failed"),
            }
        }
    }

    /// Judges the clock against `voters`, publishes the verdict and the gauges.
    fn judge(&self, voters: &BTreeSet<u64>) -> ClockHealth {
        let now = ClockNow::read();
        let estimates = {
            let book = self.book.lock().unwrap_or_else(|e| e.into_inner());
            book.estimates(now)
        };
        let health = assess(self.node_id, voters, &estimates, self.max_offset_ms);
        for (peer, sample) in &estimates {
            metrics::gauge!("gavel_clock_peer_offset_seconds", "peer" => peer.to_string())
                .set(sample.offset_ms as f64 / 1_000.0);
        }
        let offset_s = health.offset_ms.map_or(f64::NAN, |ms| ms as f64 / 1_000.0);
        metrics::gauge!("gavel_clock_offset_seconds").set(offset_s);
        metrics::gauge!("gavel_clock_healthy").set(if health.healthy { 1.0 } else { 0.0 });
        let was = self.verdict.borrow().0.healthy;
        if was != health.healthy {
            match health.problem() {
                None => tracing::info!(offset_ms = ?health.offset_ms, "clock within bounds"),
                Some(why) => tracing::warn!(reason = %why, "clock out of bounds: not leading"),
            }
        }
        self.elect_ok.store(health.healthy, Ordering::Release);
        self.verdict.send_replace((health.clone(), now));
        health
    }
}

/// The guard loop: probe, judge, gate elections, step down while unhealthy.
pub async fn run_clock_guard(node: Weak<Node>, mut stop: watch::Receiver<bool>) {
    let mut stepping_down: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let Some(strong) = node.upgrade() else { return };
        let voters = strong.clock_voters();
        for &voter in &voters {
            strong.learn_peer_addr(voter);
        }
        let guard = &strong.clock;
        guard.probe(&strong.transport, &voters).await;
        let health = guard.judge(&voters);
        for (group, holds) in strong.groups.iter().zip(&strong.holds) {
            holds.gate_elections(group);
        }
        let idle = stepping_down.as_ref().is_none_or(|task| task.is_finished());
        if !health.healthy && idle && leads_any(&strong) {
            stepping_down = Some(tokio::spawn(step_down(strong.clone())));
        }
        drop(strong);
        let pause_ms = if health.healthy {
            PROBE_INTERVAL_MS
        } else {
            PROBE_INTERVAL_UNHEALTHY_MS
        };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(pause_ms)) => {}
            _ = stop.changed() => return,
        }
    }
}

fn leads_any(node: &Node) -> bool {
    node.groups.iter().any(|g| is_leader(g, node.node_id()))
}

/// Hands every group this node leads to another voter, all groups at once.
async fn step_down(node: Arc<Node>) {
    let led = node
        .groups
        .iter()
        .filter(|g| is_leader(g, node.node_id()))
        .cloned();
    join_all(led.map(|group| give_up(&node, group))).await;
}

/// Moves `group`'s leadership to the most caught-up other voter that will take it (a voter
/// whose own clock is bad refuses to campaign).
async fn give_up(node: &Node, group: Arc<Group>) {
    for to in successors(node, &group) {
        if node.clock.healthy() || !is_leader(&group, node.node_id()) {
            return;
        }
        tracing::warn!(
            group = group.id,
            to,
            "clock out of bounds: handing over leadership"
        );
        match node.move_leader(group.id, to, false).await {
            Ok(()) => return,
            Err(e) => tracing::info!(group = group.id, to, error = %e, "hand-over failed"),
        }
    }
}

/// The other voters of `group`, most replicated first.
fn successors(node: &Node, group: &Group) -> Vec<u64> {
    let (voters, _) = members(group);
    let metrics = group.raft.metrics().borrow().clone();
    let matched = |voter: &u64| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(voter).cloned().flatten())
            .map_or(0, |log_id| log_id.index)
    };
    let mut others: Vec<u64> = voters
        .into_iter()
        .filter(|&v| v != node.node_id())
        .collect();
    others.sort_by_key(|v| std::cmp::Reverse(matched(v)));
    others
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard whose last verdict was healthy but was reached before a wall-clock step.
    fn judged_before_a_step() -> ClockGuard {
        let guard = ClockGuard::new(1, 500);
        let alone = BTreeSet::from([1]);
        let health = guard.judge(&alone);
        assert!(health.healthy, "a lone voter is its own majority");
        let now = ClockNow::read();
        let before_the_step = ClockNow {
            at: now.at,
            wall_ms: now.wall_ms - 400,
        };
        guard.verdict.send_replace((health, before_the_step));
        guard
    }

    #[tokio::test]
    async fn a_step_between_verdicts_waits_for_the_next_one() {
        let guard = Arc::new(judged_before_a_step());
        let problem = guard
            .problem()
            .expect("a step since the verdict is a problem");
        // Wall and monotonic readings are cut to whole milliseconds separately, so the step
        // seen can be a millisecond either side of the one made.
        let stepped_ms: i64 = problem
            .strip_prefix("clock stepped +")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|ms| ms.parse().ok())
            .unwrap_or_else(|| panic!("no step in {problem:?}"));
        assert!((399..=401).contains(&stepped_ms), "{problem}");

        // Nobody judges again: the problem stands once the wait is over.
        let waited = guard
            .problem_after_next_verdict(Duration::from_millis(100))
            .await;
        assert!(waited.is_some_and(|p| p.contains("stepped")));

        // A fresh verdict arrives while the caller waits: no problem left.
        let judge = {
            let guard = guard.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                guard.judge(&BTreeSet::from([1]));
            })
        };
        let waited = guard
            .problem_after_next_verdict(Duration::from_secs(5))
            .await;
        assert_eq!(waited, None);
        judge.await.expect("the judging task");
    }
}

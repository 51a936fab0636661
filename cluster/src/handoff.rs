//! Leadership handoff before a node stops: every group this node leads is moved, all groups at
//! once, to a voter that holds (or is closest to holding) the leader's whole log, with the
//! transfer of `membership`. Without it, each step of a rolling restart left the groups the
//! node led without a leader until their followers' election timeouts ran out (about 2.5 s of
//! no writes); a transfer pauses a group's writes only while the target catches up and wins
//! one vote.
//!
//! From the start of a handoff the node is *leaving*: it does not campaign, refuses to be a
//! transfer's target, and placement stops moving groups. The handoff is bounded: a group not
//! handed over within the budget is left to the election that follows the node's exit.
//!
//! Knows the node's groups, their replication metrics and the transfer; nothing of HTTP.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use gavel_raft::Group;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::node::Node;
use crate::raft_ops::{is_leader, members};

/// The longest a handoff may take, in milliseconds: a transfer's whole window (4 s) and a
/// margin. Shutdown gives it the smaller of this and the shutdown grace.
pub const HANDOFF_MS_MAX: u64 = 5_000;

/// What a handoff did: each group this node led and where it went, if anywhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HandoffReport {
    /// `(group, new leader)` for every group handed over.
    pub handed_over: Vec<(u32, u64)>,
    /// Groups this node still led when the handoff gave up.
    pub kept: Vec<u32>,
}

/// Rounds of a handoff: the second one catches a group this node won just as it began
/// leaving (a transfer's campaign already in flight).
const HANDOFF_ROUNDS_MAX: usize = 2;

impl Node {
    /// Marks this node as leaving and hands every group it leads to another voter, within
    /// `budget`. Call once, before the node stops serving.
    pub async fn hand_off_leadership(self: &Arc<Self>, budget: Duration) -> HandoffReport {
        self.leaving.store(true, Ordering::Release);
        for (group, holds) in self.groups.iter().zip(&self.holds) {
            holds.gate_elections(group);
        }
        let started = Instant::now();
        let deadline = started + budget;
        let mut report = HandoffReport::default();
        for _ in 0..HANDOFF_ROUNDS_MAX {
            // A group with no other voter has nowhere to go (a single-node cluster).
            let led: Vec<Arc<Group>> = self
                .groups
                .iter()
                .filter(|g| is_leader(g, self.node_id()) && members(g).0.len() > 1)
                // A core that stopped on an error can transfer nothing (and its metrics still
                // name this node the leader).
                .filter(|g| g.failure().is_none())
                .filter(|g| !report.kept.contains(&g.id))
                .cloned()
                .collect();
            if led.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                report.kept.extend(led.iter().map(|g| g.id));
                break;
            }
            tracing::info!(
                node_id = self.node_id(),
                groups = led.len(),
                budget_ms = budget.as_millis() as u64,
                "handing off leadership before shutdown"
            );
            self.hand_off_round(led, deadline, &mut report).await;
        }
        report.handed_over.sort_unstable();
        report.kept.sort_unstable();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if report.kept.is_empty() {
            tracing::info!(
                node_id = self.node_id(),
                handed_over = report.handed_over.len(),
                elapsed_ms,
                "leadership handed off"
            );
        } else {
            tracing::warn!(
                node_id = self.node_id(),
                handed_over = report.handed_over.len(),
                kept = ?report.kept,
                elapsed_ms,
                "some groups were not handed off; they elect a leader once this node is gone"
            );
        }
        report
    }

    /// Hands `led` over, all groups at once, adding the outcomes to `report`.
    async fn hand_off_round(
        self: &Arc<Self>,
        led: Vec<Arc<Group>>,
        deadline: Instant,
        report: &mut HandoffReport,
    ) {
        let mut transfers = JoinSet::new();
        for group in led {
            let node = self.clone();
            transfers.spawn(async move {
                let to = node.hand_off_group(&group, deadline).await;
                (group.id, to)
            });
        }
        while let Some(done) = transfers.join_next().await {
            match done {
                Ok((group, Some(to))) => report.handed_over.push((group, to)),
                Ok((group, None)) => report.kept.push(group),
                Err(e) => tracing::warn!(error = %e, "a handoff task failed"),
            }
        }
    }

    /// Whether this node is on its way out (see [`Node::hand_off_leadership`]).
    pub(crate) fn leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    /// Moves `group` to the best target that takes it before `deadline`; returns the new leader.
    async fn hand_off_group(&self, group: &Arc<Group>, deadline: Instant) -> Option<u64> {
        let me = self.node_id();
        let targets: Vec<u64> = handoff_targets(me, group)
            .into_iter()
            .filter(|&to| self.clock.agrees_with(to))
            .collect();
        for to in targets {
            if !is_leader(group, me) {
                // Someone else moved it meanwhile (placement, the clock guard).
                return group.raft.metrics().borrow().current_leader;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let started = Instant::now();
            match tokio::time::timeout(left, self.move_leader(group.id, to, false)).await {
                Ok(Ok(())) => {
                    tracing::info!(
                        group = group.id,
                        to,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "handed group leadership over"
                    );
                    return Some(to);
                }
                Ok(Err(e)) => {
                    tracing::warn!(group = group.id, to, error = %e, "handoff to this voter failed")
                }
                Err(_) => tracing::warn!(group = group.id, to, "handoff ran out of time"),
            }
        }
        None
    }
}

/// The voters `group`'s leader `me` may hand it to, best first (see [`rank_targets`]).
fn handoff_targets(me: u64, group: &Group) -> Vec<u64> {
    let metrics = group.raft.metrics().borrow().clone();
    let (voters, _) = members(group);
    let matched: BTreeMap<u64, u64> = metrics
        .replication
        .iter()
        .flatten()
        .filter_map(|(id, log_id)| Some((*id, log_id.as_ref()?.index)))
        .collect();
    let last_log = metrics.last_log_index.unwrap_or(0);
    rank_targets(me, group.id, &voters, last_log, &matched)
}

/// Orders the other voters of a group for a handoff: those that hold the leader's whole log
/// (matched index == the leader's last log index) first, then by how little they lack; among
/// equals, the voter placement prefers for the group first, then the ones after it in turn,
/// so that a handoff rarely makes placement move the group again.
pub(crate) fn rank_targets(
    me: u64,
    group: u32,
    voters: &[u64],
    last_log: u64,
    matched: &BTreeMap<u64, u64>,
) -> Vec<u64> {
    let n = voters.len().max(1);
    let preferred = group as usize % n;
    let turn = |i: usize| (i + n - preferred) % n;
    let mut ranked: Vec<(u64, usize, u64)> = voters
        .iter()
        .enumerate()
        .filter(|(_, &v)| v != me)
        .map(|(i, &v)| {
            let lacking = last_log.saturating_sub(matched.get(&v).copied().unwrap_or(0));
            (lacking, turn(i), v)
        })
        .collect();
    ranked.sort_unstable();
    ranked.into_iter().map(|(_, _, v)| v).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_voters_come_first_then_placement_order() {
        let voters = [1, 2, 3];
        // Node 1 leads group 2 (preferred voter: 3). Both followers hold the whole log.
        let matched = BTreeMap::from([(2, 10), (3, 10)]);
        assert_eq!(rank_targets(1, 2, &voters, 10, &matched), vec![3, 2]);
        // Node 3 lags: the caught-up voter goes first whatever placement prefers.
        let matched = BTreeMap::from([(2, 10), (3, 7)]);
        assert_eq!(rank_targets(1, 2, &voters, 10, &matched), vec![2, 3]);
        // Unknown progress counts as nothing replicated.
        let matched = BTreeMap::from([(3, 4)]);
        assert_eq!(rank_targets(1, 0, &voters, 10, &matched), vec![3, 2]);
    }

    #[test]
    fn the_leader_is_never_its_own_target() {
        let matched = BTreeMap::from([(1, 5), (2, 5)]);
        assert_eq!(rank_targets(1, 0, &[1, 2], 5, &matched), vec![2]);
        assert!(rank_targets(1, 0, &[1], 5, &matched).is_empty());
    }

    #[test]
    fn ties_follow_placement_from_the_preferred_voter_on() {
        let voters = [1, 2, 3, 4, 5];
        let matched: BTreeMap<u64, u64> = voters.iter().map(|&v| (v, 9)).collect();
        // Group 3 prefers voters[3] = 4, then 5, then 1 (the leader), then 2.
        assert_eq!(rank_targets(1, 3, &voters, 9, &matched), vec![4, 5, 2, 3]);
    }
}

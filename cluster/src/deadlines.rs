//! Deadline timers: while this node leads a group with a clock within bounds, it proposes a
//! `Deadline` entry for every auction whose start or end is due.
//!
//! The timer reads the state machine's deadline index rather than keeping its own list, so a
//! new leader needs no hand-over: its first pass proposes everything already overdue (the
//! guard), and no end is missed, only delayed by a failover. A bid stamped after the end is
//! refused by the rules even before the entry lands, so a late timer never lets one through.

use std::sync::Arc;
use std::time::Duration;

use gavel_raft::Group;
use gavel_rules::Command;
use openraft::ServerState;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::membership::Writer;
use crate::node::Node;
use gavel_raft::wall_clock_ms;

/// Most deadline entries proposed concurrently by one group.
pub(crate) const DEADLINE_PROPOSALS_IN_FLIGHT_MAX: usize = 256;
/// Longest sleep between looks at the deadline index when nothing is due sooner.
const IDLE_SLEEP_MS: i64 = 1_000;
/// Pause after a failed proposal or read before trying again.
const RETRY_BACKOFF_MS: u64 = 100;

pub async fn run_deadlines(node: Arc<Node>, group_id: u32, mut stop: watch::Receiver<bool>) {
    let group = node.groups[group_id as usize].clone();
    // Server metrics change only with the vote, the role, the leader or the membership; the
    // full metrics change with every append and apply, which would rescan the deadline index
    // once per entry.
    let mut leadership = group.raft.server_metrics();
    let mut clock = node.clock.subscribe();
    loop {
        if *stop.borrow() {
            return;
        }
        // A leader whose clock is out of bounds proposes nothing until it has stepped down.
        // Judged from the server metrics themselves: openraft publishes them before the full
        // metrics, so `is_leader` could still see the old role right after a change wakes us.
        let leading = {
            let seen = leadership.borrow_and_update();
            seen.state == ServerState::Leader && seen.current_leader == Some(node.node_id())
        };
        if !leading || !node.clock.healthy() {
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() { return },
                changed = clock.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
            continue;
        }
        let now_ms = wall_clock_ms();
        let due = match group
            .state
            .due_deadlines(now_ms, DEADLINE_PROPOSALS_IN_FLIGHT_MAX)
        {
            Ok(due) => due,
            Err(e) => {
                tracing::error!(group = group.id, error = %e, "cannot read the deadline index");
                tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
                continue;
            }
        };
        if !due.is_empty() {
            propose_deadlines(&node, &group, due).await;
            continue;
        }
        let next_ms = group.state.next_deadline().ok().flatten();
        let sleep_ms = next_ms.map_or(IDLE_SLEEP_MS, |next| {
            (next - now_ms).clamp(0, IDLE_SLEEP_MS)
        });
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(sleep_ms as u64)) => {}
            _ = group.observer.deadlines_changed.notified() => {}
            changed = leadership.changed() => if changed.is_err() { return },
            _ = stop.changed() => return,
        }
    }
}

async fn propose_deadlines(node: &Arc<Node>, group: &Arc<Group>, auction_ids: Vec<String>) {
    let mut proposals = JoinSet::new();
    for auction_id in auction_ids {
        let (node, group) = (node.clone(), group.clone());
        proposals.spawn(async move {
            let command = Command::Deadline {
                auction_id: auction_id.clone(),
            };
            (
                auction_id,
                node.propose_here(&group, command, Writer::Deadlines).await,
            )
        });
    }
    let mut failed = false;
    while let Some(done) = proposals.join_next().await {
        if let Ok((auction_id, Err(e))) = done {
            tracing::warn!(group = group.id, auction_id, error = ?e, "deadline proposal failed");
            failed = true;
        }
    }
    if failed {
        tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS)).await;
    }
}

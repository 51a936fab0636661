//! Leader placement: group leaders spread evenly over the voters. Group `g`'s preferred leader
//! is the `(g mod n)`-th of its `n` voters in id order; a node that leads a group it is not
//! preferred for hands the group to the preferred voter once that voter is connected, has
//! replicated the leader's log and has a clock this node measured within bounds (a voter with a
//! bad clock would refuse to campaign after the transfer paused the group's writes). That is
//! also how leaders move back after a node returns.
//!
//! One transfer at a time per node, none in the first seconds after start, and none for a group
//! whose leadership is younger than `LEADERSHIP_STABLE`: right after a failover the new leader
//! serves the waiting writes first, and a flapping node does not cause a storm of transfers. A group an operator
//! moved with `transfer-leader` stays where it was put while that node leads it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::node::Node;
use crate::raft_ops::{is_leader, members};

const PLACEMENT_INTERVAL: Duration = Duration::from_secs(2);
const PLACEMENT_SETTLE: Duration = Duration::from_secs(4);
/// How many entries the preferred voter may trail the leader by and still take over.
const CAUGHT_UP_ENTRIES_MAX: u64 = 16;
/// How long this node must have led a group (in one term) before placement may move it.
const LEADERSHIP_STABLE: Duration = Duration::from_secs(10);

/// Per group: the term this node was last seen leading in, and since when.
type LeadershipAges = BTreeMap<u32, (u64, Instant)>;

pub async fn run_placement(node: Weak<Node>, mut stop: watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(PLACEMENT_SETTLE) => {}
        _ = stop.changed() => return,
    }
    let mut interval = tokio::time::interval(PLACEMENT_INTERVAL);
    let mut ages = LeadershipAges::new();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(node) = node.upgrade() else { return };
        // A node handing its groups off to stop moves nothing more.
        if node.leaving() {
            return;
        }
        if let Some((group, preferred)) = misplaced_group(&node, &mut ages) {
            tracing::info!(
                group,
                to = preferred,
                "moving group leadership to its preferred voter"
            );
            if let Err(e) = node.move_leader(group, preferred, false).await {
                tracing::info!(group, to = preferred, error = %e, "leadership move did not happen");
            }
        }
    }
}

/// The first group this node leads whose preferred voter is ready to take over.
fn misplaced_group(node: &Node, ages: &mut LeadershipAges) -> Option<(u32, u64)> {
    let connected: Vec<u64> = node
        .transport
        .peers()
        .into_iter()
        .filter(|p| p.connected)
        .map(|p| p.node_id)
        .collect();
    node.groups.iter().find_map(|group| {
        let pinned = &node.pinned[group.id as usize];
        if !is_leader(group, node.node_id()) {
            // An operator's choice lasts as long as the leadership it gave.
            pinned.store(false, Ordering::Relaxed);
            ages.remove(&group.id);
            return None;
        }
        let term = group.raft.metrics().borrow().current_term;
        let (led_term, since) = *ages.entry(group.id).or_insert((term, Instant::now()));
        if led_term != term {
            ages.insert(group.id, (term, Instant::now()));
            return None;
        }
        if pinned.load(Ordering::Relaxed) || since.elapsed() < LEADERSHIP_STABLE {
            return None;
        }
        let (voters, _) = members(group);
        let preferred = *voters.get(group.id as usize % voters.len().max(1))?;
        // A voter whose clock this node does not know to agree would refuse to campaign, after
        // the transfer had already paused the group's writes.
        if preferred == node.node_id()
            || !connected.contains(&preferred)
            || !node.clock.agrees_with(preferred)
        {
            return None;
        }
        let metrics = group.raft.metrics().borrow().clone();
        let last_log = metrics.last_log_index.unwrap_or(0);
        let matched = metrics
            .replication
            .as_ref()?
            .get(&preferred)?
            .as_ref()?
            .index;
        (last_log.saturating_sub(matched) <= CAUGHT_UP_ENTRIES_MAX).then_some((group.id, preferred))
    })
}

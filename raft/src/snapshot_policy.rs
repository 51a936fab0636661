//! When a group takes a snapshot. openraft 0.9 counts only entries (`LogsSinceLast`), but a
//! snapshot is the group's whole state, bid log included, and every replica writes it at about
//! the same entry. Counting entries alone, what a snapshot writes grows with the state while
//! the log it lets go of does not: a group of about 700,000 decisions wrote a 130 MB file every
//! 20,000 entries, three replicas at once on one disk, and every log sync waited behind them
//! (one node's bids nearly stopped for 1-3 s at a time).
//!
//! So a group snapshots once `after_entries` entries were applied since its last snapshot *and*
//! it has appended at least as many log bytes since as that snapshot's state took unpacked
//! (files are compressed, about five to one; the copy and its encoding cost by the unpacked
//! size): a state is then copied at most once per as many bytes of log, whatever its size. A group
//! whose state stays small snapshots every `after_entries` entries, as before. openraft's own
//! entry count stays on as the bound, at `BOUND_FACTOR` times `after_entries`, so the log
//! cannot grow for ever. A restarted group takes both counts up where they were: the size of
//! its stored snapshot (`found_snapshot`) and the bytes of the entries its log holds after it.
//! Without them, every big group rewrote its snapshot 20,000 entries after each restart, every
//! replica of it at once after a rolling upgrade.
//!
//! Replicas take turns. The counts above come due at about the same entry on every replica (they
//! apply the same log), so every replica of a group built its snapshot at once: on a machine
//! per node that leaves no majority free of the build, and on one machine three builds of a
//! 130 MB state at once took more CPU than an 80% load left spare (an open loop at 10,000
//! bids/s: p99 190-770 ms around them, about 30 ms otherwise). So a due voter waits for its
//! `Turn`: the log is cut into windows of `after_entries / (voters + 1)` entries, taken by the
//! voters in id order, round and round, and a voter that comes due builds at once inside its
//! own window, else from the start of its next one; so one voter's build starts a window's
//! worth of entries after the one before. Counted in log indexes, turns cannot drift apart; a
//! group that goes idle before a voter's turn comes lets it build anyway once `IDLE_AFTER`
//! passes without a new entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::types::{NodeId, Raft};

/// openraft snapshots on its own after this many times `after_entries` entries.
pub const BOUND_FACTOR: u64 = 8;
/// How often the policy looks at a group.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A due voter whose turn has not come builds anyway once its group applied nothing new for
/// this long: an idle group has no load to keep its builds apart from.
const IDLE_AFTER: Duration = Duration::from_secs(2);

/// The log bytes a group appended since its last snapshot, and that snapshot's size.
#[derive(Debug, Default)]
pub struct SnapshotCost {
    log_bytes_since: AtomicU64,
    last_snapshot_bytes: AtomicU64,
}

impl SnapshotCost {
    /// The log store appended `bytes` of entries.
    pub fn logged(&self, bytes: u64) {
        self.log_bytes_since.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The stored snapshot a restarted group found holds `bytes` unpacked. Ignored once this
    /// process built or installed one (that one is newer).
    pub fn found_snapshot(&self, bytes: u64) {
        let _ = self.last_snapshot_bytes.compare_exchange(
            0,
            bytes,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The log bytes counted since the last snapshot, for `snapshotted` once the copy begun
    /// now is saved.
    pub fn logged_so_far(&self) -> u64 {
        self.log_bytes_since.load(Ordering::Relaxed)
    }

    /// A snapshot of a state of `bytes` (unpacked) was built or installed, covering the
    /// `covered` log bytes counted up to its copy (`logged_so_far` then). What was appended
    /// while it was built stays counted: a hot group's build takes seconds, and forgetting
    /// those bytes would put the next snapshot off by as much.
    pub fn snapshotted(&self, bytes: u64, covered: u64) {
        self.last_snapshot_bytes.store(bytes, Ordering::Relaxed);
        // Saturating: an install since the copy began may have counted down already.
        let _ = self
            .log_bytes_since
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |since| {
                Some(since.saturating_sub(covered))
            });
    }

    /// Whether the log appended since the last snapshot outweighs it.
    pub fn log_outweighs_snapshot(&self) -> bool {
        self.log_bytes_since.load(Ordering::Relaxed)
            >= self.last_snapshot_bytes.load(Ordering::Relaxed)
    }
}

/// Whether a group that applied `since_snapshot` entries since its last snapshot should take
/// one now.
pub fn due(since_snapshot: u64, after_entries: u64, cost: &SnapshotCost) -> bool {
    since_snapshot >= after_entries && cost.log_outweighs_snapshot()
}

/// Which windows of the log are this replica's to start a snapshot in (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Turn {
    /// This replica's place among the group's voters in id order; `None` for a learner, which
    /// no quorum waits for and which builds whenever it is due.
    rank: Option<u64>,
    voters: u64,
}

impl Turn {
    /// The turn of node `id` in a group whose voters are `voters`.
    pub fn of(id: NodeId, voters: impl IntoIterator<Item = NodeId>) -> Turn {
        let mut voters: Vec<NodeId> = voters.into_iter().collect();
        voters.sort_unstable();
        voters.dedup();
        Turn {
            rank: voters
                .iter()
                .position(|voter| *voter == id)
                .map(|at| at as u64),
            voters: voters.len() as u64,
        }
    }

    /// The log index from which a replica that came due with `applied` entries applied may
    /// start its snapshot: `applied` itself inside its own window, else where its next window
    /// starts. A point rather than a window, so that a check that comes late (entries applied
    /// faster than the policy looks) still finds the turn passed instead of missing it.
    pub fn starts_at(&self, applied: u64, after_entries: u64) -> u64 {
        let Some(rank) = self.rank else {
            return applied;
        };
        let window = after_entries / (self.voters + 1);
        if self.voters < 2 || window == 0 {
            return applied;
        }
        let round = window * self.voters;
        let mine = applied - applied % round + rank * window;
        if applied < mine {
            mine
        } else if applied < mine + window {
            applied
        } else {
            mine + round
        }
    }
}

/// Triggers `raft`'s snapshots by the rule above until the group shuts down.
pub async fn run(raft: Raft, after_entries: u64, cost: Arc<SnapshotCost>) {
    let mut metrics = raft.metrics();
    let mut last_applied = 0;
    let mut applied_changed_at = Instant::now();
    // Where this replica's turn starts, from when it came due until it snapshots.
    let mut turn_starts_at: Option<u64> = None;
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if metrics.has_changed().is_err() {
            return;
        }
        let (applied, snapshot, turn) = {
            let m = metrics.borrow_and_update();
            if m.running_state.is_err() {
                return;
            }
            let applied = m.last_applied.map_or(0, |id| id.index);
            let snapshot = m.snapshot.map_or(0, |id| id.index);
            let voters = m.membership_config.membership().voter_ids();
            (applied, snapshot, Turn::of(m.id, voters))
        };
        if applied != last_applied {
            last_applied = applied;
            applied_changed_at = Instant::now();
        }
        if !due(applied.saturating_sub(snapshot), after_entries, &cost) {
            turn_starts_at = None;
            continue;
        }
        let starts_at =
            *turn_starts_at.get_or_insert_with(|| turn.starts_at(applied, after_entries));
        let idle = applied_changed_at.elapsed() >= IDLE_AFTER;
        if (idle || applied >= starts_at) && raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_waits_for_enough_entries_and_as_much_log_as_it_holds() {
        let cost = SnapshotCost::default();
        // Nothing snapshotted yet: the entry count decides.
        assert!(!due(19_999, 20_000, &cost));
        assert!(due(20_000, 20_000, &cost));

        // A 130 MB snapshot: 20,000 entries are not enough until 130 MB of log came with them.
        cost.snapshotted(130_000_000, cost.logged_so_far());
        cost.logged(40_000_000);
        assert!(!due(20_000, 20_000, &cost));
        cost.logged(90_000_000);
        assert!(due(20_000, 20_000, &cost));
        assert!(!due(10_000, 20_000, &cost), "the entry count still applies");

        // A small state snapshots by the entry count, as it always did.
        cost.snapshotted(4_000, cost.logged_so_far());
        cost.logged(5_000);
        assert!(due(20_000, 20_000, &cost));
    }

    #[test]
    fn a_restarted_group_goes_on_from_its_stored_snapshot() {
        let cost = SnapshotCost::default();
        cost.found_snapshot(130_000_000);
        cost.logged(60_000_000);
        assert!(!due(20_000, 20_000, &cost));
        // A snapshot built since is newer than the stored one: a late look at that changes nothing.
        cost.snapshotted(1_000, cost.logged_so_far());
        cost.found_snapshot(130_000_000);
        cost.logged(1_000);
        assert!(due(20_000, 20_000, &cost));
    }

    #[test]
    fn voters_take_turns_window_by_window_in_id_order() {
        // Three voters, snapshots after 20,000 entries: windows of 5,000 entries, a round of
        // 15,000 taken by nodes 2, 7 and 9 in that order.
        let [seven, two, nine] = [7, 2, 9].map(|id| Turn::of(id, [9, 2, 7]));
        // All three come due at the same entry; each starts in its own window.
        assert_eq!(two.starts_at(20_000, 20_000), 30_000);
        assert_eq!(
            seven.starts_at(20_000, 20_000),
            20_000,
            "inside its own window"
        );
        assert_eq!(nine.starts_at(20_000, 20_000), 25_000);
        // Due inside another's window: the next own window, never more than a round away.
        assert_eq!(two.starts_at(16_000, 20_000), 16_000);
        assert_eq!(seven.starts_at(16_000, 20_000), 20_000);
        assert_eq!(nine.starts_at(16_000, 20_000), 25_000);
        assert_eq!(two.starts_at(1_002_500, 20_000), 1_005_000);
    }

    #[test]
    fn a_learner_a_lone_voter_and_a_tiny_window_start_when_due() {
        let learner = Turn::of(4, [1, 2, 3]);
        let alone = Turn::of(1, [1]);
        let tiny = Turn::of(3, [1, 2, 3]);
        for applied in [0, 7, 20_001] {
            assert_eq!(learner.starts_at(applied, 20_000), applied);
            assert_eq!(alone.starts_at(applied, 20_000), applied);
            assert_eq!(tiny.starts_at(applied, 3), applied, "a window of 0 entries");
        }
        assert_eq!(tiny.starts_at(0, 20_000), 10_000);
    }

    #[test]
    fn what_was_logged_while_a_snapshot_was_built_counts_towards_the_next() {
        let cost = SnapshotCost::default();
        cost.logged(100_000_000);
        let at_copy = cost.logged_so_far();
        // The build takes a while; the group goes on appending.
        cost.logged(30_000_000);
        cost.snapshotted(50_000_000, at_copy);
        assert_eq!(cost.logged_so_far(), 30_000_000);
        assert!(!cost.log_outweighs_snapshot());
        cost.logged(20_000_000);
        assert!(cost.log_outweighs_snapshot());
    }
}

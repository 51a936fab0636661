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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::types::Raft;

/// openraft snapshots on its own after this many times `after_entries` entries.
pub const BOUND_FACTOR: u64 = 8;
/// How often the policy looks at a group.
const CHECK_EVERY: Duration = Duration::from_millis(250);

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

/// Triggers `raft`'s snapshots by the rule above until the group shuts down.
pub async fn run(raft: Raft, after_entries: u64, cost: Arc<SnapshotCost>) {
    let mut metrics = raft.metrics();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        if metrics.has_changed().is_err() {
            return;
        }
        let since_snapshot = {
            let m = metrics.borrow_and_update();
            if m.running_state.is_err() {
                return;
            }
            let applied = m.last_applied.map_or(0, |id| id.index);
            let snapshot = m.snapshot.map_or(0, |id| id.index);
            applied.saturating_sub(snapshot)
        };
        if due(since_snapshot, after_entries, &cost) && raft.trigger().snapshot().await.is_err() {
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

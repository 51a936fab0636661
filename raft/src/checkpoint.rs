//! Consistency checkpoints: log entries at which every replica of a group digests its state, so
//! that the replicas can compare their states at the very same point.
//!
//! Raft makes the logs agree, not the states: a state machine that a disk damaged under it
//! (bits flipped in data it had synced, which sled may read back without a word) goes on
//! applying the same entries to a different state, and as leader it would decide bids its own
//! way. Replicas apply the same entries at different times, so a digest taken "now" on each is
//! of different states; a checkpoint is an entry all of them recognise, and each digests the
//! state that entry left.
//!
//! Which entries: those that move the group's clock (the state's stamp, the newest leader stamp
//! applied, which never goes back) into another period of `interval_ms`, shifted per group so
//! that a node's groups do not all digest at once. The clock is part of the replicated state,
//! so every replica picks the same entries, a restarted one or one that installed a snapshot
//! too, and checkpoints need no entry of their own (older versions read the log as it is).

use std::collections::VecDeque;
use std::sync::Mutex;

use gavel_rules::StampMs;
use serde::{Deserialize, Serialize};

/// How many recent checkpoints a group keeps the digests of, for peers that ask late.
const CHECKPOINTS_KEPT: usize = 4;

/// Which entries are checkpoints (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointRule {
    /// 0: no checkpoints.
    interval_ms: u64,
    /// Where this group's periods begin, within `interval_ms`.
    offset_ms: u64,
}

impl CheckpointRule {
    /// Checkpoints every `interval_ms` of leader time in `group` (0: none). Every replica of a
    /// group must use the same interval, or their checkpoints fall on different entries.
    pub fn new(interval_ms: u64, group: u32) -> CheckpointRule {
        // A multiplicative hash spreads consecutive groups over the period.
        let offset_ms = match interval_ms {
            0 => 0,
            _ => u64::from(group).wrapping_mul(0x9E37_79B9_7F4A_7C15) % interval_ms,
        };
        CheckpointRule {
            interval_ms,
            offset_ms,
        }
    }

    /// Whether an entry that moved the group's clock from `clock_before` to `clock_after` is a
    /// checkpoint. A state that never applied a command has no clock yet (`StampMs::MIN`): its
    /// first command is no checkpoint.
    pub fn is_checkpoint(&self, clock_before: StampMs, clock_after: StampMs) -> bool {
        self.interval_ms != 0
            && clock_before != StampMs::MIN
            && self.period_of(clock_before) != self.period_of(clock_after)
    }

    fn period_of(&self, stamp: StampMs) -> i128 {
        (i128::from(stamp) + i128::from(self.offset_ms)).div_euclid(i128::from(self.interval_ms))
    }
}

/// What a replica knows of its state at a checkpoint, as a peer asks for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointDigest {
    /// The digest of the state the checkpoint entry left.
    Digest(u64),
    /// Not there yet: the entry is not applied here, or its digest is still being read.
    Pending,
    /// This replica did not take it (it skipped the entry, or it is no longer kept).
    Unknown,
}

/// A group's recent checkpoints on this replica, newest last.
#[derive(Default)]
pub struct Checkpoints {
    recent: Mutex<VecDeque<(u64, Option<u64>)>>,
}

impl Checkpoints {
    /// The checkpoint at log index `index` is being digested, unless another one still is:
    /// then it is skipped (returns false). A replica catching up applies many checkpoints in a
    /// burst, and only the newest is compared; reading them all at once would take a core each.
    pub(crate) fn begin(&self, index: u64) -> bool {
        if self.reading() {
            return false;
        }
        let mut recent = self.recent();
        recent.push_back((index, None));
        while recent.len() > CHECKPOINTS_KEPT {
            recent.pop_front();
        }
        true
    }

    /// Whether a checkpoint's digest is being read.
    pub fn reading(&self) -> bool {
        self.recent().iter().any(|(_, digest)| digest.is_none())
    }

    /// The checkpoint at `index` has its digest (`None`: it could not be read, so forget it).
    pub(crate) fn finish(&self, index: u64, digest: Option<u64>) {
        let mut recent = self.recent();
        match digest {
            Some(digest) => {
                if let Some(slot) = recent.iter_mut().find(|(kept, _)| *kept == index) {
                    slot.1 = Some(digest);
                }
            }
            None => recent.retain(|(kept, _)| *kept != index),
        }
    }

    /// What this replica knows of checkpoint `index`, with `applied_index` its state's applied
    /// index now.
    pub fn digest_at(&self, index: u64, applied_index: u64) -> CheckpointDigest {
        match self.recent().iter().find(|(kept, _)| *kept == index) {
            Some((_, Some(digest))) => CheckpointDigest::Digest(*digest),
            Some((_, None)) => CheckpointDigest::Pending,
            None if index > applied_index => CheckpointDigest::Pending,
            None => CheckpointDigest::Unknown,
        }
    }

    /// The newest checkpoint whose digest is read: its log index and digest.
    pub fn latest(&self) -> Option<(u64, u64)> {
        self.recent()
            .iter()
            .rev()
            .find_map(|(index, digest)| digest.map(|digest| (*index, digest)))
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, Option<u64>)>> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_where_the_stamp_enters_another_period() {
        let rule = CheckpointRule {
            interval_ms: 1_000,
            offset_ms: 0,
        };
        assert!(!rule.is_checkpoint(1_000, 1_999));
        assert!(rule.is_checkpoint(1_999, 2_000));
        assert!(
            rule.is_checkpoint(1_000, 5_500),
            "periods skipped count once"
        );
        assert!(
            rule.is_checkpoint(-1, 0),
            "stamps before 1970 split the same way"
        );
        assert!(!rule.is_checkpoint(StampMs::MIN, 5_000), "a first command");
        let off = CheckpointRule::new(0, 3);
        assert!(!off.is_checkpoint(0, 1 << 40), "interval 0: none");
    }

    #[test]
    fn groups_begin_their_periods_at_different_times() {
        let offsets: std::collections::BTreeSet<u64> = (0..16)
            .map(|group| CheckpointRule::new(600_000, group).offset_ms)
            .collect();
        assert_eq!(offsets.len(), 16);
        assert!(offsets.iter().all(|offset| *offset < 600_000));
        let rule = CheckpointRule::new(1_000, 5);
        let shifted = 1_000 - rule.offset_ms as i64;
        assert!(rule.is_checkpoint(shifted - 1, shifted));
    }

    #[test]
    fn a_replica_answers_what_it_knows_of_a_checkpoint() {
        let checkpoints = Checkpoints::default();
        assert_eq!(checkpoints.digest_at(10, 5), CheckpointDigest::Pending);
        assert_eq!(checkpoints.digest_at(10, 12), CheckpointDigest::Unknown);
        assert!(checkpoints.begin(10));
        assert_eq!(checkpoints.digest_at(10, 12), CheckpointDigest::Pending);
        assert_eq!(checkpoints.latest(), None);
        assert!(!checkpoints.begin(11), "one read at a time");
        assert_eq!(checkpoints.digest_at(11, 12), CheckpointDigest::Unknown);
        checkpoints.finish(10, Some(77));
        assert_eq!(checkpoints.digest_at(10, 12), CheckpointDigest::Digest(77));
        assert_eq!(checkpoints.latest(), Some((10, 77)));
        assert!(checkpoints.begin(20));
        checkpoints.finish(20, None);
        assert_eq!(checkpoints.digest_at(20, 25), CheckpointDigest::Unknown);
        assert_eq!(checkpoints.latest(), Some((10, 77)));
        for index in [30, 40, 50, 60] {
            assert!(checkpoints.begin(index));
            checkpoints.finish(index, Some(index));
        }
        assert_eq!(
            checkpoints.digest_at(10, 60),
            CheckpointDigest::Unknown,
            "no longer kept"
        );
        assert_eq!(checkpoints.latest(), Some((60, 60)));
    }
}

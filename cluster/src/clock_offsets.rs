//! What this node knows of its clock's offset from its peers', as pure functions of the probe
//! samples: the recent samples per peer (bounded), one estimate per peer, and the verdict on
//! this node's clock (the majority rule). No IO and no clock: "now" is an argument.
//!
//! The rule, after CockroachDB's maximum clock offset: a peer agrees with this node when the
//! whole uncertainty interval of its estimate lies within `max_offset_ms` of zero. This node's
//! clock is healthy when the voters that agree with it (itself included, when it is a voter) are
//! a majority of the voters. A voter without a fresh estimate does not agree, so a node that
//! has not yet measured a majority is not healthy.
//!
//! A sample only counts while it still describes the clocks: it is fresh (`SAMPLE_TTL_MS`),
//! this node's wall clock has not stepped since it was taken (its wall and monotonic clocks
//! advanced alike), and no later sample of the same peer contradicts it (two samples of an
//! unchanged offset have overlapping intervals; disjoint ones mean one of the clocks stepped).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use gavel_raft::ClockSample;

/// Samples kept per peer; the oldest goes first.
pub const SAMPLES_PER_PEER_MAX: usize = 8;
/// Samples older than this do not count: a peer not heard from lately is unmeasured.
pub const SAMPLE_TTL_MS: u64 = 5_000;
/// How far this node's wall clock may drift from its monotonic clock (NTP slewing, reading
/// jitter) before it counts as a step that voids earlier samples and verdicts.
pub const CLOCK_STEP_SLACK_MS: i64 = 50;

/// This node's two clocks read together.
#[derive(Clone, Copy, Debug)]
pub struct ClockNow {
    pub at: Instant,
    pub wall_ms: i64,
}

/// A paired reading whose two monotonic reads are further apart than this was interrupted
/// (the thread was preempted between them) and is taken again.
const PAIRED_READ_GAP_MAX: Duration = Duration::from_millis(2);
/// Attempts at a tight paired reading before the tightest one is used.
const PAIRED_READ_ATTEMPTS: usize = 8;

impl ClockNow {
    /// Both clocks, read as nearly together as the scheduler allows. A thread preempted
    /// between the two reads would otherwise pair a wall time with an older monotonic one, and
    /// a later comparison would see a "step" as long as the preemption (hundreds of ms on a
    /// loaded machine), enough to refuse a leader its stamps.
    pub fn read() -> ClockNow {
        Self::read_with(Instant::now, gavel_raft::wall_clock_ms)
    }

    fn read_with(mut mono: impl FnMut() -> Instant, mut wall: impl FnMut() -> i64) -> ClockNow {
        let mut read_once = || {
            let before = mono();
            let wall_ms = wall();
            let gap = mono().saturating_duration_since(before);
            let at = before + gap / 2;
            (gap, ClockNow { at, wall_ms })
        };
        let mut tightest = read_once();
        for _ in 1..PAIRED_READ_ATTEMPTS {
            if tightest.0 <= PAIRED_READ_GAP_MAX {
                break;
            }
            let next = read_once();
            if next.0 < tightest.0 {
                tightest = next;
            }
        }
        tightest.1
    }

    /// How far the wall clock moved, beyond what the monotonic clock did, since it read
    /// `then_wall_ms` at `then` (positive: stepped forward).
    pub fn wall_step_ms(&self, then: Instant, then_wall_ms: i64) -> i64 {
        let elapsed_ms =
            i64::try_from(self.at.saturating_duration_since(then).as_millis()).unwrap_or(i64::MAX);
        self.wall_ms
            .saturating_sub(then_wall_ms)
            .saturating_sub(elapsed_ms)
    }

    fn still_describes(&self, sample: &ClockSample) -> bool {
        let fresh = self.at.saturating_duration_since(sample.taken_at)
            <= Duration::from_millis(SAMPLE_TTL_MS);
        let step_ms = self.wall_step_ms(sample.taken_at, sample.local_ms);
        fresh && step_ms.abs() <= CLOCK_STEP_SLACK_MS
    }
}

/// Whether two samples of one peer can describe the same offset (their intervals overlap).
fn consistent(a: &ClockSample, b: &ClockSample) -> bool {
    let gap = a.offset_ms.saturating_sub(b.offset_ms).unsigned_abs();
    gap <= a
        .uncertainty_ms
        .unsigned_abs()
        .saturating_add(b.uncertainty_ms.unsigned_abs())
}

/// The recent probe samples of every peer this node measures.
#[derive(Debug, Default)]
pub struct OffsetBook {
    peers: BTreeMap<u64, VecDeque<ClockSample>>,
}

impl OffsetBook {
    /// Adds a sample; earlier samples it contradicts (a clock stepped since) are dropped.
    pub fn record(&mut self, peer: u64, sample: ClockSample) {
        let samples = self.peers.entry(peer).or_default();
        samples.retain(|old| consistent(old, &sample));
        if samples.len() == SAMPLES_PER_PEER_MAX {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Forgets every peer not in `keep` (no longer a member), so the book stays bounded.
    pub fn retain(&mut self, keep: &BTreeSet<u64>) {
        self.peers.retain(|peer, _| keep.contains(peer));
    }

    /// The estimate of `peer`'s offset: of its samples that still count (see the module doc),
    /// the one with the least uncertainty (the least delayed exchange, as NTP's clock filter
    /// picks), or `None`.
    pub fn estimate(&self, peer: u64, now: ClockNow) -> Option<ClockSample> {
        self.peers
            .get(&peer)?
            .iter()
            .filter(|s| now.still_describes(s))
            .min_by_key(|s| (s.uncertainty_ms, std::cmp::Reverse(s.taken_at)))
            .copied()
    }

    /// The estimate of every peer that has one.
    pub fn estimates(&self, now: ClockNow) -> BTreeMap<u64, ClockSample> {
        self.peers
            .keys()
            .filter_map(|&peer| Some((peer, self.estimate(peer, now)?)))
            .collect()
    }
}

/// Whether an estimate proves `peer`'s clock within `max_offset_ms` of this node's.
pub fn agrees(sample: &ClockSample, max_offset_ms: i64) -> bool {
    sample
        .offset_ms
        .unsigned_abs()
        .saturating_add(sample.uncertainty_ms.unsigned_abs())
        <= max_offset_ms.unsigned_abs()
}

/// The verdict on this node's clock against the voters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockHealth {
    pub healthy: bool,
    /// This node's clock minus the majority's (the median over the measured voters, itself at
    /// zero), in ms; `None` until a majority is measured.
    pub offset_ms: Option<i64>,
    /// Voters whose clocks agree with this node's, itself included.
    pub agreeing: usize,
    /// Voters with a fresh estimate, itself included.
    pub measured: usize,
    pub voters: usize,
    pub max_offset_ms: i64,
}

impl ClockHealth {
    /// Before anything is known: not healthy.
    pub fn unknown(max_offset_ms: i64) -> ClockHealth {
        ClockHealth {
            healthy: false,
            offset_ms: None,
            agreeing: 0,
            measured: 0,
            voters: 0,
            max_offset_ms,
        }
    }

    pub fn majority(&self) -> usize {
        self.voters / 2 + 1
    }

    /// Why the clock is not healthy, for `/readyz` and refusals; `None` when it is.
    pub fn problem(&self) -> Option<String> {
        if self.healthy {
            return None;
        }
        let max = self.max_offset_ms;
        Some(match self.offset_ms {
            _ if self.voters == 0 => {
                "clock offset unmeasured: this node knows no voters yet".to_owned()
            }
            Some(offset) => format!(
                "clock offset {offset:+} ms from the majority of voters exceeds \
                 --max-clock-offset-ms {max} (agrees with {} of {} voters, {} needed)",
                self.agreeing,
                self.voters,
                self.majority()
            ),
            None => format!(
                "clock offset unmeasured: {} of {} voters measured, {} needed \
                 (--max-clock-offset-ms {max})",
                self.measured,
                self.voters,
                self.majority()
            ),
        })
    }
}

/// The majority rule (see the module doc) for node `me` among `voters`.
pub fn assess(
    me: u64,
    voters: &BTreeSet<u64>,
    estimates: &BTreeMap<u64, ClockSample>,
    max_offset_ms: i64,
) -> ClockHealth {
    let is_voter = voters.contains(&me);
    // This node's clock minus each measured voter's (its own: zero).
    let mut own_offsets: Vec<i64> = voters
        .iter()
        .filter(|&&v| v != me)
        .filter_map(|v| estimates.get(v))
        .map(|s| s.offset_ms.saturating_neg())
        .collect();
    let agreeing_peers = voters
        .iter()
        .filter(|&&v| v != me)
        .filter_map(|v| estimates.get(v))
        .filter(|s| agrees(s, max_offset_ms))
        .count();
    if is_voter {
        own_offsets.push(0);
    }
    let mut health = ClockHealth {
        healthy: false,
        offset_ms: None,
        agreeing: agreeing_peers + usize::from(is_voter),
        measured: own_offsets.len(),
        voters: voters.len(),
        max_offset_ms,
    };
    health.healthy = health.voters > 0 && health.agreeing >= health.majority();
    if health.measured >= health.majority() && health.voters > 0 {
        health.offset_ms = Some(median(&mut own_offsets));
    }
    health
}

/// The median (the mean of the middle two for an even count). `values` must not be empty.
fn median(values: &mut [i64]) -> i64 {
    values.sort_unstable();
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        // Halves first: no overflow whatever the values.
        values[mid - 1] / 2 + values[mid] / 2 + (values[mid - 1] % 2 + values[mid] % 2) / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: i64 = 500;
    /// The wall clock (ms) at the base instant of every test.
    const WALL0: i64 = 1_764_547_200_000;

    fn sample(offset_ms: i64, uncertainty_ms: i64, taken_at: Instant) -> ClockSample {
        ClockSample {
            offset_ms,
            uncertainty_ms,
            taken_at,
            local_ms: WALL0,
        }
    }

    /// `ms` after `t0` on both clocks, the wall clock having stepped by `step_ms` on the way.
    fn at(t0: Instant, ms: u64, step_ms: i64) -> ClockNow {
        ClockNow {
            at: t0 + Duration::from_millis(ms),
            wall_ms: WALL0 + ms as i64 + step_ms,
        }
    }

    /// A sample taken `ms` after `t0` (on a steady local clock).
    fn sample_at(offset_ms: i64, uncertainty_ms: i64, t0: Instant, ms: u64) -> ClockSample {
        ClockSample {
            local_ms: WALL0 + ms as i64,
            ..sample(offset_ms, uncertainty_ms, t0 + Duration::from_millis(ms))
        }
    }

    /// A scripted pair of clocks: each wall read happens `preempted_ms[i]` after the
    /// monotonic read before it (the thread was preempted that long), then the next read.
    fn scripted_read(t0: Instant, preempted_ms: &[u64]) -> ClockNow {
        let elapsed_ms = std::cell::Cell::new(0);
        let attempt = std::cell::Cell::new(0);
        ClockNow::read_with(
            || t0 + Duration::from_millis(elapsed_ms.get()),
            || {
                let preempted = preempted_ms.get(attempt.get()).copied().unwrap_or(0);
                attempt.set(attempt.get() + 1);
                elapsed_ms.set(elapsed_ms.get() + preempted);
                WALL0 + elapsed_ms.get() as i64
            },
        )
    }

    #[test]
    fn a_reading_interrupted_between_its_clocks_is_taken_again() {
        let t0 = Instant::now();
        let steady = scripted_read(t0, &[]);
        assert_eq!(steady.wall_step_ms(t0, WALL0), 0);
        // Preempted for 355 ms between the reads, then not: the second attempt is used, so the
        // reading shows no step.
        let retried = scripted_read(t0, &[355]);
        assert_eq!(retried.wall_step_ms(t0, WALL0), 0, "{retried:?}");
        assert_eq!(retried.wall_ms, WALL0 + 355);
        // Preempted on every attempt: the tightest reading, its instant the pair's midpoint, so
        // the apparent step is at most half the gap.
        let always = scripted_read(t0, &[400, 300, 350, 300, 500, 320, 310, 330]);
        let apparent = always.wall_step_ms(t0, WALL0);
        assert!(
            apparent.abs() <= 150,
            "{always:?} shows a step of {apparent} ms"
        );
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn readings(pairs: &[(u64, i64)]) -> BTreeMap<u64, ClockSample> {
        let now = Instant::now();
        pairs
            .iter()
            .map(|&(peer, offset)| (peer, sample(offset, 2, now)))
            .collect()
    }

    #[test]
    fn a_peer_agrees_only_when_the_whole_interval_is_within_the_bound() {
        let now = Instant::now();
        assert!(agrees(&sample(0, 0, now), MAX));
        assert!(agrees(&sample(-480, 20, now), MAX));
        assert!(!agrees(&sample(480, 21, now), MAX));
        assert!(!agrees(&sample(5_000, 2, now), MAX));
        assert!(!agrees(&sample(i64::MIN, i64::MAX, now), MAX));
    }

    #[test]
    fn the_estimate_is_the_least_uncertain_fresh_sample() {
        let t0 = Instant::now();
        let mut book = OffsetBook::default();
        book.record(2, sample_at(100, 5, t0, 0));
        book.record(2, sample_at(300, 300, t0, 1_000));
        book.record(2, sample_at(110, 10, t0, 2_000));
        let now = at(t0, 3_000, 0);
        assert_eq!(book.estimate(2, now).map(|s| s.offset_ms), Some(100));
        // Once the best sample is older than the TTL, the next best counts.
        let later = at(t0, SAMPLE_TTL_MS + 500, 0);
        assert_eq!(book.estimate(2, later).map(|s| s.offset_ms), Some(110));
        // All stale: no estimate.
        assert_eq!(book.estimate(2, at(t0, 60_000, 0)), None);
        assert_eq!(book.estimate(3, now), None);
    }

    #[test]
    fn a_contradicting_sample_voids_the_earlier_ones() {
        // The peer's clock steps 5 s forward between the second and third probe.
        let t0 = Instant::now();
        let mut book = OffsetBook::default();
        book.record(2, sample_at(0, 3, t0, 0));
        book.record(2, sample_at(2, 40, t0, 1_000));
        book.record(2, sample_at(5_000, 40, t0, 2_000));
        assert_eq!(book.peers[&2].len(), 1);
        let now = at(t0, 2_100, 0);
        assert_eq!(book.estimate(2, now).map(|s| s.offset_ms), Some(5_000));
        assert!(!assess(1, &set(&[1, 2]), &book.estimates(now), MAX).healthy);
    }

    #[test]
    fn a_step_of_the_local_wall_clock_voids_earlier_samples() {
        let t0 = Instant::now();
        let mut book = OffsetBook::default();
        book.record(2, sample_at(10, 3, t0, 0));
        let steady = at(t0, 1_000, CLOCK_STEP_SLACK_MS);
        assert_eq!(book.estimate(2, steady).map(|s| s.offset_ms), Some(10));
        // This node's wall clock jumped 3 s back since the sample: it no longer describes it.
        let stepped = at(t0, 1_000, -3_000);
        assert_eq!(stepped.wall_step_ms(t0, WALL0), -3_000);
        assert_eq!(book.estimate(2, stepped), None);
        assert_eq!(
            book.estimate(2, at(t0, 1_000, CLOCK_STEP_SLACK_MS + 1)),
            None
        );
    }

    #[test]
    fn the_book_is_bounded_per_peer_and_forgets_former_members() {
        let t0 = Instant::now();
        let mut book = OffsetBook::default();
        for n in 0..100 {
            book.record(2, sample_at(n, 1_000 - n, t0, 0));
            book.record(3, sample_at(n, 100, t0, 0));
        }
        assert_eq!(book.peers[&2].len(), SAMPLES_PER_PEER_MAX);
        // The least uncertain of the kept (newest) samples.
        let now = at(t0, 0, 0);
        assert_eq!(book.estimate(2, now).map(|s| s.offset_ms), Some(99));
        book.retain(&set(&[2]));
        let peers: Vec<u64> = book.estimates(now).keys().copied().collect();
        assert_eq!(peers, [2]);
    }

    #[test]
    fn a_node_ahead_of_both_peers_is_unhealthy_and_they_are_not() {
        let voters = set(&[1, 2, 3]);
        // Node 3 runs 5 s ahead: both peers read 5 s behind it.
        let three = assess(3, &voters, &readings(&[(1, -5_000), (2, -4_990)]), MAX);
        assert!(!three.healthy);
        assert_eq!(three.offset_ms, Some(4_990));
        assert_eq!((three.agreeing, three.measured), (1, 3));
        let why = three.problem().expect("a problem");
        assert!(why.contains("+4990 ms") && why.contains("1 of 3"), "{why}");
        // Node 1 sees node 3 ahead and node 2 with it: a majority agrees.
        let one = assess(1, &voters, &readings(&[(2, 10), (3, 5_000)]), MAX);
        assert!(one.healthy);
        assert_eq!(one.offset_ms, Some(-10));
        assert_eq!(one.problem(), None);
    }

    #[test]
    fn nothing_is_healthy_before_a_majority_is_measured() {
        let voters = set(&[1, 2, 3]);
        let alone = assess(1, &voters, &BTreeMap::new(), MAX);
        assert!(!alone.healthy);
        assert_eq!(alone.offset_ms, None);
        assert!(alone
            .problem()
            .expect("a problem")
            .contains("1 of 3 voters measured"));
        // One peer measured and agreeing: 2 of 3.
        assert!(assess(1, &voters, &readings(&[(2, 30)]), MAX).healthy);
        // Five voters, two measured: 3 of 5 agree.
        let five = set(&[1, 2, 3, 4, 5]);
        assert!(!assess(1, &five, &readings(&[(2, 0)]), MAX).healthy);
        assert!(assess(1, &five, &readings(&[(2, 0), (4, -100)]), MAX).healthy);
        // A reading from a non-voter counts for nothing.
        assert!(!assess(1, &voters, &readings(&[(9, 0)]), MAX).healthy);
    }

    #[test]
    fn a_single_voter_is_its_own_majority_and_a_stranger_has_none() {
        assert!(assess(1, &set(&[1]), &BTreeMap::new(), MAX).healthy);
        assert_eq!(
            assess(1, &set(&[1]), &BTreeMap::new(), MAX).offset_ms,
            Some(0)
        );
        let nobody = assess(4, &BTreeSet::new(), &BTreeMap::new(), MAX);
        assert!(!nobody.healthy);
        assert!(nobody.problem().expect("a problem").contains("no voters"));
        // A learner needs a majority of the voters without counting itself.
        let learner = assess(4, &set(&[1, 2, 3]), &readings(&[(1, 0), (2, 0)]), MAX);
        assert!(learner.healthy);
        let half = assess(4, &set(&[1, 2, 3]), &readings(&[(1, 0), (2, 900)]), MAX);
        assert!(!half.healthy);
    }

    #[test]
    fn two_voters_that_disagree_are_both_unhealthy() {
        let voters = set(&[1, 2]);
        assert!(!assess(1, &voters, &readings(&[(2, 800)]), MAX).healthy);
        assert!(!assess(2, &voters, &readings(&[(1, -800)]), MAX).healthy);
        assert_eq!(
            assess(1, &voters, &readings(&[(2, 800)]), MAX).offset_ms,
            Some(-400)
        );
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3]), 3);
        assert_eq!(median(&mut [5, 1, 3]), 3);
        assert_eq!(median(&mut [0, -5_000]), -2_500);
        assert_eq!(median(&mut [i64::MAX, i64::MAX]), i64::MAX);
        assert_eq!(median(&mut [i64::MIN, i64::MIN]), i64::MIN);
    }
}

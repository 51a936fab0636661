//! The node's wall clock, read in one place: the group leader stamps proposals with it, deadline
//! timers compare against it, end-event lateness is measured with it, and clock probes carry it
//! to peers. The auction rules never read it: they decide with the stamps in the log.
//!
//! `ClockSample` is one probe's estimate of a peer's offset; how samples are combined into a
//! verdict on this node's clock is the cluster layer's business.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gavel_rules::StampMs;

pub fn wall_clock_ms() -> StampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One exchange of wall-clock readings with a peer: this node read `sent_ms` and sent a probe,
/// the peer answered with its own reading, and the answer arrived one round trip later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClockSample {
    /// The peer's wall clock minus this node's, in ms: positive when the peer runs ahead.
    pub offset_ms: i64,
    /// Half the round trip, in ms: the true offset lies within `offset_ms ± uncertainty_ms`.
    pub uncertainty_ms: i64,
    /// When the answer arrived, on this node's monotonic clock.
    pub taken_at: Instant,
    /// This node's wall clock at `taken_at` (the send reading plus the round trip), so a later
    /// step of the local wall clock can be told from the monotonic clock and the sample dropped.
    pub local_ms: StampMs,
}

impl ClockSample {
    /// The estimate from one exchange. The peer read its clock at some instant between our send
    /// and our receipt, so `remote - local` at that instant lies in
    /// `[remote - (sent + round trip), remote - sent]`: the midpoint is the estimate and half the
    /// width its uncertainty, whatever the split of the delay between the two directions.
    ///
    /// The receipt time is `sent_ms` plus the round trip measured on the monotonic clock, so a
    /// step of the local wall clock during the probe does not distort the estimate.
    pub fn from_exchange(
        sent_ms: StampMs,
        round_trip_ms: i64,
        remote_ms: StampMs,
        taken_at: Instant,
    ) -> ClockSample {
        let round_trip_ms = round_trip_ms.max(0);
        let midpoint_ms = sent_ms.saturating_add(round_trip_ms / 2);
        ClockSample {
            offset_ms: remote_ms.saturating_sub(midpoint_ms),
            // Rounded up, so the interval always covers the odd millisecond.
            uncertainty_ms: round_trip_ms - round_trip_ms / 2,
            taken_at,
            local_ms: sent_ms.saturating_add(round_trip_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_is_remote_minus_the_midpoint_of_the_exchange() {
        let now = Instant::now();
        // Sent at 1000, answered after 40 ms, the peer read 1520: 500 ahead of our 1020.
        let ahead = ClockSample::from_exchange(1_000, 40, 1_520, now);
        assert_eq!((ahead.offset_ms, ahead.uncertainty_ms), (500, 20));
        // The same exchange with the peer 3 s behind.
        let behind = ClockSample::from_exchange(1_000, 40, -1_980, now);
        assert_eq!((behind.offset_ms, behind.uncertainty_ms), (-3_000, 20));
        // An odd round trip: the interval [remote - 1041, remote - 1000] is covered.
        let odd = ClockSample::from_exchange(1_000, 41, 1_020, now);
        assert_eq!((odd.offset_ms, odd.uncertainty_ms), (0, 21));
        assert!(odd.offset_ms - odd.uncertainty_ms <= 1_020 - 1_041);
        assert!(odd.offset_ms + odd.uncertainty_ms >= 1_020 - 1_000);
    }

    #[test]
    fn the_interval_holds_the_true_offset_wherever_the_peer_read_its_clock() {
        let now = Instant::now();
        let true_offset = 250;
        for reply_after_ms in [0, 7, 30, 59, 60] {
            let remote = 10_000 + reply_after_ms + true_offset;
            let sample = ClockSample::from_exchange(10_000, 60, remote, now);
            assert!(
                (sample.offset_ms - true_offset).abs() <= sample.uncertainty_ms,
                "{sample:?} misses {true_offset} (peer read at +{reply_after_ms} ms)"
            );
        }
    }

    #[test]
    fn the_sample_remembers_the_local_reading_at_receipt() {
        let sample = ClockSample::from_exchange(1_000, 40, 1_520, Instant::now());
        assert_eq!(sample.local_ms, 1_040);
    }

    #[test]
    fn hostile_readings_saturate_instead_of_overflowing() {
        let now = Instant::now();
        let sample = ClockSample::from_exchange(i64::MAX, i64::MAX, i64::MIN, now);
        assert_eq!(sample.offset_ms, i64::MIN);
        let negative = ClockSample::from_exchange(0, -5, 0, now);
        assert_eq!((negative.offset_ms, negative.uncertainty_ms), (0, 0));
    }
}

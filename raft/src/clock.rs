//! The node's wall clock, read in one place: the group leader stamps proposals with it, deadline
//! timers compare against it, and end-event lateness is measured with it. The auction rules
//! never read it: they decide with the stamps in the log.

use std::time::{SystemTime, UNIX_EPOCH};

use gavel_rules::StampMs;

pub fn wall_clock_ms() -> StampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

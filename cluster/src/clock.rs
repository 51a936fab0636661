//! The node's wall clock, read in one place: proposals are stamped with it and deadline timers
//! compare against it. The state machine never reads it.

use std::time::{SystemTime, UNIX_EPOCH};

use gavel_rules::StampMs;

pub fn wall_clock_ms() -> StampMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

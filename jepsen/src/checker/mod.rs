//! Checkers: pure functions from a `History` to a `Verdict`, one module per promise.

use serde::Serialize;

use crate::history::History;

/// Whether a promise held in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Validity {
    Valid,
    Invalid,
    /// The history does not hold enough to decide (e.g. a replica could not be read).
    Unknown,
}

/// One checker's judgement of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub checker: &'static str,
    pub validity: Validity,
    /// The violations found (bounded), each naming the auction / op ids involved.
    pub problems: Vec<String>,
    /// Measurements worth printing even when valid (e.g. the worst end lateness).
    pub notes: Vec<String>,
}

/// Every checker, in a fixed order.
pub fn check_all(history: &History) -> Vec<Verdict> {
    let _ = history;
    Vec::new()
}

//! Checkers: pure functions from a `History` to a `Verdict`, one module per promise.
//!
//! Each checker owns one promise of DESIGN.md and knows nothing of how the history was
//! recorded (no HTTP, no processes, no clock). The model the linearizability checker uses is an
//! independent implementation of the auction rules: the checkers must not depend on the
//! product's crates, or a bug in the rules would be judged by itself.
//!
//! Soundness first: a checker that cannot decide says `Unknown`; `Invalid` is reserved for a
//! history no correct system could have produced.

use serde::Serialize;

use crate::history::History;

pub mod convergence;
pub mod idempotency;
pub mod linearizable;
pub mod no_lost_writes;
pub mod punctuality;
pub mod streams;
mod support;
#[cfg(test)]
mod testkit;

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
    vec![
        linearizable::check(history),
        no_lost_writes::check(history),
        idempotency::check(history),
        punctuality::check(history),
        convergence::check(history),
        streams::check(history),
    ]
}

//! The library half of the fault suite: the recorded history (`history`) and the checkers that
//! judge it (`checker`). Both are pure: no IO, no clock, no processes. The binary
//! (`src/main.rs` and `src/harness/`) runs the cluster, the nemeses and the workload, records a
//! `History` and hands it to the checkers.
//!
//! Layout:
//! - `history`: the events of a run (operations as invoke then ok/fail/info, nemesis faults,
//!   stream frames) and the final state read from every replica after healing.
//! - `checker`: one module per promise (linearizability, lost writes, idempotency, punctuality,
//!   convergence, streams), each a function from `&History` to a `Verdict`.

pub mod checker;
pub mod history;

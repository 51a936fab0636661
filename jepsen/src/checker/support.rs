//! Small helpers every checker shares: a bounded list of problems that turns into a `Verdict`,
//! and the readable replicas of the final state. Knows nothing of any one promise.

use crate::history::{Call, FinalState, NodeId, OpResult, Operation, Phase, ReplicaState};

use super::{Validity, Verdict};

/// The most problems one verdict lists; the rest are only counted, so that a badly broken run
/// still prints a report a human can read.
pub const PROBLEMS_MAX: usize = 20;

/// Collects a checker's findings and decides its verdict.
#[derive(Debug, Default)]
pub struct Findings {
    problems: Vec<String>,
    problems_omitted: usize,
    /// Why the checker could not decide some part of the history (kept as notes).
    unknowns: Vec<String>,
    notes: Vec<String>,
}

impl Findings {
    /// A violation: the history could not come from a correct system.
    pub fn problem(&mut self, text: String) {
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(text);
        } else {
            self.problems_omitted += 1;
        }
    }

    /// Something the checker could not decide; the verdict is `Unknown` unless a problem was found.
    pub fn unknown(&mut self, text: String) {
        if self.unknowns.len() < PROBLEMS_MAX {
            self.unknowns.push(text);
        }
    }

    pub fn note(&mut self, text: String) {
        self.notes.push(text);
    }

    pub fn into_verdict(self, checker: &'static str) -> Verdict {
        let validity = if !self.problems.is_empty() {
            Validity::Invalid
        } else if !self.unknowns.is_empty() {
            Validity::Unknown
        } else {
            Validity::Valid
        };
        let mut notes = self.notes;
        if self.problems_omitted > 0 {
            notes.push(format!(
                "{} more problems not listed (at most {PROBLEMS_MAX} are)",
                self.problems_omitted
            ));
        }
        notes.extend(self.unknowns.into_iter().map(|u| format!("unknown: {u}")));
        Verdict {
            checker,
            validity,
            problems: self.problems,
            notes,
        }
    }
}

/// The replicas that were read completely, in node order.
pub fn readable_replicas(state: &FinalState) -> Vec<(NodeId, &ReplicaState)> {
    state
        .nodes
        .iter()
        .filter(|(_, replica)| replica.unreadable.is_none())
        .map(|(node, replica)| (*node, replica))
        .collect()
}

/// Names the replicas that could not be read, for an `Unknown` note.
pub fn unreadable_note(state: &FinalState) -> Option<String> {
    let unreadable: Vec<String> = state
        .nodes
        .iter()
        .filter_map(|(node, replica)| {
            replica
                .unreadable
                .as_ref()
                .map(|why| format!("node {node} ({why})"))
        })
        .collect();
    (!unreadable.is_empty()).then(|| format!("unreadable replicas: {}", unreadable.join(", ")))
}

/// One line naming an operation so a human can find it in the history file.
pub fn describe(op: &Operation<'_>) -> String {
    let call = match &op.invoke.call {
        Call::Create { post_id, key, .. } => format!("create post {post_id} key {key:?}"),
        Call::Bid {
            bidder,
            key,
            amount,
            retry_of,
            ..
        } => match retry_of {
            Some(first) => format!("bid {bidder} {amount} key {key} (retry of op {first})"),
            None => format!("bid {bidder} {amount} key {key}"),
        },
        Call::Read { .. } => "read".to_owned(),
        Call::Control { action, .. } => format!("{action:?}"),
    };
    let result = match (op.outcome(), op.result()) {
        (Phase::Ok, Some(OpResult::Auction(v))) => format!(
            "ok {:?} v{} price {} winner {}",
            v.status,
            v.version,
            v.current_price,
            v.winner.as_deref().unwrap_or("none")
        ),
        (Phase::Ok, Some(OpResult::Bid(b))) => format!(
            "ok {:?}{} v{} price {} winner {}{}",
            b.status,
            b.reason
                .as_deref()
                .map_or(String::new(), |r| format!(" ({r})")),
            b.version,
            b.current_price,
            b.winner.as_deref().unwrap_or("none"),
            if b.replayed { " replayed" } else { "" }
        ),
        (Phase::Ok, Some(other)) => format!("ok {other:?}"),
        (phase, _) => format!("{phase:?}").to_lowercase(),
    };
    format!(
        "op {} [process {}, node {}: {call} -> {result}]",
        op.invoke.op_id, op.invoke.process, op.invoke.node
    )
}

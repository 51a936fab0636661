//! Linearizability of every auction (P-compositional: each auction is checked on its own)
//! against an independent sequential model of the auction rules.
//!
//! This module turns one auction's recorded operations into the search's input: `fail`
//! operations are dropped (they never took effect), `info` operations may take effect at any
//! point after their invoke or never, local reads are not judged (they may lag by contract),
//! and an `info` create is found through its `post_id` in the final state. The model (`model`)
//! and the search (`search`) know nothing of the history's layout.
//!
//! Before the search, a cheap real-time check catches the commonest violation precisely: an
//! operation invoked after another completed must not observe an older version.

mod assemble;
mod model;
mod search;

use std::collections::BTreeMap;

use crate::history::{Call, History, OpResult, Operation, Phase};

use super::support::Findings;
use super::Verdict;
use assemble::{Assembled, AuctionInput};
use search::{Outcome, SearchOp};

pub use search::STATES_EXPLORED_MAX;

pub const CHECKER: &str = "linearizable";

/// Checks every auction of the history.
pub fn check(history: &History) -> Verdict {
    let mut findings = Findings::default();
    let operations = history.operations();
    let groups = group_by_auction(history, &operations);
    let (mut checked, mut explored_total) = (0usize, 0usize);
    for (auction_id, ops) in &groups {
        let input = match assemble::assemble(history, auction_id, ops) {
            Assembled::Ready(input) => input,
            Assembled::Problem(text) => {
                findings.problem(text);
                continue;
            }
            Assembled::Unknown(text) => {
                findings.unknown(text);
                continue;
            }
        };
        let stale = stale_observations(auction_id, &input.ops);
        if !stale.is_empty() {
            stale.into_iter().for_each(|p| findings.problem(p));
            continue;
        }
        checked += 1;
        explored_total += judge(auction_id, &input, &mut findings);
    }
    findings.note(format!(
        "{checked} auctions searched, {explored_total} model states explored"
    ));
    findings.into_verdict(CHECKER)
}

/// Runs the search for one auction and records its outcome; returns the states explored.
fn judge(auction_id: &str, input: &AuctionInput, findings: &mut Findings) -> usize {
    match search::search(&input.statics, &input.ops, input.gates.clone()) {
        Outcome::Linearizable { explored } => explored,
        Outcome::GaveUp { explored } => {
            findings.unknown(format!(
                "auction {auction_id}: search gave up after {explored} states \
                 (limit {STATES_EXPLORED_MAX}); {} operations",
                input.ops.len()
            ));
            explored
        }
        Outcome::NotLinearizable(stuck) => {
            let label = |i: usize| input.ops.get(i).map_or("?".to_owned(), |o| o.label.clone());
            let recent: Vec<String> = stuck.recent.iter().map(|i| label(*i)).collect();
            let waiting: Vec<String> = stuck.waiting.iter().map(|i| label(*i)).collect();
            findings.problem(format!(
                "auction {auction_id}: not linearizable: {} cannot take effect before it \
                 returned; deepest consistent prefix places {} of {} operations, the model then \
                 is {}; answered at that version but not placeable: [{}]; last placed: [{}]",
                label(stuck.op),
                stuck.depth,
                input.ops.len(),
                input.describe_state(&stuck.state),
                waiting.join("; "),
                recent.join("; ")
            ));
            0
        }
    }
}

/// The operations each auction's check needs, by auction id. `fail` operations are dropped,
/// and so are local reads and `info` reads (no result, no effect).
fn group_by_auction<'a>(
    history: &History,
    operations: &[Operation<'a>],
) -> BTreeMap<String, Vec<Operation<'a>>> {
    let mut groups: BTreeMap<String, Vec<Operation<'a>>> = BTreeMap::new();
    for op in operations {
        let outcome = op.outcome();
        if outcome == Phase::Fail {
            continue;
        }
        let auction_id = match &op.invoke.call {
            Call::Create { post_id, .. } => match op.result() {
                Some(OpResult::Auction(view)) => Some(view.id.clone()),
                Some(_) => None,
                None => auction_by_post_id(history, post_id),
            },
            Call::Read { local: true, .. } => None,
            Call::Read { .. } if outcome != Phase::Ok => None,
            call => call.auction_id().map(str::to_owned),
        };
        if let Some(id) = auction_id {
            groups.entry(id).or_default().push(*op);
        }
    }
    groups
}

/// The auction a create with this `post_id` made, as any replica knows it.
fn auction_by_post_id(history: &History, post_id: &str) -> Option<String> {
    history.final_state.nodes.values().find_map(|replica| {
        replica
            .auctions
            .values()
            .find(|a| a.post_id == post_id)
            .map(|a| a.id.clone())
    })
}

/// Operations invoked after another completed that observed an older version than it did:
/// versions only grow, so no linearization can exist. Sorting makes this O(n log n).
fn stale_observations(auction_id: &str, ops: &[SearchOp]) -> Vec<String> {
    let observed: Vec<(usize, u64)> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.return_ns.is_some())
        .filter_map(|(i, op)| op.observed_version.map(|v| (i, v)))
        .collect();
    let mut by_return = observed.clone();
    by_return.sort_by_key(|(i, _)| ops[*i].return_ns);
    let mut by_call = observed;
    by_call.sort_by_key(|(i, _)| ops[*i].call_ns);
    let mut newest: Option<(usize, u64)> = None;
    let mut done = by_return.iter().peekable();
    let mut problems = Vec::new();
    for (i, version) in by_call {
        let call_ns = ops[i].call_ns;
        while let Some((j, v)) = done.next_if(|(j, _)| ops[*j].return_ns < Some(call_ns)) {
            if newest.is_none_or(|(_, best)| *v > best) {
                newest = Some((*j, *v));
            }
        }
        if let Some((j, newer)) = newest.filter(|(_, newer)| version < *newer) {
            problems.push(format!(
                "auction {auction_id}: stale: {} saw version {version}, but it was invoked \
                 after {} had completed with version {newer}",
                ops[i].label, ops[j].label
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests;

//! Idempotency (invariant 6): the same (auction, bidder, key) always yields the same decision.
//!
//! - Every `ok` answer for one (auction, bidder, key) (first attempts, `retry_of` retries and
//!   any reuse) carries the first `ok` answer's decision: bid id, status, reason, amount,
//!   version, price, winner and endAt (a replay is the first answer byte for byte).
//! - No readable replica's log holds more decisions by one bidder for one amount than that
//!   bidder used keys for that amount in attempts that were not `fail`: each key decides at
//!   most once, and the log does not record keys, so this count is what can be judged soundly.
//! - Creates: a `post_id` may yield at most one auction per idempotency key plus one per keyless
//!   create that was not `fail`; so a create the client was told failed must not exist unless
//!   another attempt with that post id may have made it. `ok` creates with one key answer one id.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;

use crate::history::{BidView, Call, History, OpResult, Operation, Phase};

use super::support::{readable_replicas, unreadable_note, Findings};
use super::Verdict;

pub const CHECKER: &str = "idempotency";

pub fn check(history: &History) -> Verdict {
    let mut findings = Findings::default();
    let operations = history.operations();
    same_key_same_decision(&operations, &mut findings);
    let replicas = readable_replicas(&history.final_state);
    if replicas.is_empty() {
        findings.unknown("no replica could be read after the final heal".into());
    } else if let Some(note) = unreadable_note(&history.final_state) {
        findings.note(format!(
            "final logs judged on readable replicas only; {note}"
        ));
    }
    let keys = keys_per_amount(&operations);
    for (node, replica) in &replicas {
        for (auction_id, log) in &replica.bid_logs {
            let mut decisions: BTreeMap<(&str, Decimal), Vec<&str>> = BTreeMap::new();
            for record in log {
                decisions
                    .entry((record.bidder.as_str(), record.amount))
                    .or_default()
                    .push(record.bid_id.as_str());
            }
            for ((bidder, amount), bid_ids) in decisions {
                let allowed = keys
                    .get(&(auction_id.as_str(), bidder, amount))
                    .map_or(0, BTreeSet::len);
                if bid_ids.len() > allowed {
                    findings.problem(format!(
                        "auction {auction_id}: duplicate decision: node {node} logs {} \
                         decisions {bid_ids:?} by {bidder} for {amount}, but only {allowed} \
                         keys were used for that bid",
                        bid_ids.len()
                    ));
                }
            }
        }
    }
    creates(history, &operations, &mut findings);
    findings.into_verdict(CHECKER)
}

/// (completion time, op id, decision) of one `ok` bid.
type Answer<'a> = (u64, u64, &'a BidView);

/// Every `ok` answer for one (auction, bidder, key) equals the first one.
fn same_key_same_decision(operations: &[Operation<'_>], findings: &mut Findings) {
    let mut answers: BTreeMap<(&str, &str, &str), Vec<Answer<'_>>> = BTreeMap::new();
    for op in operations {
        if let (
            Call::Bid {
                auction_id,
                bidder,
                key,
                ..
            },
            Some(OpResult::Bid(view)),
        ) = (&op.invoke.call, op.result())
        {
            let done = op.completion.map_or(u64::MAX, |c| c.time_ns);
            answers.entry((auction_id, bidder, key)).or_default().push((
                done,
                op.invoke.op_id,
                view,
            ));
        }
    }
    for ((auction_id, bidder, key), mut seen) in answers {
        seen.sort_by_key(|(done, op_id, _)| (*done, *op_id));
        let Some((_, first_op, first)) = seen.first().copied() else {
            continue;
        };
        for (_, op_id, view) in seen.iter().skip(1) {
            if !same_decision(first, view) {
                findings.problem(format!(
                    "auction {auction_id}: bidder {bidder} key {key}: op {op_id} got {} but \
                     the first answer (op {first_op}) was {}",
                    summary(view),
                    summary(first)
                ));
            }
        }
    }
}

fn same_decision(a: &BidView, b: &BidView) -> bool {
    a.bid_id == b.bid_id
        && a.status == b.status
        && a.reason == b.reason
        && a.amount == b.amount
        && a.version == b.version
        && a.current_price == b.current_price
        && a.winner == b.winner
        && a.end_at_ms == b.end_at_ms
}

fn summary(v: &BidView) -> String {
    format!(
        "bid {} {:?} {:?} amount {} v{} price {} winner {:?} endAt {}",
        v.bid_id, v.status, v.reason, v.amount, v.version, v.current_price, v.winner, v.end_at_ms
    )
}

/// The keys each (auction, bidder, amount) was tried with, in attempts that were not `fail`.
fn keys_per_amount<'a>(
    operations: &[Operation<'a>],
) -> BTreeMap<(&'a str, &'a str, Decimal), BTreeSet<&'a str>> {
    let mut keys: BTreeMap<(&str, &str, Decimal), BTreeSet<&str>> = BTreeMap::new();
    for op in operations {
        if op.outcome() == Phase::Fail {
            continue;
        }
        if let Call::Bid {
            auction_id,
            bidder,
            key,
            amount,
            ..
        } = &op.invoke.call
        {
            keys.entry((auction_id, bidder, *amount))
                .or_default()
                .insert(key);
        }
    }
    keys
}

/// How many auctions each post id may have yielded, and what `ok` creates answered.
fn creates(history: &History, operations: &[Operation<'_>], findings: &mut Findings) {
    let mut allowed: BTreeMap<&str, (BTreeSet<&str>, usize, Vec<u64>)> = BTreeMap::new();
    let mut answered: BTreeMap<(&str, &str), (u64, &str)> = BTreeMap::new();
    for op in operations {
        let Call::Create { key, post_id, .. } = &op.invoke.call else {
            continue;
        };
        let entry = allowed.entry(post_id).or_default();
        entry.2.push(op.invoke.op_id);
        if op.outcome() == Phase::Fail {
            continue;
        }
        match key {
            Some(key) => {
                entry.0.insert(key);
            }
            None => entry.1 += 1,
        }
        if let (Some(key), Some(OpResult::Auction(view))) = (key, op.result()) {
            let first = answered
                .entry((post_id, key))
                .or_insert((op.invoke.op_id, &view.id));
            if first.1 != view.id {
                findings.problem(format!(
                    "post {post_id} key {key}: op {} created auction {} but op {} with the same \
                     key got auction {}",
                    op.invoke.op_id, view.id, first.0, first.1
                ));
            }
        }
    }
    for (node, replica) in readable_replicas(&history.final_state) {
        let mut by_post: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for auction in replica.auctions.values() {
            by_post
                .entry(&auction.post_id)
                .or_default()
                .push(&auction.id);
        }
        for (post_id, ids) in by_post {
            let Some((keys, keyless, op_ids)) = allowed.get(post_id) else {
                continue; // not created by this run's workload
            };
            let most = keys.len() + keyless;
            if ids.len() > most {
                findings.problem(format!(
                    "post {post_id}: node {node} holds auctions {ids:?}, but the creates \
                     (ops {op_ids:?}) may have made at most {most} (failed creates make none)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::checker::testkit::{
        after_bids, auction, bid_call, bid_view, create_call, record, Builder, Done,
    };
    use crate::checker::Validity;
    use crate::history::{Call, OpResult};

    fn retried(second_reason: Option<&str>, logged_twice: bool) -> Validity {
        let mut b = Builder::new();
        let one = after_bids(&auction("a1"), &[("alice", "10")]);
        let first = bid_view("b1", "10", None, &one);
        b.op(1, bid_call("a1", "alice", "k1", "10"), 0, Done::Info(100));
        b.op(
            1,
            bid_call("a1", "alice", "k1", "10"),
            200,
            Done::Ok(210, OpResult::Bid(first.clone())),
        );
        let mut second = bid_view("b1", "10", second_reason, &one);
        second.replayed = true;
        let mut retry = bid_call("a1", "alice", "k1", "10");
        if let Call::Bid { retry_of, .. } = &mut retry {
            *retry_of = Some(2);
        }
        b.op(1, retry, 300, Done::Ok(310, OpResult::Bid(second.clone())));
        let mut log = vec![record(1, &first, "alice")];
        if logged_twice {
            let mut again = record(2, &first, "alice");
            again.bid_id = "b2".into();
            log.push(again);
        }
        b.replicas(&[1, 2], &[one], &[("a1", log)]);
        let verdict = check(&b.build());
        println!("{verdict:#?}");
        verdict.validity
    }

    #[test]
    fn replays_with_the_first_decision_pass() {
        assert_eq!(retried(None, false), Validity::Valid);
    }

    #[test]
    fn retry_with_a_different_decision_is_flagged() {
        assert_eq!(retried(Some("below_minimum"), false), Validity::Invalid);
    }

    #[test]
    fn one_key_decided_twice_in_the_log_is_flagged() {
        assert_eq!(retried(None, true), Validity::Invalid);
    }

    fn keyless_create(outcome: Done, exists: bool) -> Validity {
        let mut b = Builder::new();
        let view = auction("a1");
        b.op(0, create_call("post-a1", None, &view), 0, outcome);
        let auctions = if exists { vec![view] } else { Vec::new() };
        b.replicas(&[1, 2, 3], &auctions, &[]);
        check(&b.build()).validity
    }

    #[test]
    fn failed_keyless_create_that_exists_is_flagged() {
        assert_eq!(keyless_create(Done::Fail(5), true), Validity::Invalid);
        assert_eq!(keyless_create(Done::Fail(5), false), Validity::Valid);
        assert_eq!(keyless_create(Done::Info(5), true), Validity::Valid);
    }

    #[test]
    fn keyed_create_retried_yields_one_auction() {
        let mut b = Builder::new();
        let view = auction("a1");
        let call = create_call("post-a1", Some("ck"), &view);
        b.op(0, call.clone(), 0, Done::Info(5));
        b.op(0, call, 10, Done::Ok(15, OpResult::Auction(view.clone())));
        let mut twin = view.clone();
        twin.id = "a2".into();
        b.replicas(&[1], std::slice::from_ref(&view), &[]);
        assert_eq!(check(&b.history).validity, Validity::Valid);
        b.replicas(&[1], &[view, twin], &[]);
        assert_eq!(check(&b.build()).validity, Validity::Invalid);
    }
}

//! No lost writes: every bid decision acknowledged `ok` (accepted or rejected) is in the final
//! decision log of every readable replica with the same status, reason, amount and version;
//! every acknowledged create exists on every readable replica; and each replica's log is a
//! well-formed chain (invariants 1, 2, 4 and 5 of DESIGN.md): `seq` is 1, 2, ...; versions never
//! go back and each accepted bid has a version of its own; the first accepted amount is at least
//! `startPrice` and each next one at least the previous plus `minIncrement`; no creator wins
//! their own auction; the auction's price, winner and `bidCount` are the last accepted bid's.
//!
//! Deliberately not judged: unreadable replicas (named in the notes; nothing can be said of
//! them) and decisions answered `info` (they may or may not exist).

use std::collections::HashMap;

use crate::history::{
    AuctionView, BidRecord, BidStatus, Call, History, NodeId, OpResult, Phase, ReplicaState,
};

use super::support::{readable_replicas, unreadable_note, Findings};
use super::Verdict;

pub const CHECKER: &str = "no_lost_writes";

pub fn check(history: &History) -> Verdict {
    let mut findings = Findings::default();
    let replicas = readable_replicas(&history.final_state);
    if replicas.is_empty() {
        findings.unknown("no replica could be read after the final heal".into());
        return findings.into_verdict(CHECKER);
    }
    if let Some(note) = unreadable_note(&history.final_state) {
        findings.note(format!("judged on readable replicas only; {note}"));
    }
    acknowledged_writes(history, &replicas, &mut findings);
    for (node, replica) in &replicas {
        for (auction_id, auction) in &replica.auctions {
            let log = replica
                .bid_logs
                .get(auction_id)
                .map_or(&[][..], Vec::as_slice);
            check_log(*node, auction, log, &mut findings);
        }
        for auction_id in replica.bid_logs.keys() {
            if !replica.auctions.contains_key(auction_id) {
                findings.problem(format!(
                    "auction {auction_id}: node {node} has a decision log but no auction"
                ));
            }
        }
    }
    findings.into_verdict(CHECKER)
}

/// Every `ok` bid decision and create is on every readable replica.
fn acknowledged_writes(
    history: &History,
    replicas: &[(NodeId, &ReplicaState)],
    findings: &mut Findings,
) {
    let logs: Vec<(NodeId, LogIndex<'_>)> = replicas
        .iter()
        .map(|(node, replica)| (*node, index_logs(replica)))
        .collect();
    for op in history.operations() {
        if op.outcome() != Phase::Ok {
            continue;
        }
        let op_id = op.invoke.op_id;
        match (&op.invoke.call, op.result()) {
            (
                Call::Bid {
                    auction_id, bidder, ..
                },
                Some(OpResult::Bid(view)),
            ) => {
                for (node, index) in &logs {
                    let found = index.get(&(auction_id.as_str(), view.bid_id.as_str()));
                    let same = found.is_some_and(|r| {
                        r.status == view.status
                            && r.reason == view.reason
                            && r.amount == view.amount
                            && r.version == view.version
                            && r.bidder == *bidder
                    });
                    if !same {
                        findings.problem(format!(
                            "auction {auction_id}: lost write: op {op_id} was answered \
                             {:?} {:?} amount {} version {} (bid {}) but node {node}'s log has \
                             {found:?}",
                            view.status, view.reason, view.amount, view.version, view.bid_id
                        ));
                    }
                }
            }
            (Call::Create { post_id, .. }, Some(OpResult::Auction(view))) => {
                for (node, replica) in replicas {
                    let found = replica.auctions.get(&view.id);
                    if found.is_none_or(|a| a.post_id != *post_id) {
                        findings.problem(format!(
                            "auction {}: lost create: op {op_id} (post {post_id}) was \
                             acknowledged but node {node} does not hold it",
                            view.id
                        ));
                    }
                }
            }
            _ => {}
        }
    }
}

/// Every decision of a replica by (auction id, bid id).
type LogIndex<'a> = HashMap<(&'a str, &'a str), &'a BidRecord>;

fn index_logs(replica: &ReplicaState) -> LogIndex<'_> {
    replica
        .bid_logs
        .iter()
        .flat_map(|(auction_id, log)| {
            log.iter()
                .map(move |r| ((auction_id.as_str(), r.bid_id.as_str()), r))
        })
        .collect()
}

/// One replica's log for one auction is a well-formed chain that ends in the auction's state.
fn check_log(node: NodeId, auction: &AuctionView, log: &[BidRecord], findings: &mut Findings) {
    let id = &auction.id;
    let mut last: Option<&BidRecord> = None;
    let mut last_accepted: Option<&BidRecord> = None;
    let mut accepted = 0u64;
    for (at, record) in log.iter().enumerate() {
        let place = format!(
            "auction {id}: node {node}: decision seq {} ({})",
            record.seq, record.bid_id
        );
        if record.seq != at as u64 + 1 {
            findings.problem(format!("{place}: is entry {} of the log", at + 1));
        }
        let previous_version = last.map_or(0, |r| r.version);
        if record.version < previous_version {
            findings.problem(format!(
                "{place}: version {} after version {previous_version}",
                record.version
            ));
        }
        if record.status == BidStatus::Accepted {
            accepted += 1;
            check_accepted(&place, auction, record, last, last_accepted, findings);
            last_accepted = Some(record);
        }
        last = Some(record);
    }
    let (price, winner) = last_accepted.map_or((auction.start_price, None), |r| {
        (r.amount, Some(r.bidder.as_str()))
    });
    if auction.current_price != price || auction.winner.as_deref() != winner {
        findings.problem(format!(
            "auction {id}: node {node}: shows price {} winner {:?}, but the last accepted bid \
             in its log gives price {price} winner {winner:?}",
            auction.current_price, auction.winner
        ));
    }
    if auction.bid_count != accepted {
        findings.problem(format!(
            "auction {id}: node {node}: bidCount {} but its log holds {accepted} accepted bids",
            auction.bid_count
        ));
    }
    if let Some(last) = last.filter(|r| r.version > auction.version) {
        findings.problem(format!(
            "auction {id}: node {node}: version {} but decision {} has version {}",
            auction.version, last.bid_id, last.version
        ));
    }
}

fn check_accepted(
    place: &str,
    auction: &AuctionView,
    record: &BidRecord,
    last: Option<&BidRecord>,
    last_accepted: Option<&BidRecord>,
    findings: &mut Findings,
) {
    if let Some(previous) = last.filter(|p| record.version <= p.version) {
        findings.problem(format!(
            "{place}: accepted at version {} but decision {} already had version {} (two \
             winners of one version)",
            record.version, previous.bid_id, previous.version
        ));
    }
    let minimum = match last_accepted {
        None => auction.start_price,
        Some(previous) => previous.amount + auction.min_increment,
    };
    if record.amount < minimum {
        findings.problem(format!(
            "{place}: accepted {} below the minimum {minimum} (start {}, increment {})",
            record.amount, auction.start_price, auction.min_increment
        ));
    }
    if record.bidder == auction.creator_id {
        findings.problem(format!("{place}: the creator's own bid was accepted"));
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::checker::testkit::{after_bids, auction, bid_call, bid_view, record, Builder, Done};
    use crate::checker::Validity;
    use crate::history::{BidRecord, BidView, OpResult};

    /// alice 10 accepted (v2), bob 10.5 rejected, carol 12 accepted (v3): acknowledged, and
    /// `log` is what every replica holds.
    /// `answered` edits the decisions as answered (and logged); `log_edit` the logs only.
    fn history(
        answered: impl Fn(&mut [(BidView, &str)]),
        log_edit: impl Fn(&mut Vec<BidRecord>),
    ) -> Validity {
        let mut b = Builder::new();
        let one = after_bids(&auction("a1"), &[("alice", "10")]);
        let two = after_bids(&one, &[("carol", "12")]);
        let mut views = [
            (bid_view("b1", "10", None, &one), "alice"),
            (bid_view("b2", "10.5", Some("below_minimum"), &one), "bob"),
            (bid_view("b3", "12", None, &two), "carol"),
        ];
        answered(&mut views);
        let mut log = Vec::new();
        for (i, (view, bidder)) in views.iter().enumerate() {
            let call = bid_call("a1", bidder, &format!("k{i}"), &view.amount.to_string());
            b.op(
                1,
                call,
                10 * i as u64,
                Done::Ok(10 * i as u64 + 5, OpResult::Bid(view.clone())),
            );
            log.push(record(i as u64 + 1, view, bidder));
        }
        log_edit(&mut log);
        b.replicas(&[1, 2, 3], &[two], &[("a1", log)]);
        let verdict = check(&b.build());
        println!("{verdict:#?}");
        verdict.validity
    }

    #[test]
    fn complete_logs_pass() {
        assert_eq!(history(|_| {}, |_| {}), Validity::Valid);
    }

    #[test]
    fn acknowledged_rejection_missing_from_the_log_is_a_lost_write() {
        let validity = history(
            |_| {},
            |log| {
                log.remove(1);
                log[1].seq = 2;
            },
        );
        assert_eq!(validity, Validity::Invalid);
    }

    #[test]
    fn chain_breaking_the_increment_is_flagged() {
        // carol's 10.5 accepted after alice's 10 with increment 1 (answered and logged alike).
        let validity = history(
            |views| {
                views[2].0.amount = rust_decimal::Decimal::new(105, 1);
                views[2].0.current_price = views[2].0.amount;
            },
            |_| {},
        );
        assert_eq!(validity, Validity::Invalid);
    }

    #[test]
    fn two_accepted_bids_at_one_version_are_flagged() {
        // carol's bid answered and logged as accepted at version 2, which alice's already had.
        assert_eq!(
            history(|views| views[2].0.version = 2, |_| {}),
            Validity::Invalid
        );
    }
}

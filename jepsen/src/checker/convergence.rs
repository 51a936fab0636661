//! Convergence (invariant 7): after the final heal, every readable replica holds the same state.
//!
//! Each readable replica is compared with the first one (lowest node id): the same auctions
//! with every field equal, the same decision logs (an absent log is an empty one), and per Raft
//! group the same applied index and, where the applied indexes are equal, the same state
//! digest. Different applied indexes mean the group had not converged when it was read: a
//! problem, since the final state is read after the recovery window. An unreadable replica makes
//! the verdict `Unknown` (unless a divergence among the readable ones already makes it `Invalid`).

use std::collections::BTreeSet;

use crate::history::{BidRecord, History, NodeId, ReplicaState};

use super::support::{readable_replicas, unreadable_note, Findings};
use super::Verdict;

pub const CHECKER: &str = "convergence";

pub fn check(history: &History) -> Verdict {
    let mut findings = Findings::default();
    if let Some(note) = unreadable_note(&history.final_state) {
        findings.unknown(note);
    }
    let replicas = readable_replicas(&history.final_state);
    let Some(((base_node, base), others)) = replicas.split_first() else {
        findings.unknown("no replica could be read after the final heal".into());
        return findings.into_verdict(CHECKER);
    };
    for (node, replica) in others {
        compare(*base_node, base, *node, replica, &mut findings);
    }
    findings.note(format!(
        "{} readable replicas compared with node {base_node}",
        replicas.len()
    ));
    findings.into_verdict(CHECKER)
}

fn compare(
    base_node: NodeId,
    base: &ReplicaState,
    node: NodeId,
    replica: &ReplicaState,
    findings: &mut Findings,
) {
    let ids: BTreeSet<&String> = base
        .auctions
        .keys()
        .chain(replica.auctions.keys())
        .collect();
    for id in ids {
        let (a, b) = (base.auctions.get(id), replica.auctions.get(id));
        if a != b {
            findings.problem(format!(
                "auction {id}: node {base_node} has {a:?} but node {node} has {b:?}"
            ));
        }
        let empty: &[BidRecord] = &[];
        let log_a = base.bid_logs.get(id).map_or(empty, Vec::as_slice);
        let log_b = replica.bid_logs.get(id).map_or(empty, Vec::as_slice);
        if log_a != log_b {
            let first = log_a.iter().zip(log_b).position(|(x, y)| x != y);
            findings.problem(format!(
                "auction {id}: decision logs differ: node {base_node} has {} entries, node \
                 {node} has {}; first difference at entry {}",
                log_a.len(),
                log_b.len(),
                first.map_or("(one is a prefix of the other)".into(), |i| (i + 1)
                    .to_string())
            ));
        }
    }
    let groups: BTreeSet<&u32> = base.digests.keys().chain(replica.digests.keys()).collect();
    for group in groups {
        match (base.digests.get(group), replica.digests.get(group)) {
            (Some((index_a, digest_a)), Some((index_b, digest_b))) => {
                if index_a != index_b {
                    findings.problem(format!(
                        "group {group}: not converged: node {base_node} applied {index_a}, \
                         node {node} applied {index_b}"
                    ));
                } else if digest_a != digest_b {
                    findings.problem(format!(
                        "group {group}: diverged: at applied index {index_a} node {base_node} \
                         has digest {digest_a:#x}, node {node} has {digest_b:#x}"
                    ));
                }
            }
            (a, b) => findings.problem(format!(
                "group {group}: reported by only one replica: node {base_node} {a:?}, node \
                 {node} {b:?}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::checker::testkit::{auction, Builder};
    use crate::checker::Validity;
    use crate::history::AuctionStatus;

    fn replicas() -> Builder {
        let mut b = Builder::new();
        b.replicas(&[1, 2, 3], &[auction("a1")], &[]);
        b
    }

    #[test]
    fn identical_replicas_pass() {
        assert_eq!(check(&replicas().build()).validity, Validity::Valid);
    }

    #[test]
    fn divergent_auction_is_flagged() {
        let mut b = replicas();
        if let Some(a) = b
            .history
            .final_state
            .nodes
            .get_mut(&3)
            .and_then(|r| r.auctions.get_mut("a1"))
        {
            a.status = AuctionStatus::Ended;
        }
        assert_eq!(check(&b.build()).validity, Validity::Invalid);
    }

    #[test]
    fn divergent_digest_at_the_same_index_is_flagged() {
        let mut b = replicas();
        if let Some(r) = b.history.final_state.nodes.get_mut(&2) {
            r.digests.insert(0, (10, 43));
        }
        assert_eq!(check(&b.build()).validity, Validity::Invalid);
    }

    #[test]
    fn unreadable_replica_is_unknown() {
        let mut b = replicas();
        if let Some(r) = b.history.final_state.nodes.get_mut(&2) {
            r.unreadable = Some("connection refused".into());
        }
        assert_eq!(check(&b.build()).validity, Validity::Unknown);
    }
}

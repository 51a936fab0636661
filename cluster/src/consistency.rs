//! Replicas compare their states at consistency checkpoints (`gavel_raft`'s `checkpoint`): each
//! node asks the (other) voters of each group it is a member of, a learner too, for their
//! digest of the state at the group's newest checkpoint, and a node whose digest differs from
//! one a majority of the voters holds stops (its state differs from the group's; as leader it would decide bids its own way, and
//! it serves wrong reads). It records the group first, so that its next start brings the
//! group's state back from a peer's copy (`recovery`) before the group runs again.
//!
//! What makes a state differ while its log agrees: the disk, not Raft. A power cut only loses
//! unsynced writes, which the log re-applies; but bits damaged in data sled had synced can be
//! read back without a word (docs/OPERATIONS.md, "A node that will not start after a power
//! loss"). Nothing at start sees that; a comparison with the other replicas does.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::join_all;
use gavel_raft::{CheckpointDigest, Group};
use tokio::sync::watch;

use crate::node::Node;
use crate::peer_api::{AppAnswer, AppCall};
use crate::raft_ops::members;

/// The node meta record of the groups whose state was found to differ from their peers', to
/// be brought back from a copy at the next start.
pub(crate) const META_DIVERGED: &str = "diverged_groups";
/// How long a peer has to answer for its digest (it answers from memory).
const DIGEST_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What one node's comparison of a checkpoint found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A majority of the voters holds this node's digest, and no voter that answered differs.
    Agree,
    /// A majority holds this node's digest; these voters hold another (each finds it itself).
    OthersDiffer(Vec<u64>),
    /// A majority of the voters holds `majority`, not this node's digest.
    Diverged { majority: u64, holders: Vec<u64> },
    /// Every voter answered and no digest has a majority: nothing can tell which is right.
    NoMajority,
    /// Not enough answers yet (voters behind, busy reading, or unreachable).
    Wait,
}

/// Judges this node's digest `mine` against the other voters' answers (`None`: no answer),
/// among `voters` voters in all, this node one of them if `voting` (a learner's digest counts
/// for nothing, but it must hold the voters' majority's too).
pub(crate) fn judge(
    mine: u64,
    voting: bool,
    voters: usize,
    answers: &[(u64, Option<CheckpointDigest>)],
) -> Verdict {
    let majority = voters / 2 + 1;
    let holding = |digest: u64| {
        answers
            .iter()
            .filter(|(_, answer)| *answer == Some(CheckpointDigest::Digest(digest)))
            .map(|(peer, _)| *peer)
            .collect::<Vec<u64>>()
    };
    let others: BTreeSet<u64> = answers
        .iter()
        .filter_map(|(_, answer)| match answer {
            Some(CheckpointDigest::Digest(digest)) if *digest != mine => Some(*digest),
            _ => None,
        })
        .collect();
    let own_vote = usize::from(voting);
    if own_vote + holding(mine).len() >= majority {
        let differing: Vec<u64> = others.iter().flat_map(|digest| holding(*digest)).collect();
        return match differing.is_empty() {
            true => Verdict::Agree,
            false => Verdict::OthersDiffer(differing),
        };
    }
    for digest in others {
        let holders = holding(digest);
        if holders.len() >= majority {
            return Verdict::Diverged {
                majority: digest,
                holders,
            };
        }
    }
    let all_answered = answers.len() + own_vote >= voters
        && answers
            .iter()
            .all(|(_, answer)| matches!(answer, Some(CheckpointDigest::Digest(_))));
    match all_answered {
        true => Verdict::NoMajority,
        false => Verdict::Wait,
    }
}

/// Compares this node's newest checkpoint of each group with the other voters', every quarter
/// of the checkpoint interval (between a quarter second and 30 s), until `stop`.
pub(crate) async fn run_consistency_checks(
    node: Weak<Node>,
    interval_ms: u64,
    mut stop: watch::Receiver<bool>,
) {
    if interval_ms == 0 {
        return;
    }
    let tick = Duration::from_millis((interval_ms / 4).clamp(250, 30_000));
    // Per group: the newest checkpoint judged, which is not asked about again.
    let mut judged: Vec<u64> = Vec::new();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(tick) => {}
        }
        let Some(node) = node.upgrade() else { return };
        judged.resize(node.groups.len(), 0);
        for (group, judged) in node.groups.iter().zip(judged.iter_mut()) {
            if node.stopping() {
                return;
            }
            check_group(&node, group, judged).await;
        }
    }
}

/// Compares the group's newest checkpoint past `judged`, and acts on what it finds.
async fn check_group(node: &Arc<Node>, group: &Arc<Group>, judged: &mut u64) {
    let Some((index, mine)) = group.observer.checkpoints.latest() else {
        return;
    };
    if index <= *judged {
        return;
    }
    let (voters, learners) = members(group);
    let me = node.node_id();
    let voting = voters.contains(&me);
    if (voting && voters.len() < 2) || !(voting || learners.contains(&me)) {
        // Nothing to compare with (a single voter), or no longer a member.
        *judged = index;
        return;
    }
    let peers = voters.iter().copied().filter(|peer| *peer != me);
    let answers: Vec<(u64, Option<CheckpointDigest>)> = join_all(
        peers.map(|peer| async move { (peer, ask_digest(node, peer, group, index).await) }),
    )
    .await;
    let verdict = judge(mine, voting, voters.len(), &answers);
    let outcome = match &verdict {
        Verdict::Wait => return,
        Verdict::Agree => "agree",
        Verdict::OthersDiffer(_) => "others_differ",
        Verdict::Diverged { .. } => "diverged",
        Verdict::NoMajority => "no_majority",
    };
    *judged = index;
    metrics::counter!("gavel_consistency_checks_total", "outcome" => outcome).increment(1);
    match verdict {
        Verdict::Wait => {}
        Verdict::Agree => {
            tracing::debug!(group = group.id, index, "replicas agree at the checkpoint");
        }
        Verdict::OthersDiffer(differing) => tracing::warn!(
            group = group.id,
            index,
            replicas = ?differing,
            "these replicas' states differ from the majority's at the checkpoint; each stops \
             when it finds it"
        ),
        Verdict::NoMajority => tracing::error!(
            group = group.id,
            index,
            answers = ?answers,
            "the replicas' states differ at the checkpoint and no state has a majority: \
             compare them with `gavel cluster status --digests` and restore the group from a \
             backup"
        ),
        Verdict::Diverged { majority, holders } => {
            let detail = format!(
                "group {}'s state at log index {index} differs from the state nodes {holders:?} \
                 hold (digest {mine:016x} here, {majority:016x} there)",
                group.id
            );
            node.stop_diverged(group.id, detail).await;
        }
    }
}

/// `peer`'s digest of the group's state at checkpoint `index`; `None` if it did not answer (an
/// older version does not know the call).
async fn ask_digest(
    node: &Node,
    peer: u64,
    group: &Arc<Group>,
    index: u64,
) -> Option<CheckpointDigest> {
    let call = AppCall::CheckpointDigest { index };
    match node.call_node(peer, group, call, DIGEST_CALL_TIMEOUT).await {
        Ok(AppAnswer::CheckpointDigest(digest)) => Some(digest),
        _ => None,
    }
}

/// This replica's digest of the group at checkpoint `index`, as a peer asks for it.
pub(crate) fn local_digest(group: &Group, index: u64) -> CheckpointDigest {
    let applied = group
        .raft
        .metrics()
        .borrow()
        .last_applied
        .map_or(0, |id| id.index);
    group.observer.checkpoints.digest_at(index, applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckpointDigest::{Digest, Pending, Unknown};

    #[test]
    fn a_majority_decides_whose_state_differs() {
        // Three voters.
        assert_eq!(
            judge(7, true, 3, &[(2, Some(Digest(7))), (3, Some(Digest(7)))]),
            Verdict::Agree
        );
        assert_eq!(
            judge(7, true, 3, &[(2, Some(Digest(7))), (3, Some(Pending))]),
            Verdict::Agree,
            "a majority agrees; the third checks itself"
        );
        assert_eq!(
            judge(7, true, 3, &[(2, Some(Digest(7))), (3, Some(Digest(9)))]),
            Verdict::OthersDiffer(vec![3])
        );
        assert_eq!(
            judge(9, true, 3, &[(2, Some(Digest(7))), (3, Some(Digest(7)))]),
            Verdict::Diverged {
                majority: 7,
                holders: vec![2, 3]
            }
        );
        assert_eq!(
            judge(9, true, 3, &[(2, Some(Digest(7))), (3, Some(Digest(8)))]),
            Verdict::NoMajority
        );
        for unsure in [Some(Pending), Some(Unknown), None] {
            assert_eq!(
                judge(9, true, 3, &[(2, Some(Digest(7))), (3, unsure)]),
                Verdict::Wait,
                "one against one: {unsure:?}"
            );
        }
        // Two voters: each alone is no majority, so a difference is never acted on.
        assert_eq!(
            judge(9, true, 2, &[(2, Some(Digest(7)))]),
            Verdict::NoMajority
        );
        assert_eq!(judge(7, true, 2, &[(2, Some(Digest(7)))]), Verdict::Agree);
        // Five voters: two differing replicas are still the minority.
        let answers = [
            (2, Some(Digest(7))),
            (3, Some(Digest(7))),
            (4, Some(Digest(9))),
            (5, None),
        ];
        assert_eq!(
            judge(9, true, 5, &answers),
            Verdict::Wait,
            "two against two, one unknown"
        );
        let answers = [
            (2, Some(Digest(7))),
            (3, Some(Digest(7))),
            (4, Some(Digest(9))),
            (5, Some(Digest(7))),
        ];
        assert_eq!(
            judge(9, true, 5, &answers),
            Verdict::Diverged {
                majority: 7,
                holders: vec![2, 3, 5]
            }
        );
        assert_eq!(judge(7, true, 5, &answers), Verdict::OthersDiffer(vec![4]));
    }

    #[test]
    fn a_learner_must_hold_what_a_majority_of_the_voters_holds() {
        let three_voters = [
            (1, Some(Digest(7))),
            (2, Some(Digest(7))),
            (3, Some(Digest(9))),
        ];
        assert_eq!(
            judge(7, false, 3, &three_voters),
            Verdict::OthersDiffer(vec![3])
        );
        assert_eq!(
            judge(9, false, 3, &three_voters),
            Verdict::Diverged {
                majority: 7,
                holders: vec![1, 2]
            },
            "its own digest is no vote: one voter with it is no majority"
        );
        let undecided = [(1, Some(Digest(7))), (2, None), (3, Some(Digest(9)))];
        assert_eq!(judge(9, false, 3, &undecided), Verdict::Wait);
        assert_eq!(judge(7, false, 3, &undecided), Verdict::Wait);
    }
}

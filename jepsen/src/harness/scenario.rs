//! Named scenarios: which faults the nemesis draws from and how many nodes the cluster has.

use crate::harness::nemesis::FaultKind;

pub struct Scenario {
    pub name: &'static str,
    pub nodes: usize,
    pub faults: &'static [FaultKind],
    pub about: &'static str,
}

use FaultKind::*;

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "partition-node",
        nodes: 3,
        faults: &[IsolateNode],
        about: "isolate one node at a time",
    },
    Scenario {
        name: "partition-leader",
        nodes: 3,
        faults: &[IsolateLeader],
        about: "isolate the leader of a random group",
    },
    Scenario {
        name: "partition-majority",
        nodes: 5,
        faults: &[MajorityMinority],
        about: "a random majority and minority",
    },
    Scenario {
        name: "partition-bridge",
        nodes: 5,
        faults: &[Bridge],
        about: "two halves that cannot talk and one node that reaches both",
    },
    Scenario {
        name: "partition-ring",
        nodes: 5,
        faults: &[Ring],
        about: "a majorities ring: every node sees a different majority",
    },
    Scenario {
        name: "partitions",
        nodes: 5,
        faults: &[IsolateNode, IsolateLeader, MajorityMinority, Bridge, Ring],
        about: "every kind of partition",
    },
    Scenario {
        name: "kill",
        nodes: 3,
        faults: &[KillOne, KillMajority, KillAll],
        about: "kill -9 one node, a majority, all of them, and restart",
    },
    Scenario {
        name: "pause",
        nodes: 3,
        faults: &[PauseNode, PauseLeader],
        about: "SIGSTOP a node or a leader, then SIGCONT",
    },
    Scenario {
        name: "clock-skew",
        nodes: 3,
        faults: &[SkewAhead, SkewBehind, SkewLeader, SkewJump],
        about: "a node's wall clock ahead, behind, on a leader, or jumping (libfaketime)",
    },
    Scenario {
        name: "membership",
        nodes: 3,
        faults: &[RemoveNode, RemoveLeader],
        about: "remove a node (or a leader) while bids flow, then add it back empty",
    },
    Scenario {
        name: "mixed",
        nodes: 5,
        faults: &[
            IsolateNode,
            IsolateLeader,
            MajorityMinority,
            Bridge,
            Ring,
            KillOne,
            KillMajority,
            PauseNode,
            PauseLeader,
            SkewAhead,
            SkewBehind,
            SkewLeader,
            SkewJump,
            RemoveNode,
            RemoveLeader,
        ],
        about: "everything above, drawn at random",
    },
];

/// The scenarios `suite --ci` runs: a minute each, covering partitions, skew, kill and
/// membership.
pub const CI_SUITE: &[&str] = &["partition-leader", "clock-skew", "kill", "membership"];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

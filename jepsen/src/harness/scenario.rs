//! Named scenarios: which faults the nemesis draws from and how many nodes the cluster has.

use crate::harness::nemesis::FaultKind;
use crate::harness::nodes::DataDisk;

pub struct Scenario {
    pub name: &'static str,
    pub nodes: usize,
    pub faults: &'static [FaultKind],
    pub about: &'static str,
    /// What each node's data dir is on.
    pub disk: DataDisk,
}

use FaultKind::*;

/// Each node's disk in `disk-full`: room for a minute of the workload's log and state many
/// times over (segments go once snapshots cover them), so only the nemesis fills it. A tmpfs
/// takes memory only for what is written.
const DISK_BYTES: u64 = 1024 * 1024 * 1024;

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "partition-node",
        nodes: 3,
        faults: &[IsolateNode],
        about: "isolate one node at a time",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "partition-leader",
        nodes: 3,
        faults: &[IsolateLeader],
        about: "isolate the leader of a random group",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "partition-majority",
        nodes: 5,
        faults: &[MajorityMinority],
        about: "a random majority and minority",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "partition-bridge",
        nodes: 5,
        faults: &[Bridge],
        about: "two halves that cannot talk and one node that reaches both",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "partition-ring",
        nodes: 5,
        faults: &[Ring],
        about: "a majorities ring: every node sees a different majority",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "partitions",
        nodes: 5,
        faults: &[IsolateNode, IsolateLeader, MajorityMinority, Bridge, Ring],
        about: "every kind of partition",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "kill",
        nodes: 3,
        faults: &[KillOne, KillMajority, KillAll],
        about: "kill -9 one node, a majority, all of them, and restart",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "pause",
        nodes: 3,
        faults: &[PauseNode, PauseLeader],
        about: "SIGSTOP a node or a leader, then SIGCONT",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "clock-skew",
        nodes: 3,
        faults: &[SkewAhead, SkewBehind, SkewLeader, SkewJump],
        about: "a node's wall clock ahead, behind, on a leader, or jumping (libfaketime)",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "membership",
        nodes: 3,
        faults: &[RemoveNode, RemoveLeader],
        about: "remove a node (or a leader) while bids flow, then add it back empty",
        disk: DataDisk::Plain,
    },
    Scenario {
        name: "disk-full",
        nodes: 3,
        faults: &[FillDisk, FillLeaderDisk],
        about:
            "fill a node's (or a leader's) disk until it stops, then free it and restart the node",
        disk: DataDisk::Tmpfs { bytes: DISK_BYTES },
    },
    Scenario {
        name: "power-off",
        nodes: 3,
        faults: &[PowerOffNode, PowerOffLeader, PowerOffAll],
        about: "cut a node's (a leader's, every node's) power: kill -9 and lose every write \
                not yet synced, then restart",
        disk: DataDisk::Lazy { torn: false },
    },
    Scenario {
        name: "power-off-torn",
        nodes: 3,
        faults: &[PowerOffNode, PowerOffLeader, PowerOffAll],
        about: "power-off, but a cut may find some unsynced pages already written back, so \
                files come back torn or with holes (sled 0.34 cannot always reopen them)",
        disk: DataDisk::Lazy { torn: true },
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
        disk: DataDisk::Plain,
    },
];

/// The scenarios `suite --ci` runs: a minute each, covering partitions, skew, kill,
/// membership, a full disk and power cuts, clean and torn (the torn ones can leave sled's files
/// unopenable, which a node recovers from with its peers' copies).
pub const CI_SUITE: &[&str] = &[
    "partition-leader",
    "clock-skew",
    "kill",
    "membership",
    "disk-full",
    "power-off",
    "power-off-torn",
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

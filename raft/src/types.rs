//! The Raft type configuration shared by every group: what a log entry carries (a stamped
//! command), what applying it answers, and what a node's address record holds.

use std::fmt;
use std::io::Cursor;

use gavel_rules::{Command, Reply, StampMs};
use serde::{Deserialize, Serialize};

/// A command as proposed by a group leader, stamped with the leader's wall clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub stamp_ms: StampMs,
    pub command: Command,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proposal@{} for {}",
            self.stamp_ms,
            self.command.auction_id()
        )
    }
}

/// What applying an entry answers: the rules' reply for a proposal, nothing for blank and
/// membership entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Option<Reply>);

/// How the cluster reaches a node: clients (and forwarded requests) at `client_addr`, Raft
/// peers at `peer_addr`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GavelNode {
    pub client_addr: String,
    pub peer_addr: String,
}

impl fmt::Display for GavelNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client={} peer={}", self.client_addr, self.peer_addr)
    }
}

pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Gavel's Raft types: every group uses the same ones.
    pub TypeConfig:
        D = Proposal,
        R = Response,
        NodeId = NodeId,
        Node = GavelNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, GavelNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, GavelNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftStorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, GavelNode>;

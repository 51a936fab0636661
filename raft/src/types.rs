//! The Raft type configuration shared by every group: what a log entry carries (a batch of
//! commands stamped once), what applying it answers, and what a node's address record holds;
//! and the entry format older versions wrote (one command per entry), still read.

use std::fmt;
use std::io::Cursor;
use std::sync::Arc;

use gavel_rules::{Command, Reply, StampMs};
use serde::{Deserialize, Serialize};

/// Commands as proposed by a group leader, stamped once with the leader's wall clock. The state
/// machine decides them in order, each exactly as if it were alone in its entry.
///
/// The commands are shared, not owned: an entry is cloned for each follower it is sent to and
/// for the state machine (`LogStore`'s recent entries), and a clone must not copy every bid.
/// Serialized exactly as a `Vec`, so the on-disk entry format is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub stamp_ms: StampMs,
    pub commands: Arc<[Command]>,
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "proposal@{} of {} commands",
            self.stamp_ms,
            self.commands.len()
        )
    }
}

/// What applying an entry answers: the rules' reply for each command of a proposal, in order;
/// nothing for blank and membership entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response(pub Vec<Reply>);

/// The log entry format version this build writes. 1: one command per entry
/// ([`ProposalV1`]); 2: a batch ([`Proposal`]).
pub const ENTRY_FORMAT_VERSION: u8 = 2;

/// The proposal of entry format 1, read from data dirs written before batching.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposalV1 {
    pub stamp_ms: StampMs,
    pub command: Command,
}

impl fmt::Display for ProposalV1 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "proposal@{} (format 1)", self.stamp_ms)
    }
}

openraft::declare_raft_types!(
    /// Entry format 1, only to decode it with openraft's own serde shape.
    pub TypeConfigV1:
        D = ProposalV1,
        R = Response,
        NodeId = NodeId,
        Node = GavelNode,
        Entry = openraft::Entry<TypeConfigV1>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// An entry of format 1 as the same entry in today's format (a batch of one).
pub fn upgrade_entry(entry: openraft::Entry<TypeConfigV1>) -> Entry {
    use openraft::EntryPayload;
    let payload = match entry.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Normal(old) => EntryPayload::Normal(Proposal {
            stamp_ms: old.stamp_ms,
            commands: Arc::new([old.command]),
        }),
        EntryPayload::Membership(membership) => EntryPayload::Membership(membership),
    };
    Entry {
        log_id: entry.log_id,
        payload,
    }
}

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
        SnapshotData = crate::snapshot_data::SnapshotData,
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

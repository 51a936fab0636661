//! The node's public surface as the HTTP layer sees it: configuration, consistency levels and
//! the errors a proposal or a read can end in.

use std::path::PathBuf;

pub use gavel_storage::{AuctionCursor, AuctionFilter, BidFilter, BidPage};

/// Everything `gavel serve` configures about a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Raft groups (fixed when the cluster is first initialized).
    pub groups: u32,
    /// Address clients reach this node's HTTP API at (the advertised one, `HOST:PORT`).
    pub client_addr: String,
    /// Address peers reach this node's Raft transport at (the advertised one).
    pub peer_addr: String,
    /// Address the Raft transport listens on; may be a wildcard (`0.0.0.0:9080`) that is
    /// never announced.
    pub peer_listen: String,
    /// `(node id, peer address)` of every initial voter; empty means this node alone.
    pub initial_cluster: Vec<(u64, String)>,
    /// Start empty and wait to be added instead of bootstrapping.
    pub join: bool,
    /// How long a write waits for its decision before answering "outcome unknown".
    pub propose_timeout_ms: u64,
    /// A group builds a snapshot (and may then purge its log) after this many entries.
    pub snapshot_after_entries: u64,
    /// The most this node's wall clock may differ from a majority of the voters' for it to
    /// lead and stamp entries, in milliseconds.
    pub max_clock_offset_ms: u64,
    /// Mutual TLS on the peer transport (`--peer-cert-file` and friends); `None` is plain TCP.
    pub peer_tls: Option<gavel_raft::transport::PeerTls>,
    /// Replicas compare their states every this many milliseconds of a group's clock
    /// (`consistency`); 0: never. The same on every node.
    pub consistency_check_interval_ms: u64,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Never stale: confirmed with the group's quorum (read index) first.
    Linearizable,
    /// From this node's replica as it is; may lag the leader.
    Local,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ProposeError {
    /// No leader or no quorum right now: nothing was decided, retry later.
    #[error("{reason}")]
    Unavailable { reason: String, retry_after_s: u32 },
    /// The command may or may not have been decided (timeout): retry with the same key.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{reason}")]
    Unavailable { reason: String, retry_after_s: u32 },
    #[error("internal error: {0}")]
    Internal(String),
}

/// One page of the cross-group auction listing.
#[derive(Clone, Debug, Default)]
pub struct AuctionListing {
    pub auctions: Vec<gavel_rules::Auction>,
    /// Continue strictly below this position, when more may follow.
    pub next: Option<AuctionCursor>,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("storage: {0}")]
    Storage(#[from] gavel_storage::StorageError),
    #[error("raft: {0}")]
    Raft(String),
    #[error("configuration: {0}")]
    Config(String),
}

/// Why a membership or leadership change failed.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The change is not allowed as asked (HTTP 409/400).
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    NotFound(String),
    /// No leader, no quorum, or the change did not finish in time; it may still complete.
    #[error("{0}")]
    Unavailable(String),
}

/// A node as `/cluster` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    pub id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    /// Whether this node could reach it just now.
    pub reachable: bool,
}

/// A replica's progress in one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub node_id: u64,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// The state machine's digest, when asked for and computed (see `Node::cluster_status`).
    pub digest: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub id: u32,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Every reachable replica's progress, this node's included.
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterStatus {
    pub node_id: u64,
    pub nodes: Vec<NodeStatus>,
    pub groups: Vec<GroupStatus>,
}

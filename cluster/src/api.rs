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
    /// Address clients (and forwarded requests) reach this node at.
    pub client_addr: String,
    /// Address peers reach this node's Raft transport at.
    pub peer_addr: String,
    /// `(node id, peer address)` of every initial voter; empty means this node alone.
    pub initial_cluster: Vec<(u64, String)>,
    /// Start empty and wait to be added instead of bootstrapping.
    pub join: bool,
    /// How long a write waits for its decision before answering "outcome unknown".
    pub propose_timeout_ms: u64,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Never stale: confirmed with the group's quorum (read index) first.
    Linearizable,
    /// From this node's replica as it is; may lag the leader.
    Local,
}

#[derive(Debug, thiserror::Error)]
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

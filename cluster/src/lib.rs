//! A Gavel node: it hosts one replica of every Raft group, routes each auction to its group,
//! proposes commands, serves reads at the requested consistency and runs each led group's
//! deadline timers.
//!
//! - `node`: start/bootstrap, local reads, readiness, shutdown;
//! - `write_path`: proposing on the leader, forwarding from any other node;
//! - `read_path`: linearizable reads through the leader's read index;
//! - `membership`: adding/removing nodes, leadership transfer;
//! - `handoff`: moving every led group to another voter before the node stops;
//! - `placement`: spreading group leaders over voters;
//! - `status`: the `/cluster` view;
//! - `inbound`, `peer_api`: what peers ask of this node, and how it is encoded;
//! - `raft_ops`: small shared operations on a local group;
//! - `routing`: auction id -> group;
//! - `deadlines`: the leader's start/end timers;
//! - `listing`: merging per-group listing pages;
//! - `observe`: Raft lag gauges;
//! - `clock_guard`, `clock_offsets`: probing peers' clocks and keeping a node with a skewed
//!   clock from leading;
//! - `consistency`: replicas compare their states at checkpoints; one that differs from the
//!   majority stops, and gets the group's state back from a copy when it starts again;
//! - `recovery`: a node whose state machines were lost (its storage engine would not open
//!   after a crash) brings them back from copies before its groups start, and sends copies to
//!   peers that lost theirs;
//! - `backup`: a linearizable copy of every group as a backup file; verifying one; building a
//!   new cluster member's data dir from it.
//!
//! Architecture invariant: this crate knows openraft (through `gavel-raft`) but nothing of HTTP
//! or JSON; `src/` turns its results into responses.

// openraft's error types are large by design and its traits dictate our signatures.
#![allow(clippy::result_large_err)]

mod api;
pub mod backup;
mod clock_guard;
mod clock_offsets;
mod consistency;
mod deadlines;
mod forwarder;
mod handoff;
mod inbound;
mod listing;
mod membership;
mod node;
mod observe;
mod peer_api;
mod placement;
mod proposer;
mod raft_ops;
mod read_path;
mod read_rounds;
mod recovery;
mod routing;
mod status;
#[cfg(test)]
mod write_outcome_tests;
mod write_path;

pub use api::*;
pub use gavel_raft::transport::{PeerTls, TlsError};
pub use gavel_raft::wall_clock_ms;
pub use gavel_raft::{AppliedEvents, AuctionEvent, Watched};
pub use gavel_storage::lower_this_threads_priority;
pub use handoff::{HandoffReport, HANDOFF_MS_MAX};
pub use node::{Node, GROUPS_MAX};
pub use routing::group_of;

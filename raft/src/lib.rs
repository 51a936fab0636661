//! Gavel's Raft layer: one openraft instance per group, all sharing a node's sled database and
//! log flusher.
//!
//! - `types`: the type configuration (entries carry a leader-stamped `Proposal`);
//! - `log_store`: the durable Raft log per group;
//! - `state_machine`: applies entries with the auction rules; snapshots;
//! - `snapshot_data`: a snapshot's bytes, packed from the state when first read;
//! - `flusher`: group commit of appends across all groups;
//! - `gather`: batching without a timer (the flusher, proposers, forwarders and peer writers
//!   use it);
//! - `network`: outbound RPCs;
//! - `group`: opening a group with explicit settings;
//! - `clock`: the wall clock and clock-probe offset samples;
//! - `restore`: seeding a group of a new cluster from a backed-up state copy;
//! - `recover`: a replica whose state machine was lost, brought back from a copy;
//! - `checkpoint`: the entries at which replicas digest their states, to compare them.
//!
//! Architecture invariant: this crate and `cluster/` are the only ones that know openraft; it
//! knows nothing of HTTP.

// openraft's error types are large by design and its traits dictate our signatures.
#![allow(clippy::result_large_err)]

mod checkpoint;
mod clock;
mod flusher;
mod gather;
mod group;
mod log_store;
mod network;
mod recover;
mod restore;
mod snapshot_data;
mod state_machine;
pub mod transport;
mod types;

pub use checkpoint::{CheckpointDigest, CheckpointRule, Checkpoints};
pub use clock::{wall_clock_ms, ClockSample};
pub use flusher::{Flusher, PENDING_FLUSHES_MAX};
pub use gather::gather_ready;
pub use gavel_rules::Reply;
pub use group::{Group, GroupError, RaftSettings, StateDigest};
pub use log_store::LogStore;
pub use network::Network;
pub use recover::{adopt_copy, applied_index, state_behind_log, stored_copy_reaching};
pub use restore::{restore_group, restored_log_id};
pub use snapshot_data::SnapshotData;
pub use state_machine::{
    AppliedChannel, AppliedEvents, AuctionEvent, GroupObserver, SnapshotBuilder, StateMachine,
    Watched, APPLIED_EVENTS_QUEUE_MAX,
};
pub use types::*;

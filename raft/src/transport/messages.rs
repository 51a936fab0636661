//! What travels between nodes: Raft's three RPCs, clock probes (answered by the transport
//! itself), and application requests whose bodies the cluster layer encodes itself (forwarded
//! writes, read indexes, membership changes).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::types::{NodeId, TypeConfig};

/// An application request: `kind` tells the receiver's handler how to decode `body`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRequest {
    pub kind: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    App(AppRequest),
    /// "What does your wall clock say?", with the sender's reading (for the receiver's logs and
    /// so a probe is never empty). Answered with [`PeerResponse::ClockProbe`].
    ClockProbe {
        sent_ms: i64,
    },
}

impl PeerRequest {
    pub fn name(&self) -> &'static str {
        match self {
            PeerRequest::AppendEntries(_) => "append_entries",
            PeerRequest::Vote(_) => "vote",
            PeerRequest::InstallSnapshot(_) => "install_snapshot",
            PeerRequest::App(_) => "app",
            PeerRequest::ClockProbe { .. } => "clock_probe",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    App(Vec<u8>),
    /// The receiver could not handle the request at all (unknown group, shutting down...).
    Refused(String),
    /// The responder's wall clock, read when the probe arrived.
    ClockProbe {
        now_ms: i64,
    },
    /// The receiver's connection already handles `in_flight_max` requests of this kind, so it
    /// did not take this one on: nothing was done, the sender may try again later.
    Busy {
        in_flight_max: u32,
    },
}

impl PeerResponse {
    /// What kind of response this is, for errors (its body may be large).
    pub fn name(&self) -> &'static str {
        match self {
            PeerResponse::AppendEntries(_) => "append_entries",
            PeerResponse::Vote(_) => "vote",
            PeerResponse::InstallSnapshot(_) => "install_snapshot",
            PeerResponse::App(_) => "app",
            PeerResponse::Refused(_) => "refused",
            PeerResponse::ClockProbe { .. } => "clock_probe",
            PeerResponse::Busy { .. } => "busy",
        }
    }
}

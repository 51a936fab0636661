//! Node-to-node application requests, carried by the peer transport as opaque `AppRequest`s:
//! forwarded writes, read indexes, membership changes, leadership transfer, status, copies of a
//! group's state for a node that lost its own, and digests at consistency checkpoints.
//!
//! The Raft group a request concerns travels in the transport envelope, not in these bodies.

use gavel_raft::transport::AppRequest;
use gavel_raft::{CheckpointDigest, GavelNode, SnapshotMeta};
use gavel_rules::{Command, Reply};
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};

use crate::api::ProposeError;

/// The `kind` of every application request this version sends.
pub const APP_KIND_V1: u16 = 1;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AppCall {
    /// Propose this command in the group (the receiver must lead it; it stamps the entry).
    Propose(Command),
    /// Confirm leadership with a quorum and return the index a linearizable read must wait for.
    ReadIndex,
    /// Add a learner to the group, waiting until it has caught up.
    AddLearner {
        node_id: u64,
        node: GavelNode,
    },
    ChangeMembership(ChangeMembers<u64, GavelNode>),
    /// Leadership transfer, on the current leader: stop writes and heartbeats for a while.
    YieldLeadership {
        window_ms: u64,
    },
    /// Leadership transfer, on every other voter but the target: do not campaign for a while.
    HoldElections {
        window_ms: u64,
    },
    /// Leadership transfer, on the target: campaign until elected or the window closes.
    /// `pin`: an operator asked for it, so automatic placement leaves the group where it is
    /// for as long as this node keeps leading it.
    Campaign {
        window_ms: u64,
        pin: bool,
    },
    /// This node's view of every group it hosts; state digests (which read the whole state)
    /// only when asked.
    Status {
        digests: bool,
    },
    /// Propose each of these commands in the group, as `Propose` would one by one; answered
    /// with one outcome per command, in order. At most `COMMANDS_PER_PROPOSAL_MAX`.
    ProposeBatch(Vec<Command>),
    /// A piece of a copy of the group's state machine at a committed point at or past log
    /// index `at_least`, for a node whose own state was lost (`recovery`): bytes from
    /// `offset` on of copy `copy`, the snapshot id an earlier piece named; `None` asks for a
    /// new copy (and its first piece).
    StateCopy {
        at_least: u64,
        copy: Option<String>,
        offset: u64,
    },
    /// This replica's digest of the group's state at the consistency checkpoint at log index
    /// `index` (`consistency`).
    CheckpointDigest {
        index: u64,
    },
}

/// Why a request failed on the node that received it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum RemoteFailure {
    /// The receiver does not lead the group (any more).
    NotLeader,
    Unavailable(String),
    /// The command may or may not have been decided.
    Unknown(String),
    Refused(String),
}

impl From<ProposeError> for RemoteFailure {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::Unavailable { reason, .. } => RemoteFailure::Unavailable(reason),
            ProposeError::Unknown(reason) => RemoteFailure::Unknown(reason),
            ProposeError::Internal(reason) => RemoteFailure::Refused(reason),
        }
    }
}

/// One node's view of one group, as `/cluster` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupView {
    pub group: u32,
    pub leader: Option<u64>,
    pub term: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub last_log_index: u64,
    pub committed_index: u64,
    pub applied_index: u64,
    /// Digest of the state machine's contents at `applied_index` (an empty state's is 0); 0
    /// too when not asked for, or when it could not be computed. The asker knows which it
    /// asked for; the field stays a plain number, which older nodes send and read.
    pub digest: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AppAnswer {
    Proposed(Result<Box<Reply>, RemoteFailure>),
    ReadIndex(Result<u64, RemoteFailure>),
    Done(Result<(), RemoteFailure>),
    Status(Vec<GroupView>),
    ProposedBatch(Vec<Result<Box<Reply>, RemoteFailure>>),
    StateCopy(Result<StateCopyPiece, RemoteFailure>),
    CheckpointDigest(CheckpointDigest),
}

/// Part of a copy of a group's state machine (a Raft snapshot's data), as `AppCall::StateCopy`
/// asked for it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StateCopyPiece {
    /// What the copy holds: the log id it reaches and the membership there. Its `snapshot_id`
    /// names the copy for the next pieces.
    pub meta: SnapshotMeta,
    /// The whole copy's length.
    pub total_bytes: u64,
    /// Where in the copy `bytes` start.
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

pub fn encode_call(call: &AppCall) -> Result<AppRequest, String> {
    let body = gavel_storage::encode(call).map_err(|e| e.to_string())?;
    Ok(AppRequest {
        kind: APP_KIND_V1,
        body,
    })
}

pub fn decode_call(request: &AppRequest) -> Result<AppCall, String> {
    if request.kind != APP_KIND_V1 {
        return Err(format!("unknown application request kind {}", request.kind));
    }
    gavel_storage::decode(&request.body).map_err(|e| e.to_string())
}

pub fn encode_answer(answer: &AppAnswer) -> Vec<u8> {
    // Encoding plain owned data into a Vec cannot fail; an empty body decodes as an error.
    gavel_storage::encode(answer).unwrap_or_default()
}

pub fn decode_answer(bytes: &[u8]) -> Result<AppAnswer, String> {
    gavel_storage::decode(bytes).map_err(|e| e.to_string())
}

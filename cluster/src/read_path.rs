//! Linearizable reads: the group's leader confirms its leadership with a quorum and names a
//! read index; this replica waits until it has applied that far, then answers from its own
//! state. On a follower the read index comes from the leader over the peer transport, so a
//! deposed leader or a lagging follower never answers with stale state.

use std::time::Duration;

use gavel_raft::transport::{CallError, PeerRequest, PeerResponse};
use gavel_raft::Group;

use crate::api::ReadError;
use crate::node::{Node, LEADER_WAIT};
use crate::peer_api::{decode_answer, encode_call, AppAnswer, AppCall, RemoteFailure};
use crate::raft_ops::{wait_applied, wait_for_leader, wait_for_leader_change};
use crate::read_rounds::read_index;

/// With the half-second wait for a new leader between attempts, a read rides out an election
/// of up to about four seconds before it answers 503.
const READ_ATTEMPTS_MAX: usize = 8;
/// How long a read waits for the quorum round trip and for this replica to catch up.
const READ_TIMEOUT: Duration = Duration::from_millis(5_000);

fn unavailable(reason: String) -> ReadError {
    ReadError::Unavailable {
        reason,
        retry_after_s: 1,
    }
}

impl Node {
    pub(crate) async fn ensure_linearizable(&self, group: &Group) -> Result<(), ReadError> {
        self.linearizable_index(group).await.map(|_| ())
    }

    /// Like `ensure_linearizable`, and returns the read index: every write acknowledged
    /// before the call is at or below it, and this replica has applied at least that far.
    pub(crate) async fn linearizable_index(&self, group: &Group) -> Result<u64, ReadError> {
        let mut why = format!("group {} has no leader", group.id);
        for _ in 0..READ_ATTEMPTS_MAX {
            let Some(leader) = wait_for_leader(group, LEADER_WAIT).await else {
                break;
            };
            let read_index = if leader == self.node_id() {
                read_index(&self.read_rounds[group.id as usize]).await
            } else {
                self.remote_read_index(leader, group).await
            };
            match read_index {
                Ok(index) if wait_applied(group, index, READ_TIMEOUT).await => return Ok(index),
                Ok(index) => {
                    return Err(unavailable(format!(
                        "this replica of group {} has not applied index {index} in time",
                        group.id
                    )))
                }
                Err(RemoteFailure::NotLeader) => {
                    why = format!("group {} changed leader during the read", group.id);
                    wait_for_leader_change(group, leader, Duration::from_millis(500)).await;
                }
                Err(
                    RemoteFailure::Unavailable(reason)
                    | RemoteFailure::Unknown(reason)
                    | RemoteFailure::Refused(reason),
                ) => return Err(unavailable(reason)),
            }
        }
        Err(unavailable(why))
    }

    async fn remote_read_index(&self, leader: u64, group: &Group) -> Result<u64, RemoteFailure> {
        let request = encode_call(&AppCall::ReadIndex).map_err(RemoteFailure::Refused)?;
        let response = self
            .transport
            .call(leader, group.id, PeerRequest::App(request), READ_TIMEOUT)
            .await;
        match response {
            Ok(PeerResponse::App(bytes)) => match decode_answer(&bytes) {
                Ok(AppAnswer::ReadIndex(result)) => result,
                Ok(other) => Err(RemoteFailure::Refused(format!(
                    "unexpected answer {other:?}"
                ))),
                Err(e) => Err(RemoteFailure::Refused(e)),
            },
            Ok(PeerResponse::Refused(reason)) => Err(RemoteFailure::Unavailable(reason)),
            Ok(PeerResponse::Busy { in_flight_max }) => Err(RemoteFailure::Unavailable(format!(
                "node {leader} has {in_flight_max} requests in flight"
            ))),
            Ok(other) => Err(RemoteFailure::Refused(format!(
                "unexpected response {}",
                other.name()
            ))),
            // The leader we know may be gone: look for a new one.
            Err(CallError::Unreachable { .. }) => Err(RemoteFailure::NotLeader),
            Err(e) => Err(RemoteFailure::Unavailable(e.to_string())),
        }
    }
}

//! Writes: a command goes to its group's leader. On the leader it is stamped and proposed; on
//! any other node it is forwarded over the peer transport and the leader's reply comes back
//! unchanged. During an election the node waits a bounded time for a leader, then gives up
//! with "unavailable" (HTTP 503). Once a command may have reached a leader, failures are
//! "unknown" (HTTP 504), never "failed": the client retries with the same key.

use std::sync::Arc;
use std::time::Duration;

use gavel_raft::transport::{CallError, PeerRequest, PeerResponse};
use gavel_raft::Group;
use gavel_rules::{Command, Reply};

use crate::api::ProposeError;
use crate::membership::{NotAdmitted, Writer, WRITES_QUEUED_PER_GROUP_MAX};
use crate::node::{Node, LEADER_WAIT};
use crate::peer_api::{decode_answer, encode_call, AppAnswer, AppCall, RemoteFailure};
use crate::proposer::Queued;
use crate::raft_ops::{wait_for_leader, wait_for_leader_change, Attempt};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Leaders tried before a write gives up as unavailable.
/// With the half-second wait for a new leader between attempts, a write rides out an election
/// of up to about four seconds before it answers 503.
const WRITE_ATTEMPTS_MAX: usize = 8;
/// Extra time a forwarded write may take on the wire beyond the leader's own propose timeout.
const FORWARD_MARGIN: Duration = Duration::from_millis(500);
const RETRY_AFTER_S: u32 = 1;

impl Node {
    pub(crate) fn propose_timeout(&self) -> Duration {
        Duration::from_millis(self.config.propose_timeout_ms)
    }

    /// Replicates `command` in its auction's group and returns the state machine's reply.
    pub async fn propose(&self, command: Command) -> Result<Reply, ProposeError> {
        let group = self.group_for(command.auction_id()).clone();
        let mut why = format!("group {} has no leader", group.id);
        for _ in 0..WRITE_ATTEMPTS_MAX {
            let Some(leader) = wait_for_leader(&group, LEADER_WAIT).await else {
                break;
            };
            let attempt = if leader == self.node_id() {
                self.propose_here(&group, command.clone(), Writer::Client)
                    .await
            } else {
                self.forward(leader, &group, command.clone()).await
            };
            match attempt {
                Ok(reply) => return Ok(reply),
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => {
                    why = reason;
                    wait_for_leader_change(&group, leader, Duration::from_millis(500)).await;
                }
            }
        }
        Err(ProposeError::Unavailable {
            reason: why,
            retry_after_s: RETRY_AFTER_S,
        })
    }

    /// Proposes on this node as the group's leader, stamping the entry with this node's clock,
    /// which must be within bounds (`clock_guard`): a leader with a bad clock answers
    /// "unavailable" until it has handed its groups over.
    pub(crate) async fn propose_here(
        &self,
        group: &Arc<Group>,
        command: Command,
        writer: Writer,
    ) -> Result<Reply, Attempt> {
        if let Some(problem) = self.clock.problem() {
            return Err(Attempt::Final(ProposeError::Unavailable {
                reason: format!("node {} does not stamp writes: {problem}", self.node_id()),
                retry_after_s: RETRY_AFTER_S,
            }));
        }
        // Counted in flight until decided, so that a yielding leader's log stops growing
        // before a transfer's target campaigns.
        let admitted = self.holds[group.id as usize]
            .admit_write(writer, self.propose_timeout())
            .await;
        let _admitted = match admitted {
            Ok(admitted) => admitted,
            Err(NotAdmitted::Held) => {
                return Err(Attempt::Retry(format!(
                    "group {} is transferring its leadership",
                    group.id
                )))
            }
            Err(NotAdmitted::Full) => {
                metrics::counter!("gavel_writes_shed_total").increment(1);
                return Err(Attempt::Final(ProposeError::Unavailable {
                    reason: format!(
                        "group {} has {WRITES_QUEUED_PER_GROUP_MAX} writes queued; not proposed",
                        group.id
                    ),
                    retry_after_s: RETRY_AFTER_S,
                }));
            }
        };
        let (reply, answer) = oneshot::channel();
        let queued = Queued {
            command,
            queued_at: Instant::now(),
            reply,
        };
        if self.proposers[group.id as usize].try_send(queued).is_err() {
            metrics::counter!("gavel_writes_shed_total").increment(1);
            return Err(Attempt::Final(ProposeError::Unavailable {
                reason: format!(
                    "group {}'s proposer is full or stopped; not proposed",
                    group.id
                ),
                retry_after_s: RETRY_AFTER_S,
            }));
        }
        // The proposer answers every command it took; without an answer it failed mid-way and
        // the command may have been proposed.
        answer.await.unwrap_or_else(|_| {
            Err(Attempt::Final(ProposeError::Unknown(format!(
                "group {}'s proposer stopped before answering",
                group.id
            ))))
        })
    }

    pub(crate) async fn forward(
        &self,
        leader: u64,
        group: &Group,
        command: Command,
    ) -> Result<Reply, Attempt> {
        let request = encode_call(&AppCall::Propose(command))
            .map_err(|e| Attempt::Final(ProposeError::Internal(e)))?;
        let timeout = self.propose_timeout() + FORWARD_MARGIN;
        let response = self
            .transport
            .call(leader, group.id, PeerRequest::App(request), timeout)
            .await;
        match response {
            Ok(PeerResponse::App(bytes)) => match decode_answer(&bytes) {
                Ok(AppAnswer::Proposed(Ok(reply))) => Ok(*reply),
                Ok(AppAnswer::Proposed(Err(failure))) => Err(failure_attempt(failure)),
                // The leader had the write and may have decided it: the outcome is unknown.
                Ok(other) => Err(Attempt::Final(ProposeError::Unknown(format!(
                    "unexpected answer from node {leader}: {other:?}"
                )))),
                Err(e) => Err(Attempt::Final(ProposeError::Unknown(format!(
                    "unreadable answer from node {leader}: {e}"
                )))),
            },
            // The peer refused before serving it (starting, stopping, no such group).
            Ok(PeerResponse::Refused(reason)) => Err(Attempt::Retry(reason)),
            // The leader's connection had no room for it: never proposed, and the leader is
            // loaded, so the client should back off rather than this node retry at once.
            Ok(PeerResponse::Busy { in_flight_max }) => {
                metrics::counter!("gavel_writes_shed_total").increment(1);
                Err(Attempt::Final(ProposeError::Unavailable {
                    reason: format!(
                        "node {leader} has {in_flight_max} forwarded requests in flight; not proposed"
                    ),
                    retry_after_s: RETRY_AFTER_S,
                }))
            }
            Ok(other) => Err(Attempt::Final(ProposeError::Unknown(format!(
                "unexpected response from node {leader}: {other:?}"
            )))),
            // Never sent: safe to try another leader.
            Err(e @ CallError::Unreachable { .. }) => Err(Attempt::Retry(e.to_string())),
            Err(e @ CallError::Encode { .. }) => {
                Err(Attempt::Final(ProposeError::Internal(e.to_string())))
            }
            // Sent, answer lost: the leader may have decided.
            Err(e) => Err(Attempt::Final(ProposeError::Unknown(e.to_string()))),
        }
    }
}

fn failure_attempt(failure: RemoteFailure) -> Attempt {
    match failure {
        RemoteFailure::NotLeader => Attempt::Retry("the leader moved while forwarding".into()),
        RemoteFailure::Unavailable(reason) => Attempt::Final(ProposeError::Unavailable {
            reason,
            retry_after_s: RETRY_AFTER_S,
        }),
        RemoteFailure::Unknown(reason) => Attempt::Final(ProposeError::Unknown(reason)),
        RemoteFailure::Refused(reason) => Attempt::Final(ProposeError::Internal(reason)),
    }
}

//! Writes: a command goes to its group's leader. On the leader it is admitted and queued for
//! the group's proposer (`proposer`), which stamps and proposes it in a batch; on any other
//! node it is forwarded (`forwarder`, batched per leader) and the leader's reply comes back
//! unchanged. During an election the node waits a bounded time for a leader, then gives up
//! with "unavailable" (HTTP 503). Once a command may have reached a leader, failures are
//! "unknown" (HTTP 504), never "failed": the client retries with the same key.

use std::sync::Arc;
use std::time::Duration;

use gavel_raft::Group;
use gavel_rules::{Command, Reply};

use crate::api::ProposeError;
use crate::membership::{NotAdmitted, Writer, WRITES_QUEUED_PER_GROUP_MAX};
use crate::node::{Node, LEADER_WAIT};
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

    /// Forwards `command` to `leader`, batched with the other writes this node forwards to it
    /// for the group (see `forwarder`).
    pub(crate) async fn forward(
        &self,
        leader: u64,
        group: &Group,
        command: Command,
    ) -> Result<Reply, Attempt> {
        let timeout = self.propose_timeout() + FORWARD_MARGIN;
        self.forwarders
            .forward(leader, group.id, command, timeout)
            .await
    }
}

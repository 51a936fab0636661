//! Answers what peers ask of this node: Raft RPCs go to the named group's openraft instance,
//! application requests (forwarded writes, read indexes, membership, leadership) to the node.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use gavel_raft::transport::{InboundHandler, PeerRequest, PeerResponse};
use gavel_raft::Group;
use gavel_rules::{Command, Reply};

use crate::membership::{add_learner_local, campaign, change_membership_local, Writer};
use crate::node::Node;
use crate::peer_api::{decode_call, encode_answer, AppAnswer, AppCall, RemoteFailure};
use crate::proposer::COMMANDS_PER_PROPOSAL_MAX;
use crate::raft_ops::{is_leader, vote_lease_left, wait_applied};
use crate::read_rounds::read_index;

/// How long a yielding leader waits for its in-flight writes to apply.
const IN_FLIGHT_DRAIN: Duration = Duration::from_millis(2_000);
/// How long a transfer's target waits for a fresh clock verdict when the last one does not
/// let it lead (a wall-clock step since, say): longer than a probe round, well within the
/// transfer window.
const CLOCK_VERDICT_WAIT: Duration = Duration::from_millis(1_500);

pub struct Inbound {
    node: Weak<Node>,
}

impl Inbound {
    pub fn new(node: &Arc<Node>) -> Inbound {
        Inbound {
            node: Arc::downgrade(node),
        }
    }
}

impl InboundHandler for Inbound {
    fn handle(
        &self,
        from: u64,
        group: u32,
        request: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = PeerResponse> + Send + 'static>> {
        let node = self.node.clone();
        Box::pin(async move {
            let Some(node) = node.upgrade().filter(|n| !n.stopping()) else {
                return PeerResponse::Refused("node is stopping".into());
            };
            let Some(target) = node.groups.get(group as usize).cloned() else {
                return PeerResponse::Refused(format!("this node hosts no group {group}"));
            };
            match request {
                PeerRequest::AppendEntries(rpc) => {
                    PeerResponse::AppendEntries(target.raft.append_entries(rpc).await)
                }
                PeerRequest::Vote(rpc) => PeerResponse::Vote(target.raft.vote(rpc).await),
                PeerRequest::InstallSnapshot(rpc) => {
                    PeerResponse::InstallSnapshot(target.raft.install_snapshot(rpc).await)
                }
                // The transport answers probes itself; this arm only keeps the match whole.
                PeerRequest::ClockProbe { .. } => PeerResponse::ClockProbe {
                    now_ms: gavel_raft::wall_clock_ms(),
                },
                PeerRequest::App(request) => match decode_call(&request) {
                    Ok(call) => {
                        PeerResponse::App(encode_answer(&serve_local(&node, &target, call).await))
                    }
                    Err(e) => {
                        tracing::warn!(from, group, error = %e, "undecodable application request");
                        PeerResponse::Refused(e)
                    }
                },
            }
        })
    }
}

/// Carries out an application request on this node.
pub(crate) async fn serve_local(node: &Node, group: &Arc<Group>, call: AppCall) -> AppAnswer {
    let holds = &node.holds[group.id as usize];
    match call {
        AppCall::Propose(command) => AppAnswer::Proposed(
            node.propose_here(group, command, Writer::Client)
                .await
                .map(Box::new)
                .map_err(Into::into),
        ),
        AppCall::ProposeBatch(commands) => {
            AppAnswer::ProposedBatch(propose_batch(node, group, commands).await)
        }
        AppCall::ReadIndex => {
            AppAnswer::ReadIndex(read_index(&node.read_rounds[group.id as usize]).await)
        }
        AppCall::AddLearner {
            node_id,
            node: member,
        } => AppAnswer::Done(add_learner_local(group, node_id, member).await),
        AppCall::ChangeMembership(changes) => {
            AppAnswer::Done(change_membership_local(group, changes).await)
        }
        AppCall::YieldLeadership { window_ms } => {
            yield_leadership(node, group, Duration::from_millis(window_ms)).await;
            AppAnswer::Done(Ok(()))
        }
        AppCall::HoldElections { window_ms } => {
            holds.hold_elections(group, Duration::from_millis(window_ms));
            AppAnswer::Done(Ok(()))
        }
        AppCall::Campaign { window_ms, pin } => {
            AppAnswer::Done(campaign_here(node, group, Duration::from_millis(window_ms), pin).await)
        }
        AppCall::Status { digests } => AppAnswer::Status(node.local_views(digests).await),
        AppCall::StateCopy {
            at_least,
            copy,
            offset,
        } => AppAnswer::StateCopy(
            node.copies_served
                .serve(group, at_least, copy, offset)
                .await,
        ),
        AppCall::CheckpointDigest { index } => {
            AppAnswer::CheckpointDigest(crate::consistency::local_digest(group, index))
        }
    }
}

/// Leadership transfer, on the leader: hold writes and heartbeats for `window` (zero
/// releases), once the leader would grant the target its vote and with in-flight writes done.
async fn yield_leadership(node: &Node, group: &Arc<Group>, window: Duration) {
    let holds = &node.holds[group.id as usize];
    if !window.is_zero() && is_leader(group, node.node_id()) {
        // This leader must grant the target its vote, which it does only once its own
        // leadership is older than the leader lease. Wait out the rest of that here, with
        // writes still flowing, instead of holding them for it.
        let left = vote_lease_left(group).await;
        if !left.is_zero() {
            tracing::info!(
                group = group.id,
                wait_ms = left.as_millis() as u64,
                "young leadership: waiting out the leader lease before yielding"
            );
            tokio::time::sleep(left).await;
        }
    }
    holds.yield_leadership(group, window);
    if !window.is_zero() {
        // Let writes already in flight finish here before the target campaigns, so none is
        // cut off by the change of leader and the log stops growing (writes admitted just
        // before the hold may not have reached the log yet).
        holds.drain_writes(IN_FLIGHT_DRAIN).await;
        let last_log = group.raft.metrics().borrow().last_log_index.unwrap_or(0);
        wait_applied(group, last_log, IN_FLIGHT_DRAIN).await;
    }
}

/// Leadership transfer, on the target: campaign, unless this node may not lead.
async fn campaign_here(
    node: &Node,
    group: &Arc<Group>,
    window: Duration,
    pin: bool,
) -> Result<(), RemoteFailure> {
    // A transfer must not hand a group to a node that is handing its own groups off to stop,
    // nor to one whose clock cannot stamp.
    if node.leaving() {
        return Err(RemoteFailure::Refused(format!(
            "node {} is shutting down",
            node.node_id()
        )));
    }
    let verdict_wait = window.min(CLOCK_VERDICT_WAIT);
    if let Some(problem) = node.clock.problem_after_next_verdict(verdict_wait).await {
        return Err(RemoteFailure::Refused(format!(
            "node {} will not lead: {problem}",
            node.node_id()
        )));
    }
    let elected = campaign(group, node.node_id(), window, &node.leaving).await;
    if elected.is_ok() && pin {
        node.pinned[group.id as usize].store(true, Ordering::Relaxed);
    }
    elected
}

/// Proposes forwarded commands here, each as if forwarded alone; the proposer batches them
/// with whatever else this leader is proposing. A batch over the bound is refused whole, unproposed.
async fn propose_batch(
    node: &Node,
    group: &Arc<Group>,
    commands: Vec<Command>,
) -> Vec<Result<Box<Reply>, RemoteFailure>> {
    if commands.len() > COMMANDS_PER_PROPOSAL_MAX {
        let why = format!(
            "{} commands in one frame; at most {COMMANDS_PER_PROPOSAL_MAX}",
            commands.len()
        );
        return vec![Err(RemoteFailure::Unavailable(why)); commands.len()];
    }
    let proposals = commands.into_iter().map(|command| async move {
        node.propose_here(group, command, Writer::Client)
            .await
            .map(Box::new)
            .map_err(Into::into)
    });
    futures::future::join_all(proposals).await
}

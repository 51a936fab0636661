//! Small operations on one local Raft group that the write, read and membership paths share.

use std::time::Duration;

use gavel_raft::{Group, Proposal, Vote};
use gavel_rules::Reply;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::oneshot;

use crate::api::ProposeError;
use crate::peer_api::RemoteFailure;

/// How a write attempt on a node ended when it did not produce a reply.
#[derive(Clone, Debug)]
pub(crate) enum Attempt {
    /// Nothing was decided; try again (possibly on another node) once leadership settles.
    Retry(String),
    /// Give this error to the client.
    Final(ProposeError),
}

impl From<Attempt> for RemoteFailure {
    fn from(attempt: Attempt) -> Self {
        match attempt {
            Attempt::Retry(_) => RemoteFailure::NotLeader,
            Attempt::Final(e) => e.into(),
        }
    }
}

/// The group's leader, waiting up to `wait` for an election to finish.
pub(crate) async fn wait_for_leader(group: &Group, wait: Duration) -> Option<u64> {
    let mut metrics = group.raft.metrics();
    let wait_for_one = async {
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Some(leader);
            }
            if metrics.changed().await.is_err() {
                return None;
            }
        }
    };
    tokio::time::timeout(wait, wait_for_one)
        .await
        .ok()
        .flatten()
}

/// Waits (bounded) until the group's known leader is no longer `old`.
pub(crate) async fn wait_for_leader_change(group: &Group, old: u64, wait: Duration) {
    let mut metrics = group.raft.metrics();
    let _ = tokio::time::timeout(wait, async {
        while metrics.borrow_and_update().current_leader == Some(old) {
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// How long reading RaftCore's vote after a rejected write may take before the write counts
/// as possibly appended.
const VOTE_READ_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Proposes on this node, which must lead the group; the replies are in command order.
pub(crate) async fn propose_local(
    group: &Group,
    proposal: Proposal,
    timeout: Duration,
) -> Result<Vec<Reply>, Attempt> {
    let node_id = group.raft.metrics().borrow().id;
    if !is_leader(group, node_id) {
        // Not handed to openraft at all: safe to send to the leader the metrics will name.
        return Err(Attempt::Retry(format!(
            "this node no longer leads group {}",
            group.id
        )));
    }
    submit(group, node_id, proposal, timeout).await
}

/// Hands `proposal` to openraft and waits (bounded) for its reply. Once openraft has the write,
/// anything but a reply is "unknown" (the entry may be in logs and commit later), except a
/// reject openraft gave without appending it, which is retried.
pub(crate) async fn submit(
    group: &Group,
    node_id: u64,
    proposal: Proposal,
    timeout: Duration,
) -> Result<Vec<Reply>, Attempt> {
    let unknown = |why: String| Attempt::Final(ProposeError::Unknown(why));
    let vote_before = core_vote(group);
    let answer = match group.raft.client_write_ff(proposal).await {
        Ok(answer) => answer,
        // RaftCore had stopped and never received the write: nothing was done.
        Err(fatal) => {
            return Err(Attempt::Final(ProposeError::Unavailable {
                reason: format!("group {} is stopped: {fatal}", group.id),
                retry_after_s: 1,
            }))
        }
    };
    match tokio::time::timeout(timeout, answer).await {
        Err(_) => Err(unknown(format!(
            "no decision from group {} within {} ms",
            group.id,
            timeout.as_millis()
        ))),
        // RaftCore dropped the answer: it stopped (shutdown, or a fatal storage error) with the
        // write possibly appended and replicated; the next leader may commit it.
        Ok(Err(_)) => Err(unknown(format!(
            "group {} stopped before deciding",
            group.id
        ))),
        Ok(Ok(Ok(response))) => Ok(response.data.0),
        Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => {
            if rejected_unappended(group, node_id, vote_before).await {
                Err(Attempt::Retry(format!(
                    "this node no longer leads group {}",
                    group.id
                )))
            } else {
                Err(unknown(format!(
                    "this node lost the leadership of group {} after appending the write",
                    group.id
                )))
            }
        }
        Ok(Ok(Err(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(Attempt::Final(ProposeError::Internal(e.to_string())))
        }
    }
}

/// RaftCore's vote, read by a request queued now: queued just before a write, it is the vote
/// RaftCore held right before that write.
fn core_vote(group: &Group) -> oneshot::Receiver<Vote> {
    let (tx, rx) = oneshot::channel();
    group.raft.external_request(move |state| {
        // The writer stopped waiting: nobody needs the answer.
        let _ = tx.send(*state.vote_ref());
    });
    rx
}

/// Whether openraft answered `ForwardToLeader` to a write without ever appending it.
//
// openraft 0.9.25 answers a write `ForwardToLeader` in two places: `RaftCore::write_entry`,
// at once, when the engine has no established leadership (nothing appended: proposing again on
// the leader is safe, and elections need that retry), and the `DeleteConflictLog` command,
// when an entry appended under this node's leadership is truncated by a newer leader's log.
// The truncated entry may still sit on other voters and commit there, so proposing it again
// could apply it twice (a keyless create then answers 409 for its own auction, a pause applies
// twice). The error does not say which case it is. The vote does: openraft appends a write only
// while its vote is this node's own committed vote, votes only grow, and RaftCore handles API
// messages in order. So the vote read by a request queued before the write and the vote read
// after the answer bracket the vote the write met; if they are equal and not ours, the write
// was never appended. Anything else counts as possibly appended.
async fn rejected_unappended(group: &Group, node_id: u64, before: oneshot::Receiver<Vote>) -> bool {
    let Ok(before) = before.await else {
        return false;
    };
    let after = tokio::time::timeout(
        VOTE_READ_TIMEOUT,
        group.raft.with_raft_state(|state| *state.vote_ref()),
    )
    .await;
    let Ok(Ok(after)) = after else {
        return false;
    };
    let ours = after.is_committed() && after.leader_id().voted_for() == Some(node_id);
    before == after && !ours
}

/// On the leader: confirms leadership with a quorum and returns the log index a linearizable
/// read must see applied.
pub(crate) async fn read_index_local(
    group: &Group,
    timeout: Duration,
) -> Result<u64, RemoteFailure> {
    let check = tokio::time::timeout(timeout, group.raft.ensure_linearizable()).await;
    match check {
        Err(_) => Err(RemoteFailure::Unavailable(format!(
            "group {} did not confirm its quorum in time",
            group.id
        ))),
        Ok(Ok(read_log_id)) => Ok(read_log_id.map_or(0, |id| id.index)),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
            Err(RemoteFailure::NotLeader)
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
            Err(RemoteFailure::Unavailable(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(fatal))) => Err(RemoteFailure::Unavailable(fatal.to_string())),
    }
}

/// Waits (bounded) until this replica has applied `index`. Returns whether it did.
pub(crate) async fn wait_applied(group: &Group, index: u64, wait: Duration) -> bool {
    let mut metrics = group.raft.metrics();
    let caught_up = async {
        loop {
            if metrics
                .borrow_and_update()
                .last_applied
                .map_or(0, |id| id.index)
                >= index
            {
                return true;
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout(wait, caught_up).await.unwrap_or(false)
}

/// Waits (bounded) until this node leads `group`. Returns whether it does.
pub(crate) async fn wait_until_leader(group: &Group, node_id: u64, wait: Duration) -> bool {
    let mut metrics = group.raft.metrics();
    let elected = async {
        loop {
            {
                let seen = metrics.borrow_and_update();
                if seen.state == ServerState::Leader && seen.current_leader == Some(node_id) {
                    return true;
                }
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    };
    tokio::time::timeout(wait, elected).await.unwrap_or(false)
}

/// On the leader: waits (bounded) until `to` holds the leader's whole log by the leader's
/// replication metrics (its matched index reaches the last log index). `Err` carries the last
/// (matched, last log index) seen.
pub(crate) async fn wait_replicated(
    group: &Group,
    to: u64,
    wait: Duration,
) -> Result<(), (Option<u64>, Option<u64>)> {
    let mut metrics = group.raft.metrics();
    let mut seen = (None, None);
    let caught_up = async {
        loop {
            {
                let now = metrics.borrow_and_update();
                let matched = now
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&to).cloned().flatten())
                    .map(|log_id| log_id.index);
                seen = (matched, now.last_log_index);
                if matched.is_some() && matched >= now.last_log_index {
                    return true;
                }
            }
            if metrics.changed().await.is_err() {
                return false;
            }
        }
    };
    match tokio::time::timeout(wait, caught_up).await {
        Ok(true) => Ok(()),
        _ => Err(seen),
    }
}

/// Slack added to the leader lease, so that a vote asked right after the wait finds it over.
const LEASE_MARGIN: Duration = Duration::from_millis(10);

/// How long until this replica of `group` would grant another candidate its vote. openraft
/// 0.9 refuses votes while the voter's own vote is younger than the leader lease
/// (`election_timeout_max`), and a leader's vote dates from its election: a leader elected
/// less than a lease ago refuses a transfer target the vote it needs.
pub(crate) async fn vote_lease_left(group: &Group) -> Duration {
    let lease = Duration::from_millis(group.raft.config().election_timeout_max);
    let read = group
        .raft
        .with_raft_state(|state| state.vote_last_modified());
    match tokio::time::timeout(VOTE_READ_TIMEOUT, read).await {
        Ok(Ok(Some(modified))) => (modified + lease + LEASE_MARGIN)
            .saturating_duration_since(tokio::time::Instant::now())
            .min(lease + LEASE_MARGIN),
        // Never modified, or the group is stopping: nothing to wait for.
        _ => Duration::ZERO,
    }
}

/// Whether this node currently leads `group`.
pub(crate) fn is_leader(group: &Group, node_id: u64) -> bool {
    let metrics = group.raft.metrics();
    let metrics = metrics.borrow();
    metrics.state == ServerState::Leader && metrics.current_leader == Some(node_id)
}

/// The group's voters and learners as this replica knows them, sorted.
pub(crate) fn members(group: &Group) -> (Vec<u64>, Vec<u64>) {
    let metrics = group.raft.metrics();
    let metrics = metrics.borrow();
    let membership = metrics.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let learners: Vec<u64> = membership.learner_ids().collect();
    (voters, learners)
}

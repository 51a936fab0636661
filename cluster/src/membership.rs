//! Membership and leadership: adding a node to every group (learner first, caught up by log or
//! snapshot, then promoted), removing one, and moving a group's leadership.
//!
//! openraft 0.9 has no leadership transfer, and a follower refuses votes while its leader's
//! lease is fresh. So a transfer pauses the group's writes and heartbeats on the current
//! leader and holds elections on the other voters for a bounded window, while the target
//! campaigns until elected. Every hold ends by itself when its window closes, so a lost message
//! never leaves a node unable to campaign.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gavel_raft::transport::{PeerRequest, PeerResponse};
use gavel_raft::{GavelNode, Group};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::api::MembershipError;
use crate::node::{Node, LEADER_WAIT};
use crate::peer_api::{decode_answer, encode_call, AppAnswer, AppCall, RemoteFailure};
use crate::raft_ops::{is_leader, members, wait_for_leader, wait_for_leader_change};

/// How long a learner may take to catch up (by log or snapshot) before the add fails.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one membership change may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The window a leadership transfer has: writes pause at most this long in that group.
pub(crate) const TRANSFER_WINDOW: Duration = Duration::from_millis(4_000);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CAMPAIGN_RETRY: Duration = Duration::from_millis(150);
const LEADER_ATTEMPTS_MAX: usize = 4;

/// Time-bounded holds on one group's writes and elections on this node.
#[derive(Default)]
pub struct Holds {
    writes_until: Arc<Mutex<Option<Instant>>>,
    elections_until: Arc<Mutex<Option<Instant>>>,
    released: Notify,
}

/// Whether the hold in `slot` has ended (never set, released, or its window passed).
fn expired(slot: &Mutex<Option<Instant>>) -> bool {
    until(slot).is_none_or(|end| end <= Instant::now())
}

fn until(slot: &Mutex<Option<Instant>>) -> Option<Instant> {
    *slot.lock().unwrap_or_else(|e| e.into_inner())
}

fn set_until(slot: &Mutex<Option<Instant>>, value: Option<Instant>) {
    *slot.lock().unwrap_or_else(|e| e.into_inner()) = value;
}

impl Holds {
    /// Waits until writes are allowed, at most `max`. Returns whether they are.
    pub async fn wait_writes_allowed(&self, max: Duration) -> bool {
        let give_up = Instant::now() + max;
        loop {
            let released = self.released.notified();
            match until(&self.writes_until) {
                None => return true,
                Some(end) if end <= Instant::now() => return true,
                Some(end) => {
                    if Instant::now() >= give_up {
                        return false;
                    }
                    tokio::select! {
                        _ = released => {}
                        _ = tokio::time::sleep_until(end.min(give_up)) => {}
                    }
                }
            }
        }
    }

    /// On the leader during a transfer: no new writes, no heartbeats, no campaigning, for
    /// `window` (zero releases at once).
    pub fn yield_leadership(self: &Holds, group: &Arc<Group>, window: Duration) {
        self.hold_elections(group, window);
        let end = Instant::now() + window;
        set_until(&self.writes_until, (!window.is_zero()).then_some(end));
        group.raft.runtime_config().heartbeat(window.is_zero());
        if window.is_zero() {
            self.released.notify_waiters();
            return;
        }
        let (group, slot) = (group.clone(), self.writes_until.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(end).await;
            // A later hold may have extended the window: only the last one re-enables.
            if expired(&slot) {
                group.raft.runtime_config().heartbeat(true);
            }
        });
    }

    /// On a voter that is not the transfer's target: do not campaign for `window`.
    pub fn hold_elections(&self, group: &Arc<Group>, window: Duration) {
        let end = Instant::now() + window;
        set_until(&self.elections_until, (!window.is_zero()).then_some(end));
        group.raft.runtime_config().elect(window.is_zero());
        if window.is_zero() {
            return;
        }
        let (group, slot) = (group.clone(), self.elections_until.clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(end).await;
            if expired(&slot) {
                group.raft.runtime_config().elect(true);
            }
        });
    }
}

pub(crate) async fn add_learner_local(
    group: &Group,
    node_id: u64,
    node: GavelNode,
) -> Result<(), RemoteFailure> {
    let (voters, learners) = members(group);
    if voters.contains(&node_id) || learners.contains(&node_id) {
        return Ok(());
    }
    let added = tokio::time::timeout(
        CATCH_UP_TIMEOUT,
        group.raft.add_learner(node_id, node, true),
    )
    .await;
    membership_outcome(group, added)
}

pub(crate) async fn change_membership_local(
    group: &Group,
    changes: ChangeMembers<u64, GavelNode>,
) -> Result<(), RemoteFailure> {
    let changed =
        tokio::time::timeout(CHANGE_TIMEOUT, group.raft.change_membership(changes, false)).await;
    membership_outcome(group, changed)
}

type ChangeResult<T> = Result<T, RaftError<u64, ClientWriteError<u64, GavelNode>>>;

fn membership_outcome<T>(
    group: &Group,
    outcome: Result<ChangeResult<T>, tokio::time::error::Elapsed>,
) -> Result<(), RemoteFailure> {
    match outcome {
        Err(_) => Err(RemoteFailure::Unknown(format!(
            "group {} did not commit the change in time",
            group.id
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {
            Err(RemoteFailure::NotLeader)
        }
        Ok(Err(e)) => Err(RemoteFailure::Refused(e.to_string())),
    }
}

/// On the transfer target: campaign until this node leads the group or `window` closes.
pub(crate) async fn campaign(
    group: &Group,
    node_id: u64,
    window: Duration,
) -> Result<(), RemoteFailure> {
    let (voters, _) = members(group);
    if !voters.contains(&node_id) {
        return Err(RemoteFailure::Refused(format!(
            "node {node_id} is not a voter of group {}",
            group.id
        )));
    }
    let end = Instant::now() + window;
    while Instant::now() < end {
        if is_leader(group, node_id) {
            return Ok(());
        }
        if let Err(e) = group.raft.trigger().elect().await {
            return Err(RemoteFailure::Unavailable(e.to_string()));
        }
        tokio::time::sleep(CAMPAIGN_RETRY).await;
    }
    if is_leader(group, node_id) {
        return Ok(());
    }
    Err(RemoteFailure::Unavailable(format!(
        "node {node_id} was not elected in group {} in time",
        group.id
    )))
}

impl Node {
    /// Runs `call` on `node_id` (locally when it is this node) for `group`.
    pub(crate) async fn call_node(
        &self,
        node_id: u64,
        group: &Arc<Group>,
        call: AppCall,
        timeout: Duration,
    ) -> Result<AppAnswer, String> {
        if node_id == self.node_id() {
            return Ok(crate::inbound::serve_local(self, group, call).await);
        }
        let request = encode_call(&call)?;
        match self
            .transport
            .call(node_id, group.id, PeerRequest::App(request), timeout)
            .await
        {
            Ok(PeerResponse::App(bytes)) => decode_answer(&bytes),
            Ok(PeerResponse::Refused(reason)) => Err(reason),
            Ok(other) => Err(format!("unexpected response {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Runs a membership call on the group's leader, following leadership changes.
    async fn on_leader(
        &self,
        group: &Arc<Group>,
        call: AppCall,
        timeout: Duration,
    ) -> Result<(), MembershipError> {
        let mut why = format!("group {} has no leader", group.id);
        for _ in 0..LEADER_ATTEMPTS_MAX {
            let Some(leader) = wait_for_leader(group, LEADER_WAIT).await else {
                break;
            };
            match self.call_node(leader, group, call.clone(), timeout).await {
                Ok(AppAnswer::Done(Ok(()))) => return Ok(()),
                Ok(AppAnswer::Done(Err(RemoteFailure::NotLeader))) => {
                    why = format!("group {} changed leader", group.id);
                    wait_for_leader_change(group, leader, Duration::from_millis(500)).await;
                }
                Ok(AppAnswer::Done(Err(RemoteFailure::Refused(reason)))) => {
                    return Err(MembershipError::Rejected(reason))
                }
                Ok(AppAnswer::Done(Err(failure))) => {
                    return Err(MembershipError::Unavailable(format!("{failure:?}")))
                }
                Ok(other) => {
                    return Err(MembershipError::Unavailable(format!(
                        "unexpected answer {other:?}"
                    )))
                }
                Err(reason) => why = reason,
            }
        }
        Err(MembershipError::Unavailable(why))
    }

    /// Adds a node to every group: as a learner (caught up by log or snapshot), then promoted to
    /// voter unless `voter` is false (a fan-out-only learner).
    pub async fn add_node(
        self: &Arc<Self>,
        node_id: u64,
        client_addr: String,
        peer_addr: String,
        voter: bool,
    ) -> Result<(), MembershipError> {
        if node_id == 0 {
            return Err(MembershipError::Rejected(
                "node id must be at least 1".into(),
            ));
        }
        self.transport.set_peer_addr(node_id, &peer_addr);
        let member = GavelNode {
            client_addr,
            peer_addr,
        };
        self.for_every_group(move |node, group| {
            let member = member.clone();
            async move {
                let add = AppCall::AddLearner {
                    node_id,
                    node: member,
                };
                node.on_leader(&group, add, CATCH_UP_TIMEOUT + CALL_TIMEOUT)
                    .await?;
                let (voters, _) = members(&group);
                if voter && !voters.contains(&node_id) {
                    let promote =
                        AppCall::ChangeMembership(ChangeMembers::AddVoterIds(BTreeSet::from([
                            node_id,
                        ])));
                    node.on_leader(&group, promote, CHANGE_TIMEOUT + CALL_TIMEOUT)
                        .await?;
                }
                Ok(())
            }
        })
        .await
    }

    /// Removes a node from every group (as voter, then as learner).
    pub async fn remove_node(self: &Arc<Self>, node_id: u64) -> Result<(), MembershipError> {
        for group in &self.groups {
            let (voters, _) = members(group);
            if voters == [node_id] {
                return Err(MembershipError::Rejected(format!(
                    "node {node_id} is the last voter of group {}",
                    group.id
                )));
            }
        }
        self.for_every_group(move |node, group| async move {
            let (voters, learners) = members(&group);
            let ids = BTreeSet::from([node_id]);
            if voters.contains(&node_id) {
                let demote = AppCall::ChangeMembership(ChangeMembers::RemoveVoters(ids.clone()));
                node.on_leader(&group, demote, CHANGE_TIMEOUT + CALL_TIMEOUT)
                    .await?;
            }
            if voters.contains(&node_id) || learners.contains(&node_id) {
                let remove = AppCall::ChangeMembership(ChangeMembers::RemoveNodes(ids));
                node.on_leader(&group, remove, CHANGE_TIMEOUT + CALL_TIMEOUT)
                    .await?;
            }
            Ok(())
        })
        .await?;
        self.transport.forget_peer(node_id);
        Ok(())
    }

    async fn for_every_group<F, Fut>(self: &Arc<Self>, each: F) -> Result<(), MembershipError>
    where
        F: Fn(Arc<Node>, Arc<Group>) -> Fut,
        Fut: std::future::Future<Output = Result<(), MembershipError>> + Send + 'static,
    {
        let mut changes = JoinSet::new();
        for group in &self.groups {
            changes.spawn(each(self.clone(), group.clone()));
        }
        let mut first_error = None;
        while let Some(done) = changes.join_next().await {
            let outcome = done.unwrap_or_else(|e| Err(MembershipError::Unavailable(e.to_string())));
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Moves the leadership of `group` to `to`, which must be a voter.
    pub async fn transfer_leader(&self, group_id: u32, to: u64) -> Result<(), MembershipError> {
        let group =
            self.groups.get(group_id as usize).cloned().ok_or_else(|| {
                MembershipError::NotFound(format!("there is no group {group_id}"))
            })?;
        let (voters, _) = members(&group);
        if !voters.contains(&to) {
            return Err(MembershipError::Rejected(format!(
                "node {to} is not a voter of group {group_id}"
            )));
        }
        let leader = wait_for_leader(&group, LEADER_WAIT).await.ok_or_else(|| {
            MembershipError::Unavailable(format!("group {group_id} has no leader"))
        })?;
        if leader == to {
            return Ok(());
        }
        let window_ms = TRANSFER_WINDOW.as_millis() as u64;
        self.hold_others(&group, &voters, leader, to, window_ms)
            .await;
        let campaigned = self
            .call_node(
                to,
                &group,
                AppCall::Campaign { window_ms },
                TRANSFER_WINDOW + CALL_TIMEOUT,
            )
            .await;
        self.hold_others(&group, &voters, leader, to, 0).await;
        match campaigned {
            Ok(AppAnswer::Done(Ok(()))) => Ok(()),
            Ok(AppAnswer::Done(Err(failure))) => {
                Err(MembershipError::Unavailable(format!("{failure:?}")))
            }
            Ok(other) => Err(MembershipError::Unavailable(format!(
                "unexpected answer {other:?}"
            ))),
            Err(reason) => Err(MembershipError::Unavailable(reason)),
        }
    }

    /// Starts (window > 0) or ends (window = 0) the holds of a transfer on every voter but `to`.
    async fn hold_others(
        &self,
        group: &Arc<Group>,
        voters: &[u64],
        leader: u64,
        to: u64,
        window_ms: u64,
    ) {
        for &voter in voters.iter().filter(|&&v| v != to) {
            let call = if voter == leader {
                AppCall::YieldLeadership { window_ms }
            } else {
                AppCall::HoldElections { window_ms }
            };
            if let Err(e) = self.call_node(voter, group, call, CALL_TIMEOUT).await {
                tracing::warn!(group = group.id, voter, error = %e, "could not set a transfer hold");
            }
        }
    }
}

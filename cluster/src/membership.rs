//! Membership and leadership: adding a node to every group (learner first, caught up by log or
//! snapshot, then promoted), removing one, and moving a group's leadership.
//!
//! openraft 0.9 has no leadership transfer, and a voter refuses votes while its own vote is
//! younger than the leader lease (a follower's is refreshed by each heartbeat, the leader's
//! dates from its election). So a transfer holds elections on the other voters for a bounded
//! window and pauses the group's writes and heartbeats on the current leader (a leader younger
//! than the lease first waits that out, writes flowing, since it would refuse the target its
//! vote); once the target holds the leader's whole log (else the transfer gives up and
//! releases the holds), it campaigns until elected, which with three voters takes one round
//! trip: the old leader grants the vote. Every hold ends by itself when its window closes, so a
//! lost message never leaves a node unable to campaign.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
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
use crate::raft_ops::{
    is_leader, members, wait_for_leader, wait_for_leader_change, wait_replicated, wait_until_leader,
};

/// How long a learner may take to catch up (by log or snapshot) before the add fails.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one membership change may take to commit.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The window a leadership transfer has: writes pause at most this long in that group.
pub(crate) const TRANSFER_WINDOW: Duration = Duration::from_millis(4_000);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long setting or releasing a voter's election hold may take; holds expire on their own.
const HOLD_CALL_TIMEOUT: Duration = Duration::from_millis(1_000);
const CAMPAIGN_RETRY: Duration = Duration::from_millis(150);
/// How long a transfer waits for its target to hold the leader's whole log before it gives up
/// (and releases the group untouched); part of [`TRANSFER_WINDOW`].
const TRANSFER_CATCH_UP: Duration = Duration::from_millis(1_500);
const CATCH_UP_POLL: Duration = Duration::from_millis(20);
/// With the half-second wait for a new leader between attempts, a membership change rides out
/// leadership moves (placement may be moving groups at the same time) for about six seconds.
const LEADER_ATTEMPTS_MAX: usize = 12;

/// Time-bounded holds on one group's writes and elections on this node.
pub struct Holds {
    writes_until: Arc<Mutex<Option<Instant>>>,
    elections_until: Arc<Mutex<Option<Instant>>>,
    /// The clock guard's say on elections: they run only while no hold is on and this is set.
    elect_ok: Arc<AtomicBool>,
    /// Set once the node hands its groups off before stopping: it never campaigns again.
    leaving: Arc<AtomicBool>,
    released: Notify,
    /// Writes admitted past the write hold and not finished yet (see [`Holds::admit_write`]):
    /// this group's write queue on this node, as leader.
    admitted: Mutex<usize>,
    /// The group, for the queue-depth gauge.
    group: u32,
    drained: Notify,
    /// The node's runtime, where the timers that end holds run: a hold set by a request on
    /// the HTTP runtime must still end on time when that runtime is saturated (an unended
    /// heartbeat hold deposes the leader).
    runtime: tokio::runtime::Handle,
}

/// One write admitted past the write hold, counted until dropped.
pub struct Admitted<'a>(&'a Holds);

/// The writes one group's leader takes on at once (queued in openraft, appending, replicating
/// or applying); a client write beyond it is shed at once with 503 and `Retry-After`, never
/// proposed. Why this number: one group alone decides 13,000-19,000 writes/s on the 2-core
/// benchmark machine (the hot auction, spikes), so a full queue drains in 110-160 ms, well
/// inside the 500 ms p99 bound; a queue that stands longer is shed by the proposer's time rule
/// (`QUEUED_WAIT_MS_MAX`). Smaller bounds shed a spike the group could take: 128 did with 1,200
/// bidders over 6 groups (about 200 a group), and 512 did with 1,200 bidders on one auction, an
/// auction's last seconds (12,772 bids shed in 8 s, at p99 121 ms; `docs/PERFORMANCE.md`,
/// 2026-12-05 17:57). A node's own bound on requests in flight (`--requests-in-flight-max`,
/// 4,096) keeps all its groups together far below 16 full queues.
pub const WRITES_QUEUED_PER_GROUP_MAX: usize = 2_048;

/// Who asks to write: client writes are shed when the group's queue is full; the leader's own
/// deadline entries (at most 256 per group at once) are not, so ends are never delayed by load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    Client,
    Deadlines,
}

/// Why a write was not admitted; either way it was never proposed.
#[derive(Debug, PartialEq, Eq)]
pub enum NotAdmitted {
    /// A leadership transfer held writes for longer than the write may wait.
    Held,
    /// The group's write queue is full (`WRITES_QUEUED_PER_GROUP_MAX`).
    Full,
}

fn publish_depth(group: u32, depth: usize) {
    metrics::gauge!("gavel_write_queue_depth", "group" => group.to_string()).set(depth as f64);
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut admitted = self.0.admitted.lock().unwrap_or_else(|e| e.into_inner());
        *admitted = admitted.saturating_sub(1);
        publish_depth(self.0.group, *admitted);
        if *admitted == 0 {
            self.0.drained.notify_waiters();
        }
    }
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

/// Turns `group`'s elections on exactly when no election hold is on, the clock guard allows
/// them and the node is not leaving. Decided and applied under the hold's lock, so a hold set
/// concurrently is never overridden by a stale decision.
fn gate(
    group: &Group,
    elections_until: &Mutex<Option<Instant>>,
    elect_ok: &AtomicBool,
    leaving: &AtomicBool,
) {
    let until = elections_until.lock().unwrap_or_else(|e| e.into_inner());
    let held = until.is_some_and(|end| end > Instant::now());
    let allowed = !held && elect_ok.load(Ordering::Acquire) && !leaving.load(Ordering::Acquire);
    group.raft.runtime_config().elect(allowed);
}

impl Holds {
    pub fn new(group: u32, elect_ok: Arc<AtomicBool>, leaving: Arc<AtomicBool>) -> Holds {
        Holds {
            writes_until: Default::default(),
            elections_until: Default::default(),
            elect_ok,
            leaving,
            released: Notify::new(),
            admitted: Mutex::new(0),
            group,
            drained: Notify::new(),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Re-applies the election gate (the clock guard calls it after each verdict).
    pub fn gate_elections(&self, group: &Group) {
        gate(group, &self.elections_until, &self.elect_ok, &self.leaving);
    }

    /// Waits (at most `max`) until writes are allowed and admits one, which counts as in flight
    /// until the guard drops. The check and the count happen under the hold's lock, so a write
    /// is either admitted before a yield (and [`Holds::drain_writes`] waits for it) or held.
    /// A client write finding the queue full is refused at once: waiting would only move its
    /// queueing time from openraft's queue to this one.
    pub async fn admit_write(
        &self,
        writer: Writer,
        max: Duration,
    ) -> Result<Admitted<'_>, NotAdmitted> {
        let give_up = Instant::now() + max;
        loop {
            {
                let until = self.writes_until.lock().unwrap_or_else(|e| e.into_inner());
                if until.is_none_or(|end| end <= Instant::now()) {
                    let mut admitted = self.admitted.lock().unwrap_or_else(|e| e.into_inner());
                    if writer == Writer::Client && *admitted >= WRITES_QUEUED_PER_GROUP_MAX {
                        return Err(NotAdmitted::Full);
                    }
                    *admitted += 1;
                    publish_depth(self.group, *admitted);
                    return Ok(Admitted(self));
                }
            }
            let left = give_up.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_writes_allowed(left).await {
                return Err(NotAdmitted::Held);
            }
        }
    }

    /// Waits (at most `max`) until no admitted write is in flight. Returns whether none is.
    pub async fn drain_writes(&self, max: Duration) -> bool {
        let give_up = Instant::now() + max;
        loop {
            let drained = self.drained.notified();
            if *self.admitted.lock().unwrap_or_else(|e| e.into_inner()) == 0 {
                return true;
            }
            if tokio::time::timeout_at(give_up, drained).await.is_err() {
                return false;
            }
        }
    }

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
        self.runtime.spawn(async move {
            tokio::time::sleep_until(end).await;
            // A later hold may have extended the window: only the last one re-enables.
            if expired(&slot) {
                group.raft.runtime_config().heartbeat(true);
            }
        });
    }

    /// On a voter that is not the transfer's target: do not campaign for `window`.
    /// Elections come back when the window closes only if the clock guard allows them.
    pub fn hold_elections(&self, group: &Arc<Group>, window: Duration) {
        let end = Instant::now() + window;
        set_until(&self.elections_until, (!window.is_zero()).then_some(end));
        self.gate_elections(group);
        if window.is_zero() {
            return;
        }
        let (group, slot) = (group.clone(), self.elections_until.clone());
        let (elect_ok, leaving) = (self.elect_ok.clone(), self.leaving.clone());
        self.runtime.spawn(async move {
            tokio::time::sleep_until(end).await;
            gate(&group, &slot, &elect_ok, &leaving);
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
        // openraft refuses a change it cannot make before writing any entry.
        Ok(Err(RaftError::APIError(e @ ClientWriteError::ChangeMembershipError(_)))) => {
            Err(RemoteFailure::Refused(e.to_string()))
        }
        // The group stopped under the change: its entry may be in logs and commit later.
        Ok(Err(RaftError::Fatal(fatal))) => Err(RemoteFailure::Unknown(format!(
            "group {} stopped before the change committed: {fatal}",
            group.id
        ))),
    }
}

/// On the transfer target: campaign until this node leads the group or `window` closes, or
/// stop once `leaving` is set (the node began to hand its groups off to stop).
pub(crate) async fn campaign(
    group: &Group,
    node_id: u64,
    window: Duration,
    leaving: &AtomicBool,
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
        if leaving.load(Ordering::Acquire) {
            return Err(RemoteFailure::Refused(format!(
                "node {node_id} is shutting down"
            )));
        }
        if let Err(e) = group.raft.trigger().elect().await {
            return Err(RemoteFailure::Unavailable(e.to_string()));
        }
        // Watch for the outcome instead of pausing: a vote round trip takes milliseconds, and
        // the group's writes are held until this returns.
        let left = end.saturating_duration_since(Instant::now());
        wait_until_leader(group, node_id, CAMPAIGN_RETRY.min(left)).await;
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
        self.learn_peer_addr(node_id);
        let request = encode_call(&call)?;
        match self
            .transport
            .call(node_id, group.id, PeerRequest::App(request), timeout)
            .await
        {
            Ok(PeerResponse::App(bytes)) => decode_answer(&bytes),
            Ok(PeerResponse::Refused(reason)) => Err(reason),
            Ok(PeerResponse::Busy { in_flight_max }) => {
                Err(format!("peer busy: {in_flight_max} requests in flight"))
            }
            Ok(other) => Err(format!("unexpected response {}", other.name())),
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
            // A leader just removed from the voters still leads until it steps down; a change
            // sent to it then trips openraft 0.9's core ("Only leader is allowed to call
            // update_effective_membership()"). Wait for its successor instead.
            if !members(group).0.contains(&leader) {
                why = format!("group {}'s leader {leader} is leaving the group", group.id);
                wait_for_leader_change(group, leader, Duration::from_millis(500)).await;
                continue;
            }
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
                Err(reason) => {
                    why = reason;
                    wait_for_leader_change(group, leader, Duration::from_millis(500)).await;
                }
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

    /// Removes a node from every group: a voter with one change (`retain = false` drops it
    /// from the nodes too), a learner with `RemoveNodes`. Never both: when the removed voter
    /// led the group, it keeps claiming the lead until it steps down, and a second change sent
    /// to it then panics openraft 0.9's core ("Only leader is allowed to call
    /// update_effective_membership()").
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
            let change = if voters.contains(&node_id) {
                ChangeMembers::RemoveVoters(ids)
            } else if learners.contains(&node_id) {
                ChangeMembers::RemoveNodes(ids)
            } else {
                return Ok(());
            };
            let call = AppCall::ChangeMembership(change);
            node.on_leader(&group, call, CHANGE_TIMEOUT + CALL_TIMEOUT)
                .await
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

    /// Moves the leadership of `group` to `to`, which must be a voter, at an operator's request:
    /// automatic placement then leaves it there while `to` keeps leading.
    pub async fn transfer_leader(&self, group_id: u32, to: u64) -> Result<(), MembershipError> {
        self.move_leader(group_id, to, true).await
    }

    /// Moves the leadership of `group` to `to`; `pin` as in [`AppCall::Campaign`].
    pub(crate) async fn move_leader(
        &self,
        group_id: u32,
        to: u64,
        pin: bool,
    ) -> Result<(), MembershipError> {
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
        // One transfer of a group at a time from this node (placement, the clock guard and a
        // shutdown handoff may all ask): two would release each other's holds early.
        let _one_at_a_time = self.transfers[group_id as usize].lock().await;
        let window_ms = TRANSFER_WINDOW.as_millis() as u64;
        let started = Instant::now();
        self.hold_others(&group, &voters, leader, to, window_ms)
            .await;
        // The target campaigns only with the leader's whole log: a candidate that lacks entries
        // cannot win, yet its higher term deposes the leader, which then can no longer send it
        // what it lacks, and the group stays leaderless until the holds expire.
        let campaigned = match self.await_caught_up(&group, leader, to).await {
            Ok(()) => {
                let left = TRANSFER_WINDOW.saturating_sub(started.elapsed());
                let window_ms = left.as_millis() as u64;
                self.call_node(
                    to,
                    &group,
                    AppCall::Campaign { window_ms, pin },
                    left + CALL_TIMEOUT,
                )
                .await
            }
            Err(reason) => Err(reason),
        };
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

    /// Waits (at most [`TRANSFER_CATCH_UP`]) until `to`'s log reaches the last index of the
    /// leader's, which stops growing once the leader yields.
    async fn await_caught_up(
        &self,
        group: &Arc<Group>,
        leader: u64,
        to: u64,
    ) -> Result<(), String> {
        if leader == self.node_id() {
            // The leader's own replication metrics say it at once, without polling peers: this
            // wait is part of the pause in the group's writes.
            return wait_replicated(group, to, TRANSFER_CATCH_UP).await.map_err(
                |(matched, last)| {
                    format!(
                        "node {to} did not catch up with the log of group {} in time \
                         ({matched:?} of {last:?})",
                        group.id
                    )
                },
            );
        }
        let give_up = Instant::now() + TRANSFER_CATCH_UP;
        loop {
            // A node that stopped answering must not hold the group's writes past `give_up`.
            let call_timeout = give_up
                .saturating_duration_since(Instant::now())
                .max(CATCH_UP_POLL);
            let leader_last = self.last_log_index(group, leader, call_timeout).await;
            let target_last = self.last_log_index(group, to, call_timeout).await;
            if let (Some(leader_last), Some(target_last)) = (leader_last, target_last) {
                if target_last >= leader_last {
                    return Ok(());
                }
            }
            if Instant::now() >= give_up {
                return Err(format!(
                    "node {to} did not catch up with the log of group {}'s leader in time \
                     ({target_last:?} of {leader_last:?})",
                    group.id
                ));
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    }

    /// `node`'s last log index in `group`, `None` when it does not answer.
    async fn last_log_index(
        &self,
        group: &Arc<Group>,
        node: u64,
        timeout: Duration,
    ) -> Option<u64> {
        match self
            .call_node(node, group, AppCall::Status { digests: false }, timeout)
            .await
        {
            Ok(AppAnswer::Status(views)) => views
                .iter()
                .find(|view| view.group == group.id)
                .map(|view| view.last_log_index),
            _ => None,
        }
    }

    /// Starts (window > 0) or ends (window = 0) the holds of a transfer on every voter but `to`.
    /// The other voters' election holds are set together and before the leader yields, each
    /// call bounded by [`HOLD_CALL_TIMEOUT`]: a voter that does not answer (hung, partitioned)
    /// delays the transfer by that much but never while the leader's writes are paused.
    /// Releases go to the leader first, so its writes resume at once.
    async fn hold_others(
        &self,
        group: &Arc<Group>,
        voters: &[u64],
        leader: u64,
        to: u64,
        window_ms: u64,
    ) {
        let hold = |voter: u64, call: AppCall, timeout: Duration| async move {
            if let Err(e) = self.call_node(voter, group, call, timeout).await {
                tracing::warn!(group = group.id, voter, error = %e, "could not set a transfer hold");
            }
        };
        let followers = voters
            .iter()
            .filter(|&&v| v != to && v != leader)
            .map(|&v| hold(v, AppCall::HoldElections { window_ms }, HOLD_CALL_TIMEOUT));
        // The leader answers once its in-flight writes are done: its log is final then.
        let yield_leader = async {
            if leader != to && voters.contains(&leader) {
                hold(leader, AppCall::YieldLeadership { window_ms }, CALL_TIMEOUT).await;
            }
        };
        if window_ms == 0 {
            yield_leader.await;
            join_all(followers).await;
        } else {
            join_all(followers).await;
            yield_leader.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_sheds_client_writes_at_once_but_never_deadlines() {
        let holds = Holds::new(0, Arc::new(AtomicBool::new(true)), Default::default());
        let wait = Duration::from_secs(5);
        let mut admitted = Vec::new();
        for _ in 0..WRITES_QUEUED_PER_GROUP_MAX {
            admitted.push(holds.admit_write(Writer::Client, wait).await.expect("room"));
        }
        let started = Instant::now();
        assert_eq!(
            holds.admit_write(Writer::Client, wait).await.err(),
            Some(NotAdmitted::Full)
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "shed at once"
        );
        let deadline = holds.admit_write(Writer::Deadlines, wait).await;
        assert!(deadline.is_ok(), "deadline entries are never shed");
        drop(deadline);
        admitted.pop();
        assert!(holds.admit_write(Writer::Client, wait).await.is_ok());
    }
}

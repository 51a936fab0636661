//! `Node`: opens the database and every group, bootstraps a new cluster, proposes commands and
//! answers reads at the consistency asked for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use gavel_raft::{
    AuctionEvent, Flusher, GavelNode, Group, Proposal, RaftSettings, APPLIED_EVENTS_QUEUE_MAX,
};
use gavel_rules::{Auction, Command, Reply};
use gavel_storage::{Store, StoreConfig};
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::ServerState;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use crate::api::*;
use crate::clock::wall_clock_ms;
use crate::deadlines::run_deadlines;
use crate::listing::merge_pages;
use crate::observe::run_metrics;
use crate::routing::group_of;

/// The most groups a node may host.
pub const GROUPS_MAX: u32 = 1024;
/// How long a request waits for a group to elect a leader before answering 503.
const LEADER_WAIT_MS: u64 = 3_000;
/// How long a linearizable read waits for its quorum round trip.
const READ_TIMEOUT_MS: u64 = 5_000;
const RETRY_AFTER_S: u32 = 1;

const META_NODE_ID: &str = "node_id";
const META_GROUPS: &str = "groups";

pub struct Node {
    config: NodeConfig,
    store: Store,
    groups: Vec<Arc<Group>>,
    stop: watch::Sender<bool>,
    events: broadcast::Sender<AuctionEvent>,
    tasks: tokio::sync::Mutex<JoinSet<()>>,
}

impl Node {
    pub async fn start(mut config: NodeConfig) -> Result<Arc<Node>, NodeError> {
        if config.node_id == 0 {
            return Err(NodeError::Config("node id must be at least 1".into()));
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Config(format!("cannot create {}: {e}", config.data_dir.display()))
        })?;
        let store = Store::open(&config.data_dir.join("db"), &StoreConfig::default())?;
        config.groups = settle_identity(&store, &config)?;
        let flusher = Flusher::start(store.clone());
        let settings = RaftSettings::default();
        let events = broadcast::channel(APPLIED_EVENTS_QUEUE_MAX).0;
        let mut groups = Vec::with_capacity(config.groups as usize);
        for id in 0..config.groups {
            let group = Group::open(id, config.node_id, &store, &flusher, &settings, &events)
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            groups.push(Arc::new(group));
        }
        let (stop, _) = watch::channel(false);
        let node = Arc::new(Node {
            config,
            store,
            groups,
            stop,
            events,
            tasks: tokio::sync::Mutex::new(JoinSet::new()),
        });
        if !node.config.join {
            node.bootstrap().await?;
        }
        node.spawn_background().await;
        tracing::info!(
            node_id = node.config.node_id,
            groups = node.groups.len(),
            "node started"
        );
        Ok(node)
    }

    /// Forms the initial cluster in every group not yet initialized; a restarted node skips this.
    async fn bootstrap(&self) -> Result<(), NodeError> {
        let members = self.initial_members();
        for group in &self.groups {
            let initialized = group
                .raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            if !initialized {
                group.raft.initialize(members.clone()).await.map_err(|e| {
                    NodeError::Raft(format!("initializing group {}: {e}", group.id))
                })?;
            }
        }
        Ok(())
    }

    fn initial_members(&self) -> BTreeMap<u64, GavelNode> {
        let myself = GavelNode {
            client_addr: self.config.client_addr.clone(),
            peer_addr: self.config.peer_addr.clone(),
        };
        if self.config.initial_cluster.is_empty() {
            return BTreeMap::from([(self.config.node_id, myself)]);
        }
        self.config
            .initial_cluster
            .iter()
            .map(|(id, peer_addr)| {
                let node = if *id == self.config.node_id {
                    myself.clone()
                } else {
                    GavelNode {
                        client_addr: String::new(),
                        peer_addr: peer_addr.clone(),
                    }
                };
                (*id, node)
            })
            .collect()
    }

    async fn spawn_background(&self) {
        let mut tasks = self.tasks.lock().await;
        for group in &self.groups {
            let propose_timeout = Duration::from_millis(self.config.propose_timeout_ms);
            tasks.spawn(run_deadlines(
                group.clone(),
                self.config.node_id,
                propose_timeout,
                self.stop.subscribe(),
            ));
        }
        tasks.spawn(run_metrics(self.groups.clone(), self.stop.subscribe()));
    }

    /// Every auction change this node's replicas apply (leader or not), for live fan-out.
    /// A receiver that falls more than `APPLIED_EVENTS_QUEUE_MAX` behind gets `Lagged` and
    /// should re-read the state it cares about.
    pub fn subscribe(&self) -> broadcast::Receiver<AuctionEvent> {
        self.events.subscribe()
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    pub fn groups(&self) -> u32 {
        self.groups.len() as u32
    }

    fn group_for(&self, auction_id: &str) -> &Arc<Group> {
        &self.groups[group_of(auction_id, self.groups()) as usize]
    }

    /// Replicates `command` in its auction's group and returns the state machine's reply.
    pub async fn propose(&self, command: Command) -> Result<Reply, ProposeError> {
        let group = self.group_for(command.auction_id()).clone();
        self.await_local_leadership(&group).await?;
        let proposal = Proposal {
            stamp_ms: wall_clock_ms(),
            command,
        };
        propose_to(
            &group,
            proposal,
            Duration::from_millis(self.config.propose_timeout_ms),
        )
        .await
    }

    /// Waits (bounded) until the group has a leader; fails unless it is this node.
    async fn await_local_leadership(&self, group: &Group) -> Result<(), ProposeError> {
        match wait_for_leader(group).await {
            Some(leader) if leader == self.config.node_id => Ok(()),
            Some(leader) => Err(ProposeError::Unavailable {
                reason: format!(
                    "group {} is led by node {leader}; this node cannot forward yet",
                    group.id
                ),
                retry_after_s: RETRY_AFTER_S,
            }),
            None => Err(ProposeError::Unavailable {
                reason: format!("group {} has no leader", group.id),
                retry_after_s: RETRY_AFTER_S,
            }),
        }
    }

    pub async fn auction(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<Auction>, ReadError> {
        let group = self.group_for(id);
        if consistency == Consistency::Linearizable {
            ensure_linearizable(group).await?;
        }
        group
            .state
            .auction(id)
            .map_err(|e| ReadError::Internal(e.to_string()))
    }

    pub async fn list_auctions(
        &self,
        filter: AuctionFilter,
        consistency: Consistency,
    ) -> Result<AuctionListing, ReadError> {
        if consistency == Consistency::Linearizable {
            let mut checks = JoinSet::new();
            for group in &self.groups {
                let group = group.clone();
                checks.spawn(async move { ensure_linearizable(&group).await });
            }
            while let Some(done) = checks.join_next().await {
                done.map_err(|e| ReadError::Internal(e.to_string()))??;
            }
        }
        let mut pages = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            pages.push(
                group
                    .state
                    .list_auctions(&filter)
                    .map_err(|e| ReadError::Internal(e.to_string()))?,
            );
        }
        Ok(merge_pages(pages, filter.limit))
    }

    /// `None` when the auction does not exist.
    pub async fn bids(
        &self,
        auction_id: &str,
        filter: BidFilter,
        consistency: Consistency,
    ) -> Result<Option<BidPage>, ReadError> {
        let group = self.group_for(auction_id);
        if consistency == Consistency::Linearizable {
            ensure_linearizable(group).await?;
        }
        let internal = |e: gavel_storage::StorageError| ReadError::Internal(e.to_string());
        if group.state.auction(auction_id).map_err(internal)?.is_none() {
            return Ok(None);
        }
        group
            .state
            .bids(auction_id, &filter)
            .map(Some)
            .map_err(internal)
    }

    /// `Ok` when this node knows a leader for every group and has applied what it committed.
    pub fn readiness(&self) -> Result<(), String> {
        for group in &self.groups {
            let metrics = group.raft.metrics().borrow().clone();
            if metrics.current_leader.is_none() {
                return Err(format!("group {} has no leader", group.id));
            }
            let committed = group
                .committed_index
                .load(std::sync::atomic::Ordering::Relaxed);
            let applied = metrics.last_applied.map_or(0, |id| id.index);
            if applied < committed {
                return Err(format!(
                    "group {} has applied {applied} of {committed} committed entries",
                    group.id
                ));
            }
        }
        Ok(())
    }

    /// Stops timers, shuts every group down and makes the last writes durable.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
        for group in &self.groups {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = group.id, error = %e, "group did not shut down cleanly");
            }
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!(node_id = self.config.node_id, "node stopped");
    }
}

/// Checks the node id and group count against what the data dir was created with, records them
/// on first start, and returns the group count to use (fixed at bootstrap).
fn settle_identity(store: &Store, config: &NodeConfig) -> Result<u32, NodeError> {
    if !(1..=GROUPS_MAX).contains(&config.groups) {
        return Err(NodeError::Config(format!(
            "groups must be between 1 and {GROUPS_MAX}"
        )));
    }
    match store.node_meta::<u64>(META_NODE_ID)? {
        Some(stored) if stored != config.node_id => {
            return Err(NodeError::Config(format!(
                "data dir belongs to node {stored}, not node {}",
                config.node_id
            )))
        }
        Some(_) => {}
        None => store.set_node_meta(META_NODE_ID, &config.node_id)?,
    }
    match store.node_meta::<u32>(META_GROUPS)? {
        Some(stored) => {
            if stored != config.groups {
                tracing::warn!(
                    stored,
                    requested = config.groups,
                    "group count is fixed at bootstrap; using the stored one"
                );
            }
            Ok(stored)
        }
        None => {
            store.set_node_meta(META_GROUPS, &config.groups)?;
            Ok(config.groups)
        }
    }
}

/// The group's leader, waiting up to `LEADER_WAIT_MS` for an election to finish.
async fn wait_for_leader(group: &Group) -> Option<u64> {
    let mut metrics = group.raft.metrics();
    let wait = async {
        loop {
            if let Some(leader) = metrics.borrow_and_update().current_leader {
                return Some(leader);
            }
            if metrics.changed().await.is_err() {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(LEADER_WAIT_MS), wait)
        .await
        .ok()
        .flatten()
}

pub(crate) async fn propose_to(
    group: &Group,
    proposal: Proposal,
    timeout: Duration,
) -> Result<Reply, ProposeError> {
    let outcome = tokio::time::timeout(timeout, group.raft.client_write(proposal)).await;
    match outcome {
        Err(_) => Err(ProposeError::Unknown(format!(
            "no decision from group {} within {} ms",
            group.id,
            timeout.as_millis()
        ))),
        Ok(Ok(response)) => response
            .data
            .0
            .ok_or_else(|| ProposeError::Internal("applied entry carried no reply".into())),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            Err(ProposeError::Unavailable {
                reason: format!(
                    "group {} changed leader (now {:?}) before the write was accepted",
                    group.id, forward.leader_id
                ),
                retry_after_s: RETRY_AFTER_S,
            })
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
            Err(ProposeError::Internal(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(fatal))) => Err(ProposeError::Unavailable {
            reason: format!("group {} is stopped: {fatal}", group.id),
            retry_after_s: RETRY_AFTER_S,
        }),
    }
}

/// Confirms leadership with a quorum and waits until the local state machine has applied up to
/// the read point: after this, reading the local replica is linearizable.
async fn ensure_linearizable(group: &Group) -> Result<(), ReadError> {
    let unavailable = |reason: String| ReadError::Unavailable {
        reason,
        retry_after_s: RETRY_AFTER_S,
    };
    if wait_for_leader(group).await.is_none() {
        return Err(unavailable(format!("group {} has no leader", group.id)));
    }
    let check = tokio::time::timeout(
        Duration::from_millis(READ_TIMEOUT_MS),
        group.raft.ensure_linearizable(),
    )
    .await;
    match check {
        Err(_) => Err(unavailable(format!(
            "group {} did not confirm its quorum in time",
            group.id
        ))),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
            Err(unavailable(format!(
            "group {} is led by node {:?}; this node cannot serve linearizable reads for it yet",
            group.id, forward.leader_id
        )))
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e)))) => {
            Err(unavailable(e.to_string()))
        }
        Ok(Err(RaftError::Fatal(fatal))) => Err(unavailable(format!(
            "group {} is stopped: {fatal}",
            group.id
        ))),
    }
}

/// Whether this node currently leads `group`.
pub(crate) fn is_leader(group: &Group, node_id: u64) -> bool {
    let metrics = group.raft.metrics();
    let metrics = metrics.borrow();
    metrics.state == ServerState::Leader && metrics.current_leader == Some(node_id)
}

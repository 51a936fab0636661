//! `Node`: opens the database, the peer transport and every group, bootstraps a new cluster
//! (once its clock is known to be healthy), and serves reads at the consistency asked for. Writes (`write_path`), linearizable reads
//! (`read_path`), membership and leadership (`membership`) live in their own files.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use gavel_raft::transport::{Transport, TransportConfig};
use gavel_raft::{AppliedChannel, AppliedEvents, Flusher, GavelNode, Group, RaftSettings, Watched};
use gavel_rules::Auction;
use gavel_storage::Store;
use openraft::error::{InitializeError, RaftError};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;

use crate::api::*;
use crate::clock_guard::{run_clock_guard, ClockGuard};
use crate::consistency::{run_consistency_checks, META_DIVERGED};
use crate::deadlines::run_deadlines;
use crate::forwarder::Forwarders;
use crate::inbound::Inbound;
use crate::listing::merge_pages;
use crate::membership::Holds;
use crate::observe::run_metrics;
use crate::placement::run_placement;
use crate::proposer::{self, run_proposer, Queued};
use crate::read_rounds::{self, run_read_rounds, ReadWaiter};
use crate::recovery;
use crate::routing::group_of;

/// The most groups a node may host.
pub const GROUPS_MAX: u32 = 1024;

/// How long shutdown waits for stopped tasks to let go of the database.
const STORAGE_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Node-level records of a data dir (also written by a restore, `backup::restore`).
pub(crate) const META_NODE_ID: &str = "node_id";
pub(crate) const META_GROUPS: &str = "groups";
/// The database's directory inside a data dir.
pub(crate) const DB_DIR: &str = "db";

pub struct Node {
    pub(crate) config: NodeConfig,
    /// Whether this node's wall clock may stamp entries (see `clock_guard`).
    pub(crate) clock: ClockGuard,
    store: Store,
    pub(crate) groups: Vec<Arc<Group>>,
    pub(crate) transport: Transport,
    pub(crate) holds: Vec<Holds>,
    /// Writes this node forwards to other groups' leaders, batched per (group, leader).
    pub(crate) forwarders: Forwarders,
    /// Per group: the queue of this node's proposer (see `proposer`).
    pub(crate) proposers: Vec<mpsc::Sender<Queued>>,
    proposer_queues: std::sync::Mutex<Vec<mpsc::Receiver<Queued>>>,
    /// Per group: the reads waiting for this node's next read-index round (`read_rounds`).
    pub(crate) read_rounds: Vec<mpsc::Sender<ReadWaiter>>,
    read_round_queues: std::sync::Mutex<Vec<mpsc::Receiver<ReadWaiter>>>,
    /// Per group: this node leads it because an operator asked; placement leaves it alone.
    pub(crate) pinned: Vec<std::sync::atomic::AtomicBool>,
    /// Per group: held while this node runs a leadership transfer of it (`move_leader`).
    pub(crate) transfers: Vec<tokio::sync::Mutex<()>>,
    /// Set by the shutdown handoff (`handoff`): no campaigns, no transfers to this node.
    pub(crate) leaving: Arc<std::sync::atomic::AtomicBool>,
    stop: watch::Sender<bool>,
    applied: AppliedChannel,
    /// Copies of groups' states this node sends to peers that lost theirs (`recovery`).
    pub(crate) copies_served: Arc<recovery::CopiesServed>,
    /// A group whose state this node found to differ from the majority's, and how
    /// (`consistency`): the node must stop.
    diverged: watch::Sender<Option<(u32, String)>>,
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
        let store = recovery::open_store(&config.data_dir.join(DB_DIR), &config)?;
        config.groups = settle_identity(&store, &config)?;
        let mut transport_config = TransportConfig::new(
            config.node_id,
            config.client_addr.clone(),
            config.peer_addr.clone(),
        );
        transport_config.tls = config.peer_tls.clone();
        let (transport, bound) = Transport::start(transport_config, &config.peer_listen)
            .await
            .map_err(|e| {
                NodeError::Config(format!(
                    "cannot listen for peers on {}: {e}",
                    config.peer_listen
                ))
            })?;
        tracing::info!(
            node_id = config.node_id,
            peer_listen = %bound,
            peer_addr = %config.peer_addr,
            client_addr = %config.client_addr,
            "peer transport listening"
        );
        if !config.initial_cluster.is_empty()
            && !config
                .initial_cluster
                .iter()
                .any(|(id, _)| *id == config.node_id)
        {
            return Err(NodeError::Config(format!(
                "--initial-cluster does not name this node ({})",
                config.node_id
            )));
        }
        for (id, addr) in &config.initial_cluster {
            transport.set_peer_addr(*id, addr);
        }
        recovery::recover_lost_states(&store, &transport, &config).await?;
        // One channel for the whole node: every group's apply path publishes into it.
        let applied = AppliedChannel::default();
        let groups = open_groups(&config, &store, &transport, &applied).await?;
        let (stop, _) = watch::channel(false);
        let clock = ClockGuard::new(config.node_id, config.max_clock_offset_ms);
        let (proposers, proposer_queues): (Vec<_>, Vec<_>) =
            groups.iter().map(|_| proposer::queue()).unzip();
        let (read_rounds, read_round_queues): (Vec<_>, Vec<_>) =
            groups.iter().map(|_| read_rounds::queue()).unzip();
        let leaving = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let node = Arc::new(Node {
            forwarders: Forwarders::new(transport.clone(), stop.subscribe()),
            proposers,
            proposer_queues: std::sync::Mutex::new(proposer_queues),
            read_rounds,
            read_round_queues: std::sync::Mutex::new(read_round_queues),
            holds: groups
                .iter()
                .map(|group| Holds::new(group.id, clock.elect_ok(), leaving.clone()))
                .collect(),
            pinned: groups.iter().map(|_| Default::default()).collect(),
            transfers: groups.iter().map(|_| Default::default()).collect(),
            leaving,
            clock,
            config,
            store,
            groups,
            transport,
            stop,
            applied,
            copies_served: Arc::default(),
            diverged: watch::channel(None).0,
            tasks: tokio::sync::Mutex::new(JoinSet::new()),
        });
        node.transport.set_handler(Arc::new(Inbound::new(&node)));
        node.spawn_background().await;
        tracing::info!(
            node_id = node.config.node_id,
            groups = node.groups.len(),
            "node started"
        );
        Ok(node)
    }

    /// Forms the initial cluster in every group not yet initialized; a restarted node skips
    /// this. Every initial member initializes (etcd-like), which is safe because each writes the
    /// byte-identical membership entry at index 0: members are recorded with their peer address
    /// only, and client addresses are learned from the peer handshake.
    async fn bootstrap(&self) -> Result<(), NodeError> {
        let members = self.initial_members();
        for group in &self.groups {
            let initialized = group
                .raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?;
            if initialized {
                continue;
            }
            match group.raft.initialize(members.clone()).await {
                Ok(()) => {}
                // A peer that initialized first already replicated to us: nothing to do.
                Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
                    tracing::info!(group = group.id, "group already formed by a peer");
                }
                Err(e) => {
                    return Err(NodeError::Raft(format!(
                        "initializing group {}: {e}",
                        group.id
                    )))
                }
            }
        }
        Ok(())
    }

    /// Stands for election at once, rather than after an election timeout, where that is
    /// sure to help: on a fresh cluster in the groups this node should lead (`voters[g mod
    /// n]`, as `placement` prefers), so leaders start out spread instead of being moved one
    /// transfer at a time; and in the groups this node is the only voter of, which after a
    /// restart wait for an election (`LogStore::give_up_leadership_on_restart`).
    async fn campaign_where_preferred(&self) {
        let me = self.config.node_id;
        for group in &self.groups {
            let (voters, _) = crate::raft_ops::members(group);
            let fresh = group.raft.metrics().borrow().current_term <= 1;
            let preferred = voters.get(group.id as usize % voters.len().max(1));
            let spread = fresh && voters.len() > 1 && preferred == Some(&me);
            let alone =
                voters.len() == 1 && voters.contains(&me) && !crate::raft_ops::is_leader(group, me);
            if spread || alone {
                if let Err(e) = group.raft.trigger().elect().await {
                    tracing::debug!(group = group.id, error = %e, "early campaign failed");
                }
            }
        }
    }

    fn initial_members(&self) -> BTreeMap<u64, GavelNode> {
        if self.config.initial_cluster.is_empty() {
            let myself = GavelNode {
                client_addr: self.config.client_addr.clone(),
                peer_addr: self.config.peer_addr.clone(),
            };
            return BTreeMap::from([(self.config.node_id, myself)]);
        }
        initial_members_of(&self.config.initial_cluster)
    }

    /// Once the clock is healthy (at once for a single node; as soon as a majority answers
    /// probes otherwise): forms the cluster where it is new and campaigns where preferred.
    /// openraft campaigns on `initialize` whatever `enable_elect` says, so this waits too: a
    /// node with a bad clock never initializes, and its peers' initialization reaches it.
    async fn bootstrap_when_clock_healthy(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        tokio::select! {
            healthy = self.clock.await_healthy() => if !healthy { return },
            _ = stop.changed() => return,
        }
        if let Err(e) = self.bootstrap().await {
            tracing::error!(error = %e, "bootstrapping the cluster failed");
            return;
        }
        self.campaign_where_preferred().await;
    }

    /// The voters this node's clock is judged against: every group's, or before any group
    /// knows its members, the initial cluster (this node alone without one).
    pub(crate) fn clock_voters(&self) -> BTreeSet<u64> {
        let voters: BTreeSet<u64> = self
            .groups
            .iter()
            .flat_map(|group| crate::raft_ops::members(group).0)
            .collect();
        if !voters.is_empty() || self.config.join {
            return voters;
        }
        self.initial_members().into_keys().collect()
    }

    async fn spawn_background(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().await;
        tasks.spawn(run_clock_guard(Arc::downgrade(self), self.stop.subscribe()));
        if !self.config.join {
            tasks.spawn(
                self.clone()
                    .bootstrap_when_clock_healthy(self.stop.subscribe()),
            );
        }
        for group in &self.groups {
            tasks.spawn(run_deadlines(self.clone(), group.id, self.stop.subscribe()));
        }
        let proposer_queues = take_queues(&self.proposer_queues);
        let read_round_queues = take_queues(&self.read_round_queues);
        for ((group, proposals), reads) in self
            .groups
            .iter()
            .zip(proposer_queues)
            .zip(read_round_queues)
        {
            tasks.spawn(run_proposer(
                self.clone(),
                group.id,
                proposals,
                self.stop.subscribe(),
            ));
            tasks.spawn(run_read_rounds(group.clone(), reads, self.stop.subscribe()));
        }
        tasks.spawn(run_metrics(self.groups.clone(), self.stop.subscribe()));
        tasks.spawn(run_placement(Arc::downgrade(self), self.stop.subscribe()));
        tasks.spawn(run_consistency_checks(
            Arc::downgrade(self),
            self.config.consistency_check_interval_ms,
            self.stop.subscribe(),
        ));
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    pub fn groups(&self) -> u32 {
        self.groups.len() as u32
    }

    pub(crate) fn group_for(&self, auction_id: &str) -> &Arc<Group> {
        &self.groups[group_of(auction_id, self.groups()) as usize]
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Every change this node's replicas apply (leader or not) to an auction marked in
    /// [`Node::watched`], a batch at a time, for live fan-out. A receiver that falls more than
    /// `APPLIED_EVENTS_QUEUE_MAX` batches behind gets `Lagged` and should re-read the state it
    /// cares about.
    pub fn subscribe(&self) -> broadcast::Receiver<AppliedEvents> {
        self.applied.events.subscribe()
    }

    /// Which auctions the subscriber watches: changes to no other auction are published.
    pub fn watched(&self) -> Arc<Watched> {
        self.applied.watched.clone()
    }

    pub async fn auction(
        &self,
        id: &str,
        consistency: Consistency,
    ) -> Result<Option<Auction>, ReadError> {
        let group = self.group_for(id);
        if consistency == Consistency::Linearizable {
            self.ensure_linearizable(group).await?;
        }
        group
            .state
            .auction(id)
            .map_err(|e| ReadError::Internal(e.to_string()))
    }

    pub async fn list_auctions(
        self: &Arc<Self>,
        filter: AuctionFilter,
        consistency: Consistency,
    ) -> Result<AuctionListing, ReadError> {
        if consistency == Consistency::Linearizable {
            let mut checks = JoinSet::new();
            for group in &self.groups {
                let (node, group) = (self.clone(), group.clone());
                checks.spawn(async move { node.ensure_linearizable(&group).await });
            }
            while let Some(done) = checks.join_next().await {
                done.map_err(|e| ReadError::Internal(e.to_string()))??;
            }
        }
        let mut pages = Vec::with_capacity(self.groups.len());
        for group in &self.groups {
            let page = group
                .state
                .list_auctions(&filter)
                .map_err(|e| ReadError::Internal(e.to_string()))?;
            pages.push(page);
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
            self.ensure_linearizable(group).await?;
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

    /// `Ok` when this node is not shutting down, its clock is within bounds, it knows a leader
    /// for every group and it has applied what it committed.
    pub fn readiness(&self) -> Result<(), String> {
        // A load balancer should stop sending here as soon as the handoff begins.
        if self.leaving() {
            return Err(format!("node {} is shutting down", self.node_id()));
        }
        if let Some(problem) = self.clock.problem() {
            return Err(problem);
        }
        for group in &self.groups {
            if let Some(failure) = group.failure() {
                return Err(format!("group {} stopped: {failure}", group.id));
            }
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

    /// Resolves once any group's Raft core stopped on an error (a log or state write that
    /// failed: a full disk, an I/O error), with the group and why. Such a group never runs again
    /// in this process, so the node should stop (`gavel serve` does): its replica would
    /// otherwise sit in every quorum count while it neither votes nor appends, and look healthy.
    pub async fn group_failure(&self) -> (u32, String) {
        if self.groups.is_empty() {
            return std::future::pending().await;
        }
        let failures = self
            .groups
            .iter()
            .map(|group| Box::pin(async move { (group.id, group.failed().await) }));
        futures::future::select_all(failures).await.0
    }

    /// Resolves once this node found a group's state to differ from what a majority of its
    /// voters hold (`consistency`), with the group and how. The node must stop (`gavel serve`
    /// does); its next start brings the group's state back from a peer.
    pub async fn state_diverged(&self) -> (u32, String) {
        let mut diverged = self.diverged.subscribe();
        let found = match diverged.wait_for(Option::is_some).await {
            Ok(found) => found.clone(),
            // The sender lives as long as the node.
            Err(_) => None,
        };
        match found {
            Some(found) => found,
            None => std::future::pending().await,
        }
    }

    /// Records that group `group`'s state differs from the majority's, durably, for the next
    /// start to replace it, then tells whoever runs the node to stop it (`state_diverged`).
    pub(crate) async fn stop_diverged(&self, group: u32, detail: String) {
        tracing::error!(
            group,
            detail = %detail,
            "this replica's state differs from the majority's: stopping the node; its next \
             start brings the group's state back from a peer"
        );
        let recorded = self
            .store
            .node_meta::<BTreeSet<u32>>(META_DIVERGED)
            .and_then(|groups| {
                let mut groups = groups.unwrap_or_default();
                groups.insert(group);
                self.store.set_node_meta(META_DIVERGED, &groups)
            });
        let recorded = match recorded {
            Ok(()) => self.store.flush().await,
            Err(e) => Err(e),
        };
        let detail = match recorded {
            Ok(()) => detail,
            Err(e) => format!(
                "{detail}; recording it failed ({e}): empty this node's data dir and add it \
                 back (docs/OPERATIONS.md)"
            ),
        };
        self.diverged.send_replace(Some((group, detail)));
    }

    /// Stops timers, shuts every group and the transport down, makes the last writes durable.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut tasks = self.tasks.lock().await;
        while tasks.join_next().await.is_some() {}
        for group in &self.groups {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = group.id, error = %e, "group did not shut down cleanly");
            }
            // Not needed for safety (a restart applies them again from the Raft log), but a
            // stopped node's state then holds everything it applied.
            if let Err(e) = group.state.write_unwritten() {
                tracing::warn!(group = group.id, error = %e, "could not write the group's unwritten decisions");
            }
        }
        self.transport.shutdown();
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
        self.await_storage_released().await;
        tracing::info!(node_id = self.config.node_id, "node stopped");
    }
}

impl Node {
    /// Waits (bounded) until only this node's own handles keep the database open: openraft's
    /// state machine worker, the log flusher and a snapshot build drop theirs when their tasks
    /// end, shortly after the groups stopped. The data dir can then be opened again at once.
    async fn await_storage_released(&self) {
        // The node's store and each group's read side stay until the node itself is dropped.
        let own_handles = self.groups.len();
        let deadline = tokio::time::Instant::now() + STORAGE_RELEASE_WAIT;
        while self.store.handles_elsewhere() > own_handles {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    handles = self.store.handles_elsewhere() - own_handles,
                    "storage still held by stopped tasks"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn open_groups(
    config: &NodeConfig,
    store: &Store,
    transport: &Transport,
    applied: &AppliedChannel,
) -> Result<Vec<Arc<Group>>, NodeError> {
    let flusher = Flusher::start(store.clone());
    let settings = raft_settings(
        config.snapshot_after_entries,
        config.consistency_check_interval_ms,
    );
    let mut groups = Vec::with_capacity(config.groups as usize);
    for id in 0..config.groups {
        let group = Group::open(
            id,
            config.node_id,
            store,
            &flusher,
            &settings,
            applied,
            transport,
        )
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?;
        groups.push(Arc::new(group));
    }
    Ok(groups)
}

/// Log retention follows the snapshot interval: keep a tenth of it behind each snapshot for
/// followers that lag briefly, and purge in batches no larger than that.
fn raft_settings(snapshot_after_entries: u64, checkpoint_interval_ms: u64) -> RaftSettings {
    let snapshot_after_entries = snapshot_after_entries.max(10);
    let kept =
        (snapshot_after_entries / 10).min(RaftSettings::default().log_entries_kept_after_snapshot);
    RaftSettings {
        snapshot_after_entries,
        log_entries_kept_after_snapshot: kept,
        purge_batch_entries: (snapshot_after_entries / 4).clamp(1, 256),
        // The clock guard turns elections on once this node's clock is known to be healthy.
        elect_at_start: false,
        checkpoint_interval_ms,
        ..RaftSettings::default()
    }
}

/// The members of a new cluster as every initial member records them: by peer address only
/// (client addresses are learned from the peer handshake), so all write identical bytes.
pub(crate) fn initial_members_of(initial_cluster: &[(u64, String)]) -> BTreeMap<u64, GavelNode> {
    initial_cluster
        .iter()
        .map(|(id, peer_addr)| {
            let node = GavelNode {
                client_addr: String::new(),
                peer_addr: peer_addr.clone(),
            };
            (*id, node)
        })
        .collect()
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

/// How long helpers in this crate wait for things that should be quick on a healthy cluster.
pub(crate) const LEADER_WAIT: Duration = Duration::from_millis(3_000);

/// The receivers of per-group queues, taken once by the tasks that serve them.
fn take_queues<T>(queues: &std::sync::Mutex<Vec<mpsc::Receiver<T>>>) -> Vec<mpsc::Receiver<T>> {
    std::mem::take(&mut *queues.lock().unwrap_or_else(|e| e.into_inner()))
}

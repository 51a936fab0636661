//! How a write ends when its leader stops or loses leadership after the write reached openraft:
//! always "unknown" (the entry may be replicated and may still commit), never "nothing was
//! done" and never silently proposed again; only a write openraft rejected without appending it
//! is retried. Membership changes follow the same rule.
//!
//! Real openraft groups on real sled, over the real peer transport on loopback. `Trio` is three
//! replicas of one group whose inbound handlers can cut a node off (a partition); the forwarding
//! test runs three whole `Node`s.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::TcpListener;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use gavel_raft::transport::{
    InboundHandler, PeerRequest, PeerResponse, Transport, TransportConfig,
};
use gavel_raft::{Flusher, GavelNode, Group, Proposal, RaftSettings};
use gavel_rules::{Command, CreateAuction, Decimal};
use gavel_storage::{Store, StoreConfig};
use openraft::{ChangeMembers, ServerState};

use crate::api::{NodeConfig, ProposeError};
use crate::membership::change_membership_local;
use crate::node::Node;
use crate::peer_api::RemoteFailure;
use crate::raft_ops::{propose_local, submit, Attempt};
use crate::routing::group_of;
use crate::wall_clock_ms;

const WAIT: Duration = Duration::from_secs(20);
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(30);

fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("bound").to_string()
}

fn create(id: &str) -> Command {
    let now = wall_clock_ms();
    Command::Create {
        auction_id: id.into(),
        creator_id: "carol".into(),
        idempotency_key: None,
        request: CreateAuction {
            post_id: "p".into(),
            start_at_ms: now - 1_000,
            end_at_ms: now + 600_000,
            start_price: Decimal::ONE,
            min_increment: Decimal::ONE,
            anti_sniping_seconds: 0,
        },
    }
}

fn proposal(id: &str) -> Proposal {
    Proposal {
        stamp_ms: wall_clock_ms(),
        commands: vec![create(id)].into(),
    }
}

/// Waits until `check` holds, polling; panics naming `what` after [`WAIT`].
async fn until(what: &str, check: impl Fn() -> bool) {
    let end = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn last_log_index(group: &Group) -> u64 {
    group.raft.metrics().borrow().last_log_index.unwrap_or(0)
}

/// Routes inbound Raft RPCs to this node's replica, unless the node or the sender is cut off.
struct Gate {
    node_id: u64,
    group: OnceLock<Arc<Group>>,
    cut_off: Arc<Mutex<BTreeSet<u64>>>,
}

impl InboundHandler for Gate {
    fn handle(
        &self,
        from: u64,
        _group: u32,
        request: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = PeerResponse> + Send + 'static>> {
        let cut = {
            let cut_off = self.cut_off.lock().unwrap_or_else(|e| e.into_inner());
            cut_off.contains(&from) || cut_off.contains(&self.node_id)
        };
        let group = self.group.get().cloned();
        Box::pin(async move {
            let Some(group) = group.filter(|_| !cut) else {
                return PeerResponse::Refused("partitioned".into());
            };
            match request {
                PeerRequest::AppendEntries(rpc) => {
                    PeerResponse::AppendEntries(group.raft.append_entries(rpc).await)
                }
                PeerRequest::Vote(rpc) => PeerResponse::Vote(group.raft.vote(rpc).await),
                PeerRequest::InstallSnapshot(rpc) => {
                    PeerResponse::InstallSnapshot(group.raft.install_snapshot(rpc).await)
                }
                PeerRequest::App(_) => PeerResponse::Refused("no application here".into()),
                // The transport answers probes itself, before any handler.
                PeerRequest::ClockProbe { .. } => PeerResponse::ClockProbe {
                    now_ms: gavel_raft::wall_clock_ms(),
                },
            }
        })
    }
}

/// Three replicas (nodes 1, 2, 3) of group 0, each with its own sled database and transport.
struct Trio {
    _dirs: Vec<tempfile::TempDir>,
    groups: BTreeMap<u64, Arc<Group>>,
    cut_off: Arc<Mutex<BTreeSet<u64>>>,
}

impl Trio {
    async fn start() -> Trio {
        let cut_off = Arc::new(Mutex::new(BTreeSet::new()));
        let addrs: BTreeMap<u64, String> = (1..=3).map(|id| (id, free_addr())).collect();
        let (mut dirs, mut groups) = (Vec::new(), BTreeMap::new());
        for (&id, addr) in &addrs {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = Store::open(dir.path(), &StoreConfig::default()).expect("sled opens");
            let config = TransportConfig::new(id, String::new(), addr.clone());
            let (transport, _) = Transport::start(config, addr).await.expect("listens");
            let gate = Arc::new(Gate {
                node_id: id,
                group: OnceLock::new(),
                cut_off: cut_off.clone(),
            });
            transport.set_handler(gate.clone());
            let applied = gavel_raft::AppliedChannel::default();
            let flusher = Flusher::start(store.clone());
            let settings = RaftSettings::default();
            let group = Group::open(0, id, &store, &flusher, &settings, &applied, &transport)
                .await
                .expect("group opens");
            let group = Arc::new(group);
            let _ = gate.group.set(group.clone());
            dirs.push(dir);
            groups.insert(id, group);
        }
        let members: BTreeMap<u64, GavelNode> = addrs
            .iter()
            .map(|(&id, addr)| {
                let node = GavelNode {
                    client_addr: String::new(),
                    peer_addr: addr.clone(),
                };
                (id, node)
            })
            .collect();
        groups[&1]
            .raft
            .initialize(members)
            .await
            .expect("initializes");
        let trio = Trio {
            _dirs: dirs,
            groups,
            cut_off,
        };
        until("a leader", || trio.leader().is_some()).await;
        trio
    }

    /// The node that leads, as its own metrics say (the lowest id, should two believe so).
    fn leader(&self) -> Option<u64> {
        self.leaders().first().copied()
    }

    /// Every node that believes it leads: a cut-off leader keeps believing it.
    fn leaders(&self) -> Vec<u64> {
        let leads = |group: &Arc<Group>| group.raft.metrics().borrow().state == ServerState::Leader;
        self.groups
            .iter()
            .filter(|(_, group)| leads(group))
            .map(|(&id, _)| id)
            .collect()
    }

    fn cut_off(&self, node_id: u64) {
        self.cut_off
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(node_id);
    }

    fn heal(&self) {
        self.cut_off
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    async fn shutdown(self) {
        for group in self.groups.values() {
            let _ = group.raft.shutdown().await;
        }
    }
}

/// The leader, cut off from the others, with one write submitted and appended to its log only.
async fn write_stuck_on_isolated_leader(
    trio: &Trio,
) -> (
    u64,
    tokio::task::JoinHandle<Result<Vec<gavel_rules::Reply>, Attempt>>,
) {
    let leader = trio.leader().expect("a leader");
    let group = trio.groups[&leader].clone();
    trio.cut_off(leader);
    let before = last_log_index(&group);
    let write = tokio::spawn({
        let group = group.clone();
        async move { propose_local(&group, proposal("stuck"), PROPOSE_TIMEOUT).await }
    });
    until("the write appended on the leader", || {
        last_log_index(&group) > before
    })
    .await;
    (leader, write)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_write_whose_leader_stops_is_unknown() {
    let trio = Trio::start().await;
    let (leader, write) = write_stuck_on_isolated_leader(&trio).await;
    trio.groups[&leader]
        .raft
        .shutdown()
        .await
        .expect("shuts down");
    let outcome = write.await.expect("write task");
    assert!(
        matches!(outcome, Err(Attempt::Final(ProposeError::Unknown(_)))),
        "a write in the stopped leader's log may still commit, yet it ended as {outcome:?}"
    );
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cut_off_by_a_new_leader_is_unknown_not_retried() {
    let trio = Trio::start().await;
    let (old, write) = write_stuck_on_isolated_leader(&trio).await;
    until("a new leader among the others", || {
        trio.leaders().iter().any(|&id| id != old)
    })
    .await;
    // The new leader's log conflicts with the old one's at the write's index: once they talk
    // again, openraft truncates the write on the old leader and answers it ForwardToLeader.
    trio.heal();
    let outcome = tokio::time::timeout(WAIT, write)
        .await
        .expect("the write ends once the old leader rejoins")
        .expect("write task");
    assert!(
        matches!(outcome, Err(Attempt::Final(ProposeError::Unknown(_)))),
        "the write was appended (and could have been replicated) before the old leader lost \
         leadership, so proposing it again could apply it twice; yet it ended as {outcome:?}"
    );
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_openraft_rejects_without_appending_is_retried() {
    let trio = Trio::start().await;
    let leader = trio.leader().expect("a leader");
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let group = &trio.groups[&follower];
    // The new leader's first entry may still be on its way; counted before it lands, it would
    // look like an append of the rejected write.
    until("the follower holds the leader's whole log", || {
        last_log_index(group) == last_log_index(&trio.groups[&leader])
    })
    .await;
    let before = last_log_index(group);
    // Past the metrics check, straight to openraft, as when this node stepped down a moment
    // before the write reached RaftCore.
    let outcome = submit(group, follower, proposal("elsewhere"), PROPOSE_TIMEOUT).await;
    assert!(
        matches!(outcome, Err(Attempt::Retry(_))),
        "openraft rejected the write at once, without appending it; it ended as {outcome:?}"
    );
    assert_eq!(last_log_index(group), before, "nothing was appended");
    trio.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_change_whose_leader_stops_is_unknown() {
    let trio = Trio::start().await;
    let leader = trio.leader().expect("a leader");
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let group = trio.groups[&leader].clone();
    // openraft refuses a membership change, appending nothing, while the membership before it
    // is uncommitted: cut off before the new cluster's first entries commit (seen once in CI,
    // on a busy machine), the change would never be appended.
    until("the leader applied its whole log", || {
        let metrics = group.raft.metrics().borrow().clone();
        metrics.last_applied.map(|id| id.index) == metrics.last_log_index
    })
    .await;
    trio.cut_off(leader);
    let before = last_log_index(&group);
    let change = tokio::spawn({
        let group = group.clone();
        let remove = ChangeMembers::RemoveVoters(BTreeSet::from([follower]));
        async move { change_membership_local(&group, remove).await }
    });
    until("the change appended on the leader", || {
        last_log_index(&group) > before
    })
    .await;
    group.raft.shutdown().await.expect("shuts down");
    let outcome = change.await.expect("change task");
    assert!(
        matches!(outcome, Err(RemoteFailure::Unknown(_))),
        "the change is in the stopped leader's log and may still commit, yet it ended as \
         {outcome:?}"
    );
    trio.shutdown().await;
}

fn node_config(dir: &std::path::Path, id: u64, peers: &[(u64, String)]) -> NodeConfig {
    let peer_addr = peers
        .iter()
        .find(|(peer, _)| *peer == id)
        .map(|(_, addr)| addr.clone())
        .expect("the node is a peer");
    NodeConfig {
        node_id: id,
        data_dir: dir.join(format!("n{id}")),
        groups: 1,
        client_addr: format!("127.0.0.1:{}", 19000 + id),
        peer_listen: peer_addr.clone(),
        peer_addr,
        initial_cluster: peers.to_vec(),
        join: false,
        propose_timeout_ms: PROPOSE_TIMEOUT.as_millis() as u64,
        snapshot_after_entries: 20_000,
        max_clock_offset_ms: 500,
        peer_tls: None,
        consistency_check_interval_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_whose_leader_stops_is_unknown() {
    let dir = tempfile::tempdir().expect("temp dir");
    let peers: Vec<(u64, String)> = (1..=3).map(|id| (id, free_addr())).collect();
    let mut nodes = BTreeMap::new();
    for (id, _) in &peers {
        let node = Node::start(node_config(dir.path(), *id, &peers))
            .await
            .expect("node starts");
        nodes.insert(*id, node);
    }
    until("every node ready", || {
        nodes.values().all(|n| n.readiness().is_ok())
    })
    .await;
    let id = "forwarded";
    let g = group_of(id, 1) as usize;
    let leader = nodes[&1].groups[g]
        .raft
        .metrics()
        .borrow()
        .current_leader
        .expect("a leader");
    let mut others = nodes.keys().copied().filter(|&n| n != leader);
    let (via, third) = (others.next().expect("two"), others.next().expect("three"));
    // The leader keeps leading but has no quorum: the third node is gone and the forwarding
    // node's replica is stopped (its transport still forwards and carries the answer back).
    nodes[&third].shutdown().await;
    let _ = nodes[&via].groups[g].raft.shutdown().await;
    let leader_group = nodes[&leader].groups[g].clone();
    let before = last_log_index(&leader_group);
    let write = tokio::spawn({
        let (node, group) = (nodes[&via].clone(), nodes[&via].groups[g].clone());
        async move { node.forward(leader, &group, create(id)).await }
    });
    until("the forwarded write appended on the leader", || {
        last_log_index(&leader_group) > before
    })
    .await;
    leader_group.raft.shutdown().await.expect("shuts down");
    let outcome = write.await.expect("write task");
    assert!(
        matches!(outcome, Err(Attempt::Final(ProposeError::Unknown(_)))),
        "the forwarded write is in the stopped leader's log, yet it ended as {outcome:?}"
    );
    for (id, node) in nodes {
        if id != third {
            node.shutdown().await;
        }
    }
}

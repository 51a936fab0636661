//! `/cluster` as the node sees it: every known node with its addresses and reachability, and
//! per group the leader, term, members and each reachable replica's log, commit and apply
//! progress with a digest of its state machine (equal digests at equal applied indexes mean
//! byte-identical replicas); and the members' client addresses alone, from the local view.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::join_all;
use gavel_raft::transport::{PeerRequest, PeerResponse};

use crate::api::{ClusterStatus, GroupStatus, NodeStatus, ReplicaStatus};
use crate::node::Node;
use crate::peer_api::{decode_answer, encode_call, AppAnswer, AppCall, GroupView};
use crate::raft_ops::members;

/// How long a peer has to answer a status call without digests; past it, it is unreachable.
const STATUS_CALL_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long a peer that answered has to compute its digests. They read its whole state: a
/// node of three groups of about 150 MB each, under load, takes seconds (which had made a
/// `/cluster` that asked with the short bound report a healthy node unreachable).
const DIGESTS_CALL_TIMEOUT: Duration = Duration::from_secs(15);

impl Node {
    /// This node's view of every group it hosts. Digests read the whole state: only on request,
    /// and on a blocking thread. Read on the runtime that asked (HTTP for `/cluster`, consensus
    /// for a peer's status call), a hot group's 130 MB took that runtime's thread for 0.2-0.4
    /// s, and every node computes its digests for one `/cluster`: every group of the cluster
    /// stopped at once, heartbeats and bids. A group with a digest reports the applied index
    /// the digest is exact for, so that the pair can be compared with another replica's.
    pub(crate) async fn local_views(&self, digests: bool) -> Vec<GroupView> {
        let digests = if digests {
            let groups = self.groups.clone();
            let computed = tokio::task::spawn_blocking(move || {
                groups
                    .iter()
                    .map(|group| match group.state_digest() {
                        Ok(digest) => Some(digest),
                        Err(e) => {
                            tracing::warn!(group = group.id, error = %e, "state digest failed");
                            None
                        }
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            computed.unwrap_or_default()
        } else {
            Vec::new()
        };
        self.groups
            .iter()
            .enumerate()
            .map(|(i, group)| {
                let metrics = group.raft.metrics().borrow().clone();
                let (voters, learners) = members(group);
                let digest = digests.get(i).copied().flatten();
                let applied_index = match digest {
                    Some(digest) => digest.applied_index,
                    None => metrics.last_applied.map_or(0, |id| id.index),
                };
                GroupView {
                    group: group.id,
                    leader: metrics.current_leader,
                    term: metrics.current_term,
                    voters,
                    learners,
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    committed_index: group.committed_index.load(Ordering::Relaxed),
                    applied_index,
                    // One that could not be computed reads as 0, as a failed one always did.
                    digest: digest.map_or(0, |digest| digest.digest),
                }
            })
            .collect()
    }

    /// A peer's views and whether they carry digests, or `None` when it did not answer within
    /// `STATUS_CALL_TIMEOUT`. With `digests`, a peer that answered is asked again for them; if
    /// it does not give them in time, its views are kept without.
    async fn remote_views(&self, node_id: u64, digests: bool) -> Option<(Vec<GroupView>, bool)> {
        let views = self
            .status_call(node_id, false, STATUS_CALL_TIMEOUT)
            .await?;
        if !digests {
            return Some((views, false));
        }
        match self.status_call(node_id, true, DIGESTS_CALL_TIMEOUT).await {
            Some(with_digests) => Some((with_digests, true)),
            None => Some((views, false)),
        }
    }

    async fn status_call(
        &self,
        node_id: u64,
        digests: bool,
        timeout: Duration,
    ) -> Option<Vec<GroupView>> {
        let request = encode_call(&AppCall::Status { digests }).ok()?;
        let response = self
            .transport
            .call(node_id, 0, PeerRequest::App(request), timeout)
            .await;
        match response {
            Ok(PeerResponse::App(bytes)) => match decode_answer(&bytes) {
                Ok(AppAnswer::Status(views)) => Some(views),
                _ => None,
            },
            _ => None,
        }
    }

    /// Tells the transport where `node_id` listens, from any group's replicated membership.
    /// A node otherwise learns a peer's address only once it sends that peer Raft messages,
    /// which a learner, or a voter that leads nothing, may never do.
    pub(crate) fn learn_peer_addr(&self, node_id: u64) {
        for group in &self.groups {
            let metrics = group.raft.metrics();
            let metrics = metrics.borrow();
            if let Some(node) = metrics.membership_config.membership().get_node(&node_id) {
                self.transport.set_peer_addr(node_id, &node.peer_addr);
                return;
            }
        }
    }

    /// Known nodes: every member of any group, plus peers this node talks to.
    fn known_nodes(&self) -> BTreeMap<u64, NodeStatus> {
        let mut nodes = BTreeMap::new();
        for group in &self.groups {
            let metrics = group.raft.metrics().borrow().clone();
            for (id, node) in metrics.membership_config.membership().nodes() {
                self.transport.set_peer_addr(*id, &node.peer_addr);
                let entry = nodes.entry(*id).or_insert_with(|| NodeStatus {
                    id: *id,
                    client_addr: String::new(),
                    peer_addr: String::new(),
                    reachable: *id == self.node_id(),
                });
                if entry.client_addr.is_empty() {
                    entry.client_addr = node.client_addr.clone();
                }
                if entry.peer_addr.is_empty() {
                    entry.peer_addr = node.peer_addr.clone();
                }
            }
        }
        for peer in self.transport.peers() {
            if let Some(entry) = nodes.get_mut(&peer.node_id) {
                if let Some(hello) = peer.hello {
                    if entry.client_addr.is_empty() {
                        entry.client_addr = hello.client_addr;
                    }
                    if entry.peer_addr.is_empty() {
                        entry.peer_addr = hello.peer_addr;
                    }
                }
            }
        }
        let me = nodes.entry(self.node_id()).or_insert_with(|| NodeStatus {
            id: self.node_id(),
            client_addr: String::new(),
            peer_addr: String::new(),
            reachable: true,
        });
        me.client_addr = self.config.client_addr.clone();
        me.peer_addr = self.config.peer_addr.clone();
        nodes
    }

    /// The client address (`HOST:PORT`) of every member, voter or learner, of any group, this
    /// node included, by node id. This node's view alone (its membership, and for the members
    /// an `--initial-cluster` named only by peer address, their transport handshakes): no Raft
    /// round trip, so it may trail a membership change briefly. A member whose client address
    /// this node has not learned yet is left out.
    pub fn member_client_addrs(&self) -> BTreeMap<u64, String> {
        self.known_nodes()
            .into_iter()
            .filter(|(_, node)| !node.client_addr.is_empty())
            .map(|(id, node)| (id, node.client_addr))
            .collect()
    }

    /// The cluster as this node sees it. With `digests`, every reachable replica's state
    /// digest, which reads its whole state (seconds for hundreds of MB): an operator's check,
    /// not something to poll. This node's views and every peer's are read at the same time.
    pub async fn cluster_status(&self, digests: bool) -> ClusterStatus {
        let mut nodes = self.known_nodes();
        let others: Vec<u64> = nodes
            .keys()
            .copied()
            .filter(|id| *id != self.node_id())
            .collect();
        let (local, answers) = futures::join!(
            self.local_views(digests),
            join_all(others.iter().map(|id| self.remote_views(*id, digests)))
        );
        // Per node: its views, and whether they carry digests (0 is a digest too: an empty
        // state's).
        let mut views: BTreeMap<u64, (Vec<GroupView>, bool)> =
            BTreeMap::from([(self.node_id(), (local.clone(), digests))]);
        for (id, answer) in others.into_iter().zip(answers) {
            if let Some(node) = nodes.get_mut(&id) {
                node.reachable = answer.is_some();
            }
            if let Some(answer) = answer {
                views.insert(id, answer);
            }
        }
        let groups = local
            .iter()
            .map(|mine| GroupStatus {
                id: mine.group,
                leader: mine.leader,
                term: mine.term,
                voters: mine.voters.clone(),
                learners: mine.learners.clone(),
                replicas: views
                    .iter()
                    .filter_map(|(node_id, (node_views, with_digests))| {
                        let view = node_views.iter().find(|v| v.group == mine.group)?;
                        Some(ReplicaStatus {
                            node_id: *node_id,
                            last_log_index: view.last_log_index,
                            committed_index: view.committed_index,
                            applied_index: view.applied_index,
                            digest: with_digests.then_some(view.digest),
                        })
                    })
                    .collect(),
            })
            .collect();
        ClusterStatus {
            node_id: self.node_id(),
            nodes: nodes.into_values().collect(),
            groups,
        }
    }
}

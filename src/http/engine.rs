//! The narrow view of the cluster node that the HTTP layer uses: propose a command, read an
//! auction, a listing or a bid page, ask readiness, hear applied changes (for live updates),
//! take a backup.
//!
//! It exists so handlers can be tested against an in-memory engine (the `fake` module, which
//! runs the real auction rules) while `gavel_cluster::Node` serves production. It adds no
//! behaviour of its own.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use gavel_cluster::backup::BackupStream;
use gavel_cluster::{
    AppliedEvents, AuctionFilter, AuctionListing, BidFilter, BidPage, ClusterStatus, Consistency,
    MembershipError, Node, ProposeError, ReadError, Watched,
};
use gavel_rules::{Auction, Command, Reply};
use tokio::sync::broadcast;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait Engine: Send + Sync + 'static {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Reply, ProposeError>>;
    fn auction<'a>(
        &'a self,
        id: &'a str,
        consistency: Consistency,
    ) -> BoxFuture<'a, Result<Option<Auction>, ReadError>>;
    fn list_auctions(
        &self,
        filter: AuctionFilter,
        consistency: Consistency,
    ) -> BoxFuture<'_, Result<AuctionListing, ReadError>>;
    /// `None` when the auction does not exist.
    fn bids<'a>(
        &'a self,
        auction_id: &'a str,
        filter: BidFilter,
        consistency: Consistency,
    ) -> BoxFuture<'a, Result<Option<BidPage>, ReadError>>;
    fn readiness(&self) -> Result<(), String>;
    /// With `digests`, each reachable replica's state digest too (reads whole states).
    fn cluster_status(&self, digests: bool) -> BoxFuture<'_, ClusterStatus>;
    /// The client `HOST:PORT` of every member (voters and learners), this node included, by
    /// node id, from this node's local view: no Raft round trip.
    fn member_client_addrs(&self) -> BTreeMap<u64, String>;
    fn add_node(&self, member: NewMember) -> BoxFuture<'_, Result<(), MembershipError>>;
    fn remove_node(&self, node_id: u64) -> BoxFuture<'_, Result<(), MembershipError>>;
    fn transfer_leader(&self, group: u32, to: u64) -> BoxFuture<'_, Result<(), MembershipError>>;
    /// A linearizable copy of every group as the backup file's bytes; fails before the first
    /// byte when a group cannot be read linearizably.
    fn backup(&self) -> BoxFuture<'_, Result<BackupStream, ReadError>>;
    /// Every auction change this node's replicas apply, in apply order, a batch at a time (each
    /// auction at most once per batch). The channel is bounded: a receiver that falls behind
    /// gets `Lagged` and must re-read what it cares about.
    fn subscribe(&self) -> broadcast::Receiver<AppliedEvents>;
    /// Which auctions the subscriber watches: only their changes reach `subscribe`'s channel.
    fn watched(&self) -> Arc<Watched>;
    /// Milliseconds since the Unix epoch on this node's clock, for early checks at the edge
    /// only: the state machine decides with the leader's stamp.
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }
}

/// A node to add to every group.
#[derive(Clone, Debug)]
pub struct NewMember {
    pub node_id: u64,
    pub client_addr: String,
    pub peer_addr: String,
    /// `false` keeps it a fan-out-only learner.
    pub voter: bool,
}

/// The production engine: a running cluster node.
pub struct NodeEngine(pub Arc<Node>);

impl Engine for NodeEngine {
    fn propose(&self, command: Command) -> BoxFuture<'_, Result<Reply, ProposeError>> {
        Box::pin(self.0.propose(command))
    }

    fn auction<'a>(
        &'a self,
        id: &'a str,
        consistency: Consistency,
    ) -> BoxFuture<'a, Result<Option<Auction>, ReadError>> {
        Box::pin(self.0.auction(id, consistency))
    }

    fn list_auctions(
        &self,
        filter: AuctionFilter,
        consistency: Consistency,
    ) -> BoxFuture<'_, Result<AuctionListing, ReadError>> {
        Box::pin(self.0.list_auctions(filter, consistency))
    }

    fn bids<'a>(
        &'a self,
        auction_id: &'a str,
        filter: BidFilter,
        consistency: Consistency,
    ) -> BoxFuture<'a, Result<Option<BidPage>, ReadError>> {
        Box::pin(self.0.bids(auction_id, filter, consistency))
    }

    fn readiness(&self) -> Result<(), String> {
        self.0.readiness()
    }

    fn cluster_status(&self, digests: bool) -> BoxFuture<'_, ClusterStatus> {
        Box::pin(self.0.cluster_status(digests))
    }

    fn member_client_addrs(&self) -> BTreeMap<u64, String> {
        self.0.member_client_addrs()
    }

    fn add_node(&self, member: NewMember) -> BoxFuture<'_, Result<(), MembershipError>> {
        Box::pin(self.0.add_node(
            member.node_id,
            member.client_addr,
            member.peer_addr,
            member.voter,
        ))
    }

    fn remove_node(&self, node_id: u64) -> BoxFuture<'_, Result<(), MembershipError>> {
        Box::pin(self.0.remove_node(node_id))
    }

    fn transfer_leader(&self, group: u32, to: u64) -> BoxFuture<'_, Result<(), MembershipError>> {
        Box::pin(self.0.transfer_leader(group, to))
    }

    fn backup(&self) -> BoxFuture<'_, Result<BackupStream, ReadError>> {
        Box::pin(self.0.backup())
    }

    fn subscribe(&self) -> broadcast::Receiver<AppliedEvents> {
        self.0.subscribe()
    }

    fn watched(&self) -> Arc<Watched> {
        self.0.watched()
    }

    fn now_ms(&self) -> i64 {
        gavel_cluster::wall_clock_ms()
    }
}

/// An in-memory, single-replica engine that applies commands with the real rules at a clock
/// the test controls.
#[cfg(test)]
pub mod fake {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::Mutex;

    use gavel_cluster::{AuctionCursor, AuctionEvent};
    use gavel_rules::{BidDecision, BidStatus};

    use super::*;

    #[derive(Default)]
    struct State {
        auctions: BTreeMap<String, Auction>,
        decisions: BTreeMap<(String, u64), BidDecision>,
        keys: HashMap<(String, String, String), u64>,
    }

    /// What the fake applies, as the node's event channel would carry it.
    struct Events(broadcast::Sender<AppliedEvents>);

    /// What the fake's backup endpoint streams.
    pub const FAKE_BACKUP: &[u8] = b"the in-memory engine's stand-in backup";

    /// Changes the fake's event channel holds for a lagging receiver.
    pub const FAKE_EVENTS_QUEUE_MAX: usize = 1024;

    impl Default for Events {
        fn default() -> Self {
            Events(broadcast::channel(FAKE_EVENTS_QUEUE_MAX).0)
        }
    }

    #[derive(Default)]
    pub struct FakeEngine {
        pub now_ms: AtomicI64,
        state: Mutex<State>,
        events: Events,
        watched: Arc<Watched>,
        /// Failures the next proposals answer with, first in first out.
        pub failures: Mutex<Vec<ProposeError>>,
        /// Failures the next reads (auction, list, bids) answer with, first in first out.
        pub read_failures: Mutex<Vec<ReadError>>,
        /// Answers the next membership changes give instead of the fake's own, first in first out.
        pub membership_answers: Mutex<Vec<Result<(), MembershipError>>>,
        pub not_ready: Mutex<Option<String>>,
        /// What `member_client_addrs` answers: node 1 at `FAKE_CLIENT_ADDR` unless replaced.
        pub client_addrs: Mutex<BTreeMap<u64, String>>,
    }

    /// The client address the fake, a cluster of itself alone, announces.
    pub const FAKE_CLIENT_ADDR: &str = "127.0.0.1:8080";

    impl FakeEngine {
        pub fn new(now_ms: i64) -> FakeEngine {
            let engine = FakeEngine::default();
            engine.now_ms.store(now_ms, Ordering::SeqCst);
            *engine.client_addrs.lock().unwrap() = BTreeMap::from([(1, FAKE_CLIENT_ADDR.into())]);
            engine
        }

        pub fn advance_ms(&self, ms: i64) {
            self.now_ms.fetch_add(ms, Ordering::SeqCst);
        }

        /// Pretends `id` already decided `count` bids, to reach the decision log's bound.
        pub fn set_decision_count(&self, id: &str, count: u64) {
            if let Some(auction) = self.state.lock().unwrap().auctions.get_mut(id) {
                auction.decision_count = count;
            }
        }

        fn next_read_failure(&self) -> Option<ReadError> {
            let mut failures = self.read_failures.lock().unwrap();
            (!failures.is_empty()).then(|| failures.remove(0))
        }

        fn next_membership_answer(&self) -> Option<Result<(), MembershipError>> {
            let mut answers = self.membership_answers.lock().unwrap();
            (!answers.is_empty()).then(|| answers.remove(0))
        }

        fn apply(&self, command: Command) -> Reply {
            let stamp = self.now_ms.load(Ordering::SeqCst);
            let mut state = self.state.lock().unwrap();
            let id = command.auction_id().to_owned();
            let prior = match &command {
                Command::Bid {
                    bidder_id,
                    idempotency_key,
                    ..
                } => state
                    .keys
                    .get(&(id.clone(), bidder_id.clone(), idempotency_key.clone()))
                    .and_then(|seq| state.decisions.get(&(id.clone(), *seq)))
                    .cloned(),
                _ => None,
            };
            let effects =
                gavel_rules::apply(state.auctions.get(&id), prior.as_ref(), &command, stamp);
            if let Some(decision) = effects.decision {
                let key = (
                    id.clone(),
                    decision.bidder_id.clone(),
                    decision.idempotency_key.clone(),
                );
                state.keys.insert(key, decision.seq);
                state.decisions.insert((id.clone(), decision.seq), decision);
            }
            if let (true, Some(auction)) = (effects.auction_changed, effects.auction) {
                if !effects.changes.is_empty() {
                    let event = AuctionEvent {
                        group: 0,
                        auction: Arc::new(auction.clone()),
                        changes: effects.changes,
                        applied_at: std::time::Instant::now(),
                    };
                    // No receiver is fine: nobody is watching.
                    let _ = self.events.0.send(Arc::from([event]));
                }
                state.auctions.insert(id, auction);
            }
            effects.reply
        }
    }

    impl Engine for FakeEngine {
        fn propose(&self, command: Command) -> BoxFuture<'_, Result<Reply, ProposeError>> {
            let failure = {
                let mut failures = self.failures.lock().unwrap();
                (!failures.is_empty()).then(|| failures.remove(0))
            };
            let result = match failure {
                Some(failure) => Err(failure),
                None => Ok(self.apply(command)),
            };
            Box::pin(async move { result })
        }

        fn auction<'a>(
            &'a self,
            id: &'a str,
            _: Consistency,
        ) -> BoxFuture<'a, Result<Option<Auction>, ReadError>> {
            let found = match self.next_read_failure() {
                Some(failure) => Err(failure),
                None => Ok(self.state.lock().unwrap().auctions.get(id).cloned()),
            };
            Box::pin(async move { found })
        }

        fn list_auctions(
            &self,
            filter: AuctionFilter,
            _: Consistency,
        ) -> BoxFuture<'_, Result<AuctionListing, ReadError>> {
            if let Some(failure) = self.next_read_failure() {
                return Box::pin(async move { Err(failure) });
            }
            let state = self.state.lock().unwrap();
            let mut all: Vec<&Auction> = state
                .auctions
                .values()
                .filter(|a| filter.status.is_none_or(|s| s == a.status))
                .filter(|a| {
                    filter
                        .creator_id
                        .as_ref()
                        .is_none_or(|c| *c == a.creator_id)
                })
                .filter(|a| {
                    filter
                        .before
                        .as_ref()
                        .is_none_or(|b| AuctionCursor::of(a) < *b)
                })
                .collect();
            all.sort_by_key(|a| std::cmp::Reverse(AuctionCursor::of(a)));
            let more = all.len() > filter.limit;
            let auctions: Vec<Auction> = all.into_iter().take(filter.limit).cloned().collect();
            let next = more
                .then(|| auctions.last().map(AuctionCursor::of))
                .flatten();
            Box::pin(async move { Ok(AuctionListing { auctions, next }) })
        }

        fn bids<'a>(
            &'a self,
            auction_id: &'a str,
            filter: BidFilter,
            _: Consistency,
        ) -> BoxFuture<'a, Result<Option<BidPage>, ReadError>> {
            if let Some(failure) = self.next_read_failure() {
                return Box::pin(async move { Err(failure) });
            }
            let state = self.state.lock().unwrap();
            let page = state.auctions.contains_key(auction_id).then(|| {
                let mut page = BidPage::default();
                let from = (auction_id.to_owned(), filter.after_seq + 1);
                let to = (auction_id.to_owned(), u64::MAX);
                for decision in state.decisions.range(from..=to).map(|(_, d)| d) {
                    if page.bids.len() == filter.limit {
                        page.next_after_seq = page.bids.last().map(|d| d.seq);
                        break;
                    }
                    if !filter.accepted_only || decision.status == BidStatus::Accepted {
                        page.bids.push(decision.clone());
                    }
                }
                page
            });
            Box::pin(async move { Ok(page) })
        }

        fn now_ms(&self) -> i64 {
            self.now_ms.load(Ordering::SeqCst)
        }

        fn readiness(&self) -> Result<(), String> {
            match self.not_ready.lock().unwrap().clone() {
                Some(reason) => Err(reason),
                None => Ok(()),
            }
        }

        fn member_client_addrs(&self) -> BTreeMap<u64, String> {
            self.client_addrs.lock().unwrap().clone()
        }

        /// The fake is a cluster of itself alone: node 1, leader of the one group 0.
        fn cluster_status(&self, digests: bool) -> BoxFuture<'_, ClusterStatus> {
            let applied = self.state.lock().unwrap().decisions.len() as u64;
            Box::pin(async move {
                ClusterStatus {
                    node_id: 1,
                    nodes: vec![gavel_cluster::NodeStatus {
                        id: 1,
                        client_addr: "fake".into(),
                        peer_addr: "fake".into(),
                        reachable: true,
                    }],
                    groups: vec![gavel_cluster::GroupStatus {
                        id: 0,
                        leader: Some(1),
                        term: 1,
                        voters: vec![1],
                        learners: Vec::new(),
                        replicas: vec![gavel_cluster::ReplicaStatus {
                            node_id: 1,
                            last_log_index: applied,
                            committed_index: applied,
                            applied_index: applied,
                            digest: digests.then_some(applied),
                        }],
                    }],
                }
            })
        }

        /// Unless told otherwise, the fake cannot grow: a new node is refused.
        fn add_node(&self, member: NewMember) -> BoxFuture<'_, Result<(), MembershipError>> {
            let answer = self.next_membership_answer().unwrap_or_else(|| {
                Err(MembershipError::Rejected(format!(
                    "the in-memory engine cannot add node {}",
                    member.node_id
                )))
            });
            Box::pin(async move { answer })
        }

        fn remove_node(&self, node_id: u64) -> BoxFuture<'_, Result<(), MembershipError>> {
            let answer = self.next_membership_answer().unwrap_or_else(|| {
                Err(MembershipError::NotFound(format!(
                    "the in-memory engine has no node {node_id}"
                )))
            });
            Box::pin(async move { answer })
        }

        fn transfer_leader(
            &self,
            group: u32,
            _to: u64,
        ) -> BoxFuture<'_, Result<(), MembershipError>> {
            let answer = self.next_membership_answer().unwrap_or_else(|| {
                Err(MembershipError::NotFound(format!(
                    "the in-memory engine has no group {group}"
                )))
            });
            Box::pin(async move { answer })
        }

        /// The fake has no Raft snapshots to copy.
        /// A stand-in body (the fake has no Raft groups to capture), or the next read failure.
        fn backup(&self) -> BoxFuture<'_, Result<BackupStream, ReadError>> {
            let result = match self.next_read_failure() {
                Some(failure) => Err(failure),
                None => {
                    let (tx, pieces) = tokio::sync::mpsc::channel(1);
                    // Room for the one piece: cannot fail.
                    let _ = tx.try_send(Ok(FAKE_BACKUP.to_vec()));
                    Ok(BackupStream { pieces })
                }
            };
            Box::pin(async move { result })
        }

        fn subscribe(&self) -> broadcast::Receiver<AppliedEvents> {
            self.events.0.subscribe()
        }

        /// The fake publishes every change; it only keeps the marks for tests to look at.
        fn watched(&self) -> Arc<Watched> {
            self.watched.clone()
        }
    }
}

//! Frozen nodes on a three-node cluster of real processes. SIGSTOP keeps a node's sockets open
//! while it answers nothing, like a long GC pause or a hung disk. A frozen follower must not
//! slow the quorum; a frozen leader must be replaced by an election, after which its group takes
//! writes through the other nodes; after SIGCONT each returns to byte-identical replicas, and
//! no acknowledged decision is lost or doubled.

use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::*;

/// Writes measured in each phase.
const WRITES_PER_PHASE: usize = 12;
/// No single write through the live quorum may take longer than this while another node is
/// frozen (a debug build decides one in tens of milliseconds).
const WRITE_LATENCY_MAX: Duration = Duration::from_millis(1_500);
/// How long writes go on while a node is frozen: longer than the leader placement's period
/// (2 s), so that whatever the other nodes do about the frozen one happens meanwhile.
const FROZEN_PHASE: Duration = Duration::from_secs(5);
/// The pace of the timed writes.
const WRITE_INTERVAL: Duration = Duration::from_millis(25);
/// From SIGSTOP of a leader to a new leader seen by another node.
const ELECTION_WITHIN: Duration = Duration::from_secs(10);
/// From SIGSTOP of a leader to the first decided write in its group, for a client that
/// retries with its key (a write already sent to the frozen leader ends as 504 only after the
/// node's propose timeout of 5 s).
const FIRST_WRITE_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_follower_or_leader_does_not_stall_writes() {
    let seed = test_seed();
    // Runs alone: `WRITE_LATENCY_MAX` is a timing bound.
    let mut cluster = Cluster::start(ClusterConfig {
        whole_machine: true,
        ..ClusterConfig::default()
    })
    .await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    let ledger = Ledger::new();
    let mut writer = Writer::new(seed);

    // The auction under test, its group and that group's leader.
    let auction = auctions[(seed % u64::from(cluster.config.groups)) as usize].clone();
    let id = auction["id"].as_str().expect("id").to_owned();
    let group = cluster.group_of(&id);
    let status = cluster.status(ids[0]).await;
    let leader = group_view(&status, group)["leader"]
        .as_u64()
        .expect("a leader");
    let follower = *ids.iter().find(|&&n| n != leader).expect("a follower");
    let third = *ids
        .iter()
        .find(|&&n| n != leader && n != follower)
        .expect("a third node");
    eprintln!("auction {id} in group {group}, led by node {leader}; freezing follower {follower}");

    let baseline = writer
        .writes(&cluster, &[leader, third], &id, WRITES_PER_PHASE, &ledger)
        .await;
    eprintln!("baseline (median, max): {:?}", latency_summary(&baseline));

    cluster.pause(follower);
    let frozen = writer
        .writes_for(&cluster, &[leader, third], &id, FROZEN_PHASE, &ledger)
        .await;
    let (median, max) = latency_summary(&frozen);
    eprintln!(
        "{} writes with follower {follower} frozen (median, max): {median:?}, {max:?}",
        frozen.len()
    );
    assert!(
        max <= WRITE_LATENCY_MAX,
        "a frozen follower slowed writes through the quorum: {frozen:?}"
    );
    cluster.resume(follower);
    cluster
        .await_converged(follower, &ids, CONVERGE_TIMEOUT)
        .await;

    // Freeze the group's leader (whoever leads it now). A client keeps retrying one write
    // through the other nodes meanwhile.
    let status = cluster.status(third).await;
    let view = group_view(&status, group);
    let (leader, term) = (
        view["leader"].as_u64().expect("a leader"),
        view["term"].as_u64().expect("term"),
    );
    let others: Vec<u64> = ids.iter().copied().filter(|&n| n != leader).collect();
    eprintln!("freezing node {leader}, leader of group {group} in term {term}");
    cluster.pause(leader);
    let frozen_at = Instant::now();
    let (first, (new_leader, new_term)) = tokio::join!(
        writer.writes_retrying(&cluster, &others, &id, 1, &ledger),
        cluster.await_leader(others[0], group, ELECTION_WITHIN, |l, t| {
            l != leader && t > term
        })
    );
    eprintln!(
        "node {new_leader} leads group {group} in term {new_term} (seen {:?} after the freeze); the first write was decided after {first:?}",
        frozen_at.elapsed()
    );
    assert!(
        first[0] <= FIRST_WRITE_WITHIN,
        "the first write after freezing the leader took {first:?}"
    );
    let after = writer
        .writes_for(&cluster, &others, &id, FROZEN_PHASE, &ledger)
        .await;
    let (median, max) = latency_summary(&after);
    eprintln!(
        "{} writes under the new leader (median, max): {median:?}, {max:?}",
        after.len()
    );
    assert!(
        max <= WRITE_LATENCY_MAX,
        "writes under the new leader, with the old one frozen, are slow: {after:?}"
    );
    cluster.resume(leader);
    cluster
        .await_converged(leader, &ids, CONVERGE_TIMEOUT)
        .await;
    writer
        .writes(&cluster, &ids, &id, WRITES_PER_PHASE, &ledger)
        .await;
    cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    cluster
        .assert_ledger(&ids, std::slice::from_ref(&auction), &ledger)
        .await;
}

/// One bidder's sequential writes with seeded amounts.
struct Writer {
    rng: rand::rngs::StdRng,
    token: String,
    price: Decimal,
    placed: usize,
}

impl Writer {
    fn new(seed: u64) -> Writer {
        use rand::SeedableRng;
        Writer {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            token: token("walter", &["bidder"]),
            price: dec("10.00"),
            placed: 0,
        }
    }

    /// `count` writes through `via` in turn, each decided at its first attempt; their latencies.
    async fn writes(
        &mut self,
        cluster: &Cluster,
        via: &[u64],
        auction_id: &str,
        count: usize,
        ledger: &Ledger,
    ) -> Vec<Duration> {
        let mut latencies = Vec::with_capacity(count);
        for n in 0..count {
            let node = via[n % via.len()];
            let key = format!("walter-{}", self.placed);
            let amount = next_amount(&mut self.rng, self.price, dec("1.00"));
            let started = Instant::now();
            let reply = cluster
                .api(node)
                .bid_ok(&self.token, auction_id, &key, json!(amount))
                .await;
            latencies.push(started.elapsed());
            self.record(auction_id, &key, &reply, ledger);
        }
        latencies
    }

    /// Writes through `via` in turn for `phase`, each decided at its first attempt; their
    /// latencies.
    async fn writes_for(
        &mut self,
        cluster: &Cluster,
        via: &[u64],
        auction_id: &str,
        phase: Duration,
        ledger: &Ledger,
    ) -> Vec<Duration> {
        let until = Instant::now() + phase;
        let mut latencies = Vec::new();
        // Paced well under the per-bidder rate limit (100 bids a second).
        let mut pace = tokio::time::interval(WRITE_INTERVAL);
        let mut n = 0;
        while Instant::now() < until {
            pace.tick().await;
            let node = [via[n % via.len()]];
            latencies.extend(self.writes(cluster, &node, auction_id, 1, ledger).await);
            n += 1;
        }
        latencies
    }

    /// Like [`Writer::writes`], retrying each write with its key until decided.
    async fn writes_retrying(
        &mut self,
        cluster: &Cluster,
        via: &[u64],
        auction_id: &str,
        count: usize,
        ledger: &Ledger,
    ) -> Vec<Duration> {
        let apis = cluster.apis(via);
        let mut turn = 0;
        let mut latencies = Vec::with_capacity(count);
        for _ in 0..count {
            let key = format!("walter-{}", self.placed);
            let amount = next_amount(&mut self.rng, self.price, dec("1.00"));
            let started = Instant::now();
            let bid = BidRequest {
                token: &self.token,
                auction_id,
                key: &key,
                amount: &amount,
                within: Duration::from_secs(20),
            };
            let reply = bid_until_decided(&apis, &mut turn, &bid)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            latencies.push(started.elapsed());
            self.record(auction_id, &key, &reply, ledger);
        }
        latencies
    }

    fn record(&mut self, auction_id: &str, key: &str, reply: &Value, ledger: &Ledger) {
        ledger.record(auction_id, "walter", key, reply);
        self.price = money(&reply["currentPrice"]);
        self.placed += 1;
    }
}

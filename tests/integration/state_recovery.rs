//! A node whose storage engine lost its state machines: sled's files damaged while the node was
//! down, as a power cut can leave them (the fault suite's `power-off-torn` found sled 0.34
//! refusing, or panicking on, files whose unsynced pages were partly written back). The Raft log
//! survives and was purged behind snapshot points, so the state must come back from a copy.
//!
//! Both damages here are ones sled itself reports or makes plain: it refuses its files, or opens
//! without the state it had flushed (the Raft log purged past it then shows the loss).
//! In a cluster the node gets its groups' states back from its peers and is a full member again:
//! its replicas converge to the others' digests, every acknowledged bid is on it, and it carries
//! the quorum when another member is down. A single node has no peer to ask: it stops with an
//! error that says what happened and what restores it.

use std::path::Path;
use std::time::Duration;

use crate::common::cluster::*;
use crate::common::*;

/// A snapshot point every few entries, so each group's log is purged behind its state long
/// before the damage.
const SNAPSHOT_AFTER_ENTRIES: u64 = 30;
/// How long one bid may take to be decided, retries across the outages included.
const BID_WITHIN: Duration = Duration::from_secs(60);

/// What the damaged node's storage engine finds when it starts. (Garbage written over data
/// sled had synced is another matter, media corruption: sled may then open without a word and
/// serve a state that differs from the other replicas', which only `gavel cluster status
/// --digests` shows; see `docs/OPERATIONS.md`.)
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Its settings file overwritten: sled refuses to open the database at all.
    Settings,
    /// Its data gone, the settings file kept: sled opens an empty database, without the state
    /// it had flushed, as it opens some files a torn power cut left.
    DataLost,
}

impl Damage {
    fn inflict(self, db_dir: &Path) {
        match self {
            Damage::Settings => {
                std::fs::write(db_dir.join("conf"), [0xFF; 64]).expect("overwrite the settings")
            }
            Damage::DataLost => {
                for entry in std::fs::read_dir(db_dir).expect("read the db dir") {
                    let path = entry.expect("a db dir entry").path();
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    if name == "db" || name.starts_with("snap.") {
                        std::fs::remove_file(&path).expect("remove sled's data");
                    }
                }
            }
        }
    }
}

fn set_aside_dirs(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir)
        .expect("read the data dir")
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("db.damaged-")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_whose_state_machines_were_lost_gets_them_back_from_its_peers() {
    let seed = test_seed();
    let mut cluster = Cluster::start(ClusterConfig {
        snapshot_after_entries: Some(SNAPSHOT_AFTER_ENTRIES),
        ..ClusterConfig::default()
    })
    .await;
    let ids = cluster.ids();
    let creator = token("carol", &["creator"]);
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    let ledger = Ledger::new();
    // Through nodes 1 and 2 only, so that bidding goes on while node 3 is down.
    let bidders = Bidders::spawn(
        BiddersConfig {
            round: "r0",
            bidders: 3,
            seed,
            via: cluster.apis(&ids[..2]),
            auctions: auctions.clone(),
            bid_within: BID_WITHIN,
        },
        &ledger,
    );
    let damaged = ids[2];
    let data_dir = cluster.member(damaged).data_dir();
    for damage in [Damage::Settings, Damage::DataLost] {
        await_decisions(&ledger, ledger.len() + 300).await;
        cluster.kill9(damaged);
        damage.inflict(&data_dir.join("db"));
        // The group goes on without it, past more snapshot points.
        await_decisions(&ledger, ledger.len() + 100).await;
        cluster.restart(&[damaged]).await;
        cluster
            .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
            .await;
        let log = cluster.member(damaged).log();
        eprintln!(
            "{damage:?}: {} groups brought back so far, {} engines set aside",
            log.matches("group's state brought back").count(),
            set_aside_dirs(&data_dir)
        );
    }
    let log = cluster.member(damaged).log();
    assert!(
        log.contains("the storage engine would not open its files"),
        "the settings damage is reported:\n{log}"
    );
    assert!(
        log.matches("group's state brought back").count() >= 2 * CLUSTER_GROUPS as usize,
        "every group's state came back from a copy in each round:\n{log}"
    );
    assert!(
        set_aside_dirs(&data_dir) >= 1,
        "the damaged files are kept aside"
    );

    // A full member again: with node 1 down, node 3 and node 2 are the quorum of every group.
    cluster.kill9(ids[0]);
    let decided = ledger.len();
    await_decisions(&ledger, decided + 60).await;
    cluster.restart(&[ids[0]]).await;
    let placed = bidders.stop().await;
    eprintln!("{placed} bids decided, {} accepted", ledger.accepted());
    cluster
        .await_converged(ids[0], &ids, CONVERGE_TIMEOUT)
        .await;
    cluster.assert_ledger(&ids, &auctions, &ledger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_whose_state_was_lost_says_so_and_stops() {
    let mut server = Server::start_with(
        None,
        ServerOptions {
            args: vec![
                "--snapshot-after-entries".into(),
                SNAPSHOT_AFTER_ENTRIES.to_string(),
                "--bid-rate-per-bidder".into(),
                "0".into(),
            ],
            ..ServerOptions::default()
        },
    )
    .await;
    let creator = token("carol", &["creator"]);
    let bidder = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&creator, &active_auction_body("lost"))
        .await;
    let id = auction["id"].as_str().expect("id").to_string();
    for i in 0..(SNAPSHOT_AFTER_ENTRIES * 3) {
        let amount = serde_json::json!(format!("{}.00", 10 + i));
        server.bid_ok(&bidder, &id, &format!("k{i}"), amount).await;
    }
    server.kill9();
    Damage::Settings.inflict(&server.data_dir().join("db"));
    server.spawn_again();
    let status = server.await_exit(Duration::from_secs(60)).await;
    assert_eq!(status.code(), Some(1), "{}", server.log_tail());
    let log = server.log_tail();
    for said in [
        "the storage engine would not open its files",
        "state machine was lost",
        "gavel snapshot restore",
    ] {
        assert!(log.contains(said), "the log says {said:?}:\n{log}");
    }
    assert_eq!(set_aside_dirs(&server.data_dir()), 1);
}

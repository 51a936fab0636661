//! A real single-node `Node` on a temp dir: proposals, reads, deadlines by timer, a restart
//! that resumes exactly where it stopped, and a data dir that fills up.

#![allow(clippy::result_large_err)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gavel_cluster::{wall_clock_ms, BidFilter, Consistency, Node, NodeConfig};
use gavel_rules::{BidStatus, Command, CreateAuction, Decimal, Reply, Status};

fn config(dir: &Path) -> NodeConfig {
    NodeConfig {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        groups: 4,
        client_addr: "127.0.0.1:0".into(),
        peer_addr: "127.0.0.1:0".into(),
        peer_listen: "127.0.0.1:0".into(),
        initial_cluster: vec![],
        join: false,
        propose_timeout_ms: 5_000,
        snapshot_after_entries: 20_000,
        max_clock_offset_ms: 500,
        peer_tls: None,
        consistency_check_interval_ms: 0,
    }
}

fn create(id: &str, start_offset_ms: i64, end_offset_ms: i64) -> Command {
    let now = wall_clock_ms();
    Command::Create {
        auction_id: id.into(),
        creator_id: "carol".into(),
        idempotency_key: None,
        request: CreateAuction {
            post_id: "post-1".into(),
            start_at_ms: now + start_offset_ms,
            end_at_ms: now + end_offset_ms,
            start_price: Decimal::new(10, 0),
            min_increment: Decimal::ONE,
            anti_sniping_seconds: 0,
        },
    }
}

fn bid(auction: &str, bidder: &str, key: &str, amount: i64) -> Command {
    Command::Bid {
        auction_id: auction.into(),
        bid_id: format!("{bidder}-{key}"),
        bidder_id: bidder.into(),
        idempotency_key: key.into(),
        amount: Decimal::new(amount, 0),
    }
}

/// Checks every 20 ms, for up to 5 s, until `check` answers `Ok`; panics with its last `Err`.
async fn eventually<T, F, Fut>(mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut why = String::new();
    for _ in 0..250 {
        match check().await {
            Ok(value) => return value,
            Err(e) => why = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{why}");
}

async fn wait_for_status(node: &Arc<Node>, id: &str, status: Status) {
    eventually(|| async {
        let auction = node.auction(id, Consistency::Local).await.unwrap().unwrap();
        if auction.status == status {
            Ok(())
        } else {
            Err(format!("auction {id} never reached {status:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decides_reads_times_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();

    let reply = node.propose(create("a1", 300, 60_000)).await.unwrap();
    assert!(
        matches!(
            reply,
            Reply::Created {
                replayed: false,
                ..
            }
        ),
        "{reply:?}"
    );
    let early = node.propose(bid("a1", "bob", "k0", 10)).await.unwrap();
    let Reply::Bid { decision, .. } = early else {
        panic!("{early:?}")
    };
    assert_eq!(decision.reason, Some(gavel_rules::RejectReason::NotStarted));

    // The start deadline fires by timer.
    wait_for_status(&node, "a1", Status::Active).await;
    let Reply::Bid { decision, .. } = node.propose(bid("a1", "bob", "k1", 10)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(decision.status, BidStatus::Accepted);
    let Reply::Bid {
        decision: replay,
        replayed,
    } = node.propose(bid("a1", "bob", "k1", 10)).await.unwrap()
    else {
        panic!()
    };
    assert!(replayed);
    assert_eq!(replay, decision);

    // The end deadline fires by timer too.
    node.propose(create("a2", -1_000, 400)).await.unwrap();
    wait_for_status(&node, "a2", Status::Ended).await;

    let listing = node
        .list_auctions(
            gavel_cluster::AuctionFilter {
                limit: 10,
                ..Default::default()
            },
            Consistency::Linearizable,
        )
        .await
        .unwrap();
    assert_eq!(listing.auctions.len(), 2);
    assert_eq!(listing.auctions[0].id, "a2", "newest first");

    node.shutdown().await;
    drop(node);

    let node = Node::start(config(dir.path())).await.unwrap();
    let auction = node
        .auction("a1", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auction.current_winner_id.as_deref(), Some("bob"));
    let page = node
        .bids(
            "a1",
            BidFilter {
                accepted_only: false,
                limit: 10,
                after_seq: 0,
            },
            Consistency::Linearizable,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(page.bids.len(), 2);
    // Every group elects its leader again after the restart and applies that election's entry.
    eventually(|| async { node.readiness() }).await;
    node.shutdown().await;
}

/// A node that led its groups when it stopped comes back as a follower and wins a new election
/// (a higher term, whose first entry orders after everything it acknowledged before), instead
/// of resuming its old leadership with a read index that could miss those writes. Alone in its
/// groups, it campaigns at once rather than after an election timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_is_elected_again_in_a_new_term() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    node.propose(create("r1", -1_000, 60_000)).await.unwrap();
    node.propose(bid("r1", "bob", "k1", 11)).await.unwrap();
    let before = all_groups_led(&node).await;
    node.shutdown().await;
    drop(node);

    let started = std::time::Instant::now();
    let node = Node::start(config(dir.path())).await.unwrap();
    let auction = node
        .auction("r1", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(auction.current_winner_id.as_deref(), Some("bob"));
    let after = all_groups_led(&node).await;
    for (old, new) in before.groups.iter().zip(&after.groups) {
        assert!(
            new.term > old.term,
            "group {} kept term {} across the restart",
            new.id,
            old.term
        );
    }
    // Far below the 600 ms election timeout a campaign would otherwise wait for, with room
    // for a slow machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    node.shutdown().await;
}

async fn all_groups_led(node: &Arc<Node>) -> gavel_cluster::ClusterStatus {
    eventually(|| async {
        let status = node.cluster_status(false).await;
        if status.groups.iter().all(|g| g.leader == Some(1)) {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await
}

/// Each group's state digest in `/cluster`, for this node's replicas.
async fn digests(node: &Arc<Node>) -> Vec<u64> {
    let status = node.cluster_status(true).await;
    status
        .groups
        .iter()
        .map(|group| {
            let mine = group.replicas.iter().find(|r| r.node_id == 1).unwrap();
            mine.digest.expect("a digest when asked for")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_digest_stands_while_nothing_is_applied_and_moves_with_what_is() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    all_groups_led(&node).await;
    node.propose(create("a1", -1_000, 60_000)).await.unwrap();
    let bid_group = gavel_cluster::group_of("a1", config(dir.path()).groups) as usize;
    // Settled: two reads in a row agree (elections' blank entries and the create applied).
    let before = eventually(|| async {
        let first = digests(&node).await;
        let second = digests(&node).await;
        if first == second {
            Ok(second)
        } else {
            Err(format!("still applying: {first:?} then {second:?}"))
        }
    })
    .await;

    node.propose(bid("a1", "bob", "k1", 10)).await.unwrap();
    // A digest remembered from before the bid would never change here.
    let after = eventually(|| async {
        let now = digests(&node).await;
        if now[bid_group] != before[bid_group] {
            Ok(now)
        } else {
            Err(format!(
                "group {bid_group} applied a bid and its digest stayed {:#x}",
                before[bid_group]
            ))
        }
    })
    .await;
    for (group, (digest_before, digest_after)) in before.iter().zip(&after).enumerate() {
        if group != bid_group {
            assert_eq!(digest_after, digest_before, "group {group} applied nothing");
        }
    }
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A full disk: the data dir is a small tmpfs (mounting it needs root, as the fault suite does).
// Once a write fails for want of space, the group that made it stops for good, and the node
// says so: `group_failure` resolves with that group and why, and `readiness` names it. A node
// stopped on purpose has no failed group.

/// Room for the node's first files and a few thousand bids.
const DISK_BYTES: u64 = 8 * 1024 * 1024;
const DISK_WRITERS: usize = 16;
/// Most bids one writer sends before the disk must have filled.
const BIDS_PER_WRITER_MAX: usize = 20_000;
/// How long a failed write may take to show as the group's failure.
const FAILURE_WAIT: Duration = Duration::from_secs(10);

/// A tmpfs of `bytes` on a fresh dir, unmounted when dropped.
struct SmallDisk {
    _dir: tempfile::TempDir,
    mount_point: PathBuf,
}

impl SmallDisk {
    fn mount(bytes: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let mount_point = dir.path().join("data");
        std::fs::create_dir(&mount_point).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(&mount_point)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount a tmpfs (this test needs root)");
        SmallDisk {
            _dir: dir,
            mount_point,
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_a_group_and_the_node_says_which() {
    let disk = SmallDisk::mount(DISK_BYTES);
    let node = Node::start(config(&disk.mount_point)).await.unwrap();
    eventually(|| async { node.readiness() }).await;
    let auctions = ["a1", "a2", "a3", "a4"];
    for id in auctions {
        node.propose(create(id, -1_000, 600_000)).await.unwrap();
    }
    let writers: Vec<_> = (0..DISK_WRITERS)
        .map(|w| {
            let node: Arc<Node> = node.clone();
            let auction = auctions[w % auctions.len()];
            tokio::spawn(async move {
                for n in 0..BIDS_PER_WRITER_MAX {
                    let command = bid(auction, &format!("w{w}"), &format!("k{n}"), n as i64 + 1);
                    if node.propose(command).await.is_err() {
                        return true;
                    }
                }
                false
            })
        })
        .collect();
    let mut refused = false;
    for writer in writers {
        refused |= writer.await.unwrap();
    }
    assert!(refused, "the disk never filled");

    let (group, why) = tokio::time::timeout(FAILURE_WAIT, node.group_failure())
        .await
        .expect("a write failed, but no group reports a failure");
    assert!(why.contains("No space left on device"), "{why}");
    let not_ready = node.readiness().expect_err("ready with a failed group");
    assert!(
        not_ready.contains(&format!("group {group} stopped")),
        "{not_ready}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_on_purpose_has_no_failed_group() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start(config(dir.path())).await.unwrap();
    eventually(|| async { node.readiness() }).await;
    node.propose(create("a1", -1_000, 600_000)).await.unwrap();
    node.shutdown().await;
    let failure = tokio::time::timeout(Duration::from_millis(500), node.group_failure()).await;
    assert!(
        failure.is_err(),
        "a shutdown read as a failure: {failure:?}"
    );
}

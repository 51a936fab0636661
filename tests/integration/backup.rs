//! Backup and restore end to end, with real processes over real sockets: `gavel snapshot save`
//! of a three-node cluster while bids flow, `gavel snapshot restore` of every member of a new
//! three-node cluster (other ports, other dirs), and `gavel serve` on those dirs. Every auction
//! and every decision acknowledged before the save started is there with the same history (a
//! prefix of the old cluster's), deadlines fire after the restore (on time, or at once stamped
//! at their `endAt` when they passed while the cluster was down), and files that are corrupt,
//! truncated or of another format version are refused without writing anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::*;
use crate::live_common::*;

/// How late after its deadline an end may become visible on a restored debug-build cluster.
const END_SLA_MS: i64 = 3_000;
/// Decisions acknowledged before the save starts.
const DECISIONS_BEFORE_SAVE: usize = 150;
/// When the auction that must end while no cluster runs ends, after it is created. The save
/// must be done by then (checked), and the restored cluster starts only after it.
const ENDS_WHILE_DOWN_MS: i64 = 15_000;
/// When the auctions that should end after the restored cluster is up end, after creation;
/// the first that ends after it became ready is checked.
const ENDS_AFTER_RESTORE_MS: [i64; 3] = [24_000, 30_000, 38_000];

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        stdout(output),
        stderr(output)
    );
}

/// `gavel snapshot status --json FILE`, which must succeed.
fn status_json(file: &Path) -> Value {
    let output = run_gavel(&["snapshot", "status", "--json", path_str(file)], SECRET);
    assert_success("gavel snapshot status", &output);
    serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

/// Auctions created before the save: the ones bids go to, and the ones whose end is checked.
struct Auctions {
    load: Vec<Value>,
    ends_while_down: Value,
    ends_after_restore: Vec<Value>,
}

async fn create_auctions(cluster: &Cluster) -> Auctions {
    let carol = token("carol", &["creator"]);
    let load = cluster.auction_per_group(1, &carol).await;
    let api = cluster.api(1);
    let ends_while_down = api
        .create_auction(&carol, &auction_body("down", -1_000, ENDS_WHILE_DOWN_MS))
        .await;
    let mut ends_after_restore = Vec::new();
    for (i, end_ms) in ENDS_AFTER_RESTORE_MS.into_iter().enumerate() {
        let body = auction_body(&format!("after-{i}"), -1_000, end_ms);
        ends_after_restore.push(api.create_auction(&carol, &body).await);
    }
    Auctions {
        load,
        ends_while_down,
        ends_after_restore,
    }
}

fn id(auction: &Value) -> &str {
    auction["id"].as_str().expect("id")
}

/// The whole decision log of every auction, as `api` answers it.
async fn histories(api: &Api, auctions: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let reader = token("reader", &["viewer"]);
    let mut all = BTreeMap::new();
    for auction in auctions {
        all.insert(
            id(auction).to_owned(),
            read_history(api, &reader, id(auction)).await,
        );
    }
    all
}

/// What the old cluster held, for comparison with the restored one.
struct Saved {
    /// Every decision acknowledged before the save started, by auction.
    acknowledged: BTreeMap<String, Vec<Decided>>,
    /// Every history once the bidders stopped (after the save).
    histories: BTreeMap<String, Vec<Value>>,
    listing: Vec<String>,
    /// `gavel snapshot status --json` of the file.
    status: Value,
}

/// Bids flow from background clients; once some are acknowledged, `gavel snapshot save` runs
/// against a follower-or-leader node while they go on.
async fn save_under_load(old: &Cluster, auctions: &Auctions, file: &Path) -> Saved {
    let ledger = Ledger::new();
    let mut bidders = Bidders::spawn(
        BiddersConfig {
            round: "backup",
            bidders: 4,
            seed: test_seed(),
            via: old.apis(&old.ids()),
            auctions: auctions.load.clone(),
            bid_within: Duration::from_secs(20),
        },
        &ledger,
    );
    bidders
        .until_decided(&ledger, DECISIONS_BEFORE_SAVE, Duration::from_secs(30))
        .await;
    // Everything acknowledged before the save starts must be in the backup.
    let acknowledged: BTreeMap<String, Vec<Decided>> = auctions
        .load
        .iter()
        .map(|a| (id(a).to_owned(), ledger.for_auction(id(a))))
        .collect();
    let save_started = Instant::now();
    let endpoint = old.api(2).base_url().to_owned();
    let args = ["snapshot", "save", path_str(file), "--endpoint", &endpoint];
    let output = old
        .gavel(&[&args[..], &["--token", old.admin()]].concat())
        .await;
    let save_ms = save_started.elapsed().as_millis();
    assert_success("gavel snapshot save", &output);
    let placed = bidders.stop().await;
    assert!(
        now_ms() < time_ms(&auctions.ends_while_down["endAt"]),
        "the save ended after the auction meant to end while no cluster runs; this test's timing does not fit this machine"
    );
    let status = status_json(file);
    assert_eq!(status["groupCount"], CLUSTER_GROUPS);
    assert_eq!(status["nodeCount"], 3);
    println!(
        "saved {} bytes in {save_ms} ms (during {placed} bids): {} auctions, {} bids ({} accepted); acknowledged before the save: {}",
        status["fileBytes"],
        status["totals"]["auctions"],
        status["totals"]["bids"],
        status["totals"]["acceptedBids"],
        acknowledged.values().map(Vec::len).sum::<usize>()
    );
    Saved {
        acknowledged,
        histories: histories(&old.api(1), &auctions.load).await,
        listing: listing(&old.api(1)).await,
        status,
    }
}

/// `gavel snapshot restore FILE` of one member, as `Cluster::start_prepared` asks for it.
fn restore_from(file: &Path) -> impl Fn(u64, &Path, &str) + '_ {
    move |id, data_dir, initial_cluster| {
        let node = id.to_string();
        let output = run_gavel(
            &[
                "snapshot",
                "restore",
                path_str(file),
                "--data-dir",
                path_str(data_dir),
                "--node-id",
                &node,
                "--initial-cluster",
                initial_cluster,
            ],
            SECRET,
        );
        assert_success("gavel snapshot restore", &output);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_into_a_new_cluster_with_deadlines() {
    let started = Instant::now();
    // Held across both clusters: a test that took the whole machine between the two (each
    // holds a share only while it runs) held the restored cluster's start back for 20-30 s,
    // past the deadlines of the auctions it checks.
    let _machine = share_machine();
    let old = Cluster::start(ClusterConfig::default()).await;
    let auctions = create_auctions(&old).await;
    let created_at = now_ms();
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("cluster.backup");
    let saved = save_under_load(&old, &auctions, &file).await;
    drop(old);

    // The auction meant to end while down does so before the new cluster starts.
    sleep_until_wall_ms(time_ms(&auctions.ends_while_down["endAt"]) + 200).await;
    let new = Cluster::start_prepared(ClusterConfig::default(), restore_from(&file)).await;
    let ready_ms = now_ms();
    new.await_converged(1, &new.ids(), CONVERGE_TIMEOUT).await;
    assert_eq!(
        listing(&new.api(2)).await,
        saved.listing,
        "every auction of the old cluster, and no other"
    );
    check_ends_after_restore(&new, &auctions, ready_ms, created_at).await;
    check_histories(&new, &auctions.load, &saved).await;
    check_new_bids(&new, &auctions.load, &saved).await;
    println!("whole test: {} ms", started.elapsed().as_millis());
}

/// The ids of every auction, newest first (linearizable).
async fn listing(api: &Api) -> Vec<String> {
    let reader = token("reader", &["viewer"]);
    let pages = api
        .pages("/auctions", &reader, &[("limit", "100")], "auctions")
        .await;
    pages.iter().flatten().map(|a| id(a).to_owned()).collect()
}

/// Every restored history is a prefix of the old cluster's, holds every decision acknowledged
/// before the save as acknowledged, and agrees with its auction's state; the backup's counts
/// are the restored ones.
async fn check_histories(new: &Cluster, load: &[Value], saved: &Saved) {
    let reader = token("reader", &["viewer"]);
    let restored = histories(&new.api(3), load).await;
    let mut restored_bids = 0;
    for created in load {
        let id = id(created);
        let history = &restored[id];
        let old = &saved.histories[id];
        assert!(
            history.len() <= old.len() && history[..] == old[..history.len()],
            "auction {id}: the restored history is not a prefix of the old cluster's"
        );
        for ack in &saved.acknowledged[id] {
            let entry = history
                .iter()
                .find(|h| h["bidId"] == ack.reply["bidId"])
                .unwrap_or_else(|| panic!("acknowledged bid {} of {id} was not restored", ack.key));
            for field in ["amount", "status", "reason", "version"] {
                assert_eq!(entry[field], ack.reply[field], "{field} of {}", ack.key);
            }
        }
        let state = read_auction(&new.api(2), &reader, id).await;
        assert_state_matches(created, &state, history);
        restored_bids += history.len();
    }
    assert_eq!(saved.status["totals"]["bids"], restored_bids);
}

/// The auction that ended while down has ended at its `endAt` promptly after the start; the
/// first auction whose end comes after the start ends on time, live viewers hear it.
async fn check_ends_after_restore(
    new: &Cluster,
    auctions: &Auctions,
    ready_ms: i64,
    created_at: i64,
) {
    let reader = token("reader", &["viewer"]);
    let down = id(&auctions.ends_while_down);
    let ended = poll_until(
        "the auction that ended while down to end",
        Duration::from_millis(END_SLA_MS as u64),
        || async {
            let auction = read_auction(&new.api(1), &reader, down).await;
            (auction["status"] == "ended").then_some(auction)
        },
    )
    .await;
    assert_eq!(
        ended["endedAt"], ended["endAt"],
        "ended at its endAt: {ended}"
    );
    assert_eq!(ended["endAt"], auctions.ends_while_down["endAt"]);
    let port = new.member(2).client_port;
    let mut viewer = SseViewer::open(port, down, Auth::Header(&reader), None, None, None).await;
    let first = viewer.next().await.expect("a snapshot frame");
    assert_eq!(first.json["status"], "ended", "{:?}", first.json);

    let later = auctions
        .ends_after_restore
        .iter()
        .find(|a| time_ms(&a["endAt"]) > now_ms() + 500)
        .unwrap_or_else(|| {
            panic!(
                "the restored cluster was ready {} ms after the auctions were created, later than every end of ENDS_AFTER_RESTORE_MS",
                ready_ms - created_at
            )
        });
    let later_id = id(later);
    let end_ms = time_ms(&later["endAt"]);
    let mut viewer = SseViewer::open(port, later_id, Auth::Header(&reader), None, None, None).await;
    let first = viewer.next().await.expect("a snapshot frame");
    assert_eq!(first.json["status"], "active");
    // About one tick a second until the end, then the ended frame.
    let frames_max = (end_ms - now_ms()).max(0) / 1_000 + 30;
    let mut heard_ms = None;
    for _ in 0..frames_max {
        let frame = viewer.next().await.expect("frames until the end");
        if frame.kind == "ended" {
            heard_ms = Some(now_ms());
            break;
        }
    }
    let heard_ms = heard_ms.expect("an ended frame");
    assert!(
        heard_ms >= end_ms && heard_ms <= end_ms + END_SLA_MS,
        "ended {} ms after its endAt",
        heard_ms - end_ms
    );
    let state = read_auction(&new.api(3), &reader, later_id).await;
    assert_eq!(state["endedAt"], later["endAt"]);
}

/// The restored cluster answers a retried acknowledged bid with its first decision (the
/// idempotency records came along), and takes new bids, continuing each decision log.
async fn check_new_bids(new: &Cluster, load: &[Value], saved: &Saved) {
    let reader = token("reader", &["viewer"]);
    let retried = saved
        .acknowledged
        .values()
        .flatten()
        .next()
        .expect("an acknowledged bid");
    let retry = new
        .api(3)
        .bid_ok(
            &token(&retried.bidder, &["bidder"]),
            &retried.auction_id,
            &retried.key,
            retried.reply["amount"].clone(),
        )
        .await;
    for field in ["bidId", "amount", "status", "reason", "version"] {
        assert_eq!(retry[field], retried.reply[field], "{field} of the retry");
    }
    let bidder = token("restored-bidder", &["bidder"]);
    for created in load {
        let id = id(created);
        let state = read_auction(&new.api(1), &reader, id).await;
        let amount = money(&state["currentPrice"]) + money(&state["minIncrement"]);
        let before = read_history(&new.api(1), &reader, id).await.len();
        let reply = new
            .api(2)
            .bid_ok(&bidder, id, &fresh_key(), json!(money_text(amount)))
            .await;
        assert_eq!(reply["status"], "accepted", "{reply}");
        let after = read_history(&new.api(3), &reader, id).await;
        assert_eq!(after.len(), before + 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals

/// A single node with an auction and some bids, and its backup at `dir/good.backup`.
async fn saved_backup(dir: &Path) -> (Server, PathBuf) {
    let server = Server::start().await;
    let carol = token("carol", &["creator"]);
    let bob = token("bob", &["bidder"]);
    let auction = server
        .create_auction(&carol, &active_auction_body("refusals"))
        .await;
    for amount in ["10.00", "11.00", "15.00"] {
        server
            .bid_ok(&bob, id(&auction), &fresh_key(), json!(amount))
            .await;
    }
    let file = dir.join("good.backup");
    let admin = token("admin", &["admin"]);
    let output = run_gavel(
        &[
            "snapshot",
            "save",
            path_str(&file),
            "--endpoint",
            server.base_url(),
            "--token",
            &admin,
        ],
        SECRET,
    );
    assert_success("gavel snapshot save", &output);
    (server, file)
}

/// `status` and `restore` of `file` both fail saying `why`, and the restore wrote nothing.
#[track_caller]
fn assert_refused(file: &Path, why: &str) {
    let status = run_gavel(&["snapshot", "status", path_str(file)], SECRET);
    assert!(
        !status.status.success(),
        "status accepted {}",
        file.display()
    );
    assert!(
        stderr(&status).contains(why),
        "status of {} should say {why:?}: {}",
        file.display(),
        stderr(&status)
    );
    let parent = file.parent().expect("a parent");
    let stem = file.file_stem().expect("a file name").to_string_lossy();
    let target = parent.join(format!("restored-from-{stem}"));
    let restore = run_gavel(
        &[
            "snapshot",
            "restore",
            path_str(file),
            "--data-dir",
            path_str(&target),
            "--node-id",
            "1",
            "--initial-cluster",
            "1=127.0.0.1:1",
        ],
        SECRET,
    );
    assert!(
        !restore.status.success(),
        "restore accepted {}",
        file.display()
    );
    assert!(stderr(&restore).contains(why), "{}", stderr(&restore));
    assert!(
        !target.exists(),
        "a refused restore created {}",
        target.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(parent)
        .expect("list the dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "a refused restore left {leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_truncated_and_foreign_files_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let (server, good) = saved_backup(dir.path()).await;
    let bytes = std::fs::read(&good).expect("read the backup");
    let status = status_json(&good);
    assert_eq!(status["totals"]["auctions"], 1);
    assert_eq!(status["totals"]["bids"], 3);
    assert_eq!(status["fileBytes"], bytes.len());

    // A version after the one this build writes (the file says which that is).
    let newer = u16::from_be_bytes([bytes[8], bytes[9]]) + 1;
    let newer_refused = format!("format version {newer} is not supported");
    let variants: [(&str, Vec<u8>, &str); 4] = [
        ("flipped.backup", flip(&bytes, bytes.len() / 2), "corrupt"),
        (
            "truncated.backup",
            bytes[..bytes.len() - 7].to_vec(),
            "truncated",
        ),
        (
            "half.backup",
            bytes[..bytes.len() / 2].to_vec(),
            "truncated",
        ),
        ("newer.backup", with_version(&bytes, newer), &newer_refused),
    ];
    for (name, contents, why) in variants {
        let file = dir.path().join(name);
        std::fs::write(&file, contents).expect("write a variant");
        assert_refused(&file, why);
    }

    // Into a dir that holds anything: refused, untouched.
    let busy = dir.path().join("busy");
    std::fs::create_dir(&busy).expect("create a dir");
    std::fs::write(busy.join("keep-me"), b"x").expect("write a file");
    let restore_into = |target: &Path| {
        run_gavel(
            &[
                "snapshot",
                "restore",
                path_str(&good),
                "--data-dir",
                path_str(target),
                "--node-id",
                "1",
                "--initial-cluster",
                "1=127.0.0.1:1",
            ],
            SECRET,
        )
    };
    let refused = restore_into(&busy);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not empty"),
        "{}",
        stderr(&refused)
    );
    let left: Vec<_> = std::fs::read_dir(&busy).expect("list").collect();
    assert_eq!(left.len(), 1, "a refused restore wrote into the dir");

    // An empty dir is fine, once.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("create a dir");
    assert_success("restore into an empty dir", &restore_into(&empty));
    assert!(empty.join("db").is_dir());
    assert!(!restore_into(&empty).status.success());

    // A failed save leaves no file behind: a token without the admin role.
    let nobody = token("nobody", &["viewer"]);
    let target = dir.path().join("never.backup");
    let output = run_gavel(
        &[
            "snapshot",
            "save",
            path_str(&target),
            "--endpoint",
            server.base_url(),
            "--token",
            &nobody,
        ],
        SECRET,
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("403"), "{}", stderr(&output));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("never"))
        .collect();
    assert!(names.is_empty(), "a failed save left {names:?}");
}

fn flip(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut copy = bytes.to_vec();
    copy[at] ^= 0x40;
    copy
}

/// The file with another format version (the u16 after the 8-byte magic).
fn with_version(bytes: &[u8], version: u16) -> Vec<u8> {
    let mut copy = bytes.to_vec();
    copy[8..10].copy_from_slice(&version.to_be_bytes());
    copy
}

//! Clock skew on a three-node cluster of real processes: node 3 runs with its wall clock 5 s
//! ahead (libfaketime; its monotonic clock stays true). Stamps come from group leaders' wall
//! clocks, so a leader that far ahead would end auctions seconds early. The clock guard keeps it
//! from leading: it leads no group, its `/readyz` is 503 naming the clock, `/metrics` shows the
//! offset, bids placed before the true end are accepted through every node, and once it is
//! restarted with a true clock it is ready again and leads its share of groups. A leader whose
//! clock jumps ahead hands its groups over, and leads again once the clock is back.
//!
//! Needs libfaketime (`apt-get install faketime`; `.ci/run` installs it).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::cluster::*;
use crate::common::*;

const SKEWED: u64 = 3;
/// How far ahead node 3's wall clock runs; ten times the default `--max-clock-offset-ms`.
const SKEW_S: i64 = 5;
const FAKETIME_LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";
/// When the auctions end, from their creation.
const END_IN_MS: i64 = 8_000;
/// Bids are placed this long before the true end: in time by any clock within the allowed
/// offset, already "ended" by a clock 5 s ahead.
const BID_BEFORE_END_MS: i64 = 3_000;
/// How long the test watches that the skewed node leads no group: past the time leader
/// placement would have moved a group to it (4 s settle, leaderships 10 s old, rounds every 2 s).
const WATCH_LEADERS_FOR: Duration = Duration::from_secs(18);
const LEADERS_POLL: Duration = Duration::from_millis(300);
/// How long the skewed node may take to report its clock (probes run every second or faster).
const CLOCK_SEEN_WITHIN: Duration = Duration::from_secs(10);
/// How long the restarted node may take to lead a group again through placement.
const LEADS_AGAIN_WITHIN: Duration = Duration::from_secs(40);
const BID_WITHIN: Duration = Duration::from_secs(30);
/// How long a leader whose clock jumped may take to hand all its groups over: a probe round
/// (at most 2 s) and a transfer (at most 4 s each, all groups at once).
const HANDED_OVER_WITHIN: Duration = Duration::from_secs(10);

fn skewed_env() -> Vec<(String, String)> {
    [
        ("LD_PRELOAD", FAKETIME_LIB.to_owned()),
        ("FAKETIME", format!("+{SKEW_S}s")),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_skewed_clock_never_leads_and_recovers_without_the_skew() {
    assert!(
        std::path::Path::new(FAKETIME_LIB).exists(),
        "{FAKETIME_LIB} is missing: apt-get install -y faketime"
    );
    let mut config = ClusterConfig::default();
    config.node_env.insert(SKEWED, skewed_env());
    config.unready.insert(SKEWED);
    let mut cluster = Cluster::start(config).await;
    let ids = cluster.ids();
    assert_skew_in_effect(&cluster).await;

    // Watch who leads for as long as leader placement needs to move a group to node 3.
    let watch_until = Instant::now() + WATCH_LEADERS_FOR;
    let mut led_by_skewed = BTreeSet::new();
    while Instant::now() < watch_until {
        if let Some(status) = cluster.try_status(ids[0]).await {
            for (group, leader) in leaders(&status) {
                if leader == Some(SKEWED) {
                    led_by_skewed.insert(group);
                }
            }
        }
        tokio::time::sleep(LEADERS_POLL).await;
    }

    // Auctions in every group; a bid in each shortly before the true end.
    let creator = token("carol", &["creator"]);
    let end_ms = now_ms() + END_IN_MS;
    let auctions = cluster
        .auction_per_group_with(ids[0], &creator, |post| {
            auction_body(post, -1_000, end_ms - now_ms())
        })
        .await;
    sleep_until_wall_ms(end_ms - BID_BEFORE_END_MS).await;
    let replies = bid_in_every_group(&cluster, &auctions, "before-end").await;
    let ready3 = cluster.api(SKEWED).get_anonymous("/readyz").await.status;
    eprintln!(
        "groups led by node {SKEWED} while watched: {led_by_skewed:?}; node {SKEWED} /readyz: \
         {ready3}; bids {BID_BEFORE_END_MS} ms before the end: {replies:#?}"
    );
    for (group, node, reply) in &replies {
        assert_eq!(
            reply["status"], "accepted",
            "group {group}: a bid sent through node {node} {BID_BEFORE_END_MS} ms before the \
             end was not accepted: {reply}"
        );
    }
    assert_eq!(replies.len(), auctions.len(), "a bid per group");
    assert!(
        led_by_skewed.is_empty(),
        "node {SKEWED}, {SKEW_S} s ahead, led groups {led_by_skewed:?}"
    );
    assert_clock_reported(&cluster).await;

    // Restarted with a true clock, it is ready again and takes back its preferred group.
    cluster.terminate(SKEWED, Duration::from_secs(20)).await;
    cluster.set_node_env(SKEWED, Vec::new());
    cluster.restart(&[SKEWED]).await;
    let offset = poll_until("node 3's offset near zero", CLOCK_SEEN_WITHIN, || async {
        let value = node_offset_s(&cluster, SKEWED).await?;
        (value.abs() < 0.5).then_some(value)
    })
    .await;
    eprintln!("after the restart without skew, node {SKEWED} reports an offset of {offset} s");
    poll_until(
        &format!("node {SKEWED} leading a group"),
        LEADS_AGAIN_WITHIN,
        || async {
            let status = cluster.try_status(ids[0]).await?;
            leaders(&status)
                .values()
                .any(|leader| *leader == Some(SKEWED))
                .then_some(())
        },
    )
    .await;
    let auctions = cluster.auction_per_group(ids[0], &creator).await;
    for (group, node, reply) in bid_in_every_group(&cluster, &auctions, "after").await {
        assert_eq!(
            reply["status"], "accepted",
            "group {group} via {node}: {reply}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_clock_jumps_ahead_hands_its_groups_over() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let offset_file = dir.path().join("faketime");
    std::fs::write(&offset_file, "+0s\n").expect("write the faketime file");
    let env = [
        ("LD_PRELOAD", FAKETIME_LIB.to_owned()),
        ("FAKETIME_TIMESTAMP_FILE", offset_file.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_owned()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_owned()),
    ];
    let mut config = ClusterConfig::default();
    let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    config.node_env.insert(SKEWED, env);
    let cluster = Cluster::start(config).await;
    let ids = cluster.ids();
    let led = poll_until(
        &format!("node {SKEWED} leading"),
        LEADS_AGAIN_WITHIN,
        || async {
            let status = cluster.try_status(ids[0]).await?;
            let led: Vec<u32> = leaders(&status)
                .into_iter()
                .filter(|(_, leader)| *leader == Some(SKEWED))
                .map(|(group, _)| group)
                .collect();
            (!led.is_empty()).then_some(led)
        },
    )
    .await;

    // Its clock jumps 5 s ahead while it leads: it hands every group over.
    std::fs::write(&offset_file, format!("+{SKEW_S}s\n")).expect("write the faketime file");
    let jumped = Instant::now();
    poll_until(
        &format!("node {SKEWED} leading no group"),
        HANDED_OVER_WITHIN,
        || async {
            let status = cluster.try_status(ids[0]).await?;
            let leaders = leaders(&status);
            leaders
                .values()
                .all(|leader| leader.is_some() && *leader != Some(SKEWED))
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "node {SKEWED} led groups {led:?}; {:?} after its clock jumped {SKEW_S} s it leads none",
        jumped.elapsed()
    );
    assert_clock_reported(&cluster).await;
    let auctions = cluster
        .auction_per_group(ids[0], &token("carol", &["creator"]))
        .await;
    for (group, node, reply) in bid_in_every_group(&cluster, &auctions, "jumped").await {
        assert_eq!(
            reply["status"], "accepted",
            "group {group} via {node}: {reply}"
        );
    }

    // Its clock comes back: it is ready again and leads again.
    std::fs::write(&offset_file, "+0s\n").expect("write the faketime file");
    poll_until(
        &format!("node {SKEWED} ready"),
        LEADS_AGAIN_WITHIN,
        || async {
            let status = cluster.api(SKEWED).get_anonymous("/readyz").await.status;
            (status == 200).then_some(())
        },
    )
    .await;
    poll_until(
        &format!("node {SKEWED} leading again"),
        LEADS_AGAIN_WITHIN,
        || async {
            let status = cluster.try_status(ids[0]).await?;
            leaders(&status)
                .values()
                .any(|leader| *leader == Some(SKEWED))
                .then_some(())
        },
    )
    .await;
}

/// Node 3's HTTP `Date` header runs `SKEW_S` ahead of the test's clock: libfaketime is active.
async fn assert_skew_in_effect(cluster: &Cluster) {
    let resp = cluster.api(SKEWED).get_anonymous("/healthz").await;
    let date = resp.header("date").expect("a Date header");
    let node_s = chrono::DateTime::parse_from_rfc2822(&date)
        .expect("an RFC 2822 Date")
        .timestamp();
    let ahead_s = node_s - now_s();
    assert!(
        (SKEW_S - 2..=SKEW_S + 1).contains(&ahead_s),
        "node {SKEWED}'s clock is {ahead_s} s ahead, not about {SKEW_S} s: is libfaketime working?"
    );
}

/// One bid per auction, through the nodes in turn; returns (group, node tried first, reply).
async fn bid_in_every_group(
    cluster: &Cluster,
    auctions: &[Value],
    round: &str,
) -> Vec<(u32, u64, Value)> {
    let ids = cluster.ids();
    let via = cluster.apis(&ids);
    let bidder = token("bob", &["bidder"]);
    let mut replies = Vec::new();
    for (n, auction) in auctions.iter().enumerate() {
        let id = auction["id"].as_str().expect("id");
        let key = format!("{round}-{n}");
        let mut turn = n;
        let first = ids[turn % ids.len()];
        let bid = BidRequest {
            token: &bidder,
            auction_id: id,
            key: &key,
            amount: "10.00",
            within: BID_WITHIN,
        };
        let reply = bid_until_decided(&via, &mut turn, &bid)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        replies.push((cluster.group_of(id), first, reply));
    }
    replies
}

/// `/readyz` on the skewed node is 503 naming the clock, and both sides of the skew show it in
/// `/metrics`: node 3 its own offset, node 1 its peer's.
async fn assert_clock_reported(cluster: &Cluster) {
    let detail = poll_until(
        &format!("node {SKEWED} unready because of its clock"),
        CLOCK_SEEN_WITHIN,
        || async {
            let resp = cluster.api(SKEWED).get_anonymous("/readyz").await;
            let text = resp.text();
            (resp.status == 503 && text.contains("clock")).then_some(text)
        },
    )
    .await;
    eprintln!("node {SKEWED} /readyz: {detail}");
    // Each node measures its peers on its own probe cadence (1 s while healthy), so a gauge can
    // still hold the value from before the jump: wait for the new one.
    let skew = SKEW_S as f64;
    let own = poll_until(
        &format!("node {SKEWED}'s offset metric about {skew} s"),
        CLOCK_SEEN_WITHIN,
        || async {
            let own = node_offset_s(cluster, SKEWED).await?;
            ((own - skew).abs() < 1.0).then_some(own)
        },
    )
    .await;
    let series = format!("gavel_clock_peer_offset_seconds{{peer=\"{SKEWED}\"}}");
    let seen_by_1 = poll_until(
        &format!("node 1's view of node {SKEWED} about {skew} s"),
        CLOCK_SEEN_WITHIN,
        || async {
            let text = cluster.api(1).get_anonymous("/metrics").await.text();
            let seen = metric_samples(&text, "gavel_clock_peer_offset_seconds")
                .into_iter()
                .find(|(s, _)| *s == series)
                .map(|(_, v)| v)?;
            ((seen - skew).abs() < 1.0).then_some(seen)
        },
    )
    .await;
    let own_1 = node_offset_s(cluster, 1).await.expect("node 1's offset");
    assert!(own_1.abs() < 0.5, "node 1 reports an offset of {own_1} s");
    eprintln!("node {SKEWED} offset {own} s; node 1 sees it at {seen_by_1} s, itself at {own_1} s");
}

/// `gavel_clock_offset_seconds` of `node`, once it has one (NaN until it measured a majority).
async fn node_offset_s(cluster: &Cluster, node: u64) -> Option<f64> {
    let text = cluster.api(node).get_anonymous("/metrics").await.text();
    metric_samples(&text, "gavel_clock_offset_seconds")
        .first()
        .map(|(_, v)| *v)
        .filter(|v| v.is_finite())
}

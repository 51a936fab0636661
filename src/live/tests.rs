//! The hub and the viewer's frame sequence against the in-memory engine (which applies commands
//! with the real rules and publishes its changes like a node). Time is tokio's paused clock
//! where ticks or timeouts matter, so nothing here sleeps for real.

use std::sync::Arc;
use std::time::Duration;

use gavel_rules::{Actor, Command, ControlAction, CreateAuction, Reply};
use rust_decimal::Decimal;
use serde_json::Value;

use super::frame::{Frame, FrameKind};
use super::viewer::Viewer;
use super::*;
use crate::http::engine::fake::FakeEngine;
use crate::http::engine::Engine;

/// 2026-11-25T22:00:00Z
const NOW_MS: i64 = 1_795_644_000_000;
const HOUR_MS: i64 = 3_600_000;
/// The default tick period.
const TICK_PERIOD: Duration = Duration::from_millis(TICK_INTERVAL_MS);
const CONFIG: LiveConfig = LiveConfig {
    viewers_max: 3,
    send_timeout_ms: 1_000,
    ping_interval_ms: 1_000,
};

pub(super) struct Fixture {
    pub(super) engine: Arc<FakeEngine>,
    pub(super) hub: Hub,
}

impl Fixture {
    pub(super) fn new() -> Fixture {
        Fixture::with_config(CONFIG)
    }

    pub(super) fn with_config(config: LiveConfig) -> Fixture {
        let engine = Arc::new(FakeEngine::new(NOW_MS));
        let hub = Hub::start(engine.clone(), config).expect("the hub starts");
        Fixture { engine, hub }
    }

    /// For tests on the paused clock: the pump runs on the test's runtime, so the clock waits
    /// for it (on a thread of its own, a frame due at once could lose the race to a tick).
    fn paused() -> Fixture {
        let engine = Arc::new(FakeEngine::new(NOW_MS));
        let hub = Hub::start_with_pump_here(engine.clone(), CONFIG);
        Fixture { engine, hub }
    }

    async fn propose(&self, command: Command) -> Reply {
        self.engine.propose(command).await.unwrap()
    }

    /// An active auction by `carol`, ending in an hour.
    pub(super) async fn auction(&self, id: &str) {
        let request = CreateAuction {
            post_id: "post".into(),
            start_at_ms: NOW_MS - 1_000,
            end_at_ms: NOW_MS + HOUR_MS,
            start_price: Decimal::new(1000, 2),
            min_increment: Decimal::new(100, 2),
            anti_sniping_seconds: 0,
        };
        let reply = self
            .propose(Command::Create {
                auction_id: id.into(),
                creator_id: "carol".into(),
                idempotency_key: None,
                request,
            })
            .await;
        assert!(matches!(reply, Reply::Created { .. }), "{reply:?}");
    }

    pub(super) async fn bid(&self, id: &str, amount: i64) {
        let reply = self
            .propose(Command::Bid {
                auction_id: id.into(),
                bid_id: uuid::Uuid::new_v4().to_string(),
                bidder_id: "bob".into(),
                idempotency_key: uuid::Uuid::new_v4().to_string(),
                amount: Decimal::new(amount, 0),
            })
            .await;
        assert!(matches!(reply, Reply::Bid { .. }), "{reply:?}");
    }

    pub(super) async fn control(&self, id: &str, action: ControlAction) {
        let reply = self
            .propose(Command::Control {
                auction_id: id.into(),
                action,
                actor: Actor {
                    user_id: "carol".into(),
                    is_admin: false,
                },
            })
            .await;
        assert!(matches!(reply, Reply::Controlled(_)), "{reply:?}");
    }

    pub(super) async fn viewer(&self, id: &str) -> Viewer {
        Viewer::new(
            self.hub.join(id, None, Transport::Ws).await.unwrap(),
            TICK_PERIOD,
        )
    }
}

fn json(frame: &Frame) -> Value {
    serde_json::from_str(frame.text().as_str()).unwrap()
}

/// The next frame, which must come at once (the test has made it due).
async fn next(viewer: &mut Viewer) -> Frame {
    tokio::time::timeout(Duration::from_secs(5), viewer.next())
        .await
        .expect("a frame is due")
        .expect("the stream is not over")
}

/// Lets the test's other tasks (and a pump on the test's runtime) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn snapshot_then_each_change_then_ended_then_nothing() {
    let f = Fixture::new();
    f.auction("a").await;
    let mut viewer = f.viewer("a").await;
    let snapshot = next(&mut viewer).await;
    assert_eq!(
        (snapshot.kind(), snapshot.version()),
        (FrameKind::Snapshot, 1)
    );
    assert_eq!(json(&snapshot)["remainingMs"], HOUR_MS);

    f.bid("a", 10).await;
    let bid = next(&mut viewer).await;
    assert_eq!((bid.kind(), bid.version()), (FrameKind::Bid, 2));
    assert_eq!(json(&bid)["currentPrice"], "10.00");
    assert_eq!(json(&bid)["winnerId"], "bob");

    f.control("a", ControlAction::Pause).await;
    let paused = next(&mut viewer).await;
    assert_eq!((paused.kind(), paused.version()), (FrameKind::Status, 3));
    assert_eq!(json(&paused)["status"], "paused");
    f.control("a", ControlAction::Resume).await;
    assert_eq!(next(&mut viewer).await.kind(), FrameKind::Status);

    f.control("a", ControlAction::End).await;
    let ended = next(&mut viewer).await;
    assert_eq!((ended.kind(), ended.version()), (FrameKind::Ended, 5));
    assert_eq!(json(&ended)["remainingMs"], 0);
    assert!(viewer.next().await.is_none(), "nothing after ended");
}

#[tokio::test]
async fn a_slow_viewer_skips_to_the_newest_state() {
    let f = Fixture::new();
    f.auction("a").await;
    let mut slow = f.viewer("a").await;
    let mut fast = f.viewer("a").await;
    assert_eq!(next(&mut slow).await.version(), 1);
    assert_eq!(next(&mut fast).await.version(), 1);
    let mut last_fast = None;
    for (i, amount) in (10..15).enumerate() {
        f.bid("a", amount).await;
        settle().await;
        let frame = next(&mut fast).await;
        assert_eq!(
            frame.version(),
            2 + i as u64,
            "the fast viewer sees every bid"
        );
        last_fast = Some(frame);
    }
    let frame = next(&mut slow).await;
    assert_eq!((frame.kind(), frame.version()), (FrameKind::Bid, 6));
    assert_eq!(json(&frame)["currentPrice"], "14.00");
    // Both viewers got the very same bytes: the frame was serialized once.
    let last_fast = last_fast.unwrap();
    assert_eq!(frame.text().as_ptr(), last_fast.text().as_ptr());
}

/// Each change wakes an auction's viewers in the order they began to wait, so they are served
/// in the same order every round: the last viewer of a change waits at most one round of
/// sends. (The watch's own notification spread its waiters over several lists at random, and
/// a viewer served first in one round could be served last in the next.)
#[tokio::test]
async fn viewers_are_served_in_the_same_order_every_round() {
    const VIEWERS: usize = 64;
    let engine = Arc::new(FakeEngine::new(NOW_MS));
    let config = LiveConfig {
        viewers_max: VIEWERS,
        ..CONFIG
    };
    let hub = Hub::start(engine.clone(), config).expect("the hub starts");
    let f = Fixture { engine, hub };
    f.auction("a").await;
    let served = Arc::new(std::sync::Mutex::new(Vec::<(u64, usize)>::new()));
    for index in 0..VIEWERS {
        let subscription = f.hub.join("a", None, Transport::Ws).await.unwrap();
        // No ticks: only changes are served.
        let mut viewer = Viewer::new(subscription, Duration::from_secs(3_600));
        let served = served.clone();
        tokio::spawn(async move {
            while let Some(frame) = viewer.next().await {
                served.lock().unwrap().push((frame.version(), index));
            }
        });
    }
    let all_served = |version: u64| {
        let served = served.clone();
        async move {
            while served
                .lock()
                .unwrap()
                .iter()
                .filter(|(v, _)| *v == version)
                .count()
                < VIEWERS
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    for (amount, version) in (10..15).zip(1..) {
        tokio::time::timeout(Duration::from_secs(5), all_served(version))
            .await
            .expect("every viewer is served");
        f.bid("a", amount).await;
    }
    tokio::time::timeout(Duration::from_secs(5), all_served(6))
        .await
        .expect("every viewer is served");
    let served = served.lock().unwrap();
    let order = |version: u64| -> Vec<usize> {
        served
            .iter()
            .filter(|(v, _)| *v == version)
            .map(|(_, index)| *index)
            .collect()
    };
    for version in 3..=6 {
        assert_eq!(order(version), order(2), "round {version} against round 2");
    }
}

#[tokio::test]
async fn an_ended_auction_gives_snapshot_ended_and_nothing_else() {
    let f = Fixture::new();
    f.auction("a").await;
    f.bid("a", 10).await;
    f.control("a", ControlAction::End).await;
    let mut viewer = f.viewer("a").await;
    let snapshot = next(&mut viewer).await;
    assert_eq!(
        (snapshot.kind(), snapshot.version()),
        (FrameKind::Snapshot, 3)
    );
    assert_eq!(json(&snapshot)["status"], "ended");
    let ended = next(&mut viewer).await;
    assert_eq!((ended.kind(), ended.version()), (FrameKind::Ended, 3));
    assert!(viewer.next().await.is_none());
}

#[tokio::test]
async fn unknown_auctions_are_refused_and_forgotten() {
    let f = Fixture::new();
    assert!(matches!(
        f.hub.join("nope", None, Transport::Sse).await,
        Err(JoinError::NotFound)
    ));
    assert_eq!(f.hub.watched_auctions(), 0);
    assert_eq!(f.hub.viewers(), 0, "the slot was given back");
    assert!(
        !f.engine.watched().may_be_watched("nope"),
        "its mark was taken back"
    );
}

/// The node publishes changes only of the auctions the hub marks: marked from the first
/// viewer's join (before it reads the state) until the last viewer leaves or the hub closes.
#[tokio::test]
async fn the_hub_marks_exactly_the_auctions_it_watches() {
    let f = Fixture::new();
    f.auction("a").await;
    f.auction("b").await;
    let marks = f.engine.watched();
    let first = f.hub.join("a", None, Transport::Ws).await.unwrap();
    let second = f.hub.join("a", None, Transport::Sse).await.unwrap();
    assert!(marks.may_be_watched("a"));
    drop(first);
    assert!(marks.may_be_watched("a"), "a viewer of a is left");
    drop(second);
    assert!(!marks.may_be_watched("a"), "a's last viewer left");
    let _held = f.hub.join("b", None, Transport::Ws).await.unwrap();
    assert!(marks.may_be_watched("b"));
    f.hub.close();
    assert!(!marks.may_be_watched("b"), "closing unmarks everything");
}

#[tokio::test]
async fn the_viewer_limit_answers_full_and_slots_come_back() {
    let f = Fixture::new();
    f.auction("a").await;
    f.auction("b").await;
    let mut held = Vec::new();
    for id in ["a", "a", "b"] {
        held.push(f.hub.join(id, None, Transport::Ws).await.unwrap());
    }
    assert_eq!(f.hub.watched_auctions(), 2);
    assert!(matches!(
        f.hub.join("a", None, Transport::Ws).await,
        Err(JoinError::Full(3))
    ));
    held.pop();
    assert_eq!(f.hub.watched_auctions(), 1, "b's last viewer left");
    assert!(f.hub.join("b", None, Transport::Sse).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_tick_comes_only_after_a_tick_period_without_frames() {
    let f = Fixture::paused();
    f.auction("a").await;
    let mut viewer = f.viewer("a").await;
    next(&mut viewer).await;
    tokio::time::sleep(TICK_PERIOD / 2).await;
    f.bid("a", 10).await;
    assert_eq!(next(&mut viewer).await.version(), 2);
    let bid_sent = tokio::time::Instant::now();
    let tick = next(&mut viewer).await;
    assert_eq!((tick.kind(), tick.version()), (FrameKind::Tick, 2));
    assert_eq!(
        bid_sent.elapsed(),
        TICK_PERIOD,
        "the bid frame put the tick off"
    );
    let tick = next(&mut viewer).await;
    assert_eq!(tick.kind(), FrameKind::Tick);
    assert_eq!(bid_sent.elapsed(), 2 * TICK_PERIOD);
}

#[tokio::test(start_paused = true)]
async fn frames_faster_than_the_tick_period_leave_no_room_for_ticks() {
    let f = Fixture::paused();
    f.auction("a").await;
    let mut viewer = f.viewer("a").await;
    next(&mut viewer).await;
    for amount in 10..20 {
        tokio::time::sleep(TICK_PERIOD * 9 / 10).await;
        f.bid("a", amount).await;
        let frame = next(&mut viewer).await;
        assert_eq!(frame.kind(), FrameKind::Bid, "no tick between bids");
    }
}

#[tokio::test(start_paused = true)]
async fn a_viewer_may_ask_for_sparser_ticks() {
    let f = Fixture::paused();
    f.auction("a").await;
    let sparse = Duration::from_millis(5_000);
    let subscription = f.hub.join("a", None, Transport::Sse).await.unwrap();
    let mut viewer = Viewer::new(subscription, sparse);
    next(&mut viewer).await;
    let connected = tokio::time::Instant::now();
    let tick = next(&mut viewer).await;
    assert_eq!(tick.kind(), FrameKind::Tick);
    assert_eq!(connected.elapsed(), sparse);
}

#[tokio::test(start_paused = true)]
async fn viewers_due_together_send_one_shared_tick() {
    let f = Fixture::paused();
    f.auction("a").await;
    let mut first = f.viewer("a").await;
    let mut second = f.viewer("a").await;
    next(&mut first).await;
    next(&mut second).await;
    let (a, b) = (next(&mut first).await, next(&mut second).await);
    assert_eq!((a.kind(), b.kind()), (FrameKind::Tick, FrameKind::Tick));
    assert!(a.shares_bytes_with(&b), "one render for both");
    let mut late = f.viewer("a").await;
    next(&mut late).await;
    let c = next(&mut late).await;
    assert!(
        !c.shares_bytes_with(&a),
        "a second later the tick is rendered afresh"
    );
}

#[tokio::test(start_paused = true)]
async fn resuming_ahead_of_the_replica_is_refused_after_a_bounded_wait() {
    let f = Fixture::paused();
    f.auction("a").await;
    let started = tokio::time::Instant::now();
    let refused = f.hub.join("a", Some(2), Transport::Sse).await;
    assert!(matches!(
        refused,
        Err(JoinError::Behind { have: 1, want: 2 })
    ));
    assert!(started.elapsed() >= Duration::from_millis(RESUME_WAIT_MS));
    // A version the replica has: admitted, and the snapshot is at least that version.
    let mut viewer = Viewer::new(
        f.hub.join("a", Some(1), Transport::Sse).await.unwrap(),
        TICK_PERIOD,
    );
    assert_eq!(next(&mut viewer).await.version(), 1);
}

#[tokio::test]
async fn resuming_waits_for_the_replica_to_catch_up() {
    let f = Fixture::new();
    f.auction("a").await;
    let hub = f.hub.clone();
    let joining = tokio::spawn(async move { hub.join("a", Some(2), Transport::Ws).await });
    settle().await;
    f.bid("a", 10).await;
    let subscription = joining.await.unwrap().unwrap();
    let mut viewer = Viewer::new(subscription, TICK_PERIOD);
    let snapshot = next(&mut viewer).await;
    assert_eq!(
        (snapshot.kind(), snapshot.version()),
        (FrameKind::Snapshot, 2)
    );
}

#[tokio::test]
async fn closing_the_hub_ends_every_stream_and_admits_nobody() {
    let f = Fixture::new();
    f.auction("a").await;
    let mut viewer = f.viewer("a").await;
    next(&mut viewer).await;
    f.hub.close();
    assert!(viewer.next().await.is_none());
    assert!(matches!(
        f.hub.join("a", None, Transport::Ws).await,
        Err(JoinError::Closing)
    ));
}

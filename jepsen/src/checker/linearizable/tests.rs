//! Linearizability checker tests: hand-made bad histories it must flag, the matching good ones
//! it must pass, and a minute of simulated hot-auction history it must judge valid quickly.

use std::time::Instant;

use super::check;
use crate::checker::testkit::sim::simulate;
use crate::checker::testkit::{
    after_bids, auction, bid_call, bid_view, create_call, read_call, seed, Builder, Done,
};
use crate::checker::{check_all, Validity};
use crate::history::{AuctionStatus, Call, ControlAction, OpResult};

/// An auction "a1" created at 0..1 ms.
fn created() -> Builder {
    let mut b = Builder::new();
    let view = auction("a1");
    let call = create_call("post-a1", Some("c1"), &view);
    b.op(0, call, 0, Done::Ok(1, OpResult::Auction(view)));
    b
}

fn validity(b: Builder) -> Validity {
    let verdict = check(&b.build());
    println!("{verdict:#?}");
    verdict.validity
}

fn accepted_by_alice(b: &mut Builder, invoke: u64, done: u64) {
    let after = after_bids(&auction("a1"), &[("alice", "10")]);
    let view = bid_view("b1", "10", None, &after);
    b.op(
        1,
        bid_call("a1", "alice", "k1", "10"),
        invoke,
        Done::Ok(done, OpResult::Bid(view)),
    );
}

#[test]
fn stale_read_after_a_newer_write_completed_is_flagged() {
    let mut b = created();
    accepted_by_alice(&mut b, 10, 20);
    let old = OpResult::Auction(auction("a1"));
    b.op(2, read_call("a1"), 30, Done::Ok(31, old));
    assert_eq!(validity(b), Validity::Invalid);
}

#[test]
fn old_read_concurrent_with_the_write_passes() {
    let mut b = created();
    accepted_by_alice(&mut b, 10, 20);
    let old = OpResult::Auction(auction("a1"));
    b.op(2, read_call("a1"), 5, Done::Ok(25, old));
    assert_eq!(validity(b), Validity::Valid);
}

#[test]
fn two_accepted_bids_at_the_same_version_are_flagged() {
    let mut b = created();
    accepted_by_alice(&mut b, 10, 20);
    // Concurrent with alice's, also "accepted at version 2": two winners of one version.
    let after = after_bids(&auction("a1"), &[("bob", "12")]);
    let view = bid_view("b2", "12", None, &after);
    b.op(
        3,
        bid_call("a1", "bob", "k2", "12"),
        11,
        Done::Ok(19, OpResult::Bid(view)),
    );
    assert_eq!(validity(b), Validity::Invalid);
}

#[test]
fn accepted_bid_below_the_increment_is_flagged() {
    let mut b = created();
    accepted_by_alice(&mut b, 10, 20);
    let after = after_bids(&auction("a1"), &[("alice", "10"), ("bob", "10.5")]);
    let view = bid_view("b2", "10.5", None, &after);
    b.op(
        3,
        bid_call("a1", "bob", "k2", "10.5"),
        30,
        Done::Ok(40, OpResult::Bid(view)),
    );
    assert_eq!(validity(b), Validity::Invalid);
}

#[test]
fn increment_respected_and_rejection_seen_passes() {
    let mut b = created();
    accepted_by_alice(&mut b, 10, 20);
    let two = after_bids(&auction("a1"), &[("alice", "10"), ("bob", "11")]);
    let view = bid_view("b2", "11", None, &two);
    b.op(
        3,
        bid_call("a1", "bob", "k2", "11"),
        30,
        Done::Ok(40, OpResult::Bid(view)),
    );
    let low = bid_view("b3", "11.5", Some("below_minimum"), &two);
    b.op(
        4,
        bid_call("a1", "carol", "k3", "11.5"),
        50,
        Done::Ok(60, OpResult::Bid(low)),
    );
    b.op(
        5,
        bid_call("a1", "seller", "k4", "99"),
        55,
        Done::Ok(
            58,
            OpResult::Bid(bid_view("b4", "99", Some("self_bid"), &two)),
        ),
    );
    assert_eq!(validity(b), Validity::Valid);
}

#[test]
fn replay_with_a_different_decision_is_flagged() {
    let mut b = created();
    accepted_by_alice(&mut b, 10, 20);
    let mut other = bid_view("b1", "10", Some("below_minimum"), &auction("a1"));
    other.replayed = true;
    let mut retry = bid_call("a1", "alice", "k1", "10");
    if let Call::Bid { retry_of, .. } = &mut retry {
        *retry_of = Some(2);
    }
    b.op(1, retry, 30, Done::Ok(40, OpResult::Bid(other)));
    assert_eq!(validity(b), Validity::Invalid);
}

#[test]
fn info_bid_then_replayed_retry_passes() {
    let mut b = created();
    b.op(1, bid_call("a1", "alice", "k1", "10"), 10, Done::Info(500));
    let after = after_bids(&auction("a1"), &[("alice", "10")]);
    let mut view = bid_view("b1", "10", None, &after);
    view.replayed = true;
    b.op(
        1,
        bid_call("a1", "alice", "k1", "10"),
        600,
        Done::Ok(610, OpResult::Bid(view)),
    );
    // An info bid that never took effect, and a read showing alice's.
    b.op(2, bid_call("a1", "bob", "k9", "50"), 5, Done::Info(900));
    b.op(
        3,
        read_call("a1"),
        700,
        Done::Ok(710, OpResult::Auction(after)),
    );
    assert_eq!(validity(b), Validity::Valid);
}

#[test]
fn info_create_found_by_post_id_and_deadline_end_pass() {
    let mut b = Builder::new();
    let view = auction("a1");
    b.op(0, create_call("post-a1", None, &view), 0, Done::Info(100));
    let one = after_bids(&view, &[("alice", "10")]);
    let bid = bid_view("b1", "10", None, &one);
    b.op(
        1,
        bid_call("a1", "alice", "k1", "10"),
        200,
        Done::Ok(210, OpResult::Bid(bid)),
    );
    // Ended by its deadline: no control, one version later.
    let mut ended = one.clone();
    ended.status = AuctionStatus::Ended;
    ended.version += 1;
    let late = bid_view("b2", "20", Some("ended"), &ended);
    b.op(
        2,
        bid_call("a1", "bob", "k2", "20"),
        300,
        Done::Ok(310, OpResult::Bid(late)),
    );
    b.replicas(&[1, 2, 3], &[ended], &[]);
    assert_eq!(validity(b), Validity::Valid);
}

#[test]
fn bid_accepted_after_the_end_was_seen_is_flagged() {
    let mut b = created();
    let mut ended = auction("a1");
    ended.status = AuctionStatus::Ended;
    ended.version = 2;
    let end = Call::Control {
        auction_id: "a1".into(),
        action: ControlAction::End,
    };
    b.op(0, end, 10, Done::Ok(20, OpResult::Auction(ended)));
    let mut after = after_bids(&auction("a1"), &[("alice", "10")]);
    after.version = 3;
    let view = bid_view("b1", "10", None, &after);
    b.op(
        1,
        bid_call("a1", "alice", "k1", "10"),
        30,
        Done::Ok(40, OpResult::Bid(view)),
    );
    assert_eq!(validity(b), Validity::Invalid);
}

#[test]
fn pause_refused_while_active_is_flagged_and_resume_moves_end() {
    let pause = Call::Control {
        auction_id: "a1".into(),
        action: ControlAction::Pause,
    };
    let resume = Call::Control {
        auction_id: "a1".into(),
        action: ControlAction::Resume,
    };
    let mut bad = created();
    bad.op(
        0,
        pause.clone(),
        10,
        Done::Ok(20, OpResult::ControlNotAllowed),
    );
    // (Alone the 409 could mean the deadline ended it first; the read says it did not.)
    bad.op(
        2,
        read_call("a1"),
        30,
        Done::Ok(31, OpResult::Auction(auction("a1"))),
    );
    assert_eq!(validity(bad), Validity::Invalid);

    let mut good = created();
    let mut paused = auction("a1");
    paused.status = AuctionStatus::Paused;
    paused.version = 2;
    good.op(
        0,
        pause,
        10,
        Done::Ok(20, OpResult::Auction(paused.clone())),
    );
    let mut resumed = paused;
    resumed.status = AuctionStatus::Active;
    resumed.version = 3;
    resumed.end_at_ms += 5_000;
    good.op(0, resume, 30, Done::Ok(40, OpResult::Auction(resumed)));
    assert_eq!(validity(good), Validity::Valid);
}

/// A minute of one hot auction: ~20 bidders, thousands of overlapping operations, `info`
/// timeouts and retries. Must be judged valid; prints how long it took (not asserted).
#[test]
fn hot_auction_minute_is_linearizable() {
    let seed = seed("hot_auction_minute_is_linearizable");
    let history = simulate(seed);
    let ops = history.operations();
    let info = ops
        .iter()
        .filter(|o| o.outcome() != crate::history::Phase::Ok)
        .count();
    let bids: Vec<_> = ops
        .iter()
        .filter_map(|o| match o.result() {
            Some(OpResult::Bid(view)) => Some(view),
            _ => None,
        })
        .collect();
    let replays = bids.iter().filter(|b| b.replayed).count();
    let accepted = bids.iter().filter(|b| b.reason.is_none()).count();
    println!(
        "{} ok bids: {accepted} accepted, {replays} replays",
        bids.len()
    );
    let started = Instant::now();
    let verdict = check(&history);
    let took = started.elapsed();
    println!(
        "checked {} operations ({info} not ok) in {:.3} s: {verdict:#?}",
        ops.len(),
        took.as_secs_f64()
    );
    assert_eq!(verdict.validity, Validity::Valid, "seed {seed}");
    assert!(ops.len() >= 2_500, "the simulation should be a hot auction");
}

/// The same simulated history satisfies every other promise too: no checker may flag it.
#[test]
fn simulated_history_passes_every_checker() {
    let seed = seed("simulated_history_passes_every_checker");
    let history = simulate(seed);
    for verdict in check_all(&history) {
        assert_eq!(
            verdict.validity,
            Validity::Valid,
            "seed {seed}: {verdict:#?}"
        );
    }
}

/// The simulated minute with one read's answer corrupted (price off by one): the search must
/// still finish and say `Invalid`, naming that read.
#[test]
fn hot_auction_with_one_corrupted_read_is_flagged() {
    let seed = seed("hot_auction_with_one_corrupted_read_is_flagged");
    let mut history = simulate(seed);
    let reads: Vec<usize> = history
        .ops
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e.call, Call::Read { local: false, .. }))
        .filter(|(_, e)| matches!(e.result, Some(OpResult::Auction(_))))
        .map(|(i, _)| i)
        .collect();
    let victim = reads[reads.len() / 2];
    let op_id = history.ops[victim].op_id;
    if let Some(OpResult::Auction(view)) = history.ops[victim].result.as_mut() {
        view.current_price += rust_decimal::Decimal::ONE;
    }
    let started = Instant::now();
    let verdict = check(&history);
    println!(
        "corrupted op {op_id}; judged in {:.3} s: {verdict:#?}",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(verdict.validity, Validity::Invalid, "seed {seed}");
    assert!(
        verdict.problems[0].contains(&format!("op {op_id} ")),
        "seed {seed}"
    );
}

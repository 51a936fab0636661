//! Tests of bids: acceptance, every rejection reason and its precedence, anti-sniping,
//! idempotent replay and key reuse, and the per-auction decision limit.

use super::*;

#[test]
fn first_bid_at_start_price_is_accepted() {
    let auction = active();
    let stamp = T0 + SECOND_MS;
    let effects = bid(&auction, ALICE, "k1", "10.00", stamp);
    let decision = new_decision(&effects);
    let expected = BidDecision {
        seq: 1,
        bid_id: "bid-alice-k1".into(),
        auction_id: AUCTION_ID.into(),
        bidder_id: ALICE.into(),
        idempotency_key: "k1".into(),
        amount: dec("10.00"),
        status: BidStatus::Accepted,
        reason: None,
        version: 2,
        current_price: dec("10.00"),
        current_winner_id: Some(ALICE.into()),
        end_at_ms: auction.end_at_ms,
        created_at_ms: stamp,
    };
    assert_eq!(decision, &expected);
    let state = after(&effects);
    assert_eq!(state.current_price, dec("10"));
    assert_eq!(state.current_winner_id.as_deref(), Some(ALICE));
    assert_eq!((state.bid_count, state.decision_count), (1, 1));
    assert_eq!(state.version, 2);
    assert!(effects.auction_changed);
    assert_eq!(effects.changes, vec![change(ChangeKind::Bid, 2)]);
    assert_eq!(effects.ended_at_deadline_ms, None);
}

#[test]
fn first_bid_below_start_price_is_below_minimum() {
    let auction = active();
    let effects = bid(&auction, ALICE, "k1", "9.99", T0);
    let decision = new_decision(&effects);
    assert_eq!(decision.status, BidStatus::Rejected);
    assert_eq!(decision.reason, Some(RejectReason::BelowMinimum));
    assert_eq!(
        (decision.seq, decision.version, decision.current_price),
        (1, 1, dec("10"))
    );
    assert_eq!(decision.current_winner_id, None);
    let state = after(&effects);
    assert_eq!(state.version, 1, "a rejection does not change the version");
    assert_eq!((state.bid_count, state.decision_count), (0, 1));
    assert!(effects.auction_changed, "the decision count moved");
    assert_eq!(effects.changes, vec![]);
}

#[test]
fn zero_start_price_accepts_zero() {
    let auction = active_with(CreateAuction {
        start_price: Decimal::ZERO,
        ..request()
    });
    let effects = bid(&auction, ALICE, "k1", "0", T0);
    assert_eq!(new_decision(&effects).status, BidStatus::Accepted);
}

#[test]
fn later_bids_need_current_price_plus_increment() {
    let first = bid(&active(), ALICE, "k1", "12.50", T0);
    let auction = after(&first).clone();
    assert_eq!(minimum_bid(&auction), dec("13.50"));
    for (amount, expected) in [
        ("12.50", Some(RejectReason::BelowMinimum)),
        ("13.49", Some(RejectReason::BelowMinimum)),
        ("13.499999", Some(RejectReason::BelowMinimum)),
        ("13.5", None),
        ("500", None),
    ] {
        let effects = bid(&auction, BOB, "k1", amount, T0 + 1);
        assert_eq!(new_decision(&effects).reason, expected, "{amount}");
    }
}

#[test]
fn minimum_bid_is_start_price_until_a_winner() {
    let auction = active();
    assert_eq!(minimum_bid(&auction), dec("10"));
    let effects = bid(&auction, ALICE, "k1", "10", T0);
    assert_eq!(minimum_bid(after(&effects)), dec("11"));
}

#[test]
fn the_winner_may_raise_their_own_bid() {
    let first = bid(&active(), ALICE, "k1", "10", T0);
    let effects = bid(after(&first), ALICE, "k2", "11", T0 + 1);
    let decision = new_decision(&effects);
    assert_eq!((decision.seq, decision.version), (2, 3));
    assert_eq!(decision.status, BidStatus::Accepted);
}

#[test]
fn creator_bid_is_self_bid() {
    let effects = bid(&active(), CREATOR, "k1", "100", T0);
    let decision = new_decision(&effects);
    assert_eq!(decision.reason, Some(RejectReason::SelfBid));
    assert_eq!(after(&effects).version, 1);
}

#[test]
fn self_bid_outranks_below_minimum() {
    let effects = bid(&active(), CREATOR, "k1", "1", T0);
    assert_eq!(new_decision(&effects).reason, Some(RejectReason::SelfBid));
}

#[test]
fn bid_before_the_start_is_not_started() {
    let auction = scheduled();
    let effects = bid(&auction, ALICE, "k1", "100", auction.start_at_ms - 1);
    assert_eq!(
        new_decision(&effects).reason,
        Some(RejectReason::NotStarted)
    );
    assert_eq!(after(&effects).status, Status::Scheduled);
    assert_eq!(effects.changes, vec![]);
}

#[test]
fn bid_while_paused_is_paused() {
    let effects = bid(&paused(), ALICE, "k1", "100", T0 + 2 * MINUTE_MS);
    assert_eq!(new_decision(&effects).reason, Some(RejectReason::Paused));
}

#[test]
fn bid_on_ended_auction_is_ended() {
    let effects = bid(&ended(), ALICE, "k1", "100", T0 + 2 * MINUTE_MS);
    assert_eq!(new_decision(&effects).reason, Some(RejectReason::Ended));
}

#[test]
fn status_outranks_self_bid() {
    let cases = [
        (scheduled(), T0, RejectReason::NotStarted),
        (paused(), T0 + 2 * MINUTE_MS, RejectReason::Paused),
        (ended(), T0 + 2 * MINUTE_MS, RejectReason::Ended),
    ];
    for (auction, stamp, reason) in cases {
        let effects = bid(&auction, CREATOR, "k1", "1", stamp);
        assert_eq!(new_decision(&effects).reason, Some(reason));
    }
}

#[test]
fn bid_one_ms_before_the_end_is_accepted() {
    let auction = active();
    let effects = bid(&auction, ALICE, "k1", "10", auction.end_at_ms - 1);
    assert_eq!(new_decision(&effects).status, BidStatus::Accepted);
    assert_eq!(after(&effects).status, Status::Active);
}

#[test]
fn bid_at_the_end_is_ended_without_a_deadline_entry() {
    let auction = active();
    let end = auction.end_at_ms;
    let effects = bid(&auction, ALICE, "k1", "10", end);
    let decision = new_decision(&effects);
    assert_eq!(decision.reason, Some(RejectReason::Ended));
    assert_eq!(decision.version, 2);
    let state = after(&effects);
    assert_eq!(state.status, Status::Ended);
    assert_eq!(state.ended_at_ms, Some(end));
    assert_eq!(effects.ended_at_deadline_ms, Some(end));
    assert_eq!(effects.changes, vec![change(ChangeKind::Ended, 2)]);
}

#[test]
fn bid_after_the_end_keeps_the_winner() {
    let first = bid(&active(), ALICE, "k1", "10", T0);
    let auction = after(&first).clone();
    let effects = bid(&auction, BOB, "k1", "50", auction.end_at_ms + MINUTE_MS);
    assert_eq!(new_decision(&effects).reason, Some(RejectReason::Ended));
    let state = after(&effects);
    assert_eq!(state.current_winner_id.as_deref(), Some(ALICE));
    assert_eq!(state.current_price, dec("10"));
    assert_eq!(state.ended_at_ms, Some(auction.end_at_ms));
}

#[test]
fn scheduled_auction_starts_at_the_bid_stamp_then_takes_the_bid() {
    let auction = scheduled();
    let stamp = auction.start_at_ms;
    let effects = bid(&auction, ALICE, "k1", "10", stamp);
    let decision = new_decision(&effects);
    assert_eq!(
        (decision.status, decision.version),
        (BidStatus::Accepted, 3)
    );
    assert_eq!(
        effects.changes,
        vec![change(ChangeKind::Status, 2), change(ChangeKind::Bid, 3)]
    );
    assert_eq!(after(&effects).status, Status::Active);
}

#[test]
fn scheduled_auction_past_its_end_starts_and_ends_before_the_bid() {
    let auction = scheduled();
    let effects = bid(&auction, ALICE, "k1", "10", auction.end_at_ms);
    let decision = new_decision(&effects);
    assert_eq!(decision.reason, Some(RejectReason::Ended));
    assert_eq!(
        effects.changes,
        vec![change(ChangeKind::Status, 2), change(ChangeKind::Ended, 3)]
    );
    assert_eq!(effects.ended_at_deadline_ms, Some(auction.end_at_ms));
}

/// `active()` with 60 s of anti-sniping.
fn sniping_guarded() -> Auction {
    active_with(CreateAuction {
        anti_sniping_seconds: 60,
        ..request()
    })
}

#[test]
fn anti_sniping_extends_a_late_accepted_bid() {
    let auction = sniping_guarded();
    let stamp = auction.end_at_ms - 30 * SECOND_MS;
    let effects = bid(&auction, ALICE, "k1", "10", stamp);
    let expected_end = stamp + 60 * SECOND_MS;
    assert_eq!(new_decision(&effects).end_at_ms, expected_end);
    assert_eq!(after(&effects).end_at_ms, expected_end);
    assert_eq!(next_deadline_ms(after(&effects)), Some(expected_end));
    assert_eq!(
        effects.changes,
        vec![change(ChangeKind::Bid, 2)],
        "no status change"
    );
}

#[test]
fn anti_sniping_extends_a_bid_one_ms_before_the_end() {
    let auction = sniping_guarded();
    let stamp = auction.end_at_ms - 1;
    let effects = bid(&auction, ALICE, "k1", "10", stamp);
    assert_eq!(after(&effects).end_at_ms, stamp + 60 * SECOND_MS);
}

#[test]
fn anti_sniping_leaves_the_end_when_enough_time_is_left() {
    let auction = sniping_guarded();
    for left_ms in [60 * SECOND_MS, 60 * SECOND_MS + 1, 10 * MINUTE_MS] {
        let effects = bid(&auction, ALICE, "k1", "10", auction.end_at_ms - left_ms);
        assert_eq!(
            after(&effects).end_at_ms,
            auction.end_at_ms,
            "{left_ms} ms left"
        );
    }
}

#[test]
fn anti_sniping_ignores_rejected_bids() {
    let auction = sniping_guarded();
    let effects = bid(&auction, ALICE, "k1", "1", auction.end_at_ms - SECOND_MS);
    assert_eq!(
        new_decision(&effects).reason,
        Some(RejectReason::BelowMinimum)
    );
    assert_eq!(after(&effects).end_at_ms, auction.end_at_ms);
}

#[test]
fn a_bid_in_the_extension_is_accepted_and_extends_again() {
    let auction = sniping_guarded();
    let first_stamp = auction.end_at_ms - SECOND_MS;
    let first = bid(&auction, ALICE, "k1", "10", first_stamp);
    let extended = after(&first).clone();
    let second_stamp = auction.end_at_ms + 30 * SECOND_MS;
    let second = bid(&extended, BOB, "k1", "11", second_stamp);
    assert_eq!(new_decision(&second).status, BidStatus::Accepted);
    assert_eq!(after(&second).end_at_ms, second_stamp + 60 * SECOND_MS);
}

#[test]
fn replay_with_the_same_amount_answers_the_first_decision() {
    let auction = active();
    let first = bid(&auction, ALICE, "k1", "10", T0);
    let prior = new_decision(&first).clone();
    let state = after(&first).clone();
    let retry = Command::Bid {
        auction_id: AUCTION_ID.into(),
        bid_id: "another-proposal-id".into(),
        bidder_id: ALICE.into(),
        idempotency_key: "k1".into(),
        amount: dec("10"),
    };
    let effects = apply(Some(&state), Some(&prior), &retry, T0 + SECOND_MS);
    assert_eq!(
        effects.reply,
        Reply::Bid {
            decision: prior,
            replayed: true
        }
    );
    assert_eq!(effects.decision, None);
    assert_eq!(effects.auction.as_ref(), Some(&state));
    assert!(!effects.auction_changed);
    assert_eq!(effects.changes, vec![]);
}

#[test]
fn replay_of_a_rejection_stays_a_rejection() {
    let first = bid(&scheduled(), ALICE, "k1", "10", T0);
    let prior = new_decision(&first).clone();
    let state = after(&first).clone();
    // By now the auction is active and the same bid would be accepted: the first answer holds.
    let effects = apply(
        Some(&state),
        Some(&prior),
        &bid_command(ALICE, "k1", "10"),
        state.start_at_ms + SECOND_MS,
    );
    assert_eq!(
        effects.reply,
        Reply::Bid {
            decision: prior,
            replayed: true
        }
    );
    assert_eq!(effects.decision, None);
    assert_eq!(after(&effects).bid_count, 0);
    assert_eq!(
        effects.changes,
        vec![change(ChangeKind::Status, 2)],
        "only time moved"
    );
}

#[test]
fn replay_compares_amounts_by_value() {
    // "10.0" and "10" are the same amount; the first decision (with its own scale) is answered.
    let first = bid(&active(), ALICE, "k1", "10", T0);
    let prior = new_decision(&first).clone();
    let command = bid_command(ALICE, "k1", "10.000");
    let effects = apply(Some(after(&first)), Some(&prior), &command, T0);
    assert_eq!(
        effects.reply,
        Reply::Bid {
            decision: prior,
            replayed: true
        }
    );
}

#[test]
fn same_key_with_another_amount_is_key_reused() {
    let first = bid(&active(), ALICE, "k1", "10", T0);
    let prior = new_decision(&first).clone();
    let state = after(&first).clone();
    let command = bid_command(ALICE, "k1", "11");
    let effects = apply(Some(&state), Some(&prior), &command, T0 + 1);
    assert_eq!(effects.reply, Reply::BidKeyReused);
    assert_eq!(effects.decision, None);
    assert_eq!(effects.auction.as_ref(), Some(&state));
    assert!(!effects.auction_changed);
    assert_eq!(effects.changes, vec![]);
}

#[test]
fn bid_on_a_missing_auction_is_not_found() {
    let effects = apply(None, None, &bid_command(ALICE, "k1", "10"), T0);
    assert_eq!(effects.reply, Reply::AuctionNotFound);
    assert_eq!(effects.auction, None);
    assert_eq!(effects.decision, None);
    assert!(!effects.auction_changed);
}

#[test]
fn decisions_count_accepted_and_rejected_bids() {
    let mut auction = active();
    let bids = [
        (ALICE, "5", BidStatus::Rejected),
        (ALICE, "10", BidStatus::Accepted),
        (CREATOR, "20", BidStatus::Rejected),
        (BOB, "11", BidStatus::Accepted),
    ];
    for (i, (bidder, amount, status)) in bids.into_iter().enumerate() {
        let effects = bid(&auction, bidder, &format!("k{i}"), amount, T0 + 1);
        let decision = new_decision(&effects);
        assert_eq!((decision.seq, decision.status), (i as u64 + 1, status));
        auction = after(&effects).clone();
    }
    assert_eq!((auction.decision_count, auction.bid_count), (4, 2));
    assert_eq!(auction.version, 3);
}

#[test]
fn the_last_decision_fits_the_limit() {
    let auction = Auction {
        decision_count: DECISIONS_PER_AUCTION_MAX - 1,
        ..active()
    };
    let effects = bid(&auction, ALICE, "k1", "10", T0);
    assert_eq!(new_decision(&effects).seq, DECISIONS_PER_AUCTION_MAX);
}

#[test]
fn a_full_decision_log_refuses_bids_without_a_decision() {
    let auction = Auction {
        decision_count: DECISIONS_PER_AUCTION_MAX,
        ..active()
    };
    let effects = bid(&auction, ALICE, "k1", "10", T0);
    assert_eq!(effects.reply, Reply::BidLimitReached);
    assert_eq!(effects.decision, None);
    assert_eq!(effects.auction.as_ref(), Some(&auction));
    assert!(!effects.auction_changed);
    assert_eq!(effects.changes, vec![]);
}

#[test]
fn a_full_decision_log_still_replays() {
    let first = bid(&active(), ALICE, "k1", "10", T0);
    let prior = new_decision(&first).clone();
    let full = Auction {
        decision_count: DECISIONS_PER_AUCTION_MAX,
        ..after(&first).clone()
    };
    let effects = apply(
        Some(&full),
        Some(&prior),
        &bid_command(ALICE, "k1", "10"),
        T0,
    );
    assert_eq!(
        effects.reply,
        Reply::Bid {
            decision: prior.clone(),
            replayed: true
        }
    );
    let reused = apply(
        Some(&full),
        Some(&prior),
        &bid_command(ALICE, "k1", "12"),
        T0,
    );
    assert_eq!(reused.reply, Reply::BidKeyReused);
}

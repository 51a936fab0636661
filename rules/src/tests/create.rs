//! Tests of creating auctions: the initial state, idempotent replay, key reuse, taken ids, and
//! every rule of `CreateAuction::validate` and `check_money`.

use super::*;

#[test]
fn future_start_is_scheduled_at_version_1() {
    let effects = apply(
        None,
        None,
        &create_command(CREATOR, Some(CREATE_KEY), request()),
        T0,
    );
    let expected = Auction {
        id: AUCTION_ID.into(),
        post_id: "post-1".into(),
        creator_id: CREATOR.into(),
        status: Status::Scheduled,
        start_at_ms: T0 + MINUTE_MS,
        end_at_ms: T0 + 61 * MINUTE_MS,
        start_price: dec("10"),
        min_increment: dec("1"),
        anti_sniping_seconds: 0,
        current_price: dec("10"),
        current_winner_id: None,
        bid_count: 0,
        decision_count: 0,
        version: 1,
        created_at_ms: T0,
        ended_at_ms: None,
        paused_at_ms: None,
        create_key: Some(CREATE_KEY.into()),
        create_request: request(),
    };
    assert_eq!(effects.auction.as_ref(), Some(&expected));
    assert!(effects.auction_changed);
    assert_eq!(effects.decision, None);
    assert_eq!(effects.changes, vec![]);
    assert_eq!(effects.ended_at_deadline_ms, None);
    assert_eq!(
        effects.reply,
        Reply::Created {
            auction: expected,
            replayed: false
        }
    );
    assert_eq!(next_deadline_ms(after(&effects)), Some(T0 + MINUTE_MS));
}

#[test]
fn past_start_is_active_at_once_at_version_1() {
    let auction = active();
    assert_eq!(auction.status, Status::Active);
    assert_eq!(auction.version, 1);
    assert_eq!(
        auction.start_at_ms,
        T0 - MINUTE_MS,
        "startAt is kept as asked"
    );
    assert_eq!(next_deadline_ms(&auction), Some(auction.end_at_ms));
}

#[test]
fn start_at_the_stamp_is_active_at_once() {
    let auction = create(
        CreateAuction {
            start_at_ms: T0,
            ..request()
        },
        T0,
    );
    assert_eq!((auction.status, auction.version), (Status::Active, 1));
}

#[test]
fn create_without_key_is_created() {
    let effects = apply(None, None, &create_command(CREATOR, None, request()), T0);
    assert!(matches!(
        effects.reply,
        Reply::Created {
            replayed: false,
            ..
        }
    ));
    assert_eq!(after(&effects).create_key, None);
}

#[test]
fn same_key_and_request_replays_without_change() {
    let auction = scheduled();
    let command = create_command(CREATOR, Some(CREATE_KEY), request());
    let effects = apply(Some(&auction), None, &command, T0 + SECOND_MS);
    assert_eq!(
        effects.reply,
        Reply::Created {
            auction: auction.clone(),
            replayed: true
        }
    );
    assert_eq!(effects.auction.as_ref(), Some(&auction));
    assert!(!effects.auction_changed);
    assert_eq!(effects.changes, vec![]);
}

#[test]
fn replay_after_the_start_answers_the_current_state() {
    let auction = scheduled();
    let command = create_command(CREATOR, Some(CREATE_KEY), request());
    let effects = apply(Some(&auction), None, &command, T0 + 2 * MINUTE_MS);
    let current = after(&effects).clone();
    assert_eq!((current.status, current.version), (Status::Active, 2));
    assert_eq!(
        effects.reply,
        Reply::Created {
            auction: current,
            replayed: true
        }
    );
    assert!(effects.auction_changed, "time alone changed the status");
    assert_eq!(effects.changes, vec![change(ChangeKind::Status, 2)]);
}

#[test]
fn same_key_with_another_request_is_key_reused() {
    let auction = scheduled();
    let other = CreateAuction {
        start_price: dec("11"),
        ..request()
    };
    let command = create_command(CREATOR, Some(CREATE_KEY), other);
    let effects = apply(Some(&auction), None, &command, T0);
    assert_eq!(
        effects.reply,
        Reply::CreateRejected(CreateRejection::KeyReused)
    );
    assert_eq!(effects.auction.as_ref(), Some(&auction));
    assert!(!effects.auction_changed);
}

#[test]
fn id_held_by_another_caller_is_taken() {
    let auction = scheduled();
    let cases = [
        create_command(ALICE, Some(CREATE_KEY), request()),
        create_command(CREATOR, Some("another-key"), request()),
        create_command(CREATOR, None, request()),
    ];
    for command in cases {
        let effects = apply(Some(&auction), None, &command, T0);
        assert_eq!(
            effects.reply,
            Reply::CreateRejected(CreateRejection::IdTaken),
            "{command:?}"
        );
        assert_eq!(effects.auction.as_ref(), Some(&auction));
        assert!(!effects.auction_changed);
    }
}

#[test]
fn id_created_without_key_is_taken_even_for_its_creator() {
    let created = apply(None, None, &create_command(CREATOR, None, request()), T0);
    let effects = apply(
        created.auction.as_ref(),
        None,
        &create_command(CREATOR, None, request()),
        T0,
    );
    assert_eq!(
        effects.reply,
        Reply::CreateRejected(CreateRejection::IdTaken)
    );
}

#[test]
fn invalid_request_creates_nothing() {
    let invalid = CreateAuction {
        min_increment: Decimal::ZERO,
        ..request()
    };
    let effects = apply(
        None,
        None,
        &create_command(CREATOR, Some(CREATE_KEY), invalid),
        T0,
    );
    assert_eq!(
        effects.reply,
        Reply::CreateRejected(CreateRejection::Invalid(
            "minIncrement must be greater than 0".into()
        ))
    );
    assert_eq!(effects.auction, None);
    assert!(!effects.auction_changed);
    assert_eq!(effects.changes, vec![]);
}

/// `request()` changed by `edit`, validated at `T0`.
fn validate_with(edit: impl FnOnce(&mut CreateAuction)) -> Result<(), String> {
    let mut request = request();
    edit(&mut request);
    request.validate(T0)
}

#[test]
fn validate_accepts_the_fixture() {
    assert_eq!(request().validate(T0), Ok(()));
}

#[test]
fn validate_post_id_is_1_to_255_bytes() {
    let rule = Err("postId must be 1-255 bytes of UTF-8".to_owned());
    assert_eq!(validate_with(|r| r.post_id.clear()), rule);
    assert_eq!(validate_with(|r| r.post_id = "p".repeat(256)), rule);
    assert_eq!(validate_with(|r| r.post_id = "p".repeat(255)), Ok(()));
    assert_eq!(validate_with(|r| r.post_id = "p".into()), Ok(()));
}

#[test]
fn validate_end_after_start() {
    let rule = Err("endAt must be after startAt".to_owned());
    assert_eq!(validate_with(|r| r.end_at_ms = r.start_at_ms), rule);
    assert_eq!(validate_with(|r| r.end_at_ms = r.start_at_ms - 1), rule);
    assert_eq!(validate_with(|r| r.end_at_ms = r.start_at_ms + 1), Ok(()));
}

#[test]
fn validate_end_in_the_future() {
    let rule = Err("endAt must be in the future".to_owned());
    let past = |end_at_ms| {
        move |r: &mut CreateAuction| {
            r.start_at_ms = T0 - 10 * MINUTE_MS;
            r.end_at_ms = end_at_ms;
        }
    };
    assert_eq!(validate_with(past(T0)), rule);
    assert_eq!(validate_with(past(T0 - 1)), rule);
    assert_eq!(validate_with(past(T0 + 1)), Ok(()));
}

#[test]
fn validate_lasts_at_most_30_days() {
    let rule = Err("endAt - startAt must be at most 30 days".to_owned());
    let lasting =
        |duration_ms| move |r: &mut CreateAuction| r.end_at_ms = r.start_at_ms + duration_ms;
    assert_eq!(validate_with(lasting(AUCTION_DURATION_MS_MAX)), Ok(()));
    assert_eq!(validate_with(lasting(AUCTION_DURATION_MS_MAX + 1)), rule);
    assert_eq!(AUCTION_DURATION_MS_MAX, 30 * 24 * 3600 * 1000);
}

#[test]
fn validate_extreme_times_do_not_overflow() {
    // Regression: `end - start` overflowed i64 here (a panic in debug builds; in release a
    // negative duration that passed the 30-day rule).
    let rule = Err("endAt - startAt must be at most 30 days".to_owned());
    assert_eq!(validate_with(|r| r.start_at_ms = i64::MIN), rule);
    assert_eq!(
        validate_with(|r| {
            r.start_at_ms = i64::MIN;
            r.end_at_ms = i64::MAX;
        }),
        rule
    );
    assert_eq!(validate_with(|r| r.end_at_ms = i64::MAX), rule);
}

#[test]
fn validate_start_price_is_money_and_may_be_zero() {
    assert_eq!(validate_with(|r| r.start_price = Decimal::ZERO), Ok(()));
    assert_eq!(validate_with(|r| r.start_price = MONEY_MAX), Ok(()));
    assert_eq!(
        validate_with(|r| r.start_price = dec("-0.01")),
        Err("startPrice must not be negative".to_owned())
    );
    assert_eq!(
        validate_with(|r| r.start_price = MONEY_MAX + dec("0.000001")),
        Err("startPrice must be at most 1000000000000".to_owned())
    );
    assert_eq!(
        validate_with(|r| r.start_price = dec("1.0000001")),
        Err("startPrice must have at most 6 fractional digits".to_owned())
    );
}

#[test]
fn validate_min_increment_is_positive_money() {
    assert_eq!(
        validate_with(|r| r.min_increment = Decimal::ZERO),
        Err("minIncrement must be greater than 0".to_owned())
    );
    assert_eq!(
        validate_with(|r| r.min_increment = dec("-1")),
        Err("minIncrement must not be negative".to_owned())
    );
    assert_eq!(
        validate_with(|r| r.min_increment = dec("0.0000001")),
        Err("minIncrement must have at most 6 fractional digits".to_owned())
    );
    assert_eq!(
        validate_with(|r| r.min_increment = MONEY_MAX + Decimal::ONE),
        Err("minIncrement must be at most 1000000000000".to_owned())
    );
    assert_eq!(validate_with(|r| r.min_increment = dec("0.000001")), Ok(()));
}

#[test]
fn validate_anti_sniping_is_0_to_3600_seconds() {
    assert_eq!(validate_with(|r| r.anti_sniping_seconds = 0), Ok(()));
    assert_eq!(validate_with(|r| r.anti_sniping_seconds = 3600), Ok(()));
    assert_eq!(
        validate_with(|r| r.anti_sniping_seconds = 3601),
        Err("antiSnipingSeconds must be between 0 and 3600".to_owned())
    );
    assert_eq!(ANTI_SNIPING_SECONDS_MAX, 3600);
}

#[test]
fn money_max_is_ten_to_the_twelfth() {
    assert_eq!(MONEY_MAX, dec("1000000000000"));
}

#[test]
fn check_money_rules() {
    let ok = [
        "0",
        "-0",
        "0.000001",
        "125.50",
        "1000000000000",
        "1000000000000.000000",
    ];
    for text in ok {
        assert_eq!(check_money("amount", dec(text)), Ok(()), "{text}");
    }
    let cases = [
        ("-0.000001", "amount must not be negative"),
        ("-5", "amount must not be negative"),
        (
            "1000000000000.000001",
            "amount must be at most 1000000000000",
        ),
        ("1000000000001", "amount must be at most 1000000000000"),
        ("0.0000001", "amount must have at most 6 fractional digits"),
        ("12.3456789", "amount must have at most 6 fractional digits"),
    ];
    for (text, why) in cases {
        assert_eq!(
            check_money("amount", dec(text)),
            Err(why.to_owned()),
            "{text}"
        );
    }
}

#[test]
fn check_money_ignores_trailing_zeros() {
    for text in ["1.5000000000", "2.0000000", "0.1234560000000000"] {
        let amount = dec(text);
        assert!(amount.scale() > MONEY_SCALE_MAX, "{text} is a real test");
        assert_eq!(check_money("amount", amount), Ok(()), "{text}");
    }
}

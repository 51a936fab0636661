//! Tests of time as data: `advance`, `next_deadline_ms` and the `Deadline` command that the
//! leader proposes when a start or end is due.

use super::*;

fn deadline(auction: Option<&Auction>, stamp: StampMs) -> Effects {
    let command = Command::Deadline {
        auction_id: AUCTION_ID.into(),
    };
    apply(auction, None, &command, stamp)
}

#[test]
fn deadline_at_the_start_activates() {
    let auction = scheduled();
    let effects = deadline(Some(&auction), auction.start_at_ms);
    let state = after(&effects);
    assert_eq!((state.status, state.version), (Status::Active, 2));
    assert_eq!(effects.reply, Reply::DeadlineApplied(Some(state.clone())));
    assert_eq!(effects.changes, vec![change(ChangeKind::Status, 2)]);
    assert_eq!(effects.ended_at_deadline_ms, None);
    assert_eq!(effects.decision, None);
    assert!(effects.auction_changed);
    assert_eq!(next_deadline_ms(state), Some(auction.end_at_ms));
}

#[test]
fn deadline_at_the_end_ends_at_the_end() {
    let auction = active();
    let late_ms = 250;
    let effects = deadline(Some(&auction), auction.end_at_ms + late_ms);
    let state = after(&effects);
    assert_eq!((state.status, state.version), (Status::Ended, 2));
    assert_eq!(
        state.ended_at_ms,
        Some(auction.end_at_ms),
        "endedAt is the deadline, not the late timer"
    );
    assert_eq!(effects.ended_at_deadline_ms, Some(auction.end_at_ms));
    assert_eq!(effects.changes, vec![change(ChangeKind::Ended, 2)]);
    assert_eq!(effects.reply, Reply::DeadlineApplied(Some(state.clone())));
    assert_eq!(next_deadline_ms(state), None);
}

#[test]
fn deadline_long_overdue_starts_and_ends_in_order() {
    let auction = scheduled();
    let effects = deadline(Some(&auction), auction.end_at_ms + MINUTE_MS);
    assert_eq!(
        effects.changes,
        vec![change(ChangeKind::Status, 2), change(ChangeKind::Ended, 3)]
    );
    let state = after(&effects);
    assert_eq!((state.status, state.version), (Status::Ended, 3));
    assert_eq!(state.ended_at_ms, Some(auction.end_at_ms));
    assert_eq!(effects.ended_at_deadline_ms, Some(auction.end_at_ms));
}

#[test]
fn early_deadline_changes_nothing() {
    for auction in [scheduled(), active()] {
        let stamp = next_deadline_ms(&auction).expect("a pending deadline") - 1;
        let effects = deadline(Some(&auction), stamp);
        assert_eq!(effects.auction.as_ref(), Some(&auction));
        assert!(!effects.auction_changed);
        assert_eq!(effects.changes, vec![]);
        assert_eq!(effects.ended_at_deadline_ms, None);
        assert_eq!(effects.reply, Reply::DeadlineApplied(Some(auction)));
    }
}

#[test]
fn deadline_on_paused_or_ended_changes_nothing() {
    for auction in [paused(), ended()] {
        let effects = deadline(Some(&auction), auction.end_at_ms + 60 * MINUTE_MS);
        assert_eq!(effects.auction.as_ref(), Some(&auction));
        assert!(!effects.auction_changed);
        assert_eq!(effects.changes, vec![]);
    }
}

#[test]
fn deadline_for_a_missing_auction_reports_none() {
    let effects = deadline(None, T0);
    assert_eq!(effects.reply, Reply::DeadlineApplied(None));
    assert_eq!(effects.auction, None);
    assert!(!effects.auction_changed);
}

#[test]
fn old_deadline_after_anti_sniping_extension_does_not_end() {
    let auction = active_with(CreateAuction {
        anti_sniping_seconds: 60,
        ..request()
    });
    let first = bid(&auction, ALICE, "k1", "10", auction.end_at_ms - SECOND_MS);
    let extended = after(&first).clone();
    let effects = deadline(Some(&extended), auction.end_at_ms);
    assert_eq!(after(&effects).status, Status::Active);
    assert!(!effects.auction_changed);
    assert_eq!(next_deadline_ms(&extended), Some(extended.end_at_ms));
}

#[test]
fn advance_reports_the_deadline_it_ended_at() {
    let mut auction = active();
    let end = auction.end_at_ms;
    let mut changes = Vec::new();
    assert_eq!(advance(&mut auction, end - 1, &mut changes), None);
    assert_eq!(changes, vec![]);
    assert_eq!(advance(&mut auction, end, &mut changes), Some(end));
    assert_eq!(changes, vec![change(ChangeKind::Ended, 2)]);
    assert_eq!(
        advance(&mut auction, end + 1, &mut changes),
        None,
        "ends once"
    );
    assert_eq!(auction.version, 2);
}

#[test]
fn advance_appends_to_the_changes_it_is_given() {
    let mut auction = scheduled();
    let mut changes = vec![change(ChangeKind::Bid, 99)];
    let start = auction.start_at_ms;
    advance(&mut auction, start, &mut changes);
    assert_eq!(
        changes,
        vec![change(ChangeKind::Bid, 99), change(ChangeKind::Status, 2)]
    );
}

#[test]
fn next_deadline_by_status() {
    let scheduled = scheduled();
    assert_eq!(next_deadline_ms(&scheduled), Some(scheduled.start_at_ms));
    let active = active();
    assert_eq!(next_deadline_ms(&active), Some(active.end_at_ms));
    assert_eq!(next_deadline_ms(&paused()), None);
    assert_eq!(next_deadline_ms(&ended()), None);
}

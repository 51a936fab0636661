//! Tests of start, pause, resume and end: the full transition table, who may steer an auction,
//! and what each allowed transition does to the state (version, times, changes).

use super::*;

const ACTIONS: [ControlAction; 4] = [
    ControlAction::Start,
    ControlAction::Pause,
    ControlAction::Resume,
    ControlAction::End,
];

/// A fixture in each status, all stable at `T0 + 2 min` (scheduled starts at `T0 + 1 h`).
fn in_every_status() -> [Auction; 4] {
    let later = CreateAuction {
        start_at_ms: T0 + 60 * MINUTE_MS,
        end_at_ms: T0 + 120 * MINUTE_MS,
        ..request()
    };
    [create(later, T0), active(), paused(), ended()]
}

/// What API.md allows: start from scheduled, pause from active, resume from paused, end from
/// anything but ended.
fn allowed(action: ControlAction, from: Status) -> Option<Status> {
    match (action, from) {
        (ControlAction::Start, Status::Scheduled) => Some(Status::Active),
        (ControlAction::Pause, Status::Active) => Some(Status::Paused),
        (ControlAction::Resume, Status::Paused) => Some(Status::Active),
        (ControlAction::End, Status::Scheduled | Status::Active | Status::Paused) => {
            Some(Status::Ended)
        }
        _ => None,
    }
}

#[test]
fn transition_table_for_creator_and_admin() {
    let stamp = T0 + 2 * MINUTE_MS;
    let actors = [(CREATOR, false), (ALICE, true), (CREATOR, true)];
    for auction in in_every_status() {
        for action in ACTIONS {
            for (user, is_admin) in actors {
                let command = control_command(action, user, is_admin);
                let effects = apply(Some(&auction), None, &command, stamp);
                let from = auction.status;
                let context = format!("{action:?} from {from:?} by {user} admin={is_admin}");
                match allowed(action, from) {
                    Some(to) => {
                        let state = after(&effects);
                        assert_eq!(effects.reply, Reply::Controlled(state.clone()), "{context}");
                        assert_eq!(state.status, to, "{context}");
                        assert_eq!(state.version, auction.version + 1, "{context}");
                        let kind = match to {
                            Status::Ended => ChangeKind::Ended,
                            _ => ChangeKind::Status,
                        };
                        assert_eq!(effects.changes, vec![change(kind, state.version)]);
                        assert!(effects.auction_changed, "{context}");
                    }
                    None => {
                        let rejection = ControlRejection::NotAllowed { action, from };
                        assert_eq!(
                            effects.reply,
                            Reply::ControlRejected(rejection),
                            "{context}"
                        );
                        assert_eq!(effects.auction.as_ref(), Some(&auction), "{context}");
                        assert!(!effects.auction_changed, "{context}");
                        assert_eq!(effects.changes, vec![], "{context}");
                    }
                }
            }
        }
    }
}

#[test]
fn another_user_is_forbidden_whatever_the_status() {
    for auction in in_every_status() {
        for action in ACTIONS {
            let command = control_command(action, ALICE, false);
            let effects = apply(Some(&auction), None, &command, T0 + 2 * MINUTE_MS);
            assert_eq!(
                effects.reply,
                Reply::ControlRejected(ControlRejection::Forbidden),
                "{action:?} from {:?}",
                auction.status
            );
            assert_eq!(effects.auction.as_ref(), Some(&auction));
            assert!(!effects.auction_changed);
        }
    }
}

#[test]
fn control_of_a_missing_auction_is_not_found() {
    let command = control_command(ControlAction::End, ALICE, true);
    let effects = apply(None, None, &command, T0);
    assert_eq!(effects.reply, Reply::AuctionNotFound);
    assert_eq!(effects.auction, None);
    assert!(!effects.auction_changed);
}

#[test]
fn start_makes_the_auction_active_from_now() {
    let auction = scheduled();
    let stamp = auction.start_at_ms - 10 * SECOND_MS;
    let started = controlled(&auction, ControlAction::Start, stamp);
    assert_eq!(started.status, Status::Active);
    assert_eq!(started.start_at_ms, stamp);
    assert_eq!(started.end_at_ms, auction.end_at_ms);
    assert_eq!(started.version, 2);
    let effects = bid(&started, ALICE, "k1", "10", stamp);
    assert_eq!(new_decision(&effects).status, BidStatus::Accepted);
}

#[test]
fn start_after_the_start_time_is_not_allowed() {
    // Time already started it, so the explicit start finds it active: 409, plus the status change.
    let auction = scheduled();
    let command = control_command(ControlAction::Start, CREATOR, false);
    let effects = apply(Some(&auction), None, &command, auction.start_at_ms);
    assert_eq!(
        effects.reply,
        Reply::ControlRejected(ControlRejection::NotAllowed {
            action: ControlAction::Start,
            from: Status::Active
        })
    );
    assert_eq!(effects.changes, vec![change(ChangeKind::Status, 2)]);
    assert!(effects.auction_changed);
}

#[test]
fn pause_records_when_it_began() {
    let stamp = T0 + MINUTE_MS;
    let auction = controlled(&active(), ControlAction::Pause, stamp);
    assert_eq!(auction.status, Status::Paused);
    assert_eq!(auction.paused_at_ms, Some(stamp));
    assert_eq!(next_deadline_ms(&auction), None);
}

#[test]
fn resume_shifts_the_end_by_exactly_the_paused_time() {
    let auction = active();
    let pause_at = T0 + MINUTE_MS;
    let resume_at = pause_at + 7 * MINUTE_MS + 123;
    let paused = controlled(&auction, ControlAction::Pause, pause_at);
    let resumed = controlled(&paused, ControlAction::Resume, resume_at);
    assert_eq!(resumed.status, Status::Active);
    assert_eq!(resumed.end_at_ms, auction.end_at_ms + 7 * MINUTE_MS + 123);
    assert_eq!(resumed.paused_at_ms, None);
    assert_eq!(resumed.version, 3);
    assert_eq!(next_deadline_ms(&resumed), Some(resumed.end_at_ms));
}

#[test]
fn resume_at_the_pause_stamp_keeps_the_end() {
    let auction = active();
    let paused = controlled(&auction, ControlAction::Pause, T0);
    let resumed = controlled(&paused, ControlAction::Resume, T0);
    assert_eq!(resumed.end_at_ms, auction.end_at_ms);
}

#[test]
fn a_paused_auction_outlives_its_end_and_resumes_with_the_rest() {
    let auction = active();
    let pause_at = auction.end_at_ms - MINUTE_MS;
    let paused = controlled(&auction, ControlAction::Pause, pause_at);
    let long_after = auction.end_at_ms + 60 * MINUTE_MS;
    let deadline = apply(
        Some(&paused),
        None,
        &Command::Deadline {
            auction_id: AUCTION_ID.into(),
        },
        long_after,
    );
    assert_eq!(
        after(&deadline),
        &paused,
        "time does not end a paused auction"
    );
    let late_bid = bid(&paused, ALICE, "k1", "10", long_after);
    assert_eq!(new_decision(&late_bid).reason, Some(RejectReason::Paused));
    let resumed = controlled(&paused, ControlAction::Resume, long_after);
    assert_eq!(
        resumed.end_at_ms,
        long_after + MINUTE_MS,
        "one minute was left"
    );
    let effects = bid(&resumed, ALICE, "k1", "10", long_after + 1);
    assert_eq!(new_decision(&effects).status, BidStatus::Accepted);
}

#[test]
fn end_by_hand_keeps_the_winner_and_stamps_the_end() {
    let first = bid(&active(), ALICE, "k1", "10", T0);
    let stamp = T0 + 5 * SECOND_MS;
    let command = control_command(ControlAction::End, CREATOR, false);
    let effects = apply(Some(after(&first)), None, &command, stamp);
    let state = after(&effects);
    assert_eq!(state.status, Status::Ended);
    assert_eq!(state.ended_at_ms, Some(stamp));
    assert_eq!(state.current_winner_id.as_deref(), Some(ALICE));
    assert_eq!(
        effects.ended_at_deadline_ms, None,
        "not ended by its deadline"
    );
    assert_eq!(effects.changes, vec![change(ChangeKind::Ended, 3)]);
    assert_eq!(next_deadline_ms(state), None);
}

#[test]
fn end_of_a_paused_auction_clears_the_pause() {
    let ended = controlled(&paused(), ControlAction::End, T0 + 2 * MINUTE_MS);
    assert_eq!(ended.status, Status::Ended);
    assert_eq!(ended.paused_at_ms, None);
}

#[test]
fn end_of_a_scheduled_auction_has_no_winner() {
    let ended = controlled(&scheduled(), ControlAction::End, T0);
    assert_eq!(ended.status, Status::Ended);
    assert_eq!(ended.current_winner_id, None);
    assert_eq!(ended.ended_at_ms, Some(T0));
}

#[test]
fn end_after_the_deadline_finds_it_ended_by_time() {
    let auction = active();
    let command = control_command(ControlAction::End, CREATOR, false);
    let effects = apply(Some(&auction), None, &command, auction.end_at_ms + 1);
    assert_eq!(
        effects.reply,
        Reply::ControlRejected(ControlRejection::NotAllowed {
            action: ControlAction::End,
            from: Status::Ended
        })
    );
    assert_eq!(after(&effects).ended_at_ms, Some(auction.end_at_ms));
    assert_eq!(effects.ended_at_deadline_ms, Some(auction.end_at_ms));
    assert_eq!(effects.changes, vec![change(ChangeKind::Ended, 2)]);
}

//! Unit tests of the auction rules, one submodule per command family (create and validation,
//! bids, control actions, time and deadlines); this file owns only the shared fixtures.
//!
//! Every expectation comes from API.md ("Auctions", "Bids") and DESIGN.md ("Invariants"), not
//! from the code under test. Random sequences live in `tests/properties.rs`.

mod bid;
mod control;
mod create;
mod time;

use crate::*;

/// The leader's stamp at which fixtures are created.
pub const T0: StampMs = 1_700_000_000_000;
pub const SECOND_MS: i64 = 1_000;
pub const MINUTE_MS: i64 = 60 * SECOND_MS;
pub const AUCTION_ID: &str = "auction-1";
pub const CREATOR: &str = "carol";
pub const CREATE_KEY: &str = "create-key-1";
pub const ALICE: &str = "alice";
pub const BOB: &str = "bob";

/// Exact decimal from a literal (test fixtures only).
pub fn dec(text: &str) -> Decimal {
    text.parse().expect("fixture decimal literal")
}

/// A valid request: starts a minute after `T0`, lasts an hour, price 10.00, increment 1.00.
pub fn request() -> CreateAuction {
    CreateAuction {
        post_id: "post-1".into(),
        start_at_ms: T0 + MINUTE_MS,
        end_at_ms: T0 + 61 * MINUTE_MS,
        start_price: dec("10.00"),
        min_increment: dec("1.00"),
        anti_sniping_seconds: 0,
    }
}

pub fn create_command(creator: &str, key: Option<&str>, request: CreateAuction) -> Command {
    Command::Create {
        auction_id: AUCTION_ID.into(),
        creator_id: creator.into(),
        idempotency_key: key.map(str::to_owned),
        request,
    }
}

/// Creates `request` at `stamp` by `CREATOR` with `CREATE_KEY`; panics unless it is created.
pub fn create(request: CreateAuction, stamp: StampMs) -> Auction {
    let command = create_command(CREATOR, Some(CREATE_KEY), request);
    match apply(None, None, &command, stamp).reply {
        Reply::Created {
            auction,
            replayed: false,
        } => auction,
        other => panic!("fixture create failed: {other:?}"),
    }
}

/// Scheduled at `T0`: starts at `T0 + 1 min`, ends at `T0 + 61 min`, version 1.
pub fn scheduled() -> Auction {
    create(request(), T0)
}

/// Active at `T0` (its start was a minute earlier), ends at `T0 + 61 min`, version 1.
pub fn active() -> Auction {
    active_with(request())
}

/// Like `active()` but from `request` with its start moved a minute before `T0`.
pub fn active_with(request: CreateAuction) -> Auction {
    create(
        CreateAuction {
            start_at_ms: T0 - MINUTE_MS,
            ..request
        },
        T0,
    )
}

/// `active()` paused by its creator at `T0 + 1 min`, version 2.
pub fn paused() -> Auction {
    controlled(&active(), ControlAction::Pause, T0 + MINUTE_MS)
}

/// `active()` ended by its creator at `T0 + 1 min`, version 2.
pub fn ended() -> Auction {
    controlled(&active(), ControlAction::End, T0 + MINUTE_MS)
}

/// Applies `action` by the creator; panics unless it is allowed.
pub fn controlled(auction: &Auction, action: ControlAction, stamp: StampMs) -> Auction {
    let command = control_command(action, CREATOR, false);
    match apply(Some(auction), None, &command, stamp).reply {
        Reply::Controlled(auction) => auction,
        other => panic!("fixture {action:?} failed: {other:?}"),
    }
}

pub fn control_command(action: ControlAction, user_id: &str, is_admin: bool) -> Command {
    Command::Control {
        auction_id: AUCTION_ID.into(),
        action,
        actor: Actor {
            user_id: user_id.into(),
            is_admin,
        },
    }
}

pub fn bid_command(bidder: &str, key: &str, amount: &str) -> Command {
    Command::Bid {
        auction_id: AUCTION_ID.into(),
        bid_id: format!("bid-{bidder}-{key}"),
        bidder_id: bidder.into(),
        idempotency_key: key.into(),
        amount: dec(amount),
    }
}

/// A first-time bid (no prior decision for its key).
pub fn bid(auction: &Auction, bidder: &str, key: &str, amount: &str, stamp: StampMs) -> Effects {
    apply(
        Some(auction),
        None,
        &bid_command(bidder, key, amount),
        stamp,
    )
}

/// The new decision of `effects`, checked to be what the reply carries (not a replay).
pub fn new_decision(effects: &Effects) -> &BidDecision {
    let decision = effects.decision.as_ref().expect("a new decision");
    assert_eq!(
        effects.reply,
        Reply::Bid {
            decision: decision.clone(),
            replayed: false
        }
    );
    decision
}

/// The auction after `effects` (which must hold one).
pub fn after(effects: &Effects) -> &Auction {
    effects
        .auction
        .as_ref()
        .expect("an auction after the command")
}

pub fn change(kind: ChangeKind, version: u64) -> Change {
    Change { kind, version }
}

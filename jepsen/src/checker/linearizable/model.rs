//! The sequential model the linearizability search runs: an independent re-statement of the
//! auction rules (API.md, DESIGN.md) over what clients can observe.
//!
//! Clients never see the leader's stamps, so everything that depends on time is
//! nondeterministic here: deadlines are internal steps (`TimeStart`, `TimeEnd`) the search may
//! place anywhere the status allows, and `endAt` is tracked as a range of values consistent with
//! some choice of stamps (anti-sniping and resume move it later by an amount clients cannot
//! know). Observed results then pin it down again. Deliberately not modelled: `startAt` (a start
//! sets it to an unknown stamp), `createdAt` and `endedAt`: punctuality judges times.
//!
//! Must not know: strings (bidders are interned to `Who`), HTTP, the history's layout.

use rust_decimal::Decimal;

use crate::history::{AuctionStatus, ControlAction};

/// An interned user id (bidder or creator).
pub type Who = u32;
/// An interned (bidder, idempotency key) used by more than one operation.
pub type KeyIdx = u32;

/// The values `endAt` may hold, inclusive at both ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EndAt {
    pub lo: i64,
    pub hi: i64,
}

impl EndAt {
    pub fn exactly(at: i64) -> EndAt {
        EndAt { lo: at, hi: at }
    }

    fn admits(self, at: i64) -> bool {
        self.lo <= at && at <= self.hi
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    BelowMinimum,
    NotStarted,
    Paused,
    Ended,
    SelfBid,
}

impl Reason {
    /// The API's spelling; `Err` for a reason the API does not define.
    pub fn parse(text: &str) -> Result<Reason, ()> {
        match text {
            "below_minimum" => Ok(Reason::BelowMinimum),
            "not_started" => Ok(Reason::NotStarted),
            "paused" => Ok(Reason::Paused),
            "ended" => Ok(Reason::Ended),
            "self_bid" => Ok(Reason::SelfBid),
            _ => Err(()),
        }
    }
}

/// A bid decision as the model remembers it for idempotent replays.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub reason: Option<Reason>,
    pub amount: Decimal,
    pub version: u64,
    pub price: Decimal,
    pub winner: Option<Who>,
    pub end_at: EndAt,
}

/// The mutable part of an auction.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Auction {
    pub status: AuctionStatus,
    pub version: u64,
    pub price: Decimal,
    pub winner: Option<Who>,
    pub bid_count: u64,
    pub end_at: EndAt,
}

/// The model state of one auction. `decisions` holds first decisions only for keys used by more
/// than one operation: a key used once is never consulted again, and leaving it out keeps equal
/// futures equal in the search's memo.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct State {
    pub auction: Option<Auction>,
    pub decisions: Vec<(KeyIdx, Decision)>,
}

impl State {
    pub fn decision(&self, key: KeyIdx) -> Option<&Decision> {
        self.decisions
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, d)| d)
    }

    fn remember(&mut self, key: KeyIdx, decision: Decision) {
        let at = self.decisions.partition_point(|(k, _)| *k < key);
        self.decisions.insert(at, (key, decision));
    }
}

/// What never changes after creation.
#[derive(Clone, Debug)]
pub struct Statics {
    pub creator: Who,
    pub start_price: Decimal,
    pub min_increment: Decimal,
    pub anti_sniping_ms: i64,
}

/// An auction as a client saw it (a read, a create, a control). `statics_ok` is false when the
/// immutable fields differ from the auction's, so the view can match no state at all.
#[derive(Clone, Debug)]
pub struct SeenAuction {
    pub statics_ok: bool,
    pub status: AuctionStatus,
    pub version: u64,
    pub price: Decimal,
    pub winner: Option<Who>,
    pub bid_count: u64,
    pub end_at: i64,
}

/// A bid decision as a client saw it. `reason` is `Err` for a reason the API does not define.
#[derive(Clone, Debug)]
pub struct SeenBid {
    pub accepted: bool,
    pub reason: Result<Option<Reason>, ()>,
    pub amount: Decimal,
    pub version: u64,
    pub price: Decimal,
    pub winner: Option<Who>,
    pub end_at: i64,
    pub replayed: bool,
}

#[derive(Clone, Debug)]
pub enum ControlSeen {
    Done(SeenAuction),
    NotAllowed,
}

/// One step the model can take. `None` outcomes are `info` operations: unknown result.
#[derive(Clone, Debug)]
pub enum Step {
    Create {
        seen: Option<SeenAuction>,
        end_at_ms: i64,
    },
    Bid {
        bidder: Who,
        key: Option<KeyIdx>,
        amount: Decimal,
        seen: Option<SeenBid>,
        /// For an `info` bid on a key some `ok` op also used: the decision it must have made.
        expected: Option<SeenBid>,
    },
    Read {
        seen: Option<SeenAuction>,
    },
    Control {
        action: ControlAction,
        seen: Option<ControlSeen>,
    },
    TimeStart,
    TimeEnd,
}

/// The states `step` may lead to from `state`; empty when the step's observed result is
/// impossible there. An `info` step that would change nothing yields nothing: placing it can
/// never help the search, and leaving it out is the same as it never having happened.
pub fn successors(statics: &Statics, state: &State, step: &Step) -> Vec<State> {
    let next = match step {
        Step::Create { seen, end_at_ms } => return create(statics, state, seen, *end_at_ms),
        Step::Read { seen } => read(state, seen.as_ref()),
        Step::Bid {
            bidder,
            key,
            amount,
            seen,
            expected,
        } => {
            let attempt = BidAttempt {
                bidder: *bidder,
                key: *key,
                amount: *amount,
            };
            bid(statics, state, &attempt, seen.as_ref(), expected.as_ref())
        }
        Step::Control { action, seen } => control(state, *action, seen.as_ref()),
        Step::TimeStart => by_time(state, AuctionStatus::Scheduled, AuctionStatus::Active),
        Step::TimeEnd => by_time(state, AuctionStatus::Active, AuctionStatus::Ended),
    };
    next.into_iter().collect()
}

fn create(statics: &Statics, state: &State, seen: &Option<SeenAuction>, end: i64) -> Vec<State> {
    match (&state.auction, seen) {
        // A create of an existing auction is an idempotent replay: it answers the current state.
        (Some(_), Some(seen)) => read(state, Some(seen)).into_iter().collect(),
        (Some(_), None) => Vec::new(),
        (None, None) => [AuctionStatus::Scheduled, AuctionStatus::Active]
            .into_iter()
            .map(|status| State {
                auction: Some(fresh(statics, status, EndAt::exactly(end))),
                decisions: state.decisions.clone(),
            })
            .collect(),
        (None, Some(seen)) => {
            let plausible = seen.statics_ok
                && seen.version == 1
                && matches!(
                    seen.status,
                    AuctionStatus::Scheduled | AuctionStatus::Active
                );
            if !plausible {
                return Vec::new();
            }
            let auction = fresh(statics, seen.status, EndAt::exactly(seen.end_at));
            let next = State {
                auction: Some(auction),
                decisions: state.decisions.clone(),
            };
            read(&next, Some(seen)).into_iter().collect()
        }
    }
}

fn fresh(statics: &Statics, status: AuctionStatus, end_at: EndAt) -> Auction {
    Auction {
        status,
        version: 1,
        price: statics.start_price,
        winner: None,
        bid_count: 0,
        end_at,
    }
}

/// A read: the state must show exactly what was seen; `endAt` is narrowed to the value seen.
fn read(state: &State, seen: Option<&SeenAuction>) -> Option<State> {
    let Some(seen) = seen else {
        // A 404: the auction must not exist yet.
        return state.auction.is_none().then(|| state.clone());
    };
    let auction = state.auction.as_ref()?;
    let same = seen.statics_ok
        && seen.status == auction.status
        && seen.version == auction.version
        && seen.price == auction.price
        && seen.winner == auction.winner
        && seen.bid_count == auction.bid_count
        && auction.end_at.admits(seen.end_at);
    if !same {
        return None;
    }
    let mut next = state.clone();
    if let Some(a) = next.auction.as_mut() {
        a.end_at = EndAt::exactly(seen.end_at);
    }
    Some(next)
}

fn by_time(state: &State, from: AuctionStatus, to: AuctionStatus) -> Option<State> {
    let auction = state.auction.as_ref()?;
    if auction.status != from {
        return None;
    }
    let mut next = state.clone();
    if let Some(a) = next.auction.as_mut() {
        a.status = to;
        a.version += 1;
    }
    Some(next)
}

fn control(state: &State, action: ControlAction, seen: Option<&ControlSeen>) -> Option<State> {
    let auction = state.auction.as_ref()?;
    let to = match (action, auction.status) {
        (ControlAction::Start, AuctionStatus::Scheduled) => Some(AuctionStatus::Active),
        (ControlAction::Pause, AuctionStatus::Active) => Some(AuctionStatus::Paused),
        (ControlAction::Resume, AuctionStatus::Paused) => Some(AuctionStatus::Active),
        (
            ControlAction::End,
            AuctionStatus::Scheduled | AuctionStatus::Active | AuctionStatus::Paused,
        ) => Some(AuctionStatus::Ended),
        _ => None,
    };
    let Some(to) = to else {
        // Not allowed from this status: nothing changes, so only a 409 fits.
        return matches!(seen, Some(ControlSeen::NotAllowed)).then(|| state.clone());
    };
    let mut next = state.clone();
    if let Some(a) = next.auction.as_mut() {
        a.status = to;
        a.version += 1;
        if action == ControlAction::Resume {
            // endAt moves later by the paused duration, which only the stamps know.
            a.end_at.hi = i64::MAX;
        }
    }
    match seen {
        None => Some(next),
        Some(ControlSeen::NotAllowed) => None,
        Some(ControlSeen::Done(view)) => read(&next, Some(view)),
    }
}

struct BidAttempt {
    bidder: Who,
    key: Option<KeyIdx>,
    amount: Decimal,
}

fn bid(
    statics: &Statics,
    state: &State,
    attempt: &BidAttempt,
    seen: Option<&SeenBid>,
    expected: Option<&SeenBid>,
) -> Option<State> {
    state.auction.as_ref()?;
    if let Some(prior) = attempt.key.and_then(|k| state.decision(k)) {
        // A replay changes nothing; an unknown replay is therefore never worth placing.
        let seen = seen?;
        let same = seen.replayed && prior.amount == attempt.amount && decision_admits(prior, seen);
        return same.then(|| state.clone());
    }
    let (mut next, mut decision) = decide(statics, state, attempt)?;
    // An answer marked as a replay cannot come from a fresh decision; an `info` attempt on a
    // key whose decision some `ok` attempt saw must have made exactly that decision.
    let fits = match (seen, expected) {
        (Some(seen), _) => !seen.replayed && decision_admits(&decision, seen),
        (None, Some(expected)) => decision_admits(&decision, expected),
        (None, None) => true,
    };
    if !fits {
        return None;
    }
    if let Some(seen) = seen.or(expected) {
        decision.end_at = EndAt::exactly(seen.end_at);
        if let Some(a) = next.auction.as_mut() {
            a.end_at = EndAt::exactly(seen.end_at);
        }
    }
    if let Some(key) = attempt.key {
        next.remember(key, decision);
    }
    let no_op = seen.is_none() && next == *state;
    (!no_op).then_some(next)
}

/// A fresh decision on the current state, and the state after it.
fn decide(statics: &Statics, state: &State, attempt: &BidAttempt) -> Option<(State, Decision)> {
    let mut next = state.clone();
    let auction = next.auction.as_mut()?;
    let minimum = match auction.winner {
        None => statics.start_price,
        Some(_) => auction
            .price
            .checked_add(statics.min_increment)
            .unwrap_or(Decimal::MAX),
    };
    let reason = match auction.status {
        AuctionStatus::Ended => Some(Reason::Ended),
        AuctionStatus::Scheduled => Some(Reason::NotStarted),
        AuctionStatus::Paused => Some(Reason::Paused),
        AuctionStatus::Active if attempt.bidder == statics.creator => Some(Reason::SelfBid),
        AuctionStatus::Active if attempt.amount < minimum => Some(Reason::BelowMinimum),
        AuctionStatus::Active => None,
    };
    if reason.is_none() {
        auction.price = attempt.amount;
        auction.winner = Some(attempt.bidder);
        auction.bid_count += 1;
        auction.version += 1;
        if statics.anti_sniping_ms > 0 {
            // The stamp is before the old end; the new end is max(old end, stamp + window).
            let widened = auction
                .end_at
                .hi
                .saturating_add(statics.anti_sniping_ms - 1);
            auction.end_at.hi = widened;
        }
    }
    let decision = Decision {
        reason,
        amount: attempt.amount,
        version: auction.version,
        price: auction.price,
        winner: auction.winner,
        end_at: auction.end_at,
    };
    Some((next, decision))
}

fn decision_admits(decision: &Decision, seen: &SeenBid) -> bool {
    let Ok(reason) = seen.reason else {
        return false;
    };
    seen.accepted == decision.reason.is_none()
        && reason == decision.reason
        && seen.amount == decision.amount
        && seen.version == decision.version
        && seen.price == decision.price
        && seen.winner == decision.winner
        && decision.end_at.admits(seen.end_at)
}

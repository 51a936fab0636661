//! The auction rules: a pure, synchronous state machine.
//!
//! `apply(auction, prior_decision, command, stamp)` decides one command against one auction and
//! returns the new state, the decision to log and what changed. It does no IO, never reads a
//! clock (time arrives as the leader's `stamp`), draws no random numbers and never iterates a hash
//! map, so every replica that applies the same log reaches the same bytes.
//!
//! Architecture invariant: this crate depends on nothing that can do IO. Storage looks up the
//! auction and the prior decision for an idempotency key, calls `apply`, and persists the result.
//!
//! Time is data: before any command, `advance` brings the auction's status up to the stamp
//! (scheduled -> active at `startAt`, active -> ended at the effective `endAt`). That is why a bid
//! stamped at or after the end is `ended` even when no deadline entry has been applied yet.

mod types;

#[cfg(test)]
mod tests;

pub use rust_decimal::Decimal;
pub use types::*;

/// Everything applying one command produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Effects {
    /// The auction after the command; `None` only when it does not exist and was not created.
    pub auction: Option<Auction>,
    /// Whether `auction` differs from the state passed in (so it must be written back).
    pub auction_changed: bool,
    /// A new entry for the auction's decision log (never set for an idempotent replay).
    pub decision: Option<BidDecision>,
    /// Changes viewers should hear about, oldest first.
    pub changes: Vec<Change>,
    /// Set when the auction ended by reaching its deadline: the deadline it ended at.
    pub ended_at_deadline_ms: Option<StampMs>,
    pub reply: Reply,
}

/// Applies `command` at `stamp` to `current` (the stored auction the command names, if any).
/// `prior` is the stored decision for the bid's (auction, bidder, idempotency key), if any.
pub fn apply(
    current: Option<&Auction>,
    prior: Option<&BidDecision>,
    command: &Command,
    stamp: StampMs,
) -> Effects {
    let mut effects = Effects {
        auction: current.cloned(),
        auction_changed: false,
        decision: None,
        changes: Vec::new(),
        ended_at_deadline_ms: None,
        reply: Reply::AuctionNotFound,
    };
    if let Some(auction) = effects.auction.as_mut() {
        effects.ended_at_deadline_ms = advance(auction, stamp, &mut effects.changes);
        effects.auction_changed = !effects.changes.is_empty();
    }
    effects.reply = match command {
        Command::Create {
            auction_id,
            creator_id,
            idempotency_key,
            request,
        } => create(
            &mut effects,
            auction_id,
            creator_id,
            idempotency_key,
            request,
            stamp,
        ),
        Command::Bid {
            bid_id,
            bidder_id,
            idempotency_key,
            amount,
            ..
        } => match effects.auction.as_mut() {
            None => Reply::AuctionNotFound,
            Some(auction) => {
                let bid = BidAttempt {
                    bid_id,
                    bidder_id,
                    idempotency_key,
                    amount: *amount,
                };
                let (reply, decision) = place_bid(auction, prior, bid, stamp, &mut effects.changes);
                effects.auction_changed |= decision.is_some();
                effects.decision = decision;
                reply
            }
        },
        Command::Control { action, actor, .. } => match effects.auction.as_mut() {
            None => Reply::AuctionNotFound,
            Some(auction) => match control(auction, *action, actor, stamp, &mut effects.changes) {
                Ok(()) => {
                    effects.auction_changed = true;
                    Reply::Controlled(auction.clone())
                }
                Err(rejection) => Reply::ControlRejected(rejection),
            },
        },
        Command::Deadline { .. } => Reply::DeadlineApplied(effects.auction.clone()),
    };
    effects
}

/// Brings the auction's status up to `stamp`. Returns the deadline it ended at, if it did.
pub fn advance(
    auction: &mut Auction,
    stamp: StampMs,
    changes: &mut Vec<Change>,
) -> Option<StampMs> {
    if auction.status == Status::Scheduled && stamp >= auction.start_at_ms {
        auction.status = Status::Active;
        bump(auction, ChangeKind::Status, changes);
    }
    if auction.status == Status::Active && stamp >= auction.end_at_ms {
        auction.status = Status::Ended;
        auction.ended_at_ms = Some(auction.end_at_ms);
        bump(auction, ChangeKind::Ended, changes);
        return Some(auction.end_at_ms);
    }
    None
}

/// The next instant at which time alone changes this auction's status, if any.
pub fn next_deadline_ms(auction: &Auction) -> Option<StampMs> {
    match auction.status {
        Status::Scheduled => Some(auction.start_at_ms),
        Status::Active => Some(auction.end_at_ms),
        Status::Paused | Status::Ended => None,
    }
}

fn bump(auction: &mut Auction, kind: ChangeKind, changes: &mut Vec<Change>) {
    auction.version += 1;
    changes.push(Change {
        kind,
        version: auction.version,
    });
}

fn create(
    effects: &mut Effects,
    auction_id: &str,
    creator_id: &str,
    idempotency_key: &Option<String>,
    request: &CreateAuction,
    stamp: StampMs,
) -> Reply {
    if let Some(existing) = effects.auction.as_ref() {
        let same_caller = existing.creator_id == creator_id
            && existing.create_key.is_some()
            && existing.create_key == *idempotency_key;
        return match (same_caller, existing.create_request == *request) {
            (true, true) => Reply::Created {
                auction: existing.clone(),
                replayed: true,
            },
            (true, false) => Reply::CreateRejected(CreateRejection::KeyReused),
            (false, _) => Reply::CreateRejected(CreateRejection::IdTaken),
        };
    }
    if let Err(why) = request.validate(stamp) {
        return Reply::CreateRejected(CreateRejection::Invalid(why));
    }
    let status = if stamp >= request.start_at_ms {
        Status::Active
    } else {
        Status::Scheduled
    };
    let auction = Auction {
        id: auction_id.to_owned(),
        post_id: request.post_id.clone(),
        creator_id: creator_id.to_owned(),
        status,
        start_at_ms: request.start_at_ms,
        end_at_ms: request.end_at_ms,
        start_price: request.start_price,
        min_increment: request.min_increment,
        anti_sniping_seconds: request.anti_sniping_seconds,
        current_price: request.start_price,
        current_winner_id: None,
        bid_count: 0,
        decision_count: 0,
        version: 1,
        created_at_ms: stamp,
        ended_at_ms: None,
        paused_at_ms: None,
        create_key: idempotency_key.clone(),
        create_request: request.clone(),
    };
    effects.auction = Some(auction.clone());
    effects.auction_changed = true;
    Reply::Created {
        auction,
        replayed: false,
    }
}

struct BidAttempt<'a> {
    bid_id: &'a str,
    bidder_id: &'a str,
    idempotency_key: &'a str,
    amount: Decimal,
}

/// Decides a bid. Returns the reply and the new decision-log entry (none for a replay).
fn place_bid(
    auction: &mut Auction,
    prior: Option<&BidDecision>,
    bid: BidAttempt<'_>,
    stamp: StampMs,
    changes: &mut Vec<Change>,
) -> (Reply, Option<BidDecision>) {
    if let Some(prior) = prior {
        let reply = if prior.amount == bid.amount {
            Reply::Bid {
                decision: prior.clone(),
                replayed: true,
            }
        } else {
            Reply::BidKeyReused
        };
        return (reply, None);
    }
    if auction.decision_count >= DECISIONS_PER_AUCTION_MAX {
        return (Reply::BidLimitReached, None);
    }
    let reason = rejection_reason(auction, bid.bidder_id, bid.amount);
    if reason.is_none() {
        auction.current_price = bid.amount;
        auction.current_winner_id = Some(bid.bidder_id.to_owned());
        auction.bid_count += 1;
        let anti_sniping_ms = i64::from(auction.anti_sniping_seconds) * 1000;
        if auction.end_at_ms - stamp < anti_sniping_ms {
            auction.end_at_ms = stamp.saturating_add(anti_sniping_ms);
        }
        bump(auction, ChangeKind::Bid, changes);
    }
    auction.decision_count += 1;
    let decision = BidDecision {
        seq: auction.decision_count,
        bid_id: bid.bid_id.to_owned(),
        auction_id: auction.id.clone(),
        bidder_id: bid.bidder_id.to_owned(),
        idempotency_key: bid.idempotency_key.to_owned(),
        amount: bid.amount,
        status: if reason.is_none() {
            BidStatus::Accepted
        } else {
            BidStatus::Rejected
        },
        reason,
        version: auction.version,
        current_price: auction.current_price,
        current_winner_id: auction.current_winner_id.clone(),
        end_at_ms: auction.end_at_ms,
        created_at_ms: stamp,
    };
    let reply = Reply::Bid {
        decision: decision.clone(),
        replayed: false,
    };
    (reply, Some(decision))
}

/// Why a bid on an auction already advanced to the bid's stamp is refused, if it is.
fn rejection_reason(auction: &Auction, bidder_id: &str, amount: Decimal) -> Option<RejectReason> {
    match auction.status {
        Status::Ended => return Some(RejectReason::Ended),
        Status::Scheduled => return Some(RejectReason::NotStarted),
        Status::Paused => return Some(RejectReason::Paused),
        Status::Active => {}
    }
    if bidder_id == auction.creator_id {
        return Some(RejectReason::SelfBid);
    }
    (amount < minimum_bid(auction)).then_some(RejectReason::BelowMinimum)
}

/// The smallest amount the next bid must reach.
pub fn minimum_bid(auction: &Auction) -> Decimal {
    match auction.current_winner_id {
        None => auction.start_price,
        // Saturating: the edge bounds money to 10^12, but a replica must never panic on a value
        // that slipped through; no bid can reach Decimal::MAX, so it is simply unbeatable.
        Some(_) => auction
            .current_price
            .checked_add(auction.min_increment)
            .unwrap_or(Decimal::MAX),
    }
}

fn control(
    auction: &mut Auction,
    action: ControlAction,
    actor: &Actor,
    stamp: StampMs,
    changes: &mut Vec<Change>,
) -> Result<(), ControlRejection> {
    if !actor.is_admin && actor.user_id != auction.creator_id {
        return Err(ControlRejection::Forbidden);
    }
    let from = auction.status;
    match (action, from) {
        (ControlAction::Start, Status::Scheduled) => {
            auction.status = Status::Active;
            auction.start_at_ms = stamp;
            bump(auction, ChangeKind::Status, changes);
        }
        (ControlAction::Pause, Status::Active) => {
            auction.status = Status::Paused;
            auction.paused_at_ms = Some(stamp);
            bump(auction, ChangeKind::Status, changes);
        }
        (ControlAction::Resume, Status::Paused) => {
            let paused_at_ms = auction.paused_at_ms.take().unwrap_or(stamp);
            auction.status = Status::Active;
            auction.end_at_ms = auction
                .end_at_ms
                .saturating_add(stamp.saturating_sub(paused_at_ms));
            bump(auction, ChangeKind::Status, changes);
        }
        (ControlAction::End, Status::Scheduled | Status::Active | Status::Paused) => {
            auction.status = Status::Ended;
            auction.ended_at_ms = Some(stamp);
            auction.paused_at_ms = None;
            bump(auction, ChangeKind::Ended, changes);
        }
        _ => return Err(ControlRejection::NotAllowed { action, from }),
    }
    Ok(())
}

impl CreateAuction {
    /// Checks every rule a create request must meet at `stamp` (the leader's time).
    pub fn validate(&self, stamp: StampMs) -> Result<(), String> {
        if self.post_id.is_empty() || self.post_id.len() > POST_ID_LEN_MAX {
            return Err(format!("postId must be 1-{POST_ID_LEN_MAX} bytes of UTF-8"));
        }
        if self.end_at_ms <= self.start_at_ms {
            return Err("endAt must be after startAt".into());
        }
        if self.end_at_ms <= stamp {
            return Err("endAt must be in the future".into());
        }
        // `abs_diff` because `end - start` overflows i64 for extreme inputs (a panic in debug,
        // and in release a wrap to a negative duration that would pass this check).
        if self.end_at_ms.abs_diff(self.start_at_ms) > AUCTION_DURATION_MS_MAX.unsigned_abs() {
            return Err("endAt - startAt must be at most 30 days".into());
        }
        check_money("startPrice", self.start_price)?;
        check_money("minIncrement", self.min_increment)?;
        if self.min_increment <= Decimal::ZERO {
            return Err("minIncrement must be greater than 0".into());
        }
        if self.anti_sniping_seconds > ANTI_SNIPING_SECONDS_MAX {
            return Err(format!(
                "antiSnipingSeconds must be between 0 and {ANTI_SNIPING_SECONDS_MAX}"
            ));
        }
        Ok(())
    }
}

/// The most bytes a `postId` may have.
pub const POST_ID_LEN_MAX: usize = 255;

/// Checks that `amount` is money the rules accept: 0 <= amount <= 10^12 with at most 6
/// fractional digits (trailing zeros do not count).
pub fn check_money(field: &str, amount: Decimal) -> Result<(), String> {
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(format!("{field} must not be negative"));
    }
    if amount > MONEY_MAX {
        return Err(format!("{field} must be at most 1000000000000"));
    }
    if amount.normalize().scale() > MONEY_SCALE_MAX {
        return Err(format!(
            "{field} must have at most {MONEY_SCALE_MAX} fractional digits"
        ));
    }
    Ok(())
}

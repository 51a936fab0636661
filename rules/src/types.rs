//! The auction data model: auctions, bid decisions, commands and their replies.
//!
//! Plain data with serde derives so the storage and Raft layers can persist and replicate it.
//! It knows nothing of JSON field names, HTTP or time zones: times are milliseconds since the
//! Unix epoch as stamped by the group leader, money is an exact `Decimal`.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as stamped into a log entry by the group leader.
pub type StampMs = i64;

/// The most an auction may last (`endAt - startAt`), in milliseconds: 30 days.
pub const AUCTION_DURATION_MS_MAX: i64 = 30 * 24 * 60 * 60 * 1000;
/// The largest anti-sniping extension, in seconds.
pub const ANTI_SNIPING_SECONDS_MAX: u32 = 3600;
/// The largest amount of money the rules accept (10^12).
pub const MONEY_MAX: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);
/// The most fractional digits money may carry.
pub const MONEY_SCALE_MAX: u32 = 6;
/// The most decisions one auction's log may hold; bids beyond it are refused without a decision
/// so that no auction's storage grows without bound.
pub const DECISIONS_PER_AUCTION_MAX: u64 = 1_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Status {
    Scheduled,
    Active,
    Paused,
    Ended,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Scheduled => "scheduled",
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Ended => "ended",
        }
    }
}

/// Who asks for a control action: the rules check that creators only steer their own auctions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub user_id: String,
    pub is_admin: bool,
}

/// The replicated state of one auction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auction {
    pub id: String,
    pub post_id: String,
    pub creator_id: String,
    pub status: Status,
    pub start_at_ms: StampMs,
    pub end_at_ms: StampMs,
    pub start_price: Decimal,
    pub min_increment: Decimal,
    pub anti_sniping_seconds: u32,
    /// `start_price` until the first accepted bid, then the last accepted amount.
    pub current_price: Decimal,
    pub current_winner_id: Option<String>,
    /// Accepted bids.
    pub bid_count: u64,
    /// Decisions (accepted and rejected): the `seq` of the newest one.
    pub decision_count: u64,
    pub version: u64,
    pub created_at_ms: StampMs,
    pub ended_at_ms: Option<StampMs>,
    /// Set while paused: when the pause began, so resume can shift `end_at_ms` by exactly that long.
    pub paused_at_ms: Option<StampMs>,
    /// The creator's `Idempotency-Key` for the create call, if any, and the request it came with,
    /// so a retry with the same key can be told apart from a conflicting reuse.
    pub create_key: Option<String>,
    pub create_request: CreateAuction,
}

/// The request to create an auction, as validated field by field at the edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateAuction {
    pub post_id: String,
    pub start_at_ms: StampMs,
    pub end_at_ms: StampMs,
    pub start_price: Decimal,
    pub min_increment: Decimal,
    pub anti_sniping_seconds: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BidStatus {
    Accepted,
    Rejected,
}

impl BidStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BidStatus::Accepted => "accepted",
            BidStatus::Rejected => "rejected",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RejectReason {
    BelowMinimum,
    NotStarted,
    Paused,
    Ended,
    SelfBid,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BelowMinimum => "below_minimum",
            RejectReason::NotStarted => "not_started",
            RejectReason::Paused => "paused",
            RejectReason::Ended => "ended",
            RejectReason::SelfBid => "self_bid",
        }
    }
}

/// One entry of an auction's decision log; also the whole answer to the bid, so an idempotent
/// replay rebuilds the first answer from it exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidDecision {
    /// 1-based position in the auction's decision log.
    pub seq: u64,
    pub bid_id: String,
    pub auction_id: String,
    pub bidder_id: String,
    pub idempotency_key: String,
    pub amount: Decimal,
    pub status: BidStatus,
    pub reason: Option<RejectReason>,
    /// The auction's state right after this decision.
    pub version: u64,
    pub current_price: Decimal,
    pub current_winner_id: Option<String>,
    pub end_at_ms: StampMs,
    /// The (effective) stamp of the log entry that decided it.
    pub created_at_ms: StampMs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ControlAction {
    Start,
    Pause,
    Resume,
    End,
}

/// A command as it travels in a Raft log entry. Ids are chosen by the proposer so that every
/// replica applies exactly the same thing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Create {
        auction_id: String,
        creator_id: String,
        idempotency_key: Option<String>,
        request: CreateAuction,
    },
    Bid {
        auction_id: String,
        bid_id: String,
        bidder_id: String,
        idempotency_key: String,
        amount: Decimal,
    },
    Control {
        auction_id: String,
        action: ControlAction,
        actor: Actor,
    },
    /// Proposed by the group leader when a start or end deadline is due: brings the auction's
    /// status up to the entry's stamp.
    Deadline { auction_id: String },
}

impl Command {
    pub fn auction_id(&self) -> &str {
        match self {
            Command::Create { auction_id, .. }
            | Command::Bid { auction_id, .. }
            | Command::Control { auction_id, .. }
            | Command::Deadline { auction_id } => auction_id,
        }
    }
}

/// Why a create request is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CreateRejection {
    #[error("{0}")]
    Invalid(String),
    /// The same creator reused the same `Idempotency-Key` with a different request.
    #[error("the Idempotency-Key was already used with a different request")]
    KeyReused,
    /// Another creator's auction already holds this id (a key collision across creators).
    #[error("the auction id is already taken")]
    IdTaken,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ControlRejection {
    #[error("only the auction's creator or an admin may do this")]
    Forbidden,
    #[error("cannot {action:?} an auction that is {from:?}")]
    NotAllowed { action: ControlAction, from: Status },
}

/// What applying a command answers the client who proposed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Created {
        auction: Auction,
        replayed: bool,
    },
    CreateRejected(CreateRejection),
    Bid {
        decision: BidDecision,
        replayed: bool,
    },
    /// Same (auction, bidder, key) with a different amount.
    BidKeyReused,
    /// The auction's decision log is full (`DECISIONS_PER_AUCTION_MAX`).
    BidLimitReached,
    Controlled(Auction),
    ControlRejected(ControlRejection),
    /// Deadline applied; carries the auction's state afterwards.
    DeadlineApplied(Option<Auction>),
    AuctionNotFound,
}

/// A change a viewer should hear about, in the order it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChangeKind {
    /// An accepted bid.
    Bid,
    /// Start, pause or resume.
    Status,
    /// The auction ended (by deadline or by hand).
    Ended,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// The auction's version right after this change.
    pub version: u64,
}

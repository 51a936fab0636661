//! Property tests of the auction rules: random command sequences go through `apply` against a
//! tiny in-memory stand-in for storage, and every step is checked against API.md's rules and
//! DESIGN.md's invariants 1, 2, 3, 5 and 6, plus determinism (the same log, the same state).
//!
//! This file owns the generators, the storage stand-in (`Store`) and the oracle (`Checker`). The
//! oracle restates the rules from the documents; it never calls the rules to predict them.
//!
//! Seeds and replay. Each run prints `PROPTEST_RNG_SEED=<n>` (shown by `cargo test` when a test
//! fails) next to proptest's own report of the minimal failing input, and proptest stores the
//! failing case in `tests/properties.proptest-regressions`, which later runs try first (commit
//! that file to keep the case). To replay or widen a run:
//!
//! ```text
//! PROPTEST_RNG_SEED=<n> cargo test -p gavel-rules --test properties
//! PROPTEST_CASES=10000 cargo test -p gavel-rules --test properties
//! ```

use std::collections::BTreeMap;

use gavel_rules::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError};

/// Cases per property unless `PROPTEST_CASES` says otherwise (a few seconds in debug builds).
const CASES_DEFAULT: u32 = 256;
/// The most commands in one generated sequence.
const STEPS_MAX: usize = 80;
/// How far back a retry may reach among the creates and bids already sent.
const RETRY_BACK_MAX: usize = 8;
/// Creators and bidders are drawn from the same few users, so creators bid on their own auctions.
const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
const AUCTIONS: [&str; 3] = ["a0", "a1", "a2"];
/// A small pool so that idempotency keys are reused, with the same amount and with another.
const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const T0: StampMs = 1_700_000_000_000;
/// Every generated time is a multiple of this, so stamps often land exactly on `startAt` and
/// `endAt` (the boundaries where off-by-one bugs live).
const GRID_MS: i64 = 500;

type KeyScope = (String, String, String);

fn config() -> Config {
    // `Config::default()` has already read the PROPTEST_* environment variables.
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = CASES_DEFAULT;
    }
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(fresh_seed());
    }
    if config.failure_persistence.is_some() {
        config.failure_persistence = Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        )));
    }
    eprintln!(
        "gavel-rules properties: PROPTEST_RNG_SEED={} PROPTEST_CASES={}",
        config.rng_seed, config.cases
    );
    config
}

/// A seed from the std hasher's per-process random keys: no clock, no extra dependency.
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0x6761_7665_6c00_u64)
}

// ---------------------------------------------------------------------------------------------
// Generated input.

/// A create request, relative to the stamp it is sent at; some shapes are invalid on purpose.
#[derive(Clone, Debug)]
struct Shape {
    start_offset_ms: i64,
    duration_ms: i64,
    start_price_cents: i64,
    min_increment_tenths: i64,
    anti_sniping_seconds: u32,
}

#[derive(Clone, Debug)]
enum Amount {
    /// The auction's current minimum plus this many half increments (may be negative).
    NearMinimum(i64),
    /// An absolute amount in cents, so that a retry can repeat it.
    Cents(i64),
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        auction: usize,
        creator: usize,
        key: Option<usize>,
        shape: Shape,
    },
    Bid {
        auction: usize,
        bidder: usize,
        key: usize,
        amount: Amount,
    },
    /// Sends again, verbatim, one of the last creates or bids.
    Retry {
        back: usize,
    },
    Control {
        auction: usize,
        action: ControlAction,
        actor: usize,
        is_admin: bool,
    },
    Deadline {
        auction: usize,
    },
}

#[derive(Clone, Debug)]
struct Step {
    /// How much later than the previous command this one is stamped (stamps never go back).
    wait_ms: i64,
    op: Op,
}

fn shape() -> impl Strategy<Value = Shape> {
    let times = (-60_i64..60, -2_i64..360);
    let money = (0_i64..2_000, 0_i64..20);
    (times, money, 0_u32..=60).prop_map(|((start, duration), (cents, tenths), anti)| Shape {
        start_offset_ms: start * GRID_MS,
        duration_ms: duration * GRID_MS,
        start_price_cents: cents,
        min_increment_tenths: tenths,
        anti_sniping_seconds: anti,
    })
}

fn amount() -> impl Strategy<Value = Amount> {
    prop_oneof![
        3 => (-2_i64..=3).prop_map(Amount::NearMinimum),
        1 => (0_i64..4_000).prop_map(Amount::Cents),
    ]
}

fn action() -> impl Strategy<Value = ControlAction> {
    prop_oneof![
        Just(ControlAction::Start),
        Just(ControlAction::Pause),
        Just(ControlAction::Resume),
        Just(ControlAction::End),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let auction = || 0..AUCTIONS.len();
    let user = || 0..USERS.len();
    prop_oneof![
        1 => (auction(), user(), proptest::option::of(0..KEYS.len()), shape()).prop_map(
            |(auction, creator, key, shape)| Op::Create { auction, creator, key, shape }
        ),
        8 => (auction(), user(), 0..KEYS.len(), amount()).prop_map(
            |(auction, bidder, key, amount)| Op::Bid { auction, bidder, key, amount }
        ),
        3 => (0..RETRY_BACK_MAX).prop_map(|back| Op::Retry { back }),
        3 => (auction(), action(), user(), proptest::bool::weighted(0.2)).prop_map(
            |(auction, action, actor, is_admin)| Op::Control { auction, action, actor, is_admin }
        ),
        1 => auction().prop_map(|auction| Op::Deadline { auction }),
    ]
}

fn wait_ms() -> impl Strategy<Value = i64> {
    let grid = prop_oneof![4 => Just(0_i64), 4 => 0_i64..4, 1 => 0_i64..60];
    grid.prop_map(|steps| steps * GRID_MS)
}

/// Opens with a create of every id (so most commands find an auction), then anything.
fn steps() -> impl Strategy<Value = Vec<Step>> {
    let opening = (0..USERS.len(), proptest::option::of(0..KEYS.len()), shape());
    let openings = proptest::collection::vec(opening, AUCTIONS.len());
    let step = (wait_ms(), op()).prop_map(|(wait_ms, op)| Step { wait_ms, op });
    let rest = proptest::collection::vec(step, 1..=STEPS_MAX - AUCTIONS.len());
    (openings, rest).prop_map(|(openings, rest)| {
        let creates = openings
            .into_iter()
            .enumerate()
            .map(|(auction, (creator, key, shape))| Step {
                wait_ms: 0,
                op: Op::Create {
                    auction,
                    creator,
                    key,
                    shape,
                },
            });
        creates.chain(rest).collect()
    })
}

// ---------------------------------------------------------------------------------------------
// What storage does, reduced to three maps.

#[derive(Clone, Debug, Default, PartialEq)]
struct Store {
    auctions: BTreeMap<String, Auction>,
    /// (auction, bidder, key) -> the first decision.
    decisions: BTreeMap<KeyScope, BidDecision>,
    /// Each auction's decision log, in `seq` order.
    logs: BTreeMap<String, Vec<BidDecision>>,
}

impl Store {
    fn apply(&mut self, command: &Command, stamp: StampMs) -> Effects {
        let id = command.auction_id().to_owned();
        let scope = key_scope(command);
        let prior = scope.as_ref().and_then(|scope| self.decisions.get(scope));
        let effects = apply(self.auctions.get(&id), prior, command, stamp);
        if let (true, Some(auction)) = (effects.auction_changed, &effects.auction) {
            self.auctions.insert(id.clone(), auction.clone());
        }
        if let (Some(decision), Some(scope)) = (&effects.decision, scope) {
            self.decisions.insert(scope, decision.clone());
            self.logs.entry(id).or_default().push(decision.clone());
        }
        effects
    }
}

fn key_scope(command: &Command) -> Option<KeyScope> {
    match command {
        Command::Bid {
            auction_id,
            bidder_id,
            idempotency_key,
            ..
        } => Some((
            auction_id.clone(),
            bidder_id.clone(),
            idempotency_key.clone(),
        )),
        _ => None,
    }
}

/// One applied command, with the stored auction it met.
#[derive(Clone, Debug, PartialEq)]
struct Entry {
    command: Command,
    stamp: StampMs,
    before: Option<Auction>,
    effects: Effects,
}

/// Turns the generated steps into commands (amounts depend on the state met) and applies them.
fn run(steps: &[Step]) -> (Store, Vec<Entry>) {
    let mut store = Store::default();
    let mut sent: Vec<Command> = Vec::new();
    let mut entries = Vec::with_capacity(steps.len());
    let mut stamp = T0;
    for (index, step) in steps.iter().enumerate() {
        stamp += step.wait_ms;
        let command = command_for(&store, &sent, index, stamp, &step.op);
        if matches!(command, Command::Create { .. } | Command::Bid { .. }) {
            sent.push(command.clone());
        }
        let before = store.auctions.get(command.auction_id()).cloned();
        let effects = store.apply(&command, stamp);
        entries.push(Entry {
            command,
            stamp,
            before,
            effects,
        });
    }
    (store, entries)
}

fn command_for(store: &Store, sent: &[Command], index: usize, stamp: StampMs, op: &Op) -> Command {
    match op {
        Op::Create {
            auction,
            creator,
            key,
            shape,
        } => {
            let start_at_ms = stamp + shape.start_offset_ms;
            Command::Create {
                auction_id: AUCTIONS[*auction].into(),
                creator_id: USERS[*creator].into(),
                idempotency_key: key.map(|key| KEYS[key].to_owned()),
                request: CreateAuction {
                    post_id: format!("post-{index}"),
                    start_at_ms,
                    end_at_ms: start_at_ms + shape.duration_ms,
                    start_price: Decimal::new(shape.start_price_cents, 2),
                    min_increment: Decimal::new(shape.min_increment_tenths, 1),
                    anti_sniping_seconds: shape.anti_sniping_seconds,
                },
            }
        }
        Op::Bid {
            auction,
            bidder,
            key,
            amount,
        } => {
            let amount = match (amount, store.auctions.get(AUCTIONS[*auction])) {
                (Amount::NearMinimum(halves), Some(current)) => {
                    minimum_bid(current) + current.min_increment * Decimal::new(halves * 5, 1)
                }
                (Amount::NearMinimum(_), None) => Decimal::TEN,
                (Amount::Cents(cents), _) => Decimal::new(*cents, 2),
            };
            Command::Bid {
                auction_id: AUCTIONS[*auction].into(),
                bid_id: format!("bid-{index}"),
                bidder_id: USERS[*bidder].into(),
                idempotency_key: KEYS[*key].into(),
                amount,
            }
        }
        Op::Retry { back } => match sent.len() {
            0 => Command::Deadline {
                auction_id: AUCTIONS[0].into(),
            },
            len => sent[len - 1 - back % len].clone(),
        },
        Op::Control {
            auction,
            action,
            actor,
            is_admin,
        } => Command::Control {
            auction_id: AUCTIONS[*auction].into(),
            action: *action,
            actor: Actor {
                user_id: USERS[*actor].into(),
                is_admin: *is_admin,
            },
        },
        Op::Deadline { auction } => Command::Deadline {
            auction_id: AUCTIONS[*auction].into(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// The oracle: API.md and DESIGN.md restated.

/// The status time alone gives `auction` at `stamp` (scheduled until `startAt`, active until the
/// effective `endAt`, a paused clock stands still), with the changes on the way, oldest first.
fn by_time(auction: &Auction, stamp: StampMs) -> (Status, Vec<ChangeKind>) {
    let mut status = auction.status;
    let mut kinds = Vec::new();
    if status == Status::Scheduled && stamp >= auction.start_at_ms {
        status = Status::Active;
        kinds.push(ChangeKind::Status);
    }
    if status == Status::Active && stamp >= auction.end_at_ms {
        status = Status::Ended;
        kinds.push(ChangeKind::Ended);
    }
    (status, kinds)
}

/// `before` with only time applied: what every command that decides nothing must leave.
fn timed(before: &Auction, stamp: StampMs) -> Auction {
    let (status, kinds) = by_time(before, stamp);
    let mut expected = before.clone();
    expected.status = status;
    expected.version += kinds.len() as u64;
    if kinds.contains(&ChangeKind::Ended) {
        expected.ended_at_ms = Some(before.end_at_ms);
    }
    expected
}

/// What the oracle remembers from the answers it has seen (never from the store).
#[derive(Default)]
struct Checker {
    /// (auction, bidder, key) -> the first decision answered for it.
    first: BTreeMap<KeyScope, BidDecision>,
    /// Accepted bids per auction, oldest first: (bidder, amount).
    accepted: BTreeMap<String, Vec<(String, Decimal)>>,
    /// Decisions per auction.
    decisions: BTreeMap<String, u64>,
    /// When the current pause of each auction began.
    paused_at_ms: BTreeMap<String, StampMs>,
}

fn check_run(steps: &[Step]) -> Result<(), TestCaseError> {
    let (store, entries) = run(steps);
    let mut checker = Checker::default();
    for (index, entry) in entries.iter().enumerate() {
        checker
            .check(entry)
            .map_err(|e| TestCaseError::fail(format!("step {index} {entry:#?}: {e}")))?;
    }
    prop_assert_eq!(
        &store.decisions,
        &checker.first,
        "invariant 6: stored first decisions"
    );
    for (auction_id, log) in &store.logs {
        let seqs: Vec<u64> = log.iter().map(|d| d.seq).collect();
        let expected: Vec<u64> = (1..=log.len() as u64).collect();
        prop_assert_eq!(seqs, expected, "decision log of {} is 1..n", auction_id);
    }
    Ok(())
}

impl Checker {
    fn check(&mut self, entry: &Entry) -> Result<(), TestCaseError> {
        let Entry {
            command,
            stamp,
            before,
            effects,
        } = entry;
        prop_assert_eq!(
            effects.auction_changed,
            effects.auction.as_ref() != before.as_ref(),
            "auction_changed says whether the state differs"
        );
        let Some(before) = before else {
            return self.check_missing(command, *stamp, effects);
        };
        let (_, time_kinds) = by_time(before, *stamp);
        let command_kind = match command {
            Command::Create {
                creator_id,
                idempotency_key,
                request,
                ..
            } => check_create_existing(before, creator_id, idempotency_key, request, entry)?,
            Command::Bid { .. } => self.check_bid(before, entry)?,
            Command::Control { action, actor, .. } => {
                self.check_control(before, *action, actor, entry)?
            }
            Command::Deadline { .. } => {
                prop_assert_eq!(
                    &effects.reply,
                    &Reply::DeadlineApplied(effects.auction.clone())
                );
                prop_assert_eq!(effects.auction.as_ref(), Some(&timed(before, *stamp)));
                None
            }
        };
        let after = effects.auction.as_ref().expect("an existing auction stays");
        check_versions(before, after, &time_kinds, command_kind, effects)?;
        self.check_chain(after)
    }

    /// A command naming an auction that does not exist: only a valid create makes one.
    fn check_missing(
        &mut self,
        command: &Command,
        stamp: StampMs,
        effects: &Effects,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(&effects.decision, &None);
        prop_assert_eq!(&effects.changes, &vec![]);
        prop_assert_eq!(effects.ended_at_deadline_ms, None);
        match command {
            Command::Create {
                auction_id,
                creator_id,
                idempotency_key,
                request,
            } => match request.validate(stamp) {
                Ok(()) => {
                    let created = effects.auction.clone().expect("created");
                    let expected =
                        fresh_auction(auction_id, creator_id, idempotency_key, request, stamp);
                    prop_assert_eq!(&created, &expected);
                    prop_assert_eq!(
                        &effects.reply,
                        &Reply::Created {
                            auction: created.clone(),
                            replayed: false
                        }
                    );
                    self.check_chain(&created)
                }
                Err(why) => {
                    prop_assert_eq!(
                        &effects.reply,
                        &Reply::CreateRejected(CreateRejection::Invalid(why))
                    );
                    prop_assert_eq!(&effects.auction, &None);
                    Ok(())
                }
            },
            Command::Deadline { .. } => {
                prop_assert_eq!(&effects.reply, &Reply::DeadlineApplied(None));
                Ok(())
            }
            Command::Bid { .. } | Command::Control { .. } => {
                prop_assert_eq!(&effects.reply, &Reply::AuctionNotFound);
                Ok(())
            }
        }
    }

    /// Checks a bid on an existing auction; returns the change it adds after time's, if any.
    fn check_bid(
        &mut self,
        before: &Auction,
        entry: &Entry,
    ) -> Result<Option<ChangeKind>, TestCaseError> {
        let Entry {
            command,
            stamp,
            effects,
            ..
        } = entry;
        let Command::Bid {
            auction_id,
            bid_id,
            bidder_id,
            idempotency_key,
            amount,
        } = command
        else {
            unreachable!("check_bid is given bids only")
        };
        let scope = key_scope(command).expect("a bid has a key scope");
        if let Some(first) = self.first.get(&scope) {
            check_replay(first, *amount, before, entry)?;
            return Ok(None);
        }
        let decision = effects.decision.clone().expect("a first bid is decided");
        prop_assert_eq!(
            &effects.reply,
            &Reply::Bid {
                decision: decision.clone(),
                replayed: false
            }
        );
        let after = effects.auction.as_ref().expect("the auction stays");
        let reason = self.expected_reason(before, bidder_id, *amount, *stamp);
        let seq = self.decisions.entry(auction_id.clone()).or_default();
        *seq += 1;
        let expected = BidDecision {
            seq: *seq,
            bid_id: bid_id.clone(),
            auction_id: auction_id.clone(),
            bidder_id: bidder_id.clone(),
            idempotency_key: idempotency_key.clone(),
            amount: *amount,
            status: match reason {
                None => BidStatus::Accepted,
                Some(_) => BidStatus::Rejected,
            },
            reason,
            version: after.version,
            current_price: after.current_price,
            current_winner_id: after.current_winner_id.clone(),
            end_at_ms: after.end_at_ms,
            created_at_ms: *stamp,
        };
        prop_assert_eq!(&decision, &expected, "the decision and the state after it");
        self.first.insert(scope, decision);
        if reason.is_none() {
            self.accepted
                .entry(auction_id.clone())
                .or_default()
                .push((bidder_id.clone(), *amount));
        }
        check_decided(before, after, reason.is_none(), bidder_id, *amount, *stamp)?;
        Ok(reason.is_none().then_some(ChangeKind::Bid))
    }

    /// API.md's acceptance rule, with the floor taken from the accepted bids seen so far.
    fn expected_reason(
        &self,
        before: &Auction,
        bidder_id: &str,
        amount: Decimal,
        stamp: StampMs,
    ) -> Option<RejectReason> {
        let floor = match self.accepted.get(&before.id).and_then(|bids| bids.last()) {
            None => before.start_price,
            Some((_, last)) => *last + before.min_increment,
        };
        match by_time(before, stamp).0 {
            Status::Scheduled => Some(RejectReason::NotStarted),
            Status::Paused => Some(RejectReason::Paused),
            Status::Ended => Some(RejectReason::Ended),
            Status::Active if bidder_id == before.creator_id => Some(RejectReason::SelfBid),
            Status::Active if amount < floor => Some(RejectReason::BelowMinimum),
            Status::Active => None,
        }
    }

    /// Checks a control action; returns the change it adds after time's, if any.
    fn check_control(
        &mut self,
        before: &Auction,
        action: ControlAction,
        actor: &Actor,
        entry: &Entry,
    ) -> Result<Option<ChangeKind>, TestCaseError> {
        let Entry { stamp, effects, .. } = entry;
        let stamp = *stamp;
        let after = effects.auction.as_ref().expect("the auction stays");
        let mut expected = timed(before, stamp);
        if !actor.is_admin && actor.user_id != before.creator_id {
            let forbidden = Reply::ControlRejected(ControlRejection::Forbidden);
            prop_assert_eq!(&effects.reply, &forbidden);
            prop_assert_eq!(after, &expected);
            return Ok(None);
        }
        let from = expected.status;
        let to = match (action, from) {
            (ControlAction::Start, Status::Scheduled) => Status::Active,
            (ControlAction::Pause, Status::Active) => Status::Paused,
            (ControlAction::Resume, Status::Paused) => Status::Active,
            (ControlAction::End, Status::Scheduled | Status::Active | Status::Paused) => {
                Status::Ended
            }
            _ => {
                let rejection = ControlRejection::NotAllowed { action, from };
                prop_assert_eq!(&effects.reply, &Reply::ControlRejected(rejection));
                prop_assert_eq!(after, &expected);
                return Ok(None);
            }
        };
        prop_assert_eq!(&effects.reply, &Reply::Controlled(after.clone()));
        expected.status = to;
        expected.version += 1;
        match action {
            ControlAction::Start => expected.start_at_ms = stamp,
            ControlAction::Pause => {
                expected.paused_at_ms = Some(stamp);
                self.paused_at_ms.insert(before.id.clone(), stamp);
            }
            ControlAction::Resume => {
                let paused_at_ms = self.paused_at_ms.remove(&before.id).expect("was paused");
                expected.end_at_ms += stamp - paused_at_ms;
                expected.paused_at_ms = None;
            }
            ControlAction::End => {
                expected.ended_at_ms = Some(stamp);
                expected.paused_at_ms = None;
                self.paused_at_ms.remove(&before.id);
            }
        }
        prop_assert_eq!(after, &expected, "{:?} from {:?}", action, from);
        Ok(Some(match to {
            Status::Ended => ChangeKind::Ended,
            _ => ChangeKind::Status,
        }))
    }

    /// Invariants 1 and 2 against the accepted bids the oracle has seen, plus the counters.
    fn check_chain(&self, auction: &Auction) -> Result<(), TestCaseError> {
        let empty = Vec::new();
        let accepted = self.accepted.get(&auction.id).unwrap_or(&empty);
        let mut floor = auction.start_price;
        for (_, amount) in accepted {
            prop_assert!(*amount >= floor, "invariant 1: {} below {}", amount, floor);
            floor = *amount + auction.min_increment;
        }
        let (price, winner) = match accepted.last() {
            None => (auction.start_price, None),
            Some((bidder, amount)) => (*amount, Some(bidder.clone())),
        };
        prop_assert_eq!(auction.current_price, price, "invariant 2: currentPrice");
        prop_assert_eq!(&auction.current_winner_id, &winner, "invariant 2: winner");
        prop_assert_eq!(auction.bid_count, accepted.len() as u64, "bidCount");
        let decisions = self.decisions.get(&auction.id).copied().unwrap_or(0);
        prop_assert_eq!(auction.decision_count, decisions, "decision count");
        prop_assert_eq!(
            auction.status == Status::Paused,
            auction.paused_at_ms.is_some(),
            "paused_at is set exactly while paused"
        );
        prop_assert_eq!(
            auction.status == Status::Ended,
            auction.ended_at_ms.is_some(),
            "ended_at is set exactly once ended"
        );
        Ok(())
    }
}

/// Invariant 6: a key seen before answers its first decision (or refuses another amount) and
/// changes nothing but what time does.
fn check_replay(
    first: &BidDecision,
    amount: Decimal,
    before: &Auction,
    entry: &Entry,
) -> Result<(), TestCaseError> {
    let effects = &entry.effects;
    let expected = if first.amount == amount {
        Reply::Bid {
            decision: first.clone(),
            replayed: true,
        }
    } else {
        Reply::BidKeyReused
    };
    prop_assert_eq!(&effects.reply, &expected, "invariant 6");
    prop_assert_eq!(&effects.decision, &None);
    prop_assert_eq!(effects.auction.as_ref(), Some(&timed(before, entry.stamp)));
    Ok(())
}

/// The state after a new decision: a rejection only counts it; an accepted bid also moves the
/// price and winner and applies anti-sniping. Checks invariant 3 for accepted bids.
fn check_decided(
    before: &Auction,
    after: &Auction,
    accepted: bool,
    bidder_id: &str,
    amount: Decimal,
    stamp: StampMs,
) -> Result<(), TestCaseError> {
    let mut expected = timed(before, stamp);
    expected.decision_count += 1;
    if !accepted {
        prop_assert_eq!(
            after,
            &expected,
            "a rejection changes only the decision count"
        );
        return Ok(());
    }
    // Invariant 3: accepted only inside [startAt, effective endAt) and never while paused.
    prop_assert!(stamp >= before.start_at_ms, "invariant 3: before startAt");
    prop_assert!(stamp < before.end_at_ms, "invariant 3: at or after endAt");
    prop_assert!(
        matches!(before.status, Status::Scheduled | Status::Active),
        "invariant 3: accepted while {:?}",
        before.status
    );
    let anti_sniping_ms = i64::from(before.anti_sniping_seconds) * 1000;
    if before.end_at_ms - stamp < anti_sniping_ms {
        expected.end_at_ms = stamp + anti_sniping_ms;
    }
    expected.current_price = amount;
    expected.current_winner_id = Some(bidder_id.to_owned());
    expected.bid_count += 1;
    expected.version += 1;
    prop_assert_eq!(after, &expected, "an accepted bid");
    Ok(())
}

/// A create on an id that exists: a replay of the same (creator, key, request), or a refusal.
fn check_create_existing(
    before: &Auction,
    creator_id: &str,
    idempotency_key: &Option<String>,
    request: &CreateAuction,
    entry: &Entry,
) -> Result<Option<ChangeKind>, TestCaseError> {
    let effects = &entry.effects;
    let after = timed(before, entry.stamp);
    let same_caller = before.creator_id == creator_id
        && idempotency_key.is_some()
        && before.create_key == *idempotency_key;
    let expected = match (same_caller, before.create_request == *request) {
        (true, true) => Reply::Created {
            auction: after.clone(),
            replayed: true,
        },
        (true, false) => Reply::CreateRejected(CreateRejection::KeyReused),
        (false, _) => Reply::CreateRejected(CreateRejection::IdTaken),
    };
    prop_assert_eq!(&effects.reply, &expected);
    prop_assert_eq!(effects.auction.as_ref(), Some(&after));
    prop_assert_eq!(&effects.decision, &None);
    Ok(None)
}

fn fresh_auction(
    auction_id: &str,
    creator_id: &str,
    idempotency_key: &Option<String>,
    request: &CreateAuction,
    stamp: StampMs,
) -> Auction {
    Auction {
        id: auction_id.to_owned(),
        post_id: request.post_id.clone(),
        creator_id: creator_id.to_owned(),
        status: if stamp >= request.start_at_ms {
            Status::Active
        } else {
            Status::Scheduled
        },
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
    }
}

/// Invariant 5: the version moves by exactly one per change, and `changes` lists each bump in
/// order (time's first, then the command's). An end by time reports the deadline it ended at.
fn check_versions(
    before: &Auction,
    after: &Auction,
    time_kinds: &[ChangeKind],
    command_kind: Option<ChangeKind>,
    effects: &Effects,
) -> Result<(), TestCaseError> {
    let kinds: Vec<ChangeKind> = time_kinds.iter().copied().chain(command_kind).collect();
    let expected: Vec<Change> = kinds
        .iter()
        .zip(before.version + 1..)
        .map(|(kind, version)| Change {
            kind: *kind,
            version,
        })
        .collect();
    prop_assert_eq!(&effects.changes, &expected, "invariant 5: changes");
    prop_assert_eq!(
        after.version,
        before.version + kinds.len() as u64,
        "invariant 5: version"
    );
    let ended_by_time = time_kinds.contains(&ChangeKind::Ended);
    prop_assert_eq!(
        effects.ended_at_deadline_ms,
        ended_by_time.then_some(before.end_at_ms),
        "ended_at_deadline_ms"
    );
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    /// Every step keeps the rules and invariants 1, 2, 3, 5 and 6.
    #[test]
    fn random_sequences_keep_the_invariants(steps in steps()) {
        check_run(&steps)?;
    }

    /// The same steps give the same log and state; and replaying that log (the concrete commands
    /// with their stamps) on a fresh store, as another replica would, gives the same bytes.
    #[test]
    fn the_same_log_gives_the_same_state(steps in steps()) {
        let (store, entries) = run(&steps);
        prop_assert_eq!(&run(&steps), &(store.clone(), entries.clone()));
        let mut replica = Store::default();
        for entry in &entries {
            prop_assert_eq!(&replica.apply(&entry.command, entry.stamp), &entry.effects);
        }
        prop_assert_eq!(replica, store);
    }
}

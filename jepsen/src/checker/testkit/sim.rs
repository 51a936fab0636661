//! `simulate`: one hot auction under ~20 concurrent bidders for about a minute, run through an
//! independent concrete model of the rules with real stamps (the linearization points), and
//! recorded as the history a correct cluster would give: overlapping operations, `info`
//! timeouts that did or did not take effect, retries with the same key, pauses, anti-sniping,
//! 409s, stale local reads, two stream viewers (one coalescing) and three identical replicas.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::{Builder, Done, Rng, STARTED_WALL_MS};
use crate::history::{
    AuctionStatus, AuctionView, BidRecord, BidStatus, BidView, Call, ControlAction, FrameKind,
    History, OpResult, StreamEvent, StreamWhat,
};

pub const AUCTION_ID: &str = "hot";
const BIDDERS: u64 = 20;
const READER: u64 = 21;
const LOCAL_READER: u64 = 22;
const CREATOR: u64 = 0;
/// How long processes keep issuing operations, in microseconds.
const RUN_US: u64 = 65_000_000;
const US_PER_MS: u64 = 1_000;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Create,
    Bid { first: Option<usize> },
    Read,
    LocalRead,
    Control(ControlAction),
}

#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Ok,
    /// Timed out; `applied` says whether it took effect; `recorded` whether the timeout was.
    Info {
        applied: bool,
        recorded: bool,
    },
}

struct Slot {
    process: u64,
    kind: Kind,
    invoke_us: u64,
    lin_us: u64,
    done_us: u64,
    fate: Fate,
}

/// Generates the hot-auction history for `seed`.
pub fn simulate(seed: u64) -> History {
    let mut rng = Rng::new(seed);
    let slots = schedule(&mut rng);
    let mut world = World::new(&mut rng);
    world.run(&slots);
    world.finish(&slots)
}

fn schedule(rng: &mut Rng) -> Vec<Slot> {
    let mut slots = Vec::new();
    let at = |ms: u64| ms * US_PER_MS;
    for (kind, invoke_ms) in [
        (Kind::Create, 0),
        (Kind::Control(ControlAction::Start), 5_000),
        (Kind::Control(ControlAction::Pause), 20_000),
        (Kind::Control(ControlAction::Resume), 24_000),
        (Kind::Control(ControlAction::End), 75_000),
    ] {
        let invoke_us = at(invoke_ms) + 100;
        slots.push(Slot {
            process: CREATOR,
            kind,
            invoke_us,
            lin_us: invoke_us + rng.range(200, 30_000),
            done_us: invoke_us + 40_000,
            fate: Fate::Ok,
        });
    }
    for process in 1..=BIDDERS {
        process_loop(rng, &mut slots, process, (100_000, 500_000));
    }
    process_loop(rng, &mut slots, READER, (30_000, 120_000));
    process_loop(rng, &mut slots, LOCAL_READER, (500_000, 1_000_000));
    slots
}

/// One client process: operations back to back, each invoked after the previous completed.
fn process_loop(rng: &mut Rng, slots: &mut Vec<Slot>, process: u64, think_us: (u64, u64)) {
    // Clients learn the auction id from the create, answered within 40 ms.
    let mut t = 50_000 + rng.range(0, 500_000);
    let mut pending_retry: Option<usize> = None;
    while t < RUN_US {
        let lin_us = t + rng.range(200, 80_000);
        let done_us = lin_us + rng.range(200, 80_000);
        let kind = match process {
            READER => Kind::Read,
            LOCAL_READER => Kind::LocalRead,
            _ => Kind::Bid {
                first: pending_retry.take(),
            },
        };
        let last = done_us + think_us.1 >= RUN_US;
        let fate = if kind != Kind::Read && rng.chance(25) {
            Fate::Info {
                applied: rng.chance(500),
                recorded: !(last && rng.chance(500)),
            }
        } else {
            Fate::Ok
        };
        if let (Kind::Bid { first }, Fate::Info { .. }) = (kind, fate) {
            pending_retry = Some(first.unwrap_or(slots.len()));
        }
        slots.push(Slot {
            process,
            kind,
            invoke_us: t,
            lin_us,
            done_us,
            fate,
        });
        let timeout_us = if matches!(fate, Fate::Info { .. }) {
            1_000_000
        } else {
            0
        };
        t = done_us + timeout_us + rng.range(think_us.0, think_us.1);
    }
}

/// The concrete auction with real stamps, its decision log and who watches it.
struct World<'r> {
    rng: &'r mut Rng,
    auction: Option<AuctionView>,
    paused_at_ms: Option<i64>,
    decisions: HashMap<(String, String), BidView>,
    log: Vec<BidRecord>,
    old_views: Vec<AuctionView>,
    calls: Vec<Option<Call>>,
    results: Vec<Option<OpResult>>,
    viewers: Vec<Viewer>,
    streams: Vec<StreamEvent>,
}

struct Viewer {
    id: u64,
    connect_us: u64,
    coalescing: bool,
    open: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Event {
    Timer,
    Tick,
    Connect(usize),
    Op(usize),
}

impl<'r> World<'r> {
    fn new(rng: &'r mut Rng) -> World<'r> {
        World {
            rng,
            auction: None,
            paused_at_ms: None,
            decisions: HashMap::new(),
            log: Vec::new(),
            old_views: Vec::new(),
            calls: Vec::new(),
            results: Vec::new(),
            viewers: vec![
                Viewer {
                    id: 1,
                    connect_us: 500_000,
                    coalescing: false,
                    open: false,
                },
                Viewer {
                    id: 2,
                    connect_us: 40_000_000,
                    coalescing: true,
                    open: false,
                },
            ],
            streams: Vec::new(),
        }
    }

    fn run(&mut self, slots: &[Slot]) {
        self.calls = vec![None; slots.len()];
        self.results = vec![None; slots.len()];
        let mut events: Vec<(u64, Event)> = Vec::new();
        let timers_us = (0..(RUN_US + 20_000_000) / 500_000).map(|i| i * 500_000 + 250);
        events.extend(timers_us.map(|t| (t, Event::Timer)));
        events.extend((1..80).map(|s| (s * 1_000_000 + 300, Event::Tick)));
        events.extend(
            self.viewers
                .iter()
                .enumerate()
                .map(|(i, v)| (v.connect_us, Event::Connect(i))),
        );
        events.extend(
            slots
                .iter()
                .enumerate()
                .map(|(i, s)| (s.lin_us, Event::Op(i))),
        );
        events.sort_by_key(|(t, _)| *t);
        for (t, event) in events {
            let stamp = STARTED_WALL_MS + (t / US_PER_MS) as i64;
            self.advance(stamp, t);
            match event {
                Event::Timer => {}
                Event::Tick => self.publish(FrameKind::Tick, t),
                Event::Connect(i) => self.connect(i, t),
                Event::Op(i) => self.apply(slots, i, stamp, t),
            }
        }
    }

    /// The rules' `advance`: time moves the status on at this stamp.
    fn advance(&mut self, stamp: i64, t: u64) {
        let Some(a) = self.auction.as_mut() else {
            return;
        };
        if a.status == AuctionStatus::Scheduled && stamp >= a.start_at_ms {
            a.status = AuctionStatus::Active;
            a.version += 1;
            self.changed(FrameKind::Status, t);
        }
        let Some(a) = self.auction.as_mut() else {
            return;
        };
        if a.status == AuctionStatus::Active && stamp >= a.end_at_ms {
            a.status = AuctionStatus::Ended;
            a.ended_at_ms = Some(a.end_at_ms);
            a.version += 1;
            self.changed(FrameKind::Ended, t);
        }
    }

    fn changed(&mut self, kind: FrameKind, t: u64) {
        if let Some(a) = self.auction.clone() {
            self.old_views.push(a);
        }
        self.publish(kind, t);
    }

    fn apply(&mut self, slots: &[Slot], i: usize, stamp: i64, t: u64) {
        let slot = &slots[i];
        let applied = matches!(slot.fate, Fate::Ok | Fate::Info { applied: true, .. });
        let (call, result) = match slot.kind {
            Kind::Create => self.create(stamp),
            Kind::Bid { first } => self.bid(i, first, applied, stamp, t),
            Kind::Read | Kind::LocalRead => self.read(slot.kind == Kind::LocalRead),
            Kind::Control(action) => self.control(action, applied, stamp, t),
        };
        self.calls[i] = Some(call);
        self.results[i] = result;
    }

    fn create(&mut self, stamp: i64) -> (Call, Option<OpResult>) {
        let view = AuctionView {
            id: AUCTION_ID.into(),
            post_id: "post-hot".into(),
            creator_id: "seller".into(),
            status: AuctionStatus::Scheduled,
            start_at_ms: STARTED_WALL_MS + 2_000,
            end_at_ms: STARTED_WALL_MS + 50_000,
            start_price: Decimal::new(100, 0),
            min_increment: Decimal::new(5, 1),
            anti_sniping_s: 3,
            current_price: Decimal::new(100, 0),
            winner: None,
            bid_count: 0,
            version: 1,
            created_at_ms: stamp,
            ended_at_ms: None,
        };
        let call = super::create_call("post-hot", Some("create-1"), &view);
        self.auction = Some(view.clone());
        self.old_views.push(view.clone());
        (call, Some(OpResult::Auction(view)))
    }

    fn bid(
        &mut self,
        i: usize,
        first: Option<usize>,
        applied: bool,
        stamp: i64,
        t: u64,
    ) -> (Call, Option<OpResult>) {
        let call = match first.and_then(|f| self.calls[f].clone()) {
            Some(Call::Bid {
                auction_id,
                bidder,
                key,
                amount,
                ..
            }) => Call::Bid {
                auction_id,
                bidder,
                key,
                amount,
                retry_of: first.map(|f| f as u64 + 1),
            },
            _ => self.fresh_bid(i),
        };
        let Call::Bid {
            bidder,
            key,
            amount,
            ..
        } = &call
        else {
            panic!("test invariant: a bid call");
        };
        if !applied {
            return (call, None);
        }
        let id = (bidder.clone(), key.clone());
        if let Some(prior) = self.decisions.get(&id) {
            let replay = BidView {
                replayed: true,
                ..prior.clone()
            };
            return (call, Some(OpResult::Bid(replay)));
        }
        let view = self.decide(bidder, *amount, stamp, t);
        self.decisions.insert(id, view.clone());
        (call, Some(OpResult::Bid(view)))
    }

    fn fresh_bid(&mut self, i: usize) -> Call {
        let (price, step, has_winner) = self
            .auction
            .as_ref()
            .map_or((Decimal::ZERO, Decimal::ONE, false), |a| {
                (a.current_price, a.min_increment, a.winner.is_some())
            });
        let steps = [-1i64, 0, 1, 1, 2, 3][self.rng.range(0, 6) as usize];
        let base = if has_winner { price + step } else { price };
        let amount = (base + step * Decimal::from(steps)).max(Decimal::ZERO);
        let bidder = if self.rng.chance(10) {
            "seller".to_owned()
        } else {
            format!("b{}", self.rng.range(1, BIDDERS + 1))
        };
        Call::Bid {
            auction_id: AUCTION_ID.into(),
            bidder,
            key: format!("k{}", i + 1),
            amount,
            retry_of: None,
        }
    }

    /// The rules' bid decision at `stamp` (the auction is already advanced to it).
    fn decide(&mut self, bidder: &str, amount: Decimal, stamp: i64, t: u64) -> BidView {
        let Some(a) = self.auction.as_mut() else {
            panic!("test invariant: bids come after the create");
        };
        let minimum = if a.winner.is_some() {
            a.current_price + a.min_increment
        } else {
            a.start_price
        };
        let reason = match a.status {
            AuctionStatus::Ended => Some("ended"),
            AuctionStatus::Scheduled => Some("not_started"),
            AuctionStatus::Paused => Some("paused"),
            AuctionStatus::Active if bidder == a.creator_id => Some("self_bid"),
            AuctionStatus::Active if amount < minimum => Some("below_minimum"),
            AuctionStatus::Active => None,
        };
        if reason.is_none() {
            a.current_price = amount;
            a.winner = Some(bidder.to_owned());
            a.bid_count += 1;
            a.version += 1;
            let window_ms = i64::from(a.anti_sniping_s) * 1000;
            if a.end_at_ms - stamp < window_ms {
                a.end_at_ms = stamp + window_ms;
            }
        }
        let view = BidView {
            status: if reason.is_none() {
                BidStatus::Accepted
            } else {
                BidStatus::Rejected
            },
            reason: reason.map(str::to_owned),
            bid_id: format!("bid-{}", self.log.len() + 1),
            amount,
            current_price: a.current_price,
            winner: a.winner.clone(),
            version: a.version,
            end_at_ms: a.end_at_ms,
            replayed: false,
        };
        self.log.push(BidRecord {
            bid_id: view.bid_id.clone(),
            bidder: bidder.to_owned(),
            amount,
            status: view.status,
            reason: view.reason.clone(),
            version: view.version,
            created_at_ms: stamp,
            seq: self.log.len() as u64 + 1,
        });
        if reason.is_none() {
            self.changed(FrameKind::Bid, t);
        }
        view
    }

    fn read(&mut self, local: bool) -> (Call, Option<OpResult>) {
        let call = Call::Read {
            auction_id: AUCTION_ID.into(),
            local,
        };
        let view = if local {
            // A lagging replica: a few versions behind.
            let back = self.rng.range(0, 4) as usize;
            self.old_views
                .iter()
                .rev()
                .nth(back)
                .or(self.old_views.last())
                .cloned()
        } else {
            self.auction.clone()
        };
        (
            call,
            Some(view.map_or(OpResult::NotFound, OpResult::Auction)),
        )
    }

    fn control(
        &mut self,
        action: ControlAction,
        applied: bool,
        stamp: i64,
        t: u64,
    ) -> (Call, Option<OpResult>) {
        let call = Call::Control {
            auction_id: AUCTION_ID.into(),
            action,
        };
        let Some(a) = self.auction.as_mut() else {
            return (call, None);
        };
        if !applied {
            return (call, None);
        }
        let allowed = matches!(
            (action, a.status),
            (ControlAction::Start, AuctionStatus::Scheduled)
                | (ControlAction::Pause, AuctionStatus::Active)
                | (ControlAction::Resume, AuctionStatus::Paused)
                | (
                    ControlAction::End,
                    AuctionStatus::Scheduled | AuctionStatus::Active | AuctionStatus::Paused
                )
        );
        if !allowed {
            return (call, Some(OpResult::ControlNotAllowed));
        }
        let (status, kind) = match action {
            ControlAction::Start => {
                a.start_at_ms = stamp;
                (AuctionStatus::Active, FrameKind::Status)
            }
            ControlAction::Pause => {
                self.paused_at_ms = Some(stamp);
                (AuctionStatus::Paused, FrameKind::Status)
            }
            ControlAction::Resume => {
                a.end_at_ms += stamp - self.paused_at_ms.take().unwrap_or(stamp);
                (AuctionStatus::Active, FrameKind::Status)
            }
            ControlAction::End => {
                a.ended_at_ms = Some(stamp);
                self.paused_at_ms = None;
                (AuctionStatus::Ended, FrameKind::Ended)
            }
        };
        a.status = status;
        a.version += 1;
        let view = a.clone();
        self.changed(kind, t);
        (call, Some(OpResult::Auction(view)))
    }

    /// Sends the current state to every open viewer (a coalescing viewer skips some).
    fn publish(&mut self, kind: FrameKind, t: u64) {
        let Some(a) = self.auction.clone() else {
            return;
        };
        if kind == FrameKind::Tick && a.status == AuctionStatus::Ended {
            return;
        }
        for v in 0..self.viewers.len() {
            if !self.viewers[v].open {
                continue;
            }
            let skip = self.viewers[v].coalescing
                && matches!(kind, FrameKind::Bid | FrameKind::Status | FrameKind::Tick)
                && self.rng.chance(300);
            if !skip {
                self.frame(v, kind, &a, t);
            }
            if kind == FrameKind::Ended {
                self.close(v, t);
            }
        }
    }

    fn frame(&mut self, v: usize, kind: FrameKind, a: &AuctionView, t: u64) {
        let mut f = super::frame(kind, a);
        f.server_time_ms = STARTED_WALL_MS + (t / US_PER_MS) as i64;
        self.stream(v, t, StreamWhat::Frame(f));
    }

    fn stream(&mut self, v: usize, t: u64, what: StreamWhat) {
        self.streams.push(StreamEvent {
            viewer: self.viewers[v].id,
            node: 1 + self.viewers[v].id % 3,
            auction_id: AUCTION_ID.into(),
            time_ns: (t + 500) * 1_000,
            wall_ms: STARTED_WALL_MS + (t / US_PER_MS) as i64,
            what,
        });
    }

    fn close(&mut self, v: usize, t: u64) {
        self.viewers[v].open = false;
        let what = StreamWhat::Closed {
            clean: true,
            reason: "ended".into(),
        };
        self.stream(v, t, what);
    }

    fn connect(&mut self, v: usize, t: u64) {
        let Some(a) = self.auction.clone() else {
            return;
        };
        self.stream(v, t, StreamWhat::Connected);
        self.frame(v, FrameKind::Snapshot, &a, t);
        self.viewers[v].open = true;
        if a.status == AuctionStatus::Ended {
            self.frame(v, FrameKind::Ended, &a, t);
            self.close(v, t);
        }
    }

    fn finish(self, slots: &[Slot]) -> History {
        let mut builder = Builder::new();
        builder.history.meta.max_clock_offset_ms = 250;
        builder.history.meta.end_sla_ms = 2_000;
        for (i, slot) in slots.iter().enumerate() {
            let call = self.calls[i]
                .clone()
                .expect("test invariant: every slot was applied");
            let ns = |us: u64| us * US_PER_MS;
            let done = match (slot.fate, self.results[i].clone()) {
                (
                    Fate::Info {
                        recorded: false, ..
                    },
                    _,
                ) => Done::Never,
                (Fate::Info { .. }, _) => Done::Info(ns(slot.done_us + 1_000_000)),
                (Fate::Ok, Some(result)) => Done::Ok(ns(slot.done_us), result),
                (Fate::Ok, None) => Done::Fail(ns(slot.done_us)),
            };
            // `op_ns` numbers operations 1, 2, ... in this order, as `retry_of` assumes.
            let op_id = builder.op_ns(slot.process, call, slot.invoke_us * US_PER_MS, done);
            assert_eq!(op_id, i as u64 + 1, "test invariant: op ids follow slots");
        }
        builder.history.streams = self.streams;
        let auction = self.auction.clone().into_iter().collect::<Vec<_>>();
        builder.replicas(&[1, 2, 3], &auction, &[(AUCTION_ID, self.log.clone())]);
        builder.history.final_state.wall_ms =
            STARTED_WALL_MS + ((RUN_US + 20_000_000) / US_PER_MS) as i64;
        builder.history
    }
}

//! Test helpers for the checkers, in one place: a small seeded RNG, builders for hand-made
//! histories (good and bad), and `simulate`, which runs an independent concrete model of one
//! hot auction with real stamps and records the valid history a correct cluster could produce.
//! Test code only: panics here are test failures.

use std::str::FromStr;

use rust_decimal::Decimal;

use crate::history::{
    AuctionStatus, AuctionView, BidRecord, BidStatus, BidView, Call, FinalState, History, Meta,
    NemesisEvent, NemesisPhase, NodeId, OpEvent, OpResult, Phase, ReplicaState, StreamEvent,
    StreamFrame, StreamWhat,
};

/// The harness wall clock at the start of every test history.
pub const STARTED_WALL_MS: i64 = 1_700_000_000_000;
/// Nanoseconds per millisecond, for `time_ns`.
pub const NS_PER_MS: u64 = 1_000_000;

pub fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("test literal is a decimal")
}

/// SplitMix64: tiny, seedable, good enough to shuffle test histories.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// True with probability `per_mille` / 1000.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.range(0, 1000) < per_mille
    }
}

/// The seed from `JEPSEN_CHECKER_SEED`, else a fresh one; printed either way for replay.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("JEPSEN_CHECKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            (nanos as u64) ^ 0x5EED
        });
    println!("{test}: seed {seed} (replay with JEPSEN_CHECKER_SEED={seed})");
    seed
}

/// How an operation ended, with the completion time in ms since the start.
// Test data built a handful at a time: the size of the `Ok` variant does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Done {
    Ok(u64, OpResult),
    Fail(u64),
    Info(u64),
    Never,
}

/// Builds a history by hand; times are milliseconds since the start of the run.
pub struct Builder {
    pub history: History,
    next_op: u64,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    pub fn new() -> Builder {
        Builder {
            history: History {
                meta: Meta {
                    scenario: "test".into(),
                    seed: 0,
                    nodes: vec![1, 2, 3],
                    max_clock_offset_ms: 100,
                    end_sla_ms: 1000,
                    started_wall_ms: STARTED_WALL_MS,
                },
                ops: Vec::new(),
                nemesis: Vec::new(),
                streams: Vec::new(),
                final_state: FinalState::default(),
            },
            next_op: 1,
        }
    }

    /// Records an operation (invoke at `invoke_ms`, then its completion); returns its op id.
    pub fn op(&mut self, process: u64, call: Call, invoke_ms: u64, done: Done) -> u64 {
        self.record(process, call, invoke_ms * NS_PER_MS, done, NS_PER_MS)
    }

    /// As `op`, with the invoke and the completion (`done`) in nanoseconds.
    pub fn op_ns(&mut self, process: u64, call: Call, invoke_ns: u64, done: Done) -> u64 {
        self.record(process, call, invoke_ns, done, 1)
    }

    fn record(
        &mut self,
        process: u64,
        call: Call,
        invoke_ns: u64,
        done: Done,
        unit_ns: u64,
    ) -> u64 {
        let op_id = self.next_op;
        self.next_op += 1;
        let event = |phase, time_ns: u64, result, error| OpEvent {
            process,
            op_id,
            phase,
            time_ns,
            wall_ms: STARTED_WALL_MS + (time_ns / NS_PER_MS) as i64,
            node: 1 + process % 3,
            call: call.clone(),
            result,
            error,
        };
        self.history
            .ops
            .push(event(Phase::Invoke, invoke_ns, None, None));
        let completion = match done {
            Done::Ok(at, result) => Some(event(Phase::Ok, at * unit_ns, Some(result), None)),
            Done::Fail(at) => Some(event(Phase::Fail, at * unit_ns, None, Some("503".into()))),
            Done::Info(at) => Some(event(
                Phase::Info,
                at * unit_ns,
                None,
                Some("timeout".into()),
            )),
            Done::Never => None,
        };
        self.history.ops.extend(completion);
        op_id
    }

    pub fn nemesis(&mut self, at_ms: u64, phase: NemesisPhase, fault: &str) {
        self.history.nemesis.push(NemesisEvent {
            time_ns: at_ms * NS_PER_MS,
            wall_ms: STARTED_WALL_MS + at_ms as i64,
            phase,
            fault: fault.into(),
            detail: String::new(),
            nodes: vec![1],
        });
    }

    pub fn frame(&mut self, viewer: u64, at_ms: u64, auction_id: &str, frame: StreamFrame) {
        self.history.streams.push(StreamEvent {
            viewer,
            node: 1,
            auction_id: auction_id.into(),
            time_ns: at_ms * NS_PER_MS,
            wall_ms: STARTED_WALL_MS + at_ms as i64,
            what: StreamWhat::Frame(frame),
        });
    }

    /// Sets the same final replica (these auctions and logs) on every node of `nodes`.
    pub fn replicas(
        &mut self,
        nodes: &[NodeId],
        auctions: &[AuctionView],
        logs: &[(&str, Vec<BidRecord>)],
    ) {
        let replica = ReplicaState {
            auctions: auctions.iter().map(|a| (a.id.clone(), a.clone())).collect(),
            bid_logs: logs
                .iter()
                .map(|(id, log)| ((*id).to_owned(), log.clone()))
                .collect(),
            digests: [(0, (10, 42))].into_iter().collect(),
            unreadable: None,
        };
        for node in nodes {
            self.history
                .final_state
                .nodes
                .insert(*node, replica.clone());
        }
        self.history.final_state.wall_ms = STARTED_WALL_MS + 120_000;
    }

    pub fn build(self) -> History {
        self.history
    }
}

pub fn create_call(post_id: &str, key: Option<&str>, view: &AuctionView) -> Call {
    Call::Create {
        key: key.map(str::to_owned),
        post_id: post_id.into(),
        start_at_ms: view.start_at_ms,
        end_at_ms: view.end_at_ms,
        start_price: view.start_price,
        min_increment: view.min_increment,
        anti_sniping_s: view.anti_sniping_s,
    }
}

pub fn bid_call(auction_id: &str, bidder: &str, key: &str, amount: &str) -> Call {
    Call::Bid {
        auction_id: auction_id.into(),
        bidder: bidder.into(),
        key: key.into(),
        amount: dec(amount),
        retry_of: None,
    }
}

pub fn read_call(auction_id: &str) -> Call {
    Call::Read {
        auction_id: auction_id.into(),
        local: false,
    }
}

/// An auction "a1" by "seller", active from the start, 10.00 + 1.00, ending 60 s in.
pub fn auction(id: &str) -> AuctionView {
    AuctionView {
        id: id.into(),
        post_id: format!("post-{id}"),
        creator_id: "seller".into(),
        status: AuctionStatus::Active,
        start_at_ms: STARTED_WALL_MS,
        end_at_ms: STARTED_WALL_MS + 60_000,
        start_price: dec("10"),
        min_increment: dec("1"),
        anti_sniping_s: 0,
        current_price: dec("10"),
        winner: None,
        bid_count: 0,
        version: 1,
        created_at_ms: STARTED_WALL_MS,
        ended_at_ms: None,
    }
}

/// The auction `base` after these accepted bids (bidder, amount), each one version.
pub fn after_bids(base: &AuctionView, bids: &[(&str, &str)]) -> AuctionView {
    let mut view = base.clone();
    for (bidder, amount) in bids {
        view.current_price = dec(amount);
        view.winner = Some((*bidder).to_owned());
        view.bid_count += 1;
        view.version += 1;
    }
    view
}

/// A decision as answered: `reason` `None` means accepted; price and winner after it.
pub fn bid_view(bid_id: &str, amount: &str, reason: Option<&str>, after: &AuctionView) -> BidView {
    BidView {
        status: if reason.is_none() {
            BidStatus::Accepted
        } else {
            BidStatus::Rejected
        },
        reason: reason.map(str::to_owned),
        bid_id: bid_id.into(),
        amount: dec(amount),
        current_price: after.current_price,
        winner: after.winner.clone(),
        version: after.version,
        end_at_ms: after.end_at_ms,
        replayed: false,
    }
}

pub fn record(seq: u64, view: &BidView, bidder: &str) -> BidRecord {
    BidRecord {
        bid_id: view.bid_id.clone(),
        bidder: bidder.into(),
        amount: view.amount,
        status: view.status,
        reason: view.reason.clone(),
        version: view.version,
        created_at_ms: STARTED_WALL_MS + seq as i64,
        seq,
    }
}

pub fn frame(kind: crate::history::FrameKind, view: &AuctionView) -> StreamFrame {
    StreamFrame {
        kind,
        status: view.status,
        current_price: view.current_price,
        winner: view.winner.clone(),
        version: view.version,
        end_at_ms: view.end_at_ms,
        server_time_ms: STARTED_WALL_MS,
    }
}

pub mod sim;

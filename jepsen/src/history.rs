//! The recorded history of one run, in Jepsen's shape: every client operation is an `invoke`
//! followed by exactly one completion, `ok` (it took effect, with its result), `fail` (it
//! certainly did not take effect) or `info` (unknown: it may or may not have taken effect).
//! Nemesis faults and the frames stream viewers received are recorded beside the operations,
//! and the state read from every replica after the final heal closes the history.
//!
//! Times: `time_ns` is the monotonic clock of the harness since the run started (orders events
//! in real time); `wall_ms` is the harness's own wall clock, which no nemesis skews (the
//! reference against which a skewed node's stamps are judged). Money is exact (`Decimal`).
//!
//! This module is plain data: it knows nothing of HTTP, processes or checkers. A history is
//! written as JSON lines: one `Record` per line, the `Meta` first and the `Final` last.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type WallMs = i64;
/// A node's id in the cluster (1-based).
pub type NodeId = u64;

/// One line of a history file. Lines are few and short-lived: their sizes need not match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum Record {
    Meta(Meta),
    Op(OpEvent),
    Nemesis(NemesisEvent),
    Stream(StreamEvent),
    Final(FinalState),
}

/// What the run was: enough to replay it and to judge it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub scenario: String,
    pub seed: u64,
    pub nodes: Vec<NodeId>,
    /// The bound on clock offsets the cluster was configured with (`--max-clock-offset-ms`);
    /// punctuality is judged with it.
    pub max_clock_offset_ms: i64,
    /// How long after its end (once a quorum is up) an auction must read `ended`.
    pub end_sla_ms: i64,
    /// The harness's wall clock when the run started.
    pub started_wall_ms: WallMs,
}

/// Jepsen's op types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One event of a client operation. The invoke and its completion share `process` and `op_id`;
/// a process has at most one operation outstanding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpEvent {
    pub process: u64,
    /// Unique per operation in the run; the invoke and its completion carry the same id.
    pub op_id: u64,
    pub phase: Phase,
    pub time_ns: u64,
    pub wall_ms: WallMs,
    /// The node the request was sent to.
    pub node: NodeId,
    pub call: Call,
    /// Set on `ok` completions only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<OpResult>,
    /// On `fail` and `info`: what went wrong (HTTP status and problem type, or the IO error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Call {
    /// `POST /auctions`, with or without an `Idempotency-Key`. The workload tags every create
    /// with a unique `post_id`, which is how a create that answered `info` or `fail` is found
    /// (or not) in the final state.
    Create {
        key: Option<String>,
        post_id: String,
        start_at_ms: WallMs,
        end_at_ms: WallMs,
        start_price: Decimal,
        min_increment: Decimal,
        anti_sniping_s: u32,
    },
    /// `POST /auctions/{id}/bids`. A retry of an earlier attempt repeats bidder, key and amount
    /// and names the first attempt's `op_id` in `retry_of`.
    Bid {
        auction_id: String,
        bidder: String,
        key: String,
        amount: Decimal,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_of: Option<u64>,
    },
    /// `GET /auctions/{id}`, linearizable unless `local` (`?consistency=local`).
    Read { auction_id: String, local: bool },
    /// `POST /auctions/{id}/{start|pause|resume|end}`.
    Control {
        auction_id: String,
        action: ControlAction,
    },
}

impl Call {
    pub fn auction_id(&self) -> Option<&str> {
        match self {
            Call::Create { .. } => None,
            Call::Bid { auction_id, .. }
            | Call::Read { auction_id, .. }
            | Call::Control { auction_id, .. } => Some(auction_id),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlAction {
    Start,
    Pause,
    Resume,
    End,
}

/// The result of an `ok` operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpResult {
    /// A create (201) or a control action (200), or a read: the auction as answered.
    Auction(AuctionView),
    /// A bid decision (200), accepted or rejected, as answered.
    Bid(BidView),
    /// A control action refused because of the auction's status (409): nothing changed, but the
    /// refusal says something about the state, so it is an `ok` with this result.
    ControlNotAllowed,
    /// A read of an auction that does not exist (404).
    NotFound,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuctionStatus {
    Scheduled,
    Active,
    Paused,
    Ended,
}

/// An auction as the API renders it (API.md "Auctions"), times in epoch milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionView {
    pub id: String,
    pub post_id: String,
    pub creator_id: String,
    pub status: AuctionStatus,
    pub start_at_ms: WallMs,
    pub end_at_ms: WallMs,
    pub start_price: Decimal,
    pub min_increment: Decimal,
    pub anti_sniping_s: u32,
    pub current_price: Decimal,
    pub winner: Option<String>,
    pub bid_count: u64,
    pub version: u64,
    pub created_at_ms: WallMs,
    pub ended_at_ms: Option<WallMs>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BidStatus {
    Accepted,
    Rejected,
}

/// A bid decision as answered to the bidder (API.md "POST /auctions/{id}/bids").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidView {
    pub status: BidStatus,
    /// `below_minimum`, `not_started`, `paused`, `ended` or `self_bid`; `None` when accepted.
    pub reason: Option<String>,
    pub bid_id: String,
    pub amount: Decimal,
    pub current_price: Decimal,
    pub winner: Option<String>,
    pub version: u64,
    pub end_at_ms: WallMs,
    /// The answer carried `Idempotent-Replayed: true`.
    pub replayed: bool,
}

/// One entry of an auction's decision log (`GET /auctions/{id}/bids?status=all`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BidRecord {
    pub bid_id: String,
    pub bidder: String,
    pub amount: Decimal,
    pub status: BidStatus,
    pub reason: Option<String>,
    pub version: u64,
    pub created_at_ms: WallMs,
    pub seq: u64,
}

/// A fault the nemesis started or healed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NemesisEvent {
    pub time_ns: u64,
    pub wall_ms: WallMs,
    pub phase: NemesisPhase,
    /// What kind of fault, e.g. `partition-leader`, `kill`, `pause`, `clock-skew`, `membership`.
    pub fault: String,
    /// Human-readable detail: which nodes, which halves, which offset.
    pub detail: String,
    /// The nodes the fault touched.
    pub nodes: Vec<NodeId>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisPhase {
    Start,
    Stop,
}

/// Something one stream viewer saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamEvent {
    /// Unique per viewer connection: a viewer that reconnects gets a new id.
    pub viewer: u64,
    pub node: NodeId,
    pub auction_id: String,
    pub time_ns: u64,
    pub wall_ms: WallMs,
    pub what: StreamWhat,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum StreamWhat {
    /// The connection opened.
    Connected,
    /// A frame arrived.
    Frame(StreamFrame),
    /// The connection closed, cleanly after `ended` or because of an error.
    Closed { clean: bool, reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrameKind {
    Snapshot,
    Bid,
    Status,
    Tick,
    Ended,
}

/// One live-update frame (API.md "Live updates").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFrame {
    pub kind: FrameKind,
    pub status: AuctionStatus,
    pub current_price: Decimal,
    pub winner: Option<String>,
    pub version: u64,
    pub end_at_ms: WallMs,
    pub server_time_ms: WallMs,
}

/// What every replica holds after the final heal and recovery window, read with
/// `consistency=local` from each node so that each replica is judged on its own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FinalState {
    pub wall_ms: WallMs,
    pub nodes: BTreeMap<NodeId, ReplicaState>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicaState {
    /// Every auction this replica knows, by id.
    pub auctions: BTreeMap<String, AuctionView>,
    /// Every auction's whole decision log (`status=all`), by auction id.
    pub bid_logs: BTreeMap<String, Vec<BidRecord>>,
    /// Per Raft group: (applied index, state digest) as `/cluster` reports this replica.
    pub digests: BTreeMap<u32, (u64, u64)>,
    /// Set when this replica could not be read completely; convergence is then unknown for it.
    pub unreadable: Option<String>,
}

/// A whole run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub meta: Meta,
    pub ops: Vec<OpEvent>,
    pub nemesis: Vec<NemesisEvent>,
    pub streams: Vec<StreamEvent>,
    pub final_state: FinalState,
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("line {line}: {message}")]
    Parse { line: usize, message: String },
    #[error("the history has no meta record")]
    NoMeta,
    #[error("the history has no final state")]
    NoFinal,
}

impl History {
    /// Reads a JSON-lines history, as written by `to_json_lines`.
    pub fn from_json_lines(text: &str) -> Result<History, HistoryError> {
        let mut meta = None;
        let mut final_state = None;
        let (mut ops, mut nemesis, mut streams) = (Vec::new(), Vec::new(), Vec::new());
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: Record = serde_json::from_str(line).map_err(|e| HistoryError::Parse {
                line: index + 1,
                message: e.to_string(),
            })?;
            match record {
                Record::Meta(m) => meta = Some(m),
                Record::Op(op) => ops.push(op),
                Record::Nemesis(n) => nemesis.push(n),
                Record::Stream(s) => streams.push(s),
                Record::Final(f) => final_state = Some(f),
            }
        }
        Ok(History {
            meta: meta.ok_or(HistoryError::NoMeta)?,
            ops,
            nemesis,
            streams,
            final_state: final_state.ok_or(HistoryError::NoFinal)?,
        })
    }

    /// One JSON object per line: the meta, then every event in time order, then the final state.
    pub fn to_json_lines(&self) -> String {
        let mut records: Vec<(u64, Record)> = Vec::new();
        records.extend(self.ops.iter().map(|o| (o.time_ns, Record::Op(o.clone()))));
        records.extend(
            self.nemesis
                .iter()
                .map(|n| (n.time_ns, Record::Nemesis(n.clone()))),
        );
        records.extend(
            self.streams
                .iter()
                .map(|s| (s.time_ns, Record::Stream(s.clone()))),
        );
        records.sort_by_key(|(time, _)| *time);
        let mut out = String::new();
        let mut push = |record: &Record| {
            // Serializing plain data with string keys cannot fail.
            if let Ok(line) = serde_json::to_string(record) {
                out.push_str(&line);
                out.push('\n');
            }
        };
        push(&Record::Meta(self.meta.clone()));
        for (_, record) in &records {
            push(record);
        }
        push(&Record::Final(self.final_state.clone()));
        out
    }

    /// Pairs each invoke with its completion, in invoke order. An invoke without a completion
    /// (the run ended first) is paired with `None` and must be treated as `info`.
    pub fn operations(&self) -> Vec<Operation<'_>> {
        let mut by_id: BTreeMap<u64, usize> = BTreeMap::new();
        let mut out: Vec<Operation<'_>> = Vec::new();
        for event in &self.ops {
            match event.phase {
                Phase::Invoke => {
                    by_id.insert(event.op_id, out.len());
                    out.push(Operation {
                        invoke: event,
                        completion: None,
                    });
                }
                _ => {
                    if let Some(&at) = by_id.get(&event.op_id) {
                        out[at].completion = Some(event);
                    }
                }
            }
        }
        out
    }
}

/// An invoke and its completion.
#[derive(Clone, Copy, Debug)]
pub struct Operation<'a> {
    pub invoke: &'a OpEvent,
    pub completion: Option<&'a OpEvent>,
}

impl Operation<'_> {
    /// `ok`, `fail` or `info` (an operation that never completed is `info`).
    pub fn outcome(&self) -> Phase {
        self.completion.map_or(Phase::Info, |c| c.phase)
    }

    /// The result, for an `ok` operation.
    pub fn result(&self) -> Option<&OpResult> {
        self.completion.and_then(|c| c.result.as_ref())
    }

    /// When the operation completed; `u64::MAX` when it never did (it may take effect at any
    /// time after its invoke).
    pub fn completed_ns(&self) -> u64 {
        match self.completion {
            Some(c) if c.phase != Phase::Info => c.time_ns,
            _ => u64::MAX,
        }
    }
}

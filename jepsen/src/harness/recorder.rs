//! Records a run as it happens: every operation's invoke and completion, every fault, every
//! stream frame, stamped with the harness's monotonic time since the run began and its wall
//! clock (which no nemesis skews). Shared by every worker task; appends only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gavel_jepsen::history::{
    Call, NemesisEvent, NemesisPhase, OpEvent, OpResult, Phase, StreamEvent, StreamWhat, WallMs,
};

use crate::harness::NodeId;

#[derive(Default)]
struct Recorded {
    ops: Vec<OpEvent>,
    nemesis: Vec<NemesisEvent>,
    streams: Vec<StreamEvent>,
}

#[derive(Clone)]
pub struct Recorder {
    started: Instant,
    next_op: Arc<AtomicU64>,
    recorded: Arc<Mutex<Recorded>>,
}

pub fn wall_ms() -> WallMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// An invoked operation waiting for its completion.
pub struct Pending {
    invoke: OpEvent,
}

impl Pending {
    pub fn op_id(&self) -> u64 {
        self.invoke.op_id
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            started: Instant::now(),
            next_op: Arc::new(AtomicU64::new(1)),
            recorded: Arc::default(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn push(&self, apply: impl FnOnce(&mut Recorded)) {
        // A poisoned lock means a worker panicked mid-push; the vectors are still whole.
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        apply(&mut recorded);
    }

    pub fn invoke(&self, process: u64, node: NodeId, call: Call) -> Pending {
        let invoke = OpEvent {
            process,
            op_id: self.next_op.fetch_add(1, Ordering::Relaxed),
            phase: Phase::Invoke,
            time_ns: self.now_ns(),
            wall_ms: wall_ms(),
            node,
            call,
            result: None,
            error: None,
        };
        self.push(|r| r.ops.push(invoke.clone()));
        Pending { invoke }
    }

    pub fn complete(&self, pending: Pending, outcome: &Outcome) {
        let (phase, result, error) = match outcome {
            Outcome::Ok(result) => (Phase::Ok, Some(result.clone()), None),
            Outcome::Fail(why) => (Phase::Fail, None, Some(why.clone())),
            Outcome::Info(why) => (Phase::Info, None, Some(why.clone())),
        };
        let event = OpEvent {
            phase,
            time_ns: self.now_ns(),
            wall_ms: wall_ms(),
            result,
            error,
            ..pending.invoke
        };
        self.push(|r| r.ops.push(event));
    }

    pub fn nemesis(&self, phase: NemesisPhase, fault: &str, detail: String, nodes: Vec<NodeId>) {
        let event = NemesisEvent {
            time_ns: self.now_ns(),
            wall_ms: wall_ms(),
            phase,
            fault: fault.to_string(),
            detail,
            nodes,
        };
        self.push(|r| r.nemesis.push(event));
    }

    pub fn stream(&self, viewer: u64, node: NodeId, auction_id: &str, what: StreamWhat) {
        let event = StreamEvent {
            viewer,
            node,
            auction_id: auction_id.to_string(),
            time_ns: self.now_ns(),
            wall_ms: wall_ms(),
            what,
        };
        self.push(|r| r.streams.push(event));
    }

    /// Everything recorded so far.
    pub fn take(&self) -> (Vec<OpEvent>, Vec<NemesisEvent>, Vec<StreamEvent>) {
        let mut recorded = self.recorded.lock().unwrap_or_else(|e| e.into_inner());
        let taken = std::mem::take(&mut *recorded);
        (taken.ops, taken.nemesis, taken.streams)
    }

    pub fn ops_so_far(&self) -> usize {
        self.recorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ops
            .len()
    }
}

/// How an operation ended, in Jepsen's terms.
#[derive(Clone, Debug)]
pub enum Outcome {
    Ok(OpResult),
    /// Certainly not done.
    Fail(String),
    /// May or may not have been done.
    Info(String),
}

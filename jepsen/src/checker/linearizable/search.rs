//! The WGL search (Wing & Gong, with Lowe's just-in-time linearization and memoization) for one
//! auction's operations against the sequential `model`.
//!
//! Operations become a doubly linked list of call and return entries in real-time order. The
//! search walks it from the head: at a call it tries to linearize that operation (apply it to the
//! model; on success lift its entries out and start again from the head); at a return it has
//! met an operation that completed without being linearized, so it backtracks. An operation can
//! therefore only be linearized once every operation that completed before its invoke is. `info`
//! operations and the internal deadline steps have no return entry: they may be linearized at any
//! point after their invoke, or never. The search succeeds when every `ok` operation is placed.
//!
//! Memo: a (set of linearized operations, model state) pair is explored once. Version pruning: a
//! model step that moves the version past `v` is refused while an `ok` operation that observed
//! version `v` is not yet linearized, because versions never go back; with it the search is
//! almost deterministic. Everything here is bounded by `STATES_EXPLORED_MAX`.

use std::collections::{HashMap, HashSet};

use super::model::{successors, KeyIdx, State, Statics, Step};

/// The most (linearized set, state) pairs one auction's search may visit before it gives up and
/// says `Unknown`: about 0.5 KB each for a few thousand operations, so well under 200 MB.
pub const STATES_EXPLORED_MAX: usize = 300_000;

/// One operation as the search sees it.
#[derive(Clone, Debug)]
pub struct SearchOp {
    pub label: String,
    pub step: Step,
    pub call_ns: u64,
    /// `Some` for `ok` operations (they must be linearized before it); `None` for `info`.
    pub return_ns: Option<u64>,
    /// The version an `ok` result shows the auction at right after the operation; `None` when
    /// the result carries no current version (a 409, a 404, an idempotent replay).
    pub observed_version: Option<u64>,
}

/// Why the search stopped without a linearization, at its deepest point.
#[derive(Clone, Debug)]
pub struct Stuck {
    /// The `ok` operation that could not be linearized before its return.
    pub op: usize,
    /// How many operations were linearized at that point.
    pub depth: usize,
    pub state: State,
    /// The last operations linearized, oldest first.
    pub recent: Vec<usize>,
    /// `ok` operations that observed the model's version then but were not placed: when the
    /// search is stuck behind the version gate, these are usually the culprits.
    pub waiting: Vec<usize>,
}

/// The most waiting operations a `Stuck` report names.
const STUCK_WAITING_MAX: usize = 5;

#[derive(Clone, Debug)]
pub enum Outcome {
    Linearizable { explored: usize },
    NotLinearizable(Stuck),
    GaveUp { explored: usize },
}

/// The most recently linearized operations a `Stuck` report names.
const STUCK_RECENT_MAX: usize = 5;

#[derive(Clone, Copy, Debug)]
enum Entry {
    Call { op: usize, ret: Option<usize> },
    Return { op: usize },
    Tail,
}

/// The entry list with O(1) lift and unlift; index `len` is the head, `len + 1` the tail.
struct List {
    entries: Vec<Entry>,
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl List {
    fn new(ops: &[SearchOp]) -> List {
        // (time, calls before returns at equal times: the more concurrent reading, op)
        let mut order: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call_ns, 0, i));
            if let Some(ret) = op.return_ns {
                order.push((ret.max(op.call_ns), 1, i));
            }
        }
        order.sort_unstable();
        let mut return_at: Vec<Option<usize>> = vec![None; ops.len()];
        for (at, (_, kind, op)) in order.iter().enumerate() {
            if *kind == 1 {
                return_at[*op] = Some(at);
            }
        }
        let mut entries: Vec<Entry> = order
            .iter()
            .map(|(_, kind, op)| match kind {
                0 => Entry::Call {
                    op: *op,
                    ret: return_at[*op],
                },
                _ => Entry::Return { op: *op },
            })
            .collect();
        let len = entries.len();
        entries.push(Entry::Tail); // the head slot is never read as an entry
        entries.push(Entry::Tail);
        let next = (0..len + 2)
            .map(|i| if i == len { 0 } else { i + 1 })
            .collect();
        let prev = (0..len + 2)
            .map(|i| if i == 0 { len } else { i.saturating_sub(1) })
            .collect();
        let mut list = List {
            entries,
            next,
            prev,
            head: len,
        };
        // Head points at the first entry, the tail (len + 1) at the last.
        list.next[len] = if len == 0 { len + 1 } else { 0 };
        list.prev[len + 1] = if len == 0 { len } else { len - 1 };
        if len > 0 {
            list.next[len - 1] = len + 1;
        }
        list
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Entry::Call { ret: Some(ret), .. } = self.entries[call] {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, call: usize) {
        if let Entry::Call { ret: Some(ret), .. } = self.entries[call] {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// What must be linearized before the model's version may move past `v`.
#[derive(Clone, Debug, Default)]
pub struct VersionGates {
    /// `ok` operations still to linearize that observed version `v`.
    pub observers_at: HashMap<u64, u32>,
    /// Keys whose first decision was seen (only through replays) at version `v`: some `info`
    /// attempt must have decided it while the auction was at `v`.
    pub keys_at: HashMap<u64, Vec<KeyIdx>>,
}

impl VersionGates {
    fn may_leave(&self, state: &State) -> bool {
        let Some(auction) = state.auction.as_ref() else {
            return true;
        };
        let v = auction.version;
        self.observers_at.get(&v).copied().unwrap_or(0) == 0
            && self
                .keys_at
                .get(&v)
                .is_none_or(|keys| keys.iter().all(|k| state.decision(*k).is_some()))
    }

    fn adjust(&mut self, op: &SearchOp, linearized: bool) {
        if let (Some(v), Some(_)) = (op.observed_version, op.return_ns) {
            let count = self.observers_at.entry(v).or_insert(0);
            *count = if linearized {
                count.saturating_sub(1)
            } else {
                *count + 1
            };
        }
    }
}

struct Frame {
    entry: usize,
    choice: usize,
    before: State,
    /// Placed because it changed nothing: if nothing works after it, nothing works without it.
    forced: bool,
}

/// What trying one call entry did.
enum Attempt {
    Placed,
    /// No outcome of the operation can be placed here; try the next entry.
    Skipped,
    /// The configuration is a dead end (a forced placement was already explored).
    DeadEnd,
}

/// The search's mutable state, so that each move is a short method.
struct Search<'a> {
    statics: &'a Statics,
    ops: &'a [SearchOp],
    list: List,
    gates: VersionGates,
    state: State,
    linearized: Vec<u64>,
    ok_left: usize,
    stack: Vec<Frame>,
    memo: HashSet<(Vec<u64>, State)>,
    deepest: Option<Stuck>,
}

/// Looks for a linearization of `ops` (one auction's operations) from the empty state.
pub fn search(statics: &Statics, ops: &[SearchOp], gates: VersionGates) -> Outcome {
    let mut search = Search {
        statics,
        ops,
        list: List::new(ops),
        gates,
        state: State::default(),
        linearized: vec![0; ops.len().div_ceil(64)],
        ok_left: ops.iter().filter(|op| op.return_ns.is_some()).count(),
        stack: Vec::new(),
        memo: HashSet::new(),
        deepest: None,
    };
    search.run()
}

impl Search<'_> {
    fn run(&mut self) -> Outcome {
        let mut entry = self.list.next[self.list.head];
        let mut from_choice = 0;
        loop {
            if self.ok_left == 0 {
                return Outcome::Linearizable {
                    explored: self.memo.len(),
                };
            }
            if self.memo.len() > STATES_EXPLORED_MAX {
                return Outcome::GaveUp {
                    explored: self.memo.len(),
                };
            }
            match self.list.entries[entry] {
                Entry::Call { op, .. } => {
                    match self.try_linearize(entry, op, from_choice) {
                        Attempt::Placed => entry = self.list.next[self.list.head],
                        Attempt::Skipped => entry = self.list.next[entry],
                        Attempt::DeadEnd => {
                            let Some((back_to, choice)) = self.backtrack() else {
                                return self.not_linearizable();
                            };
                            entry = back_to;
                            from_choice = choice + 1;
                            continue;
                        }
                    }
                    from_choice = 0;
                }
                Entry::Return { op } => {
                    self.note_stuck(op);
                    let Some((back_to, choice)) = self.backtrack() else {
                        return self.not_linearizable();
                    };
                    entry = back_to;
                    from_choice = choice + 1;
                }
                Entry::Tail => {
                    // Unreachable while `ok` operations are left (their returns come first),
                    // but never claim success from it.
                    let Some((back_to, choice)) = self.backtrack() else {
                        return self.not_linearizable();
                    };
                    entry = back_to;
                    from_choice = choice + 1;
                }
            }
        }
    }

    /// Tries the model outcomes of `op` from `from_choice` on; linearizes the first one that is
    /// allowed and new to the memo.
    ///
    /// Partial-order reduction: an `ok` operation that changes nothing here (a read, a
    /// rejection, a 409) commutes with everything placed after it, and every operation that
    /// must precede it already is, so if any linearization continues from here, one continues
    /// with it placed now. It is placed as `forced`, and its failure is the configuration's.
    fn try_linearize(&mut self, entry: usize, op: usize, from_choice: usize) -> Attempt {
        let Some(search_op) = self.ops.get(op) else {
            return Attempt::Skipped;
        };
        let nexts = successors(self.statics, &self.state, &search_op.step);
        for (choice, next) in nexts.into_iter().enumerate().skip(from_choice) {
            let bumps = match (&self.state.auction, &next.auction) {
                (Some(before), Some(after)) => after.version > before.version,
                _ => false,
            };
            if bumps && !self.gates.may_leave(&self.state) {
                continue;
            }
            let forced = search_op.return_ns.is_some() && next == self.state;
            set_bit(&mut self.linearized, op, true);
            if !self.memo.insert((self.linearized.clone(), next.clone())) {
                set_bit(&mut self.linearized, op, false);
                if forced {
                    return Attempt::DeadEnd;
                }
                continue;
            }
            let before = std::mem::replace(&mut self.state, next);
            self.stack.push(Frame {
                entry,
                choice,
                before,
                forced,
            });
            self.gates.adjust(search_op, true);
            if search_op.return_ns.is_some() {
                self.ok_left -= 1;
            }
            self.list.lift(entry);
            return Attempt::Placed;
        }
        Attempt::Skipped
    }

    /// Undoes linearizations back to the last free choice; returns its call entry and the
    /// outcome it had chosen. A forced placement that failed fails its configuration too, so
    /// the choice before it is undone as well.
    fn backtrack(&mut self) -> Option<(usize, usize)> {
        loop {
            let frame = self.stack.pop()?;
            let Entry::Call { op, .. } = self.list.entries[frame.entry] else {
                panic!("invariant: every stack frame names a call entry");
            };
            self.state = frame.before;
            set_bit(&mut self.linearized, op, false);
            if let Some(search_op) = self.ops.get(op) {
                self.gates.adjust(search_op, false);
                if search_op.return_ns.is_some() {
                    self.ok_left += 1;
                }
            }
            self.list.unlift(frame.entry);
            if !frame.forced {
                return Some((frame.entry, frame.choice));
            }
        }
    }

    fn note_stuck(&mut self, op: usize) {
        let depth = self.stack.len();
        if self.deepest.as_ref().is_some_and(|d| d.depth >= depth) {
            return;
        }
        let recent = self
            .stack
            .iter()
            .rev()
            .take(STUCK_RECENT_MAX)
            .filter_map(|frame| match self.list.entries[frame.entry] {
                Entry::Call { op, .. } => Some(op),
                _ => None,
            })
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        let version = self.state.auction.as_ref().map(|a| a.version);
        let waiting = self
            .ops
            .iter()
            .enumerate()
            .filter(|(i, o)| {
                o.return_ns.is_some()
                    && o.observed_version.is_some()
                    && o.observed_version == version
                    && !get_bit(&self.linearized, *i)
            })
            .map(|(i, _)| i)
            .take(STUCK_WAITING_MAX)
            .collect();
        self.deepest = Some(Stuck {
            op,
            depth,
            state: self.state.clone(),
            recent,
            waiting,
        });
    }

    fn not_linearizable(&mut self) -> Outcome {
        match self.deepest.take() {
            Some(stuck) => Outcome::NotLinearizable(stuck),
            None => Outcome::NotLinearizable(Stuck {
                op: 0,
                depth: 0,
                state: State::default(),
                recent: Vec::new(),
                waiting: Vec::new(),
            }),
        }
    }
}

fn get_bit(bits: &[u64], at: usize) -> bool {
    bits.get(at / 64)
        .is_some_and(|word| word & (1u64 << (at % 64)) != 0)
}

fn set_bit(bits: &mut [u64], at: usize, on: bool) {
    if let Some(word) = bits.get_mut(at / 64) {
        let mask = 1u64 << (at % 64);
        if on {
            *word |= mask;
        } else {
            *word &= !mask;
        }
    }
}

//! Turns one auction's recorded operations into the search's input: the auction's immutable
//! fields, one `SearchOp` per operation (plus the two internal deadline steps), and the version
//! gates. All knowledge of the history's layout for this checker lives here.

use std::collections::{BTreeMap, HashMap, HashSet};

use rust_decimal::Decimal;

use crate::history::{AuctionView, BidView, Call, History, OpResult, Operation, Phase};

use super::model::{ControlSeen, KeyIdx, Reason, SeenAuction, SeenBid, State, Statics, Step, Who};
use super::search::{SearchOp, VersionGates};
use crate::checker::support::describe;

pub struct AuctionInput {
    pub statics: Statics,
    pub ops: Vec<SearchOp>,
    pub gates: VersionGates,
    names: Vec<String>,
}

pub enum Assembled {
    Ready(AuctionInput),
    /// The operations show a violation without any search (e.g. a bid answered with an auction).
    Problem(String),
    /// The auction cannot be judged (e.g. no create was recorded).
    Unknown(String),
}

impl AuctionInput {
    pub fn describe_state(&self, state: &State) -> String {
        let Some(a) = state.auction.as_ref() else {
            return "not created".to_owned();
        };
        format!(
            "{:?} version {} price {} winner {} bids {} endAt {}..={}",
            a.status,
            a.version,
            a.price,
            self.name(a.winner),
            a.bid_count,
            a.end_at.lo,
            a.end_at.hi
        )
    }

    fn name(&self, who: Option<Who>) -> String {
        who.and_then(|w| self.names.get(w as usize))
            .map_or("none".to_owned(), Clone::clone)
    }
}

/// Interns user ids so the model compares integers.
#[derive(Default)]
struct Names {
    ids: HashMap<String, Who>,
    names: Vec<String>,
}

impl Names {
    fn intern(&mut self, name: &str) -> Who {
        if let Some(who) = self.ids.get(name) {
            return *who;
        }
        let who = Who::try_from(self.names.len()).unwrap_or(Who::MAX);
        self.ids.insert(name.to_owned(), who);
        self.names.push(name.to_owned());
        who
    }
}

/// What a view must show unchanged since creation.
struct Identity {
    id: String,
    post_id: String,
    creator_id: String,
    start_price: Decimal,
    min_increment: Decimal,
    anti_sniping_s: u32,
}

impl Identity {
    fn of(view: &AuctionView) -> Identity {
        Identity {
            id: view.id.clone(),
            post_id: view.post_id.clone(),
            creator_id: view.creator_id.clone(),
            start_price: view.start_price,
            min_increment: view.min_increment,
            anti_sniping_s: view.anti_sniping_s,
        }
    }

    fn matches(&self, view: &AuctionView) -> bool {
        self.id == view.id
            && self.post_id == view.post_id
            && self.creator_id == view.creator_id
            && self.start_price == view.start_price
            && self.min_increment == view.min_increment
            && self.anti_sniping_s == view.anti_sniping_s
    }
}

/// Builds the search input for `auction_id` from its (non-`fail`) operations.
pub fn assemble(history: &History, auction_id: &str, ops: &[Operation<'_>]) -> Assembled {
    if !ops
        .iter()
        .any(|op| matches!(op.invoke.call, Call::Create { .. }))
    {
        return Assembled::Unknown(format!(
            "auction {auction_id}: no create was recorded, so its initial state is unknown"
        ));
    }
    let Some(identity) = identity(history, auction_id, ops) else {
        return Assembled::Unknown(format!(
            "auction {auction_id}: no view of it was answered or read back"
        ));
    };
    let mut names = Names::default();
    let statics = Statics {
        creator: names.intern(&identity.creator_id),
        start_price: identity.start_price,
        min_increment: identity.min_increment,
        anti_sniping_ms: i64::from(identity.anti_sniping_s) * 1000,
    };
    let keys = shared_keys(ops, &mut names);
    let mut builder = Builder {
        identity,
        names,
        keys,
    };
    let mut search_ops = Vec::with_capacity(ops.len() + 2);
    for op in ops {
        match builder.search_op(op) {
            Ok(search_op) => search_ops.push(search_op),
            Err(text) => return Assembled::Problem(format!("auction {auction_id}: {text}")),
        }
    }
    builder.attach_expected(&mut search_ops);
    let gates = gates(&search_ops);
    for (label, step) in [
        ("deadline: scheduled -> active", Step::TimeStart),
        ("deadline: active -> ended", Step::TimeEnd),
    ] {
        search_ops.push(SearchOp {
            label: label.to_owned(),
            step,
            call_ns: 0,
            return_ns: None,
            observed_version: None,
        });
    }
    Assembled::Ready(AuctionInput {
        statics,
        ops: search_ops,
        gates,
        names: builder.names.names,
    })
}

/// The auction's immutable fields: from an answered create, else from the final state, else
/// from any answered view.
fn identity(history: &History, auction_id: &str, ops: &[Operation<'_>]) -> Option<Identity> {
    let answered = |want_create: bool| {
        ops.iter()
            .find_map(|op| match (op.result(), &op.invoke.call) {
                (Some(OpResult::Auction(view)), Call::Create { .. }) if want_create => Some(view),
                (Some(OpResult::Auction(view)), _) if !want_create => Some(view),
                _ => None,
            })
    };
    let from_final = || {
        history
            .final_state
            .nodes
            .values()
            .find_map(|replica| replica.auctions.get(auction_id))
    };
    answered(true)
        .or_else(from_final)
        .or_else(|| answered(false))
        .map(Identity::of)
}

/// Per (bidder, key) used by more than one operation, its interned index and operations.
struct SharedKeys {
    index: HashMap<(String, String), KeyIdx>,
}

fn shared_keys(ops: &[Operation<'_>], names: &mut Names) -> SharedKeys {
    let mut uses: BTreeMap<(String, String), usize> = BTreeMap::new();
    for op in ops {
        if let Call::Bid { bidder, key, .. } = &op.invoke.call {
            names.intern(bidder);
            *uses.entry((bidder.clone(), key.clone())).or_default() += 1;
        }
    }
    let index = uses
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .enumerate()
        .map(|(i, (k, _))| (k, KeyIdx::try_from(i).unwrap_or(KeyIdx::MAX)))
        .collect();
    SharedKeys { index }
}

/// For each shared key whose decision was seen only through replays: the version it was seen
/// at. Together with the count of `ok` operations per observed version, these gate the search.
fn gates(ops: &[SearchOp]) -> VersionGates {
    let mut gates = VersionGates::default();
    let mut fresh_seen: HashMap<KeyIdx, bool> = HashMap::new();
    let mut seen_at: HashMap<KeyIdx, u64> = HashMap::new();
    for op in ops {
        if let (Some(v), Some(_)) = (op.observed_version, op.return_ns) {
            *gates.observers_at.entry(v).or_insert(0) += 1;
        }
        if let Step::Bid {
            key: Some(key),
            seen: Some(seen),
            ..
        } = &op.step
        {
            *fresh_seen.entry(*key).or_insert(false) |= !seen.replayed;
            seen_at.entry(*key).or_insert(seen.version);
        }
    }
    for (key, version) in seen_at {
        if fresh_seen.get(&key) == Some(&false) {
            gates.keys_at.entry(version).or_default().push(key);
        }
    }
    gates
}

struct Builder {
    identity: Identity,
    names: Names,
    keys: SharedKeys,
}

impl Builder {
    fn search_op(&mut self, op: &Operation<'_>) -> Result<SearchOp, String> {
        let ok = op.outcome() == Phase::Ok;
        let result = if ok { op.result() } else { None };
        let label = describe(op);
        let mismatch = || format!("{label}: the result does not fit the call");
        let (step, observed_version) = match (&op.invoke.call, result) {
            (Call::Create { end_at_ms, .. }, None) if !ok => (
                Step::Create {
                    seen: None,
                    end_at_ms: *end_at_ms,
                },
                None,
            ),
            (Call::Create { end_at_ms, .. }, Some(OpResult::Auction(view))) => (
                Step::Create {
                    seen: Some(self.seen_auction(view)),
                    end_at_ms: *end_at_ms,
                },
                Some(view.version),
            ),
            (Call::Read { .. }, Some(OpResult::Auction(view))) => (
                Step::Read {
                    seen: Some(self.seen_auction(view)),
                },
                Some(view.version),
            ),
            (Call::Read { .. }, Some(OpResult::NotFound)) => (Step::Read { seen: None }, None),
            (Call::Control { action, .. }, None) if !ok => (
                Step::Control {
                    action: *action,
                    seen: None,
                },
                None,
            ),
            (Call::Control { action, .. }, Some(OpResult::ControlNotAllowed)) => (
                Step::Control {
                    action: *action,
                    seen: Some(ControlSeen::NotAllowed),
                },
                None,
            ),
            (Call::Control { action, .. }, Some(OpResult::Auction(view))) => (
                Step::Control {
                    action: *action,
                    seen: Some(ControlSeen::Done(self.seen_auction(view))),
                },
                Some(view.version),
            ),
            (Call::Bid { .. }, None) if !ok => (self.bid_step(op, None), None),
            (Call::Bid { .. }, Some(OpResult::Bid(view))) => {
                let observed = (!view.replayed).then_some(view.version);
                (self.bid_step(op, Some(view)), observed)
            }
            _ => return Err(mismatch()),
        };
        Ok(SearchOp {
            label,
            step,
            call_ns: op.invoke.time_ns,
            return_ns: ok.then(|| op.completion.map_or(u64::MAX, |c| c.time_ns)),
            observed_version,
        })
    }

    fn bid_step(&mut self, op: &Operation<'_>, view: Option<&BidView>) -> Step {
        let Call::Bid {
            bidder,
            key,
            amount,
            ..
        } = &op.invoke.call
        else {
            panic!("invariant: bid_step is only called for bids");
        };
        let shared = self.keys.index.get(&(bidder.clone(), key.clone())).copied();
        Step::Bid {
            bidder: self.names.intern(bidder),
            key: shared,
            amount: *amount,
            seen: view.map(|v| self.seen_bid(v)),
            expected: None,
        }
    }

    /// Gives every `info` bid on a shared key the decision an `ok` attempt on that key saw,
    /// and drops the `info` bids on keys an `ok` attempt decided afresh: taking effect before
    /// that attempt would have made it a replay, and after it they are replays (no effect).
    fn attach_expected(&self, ops: &mut Vec<SearchOp>) {
        let mut first_seen: HashMap<KeyIdx, (u64, SeenBid)> = HashMap::new();
        let mut decided_fresh: HashSet<KeyIdx> = HashSet::new();
        for op in ops.iter() {
            if let (
                Step::Bid {
                    key: Some(key),
                    seen: Some(seen),
                    ..
                },
                Some(done),
            ) = (&op.step, op.return_ns)
            {
                if !seen.replayed {
                    decided_fresh.insert(*key);
                }
                let entry = first_seen.entry(*key).or_insert((done, seen.clone()));
                if done < entry.0 {
                    *entry = (done, seen.clone());
                }
            }
        }
        ops.retain(|op| match &op.step {
            Step::Bid {
                key: Some(key),
                seen: None,
                ..
            } => !decided_fresh.contains(key),
            _ => true,
        });
        for op in ops.iter_mut() {
            if let Step::Bid {
                key: Some(key),
                seen: None,
                expected,
                ..
            } = &mut op.step
            {
                *expected = first_seen.get(key).map(|(_, seen)| seen.clone());
            }
        }
    }

    fn seen_auction(&mut self, view: &AuctionView) -> SeenAuction {
        SeenAuction {
            statics_ok: self.identity.matches(view),
            status: view.status,
            version: view.version,
            price: view.current_price,
            winner: view.winner.as_deref().map(|w| self.names.intern(w)),
            bid_count: view.bid_count,
            end_at: view.end_at_ms,
        }
    }

    fn seen_bid(&mut self, view: &BidView) -> SeenBid {
        SeenBid {
            accepted: view.status == crate::history::BidStatus::Accepted,
            reason: view.reason.as_deref().map(Reason::parse).transpose(),
            amount: view.amount,
            version: view.version,
            price: view.current_price,
            winner: view.winner.as_deref().map(|w| self.names.intern(w)),
            end_at: view.end_at_ms,
            replayed: view.replayed,
        }
    }
}

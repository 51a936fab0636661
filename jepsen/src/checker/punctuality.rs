//! Punctuality (invariants 3 and 8): no bid is accepted after its auction's end, and every
//! auction ends within the end-event SLA.
//!
//! Judged against the harness's wall clock, which no nemesis skews, with
//! `meta.max_clock_offset_ms` as the bound a leader's stamp may lag it:
//! - A bid answered `accepted` (not a replay) was stamped after its invoke minus the offset
//!   and before the end in force, which is at most the answer's endAt and the final endAt (endAt
//!   only moves later). So an invoke later than that bound plus the offset is a late bid.
//! - A bid answered `rejected` as `ended` (not a replay) was stamped at or after the end in
//!   force, which is the answer's endAt (a rejection changes nothing), and before its completion
//!   plus the offset. So a completion earlier than that endAt minus the offset means the auction
//!   ended early: a leader's clock ran ahead of the bound. Auctions an `end` action closed
//!   (final endedAt before endAt) are left out.
//! - In the final state, no auction whose endAt (plus offset plus SLA, counted from the last
//!   heal if that was later) has passed may still be scheduled or active.
//! - A linearizable read invoked past that same deadline that still shows the auction scheduled
//!   or active is a violation, but only when no nemesis fault was active at the read: the SLA
//!   holds "once a quorum is available", and faults may withhold one.
//!
//! Notes report the worst lateness seen: `endedAt - endAt` in the final state, and how long
//! after endAt a linearizable read still saw an auction open.

use crate::history::{
    AuctionStatus, BidStatus, Call, History, NemesisPhase, OpResult, Phase, WallMs,
};

use super::support::{describe, readable_replicas, unreadable_note, Findings};
use super::Verdict;

pub const CHECKER: &str = "punctuality";

pub fn check(history: &History) -> Verdict {
    let mut findings = Findings::default();
    let faults = FaultTimeline::new(history);
    late_bids(history, &mut findings);
    early_ends(history, &mut findings);
    viewer_lateness(history, &mut findings);
    final_state(history, &faults, &mut findings);
    open_after_end(history, &faults, &mut findings);
    if let Some(note) = unreadable_note(&history.final_state) {
        findings.note(format!(
            "final state judged on readable replicas only; {note}"
        ));
    }
    findings.into_verdict(CHECKER)
}

/// Bids accepted although invoked after the end (plus the clock offset bound).
fn late_bids(history: &History, findings: &mut Findings) {
    let offset_ms = history.meta.max_clock_offset_ms;
    let replicas = readable_replicas(&history.final_state);
    for op in history.operations() {
        let (Call::Bid { auction_id, .. }, Some(OpResult::Bid(view))) =
            (&op.invoke.call, op.result())
        else {
            continue;
        };
        if view.status != BidStatus::Accepted || view.replayed || op.outcome() != Phase::Ok {
            continue;
        }
        let final_end = replicas
            .iter()
            .filter_map(|(_, r)| r.auctions.get(auction_id).map(|a| a.end_at_ms))
            .min();
        let end_ms = final_end.map_or(view.end_at_ms, |f| f.min(view.end_at_ms));
        let invoked = op.invoke.wall_ms;
        if invoked > end_ms.saturating_add(offset_ms) {
            findings.problem(format!(
                "auction {auction_id}: late bid: {} was invoked at {invoked}, {} ms after the \
                 end {end_ms} (clock offset bound {offset_ms} ms)",
                describe(&op),
                invoked - end_ms
            ));
        }
    }
}

/// Bids rejected as `ended` before the auction's end (minus the clock offset bound).
fn early_ends(history: &History, findings: &mut Findings) {
    let offset_ms = history.meta.max_clock_offset_ms;
    let replicas = readable_replicas(&history.final_state);
    for op in history.operations() {
        let (Call::Bid { auction_id, .. }, Some(OpResult::Bid(view)), Some(done)) =
            (&op.invoke.call, op.result(), op.completion)
        else {
            continue;
        };
        if view.status != BidStatus::Rejected
            || view.reason.as_deref() != Some("ended")
            || view.replayed
        {
            continue;
        }
        let ended_by_action = replicas.iter().any(|(_, r)| {
            r.auctions
                .get(auction_id)
                .is_some_and(|a| a.ended_at_ms.is_some_and(|e| e < a.end_at_ms))
        });
        if ended_by_action {
            continue;
        }
        let completed = done.wall_ms;
        if completed.saturating_add(offset_ms) < view.end_at_ms {
            findings.problem(format!(
                "auction {auction_id}: early end: {} was rejected as ended by {completed}, {} ms \
                 before the end {} (clock offset bound {offset_ms} ms)",
                describe(&op),
                view.end_at_ms - completed,
                view.end_at_ms
            ));
        }
    }
}

/// Notes how long after endAt the first viewer heard `ended`, for auctions that ended by their
/// deadline: the end-event lateness as clients see it (the final state's endedAt is the
/// deadline itself, so it cannot show lateness).
fn viewer_lateness(history: &History, findings: &mut Findings) {
    let replicas = readable_replicas(&history.final_state);
    let mut first_ended: std::collections::BTreeMap<&str, WallMs> = Default::default();
    for event in &history.streams {
        if let crate::history::StreamWhat::Frame(frame) = &event.what {
            if frame.kind == crate::history::FrameKind::Ended {
                let at = first_ended
                    .entry(&event.auction_id)
                    .or_insert(event.wall_ms);
                *at = (*at).min(event.wall_ms);
            }
        }
    }
    let mut worst: Option<(i64, &str)> = None;
    for (auction_id, heard) in first_ended {
        let Some(auction) = replicas
            .iter()
            .find_map(|(_, r)| r.auctions.get(auction_id))
        else {
            continue;
        };
        if auction.ended_at_ms != Some(auction.end_at_ms) {
            continue;
        }
        let late = heard - auction.end_at_ms;
        if worst.is_none_or(|(w, _)| late > w) {
            worst = Some((late, auction_id));
        }
    }
    if let Some((late, auction_id)) = worst {
        findings.note(format!(
            "worst end-event lateness heard by a viewer: {late} ms after endAt (auction {auction_id})"
        ));
    }
}

/// Every auction past its deadline is ended on every readable replica; reports lateness.
fn final_state(history: &History, faults: &FaultTimeline, findings: &mut Findings) {
    let meta = &history.meta;
    let now = history.final_state.wall_ms;
    let mut worst: Option<(i64, String)> = None;
    for (node, replica) in readable_replicas(&history.final_state) {
        for auction in replica.auctions.values() {
            if let Some(ended_ms) = auction.ended_at_ms {
                let late_ms = ended_ms - auction.end_at_ms;
                if worst.as_ref().is_none_or(|(w, _)| late_ms > *w) {
                    worst = Some((late_ms, auction.id.clone()));
                }
                if late_ms > meta.end_sla_ms + meta.max_clock_offset_ms {
                    findings.problem(format!(
                        "auction {}: node {node}: ended at {ended_ms}, {late_ms} ms after its \
                         end {} (SLA {} ms)",
                        auction.id, auction.end_at_ms, meta.end_sla_ms
                    ));
                }
            }
            let open = matches!(
                auction.status,
                AuctionStatus::Scheduled | AuctionStatus::Active
            );
            let due = faults.due(auction.end_at_ms, meta.max_clock_offset_ms, meta.end_sla_ms);
            if open && now > due {
                findings.problem(format!(
                    "auction {}: node {node}: still {:?} in the final state (read at {now}) \
                     though its end {} passed (due ended by {due})",
                    auction.id, auction.status, auction.end_at_ms
                ));
            }
        }
    }
    if let Some((late_ms, id)) = worst {
        findings.note(format!(
            "worst endedAt - endAt in the final state: {late_ms} ms (auction {id})"
        ));
    }
}

/// Linearizable reads that still saw an auction open after its deadline.
fn open_after_end(history: &History, faults: &FaultTimeline, findings: &mut Findings) {
    let meta = &history.meta;
    let mut worst: Option<(i64, u64)> = None;
    for op in history.operations() {
        let (Call::Read { local: false, .. }, Some(OpResult::Auction(view))) =
            (&op.invoke.call, op.result())
        else {
            continue;
        };
        if !matches!(
            view.status,
            AuctionStatus::Scheduled | AuctionStatus::Active
        ) {
            continue;
        }
        let invoked = op.invoke.wall_ms;
        let late_ms = invoked - view.end_at_ms;
        if late_ms > 0 && worst.is_none_or(|(w, _)| late_ms > w) {
            worst = Some((late_ms, op.invoke.op_id));
        }
        if faults.active_at(invoked) {
            continue;
        }
        let due = faults.due_before(
            view.end_at_ms,
            invoked,
            meta.max_clock_offset_ms,
            meta.end_sla_ms,
        );
        if invoked > due {
            findings.problem(format!(
                "auction {}: not ended in time: read op {} invoked at {invoked} (no fault \
                 active) saw it {:?} at version {}, {late_ms} ms after its end {} (due ended \
                 by {due})",
                view.id, op.invoke.op_id, view.status, view.version, view.end_at_ms
            ));
        }
    }
    if let Some((late_ms, op_id)) = worst {
        findings.note(format!(
            "longest a linearizable read still saw an auction open after its end: {late_ms} ms \
             (op {op_id})"
        ));
    }
}

/// When nemesis faults were active, by the harness's wall clock.
struct FaultTimeline {
    /// (wall time, number of faults active from then on), in time order.
    steps: Vec<(WallMs, usize)>,
}

impl FaultTimeline {
    fn new(history: &History) -> FaultTimeline {
        let mut events: Vec<_> = history.nemesis.iter().collect();
        events.sort_by_key(|e| e.time_ns);
        let mut active: Vec<&str> = Vec::new();
        let mut steps = Vec::with_capacity(events.len());
        for event in events {
            match event.phase {
                NemesisPhase::Start => active.push(&event.fault),
                NemesisPhase::Stop => {
                    // A stop heals the most recent start of that fault; a stray stop is ignored.
                    if let Some(at) = active.iter().rposition(|f| *f == event.fault) {
                        active.remove(at);
                    }
                }
            }
            steps.push((event.wall_ms, active.len()));
        }
        FaultTimeline { steps }
    }

    fn active_at(&self, at: WallMs) -> bool {
        self.steps
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .is_some_and(|(_, n)| *n > 0)
    }

    /// When the last fault before `at` healed (`WallMs::MIN` if none ever was active).
    fn last_heal_before(&self, at: WallMs) -> WallMs {
        self.steps
            .iter()
            .take_while(|(t, _)| *t <= at)
            .filter(|(_, n)| *n == 0)
            .last()
            .map_or(WallMs::MIN, |(t, _)| *t)
    }

    /// By when an auction ending at `end_ms` must read ended, seen from `at`: the SLA runs
    /// from the end or from the last heal before `at`, whichever is later.
    fn due_before(&self, end_ms: WallMs, at: WallMs, offset_ms: i64, sla_ms: i64) -> WallMs {
        end_ms
            .max(self.last_heal_before(at))
            .saturating_add(offset_ms)
            .saturating_add(sla_ms)
    }

    /// As `due_before`, seen from the end of the run.
    fn due(&self, end_ms: WallMs, offset_ms: i64, sla_ms: i64) -> WallMs {
        self.due_before(end_ms, WallMs::MAX, offset_ms, sla_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::checker::testkit::{
        after_bids, auction, bid_call, bid_view, read_call, Builder, Done,
    };
    use crate::checker::Validity;
    use crate::history::{AuctionStatus, NemesisPhase, OpResult};

    /// A bid accepted on an auction ending 60 s in, invoked at `invoke_ms`.
    fn accepted_at(invoke_ms: u64) -> Validity {
        let mut b = Builder::new();
        let mut one = after_bids(&auction("a1"), &[("alice", "10")]);
        let view = bid_view("b1", "10", None, &one);
        b.op(
            1,
            bid_call("a1", "alice", "k1", "10"),
            invoke_ms,
            Done::Ok(invoke_ms + 5, OpResult::Bid(view)),
        );
        one.status = AuctionStatus::Ended;
        one.version += 1;
        one.ended_at_ms = Some(one.end_at_ms);
        b.replicas(&[1, 2, 3], &[one], &[]);
        let verdict = check(&b.build());
        println!("{verdict:#?}");
        verdict.validity
    }

    #[test]
    fn bid_accepted_before_the_end_passes() {
        // Invoked 50 ms after the end: within the 100 ms clock offset bound.
        assert_eq!(accepted_at(60_050), Validity::Valid);
    }

    #[test]
    fn late_bid_is_flagged() {
        assert_eq!(accepted_at(61_000), Validity::Invalid);
    }

    /// A bid rejected as ended on an auction ending 60 s in, answered at `done_ms`.
    fn rejected_as_ended_at(done_ms: u64) -> Validity {
        let mut b = Builder::new();
        let mut ended = auction("a1");
        ended.status = AuctionStatus::Ended;
        ended.version += 1;
        ended.ended_at_ms = Some(ended.end_at_ms);
        let view = bid_view("b1", "10", Some("ended"), &ended);
        b.op(
            1,
            bid_call("a1", "alice", "k1", "10"),
            done_ms - 5,
            Done::Ok(done_ms, OpResult::Bid(view)),
        );
        b.replicas(&[1, 2, 3], &[ended], &[]);
        let verdict = check(&b.build());
        println!("{verdict:#?}");
        verdict.validity
    }

    #[test]
    fn bid_rejected_as_ended_after_the_end_passes() {
        // Answered 50 ms before the end: within the 100 ms clock offset bound.
        assert_eq!(rejected_as_ended_at(59_950), Validity::Valid);
    }

    #[test]
    fn early_end_is_flagged() {
        // A leader 3 s ahead rejects a bid as ended 3 s before the true end.
        assert_eq!(rejected_as_ended_at(57_000), Validity::Invalid);
    }

    #[test]
    fn auction_still_active_after_its_end_is_flagged() {
        let mut b = Builder::new();
        b.replicas(&[1, 2, 3], &[auction("a1")], &[]); // final read at 120 s, end at 60 s
        assert_eq!(check(&b.build()).validity, Validity::Invalid);
    }

    #[test]
    fn read_seeing_open_after_the_sla_is_flagged_only_without_faults() {
        let read = |b: &mut Builder| {
            let open = OpResult::Auction(auction("a1"));
            b.op(2, read_call("a1"), 65_000, Done::Ok(65_010, open));
        };
        let mut ended = auction("a1");
        ended.status = AuctionStatus::Ended;
        ended.version = 2;
        ended.ended_at_ms = Some(ended.end_at_ms);

        let mut calm = Builder::new();
        read(&mut calm);
        calm.replicas(&[1, 2, 3], &[ended.clone()], &[]);
        assert_eq!(check(&calm.build()).validity, Validity::Invalid);

        let mut partitioned = Builder::new();
        partitioned.nemesis(59_000, NemesisPhase::Start, "partition-leader");
        read(&mut partitioned);
        partitioned.nemesis(66_000, NemesisPhase::Stop, "partition-leader");
        partitioned.replicas(&[1, 2, 3], &[ended.clone()], &[]);
        assert_eq!(check(&partitioned.build()).validity, Validity::Valid);

        let mut healed_just_before = Builder::new();
        healed_just_before.nemesis(50_000, NemesisPhase::Start, "kill");
        healed_just_before.nemesis(64_500, NemesisPhase::Stop, "kill");
        read(&mut healed_just_before);
        healed_just_before.replicas(&[1, 2, 3], &[ended], &[]);
        assert_eq!(check(&healed_just_before.build()).validity, Validity::Valid);
    }
}

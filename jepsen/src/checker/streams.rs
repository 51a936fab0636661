//! Streams: what each viewer connection saw agrees with the contract (API.md "Live updates")
//! and with the final decision log.
//!
//! Per connection (a reconnect is a new viewer id), frames in arrival order:
//! - the first frame is a `snapshot`; nothing follows an `ended` frame;
//! - non-tick frames' versions strictly increase, except that `ended` may repeat the version of
//!   the frame before it; no frame (ticks included) shows a version older than one already seen;
//! - a frame at version v shows the price and winner of the auction at v, rebuilt from the final
//!   log of the viewer's node (or any readable replica): the last accepted bid at or before v;
//!   a `bid` frame's version is an accepted bid's, a `status` frame's is not; no frame shows a
//!   version beyond the final one;
//! - a frame showing `ended` (the `ended` frame, or a snapshot of an ended auction) shows the
//!   final version, price and winner.
//!
//! Deliberately not judged: ticks' timing, `endAt`/`remainingMs` (punctuality's business) and
//! status at versions the log does not pin (status changes are not logged).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::history::{
    AuctionStatus, AuctionView, BidRecord, BidStatus, FrameKind, History, StreamEvent, StreamFrame,
    StreamWhat,
};

use super::support::{readable_replicas, Findings};
use super::Verdict;

pub const CHECKER: &str = "streams";

pub fn check(history: &History) -> Verdict {
    let mut findings = Findings::default();
    let mut viewers: BTreeMap<u64, Vec<&StreamEvent>> = BTreeMap::new();
    for event in &history.streams {
        viewers.entry(event.viewer).or_default().push(event);
    }
    let mut frames_seen = 0usize;
    for (viewer, mut events) in viewers {
        events.sort_by_key(|e| e.time_ns); // stable: recording order breaks ties
        let frames: Vec<(&StreamEvent, &StreamFrame)> = events
            .iter()
            .filter_map(|e| match &e.what {
                StreamWhat::Frame(f) => Some((*e, f)),
                _ => None,
            })
            .collect();
        frames_seen += frames.len();
        check_order(viewer, &frames, &mut findings);
        if let Some((first, _)) = frames.first() {
            match truth(history, first) {
                Some(truth) => check_against_log(viewer, &frames, &truth, &mut findings),
                None => findings.unknown(format!(
                    "viewer {viewer}: auction {} is on no readable replica",
                    first.auction_id
                )),
            }
        }
    }
    findings.note(format!("{frames_seen} frames checked"));
    findings.into_verdict(CHECKER)
}

/// The contract's ordering rules within one connection.
fn check_order(viewer: u64, frames: &[(&StreamEvent, &StreamFrame)], findings: &mut Findings) {
    let mut last_change: Option<&StreamFrame> = None;
    let mut newest = 0u64;
    for (at, (event, frame)) in frames.iter().enumerate() {
        let place = format!(
            "auction {}: viewer {viewer} frame {} ({:?} v{} at {} ns)",
            event.auction_id,
            at + 1,
            frame.kind,
            frame.version,
            event.time_ns
        );
        if at == 0 && frame.kind != FrameKind::Snapshot {
            findings.problem(format!("{place}: the first frame is not a snapshot"));
        }
        if at > 0 && frame.kind == FrameKind::Snapshot {
            findings.problem(format!("{place}: a second snapshot on one connection"));
        }
        if let Some(previous) = last_change.filter(|p| p.kind == FrameKind::Ended) {
            findings.problem(format!(
                "{place}: arrived after the ended frame (v{})",
                previous.version
            ));
        }
        if frame.version < newest {
            findings.problem(format!(
                "{place}: went back from version {newest} to {}",
                frame.version
            ));
        }
        if frame.kind != FrameKind::Tick {
            let repeat_ok = frame.kind == FrameKind::Ended;
            if let Some(previous) = last_change {
                let back = frame.version < previous.version
                    || (frame.version == previous.version && !repeat_ok);
                if back {
                    findings.problem(format!(
                        "{place}: version does not increase after the previous {:?} frame's v{}",
                        previous.kind, previous.version
                    ));
                }
            }
            last_change = Some(frame);
        }
        newest = newest.max(frame.version);
    }
}

/// The auction and its accepted bids (version, amount, bidder) on the replica that judges
/// a viewer: its own node's if readable, else the first readable one holding the auction.
struct Truth<'a> {
    auction: &'a AuctionView,
    accepted: Vec<&'a BidRecord>,
}

fn truth<'a>(history: &'a History, first: &StreamEvent) -> Option<Truth<'a>> {
    let replicas = readable_replicas(&history.final_state);
    let own = replicas.iter().find(|(node, _)| *node == first.node);
    let (_, replica) = own
        .filter(|(_, r)| r.auctions.contains_key(&first.auction_id))
        .or_else(|| {
            replicas
                .iter()
                .find(|(_, r)| r.auctions.contains_key(&first.auction_id))
        })?;
    let auction = replica.auctions.get(&first.auction_id)?;
    let accepted = replica
        .bid_logs
        .get(&first.auction_id)
        .map(|log| {
            log.iter()
                .filter(|r| r.status == BidStatus::Accepted)
                .collect()
        })
        .unwrap_or_default();
    Some(Truth { auction, accepted })
}

impl Truth<'_> {
    /// Price and winner at version `v`: the last accepted bid at or before it.
    fn at(&self, v: u64) -> (Decimal, Option<&str>) {
        self.accepted
            .iter()
            .take_while(|r| r.version <= v)
            .last()
            .map_or((self.auction.start_price, None), |r| {
                (r.amount, Some(r.bidder.as_str()))
            })
    }
}

fn check_against_log(
    viewer: u64,
    frames: &[(&StreamEvent, &StreamFrame)],
    truth: &Truth<'_>,
    findings: &mut Findings,
) {
    let last = truth.auction;
    for (at, (event, frame)) in frames.iter().enumerate() {
        let place = format!(
            "auction {}: viewer {viewer} frame {} ({:?} v{})",
            event.auction_id,
            at + 1,
            frame.kind,
            frame.version
        );
        if frame.version > last.version {
            findings.problem(format!(
                "{place}: beyond the final version {}",
                last.version
            ));
            continue;
        }
        let (price, winner) = truth.at(frame.version);
        if frame.current_price != price || frame.winner.as_deref() != winner {
            findings.problem(format!(
                "{place}: shows price {} winner {:?}, but at that version the log gives price \
                 {price} winner {winner:?}",
                frame.current_price, frame.winner
            ));
        }
        let is_bid_version = truth.accepted.iter().any(|r| r.version == frame.version);
        if frame.kind == FrameKind::Bid && !is_bid_version {
            findings.problem(format!("{place}: no accepted bid has this version"));
        }
        if frame.kind == FrameKind::Status && is_bid_version {
            findings.problem(format!("{place}: this version is an accepted bid's"));
        }
        let shows_end = frame.kind == FrameKind::Ended || frame.status == AuctionStatus::Ended;
        if shows_end && (frame.status != AuctionStatus::Ended || frame.version != last.version) {
            findings.problem(format!(
                "{place}: shows {:?} at v{}, but the auction ended at v{}",
                frame.status, frame.version, last.version
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use crate::checker::testkit::{after_bids, auction, bid_view, frame, record, Builder};
    use crate::checker::Validity;
    use crate::history::{AuctionStatus, FrameKind};

    /// alice 10 (v2) then bob 12 (v3), then ended (v4); frames of `kinds_versions` for viewer 1.
    fn viewer(frames: &[(FrameKind, u64)]) -> Validity {
        let mut b = Builder::new();
        let base = auction("a1");
        let states = [
            base.clone(),
            after_bids(&base, &[("alice", "10")]),
            after_bids(&base, &[("alice", "10"), ("bob", "12")]),
        ];
        let mut ended = states[2].clone();
        ended.status = AuctionStatus::Ended;
        ended.version = 4;
        let log = vec![
            record(1, &bid_view("b1", "10", None, &states[1]), "alice"),
            record(2, &bid_view("b2", "12", None, &states[2]), "bob"),
        ];
        for (i, (kind, version)) in frames.iter().enumerate() {
            let view = match version {
                1..=3 => &states[*version as usize - 1],
                _ => &ended,
            };
            let mut f = frame(*kind, view);
            f.version = *version;
            b.frame(1, i as u64, "a1", f);
        }
        b.replicas(&[1, 2, 3], &[ended], &[("a1", log)]);
        let verdict = check(&b.build());
        println!("{verdict:#?}");
        verdict.validity
    }

    #[test]
    fn well_ordered_stream_passes() {
        let frames = [
            (FrameKind::Snapshot, 1),
            (FrameKind::Tick, 1),
            (FrameKind::Bid, 3), // coalesced: v2 skipped
            (FrameKind::Tick, 3),
            (FrameKind::Ended, 4),
        ];
        assert_eq!(viewer(&frames), Validity::Valid);
    }

    #[test]
    fn stream_going_back_is_flagged() {
        let frames = [
            (FrameKind::Snapshot, 1),
            (FrameKind::Bid, 3),
            (FrameKind::Bid, 2),
        ];
        assert_eq!(viewer(&frames), Validity::Invalid);
    }

    #[test]
    fn tick_older_than_a_seen_frame_is_flagged() {
        let frames = [(FrameKind::Snapshot, 2), (FrameKind::Tick, 1)];
        assert_eq!(viewer(&frames), Validity::Invalid);
    }

    #[test]
    fn frame_after_ended_is_flagged() {
        let frames = [
            (FrameKind::Snapshot, 3),
            (FrameKind::Ended, 4),
            (FrameKind::Tick, 4),
        ];
        assert_eq!(viewer(&frames), Validity::Invalid);
    }

    #[test]
    fn frame_disagreeing_with_the_log_is_flagged() {
        // A "bid" frame at v3 must show bob's 12; a status frame cannot carry a bid's version.
        let mut b = Builder::new();
        let three = after_bids(&auction("a1"), &[("alice", "10"), ("bob", "12")]);
        let log = vec![
            record(
                1,
                &bid_view(
                    "b1",
                    "10",
                    None,
                    &after_bids(&auction("a1"), &[("alice", "10")]),
                ),
                "alice",
            ),
            record(2, &bid_view("b2", "12", None, &three), "bob"),
        ];
        let mut wrong = frame(FrameKind::Bid, &three);
        wrong.winner = Some("mallory".into());
        b.frame(1, 0, "a1", frame(FrameKind::Snapshot, &auction("a1")));
        b.frame(1, 1, "a1", wrong);
        b.replicas(&[1, 2, 3], &[three], &[("a1", log)]);
        assert_eq!(check(&b.build()).validity, Validity::Invalid);
    }
}

//! What a state machine copy (`SnapshotBlob`) holds, counted record by record: auctions by
//! status, decisions and accepted bids, idempotency keys, pending deadlines. Used to describe a
//! backup and, because it decodes every auction and decision, to check that a copy is sound
//! before anything is restored from it.
//!
//! It reads only the copy: no tree, no sled.

use std::collections::HashMap;

use gavel_rules::{Auction, BidStatus, StampMs, Status};
use serde::Serialize;

use crate::codec::decode;
use crate::keys;
use crate::state::{decode_run, newer};
use crate::{SnapshotBlob, StorageError};

/// Counts of one state machine's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StateSummary {
    pub auctions: u64,
    pub scheduled: u64,
    pub active: u64,
    pub paused: u64,
    pub ended: u64,
    /// Every decision (accepted and rejected bids).
    pub decisions: u64,
    pub accepted_bids: u64,
    /// Keys a retry is answered by: one per decision (each bid's key gets one decision).
    pub idempotency_keys: u64,
    /// Entries of the deadline index: auctions still waiting to start or end.
    pub pending_deadlines: u64,
    /// The earliest pending deadline, if any.
    pub next_deadline_ms: Option<StampMs>,
    /// The stamp of the newest applied entry (the group's clock floor).
    pub last_stamp_ms: Option<StampMs>,
}

impl SnapshotBlob {
    /// Counts the records, decoding every auction and decision on the way. Fails on a record
    /// that does not decode or on keys out of order (a copy is always in key order).
    pub fn summary(&self) -> Result<StateSummary, StorageError> {
        let mut summary = StateSummary::default();
        // Each auction's newest state: its record or what a decision-log record carries.
        let mut auctions = HashMap::new();
        for (i, (key, value)) in self.pairs.iter().enumerate() {
            if i > 0 && self.pairs[i - 1].0 >= *key {
                return Err(StorageError::Corrupt(format!(
                    "state copy keys out of order at pair {i}"
                )));
            }
            count(&mut summary, &mut auctions, key, value)?;
        }
        for auction in auctions.into_values() {
            summary.auctions += 1;
            match auction.status {
                Status::Scheduled => summary.scheduled += 1,
                Status::Active => summary.active += 1,
                Status::Paused => summary.paused += 1,
                Status::Ended => summary.ended += 1,
            }
        }
        Ok(summary)
    }
}

fn count(
    summary: &mut StateSummary,
    auctions: &mut HashMap<String, Auction>,
    key: &[u8],
    value: &[u8],
) -> Result<(), StorageError> {
    let mut keep_newer = |auction: Auction| {
        let known = auctions.remove(&auction.id);
        if let Some(newest) = newer(known, Some(auction)) {
            auctions.insert(newest.id.clone(), newest);
        }
    };
    match key.first().copied() {
        Some(keys::AUCTION) => keep_newer(decode(value)?),
        Some(keys::DECISION) => {
            let (carried, decisions) = decode_run(value)?;
            if let (Some(carried), Some(first)) = (carried, decisions.first()) {
                // Keys are in order: the auction's record came before its decision log.
                let known = auctions.remove(&first.auction_id);
                let newest = carried.newer_than(known)?;
                auctions.insert(newest.id.clone(), newest);
            }
            for decision in decisions {
                summary.decisions += 1;
                summary.idempotency_keys += 1;
                if decision.status == BidStatus::Accepted {
                    summary.accepted_bids += 1;
                }
            }
        }
        Some(keys::DEADLINE) => {
            summary.pending_deadlines += 1;
            if summary.next_deadline_ms.is_none() {
                // The index is in due order, so the first entry is the earliest.
                summary.next_deadline_ms = keys::stamp_from(&key[1..]);
            }
        }
        Some(keys::META) if key == keys::meta(crate::state::META_STAMP).as_slice() => {
            summary.last_stamp_ms = Some(decode(value)?);
        }
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::state::tests::{bid, create, store, T0};

    #[test]
    fn counts_what_the_state_holds() {
        let (_dir, state) = store();
        let mut writer = state.writer().unwrap();
        writer
            .apply(T0, &create("a", "carol", T0, T0 + 60_000))
            .unwrap();
        writer
            .apply(T0, &create("b", "carol", T0, T0 + 10))
            .unwrap();
        writer.apply(T0 + 1, &bid("a", "bob", "k1", 5)).unwrap();
        // Not above the price: rejected, still a decision.
        writer.apply(T0 + 2, &bid("a", "bob", "k2", 5)).unwrap();
        // Past b's end: b ends on the way.
        writer.apply(T0 + 20, &bid("b", "bob", "k3", 5)).unwrap();
        writer.commit().unwrap();

        let summary = state.export().unwrap().summary().unwrap();
        assert_eq!(summary.auctions, 2);
        assert_eq!((summary.active, summary.ended), (1, 1));
        assert_eq!(summary.decisions, 3);
        assert_eq!(summary.accepted_bids, 1);
        assert_eq!(summary.idempotency_keys, 3);
        assert_eq!(summary.pending_deadlines, 1);
        assert_eq!(summary.next_deadline_ms, Some(T0 + 60_000));
        assert_eq!(summary.last_stamp_ms, Some(T0 + 20));
    }

    #[test]
    fn refuses_records_that_do_not_decode_or_keys_out_of_order() {
        let (_dir, state) = store();
        let mut writer = state.writer().unwrap();
        writer
            .apply(T0, &create("a", "carol", T0, T0 + 60_000))
            .unwrap();
        writer.commit().unwrap();
        let blob = state.export().unwrap();

        let mut bad_value = blob.clone();
        let auction = bad_value
            .pairs
            .iter_mut()
            .find(|(k, _)| k[0] == crate::keys::AUCTION)
            .unwrap();
        auction.1.truncate(3);
        assert!(bad_value.summary().is_err());

        let mut unordered = blob.clone();
        unordered.pairs.reverse();
        assert!(unordered.summary().is_err());
    }
}

//! Which decision each (bidder, idempotency key) of an auction got, kept in memory per group.
//!
//! The decision log is the only record of it: every decision carries its bidder and key, and a
//! key gets exactly one decision (a retry replays it, a reuse with another amount is refused
//! without one). Keeping a second record per bid in the tree cost a sled insert on every bid,
//! a lookup that missed on nearly every bid, and the leaf splits both caused: about a sixth of
//! a bid's apply. So each auction's keys are indexed here instead, built from its decision log
//! the first time a bid on it needs them, and extended by every commit after that.
//!
//! An entry is a 64-bit fingerprint of (bidder, key) and the decision's `seq`, not the strings:
//! about 20 bytes per decision instead of a hundred. A hit is confirmed by reading the decision
//! and comparing its bidder and key, and fingerprints shared by different keys (rare; the hasher
//! is seeded per process, so no one can aim for them) keep every `seq` they stand for, so an
//! answer never depends on the fingerprint alone.
//!
//! Bounded by `entries_max` over the whole group: past it, the least recently used auctions are
//! dropped until a quarter of the room is free again; they are rebuilt from their logs when
//! needed. Memory is about 20 bytes per decision of the auctions in use, so the default bound
//! (`INDEX_ENTRIES_MAX`) is about 40 MB per group at most.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};

/// Decisions indexed per group at most (before the auction being looked up is counted).
pub(crate) const INDEX_ENTRIES_MAX: usize = 2_000_000;

pub(crate) struct IdempotencyIndex {
    hasher: RandomState,
    /// All ones; tests narrow it so that different keys share fingerprints.
    fingerprint_mask: u64,
    auctions: HashMap<String, AuctionKeys>,
    /// Decisions indexed, plus one per auction (an empty auction still costs a slot).
    entries: usize,
    entries_max: usize,
    /// Counts lookups, to order auctions by last use.
    clock: u64,
}

#[derive(Default)]
pub(crate) struct AuctionKeys {
    /// Fingerprint -> `seq` of the decision with that fingerprint.
    seqs: HashMap<u64, u64>,
    /// Further `seq`s of fingerprints that more than one key of this auction hashed to.
    shared: HashMap<u64, Vec<u64>>,
    last_used: u64,
}

/// The decisions whose key may be the one looked up, to be confirmed against their records.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Candidates {
    pub first: Option<u64>,
    pub more: Vec<u64>,
}

impl Candidates {
    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.first.into_iter().chain(self.more.iter().copied())
    }
}

impl AuctionKeys {
    /// Adds `seq` under `fingerprint`; returns whether it was not there yet.
    pub fn insert(&mut self, fingerprint: u64, seq: u64) -> bool {
        let Some(&first) = self.seqs.get(&fingerprint) else {
            self.seqs.insert(fingerprint, seq);
            return true;
        };
        if first == seq {
            return false;
        }
        let more = self.shared.entry(fingerprint).or_default();
        if more.contains(&seq) {
            return false;
        }
        more.push(seq);
        true
    }

    fn candidates(&self, fingerprint: u64) -> Candidates {
        Candidates {
            first: self.seqs.get(&fingerprint).copied(),
            more: self.shared.get(&fingerprint).cloned().unwrap_or_default(),
        }
    }

    fn entries(&self) -> usize {
        1 + self.seqs.len() + self.shared.values().map(Vec::len).sum::<usize>()
    }
}

impl IdempotencyIndex {
    pub fn new(entries_max: usize) -> IdempotencyIndex {
        IdempotencyIndex {
            hasher: RandomState::new(),
            fingerprint_mask: u64::MAX,
            auctions: HashMap::new(),
            entries: 0,
            entries_max,
            clock: 0,
        }
    }

    /// Forgets every auction (keeping the bound and the hasher).
    pub fn clear(&mut self) {
        self.auctions.clear();
        self.entries = 0;
    }

    pub fn fingerprint(&self, bidder_id: &str, key: &str) -> u64 {
        let mut hasher = self.hasher.build_hasher();
        // Both are hashed with their lengths (`str`'s Hash), so ("ab", "c") and ("a", "bc")
        // do not hash alike by construction.
        bidder_id.hash(&mut hasher);
        key.hash(&mut hasher);
        hasher.finish() & self.fingerprint_mask
    }

    /// An index whose fingerprints keep only the bits of `mask`.
    #[cfg(test)]
    pub fn with_fingerprint_mask(mut self, mask: u64) -> IdempotencyIndex {
        self.fingerprint_mask = mask;
        self
    }

    /// The candidates for `fingerprint` in `auction_id`, or `None` when the auction is not
    /// indexed (never built, or dropped): then only its decision log can tell.
    pub fn candidates(&mut self, auction_id: &str, fingerprint: u64) -> Option<Candidates> {
        self.clock += 1;
        let keys = self.auctions.get_mut(auction_id)?;
        keys.last_used = self.clock;
        Some(keys.candidates(fingerprint))
    }

    /// Adds an auction's index built from its whole decision log, making room if needed.
    pub fn load(&mut self, auction_id: &str, mut keys: AuctionKeys) {
        self.clock += 1;
        keys.last_used = self.clock;
        let added = keys.entries();
        if let Some(replaced) = self.auctions.insert(auction_id.to_owned(), keys) {
            self.entries -= replaced.entries();
        }
        self.entries += added;
        if self.entries > self.entries_max {
            self.make_room(auction_id);
        }
    }

    /// Records a committed decision, if its auction is indexed (otherwise its log has it),
    /// making room if needed: commits grow the index as much as loads do.
    pub fn record(&mut self, auction_id: &str, fingerprint: u64, seq: u64) {
        let Some(keys) = self.auctions.get_mut(auction_id) else {
            return;
        };
        if keys.insert(fingerprint, seq) {
            self.entries += 1;
            if self.entries > self.entries_max {
                self.make_room(auction_id);
            }
        }
    }

    /// Drops the least recently used auctions (never `keep`) until a quarter of the bound is
    /// free, so that a run of loads past the bound sorts the auctions once, not once each.
    fn make_room(&mut self, keep: &str) {
        let target = self.entries_max - self.entries_max / 4;
        let mut by_age: Vec<(u64, String)> = self
            .auctions
            .iter()
            .filter(|(id, _)| id.as_str() != keep)
            .map(|(id, keys)| (keys.last_used, id.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, id) in by_age {
            if self.entries <= target {
                break;
            }
            if let Some(dropped) = self.auctions.remove(&id) {
                self.entries -= dropped.entries();
            }
        }
    }

    #[cfg(test)]
    pub fn indexed_auctions(&self) -> usize {
        self.auctions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_fingerprints_keep_every_seq() {
        let mut keys = AuctionKeys::default();
        assert!(keys.insert(7, 1));
        assert!(keys.insert(7, 4));
        assert!(!keys.insert(7, 4));
        assert!(!keys.insert(7, 1));
        assert!(keys.insert(9, 2));
        assert_eq!(keys.candidates(7).seqs().collect::<Vec<_>>(), vec![1, 4]);
        assert_eq!(keys.candidates(9).seqs().collect::<Vec<_>>(), vec![2]);
        assert_eq!(keys.candidates(8), Candidates::default());
        assert_eq!(keys.entries(), 4);
    }

    #[test]
    fn past_the_bound_the_least_recently_used_auctions_go_first() {
        let mut index = IdempotencyIndex::new(40);
        for i in 0..4u64 {
            let mut keys = AuctionKeys::default();
            for seq in 1..=9 {
                keys.insert(i * 100 + seq, seq);
            }
            index.load(&format!("a{i}"), keys);
        }
        assert_eq!(index.entries, 40);
        // a0 is used again, so a1 is now the oldest.
        assert!(index.candidates("a0", 1).is_some());
        index.load("a4", AuctionKeys::default());
        // 41 > 40: dropped until at most 30 remain, oldest first (a1, then a2).
        assert!(index.candidates("a1", 101).is_none());
        assert!(index.candidates("a2", 201).is_none());
        assert_eq!(index.candidates("a0", 1).unwrap().first, Some(1));
        assert!(index.candidates("a3", 301).is_some());
        assert!(index.candidates("a4", 1).is_some());
        assert_eq!(index.entries, 21);
        assert_eq!(index.indexed_auctions(), 3);
    }

    #[test]
    fn records_reach_only_indexed_auctions_and_are_counted() {
        let mut index = IdempotencyIndex::new(100);
        index.record("a", 1, 1);
        assert!(index.candidates("a", 1).is_none());
        index.load("a", AuctionKeys::default());
        index.record("a", 1, 1);
        index.record("a", 2, 2);
        assert_eq!(index.candidates("a", 2).unwrap().first, Some(2));
        assert_eq!(index.entries, 3);
    }

    #[test]
    fn commits_past_the_bound_make_room_too() {
        let mut index = IdempotencyIndex::new(8);
        index.load("old", AuctionKeys::default());
        index.load("hot", AuctionKeys::default());
        for seq in 1..=6 {
            index.record("old", 100 + seq, seq);
        }
        // 2 + 6 = 8 entries: at the bound. The hot auction's first decision crosses it.
        assert_eq!(index.entries, 8);
        index.record("hot", 1, 1);
        assert!(index.candidates("old", 101).is_none());
        assert_eq!(index.candidates("hot", 1).unwrap().first, Some(1));
        assert_eq!(index.entries, 2);
    }

    #[test]
    fn fingerprints_separate_the_two_fields() {
        let index = IdempotencyIndex::new(1);
        assert_ne!(index.fingerprint("ab", "c"), index.fingerprint("a", "bc"));
        assert_eq!(index.fingerprint("a", "b"), index.fingerprint("a", "b"));
    }
}

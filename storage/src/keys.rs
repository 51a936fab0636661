//! Key encodings for the state machine tree: a one-byte prefix per record kind, then fields in
//! an order that makes sled's byte order the order we scan in.
//!
//! Strings inside keys are length-prefixed (u16) so no id can run into the next field.

use gavel_rules::StampMs;

pub const AUCTION: u8 = b'A';
pub const DECISION: u8 = b'B';
/// Idempotency records, one per bid, written by versions before the in-memory index
/// (`idempotency.rs`). No longer written; removed where found (`state::drop_idempotency_records`).
pub const IDEMPOTENCY: u8 = b'K';
pub const BY_CREATED: u8 = b'C';
pub const BY_CREATOR: u8 = b'U';
pub const DEADLINE: u8 = b'D';
pub const META: u8 = b'M';

pub fn push_str(key: &mut Vec<u8>, value: &str) {
    // Ids are validated to far fewer than 65,535 bytes at the edge; clamp defensively anyway.
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(&value.as_bytes()[..usize::from(len)]);
}

/// Maps a signed stamp to bytes whose unsigned order is the numeric order.
pub fn stamp_bytes(stamp: StampMs) -> [u8; 8] {
    ((stamp as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn stamp_from(bytes: &[u8]) -> Option<StampMs> {
    let array: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(array) ^ (1 << 63)) as i64)
}

pub fn auction(id: &str) -> Vec<u8> {
    let mut key = vec![AUCTION];
    push_str(&mut key, id);
    key
}

/// The id in an auction record's key.
pub fn auction_id(key: &[u8]) -> Option<String> {
    let len = usize::from(u16::from_be_bytes(key.get(1..3)?.try_into().ok()?));
    let id = key.get(3..3 + len)?;
    Some(String::from_utf8_lossy(id).into_owned())
}

pub fn decision_prefix(auction_id: &str) -> Vec<u8> {
    let mut key = vec![DECISION];
    push_str(&mut key, auction_id);
    key
}

pub fn decision(auction_id: &str, seq: u64) -> Vec<u8> {
    let mut key = decision_prefix(auction_id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// A bid's (auction, bidder, key) as one byte string: the batch's own index of its decisions.
pub fn idempotency(auction_id: &str, bidder_id: &str, key_text: &str) -> Vec<u8> {
    let mut key = vec![IDEMPOTENCY];
    push_str(&mut key, auction_id);
    push_str(&mut key, bidder_id);
    push_str(&mut key, key_text);
    key
}

/// Newest-first listing index: (createdAt, id).
pub fn by_created(created_at_ms: StampMs, id: &str) -> Vec<u8> {
    let mut key = vec![BY_CREATED];
    key.extend_from_slice(&stamp_bytes(created_at_ms));
    key.extend_from_slice(id.as_bytes());
    key
}

pub fn by_creator_prefix(creator_id: &str) -> Vec<u8> {
    let mut key = vec![BY_CREATOR];
    push_str(&mut key, creator_id);
    key
}

pub fn by_creator(creator_id: &str, created_at_ms: StampMs, id: &str) -> Vec<u8> {
    let mut key = by_creator_prefix(creator_id);
    key.extend_from_slice(&stamp_bytes(created_at_ms));
    key.extend_from_slice(id.as_bytes());
    key
}

pub fn deadline(due_ms: StampMs, id: &str) -> Vec<u8> {
    let mut key = vec![DEADLINE];
    key.extend_from_slice(&stamp_bytes(due_ms));
    key.extend_from_slice(id.as_bytes());
    key
}

pub fn meta(name: &str) -> Vec<u8> {
    let mut key = vec![META];
    key.extend_from_slice(name.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_sort_numerically_and_round_trip() {
        let stamps = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in stamps.windows(2) {
            assert!(stamp_bytes(pair[0]) < stamp_bytes(pair[1]));
        }
        for stamp in stamps {
            assert_eq!(stamp_from(&stamp_bytes(stamp)), Some(stamp));
        }
    }

    #[test]
    fn length_prefix_keeps_fields_apart() {
        assert_ne!(idempotency("a", "bc", "d"), idempotency("ab", "c", "d"));
        assert!(decision("x", 2) < decision("x", 10));
    }
}

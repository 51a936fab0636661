//! Opaque pagination cursors: base64url text that encodes where a listing continues.
//!
//! Clients must treat cursors as opaque; we only promise that a `nextCursor` we sent continues
//! that listing. Each kind carries its own prefix so a bid cursor given to the auction listing
//! (or a made-up one) is a 400, not a silently wrong page.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use gavel_cluster::AuctionCursor;

use crate::http::problem::ApiError;

/// The longest cursor text we decode, in bytes.
const CURSOR_LEN_MAX: usize = 512;
const AUCTION_PREFIX: &str = "a1:";
const BID_PREFIX: &str = "b1:";

pub fn encode_auction_cursor(cursor: &AuctionCursor) -> String {
    URL_SAFE_NO_PAD.encode(format!(
        "{AUCTION_PREFIX}{}:{}",
        cursor.created_at_ms, cursor.id
    ))
}

pub fn decode_auction_cursor(text: &str) -> Result<AuctionCursor, ApiError> {
    let payload = decode(text)?;
    let (stamp, id) = payload
        .strip_prefix(AUCTION_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .ok_or_else(invalid)?;
    let created_at_ms = parse_canonical_i64(stamp).ok_or_else(invalid)?;
    if !crate::http::api::is_valid_id(id) {
        return Err(invalid());
    }
    Ok(AuctionCursor {
        created_at_ms,
        id: id.to_owned(),
    })
}

pub fn encode_bid_cursor(after_seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("{BID_PREFIX}{after_seq}"))
}

pub fn decode_bid_cursor(text: &str) -> Result<u64, ApiError> {
    let payload = decode(text)?;
    let seq = payload.strip_prefix(BID_PREFIX).ok_or_else(invalid)?;
    let canonical = !seq.is_empty() && (seq == "0" || !seq.starts_with('0'));
    if !canonical || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    seq.parse::<u64>().map_err(|_| invalid())
}

fn decode(text: &str) -> Result<String, ApiError> {
    if text.is_empty() || text.len() > CURSOR_LEN_MAX {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid())?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

/// An `i64` written the way `to_string` writes it (no `+`, no leading zeros).
fn parse_canonical_i64(text: &str) -> Option<i64> {
    let value = text.parse::<i64>().ok()?;
    (value.to_string() == text).then_some(value)
}

fn invalid() -> ApiError {
    ApiError::BadRequest("cursor is not valid: pass a nextCursor exactly as received".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auction_cursor_round_trip() {
        for cursor in [
            AuctionCursor {
                created_at_ms: 1_795_000_000_123,
                id: "6f1c1f38-5f0e-4c1e-9a43-2b0c5f1d9e77".into(),
            },
            AuctionCursor {
                created_at_ms: -5,
                id: "a".into(),
            },
        ] {
            let text = encode_auction_cursor(&cursor);
            assert!(text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(decode_auction_cursor(&text).unwrap(), cursor);
        }
    }

    #[test]
    fn bid_cursor_round_trip() {
        for seq in [0, 1, 99, u64::MAX] {
            assert_eq!(decode_bid_cursor(&encode_bid_cursor(seq)).unwrap(), seq);
        }
    }

    #[test]
    fn bad_cursors_are_refused() {
        let b64 = |text: &str| URL_SAFE_NO_PAD.encode(text);
        for text in [
            String::new(),
            "!!!".into(),
            "a".repeat(600),
            b64("hello"),
            b64("a1:"),
            b64("a1:12"),
            b64("a1:x:id"),
            b64("a1:012:id"),
            b64("a1:12:bad/id"),
            b64("a1:12:"),
            encode_bid_cursor(5),
        ] {
            assert!(decode_auction_cursor(&text).is_err(), "{text:?}");
        }
        for text in [
            String::new(),
            b64("b1:"),
            b64("b1:-1"),
            b64("b1:01"),
            b64("b1:+1"),
            b64("b1:99999999999999999999999"),
            encode_auction_cursor(&AuctionCursor {
                created_at_ms: 1,
                id: "x".into(),
            }),
        ] {
            assert!(decode_bid_cursor(&text).is_err(), "{text:?}");
        }
    }
}

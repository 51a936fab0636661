//! One live-update frame: the JSON event of API.md ("Live updates"), serialized once into the
//! exact bytes every viewer is sent, as a WebSocket text payload and as an SSE record.
//!
//! A `Frame` is immutable and cheap to clone (an `Arc`): the hub renders each applied change once
//! and every connection sends the same bytes. This module knows the wire shape and nothing of
//! connections, channels or the engine.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gavel_rules::{Auction, ChangeKind, Status};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::http::json::{format_money, format_time};

/// The SSE reconnection delay a browser's `EventSource` is told to use, in milliseconds.
pub const SSE_RETRY_MS: u64 = 2_000;

/// The `type` of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// The first frame of every connection: the state when it was opened.
    Snapshot,
    /// After an accepted bid.
    Bid,
    /// After start, pause or resume.
    Status,
    /// About every second while not ended; carries the current version without changing it.
    Tick,
    /// Once, when the auction has ended; the last frame of a connection.
    Ended,
}

impl FrameKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FrameKind::Snapshot => "snapshot",
            FrameKind::Bid => "bid",
            FrameKind::Status => "status",
            FrameKind::Tick => "tick",
            FrameKind::Ended => "ended",
        }
    }

    /// The frame one applied command gives: `ended` if it ended the auction, else the kind of
    /// its last change (a start by time followed by a bid is a `bid`; the frame carries the
    /// state after both).
    pub fn of_changes(kinds: impl IntoIterator<Item = ChangeKind>) -> FrameKind {
        let mut frame = FrameKind::Status;
        for kind in kinds {
            frame = match kind {
                ChangeKind::Ended => return FrameKind::Ended,
                ChangeKind::Bid => FrameKind::Bid,
                ChangeKind::Status => FrameKind::Status,
            };
        }
        frame
    }

    /// The frame for a state re-read from the replica (after the node channel lagged), from
    /// what differs between the state last published and the new one.
    pub fn of_difference(before: Option<&Auction>, after: &Auction) -> FrameKind {
        match (after.status, before) {
            (Status::Ended, _) => FrameKind::Ended,
            (status, Some(before)) if before.status == status => FrameKind::Bid,
            _ => FrameKind::Status,
        }
    }
}

/// The JSON event, field for field as API.md lists it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventJson<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    auction_id: &'a str,
    status: &'static str,
    current_price: String,
    winner_id: Option<&'a str>,
    version: u64,
    end_at: String,
    remaining_ms: i64,
    server_time: String,
}

/// A rendered frame. Clones share the bytes.
#[derive(Clone, Debug)]
pub struct Frame(Arc<Rendered>);

#[derive(Debug)]
struct Rendered {
    kind: FrameKind,
    version: u64,
    /// The JSON event: a WebSocket text frame's payload.
    text: Utf8Bytes,
    /// `id:`, `event:` and `data:` lines and the blank line that ends an SSE record.
    sse: Bytes,
    /// `text` as a whole WebSocket text frame from the server (unmasked, so the same bytes for
    /// every connection): what the crowd writes straight to its viewers' sockets.
    ws: Bytes,
    /// When the change was applied on this node (or, for a re-read state, read), for the
    /// apply-to-send latency.
    received_at: Instant,
}

impl Frame {
    /// Whether both are the same render (for tests of sharing).
    #[cfg(test)]
    pub fn shares_bytes_with(&self, other: &Frame) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Renders `auction` as a `kind` frame at `now_ms` on this node's clock. `received_at` is when
    /// the change it reports was applied on this node.
    pub fn render(kind: FrameKind, auction: &Auction, now_ms: i64, received_at: Instant) -> Frame {
        let event = EventJson {
            kind: kind.as_str(),
            auction_id: &auction.id,
            status: auction.status.as_str(),
            current_price: format_money(auction.current_price),
            winner_id: auction.current_winner_id.as_deref(),
            version: auction.version,
            end_at: format_time(auction.end_at_ms),
            remaining_ms: remaining_ms(auction, now_ms),
            server_time: format_time(now_ms),
        };
        // Strings, integers and null only: serializing cannot fail.
        let json = serde_json::to_string(&event).unwrap_or_else(|_| {
            unreachable!("invariant: a stream event is plain strings and integers")
        });
        let retry = if kind == FrameKind::Snapshot {
            format!("retry: {SSE_RETRY_MS}\n")
        } else {
            String::new()
        };
        let sse = format!(
            "{retry}id: {}\nevent: {}\ndata: {json}\n\n",
            auction.version,
            kind.as_str()
        );
        let ws = ws_text_frame(json.as_bytes());
        Frame(Arc::new(Rendered {
            kind,
            version: auction.version,
            ws,
            text: Utf8Bytes::from(json),
            sse: Bytes::from(sse),
            received_at,
        }))
    }

    pub fn kind(&self) -> FrameKind {
        self.0.kind
    }

    pub fn version(&self) -> u64 {
        self.0.version
    }

    /// The WebSocket text payload (shared bytes).
    pub fn text(&self) -> Utf8Bytes {
        self.0.text.clone()
    }

    /// The SSE record (shared bytes).
    pub fn sse(&self) -> Bytes {
        self.0.sse.clone()
    }

    /// The whole WebSocket text frame (shared bytes).
    pub fn ws(&self) -> Bytes {
        self.0.ws.clone()
    }

    pub fn received_at(&self) -> Instant {
        self.0.received_at
    }
}

/// A final, unmasked WebSocket text frame carrying `payload` (RFC 6455 section 5.2).
pub fn ws_text_frame(payload: &[u8]) -> Bytes {
    const FIN_TEXT: u8 = 0x81;
    let mut frame = Vec::with_capacity(payload.len() + 10);
    frame.push(FIN_TEXT);
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=0xFFFF => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    Bytes::from(frame)
}

/// Milliseconds left until the auction ends on this node's clock: until `endAt` while scheduled
/// or active, frozen at what is left while paused (resume moves `endAt` by the pause), 0 once
/// ended or overdue.
pub fn remaining_ms(auction: &Auction, now_ms: i64) -> i64 {
    let until = match auction.status {
        Status::Ended => return 0,
        Status::Paused => auction.paused_at_ms.unwrap_or(now_ms),
        Status::Scheduled | Status::Active => now_ms,
    };
    auction.end_at_ms.saturating_sub(until).max(0)
}

#[cfg(test)]
mod tests {
    use gavel_rules::{Change, CreateAuction};
    use rust_decimal::Decimal;

    use super::*;

    pub fn auction(status: Status, version: u64) -> Auction {
        let request = CreateAuction {
            post_id: "post".into(),
            start_at_ms: 1_000,
            end_at_ms: 61_000,
            start_price: Decimal::new(1000, 2),
            min_increment: Decimal::new(100, 2),
            anti_sniping_seconds: 0,
        };
        Auction {
            id: "a-1".into(),
            post_id: request.post_id.clone(),
            creator_id: "carol".into(),
            status,
            start_at_ms: request.start_at_ms,
            end_at_ms: request.end_at_ms,
            start_price: request.start_price,
            min_increment: request.min_increment,
            anti_sniping_seconds: 0,
            current_price: Decimal::new(1250, 2),
            current_winner_id: Some("bob".into()),
            bid_count: 1,
            decision_count: 1,
            version,
            created_at_ms: 500,
            ended_at_ms: None,
            paused_at_ms: None,
            create_key: None,
            create_request: request,
        }
    }

    #[test]
    fn renders_the_api_shape_once_for_both_transports() {
        let frame = Frame::render(
            FrameKind::Bid,
            &auction(Status::Active, 4),
            31_000,
            Instant::now(),
        );
        let json: serde_json::Value = serde_json::from_str(frame.text().as_str()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "bid", "auctionId": "a-1", "status": "active", "currentPrice": "12.50",
                "winnerId": "bob", "version": 4, "endAt": "1970-01-01T00:01:01.000Z",
                "remainingMs": 30000, "serverTime": "1970-01-01T00:00:31.000Z"
            })
        );
        let sse = String::from_utf8(frame.sse().to_vec()).unwrap();
        assert_eq!(
            sse,
            format!("id: 4\nevent: bid\ndata: {}\n\n", frame.text().as_str())
        );
        // Clones share the bytes: nothing is serialized per viewer.
        assert_eq!(frame.text().as_ptr(), frame.clone().text().as_ptr());
        assert_eq!(frame.sse().as_ptr(), frame.sse().as_ptr());
    }

    #[test]
    fn snapshot_tells_eventsource_its_retry_delay() {
        let frame = Frame::render(
            FrameKind::Snapshot,
            &auction(Status::Active, 2),
            0,
            Instant::now(),
        );
        assert!(String::from_utf8(frame.sse().to_vec())
            .unwrap()
            .starts_with(&format!("retry: {SSE_RETRY_MS}\nid: 2\nevent: snapshot\n")));
    }

    #[test]
    fn a_ws_frame_is_a_final_unmasked_text_frame_of_any_length() {
        use std::io::Cursor;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
        for len in [0usize, 125, 126, 300, 0xFFFF, 0x1_0000] {
            let payload = vec![b'x'; len];
            let frame = ws_text_frame(&payload);
            let mut cursor = Cursor::new(frame.as_ref());
            let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert!(header.is_final, "length {len}");
            assert_eq!(header.opcode, OpCode::Data(Data::Text), "length {len}");
            assert_eq!(header.mask, None, "a server's frames are unmasked");
            assert_eq!(length, len as u64);
            assert_eq!(&frame[cursor.position() as usize..], &payload[..]);
        }
    }

    #[test]
    fn remaining_time_by_status() {
        let mut a = auction(Status::Active, 2);
        assert_eq!(remaining_ms(&a, 60_000), 1_000);
        assert_eq!(remaining_ms(&a, 70_000), 0, "overdue is 0, never negative");
        a.status = Status::Paused;
        a.paused_at_ms = Some(41_000);
        assert_eq!(remaining_ms(&a, 59_000), 20_000, "frozen while paused");
        a.status = Status::Ended;
        assert_eq!(remaining_ms(&a, 2_000), 0);
        a.status = Status::Scheduled;
        assert_eq!(remaining_ms(&a, 1_000), 60_000);
    }

    #[test]
    fn frame_kind_of_an_applied_command() {
        let kinds = |changes: &[Change]| FrameKind::of_changes(changes.iter().map(|c| c.kind));
        let change = |kind, version| Change { kind, version };
        assert_eq!(
            kinds(&[change(ChangeKind::Status, 2), change(ChangeKind::Bid, 3)]),
            FrameKind::Bid
        );
        assert_eq!(kinds(&[change(ChangeKind::Status, 2)]), FrameKind::Status);
        assert_eq!(
            kinds(&[change(ChangeKind::Ended, 5), change(ChangeKind::Bid, 6)]),
            FrameKind::Ended
        );
        let active = auction(Status::Active, 3);
        let paused = auction(Status::Paused, 4);
        let ended = auction(Status::Ended, 5);
        assert_eq!(
            FrameKind::of_difference(Some(&active), &paused),
            FrameKind::Status
        );
        assert_eq!(
            FrameKind::of_difference(Some(&active), &active),
            FrameKind::Bid
        );
        assert_eq!(FrameKind::of_difference(None, &ended), FrameKind::Ended);
    }
}

//! The peer wire format: `[u32 big-endian payload length][payload]`, where the payload is one
//! protocol-version byte and then the bincode of an `Envelope`.
//!
//! Decoding trusts nothing: the length is checked against the configured bound before any
//! allocation, bincode runs with the same byte limit, trailing bytes are an error, and an
//! unknown protocol version is refused before the body is read.

use bincode::Options;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::messages::{PeerRequest, PeerResponse};

/// The peer protocol version; both ends must speak the same one.
/// 2: clock probes (a version-1 node would drop the connection on one) and `Busy` answers.
pub const PROTOCOL_VERSION: u8 = 2;

/// Bytes of the length prefix.
const LENGTH_PREFIX_BYTES: usize = 4;

/// The first frame each side sends on a new connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node_id: u64,
    pub client_addr: String,
    pub peer_addr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Message {
    Hello(Hello),
    Request(PeerRequest),
    Response(PeerResponse),
}

/// One frame: a message with the id that pairs a response with its request and the Raft group
/// it concerns (0 where none applies).
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    pub request_id: u64,
    pub group: u32,
    pub message: Message,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("peer speaks protocol version {0}, this node speaks {PROTOCOL_VERSION}")]
    Version(u8),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

fn encoder() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_big_endian()
}

fn decoder(frame_bytes_max: usize) -> impl Options {
    encoder()
        .with_limit(frame_bytes_max as u64)
        .reject_trailing_bytes()
}

/// Encodes `envelope` as a whole frame, length prefix included.
pub fn encode_frame(envelope: &Envelope, frame_bytes_max: usize) -> Result<Vec<u8>, FrameError> {
    // Our own values: encode in full, then check the size against the limit.
    let body = encoder()
        .serialize(envelope)
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = body.len() + 1;
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    let mut frame = Vec::with_capacity(LENGTH_PREFIX_BYTES + len);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(&body);
    Ok(frame)
}

/// Decodes one payload (the bytes after the length prefix).
pub fn decode_payload(payload: &[u8], frame_bytes_max: usize) -> Result<Envelope, FrameError> {
    let (&version, body) = payload.split_first().ok_or(FrameError::Empty)?;
    if version != PROTOCOL_VERSION {
        return Err(FrameError::Version(version));
    }
    decoder(frame_bytes_max)
        .deserialize(body)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Reads one frame. Returns `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    frame_bytes_max: usize,
) -> Result<Option<Envelope>, FrameError> {
    let mut prefix = [0u8; LENGTH_PREFIX_BYTES];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > frame_bytes_max {
        return Err(FrameError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    let mut payload = vec![0u8; len];
    reader.read_exact(&mut payload).await?;
    decode_payload(&payload, frame_bytes_max).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::messages::AppRequest;
    use proptest::prelude::*;

    const MAX: usize = 64 * 1024;

    fn sample() -> Envelope {
        Envelope {
            request_id: 42,
            group: 3,
            message: Message::Request(PeerRequest::App(AppRequest {
                kind: 7,
                body: vec![1, 2, 3],
            })),
        }
    }

    #[tokio::test]
    async fn round_trips_through_a_stream() {
        let mut bytes = encode_frame(&sample(), MAX).unwrap();
        bytes.extend(encode_frame(&sample(), MAX).unwrap());
        let mut reader = bytes.as_slice();
        for _ in 0..2 {
            let envelope = read_frame(&mut reader, MAX).await.unwrap().unwrap();
            assert_eq!((envelope.request_id, envelope.group), (42, 3));
        }
        assert!(read_frame(&mut reader, MAX).await.unwrap().is_none());
    }

    fn probe(request_id: u64, sent_ms: i64) -> Envelope {
        Envelope {
            request_id,
            group: 0,
            message: Message::Request(PeerRequest::ClockProbe { sent_ms }),
        }
    }

    fn probe_answer(request_id: u64, now_ms: i64) -> Envelope {
        Envelope {
            request_id,
            group: 0,
            message: Message::Response(PeerResponse::ClockProbe { now_ms }),
        }
    }

    #[test]
    fn clock_probes_round_trip() {
        for sent_ms in [0, 1_764_547_200_000, -1, i64::MIN, i64::MAX] {
            let frame = encode_frame(&probe(9, sent_ms), MAX).unwrap();
            let decoded = decode_payload(&frame[4..], MAX).unwrap();
            assert_eq!(decoded.request_id, 9);
            assert!(matches!(
                decoded.message,
                Message::Request(PeerRequest::ClockProbe { sent_ms: s }) if s == sent_ms
            ));
            let frame = encode_frame(&probe_answer(9, sent_ms), MAX).unwrap();
            let decoded = decode_payload(&frame[4..], MAX).unwrap();
            assert!(matches!(
                decoded.message,
                Message::Response(PeerResponse::ClockProbe { now_ms }) if now_ms == sent_ms
            ));
        }
        // A probe with a byte missing or one too many is refused, not misread.
        let frame = encode_frame(&probe(1, 42), MAX).unwrap();
        assert!(decode_payload(&frame[4..frame.len() - 1], MAX).is_err());
        let mut longer = frame[4..].to_vec();
        longer.push(0);
        assert!(decode_payload(&longer, MAX).is_err());
    }

    fn busy(request_id: u64, in_flight_max: u32) -> Envelope {
        Envelope {
            request_id,
            group: 5,
            message: Message::Response(PeerResponse::Busy { in_flight_max }),
        }
    }

    #[test]
    fn busy_answers_round_trip() {
        for in_flight_max in [0, 1, 256, u32::MAX] {
            let frame = encode_frame(&busy(11, in_flight_max), MAX).unwrap();
            let decoded = decode_payload(&frame[4..], MAX).unwrap();
            assert_eq!((decoded.request_id, decoded.group), (11, 5));
            assert!(matches!(
                decoded.message,
                Message::Response(PeerResponse::Busy { in_flight_max: m }) if m == in_flight_max
            ));
        }
        let frame = encode_frame(&busy(1, 256), MAX).unwrap();
        assert!(decode_payload(&frame[4..frame.len() - 1], MAX).is_err());
        let mut longer = frame[4..].to_vec();
        longer.push(0);
        assert!(decode_payload(&longer, MAX).is_err());
    }

    #[tokio::test]
    async fn refuses_oversized_and_foreign_frames() {
        let mut oversized = ((MAX + 1) as u32).to_be_bytes().to_vec();
        oversized.extend([0u8; 16]);
        let result = read_frame(&mut oversized.as_slice(), MAX).await;
        assert!(matches!(result, Err(FrameError::TooLarge { .. })));

        let mut frame = encode_frame(&sample(), MAX).unwrap();
        frame[4] = PROTOCOL_VERSION + 1;
        assert!(matches!(
            read_frame(&mut frame.as_slice(), MAX).await,
            Err(FrameError::Version(_))
        ));
        let big = Envelope {
            request_id: 1,
            group: 0,
            message: Message::Request(PeerRequest::App(AppRequest {
                kind: 1,
                body: vec![0; MAX],
            })),
        };
        assert!(matches!(
            encode_frame(&big, MAX),
            Err(FrameError::TooLarge { .. })
        ));
    }

    proptest! {
        // The decoder is fed arbitrary bytes and mutated valid frames: it must answer with an
        // error or a value, never panic or allocate beyond the limit.
        #[test]
        fn decoder_survives_arbitrary_payloads(payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_payload(&payload, MAX);
        }

        #[test]
        fn decoder_survives_mutated_frames(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
            let mut frame = encode_frame(&sample(), MAX).unwrap();
            for (at, byte) in flips {
                let len = frame.len();
                frame[4 + at % (len - 4)] = byte;
            }
            let _ = decode_payload(&frame[4..], MAX);
        }

        #[test]
        fn decoder_survives_mutated_clock_probes(
            sent_ms in any::<i64>(),
            answer in any::<bool>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let envelope = if answer { probe_answer(7, sent_ms) } else { probe(7, sent_ms) };
            let mut frame = encode_frame(&envelope, MAX).unwrap();
            for (at, byte) in flips {
                let len = frame.len();
                frame[4 + at % (len - 4)] = byte;
            }
            let _ = decode_payload(&frame[4..], MAX);
        }

        #[test]
        fn decoder_survives_mutated_busy_answers(
            in_flight_max in any::<u32>(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut frame = encode_frame(&busy(3, in_flight_max), MAX).unwrap();
            for (at, byte) in flips {
                let len = frame.len();
                frame[4 + at % (len - 4)] = byte;
            }
            let _ = decode_payload(&frame[4..], MAX);
        }

        #[test]
        fn busy_answers_round_trip_any_bound(in_flight_max in any::<u32>(), id in any::<u64>()) {
            let frame = encode_frame(&busy(id, in_flight_max), MAX).unwrap();
            let decoded = decode_payload(&frame[4..], MAX).unwrap();
            prop_assert_eq!(decoded.request_id, id);
            let same = matches!(
                decoded.message,
                Message::Response(PeerResponse::Busy { in_flight_max: m }) if m == in_flight_max
            );
            prop_assert!(same);
        }

        #[test]
        fn clock_probes_round_trip_any_reading(sent_ms in any::<i64>(), id in any::<u64>()) {
            let frame = encode_frame(&probe(id, sent_ms), MAX).unwrap();
            let decoded = decode_payload(&frame[4..], MAX).unwrap();
            prop_assert_eq!(decoded.request_id, id);
            let same = matches!(
                decoded.message,
                Message::Request(PeerRequest::ClockProbe { sent_ms: s }) if s == sent_ms
            );
            prop_assert!(same);
        }

        #[test]
        fn stream_reader_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            runtime.block_on(async {
                let mut reader = bytes.as_slice();
                while let Ok(Some(_)) = read_frame(&mut reader, MAX).await {}
            });
        }
    }
}

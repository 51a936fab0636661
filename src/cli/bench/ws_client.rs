//! A lean client WebSocket for the plain ws:// viewers of `gavel bench viewers-worker`: the
//! HTTP upgrade by hand, then server frames parsed straight out of one small per-connection
//! buffer. The workers share the benchmark's cores with the nodes they measure, so every
//! microsecond a frame costs here is taken from the server: tungstenite zero-filled a 4 KiB
//! read buffer on every read, went through `Stream` and `BytesMut` for each message, and
//! allocated each text message.
//!
//! Only what a viewer needs: text frames come back as borrowed bytes, pings are answered,
//! binary and pong frames are skipped, a close is answered and then the connection is read
//! until the server drops it. No extensions are offered, so any RSV bit is a protocol error.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::http::Uri;

/// A connection's buffer to begin with: server frames are a few hundred bytes.
const READ_BUFFER_BYTES: usize = 1024;
/// The largest frame or message accepted (the buffer grows to it on demand); a larger one
/// fails the connection.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// The longest upgrade response head accepted.
const RESPONSE_HEAD_BYTES_MAX: usize = 8 * 1024;
/// The longest control frame payload (RFC 6455, 5.5).
const CONTROL_PAYLOAD_BYTES_MAX: usize = 125;

const OPCODE_CONTINUATION: u8 = 0x0;
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;
const OPCODE_CLOSE: u8 = 0x8;
const OPCODE_PING: u8 = 0x9;
const OPCODE_PONG: u8 = 0xA;

#[derive(Debug)]
pub enum HandshakeError {
    Io(std::io::Error),
    /// The server answered with another status than 101; `Retry-After` in whole seconds.
    Http {
        status: u16,
        retry_after_s: Option<u64>,
    },
    /// A malformed or oversized response, a wrong `Sec-WebSocket-Accept`, or the connection
    /// closed before the response head ended.
    Protocol,
}

#[derive(Debug)]
pub enum ReadError {
    Io(std::io::Error),
    /// The server closed the TCP connection (after a close frame, the normal end).
    Eof,
    /// A frame RFC 6455 forbids a server to send, or one this client does not speak.
    Protocol(&'static str),
    /// A frame or message over `MESSAGE_BYTES_MAX`.
    TooLarge,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "io: {e}"),
            ReadError::Eof => f.write_str("the server closed the connection"),
            ReadError::Protocol(reason) => write!(f, "protocol: {reason}"),
            ReadError::TooLarge => write!(f, "a message over {MESSAGE_BYTES_MAX} bytes"),
        }
    }
}

impl std::error::Error for ReadError {}

/// What `LeanSocket::next` returns.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A whole text message (the payload is not checked to be UTF-8: the JSON parser does).
    Text(&'a [u8]),
    /// The server's close frame, already answered; the next `next` waits for the server to
    /// drop the connection.
    Close,
}

/// A server frame's header.
#[derive(Debug, PartialEq, Eq)]
struct FrameHeader {
    fin: bool,
    opcode: u8,
    header_bytes: usize,
    payload_bytes: usize,
}

/// The header at the start of `bytes`, `None` while it is incomplete.
fn parse_header(bytes: &[u8]) -> Result<Option<FrameHeader>, ReadError> {
    let &[first, second, ..] = bytes else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(ReadError::Protocol("reserved bits set"));
    }
    if second & 0x80 != 0 {
        return Err(ReadError::Protocol("masked server frame"));
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    let (header_bytes, payload_bytes) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(length) => (4, u64::from(u16::from_be_bytes([length[0], length[1]]))),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(length) => (
                10,
                u64::from_be_bytes(length.try_into().unwrap_or_default()),
            ),
            None => return Ok(None),
        },
        short => (2, u64::from(short)),
    };
    match opcode {
        OPCODE_CONTINUATION | OPCODE_TEXT | OPCODE_BINARY => {}
        OPCODE_CLOSE | OPCODE_PING | OPCODE_PONG => {
            if !fin || payload_bytes > CONTROL_PAYLOAD_BYTES_MAX as u64 {
                return Err(ReadError::Protocol("fragmented or long control frame"));
            }
        }
        _ => return Err(ReadError::Protocol("unknown opcode")),
    }
    if payload_bytes > MESSAGE_BYTES_MAX as u64 {
        return Err(ReadError::TooLarge);
    }
    Ok(Some(FrameHeader {
        fin,
        opcode,
        header_bytes,
        payload_bytes: payload_bytes as usize,
    }))
}

/// A masked client frame (RFC 6455 requires clients to mask everything they send) with a
/// control-sized payload.
fn masked_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    debug_assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX);
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x80 | opcode);
    frame.push(0x80 | payload.len() as u8);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Where a complete message lies (indices, not a borrow, so the read loop stays simple).
enum Parsed {
    Text(std::ops::Range<usize>),
    Reassembled,
    Ping(std::ops::Range<usize>),
    Close(std::ops::Range<usize>),
    Skipped,
}

pub struct LeanSocket<S = tokio::net::TcpStream> {
    stream: S,
    /// Bytes read: `buffer[start..end]` are not parsed yet. Zero-filled only when it is
    /// allocated or grows, never per read.
    buffer: Vec<u8>,
    start: usize,
    end: usize,
    /// A fragmented message being reassembled (empty, unallocated, unless a server fragments).
    message: Vec<u8>,
    /// Whether `message` is a text message (its first frame's opcode).
    message_is_text: bool,
    fragmented: bool,
    closed: bool,
}

/// Performs the client's upgrade handshake for `uri` on `stream`. Bytes the server sent
/// after the response head are the first frames and stay in the socket's buffer.
pub async fn handshake<S>(mut stream: S, uri: &Uri) -> Result<LeanSocket<S>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = BASE64.encode(rand::thread_rng().gen::<[u8; 16]>());
    let request = upgrade_request(uri, &key);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(HandshakeError::Io)?;
    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
    let mut end = 0;
    let head_bytes = loop {
        if let Some(at) = find_head_end(&buffer[..end]) {
            break at;
        }
        if end == buffer.len() {
            if buffer.len() >= RESPONSE_HEAD_BYTES_MAX {
                return Err(HandshakeError::Protocol);
            }
            buffer.resize(buffer.len() * 2, 0);
        }
        match stream.read(&mut buffer[end..]).await {
            Ok(0) => return Err(HandshakeError::Protocol),
            Ok(n) => end += n,
            Err(e) => return Err(HandshakeError::Io(e)),
        }
    };
    check_response(&buffer[..head_bytes], &key)?;
    // A long response head grew the buffer; frames do not need it.
    if buffer.len() > READ_BUFFER_BYTES && end - head_bytes <= READ_BUFFER_BYTES {
        buffer.copy_within(head_bytes..end, 0);
        end -= head_bytes;
        buffer.truncate(READ_BUFFER_BYTES);
        buffer.shrink_to_fit();
        return Ok(LeanSocket::new(stream, buffer, 0, end));
    }
    Ok(LeanSocket::new(stream, buffer, head_bytes, end))
}

fn upgrade_request(uri: &Uri, key: &str) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or("", |a| a.as_str());
    // No credentials in `Host`.
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
    )
}

/// The length of the response head, its final `\r\n\r\n` included, once it is all there.
fn find_head_end(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|at| at + 4)
}

/// Checks an upgrade response head: 101 with the `Sec-WebSocket-Accept` our key asks for.
fn check_response(head: &[u8], key: &str) -> Result<(), HandshakeError> {
    let head = std::str::from_utf8(head).map_err(|_| HandshakeError::Protocol)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = match status_line.split(' ').collect::<Vec<_>>()[..] {
        [version, status, ..] if version.starts_with("HTTP/1.") => {
            status.parse().map_err(|_| HandshakeError::Protocol)?
        }
        _ => return Err(HandshakeError::Protocol),
    };
    let header = |wanted: &str| {
        head.split("\r\n").skip(1).find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case(wanted)
                .then_some(value.trim())
        })
    };
    if status != 101 {
        let retry_after_s = header("retry-after").and_then(|v| v.parse().ok());
        return Err(HandshakeError::Http {
            status,
            retry_after_s,
        });
    }
    match header("sec-websocket-accept") {
        Some(accept) if accept == derive_accept_key(key.as_bytes()) => Ok(()),
        _ => Err(HandshakeError::Protocol),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> LeanSocket<S> {
    fn new(stream: S, buffer: Vec<u8>, start: usize, end: usize) -> Self {
        LeanSocket {
            stream,
            buffer,
            start,
            end,
            message: Vec::new(),
            message_is_text: false,
            fragmented: false,
            closed: false,
        }
    }

    /// The next text message or the server's close; pings are answered on the way. After
    /// the close, reads until the server drops the connection, which is `Err(Eof)`.
    pub async fn next(&mut self) -> Result<Incoming<'_>, ReadError> {
        if self.closed {
            return Err(self.drain().await);
        }
        loop {
            match self.parse_frame()? {
                Some(Parsed::Text(payload)) => return Ok(Incoming::Text(&self.buffer[payload])),
                Some(Parsed::Reassembled) => return Ok(Incoming::Text(&self.message)),
                Some(Parsed::Ping(payload)) => {
                    let mask = rand::thread_rng().gen();
                    let pong = masked_frame(OPCODE_PONG, &self.buffer[payload], mask);
                    self.stream.write_all(&pong).await.map_err(ReadError::Io)?;
                }
                Some(Parsed::Close(payload)) => {
                    // Echo the status code, as RFC 6455 (5.5.1) suggests; an empty close
                    // stays empty.
                    let code = self.buffer[payload].get(..2).unwrap_or_default().to_vec();
                    let mask = rand::thread_rng().gen();
                    let close = masked_frame(OPCODE_CLOSE, &code, mask);
                    self.closed = true;
                    self.stream.write_all(&close).await.map_err(ReadError::Io)?;
                    return Ok(Incoming::Close);
                }
                Some(Parsed::Skipped) => {}
                None => self.fill().await?,
            }
        }
    }

    /// Consumes the frame at `start` if it is all there.
    fn parse_frame(&mut self) -> Result<Option<Parsed>, ReadError> {
        let Some(header) = parse_header(&self.buffer[self.start..self.end])? else {
            return Ok(None);
        };
        let frame_bytes = header.header_bytes + header.payload_bytes;
        if self.end - self.start < frame_bytes {
            return Ok(None);
        }
        let payload = self.start + header.header_bytes..self.start + frame_bytes;
        self.start += frame_bytes;
        let parsed = match header.opcode {
            OPCODE_TEXT | OPCODE_BINARY if self.fragmented => {
                return Err(ReadError::Protocol("new message inside a fragmented one"));
            }
            OPCODE_TEXT if header.fin => Parsed::Text(payload),
            OPCODE_BINARY if header.fin => Parsed::Skipped,
            OPCODE_TEXT | OPCODE_BINARY => {
                self.fragmented = true;
                self.message_is_text = header.opcode == OPCODE_TEXT;
                self.message.clear();
                self.message.extend_from_slice(&self.buffer[payload]);
                Parsed::Skipped
            }
            OPCODE_CONTINUATION if !self.fragmented => {
                return Err(ReadError::Protocol("continuation without a message"));
            }
            OPCODE_CONTINUATION => {
                if self.message.len() + header.payload_bytes > MESSAGE_BYTES_MAX {
                    return Err(ReadError::TooLarge);
                }
                self.message.extend_from_slice(&self.buffer[payload]);
                if !header.fin {
                    Parsed::Skipped
                } else {
                    self.fragmented = false;
                    if self.message_is_text {
                        Parsed::Reassembled
                    } else {
                        Parsed::Skipped
                    }
                }
            }
            OPCODE_PING => Parsed::Ping(payload),
            OPCODE_CLOSE => Parsed::Close(payload),
            _ => Parsed::Skipped,
        };
        Ok(Some(parsed))
    }

    /// Reads more bytes: moves an incomplete frame to the front and grows the buffer to hold
    /// it whole first.
    async fn fill(&mut self) -> Result<(), ReadError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 {
            self.buffer.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if let Some(header) = parse_header(&self.buffer[..self.end])? {
            let frame_bytes = header.header_bytes + header.payload_bytes;
            if frame_bytes > self.buffer.len() {
                self.buffer.resize(frame_bytes, 0);
            }
        }
        // `read`, not `readable` + `try_read`: tokio's `poll_read` takes a short read as the
        // socket being drained and clears its readiness, where `try_read` would leave it set
        // and cost a second `recvfrom` (EAGAIN) per frame.
        // A complete frame would have been parsed, and an incomplete one fits now: there is
        // room, so a read of 0 is the end of the stream.
        debug_assert!(self.end < self.buffer.len());
        match self.stream.read(&mut self.buffer[self.end..]).await {
            Ok(0) => Err(ReadError::Eof),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e) => Err(ReadError::Io(e)),
        }
    }

    /// Reads and drops whatever comes until the server drops the connection.
    async fn drain(&mut self) -> ReadError {
        loop {
            match self.stream.read(&mut self.buffer).await {
                Ok(0) => return ReadError::Eof,
                Ok(_) => {}
                Err(e) => return ReadError::Io(e),
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tokio::io::{duplex, DuplexStream};

    use super::*;

    /// A server frame (unmasked).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut frame = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => frame.push(n as u8),
            n if n <= 0xFFFF => {
                frame.push(126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(payload);
        frame
    }

    /// A socket already past the handshake, and the server's end of its stream, which holds
    /// at most `in_flight` bytes the client has not read.
    fn past_handshake_with(in_flight: usize) -> (LeanSocket<DuplexStream>, DuplexStream) {
        let (client, server) = duplex(in_flight);
        let socket = LeanSocket::new(client, vec![0; READ_BUFFER_BYTES], 0, 0);
        (socket, server)
    }

    fn past_handshake() -> (LeanSocket<DuplexStream>, DuplexStream) {
        past_handshake_with(256 * 1024)
    }

    /// Reads one masked client frame from the server's end: (opcode, unmasked payload).
    async fn read_client_frame(server: &mut DuplexStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 6];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0] & 0x80, 0x80, "FIN");
        assert_eq!(head[1] & 0x80, 0x80, "a client frame must be masked");
        let len = usize::from(head[1] & 0x7F);
        let mask = [head[2], head[3], head[4], head[5]];
        let mut payload = vec![0u8; len];
        server.read_exact(&mut payload).await.unwrap();
        let unmasked = payload
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        (head[0] & 0x0F, unmasked)
    }

    #[test]
    fn headers_parse_every_length_form_and_wait_for_all_their_bytes() {
        for (payload_bytes, header_bytes) in [(0, 2), (125, 2), (126, 4), (65_535, 4)] {
            let frame = server_frame(true, OPCODE_TEXT, &vec![b'x'; payload_bytes]);
            for cut in 0..header_bytes {
                assert_eq!(parse_header(&frame[..cut]).unwrap(), None, "cut at {cut}");
            }
            let expected = FrameHeader {
                fin: true,
                opcode: OPCODE_TEXT,
                header_bytes,
                payload_bytes,
            };
            assert_eq!(parse_header(&frame).unwrap(), Some(expected));
        }
        // The 64-bit form, within the cap and past it.
        let mut head = vec![0x82, 127];
        head.extend_from_slice(&1000u64.to_be_bytes());
        for cut in 0..10 {
            assert_eq!(parse_header(&head[..cut]).unwrap(), None, "cut at {cut}");
        }
        let header = parse_header(&head).unwrap().unwrap();
        assert_eq!(
            (header.opcode, header.header_bytes, header.payload_bytes),
            (2, 10, 1000)
        );
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(parse_header(&huge), Err(ReadError::TooLarge)));
    }

    #[test]
    fn headers_reject_what_a_server_must_not_send() {
        let cases: [(&[u8], &str); 5] = [
            (&[0x81, 0x85], "masked server frame"),
            (&[0xC1, 0x05], "reserved bits set"),
            (&[0x83, 0x00], "unknown opcode"),
            (&[0x09, 0x00], "fragmented or long control frame"),
            (&[0x89, 126, 0, 126], "fragmented or long control frame"),
        ];
        for (bytes, why) in cases {
            match parse_header(bytes) {
                Err(ReadError::Protocol(reason)) => assert_eq!(reason, why, "{bytes:?}"),
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn frames_split_anywhere_across_reads_come_back_whole() {
        // One byte in flight at a time: every read gets one byte, so every header and payload
        // is cut at every place.
        let (mut socket, mut server) = past_handshake_with(1);
        let big = vec![b'b'; 3_000];
        let mut stream = server_frame(true, OPCODE_TEXT, b"{\"type\":\"tick\"}");
        stream.extend(server_frame(true, OPCODE_BINARY, b"skipped"));
        stream.extend(server_frame(true, OPCODE_TEXT, &big));
        stream.extend(server_frame(true, OPCODE_PONG, b""));
        stream.extend(server_frame(true, OPCODE_TEXT, b"last"));
        let writer = tokio::spawn(async move {
            server.write_all(&stream).await.unwrap();
            server
        });
        assert_eq!(
            socket.next().await.unwrap(),
            Incoming::Text(b"{\"type\":\"tick\"}")
        );
        assert_eq!(socket.next().await.unwrap(), Incoming::Text(&big));
        assert_eq!(socket.buffer.len(), 3_004, "grown to the frame");
        assert_eq!(socket.next().await.unwrap(), Incoming::Text(b"last"));
        let server = writer.await.unwrap();
        drop(server);
        assert!(matches!(socket.next().await, Err(ReadError::Eof)));
    }

    #[tokio::test]
    async fn many_frames_in_one_read_come_back_one_by_one() {
        let (mut socket, mut server) = past_handshake();
        let mut stream = Vec::new();
        for n in 0..20 {
            stream.extend(server_frame(
                true,
                OPCODE_TEXT,
                format!("frame {n}").as_bytes(),
            ));
        }
        server.write_all(&stream).await.unwrap();
        for n in 0..20 {
            let expected = format!("frame {n}");
            assert_eq!(
                socket.next().await.unwrap(),
                Incoming::Text(expected.as_bytes())
            );
        }
    }

    #[tokio::test]
    async fn a_ping_is_answered_with_a_masked_pong_of_its_payload_even_inside_a_message() {
        let (mut socket, mut server) = past_handshake();
        let mut stream = server_frame(false, OPCODE_TEXT, b"{\"type\":");
        stream.extend(server_frame(true, OPCODE_PING, b"are you there"));
        stream.extend(server_frame(false, OPCODE_CONTINUATION, b"\"bid\","));
        stream.extend(server_frame(true, OPCODE_CONTINUATION, b"\"version\":3}"));
        server.write_all(&stream).await.unwrap();
        assert_eq!(
            socket.next().await.unwrap(),
            Incoming::Text(b"{\"type\":\"bid\",\"version\":3}")
        );
        assert_eq!(
            read_client_frame(&mut server).await,
            (OPCODE_PONG, b"are you there".to_vec())
        );
    }

    #[test]
    fn client_frames_are_masked_with_the_key_given() {
        let frame = masked_frame(OPCODE_PONG, b"abcde", [1, 2, 3, 4]);
        let expected = [
            0x8A,
            0x85,
            1,
            2,
            3,
            4,
            b'a' ^ 1,
            b'b' ^ 2,
            b'c' ^ 3,
            b'd' ^ 4,
            b'e' ^ 1,
        ];
        assert_eq!(frame, expected);
    }

    #[tokio::test]
    async fn a_close_is_answered_with_its_code_then_read_until_the_server_drops() {
        let (mut socket, mut server) = past_handshake();
        let mut close_payload = 1000u16.to_be_bytes().to_vec();
        close_payload.extend_from_slice(b"auction ended");
        server
            .write_all(&server_frame(true, OPCODE_CLOSE, &close_payload))
            .await
            .unwrap();
        assert_eq!(socket.next().await.unwrap(), Incoming::Close);
        assert_eq!(
            read_client_frame(&mut server).await,
            (OPCODE_CLOSE, 1000u16.to_be_bytes().to_vec())
        );
        drop(server);
        assert!(matches!(socket.next().await, Err(ReadError::Eof)));
    }

    #[tokio::test]
    async fn frames_and_messages_past_the_cap_fail_the_connection() {
        let (mut socket, mut server) = past_handshake();
        let mut head = vec![0x81, 127];
        head.extend_from_slice(&(MESSAGE_BYTES_MAX as u64 + 1).to_be_bytes());
        server.write_all(&head).await.unwrap();
        assert!(matches!(socket.next().await, Err(ReadError::TooLarge)));
        assert_eq!(socket.buffer.len(), READ_BUFFER_BYTES, "never grown for it");

        let (mut socket, mut server) = past_handshake();
        let half = vec![b'h'; MESSAGE_BYTES_MAX / 2 + 1];
        let mut stream = server_frame(false, OPCODE_TEXT, &half);
        stream.extend(server_frame(true, OPCODE_CONTINUATION, &half));
        server.write_all(&stream).await.unwrap();
        assert!(matches!(socket.next().await, Err(ReadError::TooLarge)));
    }

    #[test]
    fn the_accept_key_is_the_one_of_rfc_6455() {
        // RFC 6455, 1.3.
        assert_eq!(
            derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    /// A test server's side of the upgrade: reads the request head, one byte at a time so
    /// that nothing after it is consumed, and returns it with its `Sec-WebSocket-Key`.
    pub(in crate::cli::bench) async fn read_upgrade_request(
        stream: &mut (impl AsyncRead + Unpin),
    ) -> (String, String) {
        let mut request = Vec::new();
        while find_head_end(&request).is_none() {
            request.push(stream.read_u8().await.unwrap());
        }
        let request = String::from_utf8(request).unwrap();
        let key = request
            .lines()
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap()
            .to_owned();
        (request, key)
    }

    /// Runs `handshake` against a server that answers `response(key)` and returns the result
    /// with the request the server read.
    async fn handshake_answered(
        response: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
    ) -> (Result<LeanSocket<DuplexStream>, HandshakeError>, String) {
        let (client, mut server) = duplex(64 * 1024);
        let uri: Uri = "ws://127.0.0.1:8291/auctions/a1/ws?access_token=t&tickMs=1000"
            .parse()
            .unwrap();
        let server = tokio::spawn(async move {
            let (request, key) = read_upgrade_request(&mut server).await;
            // Then the server's end closes: what it wrote can still be read.
            server.write_all(&response(&key)).await.unwrap();
            request
        });
        let result = handshake(client, &uri).await;
        (result, server.await.unwrap())
    }

    fn switching(accept: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\
             sec-websocket-accept: {accept}\r\n\r\n"
        )
    }

    #[tokio::test]
    async fn a_101_with_the_right_accept_keeps_the_bytes_after_the_head() {
        let (result, request) = handshake_answered(|key| {
            let mut response = switching(&derive_accept_key(key.as_bytes())).into_bytes();
            response.extend(server_frame(true, OPCODE_TEXT, b"{\"type\":\"snapshot\"}"));
            response.extend(server_frame(true, OPCODE_TEXT, b"second"));
            response
        })
        .await;
        assert!(request.starts_with(
            "GET /auctions/a1/ws?access_token=t&tickMs=1000 HTTP/1.1\r\nHost: 127.0.0.1:8291\r\n"
        ));
        for header in [
            "\r\nUpgrade: websocket\r\n",
            "\r\nConnection: Upgrade\r\n",
            "\r\nSec-WebSocket-Version: 13\r\n",
        ] {
            assert!(request.contains(header), "{header:?} in {request:?}");
        }
        let key = request
            .lines()
            .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        assert_eq!(BASE64.decode(key).unwrap().len(), 16);
        let mut socket = result.unwrap();
        assert_eq!(
            socket.next().await.unwrap(),
            Incoming::Text(b"{\"type\":\"snapshot\"}")
        );
        assert_eq!(socket.next().await.unwrap(), Incoming::Text(b"second"));
    }

    #[tokio::test]
    async fn a_101_with_a_wrong_accept_is_a_protocol_error() {
        let (result, _) =
            handshake_answered(|_| switching("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=").into_bytes()).await;
        assert!(matches!(result, Err(HandshakeError::Protocol)));
        let (result, _) = handshake_answered(|_| {
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n".to_vec()
        })
        .await;
        assert!(matches!(result, Err(HandshakeError::Protocol)));
    }

    #[tokio::test]
    async fn other_statuses_come_back_with_their_retry_after() {
        let (result, _) = handshake_answered(|_| {
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\ncontent-length: 0\r\n\r\n"
                .to_vec()
        })
        .await;
        match result {
            Err(HandshakeError::Http {
                status: 503,
                retry_after_s: Some(7),
            }) => {}
            other => panic!("{:?}", other.err()),
        }
        let (result, _) = handshake_answered(|_| {
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".to_vec()
        })
        .await;
        match result {
            Err(HandshakeError::Http {
                status: 401,
                retry_after_s: None,
            }) => {}
            other => panic!("{:?}", other.err()),
        }
    }

    #[tokio::test]
    async fn a_response_cut_short_or_endless_is_a_protocol_error() {
        let (result, _) = handshake_answered(|_| b"HTTP/1.1 101 Switch".to_vec()).await;
        assert!(matches!(result, Err(HandshakeError::Protocol)));
        let (result, _) = handshake_answered(|_| {
            let mut response = b"HTTP/1.1 101 Switching Protocols\r\n".to_vec();
            response.extend(b"x-padding: y\r\n".repeat(RESPONSE_HEAD_BYTES_MAX / 10));
            response
        })
        .await;
        assert!(matches!(result, Err(HandshakeError::Protocol)));
    }
}

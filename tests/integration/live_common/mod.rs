//! Live-update clients for the integration tests: a WebSocket viewer (tokio-tungstenite) and an
//! SSE viewer over a raw TCP socket (so a test controls its receive buffer and when it reads),
//! the event shape of API.md, and the checker of a connection's frame sequence.
//!
//! Like `common`, it knows nothing of the server's internals: it speaks HTTP and WebSocket to
//! a real `gavel serve`.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The fields of a stream event, exactly as API.md lists them.
pub const EVENT_FIELDS: [&str; 9] = [
    "type",
    "auctionId",
    "status",
    "currentPrice",
    "winnerId",
    "version",
    "endAt",
    "remainingMs",
    "serverTime",
];
/// How long a test waits for one frame that must come.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// The most bytes of SSE the raw client buffers before a test fails.
const SSE_BUFFER_BYTES_MAX: usize = 4 * 1024 * 1024;

/// One received frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub kind: String,
    pub version: u64,
    pub json: Value,
    /// SSE only: the record's `id:` and `event:` lines.
    pub sse_id: Option<String>,
    pub sse_event: Option<String>,
}

impl Frame {
    #[track_caller]
    fn parse(text: &str) -> Frame {
        let json: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("a frame is not JSON ({e}): {text:?}"));
        assert_event_shape(&json);
        Frame {
            kind: json["type"].as_str().unwrap().to_owned(),
            version: json["version"].as_u64().unwrap(),
            json,
            sse_id: None,
            sse_event: None,
        }
    }
}

/// The event of API.md: exactly its fields, each of its type.
#[track_caller]
pub fn assert_event_shape(e: &Value) {
    let mut keys: Vec<&str> = e
        .as_object()
        .unwrap_or_else(|| panic!("an event is an object: {e}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = EVENT_FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected, "event fields: {e}");
    let kind = e["type"].as_str().unwrap_or_default();
    assert!(
        ["snapshot", "bid", "status", "tick", "ended"].contains(&kind),
        "type: {e}"
    );
    let status = e["status"].as_str().unwrap_or_default();
    assert!(
        ["scheduled", "active", "paused", "ended"].contains(&status),
        "status: {e}"
    );
    crate::common::money(&e["currentPrice"]);
    crate::common::time_ms(&e["endAt"]);
    crate::common::time_ms(&e["serverTime"]);
    assert!(
        e["version"].as_u64().is_some_and(|v| v >= 1),
        "version: {e}"
    );
    assert!(e["remainingMs"].is_u64(), "remainingMs >= 0: {e}");
    assert!(
        e["winnerId"].is_null() || e["winnerId"].is_string(),
        "winnerId: {e}"
    );
    if kind == "ended" {
        assert_eq!(status, "ended", "an ended frame shows the ended state: {e}");
        assert_eq!(e["remainingMs"], 0, "{e}");
    }
}

/// The rules of a connection's frames: a snapshot first; non-tick versions strictly increase
/// (the only repeat: `ended` right after the snapshot of an auction that had already ended);
/// ticks carry the version last sent; `ended` is last.
#[track_caller]
pub fn assert_sequence_rules(frames: &[Frame]) {
    let first = frames.first().expect("at least the snapshot");
    assert_eq!(first.kind, "snapshot", "the first frame is a snapshot");
    let mut version = first.version;
    let snapshot_ended = first.json["status"] == "ended";
    for (i, frame) in frames.iter().enumerate().skip(1) {
        assert_eq!(frame.json["auctionId"], first.json["auctionId"]);
        match frame.kind.as_str() {
            "snapshot" => panic!("a second snapshot at frame {i}: {frames:#?}"),
            "tick" => assert_eq!(
                frame.version, version,
                "a tick carries the current version (frame {i})"
            ),
            "ended" if i == 1 && snapshot_ended => assert_eq!(frame.version, version),
            _ => {
                assert!(
                    frame.version > version,
                    "non-tick versions strictly increase: frame {i} has {} after {version}",
                    frame.version
                );
                version = frame.version;
            }
        }
        if frame.kind == "ended" {
            assert_eq!(i, frames.len() - 1, "ended is the last frame");
        }
    }
}

/// The non-tick frames as (type, version).
pub fn changes(frames: &[Frame]) -> Vec<(String, u64)> {
    frames
        .iter()
        .filter(|f| f.kind != "tick")
        .map(|f| (f.kind.clone(), f.version))
        .collect()
}

/// A TCP connection to the server with a small receive buffer (so the server's writes back up
/// soon after this side stops reading) or the default.
async fn connect(port: u16, recv_buffer_bytes: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    if let Some(bytes) = recv_buffer_bytes {
        socket
            .set_recv_buffer_size(bytes)
            .expect("set the receive buffer");
    }
    socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .expect("connect to the server")
}

// ---------------------------------------------------------------------------------------------
// WebSocket

/// How to authenticate a stream.
#[derive(Clone, Copy, Debug)]
pub enum Auth<'a> {
    Header(&'a str),
    Query(&'a str),
    None,
}

pub struct WsViewer {
    socket: WebSocketStream<TcpStream>,
    pub frames: Vec<Frame>,
    /// The close code the server sent, once it closed.
    pub close_code: Option<u16>,
}

/// The path and query of a stream URL.
pub fn stream_path(id: &str, endpoint: &str, auth: Auth<'_>, since: Option<u64>) -> String {
    let mut query = Vec::new();
    if let Auth::Query(token) = auth {
        query.push(format!("access_token={token}"));
    }
    if let Some(since) = since {
        query.push(format!("sinceVersion={since}"));
    }
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{}", query.join("&"))
    };
    format!("/auctions/{id}/{endpoint}{query}")
}

impl WsViewer {
    /// Opens a viewer; `Err` carries the HTTP status of a refused handshake.
    pub async fn open(
        port: u16,
        id: &str,
        auth: Auth<'_>,
        since: Option<u64>,
        recv_buffer_bytes: Option<u32>,
    ) -> Result<WsViewer, u16> {
        let url = format!(
            "ws://127.0.0.1:{port}{}",
            stream_path(id, "ws", auth, since)
        );
        let mut request = url.into_client_request().expect("a WebSocket request");
        if let Auth::Header(token) = auth {
            request.headers_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("a header value"),
            );
        }
        let stream = connect(port, recv_buffer_bytes).await;
        let config = WebSocketConfig::default().read_buffer_size(4096);
        match tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await {
            Ok((socket, _)) => Ok(WsViewer {
                socket,
                frames: Vec::new(),
                close_code: None,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(e) => panic!("WebSocket handshake failed: {e}"),
        }
    }

    /// The next frame, `None` once the server closed. Panics after `FRAME_TIMEOUT`.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            let message = tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .expect("a WebSocket frame within the timeout");
            match message {
                Some(Ok(Message::Text(text))) => {
                    let frame = Frame::parse(text.as_str());
                    self.frames.push(frame.clone());
                    return Some(frame);
                }
                Some(Ok(Message::Close(close))) => {
                    self.close_code = close.map(|c| u16::from(c.code));
                    // Complete the closing handshake.
                    let _ = self.socket.close(None).await;
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads until a non-tick frame at `version` or later arrives; returns it.
    pub async fn until_version(&mut self, version: u64) -> Frame {
        loop {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("closed before version {version}"));
            if frame.kind != "tick" && frame.version >= version {
                return frame;
            }
        }
    }

    /// Reads every frame until the server closes.
    pub async fn until_closed(&mut self) {
        while self.next().await.is_some() {}
    }

    pub async fn send_close(&mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// SSE over a raw socket

pub struct SseViewer {
    stream: TcpStream,
    pub status: u16,
    pub headers: String,
    chunked: bool,
    /// Received body bytes not yet parsed into records.
    body: Vec<u8>,
    /// Raw (possibly chunked) bytes not yet decoded.
    raw: Vec<u8>,
    eof: bool,
    pub frames: Vec<Frame>,
    /// Comment lines seen (keepalives).
    pub comments: usize,
    pub retry_ms: Option<u64>,
}

impl SseViewer {
    /// Sends the request and reads the response head.
    pub async fn open(
        port: u16,
        id: &str,
        auth: Auth<'_>,
        since: Option<u64>,
        last_event_id: Option<&str>,
        recv_buffer_bytes: Option<u32>,
    ) -> SseViewer {
        let mut stream = connect(port, recv_buffer_bytes).await;
        let mut request = format!(
            "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n",
            stream_path(id, "stream", auth, since)
        );
        if let Auth::Header(token) = auth {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        if let Some(id) = last_event_id {
            request.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut viewer = SseViewer {
            stream,
            status: 0,
            headers: String::new(),
            chunked: false,
            body: Vec::new(),
            raw: Vec::new(),
            eof: false,
            frames: Vec::new(),
            comments: 0,
            retry_ms: None,
        };
        viewer.read_head().await;
        viewer
    }

    async fn read_head(&mut self) {
        let end = loop {
            if let Some(at) = find(&self.raw, b"\r\n\r\n") {
                break at;
            }
            assert!(
                self.fill().await,
                "the server closed before the response head"
            );
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
        self.raw.drain(..end + 4);
        let status_line = head.lines().next().unwrap_or_default();
        self.status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        self.chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        self.headers = head;
    }

    /// The value of a response header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }

    /// Reads more raw bytes; false at end of stream.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(FRAME_TIMEOUT, self.stream.read(&mut buf))
            .await
            .expect("SSE bytes within the timeout")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        assert!(self.raw.len() <= SSE_BUFFER_BYTES_MAX, "runaway SSE body");
        n > 0
    }

    /// Moves decoded body bytes from `raw` to `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size_text:?}"));
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            let start = line_end + 2;
            self.body.extend_from_slice(&self.raw[start..start + size]);
            self.raw.drain(..start + size + 2);
            if size == 0 {
                self.eof = true;
                return;
            }
        }
    }

    /// The next frame, `None` at the end of the stream. Panics after `FRAME_TIMEOUT`.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            self.decode();
            if let Some(end) = find(&self.body, b"\n\n") {
                let record = String::from_utf8_lossy(&self.body[..end]).into_owned();
                self.body.drain(..end + 2);
                if let Some(frame) = self.parse_record(&record) {
                    self.frames.push(frame.clone());
                    return Some(frame);
                }
                continue;
            }
            if self.eof || !self.fill().await {
                return None;
            }
        }
    }

    fn parse_record(&mut self, record: &str) -> Option<Frame> {
        let (mut id, mut event, mut data) = (None, None, None);
        for line in record.lines() {
            if line.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let (field, value) = line.split_once(": ").unwrap_or((line, ""));
            match field {
                "id" => id = Some(value.to_owned()),
                "event" => event = Some(value.to_owned()),
                "data" => data = Some(value.to_owned()),
                "retry" => self.retry_ms = value.parse().ok(),
                other => panic!("unexpected SSE field {other:?} in {record:?}"),
            }
        }
        let mut frame = Frame::parse(&data?);
        assert_eq!(
            id.as_deref(),
            Some(frame.version.to_string().as_str()),
            "SSE id: is the version"
        );
        assert_eq!(
            event.as_deref(),
            Some(frame.kind.as_str()),
            "SSE event: is the type"
        );
        frame.sse_id = id;
        frame.sse_event = event;
        Some(frame)
    }

    pub async fn until_version(&mut self, version: u64) -> Frame {
        loop {
            let frame = self
                .next()
                .await
                .unwrap_or_else(|| panic!("the stream ended before version {version}"));
            if frame.kind != "tick" && frame.version >= version {
                return frame;
            }
        }
    }

    pub async fn until_closed(&mut self) {
        while self.next().await.is_some() {}
    }

    /// After the body ended: whether the server also closed the connection.
    pub async fn connection_closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(FRAME_TIMEOUT, self.stream.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

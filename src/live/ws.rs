//! `GET /auctions/{id}/ws`: live updates over WebSocket (tokio-tungstenite; the upgrade is
//! answered here rather than by axum's `ws`, to keep the socket under it).
//!
//! Each connection has a task that sends its viewer's snapshot, answers nothing the client says
//! (except close), and keeps the connection honest: a ping every `--viewer-ping-interval-ms`,
//! dropped when nothing came back for `PONG_MISSED_MAX` intervals (a viewer that stopped
//! reading) or when one send takes longer than `--viewer-send-timeout-ms` (a full socket).
//! On a plain TCP connection the task then hands the socket to its auction's crowd
//! (`crowd.rs`), which writes the frames, ticks and pings of its viewers in passes, and only
//! reads it until the crowd gives it back to close it; a TLS connection's task sends everything
//! itself. Buffers are small because a crowd has tens of thousands of these: tungstenite's
//! defaults (128 KiB read buffer, 128 KiB write buffer) would cost gigabytes.
//!
//! Close codes: 1000 after `ended` (within `ENDED_CLOSE_SPREAD_MS`), 1001 when the node shuts
//! down.

use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::access::StreamRequest;
use super::crowd::{HandBack, Outlet, SharedStream, Sink};
use super::frame::FrameKind;
use super::stall::GuardedStream;
use super::viewer::Viewer;
use super::{ended_close_pause, LiveConfig, Transport, VIEWERS_DROPPED_TOTAL};
use crate::http::problem::ApiError;
use crate::http::server::AppState;

/// Bytes tungstenite reads from the socket at a time, and the read buffer it allocates for
/// every connection up front (its default is 128 KiB). Viewers only send control frames (a
/// pong is at most 131 bytes), and a larger message still grows the buffer on demand up to
/// `WS_MESSAGE_BYTES_MAX`: 4 KiB here was half of a viewer's whole memory at 10,000 viewers.
pub const WS_READ_BUFFER_BYTES: usize = 256;
/// The most a connection's outgoing buffer may hold before sends fail (default: unbounded).
/// Frames are written out eagerly (write buffer target 0), so this fills only when the socket
/// does.
pub const WS_WRITE_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// The largest message or frame a viewer may send.
pub const WS_MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// Ping intervals without hearing anything from the viewer before it is dropped.
pub const PONG_MISSED_MAX: u32 = 3;
/// How long the closing handshake may take after our close frame.
const CLOSE_WAIT_MS: u64 = 2_000;

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_WRITE_BUFFER_BYTES_MAX)
        .max_message_size(Some(WS_MESSAGE_BYTES_MAX))
        .max_frame_size(Some(WS_MESSAGE_BYTES_MAX))
}

/// A WebSocket upgrade request (RFC 6455 section 4.2.1, HTTP/1.1).
pub struct UpgradeRequest {
    key: HeaderValue,
    on_upgrade: hyper::upgrade::OnUpgrade,
}

impl<S: Send + Sync> FromRequestParts<S> for UpgradeRequest {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let not_an_upgrade = |why: &str| {
            ApiError::BadRequest(format!("this endpoint takes a WebSocket upgrade: {why}"))
        };
        if parts.method != Method::GET {
            return Err(not_an_upgrade("the method must be GET"));
        }
        let headers = &parts.headers;
        if !header_has_token(headers, header::CONNECTION, "upgrade") {
            return Err(not_an_upgrade("`Connection` must include `upgrade`"));
        }
        if !header_has_token(headers, header::UPGRADE, "websocket") {
            return Err(not_an_upgrade("`Upgrade` must be `websocket`"));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(not_an_upgrade("`Sec-WebSocket-Version` must be 13"));
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .filter(|key| !key.is_empty())
            .cloned()
            .ok_or_else(|| not_an_upgrade("`Sec-WebSocket-Key` is missing"))?;
        let on_upgrade = parts
            .extensions
            .remove::<hyper::upgrade::OnUpgrade>()
            .ok_or_else(|| not_an_upgrade("this connection cannot be upgraded"))?;
        Ok(UpgradeRequest { key, on_upgrade })
    }
}

/// Whether `name` lists `token` (comma-separated, any case).
fn header_has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// `GET /auctions/{id}/ws`
pub async fn upgrade(
    State(state): State<AppState>,
    request: StreamRequest,
    upgrade: UpgradeRequest,
) -> Result<Response, ApiError> {
    let subscription = state
        .live
        .join(&request.auction_id, request.since_version, Transport::Ws)
        .await?;
    tracing::debug!(auction_id = %request.auction_id, sub = %request.principal.sub, "WebSocket viewer joined");
    let config = state.live.config();
    let viewer = Viewer::new(subscription, request.tick_period);
    let on_upgrade = upgrade.on_upgrade;
    let live = state.live.clone();
    // On this (the HTTP) runtime: hyper's connection buffers, allocated by this thread, are
    // freed here too, before the viewer moves to the fan-out runtime.
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        match plain_socket(upgraded) {
            Ok((stream, unread)) => live.spawn_viewer(serve_direct(stream, unread, viewer, config)),
            Err(upgraded) => live.spawn_viewer(async move {
                let io = TokioIo::new(upgraded);
                let socket =
                    WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
                serve(socket, viewer, config).await;
            }),
        }
    });
    let accept =
        tokio_tungstenite::tungstenite::handshake::derive_accept_key(upgrade.key.as_bytes());
    let response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(axum::body::Body::empty())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(response)
}

/// The TCP socket under an upgraded connection, with a copy of what the server read past the
/// upgrade request (the original shares hyper's whole read buffer, 8 KiB a connection); the
/// connection back when it is not plain TCP (TLS).
fn plain_socket(
    upgraded: hyper::upgrade::Upgraded,
) -> Result<(TcpStream, Vec<u8>), hyper::upgrade::Upgraded> {
    use hyper_util::server::conn::auto::upgrade::downcast;
    let upgraded = match downcast::<TokioIo<GuardedStream>>(upgraded) {
        Ok(parts) => return Ok((parts.io.into_inner().into_inner(), parts.read_buf.to_vec())),
        Err(upgraded) => upgraded,
    };
    // A router served straight from a `TcpListener` (tests, embedders).
    downcast::<TokioIo<TcpStream>>(upgraded)
        .map(|parts| (parts.io.into_inner(), parts.read_buf.to_vec()))
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `ended` was sent: close 1000.
    AuctionEnded,
    /// The node is shutting down: close 1001.
    GoingAway,
    /// The client closed or vanished.
    ClientLeft,
    /// A send took longer than the send timeout.
    SendTimeout,
    /// Nothing heard for `PONG_MISSED_MAX` ping intervals.
    Unresponsive,
}

type Socket<S> = WebSocketStream<S>;

/// A connection whose task sends everything itself (TLS).
async fn serve<S>(mut socket: Socket<S>, mut viewer: Viewer, config: LiveConfig)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let send_timeout = Duration::from_millis(config.send_timeout_ms);
    let ping_period = Duration::from_millis(config.ping_interval_ms);
    let mut pings = interval_at(Instant::now() + ping_period, ping_period);
    pings.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut heard_at = Instant::now();
    let end = loop {
        tokio::select! {
            frame = viewer.next() => {
                let Some(frame) = frame else { break End::GoingAway };
                if let Err(end) = send(&mut socket, Message::Text(frame.text()), send_timeout).await {
                    break end;
                }
                viewer.sent(&frame);
                if frame.kind() == FrameKind::Ended {
                    break End::AuctionEnded;
                }
            }
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break End::ClientLeft,
                Some(Ok(_)) => heard_at = Instant::now(),
            },
            _ = pings.tick() => {
                if heard_at.elapsed() > ping_period * PONG_MISSED_MAX {
                    break End::Unresponsive;
                }
                if let Err(end) = send(&mut socket, Message::Ping(Bytes::new()), send_timeout).await {
                    break end;
                }
            }
        }
    };
    finish(socket, end, viewer.auction_id(), send_timeout).await;
}

/// A plain TCP connection: the task sends the snapshot, then the auction's crowd writes the
/// rest while the task reads what the client sends, until the crowd gives the socket back.
pub(super) async fn serve_direct(
    stream: TcpStream,
    unread: Vec<u8>,
    mut viewer: Viewer,
    config: LiveConfig,
) {
    let send_timeout = Duration::from_millis(config.send_timeout_ms);
    let outlet = Outlet::new(stream);
    let mut socket = WebSocketStream::from_partially_read(
        SharedStream(outlet.clone()),
        unread,
        Role::Server,
        Some(ws_config()),
    )
    .await;
    // The snapshot, and the `ended` that follows it at once for an auction already over.
    while let Some(frame) = viewer.next().await {
        if let Err(end) =
            Box::pin(send(&mut socket, Message::Text(frame.text()), send_timeout)).await
        {
            return Box::pin(finish(socket, end, viewer.auction_id(), send_timeout)).await;
        }
        viewer.sent(&frame);
        if frame.kind() == FrameKind::Ended {
            return Box::pin(finish(
                socket,
                End::AuctionEnded,
                viewer.auction_id(),
                send_timeout,
            ))
            .await;
        }
        if viewer.is_live() {
            break;
        }
    }
    if !viewer.is_live() {
        // The hub closed before the snapshot.
        return Box::pin(finish(
            socket,
            End::GoingAway,
            viewer.auction_id(),
            send_timeout,
        ))
        .await;
    }
    // Nothing of tungstenite's may still wait to be written when the crowd starts writing.
    if let Err(end) = Box::pin(flush(&mut socket, send_timeout)).await {
        return Box::pin(finish(socket, end, viewer.auction_id(), send_timeout)).await;
    }
    let (hand_back_tx, mut hand_back) = oneshot::channel::<HandBack>();
    let hub = viewer.hub().clone();
    let ping_period = Duration::from_millis(config.ping_interval_ms);
    hub.admit_to_crowd(Sink::new(viewer, outlet.clone(), hand_back_tx, ping_period));
    let back = loop {
        tokio::select! {
            back = &mut hand_back => break back.ok(),
            incoming = socket.next() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => outlet.heard(),
            },
        }
    };
    let Some(HandBack {
        end,
        viewer,
        unsent,
    }) = back
    else {
        // The client left (or the crowd found the connection broken): its chunk drops the viewer.
        outlet.leave();
        return;
    };
    for piece in unsent {
        let written = tokio::time::timeout(send_timeout, socket.get_mut().write_all(&piece)).await;
        if !matches!(written, Ok(Ok(()))) {
            let end = if written.is_err() {
                End::SendTimeout
            } else {
                End::ClientLeft
            };
            return Box::pin(finish(socket, end, viewer.auction_id(), send_timeout)).await;
        }
    }
    Box::pin(finish(socket, end, viewer.auction_id(), send_timeout)).await;
}

/// Sends one message, bounded by `timeout`.
async fn send<S>(socket: &mut Socket<S>, message: Message, timeout: Duration) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(timeout, socket.send(message)).await
}

/// Writes out whatever tungstenite holds (a reply to the client's ping), bounded by `timeout`.
async fn flush<S>(socket: &mut Socket<S>, timeout: Duration) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    bounded(timeout, socket.flush()).await
}

/// A write to the client, bounded by `timeout`: how it failed is how the connection ends.
async fn bounded<E>(
    timeout: Duration,
    write: impl std::future::Future<Output = Result<(), E>>,
) -> Result<(), End> {
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientLeft),
        Err(_) => Err(End::SendTimeout),
    }
}

/// Reads (and drops) what the client sends for up to `pause`; true if it closed or left
/// meanwhile (tungstenite answers a client's close frame by itself).
async fn client_leaves_within<S>(socket: &mut Socket<S>, pause: Duration) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let left = tokio::time::timeout(pause, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    });
    left.await.is_ok()
}

/// Closes cleanly when the end is ours to announce; drops the socket otherwise.
async fn finish<S>(mut socket: Socket<S>, end: End, auction_id: &str, send_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if end == End::AuctionEnded && client_leaves_within(&mut socket, ended_close_pause()).await {
        return;
    }
    let (code, reason) = match end {
        End::AuctionEnded => (CloseCode::Normal, "auction ended"),
        End::GoingAway => (CloseCode::Away, "server shutting down"),
        End::ClientLeft => return,
        End::SendTimeout | End::Unresponsive => {
            let reason = if end == End::SendTimeout {
                "send_timeout"
            } else {
                "unresponsive"
            };
            metrics::counter!(VIEWERS_DROPPED_TOTAL, "transport" => "ws", "reason" => reason)
                .increment(1);
            tracing::debug!(auction_id, reason, "dropped a WebSocket viewer");
            return;
        }
    };
    let close = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    if send(&mut socket, close, send_timeout).await.is_err() {
        return;
    }
    // Wait (bounded) for the client's close frame so the close is clean on both sides.
    client_leaves_within(&mut socket, Duration::from_millis(CLOSE_WAIT_MS)).await;
}

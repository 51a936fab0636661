//! `GET /auctions/{id}/ws`: live updates over WebSocket (axum's `ws`, tokio-tungstenite under it).
//!
//! Each connection is one task that sends its viewer's frames (the shared bytes, as text
//! frames), answers nothing the client says (except close), and keeps the connection honest:
//! a ping every `--viewer-ping-interval-ms`, dropped when nothing came back for
//! `PONG_MISSED_MAX` intervals (a viewer that stopped reading) or when one send takes longer
//! than `--viewer-send-timeout-ms` (a full socket). Buffers are small because a crowd has tens
//! of thousands of these: tungstenite's defaults (128 KiB read buffer, 128 KiB write buffer)
//! would cost gigabytes.
//!
//! Close codes: 1000 after `ended` (within `ENDED_CLOSE_SPREAD_MS`), 1001 when the node shuts
//! down.

use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::access::StreamRequest;
use super::frame::FrameKind;
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

/// `GET /auctions/{id}/ws`
pub async fn upgrade(
    State(state): State<AppState>,
    request: StreamRequest,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::BadRequest(format!(
            "this endpoint takes a WebSocket upgrade: {}",
            rejection.body_text()
        ))
    })?;
    let subscription = state
        .live
        .join(&request.auction_id, request.since_version, Transport::Ws)
        .await?;
    tracing::debug!(auction_id = %request.auction_id, sub = %request.principal.sub, "WebSocket viewer joined");
    let config = state.live.config();
    let tick_period = request.tick_period;
    let live = state.live.clone();
    Ok(upgrade
        .read_buffer_size(WS_READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_write_buffer_size(WS_WRITE_BUFFER_BYTES_MAX)
        .max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX)
        .on_upgrade(move |socket| {
            let viewer = Viewer::new(subscription, tick_period);
            live.spawn_viewer(serve(socket, viewer, config));
            std::future::ready(())
        }))
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
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

async fn serve(mut socket: WebSocket, mut viewer: Viewer, config: LiveConfig) {
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
            incoming = socket.recv() => match incoming {
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

/// Sends one message, bounded by `timeout`.
async fn send(socket: &mut WebSocket, message: Message, timeout: Duration) -> Result<(), End> {
    match tokio::time::timeout(timeout, socket.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientLeft),
        Err(_) => Err(End::SendTimeout),
    }
}

/// Reads (and drops) what the client sends for up to `pause`; true if it closed or left
/// meanwhile (tungstenite answers a client's close frame by itself).
async fn client_leaves_within(socket: &mut WebSocket, pause: Duration) -> bool {
    let left = tokio::time::timeout(pause, async {
        loop {
            match socket.recv().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            }
        }
    });
    left.await.is_ok()
}

/// Closes cleanly when the end is ours to announce; drops the socket otherwise.
async fn finish(mut socket: WebSocket, end: End, auction_id: &str, send_timeout: Duration) {
    if end == End::AuctionEnded && client_leaves_within(&mut socket, ended_close_pause()).await {
        return;
    }
    let (code, reason) = match end {
        End::AuctionEnded => (close_code::NORMAL, "auction ended"),
        End::GoingAway => (close_code::AWAY, "server shutting down"),
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
        reason: Utf8Bytes::from_static(reason),
    }));
    if send(&mut socket, close, send_timeout).await.is_err() {
        return;
    }
    // Wait (bounded) for the client's close frame so the close is clean on both sides.
    client_leaves_within(&mut socket, Duration::from_millis(CLOSE_WAIT_MS)).await;
}

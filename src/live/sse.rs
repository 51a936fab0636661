//! `GET /auctions/{id}/stream`: live updates as Server-Sent Events.
//!
//! The response body is a stream that hyper pulls only when it can write: while a viewer's
//! socket is full nothing is produced for it, and when hyper pulls again the viewer gets the
//! newest state (the hub's latest-value channel), so a slow SSE viewer coalesces with no
//! buffer of its own. Each record is the frame's shared SSE bytes; a comment line keeps idle
//! proxies from timing the stream out. No task per connection: the body stream is the state.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use super::access::StreamRequest;
use super::frame::FrameKind;
use super::viewer::Viewer;
use super::{ended_close_pause, Transport, SSE_KEEPALIVE_MS};
use crate::http::problem::ApiError;
use crate::http::server::AppState;

/// A comment record: ignored by `EventSource`, keeps the connection visibly alive.
const KEEPALIVE_COMMENT: &[u8] = b": keepalive\n\n";

/// `GET /auctions/{id}/stream`
pub async fn stream(
    State(state): State<AppState>,
    request: StreamRequest,
) -> Result<Response, ApiError> {
    let subscription = state
        .live
        .join(&request.auction_id, request.since_version, Transport::Sse)
        .await?;
    tracing::debug!(auction_id = %request.auction_id, sub = %request.principal.sub, "SSE viewer joined");
    let period = Duration::from_millis(SSE_KEEPALIVE_MS);
    let mut keepalive = interval_at(Instant::now() + period, period);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let body = futures_util::stream::unfold(
        SseState {
            viewer: Viewer::new(subscription, request.tick_period),
            keepalive,
            done: false,
        },
        next_chunk,
    );
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // The stream ends after `ended`: close the connection with it rather than keep it idle.
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    // Tells buffering reverse proxies (nginx) to pass each record on at once.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

struct SseState {
    viewer: Viewer,
    keepalive: Interval,
    done: bool,
}

/// The next piece of the body: a frame, a keepalive comment, or the end.
async fn next_chunk(mut state: SseState) -> Option<(Result<Bytes, Infallible>, SseState)> {
    if state.done {
        // `ended` went out with the previous chunk: end the response (and, with it, the
        // connection) once the crowd has had its round.
        tokio::time::sleep(ended_close_pause()).await;
        return None;
    }
    let chunk = tokio::select! {
        frame = state.viewer.next() => {
            let frame = frame?;
            state.viewer.sent(&frame);
            state.done = frame.kind() == FrameKind::Ended;
            frame.sse()
        }
        _ = state.keepalive.tick() => Bytes::from_static(KEEPALIVE_COMMENT),
    };
    Some((Ok(chunk), state))
}

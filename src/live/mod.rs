//! Live updates: the fan-out of applied auction changes to SSE and WebSocket viewers of this
//! node (leader, follower or learner alike), from its own replica.
//!
//! - `hub.rs`: the node's hub: one pump task turns applied events into frames, one latest-value
//!   channel per watched auction, viewer admission (`--viewers-max`).
//! - `frame.rs`: the JSON event of API.md, serialized once into shared bytes.
//! - `viewer.rs`: one viewer's frame sequence (snapshot, coalesced changes, ticks, ended).
//! - `crowd.rs`: the WebSocket viewers of an auction on plain TCP, written in passes by one task
//!   per chunk of them instead of a task each.
//! - `sse.rs`, `ws.rs`: the two transports and their keepalives and drop policies.
//! - `access.rs`: stream authentication (header or `?access_token=`), resume versions, and the
//!   request span that redacts tokens.
//! - `stall.rs`: the listener that fails writes to peers that stopped reading.
//! - `page/`: the live auction page (`/`, `/a/{id}`), HTML/JS/CSS embedded at build time.
//!
//! Architecture invariant: nothing here can make the apply path wait. The node's event channel
//! overwrites its oldest entry when the pump lags (the pump then re-reads what it serves), the
//! pump only replaces values in latest-value channels, and each viewer's socket is written by
//! that viewer's own task or body stream. A slow viewer costs itself frames, nobody else time.

mod access;
mod crowd;
mod frame;
mod hub;
pub mod page;
mod sse;
mod stall;
mod viewer;
mod ws;

pub use access::request_span;
pub use hub::{Hub, JoinError};
pub use sse::stream;
pub use stall::{GuardedStream, StallGuardListener};
pub use ws::upgrade;

/// A viewer of an auction that has not ended gets a `tick` when this long passed without
/// another frame, in milliseconds, unless it asked for sparser ticks (`tickMs`).
pub const TICK_INTERVAL_MS: u64 = 1_000;
/// How often an SSE stream gets a keepalive comment, in milliseconds.
pub const SSE_KEEPALIVE_MS: u64 = 15_000;
/// How long a stream opened with `sinceVersion`/`Last-Event-ID` may wait for this node's
/// replica to reach that version before it is refused with a 503, in milliseconds.
pub const RESUME_WAIT_MS: u64 = 5_000;
/// After `ended`, a stream ends (WebSocket: its close frame) after a random part of this, in
/// milliseconds. The round of sends that takes `ended` to a crowd is then one send per viewer,
/// with the closing handshakes spread over the time after it: inside it, they made that round,
/// and so the auction's last bids, about twice as slow to reach 100,000 viewers as the rounds
/// before.
pub const ENDED_CLOSE_SPREAD_MS: u64 = 2_000;

/// How long this stream waits after `ended` before it ends.
fn ended_close_pause() -> std::time::Duration {
    use rand::Rng;
    std::time::Duration::from_millis(rand::thread_rng().gen_range(0..=ENDED_CLOSE_SPREAD_MS))
}

/// Viewers connected to this node, by transport (gauge).
pub const VIEWERS: &str = "gavel_viewers";
/// Frames handed to viewers' connections, by transport.
pub const FRAMES_SENT_TOTAL: &str = "gavel_viewer_frames_sent_total";
/// Versions a viewer skipped because it was slower than the changes (coalescing), by transport.
pub const FRAMES_COALESCED_TOTAL: &str = "gavel_viewer_frames_coalesced_total";
/// WebSocket viewers dropped by the server, by reason (`send_timeout`, `unresponsive`).
pub const VIEWERS_DROPPED_TOTAL: &str = "gavel_viewers_dropped_total";
/// Viewers refused because this node had `--viewers-max` of them.
pub const VIEWERS_REFUSED_TOTAL: &str = "gavel_viewers_refused_total";
/// Connections (SSE viewers among them) closed because their writes stalled.
pub const CONNECTIONS_STALLED_TOTAL: &str = "gavel_connections_stalled_total";
/// From the state machine applying a change to a viewer's connection taking its frame, in
/// seconds (bid, status and ended frames).
pub const APPLY_TO_SEND_SECONDS: &str = "gavel_viewer_apply_to_send_seconds";

/// The live-update settings of a node.
#[derive(Clone, Copy, Debug)]
pub struct LiveConfig {
    /// Viewers (SSE and WebSocket together) this node serves at once; more get a 503.
    pub viewers_max: usize,
    /// How long one write to a viewer may take before the viewer is dropped.
    pub send_timeout_ms: u64,
    /// How often WebSocket viewers are pinged.
    pub ping_interval_ms: u64,
}

/// How a viewer is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Sse,
    Ws,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Sse => "sse",
            Transport::Ws => "ws",
        }
    }
}

/// Describes the live-update metrics to the recorder.
pub fn describe_metrics() {
    metrics::describe_gauge!(VIEWERS, "Live viewers connected to this node, by transport");
    metrics::describe_counter!(FRAMES_SENT_TOTAL, "Frames handed to viewers' connections");
    metrics::describe_counter!(
        FRAMES_COALESCED_TOTAL,
        "Versions viewers skipped because they were slower than the changes"
    );
    metrics::describe_counter!(
        VIEWERS_DROPPED_TOTAL,
        "WebSocket viewers dropped, by reason"
    );
    metrics::describe_counter!(
        VIEWERS_REFUSED_TOTAL,
        "Viewers refused because the node had --viewers-max of them"
    );
    metrics::describe_counter!(
        CONNECTIONS_STALLED_TOTAL,
        "Connections closed because the peer stopped reading"
    );
    metrics::describe_histogram!(
        APPLY_TO_SEND_SECONDS,
        metrics::Unit::Seconds,
        "From an applied change reaching the hub to a viewer's connection taking its frame"
    );
}

#[cfg(test)]
mod crowd_tests;
#[cfg(test)]
mod tests;

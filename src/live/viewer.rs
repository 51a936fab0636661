//! One viewer's frame sequence, the same for SSE and WebSocket: a snapshot first, then the newest
//! state whenever it changes (skipping whatever this viewer was too slow to see), ticks, and
//! `ended` last.
//!
//! The rules of API.md live here and nowhere else: non-tick versions strictly increase within a
//! connection (the one repeat is the `ended` that follows the snapshot of an auction that had
//! already ended: it is the same final state, announced as the end); a tick is sent only for
//! the version the viewer was last sent, and only when the viewer's tick period (`tickMs`, a
//! second by default) passed without another frame: a frame already tells the viewer the time
//! left, so while bids flow nobody ticks. `next` is cancel-safe, so transports can `select!` on
//! it next to their keepalives.

use std::time::{Duration, Instant};

use gavel_rules::Status;
use metrics::{Counter, Histogram};

use super::frame::{Frame, FrameKind};
use super::hub::{Latest, Subscription};
use super::{APPLY_TO_SEND_SECONDS, FRAMES_COALESCED_TOTAL, FRAMES_SENT_TOTAL};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Snapshot,
    /// The snapshot showed an ended auction: `ended` comes next, then nothing.
    EndedAfterSnapshot,
    Live,
    Done,
}

/// A viewer's position in the stream of its auction.
pub struct Viewer {
    sub: Subscription,
    step: Step,
    sent_version: u64,
    /// A tick is due this long after the last frame.
    tick_period: Duration,
    last_frame_at: tokio::time::Instant,
    stats: Stats,
}

/// Metric handles, looked up once per connection.
struct Stats {
    sent: Counter,
    coalesced: Counter,
    apply_to_send: Histogram,
}

impl Viewer {
    pub fn new(sub: Subscription, tick_period: Duration) -> Viewer {
        let transport = sub.transport().as_str();
        Viewer {
            sub,
            step: Step::Snapshot,
            sent_version: 0,
            tick_period,
            last_frame_at: tokio::time::Instant::now(),
            stats: Stats {
                sent: metrics::counter!(FRAMES_SENT_TOTAL, "transport" => transport),
                coalesced: metrics::counter!(FRAMES_COALESCED_TOTAL, "transport" => transport),
                apply_to_send: metrics::histogram!(APPLY_TO_SEND_SECONDS, "transport" => transport),
            },
        }
    }

    pub fn auction_id(&self) -> &str {
        self.sub.auction_id()
    }

    /// The next frame to send, or `None` when the stream is over (after `ended`, or because
    /// the node is shutting down). Cancel-safe.
    pub async fn next(&mut self) -> Option<Frame> {
        let frame = self.next_frame().await?;
        self.last_frame_at = tokio::time::Instant::now();
        Some(frame)
    }

    async fn next_frame(&mut self) -> Option<Frame> {
        match self.step {
            Step::Snapshot => self.snapshot(),
            Step::EndedAfterSnapshot => {
                self.step = Step::Done;
                let latest = self.sub.rx.borrow().clone();
                let auction = latest.auction?;
                Some(match latest.event {
                    Some(event)
                        if event.kind() == FrameKind::Ended
                            && event.version() == auction.version =>
                    {
                        event
                    }
                    _ => render_now(FrameKind::Ended, &auction, self),
                })
            }
            Step::Live => self.live().await,
            Step::Done => None,
        }
    }

    fn snapshot(&mut self) -> Option<Frame> {
        let latest = self.sub.rx.borrow_and_update().clone();
        // `Hub::join` loads the state before it admits anyone.
        let auction = latest.auction?;
        self.sent_version = auction.version;
        self.step = if auction.status == Status::Ended {
            Step::EndedAfterSnapshot
        } else {
            Step::Live
        };
        Some(render_now(FrameKind::Snapshot, &auction, self))
    }

    /// Waits for news: a newer state (sent as its change frame), or a tick once the tick
    /// period passed since the last frame. `None` once the hub closes (shutdown).
    async fn live(&mut self) -> Option<Frame> {
        loop {
            // Registered before the state is checked, so a publication in between still wakes
            // this viewer; dropped (a cancelled `next`) it takes its place in the line with it.
            let news = self.sub.news.clone();
            let mut notified = std::pin::pin!(news.notified());
            notified.as_mut().enable();
            let closed = self.sub.rx.has_changed().is_err();
            if closed || self.sub.hub().is_closing() {
                self.step = Step::Done;
                return None;
            }
            if let Some(frame) = self.newer_state() {
                return Some(frame);
            }
            let tick_due = self.tick_due_at();
            tokio::select! {
                biased;
                () = &mut notified => {}
                () = tokio::time::sleep_until(tick_due) => {
                    if let Some(frame) = self.newer_state().or_else(|| self.tick()) {
                        return Some(frame);
                    }
                    // Nothing to tick (the end is on its way): wait a period more, not spin.
                    self.last_frame_at = tokio::time::Instant::now();
                }
            }
        }
    }

    /// The change frame of a state newer than the one this viewer was last sent, if any.
    fn newer_state(&mut self) -> Option<Frame> {
        let latest = self.sub.rx.borrow_and_update().clone();
        self.newer_state_in(&latest)
    }

    /// The change frame of `latest` if it is newer than what this viewer was last sent.
    fn newer_state_in(&mut self, latest: &Latest) -> Option<Frame> {
        // `Hub::join` loaded the state before it admitted this viewer.
        let auction = latest.auction.as_ref()?;
        if auction.version <= self.sent_version {
            return None;
        }
        let event = latest.event.clone()?;
        let skipped = auction.version - self.sent_version - 1;
        if skipped > 0 {
            self.stats.coalesced.increment(skipped);
        }
        self.sent_version = auction.version;
        if event.kind() == FrameKind::Ended {
            self.step = Step::Done;
        }
        Some(event)
    }

    /// A tick of the state this viewer was last sent (shared with the auction's other viewers
    /// due about now); never after `ended`.
    fn tick(&mut self) -> Option<Frame> {
        let latest = self.sub.rx.borrow().clone();
        self.tick_of(&latest)
    }

    fn tick_of(&mut self, latest: &Latest) -> Option<Frame> {
        let auction = latest.auction.as_ref()?;
        if auction.status == Status::Ended {
            // Its `ended` frame is on its way through the watch; a tick would come after the end.
            return None;
        }
        Some(self.sub.tick.get(auction, self.sub.hub()))
    }

    /// For a crowd that serves this viewer among many (`crowd.rs`), in one pass at `now`, the
    /// same rules as `next`: the change frame of `latest` if it is newer than what this viewer
    /// was last sent, else a tick once its tick period passed without a frame. The frame is
    /// counted as sent: the caller writes it, or keeps it until the socket takes it.
    pub fn due(&mut self, latest: &Latest, now: tokio::time::Instant) -> Option<Frame> {
        if self.step != Step::Live {
            return None;
        }
        let frame = match self.newer_state_in(latest) {
            Some(frame) => frame,
            None if now >= self.tick_due_at() => match self.tick_of(latest) {
                Some(tick) => tick,
                None => {
                    // Nothing to tick (the end is on its way): a period more, not every pass.
                    self.last_frame_at = now;
                    return None;
                }
            },
            None => return None,
        };
        self.last_frame_at = now;
        Some(frame)
    }

    /// When this viewer's next tick is due if no other frame comes first.
    pub fn tick_due_at(&self) -> tokio::time::Instant {
        self.last_frame_at + self.tick_period
    }

    /// Whether this viewer is past its snapshot and waits for changes.
    pub fn is_live(&self) -> bool {
        self.step == Step::Live
    }

    /// Whether this viewer was sent `ended` (or the hub's end): nothing more comes.
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// The hub this viewer belongs to.
    pub fn hub(&self) -> &super::hub::Hub {
        self.sub.hub()
    }

    /// Records that `frame` was handed to the connection.
    pub fn sent(&self, frame: &Frame) {
        self.stats.sent.increment(1);
        self.latency_of(frame);
    }

    /// Records `frame`'s apply-to-send latency only: a crowd counts its frames once a pass.
    pub fn latency_of(&self, frame: &Frame) {
        if matches!(
            frame.kind(),
            FrameKind::Bid | FrameKind::Status | FrameKind::Ended
        ) {
            self.stats
                .apply_to_send
                .record(frame.received_at().elapsed().as_secs_f64());
        }
    }
}

fn render_now(kind: FrameKind, auction: &gavel_rules::Auction, viewer: &Viewer) -> Frame {
    let now_ms = viewer.sub.hub().now_ms();
    Frame::render(kind, auction, now_ms, Instant::now())
}

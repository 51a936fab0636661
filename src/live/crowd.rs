//! The WebSocket viewers of one auction whose sockets this node writes itself, in passes: a
//! crowd is split into chunks of up to `CHUNK_VIEWERS` viewers, and one task per chunk writes
//! each new state to every viewer of its chunk, one non-blocking `write` per socket of the same
//! pre-encoded frame ([`Frame::ws`]).
//!
//! Why: with a task per viewer, every frame to every viewer was a task wakeup, a poll, a timer
//! armed and dropped (the tick), and tungstenite's framing; at 100,000 viewers that was about
//! two fifths of a node's CPU per frame, and a round of frames to the crowd took a second. A
//! chunk's pass does the same work with one wakeup for its whole chunk, and ticks and pings
//! ride on the same passes.
//!
//! Who writes: a viewer's connection task sends its snapshot, then hands the socket to a chunk
//! ([`Crowd::admit`]) and only reads it from then on (through [`SharedStream`]: pongs, the
//! client's close). The chunk writes frames, ticks and pings until the stream ends for a reason
//! the connection must act on (`ended`, shutdown, a stalled or unresponsive viewer); then it
//! hands the socket back ([`HandBack`]) with whatever it could not write yet, and the task
//! closes the connection. What the task's WebSocket writes while a chunk owns the socket (its
//! answer to a client's ping or close) waits in `Writes::deferred` and goes out between two
//! frames, so frames never interleave.
//!
//! Only plain TCP connections come here; TLS viewers and SSE keep a task each (`ws.rs`,
//! `sse.rs`). The frame rules are the viewer's own ([`Viewer::due`]), so every path sends the
//! same sequence.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::hub::{Latest, Watching};
use super::viewer::Viewer;
use super::ws::End;
use super::{LiveConfig, Transport};

/// The most viewers one chunk task serves. A pass over a full chunk is about 2 ms of sends on
/// this machine: short enough for the runtime's other tasks, and a crowd of 100,000 is a few
/// hundred wakeups a round instead of 100,000.
pub const CHUNK_VIEWERS: usize = 256;
/// Passes a chunk makes for its timers (ticks, pings, stalled sockets) are at least this far
/// apart, so viewers due within it share a pass: a tick or ping is at most this late.
const TIMER_GATHER_MS: u64 = 50;
/// How soon a chunk retries a socket that did not take a whole frame.
const STALL_RETRY_MS: u64 = 50;
/// A WebSocket ping from the server: final, opcode 9, no payload.
const PING_FRAME: &[u8] = &[0x89, 0x00];

/// The socket of one viewer, shared by its connection task (which reads it) and, while it
/// serves the viewer, its chunk (which writes it).
pub struct Outlet {
    stream: TcpStream,
    writes: Mutex<Writes>,
    /// When the client was last heard from, in milliseconds since `epoch`.
    heard_at_ms: AtomicU64,
    epoch: Instant,
    /// The connection task is gone (the client closed or vanished).
    gone: AtomicBool,
    /// `Writes::deferred` has bytes: spares every pass a lock per viewer.
    has_deferred: AtomicBool,
    /// The chunk serving this viewer, told when the connection goes.
    chunk: Mutex<Weak<Chunk>>,
}

struct Writes {
    /// The chunk writes the socket (else the connection task does).
    chunk_owns: bool,
    /// Whole WebSocket frames the connection task wrote while the chunk owned the socket.
    deferred: Vec<u8>,
}

impl Outlet {
    pub fn new(stream: TcpStream) -> Arc<Outlet> {
        Arc::new(Outlet {
            stream,
            writes: Mutex::new(Writes {
                chunk_owns: false,
                deferred: Vec::new(),
            }),
            heard_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            gone: AtomicBool::new(false),
            has_deferred: AtomicBool::new(false),
            chunk: Mutex::new(Weak::new()),
        })
    }

    fn writes(&self) -> MutexGuard<'_, Writes> {
        // Every update of `Writes` is a single assignment or append: consistent after a panic.
        self.writes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the connection task wrote while the chunk owned the socket.
    fn take_deferred(&self) -> Option<Bytes> {
        if !self.has_deferred.swap(false, Ordering::Acquire) {
            return None;
        }
        let mut writes = self.writes();
        (!writes.deferred.is_empty()).then(|| Bytes::from(std::mem::take(&mut writes.deferred)))
    }

    /// The client said something (any frame): it is alive.
    pub fn heard(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.heard_at_ms.store(ms, Ordering::Relaxed);
    }

    fn silent_for(&self, now: Instant) -> Duration {
        let heard_at = self.epoch + Duration::from_millis(self.heard_at_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(heard_at)
    }

    /// The connection task ends: its chunk drops the viewer at its next pass, made now.
    pub fn leave(&self) {
        self.gone.store(true, Ordering::Release);
        let chunk = self
            .chunk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .upgrade();
        if let Some(chunk) = chunk {
            chunk.wake.notify_one();
        }
    }

    /// Writes as much of `pieces` as the socket takes now without waiting, and returns what is
    /// left (empty when everything went). `Err` when the connection is broken.
    fn write_now(&self, pieces: &mut Vec<Bytes>) -> io::Result<()> {
        while !pieces.is_empty() {
            let written = if pieces.len() == 1 {
                self.stream.try_write(&pieces[0])
            } else {
                let slices: Vec<IoSlice<'_>> = pieces.iter().map(|p| IoSlice::new(p)).collect();
                self.stream.try_write_vectored(&slices)
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(mut n) => {
                    let mut whole = 0;
                    for piece in pieces.iter_mut() {
                        if n >= piece.len() {
                            n -= piece.len();
                            whole += 1;
                        } else {
                            let _ = piece.split_to(n);
                            break;
                        }
                    }
                    pieces.drain(..whole);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// The connection task's view of the socket for its WebSocket (tungstenite): reads go to the
/// socket; writes go to the socket while the task owns it, and wait in `deferred` for the
/// chunk's next pass while the chunk does.
pub struct SharedStream(pub Arc<Outlet>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: polling again registers for the next.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        {
            let mut writes = self.0.writes();
            if writes.chunk_owns {
                writes.deferred.extend_from_slice(buf);
                self.0.has_deferred.store(true, Ordering::Release);
                return Poll::Ready(Ok(buf.len()));
            }
        }
        // The task owns the socket: nothing else writes it until the task hands it over.
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.0.writes().chunk_owns {
            return Poll::Ready(Ok(()));
        }
        let shut = socket2::SockRef::from(&self.0.stream).shutdown(std::net::Shutdown::Write);
        Poll::Ready(match shut {
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            other => other,
        })
    }
}

/// A viewer given back to its connection task, and why.
pub struct HandBack {
    pub end: End,
    pub viewer: Viewer,
    /// What the socket has not taken yet (the end of a frame, then whole frames): the task
    /// writes it before anything else.
    pub unsent: Vec<Bytes>,
}

/// One viewer as its chunk serves it.
pub struct Sink {
    viewer: Viewer,
    outlet: Arc<Outlet>,
    hand_back: oneshot::Sender<HandBack>,
    /// Bytes the socket did not take yet; nothing else is written before they go.
    unsent: Vec<Bytes>,
    stalled_since: Option<Instant>,
    ping_due: Instant,
}

impl Sink {
    pub fn new(
        viewer: Viewer,
        outlet: Arc<Outlet>,
        hand_back: oneshot::Sender<HandBack>,
        ping_period: Duration,
    ) -> Sink {
        outlet.heard();
        Sink {
            viewer,
            outlet,
            hand_back,
            unsent: Vec::new(),
            stalled_since: None,
            ping_due: Instant::now() + ping_period,
        }
    }

    pub fn auction_id(&self) -> &str {
        self.viewer.auction_id()
    }

    /// Gives the viewer back at once: the node is shutting down.
    pub fn going_away(self) {
        self.hand_back(End::GoingAway);
    }

    /// Gives the viewer back to its connection task, which then owns the socket again.
    fn hand_back(self, end: End) {
        let mut unsent = self.unsent;
        {
            // One lock: a task write after it goes to the socket, so it must find nothing
            // (the end of a frame, a deferred reply) still to be written before it.
            let mut writes = self.outlet.writes();
            writes.chunk_owns = false;
            if !writes.deferred.is_empty() {
                unsent.push(Bytes::from(std::mem::take(&mut writes.deferred)));
            }
        }
        // A task that is gone has nobody to close for; dropping the viewer frees its slot.
        let _ = self.hand_back.send(HandBack {
            end,
            viewer: self.viewer,
            unsent,
        });
    }
}

/// One chunk's share of a crowd.
#[allow(
    clippy::vec_box,
    reason = "a pass moves every viewer between two lists: a pointer each, not 256 bytes"
)]
pub struct Chunk {
    /// Viewers admitted since the chunk's last pass.
    incoming: Mutex<Vec<Box<Sink>>>,
    /// Wakes the chunk for its incoming viewers, a viewer that left, or the crowd's end.
    wake: Notify,
    /// Viewers the chunk serves or was given: `Crowd::admit` fills chunks up to `CHUNK_VIEWERS`.
    load: AtomicUsize,
    /// The crowd is gone (nobody watches the auction any more, or the hub closed).
    retired: AtomicBool,
}

/// The directly written WebSocket viewers of one auction.
pub struct Crowd {
    chunks: Mutex<Vec<Arc<Chunk>>>,
    /// What every chunk watches: the auction's newest state, its news and its shared tick.
    feed: Watching,
    config: LiveConfig,
    runtime: tokio::runtime::Handle,
}

impl Crowd {
    pub fn new(feed: Watching, config: LiveConfig, runtime: tokio::runtime::Handle) -> Crowd {
        Crowd {
            chunks: Mutex::new(Vec::new()),
            feed,
            config,
            runtime,
        }
    }

    /// Hands `sink`'s socket to the first chunk with room, starting a chunk if none has any.
    pub fn admit(&self, sink: Sink) {
        let mut chunks = self.chunks.lock().unwrap_or_else(|e| e.into_inner());
        let chunk = match chunks
            .iter()
            .find(|c| c.load.load(Ordering::Relaxed) < CHUNK_VIEWERS)
        {
            Some(chunk) => chunk.clone(),
            None => {
                let chunk = Arc::new(Chunk {
                    incoming: Mutex::new(Vec::new()),
                    wake: Notify::new(),
                    load: AtomicUsize::new(0),
                    retired: AtomicBool::new(false),
                });
                chunks.push(chunk.clone());
                let feed = Watching {
                    rx: self.feed.rx.clone(),
                    news: self.feed.news.clone(),
                    tick: self.feed.tick.clone(),
                };
                self.runtime
                    .spawn(serve_chunk(chunk.clone(), feed, self.config));
                chunk
            }
        };
        chunk.load.fetch_add(1, Ordering::Relaxed);
        *sink.outlet.chunk.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&chunk);
        sink.outlet.writes().chunk_owns = true;
        chunk
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(sink));
        chunk.wake.notify_one();
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        let chunks = self.chunks.get_mut().unwrap_or_else(|e| e.into_inner());
        for chunk in chunks.drain(..) {
            chunk.retired.store(true, Ordering::Release);
            chunk.wake.notify_one();
        }
    }
}

/// A chunk's task: a pass over its viewers whenever the auction has news, a viewer joins or
/// leaves, or a timer (tick, ping, stalled socket) is due; ends with the crowd.
async fn serve_chunk(chunk: Arc<Chunk>, feed: Watching, config: LiveConfig) {
    // Boxed: a pass moves every viewer from one list to the other, so a pointer each.
    let mut sinks: Vec<Box<Sink>> = Vec::new();
    // The next pass's list, kept to reuse its allocation.
    let mut spare: Vec<Box<Sink>> = Vec::new();
    let ping_period = Duration::from_millis(config.ping_interval_ms);
    let limits = Limits {
        ping_period,
        silent_max: ping_period * super::ws::PONG_MISSED_MAX,
        send_timeout: Duration::from_millis(config.send_timeout_ms),
        frames_sent: metrics::counter!(super::FRAMES_SENT_TOTAL, "transport" => Transport::Ws.as_str()),
    };
    loop {
        // Registered before the pass reads the state, so news published during it is not lost.
        let mut news = std::pin::pin!(feed.news.notified());
        news.as_mut().enable();
        let mut woken = std::pin::pin!(chunk.wake.notified());
        woken.as_mut().enable();
        {
            let mut incoming = chunk.incoming.lock().unwrap_or_else(|e| e.into_inner());
            sinks.append(&mut incoming);
        }
        let closing = sinks.first().is_some_and(|s| s.viewer.hub().is_closing());
        if closing {
            chunk.load.fetch_sub(sinks.len(), Ordering::Relaxed);
            for sink in sinks.drain(..) {
                sink.hand_back(End::GoingAway);
            }
        }
        if sinks.is_empty() && chunk.retired.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let latest = feed.rx.borrow().clone();
        let before = sinks.len();
        let next_due = pass(&mut sinks, &mut spare, &latest, now, &limits);
        chunk
            .load
            .fetch_sub(before - sinks.len(), Ordering::Relaxed);
        let wake_at = next_due.map(|due| due.max(now + Duration::from_millis(TIMER_GATHER_MS)));
        let news_during_pass = std::future::poll_fn(|cx| Poll::Ready(news.as_mut().poll(cx)))
            .await
            .is_ready();
        if news_during_pass {
            // That news woke the auction's other chunks into the runtime's queue: go behind
            // them rather than serve this chunk's viewers twice before theirs once.
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            biased;
            () = &mut news => {}
            () = &mut woken => {}
            () = sleep_until(wake_at) => {}
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

struct Limits {
    ping_period: Duration,
    silent_max: Duration,
    send_timeout: Duration,
    /// `FRAMES_SENT_TOTAL` of WebSocket viewers, counted once a pass.
    frames_sent: metrics::Counter,
}

/// Serves every viewer in `sinks` once, in order; drops or hands back the ones whose stream
/// ends. Returns when the next timer of any of them is due. `kept` is an empty list to reuse.
#[allow(clippy::vec_box, reason = "see `Chunk`")]
fn pass(
    sinks: &mut Vec<Box<Sink>>,
    kept: &mut Vec<Box<Sink>>,
    latest: &Latest,
    now: Instant,
    limits: &Limits,
) -> Option<Instant> {
    let mut next_due: Option<Instant> = None;
    let mut due = |at: Instant| next_due = Some(next_due.map_or(at, |n| n.min(at)));
    let mut frames = 0;
    for mut sink in sinks.drain(..) {
        if sink.outlet.gone.load(Ordering::Acquire) {
            // The task's answer to the client's close, if it was still waiting for a pass.
            let mut last = sink.unsent;
            last.extend(sink.outlet.take_deferred());
            let _ = sink.outlet.write_now(&mut last);
            continue;
        }
        match serve_one(&mut sink, latest, now, limits, &mut frames) {
            Served::Keep(at) => {
                due(at);
                kept.push(sink);
            }
            Served::HandBack(end) => sink.hand_back(end),
            Served::Broken => {}
        }
    }
    std::mem::swap(sinks, kept);
    limits.frames_sent.increment(frames);
    next_due
}

enum Served {
    /// Still this chunk's; its next timer is due then.
    Keep(Instant),
    HandBack(End),
    /// The connection is broken: the task sees it too, and the viewer goes.
    Broken,
}

fn serve_one(
    sink: &mut Sink,
    latest: &Latest,
    now: Instant,
    limits: &Limits,
    frames: &mut u64,
) -> Served {
    if !sink.unsent.is_empty() {
        if sink.outlet.write_now(&mut sink.unsent).is_err() {
            return Served::Broken;
        }
        if !sink.unsent.is_empty() {
            let since = *sink.stalled_since.get_or_insert(now);
            if now.duration_since(since) >= limits.send_timeout {
                return Served::HandBack(End::SendTimeout);
            }
            return Served::Keep(now + Duration::from_millis(STALL_RETRY_MS));
        }
        sink.stalled_since = None;
    }
    let mut pieces: Vec<Bytes> = sink.outlet.take_deferred().into_iter().collect();
    if now >= sink.ping_due {
        if sink.outlet.silent_for(now) > limits.silent_max {
            return Served::HandBack(End::Unresponsive);
        }
        pieces.push(Bytes::from_static(PING_FRAME));
        sink.ping_due = now + limits.ping_period;
    }
    if let Some(frame) = sink.viewer.due(latest, now) {
        pieces.push(frame.ws());
        sink.viewer.latency_of(&frame);
        *frames += 1;
    }
    if !pieces.is_empty() {
        if sink.outlet.write_now(&mut pieces).is_err() {
            return Served::Broken;
        }
        if !pieces.is_empty() {
            sink.unsent = pieces;
            sink.stalled_since = Some(now);
            if sink.viewer.is_done() {
                // `ended` is on its way: the task finishes writing it, then closes.
                return Served::HandBack(End::AuctionEnded);
            }
            return Served::Keep(now + Duration::from_millis(STALL_RETRY_MS));
        }
    }
    if sink.viewer.is_done() {
        return Served::HandBack(End::AuctionEnded);
    }
    Served::Keep(sink.viewer.tick_due_at().min(sink.ping_due))
}

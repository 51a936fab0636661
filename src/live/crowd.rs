//! The WebSocket viewers of one auction whose sockets this node writes itself, in passes: a
//! crowd is split into chunks of up to `CHUNK_VIEWERS` viewers, and a pass over a chunk writes
//! the newest state to every viewer of the chunk, one non-blocking `write` per socket of the
//! same pre-encoded frame ([`Frame::ws`]). The crowd's runners (a task per fan-out thread) make
//! the passes, taking the chunks that need one in a fixed circular order ([`Rounds`]), so a new
//! state reaches every viewer within one round of passes.
//!
//! Why: with a task per viewer, every frame to every viewer was a task wakeup, a poll, a timer
//! armed and dropped (the tick), and tungstenite's framing; at 100,000 viewers that was about
//! two fifths of a node's CPU per frame, and a round of frames to the crowd took a second. A
//! pass does the same work with one wakeup for its whole chunk, and ticks and pings ride on
//! the same passes.
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

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch, Notify};
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
            chunk.attention.store(true, Ordering::Release);
            chunk.crowd_wake.notify_one();
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
#[allow(clippy::vec_box, reason = "see `Serving`")]
pub struct Chunk {
    /// Viewers admitted since the chunk's last pass.
    incoming: Mutex<Vec<Box<Sink>>>,
    /// Viewers the chunk serves or was given: `Crowd::admit` fills chunks up to `CHUNK_VIEWERS`.
    load: AtomicUsize,
    /// A viewer came or left since the last pass.
    attention: AtomicBool,
    /// The auction version the chunk's last pass brought its viewers to.
    served_version: AtomicU64,
    /// When the chunk's earliest timer (tick, ping, stalled socket) is due, in milliseconds
    /// since the crowd's epoch; `u64::MAX` when none is.
    due_ms: AtomicU64,
    /// The viewers themselves, held by the runner making a pass.
    serving: Mutex<Serving>,
    /// The crowd's runners, told when a viewer comes or leaves.
    crowd_wake: Arc<Notify>,
}

#[allow(
    clippy::vec_box,
    reason = "a pass moves every viewer between two lists: a pointer each, not 256 bytes"
)]
#[derive(Default)]
struct Serving {
    sinks: Vec<Box<Sink>>,
    /// The next pass's list, kept to reuse its allocation.
    spare: Vec<Box<Sink>>,
}

impl Chunk {
    fn new(crowd_wake: Arc<Notify>) -> Chunk {
        Chunk {
            incoming: Mutex::new(Vec::new()),
            load: AtomicUsize::new(0),
            attention: AtomicBool::new(false),
            served_version: AtomicU64::new(0),
            due_ms: AtomicU64::new(u64::MAX),
            serving: Mutex::new(Serving::default()),
            crowd_wake,
        }
    }

    /// The chunk's viewers, unless a runner is making a pass over them.
    fn serving(&self) -> Option<MutexGuard<'_, Serving>> {
        match self.serving.try_lock() {
            Ok(serving) => Some(serving),
            // A pass that panicked left each viewer either served or dropped: go on.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Whether a pass has anything to do: viewers came or left, or the chunk has viewers and
    /// a newer state, a due timer or the hub's closing to act on.
    fn needs_pass(&self, version: u64, closing: bool, now_ms: u64) -> bool {
        self.attention.load(Ordering::Acquire)
            || (self.load.load(Ordering::Relaxed) > 0
                && (closing
                    || version > self.served_version.load(Ordering::Relaxed)
                    || now_ms >= self.due_ms.load(Ordering::Relaxed)))
    }
}

/// The directly written WebSocket viewers of one auction.
pub struct Crowd {
    rounds: Arc<Rounds>,
}

/// What a crowd's runners share.
///
/// Why runners and a circular order rather than a task per chunk: tokio puts a task that
/// yields at the back of its thread's own queue, and a task woken by news from another thread
/// in the shared queue, which it takes from only now and then while its own has work. With a
/// task per chunk, chunks whose pass had seen news cycled through the first while chunks that
/// had been idle waited in the second. With 100,000 viewers, a chunk's passes were 0.54 s
/// apart at the median but up to 1.4 s, and bid-to-last-viewer p99 was 0.91-1.11 s; with
/// runners taking the chunks in one order, at most 0.79 s apart and p99 0.77-0.79 s
/// (docs/PERFORMANCE.md).
struct Rounds {
    circle: Circle,
    /// Wakes a runner that found nothing to do: a viewer came or left, or the crowd retired.
    wake: Arc<Notify>,
    /// The crowd is gone (nobody watches the auction any more, or the hub closed).
    retired: AtomicBool,
    /// What every chunk sends: the auction's newest state, its news and its shared tick.
    feed: Watching,
    closing: watch::Receiver<bool>,
}

/// A crowd's chunks in their fixed circular order, and whose turn is next.
struct Circle {
    /// Only ever appended to.
    chunks: Mutex<Vec<Arc<Chunk>>>,
    /// Where the next runner looking for work starts, as an ever-increasing count.
    cursor: AtomicUsize,
    /// What the chunks' `due_ms` count from.
    epoch: Instant,
}

impl Crowd {
    /// A crowd served by one runner per thread of `runtime`, so a hot auction's fan-out can use
    /// every fan-out thread.
    pub fn new(
        feed: Watching,
        closing: watch::Receiver<bool>,
        config: LiveConfig,
        runtime: tokio::runtime::Handle,
    ) -> Crowd {
        let rounds = Arc::new(Rounds {
            circle: Circle::new(),
            wake: Arc::new(Notify::new()),
            retired: AtomicBool::new(false),
            feed,
            closing,
        });
        for _ in 0..runtime.metrics().num_workers() {
            runtime.spawn(run(rounds.clone(), config));
        }
        Crowd { rounds }
    }

    /// Hands `sink`'s socket to the first chunk with room, starting a chunk if none has any.
    pub fn admit(&self, sink: Sink) {
        let chunk = self.rounds.circle.with_room(&self.rounds.wake);
        chunk.load.fetch_add(1, Ordering::Relaxed);
        *sink.outlet.chunk.lock().unwrap_or_else(|e| e.into_inner()) = Arc::downgrade(&chunk);
        sink.outlet.writes().chunk_owns = true;
        chunk
            .incoming
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(sink));
        chunk.attention.store(true, Ordering::Release);
        self.rounds.wake.notify_one();
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.rounds.retired.store(true, Ordering::Release);
        self.rounds.wake.notify_waiters();
    }
}

impl Circle {
    fn new() -> Circle {
        Circle {
            chunks: Mutex::new(Vec::new()),
            cursor: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    fn chunks(&self) -> MutexGuard<'_, Vec<Arc<Chunk>>> {
        // Only ever pushed to: consistent after a panic.
        self.chunks.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first chunk with room for a viewer, a new one at the end if none has any.
    fn with_room(&self, crowd_wake: &Arc<Notify>) -> Arc<Chunk> {
        let mut chunks = self.chunks();
        let with_room = chunks
            .iter()
            .find(|c| c.load.load(Ordering::Relaxed) < CHUNK_VIEWERS);
        match with_room {
            Some(chunk) => chunk.clone(),
            None => {
                let chunk = Arc::new(Chunk::new(crowd_wake.clone()));
                chunks.push(chunk.clone());
                chunk
            }
        }
    }

    fn ms_since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A timer's `due_ms`: rounded up, so a chunk never counts as due before its viewers are
    /// (a pass that early would find nothing due and leave the chunk due: a busy loop).
    fn due_ms(&self, due: Instant) -> u64 {
        let micros = due.saturating_duration_since(self.epoch).as_micros();
        micros.div_ceil(1000) as u64
    }

    /// The next chunk after the last one taken, in the circular order, that needs a pass and
    /// that no runner is serving, if any.
    fn next_to_serve(&self, version: u64, closing: bool, now: Instant) -> Option<Arc<Chunk>> {
        let chunks = self.chunks();
        let now_ms = self.ms_since_epoch(now);
        (0..chunks.len())
            .map(|_| &chunks[self.cursor.fetch_add(1, Ordering::Relaxed) % chunks.len()])
            .find(|chunk| chunk.needs_pass(version, closing, now_ms) && chunk.serving().is_some())
            .cloned()
    }

    /// When the earliest timer of any chunk with viewers is due.
    fn earliest_due(&self) -> Option<Instant> {
        let due_ms = self
            .chunks()
            .iter()
            .filter(|chunk| chunk.load.load(Ordering::Relaxed) > 0)
            .map(|chunk| chunk.due_ms.load(Ordering::Relaxed))
            .min()
            .filter(|&ms| ms != u64::MAX)?;
        Some(self.epoch + Duration::from_millis(due_ms))
    }

    fn is_empty(&self) -> bool {
        self.chunks()
            .iter()
            .all(|chunk| chunk.load.load(Ordering::Relaxed) == 0)
    }
}

/// A crowd's runner: passes over the chunks that need one, in the crowd's order, until none
/// does; then waits for news, a viewer coming or leaving, or the earliest timer. Ends once the
/// crowd retired and every viewer is gone or handed back.
async fn run(rounds: Arc<Rounds>, config: LiveConfig) {
    let ping_period = Duration::from_millis(config.ping_interval_ms);
    let limits = Limits {
        ping_period,
        silent_max: ping_period * super::ws::PONG_MISSED_MAX,
        send_timeout: Duration::from_millis(config.send_timeout_ms),
        frames_sent: metrics::counter!(super::FRAMES_SENT_TOTAL, "transport" => Transport::Ws.as_str()),
    };
    loop {
        // Registered before the chunks are looked at, so news or a viewer arriving while they
        // are is not missed.
        let mut news = std::pin::pin!(rounds.feed.news.notified());
        news.as_mut().enable();
        let mut woken = std::pin::pin!(rounds.wake.notified());
        woken.as_mut().enable();
        loop {
            let now = Instant::now();
            let latest = rounds.feed.rx.borrow().clone();
            let closing = *rounds.closing.borrow();
            let Some(chunk) = rounds.circle.next_to_serve(latest.version(), closing, now) else {
                break;
            };
            // `false`: another runner took it between the look and now, and serves it.
            if !serve(&chunk, &latest, closing, now, &rounds.circle, &limits) {
                continue;
            }
            // Behind the runtime's other tasks (other auctions, connection tasks) before the
            // next chunk.
            tokio::task::yield_now().await;
        }
        if rounds.retired.load(Ordering::Acquire) && rounds.circle.is_empty() {
            return;
        }
        let wake_at = rounds.circle.earliest_due();
        tokio::select! {
            biased;
            () = &mut news => {}
            () = &mut woken => {}
            () = sleep_until(wake_at) => {}
        }
    }
}

/// One pass over `chunk`: takes in its new viewers, then serves every viewer once. `false`
/// when another runner is making a pass over it.
fn serve(
    chunk: &Chunk,
    latest: &Latest,
    closing: bool,
    now: Instant,
    circle: &Circle,
    limits: &Limits,
) -> bool {
    let Some(mut serving) = chunk.serving() else {
        return false;
    };
    // Cleared before the viewers are taken in: one admitted after this sets it again.
    chunk.attention.store(false, Ordering::Release);
    let Serving { sinks, spare } = &mut *serving;
    sinks.append(&mut chunk.incoming.lock().unwrap_or_else(|e| e.into_inner()));
    if closing {
        chunk.load.fetch_sub(sinks.len(), Ordering::Relaxed);
        for sink in sinks.drain(..) {
            sink.hand_back(End::GoingAway);
        }
    }
    let before = sinks.len();
    let next_due = pass(sinks, spare, latest, now, limits);
    chunk
        .load
        .fetch_sub(before - sinks.len(), Ordering::Relaxed);
    chunk
        .served_version
        .store(latest.version(), Ordering::Relaxed);
    // Never sooner than the gather time after this pass, so viewers due close together share
    // a pass, and a runner busy with news passes over a chunk for its timers no more often.
    let gathered = next_due.map(|due| due.max(now + Duration::from_millis(TIMER_GATHER_MS)));
    let due_ms = gathered.map_or(u64::MAX, |due| circle.due_ms(due));
    chunk.due_ms.store(due_ms, Ordering::Relaxed);
    true
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A circle of `count` chunks with a viewer each, all brought to version 1.
    fn circle_of(count: usize) -> (Circle, Vec<Arc<Chunk>>) {
        let circle = Circle::new();
        let wake = Arc::new(Notify::new());
        let chunks: Vec<Arc<Chunk>> = (0..count)
            .map(|_| {
                let chunk = Arc::new(Chunk::new(wake.clone()));
                chunk.load.store(1, Ordering::Relaxed);
                chunk.served_version.store(1, Ordering::Relaxed);
                chunk
            })
            .collect();
        *circle.chunks() = chunks.clone();
        (circle, chunks)
    }

    /// Takes the next chunk to serve at `version` and serves it (marks it brought to
    /// `version`); returns its place in the circle.
    fn serve_next(circle: &Circle, chunks: &[Arc<Chunk>], version: u64) -> Option<usize> {
        let chunk = circle.next_to_serve(version, false, Instant::now())?;
        chunk.served_version.store(version, Ordering::Relaxed);
        chunks.iter().position(|c| Arc::ptr_eq(c, &chunk))
    }

    #[test]
    fn news_reaches_every_chunk_once_in_order_before_any_chunk_twice() {
        let (circle, chunks) = circle_of(5);
        assert_eq!(serve_next(&circle, &chunks, 1), None, "nothing to do");
        let first: Vec<_> = (0..3)
            .filter_map(|_| serve_next(&circle, &chunks, 2))
            .collect();
        assert_eq!(first, [0, 1, 2]);
        // Version 3 arrives while chunks 3 and 4 still wait for version 2: they go first, and
        // the chunks just served wait their turn behind them.
        let rest: Vec<_> = std::iter::from_fn(|| serve_next(&circle, &chunks, 3)).collect();
        assert_eq!(rest, [3, 4, 0, 1, 2]);
    }

    #[test]
    fn a_chunk_being_served_or_empty_is_passed_over() {
        let (circle, chunks) = circle_of(3);
        let held = chunks[0].serving.lock().unwrap();
        chunks[2].load.store(0, Ordering::Relaxed);
        let served: Vec<_> = std::iter::from_fn(|| serve_next(&circle, &chunks, 2)).collect();
        assert_eq!(served, [1]);
        drop(held);
        assert_eq!(serve_next(&circle, &chunks, 2), Some(0));
        // A viewer arriving at the empty chunk needs a pass there, whatever the version.
        chunks[2].attention.store(true, Ordering::Release);
        assert_eq!(serve_next(&circle, &chunks, 2), Some(2));
    }

    #[test]
    fn a_chunk_whose_timer_is_due_needs_a_pass_and_the_earliest_timer_is_the_wake_up() {
        let (circle, chunks) = circle_of(3);
        assert_eq!(circle.earliest_due(), None, "no timers");
        chunks[0].due_ms.store(5_000, Ordering::Relaxed);
        chunks[1].due_ms.store(10, Ordering::Relaxed);
        // An empty chunk's timer is nobody's.
        chunks[2].due_ms.store(1, Ordering::Relaxed);
        chunks[2].load.store(0, Ordering::Relaxed);
        assert_eq!(
            circle.earliest_due(),
            Some(circle.epoch + Duration::from_millis(10))
        );
        let at = circle.epoch + Duration::from_millis(20);
        let due = circle.next_to_serve(1, false, at).unwrap();
        assert!(Arc::ptr_eq(&due, &chunks[1]));
        // A timer counts in whole milliseconds rounded up: a chunk is never due before its
        // viewers are, at most a millisecond after.
        let timer = circle.epoch + Duration::from_micros(30_400);
        chunks[1]
            .due_ms
            .store(circle.due_ms(timer), Ordering::Relaxed);
        let just_before = circle.epoch + Duration::from_micros(30_200);
        assert!(circle.next_to_serve(1, false, just_before).is_none());
        let after = circle.epoch + Duration::from_micros(31_000);
        assert!(circle.next_to_serve(1, false, after).is_some());
    }
}

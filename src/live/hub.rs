//! The node's fan-out hub: turns what this node's replicas apply into per-auction frames, keeps
//! the newest one per watched auction in a latest-value channel, ticks, and admits viewers.
//!
//! One task (the pump), on a thread of its own, reads the node-wide applied-events channel. For
//! an auction that has viewers it renders the change once ([`Frame::render`]), stores it in the
//! auction's `tokio::sync::watch`, replacing what was there, and wakes the auction's viewers,
//! first waiting first woken (`Channel`). A viewer that is busy writing finds only the newest
//! state when it looks again, so slow viewers coalesce instead of queueing; nothing a viewer
//! does can make the pump (let alone apply) wait, and no crowd's queue of sends delays the pump.
//! Auctions without viewers cost nothing: their entries exist only while someone watches (so at
//! most `viewers_max` of them).
//! Every publication goes through a version check, so a watch only ever moves forward whoever
//! publishes (the pump, a joining viewer's load, a re-read after the node channel lagged).
//!
//! Ticks are not published: a viewer sends one only when its own tick period passed without
//! another frame (`viewer.rs`), so while bids flow no viewer ticks at all, and an idle crowd's
//! ticks are spread over the second by connect time instead of waking everyone at once. The
//! frame itself is shared: [`SharedTick`] renders a tick once per auction per `TICK_SHARE_MS`
//! and every viewer due meanwhile sends the same bytes. (A shared once-a-second tick published
//! through the watch woke every viewer each second, 100,000 wakeups a second at 100k viewers,
//! even when the viewer had just been sent a bid.)
//!
//! This module knows the engine and the frame format, not HTTP: `sse.rs` and `ws.rs` turn a
//! [`Subscription`] into bytes on a socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use gavel_cluster::{AppliedEvents, AuctionEvent, Consistency, Watched};
use gavel_rules::Auction;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::crowd::{Crowd, Sink};
use super::frame::{Frame, FrameKind};
use super::{LiveConfig, Transport, VIEWERS, VIEWERS_REFUSED_TOTAL};
use crate::http::engine::Engine;

/// The newest state of one watched auction, as every viewer of it should next see it.
#[derive(Clone, Debug, Default)]
pub struct Latest {
    /// `None` only until the first viewer's load (or an applied change) fills it.
    pub auction: Option<Arc<Auction>>,
    /// The frame announcing `auction` to viewers that saw an older version.
    pub event: Option<Frame>,
}

impl Latest {
    pub fn version(&self) -> u64 {
        self.auction.as_ref().map_or(0, |a| a.version)
    }
}

/// Why a viewer cannot be admitted.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this node serves its maximum of {0} live viewers; try another node or retry shortly")]
    Full(usize),
    #[error("no such auction")]
    NotFound,
    #[error("this node cannot read the auction right now: {0}")]
    Unavailable(String),
    #[error("this node's replica is at version {have} of the auction, behind the requested version {want}; retry or use another node")]
    Behind { have: u64, want: u64 },
    #[error("this node is shutting down")]
    Closing,
}

/// The fan-out hub. Cheap to clone.
#[derive(Clone)]
pub struct Hub(Arc<Inner>);

struct Inner {
    engine: Arc<dyn Engine>,
    config: LiveConfig,
    /// Where the pump and every WebSocket viewer's task run (`Hub::spawn_viewer`).
    runtime: tokio::runtime::Handle,
    permits: Arc<Semaphore>,
    watched: Mutex<HashMap<String, WatchedAuction>>,
    /// The node's marks of the auctions in `watched`: apply publishes changes of these only.
    marks: Arc<Watched>,
    closing: watch::Sender<bool>,
}

struct WatchedAuction {
    channel: Channel,
    tick: Arc<SharedTick>,
    viewers: usize,
    /// Its WebSocket viewers whose sockets the node writes in passes (`crowd.rs`), once the
    /// first of them is handed over.
    crowd: Option<Arc<Crowd>>,
}

/// Where one auction's newest state is published: the value, and the call that wakes its
/// viewers. The call is a single first-come-first-woken list: the watch's own change
/// notification spreads its receivers over several lists at random, so a viewer served early
/// in one round of sends could be served late in the next, and the last viewer of a bid waited
/// up to two rounds instead of one.
#[derive(Clone)]
struct Channel {
    tx: watch::Sender<Latest>,
    news: Arc<Notify>,
}

/// How long a rendered tick is shared before the next viewer due renders a fresh one, in
/// milliseconds: its `serverTime` and `remainingMs` are at most this old when sent.
pub const TICK_SHARE_MS: u64 = 100;

/// The newest `tick` of one auction, shared by the viewers that come due within
/// `TICK_SHARE_MS` of each other.
#[derive(Default)]
pub struct SharedTick(Mutex<Option<(Frame, tokio::time::Instant)>>);

impl SharedTick {
    /// A tick of `auction` rendered at most `TICK_SHARE_MS` ago, rendering it if needed.
    pub fn get(&self, auction: &Auction, hub: &Hub) -> Frame {
        // A panic while holding this lock leaves at worst a stale tick, which is re-rendered.
        let mut newest = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let fresh = Duration::from_millis(TICK_SHARE_MS);
        match &*newest {
            Some((frame, at)) if frame.version() == auction.version && at.elapsed() < fresh => {
                frame.clone()
            }
            _ => {
                let frame = Frame::render(FrameKind::Tick, auction, hub.now_ms(), Instant::now());
                // Tokio's clock, like the viewers' tick timers (and paused with them in tests).
                *newest = Some((frame.clone(), tokio::time::Instant::now()));
                frame
            }
        }
    }
}

impl Hub {
    /// Creates the hub and starts its pump on a thread of its own ([`spawn_pump`]). The
    /// viewers' tasks will run on the current tokio runtime (`gavel serve` enters its fan-out
    /// runtime for this).
    pub fn start(engine: Arc<dyn Engine>, config: LiveConfig) -> std::io::Result<Hub> {
        let (hub, pump) = Hub::with_pump(engine, config);
        spawn_pump(pump)?;
        Ok(hub)
    }

    /// As [`Hub::start`], with the pump a task of the current runtime: for tests on tokio's
    /// paused clock, which moves on only once every task of its runtime waits.
    #[cfg(test)]
    pub fn start_with_pump_here(engine: Arc<dyn Engine>, config: LiveConfig) -> Hub {
        let (hub, pump) = Hub::with_pump(engine, config);
        tokio::spawn(pump);
        hub
    }

    fn with_pump(
        engine: Arc<dyn Engine>,
        config: LiveConfig,
    ) -> (Hub, impl std::future::Future<Output = ()> + Send + 'static) {
        let events = engine.subscribe();
        let marks = engine.watched();
        let (closing, closing_rx) = watch::channel(false);
        let inner = Arc::new(Inner {
            marks,
            engine,
            config,
            runtime: tokio::runtime::Handle::current(),
            permits: Arc::new(Semaphore::new(config.viewers_max)),
            watched: Mutex::new(HashMap::new()),
            closing,
        });
        let pump = pump(Arc::downgrade(&inner), events, closing_rx);
        (Hub(inner), pump)
    }

    pub fn config(&self) -> LiveConfig {
        self.0.config
    }

    /// Runs a viewer's connection task on the hub's runtime. Sending frames to a crowd is
    /// most of a busy node's work; on a runtime of its own it leaves the HTTP runtime free to
    /// answer API requests (bids) at once, and the kernel's scheduler shares the cores.
    pub fn spawn_viewer<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.0.runtime.spawn(task);
    }

    /// Ends every live connection (WebSocket close 1001, SSE end of stream) and admits no more:
    /// part of graceful shutdown, so open streams do not hold it up.
    pub fn close(&self) {
        self.0.closing.send_replace(true);
        // Viewers check the flag whenever their auction's news wakes them (and before they wait
        // again), so they need no waiter list of their own on it.
        let drained: Vec<(String, WatchedAuction)> = self.0.lock().drain().collect();
        for (auction_id, watched) in drained {
            self.0.marks.unwatch(&auction_id);
            // Waiting viewers wake, see the hub closing and end.
            watched.channel.news.notify_waiters();
        }
    }

    /// Whether `close` was called: viewers end instead of waiting for news.
    pub fn is_closing(&self) -> bool {
        *self.0.closing.borrow()
    }

    /// Milliseconds since the epoch on this node's clock (for `serverTime` and `remainingMs`).
    pub fn now_ms(&self) -> i64 {
        self.0.engine.now_ms()
    }

    /// Viewers connected to this node now (for tests).
    #[cfg(test)]
    pub fn viewers(&self) -> usize {
        self.0.config.viewers_max - self.0.permits.available_permits()
    }

    /// Admits a viewer of `auction_id`: takes a viewer slot, starts watching the auction (loading
    /// its state from this node's replica if nobody watched it yet) and, with `since_version`,
    /// waits (bounded) until the replica has reached that version.
    pub async fn join(
        &self,
        auction_id: &str,
        since_version: Option<u64>,
        transport: Transport,
    ) -> Result<Subscription, JoinError> {
        let permit = self.0.permits.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!(VIEWERS_REFUSED_TOTAL).increment(1);
            JoinError::Full(self.0.config.viewers_max)
        })?;
        let (channel, watching) = self.watch(auction_id)?;
        let subscription = Subscription::new(self.clone(), auction_id, watching, permit, transport);
        if channel.tx.borrow().auction.is_none() {
            match self.0.engine.auction(auction_id, Consistency::Local).await {
                Ok(Some(auction)) => {
                    self.0
                        .publish(&channel, Arc::new(auction), None, Instant::now())
                }
                Ok(None) => return Err(JoinError::NotFound),
                Err(e) => return Err(JoinError::Unavailable(e.to_string())),
            }
        }
        if let Some(want) = since_version {
            let wait = Duration::from_millis(super::RESUME_WAIT_MS);
            let mut rx = subscription.rx.clone();
            let reached = tokio::time::timeout(wait, rx.wait_for(|l| l.version() >= want)).await;
            if !matches!(reached, Ok(Ok(_))) {
                let have = subscription.rx.borrow().version();
                return Err(JoinError::Behind { have, want });
            }
        }
        Ok(subscription)
    }

    /// Registers one more viewer of `auction_id`, creating its entry if needed. Under the same
    /// lock as `close` clears the entries, so nobody registers after it.
    fn watch(&self, auction_id: &str) -> Result<(Channel, Watching), JoinError> {
        let mut watched = self.0.lock();
        if *self.0.closing.borrow() {
            return Err(JoinError::Closing);
        }
        let entry = watched.entry(auction_id.to_owned()).or_insert_with(|| {
            // Before `join` reads the auction's state: see `Watched` for why nothing is missed.
            self.0.marks.watch(auction_id);
            WatchedAuction {
                channel: Channel {
                    tx: watch::channel(Latest::default()).0,
                    news: Arc::default(),
                },
                tick: Arc::default(),
                viewers: 0,
                crowd: None,
            }
        });
        entry.viewers += 1;
        let watching = Watching {
            rx: entry.channel.tx.subscribe(),
            news: entry.channel.news.clone(),
            tick: entry.tick.clone(),
        };
        Ok((entry.channel.clone(), watching))
    }

    /// Hands a WebSocket viewer's socket to its auction's crowd, which writes its frames from
    /// now on; gives it straight back (`GoingAway`) when the hub is closing.
    pub fn admit_to_crowd(&self, sink: Sink) {
        let crowd = {
            let mut watched = self.0.lock();
            let entry = watched
                .get_mut(sink.auction_id())
                .filter(|_| !*self.0.closing.borrow());
            entry.map(|entry| {
                let (config, runtime) = (self.0.config, self.0.runtime.clone());
                let closing = self.0.closing.subscribe();
                let (channel, tick) = (&entry.channel, &entry.tick);
                let crowd = entry.crowd.get_or_insert_with(|| {
                    let feed = Watching {
                        rx: channel.tx.subscribe(),
                        news: channel.news.clone(),
                        tick: tick.clone(),
                    };
                    Arc::new(Crowd::new(feed, closing, config, runtime))
                });
                crowd.clone()
            })
        };
        match crowd {
            Some(crowd) => crowd.admit(sink),
            // The viewer's subscription keeps its entry, so only closing removes it.
            None => sink.going_away(),
        }
    }

    /// One viewer of `auction_id` left; the entry goes with the last one.
    fn leave(&self, auction_id: &str) {
        let mut watched = self.0.lock();
        if let Some(entry) = watched.get_mut(auction_id) {
            entry.viewers = entry.viewers.saturating_sub(1);
            if entry.viewers == 0 {
                watched.remove(auction_id);
                self.0.marks.unwatch(auction_id);
            }
        }
    }

    /// Auctions with viewers now (for tests).
    #[cfg(test)]
    pub fn watched_auctions(&self) -> usize {
        self.0.lock().len()
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, WatchedAuction>> {
        // A panic while holding this lock leaves the map consistent (every update is one call).
        self.watched.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self, auction_id: &str) -> Option<Channel> {
        self.lock().get(auction_id).map(|w| w.channel.clone())
    }

    /// Publishes `auction` if it is newer than what the watch holds. `kind` is what the applied
    /// command did; `None` (a state re-read) derives it from the difference.
    fn publish(
        &self,
        channel: &Channel,
        auction: Arc<Auction>,
        kind: Option<FrameKind>,
        received_at: Instant,
    ) {
        if channel.tx.borrow().version() >= auction.version {
            return;
        }
        let now_ms = self.engine.now_ms();
        let published = channel.tx.send_if_modified(|latest| {
            if latest.version() >= auction.version {
                return false;
            }
            let kind = kind
                .unwrap_or_else(|| FrameKind::of_difference(latest.auction.as_deref(), &auction));
            latest.event = Some(Frame::render(kind, &auction, now_ms, received_at));
            latest.auction = Some(auction);
            true
        });
        if published {
            channel.news.notify_waiters();
        }
    }

    fn on_event(&self, event: &AuctionEvent) {
        let Some(channel) = self.channel(&event.auction.id) else {
            return;
        };
        let kind = FrameKind::of_changes(event.changes.iter().map(|c| c.kind));
        self.publish(
            &channel,
            event.auction.clone(),
            Some(kind),
            event.applied_at,
        );
    }

    /// Re-reads every watched auction from the replica: after the node channel dropped events.
    async fn reload_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            let received_at = Instant::now();
            match self.engine.auction(&id, Consistency::Local).await {
                Ok(Some(auction)) => {
                    if let Some(channel) = self.channel(&id) {
                        self.publish(&channel, Arc::new(auction), None, received_at);
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(auction_id = %id, %error, "cannot re-read a watched auction");
                }
            }
        }
    }
}

/// Runs the pump on a thread of its own. On the viewers' runtime it was one more task in their
/// queue: with a crowd busy there, a new state waited for the frames already queued before it
/// was even published, so a viewer saw a bid one to two rounds of sends late, not one.
/// Measured with 100,000 viewers: bid-to-last-viewer p50 2.2-3.6 s before, 1.3 s after.
fn spawn_pump<F>(pump: F) -> std::io::Result<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("gavel-live-pump".into())
        .spawn(move || runtime.block_on(pump))?;
    Ok(())
}

/// The pump: applied events in, frames out. Ends when the hub is dropped or closed, or the
/// node's channel closes.
async fn pump(
    inner: Weak<Inner>,
    mut events: broadcast::Receiver<AppliedEvents>,
    mut closing: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            received = events.recv() => {
                let Some(inner) = inner.upgrade() else { break };
                match received {
                    Ok(batch) => batch.iter().for_each(|event| inner.on_event(event)),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "live fan-out fell behind the apply path; re-reading watched auctions");
                        inner.reload_all().await;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            () = closed(&mut closing) => break,
        }
    }
    tracing::debug!("live fan-out pump stopped");
}

/// Resolves once the hub is closing (at once if it already is). Cancel-safe.
async fn closed(closing: &mut watch::Receiver<bool>) {
    // An error means the hub is gone: closed too.
    let _ = closing.wait_for(|closing| *closing).await;
}

/// What a viewer watches: the auction's newest state, the call that announces a newer one, and
/// its shared tick.
pub struct Watching {
    pub rx: watch::Receiver<Latest>,
    pub news: Arc<Notify>,
    pub tick: Arc<SharedTick>,
}

/// One admitted viewer: its slot, its place among the auction's watchers and its receiver.
/// Dropping it frees both.
pub struct Subscription {
    hub: Hub,
    auction_id: String,
    pub rx: watch::Receiver<Latest>,
    /// Woken (first waiting, first woken) when `rx` holds a newer state, or the hub closes.
    pub news: Arc<Notify>,
    pub tick: Arc<SharedTick>,
    transport: Transport,
    _permit: OwnedSemaphorePermit,
}

impl Subscription {
    fn new(
        hub: Hub,
        auction_id: &str,
        watching: Watching,
        permit: OwnedSemaphorePermit,
        transport: Transport,
    ) -> Subscription {
        metrics::gauge!(VIEWERS, "transport" => transport.as_str()).increment(1.0);
        Subscription {
            hub,
            auction_id: auction_id.to_owned(),
            rx: watching.rx,
            news: watching.news,
            tick: watching.tick,
            transport,
            _permit: permit,
        }
    }

    pub fn auction_id(&self) -> &str {
        &self.auction_id
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    pub fn hub(&self) -> &Hub {
        &self.hub
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        metrics::gauge!(VIEWERS, "transport" => self.transport.as_str()).decrement(1.0);
        self.hub.leave(&self.auction_id);
    }
}

//! The peer transport: one long-lived TCP connection per pair of nodes, shared by every Raft
//! group, carrying pipelined request/response frames tagged with a request id and a group id.
//!
//! - `frame`: the wire format and its defensive decoder;
//! - `messages`: Raft RPCs, clock probes and opaque application requests;
//! - `conn`: one established connection (its reader and writer tasks);
//! - `tls`: peer mutual TLS (who may be a peer) and the stream type over plain TCP or TLS;
//! - here: links to peers, dialing with backoff, accepting, and `call`.
//!
//! Trust is decided where a connection is made: `dial` and the per-connection task of
//! `accept_loop` run the TLS handshake (when `TransportConfig::tls` is set) before the `Hello`
//! exchange, each bounded in time, so no frame of an unauthenticated peer is ever read.
//!
//! Either side may dial when it needs a connection and has none. Should both dial at once, both
//! ends keep the connection dialed by the lower node id and close the other, so a pair settles
//! on one connection. A request waits (within its timeout) for a connection; a dropped
//! connection fails its pending requests at once and is redialed with exponential backoff.
//!
//! Clock probes are the transport's own: the reader answers them with this node's wall clock
//! (`probe_clock` turns the exchange into an offset estimate); what to make of offsets is the
//! cluster layer's business.
//!
//! Architecture invariant: the transport knows Raft's message types but not what application
//! requests mean; the cluster layer's `InboundHandler` answers every other inbound request.

mod conn;
pub mod frame;
pub mod messages;
mod tls;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use conn::{Conn, ConnParams};
pub use frame::PROTOCOL_VERSION;
use frame::{read_frame, FrameError, Hello, Message};
pub use messages::{AppRequest, PeerRequest, PeerResponse};
use tls::PeerStream;
pub use tls::{PeerTls, TlsError, PEER_TLS_HANDSHAKES_FAILED_TOTAL, PEER_TLS_HANDSHAKE_TIMEOUT_MS};

use crate::clock::{wall_clock_ms, ClockSample};
use crate::types::NodeId;

/// Answers requests that arrive from peers.
pub trait InboundHandler: Send + Sync + 'static {
    fn handle(
        &self,
        from: NodeId,
        group: u32,
        request: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = PeerResponse> + Send + 'static>>;
}

#[derive(Clone, Debug)]
pub struct TransportConfig {
    pub node_id: NodeId,
    /// What this node tells peers about itself in the handshake.
    pub client_addr: String,
    pub peer_addr: String,
    /// The largest frame accepted or sent, in bytes.
    pub frame_bytes_max: usize,
    pub connect_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    /// The longest a call waits for a connection to its peer, whatever its own timeout, before
    /// it fails as `Unreachable` (never sent): a caller forwarding to a dead leader must learn
    /// that in time to try the new leader, not after its whole (long) timeout.
    pub connection_wait_ms_max: u64,
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// Encoded frames queued for one connection's writer.
    pub outbound_frames_max: usize,
    /// Inbound application requests one connection handles concurrently; beyond it the reader
    /// answers `Busy` at once (it never waits: what it would wait for may need its reading).
    pub inbound_requests_in_flight_max: usize,
    /// Mutual TLS on the peer port; `None` speaks plain TCP.
    pub tls: Option<PeerTls>,
}

impl TransportConfig {
    pub fn new(node_id: NodeId, client_addr: String, peer_addr: String) -> TransportConfig {
        TransportConfig {
            node_id,
            client_addr,
            peer_addr,
            frame_bytes_max: 16 * 1024 * 1024,
            connect_timeout_ms: 1_000,
            handshake_timeout_ms: 2_000,
            connection_wait_ms_max: 1_000,
            reconnect_backoff_min_ms: 50,
            reconnect_backoff_max_ms: 2_000,
            outbound_frames_max: 1_024,
            inbound_requests_in_flight_max: 256,
            tls: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("node {peer} is unreachable: {reason}")]
    Unreachable { peer: NodeId, reason: String },
    #[error("no answer from node {peer} within {timeout_ms} ms")]
    Timeout { peer: NodeId, timeout_ms: u64 },
    #[error("connection to node {peer} closed before it answered")]
    Disconnected { peer: NodeId },
    #[error("cannot send to node {peer}: {reason}")]
    Encode { peer: NodeId, reason: String },
    #[error("node {peer} answered out of protocol: {reason}")]
    Unexpected { peer: NodeId, reason: String },
}

/// What this node knows about one peer, for `/cluster`.
#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub node_id: NodeId,
    pub connected: bool,
    /// The peer's own handshake, once it has connected.
    pub hello: Option<Hello>,
    pub addr: Option<String>,
}

#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    config: TransportConfig,
    /// The runtime the transport was started on, where every connection's tasks run: dials
    /// may be started from anywhere (a client request on the HTTP runtime), and connections
    /// must not queue behind that runtime's work (see `spawn`).
    runtime: tokio::runtime::Handle,
    handler: Arc<OnceLock<Arc<dyn InboundHandler>>>,
    links: Mutex<BTreeMap<NodeId, Arc<Link>>>,
    stop: watch::Sender<bool>,
}

/// This node's side of its relationship with one peer.
struct Link {
    peer: NodeId,
    addr: Mutex<Option<String>>,
    hello: Mutex<Option<Hello>>,
    current: watch::Sender<Option<Arc<Conn>>>,
    dialing: AtomicBool,
}

impl Link {
    fn live(&self) -> Option<Arc<Conn>> {
        self.current.borrow().clone().filter(|c| !c.is_closed())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of plain data; keep going.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Transport {
    /// Binds the peer listener and starts accepting. Returns the transport and the bound address.
    pub async fn start(
        config: TransportConfig,
        listen: &str,
    ) -> std::io::Result<(Transport, SocketAddr)> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let (stop, _) = watch::channel(false);
        let transport = Transport {
            inner: Arc::new(Inner {
                config,
                runtime: tokio::runtime::Handle::current(),
                handler: Arc::new(OnceLock::new()),
                links: Mutex::new(BTreeMap::new()),
                stop,
            }),
        };
        transport.spawn(transport.clone().accept_loop(listener));
        Ok((transport, local))
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Runs `task` on the runtime the transport was started on, wherever it is called from.
    /// `gavel serve` starts its node on a runtime of its own, apart from HTTP and live fan-out,
    /// so heartbeats and votes never wait behind viewers' work (a saturated shared runtime let
    /// 150 ms heartbeats time out and deposed leaders).
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.runtime.spawn(task)
    }

    /// Installs the handler for inbound requests; only the first call counts.
    pub fn set_handler(&self, handler: Arc<dyn InboundHandler>) {
        let _ = self.inner.handler.set(handler);
    }

    /// Records where `peer` listens, so this node can dial it.
    pub fn set_peer_addr(&self, peer: NodeId, addr: &str) {
        if peer == self.node_id() || addr.is_empty() {
            return;
        }
        let link = self.link(peer);
        *lock(&link.addr) = Some(addr.to_string());
    }

    /// Forgets a peer (removed from the cluster): closes its connection and stops dialing it.
    pub fn forget_peer(&self, peer: NodeId) {
        if let Some(link) = lock(&self.inner.links).remove(&peer) {
            if let Some(conn) = link.live() {
                conn.close();
            }
        }
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let links: Vec<Arc<Link>> = lock(&self.inner.links).values().cloned().collect();
        links
            .into_iter()
            .map(|link| PeerStatus {
                node_id: link.peer,
                connected: link.live().is_some(),
                hello: lock(&link.hello).clone(),
                addr: lock(&link.addr).clone(),
            })
            .collect()
    }

    /// Sends `request` for `group` to `peer` and waits for its response, all within `timeout`.
    /// Without a connection after `connection_wait_ms_max` (or `timeout` if shorter), the call
    /// fails as `Unreachable`: nothing was sent.
    pub async fn call(
        &self,
        peer: NodeId,
        group: u32,
        request: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, CallError> {
        let deadline = Instant::now() + timeout;
        let connection_wait = timeout.min(Duration::from_millis(
            self.inner.config.connection_wait_ms_max,
        ));
        let conn = match tokio::time::timeout(connection_wait, self.connection(peer)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(reason)) => return Err(CallError::Unreachable { peer, reason }),
            Err(_) => {
                return Err(CallError::Unreachable {
                    peer,
                    reason: format!("no connection within {} ms", connection_wait.as_millis()),
                })
            }
        };
        conn.call(group, request, deadline, timeout).await
    }

    /// Asks `peer` for its wall clock and estimates its offset from this node's (see
    /// [`ClockSample::from_exchange`]). The round trip is timed from the moment a connection
    /// exists, so waiting for one does not inflate the uncertainty.
    pub async fn probe_clock(
        &self,
        peer: NodeId,
        timeout: Duration,
    ) -> Result<ClockSample, CallError> {
        let deadline = Instant::now() + timeout;
        let conn = match tokio::time::timeout(timeout, self.connection(peer)).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(reason)) => return Err(CallError::Unreachable { peer, reason }),
            Err(_) => {
                return Err(CallError::Unreachable {
                    peer,
                    reason: format!("no connection within {} ms", timeout.as_millis()),
                })
            }
        };
        let sent = Instant::now();
        let sent_ms = wall_clock_ms();
        let request = PeerRequest::ClockProbe { sent_ms };
        let response = conn.call(0, request, deadline, timeout).await?;
        let taken_at = Instant::now();
        let round_trip_ms =
            i64::try_from(taken_at.duration_since(sent).as_millis()).unwrap_or(i64::MAX);
        match response {
            PeerResponse::ClockProbe { now_ms } => Ok(ClockSample::from_exchange(
                sent_ms,
                round_trip_ms,
                now_ms,
                taken_at.into_std(),
            )),
            other => Err(CallError::Unexpected {
                peer,
                reason: format!("a clock probe answered with {}", other.name()),
            }),
        }
    }

    pub fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        let links: Vec<Arc<Link>> = lock(&self.inner.links).values().cloned().collect();
        for link in links {
            if let Some(conn) = link.live() {
                conn.close();
            }
        }
    }

    fn link(&self, peer: NodeId) -> Arc<Link> {
        lock(&self.inner.links)
            .entry(peer)
            .or_insert_with(|| {
                Arc::new(Link {
                    peer,
                    addr: Mutex::new(None),
                    hello: Mutex::new(None),
                    current: watch::channel(None).0,
                    dialing: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// A live connection to `peer`, dialing if needed; waits until one exists.
    async fn connection(&self, peer: NodeId) -> Result<Arc<Conn>, String> {
        if peer == self.node_id() {
            return Err("a node does not call itself over the transport".into());
        }
        let link = self.link(peer);
        let mut changes = link.current.subscribe();
        loop {
            if let Some(conn) = link.live() {
                return Ok(conn);
            }
            self.ensure_dialing(&link);
            if changes.changed().await.is_err() {
                return Err("transport stopped".into());
            }
        }
    }

    fn ensure_dialing(&self, link: &Arc<Link>) {
        if lock(&link.addr).is_none() || link.dialing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.spawn(self.clone().dial_loop(link.clone()));
    }

    async fn dial_loop(self, link: Arc<Link>) {
        let config = &self.inner.config;
        let mut backoff_ms = config.reconnect_backoff_min_ms;
        while !*self.inner.stop.borrow() && link.live().is_none() {
            let Some(addr) = lock(&link.addr).clone() else {
                break;
            };
            match self.dial(&link, &addr).await {
                Ok(()) => break,
                Err(e) => tracing::debug!(peer = link.peer, addr, error = %e, "dial failed"),
            }
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
            backoff_ms = (backoff_ms * 2).min(config.reconnect_backoff_max_ms);
            if !lock(&self.inner.links).contains_key(&link.peer) {
                break;
            }
        }
        link.dialing.store(false, Ordering::Release);
    }

    async fn dial(&self, link: &Arc<Link>, addr: &str) -> Result<(), String> {
        let config = &self.inner.config;
        let connect = TcpStream::connect(addr);
        let stream =
            tokio::time::timeout(Duration::from_millis(config.connect_timeout_ms), connect)
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
        let stream = self.secure_dialed(stream, addr).await?;
        let (stream, hello) = self.handshake(stream).await.map_err(|e| e.to_string())?;
        if hello.node_id != link.peer {
            return Err(format!(
                "{addr} is node {}, not node {}",
                hello.node_id, link.peer
            ));
        }
        self.adopt(link, stream, hello, self.node_id());
        Ok(())
    }

    async fn accept_loop(self, listener: TcpListener) {
        let mut stop = self.inner.stop.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = stop.changed() => return,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let transport = self.clone();
                    tokio::spawn(async move {
                        let stream = match transport.secure_accepted(stream).await {
                            Ok(stream) => stream,
                            Err(e) => {
                                tracing::warn!(%remote, error = %e, "peer TLS handshake failed; connection refused");
                                return;
                            }
                        };
                        match transport.handshake(stream).await {
                            Ok((stream, hello)) if hello.node_id != transport.node_id() => {
                                let link = transport.link(hello.node_id);
                                transport.adopt(&link, stream, hello.clone(), hello.node_id);
                            }
                            Ok(_) => {
                                tracing::warn!(%remote, "peer claims this node's own id; dropped")
                            }
                            Err(e) => tracing::warn!(%remote, error = %e, "peer handshake failed"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// A dialed connection ready for the `Hello` exchange: TLS with the peer's certificate
    /// checked against `addr` when TLS is on, as it is otherwise.
    async fn secure_dialed(&self, stream: TcpStream, addr: &str) -> Result<PeerStream, String> {
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        match &self.inner.config.tls {
            None => Ok(PeerStream::Plain(stream)),
            Some(tls) => tls
                .connect(stream, addr)
                .await
                .map_err(|e| format!("TLS handshake: {e}")),
        }
    }

    /// An accepted connection ready for the `Hello` exchange: TLS with a client certificate
    /// required when TLS is on, as it is otherwise.
    async fn secure_accepted(&self, stream: TcpStream) -> std::io::Result<PeerStream> {
        stream.set_nodelay(true)?;
        match &self.inner.config.tls {
            None => Ok(PeerStream::Plain(stream)),
            Some(tls) => tls.accept(stream).await,
        }
    }

    /// Exchanges `Hello` frames (each side sends first, then reads), bounded in time.
    async fn handshake(&self, mut stream: PeerStream) -> Result<(PeerStream, Hello), FrameError> {
        let config = &self.inner.config;
        let mine = Hello {
            node_id: config.node_id,
            client_addr: config.client_addr.clone(),
            peer_addr: config.peer_addr.clone(),
        };
        let exchange = async {
            conn::write_hello(&mut stream, mine, config.frame_bytes_max).await?;
            match read_frame(&mut stream, config.frame_bytes_max).await? {
                Some(envelope) => match envelope.message {
                    Message::Hello(hello) => Ok(hello),
                    _ => Err(FrameError::Malformed("expected a hello frame".into())),
                },
                None => Err(FrameError::Malformed("closed during the handshake".into())),
            }
        };
        let timeout = Duration::from_millis(config.handshake_timeout_ms);
        let hello = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| FrameError::Malformed("handshake timed out".into()))??;
        Ok((stream, hello))
    }

    /// Starts a connection's tasks and makes it the link's connection, unless the link already
    /// has a live one dialed by the lower node id.
    fn adopt(&self, link: &Arc<Link>, stream: PeerStream, hello: Hello, dialed_by: NodeId) {
        if link.addr_missing() && !hello.peer_addr.is_empty() {
            *lock(&link.addr) = Some(hello.peer_addr.clone());
        }
        *lock(&link.hello) = Some(hello);
        let params = ConnParams {
            peer: link.peer,
            dialed_by,
            frame_bytes_max: self.inner.config.frame_bytes_max,
            outbound_frames_max: self.inner.config.outbound_frames_max,
            inbound_requests_in_flight_max: self.inner.config.inbound_requests_in_flight_max,
        };
        let handler = self.inner.handler.clone();
        let preferred_dialer = self.node_id().min(link.peer);
        let link_for_close = Arc::downgrade(link);
        let conn = Conn::start(stream, params, handler, move |closed: &Arc<Conn>| {
            if let Some(link) = link_for_close.upgrade() {
                link.current.send_if_modified(|current| match current {
                    Some(c) if Arc::ptr_eq(c, closed) => {
                        *current = None;
                        true
                    }
                    _ => false,
                });
            }
        });
        link.current.send_modify(
            |current| match current.as_ref().filter(|c| !c.is_closed()) {
                Some(existing)
                    if existing.dialed_by() == preferred_dialer
                        || dialed_by != preferred_dialer =>
                {
                    conn.close();
                }
                Some(existing) => {
                    existing.close();
                    *current = Some(conn.clone());
                }
                None => *current = Some(conn.clone()),
            },
        );
        tracing::info!(peer = link.peer, dialed_by, "peer connection established");
    }
}

impl Link {
    fn addr_missing(&self) -> bool {
        lock(&self.addr).is_none()
    }
}

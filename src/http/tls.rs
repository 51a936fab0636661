//! HTTPS for the client port (`--cert-file`, `--key-file`): the server's TLS configuration and
//! the listener that hands axum only connections whose TLS handshake is done.
//!
//! TLS wraps the stall-guarded TCP stream (`live::StallGuardListener`), so every connection
//! keeps `TCP_NODELAY`, the fixed send buffer and the write-stall timeout: a viewer that stops
//! reading stalls the TLS writes under it and is dropped as before.
//!
//! Handshakes run in a task per connection, bounded in time (`HTTP_TLS_HANDSHAKE_TIMEOUT_MS`)
//! and in number (`HTTP_TLS_HANDSHAKES_IN_FLIGHT_MAX`), never in the accept loop: a client that
//! connects and says nothing, or speaks plain HTTP (rustls answers with an alert and the
//! connection is closed), costs only its own task. Who may connect is not decided here (no
//! client certificates): requests are authenticated by their token.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::live::{GuardedStream, StallGuardListener};

/// The longest a client's TLS handshake may take, in milliseconds.
pub const HTTP_TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Handshakes in progress at once; beyond it the listener waits before accepting more (the
/// kernel's backlog holds them), as each one is bounded in time.
pub const HTTP_TLS_HANDSHAKES_IN_FLIGHT_MAX: usize = 1_024;
/// Client TLS handshakes that failed (plain HTTP, timeout, bad client hello).
pub const HTTP_TLS_HANDSHAKES_FAILED_TOTAL: &str = "gavel_http_tls_handshakes_failed_total";

/// The HTTPS server configuration: rustls on ring, TLS 1.3 and 1.2 (browsers and curl), no
/// client certificates, HTTP/1.1 only (what the server speaks; WebSocket upgrades need it).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A listener whose connections are TLS streams over stall-guarded TCP, handshake done.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<GuardedStream>, SocketAddr)>,
    local_addr: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `inner`; the accepting task ends when this listener is dropped.
    pub fn new(inner: StallGuardListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local_addr = Listener::local_addr(&inner)?;
        let (done, ready) = mpsc::channel(HTTP_TLS_HANDSHAKES_IN_FLIGHT_MAX);
        tokio::spawn(accept_loop(inner, TlsAcceptor::from(config), done));
        Ok(TlsListener { ready, local_addr })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<GuardedStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone only if this listener was dropped, which cannot be
            // while it is borrowed here: wait forever like a listener nobody connects to.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// Accepts TCP connections and starts one handshake task for each, holding a permit of the
/// handshake budget until the finished stream is handed over (or dropped).
async fn accept_loop(
    mut inner: StallGuardListener,
    acceptor: TlsAcceptor,
    done: mpsc::Sender<(TlsStream<GuardedStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(HTTP_TLS_HANDSHAKES_IN_FLIGHT_MAX));
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => permit,
            () = done.closed() => return,
        };
        let Ok(permit) = permit else { return };
        let (stream, remote) = tokio::select! {
            accepted = inner.accept() => accepted,
            () = done.closed() => return,
        };
        let acceptor = acceptor.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let timeout = Duration::from_millis(HTTP_TLS_HANDSHAKE_TIMEOUT_MS);
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = done.send((tls, remote)).await;
                }
                Ok(Err(error)) => handshake_failed(remote, &error.to_string()),
                Err(_) => handshake_failed(remote, "timed out"),
            }
            drop(permit);
        });
    }
}

fn handshake_failed(remote: SocketAddr, why: &str) {
    metrics::counter!(HTTP_TLS_HANDSHAKES_FAILED_TOTAL).increment(1);
    tracing::debug!(%remote, error = why, "client TLS handshake failed; connection closed");
}

//! `gavel serve`: builds the axum application (routes, limits, metrics, tracing), starts the
//! node and serves until SIGTERM or Ctrl-C, or until a Raft group stops on a storage failure
//! (a full disk): then it stops the same way and exits non-zero.
//!
//! Shutdown is one mechanism: on the first signal the node first hands the leadership of every
//! group it leads to another voter (`Node::hand_off_leadership`, within the smaller of
//! `--shutdown-grace-ms` and `HANDOFF_MS_MAX`) while it keeps serving, so writes arriving
//! meanwhile are forwarded to the new leaders; then the listener stops accepting, live streams
//! are ended (`live::Hub::close`) and in-flight requests get `--shutdown-grace-ms` to finish;
//! whatever is still running then is dropped; and only after that the node shuts down (Raft
//! groups, storage flush), so no handler ever talks to a stopped node.
//!
//! With `--cert-file`/`--key-file` the same application is served over HTTPS (`http::tls`);
//! the TLS files of both ports are read before anything listens, so a bad file stops the start.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use gavel_cluster::{Node, HANDOFF_MS_MAX};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{watch, Semaphore};
use tower_http::trace::TraceLayer;

use crate::cli::config::ServeArgs;
use crate::http::api;
use crate::http::auth::{SecretSource, TokenVerifier};
use crate::http::engine::{Engine, NodeEngine};
use crate::http::limits::{bound_in_flight, BidRateLimiter, InFlight};
use crate::http::problem::not_found_fallback;

/// Everything handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    /// Decides which tokens are trusted.
    pub auth: TokenVerifier,
    pub bid_limiter: Arc<BidRateLimiter>,
    /// `None` when no recorder is installed (tests): `/metrics` is then empty.
    pub metrics: Option<PrometheusHandle>,
    pub node_id: u64,
    /// `http` or `https`: how clients reach this node (`--advertise-client-url`'s scheme, else
    /// `https` with `--cert-file`), and so the scheme `GET /cluster/endpoints` lists nodes with.
    pub client_scheme: &'static str,
    /// Live-update fan-out (SSE and WebSocket viewers).
    pub live: crate::live::Hub,
}

impl FromRef<AppState> for TokenVerifier {
    fn from_ref(state: &AppState) -> TokenVerifier {
        state.auth.clone()
    }
}

/// Limits of the HTTP layer.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub body_limit_bytes: usize,
    pub requests_in_flight_max: usize,
}

/// The whole application: API routes behind the in-flight bound, ops routes, problem fallbacks,
/// the body limit, cross-origin reads of the SSE stream and the node list, request metrics and
/// tracing.
pub fn app(state: AppState, limits: HttpLimits) -> Router {
    let in_flight = InFlight(Arc::new(Semaphore::new(limits.requests_in_flight_max)));
    let api =
        api::router_of(api::route_table()).layer(from_fn_with_state(in_flight, bound_in_flight));
    Router::new()
        .merge(api)
        .merge(api::router_of(api::ops::route_table()))
        .merge(api::router_of(crate::live::page::route_table()))
        .fallback(not_found_fallback)
        .layer(DefaultBodyLimit::max(limits.body_limit_bytes))
        .layer(from_fn(crate::http::cors::allow_cross_origin_reads))
        .layer(from_fn(crate::http::metrics::track_requests))
        // No event per failed request: a 503 or 504 is the node's answer to load or to a
        // group without a leader, counted by `gavel_http_requests_total`, and at ERROR level
        // every shed request was a line of its own (150,000 in 40 s of a full disk); a 500
        // logs its cause where it happens (`ApiError::Internal`).
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(crate::live::request_span)
                .on_failure(()),
        )
        .with_state(state)
}

/// Every path [`app`] routes, for the contract test.
#[cfg(test)]
pub fn routed_paths() -> Vec<&'static str> {
    let tables = [
        api::route_table(),
        api::ops::route_table(),
        crate::live::page::route_table(),
    ];
    tables.into_iter().flatten().map(|(path, _)| path).collect()
}

/// The runtimes `gavel serve` spreads its work over besides the current one (HTTP): see
/// `run_server`.
pub struct Runtimes {
    /// The node and everything it spawns.
    pub consensus: tokio::runtime::Handle,
    /// The live hub's pump and the WebSocket viewers' tasks.
    pub fanout: tokio::runtime::Handle,
}

/// Connections the kernel may hold ready for `accept` on the API port (it caps this at
/// `net.core.somaxconn`, 4096 by default). When a node dies, its viewers reconnect to the
/// survivors within a second or two, thousands at once; with mio's default of 1,024 a busy node
/// overflowed its queue, the kernel dropped the handshakes' last ACKs and the clients waited out
/// TCP's retransmission backoff (seconds, doubling) before they were let in.
pub const LISTEN_BACKLOG: u32 = 16_384;

/// Binds the API listener with `LISTEN_BACKLOG`: on the first address `host:port` resolves to
/// that binds, as `TcpListener::bind` does.
async fn listen(host_port: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(host_port).await? {
        match bind_with_backlog(addr) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolves to nothing",
        )
    }))
}

fn bind_with_backlog(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As `TcpListener::bind` does: a restarted node binds again while connections of the
    // previous process linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Runs `gavel serve` to completion, with the node on the consensus runtime, WebSocket viewers
/// on the fan-out runtime and HTTP on the current one.
pub async fn serve(args: ServeArgs, runtimes: Runtimes) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data dir {}", args.data_dir.display()))?;
    let auth = crate::http::auth::start(args.auth_config(), &args.data_dir)?;
    let peer_tls = args.peer_tls()?;
    let http_tls = args.http_tls()?;
    args.warn_if_peers_unprotected();
    let metrics = crate::http::metrics::install()?;
    let listener = listen(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local_addr = listener
        .local_addr()
        .context("the listener has no address")?;
    let node = runtimes
        .consensus
        .spawn(Node::start(
            args.node_config(&local_addr.to_string(), peer_tls),
        ))
        .await
        .context("the node's start was cut short")?
        .context("cannot start the node")?;
    let engine: Arc<dyn Engine> = Arc::new(NodeEngine(node.clone()));
    let live = {
        let _fanout = runtimes.fanout.enter();
        crate::live::Hub::start(engine.clone(), args.live_config())
            .context("cannot start the live fan-out")?
    };
    crate::http::metrics::spawn_upkeep(metrics.clone());
    let state = AppState {
        engine,
        auth: auth.verifier,
        bid_limiter: Arc::new(BidRateLimiter::new(
            args.bid_rate_per_bidder,
            args.bid_rate_per_bidder.saturating_mul(2),
        )),
        metrics: Some(metrics),
        node_id: args.node_id,
        client_scheme: args.client_scheme(&local_addr.to_string()),
        live: live.clone(),
    };
    let limits = HttpLimits {
        body_limit_bytes: usize::try_from(args.body_limit_bytes).unwrap_or(usize::MAX),
        requests_in_flight_max: usize::try_from(args.requests_in_flight_max).unwrap_or(usize::MAX),
    };
    announce(&args, &local_addr.to_string(), auth.secret_source.as_ref());
    let listener = crate::live::StallGuardListener::new(
        listener,
        Duration::from_millis(args.viewer_send_timeout_ms),
    );
    let app = app(state, limits);
    let grace_ms = args.shutdown_grace_ms;
    let served = match http_tls {
        None => serve_until_signal(listener, app, grace_ms, live, &node).await,
        Some(config) => {
            let listener = crate::http::tls::TlsListener::new(listener, config)
                .context("cannot start the HTTPS listener")?;
            serve_until_signal(listener, app, grace_ms, live, &node).await
        }
    };
    tracing::info!(node_id = args.node_id, "shutting the node down");
    node.shutdown().await;
    tracing::info!(node_id = args.node_id, "stopped");
    served
}

/// Logs where the node listens and what it advertises, plus one human line on stderr; says
/// how to mint a token when the secret was just created.
fn announce(args: &ServeArgs, listen: &str, source: Option<&SecretSource>) {
    let client_url = args.client_url(listen);
    tracing::info!(
        node_id = args.node_id,
        listen,
        peer_tls = args.peer_cert_file.is_some(),
        peer_listen = %args.peer_listen,
        advertise_client_url = %client_url,
        advertise_peer_addr = %args.peer_addr(),
        data_dir = %args.data_dir.display(),
        groups = args.groups,
        join = args.join,
        "gavel node serving"
    );
    eprintln!(
        "gavel node {} serving {client_url} (listening on {listen}; peers on {}{}, advertised as {}; data in {})",
        args.node_id,
        args.peer_listen,
        if args.peer_cert_file.is_some() {
            " with mutual TLS"
        } else {
            ""
        },
        args.peer_addr(),
        args.data_dir.display()
    );
    let multi_node = args.join
        || args
            .initial_cluster
            .as_ref()
            .is_some_and(|cluster| cluster.0.len() > 1);
    if multi_node && matches!(source, Some(SecretSource::Created(_))) {
        tracing::warn!(
            "this node generated its own auth secret: tokens minted for other nodes will not verify \
             here; give every node the same secret (GAVEL_AUTH_SECRET or --auth-secret-file)"
        );
    }
    if let Some(SecretSource::Created(path)) = source {
        tracing::info!(path = %path.display(), "created a new auth secret");
        eprintln!(
            "created a new auth secret at {}; mint a token with:\n  gavel token --data-dir {} --sub alice --role bidder",
            path.display(),
            args.data_dir.display()
        );
    }
}

/// Serves until a shutdown signal, a Raft group's storage failure or a state found to differ
/// from the other replicas' (`Node::state_diverged`), hands the node's
/// leaderships off, then gives in-flight requests `grace_ms` to finish. After a failure it
/// returns it as an error, so that the process exits non-zero and a supervisor sees it.
async fn serve_until_signal<L>(
    listener: L,
    app: Router,
    grace_ms: u64,
    live: crate::live::Hub,
    node: &Arc<Node>,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        // Resolves on `send(true)` and also if the sender is dropped.
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut server = tokio::spawn(async move { server.await });
    let failure = tokio::select! {
        finished = &mut server => {
            return finished.context("the HTTP server task failed")?.context("the HTTP server failed");
        }
        () = shutdown_signal() => None,
        (group, failure) = node.group_failure() => {
            tracing::error!(
                group,
                error = %failure,
                "a Raft group stopped on a storage failure: stopping this node (nothing \
                 acknowledged is lost; fix the cause, such as a full disk, and start it again)"
            );
            Some(anyhow::anyhow!("Raft group {group} stopped: {failure}"))
        }
        (group, detail) = node.state_diverged() => {
            Some(anyhow::anyhow!(
                "{detail}. This node stopped rather than serve or decide from a state the other \
                 replicas do not hold; start it again and it brings group {group}'s state back \
                 from a peer (docs/OPERATIONS.md, \"A replica whose state differs\")"
            ))
        }
    };
    // Still serving: a write for a group in transfer waits for it and is then forwarded to the
    // new leader, instead of this node's exit leaving the group to an election timeout.
    let handoff_budget = Duration::from_millis(grace_ms.min(HANDOFF_MS_MAX));
    node.hand_off_leadership(handoff_budget).await;
    tracing::info!(
        grace_ms,
        "shutdown requested: no new connections; finishing in-flight requests"
    );
    let _ = stop_tx.send(true);
    live.close();
    match tokio::time::timeout(Duration::from_millis(grace_ms), &mut server).await {
        Ok(finished) => finished
            .context("the HTTP server task failed")?
            .context("the HTTP server failed")?,
        Err(_) => {
            tracing::warn!(
                grace_ms,
                "in-flight requests did not finish in time; dropping them"
            );
            server.abort();
        }
    }
    match failure {
        Some(failure) => Err(failure),
        None => Ok(()),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept queue the kernel gives the API listener: `ss` reports a listening socket's
    /// backlog as its Send-Q.
    fn kernel_backlog(port: u16) -> u32 {
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("ss (iproute2) runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let columns: Vec<&str> = text.split_whitespace().collect();
        assert!(columns.len() >= 3, "ss printed no listener: {text:?}");
        columns[2].parse().expect("a numeric Send-Q")
    }

    #[tokio::test]
    async fn the_api_listener_queues_a_reconnect_storm_of_connections() {
        let listener = listen("localhost:0")
            .await
            .expect("localhost resolves and binds");
        let port = listener.local_addr().unwrap().port();
        let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .expect("Linux reports its accept-queue cap")
            .trim()
            .parse()
            .unwrap();
        // Not mio's default of 1,024: a busy node dropped the handshakes past it.
        assert_eq!(kernel_backlog(port), LISTEN_BACKLOG.min(somaxconn));

        // Wherever "localhost" resolved first (127.0.0.1 or ::1).
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (accepted, connected) = tokio::join!(listener.accept(), client);
        accepted.expect("accepts");
        connected.expect("connects");
    }

    #[tokio::test]
    async fn a_taken_or_unresolvable_api_address_is_an_error() {
        let taken = listen("127.0.0.1:0").await.unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        // SO_REUSEADDR lets a restarted node bind past TIME_WAIT, never past a live listener.
        let error = listen(&addr).await.expect_err("the port is taken");
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse);
        assert!(listen("no-such-host.invalid:8080").await.is_err());
    }
}

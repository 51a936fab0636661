//! Metrics: installs the process-wide Prometheus recorder that every crate's `metrics` calls
//! feed, names the metrics the HTTP layer records, and counts requests per route.
//!
//! Histograms get explicit buckets so they render as Prometheus histograms (not summaries) and
//! can be aggregated across nodes. Labels are bounded: routes are the matched route templates,
//! never raw paths.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Bid decisions made by the state machine (replays excluded), by outcome and reason.
pub const BID_DECISIONS_TOTAL: &str = "gavel_bid_decisions_total";
/// The whole `POST /auctions/{id}/bids` request, from first byte to response, in seconds.
pub const BID_LATENCY_SECONDS: &str = "gavel_bid_latency_seconds";
/// Requests answered, by route template and status code.
pub const HTTP_REQUESTS_TOTAL: &str = "gavel_http_requests_total";
/// Request latency by route template, in seconds.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "gavel_http_request_duration_seconds";

/// Latency buckets (seconds) for every `*_seconds` histogram: 0.5 ms to 30 s.
const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets for any other histogram another crate may record (counts, sizes, lags).
const GENERIC_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 5000.0, 10000.0,
];
/// The route label of requests no route matched.
const UNMATCHED_ROUTE: &str = "unmatched";
/// The route template of bid placement, whose latency has its own histogram.
const BID_ROUTE: &str = "/auctions/{id}/bids";

/// How often histogram samples are folded into their buckets, in milliseconds. Until then
/// every sample is kept, so without upkeep a busy histogram (one sample per frame sent to each
/// live viewer) would grow between scrapes without bound.
const UPKEEP_INTERVAL_MS: u64 = 1_000;

/// Folds recorded histogram samples into buckets every `UPKEEP_INTERVAL_MS`, for the life of
/// the runtime.
pub fn spawn_upkeep(handle: PrometheusHandle) {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(std::time::Duration::from_millis(UPKEEP_INTERVAL_MS));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            handle.run_upkeep();
        }
    });
}

/// Installs the global recorder. Call once per process, before anything records.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets(GENERIC_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS_SECONDS)?
        .install_recorder()?;
    describe();
    crate::live::describe_metrics();
    Ok(handle)
}

fn describe() {
    metrics::describe_counter!(
        BID_DECISIONS_TOTAL,
        "Bid decisions made by the state machine, by outcome and rejection reason"
    );
    metrics::describe_histogram!(
        BID_LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Latency of whole bid requests"
    );
    metrics::describe_counter!(HTTP_REQUESTS_TOTAL, "HTTP requests by route and status");
    metrics::describe_histogram!(
        crate::cli::runtime_lag::RUNTIME_LAG_SECONDS,
        metrics::Unit::Seconds,
        "How late each runtime (http, consensus, fanout) ran a timer that was due"
    );
    metrics::describe_gauge!(
        PROCESS_RESIDENT_MEMORY_BYTES,
        metrics::Unit::Bytes,
        "Resident memory of this process"
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "HTTP request latency by route"
    );
}

/// This process's resident memory, in bytes (a gauge, refreshed on every scrape).
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "gavel_process_resident_memory_bytes";

/// Sets [`PROCESS_RESIDENT_MEMORY_BYTES`] from `VmRSS` in `/proc/self/status` (Linux);
/// elsewhere it stays unset.
pub fn record_process_memory() {
    let resident_kib = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            line.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        });
    if let Some(kib) = resident_kib {
        metrics::gauge!(PROCESS_RESIDENT_MEMORY_BYTES).set((kib * 1024) as f64);
    }
}

/// Counts one new bid decision.
pub fn record_bid_decision(outcome: &'static str, reason: &'static str) {
    metrics::counter!(BID_DECISIONS_TOTAL, "outcome" => outcome, "reason" => reason).increment(1);
}

/// Middleware: request counts and latency per route template and status.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED_ROUTE.to_owned(), |path| path.as_str().to_owned());
    let is_bid = request.method() == Method::POST && route == BID_ROUTE;
    let response = next.run(request).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_DURATION_SECONDS, "route" => route).record(seconds);
    if is_bid {
        metrics::histogram!(BID_LATENCY_SECONDS).record(seconds);
    }
    response
}

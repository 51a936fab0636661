//! Operations endpoints, all without authentication: `GET /healthz` (the process runs),
//! `GET /readyz` (this node can serve its groups), `GET /metrics` (Prometheus text) and
//! `GET /openapi.json` (the hand-written API description embedded at build time), and
//! `GET /cluster/endpoints` (`endpoints.rs`).
//!
//! They are outside the in-flight bound so that probes and scrapes still answer under load, and
//! so do viewers looking for another node in a reconnect storm.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Json;
use serde_json::json;

use crate::http::problem::ApiError;
use crate::http::server::AppState;

/// The OpenAPI 3.1 document of this API.
pub const OPENAPI_JSON: &str = include_str!("../openapi.json");
/// How long a client should wait before asking an unready node again, in seconds.
const READYZ_RETRY_AFTER_S: u32 = 1;

/// The operations routes (no token needed).
pub fn route_table() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/healthz", get(healthz)),
        ("/readyz", get(readyz)),
        ("/metrics", get(metrics)),
        ("/openapi.json", get(openapi)),
        ("/cluster/endpoints", get(super::endpoints::list)),
    ]
}

/// `GET /healthz`: 200 while the process runs.
pub async fn healthz(State(state): State<AppState>) -> Response {
    Json(json!({ "status": "ok", "nodeId": state.node_id })).into_response()
}

/// `GET /readyz`: 200 when this node serves every group it hosts, else 503 with the reason.
pub async fn readyz(State(state): State<AppState>) -> Result<Response, ApiError> {
    match state.engine.readiness() {
        Ok(()) => Ok(Json(json!({ "status": "ready", "nodeId": state.node_id })).into_response()),
        Err(reason) => Err(ApiError::Unavailable {
            detail: format!("not ready: {reason}"),
            retry_after_s: READYZ_RETRY_AFTER_S,
        }),
    }
}

/// `GET /metrics`: the Prometheus text exposition of every metric this process recorded.
pub async fn metrics(State(state): State<AppState>) -> Response {
    crate::http::metrics::record_process_memory();
    let body = state
        .metrics
        .as_ref()
        .map(|handle| handle.render())
        .unwrap_or_default();
    let mut response = (StatusCode::OK, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// `GET /openapi.json`
pub async fn openapi() -> Response {
    let mut response = (StatusCode::OK, OPENAPI_JSON).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

//! The one place where errors become HTTP responses: `ApiError` and its RFC 9457
//! `application/problem+json` rendering, plus the conversions from the engine's errors.
//!
//! Every non-2xx answer of the API goes through `ApiError::into_response`, so the problem shape,
//! the status code of each kind of failure and the extra headers (`WWW-Authenticate`,
//! `Retry-After`, `Allow`) are decided here and nowhere else. Internal details are logged, never
//! sent: a 500 says only that something went wrong on our side.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use gavel_cluster::{ProposeError, ReadError};
use serde::Serialize;

/// The media type of every error body.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// Everything a request can fail with, by what the client should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or breaks a rule that does not depend on state.
    #[error("{0}")]
    BadRequest(String),
    /// No usable credentials. `invalid` tells a bad token apart from a missing one (RFC 6750).
    #[error("{detail}")]
    Unauthorized { detail: String, invalid: bool },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request is valid but the resource's current state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// The auction's decision log is full: no further bid can be decided.
    #[error("this auction accepts no more bids: its decision log is full")]
    BidLimitReached,
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The same `Idempotency-Key` came back with a different request.
    #[error("{0}")]
    KeyReused(String),
    #[error("{detail}")]
    RateLimited { detail: String, retry_after_s: u32 },
    /// Nothing was done (no leader, no quorum, overloaded): retry later.
    #[error("{detail}")]
    Unavailable { detail: String, retry_after_s: u32 },
    /// The request may or may not have taken effect: retry with the same idempotency key.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A bug or an environment failure on our side. The text is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// RFC 9457 problem details, as sent.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
}

impl ApiError {
    /// Status, slug (the last segment of the problem `type`) and title of this error.
    pub fn class(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "invalid-request",
                "Invalid request",
            ),
            Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            BidLimitReached => (
                StatusCode::CONFLICT,
                "bid-limit-reached",
                "Bid limit reached",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            KeyReused(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency key reused",
            ),
            RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Rate limited",
            ),
            Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            OutcomeUnknown(_) => (
                StatusCode::GATEWAY_TIMEOUT,
                "outcome-unknown",
                "Outcome unknown",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
            ),
        }
    }

    /// The problem body this error is sent as.
    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.class();
        let detail = match self {
            ApiError::Internal(_) => {
                "the server failed to handle this request; it was logged".into()
            }
            other => other.to_string(),
        };
        Problem {
            kind: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail,
        }
    }

    fn retry_after_s(&self) -> Option<u32> {
        match self {
            ApiError::RateLimited { retry_after_s, .. }
            | ApiError::Unavailable { retry_after_s, .. } => Some((*retry_after_s).max(1)),
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(what) = &self {
            tracing::error!(error = %what, "internal error while handling a request");
        }
        let problem = self.problem();
        let status = self.class().0;
        let body = match serde_json::to_vec(&problem) {
            Ok(body) => body,
            // Serializing four plain fields cannot fail; answer something well-formed anyway.
            Err(_) => br#"{"type":"/problems/internal","title":"Internal server error","status":500,"detail":""}"#.to_vec(),
        };
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(seconds) = self.retry_after_s() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let ApiError::Unauthorized { invalid, .. } = &self {
            let challenge = if *invalid {
                r#"Bearer realm="gavel", error="invalid_token""#
            } else {
                r#"Bearer realm="gavel""#
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

impl From<crate::http::auth::TokenError> for ApiError {
    /// Every refused token is a 401 `invalid_token`; the detail says which check failed.
    fn from(error: crate::http::auth::TokenError) -> ApiError {
        ApiError::Unauthorized {
            detail: error.to_string(),
            invalid: true,
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(error: ProposeError) -> Self {
        match error {
            ProposeError::Unavailable {
                reason,
                retry_after_s,
            } => ApiError::Unavailable {
                detail: format!(
                    "cannot decide right now ({reason}); nothing was done, retry later"
                ),
                retry_after_s,
            },
            ProposeError::Unknown(why) => ApiError::OutcomeUnknown(format!(
                "the outcome is unknown ({why}); retry with the same Idempotency-Key"
            )),
            ProposeError::Internal(why) => ApiError::Internal(format!("propose: {why}")),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> Self {
        match error {
            ReadError::Unavailable {
                reason,
                retry_after_s,
            } => ApiError::Unavailable {
                detail: format!("cannot read right now ({reason}); retry later"),
                retry_after_s,
            },
            ReadError::Internal(why) => ApiError::Internal(format!("read: {why}")),
        }
    }
}

impl From<crate::live::JoinError> for ApiError {
    fn from(error: crate::live::JoinError) -> Self {
        match error {
            crate::live::JoinError::NotFound => ApiError::NotFound("no such auction".into()),
            // Full, behind, unreadable or shutting down: this node cannot serve the stream now.
            other => ApiError::Unavailable {
                detail: other.to_string(),
                retry_after_s: 1,
            },
        }
    }
}

/// Answers requests for paths no route serves.
pub async fn not_found_fallback() -> ApiError {
    ApiError::NotFound("no such resource".into())
}

/// Answers a known path called with a method it does not support (axum adds `Allow`).
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn problem_has_the_rfc_9457_shape() {
        let response = ApiError::BadRequest("amount must not be negative".into()).into_response();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            PROBLEM_CONTENT_TYPE
        );
        let body = body_json(response).await;
        assert_eq!(
            body,
            serde_json::json!({
                "type": "/problems/invalid-request",
                "title": "Invalid request",
                "status": 400,
                "detail": "amount must not be negative",
            })
        );
    }

    #[tokio::test]
    async fn internal_errors_do_not_leak() {
        let response =
            ApiError::Internal("sled tree sm/3 corrupt at key 0x42".into()).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_json(response).await;
        let detail = body["detail"].as_str().unwrap();
        assert!(!detail.contains("sled"), "{detail}");
        assert_eq!(body["type"], "/problems/internal");
    }

    #[tokio::test]
    async fn unavailable_carries_retry_after() {
        let error: ApiError = ProposeError::Unavailable {
            reason: "no leader".into(),
            retry_after_s: 2,
        }
        .into();
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }

    #[tokio::test]
    async fn unknown_outcome_is_504_never_a_failure() {
        let error: ApiError = ProposeError::Unknown("timed out".into()).into();
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = body_json(response).await;
        assert_eq!(body["type"], "/problems/outcome-unknown");
    }

    #[test]
    fn unauthorized_challenges_with_bearer() {
        let response = ApiError::Unauthorized {
            detail: "token expired".into(),
            invalid: true,
        }
        .into_response();
        let challenge = response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap();
        assert!(challenge.starts_with("Bearer"));
        assert!(challenge.contains("invalid_token"));
    }

    #[test]
    fn every_class_has_a_problem_slug() {
        let all = [
            ApiError::BadRequest(String::new()),
            ApiError::Forbidden(String::new()),
            ApiError::NotFound(String::new()),
            ApiError::MethodNotAllowed,
            ApiError::Conflict(String::new()),
            ApiError::BidLimitReached,
            ApiError::PayloadTooLarge(String::new()),
            ApiError::UnsupportedMediaType(String::new()),
            ApiError::KeyReused(String::new()),
            ApiError::OutcomeUnknown(String::new()),
        ];
        for error in all {
            let problem = error.problem();
            assert!(problem.kind.starts_with("/problems/"));
            assert!(problem.status >= 400);
        }
    }
}

//! Who may open a stream and from where to resume it: the `StreamRequest` extractor of both
//! stream endpoints, and the request span that keeps `?access_token=` out of the logs.
//!
//! Browsers cannot set headers on `EventSource` or `WebSocket`, so streams take the token from
//! `Authorization: Bearer` or, failing that, from `?access_token=`. Checks run in the order of
//! every other endpoint: 401/403, then the path (404), then the query and headers (400).

use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, Request, Uri};

use crate::http::api::AuctionId;
use crate::http::auth::{authenticate as check_token, Permission, Principal, TokenVerifier};
use crate::http::problem::ApiError;

/// The query parameter a stream's token may come in.
pub const ACCESS_TOKEN_PARAM: &str = "access_token";
/// The query parameter to resume from a version.
pub const SINCE_VERSION_PARAM: &str = "sinceVersion";
/// The header `EventSource` resumes with (it repeats the last `id:`, our version).
pub const LAST_EVENT_ID: &str = "last-event-id";
/// The query parameter that asks for sparser ticks (clients that count down by themselves).
pub const TICK_MS_PARAM: &str = "tickMs";
/// The tick period a viewer may ask for, in milliseconds: the default is the shortest.
pub const TICK_MS_MIN: u64 = super::TICK_INTERVAL_MS;
pub const TICK_MS_MAX: u64 = 60_000;

/// A checked request to open a stream.
#[derive(Debug)]
pub struct StreamRequest {
    pub principal: Principal,
    pub auction_id: String,
    /// The first frame must show at least this version (`sinceVersion` / `Last-Event-ID`).
    pub since_version: Option<u64>,
    /// A tick comes when this long passed without another frame (`tickMs`).
    pub tick_period: Duration,
}

impl<S> FromRequestParts<S> for StreamRequest
where
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let pairs = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map(|Query(pairs)| pairs)
            .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())));
        let principal = authenticate(parts, state, pairs.as_deref().unwrap_or_default()).await?;
        principal.require(Permission::Read)?;
        let AuctionId(auction_id) = AuctionId::from_request_parts(parts, state).await?;
        let query = parse_query(&pairs?)?;
        let header_since = since_from_header(&parts.headers)?;
        Ok(StreamRequest {
            principal,
            auction_id,
            since_version: query.since_version.max(header_since),
            tick_period: Duration::from_millis(query.tick_ms.unwrap_or(TICK_MS_MIN)),
        })
    }
}

/// The bearer header if there is one (so a bad header is a 401 even with a good query token),
/// else `?access_token=`.
async fn authenticate<S>(
    parts: &mut Parts,
    state: &S,
    pairs: &[(String, String)],
) -> Result<Principal, ApiError>
where
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
{
    if parts.headers.contains_key(header::AUTHORIZATION) {
        return Principal::from_request_parts(parts, state).await;
    }
    let mut tokens = pairs.iter().filter(|(k, _)| k == ACCESS_TOKEN_PARAM);
    let (Some((_, token)), None) = (tokens.next(), tokens.next()) else {
        return Err(ApiError::Unauthorized {
            detail: "missing credentials: send Authorization: Bearer <token> or ?access_token=<token> (once)".into(),
            invalid: false,
        });
    };
    check_token(&TokenVerifier::from_ref(state), token)
}

/// What a stream's query string asks for besides the token.
#[derive(Default)]
struct StreamQuery {
    since_version: Option<u64>,
    tick_ms: Option<u64>,
}

fn parse_query(pairs: &[(String, String)]) -> Result<StreamQuery, ApiError> {
    let mut query = StreamQuery::default();
    for (key, value) in pairs {
        let slot = match key.as_str() {
            ACCESS_TOKEN_PARAM => continue,
            SINCE_VERSION_PARAM => &mut query.since_version,
            TICK_MS_PARAM => &mut query.tick_ms,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "invalid query string: unknown parameter `{other}` (expected access_token, sinceVersion, tickMs)"
                )))
            }
        };
        if slot.is_some() {
            return Err(ApiError::BadRequest(format!("{key} may be given once")));
        }
        *slot = Some(match key.as_str() {
            SINCE_VERSION_PARAM => parse_version(value)?,
            _ => parse_tick_ms(value)?,
        });
    }
    Ok(query)
}

fn parse_tick_ms(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|ms| {
            (TICK_MS_MIN..=TICK_MS_MAX).contains(ms) && text.bytes().all(|b| b.is_ascii_digit())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "tickMs must be an integer from {TICK_MS_MIN} to {TICK_MS_MAX}, got {text:?}"
            ))
        })
}

fn since_from_header(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let mut values = headers.get_all(LAST_EVENT_ID).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::BadRequest(
            "Last-Event-ID may be given once".into(),
        ));
    }
    let text = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("Last-Event-ID must be a version".into()))?
        .trim();
    if text.is_empty() {
        return Ok(None);
    }
    parse_version(text).map(Some)
}

fn parse_version(text: &str) -> Result<u64, ApiError> {
    text.parse::<u64>()
        .ok()
        .filter(|v| *v >= 1 && text.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "a resume version must be an integer >= 1, got {text:?}"
            ))
        })
}

/// The span of every HTTP request: method, URI and HTTP version, like tower-http's default,
/// but with the value of `access_token` replaced so tokens never reach the logs.
pub fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::info_span!(
        "request",
        method = %request.method(),
        uri = %redacted_uri(request.uri()),
        version = ?request.version(),
    )
}

/// `uri` with the value of every `access_token` query parameter replaced by `REDACTED`. Keys
/// are compared decoded, as the query extractor decodes them, so `access%5Ftoken=` (which
/// authenticates just the same) is redacted too.
pub fn redacted_uri(uri: &Uri) -> String {
    let Some(query) = uri.query() else {
        return uri.to_string();
    };
    let redacted: Vec<String> = query
        .split('&')
        .map(|pair| {
            let key = pair.split_once('=').map_or(pair, |(key, _)| key);
            let decoded = form_urlencoded::parse(key.as_bytes()).next();
            match decoded {
                Some((name, _)) if name == ACCESS_TOKEN_PARAM => format!("{key}=REDACTED"),
                _ => pair.to_owned(),
            }
        })
        .collect();
    format!("{}?{}", uri.path(), redacted.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_redacted_from_logged_uris() {
        let uri: Uri = "/auctions/a/ws?sinceVersion=3&access_token=eyJ.secret.sig"
            .parse()
            .unwrap();
        assert_eq!(
            redacted_uri(&uri),
            "/auctions/a/ws?sinceVersion=3&access_token=REDACTED"
        );
        for spelled in ["access%5Ftoken", "%61ccess_token", "access_tok%65n"] {
            let uri: Uri = format!("/auctions/a/sse?{spelled}=eyJ.secret.sig&x")
                .parse()
                .unwrap();
            assert_eq!(
                redacted_uri(&uri),
                format!("/auctions/a/sse?{spelled}=REDACTED&x")
            );
        }
        let bare: Uri = "/auctions/a/sse?access_token".parse().unwrap();
        assert_eq!(redacted_uri(&bare), "/auctions/a/sse?access_token=REDACTED");
        let plain: Uri = "/auctions?limit=5".parse().unwrap();
        assert_eq!(redacted_uri(&plain), "/auctions?limit=5");
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn since_from_query(pairs: &[(String, String)]) -> Result<Option<u64>, ApiError> {
        parse_query(pairs).map(|query| query.since_version)
    }

    #[test]
    fn tick_periods() {
        let tick_ms = |list: &[(&str, &str)]| parse_query(&pairs(list)).map(|q| q.tick_ms);
        assert_eq!(tick_ms(&[]).unwrap(), None);
        assert_eq!(tick_ms(&[("tickMs", "1000")]).unwrap(), Some(1_000));
        assert_eq!(
            tick_ms(&[("tickMs", "60000"), ("sinceVersion", "2")]).unwrap(),
            Some(60_000)
        );
        for bad in ["999", "60001", "0", "-5", "+2000", "1e3", "", "5000.0"] {
            assert!(tick_ms(&[("tickMs", bad)]).is_err(), "{bad:?}");
        }
        assert!(tick_ms(&[("tickMs", "2000"), ("tickMs", "3000")]).is_err());
    }

    #[test]
    fn resume_versions() {
        assert_eq!(since_from_query(&pairs(&[])).unwrap(), None);
        assert_eq!(
            since_from_query(&pairs(&[("sinceVersion", "7"), ("access_token", "t")])).unwrap(),
            Some(7)
        );
        for bad in ["0", "-1", "x", "+3", "1.5", ""] {
            assert!(
                since_from_query(&pairs(&[("sinceVersion", bad)])).is_err(),
                "{bad:?}"
            );
        }
        assert!(since_from_query(&pairs(&[("sinceVersion", "1"), ("sinceVersion", "2")])).is_err());
        assert!(since_from_query(&pairs(&[("limit", "1")])).is_err());
        let mut headers = HeaderMap::new();
        assert_eq!(since_from_header(&headers).unwrap(), None);
        headers.insert(LAST_EVENT_ID, "12".parse().unwrap());
        assert_eq!(since_from_header(&headers).unwrap(), Some(12));
        headers.insert(LAST_EVENT_ID, "abc".parse().unwrap());
        assert!(since_from_header(&headers).is_err());
    }
}

//! The live auction page served by every node: `GET /` lists auctions, `GET /a/{id}` shows one
//! live (price, leader, countdown, bid history, a bid form for bidders). Plain HTML, JavaScript
//! and CSS embedded in the binary at build time: no build step, nothing from a CDN.
//!
//! The page is static and needs no token to load; it calls the same API as any client (token
//! from its form or `#token=` in the URL) and follows the WebSocket stream. This module knows
//! only how to serve the files; what the page does is in `app.js`.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};

use crate::http::api::is_valid_id;
use crate::http::problem::ApiError;
use crate::http::server::AppState;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Scripts, styles and connections only from this node; no framing, no inline code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The live page and its assets.
pub fn route_table() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/", get(index)),
        ("/a/{id}", get(auction)),
        ("/assets/app.js", get(app_js)),
        ("/assets/style.css", get(style_css)),
    ]
}

/// `GET /`
async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /a/{id}`: the same page; its script reads the id from the path.
async fn auction(Path(id): Path<String>) -> Result<Response, ApiError> {
    if !is_valid_id(&id) {
        return Err(ApiError::NotFound("no such auction".into()));
    }
    Ok(asset(INDEX_HTML, "text/html; charset=utf-8"))
}

/// `GET /assets/app.js`
async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8")
}

/// `GET /assets/style.css`
async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8")
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate every time: a node upgrade must not leave old scripts in browsers.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_reference_each_other_and_nothing_external() {
        assert!(INDEX_HTML.contains("/assets/app.js"));
        assert!(INDEX_HTML.contains("/assets/style.css"));
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        // The page never takes HTML from data: it sets text only.
        assert!(!APP_JS.contains("innerHTML"));
        for id in [
            "price",
            "winner",
            "countdown",
            "status",
            "version",
            "history",
            "bid-form",
        ] {
            assert!(INDEX_HTML.contains(&format!("id=\"{id}\"")), "{id}");
        }
    }
}

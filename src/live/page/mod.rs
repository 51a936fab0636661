//! The live auction page served by every node: `GET /` lists auctions, `GET /a/{id}` shows one
//! live (price, leader, countdown, bid history, a bid form for bidders). Plain HTML, JavaScript
//! and CSS embedded in the binary at build time: no build step, nothing from a CDN.
//!
//! The page is static and needs no token to load; it calls the same API as any client (token
//! from its form or `#token=` in the URL) and follows the SSE stream, of another node when its
//! own dies. This module knows only how to serve the files, and which nodes the page may
//! connect to (its `Content-Security-Policy`); what the page does is in `app.js`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};

use crate::http::api::endpoints::client_urls;
use crate::http::api::AuctionId;
use crate::http::server::AppState;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");

/// Scripts, styles and connections only from this node; no framing, no inline code. The page
/// may also connect to the cluster's other nodes: see [`page_policy`].
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
const CONNECT_SRC: &str = "connect-src 'self'";

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
async fn index(State(state): State<AppState>) -> Response {
    page(&state)
}

/// `GET /a/{id}`: the same page; its script reads the id from the path.
async fn auction(State(state): State<AppState>, _: AuctionId) -> Response {
    page(&state)
}

/// `GET /assets/app.js`
async fn app_js() -> Response {
    asset(APP_JS, "text/javascript; charset=utf-8", static_policy())
}

/// `GET /assets/style.css`
async fn style_css() -> Response {
    asset(STYLE_CSS, "text/css; charset=utf-8", static_policy())
}

fn page(state: &AppState) -> Response {
    // `client_urls` lets only plain `HOST:PORT` URLs through, so this holds; should it ever
    // not, the page is served without its other nodes rather than not at all.
    let policy =
        HeaderValue::try_from(page_policy(&client_urls(state))).unwrap_or_else(|_| static_policy());
    asset(INDEX_HTML, "text/html; charset=utf-8", policy)
}

/// The page may connect to this node and to the cluster's nodes as this node knows them now,
/// to follow the stream elsewhere when this node dies. A node that joins later is allowed
/// after a reload.
fn page_policy(node_urls: &[String]) -> String {
    let listed: String = node_urls.iter().map(|url| format!(" {url}")).collect();
    CONTENT_SECURITY_POLICY.replacen(CONNECT_SRC, &format!("{CONNECT_SRC}{listed}"), 1)
}

fn static_policy() -> HeaderValue {
    HeaderValue::from_static(CONTENT_SECURITY_POLICY)
}

fn asset(body: &'static str, content_type: &'static str, policy: HeaderValue) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Revalidate every time: a node upgrade must not leave old scripts in browsers.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONTENT_SECURITY_POLICY, policy);
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

    #[test]
    fn the_page_may_connect_to_the_listed_nodes_only() {
        let urls = [
            "http://127.0.0.1:8081".to_owned(),
            "http://127.0.0.1:8082".to_owned(),
        ];
        let policy = page_policy(&urls);
        assert!(policy
            .contains("; connect-src 'self' http://127.0.0.1:8081 http://127.0.0.1:8082; img-src"));
        assert_eq!(
            policy.replace(" http://127.0.0.1:8081 http://127.0.0.1:8082", ""),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(page_policy(&[]), CONTENT_SECURITY_POLICY);
    }
}

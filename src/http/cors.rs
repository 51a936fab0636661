//! Which answers a page from another origin may read: the SSE stream
//! (`GET /auctions/{id}/stream`) and the node list (`GET /cluster/endpoints`), because the live
//! page, served by one node, follows the stream of another when its own node dies. Nothing
//! else is opened to other origins.
//!
//! The minimum that lets those reads through: `Access-Control-Allow-Origin: *` and, so that a
//! page can honour a full node's 503, `Access-Control-Expose-Headers: Retry-After`. `*` gives
//! away nothing: no cookie or other ambient credential authenticates here, a stream needs its
//! token in `?access_token=`, and any origin holding a token could already open the WebSocket
//! stream (browsers apply no CORS to WebSockets). A GET without custom headers is a "simple"
//! request that browsers send without a preflight, so no `OPTIONS` is answered; a cross-origin
//! caller that sends `Authorization` or `Last-Event-ID` is refused by its browser, not by us.

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;

/// Middleware: marks the answers of the cross-origin readable routes as such, whatever their
/// status (a 503 shed before the handler ran included).
pub async fn allow_cross_origin_reads(request: Request, next: Next) -> Response {
    let readable =
        request.method() == Method::GET && is_cross_origin_readable(request.uri().path());
    let mut response = next.run(request).await;
    if readable {
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("Retry-After"),
        );
    }
    response
}

/// `/cluster/endpoints` and `/auctions/{id}/stream` (one path segment for the id).
fn is_cross_origin_readable(path: &str) -> bool {
    if path == "/cluster/endpoints" {
        return true;
    }
    path.strip_prefix("/auctions/")
        .and_then(|rest| rest.strip_suffix("/stream"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stream_and_the_node_list_are_readable_cross_origin() {
        for yes in ["/cluster/endpoints", "/auctions/a-1/stream"] {
            assert!(is_cross_origin_readable(yes), "{yes}");
        }
        for no in [
            "/cluster",
            "/cluster/endpoints/x",
            "/auctions/a-1",
            "/auctions/a-1/ws",
            "/auctions/a-1/bids",
            "/auctions//stream",
            "/auctions/a/b/stream",
            "/a/a-1",
            "/",
        ] {
            assert!(!is_cross_origin_readable(no), "{no}");
        }
    }
}

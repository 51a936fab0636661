//! `GET /cluster/endpoints` (no token): the client URLs of the nodes that can serve viewers,
//! every voter and learner, so that a client whose node died can reconnect to another (the
//! live page does). It must not wait for anything: it reads this node's local membership view
//! (`Engine::member_client_addrs`), never a Raft round trip, so it answers at once even without
//! a quorum, and may trail a membership change by a moment.
//!
//! Membership records client addresses as `HOST:PORT` only, so every node is listed with this
//! node's scheme (`AppState::client_scheme`): a cluster serves its clients all over HTTP or all
//! over HTTPS. A browser on an HTTPS page could not use an `http://` node anyway.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::http::server::AppState;

#[derive(Debug, Serialize)]
pub struct EndpointsView {
    endpoints: Vec<String>,
}

/// `GET /cluster/endpoints`
pub async fn list(State(state): State<AppState>) -> Json<EndpointsView> {
    Json(EndpointsView {
        endpoints: client_urls(&state),
    })
}

/// `scheme://HOST:PORT` of every member this node knows a client address for, by node id.
/// These URLs also go into the live page's `Content-Security-Policy`, so an address with a
/// character that could end a URL or a directive there is left out (addresses are checked when
/// they are announced; this keeps a header safe whatever a peer says).
pub fn client_urls(state: &AppState) -> Vec<String> {
    state
        .engine
        .member_client_addrs()
        .into_values()
        .filter(|addr| is_plain_authority(addr))
        .map(|addr| format!("{}://{addr}", state.client_scheme))
        .collect()
}

/// `HOST:PORT` made of host-name, IPv4 and bracketed IPv6 characters only.
fn is_plain_authority(addr: &str) -> bool {
    !addr.is_empty()
        && addr.contains(':')
        && addr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use axum::http::{header, Method, StatusCode};
    use serde_json::json;

    use super::*;
    use crate::http::api::tests::{json_of, Harness};
    use crate::http::auth::Role;

    #[tokio::test]
    async fn a_single_node_lists_itself_without_a_token() {
        let h = Harness::new();
        let response = h.call(Method::GET, "/cluster/endpoints", None, None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        let body = json_of(response).await;
        assert_eq!(body, json!({ "endpoints": ["http://127.0.0.1:8080"] }));
    }

    #[tokio::test]
    async fn members_are_listed_by_node_id_with_this_nodes_scheme() {
        let h = Harness::serving("https");
        *h.engine.client_addrs.lock().unwrap() = BTreeMap::from([
            (3, "10.0.0.3:8443".to_owned()),
            (1, "10.0.0.1:8443".to_owned()),
            (2, "[fd00::2]:8443".to_owned()),
            (4, "10.0.0.4:8443; script-src *".to_owned()),
        ]);
        let response = h.call(Method::GET, "/cluster/endpoints", None, None).await;
        let body = json_of(response).await;
        let listed = [
            "https://10.0.0.1:8443",
            "https://[fd00::2]:8443",
            "https://10.0.0.3:8443",
        ];
        assert_eq!(body, json!({ "endpoints": listed }));

        // The page may connect to exactly those nodes.
        let page = h.call(Method::GET, "/a/some-auction", None, None).await;
        let policy = page.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap();
        assert!(
            policy.contains(&format!("connect-src 'self' {};", listed.join(" "))),
            "{policy}"
        );
        assert!(!policy.contains("10.0.0.4"), "{policy}");
    }

    #[tokio::test]
    async fn other_origins_may_read_the_stream_and_its_refusals_but_not_the_api() {
        let h = Harness::new();
        let id = h.auction().await;
        let stream = format!("/auctions/{id}/stream");
        for (uri, who) in [
            (stream.as_str(), Some(("vera", Role::Viewer))),
            (stream.as_str(), None),
            (
                "/auctions/no-such-auction/stream",
                Some(("vera", Role::Viewer)),
            ),
        ] {
            let response = h.call(Method::GET, uri, who, None).await;
            let headers = response.headers();
            assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*", "{uri}");
            assert_eq!(
                headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
                "Retry-After",
                "{uri}"
            );
        }
        for uri in [
            format!("/auctions/{id}"),
            format!("/auctions/{id}/bids"),
            "/cluster".into(),
        ] {
            let response = h
                .call(Method::GET, &uri, Some(("root", Role::Admin)), None)
                .await;
            assert!(
                response
                    .headers()
                    .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
                    .is_none(),
                "{uri}"
            );
        }
    }

    #[test]
    fn only_plain_authorities_are_listed() {
        for good in ["127.0.0.1:8080", "[::1]:8080", "auction-1.example.com:443"] {
            assert!(is_plain_authority(good), "{good}");
        }
        for bad in [
            "",
            "nohost",
            "a:1 'unsafe-inline'",
            "a:1;script-src *",
            "a:1/path",
            "user@a:1",
            "a:1,b:2",
        ] {
            assert!(!is_plain_authority(bad), "{bad}");
        }
    }
}

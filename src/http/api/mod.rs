//! The HTTP API: the route table and the extractors every resource shares (role-checked
//! callers, validated path ids, strictly parsed query strings, read consistency).
//!
//! One file per resource: `auctions.rs` (create, read, list, control), `bids.rs` (place, history),
//! `cluster.rs` (membership and leadership, admin only), `backup.rs` (the backup stream, admin
//! only), `endpoints.rs` (the nodes' client URLs, no token) and `ops.rs` (health, readiness,
//! metrics, OpenAPI). Handlers turn HTTP into engine calls and
//! engine replies into JSON; they never decide anything the state machine decides.

pub mod auctions;
pub mod backup;
pub mod bids;
pub mod cluster;
pub mod endpoints;
pub mod ops;

#[cfg(test)]
mod contract_tests;

use std::marker::PhantomData;

use axum::extract::{FromRef, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use gavel_cluster::Consistency;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::http::auth::{Permission, Principal, TokenVerifier};
use crate::http::problem::{method_not_allowed_fallback, ApiError};
use crate::http::server::AppState;

/// The longest id accepted in a path, in bytes.
pub const PATH_ID_LEN_MAX: usize = 128;

/// The auction, bid, stream and cluster routes (everything that needs a token), as a table so
/// that the contract test can hold the router and `openapi.json` to the same list of paths.
pub fn route_table() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/auctions", post(auctions::create).get(auctions::list)),
        ("/auctions/{id}", get(auctions::get_one)),
        ("/auctions/{id}/start", post(auctions::start)),
        ("/auctions/{id}/pause", post(auctions::pause)),
        ("/auctions/{id}/resume", post(auctions::resume)),
        ("/auctions/{id}/end", post(auctions::end)),
        ("/auctions/{id}/bids", post(bids::place).get(bids::list)),
        ("/auctions/{id}/stream", get(crate::live::stream)),
        ("/auctions/{id}/ws", get(crate::live::upgrade)),
        ("/cluster", get(cluster::status)),
        ("/cluster/backup", get(backup::backup)),
        ("/cluster/nodes", post(cluster::add_node)),
        ("/cluster/nodes/{id}", delete(cluster::remove_node)),
        (
            "/cluster/groups/{group}/transfer-leader",
            post(cluster::transfer_leader),
        ),
    ]
}

/// A router serving `table`, answering 405 for a known path called with another method.
pub fn router_of(table: Vec<(&'static str, MethodRouter<AppState>)>) -> Router<AppState> {
    table
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .method_not_allowed_fallback(method_not_allowed_fallback)
}

/// Whether `id` may name an auction: 1-128 characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= PATH_ID_LEN_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What an endpoint requires of its caller; see [`Authorized`].
pub trait Need: Send + Sync {
    const PERMISSION: Permission;
}

/// May read auctions and bid history.
pub struct Read;
/// May place bids.
pub struct Bid;
/// May create auctions and control (their own) auctions.
pub struct Manage;
/// May administer the cluster.
pub struct Admin;

impl Need for Read {
    const PERMISSION: Permission = Permission::Read;
}
impl Need for Bid {
    const PERMISSION: Permission = Permission::Bid;
}
impl Need for Manage {
    const PERMISSION: Permission = Permission::Manage;
}
impl Need for Admin {
    const PERMISSION: Permission = Permission::Administer;
}

/// An authenticated caller holding a role that grants `N`: 401 without a valid token, 403 without
/// the role, both before the path, query or body are looked at.
pub struct Authorized<N: Need>(pub Principal, PhantomData<N>);

impl<S, N> FromRequestParts<S> for Authorized<N>
where
    TokenVerifier: FromRef<S>,
    S: Send + Sync,
    N: Need,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require(N::PERMISSION)?;
        Ok(Authorized(principal, PhantomData))
    }
}

/// A path's one `{param}`, percent-decoded. axum's own `Path` answers a segment that is not
/// UTF-8 once decoded (`%FF`) with a plain-text 400; no resource has such a name, so this is a
/// problem-JSON 404 like any other unknown name.
pub struct PathText(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(text) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("nothing here has that name".into()))?;
        Ok(PathText(text))
    }
}

/// The `{id}` of an auction path, checked: an id no auction can have is a 404.
pub struct AuctionId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for AuctionId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let not_found = || ApiError::NotFound("no such auction".into());
        let PathText(id) = PathText::from_request_parts(parts, state)
            .await
            .map_err(|_| not_found())?;
        if is_valid_id(&id) {
            Ok(AuctionId(id))
        } else {
            Err(not_found())
        }
    }
}

/// A query string parsed into `T`, which should `deny_unknown_fields`: anything unexpected is a
/// 400 saying what.
pub struct StrictQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for StrictQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Query(value) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| {
                ApiError::BadRequest(format!("invalid query string: {}", e.body_text()))
            })?;
        Ok(StrictQuery(value))
    }
}

/// `?consistency=`: `linearizable` (the default) or `local`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ConsistencyParam {
    #[default]
    Linearizable,
    Local,
}

impl From<ConsistencyParam> for Consistency {
    fn from(param: ConsistencyParam) -> Self {
        match param {
            ConsistencyParam::Linearizable => Consistency::Linearizable,
            ConsistencyParam::Local => Consistency::Local,
        }
    }
}

/// Parses `?limit=`: absent gives `default`, otherwise an integer in `1..=max`.
pub fn parse_limit(text: Option<&str>, default: usize, max: usize) -> Result<usize, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    text.parse::<usize>()
        .ok()
        .filter(|limit| (1..=max).contains(limit))
        .ok_or_else(|| ApiError::BadRequest(format!("limit must be an integer from 1 to {max}")))
}

/// An engine reply that does not belong to the command sent: a bug, answered as a 500.
pub fn unexpected_reply(reply: &gavel_rules::Reply) -> ApiError {
    ApiError::Internal(format!("unexpected engine reply {reply:?}"))
}

#[cfg(test)]
pub mod tests;

//! The auction resource: `POST /auctions`, `GET /auctions/{id}`, `GET /auctions` and the
//! control actions `POST /auctions/{id}/start|pause|resume|end`, plus the auction's JSON shape.
//!
//! Create requests are checked here with the local clock for an early 400; the state machine
//! checks again with the leader's stamp and has the final word. Ids are chosen here: a UUID v4,
//! or with an `Idempotency-Key` a UUID v5 of (creator, key) so that a retry names the same
//! auction (same Raft group, same idempotency record).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gavel_cluster::AuctionFilter;
use gavel_rules::{
    Actor, Auction, Command, ControlAction, ControlRejection, CreateAuction, CreateRejection,
    Reply, Status,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    parse_limit, unexpected_reply, AuctionId, Authorized, ConsistencyParam, Manage, Read,
    StrictQuery,
};
use crate::http::cursor::{decode_auction_cursor, encode_auction_cursor};
use crate::http::json::{
    format_money, format_time, idempotency_key, parse_money, parse_time, JsonBody, MoneyText,
};
use crate::http::problem::ApiError;
use crate::http::server::AppState;

/// Namespace of the UUID v5 auction ids derived from (creator, `Idempotency-Key`).
const CREATE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x9c3e_4f0a_7b21_4d58_8e6f_2a1b_5c3d_7e90);
/// `GET /auctions` page size bounds.
const LIST_LIMIT_DEFAULT: usize = 20;
const LIST_LIMIT_MAX: usize = 100;

/// The auction as clients see it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuctionView {
    id: String,
    post_id: String,
    creator_id: String,
    status: &'static str,
    start_at: String,
    end_at: String,
    start_price: String,
    min_increment: String,
    anti_sniping_seconds: u32,
    current_price: String,
    current_winner_id: Option<String>,
    bid_count: u64,
    version: u64,
    created_at: String,
    ended_at: Option<String>,
}

impl From<&Auction> for AuctionView {
    fn from(a: &Auction) -> Self {
        AuctionView {
            id: a.id.clone(),
            post_id: a.post_id.clone(),
            creator_id: a.creator_id.clone(),
            status: a.status.as_str(),
            start_at: format_time(a.start_at_ms),
            end_at: format_time(a.end_at_ms),
            start_price: format_money(a.start_price),
            min_increment: format_money(a.min_increment),
            anti_sniping_seconds: a.anti_sniping_seconds,
            current_price: format_money(a.current_price),
            current_winner_id: a.current_winner_id.clone(),
            bid_count: a.bid_count,
            version: a.version,
            created_at: format_time(a.created_at_ms),
            ended_at: a.ended_at_ms.map(format_time),
        }
    }
}

/// The auction as a response with its `ETag`.
fn auction_response(status: StatusCode, auction: &Auction) -> Response {
    let mut response = (status, Json(AuctionView::from(auction))).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(auction.version));
    response
}

/// The strong entity tag of an auction version: `"<version>"`.
pub fn etag(version: u64) -> HeaderValue {
    // Digits between quotes are always a valid header value; the fallback is unreachable.
    HeaderValue::try_from(format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"\""))
}

/// Whether `If-None-Match` matches the current version (weak comparison, RFC 9110 13.1.2).
fn none_match(headers: &HeaderMap, version: u64) -> bool {
    let current = version.to_string();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| {
            tag == "*"
                || tag
                    .strip_prefix("W/")
                    .unwrap_or(tag)
                    .strip_prefix('"')
                    .and_then(|t| t.strip_suffix('"'))
                    == Some(current.as_str())
        })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CreateBody {
    post_id: String,
    start_at: String,
    end_at: String,
    start_price: MoneyText,
    min_increment: MoneyText,
    #[serde(default)]
    anti_sniping_seconds: Option<u32>,
}

impl CreateBody {
    fn into_request(self) -> Result<CreateAuction, ApiError> {
        Ok(CreateAuction {
            post_id: self.post_id,
            start_at_ms: parse_time("startAt", &self.start_at)?,
            end_at_ms: parse_time("endAt", &self.end_at)?,
            start_price: parse_money("startPrice", &self.start_price)?,
            min_increment: parse_money("minIncrement", &self.min_increment)?,
            anti_sniping_seconds: self.anti_sniping_seconds.unwrap_or(0),
        })
    }
}

/// The id an auction created with `key` by `creator` gets, whichever node the retry reaches.
pub fn create_id(creator: &str, key: &str) -> String {
    let name = format!("{creator}\n{key}");
    Uuid::new_v5(&CREATE_ID_NAMESPACE, name.as_bytes()).to_string()
}

/// `POST /auctions`
pub async fn create(
    State(state): State<AppState>,
    Authorized(principal, _): Authorized<Manage>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let request = body.into_request()?;
    // With a key this may retry a create that already happened, so "endAt is in the future"
    // is left to the state machine, which looks the key up first and replays.
    let early_check_ms = match key {
        Some(_) => i64::MIN,
        None => state.engine.now_ms(),
    };
    request
        .validate(early_check_ms)
        .map_err(ApiError::BadRequest)?;
    let auction_id = match &key {
        Some(key) => create_id(&principal.sub, key),
        None => Uuid::new_v4().to_string(),
    };
    let command = Command::Create {
        auction_id,
        creator_id: principal.sub,
        idempotency_key: key,
        request,
    };
    match state.engine.propose(command).await? {
        Reply::Created { auction, replayed } => {
            tracing::info!(auction_id = %auction.id, replayed, "auction created");
            let mut response = auction_response(StatusCode::CREATED, &auction);
            let headers = response.headers_mut();
            if let Ok(location) = HeaderValue::from_str(&format!("/auctions/{}", auction.id)) {
                headers.insert(header::LOCATION, location);
            }
            if replayed {
                headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        Reply::CreateRejected(CreateRejection::Invalid(why)) => Err(ApiError::BadRequest(why)),
        Reply::CreateRejected(CreateRejection::KeyReused) => Err(ApiError::KeyReused(
            "this Idempotency-Key was already used to create a different auction".into(),
        )),
        Reply::CreateRejected(CreateRejection::IdTaken) => Err(ApiError::Conflict(
            "the auction id derived from this Idempotency-Key is taken; use another key".into(),
        )),
        other => Err(unexpected_reply(&other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadQuery {
    #[serde(default)]
    consistency: ConsistencyParam,
}

/// `GET /auctions/{id}`
pub async fn get_one(
    State(state): State<AppState>,
    _: Authorized<Read>,
    AuctionId(id): AuctionId,
    StrictQuery(query): StrictQuery<ReadQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let auction = state
        .engine
        .auction(&id, query.consistency.into())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no auction {id}")))?;
    if none_match(&headers, auction.version) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        response
            .headers_mut()
            .insert(header::ETAG, etag(auction.version));
        return Ok(response);
    }
    Ok(auction_response(StatusCode::OK, &auction))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListQuery {
    status: Option<StatusParam>,
    creator_id: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
    #[serde(default)]
    consistency: ConsistencyParam,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StatusParam {
    Scheduled,
    Active,
    Paused,
    Ended,
}

impl From<StatusParam> for Status {
    fn from(param: StatusParam) -> Self {
        match param {
            StatusParam::Scheduled => Status::Scheduled,
            StatusParam::Active => Status::Active,
            StatusParam::Paused => Status::Paused,
            StatusParam::Ended => Status::Ended,
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListView {
    auctions: Vec<AuctionView>,
    next_cursor: Option<String>,
}

/// `GET /auctions`
pub async fn list(
    State(state): State<AppState>,
    _: Authorized<Read>,
    StrictQuery(query): StrictQuery<ListQuery>,
) -> Result<Response, ApiError> {
    if let Some(creator) = &query.creator_id {
        crate::http::auth::check_sub(creator)
            .map_err(|_| ApiError::BadRequest("creatorId is not a valid user id".into()))?;
    }
    let filter = AuctionFilter {
        status: query.status.map(Status::from),
        creator_id: query.creator_id,
        limit: parse_limit(query.limit.as_deref(), LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)?,
        before: query
            .cursor
            .as_deref()
            .map(decode_auction_cursor)
            .transpose()?,
    };
    let listing = state
        .engine
        .list_auctions(filter, query.consistency.into())
        .await?;
    let view = ListView {
        auctions: listing.auctions.iter().map(AuctionView::from).collect(),
        next_cursor: listing.next.as_ref().map(encode_auction_cursor),
    };
    Ok(Json(view).into_response())
}

/// `POST /auctions/{id}/start`
pub async fn start(
    State(state): State<AppState>,
    Authorized(principal, _): Authorized<Manage>,
    AuctionId(id): AuctionId,
) -> Result<Response, ApiError> {
    control(&state, principal, id, ControlAction::Start).await
}

/// `POST /auctions/{id}/pause`
pub async fn pause(
    State(state): State<AppState>,
    Authorized(principal, _): Authorized<Manage>,
    AuctionId(id): AuctionId,
) -> Result<Response, ApiError> {
    control(&state, principal, id, ControlAction::Pause).await
}

/// `POST /auctions/{id}/resume`
pub async fn resume(
    State(state): State<AppState>,
    Authorized(principal, _): Authorized<Manage>,
    AuctionId(id): AuctionId,
) -> Result<Response, ApiError> {
    control(&state, principal, id, ControlAction::Resume).await
}

/// `POST /auctions/{id}/end`
pub async fn end(
    State(state): State<AppState>,
    Authorized(principal, _): Authorized<Manage>,
    AuctionId(id): AuctionId,
) -> Result<Response, ApiError> {
    control(&state, principal, id, ControlAction::End).await
}

async fn control(
    state: &AppState,
    principal: crate::http::auth::Principal,
    auction_id: String,
    action: ControlAction,
) -> Result<Response, ApiError> {
    let actor = Actor {
        is_admin: principal.is_admin(),
        user_id: principal.sub,
    };
    let command = Command::Control {
        auction_id: auction_id.clone(),
        action,
        actor,
    };
    match state.engine.propose(command).await? {
        Reply::Controlled(auction) => {
            tracing::info!(auction_id = %auction.id, action = action_name(action), version = auction.version, "auction controlled");
            Ok(auction_response(StatusCode::OK, &auction))
        }
        Reply::ControlRejected(ControlRejection::Forbidden) => Err(ApiError::Forbidden(
            "only the auction's creator or an admin may do this".into(),
        )),
        Reply::ControlRejected(ControlRejection::NotAllowed { action, from }) => {
            Err(ApiError::Conflict(format!(
                "cannot {} an auction that is {}",
                action_name(action),
                from.as_str()
            )))
        }
        Reply::AuctionNotFound => Err(ApiError::NotFound(format!("no auction {auction_id}"))),
        other => Err(unexpected_reply(&other)),
    }
}

fn action_name(action: ControlAction) -> &'static str {
    match action {
        ControlAction::Start => "start",
        ControlAction::Pause => "pause",
        ControlAction::Resume => "resume",
        ControlAction::End => "end",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_ids_are_stable_per_creator_and_key() {
        assert_eq!(create_id("alice", "k1"), create_id("alice", "k1"));
        assert_ne!(create_id("alice", "k1"), create_id("alice", "k2"));
        assert_ne!(create_id("alice", "k1"), create_id("bob", "k1"));
        // The separator keeps ("a", "b\nc") and ("a\nb", "c") apart; subs cannot hold '\n'.
        assert!(super::super::is_valid_id(&create_id("alice", "k1")));
    }

    #[test]
    fn if_none_match() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, value.parse().unwrap());
            headers
        };
        assert!(none_match(&headers("\"7\""), 7));
        assert!(none_match(&headers("W/\"7\""), 7));
        assert!(none_match(&headers("\"1\", \"7\""), 7));
        assert!(none_match(&headers("*"), 7));
        assert!(!none_match(&headers("\"6\""), 7));
        assert!(!none_match(&headers("7"), 7));
        assert!(!none_match(&HeaderMap::new(), 7));
    }
}

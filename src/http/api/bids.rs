//! The bid resource: `POST /auctions/{id}/bids` (place) and `GET /auctions/{id}/bids` (the
//! auction's decision log), plus their JSON shapes.
//!
//! The answer to a bid is built only from the stored `BidDecision`, never from the request or
//! the live auction, so an idempotent replay is byte for byte the first answer.

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use gavel_cluster::BidFilter;
use gavel_rules::{BidDecision, Command, Reply};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    parse_limit, unexpected_reply, AuctionId, Authorized, Bid, ConsistencyParam, Read, StrictQuery,
};
use crate::http::cursor::{decode_bid_cursor, encode_bid_cursor};
use crate::http::json::{
    format_money, format_time, idempotency_key, parse_money, JsonBody, MoneyText,
};
use crate::http::problem::ApiError;
use crate::http::server::AppState;

/// `GET /auctions/{id}/bids` page size bounds.
const HISTORY_LIMIT_DEFAULT: usize = 100;
const HISTORY_LIMIT_MAX: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BidBody {
    amount: MoneyText,
}

/// The answer to a bid: the decision and the auction's state right after it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionView {
    status: &'static str,
    reason: Option<&'static str>,
    bid_id: String,
    amount: String,
    current_price: String,
    current_winner_id: Option<String>,
    version: u64,
    end_at: String,
}

impl From<&BidDecision> for DecisionView {
    fn from(d: &BidDecision) -> Self {
        DecisionView {
            status: d.status.as_str(),
            reason: d.reason.map(|r| r.as_str()),
            bid_id: d.bid_id.clone(),
            amount: format_money(d.amount),
            current_price: format_money(d.current_price),
            current_winner_id: d.current_winner_id.clone(),
            version: d.version,
            end_at: format_time(d.end_at_ms),
        }
    }
}

/// One entry of the bid history.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryItemView {
    bid_id: String,
    bidder_id: String,
    amount: String,
    status: &'static str,
    reason: Option<&'static str>,
    version: u64,
    created_at: String,
    seq: u64,
}

impl From<&BidDecision> for HistoryItemView {
    fn from(d: &BidDecision) -> Self {
        HistoryItemView {
            bid_id: d.bid_id.clone(),
            bidder_id: d.bidder_id.clone(),
            amount: format_money(d.amount),
            status: d.status.as_str(),
            reason: d.reason.map(|r| r.as_str()),
            version: d.version,
            created_at: format_time(d.created_at_ms),
            seq: d.seq,
        }
    }
}

/// `POST /auctions/{id}/bids`
pub async fn place(
    State(state): State<AppState>,
    Authorized(principal, _): Authorized<Bid>,
    AuctionId(auction_id): AuctionId,
    headers: HeaderMap,
    JsonBody(body): JsonBody<BidBody>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?
        .ok_or_else(|| ApiError::BadRequest("the Idempotency-Key header is required".into()))?;
    let amount = parse_money("amount", &body.amount)?;
    state
        .bid_limiter
        .check(&principal.sub, Instant::now())
        .map_err(|retry_after_s| ApiError::RateLimited {
            detail: "too many bids from this bidder; slow down".into(),
            retry_after_s,
        })?;
    let command = Command::Bid {
        auction_id: auction_id.clone(),
        bid_id: Uuid::new_v4().to_string(),
        bidder_id: principal.sub,
        idempotency_key: key,
        amount,
    };
    match state.engine.propose(command).await? {
        Reply::Bid { decision, replayed } => {
            if !replayed {
                let outcome = decision.status.as_str();
                let reason = decision.reason.map_or("none", |r| r.as_str());
                crate::http::metrics::record_bid_decision(outcome, reason);
            }
            tracing::debug!(%auction_id, bid_id = %decision.bid_id, seq = decision.seq, replayed, "bid decided");
            let mut response = Json(DecisionView::from(&decision)).into_response();
            if replayed {
                response
                    .headers_mut()
                    .insert("idempotent-replayed", HeaderValue::from_static("true"));
            }
            Ok(response)
        }
        Reply::BidKeyReused => Err(ApiError::KeyReused(
            "this Idempotency-Key was already used for a different bid on this auction".into(),
        )),
        Reply::BidLimitReached => Err(ApiError::BidLimitReached),
        Reply::AuctionNotFound => Err(ApiError::NotFound(format!("no auction {auction_id}"))),
        other => Err(unexpected_reply(&other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    #[serde(default)]
    status: HistoryStatus,
    limit: Option<String>,
    cursor: Option<String>,
    #[serde(default)]
    consistency: ConsistencyParam,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum HistoryStatus {
    Accepted,
    #[default]
    All,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct HistoryView {
    bids: Vec<HistoryItemView>,
    next_cursor: Option<String>,
}

/// `GET /auctions/{id}/bids`
pub async fn list(
    State(state): State<AppState>,
    _: Authorized<Read>,
    AuctionId(auction_id): AuctionId,
    StrictQuery(query): StrictQuery<HistoryQuery>,
) -> Result<Response, ApiError> {
    let filter = BidFilter {
        accepted_only: query.status == HistoryStatus::Accepted,
        limit: parse_limit(
            query.limit.as_deref(),
            HISTORY_LIMIT_DEFAULT,
            HISTORY_LIMIT_MAX,
        )?,
        after_seq: query
            .cursor
            .as_deref()
            .map(decode_bid_cursor)
            .transpose()?
            .unwrap_or(0),
    };
    let page = state
        .engine
        .bids(&auction_id, filter, query.consistency.into())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no auction {auction_id}")))?;
    let view = HistoryView {
        bids: page.bids.iter().map(HistoryItemView::from).collect(),
        next_cursor: page.next_after_seq.map(encode_bid_cursor),
    };
    Ok(Json(view).into_response())
}

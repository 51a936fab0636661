//! The suite's HTTP client of the Gavel API: each call returns an `Outcome` in Jepsen's terms.
//!
//! The mapping follows API.md: 2xx is `ok` with the parsed answer; a control action refused by
//! the auction's status (409) is an `ok` that says so; 503 ("nothing was done"), 4xx and a
//! connection that could not be opened are `fail`; 504, a timeout, a reset after the request
//! went out, or anything unexpected from a write is `info` (the outcome is unknown). A read that
//! did not answer is `fail`: reads change nothing.

use std::time::Duration;

use anyhow::{anyhow, Context};
use chrono::DateTime;
use gavel_jepsen::history::{
    AuctionStatus, AuctionView, BidRecord, BidStatus, BidView, ControlAction, FrameKind, OpResult,
    StreamFrame, WallMs,
};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde::Deserialize;

use crate::harness::nodes::client_url;
use crate::harness::recorder::Outcome;
use crate::harness::NodeId;

/// How long a client waits for any answer. Above the nodes' propose timeout, so that most
/// unknown outcomes arrive as the server's own 504.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuctionJson {
    id: String,
    post_id: String,
    creator_id: String,
    status: AuctionStatus,
    start_at: String,
    end_at: String,
    start_price: Decimal,
    min_increment: Decimal,
    anti_sniping_seconds: u32,
    current_price: Decimal,
    current_winner_id: Option<String>,
    bid_count: u64,
    version: u64,
    created_at: String,
    ended_at: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BidJson {
    status: BidStatus,
    reason: Option<String>,
    bid_id: String,
    amount: Decimal,
    current_price: Decimal,
    current_winner_id: Option<String>,
    version: u64,
    end_at: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BidRecordJson {
    bid_id: String,
    bidder_id: String,
    amount: Decimal,
    status: BidStatus,
    reason: Option<String>,
    version: u64,
    created_at: String,
    seq: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BidPage {
    bids: Vec<BidRecordJson>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuctionPage {
    auctions: Vec<AuctionJson>,
    next_cursor: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FrameJson {
    #[serde(rename = "type")]
    kind: FrameKind,
    status: AuctionStatus,
    current_price: Decimal,
    winner_id: Option<String>,
    version: u64,
    end_at: String,
    server_time: String,
}

pub fn parse_time(text: &str) -> anyhow::Result<WallMs> {
    Ok(DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("bad time {text:?}"))?
        .timestamp_millis())
}

pub fn format_time(ms: WallMs) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

impl AuctionJson {
    fn view(self) -> anyhow::Result<AuctionView> {
        Ok(AuctionView {
            id: self.id,
            post_id: self.post_id,
            creator_id: self.creator_id,
            status: self.status,
            start_at_ms: parse_time(&self.start_at)?,
            end_at_ms: parse_time(&self.end_at)?,
            start_price: self.start_price,
            min_increment: self.min_increment,
            anti_sniping_s: self.anti_sniping_seconds,
            current_price: self.current_price,
            winner: self.current_winner_id,
            bid_count: self.bid_count,
            version: self.version,
            created_at_ms: parse_time(&self.created_at)?,
            ended_at_ms: self.ended_at.as_deref().map(parse_time).transpose()?,
        })
    }
}

/// Parses one SSE `data:` payload.
pub fn parse_frame(data: &str) -> anyhow::Result<StreamFrame> {
    let frame: FrameJson = serde_json::from_str(data)?;
    Ok(StreamFrame {
        kind: frame.kind,
        status: frame.status,
        current_price: frame.current_price,
        winner: frame.winner_id,
        version: frame.version,
        end_at_ms: parse_time(&frame.end_at)?,
        server_time_ms: parse_time(&frame.server_time)?,
    })
}

/// What a sent request came back as, before it is judged.
enum Answer {
    Status(StatusCode, reqwest::header::HeaderMap, String),
    /// The request never left (connection refused, no route): certainly not done.
    NotSent(String),
    /// Sent, but no answer arrived (timeout, reset): unknown.
    Lost(String),
}

fn problem_summary(status: StatusCode, body: &str) -> String {
    let kind = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    format!("{} {kind}", status.as_u16())
}

/// Failure outcomes shared by every write: 503 and 4xx are `fail`, the rest `info`.
fn write_failure(answer: Answer) -> Outcome {
    match answer {
        Answer::NotSent(why) => Outcome::Fail(why),
        Answer::Lost(why) => Outcome::Info(why),
        Answer::Status(status, _, body) => {
            let summary = problem_summary(status, &body);
            if status == StatusCode::SERVICE_UNAVAILABLE || status.is_client_error() {
                Outcome::Fail(summary)
            } else {
                Outcome::Info(summary)
            }
        }
    }
}

impl Api {
    pub fn new() -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(1))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Api { http })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        match request.send().await {
            Err(e) if e.is_connect() => Answer::NotSent(format!("connect: {e}")),
            Err(e) => Answer::Lost(format!("no answer: {e}")),
            Ok(response) => {
                let status = response.status();
                let headers = response.headers().clone();
                match response.text().await {
                    Ok(body) => Answer::Status(status, headers, body),
                    Err(e) => Answer::Lost(format!("body: {e}")),
                }
            }
        }
    }

    pub async fn create(
        &self,
        node: NodeId,
        token: &str,
        key: Option<&str>,
        body: serde_json::Value,
    ) -> Outcome {
        let mut request = self
            .http
            .post(format!("{}/auctions", client_url(node)))
            .bearer_auth(token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        match self.send(request).await {
            Answer::Status(StatusCode::CREATED, _, body) => auction_ok(&body),
            other => write_failure(other),
        }
    }

    pub async fn bid(
        &self,
        node: NodeId,
        token: &str,
        auction_id: &str,
        key: &str,
        amount: Decimal,
    ) -> Outcome {
        let request = self
            .http
            .post(format!("{}/auctions/{auction_id}/bids", client_url(node)))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .json(&serde_json::json!({ "amount": amount.to_string() }));
        match self.send(request).await {
            Answer::Status(StatusCode::OK, headers, body) => {
                let replayed = headers
                    .get("idempotent-replayed")
                    .is_some_and(|v| v.as_bytes() == b"true");
                match bid_view(&body, replayed) {
                    Ok(view) => Outcome::Ok(OpResult::Bid(view)),
                    Err(e) => Outcome::Info(format!("unreadable decision: {e}")),
                }
            }
            other => write_failure(other),
        }
    }

    pub async fn control(
        &self,
        node: NodeId,
        token: &str,
        auction_id: &str,
        action: ControlAction,
    ) -> Outcome {
        let verb = match action {
            ControlAction::Start => "start",
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::End => "end",
        };
        let request = self
            .http
            .post(format!("{}/auctions/{auction_id}/{verb}", client_url(node)))
            .bearer_auth(token);
        match self.send(request).await {
            Answer::Status(StatusCode::OK, _, body) => auction_ok(&body),
            Answer::Status(StatusCode::CONFLICT, _, _) => Outcome::Ok(OpResult::ControlNotAllowed),
            other => write_failure(other),
        }
    }

    pub async fn read(&self, node: NodeId, token: &str, auction_id: &str, local: bool) -> Outcome {
        let mut request = self
            .http
            .get(format!("{}/auctions/{auction_id}", client_url(node)))
            .bearer_auth(token);
        if local {
            request = request.query(&[("consistency", "local")]);
        }
        match self.send(request).await {
            Answer::Status(StatusCode::OK, _, body) => auction_ok(&body),
            Answer::Status(StatusCode::NOT_FOUND, _, _) => Outcome::Ok(OpResult::NotFound),
            Answer::Status(status, _, body) => Outcome::Fail(problem_summary(status, &body)),
            Answer::NotSent(why) | Answer::Lost(why) => Outcome::Fail(why),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: String,
        token: &str,
        query: &[(&str, &str)],
    ) -> anyhow::Result<T> {
        let response = self
            .http
            .get(&url)
            .bearer_auth(token)
            .query(query)
            .send()
            .await?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            return Err(anyhow!("{url}: {}", problem_summary(status, &body)));
        }
        serde_json::from_str(&body).with_context(|| format!("{url}: unreadable answer"))
    }

    /// Every auction this node's replica holds (`consistency=local`, all pages).
    pub async fn all_auctions_local(
        &self,
        node: NodeId,
        token: &str,
    ) -> anyhow::Result<Vec<AuctionView>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..PAGES_MAX {
            let mut query = vec![("consistency", "local"), ("limit", "100")];
            if let Some(c) = cursor.as_deref() {
                query.push(("cursor", c));
            }
            let page: AuctionPage = self
                .get_json(format!("{}/auctions", client_url(node)), token, &query)
                .await?;
            for auction in page.auctions {
                out.push(auction.view()?);
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                return Ok(out);
            }
        }
        Err(anyhow!("more than {PAGES_MAX} pages of auctions"))
    }

    /// An auction's whole decision log from this node's replica.
    pub async fn bid_log_local(
        &self,
        node: NodeId,
        token: &str,
        auction_id: &str,
    ) -> anyhow::Result<Vec<BidRecord>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        let url = format!("{}/auctions/{auction_id}/bids", client_url(node));
        for _ in 0..PAGES_MAX {
            let mut query = vec![
                ("consistency", "local"),
                ("limit", "1000"),
                ("status", "all"),
            ];
            if let Some(c) = cursor.as_deref() {
                query.push(("cursor", c));
            }
            let page: BidPage = self.get_json(url.clone(), token, &query).await?;
            for bid in page.bids {
                out.push(BidRecord {
                    bid_id: bid.bid_id,
                    bidder: bid.bidder_id,
                    amount: bid.amount,
                    status: bid.status,
                    reason: bid.reason,
                    version: bid.version,
                    created_at_ms: parse_time(&bid.created_at)?,
                    seq: bid.seq,
                });
            }
            cursor = page.next_cursor;
            if cursor.is_none() {
                return Ok(out);
            }
        }
        Err(anyhow!("more than {PAGES_MAX} pages of bids"))
    }

    /// `/cluster` as this node answers it; with `digests`, every replica's state digest too
    /// (each replica reads its whole state for it).
    pub async fn cluster_status(
        &self,
        node: NodeId,
        admin: &str,
        digests: bool,
    ) -> anyhow::Result<serde_json::Value> {
        let digests = if digests { "true" } else { "false" };
        self.get_json(
            format!("{}/cluster", client_url(node)),
            admin,
            &[("digests", digests)],
        )
        .await
    }
}

/// Pages a final read may walk before giving up (a bound, far above what a run creates).
const PAGES_MAX: usize = 10_000;

fn auction_ok(body: &str) -> Outcome {
    match serde_json::from_str::<AuctionJson>(body)
        .map_err(anyhow::Error::from)
        .and_then(AuctionJson::view)
    {
        Ok(view) => Outcome::Ok(OpResult::Auction(view)),
        Err(e) => Outcome::Info(format!("unreadable auction: {e}")),
    }
}

fn bid_view(body: &str, replayed: bool) -> anyhow::Result<BidView> {
    let bid: BidJson = serde_json::from_str(body)?;
    Ok(BidView {
        status: bid.status,
        reason: bid.reason,
        bid_id: bid.bid_id,
        amount: bid.amount,
        current_price: bid.current_price,
        winner: bid.current_winner_id,
        version: bid.version,
        end_at_ms: parse_time(&bid.end_at)?,
        replayed,
    })
}

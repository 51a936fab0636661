//! Cluster administration (admin only): `GET /cluster`, `POST /cluster/nodes`,
//! `DELETE /cluster/nodes/{id}` and `POST /cluster/groups/{group}/transfer-leader`, with the
//! cluster status JSON shape. Every change answers once it is committed, with the cluster as
//! the answering node then sees it.

use axum::extract::State;
use axum::Json;
use gavel_cluster::{ClusterStatus, MembershipError};
use serde::{Deserialize, Serialize};

use super::{Admin, Authorized, PathText, StrictQuery};
use crate::cli::config::parse_advertised_addr;
use crate::http::engine::NewMember;
use crate::http::json::JsonBody;
use crate::http::problem::ApiError;
use crate::http::server::AppState;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    node_id: u64,
    nodes: Vec<NodeView>,
    groups: Vec<GroupView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeView {
    id: u64,
    client_addr: String,
    peer_addr: String,
    reachable: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct GroupView {
    id: u32,
    leader: Option<u64>,
    term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    replicas: Vec<ReplicaView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ReplicaView {
    node_id: u64,
    last_log_index: u64,
    committed_index: u64,
    applied_index: u64,
    /// Absent when not asked for (`?digests=false`) or not computed in time.
    #[serde(skip_serializing_if = "Option::is_none")]
    digest: Option<u64>,
}

impl From<ClusterStatus> for StatusView {
    fn from(status: ClusterStatus) -> Self {
        StatusView {
            node_id: status.node_id,
            nodes: status
                .nodes
                .into_iter()
                .map(|n| NodeView {
                    id: n.id,
                    client_addr: n.client_addr,
                    peer_addr: n.peer_addr,
                    reachable: n.reachable,
                })
                .collect(),
            groups: status
                .groups
                .into_iter()
                .map(|g| GroupView {
                    id: g.id,
                    leader: g.leader,
                    term: g.term,
                    voters: g.voters,
                    learners: g.learners,
                    replicas: g
                        .replicas
                        .into_iter()
                        .map(|r| ReplicaView {
                            node_id: r.node_id,
                            last_log_index: r.last_log_index,
                            committed_index: r.committed_index,
                            applied_index: r.applied_index,
                            digest: r.digest,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddNodeRequest {
    id: u64,
    client_addr: String,
    peer_addr: String,
    #[serde(default = "voter_by_default")]
    voter: bool,
}

fn voter_by_default() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferLeaderRequest {
    to: u64,
}

fn membership_error(error: MembershipError) -> ApiError {
    match error {
        MembershipError::Rejected(detail) => ApiError::Conflict(detail),
        MembershipError::NotFound(detail) => ApiError::NotFound(detail),
        MembershipError::Unavailable(detail) => ApiError::Unavailable {
            detail,
            retry_after_s: 1,
        },
    }
}

fn check_node_id(id: u64) -> Result<(), ApiError> {
    if id == 0 {
        return Err(ApiError::BadRequest("node ids start at 1".into()));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// Whether to compute every replica's state digest, which reads its whole state.
    #[serde(default = "digests_by_default")]
    digests: bool,
}

fn digests_by_default() -> bool {
    true
}

/// `GET /cluster[?digests=false]`
pub async fn status(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    StrictQuery(query): StrictQuery<StatusQuery>,
) -> Json<StatusView> {
    Json(state.engine.cluster_status(query.digests).await.into())
}

/// The status a membership change answers with: without digests, so that the answer does not
/// wait for every replica to read its whole state.
async fn status_after_change(state: &AppState) -> Json<StatusView> {
    Json(state.engine.cluster_status(false).await.into())
}

/// `POST /cluster/nodes`
pub async fn add_node(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    JsonBody(request): JsonBody<AddNodeRequest>,
) -> Result<Json<StatusView>, ApiError> {
    check_node_id(request.id)?;
    for (field, addr) in [
        ("clientAddr", &request.client_addr),
        ("peerAddr", &request.peer_addr),
    ] {
        parse_advertised_addr(addr)
            .map_err(|why| ApiError::BadRequest(format!("{field}: {why}")))?;
    }
    let member = NewMember {
        node_id: request.id,
        client_addr: request.client_addr,
        peer_addr: request.peer_addr,
        voter: request.voter,
    };
    state
        .engine
        .add_node(member)
        .await
        .map_err(membership_error)?;
    Ok(status_after_change(&state).await)
}

/// `DELETE /cluster/nodes/{id}`
pub async fn remove_node(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    PathText(id): PathText,
) -> Result<Json<StatusView>, ApiError> {
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no node {id}")))?;
    check_node_id(id)?;
    state
        .engine
        .remove_node(id)
        .await
        .map_err(membership_error)?;
    Ok(status_after_change(&state).await)
}

/// `POST /cluster/groups/{group}/transfer-leader`
pub async fn transfer_leader(
    _: Authorized<Admin>,
    State(state): State<AppState>,
    PathText(group): PathText,
    JsonBody(request): JsonBody<TransferLeaderRequest>,
) -> Result<Json<StatusView>, ApiError> {
    let group: u32 = group
        .parse()
        .map_err(|_| ApiError::NotFound(format!("no group {group}")))?;
    check_node_id(request.to)?;
    state
        .engine
        .transfer_leader(group, request.to)
        .await
        .map_err(membership_error)?;
    Ok(status_after_change(&state).await)
}

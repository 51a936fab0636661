//! `GET /cluster/backup` (admin only): the backup file of every group, streamed as the node
//! produces it (`gavel_cluster::backup`). The body is the file itself, byte for byte; a backup
//! that fails after its first byte ends the response early, and the client's check of the
//! file's checksum then refuses it.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::{Admin, Authorized};
use crate::http::problem::ApiError;
use crate::http::server::AppState;

/// `GET /cluster/backup`
pub async fn backup(
    _: Authorized<Admin>,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    let stream = state.engine.backup().await?;
    let pieces = futures_util::stream::unfold(stream.pieces, |mut pieces| async move {
        let piece = pieces.recv().await?;
        Some((piece.map(bytes::Bytes::from), pieces))
    });
    let headers = [
        (header::CONTENT_TYPE, "application/octet-stream"),
        (
            header::CONTENT_DISPOSITION,
            "attachment; filename=\"gavel.backup\"",
        ),
        (header::CACHE_CONTROL, "no-store"),
    ];
    Ok((headers, Body::from_stream(pieces)).into_response())
}

//! `GET /v1/rooms/{roomId}/hierarchy` of a local space ([`crate::rooms::hierarchy`]).

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::ApiError;
use super::extract::{Authed, Query, RoomPath};
use crate::app::AppState;
use crate::error::MatrixError;
use crate::rooms::hierarchy::HierarchyRequest;

/// Synapse's cap on `limit` (and its default).
const MAX_LIMIT: i64 = 50;

pub async fn hierarchy(
    State(state): State<AppState>,
    auth: Authed,
    RoomPath(room): RoomPath,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let suggested_only = match query.get("suggested_only") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "Boolean query parameter \"suggested_only\" must be one of ['true', 'false']",
            )
            .into());
        }
    };
    let max_depth = query.int("max_depth")?;
    let limit = query.int("limit")?;
    if max_depth.is_some_and(|d| d < 0) {
        return Err(
            MatrixError::invalid_param("'max_depth' must be a non-negative integer").into(),
        );
    }
    if limit.is_some_and(|l| l <= 0) {
        return Err(MatrixError::invalid_param("'limit' must be a positive integer").into());
    }
    let request = HierarchyRequest {
        suggested_only,
        max_depth,
        limit: usize::try_from(limit.unwrap_or(MAX_LIMIT).min(MAX_LIMIT)).unwrap_or(1),
        from: query.get("from").map(str::to_owned),
    };
    let answer = state
        .rooms
        .hierarchy(&auth.requester, &auth.token, &room, request)
        .await?;
    Ok(Json(answer))
}

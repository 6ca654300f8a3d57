//! `GET /v1/rooms/{roomId}/threads` of a local room ([`crate::rooms::threads`]).

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::ApiError;
use super::extract::{Authed, Query, RoomPath};
use crate::app::AppState;
use crate::error::MatrixError;
use crate::rooms::threads::{Include, parse_from};

/// Synapse's default page size for the thread list.
const DEFAULT_LIMIT: i64 = 5;

pub async fn threads(
    State(state): State<AppState>,
    auth: Authed,
    RoomPath(room): RoomPath,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let include = match query.get("include") {
        None | Some("all") => Include::All,
        Some("participated") => Include::Participated,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "Query parameter 'include' must be one of ['all', 'participated']",
            )
            .into());
        }
    };
    let from = query.get("from").map(parse_from).transpose()?;
    let limit = query.int("limit")?.unwrap_or(DEFAULT_LIMIT);
    let answer = state
        .rooms
        .threads(&auth.requester, &room, include, limit, from)
        .await?;
    Ok(Json(answer))
}

//! `GET /v1/room_summary/{roomId}` and the unstable `im.nheko.summary` paths for a local
//! room ([`crate::rooms::summary`]).

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::ApiError;
use super::extract::{Authed, Path};
use super::send::room_id;
use crate::app::AppState;

/// `/v1/room_summary/{roomId}`.
pub async fn summary(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let answer = state
        .rooms
        .summary(&auth.requester, &room_id(&room)?)
        .await?;
    Ok(Json(answer))
}

/// `/unstable/im.nheko.summary/summary/{roomId}` and the deprecated
/// `/unstable/im.nheko.summary/rooms/{roomId}/summary`.
pub async fn summary_unstable(
    state: State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    summary(state, Path((String::new(), room)), auth).await
}

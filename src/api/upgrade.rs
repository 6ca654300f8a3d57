//! `POST /rooms/{roomId}/upgrade` for a local room: the replacement is a local room of the
//! same class (`rooms::upgrade` says what is copied and moved, and why in that order).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject, RoomPath};
use crate::app::AppState;
use crate::error::{ErrorCode, MatrixError};
use crate::rooms::service::origin_ts;

pub async fn upgrade(
    State(state): State<AppState>,
    auth: Authed,
    RoomPath(room_id): RoomPath,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    // Synapse's answers: no `new_version` is M_MISSING_PARAM; one that is not a string is
    // no version it knows (M_UNSUPPORTED_ROOM_VERSION), not M_BAD_JSON.
    let new_version = match body.get("new_version") {
        None => {
            return Err(MatrixError::new(
                http::StatusCode::BAD_REQUEST,
                ErrorCode::MissingParam,
                "Missing params: ['new_version']",
            )
            .into());
        }
        Some(Value::String(version)) => json!(version),
        Some(_) => json!(""),
    };
    let classes = state.classes.current();
    let class = classes
        .class_of(room_id.as_str())
        .ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    let ts = origin_ts(&auth.requester, auth.ts);
    let replacement = state
        .rooms
        .upgrade(
            &auth.requester,
            &auth.token,
            class,
            &room_id,
            &new_version,
            ts,
        )
        .await?;
    tracing::info!(%room_id, %replacement, "local room upgraded");
    // The upgrader's push rules were copied for the new room at Synapse (`rooms::upgrade`):
    // the copy hungryserv evaluates with is refreshed, as after a `/pushrules` write.
    if auth.requester.appservice.is_none() {
        state
            .push
            .refresh_rules(&auth.token, auth.requester.user_id.as_str())
            .await;
    }
    Ok(Json(json!({ "replacement_room": replacement })))
}

//! Membership endpoints for local rooms: join, knock, leave, forget, invite, kick, ban,
//! unban.

use axum::Json;
use axum::extract::State;

use super::extract::Path;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject, optional_str, required_str};
use super::send::room_id;
use crate::app::AppState;
use crate::error::MatrixError;
use crate::rooms::service::origin_ts;

fn user_id(raw: &str) -> Result<OwnedUserId, ApiError> {
    OwnedUserId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid user ID: {raw}")).into())
}

/// Changes `target`'s membership to `membership` as the requester.
async fn change(
    state: &AppState,
    auth: &Authed,
    room_id: &OwnedRoomId,
    target: &OwnedUserId,
    membership: &str,
    body: &Map<String, Value>,
) -> Result<ruma::OwnedEventId, ApiError> {
    let reason = optional_str(body, "reason")?;
    let ts = origin_ts(&auth.requester, auth.ts);
    Ok(state
        .rooms
        .set_membership(
            &auth.requester,
            &auth.token,
            room_id,
            target,
            membership,
            reason,
            Map::new(),
            ts,
        )
        .await?)
}

/// The requester's own membership change: `join` (`/rooms/{id}/join`, `/join/{idOrAlias}`;
/// aliases are resolved by the dispatcher before routing here), `knock`, `leave`. Joins and
/// knocks answer with the room ID, leaves with `{}`.
async fn own_membership(
    state: AppState,
    room: String,
    auth: Authed,
    body: Map<String, Value>,
    membership: &str,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let target = auth.requester.user_id.clone();
    change(&state, &auth, &room_id, &target, membership, &body).await?;
    Ok(Json(match membership {
        "leave" => json!({}),
        _ => json!({ "room_id": room_id }),
    }))
}

/// `POST /rooms/{roomId}/join`, `POST /join/{roomIdOrAlias}`.
pub async fn join_room(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    own_membership(state, room, auth, body, "join").await
}

/// `POST /knock/{roomIdOrAlias}`.
pub async fn knock(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    own_membership(state, room, auth, body, "knock").await
}

/// `POST /rooms/{roomId}/leave`.
pub async fn leave(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    own_membership(state, room, auth, body, "leave").await
}

/// `POST /rooms/{roomId}/forget`: only once the user has left, as in Synapse.
pub async fn forget(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    state.rooms.forget(&auth.requester, &room_id).await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/invite|kick|ban|unban` with `{"user_id", "reason"}`. Kick and unban
/// both write `leave`; the action is checked against the target's membership first.
pub async fn targeted(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
    action: &'static str,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let target = user_id(required_str(&body, "user_id")?)?;
    state
        .rooms
        .check_member_action(&room_id, &target, action)
        .await?;
    let membership = match action {
        "kick" | "unban" => "leave",
        other => other,
    };
    change(&state, &auth, &room_id, &target, membership, &body).await?;
    Ok(Json(json!({})))
}

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
use crate::rooms::service::{MembershipChange, origin_ts};

fn user_id(raw: &str) -> Result<OwnedUserId, ApiError> {
    if !raw.starts_with('@') {
        // Synapse's `UserID.from_string`.
        return Err(MatrixError::invalid_param("Expected UserID string to start with '@'").into());
    }
    OwnedUserId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid user ID: {raw}")).into())
}

/// Changes `target`'s membership to `membership` as the requester. Of the body only
/// `reason` goes into the member event (Synapse's `RoomMembershipRestServlet`).
async fn change(
    state: &AppState,
    auth: &Authed,
    room_id: &OwnedRoomId,
    target: &OwnedUserId,
    membership: &str,
    body: &Map<String, Value>,
) -> Result<ruma::OwnedEventId, ApiError> {
    change_with(state, auth, room_id, target, membership, body, Map::new()).await
}

/// [`change`] with more member content (`extra`, which wins over the profile).
async fn change_with(
    state: &AppState,
    auth: &Authed,
    room_id: &OwnedRoomId,
    target: &OwnedUserId,
    membership: &str,
    body: &Map<String, Value>,
    extra: Map<String, Value>,
) -> Result<ruma::OwnedEventId, ApiError> {
    let reason = optional_str(body, "reason")?;
    let ts = origin_ts(&auth.requester, auth.ts);
    Ok(state
        .rooms
        .set_membership(
            &auth.requester,
            &auth.token,
            room_id,
            MembershipChange {
                target,
                membership,
                reason,
                extra,
                ts,
            },
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

/// `POST /join/{roomIdOrAlias}`: unlike `/rooms/{roomId}/join`, Synapse makes the whole
/// body the member content (`JoinRoomAliasServlet`), so clients' extra keys are kept.
pub async fn join_by_id_or_alias(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let target = auth.requester.user_id.clone();
    let mut extra = body.clone();
    // The membership is the endpoint's, whatever the body says.
    extra.remove("membership");
    change_with(&state, &auth, &room_id, &target, "join", &body, extra).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /rooms/{roomId}/join`.
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
    if action == "invite" && body.contains_key("medium") && body.contains_key("address") {
        return Err(third_party_invite(&body).into());
    }
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

/// A third-party invite (`id_server`, `medium`, `address`): Synapse's parameter check, then
/// its answer when no identity server can be asked (a local room has no identity-server
/// client; Synapse's lookup fails with a 500 when the server cannot be reached).
fn third_party_invite(body: &Map<String, Value>) -> MatrixError {
    if !(body.contains_key("id_server") && body.contains_key("id_access_token")) {
        return MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            crate::error::ErrorCode::MissingParam,
            "`id_server` and `id_access_token` are required when doing 3pid invite",
        );
    }
    MatrixError::new(
        http::StatusCode::INTERNAL_SERVER_ERROR,
        crate::error::ErrorCode::Unknown,
        "Third-party invites are not available in local rooms",
    )
}

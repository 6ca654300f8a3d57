//! Synapse's admin API about a user's rooms, for local rooms (server admins only, as on
//! Synapse):
//!
//! * `GET /_synapse/admin/v1/users/{userId}/joined_rooms`: Synapse answers (and refuses
//!   non-admins, in its words); the user's joined local rooms are appended and counted in
//!   `total`.
//! * `POST /_synapse/admin/v1/join/{roomId}` naming a local room: the user named by `user_id`
//!   joins; when the room is not public the admin invites them first (and so must be able to),
//!   as Synapse's `JoinRoomAliasServlet`. Not yet: naming the room by alias, and Synapse's
//!   404 "User not found" for a user it does not know.
//! * `POST /_synapse/admin/v1/rooms/{roomId}/make_room_admin` for a local room
//!   ([`crate::rooms::service::Rooms::make_room_admin`]).

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use ruma::OwnedUserId;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject, Path};
use super::room_admin::require_admin;
use super::send::room_id;
use crate::app::AppState;
use crate::auth::requester::Requester;
use crate::error::{ErrorCode, MatrixError};

/// Largest `joined_rooms` answer of Synapse's read.
const MAX_JOINED_ROOMS: usize = 16 * 1024 * 1024;

/// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`: Synapse's list plus the user's
/// joined local rooms.
pub async fn user_joined_rooms(
    state: &AppState,
    request: Request<Body>,
    peer: std::net::SocketAddr,
    user: &OwnedUserId,
) -> Response {
    let response = match state.synapse.forward(request, peer).await {
        Ok(response) => response,
        Err(err) => return err.into_response(),
    };
    if !response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_JOINED_ROOMS)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return MatrixError::bad_gateway("Synapse's answer could not be read").into_response();
        }
    };
    let Ok(Value::Object(mut answer)) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let target = Requester {
        user_id: user.clone(),
        device_id: None,
        appservice: None,
        is_guest: false,
    };
    let local = match state.rooms.joined_rooms(&target).await {
        Ok(rooms) => rooms,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let added = local.len() as u64;
    if let Some(Value::Array(rooms)) = answer.get_mut("joined_rooms") {
        rooms.extend(local.into_iter().map(Value::from));
    }
    if let Some(total) = answer.get_mut("total")
        && let Some(n) = total.as_u64()
    {
        *total = json!(n + added);
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(Value::Object(answer).to_string()))
}

/// `POST /_synapse/admin/v1/join/{roomId}` for a local room.
pub async fn join(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let room_id = room_id(&room)?;
    let user = body.get("user_id").ok_or_else(|| {
        MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MissingParam,
            "Missing params: ['user_id']",
        )
    })?;
    let user = user
        .as_str()
        .and_then(|u| OwnedUserId::try_from(u).ok())
        .ok_or_else(|| MatrixError::invalid_param("Invalid user_id"))?;
    if user.server_name() != state.config.server_name.as_str() {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Unknown,
            "This endpoint can only be used with local users",
        )
        .into());
    }
    state
        .rooms
        .admin_join(&auth.requester, &auth.token, &room_id, &user)
        .await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /_synapse/admin/v1/rooms/{roomId}/make_room_admin` for a local room: `user_id`
/// (default: the admin) gets the power of the room's most powerful joined user of this
/// server. An empty body is allowed, as on Synapse.
pub async fn make_room_admin(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let room_id = room_id(&room)?;
    let body: serde_json::Map<String, Value> = if body.is_empty() {
        serde_json::Map::new()
    } else {
        serde_json::from_slice(&body).map_err(|_| {
            MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::NotJson,
                "Content not JSON.",
            )
        })?
    };
    let user = match body.get("user_id") {
        None => auth.requester.user_id.clone(),
        Some(user) => user
            .as_str()
            .and_then(|u| OwnedUserId::try_from(u).ok())
            .ok_or_else(|| MatrixError::invalid_param("Invalid user_id"))?,
    };
    state
        .rooms
        .make_room_admin(&auth.token, &room_id, &user)
        .await?;
    Ok(Json(json!({})))
}

//! hungryserv's admin API (`/_hungryserv/admin/v1/…`: routing) and the room deletion
//! endpoints for local rooms: Synapse's admin API
//! (`DELETE /_synapse/admin/v1|v2/rooms/{roomId}`, `delete_status`) for server admins, and
//! Beeper's `POST /_matrix/client/unstable/com.beeper.yeet/rooms/{roomId}/delete` for the
//! room's creating appservice or a server admin. Answers are shaped as Synapse's.

use axum::Json;
use axum::Router;
use axum::extract::State;

use super::extract::Path;
use axum::routing::{delete, get};
use serde_json::{Map, Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject};
use super::send::room_id;
use crate::app::AppState;
use crate::error::{ErrorCode, MatrixError};
use crate::rooms::deletion::{DeleteOptions, Deleted};
use crate::store::deletion::DeletionRow;

/// The router for requests classified `AdminRoom`.
pub fn router(state: AppState) -> Router {
    let limit = super::body_limit(&state);
    super::appservice_admin::routes(Router::new())
        .route(
            "/_synapse/admin/v1/rooms/{room_id}",
            delete(delete_v1).get(room_details),
        )
        .route("/_synapse/admin/v2/rooms/{room_id}", delete(delete_v2))
        .route(
            "/_synapse/admin/v2/rooms/{room_id}/delete_status",
            get(status_of_room),
        )
        .route(
            "/_synapse/admin/v2/rooms/delete_status/{delete_id}",
            get(status_by_id),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/members",
            get(room_members),
        )
        .route("/_synapse/admin/v1/rooms/{room_id}/state", get(room_state))
        .route(
            "/_synapse/admin/v1/join/{room_id}",
            axum::routing::post(super::admin_membership::join),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/make_room_admin",
            axum::routing::post(super::admin_membership::make_room_admin),
        )
        .route(
            "/_synapse/admin/v1/rooms/{room_id}/messages",
            get(room_messages),
        )
        .route(
            "/_hungryserv/admin/v1/appservices/{appservice_id}/rooms",
            get(appservice_rooms),
        )
        .route(
            "/_hungryserv/admin/v1/appservices/{appservice_id}/delete_rooms",
            axum::routing::post(delete_appservice_rooms),
        )
        .route("/_hungryserv/admin/v1/routing", get(routing))
        .route(
            "/_hungryserv/admin/v1/routing/reload",
            axum::routing::post(reload_routing),
        )
        .fallback(super::unknown_local_endpoint)
        .method_not_allowed_fallback(super::method_not_allowed)
        .layer(limit)
        .with_state(state)
}

/// The routing in force: each class with its settings and its rooms' and events' counts.
async fn routing_state(state: &AppState) -> Result<Value, ApiError> {
    let counts = state.deletions.class_counts().await?;
    let config = state.classes.config();
    let classes: Vec<Value> = config
        .classes
        .iter()
        .map(|class| {
            let (rooms, events) = counts
                .iter()
                .find(|(name, _, _)| *name == class.name)
                .map_or((0, 0), |(_, rooms, events)| (*rooms, *events));
            json!({
                "name": class.name,
                "prefix": class.prefix,
                "serve": class.serve.as_str(),
                "create": class.create.as_str(),
                "match": {
                    "appservices": class.matches.appservices,
                    "unfederated": class.matches.unfederated,
                    "all": class.matches.all,
                },
                "rooms": rooms,
                "events": events,
            })
        })
        .collect();
    Ok(json!({ "classes": classes }))
}

/// `GET /_hungryserv/admin/v1/routing`.
async fn routing(State(state): State<AppState>, auth: Authed) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    Ok(Json(routing_state(&state).await?))
}

/// `POST /_hungryserv/admin/v1/routing/reload`: as SIGHUP. A file with problems is refused
/// with all of them listed, and the routing in force stays.
async fn reload_routing(
    State(state): State<AppState>,
    auth: Authed,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    require_admin(&state, &auth).await?;
    match state.reload_routing() {
        Ok(()) => Ok(Json(routing_state(&state).await?).into_response()),
        Err(problems) => Ok((
            http::StatusCode::BAD_REQUEST,
            Json(json!({
                "errcode": "M_INVALID_PARAM",
                "error": "routing.toml has problems; the routing in force is unchanged",
                "problems": problems,
            })),
        )
            .into_response()),
    }
}

/// Refuses anyone but a Synapse server admin, in Synapse's words.
pub(super) async fn require_admin(state: &AppState, auth: &Authed) -> Result<(), ApiError> {
    if state
        .identity
        .is_admin(&auth.token, &auth.requester)
        .await?
    {
        Ok(())
    } else {
        Err(MatrixError::forbidden("You are not a server admin").into())
    }
}

/// The body of Synapse's delete request: `purge` (default true) and `block` (default false)
/// are honoured; `force_purge` is accepted (nothing can hold up our purge); `message` and
/// `room_name` only matter for `new_room_user_id`, which local rooms do not support (their
/// members cannot be moved to a new room), so it is refused.
fn delete_options(body: &Map<String, Value>) -> Result<DeleteOptions, ApiError> {
    let flag = |key: &str, default: bool| match body.get(key) {
        None => Ok(default),
        Some(Value::Bool(value)) => Ok(*value),
        Some(_) => Err(ApiError::from(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::BadJson,
            format!("Param '{key}' must be a boolean, if given"),
        ))),
    };
    let options = DeleteOptions {
        purge: flag("purge", true)?,
        block: flag("block", false)?,
    };
    flag("force_purge", false)?;
    if body.get("new_room_user_id").is_some_and(|v| !v.is_null()) {
        return Err(MatrixError::invalid_param(
            "new_room_user_id is not supported for this room: hungryserv's rooms are deleted, not replaced",
        )
        .into());
    }
    for key in ["message", "room_name"] {
        if body
            .get(key)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            return Err(MatrixError::bad_json(format!("'{key}' must be a string")).into());
        }
    }
    Ok(options)
}

async fn delete_room(
    state: &AppState,
    raw_room: &str,
    auth: &Authed,
    body: &Map<String, Value>,
) -> Result<Deleted, ApiError> {
    let options = delete_options(body)?;
    require_admin(state, auth).await?;
    let room_id = room_id(raw_room)?;
    state
        .deletions
        .delete(&room_id, &auth.requester.user_id, options)
        .await
        .map_err(|err| match err {
            crate::rooms::RoomError::NotFound(_) => {
                MatrixError::not_found(format!("Unknown room id {room_id}")).into()
            }
            other => other.into(),
        })
}

/// `DELETE /_synapse/admin/v1/rooms/{roomId}`: Synapse answers once the room is shut down;
/// so do we (the purge continues in the background).
async fn delete_v1(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let deleted = delete_room(&state, &room, &auth, &body).await?;
    Ok(Json(json!({
        "kicked_users": deleted.kicked_users,
        "failed_to_kick_users": [],
        "local_aliases": deleted.local_aliases,
        "new_room_id": null,
    })))
}

/// `DELETE /_synapse/admin/v2/rooms/{roomId}`: the `delete_id` to follow.
async fn delete_v2(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let deleted = delete_room(&state, &room, &auth, &body).await?;
    Ok(Json(json!({ "delete_id": deleted.delete_id })))
}

/// One deletion as Synapse's `delete_status` shows it.
fn status_json(row: &DeletionRow) -> Value {
    let mut value = json!({
        "delete_id": row.delete_id,
        "status": row.status,
        "shutdown_room": {
            "kicked_users": row.kicked_users,
            "failed_to_kick_users": [],
            "local_aliases": row.local_aliases,
            "new_room_id": null,
        },
        // Not Synapse's: what hungryserv adds for operators.
        "purge": row.purge,
        "block": row.block,
        "purged_events": row.purged_events,
    });
    if let (Some(error), Some(map)) = (&row.error, value.as_object_mut()) {
        map.insert("error".into(), json!(error));
    }
    value
}

/// `GET /_synapse/admin/v2/rooms/{roomId}/delete_status`.
async fn status_of_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let rows = state.deletions.statuses_of(&room).await?;
    if rows.is_empty() {
        return Err(
            MatrixError::not_found(format!("No delete task for room_id '{room}' found")).into(),
        );
    }
    Ok(Json(json!({
        "results": rows.iter().map(status_json).collect::<Vec<_>>(),
    })))
}

/// `GET /_synapse/admin/v2/rooms/delete_status/{deleteId}`.
async fn status_by_id(
    State(state): State<AppState>,
    Path(delete_id): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let row = state
        .deletions
        .status(&delete_id)
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("delete id '{delete_id}' not found")))?;
    let mut value = status_json(&row);
    if let Some(map) = value.as_object_mut() {
        map.remove("delete_id");
    }
    Ok(Json(value))
}

/// `POST /_matrix/client/unstable/com.beeper.yeet/rooms/{roomId}/delete`: the appservice
/// that created the room, or a server admin, deletes it (purged, not blocked).
pub async fn yeet(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let creator = state.deletions.appservice_of(&room_id).await?;
    let by_creator = matches!(
        (&creator, &auth.requester.appservice),
        (Some(creator), Some(appservice)) if *creator == appservice.id
    );
    if !by_creator
        && !state
            .identity
            .is_admin(&auth.token, &auth.requester)
            .await?
    {
        return Err(MatrixError::forbidden(
            "Only the appservice that created this room or a server admin can delete it",
        )
        .into());
    }
    let deleted = state
        .deletions
        .delete(
            &room_id,
            &auth.requester.user_id,
            DeleteOptions {
                purge: true,
                block: false,
            },
        )
        .await?;
    Ok(Json(json!({ "delete_id": deleted.delete_id })))
}

/// A local room for Synapse's admin room API; 404 as Synapse words it otherwise.
async fn admin_room(
    state: &AppState,
    room: &str,
) -> Result<crate::rooms::admin::AdminRoom, ApiError> {
    state
        .deletions
        .admin_room(room)
        .await?
        .ok_or_else(|| MatrixError::not_found("Room not found").into())
}

/// `GET /_synapse/admin/v1/rooms/{roomId}`, with Synapse's fields.
async fn room_details(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    use crate::rooms::admin::state_str;
    require_admin(&state, &auth).await?;
    let found = admin_room(&state, &room).await?;
    let joined: Vec<&String> = found.joined();
    let suffix = format!(":{}", state.config.server_name);
    let s = &found.state;
    Ok(Json(json!({
        "room_id": found.room.room_id,
        "name": state_str(s, "m.room.name", "name"),
        "topic": state_str(s, "m.room.topic", "topic"),
        "avatar": state_str(s, "m.room.avatar", "url"),
        "canonical_alias": state_str(s, "m.room.canonical_alias", "alias"),
        "joined_members": joined.len(),
        "joined_local_members": joined.iter().filter(|u| u.ends_with(&suffix)).count(),
        "joined_local_devices": null,
        "version": found.room.room_version,
        "creator": found.room.creator,
        "encryption": state_str(s, "m.room.encryption", "algorithm"),
        "federatable": false,
        "public": false,
        "join_rules": state_str(s, "m.room.join_rules", "join_rule"),
        "guest_access": state_str(s, "m.room.guest_access", "guest_access"),
        "history_visibility": state_str(s, "m.room.history_visibility", "history_visibility"),
        "state_events": found.state.len(),
        "room_type": found.state.iter()
            .find(|e| e.event.kind == "m.room.create")
            .and_then(|e| e.event.content.get("type").cloned()),
        "forgotten": false,
        // Not Synapse's: what hungryserv adds.
        "hungryserv": {
            "class": found.room.class,
            "appservice_id": found.room.appservice_id,
            "events": found.room.max_topo - found.room.min_topo + 1,
        },
    })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/members`: the joined members.
async fn room_members(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let found = admin_room(&state, &room).await?;
    let members: Vec<&String> = found.joined();
    Ok(Json(json!({ "total": members.len(), "members": members })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/state`: the current state, in the client format.
async fn room_state(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    use crate::rooms::event::{Related, Viewer, to_client};
    require_admin(&state, &auth).await?;
    let found = admin_room(&state, &room).await?;
    let viewer = Viewer {
        txn_scope: None,
        now_ms: crate::rooms::service::now_ms(),
    };
    let events: Vec<Value> = found
        .state
        .iter()
        .map(|e| {
            let related = Related {
                prev: e.prev.clone(),
                redacted_because: None,
            };
            to_client(&e.event, &related, viewer)
        })
        .collect();
    Ok(Json(json!({ "state": events })))
}

/// `GET /_synapse/admin/v1/rooms/{roomId}/messages`: `/messages` with its parameters, every
/// event shown whatever the admin's membership and the room's history visibility, as Synapse
/// does for its admin API (whose `dir` defaults to `f`).
async fn room_messages(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
    query: super::extract::Query,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let room = room_id(&room)?;
    let (page, filter) = super::read::page_request(&state, &room, &query, true).await?;
    let page = state
        .rooms
        .admin_messages(&auth.requester, &room, page, &filter)
        .await?;
    Ok(Json(super::read::page_json(page)))
}

/// The registration named in the path (a file's or a bridge registered at run time); 404
/// when there is none.
fn registration(
    state: &AppState,
    appservice_id: &str,
) -> Result<std::sync::Arc<crate::config::Registration>, ApiError> {
    if let Some(bridge) = state.bridges.get(appservice_id) {
        return Ok(bridge.registration.clone());
    }
    state
        .config
        .appservices
        .iter()
        .find(|r| r.id == appservice_id)
        .map(|r| std::sync::Arc::new(r.clone()))
        .ok_or_else(|| MatrixError::not_found(format!("Unknown appservice {appservice_id}")).into())
}

/// `GET /_hungryserv/admin/v1/appservices/{id}/rooms`: the local rooms its token created.
async fn appservice_rooms(
    State(state): State<AppState>,
    Path(appservice_id): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    registration(&state, &appservice_id)?;
    let rooms = state.deletions.appservice_rooms(&appservice_id).await?;
    Ok(Json(json!({ "total": rooms.len(), "rooms": rooms })))
}

/// `POST /_hungryserv/admin/v1/appservices/{id}/delete_rooms`: deletes every local room the
/// appservice created whose members are all its bot, its ghosts and users of this server
/// (what a bridge reset needs); lists the rooms refused and why.
async fn delete_appservice_rooms(
    State(state): State<AppState>,
    Path(appservice_id): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let registration = registration(&state, &appservice_id)?;
    Ok(Json(bulk_delete(&state, &registration, &auth).await?))
}

/// Deletes the rooms the appservice's token created (see [`delete_appservice_rooms`]):
/// `{"deleted": [...], "refused": [...]}`.
pub(super) async fn bulk_delete(
    state: &AppState,
    registration: &crate::config::Registration,
    auth: &Authed,
) -> Result<Value, ApiError> {
    use crate::rooms::admin::BulkOutcome;
    let outcomes = state
        .deletions
        .delete_appservice_rooms(
            registration,
            state.config.server_name.as_str(),
            &auth.requester.user_id,
        )
        .await?;
    let mut deleted = Vec::new();
    let mut refused = Vec::new();
    for outcome in outcomes {
        match outcome {
            BulkOutcome::Deleted { room_id, delete_id } => {
                deleted.push(json!({ "room_id": room_id, "delete_id": delete_id }));
            }
            BulkOutcome::Refused { room_id, reason } => {
                refused.push(json!({ "room_id": room_id, "reason": reason }));
            }
        }
    }
    Ok(json!({ "deleted": deleted, "refused": refused }))
}

/// Largest answer of Synapse's room list read (it is JSON about rooms, not events).
const MAX_ROOM_LIST: usize = 64 * 1024 * 1024;

/// `GET /_synapse/admin/v1/rooms`: Synapse answers (and refuses non-admins, in its words);
/// the local rooms are added to `total_rooms` and, on Synapse's last page (no
/// `next_batch`), to `rooms` — filtered by `search_term` like Synapse (room ID, name or
/// canonical alias, case-insensitive), not sorted by `order_by`.
pub async fn room_list(
    state: &AppState,
    request: http::Request<axum::body::Body>,
    peer: std::net::SocketAddr,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use http_body_util::BodyExt;
    let search = super::extract::Query::parse(request.uri().query())
        .get("search_term")
        .map(str::to_lowercase);
    let response = match state.synapse.forward(request, peer).await {
        Ok(response) => response,
        Err(err) => return err.into_response(),
    };
    if !response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_ROOM_LIST)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return MatrixError::bad_gateway("Synapse's room list could not be read")
                .into_response();
        }
    };
    let Ok(Value::Object(mut list)) = serde_json::from_slice::<Value>(&bytes) else {
        return http::Response::from_parts(parts, axum::body::Body::from(bytes));
    };
    let local = match state.deletions.list_rooms().await {
        Ok(rooms) => rooms,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let matches = |room: &crate::store::rooms::ListedRoom| {
        search.as_deref().is_none_or(|term| {
            [
                Some(&room.room_id),
                room.name.as_ref(),
                room.canonical_alias.as_ref(),
            ]
            .into_iter()
            .flatten()
            .any(|field| field.to_lowercase().contains(term))
        })
    };
    let local: Vec<Value> = local
        .iter()
        .filter(|room| matches(room))
        .map(|room| {
            json!({
                "room_id": room.room_id,
                "name": room.name,
                "canonical_alias": room.canonical_alias,
                "joined_members": room.joined_members,
                "joined_local_members": room.joined_members,
                "version": room.room_version,
                "creator": room.creator,
                "encryption": null,
                "federatable": false,
                "public": false,
                "join_rules": room.join_rules,
                "guest_access": null,
                "history_visibility": room.history_visibility,
                "state_events": room.state_events,
                "room_type": null,
            })
        })
        .collect();
    let count = local.len();
    if let Some(total) = list.get_mut("total_rooms")
        && let Some(n) = total.as_u64()
    {
        *total = json!(n + count as u64);
    }
    if !list.contains_key("next_batch")
        && let Some(Value::Array(rooms)) = list.get_mut("rooms")
    {
        rooms.extend(local);
    }
    parts.headers.remove(http::header::CONTENT_LENGTH);
    http::Response::from_parts(
        parts,
        axum::body::Body::from(Value::Object(list).to_string()),
    )
}

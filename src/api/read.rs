//! Reading local rooms: events, state, members, `/messages`, `/context`, relations,
//! `timestamp_to_event`, aliases.

use axum::Json;
use axum::extract::State;

use super::extract::Path;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{Authed, Query};
use super::send::room_id;
use crate::app::AppState;
use crate::error::MatrixError;
use crate::rooms::read::{EventFilter, Page, PageRequest, RelationsRequest, Token};
use crate::sync::token::SyncToken;

/// A pagination position: ours (`ht…`), or a sync token (`next_batch`/`prev_batch` of the
/// merged sync, which clients may use as a `from`), whose local half is resolved in the room.
async fn token(
    state: &AppState,
    room: &ruma::OwnedRoomId,
    query: &Query,
    key: &str,
) -> Result<Option<Token>, ApiError> {
    let Some(text) = query.get(key) else {
        return Ok(None);
    };
    if SyncToken::is_envelope(text) {
        let sync = SyncToken::parse(text).map_err(|_| {
            MatrixError::new(
                http::StatusCode::BAD_REQUEST,
                crate::error::ErrorCode::Unknown,
                format!("'{key}' parameter is invalid"),
            )
        })?;
        return Ok(Some(state.rooms.position_at(room, sync.local).await?));
    }
    // Synapse's `PaginationConfig` answer for a token it cannot read.
    Token::parse(text).map(Some).map_err(|_| {
        MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            crate::error::ErrorCode::Unknown,
            format!("'{key}' parameter is invalid"),
        )
        .into()
    })
}

fn filter(query: &Query) -> Result<EventFilter, ApiError> {
    match query.get("filter") {
        None => Ok(EventFilter::default()),
        Some(text) => {
            serde_json::from_str(text).map_err(|_| MatrixError::bad_json("Invalid filter").into())
        }
    }
}

/// Synapse's `parse_enum` answer for a `dir` that is neither `b` nor `f`.
const DIR_ONE_OF: &str = "Query parameter 'dir' must be one of ['b', 'f']";

fn direction(query: &Query, default_forwards: bool) -> Result<bool, ApiError> {
    match query.get("dir") {
        None => Ok(default_forwards),
        Some("f") => Ok(true),
        Some("b") => Ok(false),
        Some(_) => Err(MatrixError::invalid_param(DIR_ONE_OF).into()),
    }
}

/// `GET /rooms/{roomId}/event/{eventId}`.
pub async fn event(
    State(state): State<AppState>,
    Path((_, room, event_id)): Path<(String, String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        state
            .rooms
            .event(&auth.requester, &room_id(&room)?, &event_id)
            .await?,
    ))
}

/// `GET /rooms/{roomId}/state`.
pub async fn state(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::Array(
        state.rooms.state(&auth.requester, &room_id(&room)?).await?,
    )))
}

/// `GET /rooms/{roomId}/state/{type}/{stateKey}`: the content, or the event with `format=event`.
pub async fn state_event(
    State(state): State<AppState>,
    Path((_, room, event_type, state_key)): Path<(String, String, String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    get_state_event(state, room, event_type, state_key, auth, query).await
}

/// `GET /rooms/{roomId}/state/{type}` (empty state key).
pub async fn state_event_empty_key(
    State(state): State<AppState>,
    Path((_, room, event_type)): Path<(String, String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    get_state_event(state, room, event_type, String::new(), auth, query).await
}

async fn get_state_event(
    state: AppState,
    room: String,
    event_type: String,
    state_key: String,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let mut event = state
        .rooms
        .state_event(&auth.requester, &room_id(&room)?, &event_type, &state_key)
        .await?;
    if query.get("format") == Some("event") {
        return Ok(Json(event));
    }
    Ok(Json(
        event
            .get_mut("content")
            .map(Value::take)
            .unwrap_or_else(|| json!({})),
    ))
}

/// `GET /rooms/{roomId}/initialSync` (deprecated).
pub async fn room_initial_sync(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let limit = crate::rooms::initial_sync::limit(query.get("limit"))?;
    Ok(Json(
        state
            .rooms
            .room_initial_sync(&auth.requester, &auth.token, &room_id(&room)?, limit)
            .await?,
    ))
}

/// `GET /rooms/{roomId}/members`.
pub async fn members(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let room = room_id(&room)?;
    let at = token(&state, &room, &query, "at").await?;
    let chunk = state
        .rooms
        .members(
            &auth.requester,
            &room,
            at,
            query.get("membership"),
            query.get("not_membership"),
        )
        .await?;
    Ok(Json(json!({ "chunk": chunk })))
}

/// `GET /rooms/{roomId}/joined_members`.
pub async fn joined_members(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let joined = state
        .rooms
        .joined_members(&auth.requester, &room_id(&room)?)
        .await?;
    Ok(Json(json!({ "joined": joined })))
}

/// `GET /rooms/{roomId}/messages`.
pub async fn messages(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let room = room_id(&room)?;
    let (page, filter) = page_request(&state, &room, &query, false).await?;
    let page = state
        .rooms
        .messages(&auth.requester, &room, page, &filter)
        .await?;
    Ok(Json(page_json(page)))
}

/// The page a `/messages` request asks for (`from`, `to`, `dir`, `limit`, `filter`), for the
/// client API and Synapse's admin API alike. Without `dir` the client API reads backwards and
/// Synapse's admin API forwards.
pub(super) async fn page_request(
    state: &AppState,
    room: &ruma::OwnedRoomId,
    query: &Query,
    default_forwards: bool,
) -> Result<(PageRequest, EventFilter), ApiError> {
    let page = PageRequest {
        from: token(state, room, query, "from").await?,
        to: token(state, room, query, "to").await?,
        forwards: direction(query, default_forwards)?,
        limit: query.int("limit")?.unwrap_or(10),
    };
    Ok((page, filter(query)?))
}

/// A `/messages` answer: `chunk`, `start`, and `end` and `state` when there are any.
pub(super) fn page_json(page: Page) -> Value {
    let mut answer = json!({ "chunk": page.chunk, "start": page.start.to_string() });
    if let Some(end) = page.end {
        answer["end"] = json!(end.to_string());
    }
    if !page.state.is_empty() {
        answer["state"] = Value::Array(page.state);
    }
    answer
}

/// `GET /rooms/{roomId}/context/{eventId}`.
pub async fn context(
    State(state): State<AppState>,
    Path((_, room, event_id)): Path<(String, String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let limit = query.int("limit")?.unwrap_or(10).clamp(0, 100);
    Ok(Json(
        state
            .rooms
            .context(
                &auth.requester,
                &room_id(&room)?,
                &event_id,
                limit,
                &filter(&query)?,
            )
            .await?,
    ))
}

/// `GET /rooms/{roomId}/aliases`.
pub async fn aliases(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let aliases = state
        .rooms
        .aliases(&auth.requester, &room_id(&room)?)
        .await?;
    Ok(Json(json!({ "aliases": aliases })))
}

async fn relations_of(
    state: AppState,
    room: String,
    event_id: String,
    rel_type: Option<String>,
    event_type: Option<String>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let room = room_id(&room)?;
    let request = RelationsRequest {
        rel_type: rel_type.as_deref(),
        event_type: event_type.as_deref(),
        from: token(&state, &room, &query, "from").await?,
        to: token(&state, &room, &query, "to").await?,
        forwards: direction(&query, false)?,
        recurse: boolean(&query, "recurse")? || boolean(&query, "org.matrix.msc3981.recurse")?,
        limit: query.int("limit")?.unwrap_or(5),
    };
    let answer = state
        .rooms
        .relations(&auth.requester, &room, &event_id, request)
        .await?;
    Ok(Json(answer))
}

/// A boolean query parameter as Synapse's `parse_boolean` takes it: `true` or `false`.
fn boolean(query: &Query, key: &str) -> Result<bool, ApiError> {
    match query.get(key) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(MatrixError::invalid_param(format!(
            "Boolean query parameter {key:?} must be one of ['true', 'false']"
        ))
        .into()),
    }
}

/// `GET /v1/rooms/{roomId}/relations/{eventId}`.
pub async fn relations(
    State(state): State<AppState>,
    Path((_, room, event_id)): Path<(String, String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    relations_of(state, room, event_id, None, None, auth, query).await
}

/// `GET /v1/rooms/{roomId}/relations/{eventId}/{relType}`.
pub async fn relations_typed(
    State(state): State<AppState>,
    Path((_, room, event_id, rel_type)): Path<(String, String, String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    relations_of(state, room, event_id, Some(rel_type), None, auth, query).await
}

/// `GET /v1/rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`.
pub async fn relations_typed_event(
    State(state): State<AppState>,
    Path((_, room, event_id, rel_type, event_type)): Path<(String, String, String, String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    relations_of(
        state,
        room,
        event_id,
        Some(rel_type),
        Some(event_type),
        auth,
        query,
    )
    .await
}

/// `GET /v1/rooms/{roomId}/timestamp_to_event?ts=&dir=`.
pub async fn timestamp_to_event(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    query: Query,
) -> Result<Json<Value>, ApiError> {
    let ts = query.int("ts")?.ok_or_else(|| {
        MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            crate::error::ErrorCode::MissingParam,
            "Missing required integer query parameter ts",
        )
    })?;
    let forwards = match query.get("dir") {
        Some("f") => true,
        Some("b") => false,
        _ => return Err(MatrixError::invalid_param(DIR_ONE_OF).into()),
    };
    Ok(Json(
        state
            .rooms
            .timestamp_to_event(&auth.requester, &room_id(&room)?, ts, forwards)
            .await?,
    ))
}

//! Receipts, read markers, typing, room account data and tags of local rooms. Validation and
//! error texts as Synapse's servlets give them (`receipts.py`, `read_marker.py`, `typing` in
//! `room.py`, `account_data.py`, `tags.py`).

use axum::Json;
use axum::extract::State;

use super::extract::Path;
use serde_json::{Map, Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject};
use super::send::room_id;
use crate::app::AppState;
use crate::error::{ErrorCode, MatrixError};
use crate::rooms::room_data::{FULLY_READ, Marker, READ, READ_PRIVATE};

/// The Beeper extra object that may accompany each marker of `/read_markers`.
const EXTRAS: [(&str, &str); 3] = [
    (READ, "com.beeper.read.extra"),
    (READ_PRIVATE, "com.beeper.read.private.extra"),
    (FULLY_READ, "com.beeper.fully_read.extra"),
];

/// `com.beeper.allow_backward` (MSC4446): a boolean when present.
fn allow_backward(body: &Map<String, Value>) -> Result<bool, ApiError> {
    match body.get("com.beeper.allow_backward") {
        None => Ok(false),
        Some(Value::Bool(allow)) => Ok(*allow),
        Some(_) => {
            Err(MatrixError::invalid_param("com.beeper.allow_backward must be a boolean.").into())
        }
    }
}

/// An extra object, if the body has one under `key`.
fn extra(body: &Map<String, Value>, key: &str) -> Option<Value> {
    body.get(key).filter(|value| value.is_object()).cloned()
}

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub async fn receipt(
    State(state): State<AppState>,
    Path((_, room, receipt_type, event_id)): Path<(String, String, String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    if !event_id.starts_with('$') {
        return Err(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            ErrorCode::Unknown,
            "A valid room ID and event ID must be specified",
        )
        .into());
    }
    let kind = match receipt_type.as_str() {
        READ => READ,
        READ_PRIVATE => READ_PRIVATE,
        FULLY_READ => FULLY_READ,
        _ => {
            return Err(MatrixError::new(
                http::StatusCode::BAD_REQUEST,
                ErrorCode::Unknown,
                format!("Receipt type must be {READ}, {READ_PRIVATE}, {FULLY_READ}"),
            )
            .into());
        }
    };
    let allow_backward = allow_backward(&body)?;
    if allow_backward && kind != FULLY_READ {
        return Err(MatrixError::invalid_param(format!(
            "com.beeper.allow_backward is only allowed to be true for {FULLY_READ}."
        ))
        .into());
    }
    let thread_id = match body.get("thread_id") {
        None => String::new(),
        Some(Value::String(thread)) if !thread.is_empty() => {
            if kind == FULLY_READ {
                return Err(MatrixError::invalid_param(format!(
                    "thread_id is not compatible with {FULLY_READ} receipts."
                ))
                .into());
            }
            thread.clone()
        }
        Some(_) => {
            return Err(
                MatrixError::invalid_param("thread_id field must be a non-empty string").into(),
            );
        }
    };
    let marker = Marker {
        kind,
        event_id,
        thread_id,
        extra: None,
    };
    state
        .rooms
        .read_markers(&auth.requester, &room_id, vec![marker], allow_backward)
        .await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/read_markers`: `m.fully_read`, `m.read`, `m.read.private`, each with
/// its optional Beeper extra. Unknown keys are ignored (as Synapse does).
pub async fn read_markers(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let allow_backward = allow_backward(&body)?;
    let mut markers = Vec::new();
    for (kind, extra_key) in EXTRAS {
        match body.get(kind) {
            None | Some(Value::Null) => {}
            Some(Value::String(event_id)) if event_id.is_empty() => {}
            Some(Value::String(event_id)) => markers.push(Marker {
                kind,
                event_id: event_id.clone(),
                thread_id: String::new(),
                extra: extra(&body, extra_key),
            }),
            Some(_) => {
                return Err(MatrixError::bad_json(format!("'{kind}' must be an event ID")).into());
            }
        }
    }
    state
        .rooms
        .read_markers(&auth.requester, &room_id, markers, allow_backward)
        .await?;
    Ok(Json(json!({})))
}

/// `PUT /rooms/{roomId}/typing/{userId}`: `{"typing": bool, "timeout": ms}`.
pub async fn typing(
    State(state): State<AppState>,
    Path((_, room, user_id)): Path<(String, String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let typing = match body.get("typing") {
        Some(Value::Bool(typing)) => *typing,
        Some(_) => return Err(MatrixError::bad_json("'typing' must be a boolean").into()),
        None => {
            return Err(MatrixError::new(
                http::StatusCode::BAD_REQUEST,
                ErrorCode::MissingParam,
                "Missing parameter: typing",
            )
            .into());
        }
    };
    let timeout = match body.get("timeout") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .ok_or_else(|| MatrixError::bad_json("'timeout' must be a positive integer"))?,
        ),
    };
    state
        .rooms
        .set_typing(&auth.requester, &room_id, &user_id, typing, timeout)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /user/{userId}/rooms/{roomId}/account_data/{type}`.
pub async fn get_account_data(
    State(state): State<AppState>,
    Path((_, user_id, room, kind)): Path<(String, String, String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    Ok(Json(
        state
            .rooms
            .room_account_data(&auth.requester, &user_id, &room_id, &kind)
            .await?,
    ))
}

/// `PUT /user/{userId}/rooms/{roomId}/account_data/{type}`.
pub async fn put_account_data(
    State(state): State<AppState>,
    Path((_, user_id, room, kind)): Path<(String, String, String, String)>,
    auth: Authed,
    JsonObject(content): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    state
        .rooms
        .set_room_account_data(&auth.requester, &user_id, &room_id, &kind, content)
        .await?;
    Ok(Json(json!({})))
}

/// `GET /user/{userId}/rooms/{roomId}/tags`.
pub async fn tags(
    State(state): State<AppState>,
    Path((_, user_id, room)): Path<(String, String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    Ok(Json(
        state
            .rooms
            .tags(&auth.requester, &user_id, &room_id)
            .await?,
    ))
}

/// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}`: the body is the tag's content.
pub async fn put_tag(
    State(state): State<AppState>,
    Path((_, user_id, room, tag)): Path<(String, String, String, String)>,
    auth: Authed,
    JsonObject(content): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    state
        .rooms
        .set_tag(&auth.requester, &user_id, &room_id, &tag, Some(content))
        .await?;
    Ok(Json(json!({})))
}

/// `DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub async fn delete_tag(
    State(state): State<AppState>,
    Path((_, user_id, room, tag)): Path<(String, String, String, String)>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    state
        .rooms
        .set_tag(&auth.requester, &user_id, &room_id, &tag, None)
        .await?;
    Ok(Json(json!({})))
}

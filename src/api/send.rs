//! Sending into local rooms: `PUT /send/{type}/{txnId}`, `PUT /state/{type}/{stateKey}`,
//! `PUT /redact/{eventId}/{txnId}`, and the two POSTs without a transaction ID.

use axum::Json;
use axum::extract::State;

use super::extract::Path;
use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject, optional_str};
use crate::app::AppState;
use crate::error::MatrixError;
use crate::rooms::service::{BatchSend, MembershipChange, NewEvent, origin_ts};

pub(super) fn room_id(raw: &str) -> Result<OwnedRoomId, ApiError> {
    OwnedRoomId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid room ID: {raw}")).into())
}

pub(super) fn event_id(raw: &str) -> Result<OwnedEventId, ApiError> {
    OwnedEventId::try_from(raw)
        .map_err(|_| MatrixError::invalid_param(format!("Invalid event ID: {raw}")).into())
}

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`. An `m.room.redaction` sent this way
/// names its target in `content.redacts` (room version 11 style, MSC2174), which is honoured.
pub async fn send(
    State(state): State<AppState>,
    Path((_, room, event_type, txn_id)): Path<(String, String, String, String)>,
    auth: Authed,
    JsonObject(content): JsonObject,
) -> Result<Json<Value>, ApiError> {
    send_event(state, room, event_type, Some(txn_id), auth, content).await
}

/// `POST /rooms/{roomId}/send/{eventType}`: Synapse registers every transaction endpoint
/// without its `{txnId}` for POST too; such a send is not deduplicated.
pub async fn send_without_txn(
    State(state): State<AppState>,
    Path((_, room, event_type)): Path<(String, String, String)>,
    auth: Authed,
    JsonObject(content): JsonObject,
) -> Result<Json<Value>, ApiError> {
    send_event(state, room, event_type, None, auth, content).await
}

async fn send_event(
    state: AppState,
    room: String,
    event_type: String,
    txn_id: Option<String>,
    auth: Authed,
    content: serde_json::Map<String, Value>,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let redacts = match event_type.as_str() {
        "m.room.redaction" => optional_str(&content, "redacts")?
            .map(|id| event_id(&id))
            .transpose()?,
        _ => None,
    };
    let ts = origin_ts(&auth.requester, auth.ts);
    let event_id = state
        .rooms
        .append_one(
            &auth.requester,
            &room_id,
            NewEvent {
                kind: event_type,
                content,
                ts,
                txn_id,
                redacts,
                ..NewEvent::default()
            },
        )
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`.
pub async fn put_state(
    State(state): State<AppState>,
    Path((_, room, event_type, state_key)): Path<(String, String, String, String)>,
    auth: Authed,
    JsonObject(content): JsonObject,
) -> Result<Json<Value>, ApiError> {
    set_state(state, room, event_type, state_key, auth, content).await
}

/// `PUT /rooms/{roomId}/state/{eventType}` (empty state key).
pub async fn put_state_empty_key(
    State(state): State<AppState>,
    Path((_, room, event_type)): Path<(String, String, String)>,
    auth: Authed,
    JsonObject(content): JsonObject,
) -> Result<Json<Value>, ApiError> {
    set_state(state, room, event_type, String::new(), auth, content).await
}

async fn set_state(
    state: AppState,
    room: String,
    event_type: String,
    state_key: String,
    auth: Authed,
    content: serde_json::Map<String, Value>,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let ts = origin_ts(&auth.requester, auth.ts);
    let event_id = if event_type == "m.room.member" {
        // Membership through the state API goes through the same rules as /invite, /kick…
        let target = ruma::OwnedUserId::try_from(state_key.as_str())
            .map_err(|_| MatrixError::invalid_param(format!("Invalid user ID: {state_key}")))?;
        let membership = super::extract::required_str(&content, "membership")?.to_owned();
        let mut extra = content.clone();
        extra.remove("membership");
        state
            .rooms
            .set_membership(
                &auth.requester,
                &auth.token,
                &room_id,
                MembershipChange {
                    target: &target,
                    membership: &membership,
                    reason: None,
                    extra,
                    ts,
                },
            )
            .await?
    } else {
        state
            .rooms
            .append_one(
                &auth.requester,
                &room_id,
                NewEvent {
                    kind: event_type,
                    state_key: Some(state_key),
                    content,
                    ts,
                    ..NewEvent::default()
                },
            )
            .await?
    };
    Ok(Json(json!({ "event_id": event_id })))
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.
pub async fn redact(
    State(state): State<AppState>,
    Path((_, room, target, txn_id)): Path<(String, String, String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    redact_event(state, room, target, Some(txn_id), auth, body).await
}

/// `POST /rooms/{roomId}/redact/{eventId}` (no transaction ID, as Synapse allows).
pub async fn redact_without_txn(
    State(state): State<AppState>,
    Path((_, room, target)): Path<(String, String, String)>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    redact_event(state, room, target, None, auth, body).await
}

async fn redact_event(
    state: AppState,
    room: String,
    target: String,
    txn_id: Option<String>,
    auth: Authed,
    body: serde_json::Map<String, Value>,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let target = event_id(&target)?;
    // Synapse takes the whole body as the redaction's content (a `reason` of any type
    // included), and also puts the target in it (MSC2174), whatever the room version.
    let mut content = body;
    content.insert("redacts".into(), json!(target));
    let ts = origin_ts(&auth.requester, auth.ts);
    let event_id = state
        .rooms
        .append_one(
            &auth.requester,
            &room_id,
            NewEvent {
                kind: "m.room.redaction".into(),
                content,
                ts,
                txn_id,
                redacts: Some(target),
                ..NewEvent::default()
            },
        )
        .await?;
    Ok(Json(json!({ "event_id": event_id })))
}

/// `POST /_matrix/client/unstable/com.beeper.backfill/rooms/{roomId}/batch_send`.
pub async fn batch_send(
    State(state): State<AppState>,
    Path(room): Path<String>,
    auth: Authed,
    JsonObject(mut body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    let room_id = room_id(&room)?;
    let mark_read_by = optional_str(&body, "mark_read_by")?
        .map(|user| {
            ruma::OwnedUserId::try_from(user.as_str())
                .map_err(|_| MatrixError::invalid_param(format!("Invalid user ID: {user}")))
        })
        .transpose()?;
    // Taken, not cloned: the events are most of a batch body.
    let events = match body.remove("events") {
        Some(Value::Array(events)) => events,
        _ => return Err(MatrixError::bad_json("'events' must be an array").into()),
    };
    let flag = |key: &str, default: bool| -> Result<bool, ApiError> {
        match body.get(key) {
            None => Ok(default),
            Some(Value::Bool(value)) => Ok(*value),
            Some(_) => Err(MatrixError::bad_json(format!("'{key}' must be a boolean")).into()),
        }
    };
    let request = BatchSend {
        forward: flag("forward", false)?,
        forward_if_no_messages: flag("forward_if_no_messages", false)?,
        send_notification: flag("send_notification", false)?,
        mark_read_by,
        events,
    };
    let event_ids = state
        .rooms
        .batch_send(&auth.requester, &room_id, request)
        .await?;
    Ok(Json(json!({ "event_ids": event_ids })))
}

//! Per-user data of local rooms that is not an event: read receipts, read markers
//! (`m.fully_read`), room account data and tags — written on the room data stream (migration
//! 0008, [`store::room_data`]) — and typing ([`super::typing`], in memory).
//!
//! Checks and error texts follow Synapse's servlets (`receipts.py`, `read_marker.py`,
//! `account_data.py`, `tags.py`, `typing.py`). Each write is one short transaction that takes
//! the next room data position and publishes it after commit, so waiting syncs wake at once.
//!
//! Beeper's extras (`com.beeper.read.extra`, `com.beeper.read.private.extra`,
//! `com.beeper.fully_read.extra`, objects such as `{"ts": …, "fi.mau.double_puppet_source": …}`)
//! are stored with the receipt or marker and returned verbatim: their fields are merged into
//! the receipt's data (so a bridge's remote `ts` is the one clients see) or into the
//! `m.fully_read` content.

use std::time::Duration;

use ruma::OwnedRoomId;
use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::RoomError;
use super::service::{Rooms, now_ms};
use crate::auth::requester::Requester;
use crate::store::{self, receipts::Receipt};

/// Longest tag name in bytes (the spec's limit, enforced by Synapse).
const MAX_TAG_LENGTH: usize = 255;
/// Synapse's default typing timeout when the body names none.
const DEFAULT_TYPING_TIMEOUT: Duration = Duration::from_secs(30);

/// The receipt types of `/receipt/{type}/…` and the keys of `/read_markers`.
pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";
pub const FULLY_READ: &str = "m.fully_read";

/// One marker of a `/read_markers` (or `/receipt`) request.
#[derive(Debug, Clone)]
pub struct Marker {
    /// `m.read`, `m.read.private` or `m.fully_read`.
    pub kind: &'static str,
    pub event_id: String,
    /// `""` for unthreaded (receipts only).
    pub thread_id: String,
    /// The Beeper extra object sent with it.
    pub extra: Option<Value>,
}

/// The content of an `m.receipt` event: event ID → receipt type → user → data (`ts`, the
/// thread, and the receipt's Beeper extras merged in).
pub fn receipt_content<'a>(receipts: impl IntoIterator<Item = &'a Receipt>) -> Map<String, Value> {
    let mut content = Map::new();
    for receipt in receipts {
        let mut entry = Map::new();
        entry.insert("ts".into(), json!(receipt.ts));
        if let Some(Value::Object(extra)) = &receipt.extra {
            entry.extend(extra.clone());
        }
        if !receipt.thread_id.is_empty() {
            entry.insert("thread_id".into(), json!(receipt.thread_id));
        }
        let by_type = content
            .entry(receipt.event_id.clone())
            .or_insert_with(|| json!({}));
        by_type[receipt.kind.as_str()][receipt.user_id.as_str()] = Value::Object(entry);
    }
    content
}

impl Rooms {
    /// The room exists (and is not deleted), or 404 as Synapse answers for an unknown room.
    async fn known_room(
        &self,
        conn: &mut PgConnection,
        room_id: &OwnedRoomId,
    ) -> Result<(), RoomError> {
        match store::rooms::get(conn, room_id.as_str()).await? {
            Some(_) => Ok(()),
            None => Err(RoomError::NotFound(format!("Unknown room {room_id}"))),
        }
    }

    /// Stores read markers and receipts, each moving only forward (`m.fully_read` may move
    /// back with `allow_backward`, MSC4446). As in Synapse, a receipt for an event the user
    /// cannot see (or that is not in the room) is dropped without an error; a read marker for
    /// an event that is not in the room is 404.
    pub async fn read_markers(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        markers: Vec<Marker>,
        allow_backward: bool,
    ) -> Result<(), RoomError> {
        if markers.is_empty() {
            return Ok(());
        }
        let user = requester.user_id.as_str();
        let mut conn = self.conn().await?;
        // Synapse checks a threaded receipt's event against its thread before anything else.
        for marker in markers.iter().filter(|m| !m.thread_id.is_empty()) {
            let threads =
                store::events::receipt_threads(&mut conn, room_id.as_str(), &marker.event_id)
                    .await?;
            if !threads.allows(&marker.thread_id) {
                return Err(RoomError::InvalidParam(format!(
                    "event_id {} is not related to thread {}",
                    marker.event_id, marker.thread_id
                )));
            }
        }
        self.known_room(&mut conn, room_id).await?;
        // Synapse reads the event as the user first (`EventHandler.get_event`): an event
        // they may not see, in a room they were never in too, is its 403.
        let refused =
            || RoomError::Forbidden("You don't have permission to access that event.".into());
        let (reader, _) = match self.reader(&mut conn, requester, room_id).await {
            Ok(reader) => reader,
            Err(RoomError::Forbidden(_)) => return Err(refused()),
            Err(err) => return Err(err),
        };
        let mut receipts = Vec::new();
        let mut fully_read = None;
        for marker in markers {
            let event = store::events::by_id(&mut conn, room_id.as_str(), &marker.event_id).await?;
            let Some(event) = event else {
                if marker.kind == FULLY_READ {
                    return Err(RoomError::UnknownEvent(format!(
                        "Event {} not found",
                        marker.event_id
                    )));
                }
                // Synapse answers 200 and stores nothing for a receipt of an unknown event.
                continue;
            };
            if marker.kind == FULLY_READ {
                fully_read = Some((marker, event.event.topo));
                continue;
            }
            if !Self::visible(&reader, requester, &event.event) {
                return Err(refused());
            }
            receipts.push(Receipt {
                room_id: room_id.to_string(),
                user_id: user.to_owned(),
                kind: marker.kind.to_owned(),
                thread_id: marker.thread_id,
                event_id: marker.event_id,
                stream: 0,
                ts: now_ms(),
                extra: marker.extra,
            });
        }

        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(store::StoreError::from)?;
        let position = store::room_data::next_position(&mut tx).await?;
        for receipt in &mut receipts {
            receipt.stream = position;
        }
        let public = receipts.iter().any(|r| r.kind == READ);
        let mut wrote =
            receipts.is_empty() || store::receipts::upsert(&mut tx, &receipts).await? > 0;
        let mut private = receipts.iter().any(|r| r.kind == READ_PRIVATE);
        if let Some((marker, topo)) = fully_read {
            let current =
                store::room_data::account_data(&mut tx, user, room_id.as_str(), FULLY_READ).await?;
            let current_topo = match current
                .as_ref()
                .and_then(|c| c.get("event_id"))
                .and_then(Value::as_str)
            {
                Some(id) => store::events::by_id(&mut tx, room_id.as_str(), id)
                    .await?
                    .map(|e| e.event.topo),
                None => None,
            };
            if allow_backward || current_topo.is_none_or(|current| topo > current) {
                let mut content = Map::new();
                if let Some(Value::Object(extra)) = marker.extra {
                    content.extend(extra);
                }
                content.insert("event_id".into(), json!(marker.event_id));
                store::room_data::put_account_data(
                    &mut tx,
                    user,
                    room_id.as_str(),
                    FULLY_READ,
                    &Value::Object(content),
                    position,
                )
                .await?;
                wrote = true;
                private = true;
            }
        }
        if !wrote {
            // Every receipt was behind the stored one: roll back, nothing to publish.
            return Ok(());
        }
        tx.commit().await.map_err(store::StoreError::from)?;
        let rooms = if public {
            vec![room_id.to_string()]
        } else {
            Vec::new()
        };
        let users = if private {
            vec![user.to_owned()]
        } else {
            Vec::new()
        };
        self.notifier.room_data_committed(position, &rooms, &users);
        Ok(())
    }

    /// `GET /user/{userId}/rooms/{roomId}/account_data/{type}`.
    pub async fn room_account_data(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: &OwnedRoomId,
        kind: &str,
    ) -> Result<Value, RoomError> {
        if requester.user_id.as_str() != user_id {
            return Err(RoomError::Forbidden(
                "Cannot get account data for other users.".into(),
            ));
        }
        let mut conn = self.conn().await?;
        store::room_data::account_data(&mut conn, user_id, room_id.as_str(), kind)
            .await?
            .ok_or_else(|| RoomError::NotFound("Room account data not found".into()))
    }

    /// `PUT /user/{userId}/rooms/{roomId}/account_data/{type}`.
    pub async fn set_room_account_data(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: &OwnedRoomId,
        kind: &str,
        content: Map<String, Value>,
    ) -> Result<(), RoomError> {
        if requester.user_id.as_str() != user_id {
            return Err(RoomError::Forbidden(
                "Cannot add account data for other users.".into(),
            ));
        }
        match kind {
            FULLY_READ => {
                return Err(RoomError::MethodNotAllowed(
                    "Cannot set m.fully_read through this API. Use /rooms/!roomId:server.name/read_markers"
                        .into(),
                ));
            }
            "m.push_rules" => {
                return Err(RoomError::MethodNotAllowed(
                    "Cannot set m.push_rules through this API. Use /pushrules".into(),
                ));
            }
            _ => {}
        }
        let mut conn = self.conn().await?;
        self.known_room(&mut conn, room_id).await?;
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(store::StoreError::from)?;
        let position = store::room_data::next_position(&mut tx).await?;
        store::room_data::put_account_data(
            &mut tx,
            user_id,
            room_id.as_str(),
            kind,
            &Value::Object(content),
            position,
        )
        .await?;
        tx.commit().await.map_err(store::StoreError::from)?;
        self.notifier
            .room_data_committed(position, &[], &[user_id.to_owned()]);
        Ok(())
    }

    /// `GET /user/{userId}/rooms/{roomId}/tags`: `{"tags": {...}}`.
    pub async fn tags(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: &OwnedRoomId,
    ) -> Result<Value, RoomError> {
        if requester.user_id.as_str() != user_id {
            return Err(RoomError::Forbidden(
                "Cannot get tags for other users.".into(),
            ));
        }
        let mut conn = self.conn().await?;
        let stored = store::room_data::account_data(&mut conn, user_id, room_id.as_str(), "m.tag")
            .await?
            .unwrap_or_else(|| json!({ "tags": {} }));
        Ok(stored)
    }

    /// `PUT` (`Some(content)`) or `DELETE` (`None`) `/user/{userId}/rooms/{roomId}/tags/{tag}`.
    pub async fn set_tag(
        &self,
        requester: &Requester,
        user_id: &str,
        room_id: &OwnedRoomId,
        tag: &str,
        content: Option<Map<String, Value>>,
    ) -> Result<(), RoomError> {
        if requester.user_id.as_str() != user_id {
            return Err(RoomError::Forbidden(
                "Cannot add tags for other users.".into(),
            ));
        }
        let mut conn = self.conn().await?;
        if content.is_some() {
            if tag.len() > MAX_TAG_LENGTH {
                return Err(RoomError::InvalidParam(
                    "tag parameter's length is over 255 bytes".into(),
                ));
            }
            if store::rooms::membership(&mut conn, room_id.as_str(), user_id)
                .await?
                .is_none()
            {
                return Err(RoomError::Forbidden(format!(
                    "User {user_id} has no membership in room {room_id}"
                )));
            }
        }
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(store::StoreError::from)?;
        // Taken first: its lock keeps other writers out of the read-modify-write below.
        let position = store::room_data::next_position(&mut tx).await?;
        let mut tags = store::room_data::account_data(&mut tx, user_id, room_id.as_str(), "m.tag")
            .await?
            .and_then(|stored| stored.get("tags").and_then(Value::as_object).cloned())
            .unwrap_or_default();
        let changed = match content {
            Some(content) => {
                tags.insert(tag.to_owned(), Value::Object(content));
                true
            }
            None => tags.remove(tag).is_some(),
        };
        if !changed {
            return Ok(());
        }
        let stored = json!({ "tags": tags });
        store::room_data::put_account_data(
            &mut tx,
            user_id,
            room_id.as_str(),
            "m.tag",
            &stored,
            position,
        )
        .await?;
        tx.commit().await.map_err(store::StoreError::from)?;
        self.notifier
            .room_data_committed(position, &[], &[user_id.to_owned()]);
        Ok(())
    }

    /// `PUT /rooms/{roomId}/typing/{userId}`: `timeout` `Some` to start (default 30 s, capped),
    /// `None` to stop.
    pub async fn set_typing(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        user_id: &str,
        typing: bool,
        timeout_ms: Option<u64>,
    ) -> Result<(), RoomError> {
        if requester.user_id.as_str() != user_id {
            return Err(RoomError::NotYours(
                "Cannot set another user's typing state".into(),
            ));
        }
        let mut conn = self.conn().await?;
        let joined = store::rooms::membership(&mut conn, room_id.as_str(), user_id)
            .await?
            .is_some_and(|(membership, _)| membership == "join");
        if !joined {
            return Err(RoomError::Forbidden(format!(
                "User {user_id} not in room {room_id}"
            )));
        }
        let timeout =
            typing.then(|| timeout_ms.map_or(DEFAULT_TYPING_TIMEOUT, Duration::from_millis));
        self.typing.set(room_id.as_str(), user_id, timeout);
        Ok(())
    }
}

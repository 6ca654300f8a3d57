//! `GET /rooms/{roomId}/initialSync` (deprecated, still in the spec and used by some clients
//! and tests) for a local room, answered as Synapse's `room_initial_sync` answers it.
//!
//! A member gets the room's current state, the latest `limit` (10 by default) events they may
//! see, oldest first, with `start` (a `/messages` token before them) and `end` (the room's end),
//! the public receipts (and their own private ones), and their room account data (tags first,
//! as `m.tag`). A user who left gets the state at their leave and the events up to it, and no
//! receipts; `membership` says which. Presence is Synapse's to know: the list is empty (Synapse
//! fills it for the joined members when presence is enabled). Someone never in the room gets
//! what `/messages` gives them (403 `M_FORBIDDEN`).

use ruma::OwnedRoomId;
use serde_json::{Value, json};

use super::RoomError;
use super::read::PageRequest;
use super::room_data::receipt_content;
use super::service::Rooms;
use super::visibility::Reach;
use crate::auth::requester::Requester;
use crate::rooms::read::EventFilter;
use crate::store;

/// Events in `messages` when the request gives no `limit` (Synapse's default).
pub const DEFAULT_LIMIT: i64 = 10;

impl Rooms {
    /// `GET /rooms/{roomId}/initialSync`.
    pub async fn room_initial_sync(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        limit: i64,
    ) -> Result<Value, RoomError> {
        let user = requester.user_id.as_str();
        let (membership, joined) = {
            let mut conn = self.conn().await?;
            let (reader, reach) = self.reader(&mut conn, requester, room_id).await?;
            let membership = reader
                .memberships
                .last()
                .map_or_else(|| "leave".to_owned(), |(_, m)| m.clone());
            (membership, matches!(reach, Reach::Everything))
        };
        let state = self.state(requester, room_id).await?;
        let page = PageRequest {
            from: None,
            to: None,
            forwards: false,
            limit,
        };
        let page = self
            .messages(requester, room_id, page, &EventFilter::default())
            .await?;
        let mut chunk = page.chunk;
        chunk.reverse();
        let start = page.end.unwrap_or(page.start);
        let end = page.start;
        let mut conn = self.conn().await?;
        let receipts = if joined {
            let upto = store::room_data::current_position(&mut conn).await?;
            let rooms = [(room_id.to_string(), 0)];
            let receipts = store::receipts::of_rooms(&mut conn, &rooms, upto).await?;
            let visible = receipts
                .get(room_id.as_str())
                .into_iter()
                .flatten()
                .filter(|r| r.kind != "m.read.private" || r.user_id == user);
            let content = receipt_content(visible);
            if content.is_empty() {
                Vec::new()
            } else {
                vec![json!({ "type": "m.receipt", "room_id": room_id, "content": content })]
            }
        } else {
            Vec::new()
        };
        let upto = store::room_data::current_position(&mut conn).await?;
        let rooms = [(room_id.to_string(), 0)];
        let mut account_data: Vec<(String, Value)> =
            store::room_data::account_data_of_rooms(&mut conn, user, &rooms, upto)
                .await?
                .remove(room_id.as_str())
                .unwrap_or_default();
        // Tags first, and only when there are some (Synapse reads them apart).
        account_data.sort_by_key(|(kind, _)| kind != "m.tag");
        let account_data: Vec<Value> = account_data
            .into_iter()
            .filter(|(kind, content)| {
                kind != "m.tag"
                    || content
                        .get("tags")
                        .and_then(Value::as_object)
                        .is_some_and(|tags| !tags.is_empty())
            })
            .map(|(kind, content)| json!({ "type": kind, "content": content }))
            .collect();
        Ok(json!({
            "room_id": room_id,
            "membership": membership,
            "messages": {
                "chunk": chunk,
                "start": start.to_string(),
                "end": end.to_string(),
            },
            "state": state,
            "presence": [],
            "receipts": receipts,
            "account_data": account_data,
        }))
    }
}

/// The `limit` query parameter of a room `/initialSync`.
pub fn limit(param: Option<&str>) -> Result<i64, RoomError> {
    match param {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text.parse::<i64>().map(|n| n.clamp(0, 1000)).map_err(|_| {
            RoomError::InvalidParam("Query parameter \"limit\" must be an integer".into())
        }),
    }
}

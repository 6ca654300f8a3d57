//! `GET /rooms/{roomId}/initialSync` (deprecated, still in the spec and used by some clients
//! and tests) for a local room, answered as Synapse's `room_initial_sync` answers it.
//!
//! A member gets the room's current state, the latest `limit` (10 by default) events they may
//! see, oldest first, with `start` (a `/messages` token before them) and `end` (the room's end),
//! the public receipts (and their own private ones), and their room account data (tags first,
//! as `m.tag`). A user who left gets the state at their leave and the events up to it, and no
//! receipts; `membership` says which. Someone never in the room gets what `/messages` gives
//! them (403 `M_FORBIDDEN`).
//!
//! Presence is Synapse's to know. Synapse lists every joined member's presence here, without
//! asking whether the requester may see it; hungryserv asks Synapse for each joined member's
//! status with the requester's token (`GET /presence/{userId}/status`, concurrently, at most
//! [`MAX_PRESENCE`] members), so a member the requester shares no Synapse room with is left
//! out (Synapse answers that request 403: it does not know local rooms), as is everyone when
//! presence is off or Synapse does not answer. A member met in a Synapse room too is listed
//! as in a Synapse room. A user who left gets none, as from Synapse.

use ruma::OwnedRoomId;
use serde_json::{Value, json};

use super::RoomError;
use super::event::{Related, Viewer};
use super::read::PageRequest;
use super::room_data::receipt_content;
use super::service::Rooms;
use super::visibility::Reach;
use crate::auth::requester::Requester;
use crate::rooms::read::EventFilter;
use crate::store;

/// Events in `messages` when the request gives no `limit` (Synapse's default).
pub const DEFAULT_LIMIT: i64 = 10;

/// Joined members whose presence is asked of Synapse at most (one request each).
pub const MAX_PRESENCE: usize = 100;

impl Rooms {
    /// `GET /rooms/{roomId}/initialSync`.
    pub async fn room_initial_sync(
        &self,
        requester: &Requester,
        token: &str,
        room_id: &OwnedRoomId,
        limit: i64,
    ) -> Result<Value, RoomError> {
        let (mut answer, joined) = self.room_snapshot(requester, room_id, limit).await?;
        let presence = if joined {
            let state = answer
                .get("state")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            self.members_presence(requester, token, &state).await
        } else {
            Vec::new()
        };
        if let Some(answer) = answer.as_object_mut() {
            answer.insert("presence".into(), Value::Array(presence));
        }
        Ok(answer)
    }

    /// The local rooms' part of the global `GET /initialSync`: the entries of the user's
    /// joined and invited rooms (and rooms they left, with `archived`) of the classes
    /// `available` lets through, and the receipts of the joined ones, in Synapse's shapes
    /// (`_snapshot_all_rooms`). Local rooms are never in a public directory: `visibility` is
    /// `private`.
    pub async fn initial_sync_rooms(
        &self,
        requester: &Requester,
        limit: i64,
        archived: bool,
        available: impl Fn(&str) -> bool,
    ) -> Result<(Vec<Value>, Vec<Value>), RoomError> {
        let user = requester.user_id.as_str();
        let mut wanted = vec!["join", "invite"];
        if archived {
            wanted.push("leave");
        }
        let mut rooms = Vec::new();
        let mut receipts = Vec::new();
        for membership in wanted {
            let ids = {
                let mut conn = self.conn().await?;
                store::rooms::rooms_with_membership(&mut conn, user, membership).await?
            };
            for room in ids.into_iter().filter(|room| available(room)) {
                let Ok(room_id) = OwnedRoomId::try_from(room) else {
                    continue;
                };
                if membership == "invite" {
                    rooms.push(self.invite_entry(user, &room_id).await?);
                    continue;
                }
                let (mut entry, _) = match self.room_snapshot(requester, &room_id, limit).await {
                    Ok(snapshot) => snapshot,
                    // As Synapse: a room that cannot be read is listed with what is known.
                    Err(err) => {
                        tracing::warn!(%room_id, error = %err, "initialSync: room not read");
                        (
                            json!({ "room_id": room_id, "membership": membership }),
                            false,
                        )
                    }
                };
                if let Some(entry) = entry.as_object_mut() {
                    if let Some(Value::Array(room_receipts)) = entry.remove("receipts") {
                        receipts.extend(room_receipts);
                    }
                    entry.insert("visibility".into(), json!("private"));
                }
                rooms.push(entry);
            }
        }
        Ok((rooms, receipts))
    }

    /// An invited room's entry: the inviter and the invite event.
    async fn invite_entry(&self, user: &str, room_id: &OwnedRoomId) -> Result<Value, RoomError> {
        let mut conn = self.conn().await?;
        let invite = store::events::current_state_at_keys(
            &mut conn,
            room_id.as_str(),
            &[("m.room.member", user)],
        )
        .await?
        .into_iter()
        .next();
        let mut entry = json!({
            "room_id": room_id,
            "membership": "invite",
            "visibility": "private",
        });
        if let (Some(invite), Some(fields)) = (invite, entry.as_object_mut()) {
            let viewer = Viewer {
                txn_scope: None,
                now_ms: super::service::now_ms(),
            };
            let related = Related {
                prev: invite.prev.clone(),
                redacted_because: None,
            };
            fields.insert("inviter".into(), json!(invite.event.sender));
            fields.insert(
                "invite".into(),
                super::event::to_client(&invite.event, &related, viewer),
            );
        }
        Ok(entry)
    }

    /// A room's `/initialSync` without `presence`, and whether the requester is joined.
    async fn room_snapshot(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        limit: i64,
    ) -> Result<(Value, bool), RoomError> {
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
        let answer = json!({
            "room_id": room_id,
            "membership": membership,
            "messages": {
                "chunk": chunk,
                "start": start.to_string(),
                "end": end.to_string(),
            },
            "state": state,
            "receipts": receipts,
            "account_data": account_data,
        });
        Ok((answer, joined))
    }
}

impl Rooms {
    /// `m.presence` events of the joined members in `state` whose status Synapse gives the
    /// requester, in the state's order.
    async fn members_presence(
        &self,
        requester: &Requester,
        token: &str,
        state: &[Value],
    ) -> Vec<Value> {
        let masquerade = requester
            .appservice
            .as_ref()
            .map(|_| requester.user_id.as_str());
        let joined = state
            .iter()
            .filter(|event| {
                event.get("type").and_then(Value::as_str) == Some("m.room.member")
                    && event
                        .get("content")
                        .and_then(|content| content.get("membership"))
                        .and_then(Value::as_str)
                        == Some("join")
            })
            .filter_map(|event| event.get("state_key").and_then(Value::as_str))
            .take(MAX_PRESENCE)
            .map(str::to_owned)
            .collect::<Vec<String>>();
        let mut presence = Vec::new();
        // A few at a time, in order: a big room must not flood Synapse.
        for users in joined.chunks(8) {
            let asked = users
                .iter()
                .map(|user| self.presence_of(token, masquerade, user));
            presence.extend(
                futures_util::future::join_all(asked)
                    .await
                    .into_iter()
                    .flatten(),
            );
        }
        presence
    }

    /// One member's `m.presence` event, if Synapse gives it to the requester.
    async fn presence_of(
        &self,
        token: &str,
        masquerade: Option<&str>,
        user: &str,
    ) -> Option<Value> {
        {
            match self.synapse.presence_status(token, masquerade, user).await {
                Ok(Some(Value::Object(mut content))) => {
                    content.insert("user_id".into(), json!(user));
                    Some(json!({ "type": "m.presence", "content": content }))
                }
                Ok(_) => None,
                Err(err) => {
                    tracing::debug!(%user, error = %err, "presence not asked");
                    None
                }
            }
        }
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

//! The room summary of a local room (`GET /v1/room_summary/{roomId}` and the unstable
//! `im.nheko.summary` paths, Element X's room preview), as Synapse's `RoomSummaryHandler`
//! builds it for a room it is in: shown when the reader is joined or invited, or when the
//! room is public, knockable or world-readable; otherwise 404 "Room not found or is not
//! accessible", as for a room that does not exist. Fields that would be null are left out.
//! Without an access token only the last three are shown, without `membership`.

use ruma::{OwnedRoomId, UserId};
use serde_json::{Map, Value, json};

use super::RoomError;
use super::service::Rooms;
use crate::auth::requester::Requester;
use crate::store;

impl Rooms {
    /// The summary of a local room for `requester`.
    pub async fn summary(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<Value, RoomError> {
        self.summary_for(Some(&requester.user_id), room_id).await
    }

    /// The summary of a local room for `viewer`, or for anyone (no access token: only a
    /// public, knockable or world-readable room, and no `membership` field, as Synapse).
    pub async fn summary_for(
        &self,
        viewer: Option<&UserId>,
        room_id: &OwnedRoomId,
    ) -> Result<Value, RoomError> {
        let not_found = || RoomError::NotFound("Room not found or is not accessible".into());
        let mut conn = self.conn().await?;
        let room = store::rooms::get(&mut conn, room_id.as_str())
            .await?
            .ok_or_else(not_found)?;
        let state = store::events::current_state(&mut conn, room_id.as_str()).await?;
        let content = |kind: &str, key: &str| {
            state
                .iter()
                .find(|e| e.event.kind == kind && e.event.state_key.as_deref() == Some(key))
                .map(|e| &e.event.content)
        };
        let field = |kind: &str, name: &str| {
            content(kind, "")
                .and_then(|c| c.get(name))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let membership = viewer.map(|viewer| {
            content("m.room.member", viewer.as_str())
                .and_then(|c| c.get("membership"))
                .and_then(Value::as_str)
                .unwrap_or("leave")
                .to_owned()
        });
        let join_rule = field("m.room.join_rules", "join_rule");
        let world_readable = field("m.room.history_visibility", "history_visibility").as_deref()
            == Some("world_readable");
        let accessible = matches!(membership.as_deref(), Some("join" | "invite"))
            || matches!(
                join_rule.as_deref(),
                Some("public" | "knock" | "knock_restricted")
            )
            || world_readable;
        if !accessible {
            return Err(not_found());
        }
        let joined = state
            .iter()
            .filter(|e| {
                e.event.kind == "m.room.member"
                    && e.event.content.get("membership").and_then(Value::as_str) == Some("join")
            })
            .count();
        let mut entry = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value.filter(|v| !v.is_null()) {
                entry.insert(key.to_owned(), value);
            }
        };
        put("room_id", Some(json!(room.room_id)));
        put("room_version", Some(json!(room.room_version)));
        put("name", field("m.room.name", "name").map(Value::from));
        put("topic", field("m.room.topic", "topic").map(Value::from));
        put(
            "canonical_alias",
            field("m.room.canonical_alias", "alias").map(Value::from),
        );
        put("num_joined_members", Some(json!(joined)));
        put("avatar_url", field("m.room.avatar", "url").map(Value::from));
        put("world_readable", Some(json!(world_readable)));
        put(
            "guest_can_join",
            Some(json!(
                field("m.room.guest_access", "guest_access").as_deref() == Some("can_join")
            )),
        );
        put(
            "room_type",
            content("m.room.create", "")
                .and_then(|c| c.get("type"))
                .filter(|t| t.is_string())
                .cloned(),
        );
        put(
            "encryption",
            field("m.room.encryption", "algorithm").map(Value::from),
        );
        put("join_rule", join_rule.clone().map(Value::from));
        if matches!(
            join_rule.as_deref(),
            Some("restricted" | "knock_restricted")
        ) {
            let allowed: Vec<Value> = content("m.room.join_rules", "")
                .and_then(|c| c.get("allow"))
                .and_then(Value::as_array)
                .map(|allow| {
                    allow
                        .iter()
                        .filter(|a| {
                            a.get("type").and_then(Value::as_str) == Some("m.room_membership")
                        })
                        .filter_map(|a| a.get("room_id").filter(|r| r.is_string()).cloned())
                        .collect()
                })
                .unwrap_or_default();
            if !allowed.is_empty() {
                put("allowed_room_ids", Some(Value::Array(allowed)));
            }
        }
        put("membership", membership.map(Value::from));
        Ok(Value::Object(entry))
    }
}

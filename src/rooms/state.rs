//! The current state of one local room, as the writer and the auth rules see it: a map
//! `(type, state_key) → event`, plus the room's position counters. No state groups and no
//! state resolution: a local room has one writer, so its history is a line and its current
//! state is simply the latest event for each key.

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value};

use super::power::PowerLevels;

/// One entry of the room state.
#[derive(Debug, Clone, PartialEq)]
pub struct StateEntry {
    /// The state event.
    pub event_id: OwnedEventId,
    /// Its stream position.
    pub stream: i64,
    /// Who sent it.
    pub sender: OwnedUserId,
    /// Its content.
    pub content: Map<String, Value>,
}

/// Current state and counters of one room.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomState {
    /// The room.
    pub room_id: OwnedRoomId,
    /// Room version string, "1" to "11" (`rooms::version`).
    pub room_version: String,
    /// Who created the room.
    pub creator: OwnedUserId,
    /// `(type, state_key) → entry`.
    pub entries: HashMap<(String, String), StateEntry>,
    /// Highest topological position in the room.
    pub max_topo: i64,
    /// Lowest topological position in the room (backfill goes below it).
    pub min_topo: i64,
    /// Stream position of the room's latest event.
    pub latest_stream: i64,
}

impl RoomState {
    /// An empty room about to receive its create event.
    pub fn new(room_id: OwnedRoomId, room_version: &str, creator: OwnedUserId) -> Self {
        Self {
            room_id,
            room_version: room_version.to_owned(),
            creator,
            entries: HashMap::new(),
            max_topo: 0,
            min_topo: 1,
            latest_stream: 0,
        }
    }

    pub fn get(&self, kind: &str, state_key: &str) -> Option<&StateEntry> {
        self.entries.get(&(kind.to_owned(), state_key.to_owned()))
    }

    /// A string field of a state event's content.
    fn field(&self, kind: &str, state_key: &str, field: &str) -> Option<&str> {
        self.get(kind, state_key)?.content.get(field)?.as_str()
    }

    /// The user's membership (`join`, `invite`, `leave`, `ban`, `knock`), if they have a
    /// member event.
    pub fn membership(&self, user_id: &str) -> Option<&str> {
        self.field("m.room.member", user_id, "membership")
    }

    pub fn is_joined(&self, user_id: &str) -> bool {
        self.membership(user_id) == Some("join")
    }

    pub fn power_levels(&self) -> PowerLevels {
        PowerLevels::new(
            self.get("m.room.power_levels", "")
                .map(|entry| &entry.content),
            self.creator.as_str(),
        )
    }

    /// `m.room.join_rules`, default `invite`.
    pub fn join_rule(&self) -> &str {
        self.field("m.room.join_rules", "", "join_rule")
            .unwrap_or("invite")
    }

    /// `m.room.history_visibility`, default `shared`.
    pub fn history_visibility(&self) -> &str {
        self.field("m.room.history_visibility", "", "history_visibility")
            .unwrap_or("shared")
    }

    /// Users whose membership is `membership`.
    pub fn members_with(&self, membership: &str) -> impl Iterator<Item = &str> {
        self.entries.iter().filter_map(move |((kind, key), entry)| {
            (kind == "m.room.member"
                && entry.content.get("membership").and_then(Value::as_str) == Some(membership))
            .then_some(key.as_str())
        })
    }
}

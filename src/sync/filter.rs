//! Sync filters, as far as the local part of a sync applies them: which rooms, whether left
//! rooms appear, the timeline, state, ephemeral and room account data event filters (types,
//! senders, `contains_url`, limit, lazy-loaded members) and the events' shape (`event_format`,
//! `event_fields`: [`super::format`]). Presence, global account data and the rest are
//! Synapse's to apply.
//!
//! The `filter` parameter is inline JSON or the ID of a filter the user uploaded to Synapse.
//! Uploaded filters never change, so an ID is fetched from Synapse once (with the user's own
//! token) and cached. Uploads pass through hungryserv untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::Value;

use crate::rooms::read::EventFilter;
use crate::upstream::Synapse;
use crate::upstream::client::CallError;

/// Filters kept at most; the cache starts over when full.
const MAX_CACHED: usize = 10_000;

/// The parts of a sync `Filter` that concern local rooms.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SyncFilter {
    #[serde(default)]
    pub room: RoomFilter,
    /// `event_format` and `event_fields`.
    #[serde(flatten)]
    pub shape: super::format::EventShape,
}

/// `Filter.room`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RoomFilter {
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
    #[serde(default)]
    pub not_rooms: Vec<String>,
    #[serde(default)]
    pub include_leave: bool,
    #[serde(default)]
    pub timeline: SectionFilter,
    #[serde(default)]
    pub state: SectionFilter,
    #[serde(default)]
    pub ephemeral: SectionFilter,
    #[serde(default)]
    pub account_data: SectionFilter,
}

/// A `RoomEventFilter` of one section (timeline, state).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SectionFilter {
    #[serde(flatten)]
    pub events: EventFilter,
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
    #[serde(default)]
    pub not_rooms: Vec<String>,
    /// Per-thread unread counts (MSC3773), read from the timeline filter as Synapse does.
    #[serde(default)]
    pub unread_thread_notifications: bool,
}

fn room_allowed(rooms: &Option<Vec<String>>, not_rooms: &[String], room_id: &str) -> bool {
    rooms
        .as_ref()
        .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
        && !not_rooms.iter().any(|r| r == room_id)
}

impl RoomFilter {
    /// Whether the room appears in the sync at all.
    pub fn allows_room(&self, room_id: &str) -> bool {
        room_allowed(&self.rooms, &self.not_rooms, room_id)
    }
}

impl SectionFilter {
    /// Whether this section shows events of the room.
    pub fn allows_room(&self, room_id: &str) -> bool {
        room_allowed(&self.rooms, &self.not_rooms, room_id)
    }
}

/// Why a `filter` parameter could not be used; texts as Synapse's `/sync` gives them.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("Invalid filter JSON")]
    NotJson,
    #[error("Invalid filter: {0}")]
    BadJson(String),
    #[error("No such filter")]
    Unknown,
    #[error(transparent)]
    Synapse(CallError),
}

/// Parses an inline filter.
pub fn parse_inline(text: &str) -> Result<SyncFilter, FilterError> {
    let value: Value = serde_json::from_str(text).map_err(|_| FilterError::NotJson)?;
    parse_value(value)
}

fn parse_value(value: Value) -> Result<SyncFilter, FilterError> {
    serde_json::from_value(value).map_err(|err| FilterError::BadJson(err.to_string()))
}

/// Uploaded filters by `(user, filter ID)`.
#[derive(Default)]
pub struct FilterCache {
    entries: Mutex<HashMap<(String, String), Arc<SyncFilter>>>,
}

impl FilterCache {
    /// The filter a sync's `filter` parameter names (none: the default filter).
    pub async fn resolve(
        &self,
        synapse: &Synapse,
        token: &str,
        user_id: &str,
        param: Option<&str>,
    ) -> Result<Arc<SyncFilter>, FilterError> {
        let Some(param) = param else {
            return Ok(Arc::default());
        };
        if param.trim_start().starts_with('{') {
            return parse_inline(param).map(Arc::new);
        }
        let key = (user_id.to_owned(), param.to_owned());
        if let Some(filter) = self.lock().get(&key) {
            return Ok(filter.clone());
        }
        let value = synapse
            .filter(token, user_id, param)
            .await
            .map_err(FilterError::Synapse)?
            .ok_or(FilterError::Unknown)?;
        let filter = Arc::new(parse_value(value)?);
        let mut entries = self.lock();
        if entries.len() >= MAX_CACHED {
            entries.clear();
        }
        entries.insert(key, filter.clone());
        Ok(filter)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Arc<SyncFilter>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_room_parts_and_ignores_the_rest() {
        let filter = parse_inline(
            r#"{"presence":{"types":[]},"event_fields":["type"],
                "room":{"rooms":["!a:x"],"include_leave":true,
                        "timeline":{"limit":3,"types":["m.room.message"],"not_rooms":["!b:x"]},
                        "state":{"lazy_load_members":true}}}"#,
        )
        .unwrap();
        assert!(filter.room.allows_room("!a:x"));
        assert!(!filter.room.allows_room("!c:x"));
        assert!(filter.room.include_leave);
        assert_eq!(filter.room.timeline.events.limit, Some(3));
        assert!(!filter.room.timeline.allows_room("!b:x"));
        assert!(filter.room.state.events.lazy_load_members);
    }

    #[test]
    fn bad_filters_get_synapse_errors() {
        assert!(matches!(parse_inline("{nope"), Err(FilterError::NotJson)));
        assert!(matches!(
            parse_inline(r#"{"room":{"timeline":{"limit":"x"}}}"#),
            Err(FilterError::BadJson(_))
        ));
    }
}

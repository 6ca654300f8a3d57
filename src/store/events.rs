//! `events`, `current_state`, `memberships`: writing batches of events and reading them back.
//!
//! Rows are converted to ruma ID types at this boundary; a row that does not parse is
//! reported as [`StoreError::Corrupt`] rather than served.
//!
//! Every read of whole events selects into one [`Row`] and maps it once ([`Row::parse`]).
//! Their SELECT lists repeat because sqlx's compile-checked macros take only string literals;
//! each `query_as!(Row, …)` is checked against `Row`'s fields (names, types, nullability)
//! when the crate compiles, so a list that drifts from the others does not build. The
//! columns written are held together by `copy::tests::event_column_lists_agree`.

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value};

use super::StoreError;

mod copy;
mod history;
mod read;
mod relations;
mod state;
mod write;

pub use history::*;
pub use read::*;
pub use relations::*;
pub use state::*;
pub use write::*;

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global position (sync order).
    pub stream: i64,
    /// Position within the room (`/messages` order).
    pub topo: i64,
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    /// The event type.
    pub kind: String,
    /// Present for state events.
    pub state_key: Option<String>,
    pub origin_server_ts: i64,
    pub content: Map<String, Value>,
    /// The state event this one replaced.
    pub replaces_state: Option<OwnedEventId>,
    /// For redactions: the target.
    pub redacts: Option<OwnedEventId>,
    /// Set when this event has been redacted.
    pub redacted_by: Option<OwnedEventId>,
    /// `(scope, txn_id)` of the request that sent it.
    pub txn: Option<(String, String)>,
}

/// A stored event with what the client format needs from other events.
#[derive(Debug, Clone)]
pub struct EventWithPrev {
    pub event: StoredEvent,
    /// Content and sender of the event named by `replaces_state`.
    pub prev: Option<(Value, String)>,
}

/// The raw row, before IDs are parsed.
struct Row {
    stream: i64,
    topo: i64,
    event_id: String,
    room_id: String,
    sender: String,
    kind: String,
    state_key: Option<String>,
    origin_server_ts: i64,
    content: Value,
    replaces_state: Option<String>,
    redacts: Option<String>,
    redacted_by: Option<String>,
    txn_scope: Option<String>,
    txn_id: Option<String>,
    prev_content: Option<Value>,
    prev_sender: Option<String>,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?} does not parse"))
}

impl Row {
    fn parse(self) -> Result<EventWithPrev, StoreError> {
        let id = |value: Option<String>| -> Result<Option<OwnedEventId>, StoreError> {
            value
                .map(|value| {
                    OwnedEventId::try_from(value.as_str()).map_err(|_| corrupt("event id", &value))
                })
                .transpose()
        };
        let content = match self.content {
            Value::Object(map) => map,
            _ => return Err(corrupt("content of", &self.event_id)),
        };
        let event = StoredEvent {
            stream: self.stream,
            topo: self.topo,
            event_id: OwnedEventId::try_from(self.event_id.as_str())
                .map_err(|_| corrupt("event id", &self.event_id))?,
            room_id: OwnedRoomId::try_from(self.room_id.as_str())
                .map_err(|_| corrupt("room id", &self.room_id))?,
            sender: OwnedUserId::try_from(self.sender.as_str())
                .map_err(|_| corrupt("user id", &self.sender))?,
            kind: self.kind,
            state_key: self.state_key,
            origin_server_ts: self.origin_server_ts,
            content,
            replaces_state: id(self.replaces_state)?,
            redacts: id(self.redacts)?,
            redacted_by: id(self.redacted_by)?,
            txn: self.txn_scope.zip(self.txn_id),
        };
        let prev = self.prev_content.zip(self.prev_sender);
        Ok(EventWithPrev { event, prev })
    }
}

fn parse_all(rows: Vec<Row>) -> Result<Vec<EventWithPrev>, StoreError> {
    rows.into_iter().map(Row::parse).collect()
}

/// Parsed rows grouped by room, each room's in the order of `rows`.
fn by_room(rows: Vec<Row>) -> Result<HashMap<String, Vec<EventWithPrev>>, StoreError> {
    let mut rooms: HashMap<String, Vec<EventWithPrev>> = HashMap::new();
    for event in parse_all(rows)? {
        rooms
            .entry(event.event.room_id.to_string())
            .or_default()
            .push(event);
    }
    Ok(rooms)
}

impl StoredEvent {
    /// `content["m.relates_to"]["event_id"]`.
    pub fn content_relates_to(&self) -> Option<&str> {
        self.content.get("m.relates_to")?.get("event_id")?.as_str()
    }
}

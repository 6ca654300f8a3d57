//! The shape of a sync's local events as the filter asks for it: `event_format` and
//! `event_fields` (client-server spec, `Filter`), applied to the timeline and state of each
//! room entry as Synapse applies them (not to stripped invite or knock state).
//!
//! `event_format: federation` gives each event as a PDU: with its `room_id`, `depth` (the
//! room's `/messages` position, which orders the room as a PDU's depth does), `hashes`
//! (the content hash of the event as the spec computes it), and `prev_events`,
//! `auth_events`, `signatures` present but empty: local rooms never federate, so their events
//! have no DAG links or signatures to show.
//!
//! `event_fields` keeps only the listed fields, each a dotted path (`content.body`, with `\.`
//! for a dot inside a key), as Synapse's `only_fields`; an empty list keeps everything.

use std::collections::HashMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// What the filter asks of the events' shape.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventShape {
    /// `client` (the default) or `federation`.
    #[serde(default)]
    pub event_format: Option<String>,
    #[serde(default)]
    pub event_fields: Option<Vec<String>>,
}

impl EventShape {
    /// Whether the events go out as sync formats them anyway.
    pub fn is_default(&self) -> bool {
        !self.federation() && self.event_fields.as_ref().is_none_or(Vec::is_empty)
    }

    fn federation(&self) -> bool {
        self.event_format.as_deref() == Some("federation")
    }

    /// Shapes events in sync's client format (no `room_id`); `depths` gives the room depth
    /// of each event by ID.
    pub fn apply(&self, events: &mut [Value], depths: &HashMap<String, i64>, room_id: &str) {
        if self.is_default() {
            return;
        }
        for event in events.iter_mut() {
            if self.federation() {
                let depth = event
                    .get("event_id")
                    .and_then(Value::as_str)
                    .and_then(|id| depths.get(id))
                    .copied()
                    .unwrap_or_default();
                as_pdu(event, depth, room_id);
            }
            if let Some(fields) = self.event_fields.as_deref()
                && !fields.is_empty()
            {
                *event = only_fields(event, fields);
            }
        }
    }
}

/// The federation format of an event given in client format.
fn as_pdu(event: &mut Value, depth: i64, room_id: &str) {
    let Some(object) = event.as_object_mut() else {
        return;
    };
    object.insert("room_id".into(), json!(room_id));
    object.insert("depth".into(), json!(depth));
    object.insert("prev_events".into(), json!([]));
    object.insert("auth_events".into(), json!([]));
    object.insert("signatures".into(), json!({}));
    let hash = content_hash(object);
    object.insert("hashes".into(), json!({ "sha256": hash }));
}

/// The spec's content hash: SHA-256 of the canonical JSON of the event without `unsigned`,
/// `signatures` and `hashes` (and, here, `event_id`, which a PDU of these versions lacks),
/// unpadded base64.
fn content_hash(object: &Map<String, Value>) -> String {
    let mut hashed = object.clone();
    for key in ["unsigned", "signatures", "hashes", "event_id"] {
        hashed.remove(key);
    }
    let canonical = ruma::canonical_json::try_from_json_map(hashed)
        .ok()
        .and_then(|map| serde_json::to_string(&map).ok())
        .unwrap_or_default();
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(canonical))
}

/// Splits `a.b\.c` into `["a", "b.c"]`.
fn split_path(field: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'.') => {
                chars.next();
                if let Some(part) = parts.last_mut() {
                    part.push('.');
                }
            }
            '.' => parts.push(String::new()),
            c => {
                if let Some(part) = parts.last_mut() {
                    part.push(c);
                }
            }
        }
    }
    parts
}

/// Synapse's `only_fields`: a copy holding only the paths named.
fn only_fields(event: &Value, fields: &[String]) -> Value {
    let mut output = Map::new();
    for field in fields {
        copy_path(event, &mut output, &split_path(field));
    }
    Value::Object(output)
}

fn copy_path(source: &Value, target: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = source.get(first) else {
        return;
    };
    if rest.is_empty() {
        target.insert(first.clone(), value.clone());
        return;
    }
    // Objects on the way are made only when the whole path exists (Synapse leaves out a
    // `content` whose named field is absent).
    let exists = rest
        .iter()
        .try_fold(value, |at, key| at.as_object()?.get(key))
        .is_some();
    if !exists {
        return;
    }
    let entry = target
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(inner) = entry.as_object_mut() {
        copy_path(value, inner, rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_fields_keep_the_paths_named() {
        let event = json!({"type": "m.room.message", "sender": "@a:x", "unsigned": {"age": 1},
                           "content": {"body": "hi", "msgtype": "m.text", "a.b": 1}});
        let kept = only_fields(
            &event,
            &[
                "type".into(),
                "content.body".into(),
                r"content.a\.b".into(),
                "nope.x".into(),
                "sender.x".into(),
                "unsigned.absent".into(),
            ],
        );
        assert_eq!(
            kept,
            json!({"type": "m.room.message", "content": {"body": "hi", "a.b": 1}})
        );
    }

    #[test]
    fn federation_format_adds_the_pdu_fields() {
        let shape = EventShape {
            event_format: Some("federation".into()),
            event_fields: None,
        };
        let mut events = vec![json!({"type": "m.room.message", "sender": "@a:x",
                                     "content": {"body": "hi"}, "event_id": "$e",
                                     "origin_server_ts": 1, "unsigned": {"age": 5}})];
        shape.apply(&mut events, &HashMap::from([("$e".into(), 7)]), "!r:x");
        let event = &events[0];
        assert_eq!(event["room_id"], "!r:x");
        assert_eq!(event["depth"], 7);
        assert_eq!(event["hashes"]["sha256"].as_str().map(str::len), Some(43));
        assert_eq!(event["prev_events"], json!([]));
    }
}

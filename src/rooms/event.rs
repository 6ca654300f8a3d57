//! Events of local rooms: new IDs, the client format (with `unsigned`), and redaction.
//!
//! Event IDs are opaque: `$` and 43 characters of URL-safe base64 of 32 random bytes, the
//! shape of room-version-4+ IDs, so clients and bridges treat them like any other.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName};
use serde_json::{Map, Value, json};

use crate::store::events::StoredEvent;

/// A fresh random event ID.
pub fn new_event_id() -> OwnedEventId {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    OwnedEventId::try_from(format!("${}", URL_SAFE_NO_PAD.encode(bytes)))
        .expect("`$` followed by URL-safe base64 is a valid event ID")
}

/// A fresh room ID of a local class: `!{prefix}{18 random base62}:{server}`.
pub fn new_room_id(prefix: &str, server_name: &OwnedServerName) -> OwnedRoomId {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let random: String = (0..18)
        .map(|_| ALPHABET[(rng.next_u32() as usize) % ALPHABET.len()] as char)
        .collect();
    OwnedRoomId::try_from(format!("!{prefix}{random}:{server_name}"))
        .expect("validated prefix, base62 and a server name form a valid room ID")
}

/// What the reader of an event is, for the parts of `unsigned` that depend on it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Viewer<'a> {
    /// The reader's transaction scope: their own sends get `unsigned.transaction_id`.
    pub txn_scope: Option<&'a str>,
    /// Current time in milliseconds, for `unsigned.age`.
    pub now_ms: i64,
}

/// Extra data joined in from other events.
#[derive(Debug, Clone, Default)]
pub struct Related {
    /// Content and sender of the state event this one replaced.
    pub prev: Option<(Value, String)>,
    /// The redaction event, in client format, if this event was redacted.
    pub redacted_because: Option<Value>,
}

/// The client-server API format of an event (`ClientEvent`), as Synapse serialises it.
pub fn to_client(event: &StoredEvent, related: &Related, viewer: Viewer<'_>) -> Value {
    let mut unsigned = Map::new();
    unsigned.insert(
        "age".into(),
        json!(viewer.now_ms.saturating_sub(event.origin_server_ts).max(0)),
    );
    if let (Some(scope), Some((txn_scope, txn_id))) = (viewer.txn_scope, &event.txn)
        && scope == txn_scope
    {
        unsigned.insert("transaction_id".into(), json!(txn_id));
    }
    if let Some(replaced) = &event.replaces_state {
        unsigned.insert("replaces_state".into(), json!(replaced));
        if let Some((content, sender)) = &related.prev {
            unsigned.insert("prev_content".into(), content.clone());
            unsigned.insert("prev_sender".into(), json!(sender));
        }
    }
    if let Some(because) = &related.redacted_because {
        // Synapse names the redaction beside it (`redacted_by`).
        if let Some(redaction) = because.get("event_id") {
            unsigned.insert("redacted_by".into(), redaction.clone());
        }
        unsigned.insert("redacted_because".into(), because.clone());
    }
    // The stream position, as Beeper's hungryserv exposes it (bridges order by it).
    unsigned.insert("com.beeper.hs.order".into(), json!(event.stream));
    let mut object = Map::new();
    object.insert("type".into(), json!(event.kind));
    object.insert("room_id".into(), json!(event.room_id));
    object.insert("sender".into(), json!(event.sender));
    object.insert("content".into(), Value::Object(event.content.clone()));
    object.insert("origin_server_ts".into(), json!(event.origin_server_ts));
    object.insert("event_id".into(), json!(event.event_id));
    if let Some(state_key) = &event.state_key {
        object.insert("state_key".into(), json!(state_key));
    }
    if let Some(redacts) = &event.redacts {
        object.insert("redacts".into(), json!(redacts));
    }
    object.insert("unsigned".into(), Value::Object(unsigned));
    Value::Object(object)
}

/// Synapse's `format_event_for_client_v1`, its format outside `/sync`: the sender again as
/// `user_id`, and `unsigned`'s `age`, `redacted_because`, `replaces_state`, `prev_content`,
/// `invite_room_state` and `knock_room_state` repeated at the top level.
pub fn legacy_v1(value: &mut Value) {
    let Some(object) = value.as_object_mut() else {
        return;
    };
    if let Some(sender) = object.get("sender").cloned() {
        object.insert("user_id".into(), sender);
    }
    let copied: Vec<(String, Value)> = object
        .get("unsigned")
        .and_then(Value::as_object)
        .map(|unsigned| {
            [
                "age",
                "redacted_because",
                "replaces_state",
                "prev_content",
                "invite_room_state",
                "knock_room_state",
            ]
            .iter()
            .filter_map(|key| unsigned.get(*key).map(|v| ((*key).to_owned(), v.clone())))
            .collect()
        })
        .unwrap_or_default();
    object.extend(copied);
}

/// The content left after redaction under the rules of `room_version` (ruma's
/// `RedactionRules`: e.g. a member event keeps `membership` in every version, the power
/// levels keep `invite` only from version 11, the join rules keep `allow` from 8).
pub fn redacted_content(
    room_version: &str,
    kind: &str,
    content: &Map<String, Value>,
) -> Map<String, Value> {
    let rules = super::version::rules(room_version).redaction;
    match ruma::canonical_json::try_from_json_map(content.clone()) {
        Ok(mut canonical) => {
            ruma::canonical_json::redact_content_in_place(&mut canonical, &rules, kind);
            match serde_json::to_value(canonical) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            }
        }
        // Content that is not canonical JSON (floats, out-of-range integers) cannot go
        // through ruma; no preserved key of any type holds such values, so the only thing
        // worth keeping is a member event's membership.
        Err(_) => content
            .iter()
            .filter(|(key, _)| kind == "m.room.member" && key.as_str() == "membership")
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_expected_shapes() {
        let event_id = new_event_id();
        assert_eq!(event_id.as_str().len(), 44);
        assert!(event_id.as_str().starts_with('$'));
        assert_ne!(new_event_id(), event_id);
        let server = OwnedServerName::try_from("example.org").unwrap();
        let room_id = new_room_id("hs_", &server);
        assert!(room_id.as_str().starts_with("!hs_"));
        assert!(room_id.as_str().ends_with(":example.org"));
        assert_eq!(
            room_id.as_str().len(),
            "!hs_".len() + 18 + ":example.org".len()
        );
    }

    #[test]
    fn redaction_follows_the_room_version() {
        let content = |value: Value| value.as_object().unwrap().clone();
        assert_eq!(
            redacted_content(
                "10",
                "m.room.message",
                &content(json!({"body": "secret", "msgtype": "m.text"}))
            ),
            Map::new()
        );
        assert_eq!(
            redacted_content(
                "10",
                "m.room.member",
                &content(
                    json!({"membership": "join", "displayname": "A", "join_authorised_via_users_server": "@x:y"})
                )
            ),
            content(json!({"membership": "join", "join_authorised_via_users_server": "@x:y"}))
        );
        assert_eq!(
            redacted_content(
                "10",
                "m.room.power_levels",
                &content(json!({"ban": 50, "invite": 0, "users": {"@a:b": 100}}))
            ),
            content(json!({"ban": 50, "users": {"@a:b": 100}})),
            "v10 drops `invite` (only v11 keeps it)"
        );
        assert_eq!(
            redacted_content(
                "11",
                "m.room.power_levels",
                &content(json!({"ban": 50, "invite": 0, "users": {"@a:b": 100}}))
            ),
            content(json!({"ban": 50, "invite": 0, "users": {"@a:b": 100}}))
        );
        let join_rules = content(json!({"join_rule": "restricted", "allow": [], "x": 1}));
        assert_eq!(
            redacted_content("7", "m.room.join_rules", &join_rules),
            content(json!({"join_rule": "restricted"}))
        );
        assert_eq!(
            redacted_content("8", "m.room.join_rules", &join_rules),
            content(json!({"join_rule": "restricted", "allow": []}))
        );
        assert_eq!(
            redacted_content(
                "10",
                "m.room.member",
                &content(json!({"membership": "leave", "x": 1.5}))
            ),
            content(json!({"membership": "leave"}))
        );
    }
}

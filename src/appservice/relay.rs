//! Relay mode: one stream to the bridge for Synapse's events and ours.
//!
//! For an appservice listed under `[[appservice.relay]]`, Synapse's registration names
//! hungryserv as the appservice (`url: http://<hungryserv>/_hungryserv/appservice/<id>`).
//! Synapse's transactions then arrive here (`api::relay`), are stored durably
//! ([`crate::store::relay`]) and only then answered 200; the pusher puts their contents into
//! its own transactions, after the local events it was about to send, under hungryserv's
//! transaction IDs — over HTTP to the bridge's real address or over its websocket. So the
//! bridge sees one stream with one txnId namespace, and a second websocket is never needed.
//!
//! Order: Synapse's transactions are relayed in the order they arrived, whole, so Synapse's
//! per-room order holds; local rooms keep theirs; the two kinds of rooms never share a room.
//! Synapse itself can deliver out of order after a failed send: its sender may push the next
//! transaction before the recoverer has marked the appservice down and retried the failed
//! one (seen in a test run: txn N+1 accepted 8 ms after N was refused during a restart of
//! hungryserv, N retried 130 ms later). Its transaction IDs come from one sequence for all
//! appservices, so a gap says nothing, and relay mode passes on the order it was given.
//!
//! What Synapse sends besides events passes through under both the stable and the unstable
//! names: `ephemeral` (MSC2409), `to_device` (MSC2409), `device_lists`,
//! `device_one_time_keys_count` and `device_unused_fallback_key_types` (MSC3202). When several
//! of Synapse's transactions go out in one of ours, events, ephemeral and to-device events are
//! concatenated, device list changes are united and key counts keep the latest value. Local
//! device-list changes (MSC3202, [`super::device_lists`]) join Synapse's `changed`.

use serde_json::{Map, Value, json};

/// Synapse's transactions merged into one of ours at most.
pub const MAX_MERGED: i64 = 10;

/// Fields of Synapse's transactions, with their unstable names.
const EPHEMERAL: (&str, &str) = ("ephemeral", "de.sorunome.msc2409.ephemeral");
const TO_DEVICE: (&str, &str) = ("to_device", "de.sorunome.msc2409.to_device");
const DEVICE_LISTS: (&str, &str) = ("device_lists", "org.matrix.msc3202.device_lists");
const OTK_COUNTS: (&str, &str) = (
    "device_one_time_keys_count",
    "org.matrix.msc3202.device_one_time_keys_count",
);
/// Synapse's second, misspelled name for the counts (`appservice/api.py push_bulk`).
const OTK_COUNTS_MISSPELLED: &str = "org.matrix.msc3202.device_one_time_key_counts";
const FALLBACK_TYPES: (&str, &str) = (
    "device_unused_fallback_key_types",
    "org.matrix.msc3202.device_unused_fallback_key_types",
);

/// The merged contents of relayed transactions.
#[derive(Debug, Default, PartialEq)]
pub struct Relayed {
    pub events: Vec<Value>,
    pub ephemeral: Vec<Value>,
    pub to_device: Vec<Value>,
    /// `changed` and `left` user IDs, in first-seen order.
    pub changed: Vec<Value>,
    pub left: Vec<Value>,
    /// Latest counts per user (then device).
    pub otk_counts: Map<String, Value>,
    pub fallback_types: Map<String, Value>,
}

/// A field under its stable name, else its unstable one.
fn field<'a>(body: &'a Value, (stable, unstable): (&str, &str)) -> Option<&'a Value> {
    body.get(stable).or_else(|| body.get(unstable))
}

fn list(body: &Value, names: (&str, &str)) -> Vec<Value> {
    field(body, names)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn push_unique(into: &mut Vec<Value>, values: Option<&Value>) {
    for value in values.and_then(Value::as_array).into_iter().flatten() {
        if !into.contains(value) {
            into.push(value.clone());
        }
    }
}

/// Per user, the devices' latest values (a later transaction's device replaces an earlier
/// one's; other devices stay).
fn merge_counts(into: &mut Map<String, Value>, values: Option<&Value>) {
    for (user, devices) in values.and_then(Value::as_object).into_iter().flatten() {
        let target = into.entry(user.clone()).or_insert_with(|| json!({}));
        if let (Some(target), Some(devices)) = (target.as_object_mut(), devices.as_object()) {
            for (device, value) in devices {
                target.insert(device.clone(), value.clone());
            }
        }
    }
}

impl Relayed {
    /// Merges Synapse's transaction bodies, oldest first.
    pub fn merge<'a>(bodies: impl IntoIterator<Item = &'a Value>) -> Self {
        let mut relayed = Relayed::default();
        for body in bodies {
            relayed.events.extend(
                body.get("events")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default(),
            );
            relayed.ephemeral.extend(list(body, EPHEMERAL));
            relayed.to_device.extend(list(body, TO_DEVICE));
            if let Some(lists) = field(body, DEVICE_LISTS) {
                push_unique(&mut relayed.changed, lists.get("changed"));
                push_unique(&mut relayed.left, lists.get("left"));
            }
            merge_counts(&mut relayed.otk_counts, field(body, OTK_COUNTS));
            merge_counts(&mut relayed.fallback_types, field(body, FALLBACK_TYPES));
        }
        relayed
    }

    /// Adds local device-list changes to `changed` (a user already there stays where it is).
    pub fn add_changed(&mut self, users: Vec<String>) {
        for user in users {
            let user = Value::String(user);
            if !self.changed.contains(&user) {
                self.changed.push(user);
            }
        }
        self.left.retain(|user| !self.changed.contains(user));
    }

    /// Adds key counts (MSC3202) read after Synapse's transactions were stored: per device
    /// they replace Synapse's, being newer.
    pub fn add_key_counts(
        &mut self,
        otk_counts: &Map<String, Value>,
        fallback: &Map<String, Value>,
    ) {
        merge_counts(
            &mut self.otk_counts,
            Some(&Value::Object(otk_counts.clone())),
        );
        merge_counts(
            &mut self.fallback_types,
            Some(&Value::Object(fallback.clone())),
        );
    }

    /// Adds the fields that are not events (the caller puts the events first: local ones,
    /// then these) to a transaction body, under both names; `ephemeral` is appended to what
    /// the body holds already.
    pub fn add_to(self, body: &mut Map<String, Value>) {
        let mut ephemeral = body
            .get(EPHEMERAL.0)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        ephemeral.extend(self.ephemeral);
        fn both(body: &mut Map<String, Value>, (stable, unstable): (&str, &str), value: Value) {
            body.insert(unstable.to_owned(), value.clone());
            body.insert(stable.to_owned(), value);
        }
        both(body, EPHEMERAL, Value::Array(ephemeral));
        if !self.to_device.is_empty() {
            both(body, TO_DEVICE, Value::Array(self.to_device));
        }
        if !self.changed.is_empty() || !self.left.is_empty() {
            let lists = json!({"changed": self.changed, "left": self.left});
            both(body, DEVICE_LISTS, lists);
        }
        if !self.otk_counts.is_empty() {
            // Synapse also sends the counts under a misspelled name, which some bridges read.
            let counts = Value::Object(self.otk_counts);
            body.insert(OTK_COUNTS_MISSPELLED.to_owned(), counts.clone());
            both(body, OTK_COUNTS, counts);
        }
        if !self.fallback_types.is_empty() {
            both(body, FALLBACK_TYPES, Value::Object(self.fallback_types));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_synapse_transactions_in_order_under_both_names() {
        let first = json!({
            "events": [{"event_id": "$1"}, {"event_id": "$2"}],
            "de.sorunome.msc2409.ephemeral": [{"type": "m.typing"}],
            "de.sorunome.msc2409.to_device": [{"type": "m.room_key"}],
            "org.matrix.msc3202.device_lists": {"changed": ["@a:x"], "left": []},
            "org.matrix.msc3202.device_one_time_keys_count": {"@bot:x": {"D": {"signed_curve25519": 5}}},
        });
        let second = json!({
            "events": [{"event_id": "$3"}],
            "ephemeral": [{"type": "m.receipt"}],
            "device_lists": {"changed": ["@a:x", "@b:x"], "left": ["@c:x"]},
            "device_one_time_keys_count": {"@bot:x": {"D": {"signed_curve25519": 4}}},
        });
        let relayed = Relayed::merge([&first, &second]);
        let ids: Vec<&str> = relayed
            .events
            .iter()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        assert_eq!(ids, ["$1", "$2", "$3"]);
        assert_eq!(relayed.changed, [json!("@a:x"), json!("@b:x")]);
        assert_eq!(relayed.left, [json!("@c:x")]);

        let mut body = Map::new();
        body.insert(
            "ephemeral".into(),
            json!([{"type": "m.receipt", "local": true}]),
        );
        relayed.add_to(&mut body);
        let body = Value::Object(body);
        assert_eq!(body["ephemeral"], body["de.sorunome.msc2409.ephemeral"]);
        assert_eq!(body["ephemeral"].as_array().map(Vec::len), Some(3));
        assert_eq!(body["ephemeral"][0]["local"], true, "local ephemeral first");
        assert_eq!(body["to_device"], json!([{"type": "m.room_key"}]));
        assert_eq!(
            body["org.matrix.msc3202.device_lists"]["left"],
            json!(["@c:x"])
        );
        assert_eq!(
            body["device_one_time_keys_count"]["@bot:x"]["D"]["signed_curve25519"], 4,
            "the latest count wins"
        );
    }

    #[test]
    fn local_device_changes_join_synapse_changed_and_leave_left() {
        let synapse = json!({
            "org.matrix.msc3202.device_lists": {"changed": ["@s:x"], "left": ["@l:x"]},
            "org.matrix.msc3202.device_one_time_keys_count": {"@bot:x": {"D": {"signed_curve25519": 2}}},
        });
        let mut relayed = Relayed::merge([&synapse]);
        relayed.add_changed(vec!["@l:x".into(), "@s:x".into(), "@n:x".into()]);
        let mut body = Map::new();
        relayed.add_to(&mut body);
        assert_eq!(
            body["org.matrix.msc3202.device_lists"],
            json!({"changed": ["@s:x", "@l:x", "@n:x"], "left": []}),
            "never changed and left at once"
        );
        assert_eq!(
            body["org.matrix.msc3202.device_one_time_key_counts"],
            body["org.matrix.msc3202.device_one_time_keys_count"],
            "the counts under Synapse's two names"
        );
    }

    #[test]
    fn nothing_relayed_adds_only_ephemeral() {
        let mut body = Map::new();
        Relayed::merge([]).add_to(&mut body);
        assert_eq!(
            Value::Object(body),
            json!({"ephemeral": [], "de.sorunome.msc2409.ephemeral": []})
        );
    }
}

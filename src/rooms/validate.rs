//! The shape checks Synapse makes on an event a client creates, before the auth rules
//! (`EventValidator.validate_builder` and `validate_new` in `synapse/events/validator.py`),
//! with its answers: a message needs string `body` and `msgtype`; a topic, name, member or
//! tombstone event must be a state event with its key field; power levels must hold
//! integers where the spec says so (Synapse's JSON schema, whose messages quote the value as
//! Python prints it); `m.mentions` must be an object with a `user_ids` list and a boolean
//! `room`. Events the server writes itself and bridges' batch sends are not checked, as
//! Synapse checks only client-created events this way.

use serde_json::{Map, Value};

use super::RoomError;

/// Checks one client-created event of `room_id`.
pub fn client_event(
    room_id: &str,
    kind: &str,
    is_state: bool,
    content: &Map<String, Value>,
) -> Result<(), RoomError> {
    let bad = |message: String| Err(RoomError::BadRequest(message));
    let strings = |keys: &[&str]| -> Result<(), RoomError> {
        for key in keys {
            match content.get(*key) {
                None => return bad(format!("'{key}' not in content")),
                Some(Value::String(_)) => {}
                Some(_) => return bad(format!("'{key}' not a string type")),
            }
        }
        Ok(())
    };
    let state = || -> Result<(), RoomError> {
        if is_state {
            Ok(())
        } else {
            bad(format!("'{kind}' must be state events"))
        }
    };
    match kind {
        "m.room.message" => strings(&["body", "msgtype"])?,
        "m.room.topic" => {
            strings(&["topic"])?;
            state()?;
        }
        "m.room.name" => {
            strings(&["name"])?;
            state()?;
        }
        "m.room.member" => {
            match content.get("membership").and_then(Value::as_str) {
                None if !content.contains_key("membership") => {
                    return bad("Content has not membership key".into());
                }
                Some("invite" | "join" | "leave" | "ban" | "knock") => {}
                _ => return bad("Invalid membership key".into()),
            }
            state()?;
        }
        "m.room.tombstone" => {
            match content.get("replacement_room") {
                None => return bad("Content has no replacement_room key".into()),
                Some(Value::String(room)) if room == room_id => {
                    return bad("Tombstone cannot reference the room it was sent in".into());
                }
                Some(_) => {}
            }
            state()?;
        }
        "m.room.power_levels" => power_levels(content)?,
        _ => {}
    }
    if let Some(mentions) = content.get("m.mentions") {
        mentions_shape(mentions)?;
    }
    Ok(())
}

/// Synapse's `POWER_LEVELS_SCHEMA`: integers, and objects of integers.
fn power_levels(content: &Map<String, Value>) -> Result<(), RoomError> {
    const INTS: [&str; 7] = [
        "ban",
        "events_default",
        "invite",
        "kick",
        "redact",
        "state_default",
        "users_default",
    ];
    const OBJECTS: [&str; 3] = ["events", "notifications", "users"];
    for (key, value) in content {
        if INTS.contains(&key.as_str()) {
            if !is_integer(value) {
                return Err(not_of_type(key, value, "integer"));
            }
        } else if OBJECTS.contains(&key.as_str()) {
            let Some(map) = value.as_object() else {
                return Err(not_of_type(key, value, "object"));
            };
            if let Some((inner, level)) = map.iter().find(|(_, level)| !is_integer(level)) {
                return Err(not_of_type(inner, level, "integer"));
            }
        }
    }
    Ok(())
}

/// Synapse's `MENTIONS_SCHEMA`.
fn mentions_shape(mentions: &Value) -> Result<(), RoomError> {
    let Some(mentions) = mentions.as_object() else {
        return Err(RoomError::BadJson(format!(
            "{} is not of type 'object'",
            py_repr(mentions)
        )));
    };
    if let Some(users) = mentions.get("user_ids") {
        match users.as_array() {
            None => return Err(not_of_type("user_ids", users, "array")),
            Some(list) => {
                if let Some(entry) = list.iter().find(|entry| !entry.is_string()) {
                    return Err(RoomError::BadJson(format!(
                        "{} is not of type 'string'",
                        py_repr(entry)
                    )));
                }
            }
        }
    }
    if let Some(room) = mentions.get("room")
        && !room.is_boolean()
    {
        return Err(not_of_type("room", room, "boolean"));
    }
    Ok(())
}

/// JSON schema's `integer`: an integral number (a boolean is not one).
fn is_integer(value: &Value) -> bool {
    value.as_i64().is_some() || value.as_f64().is_some_and(|n| n.fract() == 0.0)
}

/// Synapse's `_validation_error_to_api_error`: `"key": <value> is not of type '<type>'`.
fn not_of_type(key: &str, value: &Value, kind: &str) -> RoomError {
    RoomError::BadJson(format!(
        "\"{key}\": {} is not of type '{kind}'",
        py_repr(value)
    ))
}

/// A JSON value as Python's `repr` prints it (jsonschema's messages quote values so).
fn py_repr(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str(s),
        Value::Array(list) => {
            let items: Vec<String> = list.iter().map(py_repr).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Object(map) => {
            let items: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
                .collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}

fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::from(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(kind: &str, is_state: bool, content: Value) -> Result<(), String> {
        let Value::Object(content) = content else {
            panic!("an object")
        };
        client_event("!r:hs", kind, is_state, &content).map_err(|err| err.to_string())
    }

    #[test]
    fn synapse_refuses_what_its_validator_refuses() {
        let cases: Vec<(&str, bool, Value, Result<(), &str>)> = vec![
            (
                "m.room.message",
                false,
                json!({"body": "b", "msgtype": "m.text"}),
                Ok(()),
            ),
            (
                "m.room.message",
                false,
                json!({"msgtype": "m.text"}),
                Err("'body' not in content"),
            ),
            (
                "m.room.message",
                false,
                json!({"body": 1, "msgtype": "m.text"}),
                Err("'body' not a string type"),
            ),
            (
                "m.room.message",
                false,
                json!({"body": "b"}),
                Err("'msgtype' not in content"),
            ),
            (
                "m.room.name",
                false,
                json!({"name": "n"}),
                Err("'m.room.name' must be state events"),
            ),
            ("m.room.name", true, json!({}), Err("'name' not in content")),
            ("m.room.topic", true, json!({"topic": "t"}), Ok(())),
            (
                "m.room.member",
                true,
                json!({}),
                Err("Content has not membership key"),
            ),
            (
                "m.room.member",
                true,
                json!({"membership": "dance"}),
                Err("Invalid membership key"),
            ),
            (
                "m.room.tombstone",
                true,
                json!({"replacement_room": "!r:hs"}),
                Err("Tombstone cannot reference the room it was sent in"),
            ),
            (
                "m.room.power_levels",
                true,
                json!({"ban": "x"}),
                Err("\"ban\": 'x' is not of type 'integer'"),
            ),
            (
                "m.room.power_levels",
                true,
                json!({"users": {"@a:hs": "60"}}),
                Err("\"@a:hs\": '60' is not of type 'integer'"),
            ),
            (
                "m.room.power_levels",
                true,
                json!({"events": []}),
                Err("\"events\": [] is not of type 'object'"),
            ),
            (
                "m.room.power_levels",
                true,
                json!({"kick": true}),
                Err("\"kick\": True is not of type 'integer'"),
            ),
            (
                "m.room.power_levels",
                true,
                json!({"kick": 50, "custom": "x"}),
                Ok(()),
            ),
            (
                "org.example",
                false,
                json!({"m.mentions": {"room": "yes"}}),
                Err("\"room\": 'yes' is not of type 'boolean'"),
            ),
            (
                "org.example",
                false,
                json!({"m.mentions": {"user_ids": ["@a:hs"], "room": true}}),
                Ok(()),
            ),
        ];
        for (kind, is_state, content, expected) in cases {
            assert_eq!(
                check(kind, is_state, content.clone()),
                expected.map_err(str::to_owned),
                "{kind} {content}"
            );
        }
    }
}

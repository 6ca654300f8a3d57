//! Power levels (`m.room.power_levels`) as the auth rules read them: integers only (Synapse
//! refuses string levels from clients in every room version, and local rooms get events from
//! clients only), with the spec's defaults for absent keys and for a room that has no power
//! levels event yet.

use serde_json::{Map, Value};

/// The power levels in force, with defaults applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PowerLevels {
    /// The `m.room.power_levels` content; `None` before the room has one.
    content: Option<Map<String, Value>>,
    /// The room creator, who has level 100 while there is no power levels event.
    creator: String,
}

impl PowerLevels {
    pub fn new(content: Option<&Map<String, Value>>, creator: &str) -> Self {
        Self {
            content: content.cloned(),
            creator: creator.to_owned(),
        }
    }

    fn int(&self, value: Option<&Value>) -> Option<i64> {
        value.and_then(Value::as_i64)
    }

    /// A user's level: `users[user]`, else `users_default`; without a power levels event, 100
    /// for the creator and 0 for everyone else.
    pub fn user_level(&self, user_id: &str) -> i64 {
        match &self.content {
            None => {
                if user_id == self.creator {
                    100
                } else {
                    0
                }
            }
            Some(content) => self
                .int(content.get("users").and_then(|users| users.get(user_id)))
                .or_else(|| self.int(content.get("users_default")))
                .unwrap_or(0),
        }
    }

    /// A named level (`invite`, `kick`, `ban`, `redact`, `state_default`, `events_default`).
    pub fn named(&self, key: &str) -> i64 {
        let default = match key {
            "invite" | "events_default" => 0,
            // Without a power levels event, only the creator (100) may do these; with one,
            // the spec's defaults are 50.
            _ => 50,
        };
        match &self.content {
            None if key == "state_default" => 0,
            None => default,
            Some(content) => self.int(content.get(key)).unwrap_or(default),
        }
    }

    /// Level needed to send an event of `event_type` (state or not).
    pub fn send_level(&self, event_type: &str, is_state: bool) -> i64 {
        let specific = self.content.as_ref().and_then(|content| {
            self.int(
                content
                    .get("events")
                    .and_then(|events| events.get(event_type)),
            )
        });
        specific.unwrap_or_else(|| {
            if is_state {
                self.named("state_default")
            } else {
                self.named("events_default")
            }
        })
    }

    /// The `notifications.room` level (for @room mentions), default 50.
    pub fn notifications_room(&self) -> i64 {
        self.content
            .as_ref()
            .and_then(|content| self.int(content.get("notifications").and_then(|n| n.get("room"))))
            .unwrap_or(50)
    }

    /// The content, if any.
    pub fn content(&self) -> Option<&Map<String, Value>> {
        self.content.as_ref()
    }
}

/// Checks the shape rules of a new power levels content (any room version): every level an
/// integer (no strings, no floats), `users` keys valid user IDs. Returns a Synapse-style
/// message for the first violation.
pub fn validate_content(content: &Map<String, Value>) -> Result<(), String> {
    for key in [
        "ban",
        "invite",
        "kick",
        "redact",
        "state_default",
        "events_default",
        "users_default",
    ] {
        if let Some(value) = content.get(key)
            && !is_int(value)
        {
            return Err(format!("{value} must be an integer."));
        }
    }
    for key in ["events", "notifications"] {
        if let Some(value) = content.get(key) {
            let Some(map) = value.as_object() else {
                return Err(format!("{key} must be an object"));
            };
            for level in map.values() {
                if !is_int(level) {
                    return Err(format!("{level} must be an integer."));
                }
            }
        }
    }
    if let Some(users) = content.get("users") {
        let Some(users) = users.as_object() else {
            return Err("users must be an object".to_owned());
        };
        for (user, level) in users {
            if <&ruma::UserId>::try_from(user.as_str()).is_err() {
                return Err(format!("Not a valid user_id: {user}"));
            }
            if !is_int(level) {
                return Err(format!("Not a valid power level: {level}"));
            }
        }
    }
    Ok(())
}

fn is_int(value: &Value) -> bool {
    value.as_i64().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn levels(content: Value) -> PowerLevels {
        PowerLevels::new(content.as_object(), "@creator:hs")
    }

    #[test]
    fn without_an_event_the_creator_rules() {
        let pl = PowerLevels::new(None, "@creator:hs");
        assert_eq!(pl.user_level("@creator:hs"), 100);
        assert_eq!(pl.user_level("@other:hs"), 0);
        assert_eq!(pl.named("ban"), 50);
        assert_eq!(pl.send_level("m.room.topic", true), 0);
        assert_eq!(pl.send_level("m.room.message", false), 0);
    }

    #[test]
    fn defaults_and_overrides() {
        let pl = levels(json!({
            "users": {"@mod:hs": 50, "@admin:hs": 100},
            "users_default": 10,
            "events": {"m.room.name": 75, "m.reaction": 20},
            "events_default": 5,
            "kick": 40
        }));
        assert_eq!(pl.user_level("@mod:hs"), 50);
        assert_eq!(pl.user_level("@nobody:hs"), 10);
        assert_eq!(pl.send_level("m.room.name", true), 75);
        assert_eq!(pl.send_level("m.room.topic", true), 50);
        assert_eq!(pl.send_level("m.reaction", false), 20);
        assert_eq!(pl.send_level("m.room.message", false), 5);
        assert_eq!(pl.named("kick"), 40);
        assert_eq!(pl.named("ban"), 50);
        assert_eq!(pl.named("invite"), 0);
        assert_eq!(pl.named("redact"), 50);
        assert_eq!(pl.notifications_room(), 50);
    }

    #[test]
    fn v10_rejects_non_integer_levels() {
        assert!(
            validate_content(
                json!({"ban": 50, "users": {"@a:hs": 100}})
                    .as_object()
                    .unwrap()
            )
            .is_ok()
        );
        assert!(validate_content(json!({"ban": "50"}).as_object().unwrap()).is_err());
        assert!(validate_content(json!({"events": {"m.x": 1.5}}).as_object().unwrap()).is_err());
        assert!(
            validate_content(json!({"users": {"not-a-user": 1}}).as_object().unwrap()).is_err()
        );
        assert!(validate_content(json!({"users": {"@a:hs": "1"}}).as_object().unwrap()).is_err());
    }
}

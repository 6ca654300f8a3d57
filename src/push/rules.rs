//! Push rule evaluation for one event and one recipient, with ruma's evaluator
//! ([`Ruleset::get_actions`]) over the rules Synapse gave us for the user. Pure: the caller
//! reads the room (members, power levels, mutes) and the stored rules.

use std::collections::BTreeMap;

use ruma::power_levels::NotificationPowerLevels;
use ruma::push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset};
use ruma::room_version_rules::{AuthorizationRules, RoomPowerLevelsRules};
use ruma::serde::Raw;
use ruma::{Int, OwnedRoomId, OwnedUserId, UInt, UserId};
use serde_json::{Map, Value};

/// What the rules say about one event for one user.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub notify: bool,
    pub highlight: bool,
    /// The matching rule's actions, as JSON (for `/notifications` and the tweaks).
    pub actions: Value,
}

/// The user's ruleset from Synapse's `GET /pushrules/` answer (`{"global": {...}}`); the
/// server defaults when we never learned it or it does not parse (what Synapse applies to a
/// user who never changed a rule).
pub fn ruleset(user_id: &UserId, stored: Option<&Value>) -> Ruleset {
    stored
        .and_then(|value| value.get("global"))
        .and_then(|global| serde_json::from_value::<Ruleset>(global.clone()).ok())
        .unwrap_or_else(|| Ruleset::server_default(user_id))
}

/// What the push conditions need to know about the room at the event.
pub struct RoomFacts<'a> {
    pub room_id: &'a OwnedRoomId,
    /// Joined members.
    pub member_count: u64,
    /// `m.room.power_levels` content, if the room has one.
    pub power_levels: Option<&'a Map<String, Value>>,
}

/// The push-condition context for `user_id` (display name from their member event).
pub fn context(
    facts: &RoomFacts<'_>,
    user_id: &UserId,
    display_name: &str,
) -> PushConditionRoomCtx {
    let context = PushConditionRoomCtx::new(
        facts.room_id.clone(),
        UInt::new_saturating(facts.member_count),
        user_id.to_owned(),
        display_name.to_owned(),
    );
    let Some(content) = facts.power_levels else {
        // No power levels event: nobody's level is known, so `sender_notification_permission`
        // (@room) never matches, as in Synapse.
        return context;
    };
    let int = |value: Option<&Value>, default: i64| {
        Int::new_saturating(value.and_then(Value::as_i64).unwrap_or(default))
    };
    let users: BTreeMap<OwnedUserId, Int> = content
        .get("users")
        .and_then(Value::as_object)
        .map(|users| {
            users
                .iter()
                .filter_map(|(user, level)| {
                    Some((
                        OwnedUserId::try_from(user.as_str()).ok()?,
                        int(Some(level), 0),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut notifications = NotificationPowerLevels::new();
    notifications.room = int(content.get("notifications").and_then(|n| n.get("room")), 50);
    // Local rooms are room version 10: creators have no special power.
    let rules = RoomPowerLevelsRules::new(&AuthorizationRules::V8, []);
    context.with_power_levels(PushConditionPowerLevelsCtx::new(
        users,
        int(content.get("users_default"), 0),
        notifications,
        rules,
    ))
}

/// Evaluates `event` (client format, with `room_id`) for one recipient.
pub async fn evaluate(ruleset: &Ruleset, event: &Value, context: &PushConditionRoomCtx) -> Outcome {
    let Ok(raw) = Raw::<Value>::from_json_string(event.to_string()) else {
        return Outcome::default();
    };
    let actions = ruleset.get_actions(&raw, context).await;
    Outcome {
        notify: actions.iter().any(Action::should_notify),
        highlight: actions.iter().any(Action::is_highlight),
        actions: serde_json::to_value(actions).unwrap_or(Value::Array(Vec::new())),
    }
}

/// The tweaks of a rule's actions, as the push gateway gets them (`set_tweak` without a
/// `value` means `true`).
pub fn tweaks(actions: &Value) -> Map<String, Value> {
    let mut tweaks = Map::new();
    for action in actions.as_array().map_or(&[][..], Vec::as_slice) {
        if let Some(name) = action.get("set_tweak").and_then(Value::as_str) {
            let value = action.get("value").cloned().unwrap_or(Value::Bool(true));
            tweaks.insert(name.to_owned(), value);
        }
    }
    tweaks
}

/// The thread an event belongs to for unread counts (MSC3773): the root of an `m.thread`
/// relation, else `main`.
pub fn thread_of(content: &Map<String, Value>) -> String {
    content
        .get("m.relates_to")
        .filter(|relation| relation.get("rel_type").and_then(Value::as_str) == Some("m.thread"))
        .and_then(|relation| relation.get("event_id"))
        .and_then(Value::as_str)
        .map_or_else(
            || crate::store::events::MAIN_THREAD.to_owned(),
            str::to_owned,
        )
}

/// Whether `com.beeper.mute`'s `muted_until` silences the room at `now_ms` (-1: for ever).
pub fn muted(muted_until: Option<i64>, now_ms: i64) -> bool {
    match muted_until {
        Some(-1) => true,
        Some(until) => until > now_ms,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn facts<'a>(room: &'a OwnedRoomId, power: Option<&'a Map<String, Value>>) -> RoomFacts<'a> {
        RoomFacts {
            room_id: room,
            member_count: 3,
            power_levels: power,
        }
    }

    fn message(sender: &str, content: Value) -> Value {
        json!({
            "type": "m.room.message", "room_id": "!hs_r:x", "event_id": "$e", "sender": sender,
            "origin_server_ts": 1, "content": content,
        })
    }

    async fn outcome(rules: &Ruleset, event: Value, power: Option<&Map<String, Value>>) -> Outcome {
        let room = OwnedRoomId::try_from("!hs_r:x").unwrap();
        let user = UserId::parse("@alice:x").unwrap();
        evaluate(
            rules,
            &event,
            &context(&facts(&room, power), &user, "Alice"),
        )
        .await
    }

    #[tokio::test]
    async fn default_rules_notify_highlight_and_stay_quiet_as_synapse() {
        let user = UserId::parse("@alice:x").unwrap();
        let rules = ruleset(&user, None);
        let plain = outcome(
            &rules,
            message("@bob:x", json!({"msgtype": "m.text", "body": "hi"})),
            None,
        )
        .await;
        assert!(plain.notify && !plain.highlight, "{plain:?}");
        let mention = message(
            "@bob:x",
            json!({"msgtype": "m.text", "body": "hey alice", "m.mentions": {"user_ids": ["@alice:x"]}}),
        );
        let mention = outcome(&rules, mention, None).await;
        assert!(mention.notify && mention.highlight);
        assert_eq!(
            tweaks(&mention.actions).get("highlight"),
            Some(&json!(true))
        );
        // ruma's defaults follow Matrix 1.7+ (no `.m.rule.contains_display_name`); Synapse
        // still lists it, and the display name from the context must reach it.
        let mut stored = json!({"global": serde_json::to_value(&rules).unwrap()});
        stored["global"]["override"]
            .as_array_mut()
            .unwrap()
            .push(json!({
                "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
                "conditions": [{"kind": "contains_display_name"}],
                "actions": ["notify", {"set_tweak": "highlight"}],
            }));
        let synapse_like = ruleset(&user, Some(&stored));
        let name = || message("@bob:x", json!({"msgtype": "m.text", "body": "Alice?"}));
        assert!(outcome(&synapse_like, name(), None).await.highlight);
        assert!(!outcome(&rules, name(), None).await.highlight);
        let notice = outcome(
            &rules,
            message("@bob:x", json!({"msgtype": "m.notice", "body": "bot"})),
            None,
        )
        .await;
        assert!(!notice.notify, "notices are suppressed");
        let own = outcome(
            &rules,
            message("@alice:x", json!({"msgtype": "m.text", "body": "Alice"})),
            None,
        )
        .await;
        assert!(!own.notify, "the user's own events never notify");
    }

    #[tokio::test]
    async fn room_mentions_need_the_notification_power_level() {
        let user = UserId::parse("@alice:x").unwrap();
        let rules = ruleset(&user, None);
        let at_room = || {
            message(
                "@bob:x",
                json!({"msgtype": "m.text", "body": "@room", "m.mentions": {"room": true}}),
            )
        };
        let low = json!({"users": {"@bob:x": 0}, "notifications": {"room": 50}});
        let high = json!({"users": {"@bob:x": 50}});
        assert!(!outcome(&rules, at_room(), low.as_object()).await.highlight);
        assert!(outcome(&rules, at_room(), high.as_object()).await.highlight);
    }

    #[tokio::test]
    async fn a_room_rule_without_actions_silences_the_room() {
        let user = UserId::parse("@alice:x").unwrap();
        let mut stored =
            json!({"global": serde_json::to_value(Ruleset::server_default(&user)).unwrap()});
        stored["global"]["room"] = json!([{
            "rule_id": "!hs_r:x", "default": false, "enabled": true, "actions": [],
        }]);
        let rules = ruleset(&user, Some(&stored));
        let plain = outcome(
            &rules,
            message("@bob:x", json!({"msgtype": "m.text", "body": "hi"})),
            None,
        )
        .await;
        assert!(!plain.notify);
        // Override rules come first: a mention still highlights (as in Synapse).
        let mention = message(
            "@bob:x",
            json!({"msgtype": "m.text", "body": "x", "m.mentions": {"user_ids": ["@alice:x"]}}),
        );
        assert!(outcome(&rules, mention, None).await.notify);
    }

    #[test]
    fn unparsable_rules_fall_back_to_the_defaults() {
        let user = UserId::parse("@alice:x").unwrap();
        let rules = ruleset(&user, Some(&json!({"global": "nope"})));
        assert_eq!(
            serde_json::to_value(rules).unwrap(),
            serde_json::to_value(Ruleset::server_default(&user)).unwrap()
        );
    }

    #[test]
    fn threads_and_mutes() {
        let threaded = json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}});
        assert_eq!(thread_of(threaded.as_object().unwrap()), "$root");
        let reply = json!({"m.relates_to": {"m.in_reply_to": {"event_id": "$x"}}});
        assert_eq!(thread_of(reply.as_object().unwrap()), "main");
        assert!(muted(Some(-1), 10));
        assert!(muted(Some(11), 10));
        assert!(!muted(Some(9), 10));
        assert!(!muted(None, 10));
    }
}

//! The authorization rules for local rooms, checked against the current state before an
//! event is accepted. What differs between room versions is read from ruma's
//! `AuthorizationRules` for the room's version ([`super::version`]): knocking (7+),
//! `restricted` (8+) and `knock_restricted` (10+) join rules, which are unknown join rules —
//! no one may join — in older rooms, and the `notifications` power-level limits (6+). Messages and codes follow Synapse's
//! `synapse/event_auth.py`, because bridges match on them (mautrix looks for
//! "is already in the room").
//!
//! A local room has one authoritative server, so the federation-only rules (signatures,
//! auth_events selection) do not apply; everything else does: membership transitions, join
//! rules (restricted joins carry `join_authorised_via_users_server`, see
//! [`super::restricted`]), power levels for sending, state, invite, kick, ban and redact, and
//! the power-levels change rules.

use serde_json::{Map, Value};

use super::power::{self, PowerLevels};
use super::state::RoomState;

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 403 `M_FORBIDDEN` with Synapse's message.
    #[error("{0}")]
    Forbidden(String),
    /// 400 `M_BAD_JSON`: the content is malformed for its type.
    #[error("{0}")]
    BadJson(String),
    /// A knock in a room whose version has no knocking: Synapse's event auth does not know
    /// the membership there and answers 500 `M_FORBIDDEN` ("Unknown membership knock").
    #[error("{0}")]
    UnknownMembership(String),
}

impl From<AuthError> for super::RoomError {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::Forbidden(message) => Self::Forbidden(message),
            AuthError::BadJson(message) => Self::BadJson(message),
            AuthError::UnknownMembership(message) => Self::UnknownMembership(message),
        }
    }
}

fn forbidden(message: impl Into<String>) -> AuthError {
    AuthError::Forbidden(message.into())
}

/// An event about to be added to a room, before it has an ID or position.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// Who sends it.
    pub sender: ruma::OwnedUserId,
    /// The event type.
    pub kind: String,
    /// Present for state events.
    pub state_key: Option<String>,
    /// The content.
    pub content: Map<String, Value>,
    /// `origin_server_ts` in milliseconds.
    pub origin_server_ts: i64,
    /// For `m.room.redaction`: the target.
    pub redacts: Option<ruma::OwnedEventId>,
}

impl Proposal {
    pub fn membership(&self) -> Option<&str> {
        self.content.get("membership").and_then(Value::as_str)
    }
}

/// Checks `event` against `state`. `redact_target_sender` is the sender of the event an
/// `m.room.redaction` targets, when that event exists in this room.
pub fn check(
    state: &RoomState,
    event: &Proposal,
    redact_target_sender: Option<&str>,
) -> Result<(), AuthError> {
    if event.kind == "m.room.create" {
        // The create event is written by createRoom itself; a second one is never allowed.
        return Err(forbidden("Create event has prev events"));
    }
    let sender = event.sender.as_str();
    let power = state.power_levels();

    if event.kind == "m.room.member" {
        let target = event
            .state_key
            .as_deref()
            .ok_or_else(|| AuthError::BadJson("Member event has no state_key".to_owned()))?;
        check_membership(state, &power, sender, target, event)?;
        // Membership events are also subject to the send level (spec rule 5 runs after 4
        // only for non-member events; Synapse checks member events purely by transition).
        return Ok(());
    }

    if !state.is_joined(sender) {
        return Err(forbidden(format!(
            "User {sender} not in room {}",
            state.room_id
        )));
    }

    let is_state = event.state_key.is_some();
    let user_level = power.user_level(sender);
    let send_level = power.send_level(&event.kind, is_state);
    if user_level < send_level {
        return Err(forbidden(format!(
            "You don't have permission to post that to the room. user_level ({user_level}) < send_level ({send_level})"
        )));
    }
    if let Some(key) = &event.state_key
        && key.starts_with('@')
        && key != sender
    {
        return Err(forbidden("You are not allowed to set others state"));
    }

    if event.kind == "m.room.power_levels" {
        let rules = super::version::rules(&state.room_version).authorization;
        check_power_levels(
            &power,
            sender,
            &event.content,
            rules.limit_notifications_power_levels,
        )?;
    }
    // Redacting someone else's event needs the redact level; one's own needs nothing more.
    if event.kind == "m.room.redaction"
        && user_level < power.named("redact")
        && redact_target_sender.is_some_and(|target| target != sender)
    {
        return Err(forbidden("You don't have permission to redact events"));
    }
    Ok(())
}

fn check_membership(
    state: &RoomState,
    power: &PowerLevels,
    sender: &str,
    target: &str,
    event: &Proposal,
) -> Result<(), AuthError> {
    let membership = event
        .membership()
        .ok_or_else(|| AuthError::BadJson("Member event has no valid membership".to_owned()))?;
    let caller = state.membership(sender);
    let caller_in_room = caller == Some("join");
    let caller_invited = caller == Some("invite");
    let caller_knocked = caller == Some("knock");
    let target_membership = state.membership(target);
    let target_in_room = target_membership == Some("join");
    let target_banned = target_membership == Some("ban");
    let rules = super::version::rules(&state.room_version).authorization;
    let join_rule = state.join_rule();
    // A join rule the room's version does not know lets no one in (Synapse's `else`).
    let restricted = (rules.restricted_join_rule && join_rule == "restricted")
        || (rules.knock_restricted_join_rule && join_rule == "knock_restricted");
    let invite_only =
        join_rule == "invite" || (rules.knocking && join_rule == "knock") || restricted;
    let knockable = join_rule == "knock"
        || (rules.knock_restricted_join_rule && join_rule == "knock_restricted");
    let user_level = power.user_level(sender);
    let target_level = power.user_level(target);
    let invite_level = power.named("invite");
    let ban_level = power.named("ban");

    // Spec rule 4.2.1: the creator's own first join, right after the create event.
    if membership == "join"
        && sender == target
        && sender == state.creator.as_str()
        && state.entries.len() == 1
        && state.get("m.room.create", "").is_some()
    {
        return Ok(());
    }

    if membership != "join" && membership != "knock" {
        if (caller_invited || caller_knocked) && membership == "leave" && target == sender {
            return Ok(());
        }
        if !caller_in_room {
            return Err(forbidden(format!(
                "{sender} not in room {}.",
                state.room_id
            )));
        }
    }

    match membership {
        "invite" => {
            if target_banned {
                Err(forbidden(format!("{target} is banned from the room")))
            } else if target_in_room {
                Err(forbidden(format!("{target} is already in the room.")))
            } else if user_level < invite_level {
                Err(forbidden("You don't have permission to invite users"))
            } else {
                Ok(())
            }
        }
        "join" => {
            if sender != target {
                Err(forbidden("Cannot force another user to join."))
            } else if target_banned {
                Err(forbidden("You are banned from this room"))
            } else if join_rule == "public" {
                Ok(())
            } else if restricted && !(caller_in_room || caller_invited) {
                // MSC3083: the join names a member who could have invited the user
                // (`join_authorised_via_users_server`); the room engine chose one after
                // checking the `allow` rules.
                let authoriser = event
                    .content
                    .get("join_authorised_via_users_server")
                    .and_then(Value::as_str);
                match authoriser {
                    None => Err(forbidden("Join event is missing authorising user.")),
                    Some(user) if !state.is_joined(user) => Err(forbidden(format!(
                        "User {user} not in room {}",
                        state.room_id
                    ))),
                    Some(user) if power.user_level(user) < invite_level => {
                        Err(forbidden("Join event authorised by invalid server."))
                    }
                    Some(_) => Ok(()),
                }
            } else if invite_only {
                if caller_in_room || caller_invited {
                    Ok(())
                } else {
                    Err(forbidden("You are not invited to this room."))
                }
            } else {
                Err(forbidden("You are not allowed to join this room"))
            }
        }
        "leave" => {
            if target_banned && user_level < ban_level {
                Err(forbidden(format!("You cannot unban user {target}.")))
            } else if target != sender {
                let kick_level = power.named("kick");
                if user_level < kick_level || user_level <= target_level {
                    Err(forbidden(format!("You cannot kick user {target}.")))
                } else {
                    Ok(())
                }
            } else {
                Ok(())
            }
        }
        "ban" => {
            if user_level < ban_level {
                Err(forbidden("You don't have permission to ban"))
            } else if user_level <= target_level {
                Err(forbidden("You don't have permission to ban this user"))
            } else {
                Ok(())
            }
        }
        "knock" if rules.knocking => {
            if !knockable {
                Err(forbidden("You don't have permission to knock"))
            } else if target != sender {
                Err(forbidden("You cannot knock for other users"))
            } else if target_in_room {
                Err(forbidden("You cannot knock on a room you are already in"))
            } else if caller_invited {
                Err(forbidden("You are already invited to this room"))
            } else if target_banned {
                Err(forbidden("You are banned from this room"))
            } else {
                Ok(())
            }
        }
        "knock" => Err(AuthError::UnknownMembership(
            "Unknown membership knock".to_owned(),
        )),
        other => Err(AuthError::BadJson(format!("Unknown membership {other}"))),
    }
}

/// The spec's power-levels change rules: integers only (Synapse refuses string levels from
/// clients in every room version); a sender may only change levels that are at most their
/// own, to values at most their own, and may not change another user's level that is equal to
/// or above their own. `notifications` levels are held to this from room version 6
/// (`limit_notifications`).
fn check_power_levels(
    current: &PowerLevels,
    sender: &str,
    new: &Map<String, Value>,
    limit_notifications: bool,
) -> Result<(), AuthError> {
    power::validate_content(new).map_err(AuthError::BadJson)?;
    let Some(old) = current.content() else {
        return Ok(());
    };
    let user_level = current.user_level(sender);
    let level = |map: &Map<String, Value>, key: &str| map.get(key).and_then(Value::as_i64);
    let check_change = |old: Option<i64>, new: Option<i64>| -> Result<(), AuthError> {
        if old == new {
            return Ok(());
        }
        if old.is_some_and(|old| old > user_level) || new.is_some_and(|new| new > user_level) {
            return Err(forbidden(
                "You don't have permission to add ops level greater than your own",
            ));
        }
        Ok(())
    };
    for key in [
        "users_default",
        "events_default",
        "state_default",
        "ban",
        "redact",
        "kick",
        "invite",
    ] {
        check_change(level(old, key), level(new, key))?;
    }
    let maps: &[&str] = if limit_notifications {
        &["events", "notifications"]
    } else {
        &["events"]
    };
    for &key in maps {
        let empty = Map::new();
        let old_map = old.get(key).and_then(Value::as_object).unwrap_or(&empty);
        let new_map = new.get(key).and_then(Value::as_object).unwrap_or(&empty);
        for name in old_map.keys().chain(new_map.keys()) {
            check_change(level(old_map, name), level(new_map, name))?;
        }
    }
    let empty = Map::new();
    let old_users = old
        .get("users")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let new_users = new
        .get("users")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for user in old_users.keys().chain(new_users.keys()) {
        let (before, after) = (level(old_users, user), level(new_users, user));
        if before == after {
            continue;
        }
        // Another user's existing level at or above ours cannot be touched.
        if user != sender && before.is_some_and(|before| before >= user_level) {
            return Err(forbidden(
                "You don't have permission to remove ops level equal to your own",
            ));
        }
        check_change(before, after)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::state::StateEntry;
    use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
    use serde_json::json;

    fn uid(s: &str) -> OwnedUserId {
        OwnedUserId::try_from(s).unwrap()
    }

    /// A room made by @alice (PL 100) with @mod at 50; `members` gives the memberships.
    fn room(join_rule: &str, members: &[(&str, &str)]) -> RoomState {
        let mut state = RoomState::new(
            OwnedRoomId::try_from("!hs_r:hs").unwrap(),
            "10",
            uid("@alice:hs"),
        );
        let mut put = |kind: &str, key: &str, content: Value| {
            state.entries.insert(
                (kind.to_owned(), key.to_owned()),
                StateEntry {
                    event_id: OwnedEventId::try_from(
                        format!("${kind}{key}").replace(['@', ':', '.'], ""),
                    )
                    .unwrap(),
                    stream: 1,
                    sender: uid("@alice:hs"),
                    content: content.as_object().unwrap().clone(),
                },
            );
        };
        put(
            "m.room.power_levels",
            "",
            json!({"users": {"@alice:hs": 100, "@mod:hs": 50}, "events": {"m.room.name": 50}}),
        );
        put("m.room.join_rules", "", json!({"join_rule": join_rule}));
        for (user, membership) in members {
            put("m.room.member", user, json!({"membership": membership}));
        }
        state
    }

    fn member(sender: &str, target: &str, membership: &str) -> Proposal {
        Proposal {
            sender: uid(sender),
            kind: "m.room.member".into(),
            state_key: Some(target.into()),
            content: json!({"membership": membership})
                .as_object()
                .unwrap()
                .clone(),
            origin_server_ts: 0,
            redacts: None,
        }
    }

    fn event(sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> Proposal {
        Proposal {
            sender: uid(sender),
            kind: kind.into(),
            state_key: state_key.map(str::to_owned),
            content: content.as_object().unwrap().clone(),
            origin_server_ts: 0,
            redacts: None,
        }
    }

    fn denied(result: Result<(), AuthError>) -> String {
        match result {
            Err(AuthError::Forbidden(message)) => message,
            other => panic!("expected Forbidden, got {other:?}"),
        }
    }

    #[test]
    fn restricted_joins_need_a_member_who_could_invite() {
        let members = [
            ("@alice:hs", "join"),
            ("@bob:hs", "join"),
            ("@inv:hs", "invite"),
        ];
        let restricted = room("restricted", &members);
        // @bob is joined at level 0, enough while the invite level is 0 (the default).
        let mut strict = restricted.clone();
        if let Some(entry) = strict
            .entries
            .get_mut(&("m.room.power_levels".into(), String::new()))
        {
            entry.content.insert("invite".into(), json!(50));
        }
        let join_via = |via: Option<&str>| {
            let mut join = member("@new:hs", "@new:hs", "join");
            if let Some(via) = via {
                join.content
                    .insert("join_authorised_via_users_server".into(), json!(via));
            }
            join
        };
        let cases: Vec<(&RoomState, Proposal, Result<(), &str>)> = vec![
            (&restricted, join_via(Some("@alice:hs")), Ok(())),
            (
                &restricted,
                join_via(None),
                Err("Join event is missing authorising user."),
            ),
            (
                &restricted,
                join_via(Some("@gone:hs")),
                Err("User @gone:hs not in room !hs_r:hs"),
            ),
            (
                &strict,
                join_via(Some("@bob:hs")),
                Err("Join event authorised by invalid server."),
            ),
            // Invited or joined users need no authorisation.
            (&restricted, member("@inv:hs", "@inv:hs", "join"), Ok(())),
        ];
        for (state, event, want) in cases {
            let got = check(state, &event, None);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{event:?}"),
                Err(message) => assert_eq!(denied(got), message, "{event:?}"),
            }
        }
    }

    #[test]
    fn membership_transitions() {
        let members = [
            ("@alice:hs", "join"),
            ("@mod:hs", "join"),
            ("@bob:hs", "join"),
            ("@inv:hs", "invite"),
            ("@bad:hs", "ban"),
        ];
        let invite_room = room("invite", &members);
        let public_room = room("public", &members);
        let cases: Vec<(&RoomState, Proposal, Result<(), &str>)> = vec![
            (
                &invite_room,
                member("@alice:hs", "@new:hs", "invite"),
                Ok(()),
            ),
            (
                &invite_room,
                member("@alice:hs", "@bob:hs", "invite"),
                Err("@bob:hs is already in the room."),
            ),
            (
                &invite_room,
                member("@alice:hs", "@bad:hs", "invite"),
                Err("@bad:hs is banned from the room"),
            ),
            (
                &invite_room,
                member("@out:hs", "@new:hs", "invite"),
                Err("@out:hs not in room !hs_r:hs."),
            ),
            (
                &invite_room,
                member("@new:hs", "@new:hs", "join"),
                Err("You are not invited to this room."),
            ),
            (&invite_room, member("@inv:hs", "@inv:hs", "join"), Ok(())),
            (&invite_room, member("@inv:hs", "@inv:hs", "leave"), Ok(())),
            (&public_room, member("@new:hs", "@new:hs", "join"), Ok(())),
            (
                &public_room,
                member("@bad:hs", "@bad:hs", "join"),
                Err("You are banned from this room"),
            ),
            (
                &public_room,
                member("@alice:hs", "@new:hs", "join"),
                Err("Cannot force another user to join."),
            ),
            (
                &invite_room,
                member("@bob:hs", "@mod:hs", "leave"),
                Err("You cannot kick user @mod:hs."),
            ),
            (&invite_room, member("@mod:hs", "@bob:hs", "leave"), Ok(())),
            (
                &invite_room,
                member("@mod:hs", "@alice:hs", "leave"),
                Err("You cannot kick user @alice:hs."),
            ),
            (&invite_room, member("@bob:hs", "@bob:hs", "leave"), Ok(())),
            (&invite_room, member("@mod:hs", "@bob:hs", "ban"), Ok(())),
            (
                &invite_room,
                member("@bob:hs", "@mod:hs", "ban"),
                Err("You don't have permission to ban"),
            ),
            (&invite_room, member("@mod:hs", "@bad:hs", "leave"), Ok(())),
            (
                &invite_room,
                member("@bob:hs", "@bad:hs", "leave"),
                Err("You cannot unban user @bad:hs."),
            ),
            (
                &invite_room,
                member("@new:hs", "@new:hs", "knock"),
                Err("You don't have permission to knock"),
            ),
        ];
        for (state, proposal, want) in cases {
            let got = check(state, &proposal, None);
            match want {
                Ok(()) => assert_eq!(got, Ok(()), "{proposal:?}"),
                Err(message) => assert_eq!(denied(got), message, "{proposal:?}"),
            }
        }
    }

    #[test]
    fn sending_needs_membership_and_power() {
        let state = room(
            "invite",
            &[
                ("@alice:hs", "join"),
                ("@bob:hs", "join"),
                ("@left:hs", "leave"),
            ],
        );
        assert_eq!(
            check(
                &state,
                &event("@bob:hs", "m.room.message", None, json!({"body": "hi"})),
                None
            ),
            Ok(())
        );
        assert!(
            denied(check(
                &state,
                &event("@left:hs", "m.room.message", None, json!({})),
                None
            ))
            .starts_with("User @left:hs not in room !hs_r:hs")
        );
        assert!(
            denied(check(
                &state,
                &event("@bob:hs", "m.room.name", Some(""), json!({"name": "x"})),
                None
            ))
            .contains("user_level (0) < send_level (50)")
        );
        assert_eq!(
            check(
                &state,
                &event("@alice:hs", "m.room.name", Some(""), json!({"name": "x"})),
                None
            ),
            Ok(())
        );
        assert_eq!(
            denied(check(
                &state,
                &event("@alice:hs", "m.custom", Some("@bob:hs"), json!({})),
                None
            )),
            "You are not allowed to set others state"
        );
        assert!(
            check(
                &state,
                &event("@alice:hs", "m.room.create", Some(""), json!({})),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn join_rules_and_knocks_follow_the_room_version() {
        let in_version = |version: &str, join_rule: &str| {
            let mut state = room(join_rule, &[("@alice:hs", "join"), ("@inv:hs", "invite")]);
            state.room_version = version.to_owned();
            state
        };
        let knock = member("@new:hs", "@new:hs", "knock");
        assert_eq!(check(&in_version("7", "knock"), &knock, None), Ok(()));
        assert_eq!(
            check(&in_version("6", "knock"), &knock, None),
            Err(AuthError::UnknownMembership(
                "Unknown membership knock".into()
            ))
        );
        // An invitee may join a restricted room from version 8; before, the rule is unknown.
        let join = member("@inv:hs", "@inv:hs", "join");
        assert_eq!(check(&in_version("8", "restricted"), &join, None), Ok(()));
        assert_eq!(
            denied(check(&in_version("7", "restricted"), &join, None)),
            "You are not allowed to join this room"
        );
        assert_eq!(
            denied(check(&in_version("9", "knock_restricted"), &join, None)),
            "You are not allowed to join this room"
        );
        assert_eq!(
            check(&in_version("10", "knock_restricted"), &join, None),
            Ok(())
        );
    }

    #[test]
    fn redaction_of_others_needs_the_redact_level() {
        let state = room("invite", &[("@alice:hs", "join"), ("@bob:hs", "join")]);
        let mut redaction = event("@bob:hs", "m.room.redaction", None, json!({}));
        assert_eq!(check(&state, &redaction, Some("@bob:hs")), Ok(()));
        assert_eq!(
            denied(check(&state, &redaction, Some("@alice:hs"))),
            "You don't have permission to redact events"
        );
        redaction.sender = uid("@alice:hs");
        assert_eq!(check(&state, &redaction, Some("@bob:hs")), Ok(()));
    }

    #[test]
    fn power_level_changes() {
        let state = room("invite", &[("@alice:hs", "join"), ("@mod:hs", "join")]);
        let pl =
            |sender: &str, content: Value| event(sender, "m.room.power_levels", Some(""), content);
        // The mod can raise a user to their own level, not above, and cannot demote the admin.
        assert_eq!(
            check(
                &state,
                &pl(
                    "@mod:hs",
                    json!({"users": {"@alice:hs": 100, "@mod:hs": 50, "@bob:hs": 50}, "events": {"m.room.name": 50}})
                ),
                None
            ),
            Ok(())
        );
        assert!(check(&state, &pl("@mod:hs", json!({"users": {"@alice:hs": 100, "@mod:hs": 50, "@bob:hs": 51}, "events": {"m.room.name": 50}})), None).is_err());
        assert!(
            check(
                &state,
                &pl(
                    "@mod:hs",
                    json!({"users": {"@alice:hs": 0, "@mod:hs": 50}, "events": {"m.room.name": 50}})
                ),
                None
            )
            .is_err()
        );
        assert_eq!(
            check(
                &state,
                &pl("@alice:hs", json!({"users": {"@alice:hs": 100}, "ban": 1})),
                None
            ),
            Ok(())
        );
        assert!(matches!(
            check(&state, &pl("@alice:hs", json!({"ban": "1"})), None),
            Err(AuthError::BadJson(_))
        ));
    }
}

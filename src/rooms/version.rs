//! Room versions of local rooms: which ones hungryserv makes, and the rules each one brings.
//!
//! Local rooms can be of every stable room version whose room IDs keep the `:server` part,
//! 1 to 11: the class prefix routes a room by its ID, and from version 12 on a room ID is the
//! hash of its create event, which no prefix could be put in. A createRoom for a local class
//! asking for any other version (12, an unstable or unknown one) gets Synapse's 400
//! `M_UNSUPPORTED_ROOM_VERSION`, and one asking for none gets [`DEFAULT`], version 10.
//!
//! Why 10 and not Synapse's default: `/capabilities` is Synapse's answer, and names Synapse's
//! `default_room_version` (12 in Synapse 1.163), which a local room cannot be. A deployment
//! whose clients create local rooms without naming a version (a routing class with
//! `all = true`) should set Synapse's `default_room_version: "10"`, so `/capabilities` tells
//! them the version both kinds of room get.
//!
//! The per-version rules are ruma's (`RoomVersionRules`): the authorization rules read
//! [`ruma::room_version_rules::AuthorizationRules`] (knocking from 7, restricted joins from 8,
//! `knock_restricted` from 10, integer-only power levels from 10, limits on `notifications`
//! from 6, the create event's sender as the creator from 11), and redaction applies
//! [`ruma::room_version_rules::RedactionRules`] of the room's version. What ruma's rules
//! describe and a single-server room never meets (signatures, event ID hashes, state
//! resolution, the v1–v2 same-domain redaction rule, the v1–v5 `m.room.aliases` rule) is left
//! out: every event of a local room comes from this server.
//!
//! May import: nothing of the crate but [`super::RoomError`].

use ruma::RoomVersionId;
use ruma::room_version_rules::RoomVersionRules;
use serde_json::Value;

use super::RoomError;

/// The version of a local room created without `room_version`.
pub const DEFAULT: RoomVersionId = RoomVersionId::V10;

/// The versions local rooms can be of, oldest first.
pub const SUPPORTED: [RoomVersionId; 11] = [
    RoomVersionId::V1,
    RoomVersionId::V2,
    RoomVersionId::V3,
    RoomVersionId::V4,
    RoomVersionId::V5,
    RoomVersionId::V6,
    RoomVersionId::V7,
    RoomVersionId::V8,
    RoomVersionId::V9,
    RoomVersionId::V10,
    RoomVersionId::V11,
];

/// The version a createRoom (or an upgrade) asks for, checked as Synapse checks it: absent is
/// [`DEFAULT`]; not a string is 400 `M_BAD_JSON`; a version local rooms cannot have is 400
/// `M_UNSUPPORTED_ROOM_VERSION` with Synapse's message.
pub fn requested(value: Option<&Value>) -> Result<RoomVersionId, RoomError> {
    let Some(value) = value else {
        return Ok(DEFAULT);
    };
    let Some(name) = value.as_str() else {
        return Err(RoomError::BadJson("room_version must be a string".into()));
    };
    SUPPORTED
        .iter()
        .find(|version| version.as_str() == name)
        .cloned()
        .ok_or_else(|| {
            RoomError::UnsupportedRoomVersion(
                "Your homeserver does not support this room version".into(),
            )
        })
}

/// The rules of a stored room's version. A version string the store holds is one
/// [`requested`] accepted; anything else (never written) reads as [`DEFAULT`]'s rules rather
/// than failing every write to the room.
pub fn rules(version: &str) -> RoomVersionRules {
    SUPPORTED
        .iter()
        .find(|supported| supported.as_str() == version)
        .and_then(RoomVersionId::rules)
        .unwrap_or(RoomVersionRules::V10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn versions_one_to_eleven_and_nothing_else() {
        assert_eq!(requested(None), Ok(RoomVersionId::V10));
        for n in 1..=11 {
            let version = requested(Some(&json!(n.to_string()))).unwrap();
            assert_eq!(version.as_str(), n.to_string());
        }
        for refused in ["12", "0", "org.matrix.msc2870", "ten", ""] {
            assert!(
                matches!(
                    requested(Some(&json!(refused))),
                    Err(RoomError::UnsupportedRoomVersion(_))
                ),
                "{refused}"
            );
        }
        assert!(matches!(
            requested(Some(&json!(10))),
            Err(RoomError::BadJson(_))
        ));
    }

    #[test]
    fn rules_follow_the_version() {
        assert!(!rules("6").authorization.knocking);
        assert!(rules("7").authorization.knocking);
        assert!(!rules("7").authorization.restricted_join_rule);
        assert!(rules("8").authorization.restricted_join_rule);
        assert!(!rules("9").authorization.integer_power_levels);
        assert!(rules("10").authorization.integer_power_levels);
        assert!(rules("11").redaction.keep_room_power_levels_invite);
        assert!(!rules("10").redaction.keep_room_power_levels_invite);
        // Never stored, but must not fail: the default's rules.
        assert!(rules("12").authorization.integer_power_levels);
    }
}

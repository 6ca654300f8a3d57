//! Restricted joins (join rules `restricted` and `knock_restricted`, MSC3083): a user who is
//! neither joined nor invited may join when they are joined to one of the rooms the join
//! rules' `allow` list names (`m.room_membership`), as Synapse's
//! `check_restricted_join_rules` decides. The join event then names a joined member who could
//! have invited them (`join_authorised_via_users_server`, Synapse's
//! `get_user_which_could_invite`), which the auth rules check ([`super::auth`]).
//!
//! An allowed room may be local (its membership is read here) or Synapse's (asked with the
//! user's own token, `GET /joined_rooms`, before anything is written).

use ruma::{OwnedRoomId, UserId};
use serde_json::Value;

use super::RoomError;
use super::power::PowerLevels;
use super::service::Rooms;
use crate::auth::requester::Requester;
use crate::store;
use crate::store::events::EventWithPrev;
use crate::upstream::client::CallError;

impl Rooms {
    /// For a join of `requester` into `room_id`: the member to name as authorising it, when
    /// the room's join rules are restricted and the requester needs them; `None` when the
    /// join needs no authorisation. Refuses with Synapse's 403 when the requester is in none
    /// of the allowed rooms.
    pub(super) async fn restricted_join_authoriser(
        &self,
        requester: &Requester,
        token: &str,
        room_id: &OwnedRoomId,
    ) -> Result<Option<String>, RoomError> {
        let user = requester.user_id.as_str();
        let state = {
            let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
            store::events::current_state(&mut conn, room_id.as_str()).await?
        };
        let find = |kind: &str, key: &str| {
            state
                .iter()
                .find(|e| e.event.kind == kind && e.event.state_key.as_deref() == Some(key))
                .map(|e| &e.event.content)
        };
        let Some(join_rules) = find("m.room.join_rules", "") else {
            return Ok(None);
        };
        // In a room version without them, these join rules are unknown: the auth rules
        // refuse the join, as Synapse's do, with no `allow` to check first.
        let version = find("m.room.create", "")
            .and_then(|content| content.get("room_version"))
            .and_then(Value::as_str)
            .unwrap_or(super::version::DEFAULT.as_str());
        let rules = super::version::rules(version).authorization;
        let join_rule = join_rules.get("join_rule").and_then(Value::as_str);
        let restricted = match join_rule {
            Some("restricted") => rules.restricted_join_rule,
            Some("knock_restricted") => rules.knock_restricted_join_rule,
            _ => false,
        };
        if !restricted {
            return Ok(None);
        }
        let membership = find("m.room.member", user)
            .and_then(|content| content.get("membership"))
            .and_then(Value::as_str);
        if matches!(membership, Some("join" | "invite")) {
            return Ok(None);
        }
        let allowed: Vec<&str> = join_rules
            .get("allow")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|rule| rule.get("type").and_then(Value::as_str) == Some("m.room_membership"))
            .filter_map(|rule| rule.get("room_id").and_then(Value::as_str))
            .collect();
        if !self.in_any_room(requester, token, &allowed).await? {
            return Err(RoomError::Forbidden(
                "You do not belong to any of the required rooms/spaces to join this room.".into(),
            ));
        }
        could_invite(&state, self.server_name().as_str())
            .map(Some)
            .ok_or_else(|| {
                RoomError::BadRequest("Unable to find a user which could issue an invite".into())
            })
    }

    /// Whether the requester is joined to one of `rooms` (local ones read here, the rest
    /// asked of Synapse).
    async fn in_any_room(
        &self,
        requester: &Requester,
        token: &str,
        rooms: &[&str],
    ) -> Result<bool, RoomError> {
        if rooms.is_empty() {
            return Ok(false);
        }
        let user = requester.user_id.as_str();
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        for room in rooms {
            let member =
                store::events::current_state_at_keys(&mut conn, room, &[("m.room.member", user)])
                    .await?;
            if member
                .iter()
                .any(|e| e.event.content.get("membership").and_then(Value::as_str) == Some("join"))
            {
                return Ok(true);
            }
        }
        drop(conn);
        // Not in an allowed local room: maybe in an allowed Synapse room.
        let query = requester.appservice.as_ref().map(|_| {
            form_urlencoded::Serializer::new(String::new())
                .append_pair("user_id", user)
                .finish()
        });
        match self.synapse.joined_rooms(token, query.as_deref()).await {
            Ok(joined) => Ok(joined.iter().any(|room| rooms.contains(&room.as_str()))),
            Err(CallError::Refused(refusal)) => Err(RoomError::Internal(format!(
                "Synapse refused /joined_rooms: {}",
                refusal.status
            ))),
            Err(CallError::Unavailable(reason)) => Err(RoomError::Internal(format!(
                "Synapse unavailable for /joined_rooms: {reason}"
            ))),
        }
    }
}

/// A joined member of this server whose power level allows inviting, the highest first
/// (ties by user ID, so the choice is stable).
fn could_invite(state: &[EventWithPrev], server: &str) -> Option<String> {
    let creator = state
        .iter()
        .find(|e| e.event.kind == "m.room.create")
        .map(|e| e.event.sender.to_string())
        .unwrap_or_default();
    let power = PowerLevels::new(
        state
            .iter()
            .find(|e| {
                e.event.kind == "m.room.power_levels" && e.event.state_key.as_deref() == Some("")
            })
            .map(|e| &e.event.content),
        &creator,
    );
    let invite_level = power.named("invite");
    state
        .iter()
        .filter(|e| e.event.kind == "m.room.member")
        .filter(|e| e.event.content.get("membership").and_then(Value::as_str) == Some("join"))
        .filter_map(|e| e.event.state_key.as_deref())
        .filter(|user| UserId::parse(*user).is_ok_and(|id| id.server_name().as_str() == server))
        .map(|user| (power.user_level(user), user))
        .filter(|(level, _)| *level >= invite_level)
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, user)| user.to_owned())
}

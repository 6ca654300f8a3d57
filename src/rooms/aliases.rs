//! Local aliases and the room's canonical alias, kept consistent as Synapse keeps them
//! (`synapse/handlers/directory.py`, `_validate_canonical_alias` in `handlers/message.py`):
//!
//! - an `m.room.canonical_alias` may only name aliases that point to the room: each `alias` or
//!   `alt_aliases` entry that the event adds (one the previous event already had is not
//!   checked again) must be a local alias of this room, else 400 `M_BAD_ALIAS`. The auth
//!   rules are checked first, as Synapse validates the alias only once the event passed them:
//!   a member without the power to send the event gets the auth rules' 403, whatever it names;
//! - deleting an alias takes it out of the canonical alias: the deleter sends an updated
//!   `m.room.canonical_alias` (if they may not, the alias is still deleted, as in Synapse);
//! - an alias may be deleted by its creator, by the appservice whose namespace holds it, by a
//!   server admin, or by a member of the room who could send `m.room.canonical_alias` (a room
//!   moderator), Synapse's `_user_can_delete_alias` and `check_can_change_room_list`.
//!
//! Aliases of a local room live in hungryserv's `room_aliases` table; an alias of another
//! server can never point to a local room (local rooms never federate), so it is refused too.
//!
//! The alias check runs before the event is handed to the writer, so it does not see a
//! canonical alias written meanwhile; the race only decides which of two concurrent changes
//! is checked against the other, as in Synapse, which validates after its own auth checks.

use ruma::OwnedRoomId;
use serde_json::{Map, Value, json};

use super::RoomError;
use super::auth::{self, Proposal};
use super::power::PowerLevels;
use super::service::{NewEvent, Rooms, now_ms};
use crate::auth::requester::Requester;
use crate::store;

impl Rooms {
    /// Refuses an `m.room.canonical_alias` content for `room_id` that `sender` may not send
    /// (the auth rules' answer) or that adds an alias not pointing to the room (Synapse's
    /// checks, in its order and with its answers).
    pub(super) async fn check_canonical_alias(
        &self,
        sender: &ruma::OwnedUserId,
        room_id: &OwnedRoomId,
        content: &Map<String, Value>,
        ts: i64,
    ) -> Result<(), RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        let state = super::writer::read_state(&mut conn, room_id)
            .await?
            .ok_or_else(|| RoomError::NotFound("Unknown room".into()))?;
        let proposal = Proposal {
            sender: sender.clone(),
            kind: "m.room.canonical_alias".into(),
            state_key: Some(String::new()),
            content: content.clone(),
            origin_server_ts: ts,
            redacts: None,
        };
        auth::check(&state, &proposal, None).map_err(RoomError::from)?;
        let previous = state
            .get("m.room.canonical_alias", "")
            .map(|entry| entry.content.clone())
            .unwrap_or_default();
        let alias = content.get("alias").filter(|alias| !alias.is_null());
        if let Some(alias) = alias
            && alias.as_str() != Some("")
            && Some(alias) != previous.get("alias")
        {
            let Some(alias) = alias.as_str() else {
                return Err(RoomError::InvalidParam(
                    "The alias must be of type string.".into(),
                ));
            };
            self.check_points_to(&mut conn, alias, room_id).await?;
        }
        let alt_aliases = match content.get("alt_aliases") {
            None => &Vec::new(),
            Some(Value::Array(list)) => list,
            Some(_) => {
                return Err(RoomError::InvalidParam(
                    "The alt_aliases property must be a list.".into(),
                ));
            }
        };
        let previous_alt = previous
            .get("alt_aliases")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for added in alt_aliases
            .iter()
            .filter(|alias| !previous_alt.contains(alias))
        {
            let Some(alias) = added.as_str() else {
                return Err(RoomError::InvalidParam(
                    "Each alt_alias must be of type string.".into(),
                ));
            };
            self.check_points_to(&mut conn, alias, room_id).await?;
        }
        Ok(())
    }

    async fn check_points_to(
        &self,
        conn: &mut sqlx::PgConnection,
        alias: &str,
        room_id: &OwnedRoomId,
    ) -> Result<(), RoomError> {
        if ruma::RoomAliasId::parse(alias).is_err() {
            return Err(RoomError::InvalidParam(format!(
                "Invalid room alias: {alias}"
            )));
        }
        match store::rooms::alias_room(conn, alias).await? {
            Some(room) if room == room_id.as_str() => Ok(()),
            _ => Err(RoomError::BadAlias(format!(
                "Room alias {alias} does not point to the room"
            ))),
        }
    }

    /// `DELETE /directory/room/{alias}` for a local alias: its creator, the appservice whose
    /// namespace holds it, a server admin (`is_admin`, asked only when the cheaper rights do
    /// not hold) or a room member who could set the canonical alias may delete it; the
    /// canonical alias then loses it.
    pub async fn delete_alias<F>(
        &self,
        requester: &Requester,
        alias: &str,
        is_admin: F,
    ) -> Result<(), RoomError>
    where
        F: std::future::Future<Output = Result<bool, RoomError>>,
    {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        let creator = store::rooms::alias_creator(&mut conn, alias)
            .await?
            .ok_or_else(|| RoomError::NotFound("Unknown room alias".into()))?;
        let room_id = store::rooms::alias_room(&mut conn, alias)
            .await?
            .and_then(|room| OwnedRoomId::try_from(room).ok())
            .ok_or_else(|| RoomError::NotFound("Unknown room alias".into()))?;
        let by_appservice = requester
            .appservice
            .as_ref()
            .is_some_and(|appservice| appservice.aliases.iter().any(|ns| ns.matches(alias)));
        // Synapse's order: the creator, then a server admin, then the room's moderators
        // (whose check answers a non-member 403 "not in room").
        let allowed = creator == requester.user_id.as_str() || by_appservice || is_admin.await?;
        if !allowed
            && !self
                .may_set_canonical_alias(&mut conn, requester, &room_id)
                .await?
        {
            return Err(RoomError::Forbidden(
                "You don't have permission to delete the alias.".into(),
            ));
        }
        if !store::rooms::delete_alias(&mut conn, alias).await? {
            // Deleted by someone else since the checks above.
            return Err(RoomError::NotFound("Unknown room alias".into()));
        }
        drop(conn);
        if let Err(err) = self
            .drop_from_canonical_alias(requester, &room_id, alias)
            .await
        {
            // As Synapse: the alias is gone whether or not the room's event could follow.
            tracing::info!(%room_id, error = %err, "canonical alias not updated");
        }
        Ok(())
    }

    /// Whether the requester is joined to the room with the level to send
    /// `m.room.canonical_alias` (Synapse's `check_can_change_room_list`). A non-member is
    /// Synapse's 403 "not in room".
    async fn may_set_canonical_alias(
        &self,
        conn: &mut sqlx::PgConnection,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<bool, RoomError> {
        let user = requester.user_id.as_str();
        let membership = store::rooms::membership(conn, room_id.as_str(), user).await?;
        if membership.is_none_or(|(membership, _)| membership != "join") {
            return Err(RoomError::Forbidden(format!(
                "User {user} not in room {room_id}"
            )));
        }
        let creator = store::rooms::get(conn, room_id.as_str())
            .await?
            .map(|room| room.creator)
            .unwrap_or_default();
        let power = store::events::current_state_at_keys(
            conn,
            room_id.as_str(),
            &[("m.room.power_levels", "")],
        )
        .await?
        .into_iter()
        .next()
        .map(|found| found.event.content);
        let power = PowerLevels::new(power.as_ref(), &creator);
        Ok(power.user_level(user) >= power.send_level("m.room.canonical_alias", true))
    }

    /// Sends the room's canonical alias without `alias` (in `alias` or `alt_aliases`), if it
    /// named it, as `requester`.
    async fn drop_from_canonical_alias(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        alias: &str,
    ) -> Result<(), RoomError> {
        let current = {
            let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
            store::events::current_state_at_keys(
                &mut conn,
                room_id.as_str(),
                &[("m.room.canonical_alias", "")],
            )
            .await?
        };
        let Some(current) = current.into_iter().next() else {
            return Ok(());
        };
        let Some(content) = without_alias(&current.event.content, alias) else {
            return Ok(());
        };
        self.append_one(
            requester,
            room_id,
            NewEvent::state("m.room.canonical_alias", "", content, now_ms()),
        )
        .await?;
        Ok(())
    }
}

/// The canonical alias content without `alias`, or `None` when it does not name it
/// (Synapse's `_update_canonical_alias`: an `alt_aliases` that is not a list stays as it is,
/// an emptied one is removed).
pub fn without_alias(content: &Map<String, Value>, alias: &str) -> Option<Map<String, Value>> {
    let mut content = content.clone();
    let mut changed = false;
    if content.get("alias").and_then(Value::as_str) == Some(alias) {
        content.remove("alias");
        changed = true;
    }
    if let Some(Value::Array(alt)) = content.get("alt_aliases")
        && alt.iter().any(|entry| entry.as_str() == Some(alias))
    {
        let kept: Vec<Value> = alt
            .iter()
            .filter(|entry| entry.as_str() != Some(alias))
            .cloned()
            .collect();
        if kept.is_empty() {
            content.remove("alt_aliases");
        } else {
            content.insert("alt_aliases".into(), json!(kept));
        }
        changed = true;
    }
    changed.then_some(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleting_an_alias_takes_it_out_of_the_canonical_alias() {
        let content = |value: Value| value.as_object().unwrap().clone();
        assert_eq!(
            without_alias(
                &content(json!({"alias": "#a:hs", "alt_aliases": ["#a:hs", "#b:hs"]})),
                "#a:hs"
            ),
            Some(content(json!({"alt_aliases": ["#b:hs"]})))
        );
        assert_eq!(
            without_alias(
                &content(json!({"alias": "#b:hs", "alt_aliases": ["#a:hs"]})),
                "#a:hs"
            ),
            Some(content(json!({"alias": "#b:hs"})))
        );
        assert_eq!(
            without_alias(&content(json!({"alias": "#b:hs"})), "#a:hs"),
            None
        );
        assert_eq!(
            without_alias(
                &content(json!({"alias": "#b:hs", "alt_aliases": "#a:hs"})),
                "#a:hs"
            ),
            None,
            "alt_aliases of an unexpected form stays"
        );
    }
}

//! What a change to a user's account, accepted by Synapse, does to local rooms: a new
//! displayname or avatar reaches the member events of every local room the user is joined to,
//! and a deactivation takes the user out of every local room. Both as Synapse does it for its
//! own rooms (`handlers/profile.py` `_update_join_states`, `handlers/deactivate_account.py`),
//! so a client in a local room sees what it would see in a Synapse room.
//!
//! Synapse decides whether the change is allowed; by the time these run it has accepted it, so
//! the events are sent as the user, whoever asked (the user, or a server admin).

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, json};

use super::RoomError;
use super::service::{NewEvent, Rooms, now_ms};
use crate::auth::requester::Requester;
use crate::store;
use crate::upstream::client::Profile;

/// Memberships a deactivation ends, in the order Synapse ends them: pending invites and knocks
/// are rejected first, then the user is parted from the rooms they joined.
const ENDED_BY_DEACTIVATION: [&str; 3] = ["invite", "knock", "join"];

/// The user as the sender of the events the server sends on their behalf.
fn as_user(user: &OwnedUserId) -> Requester {
    Requester {
        user_id: user.clone(),
        device_id: None,
        appservice: None,
        is_guest: false,
    }
}

impl Rooms {
    /// After `user`'s profile changed on Synapse (by themselves or a server admin, whose
    /// `token` is used to read the new profile): every local room the user is joined to gets
    /// a new member event with the new displayname and avatar, as Synapse does for its own
    /// rooms. Rooms where nothing changed are left alone. Returns how many rooms changed.
    pub async fn propagate_profile(
        &self,
        user: &OwnedUserId,
        token: &str,
    ) -> Result<usize, RoomError> {
        let profile = match self.synapse.profile(token, user.as_str()).await {
            Ok(Some(profile)) => profile,
            // Synapse answers 404 "Profile was not found" once neither field is set; the user
            // exists (Synapse has just changed their profile), so that is an empty profile.
            Ok(None) => Profile::default(),
            Err(err) => return Err(RoomError::Internal(format!("profile fetch: {err}"))),
        };
        let rooms = {
            let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
            store::rooms::rooms_with_membership(&mut conn, user.as_str(), "join").await?
        };
        let sender = as_user(user);
        let mut updated = 0;
        for room in rooms {
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            let current = {
                let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
                store::events::current_state(&mut conn, room_id.as_str()).await?
            };
            let Some(member) = current.into_iter().find(|e| {
                e.event.kind == "m.room.member"
                    && e.event.state_key.as_deref() == Some(user.as_str())
            }) else {
                continue;
            };
            let mut content = member.event.content.clone();
            for (key, value) in [
                ("displayname", &profile.displayname),
                ("avatar_url", &profile.avatar_url),
            ] {
                match value {
                    Some(value) => content.insert(key.into(), json!(value)),
                    None => content.remove(key),
                };
            }
            if content == member.event.content {
                continue;
            }
            match self
                .append_one(&sender, &room_id, NewEvent::member(user, content, now_ms()))
                .await
            {
                Ok(_) => updated += 1,
                // One room refusing (e.g. the user was kicked meanwhile) must not stop the rest.
                Err(err) => tracing::warn!(%room_id, error = %err, "profile update not applied"),
            }
        }
        Ok(updated)
    }

    /// After Synapse deactivated `user`: their pending invites and knocks in local rooms are
    /// rejected, and they leave every local room they are joined to, which they then forget
    /// (Synapse's `_reject_pending_invites_and_knocks_for_user` and `_part_user`). Each is a
    /// plain leave sent as the user, so members see `membership: leave` by the user themselves,
    /// as in a Synapse room. A room that refuses does not stop the rest. Returns how many
    /// memberships ended.
    pub async fn deactivate(&self, user: &OwnedUserId) -> Result<usize, RoomError> {
        let sender = as_user(user);
        let mut ended = 0;
        for membership in ENDED_BY_DEACTIVATION {
            let rooms = {
                let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
                store::rooms::rooms_with_membership(&mut conn, user.as_str(), membership).await?
            };
            for room in rooms {
                let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                    continue;
                };
                let mut content = Map::new();
                content.insert("membership".into(), json!("leave"));
                let leave = NewEvent::member(user, content, now_ms());
                if let Err(err) = self.append_one(&sender, &room_id, leave).await {
                    tracing::warn!(%room_id, error = %err, "deactivated user not parted");
                    continue;
                }
                ended += 1;
                if membership == "join"
                    && let Err(err) = self.forget(&sender, &room_id).await
                {
                    tracing::warn!(%room_id, error = %err, "deactivated user's room not forgotten");
                }
            }
        }
        Ok(ended)
    }
}

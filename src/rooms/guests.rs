//! Guest accounts in local rooms, as Synapse treats them (`synapse/handlers/room_member.py`):
//! a guest may join only where the room's `m.room.guest_access` is `can_join` (else 403
//! "Guest access not allowed"), every membership a guest sends carries `"kind": "guest"`, and
//! when guest access is set to anything but `can_join`, every joined or invited guest leaves
//! (a leave sent as the guest, as Synapse does, so no power level is needed). Guests are
//! recognised by that `kind`, as Synapse recognises them.

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};

use super::RoomError;
use super::auth::Proposal;
use super::service::{Rooms, now_ms};
use crate::store;

impl Rooms {
    /// Refuses a guest's join unless the room's guest access is `can_join`.
    pub(super) async fn check_guest_may_join(
        &self,
        room_id: &OwnedRoomId,
    ) -> Result<(), RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        let access = store::events::current_state_at_keys(
            &mut conn,
            room_id.as_str(),
            &[("m.room.guest_access", "")],
        )
        .await?;
        let can_join = access.iter().any(|found| {
            found
                .event
                .content
                .get("guest_access")
                .and_then(Value::as_str)
                == Some("can_join")
        });
        if can_join {
            Ok(())
        } else {
            Err(RoomError::Forbidden("Guest access not allowed".into()))
        }
    }

    /// After guest access was revoked: the joined and invited guests leave. Best effort, as
    /// in Synapse: a failure is logged and the guest access change stands.
    pub(super) async fn remove_guests(&self, room_id: &OwnedRoomId) {
        let leaves = match self.guest_leaves(room_id).await {
            Ok(leaves) => leaves,
            Err(err) => {
                tracing::warn!(%room_id, error = %err, "guests not removed");
                return;
            }
        };
        for leave in leaves {
            if let Err(err) = self.append_internal(room_id, vec![leave]).await {
                tracing::warn!(%room_id, error = %err, "guest not removed");
            }
        }
    }

    async fn guest_leaves(&self, room_id: &OwnedRoomId) -> Result<Vec<Proposal>, RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        let state = store::events::current_state(&mut conn, room_id.as_str()).await?;
        let now = now_ms();
        Ok(state
            .into_iter()
            .map(|found| found.event)
            .filter(|event| event.kind == "m.room.member")
            .filter(|event| {
                event.content.get("kind").and_then(Value::as_str) == Some("guest")
                    && matches!(
                        event.content.get("membership").and_then(Value::as_str),
                        Some("join" | "invite")
                    )
            })
            .filter_map(|event| {
                let guest = OwnedUserId::try_from(event.state_key?).ok()?;
                let mut content = Map::new();
                content.insert("membership".into(), json!("leave"));
                content.insert("kind".into(), json!("guest"));
                Some(Proposal {
                    sender: guest.clone(),
                    kind: "m.room.member".into(),
                    state_key: Some(guest.to_string()),
                    content,
                    origin_server_ts: now,
                    redacts: None,
                })
            })
            .collect())
    }
}

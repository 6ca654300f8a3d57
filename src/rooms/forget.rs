//! Forgetting a room (`POST /rooms/{roomId}/forget`), as Synapse's `RoomMemberHandler.forget`:
//! allowed once the user has left or been banned (or was never in the room: nothing to do),
//! refused while they are joined, invited or knocking. What forgetting changes for the user
//! (migration 0010): the room is left out of their initial syncs, even with `include_leave`,
//! and its history is closed to them as to someone who was never in it (a world-readable room
//! can still be read as a guest would). Rejoining, or a new invite, undoes it.

use ruma::OwnedRoomId;
use sqlx::PgConnection;

use super::RoomError;
use super::service::Rooms;
use crate::auth::requester::Requester;
use crate::store;

impl Rooms {
    /// Forgets the room for the requester.
    pub async fn forget(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<(), RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        let user = requester.user_id.as_str();
        let membership = store::rooms::membership(&mut conn, room_id.as_str(), user).await?;
        match membership.as_ref().map(|(m, _)| m.as_str()) {
            None | Some("leave" | "ban") => {}
            // Synapse's wording (a SynapseError: 400 M_UNKNOWN).
            Some(_) => {
                return Err(RoomError::BadRequest(format!(
                    "User {user} in room {room_id}"
                )));
            }
        }
        // Between the read and this insert the user may have rejoined: the insert then covers
        // nothing (it only takes a leave or ban), or a leave that a rejoin has already
        // superseded, which `forgotten` no longer counts.
        store::rooms::forget(&mut conn, room_id.as_str(), user).await?;
        Ok(())
    }
}

/// Whether the user forgot the room and has had no member event since: `latest` is the
/// position of their latest member event.
pub(super) async fn forgotten(
    conn: &mut PgConnection,
    room_id: &str,
    user_id: &str,
    latest: i64,
) -> Result<bool, RoomError> {
    Ok(store::rooms::forgotten_at(conn, room_id, user_id).await? == Some(latest))
}

//! Abuse reports about local rooms and their events, as Synapse takes them: an event report
//! needs an event the reporter may see (else 404 "Unable to report event: …"), a room report
//! only that the room exists. Both are stored for server admins (`v1/event_reports`).

use ruma::OwnedRoomId;
use serde_json::{Map, Value};

use super::RoomError;
use super::service::{Rooms, now_ms};
use crate::auth::requester::Requester;
use crate::store;

impl Rooms {
    /// `POST /rooms/{roomId}/report/{eventId}`; `body` is stored as sent (Synapse's
    /// `content`), its `reason` and `score` already checked.
    pub async fn report_event(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        event_id: &str,
        body: Map<String, Value>,
    ) -> Result<(), RoomError> {
        let unseen = || {
            RoomError::NotFound(
                "Unable to report event: it does not exist or you aren't able to see it.".into(),
            )
        };
        match self.event(requester, room_id, event_id).await {
            Ok(event) if event.get("redacted_because").is_none() => {}
            Ok(_) | Err(RoomError::NotFound(_) | RoomError::Forbidden(_)) => return Err(unseen()),
            Err(err) => return Err(err),
        }
        let mut conn = self.conn().await?;
        store::reports::add_event_report(
            &mut conn,
            now_ms(),
            room_id.as_str(),
            event_id,
            requester.user_id.as_str(),
            &Value::Object(body),
        )
        .await?;
        Ok(())
    }

    /// `POST /rooms/{roomId}/report`.
    pub async fn report_room(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        reason: &str,
    ) -> Result<(), RoomError> {
        let mut conn = self.conn().await?;
        if store::rooms::get(&mut conn, room_id.as_str())
            .await?
            .is_none()
        {
            return Err(RoomError::NotFound("Room does not exist".into()));
        }
        store::reports::add_room_report(
            &mut conn,
            now_ms(),
            room_id.as_str(),
            requester.user_id.as_str(),
            reason,
        )
        .await?;
        Ok(())
    }
}

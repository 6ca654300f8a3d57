//! What server admins ask about local rooms: a room's details, members and state (as
//! Synapse's admin room API shows them), an appservice's rooms, and deleting every room of
//! an appservice at once (a bridge reset), with yeetserv's rule: only rooms whose members
//! are all the bridge's bot, its ghosts and users of this server.

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::Value;

use super::RoomError;
use super::deletion::{DeleteOptions, Deletions};
use crate::config::Registration;
use crate::store::events::EventWithPrev;
use crate::store::{self, StoreError};

/// A local room as an admin sees it.
#[derive(Debug, Clone)]
pub struct AdminRoom {
    pub room: store::rooms::RoomRow,
    /// Its current state, oldest first.
    pub state: Vec<EventWithPrev>,
    /// `(user, membership)` of everyone with a membership.
    pub members: Vec<(String, String)>,
}

impl AdminRoom {
    /// The joined members.
    pub fn joined(&self) -> Vec<&String> {
        self.members
            .iter()
            .filter(|(_, m)| m == "join")
            .map(|(u, _)| u)
            .collect()
    }
}

/// The outcome for one room of an appservice-wide delete.
#[derive(Debug, Clone)]
pub enum BulkOutcome {
    Deleted { room_id: String, delete_id: String },
    Refused { room_id: String, reason: String },
}

impl Deletions {
    /// A room's row, current state and members; `None` for unknown or deleted rooms.
    pub async fn admin_room(&self, room_id: &str) -> Result<Option<AdminRoom>, RoomError> {
        if self.gone(room_id).is_some() {
            return Ok(None);
        }
        let mut conn = self.db().acquire().await.map_err(StoreError::from)?;
        let Some(room) = store::rooms::get(&mut conn, room_id).await? else {
            return Ok(None);
        };
        let state = store::events::current_state(&mut conn, room_id).await?;
        let members = store::deletion::all_members(&mut conn, room_id).await?;
        Ok(Some(AdminRoom {
            room,
            state,
            members,
        }))
    }

    /// Every local room not deleted, for Synapse's admin room list.
    pub async fn list_rooms(&self) -> Result<Vec<store::rooms::ListedRoom>, RoomError> {
        let rooms = store::rooms::list(self.db()).await?;
        Ok(rooms
            .into_iter()
            .filter(|room| self.gone(&room.room_id).is_none())
            .collect())
    }

    /// The rooms an appservice's token created (not deleted), oldest first.
    pub async fn appservice_rooms(&self, appservice_id: &str) -> Result<Vec<String>, RoomError> {
        let rooms = store::deletion::rooms_of_appservice(self.db(), appservice_id).await?;
        Ok(rooms
            .into_iter()
            .filter(|room| self.gone(room).is_none())
            .collect())
    }

    /// Deletes every room the appservice created whose present members (joined, invited,
    /// knocking) are all its bot, its ghosts or users of this server; refuses the others.
    pub async fn delete_appservice_rooms(
        &self,
        registration: &Registration,
        server_name: &str,
        requested_by: &OwnedUserId,
    ) -> Result<Vec<BulkOutcome>, RoomError> {
        let bot = format!("@{}:{server_name}", registration.sender_localpart);
        let suffix = format!(":{server_name}");
        let mut outcomes = Vec::new();
        for room in self.appservice_rooms(&registration.id).await? {
            let members = {
                let mut conn = self.db().acquire().await.map_err(StoreError::from)?;
                store::deletion::all_members(&mut conn, &room).await?
            };
            let foreign: Vec<String> = members
                .into_iter()
                .filter(|(_, membership)| {
                    matches!(membership.as_str(), "join" | "invite" | "knock")
                })
                .map(|(user, _)| user)
                .filter(|user| {
                    let ghost = registration.users.iter().any(|ns| ns.matches(user));
                    !(*user == bot || ghost || user.ends_with(&suffix))
                })
                .collect();
            if !foreign.is_empty() {
                outcomes.push(BulkOutcome::Refused {
                    reason: format!("members from other servers: {}", foreign.join(", ")),
                    room_id: room,
                });
                continue;
            }
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            match self
                .delete(
                    &room_id,
                    requested_by,
                    DeleteOptions {
                        purge: true,
                        block: false,
                    },
                )
                .await
            {
                Ok(deleted) => outcomes.push(BulkOutcome::Deleted {
                    room_id: room,
                    delete_id: deleted.delete_id,
                }),
                // Deleted meanwhile by someone else: nothing left to do.
                Err(RoomError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(outcomes)
    }
}

/// A state event's content field, if it is a string.
pub fn state_str<'a>(state: &'a [EventWithPrev], kind: &str, field: &str) -> Option<&'a str> {
    state
        .iter()
        .find(|e| e.event.kind == kind && e.event.state_key.as_deref() == Some(""))
        .and_then(|e| e.event.content.get(field))
        .and_then(Value::as_str)
}

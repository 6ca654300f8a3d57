//! What server admins ask about local rooms: a room's details, members and state (as
//! Synapse's admin room API shows them), an appservice's rooms, and deleting every room of
//! an appservice at once (a bridge reset), with yeetserv's rule: only rooms whose members
//! are all the bridge's bot, its ghosts and users of this server; and making a user join a
//! room (Synapse's admin `v1/join`) or a room admin (`make_room_admin`).

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};

use super::RoomError;
use super::deletion::{DeleteOptions, Deletions};
use super::service::{MembershipChange, NewEvent, now_ms};
use crate::auth::requester::Requester;
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

impl super::service::Rooms {
    /// Synapse's admin `POST v1/join/{roomId}` for a local room: `user` joins; when the room
    /// is not public, `admin` (with `token`) invites them first, so the admin must be able
    /// to invite, as on Synapse (`JoinRoomAliasServlet`). The join carries the user's profile.
    pub async fn admin_join(
        &self,
        admin: &Requester,
        token: &str,
        room_id: &OwnedRoomId,
        user: &OwnedUserId,
    ) -> Result<(), RoomError> {
        let public = {
            let mut conn = self.conn().await?;
            let state = store::events::current_state(&mut conn, room_id.as_str()).await?;
            if state.is_empty() {
                return Err(RoomError::NotFound("Unknown room".into()));
            }
            state_str(&state, "m.room.join_rules", "join_rule") == Some("public")
        };
        let change = |membership| MembershipChange {
            target: user,
            membership,
            reason: None,
            extra: Default::default(),
            ts: now_ms(),
        };
        if !public {
            self.set_membership(admin, token, room_id, change("invite"))
                .await?;
        }
        let joiner = Requester {
            user_id: user.clone(),
            device_id: None,
            appservice: None,
            is_guest: false,
        };
        self.set_membership(&joiner, token, room_id, change("join"))
            .await?;
        Ok(())
    }
}

impl super::service::Rooms {
    /// Synapse's admin `POST v1/rooms/{roomId}/make_room_admin` for a local room, as
    /// `MakeRoomAdminRestServlet` does it: the joined user of this server with the most power
    /// in the room (the creator when there are no power levels) gives `user` the same level,
    /// and a `user` who is neither joined nor invited is invited unless the room is public.
    pub async fn make_room_admin(
        &self,
        token: &str,
        room_id: &OwnedRoomId,
        user: &OwnedUserId,
    ) -> Result<(), RoomError> {
        let state = {
            let mut conn = self.conn().await?;
            store::events::current_state(&mut conn, room_id.as_str()).await?
        };
        let event = |kind: &str, key: &str| {
            state
                .iter()
                .find(|e| e.event.kind == kind && e.event.state_key.as_deref() == Some(key))
                .map(|e| &e.event)
        };
        let Some(create) = event("m.room.create", "") else {
            return Err(RoomError::BadRequest("Server not in room".into()));
        };
        let no_admin = || RoomError::BadRequest("No local admin user in room".into());
        let suffix = format!(":{}", self.server_name());
        let (admin, mut content) = match event("m.room.power_levels", "") {
            Some(power) => {
                let users = power
                    .content
                    .get("users")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let mut local: Vec<(&String, i64)> = users
                    .iter()
                    .filter(|(user, _)| user.ends_with(&suffix))
                    .map(|(user, level)| (user, level.as_i64().unwrap_or(0)))
                    .collect();
                // Most power first (Synapse sorts ascending and walks from the end).
                local.sort_by_key(|(_, level)| std::cmp::Reverse(*level));
                let joined = |user: &str| {
                    event("m.room.member", user)
                        .and_then(|e| e.content.get("membership"))
                        .and_then(Value::as_str)
                        == Some("join")
                };
                let admin = local
                    .into_iter()
                    .map(|(user, _)| user)
                    .find(|user| joined(user))
                    .ok_or_else(no_admin)?;
                (admin.clone(), power.content.clone())
            }
            None if create.sender.as_str().ends_with(&suffix) => {
                (create.sender.to_string(), Map::new())
            }
            None => return Err(no_admin()),
        };
        let admin = OwnedUserId::try_from(admin.as_str()).map_err(|_| no_admin())?;
        let mut users = content
            .get("users")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let level = users.get(admin.as_str()).cloned().unwrap_or(json!(100));
        users.insert(user.to_string(), level);
        content.insert("users".into(), Value::Object(users));
        let as_admin = Requester {
            user_id: admin,
            device_id: None,
            appservice: None,
            is_guest: false,
        };
        let power = NewEvent::state("m.room.power_levels", "", content, now_ms());
        match self.append_one(&as_admin, room_id, power).await {
            Ok(_) => {}
            Err(RoomError::Forbidden(_)) => {
                return Err(RoomError::BadRequest(
                    "No local admin user in room with power to update power levels.".into(),
                ));
            }
            Err(err) => return Err(err),
        }
        let membership = event("m.room.member", user.as_str())
            .and_then(|e| e.content.get("membership"))
            .and_then(Value::as_str);
        let public = event("m.room.join_rules", "")
            .and_then(|e| e.content.get("join_rule"))
            .and_then(Value::as_str)
            == Some("public");
        if matches!(membership, Some("join" | "invite")) || public {
            return Ok(());
        }
        self.set_membership(
            &as_admin,
            token,
            room_id,
            MembershipChange {
                target: user,
                membership: "invite",
                reason: None,
                extra: Map::new(),
                ts: now_ms(),
            },
        )
        .await?;
        Ok(())
    }
}

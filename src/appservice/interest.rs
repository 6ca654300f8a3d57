//! Which events of local rooms an appservice is interested in, following the Application
//! Service API and Synapse's `ApplicationService.is_interested_in_event`:
//!
//! * the sender, or the `state_key` of a member event, is the appservice's bot or in its user
//!   namespaces;
//! * the room ID is in its room namespaces, or the room has an alias in its alias namespaces;
//! * a user joined to the room is its bot or in its user namespaces (this is how a bridge hears
//!   the messages real users send into its portal rooms).
//!
//! Room facts are loaded from the store the first time a room is seen (current members and
//! aliases) and then kept up to date from the member events the pusher reads in stream order.
//! Aliases added later are not noticed until the cache starts over (alias namespaces are rare
//! in bridges; user namespaces carry their interest).
//! A pusher that is far behind therefore judges early events by a later member list; it can
//! deliver an event a bridge would not have got, never lose one of a room the bridge is still in.
//!
//! The pusher judges a chunk of events by their heads before it reads the contents of the
//! ones wanted, so it may judge past the point where its transaction fills up. Every change
//! a member event makes is therefore written in a journal, and [`Interest::rewind_after`]
//! undoes those of events the transaction did not take: the next transaction judges them
//! again from the member lists as they were before them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sqlx::PgConnection;

use crate::config::Registration;
use crate::store::{self, StoreError, events::EventHead};

/// Rooms kept in memory per appservice; the cache starts over when full.
const MAX_ROOMS: usize = 50_000;

/// One appservice's interest, with what it knows about rooms.
pub struct Interest {
    registration: Arc<Registration>,
    bot: String,
    rooms: HashMap<String, RoomFacts>,
    /// Member list changes since [`Interest::settle`], oldest first.
    journal: Vec<Change>,
}

/// One change [`Interest::observe`] made to a room's member list, with what it replaced.
struct Change {
    stream: i64,
    room_id: String,
    user: String,
    was_member: bool,
}

struct RoomFacts {
    /// The room ID or one of its aliases is in the appservice's namespaces.
    named: bool,
    /// Joined users that are the bot or in the user namespaces.
    members: HashSet<String>,
}

impl Interest {
    pub fn new(registration: Arc<Registration>, server_name: &str) -> Self {
        let bot = format!("@{}:{server_name}", registration.sender_localpart);
        Self {
            registration,
            bot,
            rooms: HashMap::new(),
            journal: Vec::new(),
        }
    }

    /// Whether a user ID is the bot or in the user namespaces.
    pub fn claims_user(&self, user_id: &str) -> bool {
        user_id == self.bot || self.registration.users.iter().any(|ns| ns.matches(user_id))
    }

    /// Whether the appservice gets `event`. Events must be given in stream order: member
    /// events update what is known about their room (and are journalled, see
    /// [`Interest::rewind_after`]).
    pub async fn wants(
        &mut self,
        conn: &mut PgConnection,
        event: &EventHead,
    ) -> Result<bool, StoreError> {
        let room_id = event.room_id.as_str();
        self.know(conn, room_id).await?;
        let direct = self.claims_user(event.sender.as_str())
            || (event.kind == "m.room.member"
                && event
                    .state_key
                    .as_deref()
                    .is_some_and(|k| self.claims_user(k)));
        let Some(facts) = self.rooms.get(room_id) else {
            return Ok(direct);
        };
        // Judged with the member list from before this event (a bridge hears its ghost leave).
        let wanted = direct || facts.named || !facts.members.is_empty();
        self.observe(event);
        Ok(wanted)
    }

    /// Whether the appservice is interested in a room as a whole (its ID or an alias is in the
    /// namespaces, or one of its users is joined): who gets the room's ephemeral events.
    pub async fn wants_room(
        &mut self,
        conn: &mut PgConnection,
        room_id: &str,
    ) -> Result<bool, StoreError> {
        self.know(conn, room_id).await?;
        Ok(self
            .rooms
            .get(room_id)
            .is_some_and(|facts| facts.named || !facts.members.is_empty()))
    }

    /// The appservice's users (bot included) joined to a room, as known now: Synapse's
    /// `get_app_service_users_in_room`, for the MSC3202 key counts. Empty for a room not
    /// judged yet.
    pub fn users_in(&self, room_id: &str) -> impl Iterator<Item = &String> {
        self.rooms
            .get(room_id)
            .into_iter()
            .flat_map(|facts| facts.members.iter())
    }

    /// The appservice's bot.
    pub fn bot(&self) -> &str {
        &self.bot
    }

    /// Loads what is known about a room on first sight.
    async fn know(&mut self, conn: &mut PgConnection, room_id: &str) -> Result<(), StoreError> {
        if !self.rooms.contains_key(room_id) {
            let facts = self.load(conn, room_id).await?;
            if self.rooms.len() >= MAX_ROOMS {
                self.rooms.clear();
            }
            self.rooms.insert(room_id.to_owned(), facts);
        }
        Ok(())
    }

    /// Forgets the journal: the events judged so far are final.
    pub fn settle(&mut self) {
        self.journal.clear();
    }

    /// Undoes, newest first, what member events after stream position `stream` changed since
    /// [`Interest::settle`], so that they can be judged again. A room the cache dropped in
    /// between is read again from the store when next seen, as any room on first sight.
    pub fn rewind_after(&mut self, stream: i64) {
        while self
            .journal
            .last()
            .is_some_and(|change| change.stream > stream)
        {
            let Some(change) = self.journal.pop() else {
                break;
            };
            if let Some(facts) = self.rooms.get_mut(&change.room_id) {
                if change.was_member {
                    facts.members.insert(change.user);
                } else {
                    facts.members.remove(&change.user);
                }
            }
        }
    }

    /// Keeps the member list current with a member event.
    fn observe(&mut self, event: &EventHead) {
        if event.kind != "m.room.member" {
            return;
        }
        let Some(user) = event.state_key.as_deref() else {
            return;
        };
        if !self.claims_user(user) {
            return;
        }
        let joined = event.membership.as_deref() == Some("join");
        if let Some(facts) = self.rooms.get_mut(event.room_id.as_str()) {
            let was_member = if joined {
                !facts.members.insert(user.to_owned())
            } else {
                facts.members.remove(user)
            };
            self.journal.push(Change {
                stream: event.stream,
                room_id: event.room_id.clone(),
                user: user.to_owned(),
                was_member,
            });
        }
    }

    async fn load(&self, conn: &mut PgConnection, room_id: &str) -> Result<RoomFacts, StoreError> {
        let registration = &self.registration;
        let mut named = registration.rooms.iter().any(|ns| ns.matches(room_id));
        if !named && !registration.aliases.is_empty() {
            named = store::rooms::aliases_of(conn, room_id)
                .await?
                .iter()
                .any(|alias| registration.aliases.iter().any(|ns| ns.matches(alias)));
        }
        let members = store::rooms::members_with(conn, room_id, "join")
            .await?
            .into_iter()
            .filter(|user| self.claims_user(user))
            .collect();
        Ok(RoomFacts { named, members })
    }
}

//! The local rooms each user has a membership in, kept for waiting syncs.
//!
//! A waiting sync decides from memory whether a commit concerns its user
//! ([`crate::notify::Notifier::news_for`]), and for that it needs every room the user is in:
//! a heavy bridge user is in thousands. Reading them on every `/sync` would make each request
//! cost the user's room count, so the list is kept here and read again only when the user's
//! membership changed: the highest position of their membership rows, one index probe
//! (migration 0028), moves with every member event about them, whichever process wrote it.
//! A list that holds a room too many (its rows purged since) only costs a hash lookup; one
//! that misses a room cannot happen, as adding a room moves the position.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sqlx::PgConnection;

use crate::store::{self, StoreError};

/// Users whose lists are kept at most; the whole cache starts over when full.
const MAX_USERS: usize = 50_000;

/// One user's list and the membership position it was read at.
struct Entry {
    latest: Option<i64>,
    rooms: Arc<[String]>,
}

/// The per-user lists. Cheap to share behind the `Syncer`.
#[derive(Default)]
pub struct RoomLists {
    users: Mutex<HashMap<String, Entry>>,
}

impl RoomLists {
    /// Every local room `user` has a membership in (as of now or later).
    pub async fn of(
        &self,
        conn: &mut PgConnection,
        user: &str,
    ) -> Result<Arc<[String]>, StoreError> {
        let latest = store::rooms::latest_membership(conn, user).await?;
        {
            let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(entry) = users.get(user).filter(|entry| entry.latest == latest) {
                return Ok(entry.rooms.clone());
            }
        }
        // Read after the position: a change in between moves the position again, so the next
        // sync reads the list once more.
        let rooms: Arc<[String]> = store::rooms::rooms_of(conn, user).await?.into();
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.len() >= MAX_USERS && !users.contains_key(user) {
            users.clear();
        }
        users.insert(
            user.to_owned(),
            Entry {
                latest,
                rooms: rooms.clone(),
            },
        );
        Ok(rooms)
    }
}

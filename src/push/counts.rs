//! Unread counts of local rooms for `/sync`: `unread_notifications` and, for clients that ask
//! (`unread_thread_notifications: true` in the room event filter), per-thread counts in
//! `unread_thread_notifications` (MSC3773 as Synapse implements it).
//!
//! The counts are the notifications the push task recorded ([`crate::store::push`]) that the
//! user's read receipts do not cover; they were decided with the user's rules at the event,
//! as Synapse's are, so a later rule change does not rewrite old counts.

use std::collections::HashMap;

use serde_json::{Value, json};
use sqlx::PgConnection;

use crate::store::{self, StoreError, push::ThreadCount};

/// Unread notifications and highlights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Count {
    pub notifications: i64,
    pub highlights: i64,
}

/// One room's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Every thread together.
    pub total: Count,
    /// The main timeline only (events outside threads, thread roots included).
    pub main: Count,
    /// Thread root → count, for threads with unread notifications.
    pub threads: HashMap<String, Count>,
}

impl Counts {
    /// The `unread_notifications` object, and `unread_thread_notifications` when the client
    /// asked for per-thread counts (then the room's own counts are the main timeline's, as in
    /// Synapse).
    pub fn sync_fields(&self, per_thread: bool) -> (Value, Option<Value>) {
        let object = |count: &Count| {
            json!({
                "notification_count": count.notifications,
                "highlight_count": count.highlights,
            })
        };
        if !per_thread {
            return (object(&self.total), None);
        }
        let threads: serde_json::Map<String, Value> = self
            .threads
            .iter()
            .map(|(root, count)| (root.clone(), object(count)))
            .collect();
        (object(&self.main), Some(Value::Object(threads)))
    }
}

/// Folds per-(room, thread) counts into per-room counts.
pub fn fold(rows: Vec<ThreadCount>) -> HashMap<String, Counts> {
    let mut rooms: HashMap<String, Counts> = HashMap::new();
    for row in rows {
        let counts = rooms.entry(row.room_id).or_default();
        let count = Count {
            notifications: row.notifications,
            highlights: row.highlights,
        };
        counts.total.notifications += count.notifications;
        counts.total.highlights += count.highlights;
        if row.thread_id == "main" {
            counts.main = count;
        } else {
            counts.threads.insert(row.thread_id, count);
        }
    }
    rooms
}

/// The user's unread counts in `rooms` as of stream position `upto`, in one query. Rooms
/// without unread notifications are absent (their counts are zero).
pub async fn unread_of_rooms(
    conn: &mut PgConnection,
    user_id: &str,
    rooms: &[String],
    upto: i64,
) -> Result<HashMap<String, Counts>, StoreError> {
    if rooms.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(fold(store::push::unread(conn, user_id, rooms, upto).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(room: &str, thread: &str, n: i64, h: i64) -> ThreadCount {
        ThreadCount {
            room_id: room.into(),
            thread_id: thread.into(),
            notifications: n,
            highlights: h,
        }
    }

    #[test]
    fn threads_fold_into_room_counts() {
        let rooms = fold(vec![
            row("!a:x", "main", 2, 1),
            row("!a:x", "$t", 3, 0),
            row("!b:x", "$u", 1, 1),
        ]);
        let a = &rooms["!a:x"];
        assert_eq!(
            a.total,
            Count {
                notifications: 5,
                highlights: 1
            }
        );
        let (room, threads) = a.sync_fields(false);
        assert_eq!(room, json!({"notification_count": 5, "highlight_count": 1}));
        assert!(threads.is_none());
        let (room, threads) = a.sync_fields(true);
        assert_eq!(room, json!({"notification_count": 2, "highlight_count": 1}));
        assert_eq!(
            threads.unwrap(),
            json!({"$t": {"notification_count": 3, "highlight_count": 0}})
        );
        let (room, _) = rooms["!b:x"].sync_fields(true);
        assert_eq!(room, json!({"notification_count": 0, "highlight_count": 0}));
    }

    #[test]
    fn a_quiet_room_counts_zero() {
        let (room, threads) = Counts::default().sync_fields(true);
        assert_eq!(room, json!({"notification_count": 0, "highlight_count": 0}));
        assert_eq!(threads.unwrap(), json!({}));
    }
}

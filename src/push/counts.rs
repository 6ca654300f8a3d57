//! Unread counts of local rooms for `/sync`: `unread_notifications` and, for clients that ask
//! (`unread_thread_notifications: true` in the room event filter), per-thread counts in
//! `unread_thread_notifications` (MSC3773 as Synapse implements it).
//!
//! The counts are the notifications the push task recorded ([`crate::store::push`]) that the
//! user's read receipts do not cover; they were decided with the user's rules at the event,
//! as Synapse's are, so a later rule change does not rewrite old counts. The task runs just
//! behind the writer, so a sync woken by a commit may come before it: events the task has not
//! evaluated yet are evaluated here, for this user only (at most [`MAX_TAIL`] of them), so a
//! count never lags behind the timeline it comes with.

use std::collections::HashMap;

use ruma::UserId;
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::{rules, task};
use crate::rooms::service::now_ms;
use crate::store::{self, StoreError, push::ThreadCount};

/// Most events not yet evaluated by the push task that a count evaluates itself.
const MAX_TAIL: i64 = 1000;

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
        // Synapse leaves the field out when no thread has unread notifications.
        let threads: serde_json::Map<String, Value> = self
            .threads
            .iter()
            .map(|(root, count)| (root.clone(), object(count)))
            .collect();
        let threads = (!threads.is_empty()).then_some(Value::Object(threads));
        (object(&self.main), threads)
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
        if row.thread_id == store::events::MAIN_THREAD {
            counts.main = count;
        } else {
            counts.threads.insert(row.thread_id, count);
        }
    }
    rooms
}

/// Whether the user's read receipts cover an event at `stream` in `thread` of `room`: an
/// unthreaded receipt (`""`) at or after it, or one of its own thread.
pub fn covered(
    reads: &HashMap<(String, String), i64>,
    room: &str,
    thread: &str,
    stream: i64,
) -> bool {
    [String::new(), thread.to_owned()].into_iter().any(|key| {
        reads
            .get(&(room.to_owned(), key))
            .is_some_and(|read| *read >= stream)
    })
}

/// The user's unread counts in `rooms` as of stream position `upto`: one query for what the
/// push task recorded, and evaluation of what it has not reached yet. Rooms without unread
/// notifications are absent (their counts are zero).
pub async fn unread_of_rooms(
    conn: &mut PgConnection,
    user_id: &UserId,
    rooms: &[String],
    upto: i64,
) -> Result<HashMap<String, Counts>, StoreError> {
    if rooms.is_empty() {
        return Ok(HashMap::new());
    }
    let user = user_id.as_str();
    let store::push::Unread {
        recorded,
        counts: mut rows,
        reads,
    } = store::push::unread(conn, user, rooms, upto).await?;
    if recorded < upto {
        rows.extend(unrecorded(conn, user_id, rooms, &reads, (recorded, upto)).await?);
    }
    Ok(fold(rows))
}

/// Counts of the events in `(after, upto]` the push task has not evaluated yet, given the
/// user's read positions.
async fn unrecorded(
    conn: &mut PgConnection,
    user_id: &UserId,
    rooms: &[String],
    reads: &HashMap<(String, String), i64>,
    (after, upto): (i64, i64),
) -> Result<Vec<ThreadCount>, StoreError> {
    let events = store::events::notifiable_of_rooms(conn, rooms, after, upto, MAX_TAIL).await?;
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let user = user_id.as_str();
    let mut event_rooms: Vec<String> = events.iter().map(|e| e.event.room_id.to_string()).collect();
    event_rooms.sort_unstable();
    event_rooms.dedup();
    let context = store::push::recipient_context(conn, user, &event_rooms).await?;
    let ruleset = rules::ruleset(user_id, context.rules.as_ref());
    let now = now_ms();
    let loaded: HashMap<&str, task::Room> = context
        .rooms
        .iter()
        .filter_map(|(room, facts)| {
            task::Room::for_recipient(user, facts, now).map(|r| (room.as_str(), r))
        })
        .collect();
    let mut counts: HashMap<(String, String), ThreadCount> = HashMap::new();
    for row in events {
        let event = &row.event;
        let room_id = event.room_id.as_str();
        let Some(room) = loaded.get(room_id) else {
            continue;
        };
        let Some((_, display_name)) = room.recipients().first() else {
            continue;
        };
        let value = task::event_json(event);
        let Some(outcome) =
            task::notifies(room, event, &value, user_id, display_name, &ruleset).await
        else {
            continue;
        };
        let thread = rules::thread_of(&event.content);
        if covered(reads, room_id, &thread, event.stream) {
            continue;
        }
        let count = counts
            .entry((room_id.to_owned(), thread.clone()))
            .or_insert_with(|| ThreadCount {
                room_id: room_id.to_owned(),
                thread_id: thread,
                notifications: 0,
                highlights: 0,
            });
        count.notifications += 1;
        count.highlights += i64::from(outcome.highlight);
    }
    Ok(counts.into_values().collect())
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
    fn receipts_cover_their_thread_or_everything() {
        let reads: HashMap<(String, String), i64> = [
            (("!a:x".to_owned(), String::new()), 10),
            (("!a:x".to_owned(), "$t".to_owned()), 20),
            (("!b:x".to_owned(), "main".to_owned()), 5),
        ]
        .into_iter()
        .collect();
        assert!(
            covered(&reads, "!a:x", "main", 10),
            "unthreaded covers the main timeline"
        );
        assert!(!covered(&reads, "!a:x", "main", 11));
        assert!(
            covered(&reads, "!a:x", "$t", 15),
            "the thread's own receipt"
        );
        assert!(!covered(&reads, "!a:x", "$u", 15), "not another thread's");
        assert!(covered(&reads, "!b:x", "main", 5));
        assert!(
            !covered(&reads, "!b:x", "$t", 1),
            "a main receipt does not cover threads"
        );
        assert!(!covered(&reads, "!c:x", "main", 1));
    }

    #[test]
    fn a_quiet_room_counts_zero() {
        let (room, threads) = Counts::default().sync_fields(true);
        assert_eq!(room, json!({"notification_count": 0, "highlight_count": 0}));
        assert!(threads.is_none());
    }
}

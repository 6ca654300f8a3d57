//! `receipts`: read receipts in local rooms, one per (room, user, type, thread). A receipt
//! only moves forward (to an event later in the room), as in Synapse; `stream` is a room data
//! stream position (migration 0008).

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;

use super::StoreError;

/// A read receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub room_id: String,
    pub user_id: String,
    /// `m.read` or `m.read.private`.
    pub kind: String,
    /// `""` for an unthreaded receipt.
    pub thread_id: String,
    pub event_id: String,
    /// The stream position it was committed with.
    pub stream: i64,
    /// When it was made, in ms since the epoch.
    pub ts: i64,
    /// Extra fields sent with it (Beeper's `com.beeper.read.extra`), returned verbatim.
    pub extra: Option<Value>,
}

/// Writes receipts, replacing each user's earlier one of the same type and thread when the new
/// one is for a later event of the room. Returns how many were written (0: all were behind).
pub async fn upsert(conn: &mut PgConnection, receipts: &[Receipt]) -> Result<u64, StoreError> {
    let column = |f: fn(&Receipt) -> String| receipts.iter().map(f).collect::<Vec<String>>();
    let rooms = column(|r| r.room_id.clone());
    let users = column(|r| r.user_id.clone());
    let kinds = column(|r| r.kind.clone());
    let threads = column(|r| r.thread_id.clone());
    let events = column(|r| r.event_id.clone());
    let streams: Vec<i64> = receipts.iter().map(|r| r.stream).collect();
    let ts: Vec<i64> = receipts.iter().map(|r| r.ts).collect();
    let extras: Vec<Option<Value>> = receipts.iter().map(|r| r.extra.clone()).collect();
    let done = sqlx::query!(
        "INSERT INTO receipts (room_id, user_id, type, thread_id, event_id, stream, ts, extra)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::bigint[], $7::bigint[], $8::jsonb[])
         ON CONFLICT (room_id, user_id, type, thread_id) DO UPDATE
         SET event_id = EXCLUDED.event_id, stream = EXCLUDED.stream, ts = EXCLUDED.ts,
             extra = EXCLUDED.extra
         WHERE (SELECT topo FROM events WHERE event_id = EXCLUDED.event_id)
             > COALESCE((SELECT topo FROM events WHERE event_id = receipts.event_id),
                        -9223372036854775808)",
        &rooms,
        &users,
        &kinds,
        &threads,
        &events,
        &streams,
        &ts,
        &extras as &[Option<Value>],
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// The receipts of some rooms committed in `(after, upto]`, `after` per room, by room, oldest
/// first.
pub async fn of_rooms(
    conn: &mut PgConnection,
    rooms: &[(String, i64)],
    upto: i64,
) -> Result<HashMap<String, Vec<Receipt>>, StoreError> {
    if rooms.is_empty() {
        return Ok(HashMap::new());
    }
    let (room_ids, afters): (Vec<String>, Vec<i64>) = rooms.iter().cloned().unzip();
    let rows = sqlx::query_as!(
        Receipt,
        r#"SELECT r.room_id AS "room_id!", r.user_id AS "user_id!", r.type AS "kind!",
                  r.thread_id AS "thread_id!", r.event_id AS "event_id!", r.stream AS "stream!",
                  r.ts AS "ts!", r.extra
           FROM UNNEST($1::text[], $2::bigint[]) AS w(room_id, after)
           JOIN receipts r ON r.room_id = w.room_id AND r.stream > w.after AND r.stream <= $3
           ORDER BY r.stream"#,
        &room_ids,
        &afters,
        upto
    )
    .fetch_all(conn)
    .await?;
    let mut by_room: HashMap<String, Vec<Receipt>> = HashMap::new();
    for receipt in rows {
        by_room
            .entry(receipt.room_id.clone())
            .or_default()
            .push(receipt);
    }
    Ok(by_room)
}

/// Public (`m.read`) receipts of all rooms committed in `(after, upto]`, in room data order, at
/// most `limit` (for appservice delivery).
pub async fn public_range(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<Receipt>, StoreError> {
    Ok(sqlx::query_as!(
        Receipt,
        r#"SELECT room_id, user_id, type AS kind, thread_id, event_id, stream, ts, extra
           FROM receipts
           WHERE stream > $1 AND stream <= $2 AND type = 'm.read'
           ORDER BY stream LIMIT $3"#,
        after,
        upto,
        limit
    )
    .fetch_all(conn)
    .await?)
}

//! `receipts`: read receipts in local rooms, one per (room, user, type, thread).

use std::collections::HashMap;

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
}

/// Writes receipts, replacing each user's earlier one of the same type and thread.
pub async fn upsert(conn: &mut PgConnection, receipts: &[Receipt]) -> Result<(), StoreError> {
    let column = |f: fn(&Receipt) -> String| receipts.iter().map(f).collect::<Vec<String>>();
    let rooms = column(|r| r.room_id.clone());
    let users = column(|r| r.user_id.clone());
    let kinds = column(|r| r.kind.clone());
    let threads = column(|r| r.thread_id.clone());
    let events = column(|r| r.event_id.clone());
    let streams: Vec<i64> = receipts.iter().map(|r| r.stream).collect();
    let ts: Vec<i64> = receipts.iter().map(|r| r.ts).collect();
    sqlx::query!(
        "INSERT INTO receipts (room_id, user_id, type, thread_id, event_id, stream, ts)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::bigint[], $7::bigint[])
         ON CONFLICT (room_id, user_id, type, thread_id) DO UPDATE
         SET event_id = EXCLUDED.event_id, stream = EXCLUDED.stream, ts = EXCLUDED.ts",
        &rooms,
        &users,
        &kinds,
        &threads,
        &events,
        &streams,
        &ts,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The receipts of some rooms committed at or before `upto`, by room, oldest first.
pub async fn of_rooms(
    conn: &mut PgConnection,
    room_ids: &[String],
    upto: i64,
) -> Result<HashMap<String, Vec<Receipt>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT room_id, user_id, type, thread_id, event_id, stream, ts FROM receipts
         WHERE room_id = ANY($1) AND stream <= $2 ORDER BY stream",
        room_ids,
        upto
    )
    .fetch_all(conn)
    .await?;
    let mut by_room: HashMap<String, Vec<Receipt>> = HashMap::new();
    for row in rows {
        by_room
            .entry(row.room_id.clone())
            .or_default()
            .push(Receipt {
                room_id: row.room_id,
                user_id: row.user_id,
                kind: row.r#type,
                thread_id: row.thread_id,
                event_id: row.event_id,
                stream: row.stream,
                ts: row.ts,
            });
    }
    Ok(by_room)
}

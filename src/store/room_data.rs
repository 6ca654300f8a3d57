//! The room data stream (migration 0008): positions for receipts, read markers and room
//! account data of local rooms, and the `room_account_data` table (tags are its `m.tag`
//! entry).
//!
//! [`next_position`] must be called inside the transaction that writes the data: it holds the
//! counter row's lock until commit, which is what makes positions commit in order.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;

use super::StoreError;

/// Takes the next room data position. Call it in the writing transaction, as late as possible
/// (the counter row stays locked until commit).
pub async fn next_position(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        "UPDATE room_data_position SET position = position + 1 RETURNING position"
    )
    .fetch_one(conn)
    .await?)
}

/// The highest committed room data position.
pub async fn current_position(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT position FROM room_data_position")
            .fetch_one(conn)
            .await?,
    )
}

/// Writes one room account data entry at `stream`.
pub async fn put_account_data(
    conn: &mut PgConnection,
    user_id: &str,
    room_id: &str,
    kind: &str,
    content: &Value,
    stream: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO room_account_data (user_id, room_id, type, content, stream)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, room_id, type) DO UPDATE
         SET content = EXCLUDED.content, stream = EXCLUDED.stream",
        user_id,
        room_id,
        kind,
        content,
        stream,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One room account data entry. For a read-modify-write (tags), take [`next_position`] first:
/// its row lock keeps other writers out until commit.
pub async fn account_data(
    conn: &mut PgConnection,
    user_id: &str,
    room_id: &str,
    kind: &str,
) -> Result<Option<Value>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT content FROM room_account_data
         WHERE user_id = $1 AND room_id = $2 AND type = $3",
        user_id,
        room_id,
        kind,
    )
    .fetch_optional(conn)
    .await?)
}

/// A user's room account data in some rooms written in `(after, upto]`, `after` per room:
/// room → `(type, content)`.
pub async fn account_data_of_rooms(
    conn: &mut PgConnection,
    user_id: &str,
    rooms: &[(String, i64)],
    upto: i64,
) -> Result<HashMap<String, Vec<(String, Value)>>, StoreError> {
    if rooms.is_empty() {
        return Ok(HashMap::new());
    }
    let (room_ids, afters): (Vec<String>, Vec<i64>) = rooms.iter().cloned().unzip();
    let rows = sqlx::query!(
        r#"SELECT a.room_id AS "room_id!", a.type AS "type!", a.content AS "content!"
           FROM UNNEST($2::text[], $3::bigint[]) AS w(room_id, after)
           JOIN room_account_data a
             ON a.user_id = $1 AND a.room_id = w.room_id AND a.stream > w.after
                AND a.stream <= $4
           ORDER BY a.stream"#,
        user_id,
        &room_ids,
        &afters,
        upto,
    )
    .fetch_all(conn)
    .await?;
    let mut by_room: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for row in rows {
        by_room
            .entry(row.room_id)
            .or_default()
            .push((row.r#type, row.content));
    }
    Ok(by_room)
}

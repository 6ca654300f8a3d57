//! Membership and history-visibility histories: what a reader's view of a room is built from.

use std::collections::HashMap;

use sqlx::PgConnection;

use crate::store::StoreError;

/// A user's member events in a room, oldest first: their membership history, for history
/// visibility.
pub async fn membership_history(
    conn: &mut PgConnection,
    room_id: &str,
    user_id: &str,
) -> Result<Vec<(i64, String)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT stream, content->>'membership' AS "membership?" FROM events
           WHERE room_id = $1 AND type = 'm.room.member' AND state_key = $2 ORDER BY stream"#,
        room_id,
        user_id,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.stream,
                row.membership.unwrap_or_else(|| "leave".to_owned()),
            )
        })
        .collect())
}

/// A user's membership history in a room and the room's visibility history, oldest first.
pub type ReaderHistory = (Vec<(i64, String)>, Vec<(i64, String)>);

/// [`membership_history`] and [`visibility_history`] of many rooms in one query: what a
/// reader's view of each room is built from.
pub async fn reader_histories(
    conn: &mut PgConnection,
    room_ids: &[String],
    user_id: &str,
) -> Result<HashMap<String, ReaderHistory>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT room_id, stream, type AS kind, content->>'membership' AS "membership?",
                  content->>'history_visibility' AS "visibility?"
           FROM events
           WHERE room_id = ANY($1)
             AND ((type = 'm.room.member' AND state_key = $2)
                  OR (type = 'm.room.history_visibility' AND state_key = ''))
           ORDER BY stream"#,
        room_ids,
        user_id,
    )
    .fetch_all(conn)
    .await?;
    let mut histories: HashMap<String, ReaderHistory> = HashMap::new();
    for row in rows {
        let (memberships, visibilities) = histories.entry(row.room_id).or_default();
        if row.kind == "m.room.member" {
            memberships.push((row.stream, row.membership.unwrap_or_else(|| "leave".into())));
        } else {
            visibilities.push((
                row.stream,
                row.visibility.unwrap_or_else(|| "shared".into()),
            ));
        }
    }
    Ok(histories)
}

/// The room's history visibility changes, oldest first.
pub async fn visibility_history(
    conn: &mut PgConnection,
    room_id: &str,
) -> Result<Vec<(i64, String)>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT stream, content->>'history_visibility' AS "visibility?" FROM events
           WHERE room_id = $1 AND type = 'm.room.history_visibility' AND state_key = '' ORDER BY stream"#,
        room_id,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| {
            (
                row.stream,
                row.visibility.unwrap_or_else(|| "shared".to_owned()),
            )
        })
        .collect())
}

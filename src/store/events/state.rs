//! Room state from events: current state and state at a position.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::{EventWithPrev, Row, by_room, parse_all};
use crate::store::StoreError;

/// The current state of a room.
pub async fn current_state(
    conn: &mut PgConnection,
    room_id: &str,
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream, e.topo, e.event_id, e.room_id, e.sender, e.type AS kind, e.state_key,
                  e.origin_server_ts, e.content, e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM current_state cs
           JOIN events e ON e.stream = cs.stream
           LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE cs.room_id = $1
           ORDER BY e.stream"#,
        room_id,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// Some entries of a room's current state: the events at the given `(type, state_key)`
/// keys, for those that are set.
pub async fn current_state_at_keys(
    conn: &mut PgConnection,
    room_id: &str,
    keys: &[(&str, &str)],
) -> Result<Vec<EventWithPrev>, StoreError> {
    let mut rooms = current_state_at_keys_of_rooms(conn, &[room_id.to_owned()], keys).await?;
    Ok(rooms.remove(room_id).unwrap_or_default())
}

/// [`current_state_at_keys`] of several rooms in one statement, by room.
pub async fn current_state_at_keys_of_rooms(
    conn: &mut PgConnection,
    room_ids: &[String],
    keys: &[(&str, &str)],
) -> Result<HashMap<String, Vec<EventWithPrev>>, StoreError> {
    let (types, state_keys): (Vec<String>, Vec<String>) = keys
        .iter()
        .map(|(kind, key)| ((*kind).to_owned(), (*key).to_owned()))
        .unzip();
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream, e.topo, e.event_id, e.room_id, e.sender, e.type AS kind, e.state_key,
                  e.origin_server_ts, e.content, e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM current_state cs
           JOIN events e ON e.stream = cs.stream
           LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE cs.room_id = ANY($1)
             AND (cs.type, cs.state_key) IN (SELECT * FROM UNNEST($2::text[], $3::text[]))
           ORDER BY e.stream"#,
        room_ids,
        &types,
        &state_keys,
    )
    .fetch_all(conn)
    .await?;
    by_room(rows)
}

/// The state of a room as it was at stream position `at` (inclusive): for each key, the latest
/// state event at or before it.
pub async fn state_at(
    conn: &mut PgConnection,
    room_id: &str,
    at: i64,
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM (SELECT DISTINCT ON (type, state_key) stream FROM events
                 WHERE room_id = $1 AND state_key IS NOT NULL AND stream <= $2
                 ORDER BY type, state_key, stream DESC) latest
           JOIN events e ON e.stream = latest.stream
           LEFT JOIN events p ON p.event_id = e.replaces_state
           ORDER BY e.stream"#,
        room_id,
        at,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// [`state_at`] for many rooms at the same position, by room.
pub async fn state_of_rooms(
    conn: &mut PgConnection,
    room_ids: &[String],
    at: i64,
) -> Result<HashMap<String, Vec<EventWithPrev>>, StoreError> {
    if room_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM UNNEST($1::text[]) AS r(room_id)
           CROSS JOIN LATERAL (
               SELECT DISTINCT ON (type, state_key) stream FROM events
               WHERE room_id = r.room_id AND state_key IS NOT NULL AND stream <= $2
               ORDER BY type, state_key, stream DESC) latest
           JOIN events e ON e.stream = latest.stream
           LEFT JOIN events p ON p.event_id = e.replaces_state
           ORDER BY e.stream"#,
        room_ids,
        at,
    )
    .fetch_all(conn)
    .await?;
    by_room(rows)
}

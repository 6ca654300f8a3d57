//! Reading events: by ID, by position, by page, and the heads followers walk.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::{EventWithPrev, Row, parse_all};
use crate::store::StoreError;

/// The highest stream position written so far (0 when there is none).
pub async fn max_stream(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT COALESCE(MAX(stream), 0) AS \"max!\" FROM events")
            .fetch_one(conn)
            .await?,
    )
}

/// One event by ID, within `room_id`.
pub async fn by_id(
    conn: &mut PgConnection,
    room_id: &str,
    event_id: &str,
) -> Result<Option<EventWithPrev>, StoreError> {
    let row = sqlx::query_as!(
        Row,
        r#"SELECT e.stream, e.topo, e.event_id, e.room_id, e.sender, e.type AS kind, e.state_key,
                  e.origin_server_ts, e.content, e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM events e LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE e.room_id = $1 AND e.event_id = $2"#,
        room_id,
        event_id,
    )
    .fetch_optional(conn)
    .await?;
    row.map(Row::parse).transpose()
}

/// The room an event is in, if it exists.
pub async fn room_of(
    conn: &mut PgConnection,
    event_id: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT room_id FROM events WHERE event_id = $1", event_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Events by ID, any room (redaction targets, `redacted_because`).
pub async fn by_ids(
    conn: &mut PgConnection,
    event_ids: &[String],
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM events e LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE e.event_id = ANY($1)"#,
        event_ids,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// Up to `limit` events of a room with `topo` in `(after, before)` (exclusive bounds), in
/// ascending order when `forwards`, else descending.
pub async fn page(
    conn: &mut PgConnection,
    room_id: &str,
    after: i64,
    before: i64,
    forwards: bool,
    limit: i64,
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream, e.topo, e.event_id, e.room_id, e.sender, e.type AS kind, e.state_key,
                  e.origin_server_ts, e.content, e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM events e LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE e.room_id = $1 AND e.topo > $2 AND e.topo < $3
           ORDER BY CASE WHEN $4 THEN e.topo END ASC, CASE WHEN NOT $4 THEN e.topo END DESC
           LIMIT $5"#,
        room_id,
        after,
        before,
        forwards,
        limit,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// Up to `limit` events of a room with `stream` in `(after, before)` (exclusive bounds), newest
/// first, leaving out backfilled history: the end of a sync timeline.
pub async fn recent(
    conn: &mut PgConnection,
    room_id: &str,
    after: i64,
    before: i64,
    limit: i64,
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream, e.topo, e.event_id, e.room_id, e.sender, e.type AS kind, e.state_key,
                  e.origin_server_ts, e.content, e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM events e LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE e.room_id = $1 AND e.stream > $2 AND e.stream < $3 AND NOT e.backfilled
           ORDER BY e.stream DESC
           LIMIT $4"#,
        room_id,
        after,
        before,
        limit,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// The highest topological position among a room's events at or before stream position
/// `stream`. Backfilled history lies below the room's first live event, so only live events
/// are looked at (that is what the room's stream index holds, migration 0016).
pub async fn topo_at(
    conn: &mut PgConnection,
    room_id: &str,
    stream: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT max(topo) FROM events WHERE room_id = $1 AND stream <= $2 AND NOT backfilled",
        room_id,
        stream
    )
    .fetch_one(conn)
    .await?)
}

/// The topological position of the room's event at stream position `stream`, if there is one
/// (an index lookup, unlike [`topo_at`]).
pub async fn topo_of(
    conn: &mut PgConnection,
    room_id: &str,
    stream: i64,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT topo FROM events WHERE room_id = $1 AND stream = $2",
        room_id,
        stream
    )
    .fetch_optional(conn)
    .await?)
}

/// What a reader needs to decide whether it wants an event, without its content: the
/// columns [`stream_heads`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventHead {
    pub stream: i64,
    pub room_id: String,
    pub sender: String,
    /// The event type.
    pub kind: String,
    pub state_key: Option<String>,
    /// `content.membership` of a member event (`None` for other events).
    pub membership: Option<String>,
    /// Never pushes or counts as unread (migration 0009).
    pub silent: bool,
}

/// The heads of up to `limit` events with `stream` in `(after, upto]`, in stream order,
/// leaving out backfilled history: what the stream's followers (appservice delivery, the
/// push task) walk. Fewer than `limit` rows does not mean the range is exhausted (backfilled
/// events are skipped). A follower reads these first and then the full events it wants
/// ([`with_prev_at`]), instead of reading and parsing every event's content.
pub async fn stream_heads(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<EventHead>, StoreError> {
    Ok(sqlx::query_as!(
        EventHead,
        r#"SELECT stream, room_id, sender, type AS kind, state_key,
                  CASE WHEN type = 'm.room.member' THEN content->>'membership' END AS membership,
                  silent
           FROM events
           WHERE stream > $1 AND stream <= $2 AND NOT backfilled
           ORDER BY stream
           LIMIT $3"#,
        after,
        upto,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

/// The heads of up to `limit` events of one room with `stream` in `[from, upto]`, in stream
/// order, leaving out backfilled history: a held room's events, delivered once its class is
/// served again (appservice delivery).
pub async fn room_stream_heads(
    conn: &mut PgConnection,
    room_id: &str,
    from: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<EventHead>, StoreError> {
    Ok(sqlx::query_as!(
        EventHead,
        r#"SELECT stream, room_id, sender, type AS kind, state_key,
                  CASE WHEN type = 'm.room.member' THEN content->>'membership' END AS membership,
                  silent
           FROM events
           WHERE room_id = $1 AND stream >= $2 AND stream <= $3 AND NOT backfilled
           ORDER BY stream
           LIMIT $4"#,
        room_id,
        from,
        upto,
        limit,
    )
    .fetch_all(conn)
    .await?)
}

/// The events at the given stream positions (those that still exist), in stream order, with
/// what their state events replaced.
pub async fn with_prev_at(
    conn: &mut PgConnection,
    streams: &[i64],
) -> Result<Vec<EventWithPrev>, StoreError> {
    if streams.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream, e.topo, e.event_id, e.room_id, e.sender, e.type AS kind, e.state_key,
                  e.origin_server_ts, e.content, e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM events e LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE e.stream = ANY($1)
           ORDER BY e.stream"#,
        streams,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// Events of `room_ids` in `(after, upto]` that may notify (neither backfilled nor silent,
/// see migration 0009), in stream order, at most `limit`.
pub async fn notifiable_of_rooms(
    conn: &mut PgConnection,
    room_ids: &[String],
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream, e.topo, e.event_id, e.room_id, e.sender, e.type AS kind, e.state_key,
                  e.origin_server_ts, e.content, e.replaces_state, e.redacts, e.redacted_by,
                  e.txn_scope, e.txn_id, p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM events e LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE e.room_id = ANY($1) AND e.stream > $2 AND e.stream <= $3
             AND NOT e.backfilled AND NOT e.silent
           ORDER BY e.stream
           LIMIT $4"#,
        room_ids,
        after,
        upto,
        limit,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// Which of `event_ids` exist, with their rooms.
pub async fn existing_ids(
    conn: &mut PgConnection,
    event_ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    if event_ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(sqlx::query!(
        "SELECT event_id, room_id FROM events WHERE event_id = ANY($1)",
        event_ids
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|row| (row.event_id, row.room_id))
    .collect())
}

/// Whether a room has any message (non-state) event.
///
/// Ordered by `topo` so that every plan walks the room's part of `events_room_id_topo_key`.
/// As an `EXISTS`, the generic plan of the prepared statement (used after five runs)
/// expected a match within a few rows of a sequential scan and read the whole table to reach
/// a new room's rows at its end (100 ms at 450,000 events); ordered by `stream`, it walks
/// the primary key from the start instead, which is no better.
pub async fn room_has_messages(conn: &mut PgConnection, room_id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT topo FROM events WHERE room_id = $1 AND state_key IS NULL ORDER BY topo LIMIT 1",
        room_id
    )
    .fetch_optional(conn)
    .await?
    .is_some())
}

/// [`recent`] for many rooms at once, each with its own lower bound: `(room, after)` pairs,
/// one shared upper bound. Returns `(room, after, rows newest first)` for rooms with rows.
pub async fn recent_of_rooms(
    conn: &mut PgConnection,
    windows: &[(String, i64)],
    before: i64,
    limit: i64,
) -> Result<Vec<(String, i64, Vec<EventWithPrev>)>, StoreError> {
    if windows.is_empty() {
        return Ok(Vec::new());
    }
    let (rooms, afters): (Vec<String>, Vec<i64>) = windows.iter().cloned().unzip();
    let rows = sqlx::query_as!(
        Row,
        r#"SELECT e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state,
                  e.redacts, e.redacted_by, e.txn_scope, e.txn_id,
                  p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM UNNEST($1::text[], $2::bigint[]) AS w(room_id, after)
           CROSS JOIN LATERAL (
               SELECT * FROM events x
               WHERE x.room_id = w.room_id AND x.stream > w.after AND x.stream < $3
                 AND NOT x.backfilled
               ORDER BY x.stream DESC LIMIT $4) e
           LEFT JOIN events p ON p.event_id = e.replaces_state
           ORDER BY e.room_id, e.stream DESC"#,
        &rooms,
        &afters,
        before,
        limit,
    )
    .fetch_all(conn)
    .await?;
    let after_of: HashMap<&str, i64> = windows
        .iter()
        .map(|(room, after)| (room.as_str(), *after))
        .collect();
    let mut out: Vec<(String, i64, Vec<EventWithPrev>)> = Vec::new();
    for row in parse_all(rows)? {
        let room = row.event.room_id.as_str();
        match out.last_mut() {
            Some((last, _, events)) if last == room => events.push(row),
            _ => {
                let after = after_of.get(room).copied().unwrap_or_default();
                out.push((room.to_owned(), after, vec![row]));
            }
        }
    }
    Ok(out)
}

/// The event closest to `ts` in the given direction (for `timestamp_to_event`).
pub async fn closest_to_ts(
    conn: &mut PgConnection,
    room_id: &str,
    ts: i64,
    forwards: bool,
) -> Result<Option<(String, i64)>, StoreError> {
    let row = if forwards {
        sqlx::query!(
            "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts >= $2
             ORDER BY origin_server_ts ASC, topo ASC LIMIT 1",
            room_id,
            ts
        )
        .fetch_optional(conn)
        .await?
        .map(|row| (row.event_id, row.origin_server_ts))
    } else {
        sqlx::query!(
            "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts <= $2
             ORDER BY origin_server_ts DESC, topo DESC LIMIT 1",
            room_id,
            ts
        )
        .fetch_optional(conn)
        .await?
        .map(|row| (row.event_id, row.origin_server_ts))
    };
    Ok(row)
}

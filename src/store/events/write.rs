//! Writing events: the writer's batches (one UNNEST statement, or binary `COPY` for big
//! batches), its fast path, and redactions.

use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::StoredEvent;
use super::copy::copy_events;
use crate::store::StoreError;

/// What one writer batch stores besides new rooms and aliases.
#[derive(Debug, Default)]
pub struct BatchWrite<'a> {
    /// New events, in stream order.
    pub events: &'a [StoredEvent],
    /// Stream positions (ascending) of the events that are backfilled history.
    pub backfilled: &'a [i64],
    /// Stream positions (ascending) of the events that never push or count as unread.
    pub silent: &'a [i64],
    /// Rooms' new counters.
    pub positions: Vec<RoomPositions>,
    /// Used transaction IDs: `(scope, txn_id, event_id)`.
    pub txns: Vec<(String, String, String)>,
}

/// A room's counters as a batch leaves them (the `rooms` columns of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPositions {
    pub room_id: String,
    /// The highest topological position (the newest event).
    pub max_topo: i64,
    /// The lowest topological position (the oldest event, backfill included).
    pub min_topo: i64,
    /// The stream position of the room's newest event.
    pub latest_stream: i64,
}

/// The constraint that keeps event IDs unique (an exclusion constraint on a hash index,
/// migration 0018). An insert that reuses an ID fails on it with SQLSTATE 23P01.
pub const EVENT_ID_CONSTRAINT: &str = "events_event_id_hash";

/// Batches with at least this many events are written with binary `COPY` ([`copy_events`])
/// instead of the UNNEST insert: no parameter arrays to build and decode, no per-event
/// copies of the content, and Postgres inserts the heap tuples in bulk. Below it the single
/// UNNEST statement wins, being one round trip instead of three.
pub const COPY_MIN_EVENTS: usize = 64;

/// Writes a batch: events, room counters and transaction IDs in one statement (this is the
/// ingest path: one round trip whatever the batch size; big batches copy their events first,
/// see [`COPY_MIN_EVENTS`]), then current state and memberships when the batch has state
/// events. Backfilled and silent events get their flags in the insert itself. Its column
/// list and binds must agree with `copy::COPY_EVENTS` (a test there holds them together).
pub async fn write_batch(
    conn: &mut PgConnection,
    batch: &BatchWrite<'_>,
) -> Result<(), StoreError> {
    let events = batch.events;
    let mut columns = Columns::default();
    if events.len() >= COPY_MIN_EVENTS {
        copy_events(conn, events, batch.backfilled, batch.silent).await?;
    } else {
        for event in events {
            columns.push(
                event,
                batch.backfilled.binary_search(&event.stream).is_ok(),
                batch.silent.binary_search(&event.stream).is_ok(),
            );
        }
    }
    let position_rooms: Vec<String> = batch.positions.iter().map(|p| p.room_id.clone()).collect();
    let max_topo: Vec<i64> = batch.positions.iter().map(|p| p.max_topo).collect();
    let min_topo: Vec<i64> = batch.positions.iter().map(|p| p.min_topo).collect();
    let latest: Vec<i64> = batch.positions.iter().map(|p| p.latest_stream).collect();
    let (txn_scopes, txn_ids, txn_events) = txn_columns(&batch.txns);
    // Data-modifying CTEs on three unrelated tables: no ordering between them is needed.
    sqlx::query!(
        r#"WITH new_events AS (
               INSERT INTO events (stream, room_id, topo, event_id, type, state_key, sender,
                   origin_server_ts, content, replaces_state, redacts, relates_to, rel_type, txn_scope, txn_id,
                   backfilled, silent)
               SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[],
                   $7::text[], $8::bigint[], $9::jsonb[], $10::text[], $11::text[], $12::text[], $13::text[],
                   $14::text[], $15::text[], $23::boolean[], $24::boolean[])
           ), new_positions AS (
               UPDATE rooms SET max_topo = u.max_topo, min_topo = u.min_topo, latest_stream = u.latest_stream
               FROM UNNEST($16::text[], $17::bigint[], $18::bigint[], $19::bigint[])
                    AS u(room_id, max_topo, min_topo, latest_stream)
               WHERE rooms.room_id = u.room_id
           ), new_txns AS (
               INSERT INTO transaction_ids (scope, txn_id, event_id)
               SELECT * FROM UNNEST($20::text[], $21::text[], $22::text[])
           )
           SELECT 1 AS "done!""#,
        &columns.stream,
        &columns.room_id,
        &columns.topo,
        &columns.event_id,
        &columns.kind,
        &columns.state_key as &[Option<String>],
        &columns.sender,
        &columns.origin_server_ts,
        &columns.content,
        &columns.replaces_state as &[Option<String>],
        &columns.redacts as &[Option<String>],
        &columns.relates_to as &[Option<String>],
        &columns.rel_type as &[Option<String>],
        &columns.txn_scope as &[Option<String>],
        &columns.txn_id as &[Option<String>],
        &position_rooms,
        &max_topo,
        &min_topo,
        &latest,
        &txn_scopes,
        &txn_ids,
        &txn_events,
        &columns.backfilled,
        &columns.silent,
    )
    .fetch_one(&mut *conn)
    .await?;

    // Current state and memberships: the last event per key in this batch wins (events are
    // in stream order).
    let mut state: Vec<&StoredEvent> = Vec::new();
    for event in events.iter().filter(|event| event.state_key.is_some()) {
        state.retain(|earlier| {
            !(earlier.room_id == event.room_id
                && earlier.kind == event.kind
                && earlier.state_key == event.state_key)
        });
        state.push(event);
    }
    if !state.is_empty() {
        let rooms: Vec<String> = state.iter().map(|e| e.room_id.to_string()).collect();
        let kinds: Vec<String> = state.iter().map(|e| e.kind.clone()).collect();
        let keys: Vec<String> = state
            .iter()
            .map(|e| e.state_key.clone().unwrap_or_default())
            .collect();
        let streams: Vec<i64> = state.iter().map(|e| e.stream).collect();
        sqlx::query!(
            "INSERT INTO current_state (room_id, type, state_key, stream)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
             ON CONFLICT (room_id, type, state_key) DO UPDATE SET stream = EXCLUDED.stream",
            &rooms,
            &kinds,
            &keys,
            &streams,
        )
        .execute(&mut *conn)
        .await?;

        let members: Vec<&&StoredEvent> =
            state.iter().filter(|e| e.kind == "m.room.member").collect();
        if !members.is_empty() {
            let rooms: Vec<String> = members.iter().map(|e| e.room_id.to_string()).collect();
            let users: Vec<String> = members
                .iter()
                .map(|e| e.state_key.clone().unwrap_or_default())
                .collect();
            let memberships: Vec<String> = members
                .iter()
                .map(|e| {
                    e.content
                        .get("membership")
                        .and_then(Value::as_str)
                        .unwrap_or("leave")
                        .to_owned()
                })
                .collect();
            let streams: Vec<i64> = members.iter().map(|e| e.stream).collect();
            sqlx::query!(
                "INSERT INTO memberships (room_id, user_id, membership, stream)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                 ON CONFLICT (room_id, user_id) DO UPDATE
                 SET membership = EXCLUDED.membership, stream = EXCLUDED.stream",
                &rooms,
                &users,
                &memberships,
                &streams,
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

/// `(scope, txn_id, event_id)` rows as three columns for UNNEST.
fn txn_columns(txns: &[(String, String, String)]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut columns = (
        Vec::with_capacity(txns.len()),
        Vec::with_capacity(txns.len()),
        Vec::with_capacity(txns.len()),
    );
    for (scope, txn_id, event_id) in txns {
        columns.0.push(scope.clone());
        columns.1.push(txn_id.clone());
        columns.2.push(event_id.clone());
    }
    columns
}

/// Column vectors for the UNNEST insert.
#[derive(Default)]
struct Columns {
    stream: Vec<i64>,
    room_id: Vec<String>,
    topo: Vec<i64>,
    event_id: Vec<String>,
    kind: Vec<String>,
    state_key: Vec<Option<String>>,
    sender: Vec<String>,
    origin_server_ts: Vec<i64>,
    content: Vec<Value>,
    replaces_state: Vec<Option<String>>,
    redacts: Vec<Option<String>>,
    relates_to: Vec<Option<String>>,
    rel_type: Vec<Option<String>>,
    txn_scope: Vec<Option<String>>,
    txn_id: Vec<Option<String>>,
    backfilled: Vec<bool>,
    silent: Vec<bool>,
}

impl Columns {
    fn push(&mut self, event: &StoredEvent, backfilled: bool, silent: bool) {
        let (relates_to, rel_type) = relation(&event.content);
        self.stream.push(event.stream);
        self.room_id.push(event.room_id.to_string());
        self.topo.push(event.topo);
        self.event_id.push(event.event_id.to_string());
        self.kind.push(event.kind.clone());
        self.state_key.push(event.state_key.clone());
        self.sender.push(event.sender.to_string());
        self.origin_server_ts.push(event.origin_server_ts);
        self.content.push(Value::Object(event.content.clone()));
        self.replaces_state
            .push(event.replaces_state.as_ref().map(ToString::to_string));
        self.redacts
            .push(event.redacts.as_ref().map(ToString::to_string));
        self.relates_to.push(relates_to);
        self.rel_type.push(rel_type);
        self.txn_scope
            .push(event.txn.as_ref().map(|(scope, _)| scope.clone()));
        self.txn_id
            .push(event.txn.as_ref().map(|(_, id)| id.clone()));
        self.backfilled.push(backfilled);
        self.silent.push(silent);
    }
}

/// `m.relates_to.event_id` and `rel_type` (replies via `m.in_reply_to` are not relations).
pub(super) fn relation(content: &Map<String, Value>) -> (Option<String>, Option<String>) {
    let Some(relates_to) = content.get("m.relates_to").and_then(Value::as_object) else {
        return (None, None);
    };
    match relates_to.get("event_id").and_then(Value::as_str) {
        Some(target) => (
            Some(target.to_owned()),
            relates_to
                .get("rel_type")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        None => (None, None),
    }
}

/// Marks `target` redacted by `redaction` and replaces its content with `pruned`.
pub async fn redact(
    conn: &mut PgConnection,
    target: &str,
    redaction: &str,
    pruned: &Map<String, Value>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE events SET content = $3, redacted_by = $2 WHERE event_id = $1",
        target,
        redaction,
        Value::Object(pruned.clone()),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A batch for the writer's fast path: plain messages only (no state key, no redaction).
#[derive(Debug)]
pub struct FastAppend<'a> {
    /// The highest stream position the writer believes committed.
    pub expected_max: i64,
    /// The rooms written, each with its `latest_stream` as the writer believes it.
    pub rooms: Vec<FastAppendRoom>,
    /// Transaction IDs to record: `(scope, txn_id, event_id)`.
    pub txns: &'a [(String, String, String)],
    /// The events, in stream order.
    pub events: &'a [StoredEvent],
}

/// A room of a fast-path batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FastAppendRoom {
    /// The room's `latest_stream` as the writer believes it: the batch is declined if the
    /// room was written since.
    pub expected_latest: i64,
    /// The room's counters after the batch.
    pub positions: RoomPositions,
}

/// SQLSTATE with which `writer_append` (migration 0015) undoes itself: a room or transaction
/// ID was not as the writer believed.
const WRITER_APPEND_DECLINED: &str = "HSW01";

/// Writes a fast-path batch in one statement (migrations 0004, 0015). `Ok(false)`: something
/// was written since the writer last looked (or a transaction ID was used), and nothing was
/// written now.
pub async fn fast_append(
    conn: &mut PgConnection,
    batch: &FastAppend<'_>,
) -> Result<bool, StoreError> {
    let mut columns = Columns::default();
    // Plain appends: never backfilled, never silent.
    for event in batch.events {
        columns.push(event, false, false);
    }
    let rooms: Vec<String> = batch
        .rooms
        .iter()
        .map(|r| r.positions.room_id.clone())
        .collect();
    let expected_latest: Vec<i64> = batch.rooms.iter().map(|r| r.expected_latest).collect();
    let max_topo: Vec<i64> = batch.rooms.iter().map(|r| r.positions.max_topo).collect();
    let min_topo: Vec<i64> = batch.rooms.iter().map(|r| r.positions.min_topo).collect();
    let latest: Vec<i64> = batch
        .rooms
        .iter()
        .map(|r| r.positions.latest_stream)
        .collect();
    let (txn_scopes, txn_ids, txn_events) = txn_columns(batch.txns);
    let written = sqlx::query_scalar!(
        r#"SELECT writer_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15,
                                $16, $17, $18, $19, $20, $21) AS "written!""#,
        batch.expected_max,
        &rooms,
        &expected_latest,
        &txn_scopes,
        &txn_ids,
        &txn_events,
        &columns.stream,
        &columns.room_id,
        &columns.topo,
        &columns.event_id,
        &columns.kind,
        &columns.sender,
        &columns.origin_server_ts,
        &columns.content,
        &columns.relates_to as &[Option<String>],
        &columns.rel_type as &[Option<String>],
        &columns.txn_scope as &[Option<String>],
        &columns.txn_id as &[Option<String>],
        &max_topo,
        &min_topo,
        &latest,
    )
    .fetch_one(conn)
    .await;
    match written {
        Ok(written) => Ok(written),
        Err(sqlx::Error::Database(err))
            if err.code().as_deref() == Some(WRITER_APPEND_DECLINED) =>
        {
            Ok(false)
        }
        Err(err) => Err(err.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn relations_are_extracted() {
        let content =
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": "$t", "key": "👍"}});
        assert_eq!(
            relation(content.as_object().unwrap()),
            (Some("$t".into()), Some("m.annotation".into()))
        );
        let reply = json!({"m.relates_to": {"m.in_reply_to": {"event_id": "$t"}}});
        assert_eq!(relation(reply.as_object().unwrap()), (None, None));
    }
}

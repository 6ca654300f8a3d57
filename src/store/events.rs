//! `events`, `current_state`, `memberships`: writing batches of events and reading them back.
//!
//! Rows are converted to ruma ID types at this boundary; a row that does not parse is
//! reported as [`StoreError::Corrupt`] rather than served.

use std::collections::HashMap;

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::StoreError;

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Global position (sync order).
    pub stream: i64,
    /// Position within the room (`/messages` order).
    pub topo: i64,
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    /// The event type.
    pub kind: String,
    /// Present for state events.
    pub state_key: Option<String>,
    pub origin_server_ts: i64,
    pub content: Map<String, Value>,
    /// The state event this one replaced.
    pub replaces_state: Option<OwnedEventId>,
    /// For redactions: the target.
    pub redacts: Option<OwnedEventId>,
    /// Set when this event has been redacted.
    pub redacted_by: Option<OwnedEventId>,
    /// `(scope, txn_id)` of the request that sent it.
    pub txn: Option<(String, String)>,
}

/// A stored event with what the client format needs from other events.
#[derive(Debug, Clone)]
pub struct EventWithPrev {
    pub event: StoredEvent,
    /// Content and sender of the event named by `replaces_state`.
    pub prev: Option<(Value, String)>,
}

/// The raw row, before IDs are parsed.
struct Row {
    stream: i64,
    topo: i64,
    event_id: String,
    room_id: String,
    sender: String,
    kind: String,
    state_key: Option<String>,
    origin_server_ts: i64,
    content: Value,
    replaces_state: Option<String>,
    redacts: Option<String>,
    redacted_by: Option<String>,
    txn_scope: Option<String>,
    txn_id: Option<String>,
    prev_content: Option<Value>,
    prev_sender: Option<String>,
}

fn corrupt(what: &str, value: &str) -> StoreError {
    StoreError::Corrupt(format!("{what} {value:?} does not parse"))
}

impl Row {
    fn parse(self) -> Result<EventWithPrev, StoreError> {
        let id = |value: Option<String>| -> Result<Option<OwnedEventId>, StoreError> {
            value
                .map(|value| {
                    OwnedEventId::try_from(value.as_str()).map_err(|_| corrupt("event id", &value))
                })
                .transpose()
        };
        let content = match self.content {
            Value::Object(map) => map,
            _ => return Err(corrupt("content of", &self.event_id)),
        };
        let event = StoredEvent {
            stream: self.stream,
            topo: self.topo,
            event_id: OwnedEventId::try_from(self.event_id.as_str())
                .map_err(|_| corrupt("event id", &self.event_id))?,
            room_id: OwnedRoomId::try_from(self.room_id.as_str())
                .map_err(|_| corrupt("room id", &self.room_id))?,
            sender: OwnedUserId::try_from(self.sender.as_str())
                .map_err(|_| corrupt("user id", &self.sender))?,
            kind: self.kind,
            state_key: self.state_key,
            origin_server_ts: self.origin_server_ts,
            content,
            replaces_state: id(self.replaces_state)?,
            redacts: id(self.redacts)?,
            redacted_by: id(self.redacted_by)?,
            txn: self.txn_scope.zip(self.txn_id),
        };
        let prev = self.prev_content.zip(self.prev_sender);
        Ok(EventWithPrev { event, prev })
    }
}

fn parse_all(rows: Vec<Row>) -> Result<Vec<EventWithPrev>, StoreError> {
    rows.into_iter().map(Row::parse).collect()
}

/// Parsed rows grouped by room, each room's in the order of `rows`.
fn by_room(rows: Vec<Row>) -> Result<HashMap<String, Vec<EventWithPrev>>, StoreError> {
    let mut rooms: HashMap<String, Vec<EventWithPrev>> = HashMap::new();
    for event in parse_all(rows)? {
        rooms
            .entry(event.event.room_id.to_string())
            .or_default()
            .push(event);
    }
    Ok(rooms)
}

/// The highest stream position written so far (0 when there is none).
pub async fn max_stream(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT COALESCE(MAX(stream), 0) AS \"max!\" FROM events")
            .fetch_one(conn)
            .await?,
    )
}

/// What one writer batch stores besides new rooms and aliases.
#[derive(Debug, Default)]
pub struct BatchWrite<'a> {
    /// New events, in stream order.
    pub events: &'a [StoredEvent],
    /// Stream positions (ascending) of the events that are backfilled history.
    pub backfilled: &'a [i64],
    /// Stream positions (ascending) of the events that never push or count as unread.
    pub silent: &'a [i64],
    /// Rooms' new counters: `(room_id, max_topo, min_topo, latest_stream)`.
    pub positions: Vec<(String, i64, i64, i64)>,
    /// Used transaction IDs: `(scope, txn_id, event_id)`.
    pub txns: Vec<(String, String, String)>,
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
/// events. Backfilled and silent events get their flags in the insert itself.
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
    let position_rooms: Vec<String> = batch.positions.iter().map(|p| p.0.clone()).collect();
    let max_topo: Vec<i64> = batch.positions.iter().map(|p| p.1).collect();
    let min_topo: Vec<i64> = batch.positions.iter().map(|p| p.2).collect();
    let latest: Vec<i64> = batch.positions.iter().map(|p| p.3).collect();
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

/// The columns [`copy_events`] fills, in the order of its rows.
const COPY_EVENTS: &str = "COPY events (stream, room_id, topo, event_id, type, state_key, sender, \
     origin_server_ts, content, replaces_state, redacts, relates_to, rel_type, txn_scope, txn_id, \
     backfilled, silent) FROM STDIN (FORMAT binary)";

/// Inserts events with one binary `COPY`. Constraints and indexes apply as for an INSERT, and
/// a failure (a duplicate event ID, content Postgres refuses) fails the caller's transaction.
async fn copy_events(
    conn: &mut PgConnection,
    events: &[StoredEvent],
    backfilled: &[i64],
    silent: &[i64],
) -> Result<(), StoreError> {
    let data = copy_data(events, backfilled, silent)?;
    let mut copy = conn.copy_in_raw(COPY_EVENTS).await?;
    if let Err(err) = copy.send(data).await {
        // Best effort: the connection is reset on its next use anyway.
        let _ = copy.abort("sending the rows failed").await;
        return Err(err.into());
    }
    let rows = copy.finish().await?;
    if rows != events.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "COPY wrote {rows} of {} events",
            events.len()
        )));
    }
    Ok(())
}

/// The rows of [`COPY_EVENTS`] in PostgreSQL's binary copy format: a signature, flags and
/// header extension length, then per row a field count and each field as a 32-bit length
/// (-1 for NULL) and its binary value (big-endian integers, raw UTF-8 text, `jsonb` as
/// version byte 1 and the JSON text), then a -1 trailer.
fn copy_data(
    events: &[StoredEvent],
    backfilled: &[i64],
    silent: &[i64],
) -> Result<Vec<u8>, StoreError> {
    const FIELDS: i16 = 17;
    let mut data = Vec::with_capacity(19 + events.len() * 512);
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    data.extend_from_slice(&0_i32.to_be_bytes());
    data.extend_from_slice(&0_i32.to_be_bytes());
    for event in events {
        let (relates_to, rel_type) = relation(&event.content);
        data.extend_from_slice(&FIELDS.to_be_bytes());
        copy_field(&mut data, Some(&event.stream.to_be_bytes()))?;
        copy_field(&mut data, Some(event.room_id.as_bytes()))?;
        copy_field(&mut data, Some(&event.topo.to_be_bytes()))?;
        copy_field(&mut data, Some(event.event_id.as_bytes()))?;
        copy_field(&mut data, Some(event.kind.as_bytes()))?;
        copy_field(&mut data, event.state_key.as_deref().map(str::as_bytes))?;
        copy_field(&mut data, Some(event.sender.as_bytes()))?;
        copy_field(&mut data, Some(&event.origin_server_ts.to_be_bytes()))?;
        // jsonb: written in place, its length filled in afterwards.
        let start = data.len();
        data.extend_from_slice(&0_i32.to_be_bytes());
        data.push(1);
        serde_json::to_writer(&mut data, &event.content)
            .map_err(|err| StoreError::Corrupt(format!("content of {}: {err}", event.event_id)))?;
        let length = field_length(data.len() - start - 4)?;
        data[start..start + 4].copy_from_slice(&length.to_be_bytes());
        copy_field(
            &mut data,
            event.replaces_state.as_ref().map(|id| id.as_bytes()),
        )?;
        copy_field(&mut data, event.redacts.as_ref().map(|id| id.as_bytes()))?;
        copy_field(&mut data, relates_to.as_deref().map(str::as_bytes))?;
        copy_field(&mut data, rel_type.as_deref().map(str::as_bytes))?;
        copy_field(
            &mut data,
            event.txn.as_ref().map(|(scope, _)| scope.as_bytes()),
        )?;
        copy_field(&mut data, event.txn.as_ref().map(|(_, id)| id.as_bytes()))?;
        let flag = |streams: &[i64]| [u8::from(streams.binary_search(&event.stream).is_ok())];
        copy_field(&mut data, Some(&flag(backfilled)))?;
        copy_field(&mut data, Some(&flag(silent)))?;
    }
    data.extend_from_slice(&(-1_i16).to_be_bytes());
    Ok(data)
}

/// One field of a binary copy row: length and bytes, or -1 for NULL.
fn copy_field(data: &mut Vec<u8>, value: Option<&[u8]>) -> Result<(), StoreError> {
    match value {
        Some(bytes) => {
            data.extend_from_slice(&field_length(bytes.len())?.to_be_bytes());
            data.extend_from_slice(bytes);
        }
        None => data.extend_from_slice(&(-1_i32).to_be_bytes()),
    }
    Ok(())
}

fn field_length(length: usize) -> Result<i32, StoreError> {
    i32::try_from(length).map_err(|_| StoreError::Corrupt(format!("a {length}-byte field")))
}

/// `m.relates_to.event_id` and `rel_type` (replies via `m.in_reply_to` are not relations).
fn relation(content: &Map<String, Value>) -> (Option<String>, Option<String>) {
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

/// The threads a receipt on `event_id` may name, as Synapse decides them (`receipts.py`,
/// `get_thread_id` and `get_thread_id_for_receipts` in its relations store). Both walk up the
/// event's relations (at most four steps; a redacted event has none):
/// - `main`: the root of an `m.thread` relation on the way, or `"main"` — a receipt for the
///   main timeline must name an event of no thread;
/// - `any`: the top-most related event, if some event is in a thread rooted there, else
///   `"main"` — a thread's receipt may name its root, its events and what relates to them.
///
/// An unknown event is in no thread.
pub async fn receipt_threads(
    conn: &mut PgConnection,
    room_id: &str,
    event_id: &str,
) -> Result<ReceiptThreads, StoreError> {
    let row = sqlx::query!(
        r#"WITH RECURSIVE up AS (
               SELECT event_id, relates_to, rel_type, 0 AS depth FROM events
               WHERE event_id = $2 AND room_id = $1
                 AND rel_type IS NOT NULL AND redacted_by IS NULL
               UNION
               SELECT e.event_id, e.relates_to, e.rel_type, up.depth + 1
               FROM events e JOIN up ON e.event_id = up.relates_to
               WHERE up.depth <= 3 AND e.room_id = $1
                 AND e.rel_type IS NOT NULL AND e.redacted_by IS NULL),
           top AS (
               SELECT COALESCE((SELECT relates_to FROM up ORDER BY depth DESC LIMIT 1), $2)
                   AS event_id)
           SELECT (SELECT relates_to FROM up WHERE rel_type = 'm.thread'
                   ORDER BY depth DESC LIMIT 1) AS "main?",
                  (SELECT t.event_id FROM top t WHERE EXISTS (
                       SELECT 1 FROM events e
                       WHERE e.relates_to = t.event_id AND e.rel_type = 'm.thread'
                         AND e.room_id = $1 AND e.redacted_by IS NULL)) AS "any?""#,
        room_id,
        event_id,
    )
    .fetch_one(conn)
    .await?;
    let or_main = |thread: Option<String>| thread.unwrap_or_else(|| MAIN_THREAD.to_owned());
    Ok(ReceiptThreads {
        main: or_main(row.main),
        any: or_main(row.any),
    })
}

/// The main timeline's thread ID (MSC3771).
pub const MAIN_THREAD: &str = "main";

/// What [`receipt_threads`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptThreads {
    /// The thread the event is in (`"main"` for none).
    pub main: String,
    /// The thread the event belongs to for a threaded receipt (`"main"` for none).
    pub any: String,
}

impl ReceiptThreads {
    /// Whether a receipt with `thread_id` may name the event.
    pub fn allows(&self, thread_id: &str) -> bool {
        if thread_id == MAIN_THREAD {
            self.main == MAIN_THREAD
        } else {
            self.any == thread_id
        }
    }
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

/// Which relations of an event to list, and where: `topo` in `(after, before)` (exclusive
/// bounds), in the given direction.
#[derive(Debug, Clone, Copy)]
pub struct RelationsQuery<'a> {
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub after: i64,
    pub before: i64,
    pub forwards: bool,
    /// Also events relating to those events, as Synapse's `recurse` does it: its recursive
    /// query follows relations while the depth so far is at most 3 (so five levels below the
    /// parent), and the type filters apply to every level found.
    pub recurse: bool,
    pub limit: i64,
}

/// Events relating to `target` (see [`RelationsQuery`]), in topological order.
pub async fn relations(
    conn: &mut PgConnection,
    room_id: &str,
    target: &str,
    query: RelationsQuery<'_>,
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"WITH RECURSIVE related (event_id, depth) AS (
               SELECT event_id, 0 FROM events WHERE relates_to = $2 AND room_id = $1
               UNION
               SELECT e.event_id, r.depth + 1
               FROM events e JOIN related r ON e.relates_to = r.event_id
               WHERE $8 AND r.depth <= 3 AND e.room_id = $1
           )
           SELECT e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!",
                  e.replaces_state, e.redacts, e.redacted_by, e.txn_scope, e.txn_id,
                  p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM related r JOIN events e ON e.event_id = r.event_id
           LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE ($3::text IS NULL OR e.rel_type = $3)
             AND ($4::text IS NULL OR e.type = $4)
             AND e.topo > $5 AND e.topo < $6
           ORDER BY CASE WHEN $7 THEN e.topo END ASC, CASE WHEN NOT $7 THEN e.topo END DESC
           LIMIT $9"#,
        room_id,
        target,
        query.rel_type,
        query.event_type,
        query.after,
        query.before,
        query.forwards,
        query.recurse,
        query.limit,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
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

/// Edits, thread replies and references of the given events, for bundled aggregations.
#[derive(Debug, Clone, Default)]
pub struct Aggregations {
    /// The latest edit of each event by its own sender.
    pub edits: Vec<EventWithPrev>,
    /// `(root, reply count, latest reply, whether the viewer posted in the thread)`.
    pub threads: Vec<(String, i64, EventWithPrev, bool)>,
    /// `(target, referencing event id)`, oldest first.
    pub references: Vec<(String, String)>,
}

/// Relations are only counted within `room_id`: an event in another room that claims to
/// relate to one of these must not show up in them.
pub async fn aggregations(
    conn: &mut PgConnection,
    room_id: &str,
    event_ids: &[String],
    viewer: &str,
) -> Result<Aggregations, StoreError> {
    if event_ids.is_empty() {
        return Ok(Aggregations::default());
    }
    // Most events have no relations: one cheap probe instead of the four queries below.
    let related = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM events WHERE relates_to = ANY($1) AND room_id = $2) AS "exists!""#,
        event_ids,
        room_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    if !related {
        return Ok(Aggregations::default());
    }
    let edits = sqlx::query_as!(
        Row,
        r#"SELECT DISTINCT ON (e.relates_to)
                  e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state,
                  e.redacts, e.redacted_by, e.txn_scope, e.txn_id,
                  NULL::jsonb AS "prev_content?", NULL::text AS "prev_sender?"
           FROM events e
           JOIN events o ON o.event_id = e.relates_to AND o.sender = e.sender AND o.room_id = e.room_id
           WHERE e.relates_to = ANY($1) AND e.room_id = $2 AND e.rel_type = 'm.replace' AND e.redacted_by IS NULL
           ORDER BY e.relates_to, e.topo DESC"#,
        event_ids,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let counts = sqlx::query!(
        r#"SELECT relates_to AS "relates_to!", count(*) AS "count!", bool_or(sender = $2) AS "participated!"
           FROM events WHERE relates_to = ANY($1) AND room_id = $3 AND rel_type = 'm.thread' GROUP BY relates_to"#,
        event_ids,
        viewer,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let latest = sqlx::query_as!(
        Row,
        r#"SELECT DISTINCT ON (e.relates_to)
                  e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state,
                  e.redacts, e.redacted_by, e.txn_scope, e.txn_id,
                  NULL::jsonb AS "prev_content?", NULL::text AS "prev_sender?"
           FROM events e
           WHERE e.relates_to = ANY($1) AND e.room_id = $2 AND e.rel_type = 'm.thread'
           ORDER BY e.relates_to, e.topo DESC"#,
        event_ids,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let references = sqlx::query!(
        r#"SELECT relates_to AS "relates_to!", event_id FROM events
           WHERE relates_to = ANY($1) AND room_id = $2 AND rel_type = 'm.reference' ORDER BY topo"#,
        event_ids,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let latest = parse_all(latest)?;
    let threads = counts
        .into_iter()
        .filter_map(|count| {
            let last = latest
                .iter()
                .find(|e| e.event.content_relates_to() == Some(count.relates_to.as_str()))?;
            Some((
                count.relates_to,
                count.count,
                last.clone(),
                count.participated,
            ))
        })
        .collect();
    Ok(Aggregations {
        edits: parse_all(edits)?,
        threads,
        references: references
            .into_iter()
            .map(|r| (r.relates_to, r.event_id))
            .collect(),
    })
}

impl StoredEvent {
    /// `content["m.relates_to"]["event_id"]`.
    pub fn content_relates_to(&self) -> Option<&str> {
        self.content.get("m.relates_to")?.get("event_id")?.as_str()
    }
}

/// A batch for the writer's fast path: plain messages only (no state key, no redaction).
#[derive(Debug)]
pub struct FastAppend<'a> {
    /// The highest stream position the writer believes committed.
    pub expected_max: i64,
    /// `(room_id, latest_stream the writer believes, new max_topo, new min_topo, new latest)`.
    pub rooms: Vec<(String, i64, i64, i64, i64)>,
    /// Transaction IDs to record: `(scope, txn_id, event_id)`.
    pub txns: &'a [(String, String, String)],
    /// The events, in stream order.
    pub events: &'a [StoredEvent],
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
    let rooms: Vec<String> = batch.rooms.iter().map(|r| r.0.clone()).collect();
    let expected_latest: Vec<i64> = batch.rooms.iter().map(|r| r.1).collect();
    let max_topo: Vec<i64> = batch.rooms.iter().map(|r| r.2).collect();
    let min_topo: Vec<i64> = batch.rooms.iter().map(|r| r.3).collect();
    let latest: Vec<i64> = batch.rooms.iter().map(|r| r.4).collect();
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

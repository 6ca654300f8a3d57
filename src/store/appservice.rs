//! `appservice_cursors`, `appservice_transactions`: how far each appservice's delivery has
//! got, the transaction in flight (see migrations/0005_appservice_delivery.sql), and the rooms
//! whose events wait while their class is `off` (migrations/0038_appservice_held_rooms.sql).

use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// An appservice's delivery state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub stream: i64,
    /// Room data position of the receipts delivered (MSC2409); `None` until the appservice
    /// first gets ephemeral events.
    pub room_data: Option<i64>,
    /// Relayed Synapse transactions delivered (relay mode).
    pub relay_seq: i64,
    /// Device-change position delivered (MSC3202); `None` until the appservice first opts in.
    pub devices: Option<i64>,
    pub txn_prefix: String,
    pub next_txn: i64,
}

/// A stored transaction, sent and retried as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingTxn {
    pub txn_id: String,
    pub last_stream: i64,
    /// The room data cursor once it is acknowledged (for appservices getting receipts).
    pub last_room_data: Option<i64>,
    /// The relay cursor once it is acknowledged (relay mode).
    pub last_relay_seq: Option<i64>,
    /// The device-change cursor once it is acknowledged (MSC3202 appservices).
    pub last_devices: Option<i64>,
    /// A held room's events this transaction delivers, up to this position
    /// (`appservice_held_rooms` moves past it with the acknowledgement).
    pub released: Option<(String, i64)>,
    pub body: Vec<u8>,
    pub events: i32,
    /// Seconds since it was built.
    pub age_s: f64,
}

/// The appservice's cursor, created at `start` (delivery begins with events after it) if it
/// has none yet.
pub async fn cursor(
    pool: &PgPool,
    appservice_id: &str,
    start: i64,
    new_prefix: &str,
) -> Result<Cursor, StoreError> {
    sqlx::query!(
        "INSERT INTO appservice_cursors (appservice_id, stream, txn_prefix, next_txn)
         VALUES ($1, $2, $3, 1) ON CONFLICT (appservice_id) DO NOTHING",
        appservice_id,
        start,
        new_prefix
    )
    .execute(pool)
    .await?;
    let row = sqlx::query!(
        "SELECT stream, room_data, relay_seq, devices, txn_prefix, next_txn FROM appservice_cursors
         WHERE appservice_id = $1",
        appservice_id
    )
    .fetch_one(pool)
    .await?;
    Ok(Cursor {
        stream: row.stream,
        room_data: row.room_data,
        relay_seq: row.relay_seq,
        devices: row.devices,
        txn_prefix: row.txn_prefix,
        next_txn: row.next_txn,
    })
}

/// The transaction in flight, if any.
pub async fn pending(pool: &PgPool, appservice_id: &str) -> Result<Option<PendingTxn>, StoreError> {
    let row = sqlx::query!(
        r#"SELECT txn_id, last_stream, last_room_data, last_relay_seq, last_devices, released_room,
                  released_upto, body, events,
                  EXTRACT(EPOCH FROM now() - created_at)::float8 AS "age_s!"
           FROM appservice_transactions WHERE appservice_id = $1"#,
        appservice_id
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|row| PendingTxn {
        txn_id: row.txn_id,
        last_stream: row.last_stream,
        last_room_data: row.last_room_data,
        last_relay_seq: row.last_relay_seq,
        last_devices: row.last_devices,
        released: row.released_room.zip(row.released_upto),
        body: row.body,
        events: row.events,
        age_s: row.age_s,
    }))
}

/// Stores a new transaction (taking the next transaction number) before it is sent.
pub async fn store_txn(
    pool: &PgPool,
    appservice_id: &str,
    txn: &PendingTxn,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query!(
        "INSERT INTO appservice_transactions
             (appservice_id, txn_id, last_stream, last_room_data, last_relay_seq, last_devices,
              body, events, released_room, released_upto)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        appservice_id,
        txn.txn_id,
        txn.last_stream,
        txn.last_room_data,
        txn.last_relay_seq,
        txn.last_devices,
        txn.body,
        txn.events,
        txn.released.as_ref().map(|(room, _)| room.as_str()),
        txn.released.as_ref().map(|(_, upto)| *upto)
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "UPDATE appservice_cursors SET next_txn = next_txn + 1 WHERE appservice_id = $1",
        appservice_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The appservice acknowledged its transaction: drop it and move the cursor past it.
pub async fn acknowledge(
    pool: &PgPool,
    appservice_id: &str,
    txn_id: &str,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let last = sqlx::query!(
        "DELETE FROM appservice_transactions WHERE appservice_id = $1 AND txn_id = $2
         RETURNING last_stream, last_room_data, last_relay_seq, last_devices, released_room,
                   released_upto",
        appservice_id,
        txn_id
    )
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(last) = last {
        let to = Positions {
            stream: last.last_stream,
            room_data: last.last_room_data,
            devices: last.last_devices,
        };
        advance(&mut tx, appservice_id, to).await?;
        if let (Some(room_id), Some(upto)) = (last.released_room, last.released_upto) {
            release_room(&mut tx, appservice_id, &room_id, upto).await?;
        }
        if let Some(relay_seq) = last.last_relay_seq {
            // Delivered: the bodies go, the txnIds stay (a late retry by Synapse is still
            // recognised as a repeat).
            sqlx::query!(
                "UPDATE appservice_cursors SET relay_seq = GREATEST(relay_seq, $2)
                 WHERE appservice_id = $1",
                appservice_id,
                relay_seq
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query!(
                "UPDATE relayed_transactions SET body = 'null'::jsonb
                 WHERE appservice_id = $1 AND seq <= $2 AND body <> 'null'::jsonb",
                appservice_id,
                relay_seq
            )
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Drops the transaction in flight without moving any cursor: it is built again (it held an
/// event of a room whose class was switched off).
pub async fn abandon(pool: &PgPool, appservice_id: &str, txn_id: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM appservice_transactions WHERE appservice_id = $1 AND txn_id = $2",
        appservice_id,
        txn_id
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Where an appservice's cursors move to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Positions {
    /// The event stream.
    pub stream: i64,
    /// The room data stream (receipts); `None` leaves that cursor as it is.
    pub room_data: Option<i64>,
    /// The device-change stream (MSC3202); `None` leaves that cursor as it is.
    pub devices: Option<i64>,
}

/// Moves the cursors forward over what is of no interest (never backwards).
pub async fn skip_to(pool: &PgPool, appservice_id: &str, to: Positions) -> Result<(), StoreError> {
    let mut conn = pool.acquire().await?;
    advance(&mut conn, appservice_id, to).await
}

async fn advance(
    conn: &mut PgConnection,
    appservice_id: &str,
    to: Positions,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE appservice_cursors
         SET stream = GREATEST(stream, $2),
             room_data = CASE WHEN $3::bigint IS NULL THEN room_data
                              ELSE GREATEST(COALESCE(room_data, $3), $3) END,
             devices = CASE WHEN $4::bigint IS NULL THEN devices
                            ELSE GREATEST(COALESCE(devices, $4), $4) END
         WHERE appservice_id = $1",
        appservice_id,
        to.stream,
        to.room_data,
        to.devices
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The rooms whose events the appservice's delivery holds back, with the first held position.
pub async fn held_rooms(
    pool: &PgPool,
    appservice_id: &str,
) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query!(
        "SELECT room_id, from_stream FROM appservice_held_rooms WHERE appservice_id = $1",
        appservice_id
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.room_id, row.from_stream))
    .collect())
}

/// Holds back the room's events from `from_stream` on (a room already held keeps the
/// earlier of the two positions). Written before the cursor can move past `from_stream`.
pub async fn hold_room(
    conn: &mut PgConnection,
    appservice_id: &str,
    room_id: &str,
    from_stream: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO appservice_held_rooms (appservice_id, room_id, from_stream)
         VALUES ($1, $2, $3) ON CONFLICT (appservice_id, room_id)
         DO UPDATE SET from_stream = LEAST(appservice_held_rooms.from_stream, EXCLUDED.from_stream)",
        appservice_id,
        room_id,
        from_stream
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A held room's events up to `upto` were delivered: the row moves past them, and goes once
/// nothing of the room below the cursor is left (the cursor's later events of the room are
/// the main scan's again).
pub async fn release_room(
    conn: &mut PgConnection,
    appservice_id: &str,
    room_id: &str,
    upto: i64,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE appservice_held_rooms SET from_stream = GREATEST(from_stream, $3::bigint + 1)
         WHERE appservice_id = $1 AND room_id = $2",
        appservice_id,
        room_id,
        upto
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM appservice_held_rooms h USING appservice_cursors c
         WHERE h.appservice_id = $1 AND h.room_id = $2 AND c.appservice_id = h.appservice_id
           AND h.from_stream > c.stream",
        appservice_id,
        room_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

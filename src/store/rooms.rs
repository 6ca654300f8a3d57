//! `rooms`, `transaction_ids`, `room_aliases`: room rows and the writer's bookkeeping.

use std::collections::HashMap;

use sqlx::PgConnection;

use super::StoreError;

/// A room row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomRow {
    pub room_id: String,
    pub class: String,
    pub room_version: String,
    pub creator: String,
    pub appservice_id: Option<String>,
    pub max_topo: i64,
    pub min_topo: i64,
    pub latest_stream: i64,
}

/// Serialises writers across processes for the rest of the transaction (see
/// `rooms::writer`): stream positions are allocated and committed while it is held.
pub async fn lock_writer(conn: &mut PgConnection) -> Result<(), StoreError> {
    // 0x68756e67 = "hung": one fixed key for the whole database.
    sqlx::query!("SELECT pg_advisory_xact_lock(1752526439)")
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn get(conn: &mut PgConnection, room_id: &str) -> Result<Option<RoomRow>, StoreError> {
    Ok(sqlx::query_as!(
        RoomRow,
        "SELECT room_id, class, room_version, creator, appservice_id, max_topo, min_topo, latest_stream
         FROM rooms WHERE room_id = $1",
        room_id
    )
    .fetch_optional(conn)
    .await?)
}

/// `latest_stream` of each existing room among `room_ids`.
pub async fn latest_streams(
    conn: &mut PgConnection,
    room_ids: &[String],
) -> Result<HashMap<String, i64>, StoreError> {
    let rows = sqlx::query!(
        "SELECT room_id, latest_stream FROM rooms WHERE room_id = ANY($1)",
        room_ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.room_id, row.latest_stream))
        .collect())
}

pub async fn insert(conn: &mut PgConnection, room: &RoomRow) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO rooms (room_id, class, room_version, creator, appservice_id, max_topo, min_topo, latest_stream)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        room.room_id,
        room.class,
        room.room_version,
        room.creator,
        room.appservice_id,
        room.max_topo,
        room.min_topo,
        room.latest_stream,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Records rooms' new counters after a batch, in one statement: `(room_id, max_topo,
/// min_topo, latest_stream)` per room.
pub async fn update_positions(
    conn: &mut PgConnection,
    rooms: &[(String, i64, i64, i64)],
) -> Result<(), StoreError> {
    if rooms.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = rooms.iter().map(|r| r.0.clone()).collect();
    let max_topo: Vec<i64> = rooms.iter().map(|r| r.1).collect();
    let min_topo: Vec<i64> = rooms.iter().map(|r| r.2).collect();
    let latest: Vec<i64> = rooms.iter().map(|r| r.3).collect();
    sqlx::query!(
        "UPDATE rooms SET max_topo = u.max_topo, min_topo = u.min_topo, latest_stream = u.latest_stream
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[])
              AS u(room_id, max_topo, min_topo, latest_stream)
         WHERE rooms.room_id = u.room_id",
        &ids,
        &max_topo,
        &min_topo,
        &latest,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The event already sent under each `(scope, txn_id)`, for the given keys.
pub async fn transaction_events(
    conn: &mut PgConnection,
    scopes: &[String],
    txn_ids: &[String],
) -> Result<HashMap<(String, String), String>, StoreError> {
    let rows = sqlx::query!(
        "SELECT t.scope, t.txn_id, t.event_id FROM transaction_ids t
         JOIN UNNEST($1::text[], $2::text[]) AS k(scope, txn_id) ON k.scope = t.scope AND k.txn_id = t.txn_id",
        scopes,
        txn_ids,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| ((row.scope, row.txn_id), row.event_id))
        .collect())
}

pub async fn insert_transactions(
    conn: &mut PgConnection,
    scopes: &[String],
    txn_ids: &[String],
    event_ids: &[String],
) -> Result<(), StoreError> {
    if scopes.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        "INSERT INTO transaction_ids (scope, txn_id, event_id)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[])",
        scopes,
        txn_ids,
        event_ids,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The local room an alias points to.
pub async fn alias_room(
    conn: &mut PgConnection,
    alias: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT room_id FROM room_aliases WHERE alias = $1", alias)
            .fetch_optional(conn)
            .await?,
    )
}

pub async fn insert_alias(
    conn: &mut PgConnection,
    alias: &str,
    room_id: &str,
    creator: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)",
        alias,
        room_id,
        creator
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Aliases of a room.
pub async fn aliases_of(conn: &mut PgConnection, room_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias",
        room_id
    )
    .fetch_all(conn)
    .await?)
}

/// Rooms where the user's membership is `membership`.
pub async fn rooms_with_membership(
    conn: &mut PgConnection,
    user_id: &str,
    membership: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT room_id FROM memberships WHERE user_id = $1 AND membership = $2 ORDER BY room_id",
        user_id,
        membership
    )
    .fetch_all(conn)
    .await?)
}

/// The user's current membership in a room.
pub async fn membership(
    conn: &mut PgConnection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<(String, i64)>, StoreError> {
    Ok(sqlx::query!(
        "SELECT membership, stream FROM memberships WHERE room_id = $1 AND user_id = $2",
        room_id,
        user_id
    )
    .fetch_optional(conn)
    .await?
    .map(|row| (row.membership, row.stream)))
}

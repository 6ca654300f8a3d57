//! `dynamic_appservices`, `umbrella_members`: bridges registered at run time behind the
//! umbrella registration, and which of the umbrella's users are joined to which Synapse room
//! (see migrations/0027_dynamic_appservices.sql). Tokens: the as_token only as its SHA-256.

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// A stored dynamic appservice.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBridge {
    pub id: String,
    /// SHA-256 of the as_token.
    pub as_token_hash: Vec<u8>,
    pub hs_token: String,
    /// The registration without tokens, in the shape of a registration file.
    pub registration: Value,
}

/// Every dynamic appservice, by id.
pub async fn all(pool: &PgPool) -> Result<Vec<StoredBridge>, StoreError> {
    Ok(sqlx::query!(
        "SELECT id, as_token_hash, hs_token, registration FROM dynamic_appservices ORDER BY id"
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| StoredBridge {
        id: row.id,
        as_token_hash: row.as_token_hash,
        hs_token: row.hs_token,
        registration: row.registration,
    })
    .collect())
}

/// Inserts or replaces a dynamic appservice. Returns whether it is new. A token hash another
/// bridge holds is refused by the unique index (`Ok(None)`).
pub async fn upsert(pool: &PgPool, bridge: &StoredBridge) -> Result<Option<bool>, StoreError> {
    let outcome = sqlx::query_scalar!(
        r#"INSERT INTO dynamic_appservices (id, as_token_hash, hs_token, registration)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (id) DO UPDATE SET as_token_hash = EXCLUDED.as_token_hash,
               hs_token = EXCLUDED.hs_token, registration = EXCLUDED.registration,
               updated_at = now()
           RETURNING (xmax = 0) AS "created!""#,
        bridge.id,
        bridge.as_token_hash,
        bridge.hs_token,
        bridge.registration
    )
    .fetch_one(pool)
    .await;
    match outcome {
        Ok(created) => Ok(Some(created)),
        Err(sqlx::Error::Database(err))
            if err.constraint() == Some("dynamic_appservices_as_token_hash_key") =>
        {
            Ok(None)
        }
        Err(err) => Err(err.into()),
    }
}

/// Removes a dynamic appservice with its delivery state (cursor, transaction in flight, the
/// Synapse transactions split off for it), so an id registered again starts afresh. Returns
/// whether it existed.
pub async fn remove(pool: &PgPool, id: &str) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let removed = sqlx::query!("DELETE FROM dynamic_appservices WHERE id = $1", id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        > 0;
    sqlx::query!(
        "DELETE FROM appservice_transactions WHERE appservice_id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM appservice_cursors WHERE appservice_id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query!(
        "DELETE FROM relayed_transactions WHERE appservice_id = $1",
        id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(removed)
}

/// Takes the umbrella's lock for the rest of the transaction: Synapse's transactions to the
/// umbrella are split one at a time, in the order they arrive.
pub async fn lock(conn: &mut PgConnection, umbrella_id: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtext('hungryserv umbrella ' || $1::text)) AS locked",
        umbrella_id
    )
    .fetch_one(conn)
    .await?;
    Ok(())
}

/// Records one of Synapse's transaction IDs for the umbrella; `false` when it was seen before
/// (Synapse retrying after losing our answer: nothing is split again).
pub async fn first_sight(
    conn: &mut PgConnection,
    umbrella_id: &str,
    synapse_txn_id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query!(
        "INSERT INTO relayed_transactions (appservice_id, synapse_txn_id, body)
         VALUES ($1, $2, 'null'::jsonb) ON CONFLICT (appservice_id, synapse_txn_id) DO NOTHING",
        umbrella_id,
        synapse_txn_id
    )
    .execute(conn)
    .await?
    .rows_affected()
        > 0)
}

/// The joined umbrella users of these rooms, as `(room_id, user_id)`.
pub async fn members(
    conn: &mut PgConnection,
    room_ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query!(
        "SELECT room_id, user_id FROM umbrella_members WHERE room_id = ANY($1)",
        room_ids
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|row| (row.room_id, row.user_id))
    .collect())
}

/// Applies membership changes in order: `(room_id, user_id, joined)`.
pub async fn set_members(
    conn: &mut PgConnection,
    changes: &[(String, String, bool)],
) -> Result<(), StoreError> {
    for (room_id, user_id, joined) in changes {
        if *joined {
            sqlx::query!(
                "INSERT INTO umbrella_members (room_id, user_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                room_id,
                user_id
            )
            .execute(&mut *conn)
            .await?;
        } else {
            sqlx::query!(
                "DELETE FROM umbrella_members WHERE room_id = $1 AND user_id = $2",
                room_id,
                user_id
            )
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

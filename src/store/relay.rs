//! `relayed_transactions`: Synapse's transactions for appservices in relay mode, kept until the
//! bridge has them (see migrations/0012_appservice_relay.sql).

use serde_json::Value;
use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// Stores one of Synapse's transactions for an appservice, durably, before Synapse is
/// answered. A txnId Synapse sent before is not stored again.
pub async fn store(
    pool: &PgPool,
    appservice_id: &str,
    synapse_txn_id: &str,
    body: &Value,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    // Seqs of one appservice commit in order (see the migration).
    sqlx::query!(
        "SELECT pg_advisory_xact_lock(hashtext('hungryserv relay ' || $1::text)) AS locked",
        appservice_id
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO relayed_transactions (appservice_id, synapse_txn_id, body)
         VALUES ($1, $2, $3) ON CONFLICT (appservice_id, synapse_txn_id) DO NOTHING",
        appservice_id,
        synapse_txn_id,
        body
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The appservice's relayed transactions after `seq`, oldest first, at most `limit`.
pub async fn after(
    conn: &mut PgConnection,
    appservice_id: &str,
    seq: i64,
    limit: i64,
) -> Result<Vec<(i64, Value)>, StoreError> {
    Ok(sqlx::query!(
        "SELECT seq, body FROM relayed_transactions
         WHERE appservice_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        appservice_id,
        seq,
        limit
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|row| (row.seq, row.body))
    .collect())
}

/// Whether the appservice has relayed transactions after `seq`.
pub async fn any_after(pool: &PgPool, appservice_id: &str, seq: i64) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM relayed_transactions
                          WHERE appservice_id = $1 AND seq > $2) AS "any!""#,
        appservice_id,
        seq
    )
    .fetch_one(pool)
    .await?)
}

/// Stores a transaction for an appservice inside the caller's transaction (the umbrella's
/// split, under its lock, so seqs of one appservice commit in order). A txnId stored before
/// is not stored again.
pub async fn insert(
    conn: &mut PgConnection,
    appservice_id: &str,
    synapse_txn_id: &str,
    body: &Value,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO relayed_transactions (appservice_id, synapse_txn_id, body)
         VALUES ($1, $2, $3) ON CONFLICT (appservice_id, synapse_txn_id) DO NOTHING",
        appservice_id,
        synapse_txn_id,
        body
    )
    .execute(conn)
    .await?;
    Ok(())
}

//! Retention of transaction IDs. A send's `(scope, txn id)` makes a retry of it answer the
//! first event instead of writing a second (see the writer). Clients and bridges retry within
//! seconds or minutes, so, like Synapse (which deletes its mappings once they are a day old,
//! every 5 minutes), the IDs are kept for a day ([`KEEP`]); a send repeated later than that is
//! a new event. Without this, `transaction_ids` grew by a row per send forever.
//!
//! The task runs a minute after start, then every 5 minutes, deleting in bounded batches so
//! that no statement holds many row locks; a failure is logged and retried at the next round.

use std::time::Duration;

use sqlx::PgPool;

use crate::store;

/// A transaction ID is kept this long.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// Rows deleted by one statement.
const BATCH: i64 = 10_000;
/// Time between rounds.
const EVERY: Duration = Duration::from_secs(300);
/// Time before the first round.
const FIRST: Duration = Duration::from_secs(60);

/// Deletes the transaction IDs older than `keep`, `batch` rows per statement; returns how
/// many went.
pub async fn prune(db: &PgPool, keep: Duration, batch: i64) -> Result<u64, store::StoreError> {
    store::delete_in_batches(db, batch, |mut conn, limit| async move {
        store::rooms::prune_transaction_ids(&mut conn, keep.as_secs_f64(), limit).await
    })
    .await
}

/// Prunes every [`EVERY`], until the process ends.
pub async fn run(db: PgPool) {
    tokio::time::sleep(FIRST).await;
    loop {
        match prune(&db, KEEP, BATCH).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned day-old transaction IDs"),
            Err(err) => tracing::warn!(error = %err, "pruning transaction IDs failed"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

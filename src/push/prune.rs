//! Pruning of read notifications. Synapse deletes a user's plain (not highlighted) push
//! actions as soon as their read receipt covers them and keeps highlights; without the same,
//! `push_actions` would grow by a row per notifying event and recipient forever. Here a read
//! plain notification goes once it is a day old ([`KEEP_READ`]), so `/notifications` still lists
//! it for a while; unread ones stay, since they are the unread counts, and so do highlights.
//!
//! The task runs a minute after start, then every hour, deleting in bounded batches so that no
//! statement holds many row locks; a failure is logged and retried at the next round.

use std::time::Duration;

use sqlx::PgPool;

use crate::rooms::service::now_ms;
use crate::store;

/// A read plain notification is kept this long.
pub const KEEP_READ: Duration = Duration::from_secs(24 * 3600);
/// Rows deleted by one statement.
const BATCH: i64 = 10_000;
/// Time between rounds.
const EVERY: Duration = Duration::from_secs(3600);
/// Time before the first round.
const FIRST: Duration = Duration::from_secs(60);

/// Deletes what is prunable as of `now_ms`, batch after batch; returns how many rows went.
pub async fn prune(db: &PgPool, now_ms: i64) -> Result<u64, store::StoreError> {
    let before = now_ms.saturating_sub(i64::try_from(KEEP_READ.as_millis()).unwrap_or(i64::MAX));
    store::delete_in_batches(db, BATCH, |mut conn, limit| async move {
        store::push::prune_read(&mut conn, before, limit).await
    })
    .await
}

/// Prunes every [`EVERY`], until the process ends.
pub async fn run(db: PgPool) {
    tokio::time::sleep(FIRST).await;
    loop {
        match prune(&db, now_ms()).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "pruned read notifications"),
            Err(err) => tracing::warn!(error = %err, "pruning read notifications failed"),
        }
        tokio::time::sleep(EVERY).await;
    }
}

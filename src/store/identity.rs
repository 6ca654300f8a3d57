//! `server_identity`: the server name a database was created for (see migration 0001).

use sqlx::PgExecutor;

use super::StoreError;

/// Records `server_name` on first use; afterwards fails unless it is the recorded one.
pub async fn claim<'e>(
    executor: impl PgExecutor<'e> + Copy,
    server_name: &str,
) -> Result<(), StoreError> {
    // Insert-if-absent then read back, so two processes starting at once agree on one name.
    sqlx::query!(
        "INSERT INTO server_identity (server_name) VALUES ($1) ON CONFLICT (singleton) DO NOTHING",
        server_name
    )
    .execute(executor)
    .await?;
    let stored = sqlx::query_scalar!("SELECT server_name FROM server_identity")
        .fetch_one(executor)
        .await?;
    if stored == server_name {
        Ok(())
    } else {
        Err(StoreError::ServerNameMismatch {
            stored,
            configured: server_name.to_owned(),
        })
    }
}

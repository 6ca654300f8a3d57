//! `ignored_users` (migration 0020): the latest copy of each user's `m.ignored_user_list`.

use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use super::StoreError;

/// Keeps the latest copy of a user's ignore list.
pub async fn save(
    conn: &mut PgConnection,
    user_id: &str,
    ignored: &[String],
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO ignored_users (user_id, ignored) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET ignored = EXCLUDED.ignored, fetched_at = now()",
        user_id,
        ignored
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The users `user_id` ignores (none when we never learned the list).
pub async fn ignored_by(
    conn: &mut PgConnection,
    user_id: &str,
) -> Result<HashSet<String>, StoreError> {
    let row = sqlx::query_scalar!(
        "SELECT ignored FROM ignored_users WHERE user_id = $1",
        user_id
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.unwrap_or_default().into_iter().collect())
}

/// The ignore lists of some users (only those that ignore someone).
pub async fn ignored_by_each(
    conn: &mut PgConnection,
    user_ids: &[String],
) -> Result<HashMap<String, HashSet<String>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT user_id, ignored FROM ignored_users
         WHERE user_id = ANY($1) AND cardinality(ignored) > 0",
        user_ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.user_id, r.ignored.into_iter().collect()))
        .collect())
}

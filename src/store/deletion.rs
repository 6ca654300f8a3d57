//! `room_deletions`, `blocked_rooms` and the purge of a deleted room's rows (migration 0007).

use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// One deletion, as `delete_status` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletionRow {
    pub delete_id: String,
    pub room_id: String,
    pub requested_by: String,
    /// `scheduled`, `active`, `complete` or `failed`.
    pub status: String,
    pub purge: bool,
    pub block: bool,
    pub kicked_users: Vec<String>,
    pub local_aliases: Vec<String>,
    pub purged_events: i64,
    pub error: Option<String>,
}

/// What marking a room deleted asks for.
pub struct MarkDeleted<'a> {
    pub room_id: &'a str,
    pub delete_id: &'a str,
    pub requested_by: &'a str,
    pub purge: bool,
    pub block: bool,
}

/// Marks a room deleted, drops its aliases, records the deletion and the block — in one
/// statement, so the room is gone (or not) as a whole. Returns the aliases dropped, or
/// `None` when there is no such room or it was deleted already.
pub async fn mark_deleted(
    conn: &mut PgConnection,
    mark: &MarkDeleted<'_>,
) -> Result<Option<Vec<String>>, StoreError> {
    let row = sqlx::query!(
        r#"WITH r AS (
               UPDATE rooms SET deleted_at = now()
               WHERE room_id = $1 AND deleted_at IS NULL RETURNING room_id),
           a AS (
               DELETE FROM room_aliases WHERE room_id IN (SELECT room_id FROM r) RETURNING alias),
           d AS (
               INSERT INTO room_deletions (delete_id, room_id, requested_by, status, purge, block, local_aliases)
               SELECT $2, r.room_id, $3, 'scheduled', $4, $5, ARRAY(SELECT alias FROM a ORDER BY alias)
               FROM r RETURNING local_aliases),
           b AS (
               INSERT INTO blocked_rooms (room_id, blocked_by)
               SELECT room_id, $3 FROM r WHERE $5
               ON CONFLICT (room_id) DO NOTHING)
           SELECT (SELECT local_aliases FROM d) AS aliases"#,
        mark.room_id,
        mark.delete_id,
        mark.requested_by,
        mark.purge,
        mark.block,
    )
    .fetch_one(conn)
    .await?;
    Ok(row.aliases)
}

/// Rooms that are deleted (purged or not) or blocked, with whether each is blocked: what
/// requests must no longer reach.
pub async fn gone_rooms(pool: &PgPool) -> Result<Vec<(String, bool)>, StoreError> {
    Ok(sqlx::query!(
        r#"SELECT room_id AS "room_id!", bool_or(blocked) AS "blocked!" FROM (
               SELECT room_id, false AS blocked FROM room_deletions
               UNION ALL SELECT room_id, true FROM blocked_rooms) g
           GROUP BY room_id"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.room_id, row.blocked))
    .collect())
}

/// Deletions to (re)start after a restart: unfinished or failed ones, and finished purges that had to
/// leave the database's newest event behind (see migration 0007) — oldest first.
pub async fn unfinished(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT d.delete_id FROM room_deletions d
           WHERE d.status IN ('scheduled', 'active', 'failed')
              OR (d.purge AND d.status = 'complete'
                  AND EXISTS (SELECT 1 FROM rooms r WHERE r.room_id = d.room_id))
           ORDER BY d.created_at"#
    )
    .fetch_all(pool)
    .await?)
}

pub async fn get(pool: &PgPool, delete_id: &str) -> Result<Option<DeletionRow>, StoreError> {
    Ok(sqlx::query_as!(
        DeletionRow,
        "SELECT delete_id, room_id, requested_by, status, purge, block, kicked_users,
                local_aliases, purged_events, error
         FROM room_deletions WHERE delete_id = $1",
        delete_id
    )
    .fetch_optional(pool)
    .await?)
}

/// Every deletion of a room, oldest first.
pub async fn of_room(pool: &PgPool, room_id: &str) -> Result<Vec<DeletionRow>, StoreError> {
    Ok(sqlx::query_as!(
        DeletionRow,
        "SELECT delete_id, room_id, requested_by, status, purge, block, kicked_users,
                local_aliases, purged_events, error
         FROM room_deletions WHERE room_id = $1 ORDER BY created_at",
        room_id
    )
    .fetch_all(pool)
    .await?)
}

pub async fn set_status(
    pool: &PgPool,
    delete_id: &str,
    status: &str,
    error: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE room_deletions SET status = $2, error = $3, updated_at = now() WHERE delete_id = $1",
        delete_id,
        status,
        error
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Records the members made to leave (kept across resumes: a resumed deletion adds to them).
pub async fn add_kicked(
    pool: &PgPool,
    delete_id: &str,
    users: &[String],
) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE room_deletions SET kicked_users = kicked_users || $2::TEXT[], updated_at = now()
         WHERE delete_id = $1",
        delete_id,
        users
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// The users who are joined to or invited into a room.
pub async fn present_members(
    pool: &PgPool,
    room_id: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query!(
        "SELECT user_id, membership FROM memberships
         WHERE room_id = $1 AND membership IN ('join', 'invite') ORDER BY stream",
        room_id
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.user_id, row.membership))
    .collect())
}

/// Marks the room as being purged: from the commit on, the writer refuses its events
/// (migration 0014), so nothing is written behind the purge. Waits for a write to the room
/// that is under way; its events are then the purge's to delete.
pub async fn seal(conn: &mut PgConnection, room_id: &str) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE rooms SET purging = true WHERE room_id = $1",
        room_id
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether the room's purge has begun ([`seal`]): the writer refuses its events from then on.
pub async fn sealed(pool: &PgPool, room_id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT COALESCE((SELECT purging FROM rooms WHERE room_id = $1), true) AS "sealed!""#,
        room_id
    )
    .fetch_one(pool)
    .await?)
}

/// Before the last events go: the rows that point at them (current state). Small.
pub async fn purge_state(conn: &mut PgConnection, room_id: &str) -> Result<(), StoreError> {
    sqlx::query!("DELETE FROM current_state WHERE room_id = $1", room_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Deletes up to `limit` of the room's events, lowest topological position first (the index
/// over all of a room's events), with their transaction IDs, never the database's newest
/// event (migration 0007), and with `keep_state` no state event (the room's state history,
/// with the members' leaves, is what a late sync reads).
/// Returns how many were deleted; 0 when nothing deletable is left. Counted into the
/// deletion's `purged_events` in the same statement.
pub async fn purge_events(
    conn: &mut PgConnection,
    room_id: &str,
    delete_id: &str,
    limit: i64,
    keep_state: bool,
) -> Result<i64, StoreError> {
    let row = sqlx::query!(
        r#"WITH gone AS (
               DELETE FROM events WHERE stream IN (
                   SELECT e.stream FROM events e
                   WHERE e.room_id = $1 AND e.stream < (SELECT max(stream) FROM events)
                     AND NOT ($4 AND e.state_key IS NOT NULL)
                   ORDER BY e.topo LIMIT $3)
               RETURNING txn_scope, txn_id),
           t AS (
               DELETE FROM transaction_ids x USING gone g
               WHERE x.scope = g.txn_scope AND x.txn_id = g.txn_id),
           n AS (SELECT count(*) AS n FROM gone),
           u AS (
               UPDATE room_deletions SET purged_events = purged_events + (SELECT n FROM n),
                      updated_at = now()
               WHERE delete_id = $2)
           SELECT n AS "n!" FROM n"#,
        room_id,
        delete_id,
        limit,
        keep_state,
    )
    .fetch_one(conn)
    .await?;
    Ok(row.n)
}

/// Last purge step: memberships (and their forgets), receipts, room account data, notifications,
/// and the room row once no event of it is left. Returns whether the room row is gone (now or before).
pub async fn purge_room(conn: &mut PgConnection, room_id: &str) -> Result<bool, StoreError> {
    sqlx::query!("DELETE FROM memberships WHERE room_id = $1", room_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM forgotten_rooms WHERE room_id = $1", room_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM receipts WHERE room_id = $1", room_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM room_account_data WHERE room_id = $1", room_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query!("DELETE FROM push_actions WHERE room_id = $1", room_id)
        .execute(&mut *conn)
        .await?;
    // The outer NOT EXISTS sees the statement's snapshot (before `d`), hence the OR.
    Ok(sqlx::query_scalar!(
        r#"WITH d AS (
               DELETE FROM rooms WHERE room_id = $1
               AND NOT EXISTS (SELECT 1 FROM events WHERE room_id = $1) RETURNING 1)
           SELECT (EXISTS (SELECT 1 FROM d)
                   OR NOT EXISTS (SELECT 1 FROM rooms WHERE room_id = $1)) AS "gone!""#,
        room_id
    )
    .fetch_one(conn)
    .await?)
}

/// How many rows of a room are left, over the tables a room has rows in (for tests and the
/// benchmark: 0 once purged).
pub async fn rows_left(pool: &PgPool, room_id: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT (SELECT count(*) FROM events WHERE room_id = $1)
                + (SELECT count(*) FROM current_state WHERE room_id = $1)
                + (SELECT count(*) FROM memberships WHERE room_id = $1)
                + (SELECT count(*) FROM room_aliases WHERE room_id = $1)
                + (SELECT count(*) FROM receipts WHERE room_id = $1)
                + (SELECT count(*) FROM room_account_data WHERE room_id = $1)
                + (SELECT count(*) FROM forgotten_rooms WHERE room_id = $1)
                + (SELECT count(*) FROM push_actions WHERE room_id = $1)
                + (SELECT count(*) FROM rooms WHERE room_id = $1) AS "n!""#,
        room_id
    )
    .fetch_one(pool)
    .await?)
}

/// Everyone with a membership in a room: `(user, membership)`.
pub async fn all_members(
    conn: &mut PgConnection,
    room_id: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query!(
        "SELECT user_id, membership FROM memberships WHERE room_id = $1 ORDER BY stream",
        room_id
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|row| (row.user_id, row.membership))
    .collect())
}

/// The rooms an appservice's token created that are not deleted, oldest first.
pub async fn rooms_of_appservice(
    pool: &PgPool,
    appservice_id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT room_id FROM rooms WHERE appservice_id = $1 AND deleted_at IS NULL
         ORDER BY created_at",
        appservice_id
    )
    .fetch_all(pool)
    .await?)
}

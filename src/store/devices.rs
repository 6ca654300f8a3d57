//! The device-change stream (migration 0021) and the local-room co-membership it is read
//! through: who shares a joined local room with whom, and the member events that start or end
//! such sharing.

use sqlx::{PgConnection, PgPool};

use super::StoreError;

/// Appends a change of `user_id`'s devices at the next position and returns it. The position
/// row stays locked until commit, so positions commit in order (migration 0021).
pub async fn record_change(pool: &PgPool, user_id: &str) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await?;
    let position = sqlx::query_scalar!(
        "UPDATE device_change_position SET position = position + 1 RETURNING position"
    )
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query!(
        "INSERT INTO device_changes (position, user_id) VALUES ($1, $2)",
        position,
        user_id
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(position)
}

/// The highest committed position of the device-change stream.
pub async fn current_position(conn: &mut PgConnection) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT position FROM device_change_position")
            .fetch_one(conn)
            .await?,
    )
}

/// The users joined to a local room that `user_id` is joined to, `user_id` excepted.
pub async fn co_members(conn: &mut PgConnection, user_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT DISTINCT other.user_id
           FROM memberships mine
           JOIN memberships other ON other.room_id = mine.room_id
           WHERE mine.user_id = $1 AND mine.membership = 'join'
             AND other.membership = 'join' AND other.user_id <> $1"#,
        user_id
    )
    .fetch_all(conn)
    .await?)
}

/// The co-members of `user_id` (as [`co_members`]) whose devices changed at a position in
/// `(after, upto]`.
pub async fn co_members_changed(
    conn: &mut PgConnection,
    user_id: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT DISTINCT change.user_id
           FROM device_changes change
           WHERE change.position > $2 AND change.position <= $3
             AND change.user_id IN (
                 SELECT other.user_id
                 FROM memberships mine
                 JOIN memberships other ON other.room_id = mine.room_id
                 WHERE mine.user_id = $1 AND mine.membership = 'join'
                   AND other.membership = 'join' AND other.user_id <> $1)"#,
        user_id,
        after,
        upto
    )
    .fetch_all(conn)
    .await?)
}

/// A member event in one of a user's local rooms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberChange {
    /// The room.
    pub room_id: String,
    /// Whom the event is about (its state key).
    pub user_id: String,
    /// The membership it sets (`leave` when unreadable).
    pub membership: String,
}

/// The member events at event stream positions `(after, upto]` in the local rooms where
/// `user_id` has a membership now, oldest first.
pub async fn member_changes(
    conn: &mut PgConnection,
    user_id: &str,
    after: i64,
    upto: i64,
) -> Result<Vec<MemberChange>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT room_id, state_key AS "user_id!", content->>'membership' AS "membership?"
           FROM events
           WHERE type = 'm.room.member' AND state_key IS NOT NULL
             AND stream > $2 AND stream <= $3
             AND room_id IN (SELECT room_id FROM memberships WHERE user_id = $1)
           ORDER BY stream"#,
        user_id,
        after,
        upto
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| MemberChange {
            room_id: row.room_id,
            user_id: row.user_id,
            membership: row.membership.unwrap_or_else(|| "leave".to_owned()),
        })
        .collect())
}

/// The users joined to each of `room_ids` now: `(room, user)` pairs.
pub async fn joined_members_of(
    conn: &mut PgConnection,
    room_ids: &[String],
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = sqlx::query!(
        "SELECT room_id, user_id FROM memberships WHERE room_id = ANY($1) AND membership = 'join'",
        room_ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.room_id, r.user_id)).collect())
}

/// One entry of the device-change stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub position: i64,
    pub user_id: String,
}

/// The changes in `(after, upto]`, oldest first, at most `limit`.
pub async fn changes_between(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
    limit: i64,
) -> Result<Vec<Change>, StoreError> {
    let rows = sqlx::query!(
        "SELECT position, user_id FROM device_changes
         WHERE position > $1 AND position <= $2
         ORDER BY position, user_id LIMIT $3",
        after,
        upto,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Change {
            position: r.position,
            user_id: r.user_id,
        })
        .collect())
}

/// The local rooms `user_id` is joined to.
pub async fn joined_rooms(
    conn: &mut PgConnection,
    user_id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT room_id FROM memberships WHERE user_id = $1 AND membership = 'join'",
        user_id
    )
    .fetch_all(conn)
    .await?)
}

/// A user who shares a joined local room with the viewer, as their member event there shows
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoMemberProfile {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
}

/// The users joined to a local room `user_id` is joined to, with the profile of their latest
/// join among those rooms.
pub async fn co_member_profiles(
    conn: &mut PgConnection,
    user_id: &str,
) -> Result<Vec<CoMemberProfile>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT DISTINCT ON (other.user_id)
                  other.user_id AS "user_id!",
                  e.content->>'displayname' AS "displayname?",
                  e.content->>'avatar_url' AS "avatar_url?"
           FROM memberships mine
           JOIN memberships other ON other.room_id = mine.room_id
           JOIN events e ON e.room_id = other.room_id AND e.stream = other.stream
           WHERE mine.user_id = $1 AND mine.membership = 'join'
             AND other.membership = 'join' AND other.user_id <> $1
           ORDER BY other.user_id, other.stream DESC"#,
        user_id
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| CoMemberProfile {
            user_id: r.user_id,
            displayname: r.displayname,
            avatar_url: r.avatar_url,
        })
        .collect())
}

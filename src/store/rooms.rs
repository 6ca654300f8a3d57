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

/// What a writer batch starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchStart {
    /// The highest stream position committed.
    pub max_stream: i64,
    /// `latest_stream` of each existing room among those asked for.
    pub latest: HashMap<String, i64>,
    /// `(scope, txn_id) → event_id` for the transaction IDs asked for that were used before.
    pub used_txns: HashMap<(String, String), String>,
}

/// Starts a writer batch in one round trip (migration 0003): takes the transaction-level
/// writer lock, which serialises writers across processes until commit, then reads the
/// highest stream position, the rooms' `latest_stream` and the transaction IDs already used.
pub async fn begin_batch(
    conn: &mut PgConnection,
    room_ids: &[String],
    scopes: &[String],
    txn_ids: &[String],
) -> Result<BatchStart, StoreError> {
    let row = sqlx::query!(
        r#"SELECT max_stream AS "max_stream!", room_ids AS "room_ids!", latest AS "latest!",
                  used_scopes AS "used_scopes!", used_txn_ids AS "used_txn_ids!", used_events AS "used_events!"
           FROM writer_begin($1, $2, $3)"#,
        room_ids,
        scopes,
        txn_ids,
    )
    .fetch_one(conn)
    .await?;
    Ok(BatchStart {
        max_stream: row.max_stream,
        latest: row.room_ids.into_iter().zip(row.latest).collect(),
        used_txns: row
            .used_scopes
            .into_iter()
            .zip(row.used_txn_ids)
            .zip(row.used_events)
            .collect(),
    })
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

/// Whether the room exists and is not deleted.
pub async fn is_live(conn: &mut PgConnection, room_id: &str) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT FROM rooms WHERE room_id = $1 AND deleted_at IS NULL) AS "live!""#,
        room_id
    )
    .fetch_one(conn)
    .await?)
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

/// Deletes up to `limit` transaction IDs older than `keep_seconds`, oldest first. Returns how
/// many went.
pub async fn prune_transaction_ids(
    conn: &mut PgConnection,
    keep_seconds: f64,
    limit: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        "DELETE FROM transaction_ids t USING (
             SELECT scope, txn_id FROM transaction_ids
             WHERE created_at < now() - make_interval(secs => $1)
             ORDER BY created_at
             LIMIT $2) old
         WHERE t.scope = old.scope AND t.txn_id = old.txn_id",
        keep_seconds,
        limit,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Takes the writer lock of migration 0003 (`writer_begin`) for the rest of the transaction:
/// for writes outside the writer that must not fall between a writer batch's checks and its
/// commit.
pub async fn lock_writer(conn: &mut PgConnection) -> Result<(), StoreError> {
    // 0x68756e67 = "hung", writer_begin's key.
    sqlx::query!("SELECT pg_advisory_xact_lock(1752526439)")
        .execute(conn)
        .await?;
    Ok(())
}

/// Adds a local alias unless it exists; returns whether it was added.
pub async fn try_insert_alias(
    conn: &mut PgConnection,
    alias: &str,
    room_id: &str,
    creator: &str,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query!(
        "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT (alias) DO NOTHING",
        alias,
        room_id,
        creator
    )
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() > 0)
}

/// Removes a local alias; returns whether it existed.
pub async fn delete_alias(conn: &mut PgConnection, alias: &str) -> Result<bool, StoreError> {
    let deleted = sqlx::query!("DELETE FROM room_aliases WHERE alias = $1", alias)
        .execute(conn)
        .await?;
    Ok(deleted.rows_affected() > 0)
}

/// Who created a local alias.
pub async fn alias_creator(
    conn: &mut PgConnection,
    alias: &str,
) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar!("SELECT creator FROM room_aliases WHERE alias = $1", alias)
            .fetch_optional(conn)
            .await?,
    )
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

/// The users with `membership` in a room now.
pub async fn members_with(
    conn: &mut PgConnection,
    room_id: &str,
    membership: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT user_id FROM memberships WHERE room_id = $1 AND membership = $2",
        room_id,
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

/// Forgets the room for the user if they left it or were banned (migration 0010): covers
/// their current member event. Returns whether it did.
pub async fn forget(
    conn: &mut PgConnection,
    room_id: &str,
    user_id: &str,
) -> Result<bool, StoreError> {
    let done = sqlx::query!(
        "INSERT INTO forgotten_rooms (room_id, user_id, member_stream)
         SELECT room_id, user_id, stream FROM memberships
         WHERE room_id = $1 AND user_id = $2 AND membership IN ('leave', 'ban')
         ON CONFLICT (room_id, user_id) DO UPDATE SET member_stream = EXCLUDED.member_stream",
        room_id,
        user_id
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The position of the member event the user's forget covers, if they forgot the room (it
/// only counts while that is still their latest member event).
pub async fn forgotten_at(
    conn: &mut PgConnection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT member_stream FROM forgotten_rooms WHERE room_id = $1 AND user_id = $2",
        room_id,
        user_id
    )
    .fetch_optional(conn)
    .await?)
}

/// One room a user has a membership in, as a sync up to some position sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRoom {
    pub room_id: String,
    /// The user's membership at the sync's upper bound, and the position and sender of the
    /// member event that set it.
    pub membership: String,
    pub member_stream: i64,
    /// Empty where no sync needs it: in an incremental sync, for a member event at or before
    /// `since`.
    pub member_sender: String,
    /// The user's membership at the sync's lower bound, if they had one.
    pub membership_before: Option<String>,
    /// The room's latest live event in the sync's range, if any: backfilled history does not
    /// make a room new.
    pub latest: Option<i64>,
}

/// The widest gap (in stream positions) an incremental sync reads the changed rooms of from
/// the stream itself. The scan reads every event of the gap, whatever its room, so it is kept
/// short; a wider gap probes each of the user's rooms instead (one index probe per room).
const GAP_SCAN_MAX: i64 = 256;

/// Every room where `user_id` has a member event at or before `upto`, with what a sync from
/// `since` to `upto` needs to know about it; an initial sync (`since` 0) leaves out the rooms
/// the user has forgotten.
///
/// This runs on every wake-up of a waiting sync, so a room where nothing happened costs no
/// more than its `memberships` row: the member event is read only when it is newer than the
/// sync (then the one before it) or in the gap (for its sender and the membership before it),
/// and a short gap finds the rooms with new events by scanning the stream positions in it
/// rather than by probing every room (see [`GAP_SCAN_MAX`]).
pub async fn user_rooms(
    conn: &mut PgConnection,
    user_id: &str,
    since: i64,
    upto: i64,
) -> Result<Vec<UserRoom>, StoreError> {
    let gap = if since > 0 && upto - since <= GAP_SCAN_MAX {
        GapRead::Scan
    } else {
        GapRead::Probe
    };
    user_rooms_read(conn, user_id, since, upto, gap).await
}

/// How [`user_rooms_read`] finds the rooms with events between `since` and `upto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapRead {
    /// Scan the stream positions of the gap (whatever the room).
    Scan,
    /// Probe each of the user's rooms.
    Probe,
}

/// [`user_rooms`] with the way to read the gap chosen by the caller (both give the same rooms;
/// tests compare them).
pub async fn user_rooms_read(
    conn: &mut PgConnection,
    user_id: &str,
    since: i64,
    upto: i64,
    gap: GapRead,
) -> Result<Vec<UserRoom>, StoreError> {
    let scan_gap = gap == GapRead::Scan;
    let rows = sqlx::query!(
        r#"WITH gap AS MATERIALIZED (
               SELECT room_id, max(stream) AS latest FROM events
               WHERE $4 AND stream > $2 AND stream <= $3 AND NOT backfilled
               GROUP BY room_id)
           SELECT m.room_id, me.stream AS "member_stream!", me.sender AS "member_sender!",
                  me.membership AS "membership?",
                  CASE WHEN $2 = 0 THEN NULL
                       WHEN me.stream <= $2 THEN me.membership
                       ELSE (SELECT b.content->>'membership' FROM events b
                             WHERE b.room_id = m.room_id AND b.type = 'm.room.member'
                               AND b.state_key = m.user_id AND b.stream <= $2
                             ORDER BY b.stream DESC LIMIT 1)
                  END AS "membership_before?",
                  CASE WHEN $4 THEN g.latest
                       ELSE (SELECT max(l.stream) FROM events l
                             WHERE l.room_id = m.room_id AND l.stream > $2 AND l.stream <= $3
                               AND NOT l.backfilled)
                  END AS "latest?"
           FROM memberships m
           CROSS JOIN LATERAL (
               -- The current membership, unless it is newer than the sync.
               SELECT m.stream, m.membership,
                      CASE WHEN $2 = 0 OR m.stream > $2
                           THEN (SELECT e.sender FROM events e WHERE e.stream = m.stream)
                           ELSE '' END AS sender
               WHERE m.stream <= $3
               UNION ALL
               (SELECT e.stream, e.content->>'membership',
                       CASE WHEN $2 = 0 OR e.stream > $2 THEN e.sender ELSE '' END
                FROM events e
                WHERE m.stream > $3 AND e.room_id = m.room_id AND e.type = 'm.room.member'
                  AND e.state_key = m.user_id AND e.stream <= $3
                ORDER BY e.stream DESC LIMIT 1)) me
           LEFT JOIN gap g ON g.room_id = m.room_id
           WHERE m.user_id = $1
             -- A forgotten room is left out of initial syncs (migration 0010); an incremental
             -- one still shows the leave it covers, as Synapse's does.
             AND ($2 > 0 OR NOT EXISTS (
                 SELECT FROM forgotten_rooms f
                 WHERE f.room_id = m.room_id AND f.user_id = m.user_id
                   AND f.member_stream = m.stream))
           ORDER BY m.room_id"#,
        user_id,
        since,
        upto,
        scan_gap,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| UserRoom {
            room_id: row.room_id,
            membership: row.membership.unwrap_or_else(|| "leave".to_owned()),
            member_stream: row.member_stream,
            member_sender: row.member_sender,
            membership_before: row.membership_before,
            latest: row.latest,
        })
        .collect())
}

/// The rooms of [`user_rooms`] (same rows) that can have news for an incremental sync from
/// `since` to `upto`, found without reading every room of the user: the rooms with events in
/// the gap (scanned by stream position), those where the user's membership changed after
/// `since`, those with receipts or the user's room account data in the room data window
/// `side` = `(after, upto]`, and `also` (the rooms whose typing changed, known in memory).
/// A room outside these has nothing to tell the client, so a wake-up costs what changed, not
/// what the user is in. `None` when the gap is wider than [`GAP_SCAN_MAX`]: the caller then
/// reads every room ([`user_rooms`]).
pub async fn changed_user_rooms(
    conn: &mut PgConnection,
    user_id: &str,
    (since, upto): (i64, i64),
    side: (i64, i64),
    also: &[String],
) -> Result<Option<Vec<UserRoom>>, StoreError> {
    if since <= 0 || upto - since > GAP_SCAN_MAX {
        return Ok(None);
    }
    let rows = sqlx::query!(
        r#"WITH gap AS MATERIALIZED (
               SELECT room_id, max(stream) AS latest FROM events
               WHERE stream > $2 AND stream <= $3 AND NOT backfilled
               GROUP BY room_id),
           candidates AS (
               SELECT room_id FROM gap
               UNION SELECT room_id FROM memberships WHERE user_id = $1 AND stream > $2
               UNION SELECT room_id FROM receipts WHERE stream > $4 AND stream <= $5
               UNION SELECT room_id FROM room_account_data
                     WHERE user_id = $1 AND stream > $4 AND stream <= $5
               UNION SELECT unnest($6::text[]))
           SELECT m.room_id, me.stream AS "member_stream!", me.sender AS "member_sender!",
                  me.membership AS "membership?",
                  CASE WHEN me.stream <= $2 THEN me.membership
                       ELSE (SELECT b.content->>'membership' FROM events b
                             WHERE b.room_id = m.room_id AND b.type = 'm.room.member'
                               AND b.state_key = m.user_id AND b.stream <= $2
                             ORDER BY b.stream DESC LIMIT 1)
                  END AS "membership_before?",
                  g.latest AS "latest?"
           FROM candidates c
           JOIN memberships m ON m.room_id = c.room_id AND m.user_id = $1
           CROSS JOIN LATERAL (
               -- As in user_rooms: the current membership, unless it is newer than the sync.
               SELECT m.stream, m.membership,
                      CASE WHEN m.stream > $2
                           THEN (SELECT e.sender FROM events e WHERE e.stream = m.stream)
                           ELSE '' END AS sender
               WHERE m.stream <= $3
               UNION ALL
               (SELECT e.stream, e.content->>'membership',
                       CASE WHEN e.stream > $2 THEN e.sender ELSE '' END
                FROM events e
                WHERE m.stream > $3 AND e.room_id = m.room_id AND e.type = 'm.room.member'
                  AND e.state_key = m.user_id AND e.stream <= $3
                ORDER BY e.stream DESC LIMIT 1)) me
           LEFT JOIN gap g ON g.room_id = m.room_id
           ORDER BY m.room_id"#,
        user_id,
        since,
        upto,
        side.0,
        side.1,
        also,
    )
    .fetch_all(conn)
    .await?;
    Ok(Some(
        rows.into_iter()
            .map(|row| UserRoom {
                room_id: row.room_id,
                membership: row.membership.unwrap_or_else(|| "leave".to_owned()),
                member_stream: row.member_stream,
                member_sender: row.member_sender,
                membership_before: row.membership_before,
                latest: row.latest,
            })
            .collect(),
    ))
}

/// The highest position of the user's membership rows: it moves whenever their membership
/// changes anywhere (one index probe, migration 0028).
pub async fn latest_membership(
    conn: &mut PgConnection,
    user_id: &str,
) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT max(stream) FROM memberships WHERE user_id = $1",
        user_id
    )
    .fetch_one(conn)
    .await?)
}

/// Every room the user has a membership row in.
pub async fn rooms_of(conn: &mut PgConnection, user_id: &str) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        "SELECT room_id FROM memberships WHERE user_id = $1",
        user_id
    )
    .fetch_all(conn)
    .await?)
}

/// Member counts of a room by membership, and up to `heroes` other members (joined first,
/// then invited, then gone; each oldest first), as Synapse's room summary orders them.
pub async fn member_summary(
    conn: &mut PgConnection,
    room_id: &str,
    user_id: &str,
    heroes: i64,
) -> Result<(HashMap<String, i64>, Vec<String>), StoreError> {
    let counts = sqlx::query!(
        r#"SELECT membership, count(*) AS "count!" FROM memberships
           WHERE room_id = $1 GROUP BY membership"#,
        room_id
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|row| (row.membership, row.count))
    .collect();
    let heroes = sqlx::query_scalar!(
        r#"SELECT user_id FROM memberships WHERE room_id = $1 AND user_id <> $2
           ORDER BY CASE membership WHEN 'join' THEN 0 WHEN 'invite' THEN 1 ELSE 2 END, stream
           LIMIT $3"#,
        room_id,
        user_id,
        heroes
    )
    .fetch_all(conn)
    .await?;
    Ok((counts, heroes))
}

/// Rooms and events per class, of rooms not deleted. Events are counted from each room's
/// topological range (every event takes one position), so no event row is read.
pub async fn class_counts(pool: &sqlx::PgPool) -> Result<Vec<(String, i64, i64)>, StoreError> {
    Ok(sqlx::query!(
        r#"SELECT class, count(*) AS "rooms!", COALESCE(sum(max_topo - min_topo + 1), 0)::BIGINT AS "events!"
           FROM rooms WHERE deleted_at IS NULL GROUP BY class ORDER BY class"#
    )
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|row| (row.class, row.rooms, row.events))
    .collect())
}

/// One local room as Synapse's admin room list shows it.
#[derive(Debug, Clone)]
pub struct ListedRoom {
    pub room_id: String,
    pub room_version: String,
    pub creator: String,
    pub name: Option<String>,
    pub canonical_alias: Option<String>,
    pub join_rules: Option<String>,
    pub history_visibility: Option<String>,
    pub joined_members: i64,
    pub state_events: i64,
}

/// Every local room not deleted, oldest first, with what Synapse's admin room list shows.
pub async fn list(pool: &sqlx::PgPool) -> Result<Vec<ListedRoom>, StoreError> {
    Ok(sqlx::query_as!(
        ListedRoom,
        r#"SELECT r.room_id, r.room_version, r.creator,
                  s.name, s.canonical_alias, s.join_rules, s.history_visibility,
                  (SELECT count(*) FROM memberships m
                   WHERE m.room_id = r.room_id AND m.membership = 'join') AS "joined_members!",
                  (SELECT count(*) FROM current_state c WHERE c.room_id = r.room_id) AS "state_events!"
           FROM rooms r
           CROSS JOIN LATERAL (
               SELECT max(e.content->>'name') FILTER (WHERE e.type = 'm.room.name') AS name,
                      max(e.content->>'alias') FILTER (WHERE e.type = 'm.room.canonical_alias') AS canonical_alias,
                      max(e.content->>'join_rule') FILTER (WHERE e.type = 'm.room.join_rules') AS join_rules,
                      max(e.content->>'history_visibility') FILTER (WHERE e.type = 'm.room.history_visibility') AS history_visibility
               FROM current_state c JOIN events e ON e.stream = c.stream
               WHERE c.room_id = r.room_id AND c.state_key = ''
                 AND c.type IN ('m.room.name', 'm.room.canonical_alias', 'm.room.join_rules', 'm.room.history_visibility')) s
           WHERE r.deleted_at IS NULL
           ORDER BY r.created_at"#
    )
    .fetch_all(pool)
    .await?)
}

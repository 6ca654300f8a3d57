//! `push_rules`, `pushers`, `push_actions`, `push_position` (migration 0009): what hungryserv
//! knows of each user's push settings, the notifications local events produced, and the push
//! task's progress. Reads `receipts` and `room_account_data` for the counts and mutes.

use std::collections::HashMap;

use serde_json::Value;
use sqlx::PgConnection;

use super::StoreError;

/// A pusher as Synapse lists it, with when we first saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredPusher {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    /// The whole pusher object of Synapse's `GET /pushers`.
    pub pusher: Value,
    /// ms since the epoch.
    pub first_seen: i64,
}

/// Keeps the latest copy of a user's push rules.
pub async fn save_rules(
    conn: &mut PgConnection,
    user_id: &str,
    rules: &Value,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO push_rules (user_id, rules) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET rules = EXCLUDED.rules, fetched_at = now()",
        user_id,
        rules
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The stored push rules of some users (those we never learned are absent).
pub async fn rules_of(
    conn: &mut PgConnection,
    user_ids: &[String],
) -> Result<HashMap<String, Value>, StoreError> {
    let rows = sqlx::query!(
        "SELECT user_id, rules FROM push_rules WHERE user_id = ANY($1)",
        user_ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user_id, r.rules)).collect())
}

/// Replaces a user's pushers with `pushers` (`(app_id, pushkey, pusher)`), keeping the
/// `first_seen` of those already known. Runs in the caller's transaction.
pub async fn replace_pushers(
    conn: &mut PgConnection,
    user_id: &str,
    pushers: &[(String, String, Value)],
    now_ms: i64,
) -> Result<(), StoreError> {
    let app_ids: Vec<String> = pushers.iter().map(|p| p.0.clone()).collect();
    let pushkeys: Vec<String> = pushers.iter().map(|p| p.1.clone()).collect();
    let objects: Vec<Value> = pushers.iter().map(|p| p.2.clone()).collect();
    sqlx::query!(
        "DELETE FROM pushers WHERE user_id = $1
         AND (app_id, pushkey) NOT IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
        user_id,
        &app_ids,
        &pushkeys
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO pushers (user_id, app_id, pushkey, pusher, first_seen)
         SELECT $1, * , $5 FROM UNNEST($2::text[], $3::text[], $4::jsonb[])
         ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET pusher = EXCLUDED.pusher",
        user_id,
        &app_ids,
        &pushkeys,
        &objects,
        now_ms
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The pushers of some users, by user.
pub async fn pushers_of(
    conn: &mut PgConnection,
    user_ids: &[String],
) -> Result<HashMap<String, Vec<StoredPusher>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT user_id, app_id, pushkey, pusher, first_seen FROM pushers
         WHERE user_id = ANY($1) ORDER BY user_id, app_id, pushkey",
        user_ids
    )
    .fetch_all(conn)
    .await?;
    let mut by_user: HashMap<String, Vec<StoredPusher>> = HashMap::new();
    for row in rows {
        by_user
            .entry(row.user_id.clone())
            .or_default()
            .push(StoredPusher {
                user_id: row.user_id,
                app_id: row.app_id,
                pushkey: row.pushkey,
                pusher: row.pusher,
                first_seen: row.first_seen,
            });
    }
    Ok(by_user)
}

/// The users with pushers whose read receipts (`m.read` or `m.read.private`) were committed in
/// `(after, upto]` of the room data stream.
pub async fn readers_with_pushers(
    conn: &mut PgConnection,
    after: i64,
    upto: i64,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT DISTINCT r.user_id FROM receipts r
           WHERE r.stream > $1 AND r.stream <= $2 AND r.type IN ('m.read', 'm.read.private')
             AND EXISTS (SELECT FROM pushers p WHERE p.user_id = r.user_id)"#,
        after,
        upto
    )
    .fetch_all(conn)
    .await?)
}

/// Forgets one pusher (its gateway rejected the pushkey).
pub async fn delete_pusher(
    conn: &mut PgConnection,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3",
        user_id,
        app_id,
        pushkey
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The push task's position; the first call stores and returns `current` (push starts with
/// the events after the first start).
pub async fn position(conn: &mut PgConnection, current: i64) -> Result<i64, StoreError> {
    sqlx::query!(
        "INSERT INTO push_position (stream) VALUES ($1) ON CONFLICT (only_row) DO NOTHING",
        current
    )
    .execute(&mut *conn)
    .await?;
    Ok(
        sqlx::query_scalar!("SELECT stream FROM push_position WHERE only_row")
            .fetch_one(conn)
            .await?,
    )
}

/// Moves the push task's position forward.
pub async fn set_position(conn: &mut PgConnection, stream: i64) -> Result<(), StoreError> {
    sqlx::query!(
        "UPDATE push_position SET stream = GREATEST(stream, $1) WHERE only_row",
        stream
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Deletes up to `limit` plain (not highlighted) notifications older than `before` (ms since
/// the epoch, against the row's `ts`: the event's `origin_server_ts`, which an appservice may
/// set with `?ts=`, so a bridged old message goes at the next round once read) that their user
/// has read: a receipt of theirs, unthreaded or of the notification's thread, or their own
/// member event at or after it — what the unread counts ([`unread`], [`read_positions`]) treat
/// as read. Unread ones stay whatever their age (they are the counts), and so do highlights.
/// Returns how many were deleted.
pub async fn prune_read(
    conn: &mut PgConnection,
    before: i64,
    limit: i64,
) -> Result<u64, StoreError> {
    let done = sqlx::query!(
        r#"WITH doomed AS (
               SELECT a.user_id, a.room_id, a.stream FROM push_actions a
               WHERE NOT a.highlight AND a.ts < $1
                 AND a.stream <= GREATEST(
                     (SELECT MAX(e.stream) FROM receipts r JOIN events e ON e.event_id = r.event_id
                      WHERE r.user_id = a.user_id AND r.room_id = a.room_id
                        AND r.thread_id IN ('', a.thread_id)),
                     (SELECT m.stream FROM memberships m
                      WHERE m.user_id = a.user_id AND m.room_id = a.room_id))
               LIMIT $2)
           DELETE FROM push_actions p USING doomed d
           WHERE p.user_id = d.user_id AND p.room_id = d.room_id AND p.stream = d.stream"#,
        before,
        limit,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// One notification to record.
#[derive(Debug, Clone, PartialEq)]
pub struct PushAction {
    pub user_id: String,
    pub room_id: String,
    pub stream: i64,
    pub event_id: String,
    /// The thread root, or `main`.
    pub thread_id: String,
    pub highlight: bool,
    pub actions: Value,
    pub ts: i64,
}

/// Records notifications (a repeat of the same (user, room, stream) is ignored, so a task
/// restarted mid-range writes nothing twice).
pub async fn insert_actions(
    conn: &mut PgConnection,
    actions: &[PushAction],
) -> Result<(), StoreError> {
    if actions.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&PushAction) -> String| actions.iter().map(f).collect::<Vec<String>>();
    let users = column(|a| a.user_id.clone());
    let rooms = column(|a| a.room_id.clone());
    let events = column(|a| a.event_id.clone());
    let threads = column(|a| a.thread_id.clone());
    let streams: Vec<i64> = actions.iter().map(|a| a.stream).collect();
    let highlights: Vec<bool> = actions.iter().map(|a| a.highlight).collect();
    let values: Vec<Value> = actions.iter().map(|a| a.actions.clone()).collect();
    let ts: Vec<i64> = actions.iter().map(|a| a.ts).collect();
    sqlx::query!(
        "INSERT INTO push_actions (user_id, room_id, stream, event_id, thread_id, highlight,
                                   actions, ts)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                              $6::bool[], $7::jsonb[], $8::bigint[])
         ON CONFLICT DO NOTHING",
        &users,
        &rooms,
        &streams,
        &events,
        &threads,
        &highlights,
        &values,
        &ts
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Unread notifications of one thread (`main` for the main timeline) of one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreadCount {
    pub room_id: String,
    pub thread_id: String,
    pub notifications: i64,
    pub highlights: i64,
}

/// The user's notifications at or before `upto` in `room_ids` that no read receipt of theirs
/// covers, counted per (room, thread). A receipt covers an event when it points at an event
/// at or after it (by stream position): an unthreaded receipt covers every thread, a threaded
/// one (`main` included) its own thread. `m.read` and `m.read.private` count alike. The
/// user's latest member event counts as an unthreaded receipt (Synapse starts counting at the
/// join when there is no receipt: an invite's notification is not unread after the join).
pub async fn unread(
    conn: &mut PgConnection,
    user_id: &str,
    room_ids: &[String],
    upto: i64,
) -> Result<Unread, StoreError> {
    // One statement, so one snapshot: the push task commits its records and its position
    // together, and both are read here as of the same moment. Counted up to the smaller of
    // `upto` and that position; the events after it are the caller's to evaluate.
    let rows = sqlx::query!(
        r#"WITH pos AS (
               SELECT LEAST($3, COALESCE((SELECT stream FROM push_position WHERE only_row), $3))
                   AS upto),
           read AS (
               SELECT room_id, thread_id, MAX(stream) AS stream FROM (
                   SELECT r.room_id, r.thread_id, e.stream
                   FROM receipts r JOIN events e ON e.event_id = r.event_id
                   WHERE r.user_id = $1 AND r.room_id = ANY($2)
                   UNION ALL
                   SELECT room_id, '', stream FROM memberships
                   WHERE user_id = $1 AND room_id = ANY($2)) x
               GROUP BY room_id, thread_id),
           counts AS (
               SELECT a.room_id, a.thread_id,
                      COUNT(*) AS notifications, COUNT(*) FILTER (WHERE a.highlight) AS highlights
               FROM push_actions a
               LEFT JOIN read u ON u.room_id = a.room_id AND u.thread_id = ''
               LEFT JOIN read t ON t.room_id = a.room_id AND t.thread_id = a.thread_id
               WHERE a.user_id = $1 AND a.room_id = ANY($2) AND a.stream <= (SELECT upto FROM pos)
                 AND a.stream > GREATEST(COALESCE(u.stream, 0), COALESCE(t.stream, 0))
               GROUP BY a.room_id, a.thread_id)
           SELECT pos.upto AS "recorded!", c.room_id AS "room_id?", c.thread_id AS "thread_id?",
                  c.notifications AS "notifications?", c.highlights AS "highlights?",
                  (SELECT jsonb_agg(jsonb_build_array(room_id, thread_id, stream)) FROM read)
                      AS "reads?"
           FROM pos LEFT JOIN counts c ON true"#,
        user_id,
        room_ids,
        upto
    )
    .fetch_all(conn)
    .await?;
    let recorded = rows.first().map_or(upto, |r| r.recorded);
    // `[room, thread, stream]` triples, the same on every row.
    let reads = rows
        .first()
        .and_then(|r| r.reads.as_ref())
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|triple| {
            let room = triple.get(0)?.as_str()?.to_owned();
            let thread = triple.get(1)?.as_str()?.to_owned();
            Some(((room, thread), triple.get(2)?.as_i64()?))
        })
        .collect();
    let counts = rows
        .into_iter()
        .filter_map(|r| {
            Some(ThreadCount {
                room_id: r.room_id?,
                thread_id: r.thread_id?,
                notifications: r.notifications?,
                highlights: r.highlights?,
            })
        })
        .collect();
    Ok(Unread {
        recorded,
        counts,
        reads,
    })
}

/// What [`unread`] found: the counts of the recorded notifications up to `recorded`, and the
/// read positions they were counted from.
#[derive(Debug, Default)]
pub struct Unread {
    /// The position counted up to: the smaller of the one asked and the push task's.
    pub recorded: i64,
    pub counts: Vec<ThreadCount>,
    /// As [`read_positions`] gives them.
    pub reads: HashMap<(String, String), i64>,
}

/// The push badge as Synapse counts it (default `group_unread_count_by_room`): the user's
/// pending invites plus the rooms where they have an unread notification, over local rooms.
pub async fn badge(conn: &mut PgConnection, user_id: &str) -> Result<i64, StoreError> {
    let rooms = sqlx::query_scalar!(
        "SELECT room_id FROM memberships WHERE user_id = $1 AND membership = 'join'",
        user_id
    )
    .fetch_all(&mut *conn)
    .await?;
    // Everything recorded (the task records and moves its position together).
    let counts = unread(conn, user_id, &rooms, i64::MAX).await?.counts;
    let mut unread_rooms: Vec<&str> = counts
        .iter()
        .filter(|c| c.notifications > 0)
        .map(|c| c.room_id.as_str())
        .collect();
    unread_rooms.sort_unstable();
    unread_rooms.dedup();
    let invites = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM memberships WHERE user_id = $1 AND membership = 'invite'"#,
        user_id
    )
    .fetch_one(conn)
    .await?;
    Ok(i64::try_from(unread_rooms.len()).unwrap_or(i64::MAX) + invites)
}

/// `muted_until` of the users among `user_ids` who muted one of the rooms (the
/// `com.beeper.mute` room account data), room → user → `muted_until` (see [`muted_until`]).
pub async fn mutes_of_rooms(
    conn: &mut PgConnection,
    room_ids: &[String],
    user_ids: &[String],
) -> Result<HashMap<String, HashMap<String, i64>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT room_id, user_id, content FROM room_account_data
         WHERE room_id = ANY($1) AND user_id = ANY($2) AND type = 'com.beeper.mute'",
        room_ids,
        user_ids
    )
    .fetch_all(conn)
    .await?;
    let mut by_room: HashMap<String, HashMap<String, i64>> = HashMap::new();
    for row in rows {
        if let Some(until) = muted_until(&row.content) {
            by_room
                .entry(row.room_id)
                .or_default()
                .insert(row.user_id, until);
        }
    }
    Ok(by_room)
}

/// The `muted_until` of a `com.beeper.mute` content: -1 for ever, else ms since the epoch.
fn muted_until(content: &Value) -> Option<i64> {
    content.get("muted_until").and_then(Value::as_i64)
}

/// What evaluating one user's rules in some rooms needs, read in one statement: per room the
/// joined member count, the user's own member event content (when joined), the power levels,
/// the user's `muted_until` (as [`mutes_of_rooms`]); and the user's stored rules.
pub async fn recipient_context(
    conn: &mut PgConnection,
    user_id: &str,
    room_ids: &[String],
) -> Result<RecipientContext, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT r.room_id AS "room_id!",
                  (SELECT count(*) FROM memberships j
                   WHERE j.room_id = r.room_id AND j.membership = 'join') AS "member_count!",
                  (SELECT e.content FROM memberships m JOIN events e ON e.stream = m.stream
                   WHERE m.room_id = r.room_id AND m.user_id = $1 AND m.membership = 'join')
                      AS "member?",
                  (SELECT e.content FROM current_state c JOIN events e ON e.stream = c.stream
                   WHERE c.room_id = r.room_id AND c.type = 'm.room.power_levels'
                     AND c.state_key = '') AS "power_levels?",
                  (SELECT a.content FROM room_account_data a
                   WHERE a.room_id = r.room_id AND a.user_id = $1 AND a.type = 'com.beeper.mute')
                      AS "mute?",
                  (SELECT rules FROM push_rules WHERE user_id = $1) AS "rules?"
           FROM UNNEST($2::text[]) AS r(room_id)"#,
        user_id,
        room_ids
    )
    .fetch_all(conn)
    .await?;
    let mut context = RecipientContext::default();
    for row in rows {
        context.rules = context.rules.or(row.rules);
        context.rooms.insert(
            row.room_id,
            RecipientRoom {
                member_count: row.member_count,
                member: row.member,
                power_levels: row.power_levels,
                muted_until: row.mute.as_ref().and_then(muted_until),
            },
        );
    }
    Ok(context)
}

/// What [`recipient_context`] read.
#[derive(Debug, Default)]
pub struct RecipientContext {
    /// The user's stored push rules (`None`: never learned).
    pub rules: Option<Value>,
    pub rooms: HashMap<String, RecipientRoom>,
}

/// One room as one recipient's rules see it.
#[derive(Debug)]
pub struct RecipientRoom {
    pub member_count: i64,
    /// The user's member event content, when joined.
    pub member: Option<Value>,
    pub power_levels: Option<Value>,
    pub muted_until: Option<i64>,
}

/// The joined members of each room, with the content of their member events.
pub async fn joined_members_of_rooms(
    conn: &mut PgConnection,
    room_ids: &[String],
) -> Result<HashMap<String, Vec<(String, Value)>>, StoreError> {
    let rows = sqlx::query!(
        "SELECT m.room_id, m.user_id, e.content FROM memberships m JOIN events e ON e.stream = m.stream
         WHERE m.room_id = ANY($1) AND m.membership = 'join'",
        room_ids
    )
    .fetch_all(conn)
    .await?;
    let mut by_room: HashMap<String, Vec<(String, Value)>> = HashMap::new();
    for row in rows {
        by_room
            .entry(row.room_id)
            .or_default()
            .push((row.user_id, row.content));
    }
    Ok(by_room)
}

/// A user's recorded notifications, newest first, before `before` (a stream position), for
/// `/notifications`.
pub async fn notifications(
    conn: &mut PgConnection,
    user_id: &str,
    before: i64,
    limit: i64,
    highlights_only: bool,
) -> Result<Vec<PushAction>, StoreError> {
    let rows = sqlx::query!(
        "SELECT user_id, room_id, stream, event_id, thread_id, highlight, actions, ts
         FROM push_actions WHERE user_id = $1 AND stream < $2 AND (highlight OR NOT $3)
         ORDER BY stream DESC LIMIT $4",
        user_id,
        before,
        highlights_only,
        limit
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| PushAction {
            user_id: r.user_id,
            room_id: r.room_id,
            stream: r.stream,
            event_id: r.event_id,
            thread_id: r.thread_id,
            highlight: r.highlight,
            actions: r.actions,
            ts: r.ts,
        })
        .collect())
}

/// The stream position each of the user's read receipts points at, by (room, thread; `""`
/// for unthreaded), the later of `m.read` and `m.read.private`; the user's latest member event
/// counts as an unthreaded receipt (see [`unread`]).
pub async fn read_positions(
    conn: &mut PgConnection,
    user_id: &str,
    room_ids: &[String],
) -> Result<HashMap<(String, String), i64>, StoreError> {
    let rows = sqlx::query!(
        r#"SELECT room_id AS "room_id!", thread_id AS "thread_id!", MAX(stream) AS "stream!"
           FROM (SELECT r.room_id, r.thread_id, e.stream
                 FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.user_id = $1 AND r.room_id = ANY($2)
                 UNION ALL
                 SELECT room_id, '', stream FROM memberships
                 WHERE user_id = $1 AND room_id = ANY($2)) x
           GROUP BY room_id, thread_id"#,
        user_id,
        room_ids
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ((r.room_id, r.thread_id), r.stream))
        .collect())
}

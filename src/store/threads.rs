//! Threads of local rooms (`GET /v1/rooms/{roomId}/threads`): each thread root with the
//! position of its latest reply, read from the `m.thread` relations in `events` (the
//! `events_relations` index) rather than kept in a table of their own.

use sqlx::PgConnection;

use super::StoreError;

/// A thread: its root and where its latest reply is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    pub root: String,
    /// `topo` and `stream` of the latest (unredacted) reply.
    pub topo: i64,
    pub stream: i64,
}

/// Threads of a room whose root is in the room, by latest reply, newest first (Synapse's
/// `threads` table order: topological then stream ordering); with `from`, only those whose
/// latest reply is at or before its `topo` and before its `stream` (Synapse's clause).
pub async fn list(
    conn: &mut PgConnection,
    room_id: &str,
    from: Option<(i64, i64)>,
    limit: i64,
) -> Result<Vec<Thread>, StoreError> {
    let (max_topo, max_stream) = from.unwrap_or((i64::MAX, i64::MAX));
    let rows = sqlx::query_as!(
        Thread,
        r#"SELECT t.root AS "root!", t.topo AS "topo!", t.stream AS "stream!"
           FROM (SELECT r.relates_to AS root, max(r.topo) AS topo, max(r.stream) AS stream
                 FROM events r
                 WHERE r.room_id = $1 AND r.rel_type = 'm.thread' AND r.relates_to IS NOT NULL
                   AND r.redacted_by IS NULL
                 GROUP BY r.relates_to) t
           JOIN events root ON root.event_id = t.root AND root.room_id = $1
           WHERE t.topo <= $2 AND t.stream < $3
           ORDER BY t.topo DESC, t.stream DESC
           LIMIT $4"#,
        room_id,
        max_topo,
        max_stream,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Which of `roots` have a thread reply by `user`.
pub async fn participated(
    conn: &mut PgConnection,
    room_id: &str,
    roots: &[String],
    user: &str,
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query_scalar!(
        r#"SELECT DISTINCT relates_to AS "relates_to!" FROM events
           WHERE room_id = $1 AND relates_to = ANY($2) AND rel_type = 'm.thread' AND sender = $3"#,
        room_id,
        roots,
        user,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

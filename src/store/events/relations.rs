//! Relations: `/relations`, bundled aggregations and the threads of receipts.

use sqlx::PgConnection;

use super::{EventWithPrev, Row, parse_all};
use crate::store::StoreError;

/// The threads a receipt on `event_id` may name, as Synapse decides them (`receipts.py`,
/// `get_thread_id` and `get_thread_id_for_receipts` in its relations store). Both walk up the
/// event's relations (at most four steps; a redacted event has none):
/// - `main`: the root of an `m.thread` relation on the way, or `"main"` — a receipt for the
///   main timeline must name an event of no thread;
/// - `any`: the top-most related event, if some event is in a thread rooted there, else
///   `"main"` — a thread's receipt may name its root, its events and what relates to them.
///
/// An unknown event is in no thread.
pub async fn receipt_threads(
    conn: &mut PgConnection,
    room_id: &str,
    event_id: &str,
) -> Result<ReceiptThreads, StoreError> {
    let row = sqlx::query!(
        r#"WITH RECURSIVE up AS (
               SELECT event_id, relates_to, rel_type, 0 AS depth FROM events
               WHERE event_id = $2 AND room_id = $1
                 AND rel_type IS NOT NULL AND redacted_by IS NULL
               UNION
               SELECT e.event_id, e.relates_to, e.rel_type, up.depth + 1
               FROM events e JOIN up ON e.event_id = up.relates_to
               WHERE up.depth <= 3 AND e.room_id = $1
                 AND e.rel_type IS NOT NULL AND e.redacted_by IS NULL),
           top AS (
               SELECT COALESCE((SELECT relates_to FROM up ORDER BY depth DESC LIMIT 1), $2)
                   AS event_id)
           SELECT (SELECT relates_to FROM up WHERE rel_type = 'm.thread'
                   ORDER BY depth DESC LIMIT 1) AS "main?",
                  (SELECT t.event_id FROM top t WHERE EXISTS (
                       SELECT 1 FROM events e
                       WHERE e.relates_to = t.event_id AND e.rel_type = 'm.thread'
                         AND e.room_id = $1 AND e.redacted_by IS NULL)) AS "any?""#,
        room_id,
        event_id,
    )
    .fetch_one(conn)
    .await?;
    let or_main = |thread: Option<String>| thread.unwrap_or_else(|| MAIN_THREAD.to_owned());
    Ok(ReceiptThreads {
        main: or_main(row.main),
        any: or_main(row.any),
    })
}

/// The main timeline's thread ID (MSC3771).
pub const MAIN_THREAD: &str = "main";

/// What [`receipt_threads`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptThreads {
    /// The thread the event is in (`"main"` for none).
    pub main: String,
    /// The thread the event belongs to for a threaded receipt (`"main"` for none).
    pub any: String,
}

impl ReceiptThreads {
    /// Whether a receipt with `thread_id` may name the event.
    pub fn allows(&self, thread_id: &str) -> bool {
        if thread_id == MAIN_THREAD {
            self.main == MAIN_THREAD
        } else {
            self.any == thread_id
        }
    }
}

/// Which relations of an event to list, and where: `topo` in `(after, before)` (exclusive
/// bounds), in the given direction.
#[derive(Debug, Clone, Copy)]
pub struct RelationsQuery<'a> {
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub after: i64,
    pub before: i64,
    pub forwards: bool,
    /// Also events relating to those events, as Synapse's `recurse` does it: its recursive
    /// query follows relations while the depth so far is at most 3 (so five levels below the
    /// parent), and the type filters apply to every level found.
    pub recurse: bool,
    pub limit: i64,
}

/// Events relating to `target` (see [`RelationsQuery`]), in topological order.
pub async fn relations(
    conn: &mut PgConnection,
    room_id: &str,
    target: &str,
    query: RelationsQuery<'_>,
) -> Result<Vec<EventWithPrev>, StoreError> {
    let rows = sqlx::query_as!(
        Row,
        r#"WITH RECURSIVE related (event_id, depth) AS (
               SELECT event_id, 0 FROM events WHERE relates_to = $2 AND room_id = $1
               UNION
               SELECT e.event_id, r.depth + 1
               FROM events e JOIN related r ON e.relates_to = r.event_id
               WHERE $8 AND r.depth <= 3 AND e.room_id = $1
           )
           SELECT e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!",
                  e.replaces_state, e.redacts, e.redacted_by, e.txn_scope, e.txn_id,
                  p.content AS "prev_content?", p.sender AS "prev_sender?"
           FROM related r JOIN events e ON e.event_id = r.event_id
           LEFT JOIN events p ON p.event_id = e.replaces_state
           WHERE ($3::text IS NULL OR e.rel_type = $3)
             AND ($4::text IS NULL OR e.type = $4)
             AND e.topo > $5 AND e.topo < $6
           ORDER BY CASE WHEN $7 THEN e.topo END ASC, CASE WHEN NOT $7 THEN e.topo END DESC
           LIMIT $9"#,
        room_id,
        target,
        query.rel_type,
        query.event_type,
        query.after,
        query.before,
        query.forwards,
        query.recurse,
        query.limit,
    )
    .fetch_all(conn)
    .await?;
    parse_all(rows)
}

/// Edits, thread replies and references of the given events, for bundled aggregations.
#[derive(Debug, Clone, Default)]
pub struct Aggregations {
    /// The latest edit of each event by its own sender.
    pub edits: Vec<EventWithPrev>,
    /// `(root, reply count, latest reply, whether the viewer posted in the thread)`.
    pub threads: Vec<(String, i64, EventWithPrev, bool)>,
    /// `(target, referencing event id)`, oldest first.
    pub references: Vec<(String, String)>,
}

/// Those of `event_ids` that some event relates to (in any room: a superset of what
/// [`aggregations`] would bundle). Events outside it have nothing to bundle, so a sync of many
/// rooms asks once for all of them instead of once per room.
pub async fn related_among(
    conn: &mut PgConnection,
    event_ids: &[String],
) -> Result<std::collections::HashSet<String>, StoreError> {
    if event_ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let rows = sqlx::query_scalar!(
        r#"SELECT DISTINCT relates_to AS "relates_to!" FROM events WHERE relates_to = ANY($1)"#,
        event_ids,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Relations are only counted within `room_id`: an event in another room that claims to
/// relate to one of these must not show up in them.
pub async fn aggregations(
    conn: &mut PgConnection,
    room_id: &str,
    event_ids: &[String],
    viewer: &str,
) -> Result<Aggregations, StoreError> {
    if event_ids.is_empty() {
        return Ok(Aggregations::default());
    }
    // Most events have no relations: one cheap probe instead of the four queries below.
    let related = sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM events WHERE relates_to = ANY($1) AND room_id = $2) AS "exists!""#,
        event_ids,
        room_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    if !related {
        return Ok(Aggregations::default());
    }
    let edits = sqlx::query_as!(
        Row,
        r#"SELECT DISTINCT ON (e.relates_to)
                  e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state,
                  e.redacts, e.redacted_by, e.txn_scope, e.txn_id,
                  NULL::jsonb AS "prev_content?", NULL::text AS "prev_sender?"
           FROM events e
           JOIN events o ON o.event_id = e.relates_to AND o.sender = e.sender AND o.room_id = e.room_id
           WHERE e.relates_to = ANY($1) AND e.room_id = $2 AND e.rel_type = 'm.replace' AND e.redacted_by IS NULL
           ORDER BY e.relates_to, e.topo DESC"#,
        event_ids,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let counts = sqlx::query!(
        r#"SELECT relates_to AS "relates_to!", count(*) AS "count!", bool_or(sender = $2) AS "participated!"
           FROM events WHERE relates_to = ANY($1) AND room_id = $3 AND rel_type = 'm.thread' GROUP BY relates_to"#,
        event_ids,
        viewer,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let latest = sqlx::query_as!(
        Row,
        r#"SELECT DISTINCT ON (e.relates_to)
                  e.stream AS "stream!", e.topo AS "topo!", e.event_id AS "event_id!",
                  e.room_id AS "room_id!", e.sender AS "sender!", e.type AS "kind!", e.state_key,
                  e.origin_server_ts AS "origin_server_ts!", e.content AS "content!", e.replaces_state,
                  e.redacts, e.redacted_by, e.txn_scope, e.txn_id,
                  NULL::jsonb AS "prev_content?", NULL::text AS "prev_sender?"
           FROM events e
           WHERE e.relates_to = ANY($1) AND e.room_id = $2 AND e.rel_type = 'm.thread'
           ORDER BY e.relates_to, e.topo DESC"#,
        event_ids,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let references = sqlx::query!(
        r#"SELECT relates_to AS "relates_to!", event_id FROM events
           WHERE relates_to = ANY($1) AND room_id = $2 AND rel_type = 'm.reference' ORDER BY topo"#,
        event_ids,
        room_id,
    )
    .fetch_all(&mut *conn)
    .await?;
    let latest = parse_all(latest)?;
    let threads = counts
        .into_iter()
        .filter_map(|count| {
            let last = latest
                .iter()
                .find(|e| e.event.content_relates_to() == Some(count.relates_to.as_str()))?;
            Some((
                count.relates_to,
                count.count,
                last.clone(),
                count.participated,
            ))
        })
        .collect();
    Ok(Aggregations {
        edits: parse_all(edits)?,
        threads,
        references: references
            .into_iter()
            .map(|r| (r.relates_to, r.event_id))
            .collect(),
    })
}

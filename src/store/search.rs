//! Full-text search over local rooms' events (`POST /search`), on the expression index of
//! migration 0025: `event_search_vector(type, content)` over m.room.message bodies, room
//! names and topics, with the `english` configuration, as Synapse's `event_search` table.
//!
//! Every query repeats the index's predicate (`type IN (…)`) so the partial index applies,
//! and ranks with `ts_rank_cd` over `websearch_to_tsquery('english', term)`, Synapse's own
//! expression, so ranks of both worlds compare.

use sqlx::PgConnection;

use super::StoreError;

/// One matching event: where it is and how it ranks.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub event_id: String,
    pub room_id: String,
    /// `ts_rank_cd` as Postgres computes it (a `real`).
    pub rank: f32,
    pub origin_server_ts: i64,
    pub stream: i64,
}

/// The event types that carry the searched keys (`content.body` → m.room.message,
/// `content.name` → m.room.name, `content.topic` → m.room.topic).
pub fn types_of_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    keys.into_iter()
        .filter_map(|key| match key {
            "content.body" => Some("m.room.message"),
            "content.name" => Some("m.room.name"),
            "content.topic" => Some("m.room.topic"),
            _ => None,
        })
        .map(str::to_owned)
        .collect()
}

/// The best-ranked matches in `rooms` among events of `types`, at most `limit`, best first
/// (Synapse's `search_msgs` reads 500).
pub async fn by_rank(
    conn: &mut PgConnection,
    rooms: &[String],
    term: &str,
    types: &[String],
    limit: i64,
) -> Result<Vec<Hit>, StoreError> {
    let rows = sqlx::query_as!(
        Hit,
        r#"SELECT e.event_id, e.room_id, ts_rank_cd(event_search_vector(e.type, e.content), q) AS "rank!",
                  e.origin_server_ts, e.stream
           FROM events e, websearch_to_tsquery('english', $2) q
           WHERE e.type IN ('m.room.message', 'm.room.name', 'm.room.topic')
             AND event_search_vector(e.type, e.content) @@ q
             AND e.room_id = ANY($1) AND e.type = ANY($3) AND e.redacted_by IS NULL
           ORDER BY 3 DESC, e.stream DESC
           LIMIT $4"#,
        rooms,
        term,
        types,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// Matches in `rooms` newest first by `(origin_server_ts, stream)` (Synapse's `search_rooms`
/// order), strictly before `before` when given, at most `limit`.
pub async fn by_recent(
    conn: &mut PgConnection,
    rooms: &[String],
    term: &str,
    types: &[String],
    before: Option<(i64, i64)>,
    limit: i64,
) -> Result<Vec<Hit>, StoreError> {
    let (before_ts, before_stream) = before.unwrap_or((i64::MAX, i64::MAX));
    let rows = sqlx::query_as!(
        Hit,
        r#"SELECT e.event_id, e.room_id, ts_rank_cd(event_search_vector(e.type, e.content), q) AS "rank!",
                  e.origin_server_ts, e.stream
           FROM events e, websearch_to_tsquery('english', $2) q
           WHERE e.type IN ('m.room.message', 'm.room.name', 'm.room.topic')
             AND event_search_vector(e.type, e.content) @@ q
             AND e.room_id = ANY($1) AND e.type = ANY($3) AND e.redacted_by IS NULL
             AND (e.origin_server_ts, e.stream) < ($4, $5)
           ORDER BY e.origin_server_ts DESC, e.stream DESC
           LIMIT $6"#,
        rooms,
        term,
        types,
        before_ts,
        before_stream,
        limit,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// How many events of `types` in `rooms` match (Synapse's `count`: before any filter or
/// visibility check).
pub async fn count(
    conn: &mut PgConnection,
    rooms: &[String],
    term: &str,
    types: &[String],
) -> Result<i64, StoreError> {
    let count = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!"
           FROM events e, websearch_to_tsquery('english', $2) q
           WHERE e.type IN ('m.room.message', 'm.room.name', 'm.room.topic')
             AND event_search_vector(e.type, e.content) @@ q
             AND e.room_id = ANY($1) AND e.type = ANY($3) AND e.redacted_by IS NULL"#,
        rooms,
        term,
        types,
    )
    .fetch_one(conn)
    .await?;
    Ok(count)
}

/// `ts_headline` of each text with its own options (Synapse's highlight query, one text per
/// result), in the order given.
pub async fn headlines(
    conn: &mut PgConnection,
    term: &str,
    texts: &[String],
    options: &[String],
) -> Result<Vec<String>, StoreError> {
    let rows = sqlx::query_scalar!(
        r#"SELECT ts_headline('english', t.text, websearch_to_tsquery('english', $1), t.options) AS "headline!"
           FROM UNNEST($2::text[], $3::text[]) WITH ORDINALITY AS t(text, options, n)
           ORDER BY t.n"#,
        term,
        texts,
        options,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

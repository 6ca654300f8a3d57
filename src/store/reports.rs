//! Abuse reports about local rooms and their events (migration 0026), and the admin list of
//! event reports in Synapse's shape.

use serde_json::Value;
use sqlx::PgConnection;

use super::StoreError;

/// An event report as Synapse's admin API lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ListedReport {
    pub id: i64,
    pub received_ts: i64,
    pub room_id: String,
    pub event_id: String,
    pub user_id: String,
    pub content: Value,
    /// The reported event's sender, while the event exists.
    pub sender: Option<String>,
    pub canonical_alias: Option<String>,
    pub name: Option<String>,
}

/// Which event reports the admin list shows (Synapse's `user_id` and `room_id` match as
/// substrings, `event_sender_user_id` exactly).
#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    pub user_id: Option<String>,
    pub room_id: Option<String>,
    pub event_sender_user_id: Option<String>,
    /// Newest first (`dir=b`, the default).
    pub newest_first: bool,
}

pub async fn add_event_report(
    conn: &mut PgConnection,
    received_ts: i64,
    room_id: &str,
    event_id: &str,
    user_id: &str,
    content: &Value,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO event_reports (received_ts, room_id, event_id, user_id, content)
         VALUES ($1, $2, $3, $4, $5)",
        received_ts,
        room_id,
        event_id,
        user_id,
        content,
    )
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn add_room_report(
    conn: &mut PgConnection,
    received_ts: i64,
    room_id: &str,
    user_id: &str,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query!(
        "INSERT INTO room_reports (received_ts, room_id, user_id, reason) VALUES ($1, $2, $3, $4)",
        received_ts,
        room_id,
        user_id,
        reason,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The first `limit` event reports in the filter's order, and how many match in all.
pub async fn list_event_reports(
    conn: &mut PgConnection,
    filter: &ReportFilter,
    limit: i64,
) -> Result<(Vec<ListedReport>, i64), StoreError> {
    let user = filter.user_id.as_ref().map(|u| format!("%{u}%"));
    let room = filter.room_id.as_ref().map(|r| format!("%{r}%"));
    let total = sqlx::query_scalar!(
        r#"SELECT count(*) AS "count!" FROM event_reports er
           LEFT JOIN events e ON e.event_id = er.event_id
           WHERE ($1::text IS NULL OR er.user_id LIKE $1)
             AND ($2::text IS NULL OR er.room_id LIKE $2)
             AND ($3::text IS NULL OR e.sender = $3)"#,
        user,
        room,
        filter.event_sender_user_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let rows = sqlx::query_as!(
        ListedReport,
        r#"SELECT er.id, er.received_ts, er.room_id, er.event_id, er.user_id, er.content,
                  e.sender AS "sender?",
                  alias.content ->> 'alias' AS "canonical_alias?",
                  name.content ->> 'name' AS "name?"
           FROM event_reports er
           LEFT JOIN events e ON e.event_id = er.event_id
           LEFT JOIN current_state ca ON ca.room_id = er.room_id
                AND ca.type = 'm.room.canonical_alias' AND ca.state_key = ''
           LEFT JOIN events alias ON alias.stream = ca.stream
           LEFT JOIN current_state cn ON cn.room_id = er.room_id
                AND cn.type = 'm.room.name' AND cn.state_key = ''
           LEFT JOIN events name ON name.stream = cn.stream
           WHERE ($1::text IS NULL OR er.user_id LIKE $1)
             AND ($2::text IS NULL OR er.room_id LIKE $2)
             AND ($3::text IS NULL OR e.sender = $3)
           ORDER BY CASE WHEN $4 THEN -er.received_ts ELSE er.received_ts END, er.id
           LIMIT $5"#,
        user,
        room,
        filter.event_sender_user_id,
        filter.newest_first,
        limit,
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok((rows, total))
}

//! The relation part of event filters (`related_by_senders`, `related_by_rel_types`,
//! MSC3440): which events have a relation matching them.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::StoreError;

/// Those of `event_ids` (in `room_id`) that some event relates to with a sender in
/// `senders` and a `rel_type` in `rel_types` (an empty list allows any), both on the same
/// relation, as Synapse's join of `event_relations` checks them.
pub async fn related_by(
    conn: &mut PgConnection,
    room_id: &str,
    event_ids: &[String],
    senders: &[String],
    rel_types: &[String],
) -> Result<HashSet<String>, StoreError> {
    let rows = sqlx::query_scalar!(
        r#"SELECT DISTINCT relates_to AS "relates_to!" FROM events
           WHERE room_id = $1 AND relates_to = ANY($2)
             AND (cardinality($3::text[]) = 0 OR sender = ANY($3))
             AND (cardinality($4::text[]) = 0 OR rel_type = ANY($4))"#,
        room_id,
        event_ids,
        senders,
        rel_types,
    )
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

//! Binary `COPY` of a batch's events.

use sqlx::PgConnection;

use super::StoredEvent;
use super::write::relation;
use crate::store::StoreError;

/// The columns [`copy_events`] fills, in the order of its rows.
const COPY_EVENTS: &str = "COPY events (stream, room_id, topo, event_id, type, state_key, sender, \
     origin_server_ts, content, replaces_state, redacts, relates_to, rel_type, txn_scope, txn_id, \
     backfilled, silent) FROM STDIN (FORMAT binary)";

/// Inserts events with one binary `COPY`. Constraints and indexes apply as for an INSERT, and
/// a failure (a duplicate event ID, content Postgres refuses) fails the caller's transaction.
pub(super) async fn copy_events(
    conn: &mut PgConnection,
    events: &[StoredEvent],
    backfilled: &[i64],
    silent: &[i64],
) -> Result<(), StoreError> {
    let data = copy_data(events, backfilled, silent)?;
    let mut copy = conn.copy_in_raw(COPY_EVENTS).await?;
    if let Err(err) = copy.send(data).await {
        // Best effort: the connection is reset on its next use anyway.
        let _ = copy.abort("sending the rows failed").await;
        return Err(err.into());
    }
    let rows = copy.finish().await?;
    if rows != events.len() as u64 {
        return Err(StoreError::Corrupt(format!(
            "COPY wrote {rows} of {} events",
            events.len()
        )));
    }
    Ok(())
}

/// The rows of [`COPY_EVENTS`] in PostgreSQL's binary copy format: a signature, flags and
/// header extension length, then per row a field count and each field as a 32-bit length
/// (-1 for NULL) and its binary value (big-endian integers, raw UTF-8 text, `jsonb` as
/// version byte 1 and the JSON text), then a -1 trailer.
fn copy_data(
    events: &[StoredEvent],
    backfilled: &[i64],
    silent: &[i64],
) -> Result<Vec<u8>, StoreError> {
    const FIELDS: i16 = 17;
    let mut data = Vec::with_capacity(19 + events.len() * 512);
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    data.extend_from_slice(&0_i32.to_be_bytes());
    data.extend_from_slice(&0_i32.to_be_bytes());
    for event in events {
        let (relates_to, rel_type) = relation(&event.content);
        data.extend_from_slice(&FIELDS.to_be_bytes());
        copy_field(&mut data, Some(&event.stream.to_be_bytes()))?;
        copy_field(&mut data, Some(event.room_id.as_bytes()))?;
        copy_field(&mut data, Some(&event.topo.to_be_bytes()))?;
        copy_field(&mut data, Some(event.event_id.as_bytes()))?;
        copy_field(&mut data, Some(event.kind.as_bytes()))?;
        copy_field(&mut data, event.state_key.as_deref().map(str::as_bytes))?;
        copy_field(&mut data, Some(event.sender.as_bytes()))?;
        copy_field(&mut data, Some(&event.origin_server_ts.to_be_bytes()))?;
        // jsonb: written in place, its length filled in afterwards.
        let start = data.len();
        data.extend_from_slice(&0_i32.to_be_bytes());
        data.push(1);
        serde_json::to_writer(&mut data, &event.content)
            .map_err(|err| StoreError::Corrupt(format!("content of {}: {err}", event.event_id)))?;
        let length = field_length(data.len() - start - 4)?;
        data[start..start + 4].copy_from_slice(&length.to_be_bytes());
        copy_field(
            &mut data,
            event.replaces_state.as_ref().map(|id| id.as_bytes()),
        )?;
        copy_field(&mut data, event.redacts.as_ref().map(|id| id.as_bytes()))?;
        copy_field(&mut data, relates_to.as_deref().map(str::as_bytes))?;
        copy_field(&mut data, rel_type.as_deref().map(str::as_bytes))?;
        copy_field(
            &mut data,
            event.txn.as_ref().map(|(scope, _)| scope.as_bytes()),
        )?;
        copy_field(&mut data, event.txn.as_ref().map(|(_, id)| id.as_bytes()))?;
        let flag = |streams: &[i64]| [u8::from(streams.binary_search(&event.stream).is_ok())];
        copy_field(&mut data, Some(&flag(backfilled)))?;
        copy_field(&mut data, Some(&flag(silent)))?;
    }
    data.extend_from_slice(&(-1_i16).to_be_bytes());
    Ok(data)
}

/// One field of a binary copy row: length and bytes, or -1 for NULL.
fn copy_field(data: &mut Vec<u8>, value: Option<&[u8]>) -> Result<(), StoreError> {
    match value {
        Some(bytes) => {
            data.extend_from_slice(&field_length(bytes.len())?.to_be_bytes());
            data.extend_from_slice(bytes);
        }
        None => data.extend_from_slice(&(-1_i32).to_be_bytes()),
    }
    Ok(())
}

fn field_length(length: usize) -> Result<i32, StoreError> {
    i32::try_from(length).map_err(|_| StoreError::Corrupt(format!("a {length}-byte field")))
}

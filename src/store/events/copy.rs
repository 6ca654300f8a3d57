//! Binary `COPY` of a batch's events.

use sqlx::PgConnection;

use super::StoredEvent;
use super::write::relation;
use crate::store::StoreError;

/// The columns [`copy_events`] fills, in the order of its rows. `write_batch`, `fast_append`
/// and migration 0015 list them too: `tests::event_column_lists_agree` holds the copies
/// together.
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

/// The events column list is written four times: [`COPY_EVENTS`], the INSERT of
/// `write_batch` and its binds, the binds of `fast_append`, and the INSERT in
/// `writer_append` (migration 0015, which cannot change). sqlx's macros need literal SQL, so
/// they cannot share one constant; this test holds the copies together instead.
#[cfg(test)]
mod tests {
    use super::*;

    const WRITE_RS: &str = include_str!("write.rs");
    const WRITER_APPEND: &str =
        include_str!("../../../migrations/0015_writer_append_checks_in_writes.sql");

    /// The comma-separated names between the `(` that follows `after` and its `)`.
    fn list_after<'a>(text: &'a str, after: &str) -> Vec<&'a str> {
        let start = text.find(after).expect("marker present") + after.len();
        let rest = &text[start..];
        let open = rest.find('(').expect("an opening parenthesis") + 1;
        let close = rest[open..].find(')').expect("a closing parenthesis") + open;
        rest[open..close]
            .split(',')
            .map(|name| name.trim().trim_end_matches('\\').trim())
            .collect()
    }

    /// The `&columns.NAME` binds of the function starting at `marker`, in order, with the
    /// struct field `kind` named as its column `type`.
    fn binds<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
        let start = text.find(marker).expect("function present");
        let body = &text[start..];
        let end = body[1..].find("\npub ").map_or(body.len(), |end| end + 1);
        body[..end]
            .split("&columns.")
            .skip(1)
            .map(|rest| {
                let name = rest
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or_default();
                if name == "kind" { "type" } else { name }
            })
            .collect()
    }

    #[test]
    fn event_column_lists_agree() {
        let copy = list_after(COPY_EVENTS, "COPY events");
        assert_eq!(copy.len(), 17, "{copy:?}");

        let insert = list_after(WRITE_RS, "INSERT INTO events");
        assert_eq!(insert, copy, "write_batch's INSERT and COPY_EVENTS");
        // write_batch's UNNEST takes $1..$15 and then $23, $24: its column binds, in bind
        // order, are in column order.
        assert_eq!(
            binds(WRITE_RS, "pub async fn write_batch"),
            copy,
            "write_batch's binds"
        );

        // The fast path writes plain messages: the columns it leaves out take their defaults.
        let fast = list_after(WRITER_APPEND, "INSERT INTO events");
        assert_eq!(
            binds(WRITE_RS, "pub async fn fast_append"),
            fast,
            "fast_append's binds and writer_append's INSERT"
        );
        let mut rest = copy.iter();
        assert!(
            fast.iter().all(|column| rest.any(|c| c == column)),
            "writer_append's columns in COPY_EVENTS' order: {fast:?}"
        );
        let left_out: Vec<&str> = copy
            .iter()
            .copied()
            .filter(|column| !fast.contains(column))
            .collect();
        assert_eq!(
            left_out,
            [
                "state_key",
                "replaces_state",
                "redacts",
                "backfilled",
                "silent"
            ]
        );
    }

    #[test]
    fn copy_rows_have_a_field_per_column() {
        let event = StoredEvent {
            stream: 1,
            topo: 1,
            event_id: "$e".try_into().expect("valid"),
            room_id: "!r:one.example".try_into().expect("valid"),
            sender: "@u:one.example".try_into().expect("valid"),
            kind: "m.room.message".into(),
            state_key: None,
            origin_server_ts: 1,
            content: serde_json::Map::new(),
            replaces_state: None,
            redacts: None,
            redacted_by: None,
            txn: None,
        };
        let data = copy_data(&[event], &[], &[]).expect("encodes");
        // Signature (11 bytes), flags and header extension length, then the row's field count.
        let count = i16::from_be_bytes([data[19], data[20]]);
        let columns = list_after(COPY_EVENTS, "COPY events").len();
        assert_eq!(usize::try_from(count).ok(), Some(columns));
    }
}

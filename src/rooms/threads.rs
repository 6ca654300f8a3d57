//! The thread list of a local room (`GET /v1/rooms/{roomId}/threads`), as Synapse's
//! `RelationsHandler.get_threads` answers it: thread roots by their latest reply, newest
//! first, `limit` per page (`limit + 1` read to know whether there is a next page); with
//! `include=participated` only threads the reader started or replied in, filtered *after*
//! the page is cut, so such a page may hold fewer than `limit` (Synapse's too). Roots the
//! reader may not see are left out; each root carries its bundled thread summary.
//!
//! `next_batch` is Synapse's format, `{topo}_{stream}` of the page's last thread's latest
//! reply; only ever handed back to us (the room ID in the path routes it here).

use ruma::OwnedRoomId;
use serde_json::{Value, json};

use super::RoomError;
use super::service::Rooms;
use crate::auth::requester::Requester;
use crate::store;

/// `include` of the thread list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    All,
    Participated,
}

/// A thread list position, `{topo}_{stream}`.
pub fn parse_from(text: &str) -> Result<(i64, i64), RoomError> {
    text.split_once('_')
        .and_then(|(topo, stream)| Some((topo.parse().ok()?, stream.parse().ok()?)))
        .ok_or_else(|| RoomError::InvalidParam(format!("Invalid threads token {text:?}")))
}

impl Rooms {
    /// `GET /v1/rooms/{roomId}/threads`.
    pub async fn threads(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        include: Include,
        limit: i64,
        from: Option<(i64, i64)>,
    ) -> Result<Value, RoomError> {
        let limit = limit.clamp(1, 1000);
        let mut conn = self.conn().await?;
        let (reader, _) = self.reader(&mut conn, requester, room_id).await?;
        let mut threads =
            store::threads::list(&mut conn, room_id.as_str(), from, limit + 1).await?;
        let page_len = usize::try_from(limit).unwrap_or(usize::MAX);
        let next = if threads.len() > page_len {
            threads.truncate(page_len);
            threads.last().map(|t| format!("{}_{}", t.topo, t.stream))
        } else {
            None
        };
        let roots: Vec<String> = threads.iter().map(|t| t.root.clone()).collect();
        let mut events = store::events::by_ids(&mut conn, &roots).await?;
        // In the threads' order, not the query's.
        events.sort_by_key(|e| {
            roots
                .iter()
                .position(|r| r == e.event.event_id.as_str())
                .unwrap_or(usize::MAX)
        });
        if include == Include::Participated {
            let replied = store::threads::participated(
                &mut conn,
                room_id.as_str(),
                &roots,
                requester.user_id.as_str(),
            )
            .await?;
            events.retain(|e| {
                e.event.sender == requester.user_id
                    || replied.iter().any(|r| r == e.event.event_id.as_str())
            });
        }
        events.retain(|e| Self::visible(&reader, requester, &e.event));
        let mut chunk = self
            .serve_as(
                &mut conn,
                requester,
                &reader,
                events,
                super::read::Served::Filtered,
            )
            .await?;
        // Synapse serialises the thread list without the requester: no `transaction_id`.
        for root in &mut chunk {
            if let Some(unsigned) = root.get_mut("unsigned").and_then(Value::as_object_mut) {
                unsigned.remove("transaction_id");
            }
        }
        let mut answer = json!({ "chunk": chunk });
        if let Some(next) = next {
            answer["next_batch"] = json!(next);
        }
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse() {
        assert_eq!(parse_from("12_34").ok(), Some((12, 34)));
        assert_eq!(parse_from("-3_7").ok(), Some((-3, 7)));
        assert!(parse_from("12").is_err());
        assert!(parse_from("a_b").is_err());
    }
}

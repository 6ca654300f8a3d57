//! `GET /v1/rooms/{roomId}/hierarchy` of a local space, spanning both worlds: the walk is
//! Synapse's (`RoomSummaryHandler.get_room_hierarchy`) — depth first from the root, children
//! in `m.space.child` order (`order`, then `origin_server_ts`, then state key), only children
//! whose `via` is a non-empty list, only rooms the requester may preview, each room once —
//! and each room's entry comes from its own world: a local room's from its current state,
//! a Synapse room's from Synapse's own hierarchy answer for that room alone (`max_depth=0`,
//! asked with the requester's token, so Synapse applies its own access rules).
//!
//! Not yet: `from`/`next_batch` paging (the first `limit` rooms are answered), and the
//! reverse direction (a Synapse space's hierarchy, answered by Synapse, leaves out local
//! children it does not know).

use std::collections::HashSet;

use ruma::OwnedRoomId;
use serde_json::{Value, json};

use super::RoomError;
use super::service::Rooms;
use crate::auth::requester::Requester;
use crate::store;

/// What a hierarchy request asks for.
#[derive(Debug, Clone, Copy)]
pub struct HierarchyRequest {
    pub suggested_only: bool,
    pub max_depth: Option<i64>,
    pub limit: usize,
}

/// `m.space.child` events of a room, stripped, in Synapse's order, with a non-empty `via`.
fn children_state(state: &[store::events::EventWithPrev]) -> Vec<Value> {
    let mut children: Vec<&store::events::StoredEvent> = state
        .iter()
        .map(|e| &e.event)
        .filter(|e| e.kind == "m.space.child")
        .filter(|e| {
            e.content
                .get("via")
                .and_then(Value::as_array)
                .is_some_and(|via| !via.is_empty())
        })
        .collect();
    // Synapse's `_child_events_comparison_key`: a valid `order` string first (by it),
    // then by timestamp, then state key.
    let order = |e: &store::events::StoredEvent| {
        e.content
            .get("order")
            .and_then(Value::as_str)
            .filter(|o| o.len() <= 50 && o.chars().all(|c| (' '..='~').contains(&c)))
            .map(str::to_owned)
    };
    children.sort_by(|a, b| {
        let (oa, ob) = (order(a), order(b));
        (oa.is_none(), oa, a.origin_server_ts, a.state_key.clone()).cmp(&(
            ob.is_none(),
            ob,
            b.origin_server_ts,
            b.state_key.clone(),
        ))
    });
    children
        .into_iter()
        .map(|e| {
            json!({
                "type": e.kind,
                "state_key": e.state_key,
                "content": e.content,
                "sender": e.sender,
                "origin_server_ts": e.origin_server_ts,
            })
        })
        .collect()
}

/// Whether a stripped `m.space.child` event marks its child suggested.
fn is_suggested(child: &Value) -> bool {
    child
        .pointer("/content/suggested")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

impl Rooms {
    /// The hierarchy of the local space `root` for `requester` (`token`: theirs, for
    /// Synapse's rooms).
    pub async fn hierarchy(
        &self,
        requester: &Requester,
        token: &str,
        root: &OwnedRoomId,
        request: HierarchyRequest,
    ) -> Result<Value, RoomError> {
        let root_entry = match self.summary(requester, root).await {
            Ok(entry) => entry,
            Err(RoomError::NotFound(_)) => {
                return Err(RoomError::Forbidden(format!(
                    "User {} not in room {root}, and room previews are disabled",
                    requester.user_id
                )));
            }
            Err(err) => return Err(err),
        };
        let mut rooms: Vec<Value> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        // Depth first: the stack's last entry is the next room.
        let mut stack: Vec<(String, i64, Option<Value>)> =
            vec![(root.to_string(), 0, Some(root_entry))];
        while let Some((room_id, depth, known)) = stack.pop() {
            if rooms.len() >= request.limit {
                break;
            }
            if !seen.insert(room_id.clone()) {
                continue;
            }
            let entry = match known {
                Some(entry) => Some(self.local_entry(&room_id, entry).await?),
                None => self.entry_of(requester, token, &room_id).await?,
            };
            let Some(mut entry) = entry else { continue };
            // With `suggested_only`, Synapse lists only the suggested children in each
            // room's `children_state` too.
            if request.suggested_only
                && let Some(children) = entry
                    .get_mut("children_state")
                    .and_then(Value::as_array_mut)
            {
                children.retain(is_suggested);
            }
            let children: Vec<Value> = entry
                .get("children_state")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            rooms.push(entry);
            if request.max_depth.is_some_and(|max| depth >= max) {
                continue;
            }
            for child in children.iter().rev() {
                if let Some(id) = child.get("state_key").and_then(Value::as_str)
                    && !seen.contains(id)
                {
                    stack.push((id.to_owned(), depth + 1, None));
                }
            }
        }
        Ok(json!({ "rooms": rooms }))
    }

    /// A local room's hierarchy entry from its summary: without `membership`, with its
    /// `children_state`.
    async fn local_entry(&self, room_id: &str, mut summary: Value) -> Result<Value, RoomError> {
        let mut conn = self.conn().await?;
        let state = store::events::current_state(&mut conn, room_id).await?;
        if let Some(object) = summary.as_object_mut() {
            object.remove("membership");
            object.insert(
                "children_state".into(),
                Value::Array(children_state(&state)),
            );
        }
        Ok(summary)
    }

    /// A child's entry: a local room's if it is ours and the requester may preview it,
    /// else Synapse's.
    async fn entry_of(
        &self,
        requester: &Requester,
        token: &str,
        room_id: &str,
    ) -> Result<Option<Value>, RoomError> {
        let Ok(id) = OwnedRoomId::try_from(room_id) else {
            return Ok(None);
        };
        let local = {
            let mut conn = self.conn().await?;
            store::rooms::get(&mut conn, room_id).await?.is_some()
        };
        if local {
            return match self.summary(requester, &id).await {
                Ok(summary) => Ok(Some(self.local_entry(room_id, summary).await?)),
                Err(RoomError::NotFound(_)) => Ok(None),
                Err(err) => Err(err),
            };
        }
        self.synapse
            .hierarchy_room(token, room_id)
            .await
            .map_err(|err| RoomError::Unreachable(err.to_string()))
    }
}

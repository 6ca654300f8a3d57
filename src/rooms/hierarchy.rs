//! `GET /v1/rooms/{roomId}/hierarchy` of a local space, spanning both worlds: the walk is
//! Synapse's (`RoomSummaryHandler.get_room_hierarchy`) — depth first from the root, children
//! in `m.space.child` order (`order`, then `origin_server_ts`, then state key), only children
//! whose `via` is a non-empty list, only rooms the requester may preview, each room once —
//! and each room's entry comes from its own world: a local room's from its current state,
//! a Synapse room's from Synapse's own hierarchy answer for that room alone (`max_depth=0`,
//! asked with the requester's token, so Synapse applies its own access rules).
//!
//! Paging: `next_batch` ([`PageToken`]) holds the request's parameters and how many rooms
//! were given already; the next page walks again from the root and skips them. The walk is
//! deterministic over unchanged state, so pages neither repeat nor lose a room (a space edited
//! between pages shifts them, as Synapse's stored queue does not). A token used by another
//! user or with other parameters is refused as Synapse refuses it. Synapse keeps the walk's queue server-side
//! instead; walking again costs the skipped rooms' reads (Synapse rooms are asked again), so
//! it suits the spaces bridges make (tens of rooms), not ten-thousand-room spaces.
//!
//! Not yet: the reverse direction (a Synapse space's hierarchy, answered by Synapse, leaves
//! out local children it does not know).

use std::collections::HashSet;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ruma::OwnedRoomId;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::RoomError;
use super::service::Rooms;
use crate::auth::requester::Requester;
use crate::store;

/// What a hierarchy request asks for.
#[derive(Debug, Clone)]
pub struct HierarchyRequest {
    pub suggested_only: bool,
    pub max_depth: Option<i64>,
    pub limit: usize,
    /// `from`: the `next_batch` of an earlier page, as the client sent it.
    pub from: Option<String>,
}

/// How our hierarchy `next_batch` tokens start.
const PAGE_TOKEN_PREFIX: &str = "hsh1_";

/// A hierarchy `next_batch`: the parameters the walk was asked with and how many rooms it
/// has given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageToken {
    pub requester: String,
    pub room_id: String,
    pub suggested_only: bool,
    pub max_depth: Option<i64>,
    pub given: usize,
}

impl PageToken {
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PAGE_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// `None` for a token that is not one of ours.
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.strip_prefix(PAGE_TOKEN_PREFIX)?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
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
        let skip = match request.from.as_deref() {
            None => 0,
            Some(text) => {
                // Synapse's wordings (`RoomSummaryHandler._get_room_hierarchy`).
                let token = PageToken::decode(text)
                    .ok_or_else(|| RoomError::InvalidParam("Unknown pagination token".into()))?;
                if token.requester != requester.user_id.as_str()
                    || token.room_id != root.as_str()
                    || token.suggested_only != request.suggested_only
                    || token.max_depth != request.max_depth
                {
                    return Err(RoomError::InvalidParam("Unknown pagination token".into()));
                }
                token.given
            }
        };
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
        // Rooms the walk has reached, those given on earlier pages included.
        let mut walked = 0usize;
        let mut seen: HashSet<String> = HashSet::new();
        // Depth first: the stack's last entry is the next room.
        let mut stack: Vec<(String, i64, Option<Value>)> =
            vec![(root.to_string(), 0, Some(root_entry))];
        while rooms.len() < request.limit {
            let Some((room_id, depth, known)) = stack.pop() else {
                break;
            };
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
            if walked >= skip {
                rooms.push(entry);
            }
            walked += 1;
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
        let mut answer = json!({ "rooms": rooms });
        // As Synapse: a next page when rooms are left to walk (some may turn out not to be
        // shown, so the last page can be empty).
        if stack.iter().any(|(id, _, _)| !seen.contains(id)) {
            answer["next_batch"] = json!(
                PageToken {
                    requester: requester.user_id.to_string(),
                    room_id: root.to_string(),
                    suggested_only: request.suggested_only,
                    max_depth: request.max_depth,
                    given: walked,
                }
                .encode()
            );
        }
        Ok(answer)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_refuse_strangers() {
        let token = PageToken {
            requester: "@a:x".into(),
            room_id: "!hs_a:x".into(),
            suggested_only: true,
            max_depth: Some(2),
            given: 7,
        };
        assert_eq!(PageToken::decode(&token.encode()), Some(token));
        for stranger in ["", "hsh1_", "hsh1_!!", "abc", "hsb1_e30"] {
            assert_eq!(PageToken::decode(stranger), None, "{stranger}");
        }
    }
}

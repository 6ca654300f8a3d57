//! `POST /search` across both worlds: Synapse's answer for its rooms and ours for the local
//! rooms ([`crate::rooms::search`]) merged into one answer, ordered as Synapse orders its own.
//!
//! - `order_by: rank`: both halves rank with `ts_rank_cd` over the same `english` vectors
//!   (migration 0025), so one descending order holds both; the first `limit` are kept.
//!   Synapse pages no `rank` search (it sends no `next_batch`), nor do we.
//! - `order_by: recent`: newest first by `origin_server_ts`, both halves interleaved. The
//!   `next_batch` we hand out ([`Batch`], `hsb1_…`) carries each half's own position, so a
//!   page continues exactly where the previous one stopped on both sides, whatever share of
//!   the page each had. Synapse's position is a timestamp: Synapse's own batch tokens are
//!   `base64("{group}\n{key}\n{ts},{stream}")` and read "before (ts, stream)"; we ask from
//!   `(ts, i64::MAX)` — everything at or before `ts` — and drop the results at that `ts`
//!   already given (their IDs are in the token), since Synapse's stream orderings are not in
//!   the events it serves. Ours is `(origin_server_ts, stream)`.
//! - `groups.room_id` (both orders) and `groups.sender` (`rank`), `count` (the sum),
//!   `highlights` (the union), `state` (both halves' rooms) are rebuilt over the merged page;
//!   each room group's `next_batch` pages that room alone (the other world is done).
//!
//! May import: `rooms` (result types), `serde`, nothing about HTTP.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::rooms::search::LocalHit;

/// How our `next_batch` tokens start (Synapse's are base64 of `all…` or `room_id…`: `YWxs`,
/// `cm9v`; a token is never mistaken for the other's).
pub const BATCH_PREFIX: &str = "hsb1_";

/// One half's paging position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Side<T> {
    /// From the newest match.
    Start,
    /// Strictly after (older than) this position.
    At(T),
    /// Nothing left on this side.
    Done,
}

/// Synapse's position: everything at or before `ts`, less the events at `ts` already given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SynapseAt {
    pub ts: i64,
    pub seen: Vec<String>,
}

/// A `recent` search's `next_batch`: both halves' positions, and the room a room group's
/// token stays in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    pub synapse: Side<SynapseAt>,
    /// `(origin_server_ts, stream)` of the last local result given.
    pub local: Side<(i64, i64)>,
    /// Synapse's last `count`, answered again once Synapse is no longer asked.
    #[serde(default)]
    pub synapse_count: i64,
}

impl Batch {
    /// The first page: both halves from their start.
    pub fn start() -> Self {
        Self {
            room: None,
            synapse: Side::Start,
            local: Side::Start,
            synapse_count: 0,
        }
    }

    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{BATCH_PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// `None` for a token that is not ours (a Synapse token, or garbage).
    pub fn decode(text: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.strip_prefix(BATCH_PREFIX)?)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// The `batch` to give Synapse, when Synapse is to be asked at all.
    pub fn synapse_batch(&self) -> Option<Option<String>> {
        let (group, key) = match &self.room {
            Some(room) => ("room_id", room.as_str()),
            None => ("all", ""),
        };
        match &self.synapse {
            Side::Done => None,
            Side::Start if self.room.is_none() => Some(None),
            Side::Start => Some(Some(STANDARD_NO_PAD.encode(format!("{group}\n{key}\n")))),
            Side::At(at) => Some(Some(STANDARD_NO_PAD.encode(format!(
                "{group}\n{key}\n{},{}",
                at.ts,
                i64::MAX
            )))),
        }
    }

    /// How many more results to ask Synapse for, so that the ones given before (at the
    /// boundary timestamp) do not take the page's places.
    pub fn synapse_extra(&self) -> usize {
        match &self.synapse {
            Side::At(at) => at.seen.len(),
            _ => 0,
        }
    }
}

/// Synapse's half, as it answered (`search_categories.room_events`).
#[derive(Debug, Clone, Default)]
pub struct SynapseHalf {
    pub results: Vec<Value>,
    pub count: i64,
    pub highlights: Vec<Value>,
    pub state: Map<String, Value>,
    /// Synapse gave a `next_batch`: it has more after its last result.
    pub more: bool,
}

impl SynapseHalf {
    /// Reads Synapse's `room_events` object; an absent half (Synapse not asked) is empty.
    pub fn from_answer(room_events: Option<&Value>) -> Self {
        let Some(events) = room_events else {
            return Self::default();
        };
        let list = |key: &str| {
            events
                .get(key)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        Self {
            results: list("results"),
            count: events.get("count").and_then(Value::as_i64).unwrap_or(0),
            highlights: list("highlights"),
            state: events
                .get("state")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
            more: events.get("next_batch").is_some_and(|b| !b.is_null()),
        }
    }
}

/// What the merged answer is built from.
#[derive(Debug, Clone)]
pub struct MergeRequest {
    pub recent: bool,
    pub limit: usize,
    pub group_by_room: bool,
    pub group_by_sender: bool,
    /// The position this page started from (`recent`).
    pub from: Batch,
    /// The local half has nothing after its last hit (`recent`).
    pub local_exhausted: bool,
}

/// One result of either half, with what ordering and grouping need.
struct Entry {
    rank: f64,
    ts: i64,
    room_id: String,
    sender: String,
    event_id: String,
    value: Value,
    /// `Some(position)` for a local result.
    local: Option<(i64, i64)>,
}

fn synapse_entry(result: Value) -> Entry {
    let event = result.get("result");
    let text = |key: &str| {
        event
            .and_then(|e| e.get(key))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    Entry {
        rank: result.get("rank").and_then(Value::as_f64).unwrap_or(0.0),
        ts: event
            .and_then(|e| e.get("origin_server_ts"))
            .and_then(Value::as_i64)
            .unwrap_or(0),
        room_id: text("room_id"),
        sender: text("sender"),
        event_id: text("event_id"),
        value: result,
        local: None,
    }
}

fn local_entry(hit: LocalHit) -> Entry {
    Entry {
        rank: hit.rank,
        ts: hit.position.0,
        local: Some(hit.position),
        value: json!({"rank": hit.rank, "result": hit.event, "context": hit.context}),
        room_id: hit.room_id,
        sender: hit.sender,
        event_id: hit.event_id,
    }
}

/// Merges both halves into Synapse's `room_events` object.
pub fn merge(
    request: &MergeRequest,
    synapse: SynapseHalf,
    local: Vec<LocalHit>,
    local_count: i64,
    local_highlights: Vec<String>,
    local_state: std::collections::BTreeMap<String, Vec<Value>>,
) -> Value {
    let seen: Vec<String> = match &request.from.synapse {
        Side::At(at) => at.seen.clone(),
        _ => Vec::new(),
    };
    let theirs: Vec<Entry> = synapse
        .results
        .into_iter()
        .map(synapse_entry)
        .filter(|e| !seen.contains(&e.event_id))
        .collect();
    let theirs_len = theirs.len();
    let ours_len = local.len();
    let ours: Vec<Entry> = local.into_iter().map(local_entry).collect();

    // Both halves arrive in the requested order; interleave them (Synapse's first on ties).
    let before = |a: &Entry, b: &Entry| {
        if request.recent {
            a.ts >= b.ts
        } else {
            a.rank >= b.rank
        }
    };
    let mut page: Vec<Entry> = Vec::with_capacity(request.limit);
    let mut theirs = theirs.into_iter().peekable();
    let mut ours = ours.into_iter().peekable();
    while page.len() < request.limit {
        let take_theirs = match (theirs.peek(), ours.peek()) {
            (Some(a), Some(b)) => before(a, b),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_theirs {
            theirs.next()
        } else {
            ours.next()
        };
        if let Some(entry) = next {
            page.push(entry);
        }
    }

    let next = request
        .recent
        .then(|| {
            let synapse_side = (synapse.more, synapse.count);
            next_position(request, &page, (theirs_len, ours_len), synapse_side, &seen)
        })
        .flatten();

    let mut room_groups = Map::new();
    let mut sender_groups = Map::new();
    for entry in &page {
        let group = room_groups.entry(entry.room_id.clone()).or_insert_with(|| {
            if request.recent {
                json!({"results": []})
            } else {
                json!({"results": [], "order": entry.rank})
            }
        });
        if let Some(list) = group.get_mut("results").and_then(Value::as_array_mut) {
            list.push(json!(entry.event_id));
        }
        if !request.recent {
            let group = sender_groups
                .entry(entry.sender.clone())
                .or_insert_with(|| json!({"results": [], "order": entry.rank}));
            if let Some(list) = group.get_mut("results").and_then(Value::as_array_mut) {
                list.push(json!(entry.event_id));
            }
        }
    }
    if let Some(batch) = &next {
        for (room, group) in room_groups.iter_mut() {
            let local_room = page.iter().any(|e| &e.room_id == room && e.local.is_some());
            let token = Batch {
                room: Some(room.clone()),
                synapse: if local_room {
                    Side::Done
                } else {
                    batch.synapse.clone()
                },
                local: if local_room {
                    batch.local.clone()
                } else {
                    Side::Done
                },
                synapse_count: batch.synapse_count,
            };
            group["next_batch"] = json!(token.encode());
        }
    }

    let mut highlights: Vec<Value> = synapse.highlights;
    for word in local_highlights {
        let word = Value::String(word);
        if !highlights.contains(&word) {
            highlights.push(word);
        }
    }
    let mut answer = json!({
        "results": page.into_iter().map(|e| e.value).collect::<Vec<_>>(),
        "count": synapse.count + local_count,
        "highlights": highlights,
    });
    let mut state = synapse.state;
    for (room, events) in local_state {
        state.insert(room, Value::Array(events));
    }
    if !state.is_empty() {
        answer["state"] = Value::Object(state);
    }
    let mut groups = Map::new();
    if request.group_by_room && !room_groups.is_empty() {
        groups.insert("room_id".into(), Value::Object(room_groups));
    }
    if request.group_by_sender && !sender_groups.is_empty() {
        groups.insert("sender".into(), Value::Object(sender_groups));
    }
    if !groups.is_empty() {
        answer["groups"] = Value::Object(groups);
    }
    if let Some(batch) = next {
        answer["next_batch"] = json!(batch.encode());
    }
    answer
}

/// Where the next `recent` page starts, when there is one: Synapse gives a `next_batch`
/// whenever a page is full; we do too, unless both halves are done.
fn next_position(
    request: &MergeRequest,
    page: &[Entry],
    (theirs_len, ours_len): (usize, usize),
    (synapse_more, synapse_count): (bool, i64),
    seen: &[String],
) -> Option<Batch> {
    if page.len() < request.limit {
        return None;
    }
    let theirs_taken: Vec<&Entry> = page.iter().filter(|e| e.local.is_none()).collect();
    let ours_taken: Vec<&Entry> = page.iter().filter(|e| e.local.is_some()).collect();
    let synapse = match theirs_taken.last() {
        _ if matches!(request.from.synapse, Side::Done) => Side::Done,
        _ if theirs_taken.len() == theirs_len && !synapse_more => Side::Done,
        Some(last) => {
            let mut at_ts: Vec<String> = theirs_taken
                .iter()
                .filter(|e| e.ts == last.ts)
                .map(|e| e.event_id.clone())
                .collect();
            // Results at the same timestamp given on earlier pages stay given.
            if let Side::At(old) = &request.from.synapse
                && old.ts == last.ts
            {
                at_ts.extend(seen.iter().cloned());
            }
            Side::At(SynapseAt {
                ts: last.ts,
                seen: at_ts,
            })
        }
        None => request.from.synapse.clone(),
    };
    let local = match ours_taken.last() {
        _ if matches!(request.from.local, Side::Done) => Side::Done,
        _ if ours_taken.len() == ours_len && request.local_exhausted => Side::Done,
        Some(last) => Side::At(last.local.unwrap_or_default()),
        None => request.from.local.clone(),
    };
    if synapse == Side::Done && local == Side::Done {
        return None;
    }
    Some(Batch {
        room: request.from.room.clone(),
        synapse,
        local,
        synapse_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synapse_result(id: &str, ts: i64, rank: f64) -> Value {
        json!({"rank": rank, "result": {"event_id": id, "origin_server_ts": ts,
            "room_id": "!s:hs", "sender": "@a:hs"}, "context": {}})
    }

    fn local_hit(id: &str, ts: i64, stream: i64, rank: f64) -> LocalHit {
        LocalHit {
            rank,
            position: (ts, stream),
            room_id: "!hs_l:hs".into(),
            sender: "@b:hs".into(),
            event_id: id.into(),
            event: json!({"event_id": id, "origin_server_ts": ts}),
            context: json!({}),
        }
    }

    fn request(recent: bool, limit: usize, from: Batch, local_exhausted: bool) -> MergeRequest {
        MergeRequest {
            recent,
            limit,
            group_by_room: true,
            group_by_sender: true,
            from,
            local_exhausted,
        }
    }

    fn ids(answer: &Value) -> Vec<String> {
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["result"]["event_id"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn batches_round_trip_and_are_not_synapse_tokens() {
        let batch = Batch {
            room: Some("!r:hs".into()),
            synapse: Side::At(SynapseAt {
                ts: 5,
                seen: vec!["$a".into()],
            }),
            local: Side::At((5, 9)),
            synapse_count: 3,
        };
        let text = batch.encode();
        assert!(text.starts_with(BATCH_PREFIX));
        assert_eq!(Batch::decode(&text), Some(batch.clone()));
        assert_eq!(Batch::decode("YWxsCgoxLDI"), None);
        let asked = batch.synapse_batch().unwrap().unwrap();
        let decoded = String::from_utf8(STANDARD_NO_PAD.decode(asked).unwrap()).unwrap();
        assert_eq!(decoded, format!("room_id\n!r:hs\n5,{}", i64::MAX));
        assert_eq!(Batch::start().synapse_batch(), Some(None));
    }

    #[test]
    fn rank_merges_by_rank_and_groups() {
        let synapse = SynapseHalf {
            results: vec![
                synapse_result("$s1", 10, 0.5),
                synapse_result("$s2", 20, 0.1),
            ],
            count: 2,
            highlights: vec![json!("hello")],
            ..SynapseHalf::default()
        };
        let local = vec![local_hit("$l1", 15, 1, 0.3)];
        let answer = merge(
            &request(false, 10, Batch::start(), true),
            synapse,
            local,
            1,
            vec!["hello".into(), "world".into()],
            Default::default(),
        );
        assert_eq!(ids(&answer), ["$s1", "$l1", "$s2"]);
        assert_eq!(answer["count"], 3);
        assert_eq!(answer["highlights"], json!(["hello", "world"]));
        assert_eq!(answer["groups"]["room_id"]["!hs_l:hs"]["order"], json!(0.3));
        assert_eq!(
            answer["groups"]["sender"]["@a:hs"]["results"],
            json!(["$s1", "$s2"])
        );
        assert!(answer.get("next_batch").is_none());
    }

    #[test]
    fn recent_pages_both_sides_without_loss_or_repeat() {
        // Synapse: ts 100, 90, 90, 70; local: ts 95, 90, 80, 60. Pages of 2.
        let all_synapse = [("$s100", 100), ("$s90a", 90), ("$s90b", 90), ("$s70", 70)];
        let all_local = [
            ("$l95", 95, 4),
            ("$l90", 90, 3),
            ("$l80", 80, 2),
            ("$l60", 60, 1),
        ];
        let mut from = Batch::start();
        let mut got = Vec::new();
        for _ in 0..10 {
            // What Synapse would answer from `from` (its limit raised by the seen count).
            let (synapse_results, more) = match &from.synapse {
                Side::Done => (Vec::new(), false),
                side => {
                    let at = match side {
                        Side::At(at) => at.ts,
                        _ => i64::MAX,
                    };
                    let limit = 2 + from.synapse_extra();
                    let rest: Vec<_> = all_synapse.iter().filter(|(_, ts)| *ts <= at).collect();
                    let page: Vec<Value> = rest
                        .iter()
                        .take(limit)
                        .map(|(id, ts)| synapse_result(id, *ts, 0.1))
                        .collect();
                    (page, rest.len() > limit)
                }
            };
            let (local, exhausted) = match &from.local {
                Side::Done => (Vec::new(), true),
                side => {
                    let before = match side {
                        Side::At(p) => *p,
                        _ => (i64::MAX, i64::MAX),
                    };
                    let rest: Vec<_> = all_local
                        .iter()
                        .filter(|(_, ts, s)| (*ts, *s) < before)
                        .collect();
                    let page: Vec<LocalHit> = rest
                        .iter()
                        .take(2)
                        .map(|(id, ts, s)| local_hit(id, *ts, *s, 0.1))
                        .collect();
                    (page, rest.len() <= 2)
                }
            };
            let answer = merge(
                &request(true, 2, from.clone(), exhausted),
                SynapseHalf {
                    results: synapse_results,
                    more,
                    ..SynapseHalf::default()
                },
                local,
                0,
                Vec::new(),
                Default::default(),
            );
            got.extend(ids(&answer));
            match answer.get("next_batch").and_then(Value::as_str) {
                Some(token) => from = Batch::decode(token).unwrap(),
                None => break,
            }
        }
        assert_eq!(
            got,
            [
                "$s100", "$l95", "$s90a", "$s90b", "$l90", "$l80", "$s70", "$l60"
            ]
        );
    }
}

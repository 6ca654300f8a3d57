//! Putting Synapse's answer and the local half together: lists over the merged order, the
//! rooms of both, the extensions, and what the connection remembers of Synapse's side.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::conn::{Snapshot, SynapseList, SynapseRoom};
use super::local::LocalList;
use crate::devices::LocalLists;

/// Records what Synapse's answer says about its rooms and lists, and returns its `pos`.
pub fn learn(snapshot: &mut Snapshot, answer: &Map<String, Value>) -> Option<String> {
    if let Some(rooms) = answer.get("rooms").and_then(Value::as_object) {
        for (room_id, room) in rooms {
            let known = snapshot.synapse_rooms.entry(room_id.clone()).or_default();
            let newest = room
                .get("timeline")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|e| e.get("origin_server_ts").and_then(Value::as_i64))
                .max();
            if let Some(ts) = newest {
                known.ts = Some(known.ts.map_or(ts, |old| old.max(ts)));
            }
        }
    }
    if let Some(lists) = answer.get("lists").and_then(Value::as_object) {
        for (name, list) in lists {
            let count = list.get("count").and_then(Value::as_u64).unwrap_or(0);
            let room_ids = list
                .get("ops")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|op| op.get("room_ids").and_then(Value::as_array))
                .flatten()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect();
            snapshot
                .synapse_lists
                .insert(name.clone(), SynapseList { count, room_ids });
        }
    }
    let direct = answer
        .get("extensions")
        .and_then(|e| e.get("account_data"))
        .and_then(|a| a.get("global"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|e| e.get("type").and_then(Value::as_str) == Some("m.direct"))
        .and_then(|e| e.get("content"));
    if let Some(content) = direct {
        snapshot.direct = Some(direct_rooms(content));
    }
    answer.get("pos").and_then(Value::as_str).map(str::to_owned)
}

/// The rooms of an `m.direct` content (user → rooms).
pub fn direct_rooms(content: &Value) -> std::collections::HashSet<String> {
    content
        .as_object()
        .into_iter()
        .flat_map(|users| users.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect()
}

/// One list over both sides: `count` and an `ops` entry per requested range of `merged`.
pub fn list(ranges: &[(u64, u64)], count: u64, merged: &[(String, i64)]) -> Value {
    let ops: Vec<Value> = ranges
        .iter()
        .map(|(start, end)| {
            // Inclusive on both ends; an inverted range selects nothing.
            let take = end.checked_sub(*start).map_or(0, |span| {
                usize::try_from(span)
                    .unwrap_or(usize::MAX)
                    .saturating_add(1)
            });
            let start = usize::try_from(*start).unwrap_or(usize::MAX);
            let room_ids: Vec<&str> = merged
                .iter()
                .skip(start)
                .take(take)
                .map(|(room, _)| room.as_str())
                .collect();
            json!({ "op": "SYNC", "range": [start, end], "room_ids": room_ids })
        })
        .collect();
    json!({ "count": count, "ops": ops })
}

/// A list's `count`: the two sets are disjoint (local room IDs never reach Synapse).
pub fn count(synapse: Option<&SynapseList>, local: Option<&LocalList>) -> u64 {
    synapse.map_or(0, |s| s.count) + local.map_or(0, |l| l.count)
}

/// Synapse's window rooms and the local window, newest first, each with its merge key.
///
/// Keys are `origin_server_ts` of the event each room is ordered by. Synapse's own order is
/// kept among its rooms (a room's key is capped by the one before it; an unknown key takes
/// the one before it) unless Synapse's window covered its whole list, in which case Synapse
/// did not sort it and its rooms are sorted by their known keys.
pub fn merged_order(
    synapse: Option<&SynapseList>,
    synapse_rooms: &HashMap<String, SynapseRoom>,
    local: Option<&LocalList>,
    local_ts: &HashMap<String, i64>,
) -> Vec<(String, i64)> {
    let empty = SynapseList::default();
    let synapse = synapse.unwrap_or(&empty);
    let known = |room: &str| synapse_rooms.get(room).and_then(|r| r.ts);
    let whole = usize::try_from(synapse.count).unwrap_or(usize::MAX) <= synapse.room_ids.len();
    let mut theirs: Vec<(i64, &str)> = Vec::with_capacity(synapse.room_ids.len());
    if whole {
        theirs.extend(
            synapse
                .room_ids
                .iter()
                .map(|r| (known(r).unwrap_or(i64::MIN), r.as_str())),
        );
        theirs.sort_by_key(|(ts, _)| std::cmp::Reverse(*ts));
    } else {
        let mut cap = i64::MAX;
        for room in &synapse.room_ids {
            cap = known(room).map_or(cap, |ts| ts.min(cap));
            theirs.push((cap, room.as_str()));
        }
    }
    let mut ours: Vec<(i64, &str)> = Vec::new();
    let mut cap = i64::MAX;
    for room in local.map(|l| l.top.as_slice()).unwrap_or_default() {
        cap = local_ts.get(room).map_or(cap, |ts| (*ts).min(cap));
        ours.push((cap, room.as_str()));
    }
    let mut merged = Vec::with_capacity(theirs.len() + ours.len());
    let (mut a, mut b) = (theirs.into_iter().peekable(), ours.into_iter().peekable());
    loop {
        let take_theirs = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => x.0 >= y.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_theirs { a.next() } else { b.next() };
        if let Some((key, room)) = next {
            merged.push((room.to_owned(), key));
        }
    }
    merged
}

/// Merges the local device lists into Synapse's `e2ee.device_lists` (`changed` the union,
/// `left` without local co-members: [`crate::devices::merge`], as `/sync` merges them).
pub fn device_lists(extensions: &mut Map<String, Value>, local: LocalLists) {
    let e2ee = extensions.entry("e2ee").or_insert_with(|| json!({}));
    let Some(e2ee) = e2ee.as_object_mut() else {
        return;
    };
    let merged = crate::devices::merge(e2ee.get("device_lists"), local);
    e2ee.insert("device_lists".into(), merged);
}

/// Adds per-room extension data of local rooms to Synapse's `extensions` object.
pub fn extend_rooms(extensions: &mut Map<String, Value>, name: &str, rooms: Map<String, Value>) {
    if rooms.is_empty() {
        return;
    }
    let ext = extensions.entry(name).or_insert_with(|| json!({}));
    let Some(ext) = ext.as_object_mut() else {
        return;
    };
    if name == "account_data" {
        ext.entry("global").or_insert_with(|| json!([]));
    }
    let target = ext.entry("rooms").or_insert_with(|| json!({}));
    if let Some(target) = target.as_object_mut() {
        target.extend(rooms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn synapse(count: u64, rooms: &[&str]) -> SynapseList {
        SynapseList {
            count,
            room_ids: rooms.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn known(pairs: &[(&str, i64)]) -> HashMap<String, SynapseRoom> {
        pairs
            .iter()
            .map(|(r, ts)| (r.to_string(), SynapseRoom { ts: Some(*ts) }))
            .collect()
    }

    fn rooms(merged: &[(String, i64)]) -> Vec<&str> {
        merged.iter().map(|(r, _)| r.as_str()).collect()
    }

    fn local(rooms: &[(&str, i64)]) -> (LocalList, HashMap<String, i64>) {
        (
            LocalList {
                count: rooms.len() as u64,
                top: rooms.iter().map(|(r, _)| r.to_string()).collect(),
            },
            rooms.iter().map(|(r, t)| (r.to_string(), *t)).collect(),
        )
    }

    #[test]
    fn both_sides_interleave_by_recency() {
        let theirs = synapse(10, &["!s1", "!s2", "!s3"]);
        // !s3 is in Synapse's list, but none of its events has been seen.
        let k = known(&[("!s1", 900), ("!s2", 500)]);
        let (ours, ts) = local(&[("!l1", 950), ("!l2", 600), ("!l3", 50)]);
        let merged = merged_order(Some(&theirs), &k, Some(&ours), &ts);
        assert_eq!(rooms(&merged), ["!l1", "!s1", "!l2", "!s2", "!s3", "!l3"]);
        // Keys: each room's own, Synapse's unknown !s3 capped by !s2.
        let keys: Vec<i64> = merged.iter().map(|(_, k)| *k).collect();
        assert_eq!(keys, [950, 900, 600, 500, 500, 50]);
        let value = list(&[(0, 2)], count(Some(&theirs), Some(&ours)), &merged);
        assert_eq!(value["count"], 13);
        assert_eq!(value["ops"][0]["room_ids"], json!(["!l1", "!s1", "!l2"]));
        assert_eq!(value["ops"][0]["range"], json!([0, 2]));
    }

    #[test]
    fn synapse_order_stands_when_it_sorted() {
        // Synapse sorted by stream ordering; a clock-skewed ts must not reorder its rooms.
        let theirs = synapse(10, &["!s1", "!s2", "!s3"]);
        let k = known(&[("!s1", 100), ("!s2", 900)]);
        let (ours, ts) = local(&[("!l1", 500), ("!l2", 50)]);
        let merged = merged_order(Some(&theirs), &k, Some(&ours), &ts);
        assert_eq!(rooms(&merged), ["!l1", "!s1", "!s2", "!s3", "!l2"]);
    }

    #[test]
    fn an_unsorted_whole_list_is_sorted_by_known_keys() {
        let theirs = synapse(2, &["!old", "!new"]);
        let k = known(&[("!old", 100), ("!new", 900)]);
        let merged = merged_order(Some(&theirs), &k, None, &HashMap::new());
        assert_eq!(rooms(&merged), ["!new", "!old"]);
    }

    #[test]
    fn learns_synapse_lists_rooms_and_dms() {
        let answer = json!({
            "pos": "3/s10_1",
            "lists": {"all": {"count": 7, "ops": [{"op": "SYNC", "range": [0, 1], "room_ids": ["!a", "!b"]}]}},
            "rooms": {"!a": {"bump_stamp": 42, "timeline": [{"origin_server_ts": 5}, {"origin_server_ts": 9}]}},
            "extensions": {"account_data": {"global": [{"type": "m.direct", "content": {"@u:x": ["!a"]}}]}}
        });
        let mut snapshot = Snapshot::default();
        let pos = learn(&mut snapshot, answer.as_object().unwrap());
        assert_eq!(pos.as_deref(), Some("3/s10_1"));
        assert_eq!(snapshot.synapse_lists["all"].count, 7);
        assert_eq!(snapshot.synapse_rooms["!a"].ts, Some(9));
        assert!(snapshot.direct.unwrap().contains("!a"));
    }
}

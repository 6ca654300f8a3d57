//! The entries of the window rooms to send: timeline, `limited`/`prev_batch`/`num_live`,
//! required state, name, avatar, counts and heroes, or the invite state; and what the
//! connection then has of each room ([`Sent`]). The rooms' state and the relation probe
//! are read for all rooms at once; only a room that asks for wildcard state, a departed
//! room, or a timeline whose visibility hides many events reads on its own.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::{LocalInput, LocalPart, Steps, Wanted};
use crate::auth::requester::Requester;
use crate::rooms::RoomError;
use crate::rooms::read::Token;
use crate::rooms::service::Rooms;
use crate::rooms::visibility::Reader;
use crate::store;
use crate::store::events::EventWithPrev;
use crate::store::rooms::UserRoom;
use crate::sync::local::{client_events, state_events};
use crate::sync::sliding::conn::Sent;

/// Heroes of an unnamed room (Synapse sends up to 5).
const HEROES: i64 = 5;

/// The entries of the rooms to send, and their new [`Sent`] records.
pub(super) async fn entries(
    rooms: &Rooms,
    conn: &mut PgConnection,
    input: &LocalInput<'_>,
    to_send: &[(&Wanted<'_>, Option<i64>)],
    part: &mut LocalPart,
    steps: &mut Steps,
) -> Result<(), RoomError> {
    if to_send.is_empty() {
        return Ok(());
    }
    let user = input.requester.user_id.as_str();
    let ids: Vec<String> = to_send
        .iter()
        .map(|(w, _)| w.room.room_id.clone())
        .collect();
    let histories = store::events::reader_histories(conn, &ids, user).await?;
    steps.mark("histories");
    // Messages of users the reader ignores are hidden, as in /sync and /messages.
    let ignored = std::sync::Arc::new(store::ignore::ignored_by(conn, user).await?);
    steps.mark("ignored");
    // Counts and heroes go with rooms sent whole; others read them only when their members
    // changed (a woken request for a new message reads neither).
    let whole: Vec<String> = to_send
        .iter()
        .filter(|(_, after)| after.is_none())
        .map(|(w, _)| w.room.room_id.clone())
        .collect();
    let mut counts = store::sliding::member_counts(conn, &whole).await?;
    let mut heroes = store::sliding::heroes(conn, &whole, user, HEROES).await?;
    steps.mark("counts");
    // The newest events of every joined room to send, in one read: what [`timeline`] would
    // read first (it reads on only when visibility hides too many of them).
    let chunk = to_send
        .iter()
        .map(|(w, _)| w.timeline_limit * 2 + 2)
        .max()
        .unwrap_or(2);
    let windows: Vec<(String, i64)> = to_send
        .iter()
        .filter(|(w, _)| w.room.membership == "join")
        .map(|(w, after)| (w.room.room_id.clone(), after.unwrap_or(0)))
        .collect();
    let mut first_chunks: HashMap<String, Vec<EventWithPrev>> =
        store::events::recent_of_rooms(conn, &windows, input.upto + 1, chunk)
            .await?
            .into_iter()
            .map(|(room, _, rows)| (room, rows))
            .collect();
    for (room, _) in &windows {
        first_chunks.entry(room.clone()).or_default();
    }
    // The newest event read of a room is the one it is ordered by: its merge key.
    for rows in first_chunks.values() {
        if let Some(newest) = rows.first() {
            part.stream_ts
                .insert(newest.event.stream, newest.event.origin_server_ts);
        }
    }
    steps.mark("timelines");
    let since = input.prev.map_or(0, |p| p.stream);
    // First the invites and every room's timeline and state keys, then the state of all
    // rooms at once, then the entries.
    let mut prepared: Vec<Prepared<'_, '_>> = Vec::with_capacity(to_send.len());
    for (w, after) in to_send {
        let room = w.room;
        let room_id = room.room_id.as_str();
        let mut entry = Map::new();
        entry.insert("notification_count".into(), json!(0));
        entry.insert("highlight_count".into(), json!(0));
        if after.is_none() {
            entry.insert("initial".into(), json!(true));
        }
        if room.membership == "invite" || room.membership == "knock" {
            let user_room = UserRoom {
                room_id: room.room_id.clone(),
                membership: room.membership.clone(),
                member_stream: room.member_stream,
                member_sender: room.member_sender.clone(),
                membership_before: None,
                latest: None,
            };
            let stripped = crate::sync::local::invite_state(conn, &user_room, user).await?;
            if let Some(name) = stripped
                .iter()
                .find(|e| e["type"] == "m.room.name")
                .and_then(|e| e["content"]["name"].as_str())
                .filter(|n| !n.is_empty())
            {
                entry.insert("name".into(), json!(name));
            }
            entry.insert("invite_state".into(), Value::Array(stripped));
            part.entries
                .insert(room.room_id.clone(), Value::Object(entry));
            part.sent
                .insert(room.room_id.clone(), sent_record(w, input.upto));
            continue;
        }
        let upper = if room.membership == "join" {
            input.upto
        } else {
            room.member_stream.min(input.upto)
        };
        let (memberships, visibilities) = histories.get(room_id).cloned().unwrap_or_default();
        let reader = Reader {
            memberships: memberships
                .into_iter()
                .filter(|(s, _)| *s <= upper)
                .collect(),
            visibilities: visibilities
                .into_iter()
                .filter(|(s, _)| *s <= upper)
                .collect(),
            ignored: ignored.clone(),
        };
        let timeline = timeline(
            conn,
            input.requester,
            &reader,
            room_id,
            after.unwrap_or(0),
            upper,
            w.timeline_limit,
            first_chunks.remove(room_id).map(|rows| (rows, chunk)),
        )
        .await?;
        let initial = after.is_none();
        let senders: HashSet<&str> = timeline
            .events
            .iter()
            .map(|e| e.event.sender.as_str())
            .collect();
        let members_changed = initial
            || timeline
                .events
                .iter()
                .any(|e| e.event.kind == "m.room.member");
        if members_changed && !initial {
            let one = [room.room_id.clone()];
            counts.extend(store::sliding::member_counts(conn, &one).await?);
            heroes.extend(store::sliding::heroes(conn, &one, user, HEROES).await?);
        }
        let room_heroes = heroes.get(room_id).cloned().unwrap_or_default();
        let mut keys: Vec<(String, String)> = w.required_state.exact_keys(user);
        for fixed in ["m.room.name", "m.room.avatar"] {
            keys.push((fixed.into(), String::new()));
        }
        if w.required_state.lazy_members {
            keys.extend(
                senders
                    .iter()
                    .map(|s| ("m.room.member".to_owned(), (*s).to_owned())),
            );
        }
        keys.extend(
            room_heroes
                .iter()
                .map(|h| ("m.room.member".to_owned(), h.clone())),
        );
        // Incrementally, when every event since the room was last sent is in the timeline
        // (not limited) and none is a state event, no required state changed, nothing of
        // the name, avatar or members did, and only a lazy member not sent yet could be
        // due: then there is no state to read (a woken request for a message reads none).
        let lazy_known = !w.required_state.lazy_members
            || input
                .prev
                .and_then(|p| p.sent.get(room_id))
                .is_some_and(|s| senders.iter().all(|u| s.lazy_members.contains(*u)));
        let state_unchanged = !initial
            && room.membership == "join"
            && !timeline.limited
            && !timeline.state_seen
            && !members_changed
            && lazy_known;
        prepared.push(Prepared {
            state_unchanged,
            w,
            after: *after,
            entry,
            upper,
            reader,
            timeline,
            members_changed,
            heroes: room_heroes,
            keys,
        });
    }

    steps.mark("prepared");
    // One read of current state for the joined rooms that ask for exact keys only: the
    // union of their keys (each room keeps what it asked for below).
    let exact_read = |p: &&Prepared<'_, '_>| {
        p.w.room.membership == "join" && p.w.required_state.exact_only() && !p.state_unchanged
    };
    let exact: Vec<String> = prepared
        .iter()
        .filter(exact_read)
        .map(|p| p.w.room.room_id.clone())
        .collect();
    let union: BTreeSet<(&str, &str)> = prepared
        .iter()
        .filter(exact_read)
        .flat_map(|p| p.keys.iter().map(|(a, b)| (a.as_str(), b.as_str())))
        .collect();
    let union: Vec<(&str, &str)> = union.into_iter().collect();
    let mut exact_state = if exact.is_empty() {
        HashMap::new()
    } else {
        store::events::current_state_at_keys_of_rooms(conn, &exact, &union).await?
    };
    // The rooms whose timelines have relations to bundle, in one probe for all.
    let timeline_ids: Vec<String> = prepared
        .iter()
        .flat_map(|p| p.timeline.events.iter())
        .filter(|e| e.event.redacted_by.is_none())
        .map(|e| e.event.event_id.to_string())
        .collect();
    let related = store::sliding::rooms_with_relations(conn, &timeline_ids).await?;
    steps.mark("state");

    for prepared in prepared {
        let Prepared {
            w,
            state_unchanged,
            after,
            mut entry,
            upper,
            reader,
            timeline,
            members_changed,
            heroes: room_heroes,
            keys: _,
        } = prepared;
        let room = w.room;
        let room_id = room.room_id.as_str();
        let initial = after.is_none();
        let senders: HashSet<&str> = timeline
            .events
            .iter()
            .map(|e| e.event.sender.as_str())
            .collect();
        // State: current state for a joined room, the state at the leave otherwise.
        let state: Vec<EventWithPrev> = if state_unchanged {
            Vec::new()
        } else if room.membership != "join" {
            store::events::state_at(conn, room_id, upper).await?
        } else if w.required_state.exact_only() {
            exact_state.remove(room_id).unwrap_or_default()
        } else {
            store::events::current_state(conn, room_id).await?
        };
        let content_of = |kind: &str, key: &str| {
            state
                .iter()
                .find(|e| e.event.kind == kind && e.event.state_key.as_deref() == Some(key))
        };
        let changed_since = |e: &EventWithPrev| initial || e.event.stream > after.unwrap_or(0);
        let name = content_of("m.room.name", "")
            .filter(|e| changed_since(e))
            .and_then(|e| e.event.content.get("name").and_then(Value::as_str))
            .filter(|n| !n.is_empty());
        if let Some(name) = name {
            entry.insert("name".into(), json!(name));
        }
        let named = content_of("m.room.name", "").is_some_and(|e| {
            e.event
                .content
                .get("name")
                .and_then(Value::as_str)
                .is_some_and(|n| !n.is_empty())
        });
        if let Some(url) = content_of("m.room.avatar", "")
            .filter(|e| changed_since(e))
            .and_then(|e| e.event.content.get("url").and_then(Value::as_str))
        {
            entry.insert("avatar".into(), json!(url));
        }
        if members_changed {
            let (joined, invited) = counts.get(room_id).copied().unwrap_or((0, 0));
            entry.insert("joined_count".into(), json!(joined));
            entry.insert("invited_count".into(), json!(invited));
            if !named && !room_heroes.is_empty() {
                let heroes: Vec<Value> = room_heroes
                    .iter()
                    .map(|hero| {
                        let mut value = json!({ "user_id": hero });
                        if let Some(member) = content_of("m.room.member", hero) {
                            for field in ["displayname", "avatar_url"] {
                                if let Some(v) =
                                    member.event.content.get(field).and_then(Value::as_str)
                                {
                                    value[field] = json!(v);
                                }
                            }
                        }
                        value
                    })
                    .collect();
                entry.insert("heroes".into(), Value::Array(heroes));
            }
        }
        let lazy_before = match after {
            Some(_) => input
                .prev
                .and_then(|p| p.sent.get(room_id))
                .map(|s| (*s.lazy_members).clone())
                .unwrap_or_default(),
            None => BTreeSet::new(),
        };
        let in_timeline: HashSet<&str> = timeline
            .events
            .iter()
            .map(|e| e.event.event_id.as_str())
            .collect();
        let required: Vec<EventWithPrev> = state
            .iter()
            .filter(|e| {
                let key = e.event.state_key.as_deref().unwrap_or_default();
                // A lazy member goes once per connection (then again when it changes).
                let lazy_member = e.event.kind == "m.room.member"
                    && w.required_state.lazy_members
                    && senders.contains(key)
                    && !lazy_before.contains(key);
                // Incrementally, a state change in the timeline is not repeated.
                let repeated = in_timeline.contains(e.event.event_id.as_str());
                w.required_state.wants(&e.event.kind, key, user, &senders)
                    && (changed_since(e) || lazy_member)
                    && (initial || !repeated)
            })
            .cloned()
            .collect();
        let nothing_new = !initial && timeline.events.is_empty() && required.is_empty();
        let mut record = sent_record(w, input.upto);
        if w.required_state.lazy_members {
            let mut members = lazy_before.clone();
            members.extend(senders.iter().map(|s| (*s).to_owned()));
            record.lazy_members = Arc::new(members);
        }
        part.sent.insert(room.room_id.clone(), record);
        if nothing_new {
            // Only backfilled history since: nothing to tell.
            continue;
        }
        if !required.is_empty() {
            let values = state_events(rooms, conn, input.requester, &reader, required).await?;
            entry.insert("required_state".into(), Value::Array(values));
        }
        let num_live = if since == 0 {
            0
        } else {
            timeline
                .events
                .iter()
                .filter(|e| e.event.stream > since)
                .count()
        };
        entry.insert("limited".into(), json!(timeline.limited));
        entry.insert("prev_batch".into(), json!(timeline.prev_batch.to_string()));
        entry.insert("num_live".into(), json!(num_live));
        if !timeline.events.is_empty() {
            let values = if related.contains(room_id) {
                client_events(rooms, conn, input.requester, &reader, timeline.events).await?
            } else {
                // Nothing to bundle: the same format without the aggregation queries.
                state_events(rooms, conn, input.requester, &reader, timeline.events).await?
            };
            entry.insert("timeline".into(), Value::Array(values));
        }
        part.entries
            .insert(room.room_id.clone(), Value::Object(entry));
    }
    steps.mark("entries");
    Ok(())
}

/// A joined or departed room to send, between reading its timeline and its state.
struct Prepared<'w, 'a> {
    w: &'w Wanted<'a>,
    /// Nothing of the room's state can be due ([`entries`]): none is read.
    state_unchanged: bool,
    after: Option<i64>,
    entry: Map<String, Value>,
    /// The position its timeline and state end at.
    upper: i64,
    reader: Reader,
    timeline: Timeline,
    members_changed: bool,
    heroes: Vec<String>,
    /// The exact state keys it needs.
    keys: Vec<(String, String)>,
}

fn sent_record(w: &Wanted<'_>, upto: i64) -> Sent {
    Sent {
        upto,
        timeline_limit: w.timeline_limit,
        required_state: Arc::new(w.required_state.clone()),
        lazy_members: Arc::default(),
    }
}

/// A room's timeline for `(after, upper]`: the newest `limit` visible events, oldest first.
struct Timeline {
    events: Vec<EventWithPrev>,
    limited: bool,
    prev_batch: Token,
    /// Whether a state event was among the rows read (visible or not).
    state_seen: bool,
}

#[allow(clippy::too_many_arguments)]
async fn timeline(
    conn: &mut PgConnection,
    requester: &Requester,
    reader: &Reader,
    room_id: &str,
    after: i64,
    upper: i64,
    limit: i64,
    mut prefetched: Option<(Vec<EventWithPrev>, i64)>,
) -> Result<Timeline, RoomError> {
    let wanted = usize::try_from(limit).unwrap_or(0);
    let mut chunk = limit * 2 + 2;
    let mut picked: Vec<EventWithPrev> = Vec::new();
    let mut limited = false;
    let mut top_topo = None;
    let mut state_seen = false;
    let mut before = upper + 1;
    'scan: loop {
        let rows = match prefetched.take() {
            // Read for `(after, upto]`; a leave's timeline ends earlier, so it reads its own.
            Some((rows, size)) if before == upper + 1 => {
                chunk = size;
                rows
            }
            _ => store::events::recent(conn, room_id, after, before, chunk).await?,
        };
        if rows.is_empty() {
            break;
        }
        let last_chunk = i64::try_from(rows.len()).unwrap_or(i64::MAX) < chunk;
        for row in rows {
            before = row.event.stream;
            state_seen |= row.event.state_key.is_some();
            top_topo.get_or_insert(row.event.topo);
            if Rooms::visible(reader, requester, &row.event) {
                if picked.len() == wanted {
                    limited = true;
                    break 'scan;
                }
                picked.push(row);
            }
        }
        if last_chunk {
            break;
        }
    }
    picked.reverse();
    let prev_batch = match (picked.first(), top_topo) {
        (Some(first), _) => Token(first.event.topo - 1),
        (None, Some(topo)) => Token(topo),
        (None, None) => {
            let room_row = store::rooms::get(conn, room_id).await?;
            Token(room_row.map_or(0, |r| r.max_topo))
        }
    };
    Ok(Timeline {
        events: picked,
        limited,
        prev_batch,
        state_seen,
    })
}

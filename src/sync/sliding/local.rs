//! The local half of a sliding sync: the user's local rooms as lists, and the entries of the
//! rooms in the local windows, in Synapse's response shape.
//!
//! * **Room set** (Synapse's rule): joins, invites, bans and kicks; the user's own leaves only
//!   when they happened after the connection's position (so the client hears of them once).
//!   Deleted and forgotten rooms never.
//! * **Order**: newest first by the position of the room's latest event (for a room the user
//!   is not joined to, of the member event), as Synapse orders by stream ordering. Read from
//!   the `memberships`/`rooms` rows alone ([`store::sliding::user_room_list`]).
//! * **Window**: per list, the local top `end + 1` rooms after the filters, `end` being the
//!   largest range end. Only these rooms (and subscribed local rooms) are read further.
//! * **What is sent** of a window room: everything (`initial`) if the connection never had
//!   it or its config grew; else what happened since the position it was last brought up to
//!   ([`Sent::upto`]) — so a room that had news while outside the window gets exactly that gap
//!   when it comes back. A room with nothing new is not sent.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::conn::{Sent, Snapshot};
use super::request::{Body, RequiredState, RoomExtension, RoomFacts};
use crate::auth::requester::Requester;
use crate::devices::LocalLists;
use crate::notify::SidePositions;
use crate::rooms::RoomError;
use crate::rooms::read::Token;
use crate::rooms::room_data::receipt_content;
use crate::rooms::service::Rooms;
use crate::rooms::visibility::Reader;
use crate::store;
use crate::store::events::EventWithPrev;
use crate::store::rooms::UserRoom;
use crate::store::sliding::ListedRoom;
use crate::sync::local::{client_events, state_events};

/// The largest timeline a room config may ask for.
const MAX_TIMELINE_LIMIT: i64 = 1000;
/// Heroes of an unnamed room (Synapse sends up to 5).
const HEROES: i64 = 5;

/// What the local half is computed from.
pub struct LocalInput<'a> {
    pub requester: &'a Requester,
    pub body: &'a Body,
    /// The connection's state at the client's `pos`.
    pub prev: Option<&'a Snapshot>,
    /// The committed positions to read up to.
    pub upto: i64,
    pub side_upto: SidePositions,
    /// The user's DM rooms (`m.direct`), for the `is_dm` filter (entries get `is_dm` when
    /// the halves are merged).
    pub direct: &'a HashSet<String>,
}

/// Where the user's room list comes from.
pub enum Listing {
    /// Read it whole.
    Read,
    /// The list read earlier in the same request; the rows of `rooms` are read again (a
    /// woken request whose user's memberships did not change: only rooms written into since
    /// can have moved).
    Refresh {
        listed: Vec<ListedRoom>,
        rooms: Vec<String>,
    },
}

/// One list's local side.
#[derive(Debug, Default)]
pub struct LocalList {
    /// Local rooms passing the filters.
    pub count: u64,
    /// The local window, newest first.
    pub top: Vec<String>,
}

/// The local half of one answer.
#[derive(Debug, Default)]
pub struct LocalPart {
    /// Every local room the user has a membership in (what wake-ups are checked against).
    pub room_ids: Vec<String>,
    /// Their rows, for a later [`Listing::Refresh`].
    pub listed: Vec<ListedRoom>,
    pub lists: BTreeMap<String, LocalList>,
    /// Window room → origin_server_ts of the event it is ordered by (the merge key).
    pub ts: HashMap<String, i64>,
    /// Room entries to send.
    pub entries: Map<String, Value>,
    /// The rooms brought up to date by this answer.
    pub sent: HashMap<String, Sent>,
    /// Per-room extension data: `receipts.rooms`, `typing.rooms`, `account_data.rooms`.
    pub receipts: Map<String, Value>,
    pub typing: Map<String, Value>,
    pub account_data: Map<String, Value>,
    /// Device-list changes of local co-members since the connection's position, for the
    /// `e2ee` extension (only when it is on and the connection has a position).
    pub device_lists: Option<LocalLists>,
}

impl LocalPart {
    /// Whether there is something for the client (lists alone are not news, as in Synapse).
    pub fn has_data(&self) -> bool {
        !(self.entries.is_empty()
            && self.receipts.is_empty()
            && self.typing.is_empty()
            && self.account_data.is_empty()
            && self
                .device_lists
                .as_ref()
                .is_none_or(|d| d.changed.is_empty() && d.left.is_empty()))
    }
}

/// A window room: the combined config of the lists and subscription naming it.
struct Wanted<'a> {
    room: &'a ListedRoom,
    timeline_limit: i64,
    required_state: RequiredState,
    lists: Vec<&'a str>,
    subscribed: bool,
}

/// The position a room is ordered by.
fn order_stream(room: &ListedRoom) -> i64 {
    if room.membership == "join" {
        room.latest_stream.max(room.member_stream)
    } else {
        room.member_stream
    }
}

/// Builds the local half.
pub async fn build(
    rooms: &Rooms,
    conn: &mut PgConnection,
    input: &LocalInput<'_>,
    listing: Listing,
) -> Result<LocalPart, RoomError> {
    let user = input.requester.user_id.as_str();
    let listed = match listing {
        Listing::Read => store::sliding::user_room_list(conn, user).await?,
        Listing::Refresh { mut listed, rooms } => {
            if !rooms.is_empty() {
                let fresh = store::sliding::user_room_list_of(conn, user, &rooms).await?;
                listed.retain(|r| !rooms.contains(&r.room_id));
                listed.extend(fresh);
            }
            listed
        }
    };
    let since = input.prev.map_or(0, |p| p.stream);
    let mut part = LocalPart {
        room_ids: listed.iter().map(|r| r.room_id.clone()).collect(),
        ..LocalPart::default()
    };
    // Synapse's room set, newest first.
    let mut shown: Vec<&ListedRoom> = listed
        .iter()
        .filter(|r| match r.membership.as_str() {
            "join" | "invite" | "ban" | "knock" => true,
            "leave" => r.member_sender != user || (since > 0 && r.member_stream > since),
            _ => false,
        })
        .collect();
    shown.sort_by(|a, b| {
        order_stream(b)
            .cmp(&order_stream(a))
            .then_with(|| a.room_id.cmp(&b.room_id))
    });

    // Encryption and room type only when a filter asks (Element X's lists filter on neither).
    let needs_facts = input
        .body
        .lists
        .iter()
        .flatten()
        .any(|(_, l)| l.filters.as_ref().is_some_and(|f| f.needs_facts()));
    let facts = if needs_facts {
        let ids: Vec<String> = shown.iter().map(|r| r.room_id.clone()).collect();
        store::sliding::room_facts(conn, &ids).await?
    } else {
        HashMap::new()
    };
    let needs_tags = input
        .body
        .lists
        .iter()
        .flatten()
        .any(|(_, l)| l.filters.as_ref().is_some_and(|f| f.needs_tags()));
    let tags = if needs_tags {
        store::sliding::room_tags(conn, user).await?
    } else {
        HashMap::new()
    };
    let untagged = BTreeSet::new();
    let mut wanted: BTreeMap<&str, Wanted<'_>> = BTreeMap::new();
    for (name, list) in input.body.lists.iter().flatten() {
        let facts_pass = |r: &&ListedRoom| {
            list.filters.as_ref().is_none_or(|f| {
                let known = facts.get(&r.room_id);
                f.allows(&RoomFacts {
                    is_dm: input.direct.contains(&r.room_id),
                    encrypted: known.is_some_and(|k| k.encrypted),
                    invited: r.membership == "invite",
                    room_type: known.and_then(|k| k.room_type.as_deref()),
                    tags: tags.get(&r.room_id).unwrap_or(&untagged),
                })
            })
        };
        let matching: Vec<&ListedRoom> = shown.iter().copied().filter(facts_pass).collect();
        let end = list
            .ranges
            .iter()
            .flatten()
            .map(|(_, end)| *end)
            .max()
            .map(|end| usize::try_from(end).unwrap_or(usize::MAX).saturating_add(1))
            .unwrap_or(0);
        let top: Vec<&ListedRoom> = matching.iter().copied().take(end).collect();
        let required = RequiredState::from_pairs(&list.room.required_state);
        for room in &top {
            let entry = wanted
                .entry(room.room_id.as_str())
                .or_insert_with(|| Wanted {
                    room,
                    timeline_limit: 0,
                    required_state: RequiredState::default(),
                    lists: Vec::new(),
                    subscribed: false,
                });
            entry.timeline_limit = entry.timeline_limit.max(list.room.timeline_limit);
            entry.required_state.union(&required);
            entry.lists.push(name.as_str());
        }
        part.lists.insert(
            name.clone(),
            LocalList {
                count: u64::try_from(matching.len()).unwrap_or(u64::MAX),
                top: top.iter().map(|r| r.room_id.clone()).collect(),
            },
        );
    }
    for (room_id, config) in input.body.room_subscriptions.iter().flatten() {
        let Some(room) = shown.iter().find(|r| r.room_id == *room_id) else {
            continue;
        };
        let required = RequiredState::from_pairs(&config.required_state);
        let entry = wanted
            .entry(room.room_id.as_str())
            .or_insert_with(|| Wanted {
                room,
                timeline_limit: 0,
                required_state: RequiredState::default(),
                lists: Vec::new(),
                subscribed: false,
            });
        entry.timeline_limit = entry.timeline_limit.max(config.timeline_limit);
        entry.required_state.union(&required);
        entry.subscribed = true;
    }
    for entry in wanted.values_mut() {
        entry.timeline_limit = entry.timeline_limit.clamp(0, MAX_TIMELINE_LIMIT);
    }

    // Merge keys of every window room.
    let streams: Vec<i64> = wanted.values().map(|w| order_stream(w.room)).collect();
    let stamps = store::sliding::timestamps(conn, &streams).await?;
    for w in wanted.values() {
        let ts = stamps.get(&order_stream(w.room)).copied().unwrap_or(0);
        part.ts.insert(w.room.room_id.clone(), ts);
    }

    // Which window rooms are sent, and from where.
    let mut to_send: Vec<(&Wanted<'_>, Option<i64>)> = Vec::new();
    for w in wanted.values() {
        let before = input.prev.and_then(|p| p.sent.get(&w.room.room_id));
        let after = match before {
            Some(sent)
                if sent.timeline_limit >= w.timeline_limit
                    && !w.required_state.grew_from(&sent.required_state) =>
            {
                Some(sent.upto)
            }
            _ => None,
        };
        let changed = match after {
            None => true,
            Some(after) => order_stream(w.room) > after,
        };
        if changed {
            to_send.push((w, after));
        }
    }
    entries(rooms, conn, input, &to_send, &mut part).await?;
    extensions(rooms, conn, input, &wanted, &mut part).await?;
    part.listed = listed;
    Ok(part)
}

/// The entries of the rooms to send, and their new [`Sent`] records.
async fn entries(
    rooms: &Rooms,
    conn: &mut PgConnection,
    input: &LocalInput<'_>,
    to_send: &[(&Wanted<'_>, Option<i64>)],
    part: &mut LocalPart,
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
    // Messages of users the reader ignores are hidden, as in /sync and /messages.
    let ignored = std::sync::Arc::new(store::ignore::ignored_by(conn, user).await?);
    // Counts and heroes go with rooms sent whole; others read them only when their members
    // changed (a woken request for a new message reads neither).
    let whole: Vec<String> = to_send
        .iter()
        .filter(|(_, after)| after.is_none())
        .map(|(w, _)| w.room.room_id.clone())
        .collect();
    let mut counts = store::sliding::member_counts(conn, &whole).await?;
    let mut heroes = store::sliding::heroes(conn, &whole, user, HEROES).await?;
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
        prepared.push(Prepared {
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

    // One read of current state for the joined rooms that ask for exact keys only: the
    // union of their keys (each room keeps what it asked for below).
    let exact: Vec<String> = prepared
        .iter()
        .filter(|p| p.w.room.membership == "join" && p.w.required_state.exact_only())
        .map(|p| p.w.room.room_id.clone())
        .collect();
    let union: BTreeSet<(&str, &str)> = prepared
        .iter()
        .filter(|p| p.w.room.membership == "join" && p.w.required_state.exact_only())
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

    for prepared in prepared {
        let Prepared {
            w,
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
        let state: Vec<EventWithPrev> = if room.membership != "join" {
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
    Ok(())
}

/// A joined or departed room to send, between reading its timeline and its state.
struct Prepared<'w, 'a> {
    w: &'w Wanted<'a>,
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
    })
}

/// Receipts, typing and room account data of the window rooms the extensions cover.
async fn extensions(
    rooms: &Rooms,
    conn: &mut PgConnection,
    input: &LocalInput<'_>,
    wanted: &BTreeMap<&str, Wanted<'_>>,
    part: &mut LocalPart,
) -> Result<(), RoomError> {
    let Some(ext) = input.body.extensions.as_ref() else {
        return Ok(());
    };
    let user = input.requester.user_id.as_str();
    let prev_side = input.prev.map(|p| p.side).unwrap_or_default();
    // A room the client had before this answer continues from the connection's position;
    // one new to it gets everything.
    let had = |room: &str| {
        input.prev.and_then(|p| p.sent.get(room)).is_some_and(|_| {
            part.entries
                .get(room)
                .is_none_or(|e| e.get("initial").is_none())
        })
    };
    let covered = |e: Option<&RoomExtension>| -> Vec<(String, bool)> {
        let Some(e) = e.filter(|e| e.enabled == Some(true)) else {
            return Vec::new();
        };
        wanted
            .values()
            .filter(|w| w.room.membership == "join")
            .filter(|w| e.covers(&w.room.room_id, &w.lists, w.subscribed))
            .map(|w| (w.room.room_id.clone(), had(&w.room.room_id)))
            .collect()
    };
    let windows = |rooms: &[(String, bool)]| -> Vec<(String, i64)> {
        rooms
            .iter()
            .map(|(room, had)| (room.clone(), if *had { prev_side.room_data } else { 0 }))
            .filter(|(_, after)| *after < input.side_upto.room_data)
            .collect()
    };
    let receipt_rooms = covered(ext.receipts.as_ref());
    let receipts =
        store::receipts::of_rooms(conn, &windows(&receipt_rooms), input.side_upto.room_data)
            .await?;
    for (room, list) in receipts {
        let visible = list
            .iter()
            .filter(|r| r.kind != "m.read.private" || r.user_id == user);
        let content = receipt_content(visible);
        if !content.is_empty() {
            part.receipts
                .insert(room, json!({ "type": "m.receipt", "content": content }));
        }
    }
    let data_rooms = covered(ext.account_data.as_ref());
    let data = store::room_data::account_data_of_rooms(
        conn,
        user,
        &windows(&data_rooms),
        input.side_upto.room_data,
    )
    .await?;
    for (room, entries) in data {
        let events: Vec<Value> = entries
            .into_iter()
            .map(|(kind, content)| json!({ "type": kind, "content": content }))
            .collect();
        if !events.is_empty() {
            part.account_data.insert(room, Value::Array(events));
        }
    }
    for (room, had) in covered(ext.typing.as_ref()) {
        let Some((serial, users)) = rooms.typing.of_room(&room) else {
            continue;
        };
        let news = if had {
            serial > prev_side.typing
        } else {
            !users.is_empty()
        };
        if news {
            part.typing.insert(
                room,
                json!({ "type": "m.typing", "content": { "user_ids": users } }),
            );
        }
    }
    Ok(())
}

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
//!
//! This file picks the rooms (lists, filters, windows, what to send); [`entry`] builds the
//! entries of the rooms to send and [`extensions`] their receipts, typing and account data.

mod entry;
mod extensions;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value};
use sqlx::PgConnection;

use super::conn::{Sent, Snapshot};
use super::request::{Body, RequiredState, RoomFacts};
use crate::auth::requester::Requester;
use crate::devices::LocalLists;
use crate::notify::SidePositions;
use crate::rooms::RoomError;
use crate::rooms::service::Rooms;
use crate::store;
use crate::store::sliding::ListedRoom;

/// The largest timeline a room config may ask for.
const MAX_TIMELINE_LIMIT: i64 = 1000;

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
    /// Stream position → origin_server_ts of the events the window rooms are ordered by
    /// (what the connection keeps, [`Snapshot::local_ts`]).
    pub stream_ts: HashMap<i64, i64>,
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

/// Where the local half's time goes, for the debug log: each step's end, in microseconds
/// from the start.
pub(super) struct Steps {
    start: std::time::Instant,
    ends: Vec<(&'static str, u128)>,
}

impl Steps {
    fn start() -> Self {
        Self {
            start: std::time::Instant::now(),
            ends: Vec::new(),
        }
    }

    pub(super) fn mark(&mut self, step: &'static str) {
        self.ends.push((step, self.start.elapsed().as_micros()));
    }
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (step, end) in &self.ends {
            write!(f, "{step}={end} ")?;
        }
        Ok(())
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
    let mut steps = Steps::start();
    let listed = match listing {
        Listing::Read => store::sliding::user_room_list(conn, user, None).await?,
        Listing::Refresh { mut listed, rooms } => {
            if !rooms.is_empty() {
                let fresh = store::sliding::user_room_list(conn, user, Some(&rooms)).await?;
                listed.retain(|r| !rooms.contains(&r.room_id));
                listed.extend(fresh);
            }
            listed
        }
    };
    steps.mark("list");
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

    steps.mark("pick");

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
    entry::entries(rooms, conn, input, &to_send, &mut part, &mut steps).await?;

    // Merge keys of every window room: an event's timestamp never changes, so those the
    // connection had and those of the timelines just read are not read again (a woken
    // request for a message reads none).
    let mut stream_ts = std::mem::take(&mut part.stream_ts);
    let known = input.prev.map(|p| &p.local_ts);
    let streams: Vec<i64> = wanted.values().map(|w| order_stream(w.room)).collect();
    for stream in &streams {
        if let Some(ts) = known.and_then(|k| k.get(stream)) {
            stream_ts.insert(*stream, *ts);
        }
    }
    let missing: Vec<i64> = streams
        .iter()
        .copied()
        .filter(|s| !stream_ts.contains_key(s))
        .collect();
    stream_ts.extend(store::sliding::timestamps(conn, &missing).await?);
    steps.mark("timestamps");
    for w in wanted.values() {
        let ts = stream_ts.get(&order_stream(w.room)).copied().unwrap_or(0);
        part.ts.insert(w.room.room_id.clone(), ts);
    }
    let ordered_by: HashSet<i64> = streams.into_iter().collect();
    stream_ts.retain(|stream, _| ordered_by.contains(stream));
    part.stream_ts = stream_ts;
    extensions::extensions(rooms, conn, input, &wanted, &mut part).await?;
    steps.mark("extensions");
    tracing::debug!(
        sent = to_send.len(),
        ?steps,
        "sliding sync: local half read"
    );
    part.listed = listed;
    Ok(part)
}

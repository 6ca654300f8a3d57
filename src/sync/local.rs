//! The local part of a sync: what changed in the user's local rooms between two stream
//! positions, in the shape of `/sync`'s `rooms` object.
//!
//! For a range `(since, upto]` (`since` = 0 for an initial sync or a client new to local
//! rooms), each room where the user has a member event at or before `upto`:
//!
//! * **join** — when the room has events in the range, when the user joined in it (then the
//!   room is sent as new: full state and the latest timeline, as on first appearance; a user
//!   who left and came back within the range counts as joining, as in Synapse), or with
//!   `full_state`. The timeline is the newest `limit` visible, filtered events of the range,
//!   `limited` when more existed; state events that are part of the room's state at the
//!   sync's position are visible whatever the history visibility (Synapse's sync shows them
//!   so a user back in a room learns what changed while away). `state` is computed as
//!   Synapse does ([`room_state`]), lazy-loaded members included, and each device is sent a
//!   member event once ([`super::lazy`]). An incremental entry with nothing left after the
//!   filters (no timeline event, no gap, no state, ephemeral or account data) is left out.
//!   The filter's `event_format` and `event_fields` shape the timeline and state
//!   ([`super::format`]).
//! * **invite** — when the invite is in the range (or initial): stripped state plus the
//!   inviter's member event, then the invite itself, as Synapse sends them. Invites from users
//!   the syncing user ignores (`m.ignored_user_list`) are left out.
//! * **knock** — when the knock is in the range (or initial): `knock_state`, the stripped
//!   state, then the knock itself (stripped too, as Synapse sends it).
//! * **leave** — incremental: when the leave, kick or ban is in the range, with the timeline up
//!   to it. Initial: kicks and bans always, the user's own leaves only with `include_leave`
//!   (Synapse's rule).
//!
//! Every event passes the room's history visibility for the user, exactly as `/messages`
//! applies it ([`crate::rooms::visibility`]); messages of ignored users are hidden there too.
//! A room new to an incremental sync (newly joined) is always `limited`, as Synapse marks it;
//! a room loaded without a `since` whose timeline was not cut short has its `prev_batch` at
//! the sync's own position, as Synapse's (paging back returns the timeline again).
//!
//! **Cost with many rooms.** A bridge user may be in thousands of rooms. An incremental sync
//! (a woken long poll) reads only the rooms that can have news — events in the gap, a changed
//! membership, receipts or room account data in the room data window, typing — so its cost
//! follows what changed, not how many rooms the user is in
//! ([`crate::store::rooms::changed_user_rooms`]; a gap too wide to scan reads every room).
//! The full room list, which a waiting sync needs to judge commits from memory, comes from
//! [`super::room_list`] and is read again only when the user's membership changed. A sync
//! that shows many rooms (initial, `full_state`) builds them [`ROOMS_PER_CHUNK`] at a time,
//! each chunk's timelines, state, histories and relation probe read in one query each, and
//! keeps each finished entry as JSON text: no per-room query for rooms without relations or
//! redactions, and at most one chunk's rows and values held at once.
//!
//! Room data and typing (not events) have positions of their own, `(side_since, side_upto]`:
//! a joined room also gets an entry when a receipt in it, the user's room account data for it
//! (tags, `m.fully_read`, …) or its typing list changed in that range. Its `ephemeral` then
//! holds the new receipts (private ones only to their owner) and the current typing list, its
//! `account_data` the changed entries; a room new to the client gets all of them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures_util::future::try_join_all;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use super::filter::SyncFilter;
use super::lazy::{DeviceKey, LazyMembers};
use super::room_list::RoomLists;
use crate::auth::requester::Requester;
use crate::notify::SidePositions;
use crate::rooms::RoomError;
use crate::rooms::event::{Related, Viewer, to_client};
use crate::rooms::read::Token;
use crate::rooms::room_data::receipt_content;
use crate::rooms::service::{Rooms, now_ms};
use crate::rooms::visibility::Reader;
use crate::store::{self, StoreError, events::EventWithPrev, rooms::UserRoom};

/// Timeline events per room when the filter sets no limit (Synapse's default).
const DEFAULT_TIMELINE_LIMIT: i64 = 10;
/// The most a filter may ask for.
const MAX_TIMELINE_LIMIT: i64 = 1000;
/// Heroes in a room summary.
const HEROES: i64 = 5;
/// State sent with an invite (Synapse's default `room_prejoin_state`).
const PREJOIN_STATE: [&str; 7] = [
    "m.room.create",
    "m.room.join_rules",
    "m.room.canonical_alias",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.name",
    "m.room.topic",
];

/// The entries of one section of `rooms`: room ID and its entry, as JSON text.
pub type Entries = Vec<(String, Box<RawValue>)>;

/// One sync's local part.
#[derive(Debug, Default)]
pub struct LocalSync {
    pub join: Entries,
    pub invite: Entries,
    pub leave: Entries,
    pub knock: Entries,
    /// Every local room the user has a membership in (for waiting on news).
    pub rooms: Arc<[String]>,
}

impl LocalSync {
    /// Whether there is nothing to tell the client.
    pub fn is_empty(&self) -> bool {
        self.join.is_empty()
            && self.invite.is_empty()
            && self.leave.is_empty()
            && self.knock.is_empty()
    }
}

/// What to build.
pub struct LocalRequest<'a> {
    pub requester: &'a Requester,
    /// The client's position (0: it has seen no local event yet).
    pub since: i64,
    /// The committed position to read up to.
    pub upto: i64,
    /// The client's room data position and typing serial.
    pub side_since: SidePositions,
    /// The committed room data position and typing serial to read up to.
    pub side_upto: SidePositions,
    pub full_state: bool,
    pub filter: &'a SyncFilter,
    /// The room classes: rooms of `off` classes are not shown.
    pub classes: &'a crate::routing::RoomClasses,
    /// The member events each device was sent while lazy-loading.
    pub lazy_members: &'a LazyMembers,
    /// The rooms of each user, kept for waiting syncs.
    pub room_lists: &'a RoomLists,
}

impl LocalRequest<'_> {
    /// Whose record of lazy-loaded members this sync reads and writes.
    fn device(&self) -> DeviceKey {
        let device = self.requester.device_id.as_ref();
        (
            self.requester.user_id.to_string(),
            device.map(ToString::to_string).unwrap_or_default(),
        )
    }
}

/// From this many rooms on, their timelines and state are read in bulk first.
const BULK_FROM: usize = 4;

/// Rooms built at once, each on a pooled connection of its own.
const CONCURRENT_ROOMS: usize = 4;

/// Rooms read and built together: their bulk reads are one round trip each, and no more than
/// this many rooms' rows and JSON values are held at once.
const ROOMS_PER_CHUNK: usize = 256;

/// What every room of a sync needs, read for all of them at once.
struct Prefetch {
    /// Room → the user's membership history and the room's visibility history.
    histories: HashMap<String, store::events::ReaderHistory>,
    /// Room data and typing per joined room, for those that have something to show.
    side: HashMap<String, Side>,
    /// Joined room → the first chunk of its timeline scan, with the window it was read for
    /// (`after`, `before`, limit): what [`room_part`] would read first.
    timelines: HashMap<String, FirstChunk>,
    /// Room → its state at the sync's position, for the rooms that send state (new rooms,
    /// `full_state`, lazy-loaded members).
    states: HashMap<String, Vec<EventWithPrev>>,
    /// Events of the prefetched timelines that no event relates to: nothing to bundle.
    unrelated: HashSet<String>,
    /// The users the syncing user ignores.
    ignored: Arc<HashSet<String>>,
}

/// What a joined room shows besides events.
#[derive(Default)]
struct Side {
    /// Receipts committed in the room's room data window, oldest first.
    receipts: Vec<store::receipts::Receipt>,
    /// The user's room account data written in the window: `(type, content)`.
    account_data: Vec<(String, Value)>,
    /// The users typing, when the list is to be shown.
    typing: Option<Vec<String>>,
}

/// Room data and typing of the joined rooms (`newly` when the room appears as new).
async fn side_of_rooms(
    rooms: &Rooms,
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    joined: &[(String, bool)],
) -> Result<HashMap<String, Side>, RoomError> {
    let user = request.requester.user_id.as_str();
    let (since, upto) = (request.side_since, request.side_upto);
    // Only rooms whose window is not empty.
    let windows: Vec<(String, i64)> = joined
        .iter()
        .map(|(room, newly)| (room.clone(), if *newly { 0 } else { since.room_data }))
        .filter(|(_, after)| *after < upto.room_data)
        .collect();
    let mut receipts = store::receipts::of_rooms(conn, &windows, upto.room_data).await?;
    let mut account_data =
        store::room_data::account_data_of_rooms(conn, user, &windows, upto.room_data).await?;
    let mut side = HashMap::new();
    for (room, newly) in joined {
        let typing = rooms
            .typing
            .of_room(room)
            .filter(|(serial, users)| {
                if *newly {
                    !users.is_empty()
                } else {
                    *serial > since.typing
                }
            })
            .map(|(_, users)| users);
        let entry = Side {
            receipts: receipts.remove(room).unwrap_or_default(),
            account_data: account_data.remove(room).unwrap_or_default(),
            typing,
        };
        let private_only = entry
            .receipts
            .iter()
            .all(|r| r.kind == "m.read.private" && r.user_id != user);
        if !(private_only && entry.account_data.is_empty() && entry.typing.is_none()) {
            side.insert(room.clone(), entry);
        }
    }
    Ok(side)
}

/// The window a timeline chunk was read for (`after`, `before`, limit), and its rows.
type FirstChunk = ((i64, i64, i64), Vec<EventWithPrev>);

/// Whether a joined room appears to the client as new (initial sync, or joined since).
fn newly_joined(request: &LocalRequest<'_>, room: &UserRoom) -> bool {
    request.since == 0 || room.membership_before.as_deref() != Some("join")
}

/// The timeline limit the filter asks for.
fn timeline_limit(request: &LocalRequest<'_>) -> i64 {
    request
        .filter
        .room
        .timeline
        .events
        .limit
        .unwrap_or(DEFAULT_TIMELINE_LIMIT)
        .clamp(0, MAX_TIMELINE_LIMIT)
}

/// Which section a room goes to.
enum Section {
    Join,
    Invite,
    Leave,
    Knock,
}

/// Builds the local part of a sync.
pub async fn build(
    rooms: &Rooms,
    db: &PgPool,
    request: &LocalRequest<'_>,
) -> Result<LocalSync, RoomError> {
    let user = request.requester.user_id.as_str();
    // One connection for the room list and the bulk reads (each pooled acquire costs a round
    // trip), and for the rooms themselves when there are only a few.
    let mut conn = db.acquire().await.map_err(StoreError::from)?;
    let mut user_rooms = rooms_with_news(rooms, &mut conn, request).await?;
    rejoined_in_the_gap(&mut conn, request, &mut user_rooms).await?;
    let ignored = Arc::new(store::ignore::ignored_by(&mut conn, user).await?);
    let mut sync = LocalSync {
        rooms: request.room_lists.of(&mut conn, user).await?,
        ..LocalSync::default()
    };
    // Invites from ignored users are not shown (Synapse's sync drops them too).
    let shown: Vec<&UserRoom> = user_rooms
        .iter()
        .filter(|room| {
            request.filter.room.allows_room(&room.room_id)
                && request.classes.available(&room.room_id)
        })
        .filter(|room| !(room.membership == "invite" && ignored.contains(&room.member_sender)))
        .collect();
    let joined: Vec<(String, bool)> = shown
        .iter()
        .filter(|room| room.membership == "join")
        .map(|room| (room.room_id.clone(), newly_joined(request, room)))
        .collect();
    let side = side_of_rooms(rooms, &mut conn, request, &joined).await?;
    // Only the rooms that will have an entry: an incremental sync of a user in many rooms
    // reads nothing about the quiet ones.
    let active: Vec<&UserRoom> = shown
        .into_iter()
        .filter(|room| match room.membership.as_str() {
            "join" => {
                newly_joined(request, room)
                    || request.full_state
                    || room.latest.is_some()
                    || side.contains_key(&room.room_id)
            }
            "invite" | "knock" => request.since == 0 || room.member_stream > request.since,
            "leave" | "ban" => shows_leave(request, room),
            _ => false,
        })
        .collect();
    // The rooms are built a chunk at a time, and each entry is kept as JSON text once it is
    // complete: what is held at once is one chunk's rows and values, not every room's (a
    // heavy user's initial sync has thousands of rooms).
    let mut side = side;
    for chunk in active.chunks(ROOMS_PER_CHUNK) {
        // The unread counts come from their own connection while the rooms are read, and are
        // put into the entries at the end.
        let counted: Vec<String> = chunk
            .iter()
            .filter(|room| room.membership == "join")
            .map(|room| room.room_id.clone())
            .collect();
        let chunk_side: HashMap<String, Side> = chunk
            .iter()
            .filter_map(|room| side.remove_entry(&room.room_id))
            .collect();
        let (unread, entries) = tokio::try_join!(
            pooled_unread(db, request, &counted),
            entries(
                rooms,
                db,
                &mut conn,
                request,
                (chunk_side, ignored.clone()),
                chunk
            ),
        )?;
        for (room, entry) in entries {
            let (section, mut value) = match entry {
                Some(entry) => entry,
                None => continue,
            };
            let target = match section {
                Section::Join => {
                    let per_thread = request.filter.room.timeline.unread_thread_notifications;
                    let counts = unread.get(&room.room_id).cloned().unwrap_or_default();
                    let (room_counts, thread_counts) = counts.sync_fields(per_thread);
                    value["unread_notifications"] = room_counts;
                    if let Some(threads) = thread_counts {
                        value["unread_thread_notifications"] = threads;
                    }
                    &mut sync.join
                }
                Section::Invite => &mut sync.invite,
                Section::Leave => &mut sync.leave,
                Section::Knock => &mut sync.knock,
            };
            let text = serde_json::value::to_raw_value(&value)
                .map_err(|err| RoomError::Internal(format!("room entry as JSON: {err}")))?;
            target.push((room.room_id.clone(), text));
        }
    }
    Ok(sync)
}

/// The user's rooms the sync may show. An initial or `full_state` sync shows every room; an
/// incremental one reads only the rooms that can have news (events, membership, receipts,
/// account data or typing in its ranges), so its cost follows what changed rather than how
/// many rooms the user is in. A gap too wide to scan reads every room.
async fn rooms_with_news(
    rooms: &Rooms,
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
) -> Result<Vec<UserRoom>, RoomError> {
    let user = request.requester.user_id.as_str();
    if request.since > 0 && !request.full_state {
        let typing: Vec<String> = rooms
            .typing
            .changed_since(request.side_since.typing)
            .into_iter()
            .map(|(room, _)| room)
            .collect();
        let side = (request.side_since.room_data, request.side_upto.room_data);
        let range = (request.since, request.upto);
        if let Some(changed) =
            store::rooms::changed_user_rooms(conn, user, range, side, &typing).await?
        {
            return Ok(changed);
        }
    }
    Ok(store::rooms::user_rooms(conn, user, request.since, request.upto).await?)
}

/// A user who left (or was kicked) and joined again between two syncs gets the room as new,
/// as Synapse sends it: full state and a timeline read without `since`, so the state changed
/// while they were away reaches them. Such rooms are marked by a `membership_before` of
/// `leave`, which is what [`newly_joined`] reads.
async fn rejoined_in_the_gap(
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    user_rooms: &mut [UserRoom],
) -> Result<(), RoomError> {
    if request.since == 0 {
        return Ok(());
    }
    // Only a room where the user's member event changed in the gap can be one.
    let candidates: Vec<String> = user_rooms
        .iter()
        .filter(|room| {
            room.membership == "join"
                && room.membership_before.as_deref() == Some("join")
                && room.member_stream > request.since
        })
        .map(|room| room.room_id.clone())
        .collect();
    if candidates.is_empty() {
        return Ok(());
    }
    let user = request.requester.user_id.as_str();
    let histories = store::events::reader_histories(conn, &candidates, user).await?;
    for room in user_rooms.iter_mut() {
        let left = histories
            .get(&room.room_id)
            .is_some_and(|(memberships, _)| {
                memberships.iter().any(|(stream, membership)| {
                    *stream > request.since && *stream <= request.upto && membership != "join"
                })
            });
        if left {
            room.membership_before = Some("leave".into());
        }
    }
    Ok(())
}

/// The user's unread counts in the joined rooms, on a connection of its own.
async fn pooled_unread(
    db: &PgPool,
    request: &LocalRequest<'_>,
    joined: &[String],
) -> Result<HashMap<String, crate::push::counts::Counts>, RoomError> {
    if joined.is_empty() {
        return Ok(HashMap::new());
    }
    let mut conn = db.acquire().await.map_err(StoreError::from)?;
    let user = &request.requester.user_id;
    Ok(crate::push::counts::unread_of_rooms(&mut conn, user, joined, request.upto).await?)
}

/// The entries of the rooms the sync shows (joined rooms without their unread counts).
async fn entries<'a>(
    rooms: &Rooms,
    db: &PgPool,
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    (side, ignored): (HashMap<String, Side>, Arc<HashSet<String>>),
    active: &[&'a UserRoom],
) -> Result<Vec<(&'a UserRoom, Option<(Section, Value)>)>, RoomError> {
    let user = request.requester.user_id.as_str();
    let pre = {
        let ids: Vec<String> = active
            .iter()
            .filter(|room| room.membership != "invite")
            .map(|room| room.room_id.clone())
            .collect();
        // The timelines of the joined rooms that will be shown, as room_part reads them.
        let chunk = timeline_limit(request) * 2 + 2;
        // A few rooms are quicker with their own queries (room_part falls back to them).
        let bulk = active.len() >= BULK_FROM;
        let windows: Vec<(String, i64)> = active
            .iter()
            .filter(|room| bulk && room.membership == "join")
            .map(|room| {
                let after = if newly_joined(request, room) {
                    0
                } else {
                    request.since
                };
                (room.room_id.clone(), after)
            })
            .collect();
        let mut timelines: HashMap<String, FirstChunk> =
            store::events::recent_of_rooms(conn, &windows, request.upto + 1, chunk)
                .await?
                .into_iter()
                .map(|(room, after, rows)| (room, ((after, request.upto + 1, chunk), rows)))
                .collect();
        // A room without rows in its window: known empty, no need to ask again.
        for (room, after) in windows {
            timelines
                .entry(room)
                .or_insert(((after, request.upto + 1, chunk), Vec::new()));
        }
        let lazy = request.filter.room.state.events.lazy_load_members;
        let stateful: Vec<String> = active
            .iter()
            .filter(|room| {
                bulk && room.membership == "join"
                    && (newly_joined(request, room) || request.full_state || lazy)
            })
            .map(|room| room.room_id.clone())
            .collect();
        // Whether the timelines' events have relations to bundle, for all rooms at once.
        let probed: Vec<String> = timelines
            .values()
            .flat_map(|(_, rows)| rows.iter().map(|e| e.event.event_id.to_string()))
            .collect();
        let related = store::events::related_among(conn, &probed).await?;
        let unrelated = probed
            .into_iter()
            .filter(|id| !related.contains(id))
            .collect();
        Prefetch {
            states: store::events::state_of_rooms(conn, &stateful, request.upto).await?,
            histories: store::events::reader_histories(conn, &ids, user).await?,
            side,
            timelines,
            unrelated,
            ignored,
        }
    };
    let mut entries = Vec::with_capacity(active.len());
    if active.len() < BULK_FROM {
        for room in active {
            entries.push((*room, room_entry(rooms, conn, request, &pre, room).await?));
        }
    } else {
        for group in active.chunks(CONCURRENT_ROOMS) {
            let mut pending = Vec::with_capacity(group.len());
            for room in group {
                pending.push(pooled_room_entry(rooms, db, request, &pre, room));
            }
            entries.extend(try_join_all(pending).await?);
        }
    }
    Ok(entries)
}

/// [`room_entry`] on a connection of its own.
async fn pooled_room_entry<'a>(
    rooms: &Rooms,
    db: &PgPool,
    request: &LocalRequest<'_>,
    pre: &Prefetch,
    room: &'a UserRoom,
) -> Result<(&'a UserRoom, Option<(Section, Value)>), RoomError> {
    let mut conn = db.acquire().await.map_err(StoreError::from)?;
    let entry = room_entry(rooms, &mut conn, request, pre, room).await?;
    Ok((room, entry))
}

/// One room's entry, if the sync shows it.
async fn room_entry(
    rooms: &Rooms,
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    pre: &Prefetch,
    room: &UserRoom,
) -> Result<Option<(Section, Value)>, RoomError> {
    let user = request.requester.user_id.as_str();
    Ok(match room.membership.as_str() {
        "join" => joined_room(rooms, conn, request, pre, room)
            .await?
            .map(|value| (Section::Join, value)),
        "invite" if request.since == 0 || room.member_stream > request.since => Some((
            Section::Invite,
            stripped_room(conn, room, user, "invite_state").await?,
        )),
        "knock" if request.since == 0 || room.member_stream > request.since => Some((
            Section::Knock,
            stripped_room(conn, room, user, "knock_state").await?,
        )),
        "leave" | "ban" if shows_leave(request, room) => Some((
            Section::Leave,
            left_room(rooms, conn, request, pre, room).await?,
        )),
        _ => None,
    })
}

fn shows_leave(request: &LocalRequest<'_>, room: &UserRoom) -> bool {
    if request.since == 0 {
        let own_leave =
            room.membership == "leave" && room.member_sender == request.requester.user_id.as_str();
        !own_leave || request.filter.room.include_leave
    } else {
        room.member_stream > request.since
    }
}

/// The room's `ephemeral` events: new receipts as one `m.receipt` (private receipts only to
/// their owner; a receipt's Beeper extras merged into its data) and the typing list.
fn ephemeral(request: &LocalRequest<'_>, room_id: &str, side: Option<&Side>) -> Vec<Value> {
    let Some(side) = side else {
        return Vec::new();
    };
    if !request.filter.room.ephemeral.allows_room(room_id) {
        return Vec::new();
    }
    let user = request.requester.user_id.as_str();
    let filter = &request.filter.room.ephemeral.events;
    let mut events = Vec::new();
    let visible = side
        .receipts
        .iter()
        .filter(|r| r.kind != "m.read.private" || r.user_id == user);
    let content = receipt_content(visible);
    if !content.is_empty() && filter.allows_kind("m.receipt") {
        events.push(json!({ "type": "m.receipt", "content": content }));
    }
    if let Some(users) = &side.typing
        && filter.allows_kind("m.typing")
    {
        events.push(json!({ "type": "m.typing", "content": { "user_ids": users } }));
    }
    events
}

/// The room's `account_data` events: the user's entries written in the window.
fn account_data(request: &LocalRequest<'_>, side: Option<&Side>) -> Vec<Value> {
    let filter = &request.filter.room.account_data.events;
    side.map_or(&[][..], |side| side.account_data.as_slice())
        .iter()
        .filter(|(kind, _)| filter.allows_kind(kind))
        .map(|(kind, content)| json!({ "type": kind, "content": content }))
        .collect()
}

/// One room's entry, before it is shaped for its section.
struct RoomPart {
    timeline: Vec<Value>,
    limited: bool,
    prev_batch: Token,
    state: Vec<Value>,
    /// The room summary (joined rooms only).
    summary: Value,
}

async fn joined_room(
    rooms: &Rooms,
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    pre: &Prefetch,
    room: &UserRoom,
) -> Result<Option<Value>, RoomError> {
    let newly = newly_joined(request, room);
    let side = pre.side.get(&room.room_id);
    if !newly && !request.full_state && room.latest.is_none() && side.is_none() {
        return Ok(None);
    }
    let after = if newly { 0 } else { request.since };
    let full = newly || request.full_state;
    let summary = Summary::Wanted { newly };
    let part = room_part(
        rooms,
        conn,
        request,
        pre,
        room,
        (after, request.upto),
        full,
        summary,
    )
    .await?;
    // Synapse marks the timeline of a room new to an incremental sync limited, whether or not
    // it was cut short, so the client paginates instead of trusting what it had.
    let limited = part.limited || (newly && request.since > 0);
    let ephemeral = ephemeral(request, &room.room_id, side);
    let account_data = account_data(request, side);
    // An entry with nothing left after filtering is not listed (Synapse's `__bool__` of a
    // joined room: timeline events or a gap, state, ephemeral or account data).
    if !full
        && part.timeline.is_empty()
        && !limited
        && part.state.is_empty()
        && ephemeral.is_empty()
        && account_data.is_empty()
    {
        return Ok(None);
    }
    Ok(Some(json!({
        "timeline": {
            "events": part.timeline,
            "limited": limited,
            "prev_batch": part.prev_batch.to_string(),
        },
        "state": { "events": part.state },
        "summary": part.summary,
        "ephemeral": { "events": ephemeral },
        "account_data": { "events": account_data },
    })))
}

async fn left_room(
    rooms: &Rooms,
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    pre: &Prefetch,
    room: &UserRoom,
) -> Result<Value, RoomError> {
    let was_joined = request.since > 0 && room.membership_before.as_deref() == Some("join");
    let after = if was_joined { request.since } else { 0 };
    let full = !was_joined || request.full_state;
    let range = (after, room.member_stream);
    let part = room_part(rooms, conn, request, pre, room, range, full, Summary::None).await?;
    Ok(json!({
        "timeline": {
            "events": part.timeline,
            "limited": part.limited,
            "prev_batch": part.prev_batch.to_string(),
        },
        "state": { "events": part.state },
        "account_data": { "events": [] },
    }))
}

/// Whether a room entry has a summary.
#[derive(Clone, Copy)]
enum Summary {
    None,
    /// A joined room; `newly` when it appears to the client for the first time.
    Wanted {
        newly: bool,
    },
}

/// Timeline, state and summary of a room for the range `(after, upto]`.
#[allow(clippy::too_many_arguments)]
async fn room_part(
    rooms: &Rooms,
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    pre: &Prefetch,
    room: &UserRoom,
    (after, upto): (i64, i64),
    full: bool,
    summary_wanted: Summary,
) -> Result<RoomPart, RoomError> {
    let requester = request.requester;
    let room_id = room.room_id.as_str();
    let (memberships, visibilities) = pre.histories.get(room_id).cloned().unwrap_or_default();
    let reader = Reader {
        memberships: memberships
            .into_iter()
            .filter(|(s, _)| *s <= upto)
            .collect(),
        visibilities: visibilities
            .into_iter()
            .filter(|(s, _)| *s <= upto)
            .collect(),
        ignored: pre.ignored.clone(),
    };
    let timeline_filter = &request.filter.room.timeline;
    let shows_timeline = timeline_filter.allows_room(room_id);
    let limit = timeline_limit(request);
    let wanted = usize::try_from(limit).unwrap_or(0);

    // Newest first, until one more than `limit` is found (that one only says `limited`).
    // A state event that is part of the room's state at `upto` is shown whatever the history
    // visibility, as Synapse's sync does (`always_include_ids`): a user back in a room sees
    // the state that changed while they were away.
    let mut current: Option<HashSet<String>> = None;
    let mut picked: Vec<EventWithPrev> = Vec::new();
    let mut limited = false;
    let mut top_topo = None;
    let mut before = upto + 1;
    'scan: loop {
        if !shows_timeline {
            break;
        }
        let first_chunk = (before == upto + 1)
            .then(|| pre.timelines.get(room_id))
            .flatten()
            .filter(|(window, _)| *window == (after, before, limit * 2 + 2));
        let chunk = limit * 2 + 2;
        let rows = match first_chunk {
            Some((_, rows)) => rows.clone(),
            None => store::events::recent(conn, room_id, after, before, chunk).await?,
        };
        if rows.is_empty() {
            break;
        }
        // A short chunk is the whole rest of the window: no need to ask for the next.
        let last_chunk = i64::try_from(rows.len()).unwrap_or(i64::MAX) < chunk;
        for row in rows {
            before = row.event.stream;
            top_topo.get_or_insert(row.event.topo);
            if !timeline_filter.events.allows(&row.event) {
                continue;
            }
            let visible = Rooms::visible(&reader, requester, &row.event)
                || (row.event.state_key.is_some()
                    && current_state(conn, pre, room_id, upto, &mut current)
                        .await?
                        .contains(row.event.event_id.as_str()));
            if visible {
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
        // Synapse loads a room new to the client (initial sync, newly joined, archived)
        // without a `since`, and unless the timeline was cut short its `prev_batch` is then
        // the sync's own position: paging back returns the timeline again before older events.
        (_, Some(topo)) if after == 0 && !limited => Token(topo),
        (Some(first), _) => Token(first.event.topo - 1),
        (None, Some(topo)) => Token(topo),
        (None, None) => {
            let room_row = store::rooms::get(conn, room_id).await?;
            Token(room_row.map_or(0, |r| r.max_topo))
        }
    };

    let state_rows = room_state(
        conn,
        request,
        pre,
        room_id,
        (after, upto),
        full,
        &picked,
        limited,
    )
    .await?;

    // The summary, as Synapse recomputes it for a client lazy-loading members: for a room
    // loaded whole, when the timeline has member events, or after a gap whose state has some.
    let lazy = request.filter.room.state.events.lazy_load_members;
    let members_changed = picked.iter().any(|e| e.event.kind == "m.room.member");
    let state_members = state_rows.iter().any(|e| e.event.kind == "m.room.member");
    let (summary, mut state_rows) = match summary_wanted {
        Summary::Wanted { newly }
            if lazy && (newly || after == 0 || members_changed || (limited && state_members)) =>
        {
            let (summary, heroes) = summary(conn, request, room).await?;
            let rows = with_heroes(conn, request, room_id, &picked, state_rows, &heroes).await?;
            (summary, rows)
        }
        Summary::Wanted { .. } => (json!({}), state_rows),
        Summary::None => (json!({}), state_rows),
    };
    if lazy && !request.filter.room.state.events.include_redundant_members {
        let device = request.device();
        let timeline_members = picked
            .iter()
            .filter(|e| e.event.kind == "m.room.member")
            .filter_map(|e| Some((e.event.state_key.as_deref()?, e.event.event_id.as_str())));
        let state_members = state_rows
            .iter()
            .filter(|e| e.event.kind == "m.room.member")
            .filter_map(|e| Some((e.event.state_key.as_deref()?, e.event.event_id.as_str())));
        request
            .lazy_members
            .record(&device, state_members.chain(timeline_members));
    }
    state_rows.sort_by_key(|e| e.event.stream);
    let shape = &request.filter.shape;
    let depths: HashMap<String, i64> = if shape.is_default() {
        HashMap::new()
    } else {
        state_rows
            .iter()
            .chain(&picked)
            .map(|e| (e.event.event_id.to_string(), e.event.topo))
            .collect()
    };
    let mut state = state_events(rooms, conn, requester, &reader, state_rows).await?;
    let bundles_nothing = picked.iter().all(|e| {
        e.event.redacted_by.is_none() && pre.unrelated.contains(e.event.event_id.as_str())
    });
    let mut timeline = if bundles_nothing {
        // Known to have no relations and no redactions: the same as [`client_events`]
        // gives, without asking the store.
        state_events(rooms, conn, requester, &reader, picked).await?
    } else {
        client_events(rooms, conn, requester, &reader, picked).await?
    };
    shape.apply(&mut state, &depths, room_id);
    shape.apply(&mut timeline, &depths, room_id);
    Ok(RoomPart {
        timeline,
        limited,
        prev_batch,
        state,
        summary,
    })
}

/// The IDs of the room's state events at `upto`, read once per room entry.
async fn current_state<'c>(
    conn: &mut PgConnection,
    pre: &Prefetch,
    room_id: &str,
    upto: i64,
    current: &'c mut Option<HashSet<String>>,
) -> Result<&'c HashSet<String>, RoomError> {
    if current.is_none() {
        let rows = match pre.states.get(room_id) {
            Some(rows) if rows.iter().all(|e| e.event.stream <= upto) => rows.clone(),
            _ => store::events::state_at(conn, room_id, upto).await?,
        };
        *current = Some(rows.iter().map(|e| e.event.event_id.to_string()).collect());
    }
    Ok(current.get_or_insert_with(HashSet::new))
}

/// The state a room entry sends before its timeline, as Synapse computes it for linear
/// history. With the timeline starting at `at` (its first event included, as Synapse's state
/// "at" an event is after it) and ending at `upto`:
///
/// * a room loaded whole (`full`: new to the client, or `full_state`): the state at `at` and at
///   `upto`, minus the timeline's events. State that changed within the timeline's range but
///   is not in it (hidden by history visibility or the timeline filter) is thus sent too;
/// * after a gap (`limited`): the same, minus what the client had at `since`;
/// * otherwise nothing, but for lazy-loaded members.
///
/// Lazy-loading members keeps, of the member events, only those of the timeline's senders
/// (and the user's own in a room loaded whole); senders' members are sent after a gap even
/// when older than `since`, and without a gap they are the members at `at`. The device is
/// then spared the member events it was already sent ([`super::lazy`]) unless the filter has
/// `include_redundant_members`. The state filter applies last.
#[allow(clippy::too_many_arguments)]
async fn room_state(
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    pre: &Prefetch,
    room_id: &str,
    (after, upto): (i64, i64),
    full: bool,
    picked: &[EventWithPrev],
    limited: bool,
) -> Result<Vec<EventWithPrev>, RoomError> {
    let state_filter = &request.filter.room.state;
    let lazy = state_filter.events.lazy_load_members;
    if !state_filter.allows_room(room_id) || !(full || limited || lazy) {
        return Ok(Vec::new());
    }
    let user = request.requester.user_id.as_str();
    let mut senders: HashSet<&str> = picked.iter().map(|e| e.event.sender.as_str()).collect();
    if full {
        senders.insert(user);
    }
    let wanted_member = |e: &EventWithPrev| {
        !lazy
            || e.event.kind != "m.room.member"
            || e.event
                .state_key
                .as_deref()
                .is_some_and(|k| senders.contains(k))
    };
    let at = picked.first().map_or(upto, |first| first.event.stream);
    // The state at `upto`; the prefetch read it at the sync's position, which is the same
    // when none of it is newer than `upto` (a left room ends earlier).
    let end = match pre.states.get(room_id) {
        Some(rows) if rows.iter().all(|e| e.event.stream <= upto) => rows.clone(),
        _ => store::events::state_at(conn, room_id, upto).await?,
    };
    let start = if end.iter().all(|e| e.event.stream <= at) {
        end.clone()
    } else {
        store::events::state_at(conn, room_id, at).await?
    };
    let rows: Vec<EventWithPrev> = if full || limited {
        let in_timeline: HashSet<&str> = picked.iter().map(|e| e.event.event_id.as_str()).collect();
        let start_ids: HashSet<String> =
            start.iter().map(|e| e.event.event_id.to_string()).collect();
        // `end` adds the state changed within the timeline's range.
        let changed: Vec<EventWithPrev> = end
            .into_iter()
            .filter(|e| !start_ids.contains(e.event.event_id.as_str()))
            .collect();
        start
            .into_iter()
            .chain(changed)
            .filter(|e| !in_timeline.contains(e.event.event_id.as_str()))
            .filter(wanted_member)
            .filter(|e| {
                full || e.event.stream > request.since
                    // Lazy-loading: the senders' members whatever their age.
                    || (lazy
                        && e.event.kind == "m.room.member"
                        && start_ids.contains(e.event.event_id.as_str()))
            })
            .collect()
    } else if picked.is_empty() {
        Vec::new()
    } else {
        start
            .into_iter()
            .filter(|e| e.event.kind == "m.room.member")
            .filter(wanted_member)
            .collect()
    };
    let mut rows: Vec<EventWithPrev> = rows
        .into_iter()
        .filter(|e| state_filter.events.allows(&e.event))
        .collect();
    if lazy && !state_filter.events.include_redundant_members {
        let device = request.device();
        if after == 0 {
            // A room loaded whole starts the device's record over, as Synapse does.
            request.lazy_members.clear(&device);
        } else {
            rows.retain(|e| {
                e.event.kind != "m.room.member"
                    || !e.event.state_key.as_deref().is_some_and(|k| {
                        request
                            .lazy_members
                            .has(&device, k, e.event.event_id.as_str())
                    })
            });
        }
    }
    Ok(rows)
}

/// Adds to `state` the current member events of the summary's heroes that the client has
/// neither in this entry nor (lazy-loading without redundant members) from before.
async fn with_heroes(
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    room_id: &str,
    picked: &[EventWithPrev],
    mut state: Vec<EventWithPrev>,
    heroes: &[String],
) -> Result<Vec<EventWithPrev>, RoomError> {
    if heroes.is_empty() {
        return Ok(state);
    }
    let known: HashSet<String> = state
        .iter()
        .chain(picked)
        .filter(|e| e.event.kind == "m.room.member")
        .filter_map(|e| e.event.state_key.clone())
        .collect();
    let keys: Vec<(&str, &str)> = heroes
        .iter()
        .filter(|hero| !known.contains(hero.as_str()))
        .map(|hero| ("m.room.member", hero.as_str()))
        .collect();
    if keys.is_empty() {
        return Ok(state);
    }
    let device = request.device();
    let skip_known = !request.filter.room.state.events.include_redundant_members;
    let members = store::events::current_state_at_keys(conn, room_id, &keys).await?;
    state.extend(members.into_iter().filter(|e| {
        !(skip_known
            && e.event.state_key.as_deref().is_some_and(|k| {
                request
                    .lazy_members
                    .has(&device, k, e.event.event_id.as_str())
            }))
    }));
    Ok(state)
}

/// State events in client format. State rarely has relations or redactions, so the
/// aggregation queries of [`client_events`] are skipped unless one is redacted. (Sliding
/// sync's rooms use it too.)
pub(crate) async fn state_events(
    rooms: &Rooms,
    conn: &mut PgConnection,
    requester: &Requester,
    reader: &Reader,
    events: Vec<EventWithPrev>,
) -> Result<Vec<Value>, RoomError> {
    if events.iter().any(|e| e.event.redacted_by.is_some()) {
        return client_events(rooms, conn, requester, reader, events).await;
    }
    let scope = requester.txn_scope();
    let viewer = Viewer {
        txn_scope: Some(&scope),
        now_ms: now_ms(),
    };
    Ok(events
        .into_iter()
        .map(|e| {
            let related = Related {
                prev: e.prev,
                redacted_because: None,
            };
            let mut value = to_client(&e.event, &related, viewer);
            if let Some(object) = value.as_object_mut() {
                object.remove("room_id");
            }
            value
        })
        .collect())
}

/// Events in sync's client format (no `room_id`: the room is the key they are under), for
/// `/sync` and sliding sync alike.
pub(crate) async fn client_events(
    rooms: &Rooms,
    conn: &mut PgConnection,
    requester: &Requester,
    reader: &Reader,
    events: Vec<EventWithPrev>,
) -> Result<Vec<Value>, RoomError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut values = rooms.serve(conn, requester, reader, events).await?;
    for value in &mut values {
        if let Some(object) = value.as_object_mut() {
            object.remove("room_id");
        }
    }
    Ok(values)
}

/// The room summary and its heroes, as Synapse gives them: only to clients lazy-loading
/// members (when membership may have changed for them; the caller decides that); heroes only
/// when the room has no name or alias. Their member events then go with the state.
async fn summary(
    conn: &mut PgConnection,
    request: &LocalRequest<'_>,
    room: &UserRoom,
) -> Result<(Value, Vec<String>), RoomError> {
    if !request.filter.room.state.events.lazy_load_members {
        return Ok((json!({}), Vec::new()));
    }
    let user = request.requester.user_id.as_str();
    let (counts, heroes) = store::rooms::member_summary(conn, &room.room_id, user, HEROES).await?;
    let mut summary = json!({
        "m.joined_member_count": counts.get("join").copied().unwrap_or(0),
        "m.invited_member_count": counts.get("invite").copied().unwrap_or(0),
    });
    let keys = [("m.room.name", ""), ("m.room.canonical_alias", "")];
    let named = store::events::current_state_at_keys(conn, &room.room_id, &keys)
        .await?
        .into_iter()
        .any(|e| {
            let field = match e.event.kind.as_str() {
                "m.room.name" => "name",
                "m.room.canonical_alias" => "alias",
                _ => return false,
            };
            e.event
                .content
                .get(field)
                .and_then(Value::as_str)
                .is_some_and(|v| !v.is_empty())
        });
    if named {
        return Ok((summary, Vec::new()));
    }
    summary["m.heroes"] = json!(heroes);
    Ok((summary, heroes))
}

/// An invited room (`invite_state`): stripped prejoin state and the inviter's member event,
/// then the invite; a knocked room (`knock_state`, Synapse's `knock_room_state`): the stripped
/// prejoin state, then the knock, stripped as well.
async fn stripped_room(
    conn: &mut PgConnection,
    room: &UserRoom,
    user: &str,
    section: &str,
) -> Result<Value, RoomError> {
    let events = stripped_state(conn, room, user, section).await?;
    Ok(json!({ section: { "events": events } }))
}

/// The invite state of an invited room (also sliding sync's `invite_state`).
pub(crate) async fn invite_state(
    conn: &mut PgConnection,
    room: &UserRoom,
    user: &str,
) -> Result<Vec<Value>, RoomError> {
    stripped_state(conn, room, user, "invite_state").await
}

/// The events of [`stripped_room`]'s `section` (`invite_state` or `knock_state`).
async fn stripped_state(
    conn: &mut PgConnection,
    room: &UserRoom,
    user: &str,
    section: &str,
) -> Result<Vec<Value>, RoomError> {
    let mut keys: Vec<(&str, &str)> = PREJOIN_STATE.iter().map(|kind| (*kind, "")).collect();
    keys.push(("m.room.member", room.member_sender.as_str()));
    keys.push(("m.room.member", user));
    let state = store::events::current_state_at_keys(conn, &room.room_id, &keys).await?;
    let mut events: Vec<Value> = Vec::new();
    let mut invite = None;
    for e in &state {
        let event = &e.event;
        let key = event.state_key.as_deref().unwrap_or_default();
        let stripped = || {
            json!({
                "type": event.kind,
                "state_key": key,
                "content": event.content,
                "sender": event.sender,
            })
        };
        let prejoin = PREJOIN_STATE.contains(&event.kind.as_str()) && key.is_empty();
        let inviter = event.kind == "m.room.member" && key == room.member_sender && key != user;
        if prejoin || inviter {
            events.push(stripped());
        } else if event.kind == "m.room.member"
            && event.stream == room.member_stream
            && section == "knock_state"
        {
            // Synapse sends the knock itself stripped too.
            invite = Some(stripped());
        } else if event.kind == "m.room.member" && event.stream == room.member_stream {
            invite = Some(json!({
                "type": event.kind,
                "state_key": key,
                "content": event.content,
                "sender": event.sender,
                "event_id": event.event_id,
                "origin_server_ts": event.origin_server_ts,
                "unsigned": {},
            }));
        }
    }
    events.extend(invite);
    Ok(events)
}

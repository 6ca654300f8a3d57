//! Reading local rooms: events, state, members, pagination, context, relations — each
//! filtered by what the reader may see ([`super::visibility`]).
//!
//! Pagination tokens of local rooms are `ht{topo}`: the position just after the event with
//! that topological position. They are only ever handed back to hungryserv (the room ID in
//! the path routes them here).

use std::collections::{BTreeMap, HashSet};

use ruma::OwnedRoomId;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sqlx::PgConnection;

use super::RoomError;
use super::event::{Related, Viewer, to_client};
use super::service::{Rooms, now_ms};
use super::visibility::{Reach, Reader};
use crate::auth::requester::Requester;
use crate::store::{self, events::EventWithPrev, events::StoredEvent};

/// What Synapse answers a reader who is not (and was not) in the room.
fn not_in_room(requester: &Requester, room_id: &OwnedRoomId) -> RoomError {
    RoomError::Forbidden(format!(
        "User {} not in room {room_id}, and room previews are disabled",
        requester.user_id
    ))
}

/// Which events [`Rooms::serve_as`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Served {
    /// Room events as Synapse filters them for the reader (timelines, `/event`, relations).
    Filtered,
    /// State and member lists, which Synapse serves without that filter.
    State,
}

/// The reader's membership after `event`: the event's own for their member event, else
/// their latest member event at or before it, else `leave` (Synapse's MSC4115 rule).
fn membership_after(reader: &Reader, user: &str, event: &StoredEvent) -> String {
    if event.kind == "m.room.member"
        && event.state_key.as_deref() == Some(user)
        && let Some(membership) = event.content.get("membership").and_then(Value::as_str)
    {
        return membership.to_owned();
    }
    reader
        .memberships
        .iter()
        .rev()
        .find(|(stream, _)| *stream <= event.stream)
        .map_or_else(|| "leave".to_owned(), |(_, membership)| membership.clone())
}

/// What a `/relations` request asks for, besides the parent event.
#[derive(Debug, Clone, Copy)]
pub struct RelationsRequest<'a> {
    pub rel_type: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub from: Option<Token>,
    pub to: Option<Token>,
    pub forwards: bool,
    /// Also relations of the relations (MSC3981; matrix-js-sdk asks it for threads).
    pub recurse: bool,
    pub limit: i64,
}

/// A `/messages` or `/relations` position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub i64);

impl Token {
    pub fn parse(text: &str) -> Result<Self, RoomError> {
        text.strip_prefix("ht")
            .and_then(|n| n.parse().ok())
            .map(Token)
            .ok_or_else(|| RoomError::InvalidParam(format!("Invalid token {text:?}")))
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ht{}", self.0)
    }
}

/// A `RoomEventFilter`, as far as local rooms apply it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EventFilter {
    #[serde(default)]
    pub limit: Option<i64>,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub not_types: Vec<String>,
    #[serde(default)]
    pub senders: Option<Vec<String>>,
    #[serde(default)]
    pub not_senders: Vec<String>,
    #[serde(default)]
    pub lazy_load_members: bool,
    /// Lazy loading sends a member again even when this device was sent it before (sync).
    #[serde(default)]
    pub include_redundant_members: bool,
    /// Only events whose `content.url` is a string (`true`), or only the others (`false`).
    #[serde(default)]
    pub contains_url: Option<bool>,
    /// Only events with a relation from one of these senders (MSC3440; Synapse's filter
    /// joins each event's relations, so one relation must match both `related_by_*`).
    #[serde(default)]
    pub related_by_senders: Option<Vec<String>>,
    /// Only events with a relation of one of these types.
    #[serde(default)]
    pub related_by_rel_types: Option<Vec<String>>,
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

impl EventFilter {
    /// Whether the filter's `types`/`not_types` allow an event type (for what has no sender:
    /// receipts, typing, account data).
    pub fn allows_kind(&self, kind: &str) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| type_matches(t, kind)))
            && !self.not_types.iter().any(|t| type_matches(t, kind))
    }

    /// Whether the filter asks about relations (then [`Self::allows`] is not enough: the
    /// events related to need a look-up).
    pub fn by_relations(&self) -> bool {
        self.related_by_senders
            .as_ref()
            .is_some_and(|s| !s.is_empty())
            || self
                .related_by_rel_types
                .as_ref()
                .is_some_and(|t| !t.is_empty())
    }

    pub fn allows(&self, event: &StoredEvent) -> bool {
        let sender = event.sender.as_str();
        self.allows_kind(&event.kind)
            && self
                .senders
                .as_ref()
                .is_none_or(|senders| senders.iter().any(|s| s == sender))
            && !self.not_senders.iter().any(|s| s == sender)
            // Synapse's test: a string `url`, whatever else the content holds.
            && self.contains_url.is_none_or(|wanted| {
                wanted == event.content.get("url").is_some_and(Value::is_string)
            })
    }
}

/// Which page of `/messages` to read.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    /// Where to start; the room's end (backwards) or start (forwards) when absent.
    pub from: Option<Token>,
    /// Where to stop, if anywhere.
    pub to: Option<Token>,
    /// Direction `f` (true) or `b`.
    pub forwards: bool,
    /// Most events to return.
    pub limit: i64,
}

/// One page of `/messages`.
#[derive(Debug, Clone)]
pub struct Page {
    pub chunk: Vec<Value>,
    /// Stream position of the last event in `chunk`.
    pub last_stream: Option<i64>,
    pub start: Token,
    pub end: Option<Token>,
    pub state: Vec<Value>,
}

impl Rooms {
    pub(super) async fn conn(
        &self,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, RoomError> {
        Ok(self.db.acquire().await.map_err(store::StoreError::from)?)
    }

    /// The reader's view of the room, or the error Synapse gives a non-member.
    pub(super) async fn reader(
        &self,
        conn: &mut PgConnection,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<(Reader, Reach), RoomError> {
        let mut memberships =
            store::events::membership_history(conn, room_id.as_str(), requester.user_id.as_str())
                .await?;
        // Someone who forgot the room reads it as if never in it (Synapse's
        // `check_user_in_room`: a departed user who forgot is not let in).
        if let Some((latest, membership)) = memberships.last()
            && membership != "join"
            && super::forget::forgotten(conn, room_id.as_str(), requester.user_id.as_str(), *latest)
                .await?
        {
            memberships.clear();
        }
        let reader = Reader {
            memberships,
            visibilities: store::events::visibility_history(conn, room_id.as_str()).await?,
            ignored: std::sync::Arc::new(
                store::ignore::ignored_by(conn, requester.user_id.as_str()).await?,
            ),
        };
        match reader.reach() {
            Some(reach) => Ok((reader, reach)),
            None => Err(not_in_room(requester, room_id)),
        }
    }

    pub(crate) fn visible(reader: &Reader, requester: &Requester, event: &StoredEvent) -> bool {
        if event.state_key.is_none() && reader.ignored.contains(event.sender.as_str()) {
            return false;
        }
        let key_value = match event.kind.as_str() {
            "m.room.member" => event.content.get("membership").and_then(Value::as_str),
            "m.room.history_visibility" => event
                .content
                .get("history_visibility")
                .and_then(Value::as_str),
            _ => None,
        };
        reader.can_see(
            requester.user_id.as_str(),
            event.stream,
            &event.kind,
            event.state_key.as_deref(),
            key_value,
        )
    }

    /// Client format for events, with `redacted_because` and the bundled aggregations Synapse
    /// adds (`unsigned["m.relations"]`: the latest edit, thread summary, references).
    pub(crate) async fn serve(
        &self,
        conn: &mut PgConnection,
        requester: &Requester,
        reader: &Reader,
        events: Vec<EventWithPrev>,
    ) -> Result<Vec<Value>, RoomError> {
        let scope = requester.txn_scope();
        let viewer = Viewer {
            txn_scope: Some(&scope),
            now_ms: now_ms(),
        };
        let redaction_ids: Vec<String> = events
            .iter()
            .filter_map(|e| e.event.redacted_by.as_ref().map(ToString::to_string))
            .collect();
        let mut redactions = BTreeMap::new();
        if !redaction_ids.is_empty() {
            for redaction in store::events::by_ids(conn, &redaction_ids).await? {
                let value = to_client(&redaction.event, &Related::default(), viewer);
                redactions.insert(redaction.event.event_id.to_string(), value);
            }
        }
        // Redacted events lose their relations, as in Synapse.
        let ids: Vec<String> = events
            .iter()
            .filter(|e| e.event.redacted_by.is_none())
            .map(|e| e.event.event_id.to_string())
            .collect();
        let room_id = events
            .first()
            .map(|e| e.event.room_id.to_string())
            .unwrap_or_default();
        let mut aggregations =
            store::events::aggregations(conn, &room_id, &ids, requester.user_id.as_str()).await?;
        // An edit or thread reply the reader may not see (sent after they left) is not bundled.
        aggregations
            .edits
            .retain(|edit| Self::visible(reader, requester, &edit.event));
        aggregations
            .threads
            .retain(|(_, _, latest, _)| Self::visible(reader, requester, &latest.event));
        let mut relations: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for edit in &aggregations.edits {
            if let Some(target) = edit.event.content_relates_to() {
                let value = to_client(&edit.event, &Related::default(), viewer);
                relations
                    .entry(target.to_owned())
                    .or_default()
                    .insert("m.replace".into(), value);
            }
        }
        let senders: BTreeMap<&str, &str> = events
            .iter()
            .map(|e| (e.event.event_id.as_str(), e.event.sender.as_str()))
            .collect();
        for (root, count, latest, participated) in &aggregations.threads {
            let root_by_viewer = senders.get(root.as_str()) == Some(&requester.user_id.as_str());
            let summary = json!({
                "latest_event": to_client(&latest.event, &Related::default(), viewer),
                "count": count,
                "current_user_participated": *participated || root_by_viewer,
            });
            relations
                .entry(root.clone())
                .or_default()
                .insert("m.thread".into(), summary);
        }
        for (target, reference) in &aggregations.references {
            let entry = relations.entry(target.clone()).or_default();
            let chunk = entry
                .entry("m.reference")
                .or_insert_with(|| json!({"chunk": []}));
            if let Some(list) = chunk.get_mut("chunk").and_then(Value::as_array_mut) {
                list.push(json!({"event_id": reference}));
            }
        }
        Ok(events
            .into_iter()
            .map(|e| {
                let related = Related {
                    redacted_because: e
                        .event
                        .redacted_by
                        .as_ref()
                        .and_then(|id| redactions.get(id.as_str()).cloned()),
                    prev: e.prev,
                };
                let mut value = to_client(&e.event, &related, viewer);
                if let Some(bundle) = relations.remove(e.event.event_id.as_str())
                    && let Some(unsigned) = value.get_mut("unsigned").and_then(Value::as_object_mut)
                {
                    unsigned.insert("m.relations".into(), Value::Object(bundle));
                }
                value
            })
            .collect())
    }

    /// [`Self::serve`] in the format Synapse answers outside `/sync`
    /// (`format_event_for_client_v1`: `user_id` and `unsigned`'s `age`, `prev_content`,
    /// `replaces_state`, `redacted_because` repeated at the top level), and for events that
    /// passed Synapse's `filter_events_for_client` (`Served::Filtered`) the reader's
    /// membership after each event in `unsigned.membership` (MSC4115, `leave` when they have
    /// none).
    pub(crate) async fn serve_as(
        &self,
        conn: &mut PgConnection,
        requester: &Requester,
        reader: &Reader,
        events: Vec<EventWithPrev>,
        served: Served,
    ) -> Result<Vec<Value>, RoomError> {
        let memberships: Vec<String> = match served {
            Served::Filtered => events
                .iter()
                .map(|e| membership_after(reader, requester.user_id.as_str(), &e.event))
                .collect(),
            Served::State => Vec::new(),
        };
        let mut values = self.serve(conn, requester, reader, events).await?;
        for (index, value) in values.iter_mut().enumerate() {
            if let Some(membership) = memberships.get(index)
                && let Some(unsigned) = value.get_mut("unsigned").and_then(Value::as_object_mut)
            {
                unsigned.insert("membership".into(), json!(membership));
            }
            super::event::legacy_v1(value);
        }
        Ok(values)
    }

    /// `GET /rooms/{roomId}/event/{eventId}`.
    pub async fn event(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        event_id: &str,
    ) -> Result<Value, RoomError> {
        let mut conn = self.conn().await?;
        let not_found = || RoomError::NotFound("Event not found.".into());
        // Synapse does not reveal to a non-member whether the event exists.
        let (reader, _) = self
            .reader(&mut conn, requester, room_id)
            .await
            .map_err(|_| not_found())?;
        let event = store::events::by_id(&mut conn, room_id.as_str(), event_id)
            .await?
            .ok_or_else(not_found)?;
        if !Self::visible(&reader, requester, &event.event) {
            return Err(not_found());
        }
        self.serve_as(&mut conn, requester, &reader, vec![event], Served::Filtered)
            .await?
            .pop()
            .ok_or_else(not_found)
    }

    /// The state the reader may see: current state when joined, else the state at their leave.
    async fn visible_state(
        &self,
        conn: &mut PgConnection,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<(Reader, Vec<EventWithPrev>), RoomError> {
        let (reader, reach) = self.reader(conn, requester, room_id).await?;
        let rows = match reach {
            Reach::Everything => store::events::current_state(conn, room_id.as_str()).await?,
            Reach::Until(end) => store::events::state_at(conn, room_id.as_str(), end).await?,
        };
        Ok((reader, rows))
    }

    /// `GET /rooms/{roomId}/state`.
    pub async fn state(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<Vec<Value>, RoomError> {
        let mut conn = self.conn().await?;
        let (reader, state) = self.visible_state(&mut conn, requester, room_id).await?;
        self.serve_as(&mut conn, requester, &reader, state, Served::State)
            .await
    }

    /// `GET /rooms/{roomId}/state/{type}/{stateKey}`: the event (the API returns its content
    /// or, with `format=event`, the whole event).
    pub async fn state_event(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        kind: &str,
        state_key: &str,
    ) -> Result<Value, RoomError> {
        let mut conn = self.conn().await?;
        let (reader, state) = self.visible_state(&mut conn, requester, room_id).await?;
        let found: Vec<EventWithPrev> = state
            .into_iter()
            .filter(|e| e.event.kind == kind && e.event.state_key.as_deref() == Some(state_key))
            .collect();
        if found.is_empty() {
            return Err(RoomError::NotFound("Event not found.".into()));
        }
        self.serve(&mut conn, requester, &reader, found)
            .await?
            .pop()
            .ok_or_else(|| RoomError::NotFound("Event not found.".into()))
    }

    /// `GET /rooms/{roomId}/members` (`at`, `membership`, `not_membership`).
    pub async fn members(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        at: Option<Token>,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Value>, RoomError> {
        let mut conn = self.conn().await?;
        let (reader, reach) = self.reader(&mut conn, requester, room_id).await?;
        let mut limit = match reach {
            Reach::Everything => i64::MAX,
            Reach::Until(end) => end,
        };
        if let Some(Token(topo)) = at {
            // The stream position of the last event at or before that topological position.
            let page =
                store::events::page(&mut conn, room_id.as_str(), i64::MIN, topo + 1, false, 1)
                    .await?;
            if let Some(last) = page.first() {
                limit = limit.min(last.event.stream);
            }
        }
        let state = if limit == i64::MAX {
            store::events::current_state(&mut conn, room_id.as_str()).await?
        } else {
            store::events::state_at(&mut conn, room_id.as_str(), limit).await?
        };
        let members: Vec<EventWithPrev> = state
            .into_iter()
            .filter(|e| e.event.kind == "m.room.member")
            .filter(|e| {
                let current = e
                    .event
                    .content
                    .get("membership")
                    .and_then(Value::as_str)
                    .unwrap_or("leave");
                membership.is_none_or(|m| m == current)
                    && not_membership.is_none_or(|m| m != current)
            })
            .collect();
        self.serve_as(&mut conn, requester, &reader, members, Served::State)
            .await
    }

    /// `GET /rooms/{roomId}/joined_members`: only for members, as in Synapse.
    pub async fn joined_members(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<Map<String, Value>, RoomError> {
        let mut conn = self.conn().await?;
        let (_, reach) = self.reader(&mut conn, requester, room_id).await?;
        if reach != Reach::Everything {
            return Err(not_in_room(requester, room_id));
        }
        let mut joined = Map::new();
        for member in store::events::current_state(&mut conn, room_id.as_str()).await? {
            let event = member.event;
            if event.kind != "m.room.member"
                || event.content.get("membership").and_then(Value::as_str) != Some("join")
            {
                continue;
            }
            if let Some(user) = event.state_key {
                joined.insert(
                    user,
                    json!({
                        "display_name": event.content.get("displayname").cloned().unwrap_or(Value::Null),
                        "avatar_url": event.content.get("avatar_url").cloned().unwrap_or(Value::Null),
                    }),
                );
            }
        }
        Ok(joined)
    }

    /// The pagination position of a sync token's local half in a room: just after the
    /// room's last event at or before stream position `stream`.
    pub async fn position_at(
        &self,
        room_id: &OwnedRoomId,
        stream: i64,
    ) -> Result<Token, RoomError> {
        let mut conn = self.conn().await?;
        let topo = store::events::topo_at(&mut conn, room_id.as_str(), stream).await?;
        match topo {
            Some(topo) => Ok(Token(topo)),
            // Before the room's first event: the start of the room.
            None => {
                let room = store::rooms::get(&mut conn, room_id.as_str())
                    .await?
                    .ok_or_else(|| RoomError::NotFound("Unknown room".into()))?;
                Ok(Token(room.min_topo - 1))
            }
        }
    }

    /// `GET /rooms/{roomId}/messages`.
    pub async fn messages(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        page: PageRequest,
        filter: &EventFilter,
    ) -> Result<Page, RoomError> {
        let mut conn = self.conn().await?;
        let (reader, reach) = self.reader(&mut conn, requester, room_id).await?;
        let room = store::rooms::get(&mut conn, room_id.as_str())
            .await?
            .ok_or_else(|| RoomError::NotFound("Unknown room".into()))?;
        self.page(&mut conn, requester, (&reader, reach), &room, page, filter)
            .await
    }

    /// Synapse's admin `GET /_synapse/admin/v1/rooms/{roomId}/messages`: `/messages` for a
    /// server admin, who sees every event whatever their membership and the room's history
    /// visibility (Synapse's `use_admin_priviledge`). The caller has checked the admin.
    pub async fn admin_messages(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        page: PageRequest,
        filter: &EventFilter,
    ) -> Result<Page, RoomError> {
        let mut conn = self.conn().await?;
        let room = store::rooms::get(&mut conn, room_id.as_str())
            .await?
            .ok_or_else(|| RoomError::NotFound("Room not found".into()))?;
        let reader = Reader::everything();
        self.page(
            &mut conn,
            requester,
            (&reader, Reach::Everything),
            &room,
            page,
            filter,
        )
        .await
    }

    /// One page of the room's timeline as `reader` may see it.
    async fn page(
        &self,
        conn: &mut PgConnection,
        requester: &Requester,
        (reader, reach): (&Reader, Reach),
        room: &store::rooms::RoomRow,
        page: PageRequest,
        filter: &EventFilter,
    ) -> Result<Page, RoomError> {
        let PageRequest {
            from,
            to,
            forwards,
            limit,
        } = page;
        // The filter's own `limit` is not used: Synapse's `/messages` takes the parameter's.
        let limit = limit.min(1000);
        let mut start = from.unwrap_or(if forwards {
            Token(room.min_topo - 1)
        } else {
            Token(room.max_topo)
        });
        // A reader who left sees nothing after their leave: read backwards from the leave, not
        // from the room's end through everything since. Synapse clamps the same way and
        // answers the clamped position as `start`.
        if let (false, Reach::Until(end)) = (forwards, reach)
            && let Some(leave) = store::events::topo_of(conn, &room.room_id, end).await?
            && leave < start.0
        {
            start = Token(leave);
        }
        if limit <= 0 {
            // Synapse's answer to `limit=0`: nothing, and `end` where it started.
            return Ok(Page {
                chunk: Vec::new(),
                last_stream: None,
                start,
                end: Some(start),
                state: Vec::new(),
            });
        }
        // Scan in chunks until `limit` visible events are found or the range ends.
        let (mut low, mut high) = if forwards {
            (start.0, i64::MAX)
        } else {
            (i64::MIN, start.0 + 1)
        };
        if let Some(Token(to)) = to {
            if forwards {
                high = high.min(to + 1);
            } else {
                low = low.max(to);
            }
        }
        let mut chunk: Vec<EventWithPrev> = Vec::new();
        let mut matched_topo = None;
        'scan: while chunk.len() < usize::try_from(limit).unwrap_or(usize::MAX) {
            let rows =
                store::events::page(conn, &room.room_id, low, high, forwards, limit * 2).await?;
            if rows.is_empty() {
                break;
            }
            let related = if filter.by_relations() {
                let ids: Vec<String> = rows.iter().map(|r| r.event.event_id.to_string()).collect();
                let empty = Vec::new();
                Some(
                    store::relation_filters::related_by(
                        conn,
                        &room.room_id,
                        &ids,
                        filter.related_by_senders.as_ref().unwrap_or(&empty),
                        filter.related_by_rel_types.as_ref().unwrap_or(&empty),
                    )
                    .await?,
                )
            } else {
                None
            };
            for row in rows {
                if forwards {
                    low = row.event.topo;
                } else {
                    high = row.event.topo;
                }
                let beyond_reach = matches!(reach, Reach::Until(end) if row.event.stream > end);
                if beyond_reach {
                    if forwards {
                        break 'scan;
                    }
                    continue;
                }
                if !filter.allows(&row.event)
                    || related
                        .as_ref()
                        .is_some_and(|ids| !ids.contains(row.event.event_id.as_str()))
                {
                    continue;
                }
                // Synapse's `end` follows the events its query returned (the filter is part
                // of the query), before the history-visibility check.
                matched_topo = Some(row.event.topo);
                if Self::visible(reader, requester, &row.event) {
                    chunk.push(row);
                    if chunk.len() >= usize::try_from(limit).unwrap_or(usize::MAX) {
                        break;
                    }
                }
            }
        }
        // Synapse omits `end` only when its query found no event at all in that direction; a
        // page whose events were all invisible to the reader still has one (then the next
        // page is empty without `end`). When this page's events reached the room's edge,
        // `end` stays too: the next page is the empty one.
        let end = matched_topo.map(|topo| {
            if forwards {
                Token(topo)
            } else {
                Token(topo - 1)
            }
        });
        let state = if filter.lazy_load_members {
            self.member_state(conn, requester, reader, reach, &room.room_id, &chunk)
                .await?
        } else {
            Vec::new()
        };
        let last_stream = chunk.last().map(|e| e.event.stream);
        let chunk = self
            .serve_as(conn, requester, reader, chunk, Served::Filtered)
            .await?;
        Ok(Page {
            chunk,
            last_stream,
            start,
            end,
            state,
        })
    }

    /// Current member events of the senders of `events` (lazy-loaded members).
    async fn member_state(
        &self,
        conn: &mut PgConnection,
        requester: &Requester,
        reader: &Reader,
        reach: Reach,
        room_id: &str,
        events: &[EventWithPrev],
    ) -> Result<Vec<Value>, RoomError> {
        let senders: HashSet<&str> = events.iter().map(|e| e.event.sender.as_str()).collect();
        // A reader who left gets the members as they were when they left.
        let state = match reach {
            Reach::Everything => store::events::current_state(conn, room_id).await?,
            Reach::Until(end) => store::events::state_at(conn, room_id, end).await?,
        };
        let members: Vec<EventWithPrev> = state
            .into_iter()
            .filter(|e| {
                e.event.kind == "m.room.member"
                    && e.event
                        .state_key
                        .as_deref()
                        .is_some_and(|k| senders.contains(k))
            })
            .collect();
        self.serve_as(conn, requester, reader, members, Served::State)
            .await
    }

    /// `GET /rooms/{roomId}/context/{eventId}`.
    pub async fn context(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        event_id: &str,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<Value, RoomError> {
        let mut conn = self.conn().await?;
        // Synapse's answers: its event check, not the membership one, refuses a stranger.
        let (reader, _) =
            self.reader(&mut conn, requester, room_id)
                .await
                .map_err(|err| match err {
                    RoomError::Forbidden(_) => RoomError::Forbidden(
                        "You don't have permission to access that event.".into(),
                    ),
                    other => other,
                })?;
        let not_found = || RoomError::NotFound("Event not found.".into());
        let center = store::events::by_id(&mut conn, room_id.as_str(), event_id)
            .await?
            .ok_or_else(not_found)?;
        if !Self::visible(&reader, requester, &center.event) {
            return Err(not_found());
        }
        drop(conn);
        let before_count = limit / 2;
        let after_count = limit - before_count;
        let topo = center.event.topo;
        let page = |from, forwards, limit: i64| PageRequest {
            from: Some(Token(from)),
            to: None,
            forwards,
            limit: limit.max(1),
        };
        let before = self
            .messages(
                requester,
                room_id,
                page(topo - 1, false, before_count),
                filter,
            )
            .await?;
        let after = self
            .messages(requester, room_id, page(topo, true, after_count), filter)
            .await?;
        // The state at the last event returned, as Synapse gives it.
        let at = match after.last_stream {
            Some(stream) if after_count > 0 => stream,
            _ => center.event.stream,
        };
        let take = |page: Page, n: i64| {
            page.chunk
                .into_iter()
                .take(usize::try_from(n).unwrap_or(0))
                .collect::<Vec<_>>()
        };
        let start = before.end.unwrap_or(Token(topo - 1));
        let end = after.end.unwrap_or(Token(topo));
        let (events_before, events_after) = (take(before, before_count), take(after, after_count));
        // Synapse passes the state through the same filter; lazy-loading keeps only the
        // members of the senders of the events returned.
        let senders: HashSet<String> = events_before
            .iter()
            .chain(&events_after)
            .filter_map(|e| e.get("sender").and_then(Value::as_str).map(str::to_owned))
            .chain([center.event.sender.to_string()])
            .collect();
        let mut conn = self.conn().await?;
        let state_rows: Vec<EventWithPrev> =
            store::events::state_at(&mut conn, room_id.as_str(), at)
                .await?
                .into_iter()
                .filter(|e| filter.allows(&e.event))
                .filter(|e| {
                    !filter.lazy_load_members
                        || e.event.kind != "m.room.member"
                        || e.event
                            .state_key
                            .as_deref()
                            .is_some_and(|k| senders.contains(k))
                })
                .collect();
        let state = self
            .serve_as(&mut conn, requester, &reader, state_rows, Served::State)
            .await?;
        let event = self
            .serve_as(
                &mut conn,
                requester,
                &reader,
                vec![center],
                Served::Filtered,
            )
            .await?
            .pop()
            .ok_or_else(not_found)?;
        Ok(json!({
            "event": event,
            "events_before": events_before,
            "events_after": events_after,
            "start": start.to_string(),
            "end": end.to_string(),
            "state": state,
        }))
    }

    /// `GET /v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`: newest first
    /// by default, as Synapse; `dir=f` oldest first.
    pub async fn relations(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        event_id: &str,
        request: RelationsRequest<'_>,
    ) -> Result<Value, RoomError> {
        let mut conn = self.conn().await?;
        let (reader, _) = self.reader(&mut conn, requester, room_id).await?;
        // Synapse's answers (`EventHandler.get_event`, then the relations servlet).
        match store::events::by_id(&mut conn, room_id.as_str(), event_id).await? {
            None => return Err(RoomError::UnknownEvent("Unknown parent event.".into())),
            Some(parent) if !Self::visible(&reader, requester, &parent.event) => {
                return Err(RoomError::Forbidden(
                    "You don't have permission to access that event.".into(),
                ));
            }
            Some(_) => {}
        }
        let RelationsRequest {
            rel_type,
            event_type,
            from,
            to,
            forwards,
            recurse,
            limit,
        } = request;
        let limit = limit.clamp(1, 1000);
        // The same positions as `/messages`: backwards from `ht{n}` reads topo <= n, forwards
        // topo > n; `to` ends the range the same way.
        let (mut after, mut before) = match (forwards, from) {
            (true, from) => (from.map_or(i64::MIN, |Token(topo)| topo), i64::MAX),
            (false, from) => (i64::MIN, from.map_or(i64::MAX, |Token(topo)| topo + 1)),
        };
        if let Some(Token(to)) = to {
            if forwards {
                before = before.min(to.saturating_add(1));
            } else {
                after = after.max(to);
            }
        }
        let query = store::events::RelationsQuery {
            rel_type,
            event_type,
            after,
            before,
            forwards,
            recurse,
            limit: limit + 1,
        };
        let rows = store::events::relations(&mut conn, room_id.as_str(), event_id, query).await?;
        let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
        let page: Vec<EventWithPrev> = rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        // Synapse makes `next_batch` from the last row of the page, visible or not.
        let next = page.last().filter(|_| more).map(|last| {
            if forwards {
                Token(last.event.topo)
            } else {
                Token(last.event.topo - 1)
            }
        });
        let visible: Vec<EventWithPrev> = page
            .into_iter()
            .filter(|row| Self::visible(&reader, requester, &row.event))
            .collect();
        let chunk = self
            .serve_as(&mut conn, requester, &reader, visible, Served::Filtered)
            .await?;
        let mut answer = json!({ "chunk": chunk });
        if let Some(next) = next {
            answer["next_batch"] = json!(next.to_string());
        }
        // Synapse answers the request's own `from` as `prev_batch`.
        if let Some(from) = from {
            answer["prev_batch"] = json!(from.to_string());
        }
        if recurse {
            // What Synapse announces (MSC3981), whatever depth its query reaches.
            answer["recursion_depth"] = json!(3);
        }
        Ok(answer)
    }

    /// `GET /v1/rooms/{roomId}/timestamp_to_event`.
    pub async fn timestamp_to_event(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        ts: i64,
        forwards: bool,
    ) -> Result<Value, RoomError> {
        let mut conn = self.conn().await?;
        // Only for members and world-readable rooms: a user who left learns nothing newer.
        let (_, reach) = self.reader(&mut conn, requester, room_id).await?;
        if reach != Reach::Everything {
            return Err(not_in_room(requester, room_id));
        }
        match store::events::closest_to_ts(&mut conn, room_id.as_str(), ts, forwards).await? {
            Some((event_id, origin_server_ts)) => {
                Ok(json!({"event_id": event_id, "origin_server_ts": origin_server_ts}))
            }
            None => Err(RoomError::NotFound(format!(
                // Synapse formats its `Direction` enum here.
                "Unable to find event from {ts} in direction {}",
                if forwards {
                    "Direction.FORWARDS"
                } else {
                    "Direction.BACKWARDS"
                }
            ))),
        }
    }

    /// `GET /rooms/{roomId}/aliases`: members only.
    pub async fn aliases(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
    ) -> Result<Vec<String>, RoomError> {
        let mut conn = self.conn().await?;
        self.reader(&mut conn, requester, room_id).await?;
        Ok(store::rooms::aliases_of(&mut conn, room_id.as_str()).await?)
    }

    /// Local rooms the user is joined to.
    pub async fn joined_rooms(&self, requester: &Requester) -> Result<Vec<String>, RoomError> {
        let mut conn = self.conn().await?;
        Ok(
            store::rooms::rooms_with_membership(&mut conn, requester.user_id.as_str(), "join")
                .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        assert_eq!(Token::parse("ht42").unwrap(), Token(42));
        assert_eq!(Token::parse("ht-3").unwrap(), Token(-3));
        assert_eq!(Token(7).to_string(), "ht7");
        assert!(Token::parse("s42_1").is_err());
        assert!(Token::parse("htx").is_err());
    }

    #[test]
    fn filters() {
        let filter: EventFilter =
            serde_json::from_value(json!({"types": ["m.room.*"], "not_senders": ["@spam:hs"]}))
                .unwrap();
        let event = |kind: &str, sender: &str| StoredEvent {
            stream: 1,
            topo: 1,
            event_id: "$e".try_into().unwrap(),
            room_id: "!r:hs".try_into().unwrap(),
            sender: sender.try_into().unwrap(),
            kind: kind.into(),
            state_key: None,
            origin_server_ts: 0,
            content: Map::new(),
            replaces_state: None,
            redacts: None,
            redacted_by: None,
            txn: None,
        };
        assert!(filter.allows(&event("m.room.message", "@a:hs")));
        assert!(!filter.allows(&event("m.reaction", "@a:hs")));
        assert!(!filter.allows(&event("m.room.message", "@spam:hs")));
    }
}

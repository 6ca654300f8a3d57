//! The merged `/sync`: Synapse's answer for Synapse's rooms plus ours for local rooms, under
//! one token ([`token`]), woken by whichever side has news first.
//!
//! One request goes like this:
//!
//! 1. Read `since` (our envelope, or a bare Synapse token whose local half is then 0), and the
//!    filter. **Subscribe to local wake-ups, then** take the committed position `upto` and
//!    build the local part for `(since.local, upto]` — a commit after the read still wakes us.
//! 2. If there is something to return already (initial sync, `full_state`, local news, or
//!    `timeout=0`), ask Synapse with `timeout=0` and return both (when the answer is due at
//!    once anyway, Synapse is asked while the local part is built). Asking Synapse on every such
//!    answer is what keeps busy local rooms from starving Synapse's news.
//! 3. Otherwise long-poll: Synapse's `/sync` with the client's own timeout runs while we wait
//!    for a local commit that concerns the user ([`Notifier::news_for`], from memory).
//!    * Synapse answers first: add the local part up to the position now, return.
//!    * A local commit concerns the user: build the local part; if it is not empty, drop the
//!      Synapse request (a `/sync` read has no effect on Synapse's side until the client
//!      presents the next token) and return with Synapse's half of the token **unchanged**.
//!
//! **Degraded mode** (Synapse down, hung or slow). A local room never waits for Synapse:
//!
//! * The wait for Synapse's half is bounded ([`Syncer::synapse_sync`]): Synapse is not asked
//!   while it is taken to be down ([`crate::upstream::health`]), a call in flight is dropped as
//!   soon as it is taken to be down, and an incremental call is given up after the client's
//!   timeout + `synapse.sync_grace_s`. A hung Synapse is taken to be down within
//!   `PROBE_INTERVAL_UP + PROBE_TIMEOUT` (7 s) of hanging, or at the first call that times out.
//! * An incremental sync then keeps serving local rooms with Synapse's half unchanged:
//!   local news is answered at once, else it waits for local news or its timeout (no hot
//!   loop). The client catches up on Synapse's rooms from the half it kept, once Synapse is
//!   back; nothing of Synapse's is lost, since Synapse's position never moved.
//! * An initial sync fails with 502 `M_UNKNOWN` "Synapse is unreachable": at once while
//!   Synapse is taken to be down, else when it is noticed. It has no Synapse position to keep,
//!   and an answer without one would make the client's next sync a full Synapse sync
//!   presented as an increment. Synapse may take minutes to compute an initial or
//!   `full_state` sync of a big account, so while it is taken to be up those calls wait up to
//!   `synapse.response_timeout_s`, not the grace (a `full_state` sync with a `since` is then
//!   answered like any incremental one).
//!
//! Synapse's refusals (a bad token, a bad filter) are passed on unchanged.
//!
//! We never call Synapse's `/sync` except for a client's own request, with its own token:
//! to-device messages, presence, account data, device lists and key counts stay Synapse's.
//! Device-list changes of local-room co-members, which Synapse cannot know, are added to
//! `device_lists` from [`crate::devices`] for the answer's whole range ([`device_lists`]; sync
//! depends on `devices`, never the reverse); one of them wakes a waiting sync like a local
//! event does.

mod device_lists;
pub mod filter;
pub mod format;
pub mod lazy;
pub mod local;
pub mod room_list;
pub mod sliding;
pub mod token;

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use crate::auth::requester::Requester;
use crate::devices::DeviceLists;
use crate::devices::lists::Viewer;
use crate::notify::{Notifier, SidePositions};
use crate::rooms::RoomError;
use crate::rooms::service::Rooms;
use crate::upstream::Synapse;
use crate::upstream::client::{CallError, Refusal};
use filter::{FilterCache, FilterError, SyncFilter};
use local::{LocalRequest, LocalSync};
use token::SyncToken;

/// A client's `/sync` request.
pub struct SyncRequest {
    pub requester: Requester,
    /// The client's access token, for its own calls to Synapse.
    pub token: String,
    pub since: Option<String>,
    pub full_state: bool,
    pub timeout: Duration,
    /// The `filter` parameter, inline JSON or a filter ID.
    pub filter: Option<String>,
    /// The room classes in force when the request came: rooms of `off` classes are left out.
    pub classes: std::sync::Arc<crate::routing::RoomClasses>,
    /// The other query parameters, passed to Synapse unchanged (`filter`, `set_presence`,
    /// `full_state`, ...), without `since`, `timeout` and `access_token`.
    pub upstream_params: Vec<(String, String)>,
    /// What Synapse records about the client (user agent, address chain).
    pub client_headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("Invalid stream token")]
    InvalidToken,
    #[error(transparent)]
    Filter(FilterError),
    /// Synapse refused the request; its answer is passed on.
    #[error("Synapse refused the sync")]
    Refused(Refusal),
    /// Synapse is unreachable and the client has no Synapse position to keep.
    #[error("Synapse is unreachable: {0}")]
    SynapseDown(String),
    #[error(transparent)]
    Room(#[from] RoomError),
}

/// Serves merged syncs. Cheap to share.
pub struct Syncer {
    db: PgPool,
    rooms: Rooms,
    synapse: Synapse,
    notifier: Notifier,
    filters: FilterCache,
    /// Sliding sync connections ([`sliding`]).
    sliding: sliding::conn::Connections,
    devices: std::sync::Arc<DeviceLists>,
    /// The member events each device was sent while lazy-loading ([`lazy`]).
    lazy_members: lazy::LazyMembers,
    /// The rooms of each user, for waiting syncs ([`room_list`]).
    room_lists: room_list::RoomLists,
}

impl Syncer {
    pub fn new(
        db: PgPool,
        rooms: Rooms,
        synapse: Synapse,
        notifier: Notifier,
        devices: std::sync::Arc<DeviceLists>,
    ) -> Self {
        Self {
            db,
            rooms,
            synapse,
            notifier,
            filters: FilterCache::default(),
            sliding: sliding::conn::Connections::default(),
            devices,
            lazy_members: lazy::LazyMembers::default(),
            room_lists: room_list::RoomLists::default(),
        }
    }

    /// Answers one `/sync`: the merged rooms, then the device lists of the answer's range.
    pub async fn sync(&self, request: &SyncRequest) -> Result<SyncBody, SyncError> {
        let mut body = self.merged(request).await?;
        let viewer = Viewer {
            user_id: request.requester.user_id.as_str(),
            token: request
                .requester
                .appservice
                .is_none()
                .then_some(request.token.as_str()),
        };
        device_lists::add_to_sync(
            &self.devices,
            &viewer,
            request.since.as_deref(),
            &mut body.synapse,
        )
        .await;
        Ok(body)
    }

    /// The merged rooms of one `/sync`.
    async fn merged(&self, request: &SyncRequest) -> Result<SyncBody, SyncError> {
        let since = request
            .since
            .as_deref()
            .map(SyncToken::parse)
            .transpose()
            .map_err(|_| SyncError::InvalidToken)?;
        let initial = since.is_none();
        let (synapse_since, local_since, side_since) = since
            .map_or((None, 0, SidePositions::default()), |t| {
                (t.synapse, t.local, t.side)
            });
        let filter = self
            .filters
            .resolve(
                &self.synapse,
                &request.token,
                request.requester.user_id.as_str(),
                request.filter.as_deref(),
            )
            .await
            .map_err(|err| match err {
                FilterError::Synapse(CallError::Refused(refusal)) => SyncError::Refused(refusal),
                FilterError::Synapse(CallError::Unavailable(reason)) => {
                    SyncError::SynapseDown(reason)
                }
                other => SyncError::Filter(other),
            })?;
        let since = Since {
            stream: local_since,
            side: side_since,
        };

        // Subscribe before reading, so no commit after the read goes unnoticed.
        let mut wake = self.notifier.subscribe();
        let mut side_wake = self.notifier.subscribe_side();
        let upto = self.upto();
        if initial || request.full_state || request.timeout.is_zero() {
            // Answering at once whatever happens: both sides at the same time.
            let (local, synapse) = tokio::join!(
                self.local(request, &filter, since, upto),
                self.synapse_sync(request, synapse_since.as_deref(), Duration::ZERO),
            );
            return answer(synapse, synapse_since.as_deref(), local?, upto);
        }
        let local = self.local(request, &filter, since, upto).await?;
        let user = request.requester.user_id.as_str();
        if !local.is_empty() || self.notifier.device_news_for(user, since.side.devices) {
            let synapse = self
                .synapse_sync(request, synapse_since.as_deref(), Duration::ZERO)
                .await;
            return answer(synapse, synapse_since.as_deref(), local, upto);
        }

        let synapse_call = self.synapse_sync(request, synapse_since.as_deref(), request.timeout);
        tokio::pin!(synapse_call);
        let deadline = tokio::time::Instant::now() + request.timeout;
        let mut synapse_down = false;
        let mut rooms = local.rooms;
        let mut checked = upto;
        loop {
            tokio::select! {
                result = &mut synapse_call, if !synapse_down => match result {
                    Ok(value) => {
                        let upto = self.upto();
                        let local = if self.news(user, &rooms, checked) {
                            self.local(request, &filter, since, upto).await?
                        } else {
                            LocalSync::default()
                        };
                        return answer(Ok::<_, Pending>(value), synapse_since.as_deref(), local, upto);
                    }
                    Err(CallError::Refused(refusal)) => return Err(SyncError::Refused(refusal)),
                    Err(CallError::Unavailable(reason)) => {
                        tracing::warn!(%reason, "sync: Synapse unavailable; serving local rooms only");
                        synapse_down = true;
                    }
                },
                changed = wake.changed() => {
                    if changed.is_err() {
                        // The writer is gone: shutting down.
                        break;
                    }
                    wake.borrow_and_update();
                    match self.woken(request, &filter, since, checked, &rooms).await? {
                        Woken::Answer(local, now) => {
                            return answer(Err(Pending), synapse_since.as_deref(), local, now);
                        }
                        Woken::Checked(now, now_rooms) => {
                            checked = now;
                            rooms = now_rooms.unwrap_or(rooms);
                        }
                    }
                },
                changed = side_wake.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    side_wake.borrow_and_update();
                    match self.woken(request, &filter, since, checked, &rooms).await? {
                        Woken::Answer(local, now) => {
                            return answer(Err(Pending), synapse_since.as_deref(), local, now);
                        }
                        Woken::Checked(now, now_rooms) => {
                            checked = now;
                            rooms = now_rooms.unwrap_or(rooms);
                        }
                    }
                },
                () = tokio::time::sleep_until(deadline), if synapse_down => break,
            }
        }
        // Nothing for the client: the local half moves to what was checked.
        answer(
            Err(Pending),
            synapse_since.as_deref(),
            LocalSync::default(),
            checked,
        )
    }

    /// The committed positions now.
    fn upto(&self) -> Since {
        Since {
            stream: self.notifier.current(),
            side: self.notifier.side_current(),
        }
    }

    /// Whether anything committed after `checked` concerns the user (from memory).
    fn news(&self, user: &str, rooms: &[String], checked: Since) -> bool {
        let rooms = || rooms.iter().map(String::as_str);
        let now = self.upto();
        (now.stream > checked.stream && self.notifier.news_for(user, rooms(), checked.stream))
            || (now.side != checked.side
                && self.notifier.side_news_for(user, rooms(), checked.side))
    }

    /// After a wake-up: the local part when there is news for the user, else the positions
    /// now checked (and the user's rooms, when they were read again).
    async fn woken(
        &self,
        request: &SyncRequest,
        filter: &SyncFilter,
        since: Since,
        checked: Since,
        rooms: &[String],
    ) -> Result<Woken, SyncError> {
        let now = self.upto();
        if !self.news(request.requester.user_id.as_str(), rooms, checked) {
            return Ok(Woken::Checked(now, None));
        }
        let local = self.local(request, filter, since, now).await?;
        let user = request.requester.user_id.as_str();
        if local.is_empty() && !self.notifier.device_news_for(user, since.side.devices) {
            return Ok(Woken::Checked(now, Some(local.rooms)));
        }
        Ok(Woken::Answer(local, now))
    }

    async fn local(
        &self,
        request: &SyncRequest,
        filter: &SyncFilter,
        since: Since,
        upto: Since,
    ) -> Result<LocalSync, SyncError> {
        let local_request = LocalRequest {
            requester: &request.requester,
            since: since.stream,
            upto: upto.stream,
            side_since: since.side,
            side_upto: upto.side,
            full_state: request.full_state,
            filter,
            classes: &request.classes,
            lazy_members: &self.lazy_members,
            room_lists: &self.room_lists,
        };
        Ok(local::build(&self.rooms, &self.db, &local_request).await?)
    }

    /// The client's own `/sync` on Synapse, from `since` (Synapse's half), Synapse waiting at
    /// most `wait` for news. Bounded for degraded mode: fails at once when Synapse is taken to
    /// be down, and as soon as it is taken to be down while we wait (the probe or another call
    /// noticed); else gives up after `wait` + `synapse.sync_grace_s` (an initial or full-state
    /// sync, which Synapse may legitimately compute for minutes, after `wait` +
    /// `synapse.response_timeout_s`).
    async fn synapse_sync(
        &self,
        request: &SyncRequest,
        since: Option<&str>,
        wait: Duration,
    ) -> Result<Value, CallError> {
        let mut health = self.synapse.health.subscribe();
        if !*health.borrow_and_update() {
            return Err(CallError::Unavailable(
                "Synapse does not answer (degraded mode)".into(),
            ));
        }
        let limit = if since.is_none() || request.full_state {
            wait + self.synapse.response_timeout()
        } else {
            wait + self.synapse.sync_grace()
        };
        let query = {
            let mut query = form_urlencoded::Serializer::new(String::new());
            for (key, value) in &request.upstream_params {
                query.append_pair(key, value);
            }
            if let Some(since) = since {
                query.append_pair("since", since);
            }
            query.append_pair("timeout", &wait.as_millis().to_string());
            query.finish()
        };
        let call = self
            .synapse
            .sync(&request.token, &query, limit, &request.client_headers);
        tokio::select! {
            result = call => result,
            // A sender dropped (never: the handle holds it) disables this branch.
            Ok(_) = health.wait_for(|up| !*up) => Err(CallError::Unavailable(
                "Synapse stopped answering (degraded mode)".into(),
            )),
        }
    }
}

/// Positions in our streams: what a client has seen, or what is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Since {
    stream: i64,
    side: SidePositions,
}

/// What a wake-up found.
enum Woken {
    /// News for the client, built up to these positions.
    Answer(LocalSync, Since),
    /// Nothing to tell yet; checked up to these positions (and the user's rooms, re-read).
    Checked(Since, Option<std::sync::Arc<[String]>>),
}

/// Synapse's answer was not awaited (the local side won, or Synapse is down).
struct Pending;

/// A merged `/sync` answer: Synapse's body (with our `next_batch` and device lists) and the
/// local rooms' entries, kept as JSON text and written into `rooms` as the body is
/// serialized, so a big local part is never a tree of values.
#[derive(Debug)]
pub struct SyncBody {
    /// Synapse's answer, or an empty object: always a JSON object.
    pub synapse: Value,
    pub local: LocalSync,
}

impl serde::Serialize for SyncBody {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let empty = Map::new();
        let body = self.synapse.as_object().unwrap_or(&empty);
        let local_sections = [
            ("join", &self.local.join),
            ("invite", &self.local.invite),
            ("leave", &self.local.leave),
            ("knock", &self.local.knock),
        ];
        let has_local = local_sections.iter().any(|(_, e)| !e.is_empty());
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in body {
            if key == "rooms" {
                map.serialize_entry(
                    key,
                    &RoomsSections {
                        synapse: value,
                        local: &local_sections,
                    },
                )?;
            } else {
                map.serialize_entry(key, value)?;
            }
        }
        if has_local && !body.contains_key("rooms") {
            map.serialize_entry(
                "rooms",
                &RoomsSections {
                    synapse: &Value::Null,
                    local: &local_sections,
                },
            )?;
        }
        map.end()
    }
}

/// `rooms`: Synapse's sections with the local entries of the same section appended (a local
/// room ID never equals a Synapse one: its class prefix routes it here).
struct RoomsSections<'a> {
    synapse: &'a Value,
    local: &'a [(&'static str, &'a local::Entries); 4],
}

impl serde::Serialize for RoomsSections<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let empty = Map::new();
        let synapse = self.synapse.as_object().unwrap_or(&empty);
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in synapse {
            match self.local.iter().find(|(section, _)| section == key) {
                Some((_, entries)) if !entries.is_empty() => {
                    map.serialize_entry(
                        key,
                        &Section {
                            synapse: value,
                            local: entries,
                        },
                    )?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        for (section, entries) in self.local {
            if !entries.is_empty() && !synapse.contains_key(*section) {
                map.serialize_entry(
                    section,
                    &Section {
                        synapse: &Value::Null,
                        local: entries,
                    },
                )?;
            }
        }
        map.end()
    }
}

/// One section of `rooms`: Synapse's entries, then ours.
struct Section<'a> {
    synapse: &'a Value,
    local: &'a local::Entries,
}

impl serde::Serialize for Section<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        if let Some(synapse) = self.synapse.as_object() {
            for (room, entry) in synapse {
                map.serialize_entry(room, entry)?;
            }
        }
        for (room, entry) in self.local {
            map.serialize_entry(room, entry)?;
        }
        map.end()
    }
}

/// Combines Synapse's answer (or its absence) with the local part.
fn answer(
    synapse: Result<Value, impl Into<Absent>>,
    synapse_since: Option<&str>,
    local: LocalSync,
    upto: Since,
) -> Result<SyncBody, SyncError> {
    let (mut body, synapse_next) = match synapse {
        Ok(Value::Object(mut body)) => {
            let next = body
                .remove("next_batch")
                .and_then(|v| v.as_str().map(str::to_owned));
            let Some(next) = next else {
                return Err(SyncError::SynapseDown(
                    "Synapse's sync answer has no next_batch".into(),
                ));
            };
            (body, Some(next))
        }
        Ok(_) => {
            return Err(SyncError::SynapseDown(
                "Synapse's sync answer is not an object".into(),
            ));
        }
        Err(absent) => match (absent.into(), synapse_since) {
            (Absent::Refused(refusal), _) => return Err(SyncError::Refused(refusal)),
            (Absent::Down(reason), None) => return Err(SyncError::SynapseDown(reason)),
            (_, since) => (Map::new(), since.map(str::to_owned)),
        },
    };
    // The spec's `rooms` is always there; the local entries are written into it when the
    // body is serialized.
    body.entry("rooms").or_insert_with(|| json!({}));
    let next_batch = SyncToken {
        synapse: synapse_next,
        local: upto.stream,
        side: upto.side,
    }
    .encode();
    body.insert("next_batch".into(), Value::String(next_batch));
    Ok(SyncBody {
        synapse: Value::Object(body),
        local,
    })
}

/// Why there is no Synapse answer to merge.
enum Absent {
    /// The local side answered first; Synapse's half stays.
    Pending,
    Refused(Refusal),
    Down(String),
}

impl From<Pending> for Absent {
    fn from(_: Pending) -> Self {
        Absent::Pending
    }
}

impl From<CallError> for Absent {
    fn from(err: CallError) -> Self {
        match err {
            CallError::Refused(refusal) => Absent::Refused(refusal),
            CallError::Unavailable(reason) => Absent::Down(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: i64) -> Since {
        Since {
            stream,
            side: SidePositions {
                room_data: 2,
                typing: 3,
                devices: 4,
            },
        }
    }

    fn local_with_room() -> LocalSync {
        let mut local = LocalSync::default();
        let entry = serde_json::value::to_raw_value(&json!({"timeline": {"events": []}}));
        local.join.push(("!hs_a:x".into(), entry.unwrap()));
        local
    }

    /// The body as the client gets it.
    fn sent(body: SyncBody) -> Value {
        serde_json::from_slice(&serde_json::to_vec(&body).unwrap()).unwrap()
    }

    #[test]
    fn merges_local_rooms_into_synapse_answer() {
        let synapse = json!({
            "next_batch": "s5_1",
            "rooms": {"join": {"!abc:x": {}}},
            "to_device": {"events": [1]},
        });
        let body = sent(answer(Ok::<_, Pending>(synapse), None, local_with_room(), at(7)).unwrap());
        assert_eq!(body["to_device"]["events"][0], 1);
        assert!(body["rooms"]["join"]["!abc:x"].is_object());
        assert!(body["rooms"]["join"]["!hs_a:x"].is_object());
        let token = SyncToken::parse(body["next_batch"].as_str().unwrap()).unwrap();
        assert_eq!(
            token,
            SyncToken {
                synapse: Some("s5_1".into()),
                local: 7,
                side: at(7).side,
            }
        );
    }

    #[test]
    fn a_local_win_keeps_synapse_half() {
        let body = sent(answer(Err(Pending), Some("s5_1"), local_with_room(), at(9)).unwrap());
        let token = SyncToken::parse(body["next_batch"].as_str().unwrap()).unwrap();
        assert_eq!(token.synapse.as_deref(), Some("s5_1"));
        assert_eq!(token.local, 9);
    }

    #[test]
    fn synapse_down_fails_an_initial_sync_only() {
        let down = || CallError::Unavailable("refused".into());
        assert!(matches!(
            answer(Err(down()), None, local_with_room(), at(3)),
            Err(SyncError::SynapseDown(_))
        ));
        let body = sent(answer(Err(down()), Some("s1"), local_with_room(), at(3)).unwrap());
        assert!(body["rooms"]["join"]["!hs_a:x"].is_object());
    }
}

//! [`Rooms`]: the operations the API offers on local rooms — create, send, set state,
//! change membership, redact. Each fetches what it needs from Synapse first (profiles), then
//! hands events to the writer; no network call happens inside a transaction.

use std::sync::Arc;

use ruma::{OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedServerName, OwnedUserId};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use super::RoomError;
use super::auth::Proposal;
use super::create::{self, CreateRoomRequest, Plan};
use super::typing::Typing;
use super::writer::{BatchJob, NewRoom, Outcome, Placement, Txn, Writer};
use crate::auth::requester::Requester;
use crate::config::RoomClass;
use crate::notify::Notifier;
use crate::store;
use crate::upstream::Synapse;

/// Largest event accepted, in bytes of JSON, as the spec and Synapse limit it.
pub const MAX_EVENT_BYTES: usize = 65_536;

/// The room engine's entry point. Cheap to clone.
#[derive(Clone)]
pub struct Rooms {
    pub(super) db: PgPool,
    writer: Writer,
    pub(super) synapse: Synapse,
    server_name: OwnedServerName,
    /// Publishes room data commits.
    pub(super) notifier: Notifier,
    /// Who is typing.
    pub typing: Arc<Typing>,
}

/// One event a requester sends into a room (a message, a state event or a redaction), for
/// [`Rooms::append_one`].
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// The event type.
    pub kind: String,
    /// Present for state events.
    pub state_key: Option<String>,
    pub content: Map<String, Value>,
    /// Its `origin_server_ts`.
    pub ts: i64,
    /// The client's transaction ID: sent again to the same room, it answers with the first
    /// event instead of writing another.
    pub txn_id: Option<String>,
    /// For redactions: the target.
    pub redacts: Option<OwnedEventId>,
}

impl NewEvent {
    /// A state event as the server builds it (no transaction ID).
    pub fn state(
        kind: &str,
        state_key: impl Into<String>,
        content: Map<String, Value>,
        ts: i64,
    ) -> Self {
        Self {
            kind: kind.into(),
            state_key: Some(state_key.into()),
            content,
            ts,
            ..Self::default()
        }
    }

    /// A member event for `target` with `content`, as the server builds it (no transaction
    /// ID).
    pub(super) fn member(target: &OwnedUserId, content: Map<String, Value>, ts: i64) -> Self {
        Self {
            kind: "m.room.member".into(),
            state_key: Some(target.to_string()),
            content,
            ts,
            ..Self::default()
        }
    }
}

/// A membership change, for [`Rooms::set_membership`].
#[derive(Debug, Clone)]
pub struct MembershipChange<'a> {
    /// Whose membership changes.
    pub target: &'a OwnedUserId,
    /// The new membership: `join`, `leave`, `invite`, `ban` or `knock`.
    pub membership: &'a str,
    /// Goes into the member event as `reason`.
    pub reason: Option<String>,
    /// More member content, which wins over the profile.
    pub extra: Map<String, Value>,
    /// Its `origin_server_ts`.
    pub ts: i64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `origin_server_ts` for an event: appservices may set it with `?ts=`.
pub fn origin_ts(requester: &Requester, ts_param: Option<i64>) -> i64 {
    match (requester.appservice.is_some(), ts_param) {
        (true, Some(ts)) => ts,
        _ => now_ms(),
    }
}

impl Rooms {
    pub fn new(
        db: PgPool,
        writer: Writer,
        synapse: Synapse,
        server_name: OwnedServerName,
        notifier: Notifier,
    ) -> Self {
        let typing = Typing::start(notifier.clone());
        Self {
            db,
            writer,
            synapse,
            server_name,
            notifier,
            typing,
        }
    }

    pub fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// Member event content for `user` joining or being invited: membership plus the user's
    /// Synapse profile (as Synapse puts it in member events).
    async fn member_content(
        &self,
        token: &str,
        user: &OwnedUserId,
        membership: &str,
    ) -> Map<String, Value> {
        let mut content = Map::new();
        content.insert("membership".into(), json!(membership));
        // A missing profile is not an error: the member event just has no displayname.
        if let Ok(Some(profile)) = self.synapse.profile(token, user.as_str()).await {
            if let Some(name) = profile.displayname {
                content.insert("displayname".into(), json!(name));
            }
            if let Some(avatar) = profile.avatar_url {
                content.insert("avatar_url".into(), json!(avatar));
            }
        }
        content
    }

    /// `POST /createRoom` for a local class. Returns the new room's ID.
    pub async fn create(
        &self,
        requester: &Requester,
        token: &str,
        class: &RoomClass,
        request: CreateRoomRequest,
        ts: i64,
    ) -> Result<OwnedRoomId, RoomError> {
        let room_id = super::event::new_room_id(&class.prefix, &self.server_name);
        self.create_with_id(requester, token, class, request, ts, room_id)
            .await
    }

    /// [`Self::create`] with the room ID chosen by the caller (an upgrade names the new room
    /// in the old room's tombstone before creating it).
    pub(super) async fn create_with_id(
        &self,
        requester: &Requester,
        token: &str,
        class: &RoomClass,
        request: CreateRoomRequest,
        ts: i64,
        room_id: OwnedRoomId,
    ) -> Result<OwnedRoomId, RoomError> {
        let alias = create::alias(&request, self.server_name.as_str())?;
        if let Some(alias) = &alias
            && self.synapse_has_alias(token, alias).await
        {
            return Err(RoomError::RoomInUse("Room alias already taken".into()));
        }
        let invitees = create::invitees(&request)?;
        let joined_at_once = create::initial_members(&request, &requester.user_id)?;
        let creator_member = self.member_content(token, &requester.user_id, "join").await;
        let events = create::initial_events(
            &request,
            &Plan {
                creator: &requester.user_id,
                creator_member,
                alias: alias.as_ref(),
                invitees: &invitees,
                now_ms: ts,
            },
        )?;
        let mut events = events;
        // Members joined at creation: an invite by the creator, then their join, each in the
        // creation's own commit, so the room never exists without them.
        for member in &joined_at_once {
            let mut invite = self.member_content(token, member, "invite").await;
            if request.is_direct == Some(true) {
                invite.insert("is_direct".into(), json!(true));
            }
            let join = self.member_content(token, member, "join").await;
            for (sender, content) in [(&requester.user_id, invite), (member, join)] {
                events.push(Proposal {
                    sender: sender.clone(),
                    kind: "m.room.member".into(),
                    state_key: Some(member.to_string()),
                    content,
                    origin_server_ts: ts,
                    redacts: None,
                });
            }
        }
        for event in &events {
            check_size(event)?;
        }
        self.writer
            .create(
                NewRoom {
                    room_id: room_id.clone(),
                    class: class.name.clone(),
                    creator: requester.user_id.clone(),
                    appservice_id: requester.appservice.as_ref().map(|a| a.id.clone()),
                    aliases: alias.into_iter().collect(),
                },
                events,
            )
            .await?;
        // Invites are ordinary membership changes after creation, as in Synapse; a failed
        // invite does not undo the room (Synapse behaves the same).
        for invitee in invitees.into_iter().filter(|u| !joined_at_once.contains(u)) {
            let mut content = self.member_content(token, &invitee, "invite").await;
            if request.is_direct == Some(true) {
                content.insert("is_direct".into(), json!(true));
            }
            self.append_one(requester, &room_id, NewEvent::member(&invitee, content, ts))
                .await?;
        }
        Ok(room_id)
    }

    /// Whether Synapse already has this alias (a local alias must not shadow one of Synapse's).
    async fn synapse_has_alias(&self, token: &str, alias: &OwnedRoomAliasId) -> bool {
        self.synapse
            .resolve_alias(token, alias.as_str())
            .await
            .is_ok_and(|found| found.is_some())
    }

    /// A relation must point into the same room (as Synapse requires); an unknown target is
    /// allowed, as bridges relate to events they are about to backfill.
    async fn check_relation(
        &self,
        room_id: &OwnedRoomId,
        content: &Map<String, Value>,
    ) -> Result<(), RoomError> {
        let Some(target) = content
            .get("m.relates_to")
            .and_then(|relation| relation.get("event_id"))
            .and_then(Value::as_str)
        else {
            return Ok(());
        };
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        match store::events::room_of(&mut conn, target).await? {
            Some(room) if room != room_id.as_str() => Err(RoomError::BadRequest(
                "Relations must be in the same room".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Sends one event (message, state or redaction). A transaction ID makes it idempotent
    /// within the room.
    pub async fn append_one(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        event: NewEvent,
    ) -> Result<OwnedEventId, RoomError> {
        if let Err(invalid) = super::validate::client_event(
            room_id.as_str(),
            &event.kind,
            event.state_key.is_some(),
            &event.content,
        ) {
            // Synapse asks whether the sender is in the room before it looks at the content.
            if event.kind != "m.room.member" {
                let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
                let sender = requester.user_id.as_str();
                let joined = store::rooms::membership(&mut conn, room_id.as_str(), sender)
                    .await?
                    .is_some_and(|(membership, _)| membership == "join");
                if !joined {
                    return Err(RoomError::Forbidden(format!(
                        "User {sender} not in room {room_id}"
                    )));
                }
            }
            return Err(invalid);
        }
        self.check_relation(room_id, &event.content).await?;
        if event.kind == "m.room.canonical_alias" && event.state_key.as_deref() == Some("") {
            self.check_canonical_alias(&requester.user_id, room_id, &event.content, event.ts)
                .await?;
        }
        let proposal = Proposal {
            sender: requester.user_id.clone(),
            kind: event.kind,
            state_key: event.state_key,
            content: event.content,
            origin_server_ts: event.ts,
            redacts: event.redacts,
        };
        check_size(&proposal)?;
        let txn = event.txn_id.map(|txn_id| Txn {
            scope: requester.txn_scope(),
            endpoint: room_id.to_string(),
            txn_id,
        });
        let revokes_guests = proposal.kind == "m.room.guest_access"
            && proposal.state_key.as_deref() == Some("")
            && proposal.content.get("guest_access").and_then(Value::as_str) != Some("can_join");
        let outcome = self
            .writer
            .append(room_id.clone(), vec![proposal], txn)
            .await?;
        if revokes_guests && matches!(outcome, Outcome::Written(_)) {
            self.remove_guests(room_id).await;
        }
        match outcome {
            Outcome::Written(events) => events
                .into_iter()
                .next()
                .map(|event| event.event_id)
                .ok_or_else(|| RoomError::Internal("append wrote nothing".into())),
            Outcome::Repeated(event_id) => Ok(event_id),
            Outcome::Existing(_) => Err(RoomError::Internal("append reported a batch".into())),
        }
    }

    /// A membership change by `requester` for `target` (join, leave, invite, kick, ban,
    /// unban). Joins and invites carry the target's profile.
    pub async fn set_membership(
        &self,
        requester: &Requester,
        token: &str,
        room_id: &OwnedRoomId,
        change: MembershipChange<'_>,
    ) -> Result<OwnedEventId, RoomError> {
        let MembershipChange {
            target,
            membership,
            reason,
            extra,
            ts,
        } = change;
        // A user of another server could only be invited over federation. Synapse answers 502
        // when it cannot reach that server; a local room never reaches one.
        if membership == "invite" && target.server_name() != self.server_name {
            return Err(RoomError::Unreachable(format!(
                "Can't connect to server {}: local rooms do not federate",
                target.server_name()
            )));
        }
        let mut content = match membership {
            "join" | "invite" => self.member_content(token, target, membership).await,
            _ => {
                let mut content = Map::new();
                content.insert("membership".into(), json!(membership));
                content
            }
        };
        // What the request sets wins over the profile (bridges set per-room names this way).
        for (key, value) in extra {
            content.insert(key, value);
        }
        if let Some(reason) = reason {
            content.insert("reason".into(), json!(reason));
        }
        if requester.is_guest {
            // As Synapse marks every membership a guest sends (`kind`), which is also how
            // the guests of a room are found when guest access is revoked (`rooms::guests`).
            content.insert("kind".into(), json!("guest"));
            if membership == "join" && target == &requester.user_id {
                self.check_guest_may_join(room_id).await?;
            }
        }
        if membership == "join" && target == &requester.user_id {
            // Synapse refuses a banned user's join before the auth rules, in its own words.
            let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
            let current =
                store::rooms::membership(&mut conn, room_id.as_str(), target.as_str()).await?;
            if current.is_some_and(|(membership, _)| membership == "ban") {
                return Err(RoomError::BadState(
                    "Cannot join user who was banned".into(),
                ));
            }
        }
        if membership == "join"
            && target == &requester.user_id
            && let Some(authoriser) = self
                .restricted_join_authoriser(requester, token, room_id)
                .await?
        {
            content.insert("join_authorised_via_users_server".into(), json!(authoriser));
        }
        self.append_one(requester, room_id, NewEvent::member(target, content, ts))
            .await
    }

    /// Appends events the server itself decided on (the leaves of a room deletion), all or
    /// none, without a transaction ID.
    pub(super) async fn append_internal(
        &self,
        room_id: &OwnedRoomId,
        events: Vec<Proposal>,
    ) -> Result<(), RoomError> {
        self.writer.append(room_id.clone(), events, None).await?;
        Ok(())
    }

    /// The local room an alias names, if any.
    pub async fn resolve_alias(&self, alias: &str) -> Result<Option<OwnedRoomId>, RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        Ok(store::rooms::alias_room(&mut conn, alias)
            .await?
            .and_then(|room| OwnedRoomId::try_from(room).ok()))
    }
}

/// Refuses content that is not canonical JSON (floats, integers beyond ±(2^53 - 1)), as
/// Synapse does for room versions 6 and later: such values cannot be redacted or hashed
/// consistently.
fn check_canonical(value: &Value) -> Result<(), RoomError> {
    const LIMIT: i64 = (1 << 53) - 1;
    match value {
        Value::Number(number) => match number.as_i64() {
            Some(n) if (-LIMIT..=LIMIT).contains(&n) => Ok(()),
            Some(_) => Err(RoomError::BadJson("JSON integer out of range".into())),
            None if number.is_u64() => Err(RoomError::BadJson("JSON integer out of range".into())),
            None => Err(RoomError::BadJson("Bad JSON value: float".into())),
        },
        Value::Array(items) => items.iter().try_for_each(check_canonical),
        Value::Object(map) => map.values().try_for_each(check_canonical),
        Value::Null | Value::Bool(_) | Value::String(_) => Ok(()),
    }
}

/// Most events in one batch send.
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// A `com.beeper.backfill` batch send, as parsed from its body.
#[derive(Debug, Clone)]
pub struct BatchSend {
    pub forward: bool,
    pub forward_if_no_messages: bool,
    /// Whether forward events may notify (push, unread counts); backfilled ones never do.
    pub send_notification: bool,
    pub mark_read_by: Option<OwnedUserId>,
    pub events: Vec<Value>,
}

/// The most bytes an event's type and state key may have (Synapse's limit for each).
const MAX_ID_BYTES: usize = 255;

/// Refuses events over [`MAX_EVENT_BYTES`] (measured as the JSON of the event fields), types
/// and state keys over [`MAX_ID_BYTES`], and content that is not canonical JSON.
fn check_size(event: &Proposal) -> Result<(), RoomError> {
    event.content.values().try_for_each(check_canonical)?;
    // Synapse's `validate_event_for_room_version`: each of these is at most 255 bytes, and
    // the error names the field (413 `M_TOO_LARGE` "'type' too large").
    if event.kind.len() > MAX_ID_BYTES {
        return Err(RoomError::TooLarge("'type' too large".into()));
    }
    if event
        .state_key
        .as_ref()
        .is_some_and(|key| key.len() > MAX_ID_BYTES)
    {
        return Err(RoomError::TooLarge("'state_key' too large".into()));
    }
    // Counted, not collected: this runs for every event of a batch.
    let mut content_bytes = ByteCount(0);
    let size = serde_json::to_writer(&mut content_bytes, &event.content)
        .map(|()| content_bytes.0)
        .unwrap_or(usize::MAX)
        + event.kind.len()
        + event.state_key.as_ref().map_or(0, String::len)
        + event.sender.as_str().len()
        // room_id, event_id, origin_server_ts and the JSON around them
        + 200;
    if size > MAX_EVENT_BYTES {
        return Err(RoomError::TooLarge("event too large".into()));
    }
    Ok(())
}

/// A writer that only counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Rooms {
    /// `POST /_matrix/client/unstable/com.beeper.backfill/rooms/{roomId}/batch_send`, by an
    /// appservice user joined to the room. Every event's sender must be the appservice's bot
    /// or in its user namespaces; events carry their own `event_id` (optional),
    /// `origin_server_ts` and content; state events and redactions are refused. All or none.
    /// A repeat of a whole earlier batch (same event IDs) returns the same IDs and writes
    /// nothing; a batch that reuses some existing ID is refused (`M_INVALID_PARAM`).
    pub async fn batch_send(
        &self,
        requester: &Requester,
        room_id: &OwnedRoomId,
        request: BatchSend,
    ) -> Result<Vec<OwnedEventId>, RoomError> {
        let Some(appservice) = &requester.appservice else {
            return Err(RoomError::Forbidden(
                "Only application services can batch send".into(),
            ));
        };
        if request.events.len() > MAX_BATCH_EVENTS {
            return Err(RoomError::BadJson(format!(
                "At most {MAX_BATCH_EVENTS} events per batch"
            )));
        }
        let bot = format!("@{}:{}", appservice.sender_localpart, self.server_name);
        let now = now_ms();
        let mut events = Vec::with_capacity(request.events.len());
        let mut claimed_senders = std::collections::HashSet::new();
        for (index, value) in request.events.into_iter().enumerate() {
            let bad = |what: &str| RoomError::BadJson(format!("events[{index}]: {what}"));
            let Value::Object(mut event) = value else {
                return Err(bad("not an object"));
            };
            let kind = event
                .get("type")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| bad("'type' must be a non-empty string"))?;
            if event.contains_key("state_key") {
                return Err(bad("state events cannot be batch sent"));
            }
            if kind == "m.room.redaction" {
                return Err(bad("redactions cannot be batch sent"));
            }
            if let Some(other) = event.get("room_id")
                && other.as_str() != Some(room_id.as_str())
            {
                return Err(bad("'room_id' names another room"));
            }
            let sender = event
                .get("sender")
                .and_then(Value::as_str)
                .ok_or_else(|| bad("'sender' must be a string"))?;
            let sender = OwnedUserId::try_from(sender).map_err(|_| {
                RoomError::InvalidParam(format!("events[{index}]: invalid sender {sender:?}"))
            })?;
            // A batch has few distinct senders: each is matched against the namespaces once.
            let claimed = claimed_senders.contains(&sender)
                || sender.as_str() == bot
                || appservice
                    .users
                    .iter()
                    .any(|ns| ns.matches(sender.as_str()));
            if claimed {
                claimed_senders.insert(sender.clone());
            } else {
                return Err(RoomError::Forbidden(format!(
                    "Application service cannot masquerade as this user ({sender})."
                )));
            }
            let content = match event.remove("content") {
                Some(Value::Object(content)) => content,
                _ => return Err(bad("'content' must be an object")),
            };
            let origin_server_ts = match event.get("origin_server_ts") {
                None => now,
                Some(ts) => ts
                    .as_i64()
                    .ok_or_else(|| bad("'origin_server_ts' must be an integer"))?,
            };
            let event_id = match event.get("event_id") {
                None => None,
                Some(id) => Some(
                    id.as_str()
                        .and_then(|id| OwnedEventId::try_from(id).ok())
                        .ok_or_else(|| {
                            RoomError::InvalidParam(format!("events[{index}]: invalid event_id"))
                        })?,
                ),
            };
            let proposal = Proposal {
                sender,
                kind,
                state_key: None,
                content,
                origin_server_ts,
                redacts: None,
            };
            check_size(&proposal)?;
            events.push((proposal, event_id));
        }
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let placement = match (request.forward, request.forward_if_no_messages) {
            (true, _) => Placement::Forward,
            (false, true) => Placement::ForwardIfEmpty,
            (false, false) => Placement::Backward,
        };
        let job = BatchJob {
            room_id: room_id.clone(),
            by: requester.user_id.clone(),
            events,
            placement,
            mark_read_by: request.mark_read_by,
            silent: !request.send_notification,
        };
        match self.writer.batch(job).await? {
            Outcome::Written(written) => Ok(written.into_iter().map(|e| e.event_id).collect()),
            Outcome::Existing(ids) => Ok(ids),
            Outcome::Repeated(_) => Err(RoomError::Internal("batch reported a repeat".into())),
        }
    }
}

impl Rooms {
    /// `PUT /directory/room/{alias}` for a local room, with Synapse's rules: the alias is on
    /// this server; an appservice may only use aliases in its namespaces, and nobody else may
    /// use an alias an appservice reserved exclusively; users must be in the room; the alias
    /// must be free here and on Synapse.
    pub async fn create_alias(
        &self,
        requester: &Requester,
        token: &str,
        alias: &str,
        room_id: &OwnedRoomId,
        reserved_by_appservice: bool,
    ) -> Result<(), RoomError> {
        let parsed = OwnedRoomAliasId::try_from(alias)
            .map_err(|_| RoomError::InvalidParam(format!("Invalid room alias: {alias}")))?;
        if parsed.server_name() != self.server_name {
            return Err(RoomError::InvalidParam("Room alias must be local".into()));
        }
        match &requester.appservice {
            Some(appservice) if !appservice.aliases.iter().any(|ns| ns.matches(alias)) => {
                return Err(RoomError::Exclusive(
                    "This application service has not reserved this kind of alias.".into(),
                ));
            }
            Some(_) => {}
            None if reserved_by_appservice => {
                return Err(RoomError::Exclusive(
                    "This alias is reserved by an application service.".into(),
                ));
            }
            None => {
                let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
                let membership = store::rooms::membership(
                    &mut conn,
                    room_id.as_str(),
                    requester.user_id.as_str(),
                )
                .await?;
                if membership.is_none_or(|(membership, _)| membership != "join") {
                    return Err(RoomError::Forbidden(
                        "You must be in the room to create an alias for it".into(),
                    ));
                }
            }
        }
        if self.synapse_has_alias(token, &parsed).await {
            return Err(RoomError::Conflict(format!(
                "Room alias {alias} already exists"
            )));
        }
        let mut tx = self.db.begin().await.map_err(store::StoreError::from)?;
        // A deleted room keeps its row until the purge ends, and lost its aliases when it was
        // deleted: none may name it again. (An alias inserted while the deletion commits can
        // still slip past; requests by it get the deleted room's answer, `api::alias_route`.)
        if !store::rooms::is_live(&mut tx, room_id.as_str()).await? {
            return Err(RoomError::NotFound("Unknown room".into()));
        }
        // Under the writer's lock: a createRoom checks its alias under it and inserts it in the
        // same transaction (writer.rs `create`), so this insert comes before that check or
        // after that commit, never in between — where it made the createRoom's commit fail on
        // the alias key (a 500 instead of M_ROOM_IN_USE).
        store::rooms::lock_writer(&mut tx).await?;
        let added = store::rooms::try_insert_alias(
            &mut tx,
            alias,
            room_id.as_str(),
            requester.user_id.as_str(),
        )
        .await?;
        tx.commit().await.map_err(store::StoreError::from)?;
        if !added {
            return Err(RoomError::Conflict(format!(
                "Room alias {alias} already exists"
            )));
        }
        Ok(())
    }
}

impl Rooms {
    /// `/invite`, `/kick` and `/unban` name an intent that the membership they write does not
    /// carry (kick and unban both write `leave`); Synapse checks it against the target's
    /// current membership first, with these answers.
    pub async fn check_member_action(
        &self,
        room_id: &OwnedRoomId,
        target: &OwnedUserId,
        action: &str,
    ) -> Result<(), RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        let current = store::rooms::membership(&mut conn, room_id.as_str(), target.as_str())
            .await?
            .map(|(membership, _)| membership);
        match (action, current.as_deref()) {
            ("unban", Some("ban")) => Ok(()),
            ("unban", other) => Err(RoomError::BadState(format!(
                "Cannot unban user who was not banned (membership={})",
                other.unwrap_or("None")
            ))),
            ("kick" | "invite", Some("ban")) => Err(RoomError::BadState(format!(
                "Cannot {action} user who was banned"
            ))),
            ("kick", Some("leave") | None) => Err(RoomError::Forbidden(
                "The target user is not in the room".into(),
            )),
            _ => Ok(()),
        }
    }
}

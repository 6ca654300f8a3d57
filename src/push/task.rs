//! The push task: follows the committed event stream from its stored position, evaluates each
//! new local event for the room's joined local members, records the notifications and sends
//! them to the members' pushers.
//!
//! * Backfilled events (batch send into the past) and silent ones (batch send with
//!   `send_notification: false`) are skipped: they never push or count.
//! * Recipients are the room's joined members on this server except the sender and the users
//!   of appservices (bots and namespace users: Synapse does not push to them either).
//! * A room muted with `com.beeper.mute` (`muted_until` -1 or in the future) records and
//!   sends nothing for that member.
//! * The room is read as it is now (members, power levels, names), not as it was at the event;
//!   the task runs right behind the writer, so the two differ only while a membership or power
//!   level change is in the same batch.
//! * What it reads of a room is kept between batches ([`RoomCache`]) until an event that can
//!   change it (a state event, a redaction) passes: a busy room costs no reads of its members
//!   and state per batch, however many members it has.
//! * Notifications are recorded and the position moves in one transaction, so each event is
//!   counted once; sending happens after the commit and is at most once (a crash between the
//!   commit and the gateway's answer loses that push, never a count).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::UserId;
use ruma::push::Ruleset;
use serde_json::{Map, Value, json};
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinSet;

use super::gateway::{self, Delivered, Device, GatewayClient, Notice};
use super::rules::{self, RoomFacts};
use crate::config::Registration;
use crate::notify::{Notifier, ReadPace};
use crate::rooms::service::now_ms;
use crate::routing::LiveClasses;
use crate::store::events::{EventHead, StoredEvent};
use crate::store::{self, StoreError, push::PushAction};

/// Events read and evaluated at once.
const CHUNK: i64 = 200;
/// Deliveries in flight at once; the task waits for one to end before starting more.
const MAX_IN_FLIGHT: usize = 64;
/// Rooms whose facts the task keeps between batches ([`RoomCache`]); past it, the cache
/// starts over.
const CACHE_ROOMS: usize = 10_000;
/// Pause after a store error.
const PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// The push task's parts.
pub struct PushTask {
    pub db: PgPool,
    pub notifier: Notifier,
    pub server_name: String,
    /// The appservices, whose users get no pushes.
    pub registrations: Vec<Arc<Registration>>,
    pub client: GatewayClient,
    /// Told of rejected pushkeys, to delete them at Synapse.
    pub push: Arc<super::Push>,
    /// The room classes in force: rooms of an `off` class push nothing.
    pub classes: Arc<LiveClasses>,
}

/// One notification to send: what about, and to which pushers.
struct Outgoing {
    notice: Notice,
    pushers: Vec<store::push::StoredPusher>,
}

impl PushTask {
    /// Runs until the process ends (or every notifier is dropped); store errors are retried
    /// after a pause.
    pub async fn run(self) {
        let mut deliveries = JoinSet::new();
        loop {
            match self.run_once(&mut deliveries).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(error = %err, "push paused after a store error");
                    tokio::time::sleep(PAUSE).await;
                }
            }
        }
        // Let deliveries under way finish their retries.
        while deliveries.join_next().await.is_some() {}
    }

    async fn run_once(&self, deliveries: &mut JoinSet<()>) -> Result<(), StoreError> {
        let mut conn = self.db.acquire().await?;
        // Subscribe before reading the position: no commit goes unnoticed.
        let mut wake = self.notifier.subscribe();
        let mut position = store::push::position(&mut conn, self.notifier.current()).await?;
        // Started afresh with each run: after a store error nothing read before is trusted.
        let mut cache = RoomCache::default();
        let mut pace = ReadPace::default();
        loop {
            let committed = *wake.borrow_and_update();
            if position >= committed {
                drop(conn);
                tokio::select! {
                    changed = wake.changed() => if changed.is_err() {
                        return Ok(());
                    },
                    Some(_) = deliveries.join_next(), if !deliveries.is_empty() => {}
                }
                tokio::time::sleep(crate::notify::FOLLOWER_PAUSE).await;
                conn = self.db.acquire().await?;
                continue;
            }
            pace.ready().await;
            let committed = *wake.borrow_and_update();
            let heads = store::events::stream_heads(&mut conn, position, committed, CHUNK).await?;
            pace.read_up_to_committed(heads.len() < usize::try_from(CHUNK).unwrap_or(usize::MAX));
            let Some(last) = heads.last().map(|head| head.stream) else {
                store::push::set_position(&mut conn, committed).await?;
                position = committed;
                continue;
            };
            let outgoing = self.evaluate(&mut conn, &mut cache, &heads, last).await?;
            position = last;
            let classes = self.classes.current();
            for out in outgoing {
                // Held back while the room's class is off (the notification is recorded, and
                // listed once the class is on; the push itself is not sent later).
                if !classes.available(&out.notice.room_id) {
                    continue;
                }
                for pusher in out.pushers {
                    while deliveries.len() >= MAX_IN_FLIGHT {
                        deliveries.join_next().await;
                    }
                    let client = self.client.clone();
                    let db = self.db.clone();
                    let push = self.push.clone();
                    let payload = Payload::Event(Box::new(out.notice.clone()));
                    deliveries.spawn(send(client, db, push, payload, pusher));
                }
            }
        }
    }

    /// Evaluates the events of `heads`, records their notifications and moves the position
    /// to `last` (one transaction); returns what to send.
    ///
    /// Only the events someone is to be evaluated for are read in full: those that may notify
    /// (not silent) in a room with recipients, and invites of a recipient. A bridge's rooms of
    /// bots and ghosts cost the heads alone.
    async fn evaluate(
        &self,
        conn: &mut PgConnection,
        cache: &mut RoomCache,
        heads: &[EventHead],
        last: i64,
    ) -> Result<Vec<Outgoing>, StoreError> {
        let now = now_ms();
        let suffix = format!(":{}", self.server_name);
        let recipient = |user: &str| user.ends_with(&suffix) && !self.appservice_user(user);
        let rooms = load_rooms(conn, cache, heads, now, recipient).await?;
        // Invites are evaluated for the invited user too (`.m.rule.invite_for_me`).
        let invitees: HashMap<i64, String> = heads
            .iter()
            .filter_map(|e| Some((e.stream, invitee(e).filter(|u| recipient(u))?.to_owned())))
            .collect();
        let wanted: Vec<i64> = heads
            .iter()
            .filter(|head| !head.silent)
            .filter(|head| {
                invitees.contains_key(&head.stream)
                    || rooms
                        .get(head.room_id.as_str())
                        .is_some_and(|room| !room.recipients().is_empty())
            })
            .map(|head| head.stream)
            .collect();
        let events: Vec<StoredEvent> = store::events::with_prev_at(conn, &wanted)
            .await?
            .into_iter()
            .map(|row| row.event)
            .collect();
        let recipients: Vec<String> = rooms
            .values()
            .flat_map(|room| room.recipients().iter().map(|(user, _)| user.clone()))
            .chain(invitees.values().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // Rooms of bots and ghosts only (a bridge's backfill, its relay rooms) have nobody to
        // evaluate for: no rules or pushers to read.
        let (stored_rules, mut pushers, ignoring) = if recipients.is_empty() {
            (HashMap::new(), HashMap::new(), HashMap::new())
        } else {
            (
                store::push::rules_of(conn, &recipients).await?,
                store::push::pushers_of(conn, &recipients).await?,
                store::ignore::ignored_by_each(conn, &recipients).await?,
            )
        };
        let mut rulesets = HashMap::new();

        let mut actions = Vec::new();
        let mut notices = Vec::new();
        for event in &events {
            let Some(room) = rooms.get(event.room_id.as_str()) else {
                continue;
            };
            let value = event_json(event);
            let invited = invitees
                .get(&event.stream)
                .map(|u| (u.clone(), String::new()));
            for (user, display_name) in room.recipients().iter().chain(invited.as_ref()) {
                let Ok(user_id) = UserId::parse(user.as_str()) else {
                    continue;
                };
                // Nothing an ignored user sends notifies (Synapse's bulk push rule evaluator
                // skips such recipients, invites included).
                if ignoring
                    .get(user)
                    .is_some_and(|ignored| ignored.contains(event.sender.as_str()))
                {
                    continue;
                }
                let ruleset = rulesets
                    .entry(user.clone())
                    .or_insert_with(|| rules::ruleset(&user_id, stored_rules.get(user)));
                let Some(outcome) =
                    notifies(room, event, &value, &user_id, display_name, ruleset).await
                else {
                    continue;
                };
                if pushers.contains_key(user) {
                    notices.push(Notice {
                        event_id: event.event_id.to_string(),
                        room_id: event.room_id.to_string(),
                        kind: event.kind.clone(),
                        sender: event.sender.to_string(),
                        state_key: event.state_key.clone(),
                        content: event.content.clone(),
                        sender_display_name: room.display_name(event.sender.as_str()),
                        room_name: room.name_for(user),
                        unread: 0,
                        tweaks: rules::tweaks(&outcome.actions),
                        user_id: user.clone(),
                    });
                }
                actions.push(PushAction {
                    user_id: user.clone(),
                    room_id: event.room_id.to_string(),
                    stream: event.stream,
                    event_id: event.event_id.to_string(),
                    thread_id: rules::thread_of(&event.content),
                    highlight: outcome.highlight,
                    actions: outcome.actions,
                    ts: event.origin_server_ts,
                });
            }
        }
        if actions.is_empty() {
            store::push::set_position(conn, last).await?;
        } else {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            store::push::insert_actions(&mut tx, &actions).await?;
            store::push::set_position(&mut tx, last).await?;
            tx.commit().await?;
        }

        // The badge after this batch, once per user.
        let mut badges: HashMap<String, i64> = HashMap::new();
        let mut outgoing = Vec::with_capacity(notices.len());
        for mut notice in notices {
            let unread = match badges.get(&notice.user_id) {
                Some(unread) => *unread,
                None => {
                    let unread = store::push::badge(conn, &notice.user_id).await?;
                    badges.insert(notice.user_id.clone(), unread);
                    unread
                }
            };
            notice.unread = unread;
            let user_pushers = pushers.get(&notice.user_id).cloned().unwrap_or_default();
            outgoing.push(Outgoing {
                notice,
                pushers: user_pushers,
            });
        }
        pushers.clear();
        Ok(outgoing)
    }

    /// Whether a user is an appservice's bot or in one of its exclusive user namespaces.
    fn appservice_user(&self, user: &str) -> bool {
        self.registrations.iter().any(|r| {
            user.strip_prefix('@')
                .and_then(|rest| rest.split_once(':'))
                .is_some_and(|(local, _)| local == r.sender_localpart)
                || r.users.iter().any(|ns| ns.exclusive && ns.matches(user))
        })
    }
}

/// The rooms of `events` as evaluation needs them: their [`Facts`] from `cache`, read for the
/// rooms it lacks (two statements whatever their number: a batch of a busy bridge spans many
/// rooms), and who muted them (read each time: a mute is room account data, not an event).
/// `recipient` picks the joined members whose rules are evaluated.
async fn load_rooms(
    conn: &mut PgConnection,
    cache: &mut RoomCache,
    heads: &[EventHead],
    now: i64,
    recipient: impl Fn(&str) -> bool,
) -> Result<HashMap<String, Room>, StoreError> {
    let (room_ids, missing) = cache.prepare(heads);
    if !missing.is_empty() {
        for (room_id, facts) in read_facts(conn, &missing, &recipient).await? {
            cache.rooms.insert(room_id, Arc::new(facts));
        }
    }
    let facts: Vec<(&str, Arc<Facts>)> = room_ids
        .into_iter()
        .filter_map(|room_id| Some((room_id, cache.rooms.get(room_id)?.clone())))
        .collect();
    let all_recipients: Vec<String> = facts
        .iter()
        .flat_map(|(_, facts)| facts.recipients.iter().map(|(user, _)| user.clone()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let mutes = if all_recipients.is_empty() {
        HashMap::new()
    } else {
        let room_ids: Vec<String> = facts.iter().map(|(id, _)| (*id).to_owned()).collect();
        store::push::mutes_of_rooms(conn, &room_ids, &all_recipients).await?
    };
    Ok(facts
        .into_iter()
        .map(|(room_id, facts)| {
            let room_mutes = mutes.get(room_id);
            let muted = facts
                .recipients
                .iter()
                .filter(|(user, _)| {
                    rules::muted(room_mutes.and_then(|m| m.get(user)).copied(), now)
                })
                .map(|(user, _)| user.clone())
                .collect();
            (room_id.to_owned(), Room { facts, muted })
        })
        .collect())
}

/// The [`Facts`] of `room_ids` as they are now.
async fn read_facts(
    conn: &mut PgConnection,
    room_ids: &[String],
    recipient: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Facts)>, StoreError> {
    let mut members = store::push::joined_members_of_rooms(conn, room_ids).await?;
    let keys = [
        ("m.room.power_levels", ""),
        ("m.room.name", ""),
        ("m.room.canonical_alias", ""),
    ];
    let mut states = store::events::current_state_at_keys_of_rooms(conn, room_ids, &keys).await?;
    let mut read = Vec::with_capacity(room_ids.len());
    for room_id in room_ids {
        let members = members.remove(room_id).unwrap_or_default();
        let state = states.remove(room_id).unwrap_or_default();
        let names: HashMap<String, Option<String>> = members
            .iter()
            .map(|(user, content)| (user.clone(), display_name(content)))
            .collect();
        let recipients: Vec<(String, String)> = members
            .iter()
            .filter(|(user, _)| recipient(user))
            .map(|(user, _)| {
                let name = names.get(user).cloned().flatten();
                // No display name: the display name rule matches nothing (as in Synapse).
                (user.clone(), name.unwrap_or_default())
            })
            .collect();
        let content_of = |kind: &str| {
            state
                .iter()
                .find(|e| e.event.kind == kind)
                .map(|e| e.event.content.clone())
        };
        let text = |kind: &str, field: &str| {
            content_of(kind)
                .and_then(|c| c.get(field).and_then(Value::as_str).map(str::to_owned))
                .filter(|t| !t.is_empty())
        };
        read.push((
            room_id.clone(),
            Facts {
                member_count: u64::try_from(members.len()).unwrap_or(u64::MAX),
                power_levels: content_of("m.room.power_levels"),
                name: text("m.room.name", "name")
                    .or_else(|| text("m.room.canonical_alias", "alias")),
                names,
                recipients,
            },
        ));
    }
    Ok(read)
}

/// The push task's copy of rooms' [`Facts`], kept from one batch to the next.
///
/// Invariant: an entry is at least as new as every event of its room up to the task's
/// position. An entry is read as the room is now, which may be ahead of the task, and it is
/// dropped before evaluating a chunk with an event of its room that can change it
/// ([`changes_facts`]), so the room is read again for that chunk. This holds because every
/// change to a room's members, names and power levels is such an event on the stream the
/// task follows: the writer makes current state only from events, batch send (whose
/// backfilled history the task skips) refuses state events and redactions, and a purge
/// removes the room with its events. (Which members are recipients depends on the appservice
/// registrations too; they are fixed for the life of the process.)
struct RoomCache {
    rooms: HashMap<String, Arc<Facts>>,
    /// Rooms kept at most ([`CACHE_ROOMS`]).
    capacity: usize,
}

impl Default for RoomCache {
    fn default() -> Self {
        Self {
            rooms: HashMap::new(),
            capacity: CACHE_ROOMS,
        }
    }
}

impl RoomCache {
    /// Gets ready for a chunk of events: drops the rooms an event of the chunk may change,
    /// starts over if the chunk's rooms might not fit, and returns the chunk's rooms with
    /// those it lacks (to be read). Starting over comes before the lookup, so it never drops a
    /// room the chunk found cached: afterwards each room of the chunk is cached or returned.
    fn prepare<'e>(&mut self, heads: &'e [EventHead]) -> (HashSet<&'e str>, Vec<String>) {
        for head in heads.iter().filter(|e| changes_facts(e)) {
            self.rooms.remove(&head.room_id);
        }
        let room_ids: HashSet<&str> = heads.iter().map(|e| e.room_id.as_str()).collect();
        if self.rooms.len() + room_ids.len() > self.capacity {
            self.rooms.clear();
        }
        let missing = room_ids
            .iter()
            .filter(|room_id| !self.rooms.contains_key(**room_id))
            .map(|room_id| (*room_id).to_owned())
            .collect();
        (room_ids, missing)
    }
}

/// Whether an event may change what [`Facts`] hold of its room: any state event (members,
/// display names, power levels, name, alias) and any redaction (it may prune one of those;
/// the writer stores every redaction as an `m.room.redaction` event).
fn changes_facts(event: &EventHead) -> bool {
    event.state_key.is_some() || event.kind == "m.room.redaction"
}

/// The display name a member event content sets (an empty one is none).
fn display_name(member: &Value) -> Option<String> {
    member
        .get("displayname")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// What evaluation needs of a room that only its events change ([`RoomCache`]).
pub(super) struct Facts {
    member_count: u64,
    power_levels: Option<Map<String, Value>>,
    /// `m.room.name`, else the canonical alias.
    name: Option<String>,
    /// Joined member → display name.
    names: HashMap<String, Option<String>>,
    /// Joined members whose rules are evaluated, with the display name the rules match.
    recipients: Vec<(String, String)>,
}

/// A room as the push task sees it.
pub(super) struct Room {
    facts: Arc<Facts>,
    /// Recipients who muted the room.
    muted: HashSet<String>,
}

impl Room {
    /// The room as one recipient's rules see it (from [`store::push::recipient_context`]);
    /// `None` when the user is not joined.
    pub(super) fn for_recipient(
        user: &str,
        room: &store::push::RecipientRoom,
        now: i64,
    ) -> Option<Room> {
        let name = display_name(room.member.as_ref()?);
        let muted = rules::muted(room.muted_until, now)
            .then(|| user.to_owned())
            .into_iter()
            .collect();
        let facts = Facts {
            member_count: u64::try_from(room.member_count).unwrap_or(0),
            power_levels: room
                .power_levels
                .as_ref()
                .and_then(Value::as_object)
                .cloned(),
            name: None,
            recipients: vec![(user.to_owned(), name.clone().unwrap_or_default())],
            names: HashMap::from([(user.to_owned(), name)]),
        };
        Some(Room {
            facts: Arc::new(facts),
            muted,
        })
    }

    /// Joined members whose rules are evaluated, with the display name the rules match.
    pub(super) fn recipients(&self) -> &[(String, String)] {
        &self.facts.recipients
    }

    fn display_name(&self, user: &str) -> Option<String> {
        self.facts.names.get(user).cloned().flatten()
    }

    /// The room name in a notification for `user`: the room's name or alias, else (as Synapse,
    /// for rooms of three or more) the other members' names.
    fn name_for(&self, user: &str) -> Option<String> {
        if self.facts.name.is_some() {
            return self.facts.name.clone();
        }
        let mut others: Vec<String> = self
            .facts
            .names
            .iter()
            .filter(|(member, _)| member.as_str() != user)
            .map(|(member, name)| name.clone().unwrap_or_else(|| member.clone()))
            .collect();
        others.sort();
        match others.as_slice() {
            [] | [_] => None,
            [a, b] => Some(format!("{a} and {b}")),
            [a, rest @ ..] => Some(format!("{a} and {} others", rest.len())),
        }
    }
}

/// The user an `m.room.member` invite is for.
fn invitee(event: &EventHead) -> Option<&str> {
    let invite = event.kind == "m.room.member" && event.membership.as_deref() == Some("invite");
    invite.then_some(event.state_key.as_deref()).flatten()
}

/// What the rules of `user` (a recipient of `room`) say about `event`, if it notifies them:
/// never for their own events or in a room they muted.
pub(super) async fn notifies(
    room: &Room,
    event: &StoredEvent,
    value: &Value,
    user: &UserId,
    display_name: &str,
    ruleset: &Ruleset,
) -> Option<rules::Outcome> {
    if user == event.sender || room.muted.contains(user.as_str()) {
        return None;
    }
    let facts = RoomFacts {
        room_id: &event.room_id,
        member_count: room.facts.member_count,
        power_levels: room.facts.power_levels.as_ref(),
    };
    let context = rules::context(&facts, user, display_name);
    let outcome = rules::evaluate(ruleset, value, &context).await;
    outcome.notify.then_some(outcome)
}

/// The event as the push rules see it (client format).
pub(super) fn event_json(event: &StoredEvent) -> Value {
    let mut value = json!({
        "type": event.kind,
        "room_id": event.room_id,
        "event_id": event.event_id,
        "sender": event.sender,
        "origin_server_ts": event.origin_server_ts,
        "content": event.content,
    });
    if let Some(key) = &event.state_key {
        value["state_key"] = json!(key);
    }
    value
}

/// What a push carries.
pub(super) enum Payload {
    /// A notification for an event.
    Event(Box<Notice>),
    /// Only the badge (`counts.unread`), after the user's read receipt moved.
    Badge(i64),
}

/// Sends one push to one pusher; a rejected pushkey is forgotten here and reported for
/// deletion at Synapse.
pub(super) async fn send(
    client: GatewayClient,
    db: PgPool,
    push: Arc<super::Push>,
    payload: Payload,
    pusher: store::push::StoredPusher,
) {
    let data = pusher
        .pusher
        .get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let device = Device {
        app_id: pusher.app_id.clone(),
        pushkey: pusher.pushkey.clone(),
        pushkey_ts: pusher.first_seen / 1000,
        data,
    };
    let Some(url) = device.url().map(str::to_owned) else {
        return;
    };
    let (body, event) = match &payload {
        Payload::Event(notice) => (gateway::body(notice, &device), notice.event_id.as_str()),
        Payload::Badge(unread) => (gateway::badge_body(*unread, &device), "(badge)"),
    };
    let user = &pusher.user_id;
    match gateway::deliver(&client, &url, &body, &pusher.pushkey).await {
        Delivered::Accepted { rejected: false } => {
            tracing::debug!(%user, %event, app_id = %pusher.app_id, "push sent");
            if let Payload::Event(notice) = &payload {
                push.badge_pushed(user, notice.unread);
            }
        }
        Delivered::Accepted { rejected: true } => {
            tracing::warn!(%user, app_id = %pusher.app_id, "push gateway rejected the pushkey; pusher dropped");
            let dropped = async {
                let mut conn = db.acquire().await?;
                store::push::delete_pusher(
                    &mut conn,
                    &pusher.user_id,
                    &pusher.app_id,
                    &pusher.pushkey,
                )
                .await
            };
            if let Err(err) = dropped.await {
                tracing::warn!(error = %err, "rejected pusher not dropped");
            }
            push.pusher_rejected(&pusher.user_id, &pusher.app_id, &pusher.pushkey);
        }
        Delivered::Failed(reason) => {
            tracing::warn!(%user, %event, app_id = %pusher.app_id, %reason, "push not delivered");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: i64, room: &str, state_key: Option<&str>) -> EventHead {
        EventHead {
            stream,
            room_id: room.into(),
            sender: "@bob:x".into(),
            kind: if state_key.is_some() {
                "m.room.member".into()
            } else {
                "m.room.message".into()
            },
            state_key: state_key.map(str::to_owned),
            membership: state_key.map(|_| "join".into()),
            silent: false,
        }
    }

    fn facts() -> Arc<Facts> {
        Arc::new(Facts {
            member_count: 1,
            power_levels: None,
            name: None,
            names: HashMap::new(),
            recipients: Vec::new(),
        })
    }

    fn cache(capacity: usize, rooms: &[&str]) -> RoomCache {
        RoomCache {
            rooms: rooms
                .iter()
                .map(|room| ((*room).to_owned(), facts()))
                .collect(),
            capacity,
        }
    }

    fn sorted(mut rooms: Vec<String>) -> Vec<String> {
        rooms.sort();
        rooms
    }

    #[test]
    fn a_chunk_reads_only_the_rooms_it_lacks_or_may_have_changed() {
        let mut cache = cache(10, &["!a:x", "!b:x"]);
        let chunk = [
            event(1, "!a:x", None),
            event(2, "!b:x", Some("@carol:x")),
            event(3, "!c:x", None),
        ];
        assert_eq!(sorted(cache.prepare(&chunk).1), ["!b:x", "!c:x"]);
    }

    #[test]
    fn starting_over_never_drops_a_room_the_chunk_found_cached() {
        // Full: a chunk with a cached room and a new one makes the cache start over; the
        // cached room must then be read again, not silently missing (its events would go
        // unevaluated).
        let mut cache = cache(2, &["!a:x", "!b:x"]);
        let chunk = [event(1, "!a:x", None), event(2, "!c:x", None)];
        let (_, missing) = cache.prepare(&chunk);
        for room in ["!a:x", "!c:x"] {
            assert!(
                cache.rooms.contains_key(room) || missing.iter().any(|m| m == room),
                "{room} is neither cached nor to be read"
            );
        }
        assert_eq!(sorted(missing), ["!a:x", "!c:x"]);
    }
}

//! One appservice's pusher: reads committed events after its cursor, keeps those the
//! appservice is interested in, and pushes them as transactions.
//!
//! Invariants (see migrations/0005_appservice_delivery.sql):
//! * A transaction is stored before it is sent, and only the stored bytes are ever sent: a
//!   retry repeats the same txnId with the same body, also after a restart.
//! * The cursor moves past a transaction's events only in the database transaction that
//!   deletes it after the appservice's 2xx, so every event is delivered at least once and the
//!   only repeats are repeats of a whole transaction under its txnId — except after a class
//!   is switched `off` (below): a stored, unacknowledged transaction with an event of such a
//!   room is dropped and built again from the same cursors, so a bridge that had in fact
//!   processed it gets its other events again under a new txnId.
//! * Events go out in stream order, so per-room order holds.
//! * Interest is judged in stream order from each event's head (no content); only the events
//!   wanted are read in full. A transaction never depends on events judged after its end
//!   (`Pusher::build` undoes their member list changes).
//! * Appservices that ask for ephemeral events (MSC2409: `receive_ephemeral` or
//!   `de.sorunome.msc2409.push_ephemeral`) also get, under both `ephemeral` and
//!   `de.sorunome.msc2409.ephemeral`, the public read receipts (`m.receipt`) and typing lists
//!   (`m.typing`) of local rooms they are interested in. Receipts follow a room data cursor
//!   stored and acknowledged with the event cursor (at least once, like events); typing is
//!   sent as it changes and not kept across restarts (as in Synapse).
//! * Appservices that opt into MSC3202 (`org.matrix.msc3202: true`) also get
//!   `org.matrix.msc3202.device_lists.changed`: the device-list changes of their users and of
//!   members of local rooms they are interested in ([`super::device_lists`]), following a
//!   device-change cursor stored and acknowledged with the event cursor (at least once).
//!   Their transactions with local content (events, ephemeral events or device changes)
//!   also carry the one-time-key counts and unused fallback-key types of the appservice's
//!   bot and of its users joined to the rooms of those events — the users Synapse's
//!   scheduler picks (`_compute_msc3202_otk_counts_and_fallback_keys`) — asked from
//!   hungryserv's Synapse module when the transaction is built (the keys are Synapse's) and
//!   stored with it, so a retry repeats them; they replace relayed counts of the same
//!   devices, being newer. A Synapse that is down or cannot answer leaves them out rather
//!   than hold delivery.
//! * While the appservice holds a websocket ([`super::websocket`]) transactions go over it,
//!   with the same guarantees (acknowledged by the bridge, else sent again); otherwise over
//!   HTTP to the registration's `url`.
//! * Rooms of a class switched `off` are held back, each on its own (migration 0038): the
//!   first event of such a room the appservice would get puts the room in
//!   `appservice_held_rooms` with that event's position — written before the cursor can move
//!   past it — and from then on the main scan passes over every event of the room, while the
//!   appservice's other rooms keep flowing. Once the class is served again (looked at every
//!   [`HELD_RECHECK`] while a room is held, or at once when poked), the room's events from
//!   the held position up to the cursor are judged and delivered in transactions of their
//!   own, before the main scan goes on; each one's acknowledgement moves the held position
//!   past what it carried in the same database transaction, and the row goes once nothing
//!   below the cursor is left, so the room's later events are the main scan's again.
//!   Invariant: for every room, an event is delivered only after every earlier event of that
//!   room the appservice gets, and every event is delivered at least once (a held event is
//!   either at or after its row's position, or already acknowledged). Held events are judged
//!   by the member list as it is when they are released (a bridge may get an event it would
//!   not have got then, never lose one). A transaction stored before the switch that holds
//!   such an event is never sent while the class is off: it is dropped (its cursors had not
//!   moved) and built again, holding the room (see the repeat above). An `off` room takes no
//!   new events, so only events written before the switch that had not reached the bridge
//!   are held.
//! * Failures back off exponentially (1 s doubling, capped by `max_retry_interval_s`); a
//!   successful `/appservice/{id}/ping` through hungryserv retries at once. Each appservice
//!   has its own task, so one that fails never delays another.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;

use super::client::PushClient;
use super::device_lists;
use super::interest::Interest;
use super::relay::{self, Relayed};
use super::websocket::Slot;
use crate::config::{DeliveryConfig, Registration};
use crate::notify::{Notifier, ReadPace};
use crate::rooms::event::{Related, Viewer, to_client};
use crate::rooms::room_data::receipt_content;
use crate::rooms::service::now_ms;
use crate::rooms::typing::Typing;
use crate::routing::LiveClasses;
use crate::store::appservice::{PendingTxn, Positions};
use crate::store::{self, StoreError};
use crate::upstream::Synapse;

/// Receipts read at once for one transaction.
const RECEIPTS_CHUNK: i64 = 1_000;
/// Event heads read from the store at once while building a transaction.
const SCAN_CHUNK: i64 = 500;
/// Most events examined for one transaction (so a long run of uninteresting events still
/// persists progress now and then).
const SCAN_LIMIT: usize = 20_000;
/// How often delivery with held rooms looks at the room classes again.
const HELD_RECHECK: Duration = Duration::from_secs(1);
/// First retry interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The cursor is written after skipping this many positions of uninteresting events (it is
/// also written with every acknowledged transaction).
const SKIP_PERSIST_EVERY: i64 = 1_000;
/// How long the stream must be quiet before a caught-up appservice persists the positions it
/// skipped. A restart within it re-reads those events and again finds nothing to deliver
/// (judged by the room facts known after the restart, see `interest`).
const IDLE_PERSIST: Duration = Duration::from_secs(1);

/// Counters of one pusher, read by the metrics endpoint.
#[derive(Default)]
pub struct Stats {
    pub transactions_sent: AtomicU64,
    pub transactions_failed: AtomicU64,
    pub events_sent: AtomicU64,
    /// Stream position up to which everything is delivered or skipped.
    pub cursor: AtomicI64,
    /// Events in the transaction in flight (0 when none).
    pub in_flight_events: AtomicU64,
    /// When the transaction in flight was built, in ms since the epoch (0 when none).
    pub in_flight_since_ms: AtomicI64,
}

#[derive(Clone)]
pub struct Pusher {
    pub registration: Arc<Registration>,
    pub server_name: String,
    pub db: PgPool,
    pub notifier: Notifier,
    pub typing: Arc<Typing>,
    pub http: PushClient,
    pub config: DeliveryConfig,
    pub poke: Arc<Notify>,
    pub stats: Arc<Stats>,
    /// The appservice's websocket, used instead of HTTP while connected.
    pub socket: Arc<Slot>,
    /// Where to push over HTTP: the registration's `url`, or in relay mode the bridge's own.
    pub url: Option<String>,
    /// Relay mode: set (then the pusher poked) after a transaction from Synapse is stored.
    pub relayed: Option<Arc<AtomicBool>>,
    /// The room classes in force: events of `off` rooms are held back.
    pub classes: Arc<LiveClasses>,
    /// Asked for the MSC3202 key counts (through hungryserv's Synapse module).
    pub synapse: Synapse,
}

/// What a scan of the queue produced.
struct Built {
    events: Vec<Value>,
    /// The last position examined: the cursor may move here once these events are delivered.
    last: i64,
}

/// A held room's events to deliver now (see the module doc).
struct Release {
    room_id: String,
    events: Vec<Value>,
    /// The position the room's events were read up to.
    upto: i64,
}

/// Ephemeral events for one transaction.
#[derive(Default)]
struct Ephemeral {
    events: Vec<Value>,
    /// The room data position the receipts go up to.
    last_room_data: i64,
}

impl Pusher {
    /// Runs until the process ends; store errors are retried after a pause.
    pub async fn run(self) {
        loop {
            match self.run_once().await {
                Ok(never) => match never {},
                Err(err) => {
                    tracing::warn!(appservice = %self.registration.id, error = %err, "appservice delivery paused after a store error");
                    tokio::time::sleep(FIRST_BACKOFF).await;
                }
            }
        }
    }

    async fn run_once(&self) -> Result<std::convert::Infallible, StoreError> {
        let id = self.registration.id.as_str();
        let ephemeral = self.registration.receive_ephemeral;
        let msc3202 = self.registration.msc3202;
        let prefix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        // Delivery starts with events after the first start with this registration.
        let cursor =
            store::appservice::cursor(&self.db, id, self.notifier.current(), &prefix).await?;
        let mut position = cursor.stream;
        let mut persisted = position;
        // Receipts start with those after the first start that asked for them.
        let mut room_data = cursor
            .room_data
            .unwrap_or_else(|| self.notifier.side_current().room_data);
        let mut room_data_persisted = cursor.room_data;
        // Device-list changes (MSC3202) from the first start that asked for them.
        let mut devices = cursor
            .devices
            .unwrap_or_else(|| self.notifier.side_current().devices);
        let mut devices_persisted = cursor.devices;
        // Typing changes from now on (in memory, as Synapse keeps typing).
        let mut typing_seen = self.typing.current();
        let mut next_txn = cursor.next_txn;
        // Relay mode: Synapse's transactions after this one are still to be delivered.
        let mut relay_seq = cursor.relay_seq;
        let mut relay_pending =
            self.relayed.is_some() && store::relay::any_after(&self.db, id, relay_seq).await?;
        self.stats.cursor.store(position, Ordering::Relaxed);
        let mut interest = Interest::new(self.registration.clone(), &self.server_name);
        // Rooms held back while their class is off, with their first held position.
        let mut held: HashMap<String, i64> = store::appservice::held_rooms(&self.db, id)
            .await?
            .into_iter()
            .collect();
        let mut wake = self.notifier.subscribe();
        let mut side_wake = self.notifier.subscribe_side();
        // A transaction left in flight by an earlier run goes first; after that, the only one
        // in flight is the one this loop just stored, kept in memory (no re-read).
        let mut in_flight = store::appservice::pending(&self.db, id).await?;
        let mut pace = ReadPace::default();
        loop {
            if let Some(pending) = in_flight.take() {
                if !self.deliver(&pending).await {
                    // It holds an event of a room whose class is now off: dropped, and built
                    // again from the same positions (the room is held this time).
                    store::appservice::abandon(&self.db, id, &pending.txn_id).await?;
                    relay_pending |= pending.last_relay_seq.is_some();
                    interest = Interest::new(self.registration.clone(), &self.server_name);
                    self.stats.in_flight_events.store(0, Ordering::Relaxed);
                    self.stats.in_flight_since_ms.store(0, Ordering::Relaxed);
                    continue;
                }
                store::appservice::acknowledge(&self.db, id, &pending.txn_id).await?;
                position = position.max(pending.last_stream);
                persisted = position;
                if let Some(last) = pending.last_room_data {
                    room_data = room_data.max(last);
                    room_data_persisted = Some(room_data);
                }
                if let Some(last) = pending.last_relay_seq {
                    relay_seq = relay_seq.max(last);
                }
                if let Some(last) = pending.last_devices {
                    devices = devices.max(last);
                    devices_persisted = Some(devices);
                }
                if pending.released.is_some() {
                    held = store::appservice::held_rooms(&self.db, id)
                        .await?
                        .into_iter()
                        .collect();
                }
                self.stats.cursor.store(position, Ordering::Relaxed);
                self.stats.in_flight_events.store(0, Ordering::Relaxed);
                self.stats.in_flight_since_ms.store(0, Ordering::Relaxed);
                continue;
            }
            // Held rooms whose class is served again go first, each in order, before the
            // main scan passes their later events.
            if !held.is_empty()
                && let Some(release) = self.release(&mut held, position).await?
            {
                let mut relayed = Relayed::default();
                if msc3202 {
                    let users = key_count_users(&interest, release.events.iter());
                    self.add_key_counts(&mut relayed, &users).await;
                }
                let count = release.events.len();
                let mut body = serde_json::Map::new();
                body.insert("events".into(), Value::Array(release.events));
                body.insert("ephemeral".into(), Value::Array(Vec::new()));
                relayed.add_to(&mut body);
                let txn = PendingTxn {
                    txn_id: format!("hungryserv.{}.{next_txn}", cursor.txn_prefix),
                    last_stream: position,
                    last_room_data: ephemeral.then_some(room_data),
                    last_relay_seq: None,
                    last_devices: msc3202.then_some(devices),
                    released: Some((release.room_id, release.upto)),
                    body: serde_json::to_vec(&body).unwrap_or_default(),
                    events: i32::try_from(count).unwrap_or(i32::MAX),
                    age_s: 0.0,
                };
                next_txn += 1;
                store::appservice::store_txn(&self.db, id, &txn).await?;
                in_flight = Some(txn);
                continue;
            }
            let committed = *wake.borrow_and_update();
            let side = *side_wake.borrow_and_update();
            let side_news =
                ephemeral && (side.room_data > room_data || self.typing.current() > typing_seen);
            let device_news = msc3202 && side.devices > devices;
            if let Some(flag) = &self.relayed {
                relay_pending |= flag.swap(false, Ordering::AcqRel);
            }
            if position >= committed && !side_news && !device_news && !relay_pending {
                // Caught up. What was skipped is persisted once the stream has been quiet for
                // IDLE_PERSIST (or, further down, every SKIP_PERSIST_EVERY positions): while
                // others write, an appservice that wants none of it would otherwise commit a
                // cursor update per commit of theirs.
                let room_data_behind = ephemeral && room_data_persisted < Some(room_data);
                let devices_behind = msc3202 && devices_persisted < Some(devices);
                let behind = persisted < position || room_data_behind || devices_behind;
                tokio::select! {
                    _ = wake.changed() => {}
                    _ = side_wake.changed(), if ephemeral || msc3202 => {}
                    () = self.poke.notified() => {}
                    () = tokio::time::sleep(HELD_RECHECK), if !held.is_empty() => {}
                    () = tokio::time::sleep(IDLE_PERSIST), if behind => {
                        let to = Positions {
                            stream: position,
                            room_data: ephemeral.then_some(room_data),
                            devices: msc3202.then_some(devices),
                        };
                        store::appservice::skip_to(&self.db, id, to).await?;
                        persisted = position;
                        room_data_persisted = to.room_data.or(room_data_persisted);
                        devices_persisted = to.devices.or(devices_persisted);
                        continue;
                    }
                }
                tokio::time::sleep(crate::notify::FOLLOWER_PAUSE).await;
                continue;
            }
            pace.ready().await;
            let committed = *wake.borrow_and_update();
            let built = self
                .build(&mut interest, &mut held, position, committed)
                .await?;
            pace.read_up_to_committed(built.last >= committed);
            let extra = if side_news {
                let typing_now = self.typing.current();
                let extra = self
                    .ephemeral(&mut interest, room_data, side.room_data, typing_seen)
                    .await?;
                typing_seen = typing_now;
                extra
            } else {
                Ephemeral {
                    last_room_data: room_data,
                    ..Ephemeral::default()
                }
            };
            let (changed, devices_upto) = if device_news {
                let mut conn = self.db.acquire().await?;
                device_lists::changed(&mut conn, &mut interest, devices, side.devices).await?
            } else {
                (Vec::new(), devices)
            };
            let mut relayed_upto = None;
            let mut relayed = Relayed::default();
            if relay_pending {
                let mut conn = self.db.acquire().await?;
                let rows = store::relay::after(&mut conn, id, relay_seq, relay::MAX_MERGED).await?;
                relay_pending = rows.len() as i64 == relay::MAX_MERGED;
                relayed_upto = rows.last().map(|(seq, _)| *seq);
                relayed = Relayed::merge(rows.iter().map(|(_, body)| body));
            }
            if built.events.is_empty()
                && extra.events.is_empty()
                && relayed_upto.is_none()
                && changed.is_empty()
            {
                position = built.last;
                room_data = extra.last_room_data;
                devices = devices_upto;
                self.stats.cursor.store(position, Ordering::Relaxed);
                if position - persisted >= SKIP_PERSIST_EVERY {
                    let to = Positions {
                        stream: position,
                        room_data: ephemeral.then_some(room_data),
                        devices: msc3202.then_some(devices),
                    };
                    store::appservice::skip_to(&self.db, id, to).await?;
                    persisted = position;
                    room_data_persisted = to.room_data.or(room_data_persisted);
                    devices_persisted = to.devices.or(devices_persisted);
                }
                continue;
            }
            if msc3202
                && (!built.events.is_empty() || !extra.events.is_empty() || !changed.is_empty())
            {
                let users = key_count_users(&interest, built.events.iter().chain(&extra.events));
                self.add_key_counts(&mut relayed, &users).await;
            }
            let mut events = built.events;
            events.append(&mut relayed.events);
            let count = events.len();
            let mut body = serde_json::Map::new();
            body.insert("events".into(), Value::Array(events));
            body.insert("ephemeral".into(), Value::Array(extra.events));
            // Local device-list changes are united with Synapse's (relay mode).
            relayed.add_changed(changed);
            relayed.add_to(&mut body);
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let txn = PendingTxn {
                txn_id: format!("hungryserv.{}.{next_txn}", cursor.txn_prefix),
                last_stream: built.last,
                last_room_data: ephemeral.then_some(extra.last_room_data),
                last_relay_seq: relayed_upto,
                last_devices: msc3202.then_some(devices_upto),
                released: None,
                body,
                events: i32::try_from(count).unwrap_or(i32::MAX),
                age_s: 0.0,
            };
            next_txn += 1;
            store::appservice::store_txn(&self.db, id, &txn).await?;
            in_flight = Some(txn);
        }
    }

    /// The next events of a held room whose class is served again, from its held position up
    /// to `position` (the cursor: the main scan passed over everything of the room below
    /// it), at most a transaction's worth. A room with nothing left to deliver is released
    /// here at once (the cursor written first, so the row's going never uncovers an event).
    async fn release(
        &self,
        held: &mut HashMap<String, i64>,
        position: i64,
    ) -> Result<Option<Release>, StoreError> {
        let id = self.registration.id.as_str();
        let classes = self.classes.current();
        let mut ready: Vec<(String, i64)> = held
            .iter()
            .filter(|(room_id, _)| classes.available(room_id))
            .map(|(room_id, from)| (room_id.clone(), *from))
            .collect();
        ready.sort_by_key(|(_, from)| *from);
        let mut conn = self.db.acquire().await?;
        let viewer = Viewer {
            txn_scope: None,
            now_ms: now_ms(),
        };
        let limit = i64::try_from(self.config.max_events).unwrap_or(i64::MAX);
        for (room_id, mut from) in ready {
            // Judged by the room's members as they are now (see the module doc).
            let mut interest = Interest::new(self.registration.clone(), &self.server_name);
            loop {
                let heads = if from > position {
                    Vec::new()
                } else {
                    store::events::room_stream_heads(&mut conn, &room_id, from, position, limit)
                        .await?
                };
                let exhausted = heads.len() < usize::try_from(limit).unwrap_or(usize::MAX);
                let mut upto = match heads.last() {
                    Some(last) if !exhausted => last.stream,
                    _ => position,
                };
                let mut wanted = Vec::new();
                for head in &heads {
                    if interest.wants(&mut conn, head).await? {
                        wanted.push(head.stream);
                    }
                }
                let mut events = Vec::new();
                let mut bytes = 0usize;
                for row in store::events::with_prev_at(&mut conn, &wanted).await? {
                    let related = Related {
                        prev: row.prev.clone(),
                        redacted_because: None,
                    };
                    let value = to_client(&row.event, &related, viewer);
                    let size = value.to_string().len();
                    if !events.is_empty() && bytes + size > self.config.max_bytes {
                        upto = row.event.stream - 1;
                        break;
                    }
                    bytes += size;
                    events.push(value);
                }
                if !events.is_empty() {
                    return Ok(Some(Release {
                        room_id,
                        events,
                        upto,
                    }));
                }
                // Nothing wanted up to `upto`: move the row on without a transaction.
                let to = Positions {
                    stream: position,
                    room_data: None,
                    devices: None,
                };
                store::appservice::skip_to(&self.db, id, to).await?;
                store::appservice::release_room(&mut conn, id, &room_id, upto).await?;
                if upto >= position {
                    held.remove(&room_id);
                    break;
                }
                from = upto + 1;
                held.insert(room_id.clone(), from);
            }
        }
        Ok(None)
    }

    /// Adds the MSC3202 key counts of `users` (see the module doc); left out when Synapse
    /// cannot give them.
    async fn add_key_counts(&self, relayed: &mut Relayed, users: &[String]) {
        if !self.synapse.health.is_up() {
            return;
        }
        let token = Some(self.registration.as_token.as_str()).filter(|token| !token.is_empty());
        match self.synapse.key_counts(token, users).await {
            Ok(counts) => relayed.add_key_counts(
                &counts.device_one_time_keys_count,
                &counts.device_unused_fallback_key_types,
            ),
            Err(err) => {
                tracing::warn!(appservice = %self.registration.id, error = %err, "MSC3202 key counts left out of a transaction (is hungryserv's Synapse module loaded?)");
            }
        }
    }

    /// The ephemeral events of rooms the appservice is interested in: public receipts in
    /// `(after, upto]` (at most [`RECEIPTS_CHUNK`], cut at a position boundary) and the typing
    /// lists changed after serial `typing_since`.
    async fn ephemeral(
        &self,
        interest: &mut Interest,
        after: i64,
        upto: i64,
        typing_since: i64,
    ) -> Result<Ephemeral, StoreError> {
        let mut conn = self.db.acquire().await?;
        let mut receipts =
            store::receipts::public_range(&mut conn, after, upto, RECEIPTS_CHUNK).await?;
        let mut last = upto;
        if receipts.len() == usize::try_from(RECEIPTS_CHUNK).unwrap_or(usize::MAX)
            && let Some(cut) = receipts.last().map(|r| r.stream)
        {
            // The chunk may end inside a position: leave that position for the next one.
            receipts.retain(|r| r.stream < cut);
            last = cut - 1;
        }
        let mut by_room: BTreeMap<String, Vec<store::receipts::Receipt>> = BTreeMap::new();
        for receipt in receipts {
            by_room
                .entry(receipt.room_id.clone())
                .or_default()
                .push(receipt);
        }
        let mut events = Vec::new();
        for (room_id, receipts) in by_room {
            if interest.wants_room(&mut conn, &room_id).await? {
                events.push(json!({
                    "type": "m.receipt",
                    "room_id": room_id,
                    "content": receipt_content(&receipts),
                }));
            }
        }
        for (room_id, users) in self.typing.changed_since(typing_since) {
            if interest.wants_room(&mut conn, &room_id).await? {
                events.push(json!({
                    "type": "m.typing",
                    "room_id": room_id,
                    "content": { "user_ids": users },
                }));
            }
        }
        Ok(Ephemeral {
            events,
            last_room_data: last,
        })
    }

    /// Collects the next transaction's events from `(after, committed]`.
    ///
    /// Each chunk is judged by its events' heads ([`store::events::stream_heads`]); only the
    /// events wanted are read in full. Judging stops once the transaction has as many events
    /// as it may hold. If it fills up by size first, the member events judged after its last
    /// event are undone in `interest` ([`Interest::rewind_after`]), so the next transaction
    /// judges what follows exactly as one event-by-event scan would.
    async fn build(
        &self,
        interest: &mut Interest,
        held: &mut HashMap<String, i64>,
        after: i64,
        committed: i64,
    ) -> Result<Built, StoreError> {
        let mut conn = self.db.acquire().await?;
        let now = now_ms();
        let viewer = Viewer {
            txn_scope: None,
            now_ms: now,
        };
        let mut built = Built {
            events: Vec::new(),
            last: after,
        };
        let classes = self.classes.current();
        let mut bytes = 0usize;
        let mut examined = 0usize;
        while built.last < committed && examined < SCAN_LIMIT {
            let heads =
                store::events::stream_heads(&mut conn, built.last, committed, SCAN_CHUNK).await?;
            if heads.is_empty() {
                built.last = committed;
                break;
            }
            interest.settle();
            let room = self.config.max_events.saturating_sub(built.events.len());
            let mut wanted = Vec::new();
            let mut judged = built.last;
            for head in &heads {
                if wanted.len() >= room {
                    break;
                }
                examined += 1;
                if interest.wants(&mut conn, head).await? {
                    let held_from = held.get(&head.room_id).copied();
                    if held_from.is_some_and(|from| head.stream >= from) {
                        // Its room waits: delivered when the room is released.
                    } else if !classes.available(&head.room_id) {
                        // Held back from here on, recorded before the cursor can pass it.
                        store::appservice::hold_room(
                            &mut conn,
                            &self.registration.id,
                            &head.room_id,
                            head.stream,
                        )
                        .await?;
                        held.insert(head.room_id.clone(), head.stream);
                    } else {
                        wanted.push(head.stream);
                    }
                }
                judged = head.stream;
            }
            for row in store::events::with_prev_at(&mut conn, &wanted).await? {
                let related = Related {
                    prev: row.prev.clone(),
                    redacted_because: None,
                };
                let value = to_client(&row.event, &related, viewer);
                let size = value.to_string().len();
                if !built.events.is_empty() && bytes + size > self.config.max_bytes {
                    // Full: this event and everything judged after it wait for the next one.
                    built.last = row.event.stream - 1;
                    interest.rewind_after(built.last);
                    return Ok(built);
                }
                bytes += size;
                built.events.push(value);
            }
            built.last = judged;
            if built.events.len() >= self.config.max_events {
                break;
            }
        }
        Ok(built)
    }

    /// Sends a stored transaction until the appservice acknowledges it.
    /// `false`, without sending, once the transaction holds an event of a room whose class
    /// is off (it is then built again without it, see the module doc).
    async fn deliver(&self, pending: &PendingTxn) -> bool {
        let built_ms = now_ms() - (pending.age_s * 1000.0) as i64;
        self.stats.in_flight_events.store(
            u64::try_from(pending.events).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.stats
            .in_flight_since_ms
            .store(built_ms, Ordering::Relaxed);
        let mut backoff = FIRST_BACKOFF;
        loop {
            if self.holds_off_room(pending) {
                return false;
            }
            let started = Instant::now();
            match self.send(pending).await {
                Ok(()) => {
                    self.stats.transactions_sent.fetch_add(1, Ordering::Relaxed);
                    self.stats.events_sent.fetch_add(
                        u64::try_from(pending.events).unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    tracing::debug!(appservice = %self.registration.id, txn = %pending.txn_id, events = pending.events, ms = started.elapsed().as_millis() as u64, "transaction delivered");
                    return true;
                }
                Err(reason) => {
                    self.stats
                        .transactions_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(appservice = %self.registration.id, txn = %pending.txn_id, %reason, retry_in_s = backoff.as_secs(), "transaction not delivered");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {
                            backoff = (backoff * 2).min(self.config.max_backoff);
                        }
                        () = self.poke.notified() => backoff = FIRST_BACKOFF,
                    }
                }
            }
        }
    }

    /// Whether a stored transaction has an event of a room whose class is `off` (read from
    /// its body only while some class is off).
    fn holds_off_room(&self, pending: &PendingTxn) -> bool {
        let classes = self.classes.current();
        if classes
            .classes()
            .iter()
            .all(|class| class.serve != crate::config::ServeMode::Off)
        {
            return false;
        }
        let Ok(body) = serde_json::from_slice::<Value>(&pending.body) else {
            return false;
        };
        body["events"].as_array().is_some_and(|events| {
            events.iter().any(|event| {
                event["room_id"]
                    .as_str()
                    .is_some_and(|room| !classes.available(room))
            })
        })
    }

    async fn send(&self, pending: &PendingTxn) -> Result<(), String> {
        let over_socket = self
            .socket
            .transact(&pending.txn_id, &pending.body, self.config.request_timeout)
            .await;
        if let Some(result) = over_socket {
            return result;
        }
        let Some(url) = self.url.as_deref() else {
            return Err("no websocket is connected and the registration has no url".into());
        };
        let uri = format!(
            "{}/_matrix/app/v1/transactions/{}",
            url.trim_end_matches('/'),
            crate::upstream::client::encode_segment(&pending.txn_id)
        );
        let request = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.registration.hs_token),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(pending.body.clone())))
            .map_err(|err| format!("bad request: {err}"))?;
        let exchange = async {
            let response =
                self.http.request(request).await.map_err(|err| {
                    format!("unreachable: {}", crate::upstream::error_chain(&err))
                })?;
            let status = response.status();
            // Read the answer to the end so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        tokio::time::timeout(self.config.request_timeout, exchange)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

/// Most users whose key counts one transaction asks for (the module's limit).
const MAX_KEY_COUNT_USERS: usize = 1_000;

/// The users whose MSC3202 key counts go with a transaction of `events`: the bot and the
/// appservice's users joined to the events' rooms (Synapse's choice), at most
/// [`MAX_KEY_COUNT_USERS`].
fn key_count_users<'a>(
    interest: &Interest,
    events: impl Iterator<Item = &'a Value>,
) -> Vec<String> {
    let mut users = std::collections::BTreeSet::new();
    let mut rooms: Vec<&str> = events.filter_map(|e| e["room_id"].as_str()).collect();
    rooms.sort_unstable();
    rooms.dedup();
    for room in rooms {
        users.extend(interest.users_in(room).cloned());
    }
    users.remove(interest.bot());
    std::iter::once(interest.bot().to_owned())
        .chain(users)
        .take(MAX_KEY_COUNT_USERS)
        .collect()
}

//! Bridges that come and go without a restart: dynamic appservices behind one umbrella
//! registration.
//!
//! Synapse reads appservice registrations only at start. One of them, named by
//! `appservice.umbrella` in hungryserv.toml, is the umbrella: its user (and alias, room)
//! namespaces are wide enough for every bridge, its `url` is hungryserv
//! (`/_hungryserv/appservice/<umbrella id>`), and Synapse never hears of anything else.
//! Server admins register, update and remove bridges at run time
//! (`/_hungryserv/admin/v1/appservices`, `api::appservice_admin`); each bridge's namespaces
//! must lie inside the umbrella's ([`super::namespaces`]: decided exactly on the regexes'
//! automata) and its bot must be a user of the umbrella's.
//!
//! What holds, and where:
//! * **Stored first, then in force**: a registration is written to Postgres
//!   (`dynamic_appservices`; the as_token only as its SHA-256, never logged) and then put in
//!   force in this process in one step (its bot is registered in Synapse through the umbrella
//!   first, as Synapse registers each registration's bot at start) — its token recognised ([`crate::auth`]), its token
//!   swap known to [`crate::upstream::umbrella`], its pusher started. A removal takes the
//!   token out of all three before anything else, so the next request with it is refused.
//!   All of it happens inside the admin request: effective when the answer arrives.
//! * **Requests**: everything the bridge sends that reaches Synapse goes out with the
//!   umbrella's token and `?user_id=` (its bot by default); the bridge's own namespaces are
//!   checked first, with Synapse's answers (`upstream::umbrella`). Local rooms see the bridge
//!   itself (its id is the rooms' creator, its namespaces decide interest).
//! * **Transactions**: Synapse's transactions to the umbrella are split here
//!   ([`split`]) by the interest rules Synapse applies (sender or member-event target in a
//!   bridge's user namespaces or its bot, room ID in its room namespaces, one of its users
//!   joined), judged event by event in order, with the membership of the umbrella's users in
//!   Synapse rooms learnt from those very transactions (`umbrella_members`). Each bridge's
//!   share is stored as a relayed transaction of that bridge, in the same database
//!   transaction that records Synapse's txnId, so a retry from Synapse is split once; each
//!   bridge's pusher then runs in relay mode ([`super::relay`]): its share goes out inside
//!   its own transactions, with the local events, in order, over HTTP or its websocket.
//!   Ephemeral events follow their room's interest (presence: the sender's bridge); to-device
//!   events and MSC3202 key counts follow their user; a device-list change goes to the
//!   MSC3202 bridges Synapse would give it to (`_is_appservice_interested_in_device_lists_of_user`:
//!   the user is theirs, or is joined to a room they are interested in), and a room with an
//!   alias in a bridge's alias namespace is that bridge's. Synapse's transactions do not say
//!   which rooms a changed user is in, nor a room's aliases: hungryserv's Synapse module does
//!   (`upstream::Synapse::appservice_rooms`), asked before the database transaction; if it
//!   cannot answer, every MSC3202 bridge gets every change (over-telling costs a bridge a
//!   key query; under-telling breaks its encryption) and aliases route nothing.
//! * **Static registrations** keep working beside the bridges, unchanged.
//!
//! Several instances: the instance that takes the admin request puts the change in force at
//! once, as above, and then announces it ([`crate::cluster`], a `NOTIFY` after the row is
//! written); every other instance reads that row again ([`Bridges::reload`]) and puts it in
//! force or out of it the same way, within a round trip of the answer. An instance whose
//! listener reconnects reads every row again ([`Bridges::reload_all`]), so a change made
//! while it was not listening is not missed. Only the instance holding a bridge's pusher lock
//! delivers to it (`cluster::leader`); the others keep its token, namespaces and relay.
//! Removal: another instance may accept the removed token for that round trip.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sqlx::PgPool;

use super::Delivery;
use super::namespaces::{self, NotInside};
use crate::auth::requester::Identity;
use crate::cluster::note::{Note, Outbox};
use crate::config::{Namespace, Registration};
use crate::store::{self, StoreError, umbrella::StoredBridge};
use crate::upstream::Synapse;
use crate::upstream::client::AppserviceRooms;
use crate::upstream::umbrella::{Stand, digest};

/// A bridge's registration as the admin API takes and shows it, without tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    /// Where transactions go; `None`: over the `fi.mau.as_sync` websocket only.
    #[serde(default)]
    pub url: Option<String>,
    pub sender_localpart: String,
    #[serde(default)]
    pub namespaces: SpecNamespaces,
    /// MSC2409 (also accepted as `de.sorunome.msc2409.push_ephemeral`).
    #[serde(default)]
    pub receive_ephemeral: bool,
    /// MSC3202.
    #[serde(default, rename = "org.matrix.msc3202")]
    pub msc3202: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SpecNamespaces {
    #[serde(default)]
    pub users: Vec<SpecNamespace>,
    #[serde(default)]
    pub aliases: Vec<SpecNamespace>,
    #[serde(default)]
    pub rooms: Vec<SpecNamespace>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpecNamespace {
    pub regex: String,
    #[serde(default)]
    pub exclusive: bool,
}

/// A bridge in force.
pub struct Bridge {
    pub registration: Arc<Registration>,
    pub spec: Spec,
    /// SHA-256 of its as_token.
    token_hash: [u8; 32],
}

/// What a registration request produced.
pub struct Registered {
    pub created: bool,
    /// Tokens generated by this request (shown once; the as_token is not kept).
    pub generated_as_token: Option<String>,
    pub generated_hs_token: Option<String>,
}

/// Why a bridge cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// Bad input: 400 `M_INVALID_PARAM` with this text.
    #[error("{0}")]
    Invalid(String),
    /// No umbrella is configured: 400 too.
    #[error("no umbrella registration is configured (appservice.umbrella)")]
    NoUmbrella,
    /// Synapse did not register the bridge's bot: 502.
    #[error("Synapse did not register the bridge's bot: {0}")]
    Synapse(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The bridges in force, and what puts them in force.
pub struct Bridges {
    db: PgPool,
    identity: Arc<Identity>,
    synapse: Synapse,
    delivery: Arc<Delivery>,
    /// The umbrella registration.
    umbrella: Option<Arc<Registration>>,
    /// The static registrations' ids (a bridge cannot take one).
    static_ids: HashSet<String>,
    server_name: String,
    live: RwLock<BTreeMap<String, Arc<Bridge>>>,
    /// Where changes are announced to other instances, if there are any.
    others: std::sync::OnceLock<Outbox>,
}

fn generate_token() -> String {
    rand::rng()
        .sample_iter(&rand::distr::Alphanumeric)
        .take(64)
        .map(char::from)
        .collect()
}

impl Bridges {
    pub fn new(
        db: PgPool,
        identity: Arc<Identity>,
        synapse: Synapse,
        delivery: Arc<Delivery>,
        registrations: &[Registration],
        umbrella_id: Option<&str>,
        server_name: &str,
    ) -> Self {
        let umbrella = umbrella_id
            .and_then(|id| registrations.iter().find(|r| r.id == id))
            .map(|r| Arc::new(r.clone()));
        if let Some(umbrella) = &umbrella {
            synapse.umbrella.configure(&umbrella.as_token, server_name);
        }
        Self {
            db,
            identity,
            synapse,
            delivery,
            umbrella,
            static_ids: registrations.iter().map(|r| r.id.clone()).collect(),
            server_name: server_name.to_owned(),
            live: RwLock::default(),
            others: std::sync::OnceLock::new(),
        }
    }

    /// From now on, changes are announced through `outbox` (several instances).
    pub fn share(&self, outbox: Outbox) {
        let _ = self.others.set(outbox);
    }

    fn announce(&self, id: &str) {
        if let Some(outbox) = self.others.get() {
            outbox.send(Note::Appservice { id: id.to_owned() });
        }
    }

    /// The umbrella registration, if one is configured.
    pub fn umbrella(&self) -> Option<&Arc<Registration>> {
        self.umbrella.as_ref()
    }

    /// Puts every stored bridge in force (at start).
    pub async fn load(&self) -> Result<(), StoreError> {
        self.reload_all().await
    }

    /// Reads every stored bridge again and puts the table in force: new and changed rows in,
    /// bridges without a row out. A stored bridge that no longer fits the umbrella (its
    /// configuration changed) is left out, with a warning.
    pub async fn reload_all(&self) -> Result<(), StoreError> {
        if self.umbrella.is_none() {
            return Ok(());
        }
        let stored = store::umbrella::all(&self.db).await?;
        let ids: HashSet<&str> = stored.iter().map(|row| row.id.as_str()).collect();
        let gone: Vec<String> = self
            .read()
            .keys()
            .filter(|id| !ids.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            self.withdraw(&id);
        }
        for row in &stored {
            self.put_in_force(row);
        }
        Ok(())
    }

    /// Reads the bridge `id` again (another instance changed it) and puts it in force, or
    /// out of force if its row is gone.
    pub async fn reload(&self, id: &str) -> Result<(), StoreError> {
        if self.umbrella.is_none() {
            return Ok(());
        }
        let stored = store::umbrella::all(&self.db).await?;
        match stored.iter().find(|row| row.id == id) {
            Some(row) => self.put_in_force(row),
            None => {
                self.withdraw(id);
            }
        }
        Ok(())
    }

    /// Puts a stored row in force unless the same is in force already.
    fn put_in_force(&self, stored: &StoredBridge) {
        let spec: Spec = match serde_json::from_value(stored.registration.clone()) {
            Ok(spec) => spec,
            Err(err) => {
                tracing::warn!(appservice = %stored.id, error = %err, "stored bridge registration unreadable; left out");
                return;
            }
        };
        let Ok(hash) = <[u8; 32]>::try_from(stored.as_token_hash.as_slice()) else {
            return;
        };
        let same = self.get(&stored.id).is_some_and(|live| {
            live.spec == spec
                && live.token_hash == hash
                && live.registration.hs_token == stored.hs_token
        });
        if same {
            return;
        }
        match self.build(&stored.id, &spec, stored.hs_token.clone()) {
            Ok(registration) => self.enforce(registration, spec, hash),
            Err(err) => {
                tracing::warn!(appservice = %stored.id, error = %err, "stored bridge no longer fits the umbrella; left out");
            }
        }
    }

    /// Takes a bridge out of force in this process (its row is someone else's business).
    fn withdraw(&self, id: &str) -> Option<Arc<Bridge>> {
        let bridge = self.write().remove(id)?;
        self.identity.remove_appservice(id);
        self.synapse.umbrella.remove(id);
        self.delivery.remove(id);
        Some(bridge)
    }

    /// The bridge with this id.
    pub fn get(&self, id: &str) -> Option<Arc<Bridge>> {
        self.read().get(id).cloned()
    }

    /// Every bridge, by id.
    pub fn list(&self) -> Vec<Arc<Bridge>> {
        self.read().values().cloned().collect()
    }

    /// Registers or updates a bridge from the admin API's body: checked, stored, in force.
    pub async fn register(&self, id: &str, body: Value) -> Result<Registered, BridgeError> {
        let umbrella = self.umbrella.clone().ok_or(BridgeError::NoUmbrella)?;
        let Value::Object(mut fields) = body else {
            return Err(BridgeError::Invalid(
                "The body must be a JSON object".into(),
            ));
        };
        let token = |fields: &mut Map<String, Value>, key: &str| match fields.remove(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(token)) if !token.is_empty() && token.len() <= 255 => {
                Ok(Some(token))
            }
            Some(_) => Err(BridgeError::Invalid(format!(
                "{key} must be a non-empty string of at most 255 characters"
            ))),
        };
        let as_token = token(&mut fields, "as_token")?;
        let hs_token = token(&mut fields, "hs_token")?;
        if let Some(Value::Bool(true)) = fields.remove("de.sorunome.msc2409.push_ephemeral") {
            fields.insert("receive_ephemeral".into(), Value::Bool(true));
        }
        fields.remove("id");
        fields.remove("rate_limited");
        let spec: Spec = serde_json::from_value(Value::Object(fields))
            .map_err(|err| BridgeError::Invalid(format!("Invalid registration: {err}")))?;
        let existing = self.get(id);
        if let Some(token) = &as_token {
            let taken = *token == umbrella.as_token
                || self
                    .identity
                    .appservice(token)
                    .is_some_and(|other| other.id != id);
            if taken {
                return Err(BridgeError::Invalid(
                    "as_token is already used by another appservice".into(),
                ));
            }
        }
        let generated_as_token = match (&as_token, &existing) {
            (None, None) => Some(generate_token()),
            _ => None,
        };
        let generated_hs_token = match (&hs_token, &existing) {
            (None, None) => Some(generate_token()),
            _ => None,
        };
        let hs_token = hs_token
            .or_else(|| generated_hs_token.clone())
            .or_else(|| existing.as_ref().map(|b| b.registration.hs_token.clone()))
            .unwrap_or_default();
        let token_hash = match as_token.as_ref().or(generated_as_token.as_ref()) {
            Some(token) => digest(token),
            None => existing.as_ref().map(|b| b.token_hash).unwrap_or_default(),
        };
        let registration = self.build(id, &spec, hs_token.clone())?;
        // Synapse registers each registration's bot at start; a bridge's bot is registered
        // here, through the umbrella, before the bridge can act as it.
        self.synapse
            .register_appservice_user(&umbrella.as_token, &spec.sender_localpart)
            .await
            .map_err(|err| BridgeError::Synapse(err.to_string()))?;
        let stored = StoredBridge {
            id: id.to_owned(),
            as_token_hash: token_hash.to_vec(),
            hs_token,
            registration: serde_json::to_value(&spec).unwrap_or(Value::Null),
        };
        let created = store::umbrella::upsert(&self.db, &stored)
            .await?
            .ok_or_else(|| {
                BridgeError::Invalid("as_token is already used by another appservice".into())
            })?;
        self.enforce(registration, spec, token_hash);
        self.announce(id);
        tracing::info!(appservice = %id, created, "bridge registered");
        Ok(Registered {
            created,
            generated_as_token,
            generated_hs_token,
        })
    }

    /// Removes a bridge: its token stops working before this returns. `false` when there is
    /// no such bridge. (Deleting its rooms is the caller's, with the registration it gets
    /// back.)
    pub async fn remove(&self, id: &str) -> Result<Option<Arc<Bridge>>, StoreError> {
        let Some(bridge) = self.withdraw(id) else {
            return Ok(None);
        };
        store::umbrella::remove(&self.db, id).await?;
        self.announce(id);
        tracing::info!(appservice = %id, "bridge removed");
        Ok(Some(bridge))
    }

    /// Checks a bridge against the umbrella and builds its registration (the as_token is
    /// known only by its hash, so the registration holds none).
    fn build(&self, id: &str, spec: &Spec, hs_token: String) -> Result<Registration, BridgeError> {
        let umbrella = self.umbrella.as_ref().ok_or(BridgeError::NoUmbrella)?;
        let invalid = |message: String| BridgeError::Invalid(message);
        let id_ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !id_ok {
            return Err(invalid(
                "id must be 1-64 characters of letters, digits, '-', '_' and '.'".into(),
            ));
        }
        if self.static_ids.contains(id) {
            return Err(invalid(format!(
                "id {id:?} belongs to a registration file; choose another"
            )));
        }
        if let Some(url) = &spec.url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(format!(
                "url must be http:// or https:// (got {url:?})"
            )));
        }
        let localpart_ok = !spec.sender_localpart.is_empty()
            && spec.sender_localpart.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'.' | b'_' | b'=' | b'-' | b'/')
            });
        if !localpart_ok {
            return Err(invalid(format!(
                "sender_localpart {:?} is not a valid user localpart",
                spec.sender_localpart
            )));
        }
        let bot = format!("@{}:{}", spec.sender_localpart, self.server_name);
        if !umbrella.users.iter().any(|ns| ns.matches(&bot)) {
            return Err(invalid(format!(
                "the bot {bot} is outside the umbrella's user namespaces"
            )));
        }
        let outer = |list: &[Namespace]| -> Vec<String> {
            // Back to the regex as written: `Namespace::new` wrapped it in `^(?:…)`.
            list.iter()
                .map(|ns| {
                    let anchored = ns.regex.as_str();
                    anchored
                        .strip_prefix("^(?:")
                        .and_then(|inner| inner.strip_suffix(')'))
                        .unwrap_or(anchored)
                        .to_owned()
                })
                .collect()
        };
        let compile = |kind: &str, list: &[SpecNamespace], umbrella_list: &[Namespace]| {
            let outer = outer(umbrella_list);
            let outer: Vec<&str> = outer.iter().map(String::as_str).collect();
            list.iter()
                .map(|ns| {
                    namespaces::inside(&ns.regex, &outer).map_err(|why| match why {
                        NotInside::Invalid(err) => {
                            invalid(format!("{kind} namespace {:?} is invalid: {err}", ns.regex))
                        }
                        why => invalid(format!(
                            "{kind} namespace {:?} does not lie inside the umbrella's: {why}",
                            ns.regex
                        )),
                    })?;
                    Namespace::new(&ns.regex, ns.exclusive).map_err(|err| {
                        invalid(format!("{kind} namespace {:?} is invalid: {err}", ns.regex))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let users = compile("users", &spec.namespaces.users, &umbrella.users)?;
        let aliases = compile("aliases", &spec.namespaces.aliases, &umbrella.aliases)?;
        let rooms = compile("rooms", &spec.namespaces.rooms, &umbrella.rooms)?;
        Ok(Registration {
            id: id.to_owned(),
            url: spec.url.clone(),
            as_token: String::new(),
            hs_token,
            sender_localpart: spec.sender_localpart.clone(),
            users,
            aliases,
            rooms,
            receive_ephemeral: spec.receive_ephemeral,
            msc3202: spec.msc3202,
        })
    }

    /// Puts a checked registration in force in this process.
    fn enforce(&self, registration: Registration, spec: Spec, token_hash: [u8; 32]) {
        let registration = Arc::new(registration);
        let bot = format!("@{}:{}", registration.sender_localpart, self.server_name);
        self.identity
            .insert_appservice(token_hash, registration.clone());
        self.synapse.umbrella.insert(
            token_hash,
            Stand {
                id: registration.id.clone(),
                bot,
                users: registration.users.clone(),
            },
        );
        self.delivery
            .add(registration.clone(), registration.url.clone(), true);
        self.write().insert(
            registration.id.clone(),
            Arc::new(Bridge {
                registration,
                spec,
                token_hash,
            }),
        );
    }

    /// Splits one of Synapse's transactions to the umbrella among the bridges and stores
    /// each share (see the module doc). Returns the bridges that got something, to poke.
    pub async fn ingest(
        &self,
        synapse_txn_id: &str,
        body: &Value,
    ) -> Result<Vec<String>, StoreError> {
        let Some(umbrella) = &self.umbrella else {
            return Ok(Vec::new());
        };
        let bridges: Vec<Arc<Registration>> =
            self.list().iter().map(|b| b.registration.clone()).collect();
        // Asked before the database transaction (no network I/O inside one).
        let synapse_rooms = self.synapse_rooms(umbrella, &bridges, body).await;
        let mut tx = self.db.begin().await?;
        store::umbrella::lock(&mut tx, &umbrella.id).await?;
        if !store::umbrella::first_sight(&mut tx, &umbrella.id, synapse_txn_id).await? {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let mut rooms = rooms_of(body);
        if let Some(known) = &synapse_rooms {
            rooms.extend(known.rooms_of_users.values().flatten().cloned());
            rooms.sort();
            rooms.dedup();
        }
        let mut members: HashMap<String, HashSet<String>> = HashMap::new();
        for (room, user) in store::umbrella::members(&mut tx, &rooms).await? {
            members.entry(room).or_default().insert(user);
        }
        let umbrella_bot = format!("@{}:{}", umbrella.sender_localpart, self.server_name);
        let tracked =
            |user: &str| user == umbrella_bot || umbrella.users.iter().any(|ns| ns.matches(user));
        let split = split(
            &bridges,
            &self.server_name,
            &tracked,
            &mut members,
            synapse_rooms.as_ref(),
            body,
        );
        store::umbrella::set_members(&mut tx, &split.changes).await?;
        for (id, share) in &split.shares {
            store::relay::insert(&mut tx, id, synapse_txn_id, share).await?;
        }
        tx.commit().await?;
        Ok(split.shares.into_iter().map(|(id, _)| id).collect())
    }

    /// What Synapse knows that the split needs, from hungryserv's Synapse module: the aliases
    /// of the transaction's rooms (when a bridge has alias namespaces) and the rooms of the
    /// users whose device lists changed (when a bridge asked for MSC3202). `None` when the
    /// module cannot answer: the split then gives device-list changes to every MSC3202
    /// bridge, as too many is safe and too few breaks encryption.
    async fn synapse_rooms(
        &self,
        umbrella: &Registration,
        bridges: &[Arc<Registration>],
        body: &Value,
    ) -> Option<AppserviceRooms> {
        const MAX_ASKED: usize = 1_000;
        let changed: Vec<&str> = if bridges.iter().any(|b| b.msc3202) {
            device_lists_of(body)
                .and_then(|lists| lists["changed"].as_array())
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .take(MAX_ASKED)
                .collect()
        } else {
            Vec::new()
        };
        let rooms = if bridges.iter().any(|b| !b.aliases.is_empty()) {
            rooms_of(body)
        } else {
            Vec::new()
        };
        let rooms: Vec<&str> = rooms.iter().map(String::as_str).take(MAX_ASKED).collect();
        if changed.is_empty() && rooms.is_empty() {
            return Some(AppserviceRooms::default());
        }
        match self
            .synapse
            .appservice_rooms(&umbrella.as_token, &changed, &rooms)
            .await
        {
            Ok(known) => Some(known),
            Err(err) => {
                tracing::warn!(error = %err, "rooms and aliases not known for the umbrella's split (is hungryserv's Synapse module loaded?)");
                None
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Bridge>>> {
        self.live.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Bridge>>> {
        self.live.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A transaction's device-list changes (MSC3202), under either name.
fn device_lists_of(body: &Value) -> Option<&Value> {
    body.get("device_lists")
        .or_else(|| body.get("org.matrix.msc3202.device_lists"))
}

/// The rooms a transaction's events and ephemeral events name.
fn rooms_of(body: &Value) -> Vec<String> {
    let mut rooms: Vec<String> = list(body, "events", "events")
        .iter()
        .chain(list(body, "ephemeral", "de.sorunome.msc2409.ephemeral").iter())
        .filter_map(|event| event["room_id"].as_str().map(str::to_owned))
        .collect();
    rooms.sort();
    rooms.dedup();
    rooms
}

fn list<'a>(body: &'a Value, stable: &str, unstable: &str) -> &'a [Value] {
    body.get(stable)
        .or_else(|| body.get(unstable))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// Appends `value` to the list `key` of a share.
fn push(share: &mut Map<String, Value>, key: &str, value: Value) {
    if let Value::Array(items) = share
        .entry(key.to_owned())
        .or_insert_with(|| Value::Array(Vec::new()))
    {
        items.push(value);
    }
}

/// Each bridge's share of a transaction, and the membership changes it made.
#[derive(Debug, Default, PartialEq)]
pub struct Split {
    /// `(bridge id, transaction body)`, only bridges with something.
    pub shares: Vec<(String, Value)>,
    /// `(room, user, joined)` in order, for users `tracked` says are the umbrella's.
    pub changes: Vec<(String, String, bool)>,
}

/// Splits a transaction's contents among `bridges` (see the module doc). `members` holds the
/// joined umbrella users of the transaction's rooms (and of the rooms in `synapse_rooms`) and
/// is kept up to date with its member events, judged in order (an event is judged by the
/// members before it: a bridge hears its ghost leave). `synapse_rooms` is what Synapse said
/// about rooms' aliases and the changed users' rooms; `None`: it could not say.
pub fn split(
    bridges: &[Arc<Registration>],
    server_name: &str,
    tracked: &dyn Fn(&str) -> bool,
    members: &mut HashMap<String, HashSet<String>>,
    synapse_rooms: Option<&AppserviceRooms>,
    body: &Value,
) -> Split {
    let bots: Vec<String> = bridges
        .iter()
        .map(|r| format!("@{}:{server_name}", r.sender_localpart))
        .collect();
    let suffix = format!(":{server_name}");
    let claims = |i: usize, user: &str| {
        user == bots[i]
            || (user.ends_with(&suffix) && bridges[i].users.iter().any(|ns| ns.matches(user)))
    };
    let aliases = synapse_rooms.map(|known| &known.aliases);
    let wants_room = |i: usize, room: &str, members: &HashMap<String, HashSet<String>>| {
        bridges[i].rooms.iter().any(|ns| ns.matches(room))
            || aliases
                .and_then(|aliases| aliases.get(room))
                .is_some_and(|list| {
                    list.iter()
                        .any(|alias| bridges[i].aliases.iter().any(|ns| ns.matches(alias)))
                })
            || members
                .get(room)
                .is_some_and(|users| users.iter().any(|user| claims(i, user)))
    };
    let mut shares: Vec<Map<String, Value>> = vec![Map::new(); bridges.len()];
    let mut changes = Vec::new();
    for event in list(body, "events", "events") {
        let room = event["room_id"].as_str().unwrap_or_default();
        let sender = event["sender"].as_str().unwrap_or_default();
        let target = (event["type"] == "m.room.member")
            .then(|| event["state_key"].as_str())
            .flatten();
        for (i, share) in shares.iter_mut().enumerate() {
            let wanted = claims(i, sender)
                || target.is_some_and(|user| claims(i, user))
                || wants_room(i, room, members);
            if wanted {
                push(share, "events", event.clone());
            }
        }
        if let Some(user) = target
            && tracked(user)
        {
            let joined = event["content"]["membership"] == "join";
            let users = members.entry(room.to_owned()).or_default();
            let changed = if joined {
                users.insert(user.to_owned())
            } else {
                users.remove(user)
            };
            if changed {
                changes.push((room.to_owned(), user.to_owned(), joined));
            }
        }
    }
    for edu in list(body, "ephemeral", "de.sorunome.msc2409.ephemeral") {
        for (i, share) in shares.iter_mut().enumerate() {
            if !bridges[i].receive_ephemeral {
                continue;
            }
            let wanted = match edu["room_id"].as_str() {
                Some(room) => wants_room(i, room, members),
                None => edu["sender"].as_str().is_some_and(|user| claims(i, user)),
            };
            if wanted {
                push(share, "ephemeral", edu.clone());
            }
        }
    }
    for message in list(body, "to_device", "de.sorunome.msc2409.to_device") {
        let to = message["to_user_id"].as_str().unwrap_or_default();
        for (i, share) in shares.iter_mut().enumerate() {
            if bridges[i].receive_ephemeral && claims(i, to) {
                push(share, "to_device", message.clone());
            }
        }
    }
    let device_lists = device_lists_of(body);
    for (stable, unstable) in [
        (
            "device_one_time_keys_count",
            "org.matrix.msc3202.device_one_time_keys_count",
        ),
        (
            "device_unused_fallback_key_types",
            "org.matrix.msc3202.device_unused_fallback_key_types",
        ),
    ] {
        let Some(counts) = body
            .get(stable)
            .or_else(|| body.get(unstable))
            .and_then(Value::as_object)
        else {
            continue;
        };
        for (i, share) in shares.iter_mut().enumerate() {
            if !bridges[i].msc3202 {
                continue;
            }
            let mine: Map<String, Value> = counts
                .iter()
                .filter(|(user, _)| claims(i, user))
                .map(|(user, value)| (user.clone(), value.clone()))
                .collect();
            if !mine.is_empty() {
                share.insert(stable.to_owned(), Value::Object(mine));
            }
        }
    }
    if let Some(lists) = device_lists {
        // Synapse's rule per bridge: the user is its own, or shares a room it is interested
        // in. Without Synapse's answer every MSC3202 bridge gets every change.
        let interested = |i: usize, user: &str| match synapse_rooms {
            None => true,
            Some(known) => {
                claims(i, user)
                    || known
                        .rooms_of_users
                        .get(user)
                        .is_some_and(|rooms| rooms.iter().any(|room| wants_room(i, room, members)))
            }
        };
        for (i, share) in shares.iter_mut().enumerate() {
            if !bridges[i].msc3202 {
                continue;
            }
            let mine = |key: &str| -> Vec<Value> {
                lists[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|user| user.as_str().is_some_and(|user| interested(i, user)))
                    .cloned()
                    .collect()
            };
            let (changed, left) = (mine("changed"), mine("left"));
            if !changed.is_empty() || !left.is_empty() {
                share.insert(
                    "device_lists".into(),
                    json!({"changed": changed, "left": left}),
                );
            }
        }
    }
    Split {
        shares: bridges
            .iter()
            .zip(shares)
            .filter(|(_, share)| !share.is_empty())
            .map(|(bridge, share)| (bridge.id.clone(), Value::Object(share)))
            .collect(),
        changes,
    }
}

/// A registration's answer shape in the admin API, without tokens.
pub fn describe(bridge: &Bridge) -> Value {
    let mut value = serde_json::to_value(&bridge.spec).unwrap_or_else(|_| json!({}));
    if let Value::Object(fields) = &mut value {
        fields.insert("id".into(), json!(bridge.registration.id));
        fields.insert("source".into(), json!("admin_api"));
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge(id: &str, ephemeral: bool, msc3202: bool) -> Arc<Registration> {
        Arc::new(Registration {
            id: id.into(),
            url: None,
            as_token: String::new(),
            hs_token: "hs".into(),
            sender_localpart: format!("dyn_{id}_bot"),
            users: vec![Namespace::new(&format!("@dyn_{id}_.*"), true).unwrap()],
            aliases: vec![],
            rooms: vec![Namespace::new(&format!("!{id}room.*"), false).unwrap()],
            receive_ephemeral: ephemeral,
            msc3202,
        })
    }

    fn ids(split: &Split, bridge: &str) -> Vec<String> {
        split
            .shares
            .iter()
            .find(|(id, _)| id == bridge)
            .map(|(_, body)| {
                body["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["event_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn each_bridge_gets_the_events_of_its_users_and_rooms() {
        let bridges = [bridge("a", true, true), bridge("b", false, false)];
        let tracked = |user: &str| user.starts_with("@dyn_");
        let mut members = HashMap::new();
        let member = |id: &str, room: &str, sender: &str, user: &str, membership: &str| {
            json!({"event_id": id, "room_id": room, "sender": sender, "type": "m.room.member",
                   "state_key": user, "content": {"membership": membership}})
        };
        let message = |id: &str, room: &str, sender: &str| {
            json!({"event_id": id, "room_id": room, "sender": sender, "type": "m.room.message",
                   "content": {}})
        };
        let body = json!({
            "events": [
                member("$1", "!dm:hs", "@alice:hs", "@dyn_a_1:hs", "invite"),
                member("$2", "!dm:hs", "@dyn_a_1:hs", "@dyn_a_1:hs", "join"),
                message("$3", "!dm:hs", "@alice:hs"),
                message("$4", "!other:hs", "@alice:hs"),
                message("$5", "!broom1:hs", "@alice:hs"),
                member("$6", "!dm:hs", "@dyn_a_1:hs", "@dyn_a_1:hs", "leave"),
                message("$7", "!dm:hs", "@alice:hs"),
                message("$8", "!x:hs", "@dyn_b_bot:hs"),
            ],
            "ephemeral": [
                {"type": "m.typing", "room_id": "!dm:hs", "content": {"user_ids": []}},
                {"type": "m.presence", "sender": "@dyn_b_2:hs", "content": {}},
            ],
            "to_device": [{"type": "m.x", "to_user_id": "@dyn_a_bot:hs", "to_device_id": "D"}],
            "device_lists": {"changed": ["@alice:hs"], "left": []},
            "device_one_time_keys_count": {"@dyn_a_bot:hs": {"D": {"signed_curve25519": 3}},
                                           "@dyn_b_bot:hs": {"D": {"signed_curve25519": 1}}},
        });
        let split = split(&bridges, "hs", &tracked, &mut members, None, &body);
        assert_eq!(
            ids(&split, "a"),
            ["$1", "$2", "$3", "$6"],
            "a hears its ghost leave, then nothing"
        );
        assert_eq!(ids(&split, "b"), ["$5", "$8"], "room namespace and bot");
        assert_eq!(
            split.changes,
            [
                ("!dm:hs".to_owned(), "@dyn_a_1:hs".to_owned(), true),
                ("!dm:hs".to_owned(), "@dyn_a_1:hs".to_owned(), false),
            ]
        );
        let a = &split.shares[0].1;
        // The typing came after the leave: nobody of a's is in the room any more.
        assert_eq!(a.get("ephemeral"), None);
        assert_eq!(a["to_device"][0]["to_user_id"], "@dyn_a_bot:hs");
        assert_eq!(a["device_lists"]["changed"][0], "@alice:hs");
        assert_eq!(
            a["device_one_time_keys_count"].as_object().map(|m| m.len()),
            Some(1)
        );
        let b = &split.shares[1].1;
        assert_eq!(
            b.get("ephemeral"),
            None,
            "b did not ask for ephemeral events"
        );
        assert_eq!(b.get("device_lists"), None, "b did not ask for MSC3202");
    }

    #[test]
    fn typing_follows_the_room_and_nothing_goes_to_the_uninterested() {
        let bridges = [bridge("a", true, false), bridge("b", true, false)];
        let mut members = HashMap::from([(
            "!dm:hs".to_owned(),
            HashSet::from(["@dyn_a_1:hs".to_owned()]),
        )]);
        let body = json!({"events": [], "ephemeral": [
            {"type": "m.typing", "room_id": "!dm:hs", "content": {"user_ids": ["@alice:hs"]}}]});
        let split = split(&bridges, "hs", &|_| true, &mut members, None, &body);
        assert_eq!(split.shares.len(), 1);
        assert_eq!(split.shares[0].0, "a");
    }

    #[test]
    fn device_changes_go_to_bridges_sharing_a_room_and_aliases_route_rooms() {
        let mut a = (*bridge("a", true, true)).clone();
        a.aliases = vec![Namespace::new("#dyn_a_.*", true).unwrap()];
        let bridges = [Arc::new(a), bridge("b", true, true)];
        let mut members = HashMap::from([(
            "!dm:hs".to_owned(),
            HashSet::from(["@dyn_b_1:hs".to_owned()]),
        )]);
        let known = AppserviceRooms {
            rooms_of_users: HashMap::from([
                ("@alice:hs".to_owned(), vec!["!dm:hs".to_owned()]),
                ("@carol:hs".to_owned(), vec!["!aliased:hs".to_owned()]),
            ]),
            aliases: HashMap::from([("!aliased:hs".to_owned(), vec!["#dyn_a_x:hs".to_owned()])]),
        };
        let body = json!({
            "events": [{"event_id": "$1", "room_id": "!aliased:hs", "sender": "@carol:hs",
                        "type": "m.room.message", "content": {}}],
            "device_lists": {"changed": ["@alice:hs", "@carol:hs", "@dyn_a_2:hs", "@dave:hs"],
                             "left": []},
        });
        let known_split = split(&bridges, "hs", &|_| true, &mut members, Some(&known), &body);
        assert_eq!(
            ids(&known_split, "a"),
            ["$1"],
            "the room's alias is in a's namespace"
        );
        assert_eq!(ids(&known_split, "b"), Vec::<String>::new());
        let lists = |bridge: &str| {
            known_split
                .shares
                .iter()
                .find(|(id, _)| id == bridge)
                .map(|(_, body)| body["device_lists"]["changed"].clone())
        };
        assert_eq!(
            lists("a"),
            Some(json!(["@carol:hs", "@dyn_a_2:hs"])),
            "carol shares the aliased room; a's own user"
        );
        assert_eq!(
            lists("b"),
            Some(json!(["@alice:hs"])),
            "alice shares a room with b's user"
        );

        // Without Synapse's answer every MSC3202 bridge gets every change.
        let unknown_split = split(&bridges, "hs", &|_| true, &mut members, None, &body);
        assert!(
            unknown_split
                .shares
                .iter()
                .all(
                    |(_, body)| body["device_lists"]["changed"].as_array().map(Vec::len) == Some(4)
                )
        );
    }
}

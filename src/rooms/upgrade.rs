//! `POST /rooms/{roomId}/upgrade` for local rooms, as Synapse upgrades a room
//! (`RoomCreationHandler.upgrade_room` in `synapse/handlers/room.py`):
//!
//! 1. the requester must be able to send `m.room.tombstone` in the old room (the auth rules'
//!    answer otherwise), and the new version must be one local rooms can have
//!    ([`super::version`]);
//! 2. the old room gets the tombstone (`replacement_room`);
//! 3. a new local room of the same class is created with `predecessor` (the old room and the
//!    tombstone), `m.federate` and `type` of the old create event, and a copy of the state
//!    Synapse copies: join rules, name, topic, history visibility, guest access, avatar,
//!    encryption, server ACL, power levels (and a space's children). The upgrader's level in
//!    the copied power levels is raised to what sending that state needs; the bans of the
//!    old room are repeated; then the old power levels are sent as they were (Synapse's
//!    restricted-then-restored dance);
//! 4. the old room's `events_default` and `invite` are raised to `max(50, users_default + 1)`
//!    so ordinary members stop talking there;
//! 5. the old room's local aliases move to the new room, and the canonical alias with them
//!    (the old room's loses them, the new room's names them);
//! 6. user state follows the room (Synapse's `transfer_room_state_on_room_upgrade`): every
//!    joined member of this server gets their `m.tag` room account data copied to the new
//!    room (tags are hungryserv's for local rooms); the upgrader gets, at Synapse and with
//!    their own token, each enabled push rule with a `room_id` condition naming the old room
//!    copied for the new one (rule ID the new room's, as Synapse's
//!    `copy_push_rule_from_room_to_room` does) and the new room added to the `m.direct`
//!    entry that lists the old one. Synapse does that for every local member too, but those
//!    live in Synapse and hungryserv holds no other member's token: they are not copied for
//!    them. The room directory's visibility is not carried over either: local rooms are never
//!    published in a directory (issue 24).
//!
//! One difference in order, not in outcome: Synapse knows the tombstone's event ID before
//! the new room exists (its IDs are hashes), ours are assigned when written, so the tombstone
//! is written first and names the new room's ID chosen in advance. The new room's events are
//! checked (`create::initial_events`) before the tombstone is written, so a request that
//! would fail leaves the old room untouched. Steps 4 to 6 are best effort, as in Synapse: a
//! failure there is logged and the upgrade still answers with the new room.

use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};

use super::RoomError;
use super::auth::{self, Proposal};
use super::create::{CreateRoomRequest, InitialStateEvent};
use super::power::PowerLevels;
use super::service::{NewEvent, Rooms};
use super::state::RoomState;
use crate::auth::requester::Requester;
use crate::config::RoomClass;
use crate::store;

/// The state Synapse copies into the new room (`types_to_copy`), power levels apart.
const COPIED: [&str; 8] = [
    "m.room.join_rules",
    "m.room.name",
    "m.room.topic",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
];

impl Rooms {
    /// Upgrades local room `old` to `new_version` (the body's `new_version`); returns the
    /// replacement room.
    pub async fn upgrade(
        &self,
        requester: &Requester,
        token: &str,
        class: &RoomClass,
        old: &OwnedRoomId,
        new_version: &Value,
        ts: i64,
    ) -> Result<OwnedRoomId, RoomError> {
        let version = super::version::requested(Some(new_version))?;
        let state = self.current_state(old).await?;
        let tombstone_check = Proposal {
            sender: requester.user_id.clone(),
            kind: "m.room.tombstone".into(),
            state_key: Some(String::new()),
            content: Map::new(),
            origin_server_ts: ts,
            redacts: None,
        };
        auth::check(&state, &tombstone_check, None).map_err(RoomError::from)?;

        let new_room = super::event::new_room_id(&class.prefix, self.server_name());
        let old_power = state
            .get("m.room.power_levels", "")
            .map(|entry| entry.content.clone());
        // Checked with a stand-in tombstone ID first: nothing is written for a request that
        // cannot succeed.
        let request = new_room_request(&state, &requester.user_id, version.as_str(), "$check");
        super::create::initial_events(
            &request,
            &super::create::Plan {
                creator: &requester.user_id,
                creator_member: Map::new(),
                alias: None,
                invitees: &[],
                now_ms: ts,
            },
        )?;

        let tombstone = self
            .append_one(
                requester,
                old,
                NewEvent::state(
                    "m.room.tombstone",
                    "",
                    object(json!({
                        "body": "This room has been replaced",
                        "replacement_room": new_room,
                    })),
                    ts,
                ),
            )
            .await?;
        let request = new_room_request(
            &state,
            &requester.user_id,
            version.as_str(),
            tombstone.as_str(),
        );
        self.create_with_id(requester, token, class, request, ts, new_room.clone())
            .await?;

        // The bans of the old room, then its power levels as they were.
        for ((kind, target), entry) in &state.entries {
            if kind == "m.room.member"
                && entry.content.get("membership").and_then(Value::as_str) == Some("ban")
            {
                self.append_one(
                    requester,
                    &new_room,
                    NewEvent::state("m.room.member", target.clone(), entry.content.clone(), ts),
                )
                .await?;
            }
        }
        if let Some(power) = &old_power {
            self.append_one(
                requester,
                &new_room,
                NewEvent::state("m.room.power_levels", "", power.clone(), ts),
            )
            .await?;
            if let Some(restricted) = restricted_power(power)
                && let Err(err) = self
                    .append_one(
                        requester,
                        old,
                        NewEvent::state("m.room.power_levels", "", restricted, ts),
                    )
                    .await
            {
                tracing::warn!(room_id = %old, error = %err, "old room's power levels not restricted");
            }
        }
        if let Err(err) = self
            .move_aliases(requester, old, &new_room, &state, ts)
            .await
        {
            tracing::warn!(room_id = %old, error = %err, "aliases not moved on upgrade");
        }
        self.transfer_user_state(requester, token, old, &new_room, &state)
            .await;
        Ok(new_room)
    }

    /// Step 6: tags of every joined local member, the upgrader's push rules and `m.direct`.
    /// Each failure is logged and skipped, as Synapse skips a user whose copy fails.
    async fn transfer_user_state(
        &self,
        requester: &Requester,
        token: &str,
        old: &OwnedRoomId,
        new: &OwnedRoomId,
        state: &RoomState,
    ) {
        let members = state.entries.iter().filter_map(|((kind, key), entry)| {
            (kind == "m.room.member"
                && entry.content.get("membership").and_then(Value::as_str) == Some("join"))
            .then_some(key)
        });
        for user in members {
            let local = ruma::UserId::parse(user.as_str())
                .is_ok_and(|user| user.server_name() == self.server_name());
            if local && let Err(err) = self.copy_tags(user, old, new).await {
                tracing::warn!(%user, error = %err, "tags not copied on upgrade");
            }
        }
        let masquerade = requester
            .appservice
            .as_ref()
            .map(|_| requester.user_id.as_str());
        let user = requester.user_id.as_str();
        match self.synapse.push_rules_of(token, masquerade).await {
            Ok(rules) => {
                for (kind, rule_id, body) in push_rules_for(&rules, old.as_str(), new.as_str()) {
                    if let Err(err) = self
                        .synapse
                        .put_push_rule(token, masquerade, kind, &rule_id, &body)
                        .await
                    {
                        tracing::warn!(%user, error = %err, "push rule not copied on upgrade");
                    }
                }
            }
            Err(err) => tracing::warn!(%user, error = %err, "push rules not read on upgrade"),
        }
        match self
            .synapse
            .account_data_of(token, masquerade, user, "m.direct")
            .await
        {
            Ok(Some(direct)) => {
                if let Some(updated) = direct_with(&direct, old.as_str(), new.as_str())
                    && let Err(err) = self
                        .synapse
                        .put_account_data(token, masquerade, user, "m.direct", &updated)
                        .await
                {
                    tracing::warn!(%user, error = %err, "m.direct not updated on upgrade");
                }
            }
            Ok(None) => {}
            Err(err) => tracing::warn!(%user, error = %err, "m.direct not read on upgrade"),
        }
    }

    /// The user's tags of `old` added to those of `new` (Synapse adds them one by one).
    async fn copy_tags(
        &self,
        user: &str,
        old: &OwnedRoomId,
        new: &OwnedRoomId,
    ) -> Result<(), RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        let tags_of = |stored: Option<Value>| {
            stored
                .and_then(|stored| stored.get("tags").and_then(Value::as_object).cloned())
                .unwrap_or_default()
        };
        let old_tags =
            tags_of(store::room_data::account_data(&mut conn, user, old.as_str(), "m.tag").await?);
        if old_tags.is_empty() {
            return Ok(());
        }
        let mut tx = sqlx::Connection::begin(&mut *conn)
            .await
            .map_err(store::StoreError::from)?;
        // Taken first: its lock keeps other tag writers out of the read-modify-write.
        let position = store::room_data::next_position(&mut tx).await?;
        let mut tags =
            tags_of(store::room_data::account_data(&mut tx, user, new.as_str(), "m.tag").await?);
        tags.extend(old_tags);
        store::room_data::put_account_data(
            &mut tx,
            user,
            new.as_str(),
            "m.tag",
            &json!({ "tags": tags }),
            position,
        )
        .await?;
        tx.commit().await.map_err(store::StoreError::from)?;
        self.notifier
            .room_data_committed(position, &[], &[user.to_owned()]);
        Ok(())
    }

    /// The current state of a local room, as the auth rules read it.
    async fn current_state(&self, room_id: &OwnedRoomId) -> Result<RoomState, RoomError> {
        let mut conn = self.db.acquire().await.map_err(store::StoreError::from)?;
        super::writer::read_state(&mut conn, room_id)
            .await?
            .ok_or_else(|| RoomError::NotFound("Unknown room".into()))
    }

    /// Step 5: the local aliases move to `new`; the canonical alias follows them.
    async fn move_aliases(
        &self,
        requester: &Requester,
        old: &OwnedRoomId,
        new: &OwnedRoomId,
        state: &RoomState,
        ts: i64,
    ) -> Result<(), RoomError> {
        {
            let mut tx = self.db.begin().await.map_err(store::StoreError::from)?;
            for alias in store::rooms::aliases_of(&mut tx, old.as_str()).await? {
                let creator = store::rooms::alias_creator(&mut tx, &alias)
                    .await?
                    .unwrap_or_else(|| requester.user_id.to_string());
                store::rooms::delete_alias(&mut tx, &alias).await?;
                store::rooms::insert_alias(&mut tx, &alias, new.as_str(), &creator).await?;
            }
            tx.commit().await.map_err(store::StoreError::from)?;
        }
        let Some(canonical) = state.get("m.room.canonical_alias", "") else {
            return Ok(());
        };
        let (old_content, new_content) = split_canonical(&canonical.content, self.server_name());
        for (room, content) in [(old, old_content), (new, new_content)] {
            self.append_one(
                requester,
                room,
                NewEvent::state("m.room.canonical_alias", "", content, ts),
            )
            .await?;
        }
        Ok(())
    }
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// The createRoom that makes the replacement room: `private_chat` (its defaults only fill
/// what the copied state leaves open), the version, `predecessor`, the copied state and the
/// copied power levels with the upgrader raised to the level that state needs.
fn new_room_request(
    state: &RoomState,
    upgrader: &OwnedUserId,
    version: &str,
    tombstone: &str,
) -> CreateRoomRequest {
    let old_create = state
        .get("m.room.create", "")
        .map(|entry| entry.content.clone())
        .unwrap_or_default();
    let mut creation_content = object(json!({
        "predecessor": {"room_id": state.room_id, "event_id": tombstone},
    }));
    if old_create.get("m.federate").and_then(Value::as_bool) == Some(false) {
        creation_content.insert("m.federate".into(), json!(false));
    }
    let room_type = old_create.get("type").cloned();
    if let Some(room_type) = &room_type {
        creation_content.insert("type".into(), room_type.clone());
    }
    let is_space = room_type.as_ref().and_then(Value::as_str) == Some("m.space");
    let mut initial_state: Vec<InitialStateEvent> = state
        .entries
        .iter()
        .filter(|((kind, key), entry)| {
            (key.is_empty() && COPIED.contains(&kind.as_str()))
                || (is_space && kind == "m.space.child" && !entry.content.is_empty())
        })
        .map(|((kind, key), entry)| InitialStateEvent {
            kind: kind.clone(),
            state_key: key.clone(),
            content: entry.content.clone(),
        })
        .collect();
    // Synapse's order does not depend on a hash map's: keep it stable.
    initial_state.sort_by(|a, b| (&a.kind, &a.state_key).cmp(&(&b.kind, &b.state_key)));
    if let Some(power) = state.get("m.room.power_levels", "") {
        initial_state.push(InitialStateEvent {
            kind: "m.room.power_levels".into(),
            state_key: String::new(),
            content: with_upgrader_raised(&power.content, upgrader.as_str()),
        });
    }
    CreateRoomRequest {
        preset: Some("private_chat".into()),
        creation_content: Some(creation_content),
        initial_state,
        room_version: Some(json!(version)),
        ..CreateRoomRequest::default()
    }
}

/// The power levels with the upgrader at least at the level sending the copied state needs:
/// `max(state_default, ban, every events level)` (Synapse's `needed_power_level`).
fn with_upgrader_raised(power: &Map<String, Value>, upgrader: &str) -> Map<String, Value> {
    let levels = PowerLevels::new(Some(power), "");
    let events_max = power
        .get("events")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|events| events.values())
        .filter_map(Value::as_i64)
        .max()
        .unwrap_or(0);
    let needed = levels
        .named("state_default")
        .max(levels.named("ban"))
        .max(events_max);
    let mut power = power.clone();
    if levels.user_level(upgrader) < needed {
        let users = power
            .entry("users")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(users) = users {
            users.insert(upgrader.to_owned(), json!(needed));
        }
    }
    power
}

/// The old room's power levels with `events_default` and `invite` raised to
/// `max(50, users_default + 1)`, or `None` when both are there already.
fn restricted_power(power: &Map<String, Value>) -> Option<Map<String, Value>> {
    let level = |key: &str| power.get(key).and_then(Value::as_i64).unwrap_or(0);
    let restricted = (level("users_default") + 1).max(50);
    let mut updated = power.clone();
    let mut changed = false;
    for key in ["invite", "events_default"] {
        if level(key) < restricted {
            updated.insert(key.into(), json!(restricted));
            changed = true;
        }
    }
    changed.then_some(updated)
}

/// The canonical alias split between the rooms: the aliases of this server (all a local
/// room's aliases are) go to the new room; anything else stays in the old one.
fn split_canonical(
    content: &Map<String, Value>,
    server_name: &ruma::ServerName,
) -> (Map<String, Value>, Map<String, Value>) {
    let ours = |alias: &str| {
        ruma::RoomAliasId::parse(alias).is_ok_and(|alias| alias.server_name() == server_name)
    };
    let mut old = content.clone();
    let mut new = Map::new();
    if let Some(alias) = content.get("alias").and_then(Value::as_str)
        && ours(alias)
    {
        new.insert("alias".into(), json!(alias));
        old.remove("alias");
    }
    if let Some(Value::Array(alt)) = content.get("alt_aliases")
        && !alt.is_empty()
    {
        let (moved, kept): (Vec<Value>, Vec<Value>) = alt
            .iter()
            .cloned()
            .partition(|alias| alias.as_str().is_some_and(ours));
        new.insert("alt_aliases".into(), Value::Array(moved));
        if kept.is_empty() {
            old.remove("alt_aliases");
        } else {
            old.insert("alt_aliases".into(), Value::Array(kept));
        }
    }
    (old, new)
}

/// The push rules to add for the new room (kind, rule ID, `PUT` body), in the order Synapse
/// adds them: each enabled rule of the ruleset (`{"global": {...}}`, client format) with a
/// `room_id` condition naming `old` — a `room` rule is its room's ID — copied with the
/// condition and the rule ID naming `new`.
fn push_rules_for(rules: &Value, old: &str, new: &str) -> Vec<(&'static str, String, Value)> {
    let mut copies = Vec::new();
    for kind in ["override", "content", "room", "sender", "underride"] {
        let Some(list) = rules
            .get("global")
            .and_then(|global| global.get(kind))
            .and_then(Value::as_array)
        else {
            continue;
        };
        for rule in list {
            if rule.get("enabled").and_then(Value::as_bool) == Some(false) {
                continue;
            }
            let actions = rule.get("actions").cloned().unwrap_or_else(|| json!([]));
            if kind == "room" {
                if rule.get("rule_id").and_then(Value::as_str) == Some(old) {
                    copies.push((kind, new.to_owned(), json!({ "actions": actions })));
                }
                continue;
            }
            let Some(conditions) = rule.get("conditions").and_then(Value::as_array) else {
                continue;
            };
            let names_old = |condition: &Value| {
                condition.get("key").and_then(Value::as_str) == Some("room_id")
                    && condition.get("pattern").and_then(Value::as_str) == Some(old)
            };
            if !conditions.iter().any(names_old) {
                continue;
            }
            let conditions: Vec<Value> = conditions
                .iter()
                .map(|condition| {
                    let mut condition = condition.clone();
                    if condition.get("key").and_then(Value::as_str) == Some("room_id")
                        && let Some(object) = condition.as_object_mut()
                    {
                        object.insert("pattern".into(), json!(new));
                    }
                    condition
                })
                .collect();
            copies.push((
                kind,
                new.to_owned(),
                json!({ "actions": actions, "conditions": conditions }),
            ));
        }
    }
    copies
}

/// `m.direct` with `new` added to the first entry that lists `old` and not `new`, or `None`
/// when none does (Synapse's `copy_room_tags_and_direct_to_room`).
fn direct_with(direct: &Value, old: &str, new: &str) -> Option<Value> {
    let mut direct = direct.as_object()?.clone();
    let rooms = direct.values_mut().find_map(|rooms| {
        let list = rooms.as_array_mut()?;
        let listed = |room: &str| list.iter().any(|entry| entry.as_str() == Some(room));
        (listed(old) && !listed(new)).then_some(list)
    })?;
    rooms.push(json!(new));
    Some(Value::Object(direct))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_rules_naming_the_old_room_are_copied_for_the_new_one() {
        let rules = json!({"global": {
            "override": [
                {"rule_id": ".m.rule.master", "default": true, "enabled": false, "actions": [], "conditions": []},
                {"rule_id": "mine", "enabled": true, "actions": ["notify"],
                 "conditions": [{"kind": "event_match", "key": "room_id", "pattern": "!old:hs"},
                                {"kind": "event_match", "key": "type", "pattern": "m.room.message"}]},
                {"rule_id": "off", "enabled": false, "actions": ["notify"],
                 "conditions": [{"kind": "event_match", "key": "room_id", "pattern": "!old:hs"}]}
            ],
            "room": [
                {"rule_id": "!old:hs", "enabled": true, "actions": []},
                {"rule_id": "!other:hs", "enabled": true, "actions": []}
            ],
            "content": [{"rule_id": "c", "enabled": true, "actions": [], "pattern": "!old:hs"}]
        }});
        assert_eq!(
            push_rules_for(&rules, "!old:hs", "!new:hs"),
            vec![
                (
                    "override",
                    "!new:hs".to_owned(),
                    json!({"actions": ["notify"], "conditions": [
                        {"kind": "event_match", "key": "room_id", "pattern": "!new:hs"},
                        {"kind": "event_match", "key": "type", "pattern": "m.room.message"}]})
                ),
                ("room", "!new:hs".to_owned(), json!({"actions": []})),
            ]
        );
    }

    #[test]
    fn m_direct_gets_the_new_room_beside_the_old_one() {
        assert_eq!(
            direct_with(
                &json!({"@a:hs": ["!x:hs"], "@b:hs": ["!old:hs"]}),
                "!old:hs",
                "!new:hs"
            ),
            Some(json!({"@a:hs": ["!x:hs"], "@b:hs": ["!old:hs", "!new:hs"]}))
        );
        assert_eq!(
            direct_with(&json!({"@b:hs": ["!x:hs"]}), "!old:hs", "!new:hs"),
            None
        );
        assert_eq!(
            direct_with(
                &json!({"@b:hs": ["!old:hs", "!new:hs"]}),
                "!old:hs",
                "!new:hs"
            ),
            None
        );
    }

    fn object_of(value: Value) -> Map<String, Value> {
        object(value)
    }

    #[test]
    fn the_old_room_is_restricted_to_moderators() {
        assert_eq!(
            restricted_power(&object_of(json!({"invite": 0, "users_default": 0}))),
            Some(object_of(
                json!({"invite": 50, "events_default": 50, "users_default": 0})
            ))
        );
        assert_eq!(
            restricted_power(&object_of(json!({"users_default": 60, "invite": 61}))),
            Some(object_of(
                json!({"users_default": 60, "invite": 61, "events_default": 61})
            ))
        );
        assert_eq!(
            restricted_power(&object_of(json!({"invite": 50, "events_default": 50}))),
            None
        );
    }

    #[test]
    fn the_upgrader_gets_the_level_the_copied_state_needs() {
        let power =
            object_of(json!({"users": {"@mod:hs": 50}, "events": {"m.room.tombstone": 50}}));
        assert_eq!(
            with_upgrader_raised(&power, "@mod:hs")["users"],
            json!({"@mod:hs": 50})
        );
        let power = object_of(
            json!({"users": {"@mod:hs": 50}, "events": {"m.room.tombstone": 50, "m.room.power_levels": 100}}),
        );
        assert_eq!(
            with_upgrader_raised(&power, "@mod:hs")["users"],
            json!({"@mod:hs": 100})
        );
    }

    #[test]
    fn local_aliases_move_to_the_new_room() {
        let server = ruma::ServerName::parse("hs").unwrap();
        let (old, new) = split_canonical(
            &object_of(json!({"alias": "#a:hs", "alt_aliases": ["#a:hs", "#b:other"]})),
            &server,
        );
        assert_eq!(old, object_of(json!({"alt_aliases": ["#b:other"]})));
        assert_eq!(
            new,
            object_of(json!({"alias": "#a:hs", "alt_aliases": ["#a:hs"]}))
        );
    }
}

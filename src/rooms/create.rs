//! `createRoom` for local rooms: the request body and the initial events, in the order and
//! with the defaults Synapse uses (`synapse/handlers/room.py`), so a bridge sees the same room
//! either way. Pure: the caller supplies the room ID, profile and time.

use ruma::{OwnedRoomAliasId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::RoomError;
use super::auth::Proposal;

/// The body of `POST /createRoom`, as far as local rooms use it. Unknown fields are ignored,
/// like Synapse ignores fields it does not know. `room_version` is one of 1–11
/// ([`super::version`]), 10 when absent. Creators absent from the power levels' `users` get 100, the
/// effect a client expecting a version-12 room wants ([`with_creators_empowered`]).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateRoomRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub invite: Vec<String>,
    #[serde(default)]
    pub is_direct: Option<bool>,
    #[serde(default)]
    pub creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    pub initial_state: Vec<InitialStateEvent>,
    #[serde(default)]
    pub power_level_content_override: Option<Map<String, Value>>,
    #[serde(default)]
    pub room_alias_name: Option<String>,
    /// Kept as JSON: a version that is not a string is Synapse's 400 `M_BAD_JSON`, not a
    /// body that fails to parse.
    #[serde(default)]
    pub room_version: Option<Value>,
    /// Beeper extension: everyone in `invite` is joined at creation.
    #[serde(default, rename = "com.beeper.auto_join_invites")]
    pub auto_join_invites: bool,
    /// Beeper extension (newer form): these users are joined at creation.
    #[serde(default, rename = "com.beeper.initial_members")]
    pub initial_members: Vec<String>,
}

/// One entry of `initial_state`.
#[derive(Debug, Clone, Deserialize)]
pub struct InitialStateEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Map<String, Value>,
}

/// Settings of a `preset`.
struct Preset {
    join_rule: &'static str,
    history_visibility: &'static str,
    guest_can_join: bool,
    invitees_have_ops: bool,
    /// Merged into the default power levels before the request's own override.
    power_override: Value,
}

fn preset(request: &CreateRoomRequest) -> Result<Preset, RoomError> {
    let name = match (request.preset.as_deref(), request.visibility.as_deref()) {
        (Some(name), _) => name,
        (None, Some("public")) => "public_chat",
        (None, _) => "private_chat",
    };
    match name {
        "private_chat" | "trusted_private_chat" => Ok(Preset {
            join_rule: "invite",
            history_visibility: "shared",
            guest_can_join: true,
            invitees_have_ops: name == "trusted_private_chat",
            power_override: json!({"invite": 0}),
        }),
        "public_chat" => Ok(Preset {
            join_rule: "public",
            history_visibility: "shared",
            guest_can_join: false,
            invitees_have_ops: false,
            power_override: json!({"m.call.invite": 50}),
        }),
        other => Err(RoomError::BadJson(format!("Unknown preset: {other}"))),
    }
}

/// The alias `#{room_alias_name}:{server}`, validated as Synapse does.
pub fn alias(
    request: &CreateRoomRequest,
    server_name: &str,
) -> Result<Option<OwnedRoomAliasId>, RoomError> {
    let Some(name) = &request.room_alias_name else {
        return Ok(None);
    };
    if name.chars().any(char::is_whitespace) || name.contains(':') {
        return Err(RoomError::InvalidParam(
            "Invalid characters in room alias".into(),
        ));
    }
    OwnedRoomAliasId::try_from(format!("#{name}:{server_name}"))
        .map(Some)
        .map_err(|_| RoomError::InvalidParam("Invalid characters in room alias".into()))
}

/// The invitees, parsed.
pub fn invitees(request: &CreateRoomRequest) -> Result<Vec<OwnedUserId>, RoomError> {
    request
        .invite
        .iter()
        .map(|user| {
            OwnedUserId::try_from(user.as_str())
                .map_err(|_| RoomError::InvalidParam(format!("Invalid user_id: {user}")))
        })
        .collect()
}

/// The users joined at creation (Beeper's `com.beeper.auto_join_invites` and
/// `com.beeper.initial_members`), in request order, without the creator or repeats.
/// `com.beeper.local_room_id` is ignored: the class prefix decides local room IDs.
pub fn initial_members(
    request: &CreateRoomRequest,
    creator: &OwnedUserId,
) -> Result<Vec<OwnedUserId>, RoomError> {
    let invited = if request.auto_join_invites {
        request.invite.as_slice()
    } else {
        &[]
    };
    let mut members: Vec<OwnedUserId> = Vec::new();
    for user in invited.iter().chain(&request.initial_members) {
        let user = OwnedUserId::try_from(user.as_str())
            .map_err(|_| RoomError::InvalidParam(format!("Invalid user_id: {user}")))?;
        if &user != creator && !members.contains(&user) {
            members.push(user);
        }
    }
    Ok(members)
}

/// Everything [`initial_events`] needs besides the request.
pub struct Plan<'a> {
    pub creator: &'a OwnedUserId,
    /// The creator's member event content (membership, displayname, avatar_url).
    pub creator_member: Map<String, Value>,
    pub alias: Option<&'a OwnedRoomAliasId>,
    pub invitees: &'a [OwnedUserId],
    /// `origin_server_ts` for every event.
    pub now_ms: i64,
}

/// The room's events in Synapse's order: create, creator join, power levels, canonical alias,
/// join rules, history visibility, guest access, initial_state, name, topic. Invites are not
/// included: they are membership changes made after the room exists.
pub fn initial_events(
    request: &CreateRoomRequest,
    plan: &Plan<'_>,
) -> Result<Vec<Proposal>, RoomError> {
    let preset = preset(request)?;
    let version = super::version::requested(request.room_version.as_ref())?;
    let rules = super::version::rules(version.as_str());
    let creator = plan.creator.as_str();
    let event = |kind: &str, state_key: &str, content: Value| Proposal {
        sender: plan.creator.clone(),
        kind: kind.to_owned(),
        state_key: Some(state_key.to_owned()),
        content: match content {
            Value::Object(map) => map,
            _ => Map::new(),
        },
        origin_server_ts: plan.now_ms,
        redacts: None,
    };
    let initial: Vec<&InitialStateEvent> = request.initial_state.iter().collect();
    let has_initial = |kind: &str| {
        initial
            .iter()
            .any(|e| e.kind == kind && e.state_key.is_empty())
    };

    let mut create_content = request.creation_content.clone().unwrap_or_default();
    // From version 11 the create event's sender is the creator, and Synapse writes no
    // `creator` key (it keeps one the client put in `creation_content`).
    if !rules.authorization.use_room_create_sender {
        create_content.insert("creator".into(), json!(creator));
    }
    create_content.insert("room_version".into(), json!(version.as_str()));
    let mut events = vec![
        event("m.room.create", "", Value::Object(create_content)),
        event(
            "m.room.member",
            creator,
            Value::Object(plan.creator_member.clone()),
        ),
    ];

    let power = match initial
        .iter()
        .find(|e| e.kind == "m.room.power_levels" && e.state_key.is_empty())
    {
        Some(given) => given.content.clone(),
        None => {
            let mut users = Map::new();
            users.insert(creator.to_owned(), json!(100));
            if preset.invitees_have_ops {
                for invitee in plan.invitees {
                    users.insert(invitee.to_string(), json!(100));
                }
            }
            let mut content = json!({
                "users": users,
                "users_default": 0,
                "events": {
                    "m.room.name": 50,
                    "m.room.power_levels": 100,
                    "m.room.history_visibility": 100,
                    "m.room.canonical_alias": 50,
                    "m.room.avatar": 50,
                    "m.room.tombstone": 100,
                    "m.room.server_acl": 100,
                    "m.room.encryption": 100
                },
                "events_default": 0,
                "state_default": 50,
                "ban": 50,
                "kick": 50,
                "redact": 50,
                "invite": 50,
                "historical": 100
            });
            // Shallow merges, preset first, then the request (as Synapse's dict.update).
            if let (Some(map), Value::Object(preset_override)) =
                (content.as_object_mut(), preset.power_override)
            {
                map.extend(preset_override);
                if let Some(request_override) = &request.power_level_content_override {
                    map.extend(request_override.clone());
                }
            }
            content.as_object().cloned().unwrap_or_default()
        }
    };
    let power = with_creators_empowered(power, creator, request.creation_content.as_ref());
    super::power::validate_content(&power).map_err(RoomError::BadJson)?;
    events.push(event("m.room.power_levels", "", Value::Object(power)));

    if let Some(alias) = plan.alias
        && !has_initial("m.room.canonical_alias")
    {
        events.push(event("m.room.canonical_alias", "", json!({"alias": alias})));
    }
    if !has_initial("m.room.join_rules") {
        events.push(event(
            "m.room.join_rules",
            "",
            json!({"join_rule": preset.join_rule}),
        ));
    }
    if !has_initial("m.room.history_visibility") {
        events.push(event(
            "m.room.history_visibility",
            "",
            json!({"history_visibility": preset.history_visibility}),
        ));
    }
    if preset.guest_can_join && !has_initial("m.room.guest_access") {
        events.push(event(
            "m.room.guest_access",
            "",
            json!({"guest_access": "can_join"}),
        ));
    }
    for extra in &initial {
        if extra.kind == "m.room.power_levels" && extra.state_key.is_empty() {
            continue;
        }
        if extra.kind == "m.room.create" || extra.kind == "m.room.member" {
            return Err(RoomError::BadJson(format!(
                "Cannot set {} in initial_state",
                extra.kind
            )));
        }
        events.push(event(
            &extra.kind,
            &extra.state_key,
            Value::Object(extra.content.clone()),
        ));
    }
    if let Some(name) = &request.name {
        events.push(event("m.room.name", "", json!({"name": name})));
    }
    if let Some(topic) = &request.topic {
        events.push(event(
            "m.room.topic",
            "",
            json!({"topic": topic, "m.topic": {"m.text": [{"body": topic}]}}),
        ));
    }
    Ok(events)
}

/// Gives every creator absent from the power levels' `users` the level 100: the creator, and
/// `creation_content.additional_creators` (room version 12).
///
/// Why: a client that follows a Synapse whose default room version is 12 leaves its creators
/// out of `users` (in v12 creators have unlimited power and Synapse refuses them in
/// `power_level_content_override.users`). Local rooms are never v12 (their IDs must keep the
/// class prefix), so without this the creator of such a room ends at `users_default` and
/// cannot send its own initial state; the bridge's createRoom fails. 100 is the effect the
/// client expected. A creator listed explicitly keeps the level given; for versions before
/// 12 Synapse refuses an override that leaves the creator out, so no client expects less.
fn with_creators_empowered(
    mut power: Map<String, Value>,
    creator: &str,
    creation_content: Option<&Map<String, Value>>,
) -> Map<String, Value> {
    let additional = creation_content
        .and_then(|content| content.get("additional_creators"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let creators: Vec<&str> = std::iter::once(creator).chain(additional).collect();
    let users = power
        .entry("users")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(users) = users {
        for creator in creators {
            users.entry(creator).or_insert(json!(100));
        }
    }
    power
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan<'a>(creator: &'a OwnedUserId, invitees: &'a [OwnedUserId]) -> Plan<'a> {
        Plan {
            creator,
            creator_member: json!({"membership": "join", "displayname": "Bot"})
                .as_object()
                .unwrap()
                .clone(),
            alias: None,
            invitees,
            now_ms: 5,
        }
    }

    fn kinds(events: &[Proposal]) -> Vec<&str> {
        events.iter().map(|e| e.kind.as_str()).collect()
    }

    #[test]
    fn private_chat_matches_synapse_order_and_defaults() {
        let creator = OwnedUserId::try_from("@bot:hs").unwrap();
        let request: CreateRoomRequest = serde_json::from_value(json!({
            "name": "Chat", "topic": "About", "preset": "private_chat",
            "creation_content": {"m.federate": false},
            "power_level_content_override": {"users": {"@bot:hs": 100, "@ghost:hs": 50}},
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
            "room_version": "11"
        }))
        .unwrap();
        let events = initial_events(&request, &plan(&creator, &[])).unwrap();
        assert_eq!(
            kinds(&events),
            [
                "m.room.create",
                "m.room.member",
                "m.room.power_levels",
                "m.room.join_rules",
                "m.room.history_visibility",
                "m.room.guest_access",
                "m.room.encryption",
                "m.room.name",
                "m.room.topic"
            ]
        );
        assert_eq!(events[0].content["room_version"], "11");
        assert_eq!(events[0].content["m.federate"], false);
        assert!(
            !events[0].content.contains_key("creator"),
            "version 11 has no creator key"
        );
        let power = &events[2].content;
        assert_eq!(power["invite"], 0, "private_chat lets members invite");
        assert_eq!(
            power["users"],
            json!({"@bot:hs": 100, "@ghost:hs": 50}),
            "override replaces users whole"
        );
        assert_eq!(power["events"]["m.room.power_levels"], 100);
        assert_eq!(events[3].content["join_rule"], "invite");
        assert_eq!(events[8].content["m.topic"]["m.text"][0]["body"], "About");
    }

    #[test]
    fn creators_left_out_of_users_get_100() {
        let creator = OwnedUserId::try_from("@bot:hs").unwrap();
        // As a bridge shapes it for a room-version-12 Synapse: creators are not in `users`.
        let request: CreateRoomRequest = serde_json::from_value(json!({
            "creation_content": {"additional_creators": ["@co:hs"]},
            "power_level_content_override": {"users": {"@ghost:hs": 50, "@co:hs": 20}},
        }))
        .unwrap();
        let events = initial_events(&request, &plan(&creator, &[])).unwrap();
        assert_eq!(
            events[2].content["users"],
            json!({"@bot:hs": 100, "@ghost:hs": 50, "@co:hs": 20}),
            "an absent creator gets 100; a level given explicitly stays"
        );
        // The same for power levels given whole in initial_state.
        let request: CreateRoomRequest = serde_json::from_value(json!({
            "initial_state": [{"type": "m.room.power_levels", "content": {"users_default": 0}}],
        }))
        .unwrap();
        let events = initial_events(&request, &plan(&creator, &[])).unwrap();
        assert_eq!(events[2].content["users"], json!({"@bot:hs": 100}));
    }

    #[test]
    fn public_and_trusted_presets() {
        let creator = OwnedUserId::try_from("@bot:hs").unwrap();
        let invitees = [OwnedUserId::try_from("@friend:hs").unwrap()];
        let public: CreateRoomRequest =
            serde_json::from_value(json!({"visibility": "public"})).unwrap();
        let events = initial_events(&public, &plan(&creator, &invitees)).unwrap();
        assert!(!kinds(&events).contains(&"m.room.guest_access"));
        assert_eq!(events[3].content["join_rule"], "public");
        assert_eq!(events[2].content["invite"], 50);

        let trusted: CreateRoomRequest =
            serde_json::from_value(json!({"preset": "trusted_private_chat"})).unwrap();
        let events = initial_events(&trusted, &plan(&creator, &invitees)).unwrap();
        assert_eq!(events[2].content["users"]["@friend:hs"], 100);
    }

    #[test]
    fn bad_requests() {
        let creator = OwnedUserId::try_from("@bot:hs").unwrap();
        let unknown: CreateRoomRequest =
            serde_json::from_value(json!({"preset": "party"})).unwrap();
        assert!(matches!(
            initial_events(&unknown, &plan(&creator, &[])),
            Err(RoomError::BadJson(_))
        ));
        let bad_power: CreateRoomRequest =
            serde_json::from_value(json!({"power_level_content_override": {"ban": "5"}})).unwrap();
        assert!(matches!(
            initial_events(&bad_power, &plan(&creator, &[])),
            Err(RoomError::BadJson(_))
        ));
        for (version, refusal) in [
            (json!("12"), "unsupported"),
            (json!("foo"), "unsupported"),
            (json!(10), "bad json"),
        ] {
            let request: CreateRoomRequest =
                serde_json::from_value(json!({"room_version": version})).unwrap();
            let got = initial_events(&request, &plan(&creator, &[]));
            match refusal {
                "unsupported" => assert!(
                    matches!(got, Err(RoomError::UnsupportedRoomVersion(_))),
                    "{version}"
                ),
                _ => assert!(matches!(got, Err(RoomError::BadJson(_))), "{version}"),
            }
        }
        let old: CreateRoomRequest = serde_json::from_value(json!({"room_version": "1"})).unwrap();
        let events = initial_events(&old, &plan(&creator, &[])).unwrap();
        assert_eq!(events[0].content["room_version"], "1");
        assert_eq!(events[0].content["creator"], "@bot:hs");
        let alias_req: CreateRoomRequest =
            serde_json::from_value(json!({"room_alias_name": "bad alias"})).unwrap();
        assert!(matches!(
            alias(&alias_req, "hs"),
            Err(RoomError::InvalidParam(_))
        ));
        let ok: CreateRoomRequest =
            serde_json::from_value(json!({"room_alias_name": "chat"})).unwrap();
        assert_eq!(alias(&ok, "hs").unwrap().unwrap().as_str(), "#chat:hs");
    }
}

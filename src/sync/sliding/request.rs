//! The request body of simplified sliding sync (MSC4186 as Synapse 1.163 reads it:
//! `SlidingSyncBody`), the parts the local side evaluates. The raw body goes to Synapse too.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Deserialize;
use serde_json::Value;

/// `StateValues` of Synapse: the wildcard, lazy members and the requester.
const WILDCARD: &str = "*";
const LAZY: &str = "$LAZY";
const ME: &str = "$ME";

/// The body, as far as we read it.
#[derive(Debug, Default, Deserialize)]
pub struct Body {
    #[serde(default)]
    pub conn_id: Option<String>,
    #[serde(default)]
    pub lists: Option<BTreeMap<String, ListConfig>>,
    #[serde(default)]
    pub room_subscriptions: Option<BTreeMap<String, RoomConfig>>,
    #[serde(default)]
    pub extensions: Option<Extensions>,
}

impl Body {
    /// Whether a list filters on `is_dm` (then `m.direct` is read first).
    pub fn filters_on_dm(&self) -> bool {
        self.lists
            .iter()
            .flatten()
            .any(|(_, l)| l.filters.as_ref().is_some_and(|f| f.is_dm.is_some()))
    }

    /// Whether the account data extension is on (its answer without `pos` holds all of the
    /// user's global account data, `m.direct` among it).
    pub fn global_account_data(&self) -> bool {
        self.extensions.as_ref().is_some_and(|e| {
            e.account_data
                .as_ref()
                .is_some_and(|a| a.enabled == Some(true))
        })
    }
}

/// One list.
#[derive(Debug, Deserialize)]
pub struct ListConfig {
    /// Inclusive `[start, end]` ranges.
    #[serde(default)]
    pub ranges: Option<Vec<(u64, u64)>>,
    #[serde(flatten)]
    pub room: RoomConfig,
    #[serde(default)]
    pub filters: Option<Filters>,
}

/// What to send of a room.
#[derive(Debug, Clone, Deserialize)]
pub struct RoomConfig {
    #[serde(default)]
    pub required_state: Vec<(String, String)>,
    pub timeline_limit: i64,
}

/// A list's filters (all must match).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    pub is_dm: Option<bool>,
    #[serde(default)]
    pub spaces: Option<Vec<String>>,
    #[serde(default)]
    pub is_encrypted: Option<bool>,
    #[serde(default)]
    pub is_invite: Option<bool>,
    /// `null` in the list stands for rooms without a type.
    #[serde(default)]
    pub room_types: Option<Vec<Option<String>>>,
    #[serde(default)]
    pub not_room_types: Option<Vec<Option<String>>>,
    /// Rooms the user tagged with one of these (`m.tag` room account data).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Rooms the user tagged with none of these.
    #[serde(default)]
    pub not_tags: Option<Vec<String>>,
}

/// The extensions we merge local data into.
#[derive(Debug, Default, Deserialize)]
pub struct Extensions {
    /// Device lists of local co-members go into its `device_lists`.
    #[serde(default)]
    pub e2ee: Option<Toggle>,
    #[serde(default)]
    pub account_data: Option<RoomExtension>,
    #[serde(default)]
    pub receipts: Option<RoomExtension>,
    #[serde(default)]
    pub typing: Option<RoomExtension>,
}

/// An extension that is only on or off.
#[derive(Debug, Default, Deserialize)]
pub struct Toggle {
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl Toggle {
    /// Whether the extension is on.
    pub fn on(this: Option<&Self>) -> bool {
        this.is_some_and(|e| e.enabled == Some(true))
    }
}

/// An extension with per-room data: which lists and rooms it covers (`*` = all).
#[derive(Debug, Default, Deserialize)]
pub struct RoomExtension {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub lists: Option<Vec<String>>,
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
}

impl RoomExtension {
    /// Whether the extension is on.
    pub fn on(this: Option<&Self>) -> bool {
        this.is_some_and(|e| e.enabled == Some(true))
    }

    /// Whether the extension covers a room of the response, found through `lists` (the
    /// names of the lists whose window holds it) or as a subscription. Synapse's rule
    /// (`find_relevant_room_ids_for_extension`): absent `lists` and `rooms` mean all.
    pub fn covers(&self, room_id: &str, lists: &[&str], subscribed: bool) -> bool {
        let by_list = match &self.lists {
            None => !lists.is_empty(),
            Some(names) => names
                .iter()
                .any(|n| n == WILDCARD || lists.contains(&n.as_str())),
        };
        let by_room = match &self.rooms {
            None => subscribed,
            Some(rooms) => subscribed && rooms.iter().any(|r| r == WILDCARD || r == room_id),
        };
        by_list || by_room
    }
}

impl Filters {
    /// Whether the filters look at encryption or room type (then those are read).
    pub fn needs_facts(&self) -> bool {
        self.is_encrypted.is_some() || self.room_types.is_some() || self.not_room_types.is_some()
    }

    /// Whether the filters look at the user's room tags (then those are read).
    pub fn needs_tags(&self) -> bool {
        self.tags.is_some() || self.not_tags.is_some()
    }

    /// Whether a local room passes (Synapse's `filter_rooms`). Synapse 1.163 answers a
    /// `spaces` filter with a 500 (`NotImplementedError`), which is passed on; should it get
    /// one, a local room is in no space it knows, so none passes.
    pub fn allows(&self, room: &RoomFacts<'_>) -> bool {
        if self.spaces.is_some() {
            return false;
        }
        let checks = [
            self.is_dm.is_none_or(|want| want == room.is_dm),
            self.is_encrypted.is_none_or(|want| want == room.encrypted),
            self.is_invite.is_none_or(|want| want == room.invited),
            self.room_types
                .as_ref()
                .is_none_or(|types| types.iter().any(|t| t.as_deref() == room.room_type)),
            self.not_room_types
                .as_ref()
                .is_none_or(|types| !types.iter().any(|t| t.as_deref() == room.room_type)),
            self.tags
                .as_ref()
                .is_none_or(|tags| tags.iter().any(|t| room.tags.contains(t))),
            self.not_tags
                .as_ref()
                .is_none_or(|tags| !tags.iter().any(|t| room.tags.contains(t))),
        ];
        checks.into_iter().all(|ok| ok)
    }
}

/// What the filters look at.
pub struct RoomFacts<'a> {
    pub is_dm: bool,
    pub encrypted: bool,
    pub invited: bool,
    pub room_type: Option<&'a str>,
    /// The user's tags on the room.
    pub tags: &'a BTreeSet<String>,
}

/// A `required_state` request, normalised; several rooms' configs combine by union.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredState {
    /// `["*", "*"]`: all state.
    pub all: bool,
    /// `[type, "*"]`.
    pub all_of_type: BTreeSet<String>,
    /// `["*", key]`.
    pub key_of_any_type: BTreeSet<String>,
    /// `[type, key]` (`$ME` stays as it is; it is resolved against the requester).
    pub keys: BTreeSet<(String, String)>,
    /// `["m.room.member", "$LAZY"]`: the members of the timeline's senders.
    pub lazy_members: bool,
}

impl RequiredState {
    pub fn from_pairs(pairs: &[(String, String)]) -> Self {
        let mut out = RequiredState::default();
        for (kind, key) in pairs {
            match (kind.as_str(), key.as_str()) {
                (WILDCARD, WILDCARD) => out.all = true,
                (kind, WILDCARD) => {
                    out.all_of_type.insert(kind.to_owned());
                }
                (WILDCARD, key) => {
                    out.key_of_any_type.insert(key.to_owned());
                }
                ("m.room.member", LAZY) => out.lazy_members = true,
                (kind, key) => {
                    out.keys.insert((kind.to_owned(), key.to_owned()));
                }
            }
        }
        out
    }

    pub fn union(&mut self, other: &RequiredState) {
        self.all |= other.all;
        self.lazy_members |= other.lazy_members;
        self.all_of_type.extend(other.all_of_type.iter().cloned());
        self.key_of_any_type
            .extend(other.key_of_any_type.iter().cloned());
        self.keys.extend(other.keys.iter().cloned());
    }

    /// Whether `self` asks for something `before` did not (the room is then sent anew).
    pub fn grew_from(&self, before: &RequiredState) -> bool {
        let mut both = before.clone();
        both.union(self);
        both != *before
    }

    /// Whether only exact keys are asked for (then only those are read).
    pub fn exact_only(&self) -> bool {
        !self.all && self.all_of_type.is_empty() && self.key_of_any_type.is_empty()
    }

    /// The exact `(type, state_key)` pairs asked for, `$ME` resolved.
    pub fn exact_keys(&self, me: &str) -> Vec<(String, String)> {
        self.keys
            .iter()
            .map(|(kind, key)| {
                let key = if key == ME { me } else { key.as_str() };
                (kind.clone(), key.to_owned())
            })
            .collect()
    }

    /// Whether a state event is asked for; `lazy` holds the members lazy loading wants.
    pub fn wants(&self, kind: &str, key: &str, me: &str, lazy: &HashSet<&str>) -> bool {
        self.all
            || self.all_of_type.contains(kind)
            || self.key_of_any_type.contains(key)
            || self
                .keys
                .iter()
                .any(|(k, s)| k == kind && (s == key || (s == ME && key == me)))
            || (self.lazy_members && kind == "m.room.member" && lazy.contains(key))
    }
}

/// Reads the body. A body Synapse would refuse may still read here; Synapse's answer to it
/// is then passed on.
pub fn parse(body: &Value) -> Result<Body, String> {
    Body::deserialize(body).map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn required_state_wildcards_and_specials() {
        let pairs = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let rs = RequiredState::from_pairs(&pairs(&[
            ("m.room.name", ""),
            ("m.room.member", "$LAZY"),
            ("m.room.member", "$ME"),
            ("m.space.child", "*"),
        ]));
        let lazy: HashSet<&str> = ["@s:x"].into();
        assert!(rs.wants("m.room.name", "", "@me:x", &lazy));
        assert!(!rs.wants("m.room.topic", "", "@me:x", &lazy));
        assert!(rs.wants("m.room.member", "@me:x", "@me:x", &lazy));
        assert!(rs.wants("m.room.member", "@s:x", "@me:x", &lazy));
        assert!(!rs.wants("m.room.member", "@other:x", "@me:x", &lazy));
        assert!(rs.wants("m.space.child", "!a:x", "@me:x", &lazy));
        assert!(!rs.exact_only());
        let all = RequiredState::from_pairs(&pairs(&[("*", "*")]));
        assert!(all.wants("anything", "k", "@me:x", &HashSet::new()));
        assert!(all.grew_from(&rs));
        assert!(!rs.grew_from(&rs));
    }

    #[test]
    fn filters_match_local_rooms() {
        let tags: BTreeSet<String> = ["u.work".to_owned()].into();
        let facts = RoomFacts {
            is_dm: false,
            encrypted: true,
            invited: false,
            room_type: None,
            tags: &tags,
        };
        let f = |v: Value| serde_json::from_value::<Filters>(v).unwrap();
        assert!(f(json!({})).allows(&facts));
        assert!(f(json!({"is_encrypted": true, "is_invite": false})).allows(&facts));
        assert!(!f(json!({"is_dm": true})).allows(&facts));
        assert!(f(json!({"room_types": [null]})).allows(&facts));
        assert!(!f(json!({"room_types": ["m.space"]})).allows(&facts));
        assert!(!f(json!({"not_room_types": [null]})).allows(&facts));
        assert!(!f(json!({"spaces": ["!s:x"]})).allows(&facts));
        assert!(f(json!({"tags": ["m.favourite", "u.work"]})).allows(&facts));
        assert!(!f(json!({"tags": ["m.favourite"]})).allows(&facts));
        assert!(!f(json!({"tags": []})).allows(&facts));
        assert!(!f(json!({"not_tags": ["u.work"]})).allows(&facts));
        assert!(f(json!({"not_tags": ["m.lowpriority"]})).allows(&facts));
        let untagged = RoomFacts {
            tags: &BTreeSet::new(),
            ..facts
        };
        assert!(!f(json!({"tags": ["u.work"]})).allows(&untagged));
        assert!(f(json!({"not_tags": ["u.work"]})).allows(&untagged));
    }

    #[test]
    fn element_x_body_reads() {
        let body = json!({
            "conn_id": "room-list",
            "lists": {"all_rooms": {"ranges": [[0, 19]], "timeline_limit": 1,
                "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
                "filters": {}}},
            "extensions": {"receipts": {"enabled": true}, "to_device": {"enabled": true}}
        });
        let body = parse(&body).unwrap();
        let lists = body.lists.unwrap();
        assert_eq!(lists["all_rooms"].ranges, Some(vec![(0, 19)]));
        assert!(RoomExtension::on(
            body.extensions.unwrap().receipts.as_ref()
        ));
    }
}

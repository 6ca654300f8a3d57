//! Request classification: every request is put into exactly one [`Route`] once, up front,
//! from its method and path (never its body), before anything is read.
//!
//! A request is Local when its path names a room whose ID carries a local class prefix
//! (`!{prefix}…:{server_name}`, percent-decoded). Some requests cannot be decided from the path
//! alone and get a route that says what must be looked at next: `createRoom` (the body and
//! the requester decide), alias lookups and joins by alias (local if the alias is ours).
//! Unknown endpoints are always forwarded.
//!
//! A forwarded request carries its [`FollowUps`]: what hungryserv must do once Synapse has
//! accepted it (drop cached identities, carry a profile change or a deactivation into local
//! rooms, fetch push settings again, retry an appservice's delivery).
//!
//! May import: `config`.

mod follow_up;
#[cfg(test)]
mod spec_endpoints;

pub use follow_up::{Deactivation, DeviceChange, FollowUps, PushChange, SessionChange, follow_ups};

use std::borrow::Cow;
use std::sync::{Arc, RwLock};

use http::Method;
use ruma::OwnedUserId;

use crate::config::{RoomClass, RoutingConfig, ServeMode};

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Not ours: streamed to Synapse and back unchanged; then what its success obliges us to.
    Forward(FollowUps),
    /// hungryserv's own operations endpoints under `/_hungryserv/`, and our Synapse
    /// module's resources (unknown endpoints from outside: see [`SYNAPSE_MODULE_PREFIX`]).
    Ops,
    /// Names a local room of a served class: which, and whether the request joins it.
    Local(LocalRoom),
    /// Names a local room of a class whose `serve` is `off`.
    Unavailable {
        /// The class name.
        class: String,
    },
    /// A write (any method but GET/HEAD/OPTIONS) naming a local room of a class whose
    /// `serve` is `read_only`.
    ReadOnly {
        /// The class name.
        class: String,
    },
    /// `POST /createRoom`: local or Synapse by body and requester.
    CreateRoom,
    /// Names a room alias (`/join/#a`, `/knock/#a`, `GET /directory/room/#a`,
    /// `GET /v1/room_summary/#a`): local if the alias is one of ours.
    Alias {
        /// The decoded alias.
        alias: String,
        /// A directory lookup (`GET /directory/room/#a`), answered from the alias alone;
        /// otherwise the request is served as if it named the room ID.
        lookup: bool,
    },
    /// `PUT`/`DELETE /directory/room/{alias}`: local when the alias is (or is to point at)
    /// a local room.
    AliasWrite {
        /// The decoded alias.
        alias: String,
    },
    /// Synapse's admin room API (`/_synapse/admin/v1|v2/rooms/{roomId}…`) naming a local
    /// room, or `delete_status` of one of our deletions: answered by hungryserv for server
    /// admins, whatever the class's `serve` says.
    AdminRoom,
    /// hungryserv's own admin API (`/_hungryserv/admin/…`), for server admins.
    Admin,
    /// `GET /_synapse/admin/v1/rooms`: Synapse's list with the local rooms added.
    AdminRoomList,
    /// `GET /_synapse/admin/v1/event_reports`: Synapse's reports merged with the local ones.
    AdminEventReports,
    /// `GET /_synapse/admin/v1/users/{userId}/joined_rooms`: Synapse's list with the user's
    /// local rooms added.
    AdminUserJoinedRooms {
        /// The decoded user.
        user: OwnedUserId,
    },
    /// `GET /joined_rooms`: Synapse's answer plus local rooms.
    JoinedRooms,
    /// `GET /sync`: Synapse's sync merged with the local rooms'.
    Sync,
    /// `POST /unstable/org.matrix.simplified_msc3575/sync`: simplified sliding sync (MSC4186),
    /// Synapse's merged with the local rooms'.
    SlidingSync,
    /// `GET /notifications`: Synapse's list merged with the local rooms'.
    Notifications,
    /// `GET /initialSync` (deprecated): Synapse's answer plus the local rooms.
    InitialSync,
    /// `GET /keys/changes`: Synapse's answer plus device changes of local-room co-members.
    KeysChanges,
    /// `POST /user_directory/search`: Synapse's answer plus local-room co-members.
    UserDirectory,
    /// `POST /search`: Synapse's results merged with the local rooms'.
    Search,
    /// `GET /versions`: Synapse's answer plus the unstable features hungryserv implements.
    Versions,
    /// `GET /unstable/fi.mau.as_sync`: an appservice's websocket for its transactions.
    AppserviceSocket,
    /// `/_hungryserv/appservice/{id}/{path}`: Synapse talking to an appservice in relay mode.
    Relay {
        /// The decoded appservice ID.
        appservice: String,
        /// What follows the ID, still percent-encoded and without its leading `/`: the path
        /// Synapse asks the appservice for (`_matrix/app/v1/transactions/1`).
        path: String,
    },
}

impl Route {
    /// Short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Route::Forward(_) => "forward",
            Route::Ops => "ops",
            Route::AdminRoom => "admin_room",
            Route::Admin => "admin",
            Route::AdminRoomList
            | Route::AdminEventReports
            | Route::AdminUserJoinedRooms { .. } => "merge",
            Route::Local(_) => "local",
            Route::Unavailable { .. } => "unavailable",
            Route::ReadOnly { .. } => "read_only",
            Route::CreateRoom => "create_room",
            Route::Alias { .. } => "alias",
            Route::AliasWrite { .. } => "alias_write",
            Route::JoinedRooms
            | Route::Sync
            | Route::SlidingSync
            | Route::Versions
            | Route::Notifications
            | Route::InitialSync
            | Route::KeysChanges
            | Route::UserDirectory
            | Route::Search => "merge",
            Route::AppserviceSocket => "appservice_socket",
            Route::Relay { .. } => "relay",
        }
    }
}

/// The local room a request names, as its gate (`api::gone_refusal`) needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRoom {
    /// The room ID, decoded.
    pub room_id: String,
    /// The request joins or knocks (`/join/{roomId}`, `/knock/{roomId}`,
    /// `/rooms/{roomId}/join`): a blocked room refuses it with 403 rather than 404.
    pub joins: bool,
}

/// The room classes, ready for matching room IDs.
#[derive(Debug, Clone)]
pub struct RoomClasses {
    /// `:{server_name}`: every local room ID ends with it.
    suffix: String,
    classes: Vec<RoomClass>,
}

impl RoomClasses {
    pub fn new(routing: &RoutingConfig, server_name: &str) -> Self {
        Self {
            suffix: format!(":{server_name}"),
            classes: routing.classes.clone(),
        }
    }

    /// The class a room ID belongs to, if it is a local room ID.
    pub fn class_of(&self, room_id: &str) -> Option<&RoomClass> {
        let localpart = room_id
            .strip_prefix('!')?
            .strip_suffix(self.suffix.as_str())?;
        // Prefixes never start one another (validated), so at most one matches.
        self.classes
            .iter()
            .find(|class| localpart.starts_with(class.prefix.as_str()))
    }

    /// Whether a room is available to list and deliver: not a local room of a class whose
    /// `serve` is `off` (those rooms are left out of `/sync`, `/joined_rooms` and
    /// `/notifications` while the class is off, and come back when it is switched on).
    pub fn available(&self, room_id: &str) -> bool {
        self.class_of(room_id)
            .is_none_or(|class| class.serve != ServeMode::Off)
    }

    pub fn classes(&self) -> &[RoomClass] {
        &self.classes
    }

    /// The route of a request `method` about `room_id` by its class's `serve` (`Local`,
    /// `ReadOnly` or `Unavailable`); `None` when it is not a local room ID. Also what a
    /// room reached through an alias is judged by.
    pub fn room_route(&self, method: &Method, room_id: &str) -> Option<Route> {
        let local = || {
            Route::Local(LocalRoom {
                room_id: room_id.to_owned(),
                joins: false,
            })
        };
        self.class_of(room_id).map(|class| match class.serve {
            ServeMode::Local => local(),
            ServeMode::ReadOnly if is_read(method) => local(),
            ServeMode::ReadOnly => Route::ReadOnly {
                class: class.name.clone(),
            },
            ServeMode::Off => Route::Unavailable {
                class: class.name.clone(),
            },
        })
    }
}

fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The room classes in force, replaced whole by a reload: a request classifies against one
/// consistent snapshot ([`LiveClasses::current`]), never half an old and half a new file.
#[derive(Debug)]
pub struct LiveClasses {
    current: RwLock<Arc<RoomClasses>>,
    /// The routing configuration in force, for validating the next reload against.
    config: RwLock<Arc<RoutingConfig>>,
    server_name: String,
}

impl LiveClasses {
    pub fn new(routing: &RoutingConfig, server_name: &str) -> Self {
        Self {
            current: RwLock::new(Arc::new(RoomClasses::new(routing, server_name))),
            config: RwLock::new(Arc::new(routing.clone())),
            server_name: server_name.to_owned(),
        }
    }

    /// The classes in force now.
    pub fn current(&self) -> Arc<RoomClasses> {
        match self.current.read() {
            Ok(current) => current.clone(),
            // A writer panicked mid-swap; the value itself is a whole Arc either way.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The routing configuration in force now.
    pub fn config(&self) -> Arc<RoutingConfig> {
        match self.config.read() {
            Ok(config) => config.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts a validated routing configuration in force.
    pub fn replace(&self, routing: RoutingConfig) {
        let classes = Arc::new(RoomClasses::new(&routing, &self.server_name));
        match self.current.write() {
            Ok(mut current) => *current = classes,
            Err(poisoned) => *poisoned.into_inner() = classes,
        }
        match self.config.write() {
            Ok(mut config) => *config = Arc::new(routing),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(routing),
        }
    }
}

/// Percent-decodes a path segment (`+` stays `+` in paths).
pub fn decode_segment(segment: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(segment).decode_utf8_lossy()
}

/// A forwarded request without follow-ups.
pub const FORWARD: Route = Route::Forward(FollowUps::NONE);

impl Route {
    /// Whether the request goes to Synapse.
    pub fn is_forward(&self) -> bool {
        matches!(self, Route::Forward(_))
    }
}

/// Decides where a request goes from its method and raw (still percent-encoded) path.
pub fn classify(classes: &RoomClasses, method: &Method, path: &str) -> Route {
    match place(classes, method, path) {
        Route::Forward(_) => Route::Forward(follow_ups(method, path)),
        route => route,
    }
}

/// Where `deploy/synapse-module/hungryserv_synapse.py` serves hungryserv's questions.
pub const SYNAPSE_MODULE_PREFIX: &str = "/_synapse/client/hungryserv/";

/// [`classify`] without the follow-ups.
fn place(classes: &RoomClasses, method: &Method, path: &str) -> Route {
    if path.starts_with("/_hungryserv/admin/") {
        return Route::Admin;
    }
    if let Some(rest) = path.strip_prefix("/_hungryserv/appservice/") {
        let (appservice, path) = rest.split_once('/').unwrap_or((rest, ""));
        return Route::Relay {
            appservice: decode_segment(appservice).into_owned(),
            path: path.to_owned(),
        };
    }
    // Our Synapse module's resources answer about every bridge's users and rooms to any
    // appservice token, and a dynamic bridge's requests go out with the umbrella's: only
    // hungryserv itself may call them, so from outside they are unknown endpoints.
    if path == "/_hungryserv"
        || path.starts_with("/_hungryserv/")
        || path.starts_with(SYNAPSE_MODULE_PREFIX)
    {
        return Route::Ops;
    }
    if path == "/_synapse/admin/v1/rooms" && method == Method::GET {
        return Route::AdminRoomList;
    }
    if path == "/_synapse/admin/v1/event_reports" && method == Method::GET {
        return Route::AdminEventReports;
    }
    if method == Method::GET
        && let Some(user) = path
            .strip_prefix("/_synapse/admin/v1/users/")
            .and_then(|rest| rest.strip_suffix("/joined_rooms"))
        && let Ok(user) = OwnedUserId::try_from(decode_segment(user).as_ref())
    {
        return Route::AdminUserJoinedRooms { user };
    }
    if let Some(rest) = path.strip_prefix("/_synapse/admin/") {
        return admin_route(classes, rest);
    }
    let Some(rest) = path.strip_prefix("/_matrix/client/") else {
        return FORWARD;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    // segments[0] is the version (r0, v1, v3, unstable, unstable/<feature> prefixes…).
    // A room named right after the version (`/v3/rooms/{id}/…`, `/v1/room_summary/{id}`) or
    // after an unstable feature (`/unstable/com.beeper.backfill/rooms/{id}/…`) makes the
    // request local when the room is ours, as does `/user/{id}/rooms/{id}/…` (room account
    // data and tags).
    let named_room = match segments.as_slice() {
        [_, "rooms" | "room_summary", room, ..]
        | ["unstable", _, "rooms" | "room_summary", room, ..]
        | ["unstable", "im.nheko.summary", "summary", room]
        | [_, "user", _, "rooms", room, ..] => classes.room_route(method, &decode_segment(room)),
        _ => None,
    };
    if let Some(route) = named_room {
        return match (route, segments.as_slice()) {
            (Route::Local(room), [_, "rooms", _, "join"]) => Route::Local(LocalRoom {
                joins: true,
                ..room
            }),
            (route, _) => route,
        };
    }
    match segments.as_slice() {
        [_, "join" | "knock", target] => {
            let target = decode_segment(target);
            if target.starts_with('#') {
                Route::Alias {
                    alias: target.into_owned(),
                    lookup: false,
                }
            } else {
                match classes.room_route(method, &target) {
                    Some(Route::Local(room)) => Route::Local(LocalRoom {
                        joins: true,
                        ..room
                    }),
                    route => route.unwrap_or(FORWARD),
                }
            }
        }
        [_, "directory", "room", alias] if method == Method::GET => Route::Alias {
            alias: decode_segment(alias).into_owned(),
            lookup: true,
        },
        [_, "room_summary", target] | ["unstable", "im.nheko.summary", "summary", target]
            if method == Method::GET && decode_segment(target).starts_with('#') =>
        {
            Route::Alias {
                alias: decode_segment(target).into_owned(),
                lookup: false,
            }
        }
        [_, "directory", "room", alias] if method == Method::PUT || method == Method::DELETE => {
            Route::AliasWrite {
                alias: decode_segment(alias).into_owned(),
            }
        }
        [_, "createRoom"] if method == Method::POST => Route::CreateRoom,
        [_, "joined_rooms"] if method == Method::GET => Route::JoinedRooms,
        [_, "sync"] if method == Method::GET => Route::Sync,
        ["unstable", "org.matrix.simplified_msc3575", "sync"] if method == Method::POST => {
            Route::SlidingSync
        }
        [_, "notifications"] if method == Method::GET => Route::Notifications,
        [_, "initialSync"] if method == Method::GET => Route::InitialSync,
        [_, "keys", "changes"] if method == Method::GET => Route::KeysChanges,
        [_, "user_directory", "search"] if method == Method::POST => Route::UserDirectory,
        [_, "search"] if method == Method::POST => Route::Search,
        ["versions"] if method == Method::GET => Route::Versions,
        ["unstable", "fi.mau.as_sync"] if method == Method::GET => Route::AppserviceSocket,
        _ => FORWARD,
    }
}

/// How hungryserv's room deletion IDs start (`rooms::deletion` makes them; the same string
/// there, checked by a test).
const DELETE_ID_PREFIX: &str = "hsdel_";

/// `/_synapse/admin/{rest}`: local when it names a local room or one of our deletions.
fn admin_route(classes: &RoomClasses, rest: &str) -> Route {
    let segments: Vec<&str> = rest.split('/').collect();
    let ours = match segments.as_slice() {
        ["v2", "rooms", "delete_status", delete_id] => {
            decode_segment(delete_id).starts_with(DELETE_ID_PREFIX)
        }
        ["v1" | "v2", "rooms", room, ..] | ["v1", "join", room] => {
            classes.class_of(&decode_segment(room)).is_some()
        }
        _ => false,
    };
    if ours { Route::AdminRoom } else { FORWARD }
}

/// The path with its variable parts replaced by placeholders, for logs and metric labels:
/// Matrix IDs (by their sigil, raw or percent-encoded) and the transaction ID of sends and
/// redactions. The query string is never part of it (it may hold `access_token`).
pub fn path_template(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous: [&str; 2] = ["", ""];
    for segment in path.split('/').skip(1) {
        out.push('/');
        let placeholder = match segment.as_bytes() {
            [b'!', ..] => Some("{roomId}"),
            [b'@', ..] => Some("{userId}"),
            [b'$', ..] => Some("{eventId}"),
            [b'#', ..] => Some("{roomAlias}"),
            _ if starts_with_encoded(segment, "21") => Some("{roomId}"),
            _ if starts_with_encoded(segment, "40") => Some("{userId}"),
            _ if starts_with_encoded(segment, "24") => Some("{eventId}"),
            _ if starts_with_encoded(segment, "23") => Some("{roomAlias}"),
            // `send/{type}/{txnId}`, `sendToDevice/{type}/{txnId}`, `redact/{eventId}/{txnId}`
            _ if matches!(previous[0], "send" | "sendToDevice" | "redact") => Some("{txnId}"),
            _ => None,
        };
        out.push_str(placeholder.unwrap_or(segment));
        previous = [previous[1], segment];
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

fn starts_with_encoded(segment: &str, hex: &str) -> bool {
    let bytes = segment.as_bytes();
    bytes.first() == Some(&b'%')
        && bytes
            .get(1..3)
            .is_some_and(|digits| digits.eq_ignore_ascii_case(hex.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CreateMatch, CreateTarget};

    pub(super) fn classes() -> RoomClasses {
        let class = |name: &str, prefix: &str, serve| RoomClass {
            name: name.into(),
            prefix: prefix.into(),
            serve,
            create: CreateTarget::Local,
            matches: CreateMatch {
                all: true,
                ..CreateMatch::default()
            },
        };
        RoomClasses::new(
            &RoutingConfig {
                classes: vec![
                    class("bridge", "hs_", ServeMode::Local),
                    class("old", "old_", ServeMode::Off),
                    class("ro", "ro_", ServeMode::ReadOnly),
                ],
            },
            "example.org",
        )
    }

    #[test]
    fn classification() {
        let local = |room: &str| {
            Route::Local(LocalRoom {
                room_id: room.into(),
                joins: false,
            })
        };
        let join = |room: &str| {
            Route::Local(LocalRoom {
                room_id: room.into(),
                joins: true,
            })
        };
        let off = Route::Unavailable {
            class: "old".into(),
        };
        let cases = [
            (Method::GET, "/_hungryserv/health", Route::Ops),
            (
                Method::PUT,
                "/_hungryserv/appservice/tele%2Fgram/_matrix/app/v1/transactions/7",
                Route::Relay {
                    appservice: "tele/gram".into(),
                    path: "_matrix/app/v1/transactions/7".into(),
                },
            ),
            (
                Method::POST,
                "/_hungryserv/appservice/wa",
                Route::Relay {
                    appservice: "wa".into(),
                    path: String::new(),
                },
            ),
            (
                Method::POST,
                "/_hungryserv/admin/v1/routing/reload",
                Route::Admin,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/rooms/!ro_x:example.org/messages",
                local("!ro_x:example.org"),
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/rooms/!ro_x:example.org/send/m.room.message/1",
                Route::ReadOnly { class: "ro".into() },
            ),
            (
                Method::POST,
                "/_matrix/client/v3/join/!ro_x:example.org",
                Route::ReadOnly { class: "ro".into() },
            ),
            (Method::GET, "/_hungryserv", Route::Ops),
            (Method::GET, "/_hungryservx/health", FORWARD),
            (
                Method::POST,
                "/_synapse/client/hungryserv/v1/appservice_rooms",
                Route::Ops,
            ),
            (
                Method::POST,
                "/_synapse/client/hungryserv/v1/msc3202_key_counts",
                Route::Ops,
            ),
            (Method::GET, "/_synapse/client/hungryservx", FORWARD),
            (Method::GET, "/_matrix/client/versions", Route::Versions),
            (
                Method::POST,
                "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                Route::SlidingSync,
            ),
            (
                Method::GET,
                "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
                FORWARD,
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/1",
                FORWARD,
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/rooms/!hs_abc:example.org/send/m.room.message/1",
                local("!hs_abc:example.org"),
            ),
            (
                Method::PUT,
                "/_matrix/client/r0/rooms/%21hs_abc%3Aexample.org/state/m.room.name/",
                local("!hs_abc:example.org"),
            ),
            (
                Method::GET,
                "/_matrix/client/v1/rooms/%21hs_abc%3Aexample.org/relations/%24e",
                local("!hs_abc:example.org"),
            ),
            // Our prefix on another server, or a v12 hash ID without a server: not ours.
            (
                Method::GET,
                "/_matrix/client/v3/rooms/!hs_abc:other.org/state",
                FORWARD,
            ),
            (
                Method::POST,
                "/_matrix/client/unstable/com.beeper.backfill/rooms/!hs_abc:example.org/batch_send",
                local("!hs_abc:example.org"),
            ),
            (
                Method::GET,
                "/_matrix/client/unstable/im.nheko.summary/rooms/%21hs_abc%3Aexample.org/summary",
                local("!hs_abc:example.org"),
            ),
            (
                Method::GET,
                "/_matrix/client/v1/room_summary/!hs_abc:example.org",
                local("!hs_abc:example.org"),
            ),
            (
                Method::GET,
                "/_matrix/client/v1/room_summary/!abc:example.org",
                FORWARD,
            ),
            (
                Method::GET,
                "/_matrix/client/unstable/im.nheko.summary/summary/%21hs_abc%3Aexample.org",
                local("!hs_abc:example.org"),
            ),
            (Method::POST, "/_matrix/client/v3/search", Route::Search),
            (Method::GET, "/_matrix/client/v3/search", FORWARD),
            (
                Method::GET,
                "/_synapse/admin/v1/event_reports",
                Route::AdminEventReports,
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/user/@a:example.org/rooms/!hs_abc:example.org/account_data/m.x",
                local("!hs_abc:example.org"),
            ),
            (
                Method::DELETE,
                "/_matrix/client/v3/user/%40a%3Aexample.org/rooms/%21hs_abc%3Aexample.org/tags/u.x",
                local("!hs_abc:example.org"),
            ),
            (
                Method::GET,
                "/_matrix/client/v3/user/@a:example.org/rooms/!abc:example.org/tags",
                FORWARD,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/user/@a:example.org/account_data/m.direct",
                FORWARD,
            ),
            (
                Method::GET,
                "/_matrix/client/unstable/org.matrix.msc2432/rooms/!abc:example.org/aliases",
                FORWARD,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/rooms/!hs_abc/state",
                FORWARD,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/rooms/!old_x:example.org/messages",
                off.clone(),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/join/!hs_abc:example.org",
                join("!hs_abc:example.org"),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/knock/%21hs_abc%3Aexample.org",
                join("!hs_abc:example.org"),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/rooms/%21hs_abc%3Aexample.org/join",
                join("!hs_abc:example.org"),
            ),
            (
                Method::POST,
                "/_matrix/client/unstable/com.beeper.yeet/rooms/!hs_a:example.org/delete",
                local("!hs_a:example.org"),
            ),
            // An event type or state key named `join` does not make a send a join.
            (
                Method::PUT,
                "/_matrix/client/v3/rooms/!hs_abc:example.org/send/join/1",
                local("!hs_abc:example.org"),
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/rooms/!hs_abc:example.org/state/m.x/join",
                local("!hs_abc:example.org"),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/join/%23chat%3Aexample.org",
                Route::Alias {
                    alias: "#chat:example.org".into(),
                    lookup: false,
                },
            ),
            (
                Method::POST,
                "/_matrix/client/v3/knock/!old_x:example.org",
                off,
            ),
            (
                Method::POST,
                "/_matrix/client/v3/join/!abc:example.org",
                FORWARD,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/directory/room/%23a%3Aexample.org",
                Route::Alias {
                    alias: "#a:example.org".into(),
                    lookup: true,
                },
            ),
            (
                Method::GET,
                "/_matrix/client/v1/room_summary/%23a%3Aexample.org",
                Route::Alias {
                    alias: "#a:example.org".into(),
                    lookup: false,
                },
            ),
            (
                Method::GET,
                "/_matrix/client/unstable/im.nheko.summary/summary/%23a%3Aexample.org",
                Route::Alias {
                    alias: "#a:example.org".into(),
                    lookup: false,
                },
            ),
            (
                Method::GET,
                "/_matrix/client/v1/room_summary/%21hs_abc%3Aexample.org",
                local("!hs_abc:example.org"),
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/directory/room/%23a%3Aexample.org",
                Route::AliasWrite {
                    alias: "#a:example.org".into(),
                },
            ),
            (
                Method::DELETE,
                "/_matrix/client/v3/directory/room/%23a%3Aexample.org",
                Route::AliasWrite {
                    alias: "#a:example.org".into(),
                },
            ),
            (
                Method::POST,
                "/_matrix/client/v3/directory/room/%23a%3Aexample.org",
                FORWARD,
            ),
            (
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Route::CreateRoom,
            ),
            (Method::GET, "/_matrix/client/v3/createRoom", FORWARD),
            (
                Method::GET,
                "/_matrix/client/v3/joined_rooms",
                Route::JoinedRooms,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/notifications",
                Route::Notifications,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/initialSync",
                Route::InitialSync,
            ),
            (Method::POST, "/_matrix/client/v3/initialSync", FORWARD),
            (
                Method::GET,
                "/_matrix/client/v3/keys/changes",
                Route::KeysChanges,
            ),
            (Method::POST, "/_matrix/client/v3/keys/changes", FORWARD),
            (
                Method::POST,
                "/_matrix/client/v3/user_directory/search",
                Route::UserDirectory,
            ),
            (
                Method::GET,
                "/_matrix/client/v3/user_directory/search",
                FORWARD,
            ),
            (
                Method::GET,
                "/_synapse/admin/v1/rooms",
                Route::AdminRoomList,
            ),
            (
                Method::GET,
                "/_synapse/admin/v1/users/%40a%3Aexample.org/joined_rooms",
                Route::AdminUserJoinedRooms {
                    user: OwnedUserId::try_from("@a:example.org").unwrap(),
                },
            ),
            (
                Method::GET,
                "/_synapse/admin/v1/users/not-a-user/joined_rooms",
                FORWARD,
            ),
            (
                Method::POST,
                "/_synapse/admin/v1/join/%21hs_abc%3Aexample.org",
                Route::AdminRoom,
            ),
            (
                Method::POST,
                "/_synapse/admin/v1/join/!abc:example.org",
                FORWARD,
            ),
            (Method::POST, "/_synapse/admin/v1/rooms", FORWARD),
            (
                Method::DELETE,
                "/_synapse/admin/v2/rooms/%21hs_abc%3Aexample.org",
                Route::AdminRoom,
            ),
            (
                Method::DELETE,
                "/_synapse/admin/v1/rooms/!old_x:example.org",
                Route::AdminRoom,
            ),
            (
                Method::GET,
                "/_synapse/admin/v1/rooms/!abc:example.org/members",
                FORWARD,
            ),
            (
                Method::GET,
                "/_synapse/admin/v2/rooms/delete_status/hsdel_abc",
                Route::AdminRoom,
            ),
            (
                Method::GET,
                "/_synapse/admin/v2/rooms/delete_status/abcdef",
                FORWARD,
            ),
            (
                Method::GET,
                "/_synapse/admin/v2/rooms/!hs_abc:example.org/delete_status",
                Route::AdminRoom,
            ),
            (
                Method::GET,
                "/_synapse/admin/v1/users/@a:example.org/admin",
                FORWARD,
            ),
            (Method::GET, "/", FORWARD),
        ];
        let classes = classes();
        for (method, path, want) in cases {
            assert_eq!(classify(&classes, &method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn delete_ids_are_recognised() {
        assert_eq!(DELETE_ID_PREFIX, crate::rooms::deletion::DELETE_ID_PREFIX);
    }

    #[test]
    fn templates() {
        let cases = [
            ("/", "/"),
            ("/_matrix/client/versions", "/_matrix/client/versions"),
            (
                "/_matrix/client/v3/rooms/!abc:example.org/send/m.room.message/txn1",
                "/_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}",
            ),
            (
                "/_matrix/client/v3/rooms/%21abc%3Aexample.org/redact/%24ev/t2",
                "/_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}",
            ),
            (
                "/_matrix/client/v3/profile/@alice:hs",
                "/_matrix/client/v3/profile/{userId}",
            ),
            (
                "/_matrix/client/v3/directory/room/%23a:hs",
                "/_matrix/client/v3/directory/room/{roomAlias}",
            ),
            (
                "/_matrix/client/v3/sendToDevice/m.x/abc",
                "/_matrix/client/v3/sendToDevice/m.x/{txnId}",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(path_template(path), want, "{path}");
        }
    }
}

//! What a forwarded request obliges hungryserv to do once Synapse has accepted it (answered
//! 2xx): decided from the method and path by [`follow_ups`], as part of classification, so no
//! later step parses the path again. Synapse stays the one that judges the request; these are
//! only the copies and caches of ours that its success makes stale.
//!
//! May import: nothing of the crate.

use http::Method;
use ruma::{OwnedDeviceId, OwnedUserId};

/// Work after Synapse accepted a forwarded request. `FollowUps::NONE` for most requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FollowUps {
    /// Cached identities the request ended.
    pub session: Option<SessionChange>,
    /// Someone's displayname or avatar changed (the user the path names: the requester's own,
    /// or another's changed by a server admin): their local rooms get new member events.
    pub profile: Option<OwnedUserId>,
    /// Someone's account was deactivated: they leave their local rooms.
    pub deactivation: Option<Deactivation>,
    /// Push rules or pushers changed: our copy is fetched again.
    pub push: Option<PushChange>,
    /// `POST /_matrix/client/v1/appservice/{id}/ping` succeeded: that appservice's delivery
    /// is retried at once (the decoded ID).
    pub ping: Option<String>,
    /// Someone's devices or cross-signing keys changed: recorded for the users who share
    /// local rooms with them (`crate::devices`).
    pub devices: Option<DeviceChange>,
}

impl FollowUps {
    /// Nothing to do.
    pub const NONE: FollowUps = FollowUps {
        session: None,
        profile: None,
        deactivation: None,
        push: None,
        ping: None,
        devices: None,
    };

    /// Whether a follow-up needs the requester's access token.
    pub fn need_token(&self) -> bool {
        matches!(
            self.session,
            Some(SessionChange::Token | SessionChange::UserOfToken)
        ) || self.profile.is_some()
            || self.deactivation == Some(Deactivation::Requester)
            || self.push.is_some()
    }
}

/// Which cached identities a request ends, once Synapse has accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionChange {
    /// `/logout`: this token.
    Token,
    /// `/logout/all`, `/account/password`, `/account/deactivate`, the user's own
    /// `DELETE /devices/{deviceId}` and `/delete_devices`: every token of the requester's user.
    /// (Which cached token belongs to which deleted device is not known before whoami, so all
    /// of the user's are dropped; they are simply resolved again.)
    UserOfToken,
    /// Synapse's admin API writing about a user (`v1/deactivate/{userId}`,
    /// `v2/users/{userId}` — deactivation, password, admin flag —, `reset_password`,
    /// `delete_devices` and the rest under `v1|v2/users/{userId}/`): every token of that
    /// user, and every admin answer.
    User(OwnedUserId),
    /// `DELETE /_synapse/admin/v2/users/{userId}/devices/{deviceId}`: that device's tokens.
    Device(OwnedUserId, OwnedDeviceId),
    /// `POST /refresh`: Synapse may have deleted earlier access tokens of the device (the
    /// predecessor's, or the successor of a refresh token used twice); the device's tokens
    /// other than the new one are dropped and asked about again.
    Refresh,
}

/// Whose account a request deactivates, once Synapse accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deactivation {
    /// `POST /account/deactivate`: the requester's (known only before the request, since
    /// it ends the token).
    Requester,
    /// `POST /_synapse/admin/v1/deactivate/{userId}`: that user's.
    User(OwnedUserId),
    /// `PUT /_synapse/admin/v2/users/{userId}`: that user's, if Synapse's answer (the user's
    /// record) says `deactivated: true`.
    IfAnswerSays(OwnedUserId),
}

/// Which push settings a request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushChange {
    /// `PUT`/`DELETE /pushrules/...` (including `enabled` and `actions`).
    Rules,
    /// `POST /pushers/set`.
    Pushers,
    /// `PUT /user/{userId}/account_data/m.ignored_user_list` (local rooms hide what ignored
    /// users send).
    Ignored,
}

/// Whose devices or cross-signing keys a request changes, once Synapse accepts it (the
/// triggers Synapse itself announces to room-mates: `handlers/device.py`, `e2e_keys.py`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// The requester's: cross-signing keys, signatures, logouts, device updates and deletion,
    /// password changes and deactivation (they delete devices).
    Requester,
    /// The requester's, if the body carries `device_keys` (`POST /keys/upload`; one-time and
    /// fallback keys alone change no device list).
    KeysUpload,
    /// The user Synapse's answer names, if it made a device (`POST /login`, `/register`).
    NewSession,
    /// The user named in the path (Synapse's admin device API).
    Admin(OwnedUserId),
}

/// The follow-ups of a forwarded request to `path` (raw, percent-encoded).
pub fn follow_ups(method: &Method, path: &str) -> FollowUps {
    if let Some(rest) = path.strip_prefix("/_synapse/admin/") {
        let (profile, deactivation) = admin_account_change(method, rest);
        return FollowUps {
            session: admin_session_change(method, rest),
            devices: admin_device_change(method, rest),
            profile,
            deactivation,
            ..FollowUps::NONE
        };
    }
    let Some(rest) = path.strip_prefix("/_matrix/client/") else {
        return FollowUps::NONE;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut follow_ups = FollowUps::NONE;
    follow_ups.devices = device_change(method, &segments);
    match (method.as_str(), segments.as_slice()) {
        ("POST", [_, "logout"]) => follow_ups.session = Some(SessionChange::Token),
        ("POST", [_, "refresh"]) => follow_ups.session = Some(SessionChange::Refresh),
        ("POST", [_, "account", "deactivate"]) => {
            follow_ups.session = Some(SessionChange::UserOfToken);
            follow_ups.deactivation = Some(Deactivation::Requester);
        }
        ("POST", [_, "logout", "all"] | [_, "account", "password"])
        | ("POST", [_, "delete_devices"])
        | ("DELETE", [_, "devices", _]) => follow_ups.session = Some(SessionChange::UserOfToken),
        // Synapse's `ProfileFieldRestServlet` (MSC4133 included): a DELETE of displayname or
        // avatar_url sets it to "" and propagates; custom fields never reach member events.
        ("PUT" | "PATCH", [_, "profile", user])
        | (
            "PUT" | "DELETE",
            [_, "profile", user, "displayname" | "avatar_url"]
            | [
                "unstable",
                "uk.tcpip.msc4133",
                "profile",
                user,
                "displayname" | "avatar_url",
            ],
        ) => follow_ups.profile = decode_user(user),
        ("PUT" | "DELETE", [_, "pushrules", ..]) => follow_ups.push = Some(PushChange::Rules),
        ("POST", [_, "pushers", "set"]) => follow_ups.push = Some(PushChange::Pushers),
        ("PUT", [_, "user", _, "account_data", "m.ignored_user_list"]) => {
            follow_ups.push = Some(PushChange::Ignored);
        }
        ("POST", ["v1", "appservice", id, "ping"]) => {
            follow_ups.ping = Some(super::decode_segment(id).into_owned());
        }
        _ => {}
    }
    follow_ups
}

/// A percent-encoded path segment naming a user.
fn decode_user(segment: &str) -> Option<OwnedUserId> {
    let user = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()?;
    OwnedUserId::try_from(user.as_ref()).ok()
}

/// Synapse's admin user API (`/_synapse/admin/{rest}`): whose profile it may change (a
/// `v2/users` PUT with `displayname` or `avatar_url` propagates as the client API does) and
/// whose account it may deactivate.
fn admin_account_change(
    method: &Method,
    rest: &str,
) -> (Option<OwnedUserId>, Option<Deactivation>) {
    let segments: Vec<&str> = rest.split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("PUT", ["v2", "users", user]) => match decode_user(user) {
            Some(user) => (Some(user.clone()), Some(Deactivation::IfAnswerSays(user))),
            None => (None, None),
        },
        ("POST", ["v1", "deactivate", user]) => (None, decode_user(user).map(Deactivation::User)),
        _ => (None, None),
    }
}

/// The device change of a client-server request (`segments` start with the version).
fn device_change(method: &Method, segments: &[&str]) -> Option<DeviceChange> {
    match (method.as_str(), segments) {
        ("POST", [_, "keys", "upload"] | [_, "keys", "upload", _]) => Some(DeviceChange::KeysUpload),
        (
            "POST",
            [_, "keys", "device_signing", "upload"]
            | [_, "keys", "signatures", "upload"]
            | [_, "logout"]
            | [_, "logout", "all"]
            | [_, "delete_devices"]
            // Both log the user's other devices out (`logout_devices` defaults to true).
            | [_, "account", "password"]
            | [_, "account", "deactivate"],
        )
        | ("DELETE" | "PUT", [_, "devices", _]) => Some(DeviceChange::Requester),
        ("POST", [_, "login"] | [_, "register"]) => Some(DeviceChange::NewSession),
        _ => None,
    }
}

/// Synapse's admin device API (`/_synapse/admin/{rest}`): the user whose devices it changes.
fn admin_device_change(method: &Method, rest: &str) -> Option<DeviceChange> {
    let segments: Vec<&str> = rest.split('/').collect();
    let user = match (method.as_str(), segments.as_slice()) {
        ("DELETE" | "PUT", ["v2", "users", user, "devices", _])
        | ("POST", ["v2", "users", user, "delete_devices" | "devices"]) => user,
        _ => return None,
    };
    let user = percent_encoding::percent_decode_str(user)
        .decode_utf8()
        .ok()?;
    OwnedUserId::try_from(user.as_ref())
        .ok()
        .map(DeviceChange::Admin)
}

/// Synapse's admin API (`/_synapse/admin/{rest}`): a write about a user ends that user's
/// cached identities (cheap to resolve again, and it covers every way the admin API revokes
/// or demotes: deactivation, password resets with `logout_devices`, device deletion, the
/// admin flag).
fn admin_session_change(method: &Method, rest: &str) -> Option<SessionChange> {
    if *method == Method::GET || *method == Method::HEAD {
        return None;
    }
    let decode = |segment: &str| {
        percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    let user = |segment: &str| decode(segment).and_then(|u| OwnedUserId::try_from(u).ok());
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["v2", "users", user_id, "devices", device_id] if *method == Method::DELETE => Some(
            SessionChange::Device(user(user_id)?, OwnedDeviceId::from(decode(device_id)?)),
        ),
        ["v1", "deactivate" | "reset_password", user_id] | ["v1" | "v2", "users", user_id, ..] => {
            Some(SessionChange::User(user(user_id)?))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every follow-up, and near misses that have none.
    #[rustfmt::skip] // one row per line: the table reads as a table
    #[test]
    fn follow_ups_table() {
        use SessionChange::{Device, Refresh, Token, User, UserOfToken};
        let alice = || OwnedUserId::try_from("@a:x").unwrap();
        let session = |change| FollowUps { session: Some(change), ..FollowUps::NONE };
        let push = |change| FollowUps { push: Some(change), ..FollowUps::NONE };
        let profile = || FollowUps { profile: Some(alice()), ..FollowUps::NONE };
        let ping = |id: &str| FollowUps { ping: Some(id.to_owned()), ..FollowUps::NONE };
        let none = || FollowUps::NONE;
        let cases = [
            ("POST", "/_matrix/client/v3/logout", session(Token)),
            ("POST", "/_matrix/client/v3/refresh", session(Refresh)),
            ("POST", "/_matrix/client/v1/refresh", session(Refresh)),
            ("POST", "/_matrix/client/r0/logout/all", session(UserOfToken)),
            ("POST", "/_matrix/client/v3/account/password", session(UserOfToken)),
            ("POST", "/_matrix/client/v3/account/deactivate", FollowUps { deactivation: Some(Deactivation::Requester), ..session(UserOfToken) }),
            ("POST", "/_matrix/client/v3/delete_devices", session(UserOfToken)),
            ("DELETE", "/_matrix/client/v3/devices/ABCDEF", session(UserOfToken)),
            ("GET", "/_matrix/client/v3/logout", none()),
            ("POST", "/_matrix/client/v3/login", none()),
            ("GET", "/_matrix/client/v3/devices/ABCDEF", none()),
            ("POST", "/_synapse/admin/v1/deactivate/%40a%3Ax", FollowUps { deactivation: Some(Deactivation::User(alice())), ..session(User(alice())) }),
            ("PUT", "/_synapse/admin/v2/users/@a:x", FollowUps { profile: Some(alice()), deactivation: Some(Deactivation::IfAnswerSays(alice())), ..session(User(alice())) }),
            ("POST", "/_synapse/admin/v1/reset_password/@a:x", session(User(alice()))),
            ("POST", "/_synapse/admin/v2/users/@a:x/delete_devices", session(User(alice()))),
            ("DELETE", "/_synapse/admin/v2/users/@a:x/devices/DEV", session(Device(alice(), "DEV".into()))),
            ("DELETE", "/_synapse/admin/v2/users/@a:x/devices/DEV%2F1", session(Device(alice(), "DEV/1".into()))),
            ("DELETE", "/_synapse/admin/v2/users/not-a-user/devices/D", none()),
            ("POST", "/_synapse/admin/v1/deactivate/not-a-user", none()),
            ("GET", "/_synapse/admin/v2/users/@a:x", none()),
            ("DELETE", "/_synapse/admin/v1/rooms/!r:x", none()),
            ("PUT", "/_matrix/client/v3/profile/@a:x/displayname", profile()),
            ("PUT", "/_matrix/client/r0/profile/@a:x/avatar_url", profile()),
            ("PATCH", "/_matrix/client/v3/profile/@a:x", profile()),
            ("PUT", "/_matrix/client/v3/profile/@a:x", profile()),
            ("DELETE", "/_matrix/client/v3/profile/%40a%3Ax/displayname", profile()),
            ("PUT", "/_matrix/client/unstable/uk.tcpip.msc4133/profile/@a:x/avatar_url", profile()),
            ("GET", "/_matrix/client/v3/profile/@a:x/displayname", none()),
            ("PUT", "/_matrix/client/v3/profile/@a:x/m.custom", none()),
            ("PUT", "/_matrix/client/unstable/uk.tcpip.msc4133/profile/@a:x/m.custom", none()),
            ("DELETE", "/_matrix/client/v3/profile/@a:x/m.custom", none()),
            ("PUT", "/_matrix/client/v3/profile/not-a-user/displayname", none()),
            ("PUT", "/_matrix/client/v3/pushrules/global/room/!a:x", push(PushChange::Rules)),
            ("DELETE", "/_matrix/client/r0/pushrules/global/override/x", push(PushChange::Rules)),
            ("PUT", "/_matrix/client/v3/pushrules/global/override/x/enabled", push(PushChange::Rules)),
            ("GET", "/_matrix/client/v3/pushrules/", none()),
            ("POST", "/_matrix/client/v3/pushers/set", push(PushChange::Pushers)),
            ("GET", "/_matrix/client/v3/pushers", none()),
            ("PUT", "/_matrix/client/v3/user/@a:x/account_data/m.ignored_user_list", push(PushChange::Ignored)),
            ("GET", "/_matrix/client/v3/user/@a:x/account_data/m.ignored_user_list", none()),
            ("PUT", "/_matrix/client/v3/user/@a:x/account_data/m.direct", none()),
            ("POST", "/_matrix/client/v1/appservice/tele%20gram/ping", ping("tele gram")),
            ("GET", "/_matrix/client/v1/appservice/telegram/ping", none()),
            ("POST", "/_matrix/client/v1/appservice/a/b/ping", none()),
        ];
        for (method, path, want) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            // Device changes have their own table below.
            let got = FollowUps { devices: None, ..follow_ups(&method, path) };
            assert_eq!(got, want, "{method} {path}");
        }
    }

    /// Every request that changes someone's device list, and near misses.
    #[rustfmt::skip] // one row per line: the table reads as a table
    #[test]
    fn device_changes_table() {
        use DeviceChange::{Admin, KeysUpload, NewSession, Requester};
        let alice = || OwnedUserId::try_from("@a:x").unwrap();
        let cases = [
            ("POST", "/_matrix/client/v3/keys/upload", Some(KeysUpload)),
            ("POST", "/_matrix/client/r0/keys/upload/DEV", Some(KeysUpload)),
            ("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(Requester)),
            ("POST", "/_matrix/client/unstable/keys/signatures/upload", Some(Requester)),
            ("POST", "/_matrix/client/v3/logout", Some(Requester)),
            ("POST", "/_matrix/client/v3/logout/all", Some(Requester)),
            ("DELETE", "/_matrix/client/v3/devices/ABC", Some(Requester)),
            ("PUT", "/_matrix/client/v3/devices/ABC", Some(Requester)),
            ("POST", "/_matrix/client/v3/delete_devices", Some(Requester)),
            ("POST", "/_matrix/client/v3/account/password", Some(Requester)),
            ("POST", "/_matrix/client/v3/account/deactivate", Some(Requester)),
            ("POST", "/_matrix/client/v3/login", Some(NewSession)),
            ("POST", "/_matrix/client/v3/register", Some(NewSession)),
            ("DELETE", "/_synapse/admin/v2/users/%40a%3Ax/devices/D", Some(Admin(alice()))),
            ("PUT", "/_synapse/admin/v2/users/@a:x/devices/D", Some(Admin(alice()))),
            ("POST", "/_synapse/admin/v2/users/@a:x/delete_devices", Some(Admin(alice()))),
            ("POST", "/_synapse/admin/v2/users/@a:x/devices", Some(Admin(alice()))),
            ("DELETE", "/_synapse/admin/v2/users/not-a-user/devices/D", None),
            ("GET", "/_synapse/admin/v2/users/@a:x/devices", None),
            ("GET", "/_matrix/client/v3/devices/ABC", None),
            ("GET", "/_matrix/client/v3/login", None),
            ("POST", "/_matrix/client/v3/keys/query", None),
            ("POST", "/_matrix/client/v3/keys/claim", None),
            ("GET", "/_matrix/client/v3/keys/changes", None),
        ];
        for (method, path, want) in cases {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(follow_ups(&method, path).devices, want, "{method} {path}");
        }
    }
}

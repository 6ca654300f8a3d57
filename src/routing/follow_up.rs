//! What a forwarded request obliges hungryserv to do once Synapse has accepted it (answered
//! 2xx): decided from the method and path by [`follow_ups`], as part of classification, so no
//! later step parses the path again. Synapse stays the one that judges the request; these are
//! only the copies and caches of ours that its success makes stale.
//!
//! May import: nothing of the crate.

use http::Method;

/// Work after Synapse accepted a forwarded request. `FollowUps::NONE` for most requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FollowUps {
    /// Cached identities the request ended.
    pub session: Option<SessionChange>,
    /// The requester's profile changed: local rooms get new member events.
    pub profile: bool,
    /// Push rules or pushers changed: our copy is fetched again.
    pub push: Option<PushChange>,
    /// `POST /_matrix/client/v1/appservice/{id}/ping` succeeded: that appservice's delivery
    /// is retried at once (the decoded ID).
    pub ping: Option<String>,
}

impl FollowUps {
    /// Nothing to do.
    pub const NONE: FollowUps = FollowUps {
        session: None,
        profile: false,
        push: None,
        ping: None,
    };

    /// Whether a follow-up needs the requester's access token.
    pub fn need_token(&self) -> bool {
        self.session.is_some() || self.profile || self.push.is_some()
    }
}

/// Which cached identities a session change ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionChange {
    /// The request's own token (logout).
    Token,
    /// Every token of the requester: logout/all, a password change, deactivation, deleting
    /// devices. We cannot tell which cached token belonged to which device, so all of the
    /// user's are dropped (they are simply resolved again).
    User,
}

/// Which push settings a request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushChange {
    /// `PUT`/`DELETE /pushrules/...` (including `enabled` and `actions`).
    Rules,
    /// `POST /pushers/set`.
    Pushers,
}

/// The follow-ups of a forwarded request to `path` (raw, percent-encoded).
pub fn follow_ups(method: &Method, path: &str) -> FollowUps {
    let Some(rest) = path.strip_prefix("/_matrix/client/") else {
        return FollowUps::NONE;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let mut follow_ups = FollowUps::NONE;
    match (method.as_str(), segments.as_slice()) {
        ("POST", [_, "logout"]) => follow_ups.session = Some(SessionChange::Token),
        ("POST", [_, "logout", "all"] | [_, "account", "password" | "deactivate"])
        | ("POST", [_, "delete_devices"])
        | ("DELETE", [_, "devices", _]) => follow_ups.session = Some(SessionChange::User),
        ("PUT" | "PATCH", [_, "profile", _] | [_, "profile", _, "displayname" | "avatar_url"]) => {
            follow_ups.profile = true;
        }
        ("PUT" | "DELETE", [_, "pushrules", ..]) => follow_ups.push = Some(PushChange::Rules),
        ("POST", [_, "pushers", "set"]) => follow_ups.push = Some(PushChange::Pushers),
        ("POST", ["v1", "appservice", id, "ping"]) => {
            follow_ups.ping = Some(super::decode_segment(id).into_owned());
        }
        _ => {}
    }
    follow_ups
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every follow-up, and near misses that have none.
    #[test]
    fn follow_ups_table() {
        let session = |change| FollowUps {
            session: Some(change),
            ..FollowUps::NONE
        };
        let push = |change| FollowUps {
            push: Some(change),
            ..FollowUps::NONE
        };
        let profile = FollowUps {
            profile: true,
            ..FollowUps::NONE
        };
        let ping = |id: &str| FollowUps {
            ping: Some(id.to_owned()),
            ..FollowUps::NONE
        };
        let (get, put, post, delete, patch) = (
            Method::GET,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::PATCH,
        );
        let cases = [
            (
                &post,
                "/_matrix/client/v3/logout",
                session(SessionChange::Token),
            ),
            (
                &post,
                "/_matrix/client/r0/logout/all",
                session(SessionChange::User),
            ),
            (
                &post,
                "/_matrix/client/v3/account/password",
                session(SessionChange::User),
            ),
            (
                &post,
                "/_matrix/client/v3/account/deactivate",
                session(SessionChange::User),
            ),
            (
                &post,
                "/_matrix/client/v3/delete_devices",
                session(SessionChange::User),
            ),
            (
                &delete,
                "/_matrix/client/v3/devices/ABCDEF",
                session(SessionChange::User),
            ),
            (&get, "/_matrix/client/v3/logout", FollowUps::NONE),
            (&post, "/_matrix/client/v3/login", FollowUps::NONE),
            (&get, "/_matrix/client/v3/devices/ABCDEF", FollowUps::NONE),
            (
                &put,
                "/_matrix/client/v3/profile/@a:x/displayname",
                profile.clone(),
            ),
            (
                &put,
                "/_matrix/client/r0/profile/@a:x/avatar_url",
                profile.clone(),
            ),
            (&patch, "/_matrix/client/v3/profile/@a:x", profile.clone()),
            (&put, "/_matrix/client/v3/profile/@a:x", profile),
            (
                &get,
                "/_matrix/client/v3/profile/@a:x/displayname",
                FollowUps::NONE,
            ),
            (
                &put,
                "/_matrix/client/v3/profile/@a:x/m.custom",
                FollowUps::NONE,
            ),
            (
                &put,
                "/_matrix/client/v3/pushrules/global/room/!a:x",
                push(PushChange::Rules),
            ),
            (
                &delete,
                "/_matrix/client/r0/pushrules/global/override/x",
                push(PushChange::Rules),
            ),
            (
                &put,
                "/_matrix/client/v3/pushrules/global/override/x/enabled",
                push(PushChange::Rules),
            ),
            (&get, "/_matrix/client/v3/pushrules/", FollowUps::NONE),
            (
                &post,
                "/_matrix/client/v3/pushers/set",
                push(PushChange::Pushers),
            ),
            (&get, "/_matrix/client/v3/pushers", FollowUps::NONE),
            (
                &post,
                "/_matrix/client/v1/appservice/tele%20gram/ping",
                ping("tele gram"),
            ),
            (
                &get,
                "/_matrix/client/v1/appservice/telegram/ping",
                FollowUps::NONE,
            ),
            (
                &post,
                "/_matrix/client/v1/appservice/a/b/ping",
                FollowUps::NONE,
            ),
            (&post, "/_synapse/admin/v1/logout", FollowUps::NONE),
        ];
        for (method, path, want) in cases {
            assert_eq!(follow_ups(method, path), want, "{method} {path}");
        }
    }
}

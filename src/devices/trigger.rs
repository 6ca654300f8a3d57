//! Which requests change a user's devices or cross-signing keys, and the follow-up that
//! records the change once Synapse accepted it.
//!
//! Whose devices changed is learned *before* the request is forwarded when it is the
//! requester's (a logout ends the token that would tell us afterwards), from Synapse's answer
//! for a login or registration (the new session's user), and from the path for the admin API.
//! `/keys/upload` changes devices only when it carries `device_keys` (one-time and fallback
//! keys alone do not, as in Synapse), so its body is read first — it is small; a body without a
//! length or over [`MAX_INSPECTED_BODY`] is forwarded unread and counted as a change (an extra
//! entry costs a key query; a missing one breaks encryption).

use axum::body::Body;
use http::{Method, Request, Response};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::DeviceLists;
use crate::auth::requester::{Identity, access_token, query_param};
use crate::routing::decode_segment;

/// The largest `/keys/upload` body read to look for `device_keys`.
const MAX_INSPECTED_BODY: u64 = 1024 * 1024;

/// The largest login or registration answer read for its `user_id`.
const MAX_INSPECTED_ANSWER: usize = 64 * 1024;

/// Whose devices a request changes, once Synapse accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// The requester's: cross-signing keys, signatures, logouts, device updates and deletion,
    /// password changes and deactivation (they delete devices).
    Requester,
    /// The requester's, if the body carries `device_keys` (`POST /keys/upload`).
    KeysUpload,
    /// The user Synapse's answer names, if it made a device (`POST /login`, `/register`).
    NewSession,
    /// The user named in the path (Synapse's admin device API).
    Admin {
        /// The decoded user ID.
        user: String,
    },
}

/// The device-changing request `method path` is, if any.
pub fn trigger(method: &Method, path: &str) -> Option<Trigger> {
    if let Some(rest) = path.strip_prefix("/_synapse/admin/v2/users/") {
        let segments: Vec<&str> = rest.split('/').collect();
        let user = |u: &str| decode_segment(u).into_owned();
        return match (method.as_str(), segments.as_slice()) {
            ("DELETE" | "PUT", [u, "devices", _]) | ("POST", [u, "delete_devices" | "devices"]) => {
                Some(Trigger::Admin { user: user(u) })
            }
            _ => None,
        };
    }
    let rest = path.strip_prefix("/_matrix/client/")?;
    let (_version, endpoint) = rest.split_once('/')?;
    let segments: Vec<&str> = endpoint.split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["keys", "upload"] | ["keys", "upload", _]) => Some(Trigger::KeysUpload),
        (
            "POST",
            ["keys", "device_signing", "upload"]
            | ["keys", "signatures", "upload"]
            | ["logout"]
            | ["logout", "all"]
            | ["delete_devices"]
            // Both log the user's other devices out (`logout_devices` defaults to true).
            | ["account", "password"]
            | ["account", "deactivate"],
        )
        | ("DELETE" | "PUT", ["devices", _]) => Some(Trigger::Requester),
        ("POST", ["login"] | ["register"]) => Some(Trigger::NewSession),
        _ => None,
    }
}

/// A device change to record once Synapse accepts the request.
#[derive(Debug)]
pub enum Pending {
    /// This user's.
    User(String),
    /// The user of Synapse's answer.
    FromAnswer,
}

/// Before forwarding: what to record if Synapse accepts `request` (the request comes back,
/// its body intact). Nothing when the request changes no device or its requester cannot be
/// resolved (then Synapse refuses it too).
pub async fn before_forward(
    identity: &Identity,
    request: Request<Body>,
) -> (Request<Body>, Option<Pending>) {
    let Some(trigger) = trigger(request.method(), request.uri().path()) else {
        return (request, None);
    };
    let (request, changes) = match trigger {
        Trigger::NewSession => return (request, Some(Pending::FromAnswer)),
        Trigger::Admin { user } => return (request, Some(Pending::User(user))),
        Trigger::Requester => (request, true),
        Trigger::KeysUpload => uploads_device_keys(request).await,
    };
    if !changes {
        return (request, None);
    }
    let query = request.uri().query();
    let token = access_token(request.headers(), query);
    let user_param = query.and_then(|q| query_param(q, "user_id"));
    match identity
        .resolve(token.as_deref(), user_param.as_deref())
        .await
    {
        Ok(requester) => {
            let user = requester.user_id.to_string();
            (request, Some(Pending::User(user)))
        }
        Err(_) => (request, None),
    }
}

/// Whether a `/keys/upload` carries `device_keys`; the request comes back with its body.
async fn uploads_device_keys(request: Request<Body>) -> (Request<Body>, bool) {
    let length = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if length.is_none_or(|n| n > MAX_INSPECTED_BODY) {
        return (request, true);
    }
    let (parts, body) = request.into_parts();
    match body.collect().await {
        Ok(collected) => {
            let bytes = collected.to_bytes();
            #[derive(Deserialize)]
            struct Upload {
                #[serde(default)]
                device_keys: Option<serde::de::IgnoredAny>,
            }
            // Unreadable JSON: Synapse refuses it, and nothing is recorded then.
            let changes = serde_json::from_slice::<Upload>(&bytes)
                .map(|upload| upload.device_keys.is_some())
                .unwrap_or(false);
            (Request::from_parts(parts, Body::from(bytes)), changes)
        }
        // The client went away mid-body: forwarding an empty body fails the same way.
        Err(_) => (Request::from_parts(parts, Body::empty()), false),
    }
}

impl DeviceLists {
    /// After Synapse accepted a device-changing request: records the change. The answer comes
    /// back unchanged (read first, for a login's or registration's `user_id`).
    pub async fn after_forward(
        &self,
        pending: Pending,
        response: Response<Body>,
    ) -> Response<Body> {
        let (user, response) = match pending {
            Pending::User(user) => (Some(user), response),
            Pending::FromAnswer => session_user(response).await,
        };
        if let Some(user) = user
            && let Err(err) = self.record(&user).await
        {
            tracing::warn!(error = %err, "device change not recorded");
        }
        response
    }
}

/// The user of a login or registration answer that made a device (`inhibit_login`
/// registrations make none), and the answer.
async fn session_user(response: Response<Body>) -> (Option<String>, Response<Body>) {
    let (parts, body) = response.into_parts();
    let limited = http_body_util::Limited::new(body, MAX_INSPECTED_ANSWER);
    let Ok(collected) = limited.collect().await else {
        tracing::warn!("login answer too large or cut short; device change not recorded");
        return (None, Response::from_parts(parts, Body::from("")));
    };
    let bytes = collected.to_bytes();
    #[derive(Deserialize)]
    struct Session {
        user_id: Option<String>,
        device_id: Option<String>,
    }
    let user = serde_json::from_slice::<Session>(&bytes)
        .ok()
        .filter(|session| session.device_id.is_some())
        .and_then(|session| session.user_id);
    (user, Response::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_changing_requests() {
        let cases = [
            (
                Method::POST,
                "/_matrix/client/v3/keys/upload",
                Some(Trigger::KeysUpload),
            ),
            (
                Method::POST,
                "/_matrix/client/r0/keys/upload/DEV",
                Some(Trigger::KeysUpload),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/keys/device_signing/upload",
                Some(Trigger::Requester),
            ),
            (
                Method::POST,
                "/_matrix/client/unstable/keys/signatures/upload",
                Some(Trigger::Requester),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/logout",
                Some(Trigger::Requester),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/logout/all",
                Some(Trigger::Requester),
            ),
            (
                Method::DELETE,
                "/_matrix/client/v3/devices/ABC",
                Some(Trigger::Requester),
            ),
            (
                Method::PUT,
                "/_matrix/client/v3/devices/ABC",
                Some(Trigger::Requester),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/delete_devices",
                Some(Trigger::Requester),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/login",
                Some(Trigger::NewSession),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/register",
                Some(Trigger::NewSession),
            ),
            (
                Method::DELETE,
                "/_synapse/admin/v2/users/%40a%3Ahs/devices/D",
                Some(Trigger::Admin {
                    user: "@a:hs".into(),
                }),
            ),
            (
                Method::POST,
                "/_synapse/admin/v2/users/@a:hs/delete_devices",
                Some(Trigger::Admin {
                    user: "@a:hs".into(),
                }),
            ),
            (Method::GET, "/_matrix/client/v3/devices/ABC", None),
            (Method::GET, "/_matrix/client/v3/login", None),
            (Method::POST, "/_matrix/client/v3/keys/query", None),
            (Method::POST, "/_matrix/client/v3/keys/claim", None),
            (Method::GET, "/_synapse/admin/v2/users/@a:hs/devices", None),
            (Method::GET, "/_matrix/client/v3/keys/changes", None),
        ];
        for (method, path, expected) in cases {
            assert_eq!(trigger(&method, path), expected, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn key_uploads_count_only_with_device_keys() {
        let upload = |body: &'static str| {
            Request::post("/_matrix/client/v3/keys/upload")
                .header(http::header::CONTENT_LENGTH, body.len())
                .body(Body::from(body))
                .unwrap()
        };
        let (request, changes) = uploads_device_keys(upload(r#"{"one_time_keys":{}}"#)).await;
        assert!(!changes);
        let body = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &body[..],
            br#"{"one_time_keys":{}}"#,
            "the body is forwarded intact"
        );
        let (_, changes) =
            uploads_device_keys(upload(r#"{"device_keys":{"user_id":"@a:hs"}}"#)).await;
        assert!(changes);
        let unsized_body = Request::post("/_matrix/client/v3/keys/upload")
            .body(Body::from("{}"))
            .unwrap();
        assert!(
            uploads_device_keys(unsized_body).await.1,
            "unread bodies count"
        );
    }

    #[tokio::test]
    async fn a_login_answer_names_its_user_and_comes_back_intact() {
        let answer = r#"{"user_id":"@a:hs","device_id":"D","access_token":"t"}"#;
        let (user, response) = session_user(Response::new(Body::from(answer))).await;
        assert_eq!(user.as_deref(), Some("@a:hs"));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], answer.as_bytes());
        let inhibited = r#"{"user_id":"@a:hs"}"#;
        let (user, _) = session_user(Response::new(Body::from(inhibited))).await;
        assert_eq!(user, None);
    }
}

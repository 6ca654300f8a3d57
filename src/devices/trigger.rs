//! The follow-up that records a device or cross-signing key change once Synapse accepted the
//! request. Which requests change whose devices is decided by the classifier
//! ([`crate::routing::DeviceChange`], part of a forwarded request's follow-ups); this module
//! finds the user and records.
//!
//! Whose devices changed is learned *before* the request is forwarded when it is the
//! requester's (a logout ends the token that would tell us afterwards), from Synapse's answer
//! for a login or registration (the new session's user), and from the path for the admin API.
//! `/keys/upload` changes devices only when it carries `device_keys` (one-time and fallback
//! keys alone do not, as in Synapse), so its body is read first — it is small; a body without a
//! length or over [`MAX_INSPECTED_BODY`] is forwarded unread and counted as a change (an extra
//! entry costs a key query; a missing one breaks encryption).

use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use serde::Deserialize;

use super::DeviceLists;
use crate::auth::requester::{Identity, access_token, query_param};
use crate::routing::DeviceChange;

/// The largest `/keys/upload` body read to look for `device_keys`.
const MAX_INSPECTED_BODY: u64 = 1024 * 1024;

/// The largest login or registration answer read for its `user_id`.
const MAX_INSPECTED_ANSWER: usize = 64 * 1024;

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
    change: Option<&DeviceChange>,
) -> (Request<Body>, Option<Pending>) {
    let Some(change) = change else {
        return (request, None);
    };
    let (request, changes) = match change {
        DeviceChange::NewSession => return (request, Some(Pending::FromAnswer)),
        DeviceChange::Admin(user) => return (request, Some(Pending::User(user.to_string()))),
        DeviceChange::Requester => (request, true),
        DeviceChange::KeysUpload => uploads_device_keys(request).await,
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

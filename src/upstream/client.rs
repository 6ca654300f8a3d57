//! Calls hungryserv makes to Synapse on its own account (as opposed to forwarding): who owns
//! an access token, a user's profile, a user's joined rooms. Small JSON answers only.

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::Value;

use super::Synapse;

/// Time allowed for one of these calls.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;

/// One call to Synapse with the client's token: the request, and how long and how much of an
/// answer it waits for.
struct Call<'a> {
    method: Method,
    path_and_query: &'a str,
    token: &'a str,
    timeout: Duration,
    max_answer: usize,
    headers: &'a [(header::HeaderName, header::HeaderValue)],
    json_body: Option<&'a Value>,
    /// Whether running out of `timeout` means Synapse is down (see [`super::health`]): not
    /// for a `/sync`, which Synapse may legitimately take long to compute.
    timeout_means_down: bool,
}

impl<'a> Call<'a> {
    /// A bodiless call with the usual limits.
    fn new(method: Method, path_and_query: &'a str, token: &'a str) -> Self {
        Self {
            method,
            path_and_query,
            token,
            timeout: CALL_TIMEOUT,
            max_answer: MAX_ANSWER,
            headers: &[],
            json_body: None,
            timeout_means_down: true,
        }
    }
}

/// A non-2xx answer from Synapse, kept whole so it can be passed on unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// Why a call to Synapse failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// Synapse answered, with an error.
    #[error("Synapse answered {}", .0.status)]
    Refused(Refusal),
    /// Synapse could not be asked.
    #[error("Synapse is unavailable: {0}")]
    Unavailable(String),
}

/// `/account/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Whoami {
    pub user_id: String,
    #[serde(default)]
    pub device_id: Option<String>,
    /// A guest account (`/register?kind=guest`).
    #[serde(default)]
    pub is_guest: bool,
}

/// The parts of a profile that go into member events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Profile {
    #[serde(default)]
    pub displayname: Option<String>,
    #[serde(default)]
    pub avatar_url: Option<String>,
}

impl Synapse {
    /// Synapse's `/versions`, asked with the client's token if it sent one (some of
    /// Synapse's unstable features are per user). While Synapse is unreachable, its last
    /// anonymous answer stands in, so clients and bridges can still start.
    pub async fn versions(&self, token: Option<&str>) -> Result<Value, CallError> {
        let path = "/_matrix/client/versions";
        let answer = self
            .call(Method::GET, path, token.unwrap_or_default())
            .await;
        let mut last = self.last_versions.lock().unwrap_or_else(|e| e.into_inner());
        match answer {
            Ok(value) => {
                if token.is_none() {
                    *last = Some(value.clone());
                }
                Ok(value)
            }
            Err(CallError::Unavailable(reason)) => {
                last.clone().ok_or(CallError::Unavailable(reason))
            }
            Err(refused) => Err(refused),
        }
    }

    /// Sends a bodiless request with `token` and returns the JSON answer.
    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        token: &str,
    ) -> Result<Value, CallError> {
        self.call_with(Call::new(method, path_and_query, token))
            .await
    }

    /// [`Self::call`] with the time limit, answer size limit, extra headers and JSON body of
    /// `call`.
    async fn call_with(&self, call: Call<'_>) -> Result<Value, CallError> {
        let Call {
            method,
            path_and_query,
            token,
            timeout,
            max_answer,
            headers,
            json_body,
            timeout_means_down,
        } = call;
        // A dynamic bridge's token goes out as the umbrella's (`super::umbrella`).
        let swapped = self.umbrella.swap_call(token, path_and_query);
        let (token, path_and_query) = match &swapped {
            Some((umbrella, path)) => (&**umbrella, path.as_str()),
            None => (token, path_and_query),
        };
        let uri = format!("http://{}{path_and_query}", self.base);
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::HOST, self.base.as_str());
        if !token.is_empty() {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let body = match json_body {
            Some(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Body::from(value.to_string())
            }
            None => Body::empty(),
        };
        let request = builder
            .body(body)
            .map_err(|err| CallError::Unavailable(err.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|err| CallError::Unavailable(super::error_chain(&err)))?;
            let status = response.status();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            let body = http_body_util::Limited::new(response.into_body(), max_answer)
                .collect()
                .await
                .map_err(|err| CallError::Unavailable(format!("reading the answer: {err}")))?
                .to_bytes();
            Ok::<_, CallError>((status, content_type, body))
        };
        // Every outcome tells whether Synapse answers (degraded mode runs on it).
        let (status, content_type, body) = match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(answer)) => {
                self.health.set(!super::is_gateway_error(answer.0));
                answer
            }
            Ok(Err(err)) => {
                self.health.failed();
                return Err(err);
            }
            Err(_) => {
                if timeout_means_down {
                    self.health.failed();
                }
                return Err(CallError::Unavailable("timeout".into()));
            }
        };
        if !status.is_success() {
            return Err(CallError::Refused(Refusal {
                status,
                content_type,
                body,
            }));
        }
        serde_json::from_slice(&body)
            .map_err(|err| CallError::Unavailable(format!("answer is not JSON: {err}")))
    }

    /// Who owns `token`, waiting at most `synapse.whoami_timeout_ms` (every request of a user
    /// whose cached identity is due for a check waits for it).
    pub async fn whoami(&self, token: &str) -> Result<Whoami, CallError> {
        let value = self
            .call_with(Call {
                timeout: self.whoami_timeout,
                ..Call::new(Method::GET, "/_matrix/client/v3/account/whoami", token)
            })
            .await?;
        serde_json::from_value(value)
            .map_err(|err| CallError::Unavailable(format!("whoami answer: {err}")))
    }

    /// A user's profile, asked with `token`; `Ok(None)` when Synapse has no such user.
    pub async fn profile(&self, token: &str, user_id: &str) -> Result<Option<Profile>, CallError> {
        let path = format!("/_matrix/client/v3/profile/{}", encode_segment(user_id));
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(Some(serde_json::from_value(value).unwrap_or_default())),
            Err(CallError::Refused(refusal)) if refusal.status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }
}

impl Synapse {
    /// Registers an appservice user (`m.login.application_service`) with an appservice's
    /// `token`, as Synapse does for each registration's bot at start; a user that exists
    /// already is fine.
    pub async fn register_appservice_user(
        &self,
        token: &str,
        localpart: &str,
    ) -> Result<(), CallError> {
        let body = serde_json::json!({
            "type": "m.login.application_service",
            "username": localpart,
            "inhibit_login": true,
        });
        match self
            .call_with(Call {
                json_body: Some(&body),
                ..Call::new(Method::POST, "/_matrix/client/v3/register", token)
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(CallError::Refused(refusal))
                if refusal.status == StatusCode::BAD_REQUEST
                    && serde_json::from_slice::<Value>(&refusal.body)
                        .is_ok_and(|answer| answer["errcode"] == "M_USER_IN_USE") =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }
}

/// Percent-encodes one path segment (everything but unreserved characters).
pub fn encode_segment(segment: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(segment, RESERVED).to_string()
}

impl Synapse {
    /// The room an alias names on Synapse, asked with `token`; `Ok(None)` when Synapse has none.
    pub async fn resolve_alias(
        &self,
        token: &str,
        alias: &str,
    ) -> Result<Option<String>, CallError> {
        let path = format!(
            "/_matrix/client/v3/directory/room/{}",
            encode_segment(alias)
        );
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(value
                .get("room_id")
                .and_then(Value::as_str)
                .map(str::to_owned)),
            Err(CallError::Refused(refusal)) if refusal.status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The rooms Synapse says the user (of `token`) is joined to.
    pub async fn joined_rooms(
        &self,
        token: &str,
        query: Option<&str>,
    ) -> Result<Vec<String>, CallError> {
        let path = match query {
            Some(query) => format!("/_matrix/client/v3/joined_rooms?{query}"),
            None => "/_matrix/client/v3/joined_rooms".to_owned(),
        };
        let value = self.call(Method::GET, &path, token).await?;
        Ok(value
            .get("joined_rooms")
            .and_then(Value::as_array)
            .map(|rooms| {
                rooms
                    .iter()
                    .filter_map(|room| room.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Largest `/sync` answer read (an initial sync of a big account is large).
const MAX_SYNC_ANSWER: usize = 512 * 1024 * 1024;

impl Synapse {
    /// The user's own `/sync` with `query` (built by the caller, without the access token,
    /// with Synapse's `timeout`), waiting at most `limit` for the whole answer: past that,
    /// Synapse is taken to be hung ([`CallError::Unavailable`]). `headers` carries what
    /// Synapse records about the client (User-Agent, X-Forwarded-For).
    pub async fn sync(
        &self,
        token: &str,
        query: &str,
        limit: Duration,
        headers: &[(header::HeaderName, header::HeaderValue)],
    ) -> Result<Value, CallError> {
        let path = format!("/_matrix/client/v3/sync?{query}");
        let timeout = limit;
        self.call_with(Call {
            timeout,
            max_answer: MAX_SYNC_ANSWER,
            headers,
            timeout_means_down: false,
            ..Call::new(Method::GET, &path, token)
        })
        .await
    }

    /// The client's own simplified sliding sync (MSC4186) on Synapse, with `body` as JSON.
    pub async fn sliding_sync(
        &self,
        token: &str,
        query: &str,
        body: &Value,
        wait: Duration,
        headers: &[(header::HeaderName, header::HeaderValue)],
    ) -> Result<Value, CallError> {
        let path = format!("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?{query}");
        self.call_with(Call {
            timeout: wait + self.response_timeout,
            max_answer: MAX_SYNC_ANSWER,
            headers,
            json_body: Some(body),
            ..Call::new(Method::POST, &path, token)
        })
        .await
    }

    /// One of the user's global account data entries; `Ok(None)` when Synapse has none.
    pub async fn account_data(
        &self,
        token: &str,
        user_id: &str,
        kind: &str,
    ) -> Result<Option<Value>, CallError> {
        let path = format!(
            "/_matrix/client/v3/user/{}/account_data/{}",
            encode_segment(user_id),
            encode_segment(kind)
        );
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(Some(value)),
            Err(CallError::Refused(refusal)) if refusal.status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// A filter the user uploaded; `Ok(None)` when Synapse has no such filter.
    pub async fn filter(
        &self,
        token: &str,
        user_id: &str,
        filter_id: &str,
    ) -> Result<Option<Value>, CallError> {
        let path = format!(
            "/_matrix/client/v3/user/{}/filter/{}",
            encode_segment(user_id),
            encode_segment(filter_id)
        );
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(Some(value)),
            Err(CallError::Refused(refusal))
                if matches!(
                    refusal.status,
                    StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

impl Synapse {
    /// Whether `user_id` is a server admin, asked with `token` (Synapse's
    /// `GET /_synapse/admin/v1/users/{userId}/admin`, which only admins may call: a 403 means
    /// "not an admin"). `masquerade`: the `?user_id=` an appservice token acts as.
    pub async fn is_admin(
        &self,
        token: &str,
        user_id: &str,
        masquerade: Option<&str>,
    ) -> Result<bool, CallError> {
        let mut path = format!("/_synapse/admin/v1/users/{}/admin", encode_segment(user_id));
        if let Some(acting) = masquerade {
            path.push_str("?user_id=");
            path.push_str(&encode_segment(acting));
        }
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(value.get("admin").and_then(Value::as_bool) == Some(true)),
            Err(CallError::Refused(refusal)) if refusal.status == StatusCode::FORBIDDEN => {
                Ok(false)
            }
            Err(err) => Err(err),
        }
    }
}

impl Synapse {
    /// The user IDs in the `m.ignored_user_list` account data of `user_id` (the user of
    /// `token`); empty when they never set it (Synapse answers 404).
    pub async fn ignored_users(
        &self,
        token: &str,
        user_id: &str,
    ) -> Result<Vec<String>, CallError> {
        let path = format!(
            "/_matrix/client/v3/user/{}/account_data/m.ignored_user_list",
            encode_segment(user_id)
        );
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(value
                .get("ignored_users")
                .and_then(Value::as_object)
                .map(|users| users.keys().cloned().collect())
                .unwrap_or_default()),
            Err(CallError::Refused(refusal)) if refusal.status == StatusCode::NOT_FOUND => {
                Ok(Vec::new())
            }
            Err(err) => Err(err),
        }
    }

    /// The push rules of the user of `token` (`{"global": {...}}`).
    pub async fn push_rules(&self, token: &str) -> Result<Value, CallError> {
        self.call(Method::GET, "/_matrix/client/v3/pushrules/", token)
            .await
    }

    /// The pushers of the user of `token`, as listed (`pushers` of `GET /pushers`).
    pub async fn pushers(&self, token: &str) -> Result<Vec<Value>, CallError> {
        let value = self
            .call(Method::GET, "/_matrix/client/v3/pushers", token)
            .await?;
        Ok(value
            .get("pushers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Deletes one of the user's pushers (`POST /pushers/set` with `kind: null`), as Synapse
    /// does itself when a push gateway rejects the pushkey.
    pub async fn delete_pusher(
        &self,
        token: &str,
        app_id: &str,
        pushkey: &str,
    ) -> Result<(), CallError> {
        let body = serde_json::json!({"app_id": app_id, "pushkey": pushkey, "kind": null});
        self.call_with(Call {
            json_body: Some(&body),
            ..Call::new(Method::POST, "/_matrix/client/v3/pushers/set", token)
        })
        .await
        .map(drop)
    }
}

impl Synapse {
    /// The user's `GET /notifications` page for `query` (without the access token).
    pub async fn notifications(&self, token: &str, query: &str) -> Result<Value, CallError> {
        let path = if query.is_empty() {
            "/_matrix/client/v3/notifications".to_owned()
        } else {
            format!("/_matrix/client/v3/notifications?{query}")
        };
        self.call(Method::GET, &path, token).await
    }
}

impl Synapse {
    /// Whether the user of `token` shares a joined room with `other` on Synapse (MSC2666
    /// mutual rooms, stable in Synapse 1.163 at `/_matrix/client/v1/mutual_rooms`, served
    /// without configuration). One page is enough: any room answers the question.
    pub async fn shares_a_room(&self, token: &str, other: &str) -> Result<bool, CallError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("user_id", other)
            .finish();
        let path = format!("/_matrix/client/v1/mutual_rooms?{query}");
        let value = self.call(Method::GET, &path, token).await?;
        Ok(value
            .get("joined")
            .and_then(Value::as_array)
            .is_some_and(|rooms| !rooms.is_empty()))
    }

    /// The user's own `GET /keys/changes` with `query` (Synapse's halves of the tokens).
    pub async fn keys_changes(&self, token: &str, query: &str) -> Result<Value, CallError> {
        let path = format!("/_matrix/client/v3/keys/changes?{query}");
        self.call(Method::GET, &path, token).await
    }

    /// `POST /user_directory/search` as the user (`query` passed on: an appservice's
    /// `user_id`).
    pub async fn user_directory_search(
        &self,
        token: &str,
        query: &str,
        body: &Value,
    ) -> Result<Value, CallError> {
        let path = format!("/_matrix/client/v3/user_directory/search?{query}");
        self.call_with(Call {
            json_body: Some(body),
            ..Call::new(Method::POST, &path, token)
        })
        .await
    }
}

impl Synapse {
    /// The user's own `POST /search` with `body`; `batch` (the `next_batch` parameter) is
    /// Synapse's own batch token.
    pub async fn search(
        &self,
        token: &str,
        batch: Option<&str>,
        body: &Value,
    ) -> Result<Value, CallError> {
        let path = match batch {
            Some(batch) => {
                let query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("next_batch", batch)
                    .finish();
                format!("/_matrix/client/v3/search?{query}")
            }
            None => "/_matrix/client/v3/search".to_owned(),
        };
        self.call_with(Call {
            json_body: Some(body),
            ..Call::new(Method::POST, &path, token)
        })
        .await
    }
}

impl Synapse {
    /// Synapse's admin `GET /_synapse/admin/v1/event_reports` with `query` (no token in it).
    pub async fn event_reports(&self, token: &str, query: &str) -> Result<Value, CallError> {
        let path = format!("/_synapse/admin/v1/event_reports?{query}");
        self.call(Method::GET, &path, token).await
    }
}

impl Synapse {
    /// One room of Synapse's `GET /v1/rooms/{roomId}/hierarchy` (`max_depth=0`: the room
    /// itself, with its `children_state`), as the user of `token` may see it; `Ok(None)` when
    /// Synapse refuses it (not accessible, unknown).
    pub async fn hierarchy_room(
        &self,
        token: &str,
        room_id: &str,
    ) -> Result<Option<Value>, CallError> {
        let path = format!(
            "/_matrix/client/v1/rooms/{}/hierarchy?max_depth=0&limit=1",
            encode_segment(room_id)
        );
        match self.call(Method::GET, &path, token).await {
            Ok(answer) => Ok(answer
                .get("rooms")
                .and_then(Value::as_array)
                .and_then(|rooms| rooms.first())
                .cloned()),
            Err(CallError::Refused(_)) => Ok(None),
            Err(err) => Err(err),
        }
    }
}

/// Where hungryserv's Synapse module (deploy/synapse-module) answers MSC3202 key counts.
const KEY_COUNTS_PATH: &str = "/_synapse/client/hungryserv/v1/msc3202_key_counts";
/// Time allowed for the key counts: a bridge's delivery waits for them.
const KEY_COUNTS_TIMEOUT: Duration = Duration::from_secs(5);

/// MSC3202 key counts of an appservice's users, as Synapse's scheduler computes them:
/// `user → device → algorithm → count` and `user → device → [algorithm]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct KeyCounts {
    #[serde(default)]
    pub device_one_time_keys_count: serde_json::Map<String, Value>,
    #[serde(default)]
    pub device_unused_fallback_key_types: serde_json::Map<String, Value>,
}

impl Synapse {
    /// The one-time-key counts and unused fallback-key types of `users`' devices, asked from
    /// hungryserv's Synapse module with an appservice's `as_token` (the module answers only
    /// for users that appservice is interested in). A bridge registered at run time has no
    /// token Synapse knows: `None` asks with the umbrella's.
    pub async fn key_counts(
        &self,
        as_token: Option<&str>,
        users: &[String],
    ) -> Result<KeyCounts, CallError> {
        let umbrella;
        let token = match as_token {
            Some(token) => token,
            None => {
                umbrella = self
                    .umbrella
                    .token()
                    .ok_or_else(|| CallError::Unavailable("no umbrella token".into()))?;
                &*umbrella
            }
        };
        let body = serde_json::json!({ "user_ids": users });
        let value = self
            .call_with(Call {
                json_body: Some(&body),
                timeout: KEY_COUNTS_TIMEOUT,
                ..Call::new(Method::POST, KEY_COUNTS_PATH, token)
            })
            .await?;
        serde_json::from_value(value)
            .map_err(|err| CallError::Unavailable(format!("unexpected key counts: {err}")))
    }
}

/// Where hungryserv's Synapse module answers rooms and aliases for the umbrella.
const APPSERVICE_ROOMS_PATH: &str = "/_synapse/client/hungryserv/v1/appservice_rooms";

/// What Synapse knows about rooms that the umbrella's split needs
/// (`appservice::umbrella`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AppserviceRooms {
    /// For each user asked about, their joined rooms the appservice is interested in.
    #[serde(default)]
    pub rooms_of_users: std::collections::HashMap<String, Vec<String>>,
    /// The aliases of the rooms asked about and of those rooms (rooms without any left out).
    #[serde(default)]
    pub aliases: std::collections::HashMap<String, Vec<String>>,
}

impl Synapse {
    /// Asks hungryserv's Synapse module, with an appservice's `as_token`, for the rooms of
    /// `users` that appservice is interested in and for the aliases of `rooms` (and of those).
    pub async fn appservice_rooms(
        &self,
        as_token: &str,
        users: &[&str],
        rooms: &[&str],
    ) -> Result<AppserviceRooms, CallError> {
        let body = serde_json::json!({ "user_ids": users, "room_ids": rooms });
        let value = self
            .call_with(Call {
                json_body: Some(&body),
                timeout: KEY_COUNTS_TIMEOUT,
                ..Call::new(Method::POST, APPSERVICE_ROOMS_PATH, as_token)
            })
            .await?;
        serde_json::from_value(value)
            .map_err(|err| CallError::Unavailable(format!("unexpected appservice rooms: {err}")))
    }
}

/// What a room upgrade carries over for the upgrader at Synapse (`rooms::upgrade`): their
/// push rules and `m.direct`, read and written with their own token (`masquerade`: the
/// `?user_id=` an appservice token acts as).
impl Synapse {
    fn acting(path: String, masquerade: Option<&str>) -> String {
        match masquerade {
            Some(user) => format!("{path}?user_id={}", encode_segment(user)),
            None => path,
        }
    }

    /// The push rules of the user of `token` (`{"global": {...}}`), acting as `masquerade`.
    pub async fn push_rules_of(
        &self,
        token: &str,
        masquerade: Option<&str>,
    ) -> Result<Value, CallError> {
        let path = Self::acting("/_matrix/client/v3/pushrules/".into(), masquerade);
        self.call(Method::GET, &path, token).await
    }

    /// `PUT /pushrules/global/{kind}/{ruleId}`: adds (or replaces) one push rule.
    pub async fn put_push_rule(
        &self,
        token: &str,
        masquerade: Option<&str>,
        kind: &str,
        rule_id: &str,
        body: &Value,
    ) -> Result<(), CallError> {
        let path = Self::acting(
            format!(
                "/_matrix/client/v3/pushrules/global/{}/{}",
                encode_segment(kind),
                encode_segment(rule_id)
            ),
            masquerade,
        );
        self.call_with(Call {
            json_body: Some(body),
            ..Call::new(Method::PUT, &path, token)
        })
        .await
        .map(drop)
    }

    /// One of the user's global account data entries, acting as `masquerade`; `Ok(None)`
    /// when Synapse has none.
    pub async fn account_data_of(
        &self,
        token: &str,
        masquerade: Option<&str>,
        user_id: &str,
        kind: &str,
    ) -> Result<Option<Value>, CallError> {
        let path = Self::acting(
            format!(
                "/_matrix/client/v3/user/{}/account_data/{}",
                encode_segment(user_id),
                encode_segment(kind)
            ),
            masquerade,
        );
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(Some(value)),
            Err(CallError::Refused(refusal)) if refusal.status == StatusCode::NOT_FOUND => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Sets one of the user's global account data entries.
    pub async fn put_account_data(
        &self,
        token: &str,
        masquerade: Option<&str>,
        user_id: &str,
        kind: &str,
        content: &Value,
    ) -> Result<(), CallError> {
        let path = Self::acting(
            format!(
                "/_matrix/client/v3/user/{}/account_data/{}",
                encode_segment(user_id),
                encode_segment(kind)
            ),
            masquerade,
        );
        self.call_with(Call {
            json_body: Some(content),
            ..Call::new(Method::PUT, &path, token)
        })
        .await
        .map(drop)
    }
}

impl Synapse {
    /// `GET /presence/{userId}/status` asked with `token`: `Ok(None)` when Synapse does not let
    /// the user of `token` see it (no shared Synapse room: 403) or presence is off (404).
    pub async fn presence_status(
        &self,
        token: &str,
        masquerade: Option<&str>,
        user_id: &str,
    ) -> Result<Option<Value>, CallError> {
        let path = Self::acting(
            format!(
                "/_matrix/client/v3/presence/{}/status",
                encode_segment(user_id)
            ),
            masquerade,
        );
        match self.call(Method::GET, &path, token).await {
            Ok(value) => Ok(Some(value)),
            Err(CallError::Refused(refusal))
                if matches!(
                    refusal.status,
                    StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }
}

impl Synapse {
    /// The user's global `GET /initialSync` (deprecated) for `query` (without the access
    /// token). It may take long for a big account, as a first `/sync` does.
    pub async fn initial_sync(&self, token: &str, query: &str) -> Result<Value, CallError> {
        let path = if query.is_empty() {
            "/_matrix/client/v3/initialSync".to_owned()
        } else {
            format!("/_matrix/client/v3/initialSync?{query}")
        };
        self.call_with(Call {
            timeout: self.response_timeout,
            max_answer: MAX_SYNC_ANSWER,
            timeout_means_down: false,
            ..Call::new(Method::GET, &path, token)
        })
        .await
    }
}

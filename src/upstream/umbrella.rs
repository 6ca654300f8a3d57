//! Speaking to Synapse for bridges it does not know: a bridge registered at run time
//! (`appservice::umbrella`) sends its own `as_token`, which Synapse has never seen. Every
//! request that leaves for Synapse with such a token — forwarded or made by hungryserv on the
//! bridge's behalf — goes out with the umbrella registration's token instead, acting as
//! `?user_id=` the user the bridge asked for, or its bot.
//!
//! Synapse checks the umbrella's namespaces, which are wider than each bridge's; the bridge's
//! own are checked here first, with Synapse's status, errcode and wording, so a bridge acting
//! outside them gets exactly what Synapse would answer if it knew the bridge:
//! * `?user_id=` outside its user namespaces (or not of this server): 403 `M_FORBIDDEN`
//!   "Application service cannot masquerade as this user (…).";
//! * `POST /register` (`m.login.application_service`) for a localpart outside them: 400
//!   `M_EXCLUSIVE` "Invalid user localpart for this application service.";
//! * `POST /login` (`m.login.application_service`) as a user outside them: 403 `M_FORBIDDEN`
//!   "Invalid access_token".
//!
//! Those two bodies are small JSON and are read whole; every other body streams untouched.
//! The table is keyed by the token's SHA-256; tokens are never logged.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use http::{StatusCode, header};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use crate::config::Namespace;
use crate::error::{ErrorCode, MatrixError};

/// Largest `/register` or `/login` body read to check the user it names.
const MAX_CHECKED_BODY: usize = 64 * 1024;

/// What the umbrella needs to know of one dynamic bridge.
#[derive(Debug)]
pub struct Stand {
    /// The bridge's id (for logs).
    pub id: String,
    /// Its bot's full user ID.
    pub bot: String,
    /// Its user namespaces.
    pub users: Vec<Namespace>,
}

/// The token swap table. Empty (and inert) without an umbrella.
#[derive(Default)]
pub struct Umbrella {
    inner: RwLock<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The umbrella registration's as_token.
    token: Option<Arc<str>>,
    /// `:{server_name}`.
    suffix: String,
    /// `sha256(bridge as_token) → bridge`.
    stands: HashMap<[u8; 32], Arc<Stand>>,
}

/// SHA-256 of a token, the key of every token table.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Umbrella {
    /// Sets the umbrella's token; bridges can be added from then on.
    pub fn configure(&self, token: &str, server_name: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.token = Some(Arc::from(token));
        inner.suffix = format!(":{server_name}");
    }

    /// Adds or replaces a bridge, known by its token's hash; any earlier entry of the same id
    /// goes (a token changed by an update stops working at once).
    pub fn insert(&self, token_hash: [u8; 32], stand: Stand) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.stands.retain(|_, old| old.id != stand.id);
        inner.stands.insert(token_hash, Arc::new(stand));
    }

    /// The umbrella's token, if one is configured (for calls about a bridge, which has no
    /// token of its own at Synapse).
    pub fn token(&self) -> Option<Arc<str>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.token.clone()
    }

    /// Forgets the bridge with this id.
    pub fn remove(&self, id: &str) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.stands.retain(|_, old| old.id != id);
    }

    /// The umbrella's token, the bridge and the server suffix, when `token` is a bridge's.
    fn lookup(&self, token: &str) -> Option<(Arc<str>, Arc<Stand>, String)> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        if inner.stands.is_empty() {
            return None;
        }
        let stand = inner.stands.get(&digest(token))?.clone();
        Some((inner.token.clone()?, stand, inner.suffix.clone()))
    }

    /// For a call hungryserv makes with `token`: the umbrella's token and the path with
    /// `user_id` (the bot's unless the caller set one), when `token` is a bridge's.
    pub(super) fn swap_call(
        &self,
        token: &str,
        path_and_query: &str,
    ) -> Option<(Arc<str>, String)> {
        let (umbrella, stand, _) = self.lookup(token)?;
        if has_param(path_and_query.split_once('?').map(|(_, q)| q), "user_id") {
            return Some((umbrella, path_and_query.to_owned()));
        }
        let separator = if path_and_query.contains('?') {
            '&'
        } else {
            '?'
        };
        let user: String = form_urlencoded::byte_serialize(stand.bot.as_bytes()).collect();
        Some((
            umbrella,
            format!("{path_and_query}{separator}user_id={user}"),
        ))
    }

    /// A forwarded request: when its token is a bridge's, checks what the bridge acts as
    /// against its namespaces and puts the umbrella's token in (header only; `access_token`
    /// leaves the query). Other requests pass unchanged.
    pub(super) async fn swap_forward(
        &self,
        parts: &mut http::request::Parts,
        body: Body,
    ) -> Result<Body, MatrixError> {
        let query = parts.uri.query();
        let Some(token) = bearer(&parts.headers).or_else(|| {
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .find(|(key, _)| key == "access_token")
                .map(|(_, value)| value.into_owned())
        }) else {
            return Ok(body);
        };
        let Some((umbrella, stand, suffix)) = self.lookup(&token) else {
            return Ok(body);
        };
        let claims = |user: &str| {
            user == stand.bot
                || (user.ends_with(&suffix) && stand.users.iter().any(|ns| ns.matches(user)))
        };
        let mut pairs: Vec<(String, String)> =
            form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                .filter(|(key, _)| key != "access_token")
                .map(|(key, value)| (key.into_owned(), value.into_owned()))
                .collect();
        let path = parts.uri.path().to_owned();
        let endpoint = path
            .strip_prefix("/_matrix/client/")
            .and_then(|rest| rest.split_once('/'))
            .map(|(_, endpoint)| endpoint);
        let body = match endpoint {
            Some(kind @ ("register" | "login")) if parts.method == http::Method::POST => {
                let bytes = http_body_util::Limited::new(body, MAX_CHECKED_BODY)
                    .collect()
                    .await
                    .map_err(|_| MatrixError::too_large(MAX_CHECKED_BODY as u64))?
                    .to_bytes();
                let value: serde_json::Value =
                    serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                if value["type"] == "m.login.application_service" {
                    let named = if kind == "register" {
                        value["username"].as_str()
                    } else {
                        value["identifier"]["user"]
                            .as_str()
                            .or(value["user"].as_str())
                    };
                    let user = match named {
                        Some(user) if user.starts_with('@') => user.to_owned(),
                        Some(localpart) => format!("@{localpart}{suffix}"),
                        None => String::new(),
                    };
                    if !user.is_empty() && !claims(&user) {
                        tracing::info!(appservice = %stand.id, "bridge refused: {kind} outside its namespaces");
                        return Err(if kind == "register" {
                            MatrixError::new(
                                StatusCode::BAD_REQUEST,
                                ErrorCode::Exclusive,
                                "Invalid user localpart for this application service.",
                            )
                        } else {
                            MatrixError::forbidden("Invalid access_token")
                        });
                    }
                }
                Body::from(bytes)
            }
            _ => {
                match pairs.iter().find(|(key, _)| key == "user_id") {
                    Some((_, user)) if !claims(user) => {
                        tracing::info!(appservice = %stand.id, "bridge refused: masquerading outside its namespaces");
                        return Err(MatrixError::forbidden(format!(
                            "Application service cannot masquerade as this user ({user})."
                        )));
                    }
                    Some(_) => {}
                    None => pairs.push(("user_id".into(), stand.bot.clone())),
                }
                body
            }
        };
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for (key, value) in &pairs {
            serializer.append_pair(key, value);
        }
        let query = serializer.finish();
        let path_and_query = if query.is_empty() {
            path
        } else {
            format!("{path}?{query}")
        };
        let mut uri = parts.uri.clone().into_parts();
        uri.path_and_query = Some(
            path_and_query
                .parse()
                .map_err(|_| MatrixError::bad_json("Invalid request URI"))?,
        );
        parts.uri =
            http::Uri::from_parts(uri).map_err(|_| MatrixError::bad_json("Invalid request URI"))?;
        let value = http::HeaderValue::from_str(&format!("Bearer {umbrella}"))
            .map_err(|_| MatrixError::bad_gateway("Cannot forward this request"))?;
        parts.headers.insert(header::AUTHORIZATION, value);
        Ok(body)
    }
}

fn bearer(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|token| token.trim().to_owned())
}

fn has_param(query: Option<&str>, name: &str) -> bool {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes()).any(|(key, _)| key == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn umbrella() -> Umbrella {
        let umbrella = Umbrella::default();
        umbrella.configure("umbrella-token", "hs");
        umbrella.insert(
            digest("bridge-token"),
            Stand {
                id: "a".into(),
                bot: "@dyn_a_bot:hs".into(),
                users: vec![Namespace {
                    regex: regex::Regex::new("^(?:@dyn_a_.*)").unwrap(),
                    exclusive: true,
                }],
            },
        );
        umbrella
    }

    async fn swap(umbrella: &Umbrella, uri: &str, body: &str) -> Result<(String, String), String> {
        let request = http::Request::post(uri)
            .header("authorization", "Bearer bridge-token")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let (mut parts, body) = request.into_parts();
        match umbrella.swap_forward(&mut parts, body).await {
            Ok(_) => Ok((
                parts.uri.to_string(),
                parts.headers["authorization"].to_str().unwrap().to_owned(),
            )),
            Err(err) => Err(err.message),
        }
    }

    #[tokio::test]
    async fn a_bridge_goes_out_as_the_umbrella_inside_its_namespaces() {
        let umbrella = umbrella();
        let (uri, auth) = swap(&umbrella, "/_matrix/client/v3/rooms/!r:hs/join", "{}")
            .await
            .unwrap();
        assert_eq!(
            uri,
            "/_matrix/client/v3/rooms/!r:hs/join?user_id=%40dyn_a_bot%3Ahs"
        );
        assert_eq!(auth, "Bearer umbrella-token");
        let (uri, _) = swap(
            &umbrella,
            "/_matrix/client/v3/join/x?user_id=%40dyn_a_1%3Ahs&access_token=bridge-token",
            "{}",
        )
        .await
        .unwrap();
        assert_eq!(uri, "/_matrix/client/v3/join/x?user_id=%40dyn_a_1%3Ahs");
        for outside in ["@dyn_b_1:hs", "@dyn_a_1:other", "@alice:hs"] {
            let uri = format!("/_matrix/client/v3/join/x?user_id={outside}");
            let refused = swap(&umbrella, &uri, "{}").await.unwrap_err();
            assert!(refused.contains("cannot masquerade"), "{refused}");
        }
    }

    #[tokio::test]
    async fn registration_and_login_outside_the_namespaces_are_refused() {
        let umbrella = umbrella();
        let register =
            |name: &str| format!(r#"{{"type":"m.login.application_service","username":"{name}"}}"#);
        assert!(
            swap(
                &umbrella,
                "/_matrix/client/v3/register",
                &register("dyn_a_7")
            )
            .await
            .is_ok()
        );
        let refused = swap(
            &umbrella,
            "/_matrix/client/v3/register",
            &register("dyn_b_7"),
        )
        .await
        .unwrap_err();
        assert!(refused.contains("Invalid user localpart"), "{refused}");
        let login = r#"{"type":"m.login.application_service","identifier":{"type":"m.id.user","user":"alice"}}"#;
        assert!(
            swap(&umbrella, "/_matrix/client/v3/login", login)
                .await
                .is_err()
        );
    }

    #[test]
    fn calls_get_the_bot_unless_they_name_a_user() {
        let umbrella = umbrella();
        assert_eq!(umbrella.swap_call("other", "/x"), None);
        let (token, path) = umbrella.swap_call("bridge-token", "/p?a=1").unwrap();
        assert_eq!(
            (&*token, path.as_str()),
            ("umbrella-token", "/p?a=1&user_id=%40dyn_a_bot%3Ahs")
        );
        let (_, path) = umbrella.swap_call("bridge-token", "/p?user_id=x").unwrap();
        assert_eq!(path, "/p?user_id=x");
    }
}

//! Who is making a request: an access token becomes a [`Requester`].
//!
//! * Appservice tokens (`as_token` of a registration) are recognised locally. The appservice
//!   acts as its bot, or as `?user_id=` when that user is inside its user namespaces (else
//!   403, with Synapse's wording) and registered on Synapse.
//! * Every other token is Synapse's: it is resolved once with `/account/whoami` and cached
//!   by its SHA-256 for [`POSITIVE_TTL`] (refusals for [`NEGATIVE_TTL`]). Every revocation
//!   that passes through hungryserv and that Synapse accepts drops the entries it ends at
//!   once ([`session_change`]): a logout, password change or deactivation, a device deleted
//!   by its user or by Synapse's admin API, any admin API write about a user, a `/refresh`.
//!   Revocations that do not pass through us (Synapse's admin listener used directly) take
//!   effect when the entry expires.
//!
//! Tokens are never logged and never stored in clear: the cache key is the hash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId};
use sha2::{Digest, Sha256};

use crate::config::Registration;
use crate::upstream::Synapse;
use crate::upstream::client::{CallError, Refusal};

/// How long a resolved token is trusted without asking Synapse again.
pub const POSITIVE_TTL: Duration = Duration::from_secs(60);
/// How long a refused token is refused without asking Synapse again.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// How long "is (not) a server admin" is trusted without asking Synapse again.
pub const ADMIN_TTL: Duration = Duration::from_secs(30);
/// Cache entries kept at most (tokens, and users known to be registered).
const MAX_ENTRIES: usize = 100_000;

/// The authenticated party of a request.
#[derive(Debug, Clone)]
pub struct Requester {
    /// The user the request acts as.
    pub user_id: OwnedUserId,
    /// The device of the access token (none for appservices).
    pub device_id: Option<OwnedDeviceId>,
    /// The appservice, when the token is an `as_token`.
    pub appservice: Option<Arc<Registration>>,
}

impl Requester {
    /// The scope of transaction IDs (`PUT .../{txnId}`): per device for users, per
    /// appservice and user for appservices (as Synapse scopes them).
    pub fn txn_scope(&self) -> String {
        match (&self.appservice, &self.device_id) {
            (Some(appservice), _) => format!("as:{}|{}", appservice.id, self.user_id),
            (None, Some(device)) => format!("{}|{}", self.user_id, device),
            (None, None) => format!("{}|", self.user_id),
        }
    }
}

/// Why a request could not be authenticated.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthFailure {
    /// No token: 401 M_MISSING_TOKEN.
    #[error("Missing access token")]
    MissingToken,
    /// Synapse refused the token: its answer, passed on unchanged (M_UNKNOWN_TOKEN, soft_logout).
    #[error("Synapse refused the token")]
    Refused(Refusal),
    /// 403 M_FORBIDDEN: an appservice outside its namespaces.
    #[error("{0}")]
    Forbidden(String),
    /// Synapse could not be asked: 502.
    #[error("cannot verify the token: {0}")]
    Unavailable(String),
}

struct Cached {
    outcome: Result<(OwnedUserId, Option<OwnedDeviceId>), Refusal>,
    until: Instant,
}

/// Resolves tokens; shared by all requests.
pub struct Identity {
    server_name: OwnedServerName,
    synapse: Synapse,
    /// `sha256(as_token) → registration`.
    appservices: HashMap<[u8; 32], Arc<Registration>>,
    /// `sha256(token) → whoami outcome`.
    tokens: Mutex<HashMap<[u8; 32], Cached>>,
    /// Users an appservice may act as, seen registered on Synapse.
    registered: Mutex<HashSet<OwnedUserId>>,
    /// `sha256(token) → (is a server admin, until)`.
    admins: Mutex<HashMap<[u8; 32], (bool, Instant)>>,
    /// Bumped by every forget: a whoami answer that was in flight across a forget (a logout
    /// passing through meanwhile) is not cached, or it would resurrect the token.
    generation: std::sync::atomic::AtomicU64,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The admin cache's key: the token and the user the request acts as.
fn admin_key(token: &str, requester: &Requester) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(token.as_bytes());
    // A user ID never holds a NUL, so no other (token, user) pair hashes the same input.
    hasher.update([0]);
    hasher.update(requester.user_id.as_str().as_bytes());
    hasher.finalize().into()
}

impl Identity {
    pub fn new(
        server_name: OwnedServerName,
        synapse: Synapse,
        registrations: &[Registration],
    ) -> Self {
        Self {
            server_name,
            synapse,
            appservices: registrations
                .iter()
                .map(|registration| {
                    (
                        digest(&registration.as_token),
                        Arc::new(registration.clone()),
                    )
                })
                .collect(),
            tokens: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashSet::new()),
            admins: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The appservice whose `as_token` this is, without any network call (for routing).
    pub fn appservice(&self, token: &str) -> Option<&Arc<Registration>> {
        self.appservices.get(&digest(token))
    }

    /// Authenticates `token`; `user_id_param` is the `?user_id=` query parameter.
    pub async fn resolve(
        &self,
        token: Option<&str>,
        user_id_param: Option<&str>,
    ) -> Result<Requester, AuthFailure> {
        let token = token.ok_or(AuthFailure::MissingToken)?;
        if let Some(appservice) = self.appservice(token) {
            return self
                .appservice_requester(token, appservice.clone(), user_id_param)
                .await;
        }
        let key = digest(token);
        let cached = self.tokens.lock().ok().and_then(|tokens| {
            tokens
                .get(&key)
                .filter(|entry| entry.until > Instant::now())
                .map(|entry| entry.outcome.clone())
        });
        let outcome = match cached {
            Some(outcome) => outcome,
            None => {
                let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
                let outcome = match self.synapse.whoami(token).await {
                    Ok(whoami) => match OwnedUserId::try_from(whoami.user_id.as_str()) {
                        Ok(user_id) => Ok((user_id, whoami.device_id.map(OwnedDeviceId::from))),
                        Err(_) => {
                            return Err(AuthFailure::Unavailable(
                                "whoami returned an invalid user id".into(),
                            ));
                        }
                    },
                    Err(CallError::Refused(refusal)) if refusal.status.is_client_error() => {
                        Err(refusal)
                    }
                    Err(CallError::Refused(refusal)) => {
                        return Err(AuthFailure::Unavailable(format!(
                            "whoami answered {}",
                            refusal.status
                        )));
                    }
                    Err(CallError::Unavailable(reason)) => {
                        return Err(AuthFailure::Unavailable(reason));
                    }
                };
                let ttl = if outcome.is_ok() {
                    POSITIVE_TTL
                } else {
                    NEGATIVE_TTL
                };
                if let Ok(mut tokens) = self.tokens.lock()
                    && self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation
                {
                    if tokens.len() >= MAX_ENTRIES {
                        let now = Instant::now();
                        tokens.retain(|_, entry| entry.until > now);
                        if tokens.len() >= MAX_ENTRIES {
                            tokens.clear();
                        }
                    }
                    tokens.insert(
                        key,
                        Cached {
                            outcome: outcome.clone(),
                            until: Instant::now() + ttl,
                        },
                    );
                }
                outcome
            }
        };
        let (user_id, device_id) = outcome.map_err(AuthFailure::Refused)?;
        Ok(Requester {
            user_id,
            device_id,
            appservice: None,
        })
    }

    async fn appservice_requester(
        &self,
        token: &str,
        appservice: Arc<Registration>,
        user_id_param: Option<&str>,
    ) -> Result<Requester, AuthFailure> {
        let bot = format!("@{}:{}", appservice.sender_localpart, self.server_name);
        let user_id = user_id_param.unwrap_or(&bot);
        let masquerade_denied = || {
            AuthFailure::Forbidden(format!(
                "Application service cannot masquerade as this user ({user_id})."
            ))
        };
        let parsed = OwnedUserId::try_from(user_id).map_err(|_| masquerade_denied())?;
        if user_id != bot {
            let ours = parsed.server_name() == self.server_name;
            if !ours
                || !appservice
                    .users
                    .iter()
                    .any(|namespace| namespace.matches(user_id))
            {
                return Err(masquerade_denied());
            }
            let known = self
                .registered
                .lock()
                .map(|users| users.contains(&parsed))
                .unwrap_or(false);
            if !known {
                match self.synapse.profile(token, user_id).await {
                    Ok(Some(_)) => {
                        if let Ok(mut users) = self.registered.lock() {
                            if users.len() >= MAX_ENTRIES {
                                users.clear();
                            }
                            users.insert(parsed.clone());
                        }
                    }
                    Ok(None) => {
                        return Err(AuthFailure::Forbidden(format!(
                            "Application service has not registered this user ({user_id})"
                        )));
                    }
                    Err(CallError::Refused(refusal)) => return Err(AuthFailure::Refused(refusal)),
                    Err(CallError::Unavailable(reason)) => {
                        return Err(AuthFailure::Unavailable(reason));
                    }
                }
            }
        }
        Ok(Requester {
            user_id: parsed,
            device_id: None,
            appservice: Some(appservice),
        })
    }

    /// Whether the requester of `token` is a Synapse server admin (Synapse is asked with the
    /// requester's own token, and an appservice's `?user_id=`; the answer is cached for
    /// [`ADMIN_TTL`]). The cache key is the token *and* the user it acts as: one appservice
    /// token acts as its bot and as every user of its namespaces, whose rights differ.
    pub async fn is_admin(&self, token: &str, requester: &Requester) -> Result<bool, AuthFailure> {
        let key = admin_key(token, requester);
        let masquerade = requester
            .appservice
            .as_ref()
            .map(|_| requester.user_id.as_str());
        let cached = self.admins.lock().ok().and_then(|admins| {
            admins
                .get(&key)
                .filter(|(_, until)| *until > Instant::now())
                .map(|(admin, _)| *admin)
        });
        if let Some(admin) = cached {
            return Ok(admin);
        }
        let admin = match self
            .synapse
            .is_admin(token, requester.user_id.as_str(), masquerade)
            .await
        {
            Ok(admin) => admin,
            Err(CallError::Refused(refusal)) if refusal.status.is_client_error() => {
                return Err(AuthFailure::Refused(refusal));
            }
            Err(CallError::Refused(refusal)) => {
                return Err(AuthFailure::Unavailable(format!(
                    "admin check answered {}",
                    refusal.status
                )));
            }
            Err(CallError::Unavailable(reason)) => return Err(AuthFailure::Unavailable(reason)),
        };
        if let Ok(mut admins) = self.admins.lock() {
            if admins.len() >= MAX_ENTRIES {
                admins.clear();
            }
            admins.insert(key, (admin, Instant::now() + ADMIN_TTL));
        }
        Ok(admin)
    }

    /// Drops the cached resolution of `token` (after `/logout` passed through).
    pub fn forget_token(&self, token: &str) {
        // Admin entries are keyed by token and user; which belong to this token cannot be
        // told apart cheaply, and they are simply asked again.
        if let Ok(mut admins) = self.admins.lock() {
            admins.clear();
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokens.remove(&digest(token));
        }
    }

    /// Drops every cached token of the user owning `token` (after `/logout/all`, a password
    /// change or a deactivation passed through).
    pub fn forget_user_of(&self, token: &str) {
        if let Ok(mut admins) = self.admins.lock() {
            admins.clear();
        }
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let user = tokens
            .get(&digest(token))
            .and_then(|entry| entry.outcome.as_ref().ok().map(|(user, _)| user.clone()));
        match user {
            Some(user) => tokens
                .retain(|_, entry| !matches!(&entry.outcome, Ok((cached, _)) if *cached == user)),
            // We never resolved it, so we cannot tell whose it is: forget everything rather
            // than keep serving a revoked token for a minute.
            None => tokens.clear(),
        }
    }
}

impl Identity {
    /// Drops every cached token of `user` and every admin answer (after Synapse's admin API
    /// deactivated or changed the user).
    pub fn forget_user(&self, user: &OwnedUserId) {
        self.forget_where(|(cached, _)| cached == user);
    }

    /// Drops the cached tokens of one device of `user` (after the device was deleted, or
    /// its token refreshed), but `keep` (the refreshed token itself).
    pub fn forget_device(&self, user: &OwnedUserId, device: &OwnedDeviceId, keep: Option<&str>) {
        let keep = keep.map(digest);
        if let Ok(mut admins) = self.admins.lock() {
            admins.clear();
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokens.retain(|key, entry| {
                Some(*key) == keep
                    || !matches!(&entry.outcome,
                        Ok((cached_user, Some(cached_device)))
                            if cached_user == user && cached_device == device)
            });
        }
    }

    /// After a `/refresh` Synapse answered with `new_token`: the device's other cached
    /// tokens are dropped (Synapse may have deleted them). The new token is resolved to find
    /// the device; if that fails, nothing is known about the device and every entry goes.
    pub async fn refreshed(&self, new_token: &str) {
        match self.resolve(Some(new_token), None).await {
            Ok(Requester {
                user_id,
                device_id: Some(device),
                ..
            }) => self.forget_device(&user_id, &device, Some(new_token)),
            _ => self.forget_where(|_| true),
        }
    }

    fn forget_where(&self, matches: impl Fn(&(OwnedUserId, Option<OwnedDeviceId>)) -> bool) {
        if let Ok(mut admins) = self.admins.lock() {
            admins.clear();
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokens.retain(|_, entry| !entry.outcome.as_ref().is_ok_and(&matches));
        }
    }
}

/// Which cached identities a forwarded request ends, once Synapse has accepted it.
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

/// The session change a request to `path` makes once Synapse accepts it, if any.
pub fn session_change(method: &http::Method, path: &str) -> Option<SessionChange> {
    if let Some(rest) = path.strip_prefix("/_synapse/admin/") {
        return admin_session_change(method, rest);
    }
    let rest = path.strip_prefix("/_matrix/client/")?;
    let (_version, endpoint) = rest.split_once('/')?;
    match (method.as_str(), endpoint) {
        ("POST", "logout") => Some(SessionChange::Token),
        ("POST", "refresh") => Some(SessionChange::Refresh),
        ("POST", "logout/all" | "account/password" | "account/deactivate" | "delete_devices") => {
            Some(SessionChange::UserOfToken)
        }
        ("DELETE", device) if device.starts_with("devices/") => Some(SessionChange::UserOfToken),
        _ => None,
    }
}

/// Synapse's admin API (`/_synapse/admin/{rest}`): a write about a user ends that user's
/// cached identities (cheap to resolve again, and it covers every way the admin API revokes
/// or demotes: deactivation, password resets with `logout_devices`, device deletion, the
/// admin flag).
fn admin_session_change(method: &http::Method, rest: &str) -> Option<SessionChange> {
    if *method == http::Method::GET || *method == http::Method::HEAD {
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
        ["v2", "users", user_id, "devices", device_id] if *method == http::Method::DELETE => Some(
            SessionChange::Device(user(user_id)?, OwnedDeviceId::from(decode(device_id)?)),
        ),
        ["v1", "deactivate" | "reset_password", user_id] | ["v1" | "v2", "users", user_id, ..] => {
            Some(SessionChange::User(user(user_id)?))
        }
        _ => None,
    }
}

/// Whether a request changes the profile (`PUT /profile/{userId}/displayname|avatar_url`, or
/// the whole profile with `PUT`/`PATCH /profile/{userId}`), which local rooms must reflect.
pub fn changes_profile(method: &http::Method, path: &str) -> bool {
    if method != http::Method::PUT && method != http::Method::PATCH {
        return false;
    }
    let Some(rest) = path.strip_prefix("/_matrix/client/") else {
        return false;
    };
    let segments: Vec<&str> = rest.split('/').collect();
    matches!(
        segments.as_slice(),
        [_, "profile", _] | [_, "profile", _, "displayname" | "avatar_url"]
    )
}

/// The access token of a request: `Authorization: Bearer`, else the deprecated
/// `access_token` query parameter.
pub fn access_token<'a>(
    headers: &'a http::HeaderMap,
    query: Option<&'a str>,
) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(std::borrow::Cow::Borrowed(token.trim()));
    }
    query_param(query?, "access_token")
}

/// One query parameter, form-decoded.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue, Method};

    #[test]
    fn tokens_from_header_or_query() {
        let mut headers = HeaderMap::new();
        assert_eq!(
            access_token(&headers, Some("a=1&access_token=syt_x%2By")).as_deref(),
            Some("syt_x+y")
        );
        assert_eq!(access_token(&headers, Some("a=1")), None);
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer syt_header"),
        );
        assert_eq!(
            access_token(&headers, Some("access_token=other")).as_deref(),
            Some("syt_header")
        );
    }

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_param("user_id=%40a%3Ahs&ts=5", "user_id").as_deref(),
            Some("@a:hs")
        );
        assert_eq!(query_param("ts=5", "user_id"), None);
        assert_eq!(query_param("x=a+b", "x").as_deref(), Some("a b"));
    }

    #[test]
    fn session_changes() {
        assert_eq!(
            session_change(&Method::POST, "/_matrix/client/v3/logout"),
            Some(SessionChange::Token)
        );
        let user = |u: &str| Some(SessionChange::User(OwnedUserId::try_from(u).unwrap()));
        let cases = [
            (
                Method::POST,
                "/_matrix/client/r0/logout/all",
                Some(SessionChange::UserOfToken),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/account/password",
                Some(SessionChange::UserOfToken),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/account/deactivate",
                Some(SessionChange::UserOfToken),
            ),
            (
                Method::POST,
                "/_matrix/client/v3/delete_devices",
                Some(SessionChange::UserOfToken),
            ),
            (
                Method::DELETE,
                "/_matrix/client/v3/devices/ABC",
                Some(SessionChange::UserOfToken),
            ),
            (Method::GET, "/_matrix/client/v3/devices/ABC", None),
            (
                Method::POST,
                "/_matrix/client/v3/refresh",
                Some(SessionChange::Refresh),
            ),
            (
                Method::POST,
                "/_matrix/client/v1/refresh",
                Some(SessionChange::Refresh),
            ),
            (
                Method::POST,
                "/_synapse/admin/v1/deactivate/%40a%3Ahs",
                user("@a:hs"),
            ),
            (
                Method::POST,
                "/_synapse/admin/v1/reset_password/@a:hs",
                user("@a:hs"),
            ),
            (
                Method::PUT,
                "/_synapse/admin/v2/users/%40a%3Ahs",
                user("@a:hs"),
            ),
            (Method::GET, "/_synapse/admin/v2/users/%40a%3Ahs", None),
            (
                Method::POST,
                "/_synapse/admin/v2/users/@a:hs/delete_devices",
                user("@a:hs"),
            ),
            (
                Method::PUT,
                "/_synapse/admin/v1/users/@a:hs/admin",
                user("@a:hs"),
            ),
            (
                Method::DELETE,
                "/_synapse/admin/v2/users/%40a%3Ahs/devices/DEV%2F1",
                Some(SessionChange::Device(
                    OwnedUserId::try_from("@a:hs").unwrap(),
                    OwnedDeviceId::from("DEV/1"),
                )),
            ),
            (
                Method::DELETE,
                "/_synapse/admin/v2/users/not-a-user/devices/D",
                None,
            ),
            (Method::DELETE, "/_synapse/admin/v1/rooms/!r:hs", None),
        ];
        for (method, path, want) in cases {
            assert_eq!(session_change(&method, path), want, "{method} {path}");
        }
        assert_eq!(
            session_change(&Method::GET, "/_matrix/client/v3/logout"),
            None
        );
        assert_eq!(
            session_change(&Method::POST, "/_matrix/client/v3/login"),
            None
        );
    }

    #[test]
    fn profile_changes() {
        assert!(changes_profile(
            &Method::PUT,
            "/_matrix/client/v3/profile/@a:hs/displayname"
        ));
        assert!(changes_profile(
            &Method::PUT,
            "/_matrix/client/r0/profile/%40a%3Ahs/avatar_url"
        ));
        assert!(changes_profile(
            &Method::PATCH,
            "/_matrix/client/v3/profile/@a:hs"
        ));
        assert!(!changes_profile(
            &Method::GET,
            "/_matrix/client/v3/profile/@a:hs/displayname"
        ));
        assert!(!changes_profile(
            &Method::PUT,
            "/_matrix/client/v3/profile/@a:hs/m.tz"
        ));
    }

    #[test]
    fn txn_scopes_differ_by_device_and_appservice() {
        let user = OwnedUserId::try_from("@a:hs").unwrap();
        let by_device = Requester {
            user_id: user.clone(),
            device_id: Some("D1".into()),
            appservice: None,
        };
        let other_device = Requester {
            user_id: user.clone(),
            device_id: Some("D2".into()),
            appservice: None,
        };
        assert_ne!(by_device.txn_scope(), other_device.txn_scope());
    }
}

//! Who is making a request: an access token becomes a [`Requester`].
//!
//! * Appservice tokens (`as_token` of a registration file, or of a bridge registered at run
//!   time behind the umbrella, known by its SHA-256 only) are recognised locally. The appservice
//!   acts as its bot, or as `?user_id=` when that user is inside its user namespaces (else
//!   403, with Synapse's wording) and registered on Synapse.
//! * Every other token is Synapse's: it is resolved with `/account/whoami` (bounded by
//!   `synapse.whoami_timeout_s`) and cached by its SHA-256: used without asking for
//!   [`POSITIVE_TTL`] (refusals for [`NEGATIVE_TTL`]), then checked again on its next use.
//!   Every revocation that passes through hungryserv and that Synapse accepts drops the
//!   entries it ends at once (`routing::SessionChange`, acted on in `server::forward`): a
//!   logout, password change or deactivation, a device deleted by its user or by Synapse's
//!   admin API, any admin API write about a user, a `/refresh`.
//!
//! **Degraded mode.** An identity Synapse confirmed stays valid while Synapse cannot answer
//! (connect error, timeout, 5xx): past its TTL it is checked again, and served as it was when
//! the check fails — at once, without asking, while Synapse is taken to be down
//! ([`crate::upstream::health`]), so a hung Synapse costs a local request nothing. The entry
//! stays due, so the first request after Synapse answers again checks it. A token Synapse
//! never confirmed (or refused) gets 502 while Synapse cannot answer.
//!
//! Why that is safe: every way to revoke a token — `/logout`, `/logout/all`, a password
//! change, deactivation, device deletion, `/refresh` — is a request to Synapse, and clients
//! reach Synapse only through hungryserv. While Synapse cannot answer, none of them can
//! succeed, so no revocation can happen unseen; once Synapse answers, the re-check sees any
//! that did. A revocation that passes through hungryserv but whose answer is lost (Synapse
//! carried it out, then the connection failed) drops the cache entries too (`server::forward`).
//! The exceptions, where a token may be served after Synapse revoked it, for as long as
//! Synapse cannot be asked:
//!
//! * a revocation made on a path that bypasses hungryserv: Synapse's admin API on its own
//!   listener, `synctl`/database edits, a token expiring by Synapse's clock
//!   (`refreshable_access_token_lifetime`), a user deactivated by a module;
//! * a revocation Synapse carried out in its last moments before it became unreachable,
//!   which arrived by one of those paths.
//!
//! Several instances: a revocation passes through one of them, and the others' caches must
//! drop it too. Each forget is announced ([`crate::cluster`]: the token's SHA-256, never the
//! token) and applied by every other instance ([`Identity::apply_revocation`]) within a
//! round trip. While an instance's listener is disconnected it hears of nothing, so on every
//! (re)connect it drops its whole cache (the listener calls `apply_revocation(All)`): a token
//! is then asked of Synapse again, never served past a revocation it missed.
//!
//! Tokens are never logged and never stored in clear: the cache key is the hash.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId};
use sha2::{Digest, Sha256};

use crate::cluster::note::{Note, Outbox, Revocation};
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
    /// A guest account, as whoami said: guests join local rooms only where `guest_access`
    /// is `can_join`.
    pub is_guest: bool,
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

/// What Synapse said about a token: its owner, or its refusal.
type Resolved = Result<(OwnedUserId, Option<OwnedDeviceId>), Refusal>;

struct Cached {
    outcome: Resolved,
    /// Until then the outcome is used without asking Synapse. After it, a refusal is
    /// forgotten, while a confirmed identity is checked again on its next use — and still
    /// served if Synapse cannot answer (degraded mode).
    until: Instant,
}

/// Resolves tokens; shared by all requests.
pub struct Identity {
    server_name: OwnedServerName,
    synapse: Synapse,
    /// `sha256(as_token) → registration`: the files', and bridges registered at run time
    /// (`appservice::umbrella`), which come and go.
    appservices: std::sync::RwLock<HashMap<[u8; 32], Arc<Registration>>>,
    /// `sha256(token) → whoami outcome`.
    tokens: Mutex<HashMap<[u8; 32], Cached>>,
    /// Users an appservice may act as, seen registered on Synapse.
    registered: Mutex<HashSet<OwnedUserId>>,
    /// Users whose latest whoami said `is_guest` (a guest who registers properly keeps the
    /// user ID and leaves this set at the next whoami).
    guests: Mutex<HashSet<OwnedUserId>>,
    /// `sha256(token) → (is a server admin, until)`.
    admins: Mutex<HashMap<[u8; 32], (bool, Instant)>>,
    /// Bumped by every forget: a whoami answer that was in flight across a forget (a logout
    /// passing through meanwhile) is not cached, or it would resurrect the token.
    generation: std::sync::atomic::AtomicU64,
    /// Requests served on a confirmed identity while Synapse could not answer.
    served_confirmed: std::sync::atomic::AtomicU64,
    /// Where revocations are announced to other instances on the same database, if any: a
    /// revocation passes through one instance, and every instance's cache must drop it.
    others: std::sync::OnceLock<Outbox>,
}

fn to_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
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
            appservices: std::sync::RwLock::new(
                registrations
                    .iter()
                    .map(|registration| {
                        (
                            digest(&registration.as_token),
                            Arc::new(registration.clone()),
                        )
                    })
                    .collect(),
            ),
            tokens: Mutex::new(HashMap::new()),
            registered: Mutex::new(HashSet::new()),
            guests: Mutex::new(HashSet::new()),
            admins: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
            served_confirmed: std::sync::atomic::AtomicU64::new(0),
            others: std::sync::OnceLock::new(),
        }
    }

    /// From now on, revocations are announced through `outbox` (several instances).
    pub fn share(&self, outbox: Outbox) {
        let _ = self.others.set(outbox);
    }

    fn announce(&self, revocation: Revocation) {
        if let Some(outbox) = self.others.get() {
            outbox.send(Note::Revoke(revocation));
        }
    }

    /// Applies a revocation another instance announced.
    pub fn apply_revocation(&self, revocation: &Revocation) {
        match revocation {
            Revocation::Token { digest } => match from_hex(digest) {
                Some(digest) => self.forget_digest(&digest),
                None => self.forget_where(|_| true),
            },
            Revocation::UserOf { digest } => match from_hex(digest) {
                Some(digest) => self.forget_user_of_digest(&digest),
                None => self.forget_where(|_| true),
            },
            Revocation::User { user } => match OwnedUserId::try_from(user.as_str()) {
                Ok(user) => self.forget_where(|(cached, _)| *cached == user),
                Err(_) => self.forget_where(|_| true),
            },
            Revocation::Device { user, device, keep } => {
                match OwnedUserId::try_from(user.as_str()) {
                    Ok(user) => {
                        let device = OwnedDeviceId::from(device.as_str());
                        let keep = keep.as_deref().and_then(from_hex);
                        self.forget_device_digest(&user, &device, keep);
                    }
                    Err(_) => self.forget_where(|_| true),
                }
            }
            Revocation::All => self.forget_where(|_| true),
        }
    }

    /// The appservice whose `as_token` this is, without any network call (for routing).
    pub fn appservice(&self, token: &str) -> Option<Arc<Registration>> {
        self.appservices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest(token))
            .cloned()
    }

    /// Recognises a bridge registered at run time by its token's SHA-256 (replacing any
    /// earlier registration of the same id: an old token stops working at once).
    pub fn insert_appservice(&self, token_hash: [u8; 32], registration: Arc<Registration>) {
        let mut appservices = self.appservices.write().unwrap_or_else(|e| e.into_inner());
        appservices.retain(|_, old| old.id != registration.id);
        appservices.insert(token_hash, registration);
    }

    /// Stops recognising the appservice with this id.
    pub fn remove_appservice(&self, id: &str) {
        let mut appservices = self.appservices.write().unwrap_or_else(|e| e.into_inner());
        appservices.retain(|_, old| old.id != id);
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
                .appservice_requester(token, appservice, user_id_param)
                .await;
        }
        let key = digest(token);
        let now = Instant::now();
        let cached = self.tokens.lock().ok().and_then(|tokens| {
            tokens
                .get(&key)
                .map(|entry| (entry.outcome.clone(), entry.until > now))
        });
        let outcome = match cached {
            Some((outcome, true)) => outcome,
            // Degraded mode: Synapse is taken to be down, so asking would only wait.
            Some((Ok(identity), false)) if !self.synapse.health.is_up() => {
                self.served_confirmed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(identity)
            }
            stale => {
                let confirmed = stale.and_then(|(outcome, _)| outcome.ok());
                match self.check(token, key).await {
                    Ok(outcome) => outcome,
                    // Synapse cannot answer: an identity it confirmed before stays valid (see
                    // the module doc for why that is safe); the entry stays due, so it is
                    // checked again once Synapse answers.
                    Err(failure) => match confirmed {
                        Some(identity) => {
                            self.served_confirmed
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Ok(identity)
                        }
                        None => return Err(failure),
                    },
                }
            }
        };
        let (user_id, device_id) = outcome.map_err(AuthFailure::Refused)?;
        let is_guest = self
            .guests
            .lock()
            .is_ok_and(|guests| guests.contains(&user_id));
        Ok(Requester {
            user_id,
            device_id,
            appservice: None,
            is_guest,
        })
    }

    /// Asks Synapse who owns `token` and caches the answer: `Err` when Synapse could not
    /// answer (unreachable, timed out, 5xx), `Ok(Err(refusal))` when it refused the token.
    async fn check(&self, token: &str, key: [u8; 32]) -> Result<Resolved, AuthFailure> {
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let outcome = match self.synapse.whoami(token).await {
            Ok(whoami) => match OwnedUserId::try_from(whoami.user_id.as_str()) {
                Ok(user_id) => {
                    if let Ok(mut guests) = self.guests.lock() {
                        if whoami.is_guest {
                            if guests.len() >= MAX_ENTRIES {
                                guests.clear();
                            }
                            guests.insert(user_id.clone());
                        } else {
                            guests.remove(&user_id);
                        }
                    }
                    Ok((user_id, whoami.device_id.map(OwnedDeviceId::from)))
                }
                Err(_) => {
                    return Err(AuthFailure::Unavailable(
                        "whoami returned an invalid user id".into(),
                    ));
                }
            },
            Err(CallError::Refused(refusal)) if refusal.status.is_client_error() => Err(refusal),
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
                // Due identities go first; they are what degraded mode would serve, but a
                // full cache must not grow.
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
        Ok(outcome)
    }

    /// How many requests were served on an identity Synapse confirmed before, while it could
    /// not answer (degraded mode).
    pub fn served_confirmed(&self) -> u64 {
        self.served_confirmed
            .load(std::sync::atomic::Ordering::Relaxed)
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
            is_guest: false,
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
        let digest = digest(token);
        self.announce(Revocation::Token {
            digest: to_hex(&digest),
        });
        self.forget_digest(&digest);
    }

    fn forget_digest(&self, digest: &[u8; 32]) {
        // Admin entries are keyed by token and user; which belong to this token cannot be
        // told apart cheaply, and they are simply asked again.
        if let Ok(mut admins) = self.admins.lock() {
            admins.clear();
        }
        if let Ok(mut tokens) = self.tokens.lock() {
            self.generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokens.remove(digest);
        }
    }

    /// Drops every cached token of the user owning `token` (after `/logout/all`, a password
    /// change or a deactivation passed through).
    pub fn forget_user_of(&self, token: &str) {
        let digest = digest(token);
        self.announce(Revocation::UserOf {
            digest: to_hex(&digest),
        });
        self.forget_user_of_digest(&digest);
    }

    fn forget_user_of_digest(&self, digest: &[u8; 32]) {
        if let Ok(mut admins) = self.admins.lock() {
            admins.clear();
        }
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let user = tokens
            .get(digest)
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
        self.announce(Revocation::User {
            user: user.to_string(),
        });
        self.forget_where(|(cached, _)| cached == user);
    }

    /// Drops the cached tokens of one device of `user` (after the device was deleted, or
    /// its token refreshed), but `keep` (the refreshed token itself).
    pub fn forget_device(&self, user: &OwnedUserId, device: &OwnedDeviceId, keep: Option<&str>) {
        let keep = keep.map(digest);
        self.announce(Revocation::Device {
            user: user.to_string(),
            device: device.to_string(),
            keep: keep.as_ref().map(to_hex),
        });
        self.forget_device_digest(user, device, keep);
    }

    fn forget_device_digest(
        &self,
        user: &OwnedUserId,
        device: &OwnedDeviceId,
        keep: Option<[u8; 32]>,
    ) {
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
            _ => {
                self.announce(Revocation::All);
                self.forget_where(|_| true);
            }
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
    use http::{HeaderMap, HeaderValue};

    /// How the fake Synapse answers `/account/whoami`.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        Answer,
        Refuse,
        Fail,
        Hang,
    }

    /// A fake Synapse on a free port whose whoami answers as `mode` says; returns its handle
    /// and how many whoami calls it received.
    async fn fake_synapse(
        mode: Arc<Mutex<Mode>>,
    ) -> (Synapse, Arc<std::sync::atomic::AtomicUsize>) {
        use axum::routing::get;
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let app = axum::Router::new().route(
            "/_matrix/client/v3/account/whoami",
            get(move || {
                let mode = *mode.lock().unwrap();
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async move {
                    match mode {
                        Mode::Answer => (
                            http::StatusCode::OK,
                            r#"{"user_id":"@a:hs","device_id":"D"}"#,
                        ),
                        Mode::Refuse => (
                            http::StatusCode::UNAUTHORIZED,
                            r#"{"errcode":"M_UNKNOWN_TOKEN","error":"gone"}"#,
                        ),
                        Mode::Fail => (http::StatusCode::BAD_GATEWAY, "{}"),
                        Mode::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            (http::StatusCode::OK, "{}")
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let synapse = Synapse::new(
            &crate::config::SynapseConfig {
                base: address.to_string().parse().unwrap(),
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_secs(5),
                pool_idle_timeout: Duration::from_secs(5),
                pool_max_idle: 4,
                whoami_timeout: Duration::from_millis(300),
                sync_grace: Duration::from_secs(1),
            },
            &crate::config::LimitsConfig {
                max_forward_body_bytes: None,
                max_local_body_bytes: 1 << 20,
            },
        );
        (synapse, calls)
    }

    /// Makes every cached identity due for a check, as if its TTL had passed.
    fn expire(identity: &Identity) {
        let past = Instant::now() - Duration::from_secs(1);
        for entry in identity.tokens.lock().unwrap().values_mut() {
            entry.until = past;
        }
    }

    #[tokio::test]
    async fn a_confirmed_identity_outlives_synapse_trouble() {
        let mode = Arc::new(Mutex::new(Mode::Answer));
        let (synapse, calls) = fake_synapse(mode.clone()).await;
        let identity = Identity::new("hs".try_into().unwrap(), synapse.clone(), &[]);
        let user = |r: Result<Requester, AuthFailure>| r.map(|r| r.user_id.to_string());
        assert_eq!(
            user(identity.resolve(Some("t"), None).await).unwrap(),
            "@a:hs"
        );

        for trouble in [Mode::Fail, Mode::Hang] {
            // Past the TTL, Synapse fails or hangs: the identity stays, after a bounded wait.
            *mode.lock().unwrap() = trouble;
            synapse.health.answered();
            expire(&identity);
            let started = Instant::now();
            assert_eq!(
                user(identity.resolve(Some("t"), None).await).unwrap(),
                "@a:hs"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
            // Synapse is now taken to be down: served at once, Synapse not asked.
            assert!(!synapse.health.is_up());
            let before = calls.load(std::sync::atomic::Ordering::SeqCst);
            assert_eq!(
                user(identity.resolve(Some("t"), None).await).unwrap(),
                "@a:hs"
            );
            assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), before);
        }
        // A token Synapse never confirmed is not let in meanwhile.
        assert!(matches!(
            identity.resolve(Some("other"), None).await,
            Err(AuthFailure::Unavailable(_))
        ));

        // Synapse answers again and has revoked the token: the check sees it.
        *mode.lock().unwrap() = Mode::Refuse;
        synapse.health.answered();
        assert!(matches!(
            identity.resolve(Some("t"), None).await,
            Err(AuthFailure::Refused(_))
        ));
        // Refused is not confirmed: with Synapse down again it stays out.
        *mode.lock().unwrap() = Mode::Fail;
        expire(&identity);
        assert!(identity.resolve(Some("t"), None).await.is_err());
    }

    #[tokio::test]
    async fn a_logout_ends_a_confirmed_identity_in_degraded_mode() {
        let mode = Arc::new(Mutex::new(Mode::Answer));
        let (synapse, _calls) = fake_synapse(mode.clone()).await;
        let identity = Identity::new("hs".try_into().unwrap(), synapse.clone(), &[]);
        assert!(identity.resolve(Some("t"), None).await.is_ok());
        *mode.lock().unwrap() = Mode::Fail;
        synapse.health.failed();
        identity.forget_token("t");
        assert!(matches!(
            identity.resolve(Some("t"), None).await,
            Err(AuthFailure::Unavailable(_))
        ));
    }

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
    fn txn_scopes_differ_by_device_and_appservice() {
        let user = OwnedUserId::try_from("@a:hs").unwrap();
        let by_device = Requester {
            user_id: user.clone(),
            device_id: Some("D1".into()),
            appservice: None,
            is_guest: false,
        };
        let other_device = Requester {
            user_id: user.clone(),
            device_id: Some("D2".into()),
            appservice: None,
            is_guest: false,
        };
        assert_ne!(by_device.txn_scope(), other_device.txn_scope());
    }
}

//! A minimal Matrix client for the benchmarks: log in, create a room, and run a closed-loop
//! load of one request shape against one target.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::Load;
use crate::stats::Phase;

pub type Http = Client<HttpConnector, Full<Bytes>>;

pub fn http() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// Sends one JSON request and returns the status and parsed body.
pub async fn call(
    http: &Http,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(http::StatusCode, Value)> {
    let (status, bytes) = call_raw(http, method, url, token, body).await?;
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, value))
}

/// Sends one JSON request and returns the status and the whole body, unparsed.
pub async fn call_raw(
    http: &Http,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<(http::StatusCode, Bytes)> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let body = match body {
        Some(value) => {
            builder = builder.header("content-type", "application/json");
            Full::new(Bytes::from(serde_json::to_vec(value)?))
        }
        None => Full::default(),
    };
    let response = http
        .request(builder.body(body)?)
        .await
        .with_context(|| format!("request to {url}"))?;
    let status = response.status();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, bytes))
}

/// The URL of a `GET /sync` with the given parameters.
pub fn sync_url(base: &str, since: Option<&str>, timeout_ms: u64, filter: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(since) = since {
        query.append_pair("since", since);
    }
    query.append_pair("timeout", &timeout_ms.to_string());
    if let Some(filter) = filter {
        query.append_pair("filter", filter);
    }
    format!("{base}/_matrix/client/v3/sync?{}", query.finish())
}

/// An appservice as the benchmarks use it: its token and server name.
pub struct Appservice {
    /// The registration's `as_token`.
    pub token: String,
    /// The server name, from the bot's (`sender_localpart`) user ID.
    pub server: String,
    /// The bot's user ID.
    pub bot: String,
}

impl Appservice {
    /// Reads the registration and checks that `base` accepts its token.
    pub async fn load(http: &Http, base: &str, registration: &Path) -> anyhow::Result<Self> {
        let registration = hungryserv::config::registration::load(registration)
            .map_err(|err| anyhow::anyhow!("{}: {err}", registration.display()))?;
        let token = registration.as_token;
        let (status, whoami) = call(
            http,
            Method::GET,
            &format!("{base}/_matrix/client/v3/account/whoami"),
            Some(&token),
            None,
        )
        .await?;
        if !status.is_success() {
            bail!("the appservice token is not accepted: {status} {whoami}");
        }
        let bot = whoami["user_id"]
            .as_str()
            .context("whoami has no user_id")?
            .to_owned();
        let server = bot
            .split_once(':')
            .map(|(_, server)| server.to_owned())
            .context("whoami's user_id has no server")?;
        Ok(Self { token, server, bot })
    }

    /// Registers the ghost `@{localpart}:{server}` (an existing one is fine) and returns its ID.
    pub async fn ghost(&self, http: &Http, base: &str, localpart: &str) -> anyhow::Result<String> {
        // Already registered on an earlier run: M_USER_IN_USE, which is fine.
        call(
            http,
            Method::POST,
            &format!("{base}/_matrix/client/v3/register"),
            Some(&self.token),
            Some(&json!({"type": "m.login.application_service", "username": localpart})),
        )
        .await?;
        Ok(format!("@{localpart}:{}", self.server))
    }

    /// Logs a ghost in (`m.login.application_service`) and returns an ordinary access token
    /// of a new device: the ghost then syncs like any client.
    pub async fn login(&self, http: &Http, base: &str, localpart: &str) -> anyhow::Result<String> {
        let (status, body) = call(
            http,
            Method::POST,
            &format!("{base}/_matrix/client/v3/login"),
            Some(&self.token),
            Some(&json!({
                "type": "m.login.application_service",
                "identifier": {"type": "m.id.user", "user": localpart},
                "initial_device_display_name": "hsbench",
            })),
        )
        .await?;
        if !status.is_success() {
            bail!("appservice login as {localpart} failed: {status} {body}");
        }
        body["access_token"]
            .as_str()
            .map(str::to_owned)
            .context("login answer has no access_token")
    }
}

/// Logs a token out, dropping its device (so benchmark runs do not pile devices up).
pub async fn logout(http: &Http, base: &str, token: &str) -> anyhow::Result<()> {
    let (status, body) = call(
        http,
        Method::POST,
        &format!("{base}/_matrix/client/v3/logout"),
        Some(token),
        Some(&json!({})),
    )
    .await?;
    if !status.is_success() {
        bail!("logout failed: {status} {body}");
    }
    Ok(())
}

/// Logs in with a password and returns the access token.
pub async fn login(http: &Http, base: &str, user: &str, password: &str) -> anyhow::Result<String> {
    let (status, body) = call(
        http,
        Method::POST,
        &format!("{base}/_matrix/client/v3/login"),
        None,
        Some(&json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": "hsbench",
        })),
    )
    .await?;
    if !status.is_success() {
        bail!("login as {user} failed: {status} {body}");
    }
    body["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("login answer has no access_token")
}

/// Creates a private room and returns its ID.
pub async fn create_room(
    http: &Http,
    base: &str,
    token: &str,
    name: &str,
) -> anyhow::Result<String> {
    create_room_with(
        http,
        base,
        token,
        &json!({"name": name, "preset": "private_chat"}),
    )
    .await
}

/// Creates a room with the given `createRoom` body and returns its ID.
pub async fn create_room_with(
    http: &Http,
    base: &str,
    token: &str,
    body: &Value,
) -> anyhow::Result<String> {
    let (status, answer) = call(
        http,
        Method::POST,
        &format!("{base}/_matrix/client/v3/createRoom"),
        Some(token),
        Some(body),
    )
    .await?;
    if !status.is_success() {
        bail!("createRoom at {base} failed: {status} {answer}");
    }
    answer["room_id"]
        .as_str()
        .map(str::to_owned)
        .context("createRoom answer has no room_id")
}

/// Joins a room as the token's user, or (an appservice token) as `ghost` with `?user_id=`.
pub async fn join(
    http: &Http,
    base: &str,
    token: &str,
    room_id: &str,
    ghost: Option<&str>,
) -> anyhow::Result<()> {
    let mut url = format!(
        "{base}/_matrix/client/v3/rooms/{}/join",
        hungryserv::upstream::client::encode_segment(room_id)
    );
    if let Some(ghost) = ghost {
        url.push_str("?user_id=");
        url.push_str(&hungryserv::upstream::client::encode_segment(ghost));
    }
    let (status, body) = call(http, Method::POST, &url, Some(token), Some(&json!({}))).await?;
    if !status.is_success() {
        let who = ghost.unwrap_or("the token's user");
        bail!("{who} could not join {room_id} at {base}: {status} {body}");
    }
    Ok(())
}

/// Builds a request of a workload from a number unique within the run.
pub type MakeRequest = Arc<dyn Fn(u64) -> Request<Full<Bytes>> + Send + Sync>;

/// Measures two targets under the same load, alternating between them for `load.rounds`
/// rounds (each a share of the duration and request bound), so drift on the machine — a
/// background job, a warming cache — lands on both sides instead of on whichever ran second.
/// Each target gets one unmeasured warm-up first.
pub async fn compare(
    http: &Http,
    load: &Load,
    direct: MakeRequest,
    proxied: MakeRequest,
) -> (Phase, Phase) {
    let rounds = load.rounds.max(1);
    let share = load.duration() / rounds;
    let max_requests = (load.max_requests / u64::from(rounds)).max(1);
    for make in [&direct, &proxied] {
        run_for(http, load.clients, load.warmup(), u64::MAX, make.clone()).await;
    }
    let (mut direct_total, mut proxied_total) = (Phase::default(), Phase::default());
    for _ in 0..rounds {
        settle().await;
        direct_total.absorb(run_for(http, load.clients, share, max_requests, direct.clone()).await);
        settle().await;
        proxied_total
            .absorb(run_for(http, load.clients, share, max_requests, proxied.clone()).await);
    }
    (direct_total, proxied_total)
}

/// Waits (at most 30 s) until the machine is quiet: Synapse keeps working for seconds after a
/// burst of sends (persisting, push rules, appservice queues), and that work must not be
/// counted against whichever target is measured next.
pub async fn settle() {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(before) = cpu_times() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(after) = cpu_times() else {
            return;
        };
        let (busy, total) = (
            after.0.saturating_sub(before.0),
            after.1.saturating_sub(before.1),
        );
        // Below 15% of all cores busy counts as quiet.
        if total == 0 || busy * 100 / total < 15 {
            return;
        }
    }
}

/// `(busy, total)` jiffies of all CPUs, from /proc/stat.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    // idle and iowait are the 4th and 5th fields.
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// Numbers every request of the whole run, across phases and rounds: workloads derive
/// transaction IDs from it, and a repeated ID would be answered from the server's
/// transaction cache instead of writing anything.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// One closed-loop phase against one target: `clients` tasks, each sending its next request
/// when the last is answered, until `duration` or `max_requests`.
pub async fn run_for(
    http: &Http,
    clients: usize,
    duration: Duration,
    max_requests: u64,
    make: MakeRequest,
) -> Phase {
    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let http = http.clone();
        let make = make.clone();
        let issued = issued.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= max_requests || Instant::now() >= deadline {
                    break;
                }
                let request = make(SEQUENCE.fetch_add(1, Ordering::Relaxed));
                let sent = Instant::now();
                let ok = match http.request(request).await {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        // Read the whole body: a request is done when its answer is.
                        ok && response.into_body().collect().await.is_ok()
                    }
                    Err(_) => false,
                };
                if ok {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
            }
            (latencies, errors)
        });
    }
    let mut phase = Phase {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(result) = tasks.join_next().await {
        if let Ok((latencies, errors)) = result {
            phase.latencies.extend(latencies);
            phase.errors += errors;
        }
    }
    phase.elapsed = started.elapsed();
    phase
}

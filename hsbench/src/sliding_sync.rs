//! `sliding-sync`: simplified sliding sync (MSC4186) with many rooms. A fresh appservice
//! ghost is in R rooms: R/2 local rooms (created through hungryserv) and R/2 Synapse rooms
//! (created at Synapse), each with one message. The ghost creates them itself (the
//! appservice token with `?user_id=`), so setup is two requests per room, a few at a time.
//!
//! Measured, in alternating rounds:
//!
//! * **first window**: a sliding sync without `pos` (`ranges [[0, 19]]`, `timeline_limit` 1,
//!   Element X's `required_state`), straight at Synapse (its R/2 rooms) and through
//!   hungryserv (all R, merged). The answer through hungryserv must count R rooms and name
//!   20; Synapse's must count R/2.
//! * **wake-up**: a waiting sliding sync (`timeout=30000`, its last `pos`) through hungryserv;
//!   the ghost sends a message into a local room; time from the send's 200 (and from its
//!   start) to the answer carrying it. The same at Synapse for a Synapse room, for reference.
//!
//! Targets (issue 20): first window ≤ 100 ms with 1,000 rooms, local wake-up p50 ≤ 5 ms.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use http::Method;
use hungryserv::upstream::client::encode_segment;
use serde_json::{Value, json};

use crate::client::{self, Appservice, Http};
use crate::stats::{quantile, signed_ms};

#[derive(Args)]
pub struct Options {
    /// Synapse's own listener.
    #[arg(long, default_value = "http://127.0.0.1:8009")]
    synapse: String,
    /// hungryserv's public listener.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    hungryserv: String,
    /// The appservice registration whose ghost is the syncing user.
    #[arg(long)]
    registration: PathBuf,
    /// Localpart prefix of the ghost (inside the registration's namespace); a run id follows.
    #[arg(long, default_value = "example_bench_ss_")]
    ghost_prefix: String,
    /// Rooms of the user, half local and half Synapse's.
    #[arg(long, default_value_t = 1000)]
    rooms: usize,
    /// Rooms created at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured first windows per target.
    #[arg(long, default_value_t = 30)]
    windows: u32,
    /// Measured wake-ups per row.
    #[arg(long, default_value_t = 100)]
    wakeups: u32,
    /// Upper bound on the setup, in seconds.
    #[arg(long, default_value_t = 900.0)]
    setup_seconds: f64,
    /// How long a waiting request runs before the send, in milliseconds.
    #[arg(long, default_value_t = 30)]
    head_start_ms: u64,
}

/// The sliding sync path (Synapse serves only the unstable one).
const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
/// The long-poll timeout of a waiting request, as Element X uses it.
const WAIT_MS: u64 = 30_000;
/// Rounds the measured work is split into, the targets taking turns.
const ROUNDS: u32 = 5;

/// Element X's room-list request (matrix-rust-sdk `RoomListService`), first window.
fn first_window_body(conn_id: &str) -> Value {
    json!({
        "conn_id": conn_id,
        "lists": {"all_rooms": {
            "ranges": [[0, 19]],
            "timeline_limit": 1,
            "filters": {},
            "required_state": [
                ["m.room.name", ""], ["m.room.encryption", ""], ["m.room.member", "$LAZY"],
                ["m.room.member", "$ME"], ["m.room.topic", ""], ["m.room.avatar", ""],
                ["m.room.canonical_alias", ""], ["m.room.power_levels", ""],
                ["m.room.join_rules", ""], ["m.room.create", ""], ["m.room.history_visibility", ""],
                ["m.room.tombstone", ""]
            ]
        }},
        "extensions": {"receipts": {"enabled": true}, "typing": {"enabled": true},
                       "account_data": {"enabled": true}}
    })
}

fn url(base: &str, pos: Option<&str>, timeout_ms: u64) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(pos) = pos {
        query.append_pair("pos", pos);
    }
    query.append_pair("timeout", &timeout_ms.to_string());
    format!("{base}{PATH}?{}", query.finish())
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let http = client::http();
    let appservice = Appservice::load(&http, &options.hungryserv, &options.registration).await?;
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let localpart = format!("{}{run_id}", options.ghost_prefix);
    let user_id = appservice
        .ghost(&http, &options.synapse, &localpart)
        .await?;
    // One device per target, as two clients would have.
    let direct = appservice
        .login(&http, &options.synapse, &localpart)
        .await?;
    let proxied = appservice
        .login(&http, &options.hungryserv, &localpart)
        .await?;
    let result = measure(&http, &appservice, &options, &user_id, &direct, &proxied).await;
    for (base, token) in [(&options.synapse, &direct), (&options.hungryserv, &proxied)] {
        if let Err(err) = client::logout(&http, base, token).await {
            eprintln!("hsbench: {err:#}");
        }
    }
    result
}

async fn measure(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    user_id: &str,
    direct: &str,
    proxied: &str,
) -> anyhow::Result<()> {
    let half = options.rooms / 2;
    println!(
        "sliding-sync: {user_id} in {} local + {half} Synapse rooms (one message each)",
        options.rooms - half
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.setup_seconds);
    let local = create_rooms(
        http,
        appservice,
        options,
        user_id,
        false,
        options.rooms - half,
        deadline,
    )
    .await?;
    let synapse = create_rooms(http, appservice, options, user_id, true, half, deadline).await?;
    println!(
        "  setup: {} rooms in {:.1} s",
        local.len() + synapse.len(),
        started.elapsed().as_secs_f64()
    );
    client::settle().await;

    // First windows, alternating.
    let mut direct_ms = Vec::new();
    let mut merged_ms = Vec::new();
    let per_round = options.windows.div_ceil(ROUNDS);
    let mut n = 0u32;
    // One unmeasured request each first (connections, caches of the token).
    first_window(http, &options.synapse, direct, "warm", half).await?;
    first_window(http, &options.hungryserv, proxied, "warm", options.rooms).await?;
    for _ in 0..ROUNDS {
        for _ in 0..per_round {
            n += 1;
            let conn = format!("w{n}");
            direct_ms.push(first_window(http, &options.synapse, direct, &conn, half).await?);
            merged_ms.push(
                first_window(http, &options.hungryserv, proxied, &conn, options.rooms).await?,
            );
        }
    }
    println!(
        "\nfirst window (no pos, ranges [[0, 19]], timeline_limit 1), {} each:",
        direct_ms.len()
    );
    print_row(&format!("synapse ({half} rooms)"), &direct_ms);
    print_row(
        &format!("hungryserv ({} rooms, merged)", options.rooms),
        &merged_ms,
    );

    // Wake-ups.
    let local_room = local.first().context("no local room")?.clone();
    let synapse_room = synapse.first().context("no Synapse room")?.clone();
    let mut rows = [
        WakeRow::new(
            "hungryserv local room",
            &options.hungryserv,
            proxied,
            &local_room,
        ),
        WakeRow::new("synapse (direct)", &options.synapse, direct, &synapse_room),
    ];
    for row in &mut rows {
        row.start(http).await?;
        for _ in 0..3 {
            n += 1;
            row.iterate(http, appservice, user_id, n, options.head_start_ms)
                .await?;
        }
        row.samples.clear();
    }
    let per_round = options.wakeups.div_ceil(ROUNDS);
    for round in 0..ROUNDS {
        for k in 0..rows.len() {
            let row = &mut rows[(k + round as usize) % rows.len()];
            for _ in 0..per_round {
                n += 1;
                match row
                    .iterate(http, appservice, user_id, n, options.head_start_ms)
                    .await
                {
                    Ok(sample) => row.samples.push(sample),
                    Err(err) => {
                        eprintln!("hsbench: {}: {err:#}", row.name);
                        row.errors += 1;
                        row.start(http).await?;
                    }
                }
            }
        }
    }
    println!(
        "\nwake-up (a waiting sliding sync, timeout={WAIT_MS}; one send by the user; {} ms head start):",
        options.head_start_ms
    );
    println!(
        "  {:<26} {:>6} {:>12} {:>12} {:>14} {:>14} {:>7}",
        "row", "n", "200→p50 ms", "200→p99 ms", "start→p50 ms", "start→p99 ms", "errors"
    );
    for row in &rows {
        let after: Vec<f64> = row.samples.iter().map(|s| s.0).collect();
        let from_start: Vec<f64> = row.samples.iter().map(|s| s.1).collect();
        println!(
            "  {:<26} {:>6} {:>12.2} {:>12.2} {:>14.2} {:>14.2} {:>7}",
            row.name,
            row.samples.len(),
            quantile(&after, 0.5),
            quantile(&after, 0.99),
            quantile(&from_start, 0.5),
            quantile(&from_start, 0.99),
            row.errors
        );
    }
    Ok(())
}

fn print_row(name: &str, samples: &[f64]) {
    println!(
        "  {name:<34} p50 {:>8.1} ms   p99 {:>8.1} ms",
        quantile(samples, 0.5),
        quantile(samples, 0.99)
    );
}

/// One first-window request; checks the answer and returns its time in ms.
async fn first_window(
    http: &Http,
    base: &str,
    token: &str,
    conn_id: &str,
    rooms: usize,
) -> anyhow::Result<f64> {
    let body = first_window_body(conn_id);
    let started = Instant::now();
    let (status, answer) = client::call(
        http,
        Method::POST,
        &url(base, None, 0),
        Some(token),
        Some(&body),
    )
    .await?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    if !status.is_success() {
        bail!("sliding sync at {base} failed: {status} {answer}");
    }
    let list = &answer["lists"]["all_rooms"];
    let count = list["count"].as_u64().unwrap_or(0);
    let named = list["ops"][0]["room_ids"].as_array().map_or(0, Vec::len);
    if count != rooms as u64 || named != 20.min(rooms) {
        bail!("sliding sync at {base}: count {count} (want {rooms}), {named} rooms in the window");
    }
    Ok(took)
}

/// Creates `count` rooms, each by the ghost itself, with one message.
async fn create_rooms(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    user_id: &str,
    federate: bool,
    count: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<String>> {
    let base = if federate {
        &options.synapse
    } else {
        &options.hungryserv
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (http, next) = (http.clone(), next.clone());
        let (base, token, user) = (base.clone(), appservice.token.clone(), user_id.to_owned());
        workers.spawn(async move {
            let mut made = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() > deadline {
                    return Ok::<_, anyhow::Error>(made);
                }
                let as_user = format!("user_id={}", encode_segment(&user));
                let (status, body) = client::call(
                    &http,
                    Method::POST,
                    &format!("{base}/_matrix/client/v3/createRoom?{as_user}"),
                    Some(&token),
                    Some(&json!({
                        "preset": "private_chat",
                        "name": format!("hsbench sliding {n}"),
                        "creation_content": {"m.federate": federate},
                    })),
                )
                .await?;
                if !status.is_success() {
                    bail!("createRoom at {base} failed: {status} {body}");
                }
                let room_id = body["room_id"].as_str().context("no room_id")?.to_owned();
                let room = encode_segment(&room_id);
                let (status, body) = client::call(
                    &http,
                    Method::PUT,
                    &format!(
                        "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/ss-{n}?{as_user}"
                    ),
                    Some(&token),
                    Some(&json!({"msgtype": "m.text", "body": format!("hello {n}")})),
                )
                .await?;
                if !status.is_success() {
                    bail!("send into {room_id} failed: {status} {body}");
                }
                made.push(room_id);
            }
        });
    }
    let mut rooms = Vec::with_capacity(count);
    while let Some(joined) = workers.join_next().await {
        rooms.extend(joined.context("room worker")??);
    }
    if rooms.len() < count {
        bail!("setup bound reached: {} of {count} rooms made", rooms.len());
    }
    Ok(rooms)
}

/// One wake-up row: a connection with a position, and the room sent into.
struct WakeRow {
    name: &'static str,
    base: String,
    token: String,
    room_id: String,
    pos: String,
    /// (send 200 → answer, send start → answer) in ms.
    samples: Vec<(f64, f64)>,
    errors: u64,
}

impl WakeRow {
    fn new(name: &'static str, base: &str, token: &str, room_id: &str) -> Self {
        Self {
            name,
            base: base.to_owned(),
            token: token.to_owned(),
            room_id: room_id.to_owned(),
            pos: String::new(),
            samples: Vec::new(),
            errors: 0,
        }
    }

    /// The connection's request: the first window, plus the measured room subscribed.
    fn body(&self) -> Value {
        let mut body = first_window_body(&format!("wake-{}", self.name.len()));
        body["room_subscriptions"] =
            json!({ &self.room_id: {"timeline_limit": 1, "required_state": []} });
        body
    }

    /// A new connection, synced up to the present.
    async fn start(&mut self, http: &Http) -> anyhow::Result<()> {
        let (status, answer) = client::call(
            http,
            Method::POST,
            &url(&self.base, None, 0),
            Some(&self.token),
            Some(&self.body()),
        )
        .await?;
        if !status.is_success() {
            bail!("{}: sliding sync failed: {status} {answer}", self.name);
        }
        self.pos = answer["pos"].as_str().context("no pos")?.to_owned();
        // Drain what is pending (timeout 0) so the waiting request starts from the present.
        let (status, answer) = client::call(
            http,
            Method::POST,
            &url(&self.base, Some(&self.pos), 0),
            Some(&self.token),
            Some(&self.body()),
        )
        .await?;
        if !status.is_success() {
            bail!("{}: sliding sync failed: {status} {answer}", self.name);
        }
        self.pos = answer["pos"].as_str().context("no pos")?.to_owned();
        Ok(())
    }

    /// One send and the waiting request that delivers it.
    async fn iterate(
        &mut self,
        http: &Http,
        appservice: &Appservice,
        user_id: &str,
        n: u32,
        head_start_ms: u64,
    ) -> anyhow::Result<(f64, f64)> {
        let txn = format!(
            "wake-{}-{n}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let (waiter, sent) = {
            let (http2, url_now, token, body) = (
                http.clone(),
                url(&self.base, Some(&self.pos), WAIT_MS),
                self.token.clone(),
                self.body(),
            );
            let waiter = tokio::spawn(async move {
                let answer =
                    client::call(&http2, Method::POST, &url_now, Some(&token), Some(&body)).await;
                (answer, Instant::now())
            });
            tokio::time::sleep(Duration::from_millis(head_start_ms)).await;
            let send_start = Instant::now();
            let room = encode_segment(&self.room_id);
            let (status, body) = client::call(
                http,
                Method::PUT,
                &format!(
                    "{}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}?user_id={}",
                    self.base,
                    encode_segment(user_id)
                ),
                Some(&appservice.token),
                Some(&json!({"msgtype": "m.text", "body": txn})),
            )
            .await?;
            if !status.is_success() {
                bail!("send failed: {status} {body}");
            }
            let event_id = body["event_id"].as_str().context("no event_id")?.to_owned();
            (waiter, (send_start, Instant::now(), event_id))
        };
        let (send_start, send_done, event_id) = sent;
        let mut result = waiter.await.context("waiter")?;
        // An answer without the event (other news): follow it until the event comes.
        for _ in 0..10 {
            let (answer, at) = result;
            let (status, body) = answer?;
            if !status.is_success() {
                bail!("waiting sliding sync failed: {status} {body}");
            }
            self.pos = body["pos"].as_str().context("no pos")?.to_owned();
            let carried = body["rooms"][&self.room_id]["timeline"]
                .as_array()
                .is_some_and(|events| events.iter().any(|e| e["event_id"] == event_id.as_str()));
            if carried {
                return Ok((signed_ms(send_done, at), signed_ms(send_start, at)));
            }
            let answer = client::call(
                http,
                Method::POST,
                &url(&self.base, Some(&self.pos), WAIT_MS),
                Some(&self.token),
                Some(&self.body()),
            )
            .await;
            result = (answer, Instant::now());
        }
        bail!("the event never came")
    }
}

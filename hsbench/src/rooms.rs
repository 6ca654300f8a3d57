//! `rooms`: one user in many rooms. A fresh appservice ghost is in R local rooms (default
//! 10,000) of E messages each (default 100: 1,000,000 in all); another fresh ghost is in the
//! Synapse rooms Synapse can set up within a bounded time (at most S, default 500, with a
//! couple of messages each). Each ghost creates its rooms itself (the appservice token with
//! `?user_id=`); a local room's messages go in with one `batch_send` of the bot, so setup
//! stays short.
//!
//! Measured, the targets taking turns (the local user through hungryserv, the Synapse user
//! straight at Synapse):
//!
//! * **initial `/sync`** with `timeline.limit` 1: time, bytes, the server's CPU, and (with
//!   `--hungryserv-pid`) hungryserv's peak resident set while it runs, sampled from /proc.
//!   Every local room must be in `rooms.join` with its last message. Each request carries a
//!   filter that differs harmlessly (an unused account-data type), so Synapse cannot answer
//!   it from its response cache;
//! * **`/joined_rooms`**;
//! * **sliding sync's first window** (`ranges [[0, 19]]`, `timeline_limit` 1, Element X's
//!   required state);
//! * **incremental wake-up**: a waiting `/sync` (`timeout=30000`, timeline limit 1) and one
//!   message sent into one of the user's rooms (a different room each time); time from the
//!   send's 200 to the answer carrying it, p50 and p99, and the server's CPU per wake-up.
//!
//! Figures per room are given next to the totals: Synapse holds fewer rooms, so the ratio is
//! of time (or bytes) per room. Afterwards (unless `--keep`) the local rooms are deleted with
//! Beeper's yeet endpoint, the Synapse ghost leaves its rooms, and both devices are logged out.
//! `--keep` leaves them, and `--reuse RUN_ID` then measures those ghosts' rooms again without
//! setting them up (e.g. one binary after another on the same data).
//!
//! Targets (issue 25), 10,000 rooms: wake-up p50 ≤ 5 ms, initial sync ≤ 1.5 s, hungryserv's
//! peak RSS ≤ 150 MiB during the initial sync.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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
    /// The appservice registration whose ghosts are the syncing users.
    #[arg(long)]
    registration: PathBuf,
    /// Localpart prefix of the ghosts (inside the registration's namespace); a run id follows.
    #[arg(long, default_value = "example_bench_rooms_")]
    ghost_prefix: String,
    /// Local rooms of the local user.
    #[arg(long, default_value_t = 10_000)]
    rooms: usize,
    /// Messages per local room (one batch_send; at most 1,000).
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Most Synapse rooms of the Synapse user (fewer if the setup bound is reached first).
    #[arg(long, default_value_t = 500)]
    synapse_rooms: usize,
    /// Messages per Synapse room (sent one by one).
    #[arg(long, default_value_t = 2)]
    synapse_events: usize,
    /// A small run for trying: 500 local rooms, at most 50 Synapse rooms, fewer samples.
    #[arg(long)]
    quick: bool,
    /// Rooms created at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured initial syncs per target.
    #[arg(long, default_value_t = 3)]
    initial: u32,
    /// Measured `/joined_rooms` and sliding first windows per target.
    #[arg(long, default_value_t = 10)]
    repeats: u32,
    /// Measured wake-ups per target.
    #[arg(long, default_value_t = 50)]
    wakeups: u32,
    /// Upper bound on the local setup, in seconds (the run fails if it is reached).
    #[arg(long, default_value_t = 1800.0)]
    setup_seconds: f64,
    /// Upper bound on the Synapse setup, in seconds (Synapse gets the rooms made by then).
    #[arg(long, default_value_t = 300.0)]
    synapse_setup_seconds: f64,
    /// hungryserv's PID, for its resident set and CPU.
    #[arg(long)]
    hungryserv_pid: Option<u32>,
    /// Synapse's PID, for its CPU.
    #[arg(long)]
    synapse_pid: Option<u32>,
    /// Leave the rooms and devices in place.
    #[arg(long)]
    keep: bool,
    /// Reuse the ghosts (and their rooms) of an earlier run kept with --keep: its run id
    /// (the 8 hex digits after the ghost prefix). No setup; every room each is in counts.
    #[arg(long)]
    reuse: Option<String>,
    /// How long a waiting sync runs before the send, in milliseconds.
    #[arg(long, default_value_t = 30)]
    head_start_ms: u64,
}

/// The room ID prefix of routing.toml's local class.
const LOCAL_PREFIX: &str = "!hs_";
/// The sliding sync path (Synapse serves only the unstable one).
const SLIDING_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
/// The long-poll timeout of a waiting sync.
const WAIT_MS: u64 = 30_000;
/// Rounds the measured work is split into, the targets taking turns.
const ROUNDS: u32 = 3;

/// One syncing user: where, as whom, in which rooms.
struct Side {
    name: &'static str,
    base: String,
    user_id: String,
    token: String,
    rooms: Vec<String>,
    /// The server's PID, for CPU (and RSS for hungryserv).
    pid: Option<u32>,
    /// `next_batch` of the last initial sync.
    since: Option<String>,
}

pub async fn run(mut options: Options) -> anyhow::Result<()> {
    if options.quick {
        options.rooms = options.rooms.min(500);
        options.synapse_rooms = options.synapse_rooms.min(50);
        options.wakeups = options.wakeups.min(20);
        options.repeats = options.repeats.min(5);
    }
    if options.rooms == 0 || options.events == 0 || options.events > 1000 {
        bail!("--rooms must be at least 1 and --events between 1 and 1,000");
    }
    let http = client::http();
    let appservice = Appservice::load(&http, &options.hungryserv, &options.registration).await?;
    let new_id = uuid::Uuid::new_v4().simple().to_string();
    let run_id = options.reuse.as_deref().unwrap_or(&new_id[..8]);
    let local_part = format!("{}{run_id}_l", options.ghost_prefix);
    let synapse_part = format!("{}{run_id}_s", options.ghost_prefix);
    let local_user = appservice
        .ghost(&http, &options.synapse, &local_part)
        .await?;
    let synapse_user = appservice
        .ghost(&http, &options.synapse, &synapse_part)
        .await?;
    let mut local = Side {
        name: "hungryserv",
        base: options.hungryserv.clone(),
        token: appservice
            .login(&http, &options.hungryserv, &local_part)
            .await?,
        user_id: local_user,
        rooms: Vec::new(),
        pid: options.hungryserv_pid,
        since: None,
    };
    let mut synapse = Side {
        name: "synapse",
        base: options.synapse.clone(),
        token: appservice
            .login(&http, &options.synapse, &synapse_part)
            .await?,
        user_id: synapse_user,
        rooms: Vec::new(),
        pid: options.synapse_pid,
        since: None,
    };
    let result = async {
        if options.reuse.is_some() {
            local.rooms = joined(&http, &local).await?;
            local.rooms.retain(|room| room.starts_with(LOCAL_PREFIX));
            synapse.rooms = joined(&http, &synapse).await?;
            println!(
                "rooms (reused): {} in {} local rooms, {} in {} Synapse rooms",
                local.user_id,
                local.rooms.len(),
                synapse.user_id,
                synapse.rooms.len()
            );
        } else {
            setup(&http, &appservice, &options, &mut local, &mut synapse).await?;
        }
        measure(&http, &appservice, &options, &mut local, &mut synapse).await
    }
    .await;
    if !options.keep {
        cleanup(&http, &appservice, &options, &local, &synapse).await;
    }
    result
}

/// The rooms the side's user is joined to, sorted.
async fn joined(http: &Http, side: &Side) -> anyhow::Result<Vec<String>> {
    let url = format!("{}/_matrix/client/v3/joined_rooms", side.base);
    let (status, body) = client::call(http, Method::GET, &url, Some(&side.token), None).await?;
    if !status.is_success() {
        bail!("{}: /joined_rooms: {status} {body}", side.name);
    }
    let mut rooms: Vec<String> = body["joined_rooms"]
        .as_array()
        .context("no joined_rooms")?
        .iter()
        .filter_map(|room| room.as_str().map(str::to_owned))
        .collect();
    rooms.sort();
    Ok(rooms)
}

/// Creates the rooms of both users.
async fn setup(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    local: &mut Side,
    synapse: &mut Side,
) -> anyhow::Result<()> {
    println!(
        "rooms: {} in {} local rooms of {} messages ({} in all); {} in up to {} Synapse rooms of {}",
        local.user_id,
        options.rooms,
        options.events,
        options.rooms * options.events,
        synapse.user_id,
        options.synapse_rooms,
        options.synapse_events,
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.setup_seconds);
    local.rooms = create_rooms(http, appservice, options, local, true, deadline).await?;
    if local.rooms.len() < options.rooms {
        bail!(
            "setup bound reached: {} of {} local rooms made",
            local.rooms.len(),
            options.rooms
        );
    }
    println!(
        "  local setup: {} rooms, {} messages in {:.1} s",
        local.rooms.len(),
        local.rooms.len() * options.events,
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.synapse_setup_seconds);
    synapse.rooms = create_rooms(http, appservice, options, synapse, false, deadline).await?;
    if synapse.rooms.is_empty() {
        bail!("Synapse made no room within --synapse-setup-seconds");
    }
    println!(
        "  Synapse setup: {} rooms in {:.1} s",
        synapse.rooms.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Creates the side's rooms, `concurrency` at a time, until all are made or `deadline`.
async fn create_rooms(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    side: &Side,
    local: bool,
    deadline: Instant,
) -> anyhow::Result<Vec<String>> {
    let count = if local {
        options.rooms
    } else {
        options.synapse_rooms
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (http, next) = (http.clone(), next.clone());
        let (base, token, user) = (
            side.base.clone(),
            appservice.token.clone(),
            side.user_id.clone(),
        );
        let (events, synapse_events) = (options.events, options.synapse_events);
        workers.spawn(async move {
            let mut made = Vec::new();
            let as_user = format!("user_id={}", encode_segment(&user));
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count || Instant::now() > deadline {
                    return Ok::<_, anyhow::Error>(made);
                }
                let (status, body) = client::call(
                    &http,
                    Method::POST,
                    &format!("{base}/_matrix/client/v3/createRoom?{as_user}"),
                    Some(&token),
                    Some(&json!({
                        "preset": "private_chat",
                        "name": format!("hsbench rooms {n}"),
                        "creation_content": {"m.federate": !local},
                    })),
                )
                .await?;
                if !status.is_success() {
                    bail!("createRoom at {base} failed: {status} {body}");
                }
                let room_id = body["room_id"].as_str().context("no room_id")?.to_owned();
                if local && !room_id.starts_with(LOCAL_PREFIX) {
                    bail!("{room_id} is not a local room (prefix {LOCAL_PREFIX})");
                }
                let room = encode_segment(&room_id);
                if local {
                    let filler = "x".repeat(80);
                    let batch: Vec<Value> = (0..events)
                        .map(|k| {
                            json!({
                                "type": "m.room.message",
                                "sender": user,
                                "origin_server_ts": 1_500_000_000_000_i64 + k as i64 * 1_000,
                                "content": {"msgtype": "m.text",
                                            "body": format!("room {n} message {k} {filler}")},
                            })
                        })
                        .collect();
                    let (status, body) = client::call(
                        &http,
                        Method::POST,
                        &format!(
                            "{base}/_matrix/client/unstable/com.beeper.backfill/rooms/{room}/batch_send?{as_user}"
                        ),
                        Some(&token),
                        Some(&json!({
                            "forward": true,
                            "send_notification": false,
                            "events": batch,
                        })),
                    )
                    .await?;
                    if !status.is_success() {
                        bail!("batch_send into {room_id} failed: {status} {body}");
                    }
                } else {
                    for k in 0..synapse_events {
                        let (status, body) = client::call(
                            &http,
                            Method::PUT,
                            &format!(
                                "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/r-{n}-{k}?{as_user}"
                            ),
                            Some(&token),
                            Some(&json!({"msgtype": "m.text", "body": format!("room {n} message {k}")})),
                        )
                        .await?;
                        if !status.is_success() {
                            bail!("send into {room_id} failed: {status} {body}");
                        }
                    }
                }
                made.push(room_id);
                let done = made.len();
                if local && done % 1000 == 0 {
                    eprintln!("  … a worker made {done} rooms");
                }
            }
        });
    }
    let mut rooms = Vec::with_capacity(count);
    while let Some(joined) = workers.join_next().await {
        rooms.extend(joined.context("room worker")??);
    }
    rooms.sort();
    Ok(rooms)
}

/// One measured request: its time, body size and the server's CPU.
#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    bytes: Vec<f64>,
    cpu_ms: Vec<f64>,
    /// Peak resident set during each request, MiB.
    peak_mib: Vec<f64>,
}

impl Samples {
    fn push(&mut self, ms: f64, bytes: usize, cpu_ms: Option<f64>, peak_mib: Option<f64>) {
        self.ms.push(ms);
        self.bytes.push(bytes as f64);
        self.cpu_ms.extend(cpu_ms);
        self.peak_mib.extend(peak_mib);
    }
}

async fn measure(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    local: &mut Side,
    synapse: &mut Side,
) -> anyhow::Result<()> {
    client::settle().await;
    let rss_before = local.pid.and_then(rss_mib);

    // Initial syncs.
    let mut initial = [Samples::default(), Samples::default()];
    let mut n = 0u32;
    for _ in 0..ROUNDS {
        for (k, side) in [&mut *local, &mut *synapse].into_iter().enumerate() {
            for _ in 0..options.initial.div_ceil(ROUNDS) {
                n += 1;
                let (ms, bytes, cpu, peak) = initial_sync(http, side, n).await?;
                initial[k].push(ms, bytes, cpu, peak);
            }
        }
    }
    let rss_after = local.pid.and_then(rss_mib);

    // /joined_rooms and first windows.
    let mut joined = [Samples::default(), Samples::default()];
    let mut windows = [Samples::default(), Samples::default()];
    for side in [&*local, &*synapse] {
        joined_rooms(http, side).await?;
        first_window(http, side, "warm").await?;
    }
    for _ in 0..ROUNDS {
        for (k, side) in [&*local, &*synapse].into_iter().enumerate() {
            for _ in 0..options.repeats.div_ceil(ROUNDS) {
                n += 1;
                let (ms, bytes, cpu) = joined_rooms(http, side).await?;
                joined[k].push(ms, bytes, cpu, None);
                let (ms, bytes, cpu) = first_window(http, side, &format!("w{n}")).await?;
                windows[k].push(ms, bytes, cpu, None);
            }
        }
    }

    // Wake-ups.
    let mut wakes = [Samples::default(), Samples::default()];
    let mut errors = [0u64; 2];
    let mut next_room = [0usize; 2];
    for side in [&mut *local, &mut *synapse] {
        catch_up(http, side).await?;
    }
    for _ in 0..ROUNDS {
        for (k, side) in [&mut *local, &mut *synapse].into_iter().enumerate() {
            let cpu0 = side.pid.and_then(cpu_ticks);
            let mut done = 0u32;
            for _ in 0..options.wakeups.div_ceil(ROUNDS) {
                n += 1;
                let room = side.rooms[next_room[k] % side.rooms.len()].clone();
                next_room[k] += 1;
                match wake(http, appservice, side, &room, n, options.head_start_ms).await {
                    Ok(ms) => {
                        wakes[k].push(ms, 0, None, None);
                        done += 1;
                    }
                    Err(err) => {
                        eprintln!("hsbench: {} wake-up: {err:#}", side.name);
                        errors[k] += 1;
                        catch_up(http, side).await?;
                    }
                }
            }
            if let (Some(before), Some(after)) = (cpu0, side.pid.and_then(cpu_ticks))
                && done > 0
            {
                wakes[k]
                    .cpu_ms
                    .push(ticks_ms(after - before) / f64::from(done));
            }
        }
    }

    let rooms = [local.rooms.len() as f64, synapse.rooms.len() as f64];
    println!(
        "\nhungryserv: {} local rooms ({} messages each); Synapse: {} rooms ({} each)",
        local.rooms.len(),
        options.events,
        synapse.rooms.len(),
        options.synapse_events
    );
    println!("(p50 of the samples; ratio = hungryserv's per-room figure / Synapse's)\n");
    println!(
        "  {:<30} {:>10} {:>10} {:>12} {:>10} {:>12} {:>12} {:>9}",
        "request", "hs ms", "hs p99", "hs µs/room", "syn ms", "syn µs/room", "ratio/room", "n"
    );
    let row = |name: &str, samples: &[Samples; 2], per_room: bool| {
        let (hs, syn) = (quantile(&samples[0].ms, 0.5), quantile(&samples[1].ms, 0.5));
        let (hs_room, syn_room) = if per_room {
            (hs * 1000.0 / rooms[0], syn * 1000.0 / rooms[1])
        } else {
            (f64::NAN, f64::NAN)
        };
        println!(
            "  {name:<30} {hs:>10.2} {:>10.2} {hs_room:>12.1} {syn:>10.2} {syn_room:>12.1} {:>12.3} {:>9}",
            quantile(&samples[0].ms, 0.99),
            hs_room / syn_room,
            samples[0].ms.len().min(samples[1].ms.len()),
        );
    };
    row("initial /sync (limit 1)", &initial, true);
    row("/joined_rooms", &joined, true);
    row("sliding first window", &windows, false);
    row("wake-up (send 200 → answer)", &wakes, false);
    println!(
        "  wake-up p99: hungryserv {:.2} ms, Synapse {:.2} ms; errors {} / {}",
        quantile(&wakes[0].ms, 0.99),
        quantile(&wakes[1].ms, 0.99),
        errors[0],
        errors[1]
    );
    let kib = |s: &Samples| quantile(&s.bytes, 0.5) / 1024.0;
    println!(
        "\n  initial /sync size: hungryserv {:.0} KiB ({:.2} KiB/room), Synapse {:.0} KiB ({:.2} KiB/room)",
        kib(&initial[0]),
        kib(&initial[0]) / rooms[0],
        kib(&initial[1]),
        kib(&initial[1]) / rooms[1],
    );
    let cpu = |s: &Samples| quantile(&s.cpu_ms, 0.5);
    println!(
        "  server CPU per request (p50, ms; /proc, 10 ms ticks): initial sync hungryserv {:.0}, Synapse {:.0}; \
         /joined_rooms {:.1}, {:.1}; first window {:.1}, {:.1}; wake-up (with its send) {:.2}, {:.2}",
        cpu(&initial[0]),
        cpu(&initial[1]),
        cpu(&joined[0]),
        cpu(&joined[1]),
        cpu(&windows[0]),
        cpu(&windows[1]),
        cpu(&wakes[0]),
        cpu(&wakes[1]),
    );
    if local.pid.is_some() {
        println!(
            "  hungryserv RSS: {:.0} MiB before the initial syncs, peak during them {:.0} MiB (max of {}), {:.0} MiB after",
            rss_before.unwrap_or(f64::NAN),
            initial[0].peak_mib.iter().copied().fold(f64::NAN, f64::max),
            initial[0].peak_mib.len(),
            rss_after.unwrap_or(f64::NAN),
        );
    }
    Ok(())
}

/// One initial sync of the side's user: (ms, bytes, server CPU ms, peak RSS MiB). Checks
/// that every room is in `rooms.join` with a timeline event.
async fn initial_sync(
    http: &Http,
    side: &mut Side,
    n: u32,
) -> anyhow::Result<(f64, usize, Option<f64>, Option<f64>)> {
    // An unused account-data type differs per request: no response cache answers it.
    let filter = json!({"room": {"timeline": {"limit": 1}},
                        "account_data": {"types": [format!("hsbench.unused.{n}")]}})
    .to_string();
    let url = client::sync_url(&side.base, None, 0, Some(&filter));
    let sampling = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = side.pid.map(|pid| {
        let (sampling, peak) = (sampling.clone(), peak.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    let cpu0 = side.pid.and_then(cpu_ticks);
    let started = Instant::now();
    let (status, bytes) =
        client::call_raw(http, Method::GET, &url, Some(&side.token), None).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let cpu1 = side.pid.and_then(cpu_ticks);
    sampling.store(false, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        sampler.await.context("RSS sampler")?;
    }
    if !status.is_success() {
        bail!(
            "{}: initial sync failed: {status} {}",
            side.name,
            String::from_utf8_lossy(&bytes)
        );
    }
    let body: Value = serde_json::from_slice(&bytes)?;
    let join = body["rooms"]["join"].as_object();
    let missing = side
        .rooms
        .iter()
        .filter(|room| {
            join.and_then(|j| j.get(room.as_str()))
                .and_then(|r| r["timeline"]["events"].as_array())
                .is_none_or(|events| events.len() != 1)
        })
        .count();
    if missing > 0 {
        bail!(
            "{}: {missing} of {} rooms missing from the initial sync (or without their last event)",
            side.name,
            side.rooms.len()
        );
    }
    side.since = body["next_batch"].as_str().map(str::to_owned);
    let cpu = cpu0.zip(cpu1).map(|(a, b)| ticks_ms(b - a));
    let peak = side
        .pid
        .map(|_| peak.load(Ordering::Relaxed) as f64 / 1024.0);
    Ok((ms, bytes.len(), cpu, peak))
}

/// One `/joined_rooms`: (ms, bytes, server CPU ms). Checks the count.
async fn joined_rooms(http: &Http, side: &Side) -> anyhow::Result<(f64, usize, Option<f64>)> {
    let url = format!("{}/_matrix/client/v3/joined_rooms", side.base);
    let cpu0 = side.pid.and_then(cpu_ticks);
    let started = Instant::now();
    let (status, bytes) =
        client::call_raw(http, Method::GET, &url, Some(&side.token), None).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let cpu = cpu0
        .zip(side.pid.and_then(cpu_ticks))
        .map(|(a, b)| ticks_ms(b - a));
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let count = body["joined_rooms"].as_array().map_or(0, Vec::len);
    if !status.is_success() || count != side.rooms.len() {
        bail!(
            "{}: /joined_rooms: {status}, {count} rooms (want {})",
            side.name,
            side.rooms.len()
        );
    }
    Ok((ms, bytes.len(), cpu))
}

/// One sliding sync first window: (ms, bytes, server CPU ms). Checks count and window.
async fn first_window(
    http: &Http,
    side: &Side,
    conn_id: &str,
) -> anyhow::Result<(f64, usize, Option<f64>)> {
    let body = json!({
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
    });
    let url = format!("{}{SLIDING_PATH}?timeout=0", side.base);
    let cpu0 = side.pid.and_then(cpu_ticks);
    let started = Instant::now();
    let (status, bytes) =
        client::call_raw(http, Method::POST, &url, Some(&side.token), Some(&body)).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let cpu = cpu0
        .zip(side.pid.and_then(cpu_ticks))
        .map(|(a, b)| ticks_ms(b - a));
    let answer: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let list = &answer["lists"]["all_rooms"];
    let count = list["count"].as_u64().unwrap_or(0);
    if !status.is_success() || count != side.rooms.len() as u64 {
        bail!(
            "{}: sliding sync: {status}, count {count} (want {})",
            side.name,
            side.rooms.len()
        );
    }
    Ok((ms, bytes.len(), cpu))
}

/// The filter of the incremental syncs.
const WAKE_FILTER: &str = r#"{"room":{"timeline":{"limit":1}}}"#;

/// Syncs with timeout 0 until the side's user is at the present.
async fn catch_up(http: &Http, side: &mut Side) -> anyhow::Result<()> {
    for _ in 0..3 {
        let url = client::sync_url(&side.base, side.since.as_deref(), 0, Some(WAKE_FILTER));
        let (status, body) = client::call(http, Method::GET, &url, Some(&side.token), None).await?;
        if !status.is_success() {
            bail!("{}: sync failed: {status} {body}", side.name);
        }
        side.since = body["next_batch"].as_str().map(str::to_owned);
    }
    Ok(())
}

/// One waiting sync woken by one message into `room`: ms from the send's 200 to the answer.
async fn wake(
    http: &Http,
    appservice: &Appservice,
    side: &mut Side,
    room: &str,
    n: u32,
    head_start_ms: u64,
) -> anyhow::Result<f64> {
    let txn = format!(
        "wake-{}-{n}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let waiter = {
        let (http, url, token) = (
            http.clone(),
            client::sync_url(
                &side.base,
                side.since.as_deref(),
                WAIT_MS,
                Some(WAKE_FILTER),
            ),
            side.token.clone(),
        );
        tokio::spawn(async move {
            let answer = client::call(&http, Method::GET, &url, Some(&token), None).await;
            (answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(head_start_ms)).await;
    let (status, body) = client::call(
        http,
        Method::PUT,
        &format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}?user_id={}",
            side.base,
            encode_segment(room),
            encode_segment(&side.user_id)
        ),
        Some(&appservice.token),
        Some(&json!({"msgtype": "m.text", "body": txn})),
    )
    .await?;
    let sent = Instant::now();
    if !status.is_success() {
        bail!("send failed: {status} {body}");
    }
    let event_id = body["event_id"].as_str().context("no event_id")?.to_owned();
    let mut result = waiter.await.context("waiter")?;
    // An answer without the event (other news): follow it until the event comes.
    for _ in 0..10 {
        let (answer, at) = result;
        let (status, body) = answer?;
        if !status.is_success() {
            bail!("waiting sync failed: {status} {body}");
        }
        side.since = body["next_batch"].as_str().map(str::to_owned);
        let carried = body["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .is_some_and(|events| events.iter().any(|e| e["event_id"] == event_id.as_str()));
        if carried {
            return Ok(signed_ms(sent, at));
        }
        let url = client::sync_url(
            &side.base,
            side.since.as_deref(),
            WAIT_MS,
            Some(WAKE_FILTER),
        );
        let answer = client::call(http, Method::GET, &url, Some(&side.token), None).await;
        result = (answer, Instant::now());
    }
    bail!("the event never came")
}

/// Deletes the local rooms (yeet), has the Synapse user leave its rooms, logs both out.
/// Bounded: a few minutes at most; what is left is said.
async fn cleanup(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    local: &Side,
    synapse: &Side,
) {
    let deadline = Instant::now() + Duration::from_secs(300);
    let jobs: Vec<(String, String)> = local
        .rooms
        .iter()
        .map(|room| {
            (
                format!(
                    "{}/_matrix/client/unstable/com.beeper.yeet/rooms/{}/delete",
                    local.base,
                    encode_segment(room)
                ),
                appservice.token.clone(),
            )
        })
        .chain(synapse.rooms.iter().map(|room| {
            (
                format!(
                    "{}/_matrix/client/v3/rooms/{}/leave",
                    synapse.base,
                    encode_segment(room)
                ),
                synapse.token.clone(),
            )
        }))
        .collect();
    let jobs = Arc::new(jobs);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (http, jobs, next, failed) = (http.clone(), jobs.clone(), next.clone(), failed.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some((url, token)) = jobs.get(n) else {
                    return;
                };
                if Instant::now() > deadline {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let ok = client::call(&http, Method::POST, url, Some(token), Some(&json!({})))
                    .await
                    .is_ok_and(|(status, _)| status.is_success());
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let failed = failed.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!(
            "hsbench: cleanup: {failed} of {} rooms not deleted or left",
            jobs.len()
        );
    }
    for side in [local, synapse] {
        if let Err(err) = client::logout(http, &side.base, &side.token).await {
            eprintln!("hsbench: {err:#}");
        }
    }
}

/// A process's resident set in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn rss_mib(pid: u32) -> Option<f64> {
    rss_kib(pid).map(|kib| kib as f64 / 1024.0)
}

/// A process's CPU time (user + system) in clock ticks, from /proc.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after its closing parenthesis are fixed.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// Clock ticks in milliseconds (Linux's USER_HZ is 100).
fn ticks_ms(ticks: u64) -> f64 {
    ticks as f64 * 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_rss() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|kib| kib > 0));
        assert!(cpu_ticks(pid).is_some());
    }
}

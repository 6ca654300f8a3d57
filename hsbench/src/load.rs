//! `load`: many waiting clients and busy bridges at once, for a bounded time. `--users`
//! (2,000) clients each keep one long-polling `/sync` open through hungryserv, while
//! `--bridges` (16) appservice ghosts send into local rooms of their own as fast as they are
//! answered (or at `--ingest-rate` in all). What must hold, and what is printed:
//!
//! * **no errors**: every sync and every send answers 2xx (a transport error, a non-2xx
//!   answer or a sync that outlives its timeout by 30 s counts as one);
//! * **wake-ups stay fast**: the clients sit in local rooms of `--room-size` (20) members, one
//!   room per 20 clients, each room owned by one bridge; a probe message goes into each room
//!   every `--probe-every-s` (15 s), spread evenly, sent by the room's bridge. The time from
//!   the probe's 200 (and from its start) to each waiting member's sync answer carrying it is a
//!   wake-up sample; every member must get every probe, once;
//! * **memory stays flat**: hungryserv's (and Synapse's) resident set is sampled every second
//!   from the first poll to the end, with its least-squares trend over the run after the ramp.
//!
//! **Who the clients are.** Ghosts of the registration (`example_load_N`, registered once and
//! kept across runs), each logged in with `m.login.application_service`, so each syncs as an
//! ordinary client with a device and an access token of its own: the whoami cache, the push
//! rules learner and Synapse's sync all see one client each. They are in local rooms only,
//! none of Synapse's: this measures hungryserv under the load, and keeps Synapse's share of
//! the merged syncs to what every merged long-poll costs it anyway — one held `/sync` per
//! client (2,000 at Synapse too), one new one after each local wake-up (the one in flight is
//! dropped, [`hungryserv::sync`]), and one answer per client per timeout. Users in Synapse
//! rooms too would add Synapse's own wake-ups, which `sync-latency` measures; on this 2-core
//! machine those would also take the CPU the measured server needs. A Synapse-only run of the
//! same load is not made: Synapse ingests a few dozen events/s into its rooms here
//! (`ingest`), so "16 bridges at full speed" would be another load there.
//!
//! The clients start their first poll spread over `--ramp-seconds`; the bridges and probes then
//! run for `--seconds`, and every poll still open at the end is dropped. Rooms are deleted
//! afterwards (Beeper's yeet, as the bridge that made them) and the devices logged out.
//! File descriptors: hsbench needs one per client, hungryserv two (the client's and its
//! Synapse half), Synapse one; each process's limit is checked before anything starts
//! (`ulimit -n`; `deploy/local/bench load` raises hsbench's soft limit to the hard one).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use http::Method;
use hungryserv::upstream::client::encode_segment;
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::client::{self, Appservice, Http};
use crate::stats::{quantile, signed_ms};

#[derive(Args)]
pub struct Options {
    /// hungryserv's public listener; everything goes through it.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    hungryserv: String,
    /// Synapse's own listener (unused but accepted, like the other scenarios).
    #[arg(long, default_value = "http://127.0.0.1:8009")]
    synapse: String,
    /// The appservice registration whose ghosts are the clients and the bridges.
    #[arg(long)]
    registration: PathBuf,
    /// Localpart prefix of the ghosts; must fall inside the registration's namespace.
    #[arg(long, default_value = "example_load_")]
    ghost_prefix: String,
    /// Clients, each with one long-polling `/sync` open.
    #[arg(long, default_value_t = 2000)]
    users: usize,
    /// Bridges ingesting, each into a local room of its own.
    #[arg(long, default_value_t = 16)]
    bridges: usize,
    /// Clients per probed local room.
    #[arg(long, default_value_t = 20)]
    room_size: usize,
    /// Each probed room gets one probe this often (seconds), rooms spread evenly.
    #[arg(long, default_value_t = 15.0)]
    probe_every_s: f64,
    /// Events per second of all bridges' ingest together; 0: each as fast as it is answered.
    #[arg(long, default_value_t = 0.0)]
    ingest_rate: f64,
    /// The clients' `/sync` timeout, in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    sync_timeout_ms: u64,
    /// The clients' first polls are spread over this many seconds.
    #[arg(long, default_value_t = 10.0)]
    ramp_seconds: f64,
    /// How long the bridges and probes run after the ramp, in seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Concurrent requests while setting up (registering, logging in, joining) and cleaning up.
    #[arg(long, default_value_t = 16)]
    setup_concurrency: usize,
    /// hungryserv's process ID: its resident set is sampled and its fd limit checked.
    #[arg(long)]
    hungryserv_pid: Option<u32>,
    /// Synapse's process ID, likewise.
    #[arg(long)]
    synapse_pid: Option<u32>,
}

/// A client: its user ID, access token and probed room.
struct User {
    token: String,
    room: usize,
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// `(event ID, poll issued, poll answered)` for every timeline event in an answer.
    events: Vec<(String, Instant, Instant)>,
    answers: u64,
    empty: u64,
    errors: u64,
}

/// One probe: when its send started and when its 200 was read.
#[derive(Clone, Copy)]
struct Probe {
    room: usize,
    start: Instant,
    done: Instant,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let users = options.users.max(1);
    let room_size = options.room_size.max(1);
    let bridges = options.bridges.max(1);
    check_fd_limits(&options, users, bridges)?;
    let http: Http = {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(users + bridges * 2 + 64)
            .build(connector)
    };
    let base = options.hungryserv.clone();
    let appservice = Arc::new(Appservice::load(&http, &base, &options.registration).await?);
    let prefix = options.ghost_prefix.clone();
    let rooms = users.div_ceil(room_size);
    let setup_started = Instant::now();

    // Bridges: a ghost each, an ingest room each (the ghost joined), and every
    // `bridges`-th probed room.
    let bridge_ids: Vec<String> = parallel(bridges, options.setup_concurrency, {
        let (http, base, appservice, prefix) = (
            http.clone(),
            base.clone(),
            appservice.clone(),
            prefix.clone(),
        );
        move |n| {
            let (http, base, appservice) = (http.clone(), base.clone(), appservice.clone());
            let localpart = format!("{prefix}bridge_{n}");
            async move { appservice.ghost(&http, &base, &localpart).await }
        }
    })
    .await?;
    let bridge_ids = Arc::new(bridge_ids);
    let ingest_rooms: Vec<String> = parallel(bridges, options.setup_concurrency, {
        let (http, base, appservice, bridge_ids) = (
            http.clone(),
            base.clone(),
            appservice.clone(),
            bridge_ids.clone(),
        );
        move |n| {
            let (http, base, appservice, bridge_ids) = (
                http.clone(),
                base.clone(),
                appservice.clone(),
                bridge_ids.clone(),
            );
            async move {
                let room = crate::ingest::create(&http, &base, &appservice.token, false).await?;
                client::join(&http, &base, &appservice.token, &room, Some(&bridge_ids[n])).await?;
                Ok(room)
            }
        }
    })
    .await?;
    let probe_rooms: Vec<String> = parallel(rooms, options.setup_concurrency, {
        let (http, base, appservice, bridge_ids) = (
            http.clone(),
            base.clone(),
            appservice.clone(),
            bridge_ids.clone(),
        );
        move |r| {
            let (http, base, appservice, bridge_ids) = (
                http.clone(),
                base.clone(),
                appservice.clone(),
                bridge_ids.clone(),
            );
            async move {
                let room = crate::ingest::create(&http, &base, &appservice.token, false).await?;
                let bridge = &bridge_ids[r % bridge_ids.len()];
                client::join(&http, &base, &appservice.token, &room, Some(bridge)).await?;
                Ok(room)
            }
        }
    })
    .await?;
    if !ingest_rooms
        .iter()
        .chain(&probe_rooms)
        .all(|room| room.starts_with(LOCAL_PREFIX))
    {
        bail!("hungryserv did not create local rooms ({LOCAL_PREFIX}…)");
    }
    let probe_rooms = Arc::new(probe_rooms);

    // Clients: registered (once), logged in, joined to their room, synced once.
    let clients: Vec<User> = parallel(users, options.setup_concurrency, {
        let (http, base, appservice, prefix, probe_rooms) = (
            http.clone(),
            base.clone(),
            appservice.clone(),
            prefix.clone(),
            probe_rooms.clone(),
        );
        move |n| {
            let (http, base, appservice, probe_rooms) = (
                http.clone(),
                base.clone(),
                appservice.clone(),
                probe_rooms.clone(),
            );
            let localpart = format!("{prefix}{n}");
            async move {
                appservice.ghost(&http, &base, &localpart).await?;
                let token = appservice.login(&http, &base, &localpart).await?;
                let room = n / room_size;
                client::join(&http, &base, &token, &probe_rooms[room], None).await?;
                Ok(User { token, room })
            }
        }
    })
    .await?;
    let since: Vec<String> = parallel(users, options.setup_concurrency, {
        let (http, base) = (http.clone(), base.clone());
        let tokens: Arc<Vec<String>> = Arc::new(clients.iter().map(|c| c.token.clone()).collect());
        move |n| {
            let (http, base, tokens) = (http.clone(), base.clone(), tokens.clone());
            async move {
                let url = client::sync_url(&base, None, 0, Some(FILTER));
                let (status, body) =
                    client::call(&http, Method::GET, &url, Some(&tokens[n]), None).await?;
                if !status.is_success() {
                    bail!("initial sync failed: {status} {body}");
                }
                next_batch(&body)
            }
        }
    })
    .await?;
    println!(
        "load: {users} clients long-polling /sync (timeout {} ms) in {rooms} local rooms of {room_size}, {bridges} bridges ingesting ({}) into local rooms of their own, a probe per room every {} s; first polls over {} s, then {} s (setup took {:.1} s)",
        options.sync_timeout_ms,
        if options.ingest_rate > 0.0 {
            format!("{} events/s in all", options.ingest_rate)
        } else {
            "each as fast as answered".to_owned()
        },
        options.probe_every_s,
        options.ramp_seconds,
        options.seconds,
        setup_started.elapsed().as_secs_f64(),
    );

    let result = drive(
        &http,
        &options,
        &appservice,
        &clients,
        since,
        &bridge_ids,
        &ingest_rooms,
        &probe_rooms,
    )
    .await;

    // Clean up whatever happened: the rooms go (as the bridge that made them), then the
    // devices (so runs do not pile up rooms in the clients' syncs, nor devices).
    let all_rooms: Vec<String> = ingest_rooms
        .iter()
        .chain(probe_rooms.iter())
        .cloned()
        .collect();
    let all_rooms = Arc::new(all_rooms);
    let cleaned = parallel(all_rooms.len(), options.setup_concurrency, {
        let (http, base, appservice, all_rooms) = (
            http.clone(),
            base.clone(),
            appservice.clone(),
            all_rooms.clone(),
        );
        move |n| {
            let (http, base, appservice, all_rooms) = (
                http.clone(),
                base.clone(),
                appservice.clone(),
                all_rooms.clone(),
            );
            async move {
                let url = format!(
                    "{base}/_matrix/client/unstable/com.beeper.yeet/rooms/{}/delete",
                    encode_segment(&all_rooms[n])
                );
                let (status, body) = client::call(
                    &http,
                    Method::POST,
                    &url,
                    Some(&appservice.token),
                    Some(&json!({})),
                )
                .await?;
                if !status.is_success() {
                    bail!("deleting {} failed: {status} {body}", all_rooms[n]);
                }
                Ok(())
            }
        }
    })
    .await;
    let tokens: Arc<Vec<String>> = Arc::new(clients.iter().map(|c| c.token.clone()).collect());
    let logged_out = parallel(users, options.setup_concurrency, {
        let (http, base) = (http.clone(), base.clone());
        move |n| {
            let (http, base, tokens) = (http.clone(), base.clone(), tokens.clone());
            async move { client::logout(&http, &base, &tokens[n]).await }
        }
    })
    .await;
    for outcome in [cleaned.map(drop), logged_out.map(drop)] {
        if let Err(err) = outcome {
            eprintln!("hsbench: cleaning up: {err:#}");
        }
    }
    result
}

/// The room ID prefix of routing.toml's local class.
const LOCAL_PREFIX: &str = "!hs_";
/// The clients' filter: a few timeline events per room are enough to see a probe.
const FILTER: &str = r#"{"room":{"timeline":{"limit":10}}}"#;
/// A sync not answered this long after its timeout counts as an error.
const SYNC_MARGIN: Duration = Duration::from_secs(30);

/// The measured part: clients polling, bridges ingesting, probes, resident sets.
#[allow(clippy::too_many_arguments)]
async fn drive(
    http: &Http,
    options: &Options,
    appservice: &Arc<Appservice>,
    clients: &[User],
    since: Vec<String>,
    bridge_ids: &Arc<Vec<String>>,
    ingest_rooms: &[String],
    probe_rooms: &Arc<Vec<String>>,
) -> anyhow::Result<()> {
    let users = clients.len();
    let started = Instant::now();
    let ramp = Duration::from_secs_f64(options.ramp_seconds);
    let load_start = started + ramp;
    let end = load_start + Duration::from_secs_f64(options.seconds);
    let timeout = Duration::from_millis(options.sync_timeout_ms);
    let base = options.hungryserv.clone();

    let sampler = tokio::spawn(sample_rss(
        [options.hungryserv_pid, options.synapse_pid],
        started,
        end,
    ));

    // The clients.
    let mut polls = JoinSet::new();
    for (n, (user, since)) in clients.iter().zip(since).enumerate() {
        let (http, base, token) = (http.clone(), base.clone(), user.token.clone());
        let first = started + ramp.mul_f64(n as f64 / users as f64);
        polls.spawn(async move {
            tokio::time::sleep_until(first.into()).await;
            (n, poll(http, base, token, since, timeout, end).await)
        });
    }

    // The bridges' ingest.
    tokio::time::sleep_until(load_start.into()).await;
    let ingested = Arc::new(AtomicU64::new(0));
    let mut senders = JoinSet::new();
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let interval = (options.ingest_rate > 0.0)
        .then(|| Duration::from_secs_f64(options.bridges as f64 / options.ingest_rate));
    for (n, room) in ingest_rooms.iter().enumerate() {
        let (http, appservice, ingested) = (http.clone(), appservice.clone(), ingested.clone());
        let url_start = format!(
            "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/",
            encode_segment(room)
        );
        let query = format!("?user_id={}", encode_segment(&bridge_ids[n]));
        let tag = format!("{run_id}-{n}");
        senders.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = Vec::new();
            let mut k = 0u64;
            while Instant::now() < end {
                if let Some(interval) = interval {
                    tokio::time::sleep_until((load_start + interval.mul_f64(k as f64)).into())
                        .await;
                }
                k += 1;
                let url = format!("{url_start}in-{tag}-{k}{query}");
                let body = json!({"msgtype": "m.text", "body": format!("bridged message {k}")});
                let sent = Instant::now();
                match client::call(
                    &http,
                    Method::PUT,
                    &url,
                    Some(&appservice.token),
                    Some(&body),
                )
                .await
                {
                    Ok((status, _)) if status.is_success() => {
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        ingested.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok((status, body)) => errors.push(format!("{status} {body}")),
                    Err(err) => errors.push(format!("{err:#}")),
                }
            }
            (latencies, errors)
        });
    }

    // The probes: room r at load_start + (r / rooms + k) × every.
    let every = Duration::from_secs_f64(options.probe_every_s);
    let rooms = probe_rooms.len();
    let probes = Arc::new(Mutex::new(HashMap::<String, Probe>::new()));
    let probe_errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut probe_tasks = JoinSet::new();
    let mut k = 0usize;
    loop {
        let at = load_start + every.mul_f64(k as f64 / rooms as f64);
        if at >= end {
            break;
        }
        tokio::time::sleep_until(at.into()).await;
        let room = k % rooms;
        let url = format!(
            "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/probe-{run_id}-{k}?user_id={}",
            encode_segment(&probe_rooms[room]),
            encode_segment(&bridge_ids[room % bridge_ids.len()])
        );
        let (http, appservice, probes, probe_errors) = (
            http.clone(),
            appservice.clone(),
            probes.clone(),
            probe_errors.clone(),
        );
        probe_tasks.spawn(async move {
            let body = json!({"msgtype": "m.text", "body": format!("hsbench load probe {k}")});
            let start = Instant::now();
            let outcome = client::call(
                &http,
                Method::PUT,
                &url,
                Some(&appservice.token),
                Some(&body),
            )
            .await;
            let done = Instant::now();
            match outcome {
                Ok((status, answer)) if status.is_success() => match answer["event_id"].as_str() {
                    Some(id) => {
                        probes
                            .lock()
                            .await
                            .insert(id.to_owned(), Probe { room, start, done });
                    }
                    None => probe_errors
                        .lock()
                        .await
                        .push(format!("no event_id: {answer}")),
                },
                Ok((status, answer)) => {
                    probe_errors.lock().await.push(format!("{status} {answer}"))
                }
                Err(err) => probe_errors.lock().await.push(format!("{err:#}")),
            }
        });
        k += 1;
    }
    while probe_tasks.join_next().await.is_some() {}

    let mut ingest_latencies = Vec::new();
    let mut ingest_errors = Vec::new();
    while let Some(joined) = senders.join_next().await {
        let (latencies, errors) = joined.context("a bridge task failed")?;
        ingest_latencies.extend(latencies);
        ingest_errors.extend(errors);
    }
    // In client order: the report matches each client with its room by index.
    let mut seen = Vec::with_capacity(users);
    while let Some(joined) = polls.join_next().await {
        seen.push(joined.context("a client task failed")?);
    }
    seen.sort_unstable_by_key(|(n, _)| *n);
    let seen = seen.into_iter().map(|(_, seen)| seen).collect();
    let rss = sampler.await.context("the sampler failed")?;

    let probes = probes.lock().await.clone();
    let probe_errors = probe_errors.lock().await.clone();
    report(Report {
        options,
        users,
        room_of: clients.iter().map(|c| c.room).collect(),
        seen,
        probes,
        probe_errors,
        ingest_latencies,
        ingest_errors,
        ingest_seconds: end.duration_since(load_start).as_secs_f64(),
        end,
        rss,
        load_start: load_start.duration_since(started).as_secs_f64(),
    });
    Ok(())
}

/// One client's polls until `end`; the one open at `end` is dropped.
async fn poll(
    http: Http,
    base: String,
    token: String,
    mut since: String,
    timeout: Duration,
    end: Instant,
) -> (Seen, Vec<String>) {
    let mut seen = Seen::default();
    let mut errors = Vec::new();
    let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    while Instant::now() < end {
        let url = client::sync_url(&base, Some(&since), timeout_ms, Some(FILTER));
        let issued = Instant::now();
        let call = tokio::time::timeout(
            timeout + SYNC_MARGIN,
            client::call_raw(&http, Method::GET, &url, Some(&token), None),
        );
        let outcome = tokio::select! {
            outcome = call => outcome,
            () = tokio::time::sleep_until(end.into()) => break,
        };
        let answered = Instant::now();
        let failure = match outcome {
            Ok(Ok((status, bytes))) if status.is_success() => {
                match serde_json::from_slice::<Value>(&bytes)
                    .map_err(anyhow::Error::from)
                    .and_then(|body| next_batch(&body).map(|next| (body, next)))
                {
                    Ok((body, next)) => {
                        since = next;
                        seen.answers += 1;
                        let before = seen.events.len();
                        for room in body["rooms"]["join"].as_object().into_iter().flatten() {
                            let events = room.1["timeline"]["events"].as_array();
                            for event in events.into_iter().flatten() {
                                if let Some(id) = event["event_id"].as_str() {
                                    seen.events.push((id.to_owned(), issued, answered));
                                }
                            }
                        }
                        if seen.events.len() == before {
                            seen.empty += 1;
                        }
                        None
                    }
                    Err(err) => Some(format!("sync answer: {err:#}")),
                }
            }
            Ok(Ok((status, bytes))) => Some(format!(
                "sync: {status} {}",
                String::from_utf8_lossy(&bytes)
            )),
            Ok(Err(err)) => Some(format!("sync: {err:#}")),
            Err(_) => Some(format!(
                "sync: no answer within {:?}",
                timeout + SYNC_MARGIN
            )),
        };
        if let Some(failure) = failure {
            seen.errors += 1;
            if errors.len() < 3 {
                errors.push(failure);
            }
            // No hot loop against a failing server.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    (seen, errors)
}

/// Resident-set samples, one a second: `(seconds since start, KiB)` per process.
type Samples = [Vec<(f64, u64)>; 2];

async fn sample_rss(pids: [Option<u32>; 2], started: Instant, end: Instant) -> Samples {
    let mut samples: Samples = Default::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() <= end {
        tick.tick().await;
        let at = started.elapsed().as_secs_f64();
        for (pid, series) in pids.iter().zip(samples.iter_mut()) {
            if let Some(kib) = pid.and_then(rss_kib) {
                series.push((at, kib));
            }
        }
    }
    samples
}

/// A process's resident set in KiB, from /proc.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// A process's soft limit of open files, from /proc (`self` for hsbench).
fn open_files_limit(pid: &str) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(u64::MAX)
    } else {
        soft.parse().ok()
    }
}

/// Refuses to start when a process could not hold its share of the connections.
fn check_fd_limits(options: &Options, users: usize, bridges: usize) -> anyhow::Result<()> {
    let users = users as u64;
    let bridges = bridges as u64;
    let mut short = Vec::new();
    let mut check = |who: &str, pid: String, need: u64| {
        if let Some(limit) = open_files_limit(&pid)
            && limit < need
        {
            short.push(format!(
                "{who} (pid {pid}) may open {limit} files, needs about {need}"
            ));
        }
    };
    check("hsbench", "self".into(), users + bridges * 2 + 256);
    if let Some(pid) = options.hungryserv_pid {
        check("hungryserv", pid.to_string(), 2 * users + bridges * 2 + 512);
    }
    if let Some(pid) = options.synapse_pid {
        check("Synapse", pid.to_string(), users + 512);
    }
    if !short.is_empty() {
        bail!(
            "file descriptor limits too low (raise them with `ulimit -n` before starting): {}",
            short.join("; ")
        );
    }
    Ok(())
}

/// Runs `make(0..count)` with at most `concurrency` at a time; the results in order.
async fn parallel<T, F, Fut>(count: usize, concurrency: usize, make: F) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let make = Arc::new(make);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, count.max(1)) {
        let (make, next) = (make.clone(), next.clone());
        workers.spawn(async move {
            let mut done = Vec::new();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= count {
                    return Ok::<_, anyhow::Error>(done);
                }
                done.push((n, make(n).await?));
            }
        });
    }
    let mut all = Vec::with_capacity(count);
    while let Some(joined) = workers.join_next().await {
        all.extend(joined.context("a setup task failed")??);
    }
    all.sort_unstable_by_key(|(n, _)| *n);
    Ok(all.into_iter().map(|(_, value)| value).collect())
}

fn next_batch(answer: &Value) -> anyhow::Result<String> {
    answer["next_batch"]
        .as_str()
        .map(str::to_owned)
        .context("sync answer has no next_batch")
}

struct Report<'a> {
    options: &'a Options,
    users: usize,
    /// Client index → its probed room.
    room_of: Vec<usize>,
    seen: Vec<(Seen, Vec<String>)>,
    probes: HashMap<String, Probe>,
    probe_errors: Vec<String>,
    ingest_latencies: Vec<f64>,
    ingest_errors: Vec<String>,
    ingest_seconds: f64,
    end: Instant,
    rss: Samples,
    /// Seconds from the first poll to the bridges' start (the end of the ramp).
    load_start: f64,
}

fn report(r: Report<'_>) {
    let answers: u64 = r.seen.iter().map(|(s, _)| s.answers).sum();
    let empty: u64 = r.seen.iter().map(|(s, _)| s.empty).sum();
    let sync_errors: u64 = r.seen.iter().map(|(s, _)| s.errors).sum();
    println!("\nclients' /sync");
    println!(
        "  answers {answers} ({} with timeline events, {empty} without), errors {sync_errors}",
        answers - empty
    );
    for message in r.seen.iter().flat_map(|(_, e)| e).take(5) {
        println!("    e.g. {message}");
    }

    println!("\nbridges' ingest");
    println!(
        "  events {} ({:.1}/s), errors {}, send p50 {:.2} ms, p99 {:.2} ms",
        r.ingest_latencies.len(),
        r.ingest_latencies.len() as f64 / r.ingest_seconds,
        r.ingest_errors.len(),
        quantile(&r.ingest_latencies, 0.5),
        quantile(&r.ingest_latencies, 0.99),
    );
    for message in r.ingest_errors.iter().take(5) {
        println!("    e.g. {message}");
    }

    // Wake-ups: a probe in an answer to a poll that was already waiting when the probe's send
    // started. Deliveries: every (client, probe) pair, once.
    let mut after_200 = Vec::new();
    let mut after_start = Vec::new();
    let mut late = 0u64;
    let mut delivered = HashSet::new();
    let mut duplicates = 0u64;
    for (client, (seen, _)) in r.seen.iter().enumerate() {
        for (event_id, issued, answered) in &seen.events {
            let Some(probe) = r.probes.get(event_id) else {
                continue;
            };
            if !delivered.insert((client, event_id.as_str())) {
                duplicates += 1;
                continue;
            }
            if *issued < probe.start {
                after_200.push(signed_ms(probe.done, *answered));
                after_start.push(signed_ms(probe.start, *answered));
            } else {
                late += 1;
            }
        }
    }
    // Probes answered at least 5 s before the end must have reached every member.
    let settled = r.end.checked_sub(Duration::from_secs(5));
    let mut members = vec![0usize; r.room_of.iter().max().map_or(0, |m| m + 1)];
    for room in &r.room_of {
        members[*room] += 1;
    }
    let mut expected = 0usize;
    let mut got = 0usize;
    for (event_id, probe) in &r.probes {
        if settled.is_some_and(|settled| probe.done <= settled) {
            expected += members.get(probe.room).copied().unwrap_or(0);
            got += r
                .room_of
                .iter()
                .enumerate()
                .filter(|(client, room)| {
                    **room == probe.room && delivered.contains(&(*client, event_id.as_str()))
                })
                .count();
        }
    }
    println!("\nprobes → waiting members (one probe wakes every member of its room)");
    println!(
        "  probes {} (errors {}); wake-ups measured {} (+{late} picked up by the next poll); delivered {got} of {expected} due (probes answered ≥ 5 s before the end); duplicates {duplicates}",
        r.probes.len(),
        r.probe_errors.len(),
        after_200.len(),
    );
    for message in r.probe_errors.iter().take(5) {
        println!("    e.g. {message}");
    }
    println!(
        "  probe's 200 → answer: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; probe's start → answer: p50 {:.2} ms, p99 {:.2} ms",
        quantile(&after_200, 0.5),
        quantile(&after_200, 0.99),
        quantile(&after_200, 1.0),
        quantile(&after_start, 0.5),
        quantile(&after_start, 0.99),
    );

    println!("\nresident set, sampled every second from the first poll (MiB)");
    for (name, series) in ["hungryserv", "Synapse"].iter().zip(&r.rss) {
        if series.is_empty() {
            println!("  {name}: not sampled (no --{}-pid)", name.to_lowercase());
            continue;
        }
        let mib = |kib: u64| kib as f64 / 1024.0;
        let loaded: Vec<(f64, f64)> = series
            .iter()
            .filter(|(t, _)| *t >= r.load_start)
            .map(|(t, kib)| (*t, mib(*kib)))
            .collect();
        let (first, last) = (series[0], series[series.len() - 1]);
        let max = series.iter().map(|(_, k)| *k).max().unwrap_or(0);
        let half = loaded.len() / 2;
        let mean = |s: &[(f64, f64)]| s.iter().map(|(_, m)| m).sum::<f64>() / s.len().max(1) as f64;
        println!(
            "  {name}: first poll {:.1}, end of ramp {:.1}, max {:.1}, end {:.1}; under load: first half mean {:.1}, second half {:.1}, trend {:+.2} MiB/min",
            mib(first.1),
            loaded.first().map_or(f64::NAN, |(_, m)| *m),
            mib(max),
            mib(last.1),
            mean(&loaded[..half]),
            mean(&loaded[half..]),
            slope(&loaded) * 60.0,
        );
        let marks: Vec<String> = series
            .iter()
            .step_by(10)
            .map(|(t, kib)| format!("{t:.0}s {:.1}", mib(*kib)))
            .collect();
        println!("    every 10 s: {}", marks.join(", "));
    }
    let errors = sync_errors as usize + r.ingest_errors.len() + r.probe_errors.len();
    println!(
        "\n{} clients, {} bridges: {errors} errors",
        r.users, r.options.bridges
    );
}

/// Least-squares slope of `(x, y)` points (y per x); 0 with fewer than two.
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for (x, y) in points {
        num += (x - mean_x) * (y - mean_y);
        den += (x - mean_x) * (x - mean_x);
    }
    if den == 0.0 { 0.0 } else { num / den }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_flat_points() {
        assert!((slope(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0)]) - 2.0).abs() < 1e-9);
        assert_eq!(slope(&[(0.0, 4.0), (1.0, 4.0)]), 0.0);
        assert_eq!(slope(&[(0.0, 4.0)]), 0.0);
    }

    #[test]
    fn reads_own_limits_and_rss() {
        assert!(open_files_limit("self").is_some_and(|n| n > 0));
        assert!(rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}

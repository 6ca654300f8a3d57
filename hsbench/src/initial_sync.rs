//! `initial-sync`: what a client's first `/sync` (no `since`) costs. One user is in R local
//! rooms of E messages each and syncs through hungryserv (which also asks Synapse for that
//! user's part: that is the real cost); another is in R Synapse rooms of E messages each and
//! syncs directly at Synapse. Both are fresh appservice ghosts logged in with
//! `m.login.application_service`, so each is in exactly its R rooms. A third row times the
//! local-rooms user's sync directly at Synapse (no rooms there): the part hungryserv has to
//! wait for. The rows take turns, K measured syncs each, with the default timeline limit.
//!
//! Synapse answers a repeated identical `/sync` from a cache for a while, so every measured
//! request carries an inline filter that differs harmlessly per iteration (an account-data
//! type nobody uses), the same way for both targets. Target (the issue): local ≥ 10× faster.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use http::Method;
use hungryserv::upstream::client::encode_segment;
use serde_json::{Value, json};

use crate::client::{self, Appservice, Http};
use crate::stats::quantile;

#[derive(Args)]
pub struct Options {
    /// Synapse's own listener (Synapse rooms are filled and synced there directly).
    #[arg(long, default_value = "http://127.0.0.1:8009")]
    synapse: String,
    /// hungryserv's public listener (local rooms are filled and synced there).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    hungryserv: String,
    /// The appservice registration whose bot fills the rooms and whose ghosts sync.
    #[arg(long)]
    registration: PathBuf,
    /// Localpart prefix of the two syncing ghosts; must fall inside the registration's
    /// namespace. A run id follows it, so every run starts from users in no room.
    #[arg(long, default_value = "example_bench_isync_")]
    ghost_prefix: String,
    /// Rooms per user.
    #[arg(long, default_value_t = 50)]
    rooms: usize,
    /// Messages per room.
    #[arg(long, default_value_t = 100)]
    events: usize,
    /// Rooms filled at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Measured initial syncs per target.
    #[arg(long, default_value_t = 10)]
    iterations: u32,
    /// Unmeasured initial syncs per target first.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Upper bound on the measured time (both targets together), in seconds.
    #[arg(long, default_value_t = 300.0)]
    seconds: f64,
}

/// The room ID prefix of routing.toml's local class.
const LOCAL_PREFIX: &str = "!hs_";

/// One syncing user and what it is measured against.
struct Target {
    name: &'static str,
    base: String,
    token: String,
    /// Latency of every measured sync, ms.
    latencies: Vec<f64>,
    /// Body size of every measured sync, bytes.
    sizes: Vec<f64>,
    /// Answers that failed or did not hold exactly the user's rooms in `rooms.join`.
    bad: u64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let http = client::http();
    let appservice = Appservice::load(&http, &options.hungryserv, &options.registration).await?;
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut targets = Vec::with_capacity(2);
    for (name, base, suffix) in [
        ("synapse (Synapse rooms)", &options.synapse, "s"),
        ("hungryserv (local rooms)", &options.hungryserv, "l"),
    ] {
        let localpart = format!("{}{run_id}_{suffix}", options.ghost_prefix);
        appservice
            .ghost(&http, &options.synapse, &localpart)
            .await?;
        let token = appservice
            .login(&http, &options.synapse, &localpart)
            .await?;
        targets.push(Target {
            name,
            base: base.clone(),
            token,
            latencies: Vec::new(),
            sizes: Vec::new(),
            bad: 0,
        });
    }
    // The local-rooms user straight at Synapse: the part of its sync hungryserv has to fetch,
    // the floor under hungryserv's figure.
    targets.push(Target {
        name: "synapse (local user's part)",
        base: options.synapse.clone(),
        token: targets[1].token.clone(),
        latencies: Vec::new(),
        sizes: Vec::new(),
        bad: 0,
    });
    let result = measure(&http, &appservice, &options, run_id, &mut targets).await;
    for target in &targets[..2] {
        if let Err(err) = client::logout(&http, &options.synapse, &target.token).await {
            eprintln!("hsbench: {err:#}");
        }
    }
    result
}

async fn measure(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    run_id: &str,
    targets: &mut [Target],
) -> anyhow::Result<()> {
    println!(
        "initial-sync: {} rooms × {} messages per user; filling with {} rooms at a time",
        options.rooms, options.events, options.concurrency
    );
    let mut room_sets = Vec::with_capacity(targets.len());
    for (target, federate) in targets.iter().zip([true, false]) {
        let started = Instant::now();
        let rooms = fill(http, appservice, options, target, federate, run_id).await?;
        let local = rooms.iter().filter(|r| r.starts_with(LOCAL_PREFIX)).count();
        if local != if federate { 0 } else { rooms.len() } {
            bail!("{}: rooms not where they should be: {rooms:?}", target.name);
        }
        println!(
            "  {}: {} rooms filled in {:.1} s",
            target.name,
            rooms.len(),
            started.elapsed().as_secs_f64()
        );
        room_sets.push(rooms);
    }
    // The local user's part at Synapse has no rooms.
    room_sets.push(Vec::new());
    client::settle().await;
    println!(
        "  measuring: {} initial syncs per target (after {} warm-up), alternating, at most {} s",
        options.iterations, options.warmup, options.seconds
    );

    let limit = Duration::from_secs_f64(options.seconds);
    let mut measured = Duration::ZERO;
    for k in 0..options.warmup + options.iterations {
        let warm = k < options.warmup;
        if !warm && measured >= limit {
            break;
        }
        // A fresh filter per iteration defeats Synapse's sync response cache, the same for both.
        let filter = format!(
            r#"{{"room":{{"timeline":{{"limit":10}}}},"account_data":{{"not_types":["hsbench.{run_id}.{k}"]}}}}"#
        );
        // Rotate who goes first.
        let count = targets.len();
        for i in (0..count).map(|i| (i + k as usize) % count) {
            let (target, rooms) = (&mut targets[i], &room_sets[i]);
            let url = client::sync_url(&target.base, None, 0, Some(&filter));
            let started = Instant::now();
            let result = client::call_raw(http, Method::GET, &url, Some(&target.token), None).await;
            let elapsed = started.elapsed();
            if !warm {
                measured += elapsed;
            }
            let problem = match result {
                Ok((status, bytes)) if status.is_success() => {
                    if !warm {
                        target.latencies.push(elapsed.as_secs_f64() * 1000.0);
                        target.sizes.push(bytes.len() as f64);
                    }
                    check(&bytes, rooms)
                }
                Ok((status, bytes)) => Some(format!(
                    "{status} {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
                )),
                Err(err) => Some(format!("{err:#}")),
            };
            if let Some(problem) = problem {
                eprintln!("hsbench: {}: {problem}", target.name);
                if !warm {
                    target.bad += 1;
                }
            }
        }
    }
    report(targets, options.rooms);
    Ok(())
}

/// Why an answer is not the expected one: `rooms.join` must hold exactly the user's rooms.
fn check(bytes: &[u8], rooms: &[String]) -> Option<String> {
    let body: Value = match serde_json::from_slice(bytes) {
        Ok(body) => body,
        Err(err) => return Some(format!("answer is not JSON: {err}")),
    };
    // Synapse leaves out empty sections.
    let empty = serde_json::Map::new();
    let joined = match body["rooms"]["join"].as_object() {
        Some(joined) => joined,
        None if rooms.is_empty() => &empty,
        None => return Some("answer has no rooms.join".into()),
    };
    let missing = rooms.iter().filter(|r| !joined.contains_key(*r)).count();
    if joined.len() != rooms.len() || missing > 0 {
        return Some(format!(
            "rooms.join has {} rooms, {missing} of the user's {} missing",
            joined.len(),
            rooms.len()
        ));
    }
    None
}

/// Creates `options.rooms` rooms at the target's server (local ones through hungryserv when
/// `federate` is false), the user joined, and `options.events` messages from the bot in each.
async fn fill(
    http: &Http,
    appservice: &Appservice,
    options: &Options,
    target: &Target,
    federate: bool,
    run_id: &str,
) -> anyhow::Result<Vec<String>> {
    let total = (options.rooms * options.events) as u64;
    let next_room = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let job = Fill {
            http: http.clone(),
            base: target.base.clone(),
            bot_token: appservice.token.clone(),
            user_token: target.token.clone(),
            federate,
            events: options.events,
            run_id: run_id.to_owned(),
        };
        let (next_room, sent, rooms) = (next_room.clone(), sent.clone(), options.rooms);
        workers.spawn(async move {
            let mut filled = Vec::new();
            loop {
                let n = next_room.fetch_add(1, Ordering::Relaxed);
                if n >= rooms {
                    return Ok::<_, anyhow::Error>(filled);
                }
                filled.push(job.room(n, &sent).await?);
            }
        });
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    let mut rooms = Vec::with_capacity(options.rooms);
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(result) => rooms.extend(result.context("fill worker")??),
                None => break,
            },
            _ = ticker.tick() => {
                let done = sent.load(Ordering::Relaxed);
                println!(
                    "  {}: {done}/{total} messages ({:.0}/s)",
                    target.name,
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(rooms)
}

/// What a fill worker needs.
struct Fill {
    http: Http,
    base: String,
    bot_token: String,
    user_token: String,
    federate: bool,
    events: usize,
    run_id: String,
}

impl Fill {
    /// Room number `n`: created by the bot with the user invited, joined, filled.
    async fn room(&self, n: usize, sent: &AtomicU64) -> anyhow::Result<String> {
        let base = &self.base;
        let whoami = client::call(
            &self.http,
            Method::GET,
            &format!("{base}/_matrix/client/v3/account/whoami"),
            Some(&self.user_token),
            None,
        )
        .await?
        .1;
        let user_id = whoami["user_id"]
            .as_str()
            .context("whoami has no user_id")?;
        let (status, body) = client::call(
            &self.http,
            Method::POST,
            &format!("{base}/_matrix/client/v3/createRoom"),
            Some(&self.bot_token),
            Some(&json!({
                "preset": "private_chat",
                "name": format!("hsbench initial-sync {n}"),
                "creation_content": {"m.federate": self.federate},
                "invite": [user_id],
            })),
        )
        .await?;
        if !status.is_success() {
            bail!("createRoom at {base} failed: {status} {body}");
        }
        let room_id = body["room_id"].as_str().context("no room_id")?.to_owned();
        let room = encode_segment(&room_id);
        let (status, body) = client::call(
            &self.http,
            Method::POST,
            &format!("{base}/_matrix/client/v3/rooms/{room}/join"),
            Some(&self.user_token),
            Some(&json!({})),
        )
        .await?;
        if !status.is_success() {
            bail!("joining {room_id} at {base} failed: {status} {body}");
        }
        for e in 0..self.events {
            let (status, body) = client::call(
                &self.http,
                Method::PUT,
                &format!(
                    "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/is-{}-{n}-{e}",
                    self.run_id
                ),
                Some(&self.bot_token),
                Some(&json!({"msgtype": "m.text", "body": format!("hsbench message {e} in room {n}")})),
            )
            .await?;
            if !status.is_success() {
                bail!("send into {room_id} at {base} failed: {status} {body}");
            }
            sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(room_id)
    }
}

fn report(targets: &[Target], rooms: usize) {
    println!("\nGET /sync without since ({rooms} joined rooms, timeline limit 10)");
    println!(
        "  {:<28} {:>4} {:>4} {:>9} {:>9} {:>12}",
        "target", "n", "bad", "p50 ms", "p99 ms", "bytes p50"
    );
    for target in targets {
        println!(
            "  {:<28} {:>4} {:>4} {:>9.1} {:>9.1} {:>12.0}",
            target.name,
            target.latencies.len(),
            target.bad,
            quantile(&target.latencies, 0.5),
            quantile(&target.latencies, 0.99),
            quantile(&target.sizes, 0.5),
        );
    }
    if let [synapse, local, ..] = targets {
        let (s, l) = (
            quantile(&synapse.latencies, 0.5),
            quantile(&local.latencies, 0.5),
        );
        println!(
            "  ratio p50: local rooms {:.1}× faster (synapse/hungryserv); p99 {:.1}×; target ≥ 10×",
            s / l,
            quantile(&synapse.latencies, 0.99) / quantile(&local.latencies, 0.99),
        );
    }
    if let [_, local, part] = targets {
        println!(
            "  hungryserv p50 minus its user's part at Synapse p50: {:.1} ms",
            quantile(&local.latencies, 0.5) - quantile(&part.latencies, 0.5),
        );
    }
}

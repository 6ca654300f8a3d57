//! `sync-latency`: how soon a waiting `/sync` hands a client a new event. The bench user has
//! a long-poll open (`timeout=30000`, `since` its last `next_batch`); the appservice bot sends
//! one `m.room.message`; we measure from the send's 200 (and from its start) to the sync's
//! answer that carries the event. With `--what receipt` the bot instead posts a read receipt
//! on its latest message (sent, and synced past, before the measured step) and the answer must
//! carry the receipt in `ephemeral`; with `--what typing` the bot starts or stops typing
//! (alternately) and the answer must carry the new `m.typing` list. Three rows, in
//! alternating rounds:
//!
//! * `synapse`: a Synapse room, sync and send directly at Synapse;
//! * `hungryserv local`: a local room (`!hs_…`), sync and send through hungryserv (the merged
//!   sync, woken from memory by the local commit);
//! * `hungryserv synapse-room`: the Synapse room, sync and send through hungryserv (the merged
//!   sync waiting on Synapse's long-poll).
//!
//! With `--delayed-hungryserv URL` (a second hungryserv whose `synapse.url` is the proxy that
//! `--delay-proxy-port` starts, adding `--delay-ms` to every request to Synapse), two more
//! rows do the same through it: `local, Synapse +N ms` must match `hungryserv local` (a local
//! room's wake-up never waits for Synapse), while the Synapse room there pays the delay.
//! `deploy/local/bench sync-latency-delayed` sets it up.
//!
//! The sync is started, given a head start (30 ms) to be waiting on the server, then the send
//! goes. A sync that answers without the event (other news) is followed by another from its
//! `next_batch` until the event comes; those are counted. The sync can answer before the
//! sender has read its 200, so "answer − 200" can be negative; both differences are printed
//! as measured. Target (the issue): local rooms p50 ≤ 2 ms (Synapse: 57 ms on this machine).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use http::Method;
use hungryserv::upstream::client::encode_segment;
use serde_json::{Value, json};

use crate::Targets;
use crate::client::{self, Appservice, Http};
use crate::stats::{quantile, signed_ms};

#[derive(Args)]
pub struct Options {
    #[command(flatten)]
    targets: Targets,
    /// The appservice registration whose bot creates the rooms and sends the events.
    #[arg(long)]
    registration: PathBuf,
    /// Measured iterations per row.
    #[arg(long, default_value_t = 200)]
    iterations: u32,
    /// Upper bound on the measured time per row, in seconds.
    #[arg(long, default_value_t = 60.0)]
    seconds: f64,
    /// Unmeasured iterations per row before the first round.
    #[arg(long, default_value_t = 5)]
    warmup: u32,
    /// The iterations and time of each row are split into this many rounds, the rows taking
    /// turns, so drift on the machine lands on all of them.
    #[arg(long, default_value_t = 10)]
    rounds: u32,
    /// How long a sync request runs before the send, in milliseconds (so it is waiting).
    #[arg(long, default_value_t = 30)]
    head_start_ms: u64,
    /// What the bot does that the waiting sync must show.
    #[arg(long, value_enum, default_value_t = What::Message)]
    what: What,
    /// Start a proxy to Synapse (`--synapse`) on this 127.0.0.1 port that delays every
    /// request by `--delay-ms`, for the hungryserv of `--delayed-hungryserv`.
    #[arg(long)]
    delay_proxy_port: Option<u16>,
    /// The proxy's delay, in milliseconds.
    #[arg(long, default_value_t = 200)]
    delay_ms: u64,
    /// A hungryserv whose `synapse.url` is the delay proxy: adds its two rows.
    #[arg(long)]
    delayed_hungryserv: Option<String>,
}

/// The measured step.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum What {
    /// A new `m.room.message` in the timeline.
    Message,
    /// A read receipt (`m.receipt` in `ephemeral`).
    Receipt,
    /// A typing start or stop (`m.typing` in `ephemeral`).
    Typing,
}

/// What the waiting sync must carry.
enum Awaited {
    /// This event in the timeline.
    Event(String),
    /// A receipt for this event in `ephemeral`.
    Receipt(String),
    /// An `m.typing` with (`true`) or without the bot.
    Typing(bool),
}

/// The sync long-poll timeout, as clients use it.
const SYNC_TIMEOUT_MS: u64 = 30_000;
/// Follow-up syncs (each answering with other news) after which an event counts as lost.
const MAX_FOLLOW_UPS: u32 = 10;
/// The room ID prefix of routing.toml's local class.
const LOCAL_PREFIX: &str = "!hs_";

/// One row: where the user syncs, where the bot sends, into which room.
struct Row {
    name: &'static str,
    sync_base: String,
    /// The user's access token for this row's syncs (one device per target).
    user_token: String,
    send_base: String,
    room_id: String,
    /// The user's position on this row's sync chain.
    since: String,
    samples: Vec<Sample>,
    /// Syncs that answered without the awaited event.
    follow_ups: u64,
    /// Whether the bot is typing in this row's room (`--what typing` alternates it).
    typing: bool,
    errors: u64,
}

/// One measured send.
struct Sample {
    /// Send start to its 200, ms.
    send: f64,
    /// Send 200 to the sync answer carrying the event, ms (negative: the sync came first).
    after_200: f64,
    /// Send start to the sync answer, ms.
    after_start: f64,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let Options {
        targets,
        registration,
        iterations,
        seconds,
        warmup,
        rounds,
        head_start_ms,
        what,
        delay_proxy_port,
        delay_ms,
        delayed_hungryserv,
    } = options;
    // Owned here: dropping it at the end stops the proxy.
    let _proxy = match delay_proxy_port {
        Some(port) => Some(
            crate::delay_proxy::start(port, &targets.synapse, Duration::from_millis(delay_ms))
                .await?,
        ),
        None => None,
    };
    let http = client::http();
    let appservice = Appservice::load(&http, &targets.hungryserv, &registration).await?;
    // One device for the direct chain, one for the chain through hungryserv: a client talks to
    // one of them, and their Synapse sync caches stay apart.
    let direct_token =
        client::login(&http, &targets.synapse, &targets.user, &targets.password).await?;
    let proxied_token =
        client::login(&http, &targets.hungryserv, &targets.user, &targets.password).await?;
    let delayed = match &delayed_hungryserv {
        Some(base) => {
            wait_ready(&http, base).await?;
            let token = client::login(&http, base, &targets.user, &targets.password).await?;
            Some(Delayed {
                base: base.clone(),
                token,
                name_local: leak(format!("local, Synapse +{delay_ms} ms")),
                name_synapse: leak(format!("synapse-room, +{delay_ms} ms")),
            })
        }
        None => None,
    };
    let result = measure(
        &http,
        &targets,
        &appservice,
        &direct_token,
        &proxied_token,
        Plan {
            iterations,
            seconds,
            warmup,
            rounds,
            head_start: Duration::from_millis(head_start_ms),
            what,
        },
        delayed.as_ref(),
    )
    .await;
    let mut sessions = vec![
        (&targets.synapse, &direct_token),
        (&targets.hungryserv, &proxied_token),
    ];
    if let Some(delayed) = &delayed {
        sessions.push((&delayed.base, &delayed.token));
    }
    for (base, token) in sessions {
        if let Err(err) = client::logout(&http, base, token).await {
            eprintln!("hsbench: {err:#}");
        }
    }
    result
}

/// The hungryserv behind which Synapse is delayed, and the user's session there.
struct Delayed {
    base: String,
    token: String,
    name_local: &'static str,
    name_synapse: &'static str,
}

/// A row name made once per run.
fn leak(name: String) -> &'static str {
    Box::leak(name.into_boxed_str())
}

/// Waits until `base` says it is ready (its Synapse, behind the proxy, answers), 60 s at most.
async fn wait_ready(http: &Http, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client::call(
            http,
            Method::GET,
            &format!("{base}/_hungryserv/ready"),
            None,
            None,
        )
        .await;
        if matches!(ready, Ok((status, _)) if status.is_success()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{base} was not ready within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How much to measure.
struct Plan {
    iterations: u32,
    seconds: f64,
    warmup: u32,
    rounds: u32,
    head_start: Duration,
    what: What,
}

async fn measure(
    http: &Http,
    targets: &Targets,
    appservice: &Appservice,
    direct_token: &str,
    proxied_token: &str,
    plan: Plan,
    delayed: Option<&Delayed>,
) -> anyhow::Result<()> {
    let user_id = whoami(http, &targets.synapse, direct_token).await?;
    let local_room = create_room(http, &targets.hungryserv, appservice, &user_id, false).await?;
    if !local_room.starts_with(LOCAL_PREFIX) {
        bail!("hungryserv did not create a local room: {local_room}");
    }
    let synapse_room = create_room(http, &targets.synapse, appservice, &user_id, true).await?;
    if synapse_room.starts_with(LOCAL_PREFIX) {
        bail!("Synapse's room has a local ID: {synapse_room}");
    }
    client::join(http, &targets.hungryserv, proxied_token, &local_room, None).await?;
    client::join(http, &targets.synapse, direct_token, &synapse_room, None).await?;

    let make_row = |name, sync_base: &str, user_token: &str, send_base: &str, room_id: &str| Row {
        name,
        sync_base: sync_base.to_owned(),
        user_token: user_token.to_owned(),
        send_base: send_base.to_owned(),
        room_id: room_id.to_owned(),
        since: String::new(),
        samples: Vec::new(),
        follow_ups: 0,
        errors: 0,
        typing: false,
    };
    let mut rows = vec![
        make_row(
            "synapse",
            &targets.synapse,
            direct_token,
            &targets.synapse,
            &synapse_room,
        ),
        make_row(
            "hungryserv local",
            &targets.hungryserv,
            proxied_token,
            &targets.hungryserv,
            &local_room,
        ),
        make_row(
            "hungryserv synapse-room",
            &targets.hungryserv,
            proxied_token,
            &targets.hungryserv,
            &synapse_room,
        ),
    ];
    if let Some(delayed) = delayed {
        rows.push(make_row(
            delayed.name_local,
            &delayed.base,
            &delayed.token,
            &delayed.base,
            &local_room,
        ));
        rows.push(make_row(
            delayed.name_synapse,
            &delayed.base,
            &delayed.token,
            &delayed.base,
            &synapse_room,
        ));
    }
    for row in &mut rows {
        // The user may be in many rooms (other scenarios leave theirs); one event each is
        // enough to get a position.
        let (status, body) = client::call(
            http,
            Method::GET,
            &client::sync_url(
                &row.sync_base,
                None,
                0,
                Some(r#"{"room":{"timeline":{"limit":1}}}"#),
            ),
            Some(&row.user_token),
            None,
        )
        .await?;
        if !status.is_success() {
            bail!("initial sync for {} failed: {status} {body}", row.name);
        }
        row.since = next_batch(&body)?;
    }
    let step = match plan.what {
        What::Message => "one send",
        What::Receipt => "one read receipt",
        What::Typing => "one typing start/stop",
    };
    println!(
        "sync-latency: one waiting /sync (timeout={SYNC_TIMEOUT_MS}), {step} by the appservice bot; per row at most {} iterations or {} s in {} alternating rounds (after {} warm-up), {} ms head start",
        plan.iterations,
        plan.seconds,
        plan.rounds,
        plan.warmup,
        plan.head_start.as_millis()
    );
    println!("  local room (through hungryserv): {local_room}   Synapse room: {synapse_room}");

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let mut n = 0u64;
    for row in &mut rows {
        start_row(http, appservice, row, plan.what).await?;
        for _ in 0..plan.warmup {
            n += 1;
            iterate(http, appservice, row, &run_id, n, &plan).await?;
        }
    }
    // Setup (room creation, joins) leaves Synapse busy for a while. The measured load itself
    // is one request at a time, so once is enough.
    client::settle().await;
    let rounds = plan.rounds.max(1);
    let per_round = plan.iterations.div_ceil(rounds);
    let share = Duration::from_secs_f64(plan.seconds) / rounds;
    for round in 0..rounds {
        // Rotate who goes first, so no row always follows the same one.
        let count = rows.len();
        for k in 0..count {
            let row = &mut rows[(k + round as usize) % count];
            // Other rows' sends are news on this chain too; start from the present.
            start_row(http, appservice, row, plan.what).await?;
            let started = Instant::now();
            let mut done = 0;
            while done < per_round
                && (row.samples.len() as u64) < u64::from(plan.iterations)
                && started.elapsed() < share
            {
                n += 1;
                match iterate(http, appservice, row, &run_id, n, &plan).await {
                    Ok(sample) => row.samples.push(sample),
                    Err(err) => {
                        eprintln!("hsbench: {}: {err:#}", row.name);
                        row.errors += 1;
                        catch_up(http, row).await?;
                    }
                }
                done += 1;
            }
        }
    }
    report(&rows);
    Ok(())
}

/// One send and the sync that delivers it. The sync's since moves with every answer.
async fn iterate(
    http: &Http,
    appservice: &Appservice,
    row: &mut Row,
    run_id: &str,
    n: u64,
    plan: &Plan,
) -> anyhow::Result<Sample> {
    // A receipt needs a newer event each time (receipts only move forward): sent and synced
    // past before the measured step.
    let read = match plan.what {
        What::Receipt => {
            let (event_id, _) = send(http, appservice, row, run_id, n).await?;
            catch_up(http, row).await?;
            Some(event_id)
        }
        What::Message | What::Typing => None,
    };
    let waiting = tokio::spawn(timed_sync(
        http.clone(),
        client::sync_url(&row.sync_base, Some(&row.since), SYNC_TIMEOUT_MS, None),
        row.user_token.clone(),
    ));
    tokio::time::sleep(plan.head_start).await;
    let send_start = Instant::now();
    let acted = match (plan.what, read) {
        (What::Receipt, Some(event_id)) => receipt(http, appservice, row, &event_id)
            .await
            .map(|done| (Awaited::Receipt(event_id), done)),
        (What::Typing, _) => {
            // Alternating per room: a stop while not typing would change nothing.
            let typing = !row.typing;
            typing_step(http, appservice, row, typing)
                .await
                .map(|done| (Awaited::Typing(typing), done))
        }
        _ => send(http, appservice, row, run_id, n)
            .await
            .map(|(event_id, done)| (Awaited::Event(event_id), done)),
    };
    let (awaited, send_done) = match acted {
        Ok(acted) => {
            if let Awaited::Typing(typing) = acted.0 {
                row.typing = typing;
            }
            acted
        }
        Err(err) => {
            waiting.abort();
            return Err(err);
        }
    };
    let event_id = match &awaited {
        Awaited::Event(id) | Awaited::Receipt(id) => id.clone(),
        Awaited::Typing(typing) => format!("typing={typing}"),
    };
    let (mut answer, mut answered) = waiting.await.context("sync task")??;
    let mut follow_ups = 0;
    loop {
        row.since = next_batch(&answer)?;
        if carries(&answer, &row.room_id, &awaited, &appservice.bot) {
            break;
        }
        follow_ups += 1;
        row.follow_ups += 1;
        eprintln!(
            "hsbench: {}: a sync answered without {event_id} after {:.1} ms: {}",
            row.name,
            signed_ms(send_start, answered),
            news(&answer)
        );
        if follow_ups > MAX_FOLLOW_UPS {
            bail!(
                "{event_id} not delivered after {MAX_FOLLOW_UPS} follow-up syncs in {} s",
                send_start.elapsed().as_secs()
            );
        }
        (answer, answered) = timed_sync(
            http.clone(),
            client::sync_url(&row.sync_base, Some(&row.since), SYNC_TIMEOUT_MS, None),
            row.user_token.clone(),
        )
        .await?;
    }
    Ok(Sample {
        send: signed_ms(send_start, send_done),
        after_200: signed_ms(send_done, answered),
        after_start: signed_ms(send_start, answered),
    })
}

/// The bot's send; returns the event ID and when the 200 was read.
async fn send(
    http: &Http,
    appservice: &Appservice,
    row: &Row,
    run_id: &str,
    n: u64,
) -> anyhow::Result<(String, Instant)> {
    let (status, body) = client::call(
        http,
        Method::PUT,
        &format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/sl-{run_id}-{n}",
            row.send_base,
            encode_segment(&row.room_id)
        ),
        Some(&appservice.token),
        Some(&json!({"msgtype": "m.text", "body": format!("hsbench sync-latency {n}")})),
    )
    .await?;
    let done = Instant::now();
    if !status.is_success() {
        bail!("send failed: {status} {body}");
    }
    let event_id = body["event_id"]
        .as_str()
        .context("send answer has no event_id")?;
    Ok((event_id.to_owned(), done))
}

/// One sync and the moment its whole answer was read.
async fn timed_sync(http: Http, url: String, token: String) -> anyhow::Result<(Value, Instant)> {
    // The server answers within its timeout; the margin only bounds a hung server.
    let limit = Duration::from_millis(SYNC_TIMEOUT_MS * 2);
    let (status, bytes) = tokio::time::timeout(
        limit,
        client::call_raw(&http, Method::GET, &url, Some(&token), None),
    )
    .await
    .context("sync did not answer")??;
    let answered = Instant::now();
    if !status.is_success() {
        bail!("sync failed: {status} {}", String::from_utf8_lossy(&bytes));
    }
    Ok((serde_json::from_slice(&bytes)?, answered))
}

/// Before a row's turn: with `--what typing` the bot stops typing in the row's room (two rows
/// share the Synapse room, and a start while already typing changes nothing), then the row's
/// position moves to the present.
async fn start_row(
    http: &Http,
    appservice: &Appservice,
    row: &mut Row,
    what: What,
) -> anyhow::Result<()> {
    if what == What::Typing {
        typing_step(http, appservice, row, false).await?;
        row.typing = false;
    }
    catch_up(http, row).await
}

/// Moves a row's position to the present (`timeout=0`), so the next sync waits for news.
async fn catch_up(http: &Http, row: &mut Row) -> anyhow::Result<()> {
    let (answer, _) = timed_sync(
        http.clone(),
        client::sync_url(&row.sync_base, Some(&row.since), 0, None),
        row.user_token.clone(),
    )
    .await?;
    row.since = next_batch(&answer)?;
    Ok(())
}

/// What a sync answer holds, in short: non-empty sections and rooms with their event counts.
fn news(answer: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(sections) = answer.as_object() {
        for (key, value) in sections {
            match key.as_str() {
                "next_batch" => {}
                "rooms" => {
                    for (section, rooms) in value.as_object().into_iter().flatten() {
                        for (room_id, room) in rooms.as_object().into_iter().flatten() {
                            let count =
                                |part: &str| room[part]["events"].as_array().map_or(0, Vec::len);
                            parts.push(format!(
                                "{section} {room_id} (timeline {}, state {}, ephemeral {})",
                                count("timeline"),
                                count("state"),
                                count("ephemeral")
                            ));
                        }
                    }
                }
                _ if value.as_object().is_some_and(|o| o.is_empty())
                    || value["events"].as_array().is_some_and(Vec::is_empty) => {}
                _ => parts.push(format!("{key}: {value}")),
            }
        }
    }
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join("; ")
    }
}

fn next_batch(answer: &Value) -> anyhow::Result<String> {
    answer["next_batch"]
        .as_str()
        .map(str::to_owned)
        .context("sync answer has no next_batch")
}

/// Whether a sync answer carries what the iteration waits for.
fn carries(answer: &Value, room_id: &str, awaited: &Awaited, bot: &str) -> bool {
    let room = &answer["rooms"]["join"][room_id];
    let events = |part: &str| room[part]["events"].as_array().cloned().unwrap_or_default();
    match awaited {
        Awaited::Event(event_id) => events("timeline")
            .iter()
            .any(|e| e["event_id"] == *event_id),
        Awaited::Receipt(event_id) => events("ephemeral")
            .iter()
            .any(|e| e["type"] == "m.receipt" && e["content"].get(event_id.as_str()).is_some()),
        Awaited::Typing(typing) => events("ephemeral").iter().any(|e| {
            e["type"] == "m.typing"
                && e["content"]["user_ids"]
                    .as_array()
                    .is_some_and(|users| users.iter().any(|u| u == bot) == *typing)
        }),
    }
}

/// The bot's read receipt on `event_id`; returns when the 200 was read.
async fn receipt(
    http: &Http,
    appservice: &Appservice,
    row: &Row,
    event_id: &str,
) -> anyhow::Result<Instant> {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
        row.send_base,
        encode_segment(&row.room_id),
        encode_segment(event_id)
    );
    acted(http, appservice, Method::POST, &url, &json!({})).await
}

/// The bot starts or stops typing; returns when the 200 was read.
async fn typing_step(
    http: &Http,
    appservice: &Appservice,
    row: &Row,
    typing: bool,
) -> anyhow::Result<Instant> {
    let url = format!(
        "{}/_matrix/client/v3/rooms/{}/typing/{}",
        row.send_base,
        encode_segment(&row.room_id),
        encode_segment(&appservice.bot)
    );
    let body = json!({"typing": typing, "timeout": 30_000});
    acted(http, appservice, Method::PUT, &url, &body).await
}

/// One request by the bot that must succeed; returns when its answer was read.
async fn acted(
    http: &Http,
    appservice: &Appservice,
    method: Method,
    url: &str,
    body: &Value,
) -> anyhow::Result<Instant> {
    let (status, answer) =
        client::call(http, method, url, Some(&appservice.token), Some(body)).await?;
    let done = Instant::now();
    if !status.is_success() {
        bail!("{url}: {status} {answer}");
    }
    Ok(done)
}

async fn whoami(http: &Http, base: &str, token: &str) -> anyhow::Result<String> {
    let (status, body) = client::call(
        http,
        Method::GET,
        &format!("{base}/_matrix/client/v3/account/whoami"),
        Some(token),
        None,
    )
    .await?;
    if !status.is_success() {
        bail!("whoami failed: {status} {body}");
    }
    body["user_id"]
        .as_str()
        .map(str::to_owned)
        .context("whoami has no user_id")
}

/// The bot creates a private room at `base` and invites the user.
async fn create_room(
    http: &Http,
    base: &str,
    appservice: &Appservice,
    user_id: &str,
    federate: bool,
) -> anyhow::Result<String> {
    let (status, body) = client::call(
        http,
        Method::POST,
        &format!("{base}/_matrix/client/v3/createRoom"),
        Some(&appservice.token),
        Some(&json!({
            "preset": "private_chat",
            "name": "hsbench sync-latency",
            "creation_content": {"m.federate": federate},
            "invite": [user_id],
        })),
    )
    .await?;
    if !status.is_success() {
        bail!("createRoom at {base} failed: {status} {body}");
    }
    body["room_id"]
        .as_str()
        .map(str::to_owned)
        .context("createRoom answer has no room_id")
}

fn report(rows: &[Row]) {
    println!("\nstep's 200 → waiting /sync answers with it (ms; negative: the sync came first)");
    println!(
        "  {:<24} {:>5} {:>6} {:>4} {:>8} {:>8} {:>10} {:>10} {:>4} {:>12} {:>12}",
        "row",
        "n",
        "follow",
        "err",
        "send p50",
        "send p99",
        "−200 p50",
        "−200 p99",
        "<0",
        "−start p50",
        "−start p99"
    );
    let p50s: Vec<(f64, f64)> = rows.iter().map(|row| {
        let pick = |f: fn(&Sample) -> f64| row.samples.iter().map(f).collect::<Vec<_>>();
        let (send, after_200, after_start) = (
            pick(|s| s.send),
            pick(|s| s.after_200),
            pick(|s| s.after_start),
        );
        println!(
            "  {:<24} {:>5} {:>6} {:>4} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>4} {:>12.2} {:>12.2}",
            row.name,
            row.samples.len(),
            row.follow_ups,
            row.errors,
            quantile(&send, 0.5),
            quantile(&send, 0.99),
            quantile(&after_200, 0.5),
            quantile(&after_200, 0.99),
            after_200.iter().filter(|ms| **ms < 0.0).count(),
            quantile(&after_start, 0.5),
            quantile(&after_start, 0.99),
        );
        (quantile(&after_200, 0.5), quantile(&after_start, 0.5))
    }).collect();
    let [synapse, local, proxied, ..] = p50s[..] else {
        return;
    };
    println!(
        "  ratio p50 (−start): local/synapse {:.3} ({:.1}× sooner), synapse-room via hungryserv/synapse {:.3}",
        local.1 / synapse.1,
        synapse.1 / local.1,
        proxied.1 / synapse.1,
    );
    println!(
        "  ratio p50 (−200):   local/synapse {:.3}, synapse-room via hungryserv/synapse {:.3}; hungryserv adds {:+.2} ms to a Synapse room",
        local.0 / synapse.0,
        proxied.0 / synapse.0,
        proxied.0 - synapse.0,
    );
    println!(
        "  target: local p50 (−200) ≤ 2 ms; measured {:.2} ms",
        local.0
    );
    if let [_, _, _, delayed_local, delayed_synapse] = p50s[..] {
        println!(
            "  Synapse delayed: local p50 (−200) {:.2} ms against {:.2} ms undelayed ({:+.2} ms; target within 1 ms, ≤ 2 ms); its Synapse room {:.2} ms against {:.2} ms",
            delayed_local.0,
            local.0,
            delayed_local.0 - local.0,
            delayed_synapse.0,
            proxied.0,
        );
    }
}

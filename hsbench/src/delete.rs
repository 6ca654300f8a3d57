//! `delete`: how long deleting a big room takes. A server admin fills a Synapse room (at
//! Synapse directly) and a local room (through hungryserv) with N messages each, then deletes
//! each with Synapse's admin API (`DELETE /_synapse/admin/v2/rooms/{roomId}`, the same server
//! it was filled through) and records, from the DELETE's start:
//! - when the room is invisible: a request about it (`GET …/state/m.room.create` with the
//!   member's token) is refused;
//! - when the member's sync shows it under `leave` (a long poll already waiting);
//! - when `delete_status/{deleteId}` says `complete` (the history is purged).
//!
//! The deletions run one after the other on a quiet machine (see `client::settle`). Polls
//! start every 2 ms and slow down to 1 % of the time elapsed, so the poller costs the server
//! being measured little during a long purge while the figures stay within ~1 %.
//!
//! Filling is bounded by `--fill-seconds` per room: Synapse takes ~50–100 events/s into one
//! room, so a 100,000-event Synapse room may stop short; the report then says how many
//! events each room really had.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use http::{Method, StatusCode};
use hungryserv::upstream::client::encode_segment;
use serde_json::{Value, json};

use crate::Targets;
use crate::client::{self, Http};

#[derive(Args)]
pub struct Options {
    /// Where the servers are; the user must be a Synapse server admin (it creates, fills and
    /// deletes both rooms). The Synapse room is filled and deleted at Synapse directly, the
    /// local room through hungryserv.
    #[command(flatten)]
    targets: Targets,
    /// Messages per room.
    #[arg(long, default_value_t = 10_000)]
    events: u64,
    /// Concurrent senders while filling a room.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Upper bound on filling one room, in seconds; a room not full by then is deleted with
    /// the events it has (the report shows the count).
    #[arg(long, default_value_t = 1800.0)]
    fill_seconds: f64,
    /// Upper bound on waiting for one deletion to finish, in seconds.
    #[arg(long, default_value_t = 1800.0)]
    seconds: f64,
    /// Only the local room: no Synapse room is filled or deleted.
    #[arg(long)]
    local_only: bool,
}

/// The room ID prefix of routing.toml's local class.
const LOCAL_PREFIX: &str = "!hs_";
/// The first poll interval; see [`poll_interval`].
const FIRST_POLL: Duration = Duration::from_millis(2);

/// One room and its deletion's figures.
struct Target {
    name: &'static str,
    base: String,
    room_id: String,
    /// Messages sent into the room.
    events: u64,
    fill: Duration,
    measured: Option<Measured>,
}

/// Times from the DELETE's start.
#[derive(Default)]
struct Measured {
    answered: Option<Duration>,
    invisible: Option<Duration>,
    sync_leave: Option<Duration>,
    complete: Option<Duration>,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    let http = client::http();
    let targets = &options.targets;
    let token = client::login(&http, &targets.synapse, &targets.user, &targets.password).await?;
    let result = measure(&http, &options, &token).await;
    if let Err(err) = client::logout(&http, &targets.synapse, &token).await {
        eprintln!("hsbench: {err:#}");
    }
    result
}

async fn measure(http: &Http, options: &Options, token: &str) -> anyhow::Result<()> {
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    println!(
        "delete: {} messages per room, {} senders, fill bound {} s",
        options.events, options.concurrency, options.fill_seconds
    );
    let mut sides = vec![(
        "hungryserv (local room)",
        &options.targets.hungryserv,
        false,
    )];
    if !options.local_only {
        sides.insert(
            0,
            ("synapse (Synapse room)", &options.targets.synapse, true),
        );
    }
    let mut targets = Vec::new();
    for (name, base, federate) in sides {
        let room_id = client::create_room_with(
            http,
            base,
            token,
            &json!({
                "preset": "private_chat",
                "name": "hsbench delete",
                "room_version": "10",
                "creation_content": {"m.federate": federate},
            }),
        )
        .await?;
        if room_id.starts_with(LOCAL_PREFIX) == federate {
            bail!("{name}: room {room_id} is not where it should be");
        }
        let started = Instant::now();
        let events = fill(http, options, base, token, &room_id, name, &run_id).await?;
        let fill = started.elapsed();
        println!(
            "  {name}: {room_id} filled with {events} messages in {:.1} s ({:.0}/s)",
            fill.as_secs_f64(),
            events as f64 / fill.as_secs_f64()
        );
        targets.push(Target {
            name,
            base: base.clone(),
            room_id,
            events,
            fill,
            measured: None,
        });
    }
    for target in &mut targets {
        client::settle().await;
        target.measured = Some(delete(http, options, token, target).await?);
    }
    report(&targets);
    Ok(())
}

/// Sends up to `options.events` messages with `options.concurrency` senders, stopping at the
/// fill bound; returns how many were sent.
async fn fill(
    http: &Http,
    options: &Options,
    base: &str,
    token: &str,
    room_id: &str,
    name: &str,
    run_id: &str,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs_f64(options.fill_seconds);
    let next = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let url = format!(
        "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/del-{run_id}-",
        encode_segment(room_id)
    );
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        let (http, url, token) = (http.clone(), url.clone(), token.to_owned());
        let (next, sent, total) = (next.clone(), sent.clone(), options.events);
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total || Instant::now() >= deadline {
                    return Ok::<_, anyhow::Error>(());
                }
                let body = json!({"msgtype": "m.text", "body": format!("hsbench delete {n}")});
                send_one(&http, &format!("{url}{n}"), &token, &body).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(10));
    ticker.tick().await;
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(result) => result.context("fill worker")??,
                None => break,
            },
            _ = ticker.tick() => {
                let done = sent.load(Ordering::Relaxed);
                println!(
                    "  {name}: {done}/{} messages ({:.0}/s)",
                    options.events,
                    done as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    let sent = sent.load(Ordering::Relaxed);
    if sent < options.events {
        println!(
            "  {name}: fill bound of {} s reached after {sent} of {} messages",
            options.fill_seconds, options.events
        );
    }
    Ok(sent)
}

/// One send, retried (same transaction ID, so never twice) when throttled or on a server or
/// connection error.
async fn send_one(http: &Http, url: &str, token: &str, body: &Value) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..10 {
        match client::call(http, Method::PUT, url, Some(token), Some(body)).await {
            Ok((status, _)) if status.is_success() => return Ok(()),
            Ok((StatusCode::TOO_MANY_REQUESTS, answer)) => {
                let wait = answer["retry_after_ms"].as_u64().unwrap_or(100);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                last = format!("429 {answer}");
            }
            Ok((status, answer)) if status.is_server_error() => {
                last = format!("{status} {answer}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok((status, answer)) => bail!("send {url} failed: {status} {answer}"),
            Err(err) => {
                last = format!("{err:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    bail!("send {url} failed 10 times, last: {last}")
}

/// How long to wait before the next poll, `elapsed` after the DELETE's start: 2 ms at first,
/// then 1 % of the elapsed time (capped at 1 s), so a poll never adds more than ~1 % to a
/// figure and a long purge is not slowed by a flood of status requests.
fn poll_interval(elapsed: Duration) -> Duration {
    (elapsed / 100).clamp(FIRST_POLL, Duration::from_secs(1))
}

/// Whether a sync answer lists `room_id` under `rooms.leave`.
fn shows_leave(sync: &Value, room_id: &str) -> bool {
    sync["rooms"]["leave"]
        .as_object()
        .is_some_and(|left| left.contains_key(room_id))
}

/// A delete_status answer's state: `Some(true)` complete, `Some(false)` failed, `None` not
/// finished yet (or not answered).
fn finished(status: StatusCode, body: &Value) -> Option<bool> {
    if !status.is_success() {
        return None;
    }
    match body["status"].as_str() {
        Some("complete") => Some(true),
        Some("failed") => Some(false),
        _ => None,
    }
}

/// The member's sync: an initial sync of the one room, then long polls until the room shows
/// under `leave`; returns when that was seen.
async fn sync_until_leave(
    http: &Http,
    base: &str,
    token: &str,
    room_id: &str,
    since: String,
) -> anyhow::Result<Instant> {
    let filter = sync_filter(room_id);
    let mut since = since;
    loop {
        let url = client::sync_url(base, Some(&since), 30_000, Some(&filter));
        let (status, body) = client::call(http, Method::GET, &url, Some(token), None).await?;
        if !status.is_success() {
            bail!("sync at {base} failed: {status} {body}");
        }
        if shows_leave(&body, room_id) {
            return Ok(Instant::now());
        }
        since = body["next_batch"]
            .as_str()
            .context("sync answer has no next_batch")?
            .to_owned();
    }
}

/// A sync filter for the one room, with as little else as possible.
fn sync_filter(room_id: &str) -> String {
    json!({
        "room": {"rooms": [room_id], "timeline": {"limit": 1}, "ephemeral": {"not_types": ["*"]},
                 "account_data": {"not_types": ["*"]}},
        "presence": {"not_types": ["*"]},
        "account_data": {"not_types": ["*"]},
    })
    .to_string()
}

async fn delete(
    http: &Http,
    options: &Options,
    token: &str,
    target: &Target,
) -> anyhow::Result<Measured> {
    let (base, room_id) = (&target.base, &target.room_id);
    let room = encode_segment(room_id);
    let bound = Duration::from_secs_f64(options.seconds);

    // The member's sync position before the deletion; its long poll waits from now on.
    let url = client::sync_url(base, None, 0, Some(&sync_filter(room_id)));
    let (status, body) = client::call(http, Method::GET, &url, Some(token), None).await?;
    let since = body["next_batch"]
        .as_str()
        .with_context(|| format!("initial sync at {base}: {status} {body}"))?
        .to_owned();
    let watcher = {
        let (http, base, token, room_id) = (
            http.clone(),
            base.clone(),
            token.to_owned(),
            room_id.clone(),
        );
        tokio::spawn(async move { sync_until_leave(&http, &base, &token, &room_id, since).await })
    };
    // Let the long poll reach the server before the deletion starts.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let (status, body) = client::call(
        http,
        Method::DELETE,
        &format!("{base}/_synapse/admin/v2/rooms/{room}"),
        Some(token),
        Some(&json!({})),
    )
    .await?;
    let mut measured = Measured {
        answered: Some(started.elapsed()),
        ..Measured::default()
    };
    if !status.is_success() {
        watcher.abort();
        bail!("DELETE {room_id} at {base} failed: {status} {body}");
    }
    let delete_id = body["delete_id"]
        .as_str()
        .context("DELETE answer has no delete_id")?
        .to_owned();
    let visible_url = format!("{base}/_matrix/client/v3/rooms/{room}/state/m.room.create");
    let status_url = format!("{base}/_synapse/admin/v2/rooms/delete_status/{delete_id}");
    while measured.invisible.is_none() || measured.complete.is_none() {
        if started.elapsed() > bound {
            println!("  {}: deletion not finished within {bound:?}", target.name);
            break;
        }
        if measured.invisible.is_none() {
            let (status, _) =
                client::call_raw(http, Method::GET, &visible_url, Some(token), None).await?;
            if matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND) {
                measured.invisible = Some(started.elapsed());
            }
        }
        if measured.complete.is_none() {
            let (status, body) =
                client::call(http, Method::GET, &status_url, Some(token), None).await?;
            match finished(status, &body) {
                Some(true) => measured.complete = Some(started.elapsed()),
                Some(false) => bail!("{}: deletion failed: {body}", target.name),
                None => {}
            }
        }
        tokio::time::sleep(poll_interval(started.elapsed())).await;
    }
    match tokio::time::timeout(bound.saturating_sub(started.elapsed()), watcher).await {
        Ok(Ok(Ok(seen))) => measured.sync_leave = Some(seen - started),
        Ok(Ok(Err(err))) => eprintln!("hsbench: {}: {err:#}", target.name),
        Ok(Err(err)) => eprintln!("hsbench: {}: sync watcher: {err}", target.name),
        Err(_) => eprintln!("hsbench: {}: sync never showed the leave", target.name),
    }
    Ok(measured)
}

fn ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".into(),
        |d| format!("{:.1}", d.as_secs_f64() * 1000.0),
    )
}

fn report(targets: &[Target]) {
    println!("\nDELETE /_synapse/admin/v2/rooms/{{roomId}}, times from the DELETE's start (ms)");
    println!(
        "  {:<24} {:>8} {:>8} {:>9} {:>10} {:>11} {:>12}",
        "target", "events", "fill s", "answered", "invisible", "sync leave", "purged"
    );
    for target in targets {
        let m = target.measured.as_ref();
        println!(
            "  {:<24} {:>8} {:>8.1} {:>9} {:>10} {:>11} {:>12}",
            target.name,
            target.events,
            target.fill.as_secs_f64(),
            ms(m.and_then(|m| m.answered)),
            ms(m.and_then(|m| m.invisible)),
            ms(m.and_then(|m| m.sync_leave)),
            ms(m.and_then(|m| m.complete)),
        );
    }
    let [synapse, local] = targets else {
        return;
    };
    let (Some(s), Some(l)) = (&synapse.measured, &local.measured) else {
        return;
    };
    let ratio = |s: Option<Duration>, l: Option<Duration>| match (s, l) {
        (Some(s), Some(l)) if !l.is_zero() => format!("{:.1}×", s.as_secs_f64() / l.as_secs_f64()),
        _ => "-".into(),
    };
    println!(
        "  ratio synapse/hungryserv: invisible {}, sync leave {}, purged {}{}",
        ratio(s.invisible, l.invisible),
        ratio(s.sync_leave, l.sync_leave),
        ratio(s.complete, l.complete),
        if synapse.events == local.events {
            String::new()
        } else {
            format!(
                " (rooms of different sizes: {} vs {} events)",
                synapse.events, local.events
            )
        },
    );
    println!("  targets (issue 7): invisible ≤ 50 ms, 10,000 events purged ≤ 1 s");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_start_fast_and_slow_down_to_one_percent() {
        for (elapsed_ms, expected_ms) in [
            (0, 2),
            (150, 2),
            (1_000, 10),
            (45_000, 450),
            (3_600_000, 1_000),
        ] {
            assert_eq!(
                poll_interval(Duration::from_millis(elapsed_ms)),
                Duration::from_millis(expected_ms),
                "after {elapsed_ms} ms"
            );
        }
    }

    #[test]
    fn leave_is_seen_only_under_rooms_leave() {
        let room = "!hs_abc:localhost";
        for (sync, expected) in [
            (json!({"rooms": {"leave": {room: {}}}}), true),
            (json!({"rooms": {"join": {room: {}}}}), false),
            (json!({"rooms": {"leave": {"!other:localhost": {}}}}), false),
            (json!({"next_batch": "x"}), false),
        ] {
            assert_eq!(shows_leave(&sync, room), expected, "{sync}");
        }
    }

    #[test]
    fn delete_status_finishes_only_on_complete_or_failed() {
        for (status, body, expected) in [
            (StatusCode::OK, json!({"status": "complete"}), Some(true)),
            (StatusCode::OK, json!({"status": "failed"}), Some(false)),
            (StatusCode::OK, json!({"status": "active"}), None),
            (StatusCode::OK, json!({"status": "scheduled"}), None),
            (StatusCode::NOT_FOUND, json!({"status": "complete"}), None),
        ] {
            assert_eq!(finished(status, &body), expected, "{status} {body}");
        }
    }
}

//! `batch`: importing a big chat's history. The appservice bot backfills B batches of N events
//! (default 100 × 1,000) into ONE local room with
//! `POST /_matrix/client/unstable/com.beeper.backfill/rooms/{roomId}/batch_send`, newest batch
//! first and each batch older than the last (`forward: false`), one batch at a time as a
//! bridge does; events are full events with ghost senders, their original timestamps and
//! bridge-chosen deterministic event IDs (bridgev2's scheme: a hash of room and message).
//! `forward_if_no_messages` is set as bridges set it, so the first batch lands in the empty
//! room and the rest go before it.
//!
//! Synapse has no batch send: the same bridge would send one event at a time. In the same
//! run, `--clients` ghosts (the ingest scenario's concurrency) send `PUT /send` with `?ts=`
//! into one Synapse room for a bounded time; its events/s gives the time Synapse would need
//! for the same history.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use clap::Args;
use http::Request;
use http_body_util::{BodyExt, Full};
use hungryserv::upstream::client::encode_segment;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::client::{self, Appservice, Http, MakeRequest};
use crate::ingest;
use crate::stats::quantile;

#[derive(Args)]
pub struct Options {
    /// Synapse's own listener (the one-by-one comparison runs there directly).
    #[arg(long, default_value = "http://127.0.0.1:8009")]
    synapse: String,
    /// hungryserv's public listener (the local room is backfilled there).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    hungryserv: String,
    /// The appservice registration whose bot backfills and whose ghosts are the senders.
    #[arg(long)]
    registration: PathBuf,
    /// Localpart prefix of the ghosts; must fall inside the registration's namespace.
    #[arg(long, default_value = "example_bench_")]
    ghost_prefix: String,
    /// Batches sent.
    #[arg(long, default_value_t = 100)]
    batches: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 1_000)]
    batch_size: usize,
    /// Length of each message's `body`, in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Different ghosts the backfilled messages are from (taking turns).
    #[arg(long, default_value_t = 4)]
    senders: usize,
    /// Upper bound on the backfill's duration, in seconds: batches not started by then are
    /// not sent.
    #[arg(long, default_value_t = 120.0)]
    seconds: f64,
    /// Concurrent one-by-one senders into the Synapse room (ingest's default).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Length of the Synapse measurement, in seconds.
    #[arg(long, default_value_t = 10.0)]
    synapse_seconds: f64,
    /// Upper bound on events sent to Synapse.
    #[arg(long, default_value_t = 100_000)]
    synapse_max_events: u64,
    /// Unmeasured one-by-one sends to Synapse first, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
}

/// The room ID prefix of routing.toml's local class.
const LOCAL_PREFIX: &str = "!hs_";

pub async fn run(options: Options) -> anyhow::Result<()> {
    if options.batches == 0 || options.batch_size == 0 || options.senders == 0 {
        bail!("--batches, --batch-size and --senders must be at least 1");
    }
    let http = client::http();
    let appservice = Appservice::load(&http, &options.hungryserv, &options.registration).await?;
    let mut ghosts = Vec::new();
    for n in 0..options.senders.max(options.clients) {
        let localpart = format!("{}{n}", options.ghost_prefix);
        ghosts.push(
            appservice
                .ghost(&http, &options.hungryserv, &localpart)
                .await?,
        );
    }
    let room_id = ingest::create(&http, &options.hungryserv, &appservice.token, false).await?;
    if !room_id.starts_with(LOCAL_PREFIX) {
        bail!(
            "{room_id} is not a local room (routing.toml's local class has prefix {LOCAL_PREFIX})"
        );
    }
    let total = options.batches * options.batch_size;
    println!(
        "batch: {} batches of {} events ({total} in all, {}-byte bodies, {} senders) backfilled \
         backwards into one local room, one batch at a time, at most {} s",
        options.batches, options.batch_size, options.body_bytes, options.senders, options.seconds
    );
    println!("  local room (through hungryserv): {room_id}");

    // Every body is built before the clock starts: the benchmark measures the server.
    let bodies: Vec<Bytes> = (0..options.batches)
        .map(|batch| batch_body(&options, &room_id, &ghosts, batch))
        .collect::<Result<_, _>>()?;
    let url = format!(
        "{}/_matrix/client/unstable/com.beeper.backfill/rooms/{}/batch_send",
        options.hungryserv,
        encode_segment(&room_id)
    );
    let backfill = backfill(&http, &url, &appservice.token, bodies, &options).await;

    client::settle().await;
    let synapse = one_by_one(&http, &options, &appservice.token, &ghosts).await?;

    println!("\nbackfill of one room: hungryserv batch_send vs Synapse PUT /send one by one");
    println!(
        "  {:<34} {:>9} {:>7} {:>10} {:>12} {:>9} {:>9}",
        "target", "events", "errors", "seconds", "events/s", "p50 ms", "p99 ms"
    );
    let rate = backfill.events as f64 / backfill.elapsed.as_secs_f64();
    println!(
        "  {:<34} {:>9} {:>7} {:>10.2} {:>12.0} {:>9.1} {:>9.1}",
        format!("hungryserv batch_send ×{}", options.batch_size),
        backfill.events,
        backfill.errors,
        backfill.elapsed.as_secs_f64(),
        rate,
        quantile(&backfill.latencies_ms, 0.5),
        quantile(&backfill.latencies_ms, 0.99),
    );
    let synapse_rate = synapse.throughput();
    println!(
        "  {:<34} {:>9} {:>7} {:>10.2} {:>12.1} {:>9.1} {:>9.1}",
        format!("synapse PUT /send, {} clients", options.clients),
        synapse.latencies.len(),
        synapse.errors,
        synapse.elapsed.as_secs_f64(),
        synapse_rate,
        synapse.quantile_ms(0.5),
        synapse.quantile_ms(0.99),
    );
    println!(
        "  ratio: {:.0}× the events/s (batch latency is per {}-event batch, Synapse's per event)",
        rate / synapse_rate,
        options.batch_size
    );
    println!(
        "  {total} messages: hungryserv {}, Synapse one by one at this rate {}",
        duration_text(total as f64 / rate),
        duration_text(total as f64 / synapse_rate),
    );
    if backfill.events < total {
        println!(
            "  note: the backfill stopped after {} of {total} events (--seconds or errors)",
            backfill.events
        );
    }
    Ok(())
}

/// The body of batch `batch` (0 = the newest history). Messages are numbered oldest first;
/// each batch holds its messages oldest first, as bridges send them.
fn batch_body(
    options: &Options,
    room_id: &str,
    ghosts: &[String],
    batch: usize,
) -> anyhow::Result<Bytes> {
    let first = (options.batches - 1 - batch) * options.batch_size;
    let filler = "x".repeat(options.body_bytes.saturating_sub(16));
    let events: Vec<Value> = (first..first + options.batch_size)
        .map(|n| {
            json!({
                "type": "m.room.message",
                "sender": ghosts[n % options.senders],
                "origin_server_ts": 1_500_000_000_000_i64 + n as i64 * 1_000,
                "event_id": deterministic_id(room_id, n),
                "content": {"msgtype": "m.text", "body": format!("message {n:>7} {filler}")},
            })
        })
        .collect();
    let body = json!({
        "forward": false,
        "forward_if_no_messages": true,
        "send_notification": false,
        "events": events,
    });
    Ok(Bytes::from(serde_json::to_vec(&body)?))
}

/// An event ID the way mautrix bridgev2 makes one: base64url(sha256(room \0 message \0)) and
/// a network suffix, so a repeated run into the same room would repeat the same IDs.
fn deterministic_id(room_id: &str, message: usize) -> String {
    let digest = Sha256::digest(format!("{room_id}\0{message}\0").as_bytes());
    format!("${}:hsbench.example", URL_SAFE_NO_PAD.encode(digest))
}

/// What the backfill achieved.
struct Backfill {
    /// Events in batches answered with all their event IDs.
    events: usize,
    /// Batches that failed or were not answered with one ID per event.
    errors: u64,
    /// Latency of each successful batch.
    latencies_ms: Vec<f64>,
    /// From the first batch sent to the last answer.
    elapsed: Duration,
}

/// Sends the batches one after another (each is older than the one before), until all are
/// answered or `--seconds` have passed.
async fn backfill(
    http: &Http,
    url: &str,
    token: &str,
    bodies: Vec<Bytes>,
    options: &Options,
) -> Backfill {
    let mut result = Backfill {
        events: 0,
        errors: 0,
        latencies_ms: Vec::with_capacity(bodies.len()),
        elapsed: Duration::ZERO,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(options.seconds);
    let auth = format!("Bearer {token}");
    for body in bodies {
        if Instant::now() >= deadline {
            break;
        }
        let request = Request::post(url)
            .header("authorization", auth.as_str())
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("request from valid parts");
        let sent = Instant::now();
        let answer = async {
            let response = http.request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        }
        .await;
        let took = sent.elapsed();
        match answer {
            Ok((status, bytes)) if status.is_success() => {
                let ids = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["event_ids"].as_array().map(Vec::len));
                if ids == Some(options.batch_size) {
                    result.events += options.batch_size;
                    result.latencies_ms.push(took.as_secs_f64() * 1000.0);
                } else {
                    result.errors += 1;
                    eprintln!("hsbench: batch_send answered {status} without one ID per event");
                }
            }
            Ok((status, bytes)) => {
                result.errors += 1;
                eprintln!(
                    "hsbench: batch_send failed: {status} {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            Err(err) => {
                result.errors += 1;
                eprintln!("hsbench: batch_send failed: {err:#}");
            }
        }
    }
    result.elapsed = started.elapsed();
    result
}

/// Synapse's one-by-one rate: `--clients` ghosts joined to one Synapse room send
/// `m.room.message` with `?user_id=` and `?ts=`, each its next when the last is answered.
async fn one_by_one(
    http: &Http,
    options: &Options,
    token: &str,
    ghosts: &[String],
) -> anyhow::Result<crate::stats::Phase> {
    let room_id = ingest::create(http, &options.synapse, token, true).await?;
    let senders = &ghosts[..options.clients.min(ghosts.len())];
    for ghost in senders {
        client::join(http, &options.synapse, token, &room_id, Some(ghost)).await?;
    }
    println!(
        "  Synapse room (direct): {room_id}, {} ghosts sending one by one for {} s",
        senders.len(),
        options.synapse_seconds
    );
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let base = options.synapse.clone();
    let auth = format!("Bearer {token}");
    let senders: Arc<Vec<String>> = Arc::new(senders.to_vec());
    let filler = "x".repeat(options.body_bytes.saturating_sub(16));
    let encoded_room = encode_segment(&room_id);
    let make: MakeRequest = Arc::new(move |n| {
        let sender = &senders[usize::try_from(n).unwrap_or(0) % senders.len()];
        let ts = 1_500_000_000_000_i64 + i64::try_from(n).unwrap_or(0) * 1_000;
        let body = json!({"msgtype": "m.text", "body": format!("message {n:>7} {filler}")});
        Request::put(format!(
            "{base}/_matrix/client/v3/rooms/{encoded_room}/send/m.room.message/b-{run_id}-{n}?user_id={}&ts={ts}",
            encode_segment(sender),
        ))
        .header("authorization", auth.as_str())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request from valid parts")
    });
    client::run_for(
        http,
        options.clients,
        Duration::from_secs_f64(options.warmup_seconds),
        u64::MAX,
        make.clone(),
    )
    .await;
    client::settle().await;
    Ok(client::run_for(
        http,
        options.clients,
        Duration::from_secs_f64(options.synapse_seconds),
        options.synapse_max_events,
        make,
    )
    .await)
}

/// `1 h 32 min`, `4 min 10 s` or `3.2 s`.
fn duration_text(seconds: f64) -> String {
    if !seconds.is_finite() {
        return "never (no event went through)".to_owned();
    }
    let whole = seconds.round() as u64;
    if whole >= 3_600 {
        format!("{} h {} min", whole / 3_600, whole % 3_600 / 60)
    } else if whole >= 60 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else {
        format!("{seconds:.1} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_the_issue() {
        assert_eq!(duration_text(5_520.0), "1 h 32 min");
        assert_eq!(duration_text(250.0), "4 min 10 s");
        assert_eq!(duration_text(1.84), "1.8 s");
        assert_eq!(
            duration_text(f64::INFINITY),
            "never (no event went through)"
        );
    }

    #[test]
    fn batches_go_backwards_and_ids_are_stable() {
        let options = Options {
            synapse: String::new(),
            hungryserv: String::new(),
            registration: PathBuf::new(),
            ghost_prefix: String::new(),
            batches: 3,
            batch_size: 2,
            body_bytes: 40,
            senders: 2,
            seconds: 1.0,
            clients: 1,
            synapse_seconds: 1.0,
            synapse_max_events: 1,
            warmup_seconds: 0.0,
        };
        let ghosts = ["@a:x".to_owned(), "@b:x".to_owned()];
        let body = |batch| -> Value {
            serde_json::from_slice(&batch_body(&options, "!hs_r:x", &ghosts, batch).unwrap())
                .unwrap()
        };
        let bodies = |batch: usize| -> Vec<String> {
            body(batch)["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["content"]["body"].as_str().unwrap()[..15].to_owned())
                .collect()
        };
        assert_eq!(bodies(0), ["message       4", "message       5"]);
        assert_eq!(bodies(2), ["message       0", "message       1"]);
        let first = body(0);
        assert_eq!(first["forward"], false);
        assert_eq!(first["events"][0]["sender"], "@a:x");
        assert_eq!(
            first["events"][0]["content"]["body"]
                .as_str()
                .unwrap()
                .len(),
            40
        );
        assert_eq!(
            first["events"][0]["event_id"],
            deterministic_id("!hs_r:x", 4)
        );
        assert_ne!(
            deterministic_id("!hs_r:x", 4),
            deterministic_id("!hs_r:x", 5)
        );
    }
}

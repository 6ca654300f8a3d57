//! `delivery`: how soon a bridge hears what is sent, and how fast it catches up after being
//! down. hsbench itself plays the bridge ([`crate::receiver`], on 127.0.0.1 at the port of
//! the registration's `url`), so a send and its push are timed by one clock.
//!
//! * Lag: as in `ingest`, 16 (by default) ghosts of the registration send into rooms of their
//!   own, closed loop — local rooms through hungryserv, Synapse rooms directly at Synapse
//!   (which pushes them to the same registration) — in alternating rounds. Per event: arrival
//!   at the receiver − the send's 200 (negative when the push beat the 200; reported as
//!   measured) and − the send's start.
//! * Catch-up: the receiver answers 503 while `--backlog` events are sent through hungryserv;
//!   then it answers again and a `POST /_matrix/client/v1/appservice/{id}/ping` (Synapse pings
//!   the receiver, and on success hungryserv retries at once instead of waiting out its
//!   backoff, up to 30 s by default) starts the catch-up, timed until every event ID arrived.
//!
//! Nobody listens on the registration's port outside this benchmark, so earlier runs leave
//! events queued in both homeservers: a marker event per target is sent and waited for before
//! anything is measured.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use http::{Method, StatusCode};
use hungryserv::upstream::client::encode_segment;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::Load;
use crate::client::{self, Appservice, Http};
use crate::ingest::{self, Sender};
use crate::receiver::{Log, Receiver, Source};
use crate::stats::{quantile, signed_ms};

#[derive(Args)]
pub struct Options {
    /// Synapse's own listener (Synapse rooms are written there directly).
    #[arg(long, default_value = "http://127.0.0.1:8009")]
    synapse: String,
    /// hungryserv's public listener (local rooms are written there).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    hungryserv: String,
    /// The appservice registration YAML: the senders use its as_token and user namespace, the
    /// receiver checks its hs_token.
    #[arg(long)]
    registration: PathBuf,
    /// The receiver's port on 127.0.0.1 (default: the port of the registration's url). It must
    /// be the port of the registration the running Synapse and hungryserv loaded.
    #[arg(long)]
    as_port: Option<u16>,
    /// Localpart prefix of the ghost users; must fall inside the registration's namespace.
    #[arg(long, default_value = "example_bench_")]
    ghost_prefix: String,
    /// Measure hungryserv alone, without the Synapse row.
    #[arg(long)]
    hungryserv_only: bool,
    /// The lag phase: senders, events and seconds per target, rounds.
    #[command(flatten)]
    load: Load,
    /// Events sent through hungryserv while the bridge is down, for the catch-up.
    #[arg(long, default_value_t = 10_000)]
    backlog: u64,
    /// Upper bound on the time to send the backlog, in seconds.
    #[arg(long, default_value_t = 120.0)]
    backlog_seconds: f64,
    /// Upper bound on each wait for pushes (the drain before, each round's tail, the
    /// catch-up), in seconds.
    #[arg(long, default_value_t = 300.0)]
    wait_seconds: f64,
}

/// A send that takes longer than this counts as an error.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The room ID prefix of routing.toml's local class.
const LOCAL_PREFIX: &str = "!hs_";

pub async fn run(options: Options) -> anyhow::Result<()> {
    let registration = hungryserv::config::registration::load(&options.registration)
        .map_err(|err| anyhow::anyhow!("{}: {err}", options.registration.display()))?;
    let url_port = registration
        .url
        .as_deref()
        .and_then(|url| url.parse::<http::Uri>().ok())
        .and_then(|uri| uri.port_u16());
    let port = options
        .as_port
        .or(url_port)
        .context("the registration's url has no port; pass --as-port")?;
    if url_port.is_some_and(|p| p != port) {
        eprintln!(
            "hsbench: listening on {port}, but {} points at {}",
            options.registration.display(),
            registration.url.as_deref().unwrap_or_default()
        );
    }
    let receiver = Receiver::start(port, registration.hs_token.clone()).await?;
    let result = measure(&options, &registration.id, port, &receiver).await;
    receiver.stop().await;
    result
}

/// What every phase needs.
struct Bench<'a> {
    http: Http,
    options: &'a Options,
    appservice: Appservice,
    appservice_id: &'a str,
    receiver: &'a Receiver,
    /// Distinguishes this run's transaction IDs from earlier runs'.
    run_id: String,
    /// Numbers every send of the run.
    sequence: Arc<AtomicU64>,
    wait: Duration,
}

/// One send that got its 200.
struct Sent {
    event_id: String,
    start: Instant,
    done: Instant,
}

/// The sends of one phase.
struct Batch {
    sent: Vec<Sent>,
    errors: u64,
    /// The first error, to show what went wrong.
    first_error: Option<String>,
    elapsed: Duration,
}

impl Batch {
    fn ids(&self) -> Vec<String> {
        self.sent.iter().map(|s| s.event_id.clone()).collect()
    }
}

/// One row of the lag table: where the ghosts send, and what arrived.
struct Target {
    name: &'static str,
    base: String,
    /// Who pushes this target's events.
    source: Source,
    senders: Arc<Vec<Sender>>,
    samples: Vec<Sample>,
    sent: usize,
    errors: u64,
    elapsed: Duration,
    /// Transactions (indices into the receiver's log) that carried this row's events.
    txns: HashSet<usize>,
    missing: usize,
    duplicates: usize,
}

/// One event's lag, in ms.
struct Sample {
    after_200: f64,
    after_start: f64,
}

async fn measure(
    options: &Options,
    appservice_id: &str,
    port: u16,
    receiver: &Receiver,
) -> anyhow::Result<()> {
    let http = client::http();
    let appservice = Appservice::load(&http, &options.hungryserv, &options.registration).await?;
    let bench = Bench {
        http: http.clone(),
        options,
        appservice,
        appservice_id,
        receiver,
        run_id: uuid::Uuid::new_v4().simple().to_string(),
        sequence: Arc::new(AtomicU64::new(0)),
        wait: Duration::from_secs_f64(options.wait_seconds),
    };
    let queued = bench.metric("hungryserv_appservice_queue_positions").await;
    let started = Instant::now();
    // Synapse pings the receiver: this proves it is where the registration Synapse loaded
    // points (deploy/local/up picks a new port whenever it runs; running servers keep theirs).
    // Both homeservers then push what earlier runs left queued at once.
    let (status, _, body) = bench.ping().await?;
    if !status.is_success() || receiver.with_log(|log| log.pings) == 0 {
        bail!(
            "Synapse could not ping the receiver on 127.0.0.1:{port} ({status} {body}): the registration it loaded points elsewhere; restart the stack (deploy/local/down, then bench again)"
        );
    }

    let mut ghosts = Vec::with_capacity(options.load.clients);
    for n in 0..options.load.clients {
        let localpart = format!("{}{n}", options.ghost_prefix);
        ghosts.push(
            bench
                .appservice
                .ghost(&http, &options.hungryserv, &localpart)
                .await?,
        );
    }
    let token = bench.appservice.token.clone();
    let local = ingest::rooms(&http, &options.hungryserv, &token, &ghosts, false).await?;
    if !local.iter().all(|s| s.room_id.starts_with(LOCAL_PREFIX)) {
        bail!("hungryserv did not create local rooms");
    }
    let mut targets = vec![];
    if !options.hungryserv_only {
        let remote = ingest::rooms(&http, &options.synapse, &token, &ghosts, true).await?;
        targets.push(Target::new(
            "synapse",
            &options.synapse,
            Source::Synapse,
            remote,
        ));
    }
    targets.push(Target::new(
        "hungryserv",
        &options.hungryserv,
        Source::Hungryserv,
        local,
    ));

    let load = &options.load;
    println!(
        "delivery: receiver (the bridge) on 127.0.0.1:{port}; {} appservice senders, one room each; lag: per target at most {} events or {} s in {} alternating rounds; catch-up: {} events",
        load.clients, load.max_requests, load.seconds, load.rounds, options.backlog
    );
    if let Some(queued) = queued {
        println!("  hungryserv's queue for {appservice_id} before the run: {queued} positions");
    }
    for target in &targets {
        bench.drain(target, started).await?;
    }
    for target in &targets {
        let warm = bench
            .send(&target.base, &target.senders, load.warmup(), u64::MAX)
            .await;
        bench
            .receiver
            .wait_for(&warm.ids(), Instant::now() + bench.wait)
            .await;
    }

    let rounds = load.rounds.max(1);
    let share = load.duration() / rounds;
    let max_events = (load.max_requests / u64::from(rounds)).max(1);
    for _ in 0..rounds {
        for target in &mut targets {
            client::settle().await;
            let batch = bench
                .send(&target.base, &target.senders, share, max_events)
                .await;
            if let Some(err) = &batch.first_error {
                eprintln!(
                    "hsbench: {}: {} sends failed, first: {err}",
                    target.name, batch.errors
                );
            }
            bench
                .receiver
                .wait_for(&batch.ids(), Instant::now() + bench.wait)
                .await;
            bench.receiver.with_log(|log| target.absorb(&batch, log));
        }
    }
    report_lag(&targets, &bench);

    let Some(local) = targets.last() else {
        bail!("no hungryserv row");
    };
    bench.catch_up(local).await
}

impl Target {
    fn new(name: &'static str, base: &str, source: Source, senders: Vec<Sender>) -> Self {
        Self {
            name,
            base: base.to_owned(),
            source,
            senders: Arc::new(senders),
            samples: Vec::new(),
            sent: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            txns: HashSet::new(),
            missing: 0,
            duplicates: 0,
        }
    }

    /// Adds a round's sends and what the receiver has of them.
    fn absorb(&mut self, batch: &Batch, log: &Log) {
        self.sent += batch.sent.len();
        self.errors += batch.errors;
        self.elapsed += batch.elapsed;
        for sent in &batch.sent {
            let Some(arrival) = log.events.get(&sent.event_id) else {
                self.missing += 1;
                continue;
            };
            self.samples.push(Sample {
                after_200: signed_ms(sent.done, arrival.at),
                after_start: signed_ms(sent.start, arrival.at),
            });
            self.txns.insert(arrival.txn);
            if arrival.times > 1 {
                self.duplicates += 1;
            }
        }
    }
}

impl Bench<'_> {
    /// Closed loop: each client sends its next event when the last one is answered, until
    /// `max` sends or `duration`, whichever comes first.
    async fn send(
        &self,
        base: &str,
        senders: &Arc<Vec<Sender>>,
        duration: Duration,
        max: u64,
    ) -> Batch {
        let issued = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let deadline = started + duration;
        let mut tasks = JoinSet::new();
        for k in 0..self.options.load.clients {
            let Some(sender) = senders.get(k % senders.len().max(1)) else {
                break;
            };
            let url = format!(
                "{base}/_matrix/client/v3/rooms/{}/send/m.room.message",
                encode_segment(&sender.room_id)
            );
            let user = encode_segment(&sender.user_id).to_string();
            let (http, token, run_id) = (
                self.http.clone(),
                self.appservice.token.clone(),
                self.run_id.clone(),
            );
            let (issued, sequence) = (issued.clone(), self.sequence.clone());
            tasks.spawn(async move {
                let (mut sent, mut errors, mut first_error) = (Vec::new(), 0u64, None);
                while issued.fetch_add(1, Ordering::Relaxed) < max && Instant::now() < deadline {
                    let n = sequence.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    let result = tokio::time::timeout(
                        SEND_TIMEOUT,
                        client::call(
                            &http,
                            Method::PUT,
                            &format!("{url}/dl-{run_id}-{n}?user_id={user}"),
                            Some(&token),
                            Some(&json!({"msgtype": "m.text", "body": format!("hsbench delivery {n}")})),
                        ),
                    )
                    .await;
                    let done = Instant::now();
                    let outcome = match result {
                        Ok(Ok((status, body))) if status.is_success() => body["event_id"]
                            .as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| format!("no event_id in {body}")),
                        Ok(Ok((status, body))) => Err(format!("{status} {body}")),
                        Ok(Err(err)) => Err(format!("{err:#}")),
                        Err(_) => Err(format!("no answer in {} s", SEND_TIMEOUT.as_secs())),
                    };
                    match outcome {
                        Ok(event_id) => sent.push(Sent {
                            event_id,
                            start,
                            done,
                        }),
                        Err(err) => {
                            errors += 1;
                            first_error.get_or_insert(err);
                        }
                    }
                }
                (sent, errors, first_error)
            });
        }
        let mut batch = Batch {
            sent: Vec::new(),
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
        };
        while let Some(result) = tasks.join_next().await {
            if let Ok((sent, errors, first_error)) = result {
                batch.sent.extend(sent);
                batch.errors += errors;
                batch.first_error = batch.first_error.or(first_error);
            }
        }
        batch.elapsed = started.elapsed();
        batch
    }

    /// `POST /_matrix/client/v1/appservice/{id}/ping` through hungryserv: its status, how long
    /// it took, and the answer.
    async fn ping(&self) -> anyhow::Result<(StatusCode, Duration, Value)> {
        let started = Instant::now();
        let (status, body) = client::call(
            &self.http,
            Method::POST,
            &format!(
                "{}/_matrix/client/v1/appservice/{}/ping",
                self.options.hungryserv,
                encode_segment(self.appservice_id)
            ),
            Some(&self.appservice.token),
            Some(&json!({
                "transaction_id":
                    format!("hsbench-{}-{}", self.run_id, self.sequence.fetch_add(1, Ordering::Relaxed)),
            })),
        )
        .await?;
        Ok((status, started.elapsed(), body))
    }

    /// One gauge or counter of this appservice from hungryserv's metrics.
    async fn metric(&self, name: &str) -> Option<f64> {
        let (status, text) = client::call_raw(
            &self.http,
            Method::GET,
            &format!("{}/_hungryserv/metrics", self.options.hungryserv),
            None,
            None,
        )
        .await
        .ok()?;
        if !status.is_success() {
            return None;
        }
        let prefix = format!("{name}{{appservice=\"{}\"}} ", self.appservice_id);
        String::from_utf8_lossy(&text)
            .lines()
            .find_map(|line| line.strip_prefix(&prefix)?.trim().parse().ok())
    }

    /// Sends a marker event to `target` and waits until it is pushed: everything queued
    /// before it has then been pushed too (both homeservers deliver in order). Reports what
    /// `target` pushed since `started`.
    async fn drain(&self, target: &Target, started: Instant) -> anyhow::Result<()> {
        let marker = self
            .send(&target.base, &target.senders, SEND_TIMEOUT, 1)
            .await;
        if marker.sent.is_empty() {
            bail!(
                "the marker event could not be sent to {}: {}",
                target.name,
                marker.first_error.unwrap_or_default()
            );
        }
        if self
            .receiver
            .wait_for(&marker.ids(), Instant::now() + self.wait)
            .await
            > 0
        {
            bail!(
                "{} did not push the marker event within {} s: the registration it loaded may point at another port (deploy/local/down, then bench again), or its queue is longer than the wait (--wait-seconds)",
                target.name,
                self.wait.as_secs()
            );
        }
        let (txns, events) = self.receiver.with_log(|log| {
            log.txns
                .iter()
                .filter(|txn| txn.source == target.source)
                .fold((0, 0), |(t, e), txn| (t + 1, e + txn.events))
        });
        println!(
            "  drained {}: {events} events (earlier runs' queue, this run's setup, the marker) in {txns} transactions, {:.1} s after the first ping",
            target.name,
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The bridge is down while the backlog is sent; then it comes back and pings.
    async fn catch_up(&self, local: &Target) -> anyhow::Result<()> {
        client::settle().await;
        let failed_before = self
            .metric("hungryserv_appservice_transactions_failed_total")
            .await;
        let (refused_before, repeated_before) = self
            .receiver
            .with_log(|log| (log.refused, log.repeated_txns));
        self.receiver.set_answering(false);
        let down = Instant::now();
        let batch = self
            .send(
                &local.base,
                &local.senders,
                Duration::from_secs_f64(self.options.backlog_seconds),
                self.options.backlog,
            )
            .await;
        // Every event of the backlog is committed: each send got its 200.
        let queued = self.metric("hungryserv_appservice_queue_positions").await;
        let failed = self
            .metric("hungryserv_appservice_transactions_failed_total")
            .await;
        let refused = self.receiver.with_log(|log| log.refused);
        self.receiver.set_answering(true);
        let reopened = Instant::now();
        let ping = self.ping().await;
        let ids = batch.ids();
        let missing = self.receiver.wait_for(&ids, reopened + self.wait).await;

        println!(
            "\ncatch-up: the bridge answers 503 while a backlog is sent through hungryserv, then answers again and pings"
        );
        println!(
            "  backlog: {} events sent in {:.2} s ({:.1} events/s, {} errors); bridge down {:.2} s",
            batch.sent.len(),
            batch.elapsed.as_secs_f64(),
            batch.sent.len() as f64 / batch.elapsed.as_secs_f64(),
            batch.errors,
            (reopened - down).as_secs_f64(),
        );
        if let Some(err) = &batch.first_error {
            println!("  first send error: {err}");
        }
        println!(
            "  pushes refused meanwhile: hungryserv {}, synapse {}; pusher failures (metrics) {}; queue at the end {} positions",
            refused.0 - refused_before.0,
            refused.1 - refused_before.1,
            match (failed_before, failed) {
                (Some(before), Some(after)) => format!("{}", after - before),
                _ => "?".into(),
            },
            queued.map_or("?".into(), |q| q.to_string()),
        );
        match &ping {
            Ok((status, took, body)) => println!(
                "  ping through hungryserv: {status} in {:.1} ms (Synapse → receiver {} ms)",
                took.as_secs_f64() * 1000.0,
                body["duration_ms"]
            ),
            Err(err) => println!("  ping through hungryserv failed: {err:#}"),
        }
        let (arrivals, txns, duplicates, repeated) = self.receiver.with_log(|log| {
            let mut arrivals = Vec::with_capacity(ids.len());
            let mut txns = HashSet::new();
            let mut duplicates = 0;
            for id in &ids {
                if let Some(arrival) = log.events.get(id) {
                    arrivals.push(signed_ms(reopened, arrival.at));
                    txns.insert(arrival.txn);
                    duplicates += usize::from(arrival.times > 1);
                }
            }
            let sizes: Vec<usize> = txns
                .iter()
                .filter_map(|i| log.txns.get(*i).map(|t| t.events))
                .collect();
            (
                arrivals,
                sizes,
                duplicates,
                log.repeated_txns - repeated_before,
            )
        });
        let first = arrivals.iter().copied().fold(f64::INFINITY, f64::min);
        let last = arrivals.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        println!(
            "  bridge answering again → first event {first:.1} ms, last {:.3} s: {:.0} events/s over the whole catch-up, {:.0} events/s from the first to the last",
            last / 1000.0,
            arrivals.len() as f64 / (last / 1000.0),
            arrivals.len().saturating_sub(1) as f64 / ((last - first) / 1000.0),
        );
        println!(
            "  {} transactions ({:.1} events each, max {})",
            txns.len(),
            txns.iter().sum::<usize>() as f64 / txns.len().max(1) as f64,
            txns.iter().max().copied().unwrap_or(0),
        );
        println!(
            "  arrived {} of {}: missing {missing}, duplicated {duplicates}, repeated txnIds {repeated}",
            arrivals.len(),
            ids.len()
        );
        Ok(())
    }
}

fn report_lag(targets: &[Target], bench: &Bench<'_>) {
    println!(
        "\ndelivery lag under ingest load: arrival at the bridge − the send's 200 (ms; negative: the push came first) and − the send's start"
    );
    println!(
        "  {:<11} {:>6} {:>4} {:>9} {:>5} {:>6} {:>9} {:>9} {:>9} {:>5} {:>9} {:>9} {:>9} {:>5} {:>4}",
        "target",
        "sent",
        "err",
        "events/s",
        "txns",
        "ev/txn",
        "−200 p50",
        "−200 p99",
        "−200 max",
        "<0",
        "−start50",
        "−start99",
        "−startmx",
        "miss",
        "dup"
    );
    let mut figures = Vec::new();
    for target in targets {
        let after_200: Vec<f64> = target.samples.iter().map(|s| s.after_200).collect();
        let after_start: Vec<f64> = target.samples.iter().map(|s| s.after_start).collect();
        let events_in_txns: usize = bench.receiver.with_log(|log| {
            target
                .txns
                .iter()
                .filter_map(|i| log.txns.get(*i).map(|t| t.events))
                .sum()
        });
        println!(
            "  {:<11} {:>6} {:>4} {:>9.1} {:>5} {:>6.1} {:>9.2} {:>9.2} {:>9.2} {:>5} {:>9.2} {:>9.2} {:>9.2} {:>5} {:>4}",
            target.name,
            target.sent,
            target.errors,
            target.sent as f64 / target.elapsed.as_secs_f64(),
            target.txns.len(),
            events_in_txns as f64 / target.txns.len().max(1) as f64,
            quantile(&after_200, 0.5),
            quantile(&after_200, 0.99),
            quantile(&after_200, 1.0),
            after_200.iter().filter(|ms| **ms < 0.0).count(),
            quantile(&after_start, 0.5),
            quantile(&after_start, 0.99),
            quantile(&after_start, 1.0),
            target.missing,
            target.duplicates,
        );
        figures.push([
            quantile(&after_200, 0.5),
            quantile(&after_200, 0.99),
            quantile(&after_start, 0.5),
            quantile(&after_start, 0.99),
            target.sent as f64 / target.elapsed.as_secs_f64(),
        ]);
    }
    if let [synapse, hungryserv] = &figures[..] {
        let [r200_50, r200_99, start_50, start_99, rate] =
            std::array::from_fn::<f64, 5, _>(|i| hungryserv[i] / synapse[i]);
        println!(
            "  ratio hungryserv/synapse: −200 p50 {r200_50:.4}, p99 {r200_99:.4}; −start p50 {start_50:.4}, p99 {start_99:.4}; send rate {rate:.1}"
        );
    }
}

//! `hsbench`: benchmarks that run the same workload directly against Synapse and through
//! hungryserv in one run, on one machine, and print both with their ratio.
//!
//! Every run is bounded twice: by a request count and by a duration, whichever comes first.
//! The load generator shares the machine with what it measures, equally for both targets.

mod batch;
mod client;
mod delay_proxy;
mod delete;
mod delivery;
mod ingest;
mod initial_sync;
mod load;
mod passthrough;
mod receiver;
mod rooms;
mod sliding_sync;
mod stats;
mod sync_latency;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "hungryserv benchmarks: Synapse directly vs through hungryserv, same run")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Pass-through cost: GET /versions and authenticated PUT /send into a Synapse room.
    Passthrough(passthrough::Options),
    /// Bridge ingest: concurrent appservice senders into local rooms vs Synapse rooms.
    Ingest(ingest::Options),
    /// Sync latency: send 200 to a waiting /sync's answer, Synapse room vs local room.
    SyncLatency(sync_latency::Options),
    /// Initial sync: a user in R local rooms vs one in R Synapse rooms, E messages each.
    InitialSync(initial_sync::Options),
    /// Appservice delivery: send → the bridge (hsbench's receiver) has the event, under ingest
    /// load, Synapse rooms vs local rooms; then catch-up after a backlog built while it was down.
    Delivery(delivery::Options),
    /// Batch backfill: B batches of N events into one local room with batch_send (backwards),
    /// vs the same bridge sending one by one into a Synapse room.
    Batch(batch::Options),
    /// Room deletion: a Synapse room and a local room of N messages each deleted with Synapse's
    /// v2 admin API; time until invisible, until gone from the member's sync, until purged.
    Delete(delete::Options),
    /// Simplified sliding sync: a user in R rooms (half local, half Synapse's); the first
    /// window at Synapse (its R/2) vs through hungryserv (all R), and a local send's wake-up.
    SlidingSync(sliding_sync::Options),
    /// Rooms at scale: one user in R local rooms (default 10,000, 100 messages each) vs one in
    /// the Synapse rooms Synapse sets up in bounded time; initial sync, /joined_rooms, sliding
    /// first window, wake-up, hungryserv's RSS and CPU.
    Rooms(rooms::Options),
    /// Load: N clients long-polling /sync through hungryserv in local rooms while B bridges
    /// ingest, for a bounded time; errors, probe wake-ups, resident sets.
    Load(load::Options),
}

/// Where the two targets are and who the benchmark acts as.
#[derive(Args, Clone)]
pub struct Targets {
    /// Synapse's own listener (the direct target).
    #[arg(long, default_value = "http://127.0.0.1:8009")]
    synapse: String,
    /// hungryserv's public listener (the proxied target).
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    hungryserv: String,
    /// An existing user to log in as (register one first).
    #[arg(long)]
    user: String,
    /// That user's password.
    #[arg(long)]
    password: String,
}

/// How hard and how long to push.
#[derive(Args, Clone)]
pub struct Load {
    /// Concurrent clients, each sending its next request when the last one is answered.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Upper bound on requests per measured phase.
    #[arg(long, default_value_t = 50_000)]
    max_requests: u64,
    /// Upper bound on the length of each measured phase, in seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Unmeasured warm-up per target, in seconds.
    #[arg(long, default_value_t = 1.0)]
    warmup_seconds: f64,
    /// The measured time and request bound are split into this many rounds, alternating
    /// between the targets.
    #[arg(long, default_value_t = 4)]
    rounds: u32,
}

impl Load {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }

    fn warmup(&self) -> Duration {
        Duration::from_secs_f64(self.warmup_seconds)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("hsbench: cannot start runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.scenario {
            Scenario::Passthrough(options) => passthrough::run(options).await,
            Scenario::Ingest(options) => ingest::run(options).await,
            Scenario::SyncLatency(options) => sync_latency::run(options).await,
            Scenario::InitialSync(options) => initial_sync::run(options).await,
            Scenario::Delivery(options) => delivery::run(options).await,
            Scenario::Batch(options) => batch::run(options).await,
            Scenario::Delete(options) => delete::run(options).await,
            Scenario::SlidingSync(options) => sliding_sync::run(options).await,
            Scenario::Load(options) => load::run(options).await,
            Scenario::Rooms(options) => rooms::run(options).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("hsbench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

//! The `hungryserv` command line: parse arguments, load the configuration, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hungryserv::{app::AppState, config, server, store, telemetry};

/// mimalloc instead of glibc's malloc: a request allocates and frees many small objects (JSON
/// values, strings, futures) across two worker threads, where glibc's arenas spent about 15 % of
/// the process's CPU under `hsbench ingest`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes from sysexits.h, so service managers can tell a bad config from a crash.
const EX_CONFIG_INVALID: u8 = 64;
const EX_UNAVAILABLE: u8 = 69;
const EX_CANTBIND: u8 = 71;

#[derive(Parser)]
#[command(
    version,
    about = "A Synapse-compatible sidecar homeserver for bridge-only rooms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        /// Path of hungryserv.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration (and the files it names) and exit: 0 if valid, 64 if not.
    CheckConfig {
        /// Path of hungryserv.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { config } => match config::load(&config) {
            Ok(_) => {
                println!("{}: configuration is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(problems) => report(&problems),
        },
        Command::Serve { config } => {
            // Validate everything before touching the network.
            let config = match config::load(&config) {
                Ok(config) => config,
                Err(problems) => return report(&problems),
            };
            let _log_guard = telemetry::init(&config.log);
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => {
                    tracing::error!(error = %err, "cannot start the async runtime");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(run(config))
        }
    }
}

fn report(problems: &config::Problems) -> ExitCode {
    eprintln!("invalid configuration ({} problems):", problems.lines.len());
    for line in &problems.lines {
        eprintln!("  - {line}");
    }
    ExitCode::from(EX_CONFIG_INVALID)
}

async fn run(config: config::Config) -> ExitCode {
    let db = match store::connect(&config.database, config.server_name.as_str()).await {
        Ok(db) => db,
        Err(err) => {
            tracing::error!(error = %err, "cannot open the database");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(address = %config.listen, error = %err, "cannot listen");
            return ExitCode::from(EX_CANTBIND);
        }
    };
    tracing::info!(
        address = %config.listen,
        server_name = %config.server_name,
        synapse = %config.synapse.base,
        "hungryserv listening"
    );
    let start = match store::current_positions(&db).await {
        Ok(position) => position,
        Err(err) => {
            tracing::error!(error = %err, "cannot read the stream positions");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    };
    let grace_period = config.shutdown.grace_period;
    let (state, background) = AppState::new(config, db, start);
    // Deleted rooms must be refused from the first request on.
    match state.deletions.resume().await {
        Ok(0) => {}
        Ok(purges) => tracing::info!(purges, "resuming interrupted room purges"),
        Err(err) => {
            tracing::error!(error = %err, "cannot load deleted rooms");
            return ExitCode::from(EX_UNAVAILABLE);
        }
    }
    // Bridges registered at run time (appservice::umbrella) are recognised from the first
    // request on, and their pushers resume.
    if let Err(err) = state.bridges.load().await {
        tracing::error!(error = %err, "cannot load the dynamic appservices");
        return ExitCode::from(EX_UNAVAILABLE);
    }
    background
        .tasks
        .spawn("SIGHUP reloader", reload_on_sighup(state.clone()));
    let served = server::serve(state, listener, shutdown_signal()).await;
    // The server has drained its connections. Stop the background tasks (they hold clones of
    // the state, and so handles of the writer), then let the writer finish its queue.
    let report = background.tasks.shutdown(grace_period).await;
    if report.aborted.is_empty() {
        tracing::info!(stopped = report.stopped, "background tasks stopped");
    } else {
        tracing::error!(stopped = report.stopped, aborted = ?report.aborted, "background tasks aborted after the grace period");
    }
    match tokio::time::timeout(std::time::Duration::from_secs(10), background.writer).await {
        Ok(Ok(())) => tracing::info!("room writer finished"),
        Ok(Err(err)) => tracing::error!(error = %err, "the room writer failed"),
        Err(_) => tracing::error!("the room writer did not finish within 10 s"),
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "server failed");
            ExitCode::FAILURE
        }
    }
}

/// Reloads routing.toml on every SIGHUP (a bad file is logged with its problems and the
/// routing in force stays).
async fn reload_on_sighup(state: AppState) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler; reload routing through the admin API");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading routing");
        // Problems are logged by the reload itself.
        let _ = state.reload_routing();
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

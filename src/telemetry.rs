//! Log setup. Requests are logged by `server` inside one span each; nothing logs headers or
//! query strings, so access tokens (header or `access_token` parameter) never reach the log.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Keeps the background log writer alive; dropping it flushes what is still queued.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured filter.
///
/// Lines are handed to a writer thread through a bounded queue, so a request never waits
/// for a write to stdout; if the queue is full (the output cannot keep up), lines are dropped
/// rather than slowing requests down.
pub fn init(config: &LogConfig) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stdout());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal; log files and journald get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // try_init: a second call (tests) keeps the first subscriber instead of panicking.
    let _ = match config.format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    guard
}

//! Log setup. Requests are logged by `server` inside one span each; nothing logs headers or
//! query strings, so access tokens (header or `access_token` parameter) never reach the log.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Bytes of log lines the writer thread gathers before writing them out.
const LOG_BUFFER: usize = 64 * 1024;

/// Keeps the background log writer alive; dropping it flushes what is still queued.
pub type LogGuard = tracing_appender::non_blocking::WorkerGuard;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured filter.
///
/// Lines are handed to a writer thread through a bounded queue, so a request never waits
/// for a write to stdout; if the queue is full (the output cannot keep up), lines are dropped
/// rather than slowing requests down. The thread writes through a buffer that it flushes
/// whenever the queue runs empty (`tracing_appender`'s worker does), so under load many lines
/// go out in one write instead of a write each (each request logs a line: this was 6 % of
/// the process's CPU under `hsbench ingest`), and a lone line still goes out at once.
pub fn init(config: &LogConfig) -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::BufWriter::with_capacity(
        LOG_BUFFER,
        std::io::stdout(),
    ));
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

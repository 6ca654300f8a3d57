//! Log setup. Requests are logged by `server` inside one span each; nothing logs headers or
//! query strings, so access tokens (header or `access_token` parameter) never reach the log.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::{LogConfig, LogFormat};

/// How long the writer thread gathers lines after the first one before writing them out.
const GATHER: Duration = Duration::from_millis(20);
/// Bytes of lines waiting to be written beyond which new lines are dropped (the output does
/// not keep up); the drop is reported in the log once writing resumes.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides the configured filter.
///
/// Each request logs a line, so the way lines reach stdout is on the hot path. A request
/// appends its line to a shared buffer ([`LogBuffer`]) and never waits for a write; a writer
/// thread takes the whole buffer every [`GATHER`] while lines come in and writes it with one
/// call. (Handing each line to a writer thread through a queue, as `tracing_appender` does,
/// cost a thread wake-up per line: 10-12 % of the process's CPU under `hsbench ingest`.)
pub fn init(config: &LogConfig) -> LogGuard {
    let (writer, guard) = LogBuffer::start(std::io::stdout());
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

/// Log lines waiting for the writer thread, shared by every thread that logs.
#[derive(Clone)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Signalled when the first line arrives in an empty buffer, and at shutdown.
    arrived: Condvar,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// Lines dropped since the last write because [`MAX_PENDING`] was reached.
    dropped: u64,
    closed: bool,
}

/// Keeps the log writer thread alive; dropping it writes out what is still pending and waits
/// for the thread to finish.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogBuffer {
    /// Starts the writer thread, which writes to `sink`.
    pub fn start(sink: impl Write + Send + 'static) -> (LogBuffer, LogGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            arrived: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("log-writer".into())
                .spawn(move || write_out(&shared, sink))
                .ok()
        };
        (
            LogBuffer {
                shared: shared.clone(),
            },
            LogGuard { shared, thread },
        )
    }
}

/// A poisoned lock only means a thread panicked while appending bytes: the buffer is still
/// a buffer, and logging must go on.
fn lock(shared: &Shared) -> MutexGuard<'_, Pending> {
    shared
        .pending
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread: waits for a line, gathers for [`GATHER`], then writes all pending
/// lines at once; on shutdown, writes what is left and ends.
fn write_out(shared: &Shared, mut sink: impl Write) {
    let mut spare = Vec::new();
    loop {
        let mut pending = lock(shared);
        while pending.bytes.is_empty() && pending.dropped == 0 && !pending.closed {
            pending = shared
                .arrived
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if !pending.closed {
            drop(pending);
            std::thread::sleep(GATHER);
            pending = lock(shared);
        }
        let closed = pending.closed;
        let dropped = std::mem::take(&mut pending.dropped);
        std::mem::swap(&mut pending.bytes, &mut spare);
        drop(pending);
        // A failed write cannot be logged anywhere; the lines are lost, as they would be with
        // any logger whose output is gone.
        let _ = sink.write_all(&spare);
        if dropped > 0 {
            let _ = writeln!(
                sink,
                "hungryserv: {dropped} log lines dropped: the log output did not keep up"
            );
        }
        let _ = sink.flush();
        spare.clear();
        if closed {
            return;
        }
    }
}

impl Write for LogBuffer {
    /// Appends one formatted line (the fmt layer writes each line with one call).
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut pending = lock(&self.shared);
        if pending.bytes.len() + line.len() > MAX_PENDING {
            pending.dropped += 1;
        } else {
            let first = pending.bytes.is_empty();
            pending.bytes.extend_from_slice(line);
            if first {
                self.shared.arrived.notify_one();
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.shared.arrived.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read, counting the writes.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
    }

    impl Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.bytes.lock().unwrap().extend_from_slice(data);
            *self.writes.lock().unwrap() += 1;
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    /// A buffer without its thread: the test runs the writer loop itself, after closing.
    fn unstarted() -> (LogBuffer, Arc<Shared>) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            arrived: Condvar::new(),
        });
        (
            LogBuffer {
                shared: shared.clone(),
            },
            shared,
        )
    }

    #[test]
    fn pending_lines_go_out_in_order_in_one_write() {
        let (buffer, shared) = unstarted();
        let mut writer = buffer.make_writer();
        for n in 0..1000 {
            writer.write_all(format!("line {n}\n").as_bytes()).unwrap();
        }
        lock(&shared).closed = true;
        let sink = Sink::default();
        write_out(&shared, sink.clone());
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(sink.text(), expected);
        assert_eq!(*sink.writes.lock().unwrap(), 1);
    }

    #[test]
    fn shutdown_writes_what_is_pending() {
        let sink = Sink::default();
        let (buffer, guard) = LogBuffer::start(sink.clone());
        buffer.make_writer().write_all(b"last words\n").unwrap();
        drop(guard);
        assert_eq!(sink.text(), "last words\n");
    }

    #[test]
    fn a_lone_line_goes_out_without_waiting_for_more() {
        let sink = Sink::default();
        let (buffer, _guard) = LogBuffer::start(sink.clone());
        buffer.make_writer().write_all(b"alone\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while sink.text().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the line was not written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(sink.text(), "alone\n");
    }

    #[test]
    fn lines_beyond_the_limit_are_dropped_and_the_drop_reported() {
        let (buffer, shared) = unstarted();
        let mut writer = buffer.make_writer();
        let line = [b'x'; 1024];
        for _ in 0..MAX_PENDING / 1024 + 10 {
            writer.write_all(&line).unwrap();
        }
        lock(&shared).closed = true;
        let sink = Sink::default();
        write_out(&shared, sink.clone());
        let text = sink.text();
        assert_eq!(
            text.strip_prefix(&"x".repeat(MAX_PENDING)),
            Some("hungryserv: 10 log lines dropped: the log output did not keep up\n")
        );
    }
}

//! Request metrics for `GET /_hungryserv/metrics`: requests answered, by route class,
//! endpoint (the path template, as in the request log line; forwarded requests are one
//! endpoint, `forwarded`, so Synapse's unbounded paths never become labels) and status, with a
//! latency histogram (time to response headers); Synapse's latency and errors as seen by the
//! forwarder; events persisted; syncs waiting; the room writer's transactions.
//!
//! May import: nothing of the crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
struct Series {
    /// Requests per bucket (not cumulative; made cumulative when rendered).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum_seconds: f64,
}

/// Most distinct `(route, endpoint, status)` series; later new ones count as endpoint `other`.
const MAX_SERIES: usize = 1_000;

impl Series {
    fn add(&mut self, latency: Duration) {
        let seconds = latency.as_secs_f64();
        self.count += 1;
        self.sum_seconds += seconds;
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound)
            && let Some(slot) = self.buckets.get_mut(bucket)
        {
            *slot += 1;
        }
    }
}

/// Counters shared by every request. The lock is held for a few additions per request.
#[derive(Default)]
pub struct RequestMetrics {
    /// `(route class, endpoint, status) → series`.
    series: Mutex<BTreeMap<(&'static str, String, u16), Series>>,
    /// Forwarded requests by outcome (`ok`: Synapse answered, whatever the status; `error`:
    /// unreachable or timed out) → time to Synapse's response headers.
    upstream: Mutex<BTreeMap<&'static str, Series>>,
    /// Syncs in progress now (long-polls waiting for news, mostly).
    pub sync_waiters: AtomicI64,
}

/// Counts a waiting sync while it lives.
pub struct Waiting<'a>(&'a AtomicI64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl RequestMetrics {
    /// Records one answered request.
    pub fn observe(&self, route: &'static str, endpoint: &str, status: u16, latency: Duration) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let endpoint = if route == "forward" {
            "forwarded"
        } else {
            endpoint
        };
        let mut key = (route, endpoint.to_owned(), status);
        if !series.contains_key(&key) && series.len() >= MAX_SERIES {
            key.1 = "other".into();
        }
        series.entry(key).or_default().add(latency);
    }

    /// Records one forwarded request's exchange with Synapse.
    pub fn upstream(&self, answered: bool, latency: Duration) {
        if let Ok(mut upstream) = self.upstream.lock() {
            let outcome = if answered { "ok" } else { "error" };
            upstream.entry(outcome).or_default().add(latency);
        }
    }

    /// Marks a sync as waiting until the returned guard is dropped.
    pub fn sync_waiting(&self) -> Waiting<'_> {
        self.sync_waiters.fetch_add(1, Ordering::Relaxed);
        Waiting(&self.sync_waiters)
    }

    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hungryserv_requests_total Requests answered, by route class and status."
        );
        let _ = writeln!(out, "# TYPE hungryserv_requests_total counter");
        let Ok(series) = self.series.lock() else {
            return out;
        };
        for ((route, endpoint, status), s) in series.iter() {
            let _ = writeln!(
                out,
                "hungryserv_requests_total{{route=\"{route}\",endpoint=\"{}\",status=\"{status}\"}} {}",
                escape(endpoint),
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP hungryserv_request_duration_seconds Time to response headers, by route class and status."
        );
        let _ = writeln!(out, "# TYPE hungryserv_request_duration_seconds histogram");
        for ((route, endpoint, status), s) in series.iter() {
            let labels = format!(
                "route=\"{route}\",endpoint=\"{}\",status=\"{status}\"",
                escape(endpoint)
            );
            write_histogram(&mut out, "hungryserv_request_duration_seconds", &labels, s);
        }
        drop(series);
        self.render_upstream(&mut out);
        let _ = writeln!(
            out,
            "# HELP hungryserv_sync_waiters Syncs in progress (long-polls waiting for news, mostly).\n# TYPE hungryserv_sync_waiters gauge\nhungryserv_sync_waiters {}",
            self.sync_waiters.load(Ordering::Relaxed)
        );
        out
    }

    fn render_upstream(&self, out: &mut String) {
        let Ok(upstream) = self.upstream.lock() else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP hungryserv_upstream_duration_seconds Forwarded requests: time to Synapse's response headers, by outcome (error: unreachable or timed out).\n# TYPE hungryserv_upstream_duration_seconds histogram"
        );
        for (outcome, s) in upstream.iter() {
            let labels = format!("outcome=\"{outcome}\"");
            write_histogram(out, "hungryserv_upstream_duration_seconds", &labels, s);
        }
    }
}

/// The room writer's transactions by path (src/rooms/writer.rs). Plain messages into rooms the
/// writer has written recently should nearly all take the fast path; a growing `declined`
/// means something else writes to the same database (another hungryserv process) or clients
/// retry used transaction IDs, and ingest then pays the ordinary path's four round trips.
#[derive(Default, Debug)]
pub struct WriterCounters {
    /// Transactions committed on the ordinary path: room creation, state, redactions, batch
    /// sends, and whatever the fast path was not given or declined.
    pub ordinary: AtomicU64,
    /// Batches committed on the fast path (`writer_append`, one statement).
    pub fast: AtomicU64,
    /// Fast-path batches that declined (nothing written; they then went the ordinary path).
    pub declined: AtomicU64,
}

impl WriterCounters {
    /// Prometheus text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP hungryserv_writer_transactions_total Transactions the room writer committed, by path.\n# TYPE hungryserv_writer_transactions_total counter"
        );
        for (path, n) in [("ordinary", &self.ordinary), ("fast", &self.fast)] {
            let _ = writeln!(
                out,
                "hungryserv_writer_transactions_total{{path=\"{path}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP hungryserv_writer_fast_declined_total Fast-path batches that found the database not as the writer believed and went the ordinary path.\n# TYPE hungryserv_writer_fast_declined_total counter\nhungryserv_writer_fast_declined_total {}",
            self.declined.load(Ordering::Relaxed)
        );
        out
    }
}

/// One histogram's lines.
fn write_histogram(out: &mut String, name: &str, labels: &str, s: &Series) {
    let mut cumulative = 0;
    for (bound, n) in BUCKETS.iter().zip(s.buckets.iter()) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", s.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", s.sum_seconds);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", s.count);
}

/// A label value with `\` and `"` escaped, as the text format wants.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let metrics = RequestMetrics::default();
        metrics.observe("local", "/x", 200, Duration::from_micros(800));
        metrics.observe("local", "/x", 200, Duration::from_millis(30));
        metrics.observe("forward", "/y/{roomId}", 502, Duration::from_secs(20));
        metrics.upstream(false, Duration::from_secs(2));
        let waiting = metrics.sync_waiting();
        let text = metrics.render();
        assert!(text.contains(
            "hungryserv_requests_total{route=\"local\",endpoint=\"/x\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"local\",endpoint=\"/x\",status=\"200\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"local\",endpoint=\"/x\",status=\"200\",le=\"0.05\"} 2"
        ));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"forward\",endpoint=\"forwarded\",status=\"502\",le=\"10\"} 0"
        ));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"forward\",endpoint=\"forwarded\",status=\"502\",le=\"+Inf\"} 1"
        ));
        assert!(text.contains(
            "hungryserv_upstream_duration_seconds_bucket{outcome=\"error\",le=\"2.5\"} 1"
        ));
        assert!(text.contains("hungryserv_sync_waiters 1"));
        drop(waiting);
        assert!(metrics.render().contains("hungryserv_sync_waiters 0"));
    }

    #[test]
    fn endpoints_are_bounded() {
        let metrics = RequestMetrics::default();
        for n in 0..MAX_SERIES + 5 {
            metrics.observe("local", &format!("/e{n}"), 200, Duration::from_millis(1));
        }
        let text = metrics.render();
        assert!(text.contains(
            "hungryserv_requests_total{route=\"local\",endpoint=\"other\",status=\"200\"} 5"
        ));
    }

    #[test]
    fn writer_counters_render_by_path() {
        let counters = WriterCounters::default();
        counters.ordinary.fetch_add(2, Ordering::Relaxed);
        counters.fast.fetch_add(5, Ordering::Relaxed);
        counters.declined.fetch_add(1, Ordering::Relaxed);
        let text = counters.render();
        for line in [
            "hungryserv_writer_transactions_total{path=\"ordinary\"} 2",
            "hungryserv_writer_transactions_total{path=\"fast\"} 5",
            "hungryserv_writer_fast_declined_total 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}

//! Request metrics for `GET /_hungryserv/metrics`: requests answered, by route class and
//! status, with a latency histogram (time to response headers, as the request log line).
//!
//! May import: nothing of the crate.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
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

/// Counters shared by every request. The lock is held for a few additions per request.
#[derive(Default)]
pub struct RequestMetrics {
    /// `(route class, status) → series`.
    series: Mutex<BTreeMap<(&'static str, u16), Series>>,
}

impl RequestMetrics {
    /// Records one answered request.
    pub fn observe(&self, route: &'static str, status: u16, latency: Duration) {
        let seconds = latency.as_secs_f64();
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let entry = series.entry((route, status)).or_default();
        entry.count += 1;
        entry.sum_seconds += seconds;
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound)
            && let Some(slot) = entry.buckets.get_mut(bucket)
        {
            *slot += 1;
        }
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
        for ((route, status), s) in series.iter() {
            let _ = writeln!(
                out,
                "hungryserv_requests_total{{route=\"{route}\",status=\"{status}\"}} {}",
                s.count
            );
        }
        let _ = writeln!(
            out,
            "# HELP hungryserv_request_duration_seconds Time to response headers, by route class and status."
        );
        let _ = writeln!(out, "# TYPE hungryserv_request_duration_seconds histogram");
        for ((route, status), s) in series.iter() {
            let labels = format!("route=\"{route}\",status=\"{status}\"");
            let mut cumulative = 0;
            for (bound, n) in BUCKETS.iter().zip(s.buckets.iter()) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "hungryserv_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "hungryserv_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                s.count
            );
            let _ = writeln!(
                out,
                "hungryserv_request_duration_seconds_sum{{{labels}}} {}",
                s.sum_seconds
            );
            let _ = writeln!(
                out,
                "hungryserv_request_duration_seconds_count{{{labels}}} {}",
                s.count
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let metrics = RequestMetrics::default();
        metrics.observe("local", 200, Duration::from_micros(800));
        metrics.observe("local", 200, Duration::from_millis(30));
        metrics.observe("forward", 502, Duration::from_secs(20));
        let text = metrics.render();
        assert!(text.contains("hungryserv_requests_total{route=\"local\",status=\"200\"} 2"));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"local\",status=\"200\",le=\"0.001\"} 1"
        ));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"local\",status=\"200\",le=\"0.05\"} 2"
        ));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"forward\",status=\"502\",le=\"10\"} 0"
        ));
        assert!(text.contains(
            "hungryserv_request_duration_seconds_bucket{route=\"forward\",status=\"502\",le=\"+Inf\"} 1"
        ));
    }
}

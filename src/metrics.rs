//! Everything `GET /_hungryserv/metrics` shows, named and described in one place, encoded
//! by `prometheus-client` in the Prometheus text format (0.0.4), as before the crate came in.
//!
//! Two kinds of values:
//! - kept here, as requests are answered ([`RequestMetrics`]): requests by route class,
//!   endpoint (the path template, as in the request log line; forwarded requests are one
//!   endpoint, `forwarded`, so Synapse's unbounded paths never become labels) and status,
//!   with a latency histogram (time to response headers); Synapse's latency and errors as
//!   seen by the forwarder; syncs waiting;
//! - read from their owners when scraped ([`Sample`]): Synapse's state, identities served
//!   while Synapse could not answer, events persisted, the database pool, the room writer's
//!   transactions ([`WriterCounters`]), room deletions, appservice delivery, which run-once
//!   tasks this instance holds (`hungryserv_cluster_task_held`). Their owners
//!   keep plain atomics and know nothing of this crate or of Prometheus.
//!
//! The names operators see are those of the hand-written text this replaced. The crate
//! appends `_total` to counters itself, so counters are registered without it; it skips a
//! labelled family until it has a series, where the old text printed its `# HELP` alone.
//!
//! May import: nothing of the crate.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Histogram bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Most distinct `(route, endpoint, status)` series; later new ones count as endpoint `other`.
const MAX_SERIES: usize = 1_000;

/// The labels of a request series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route class: `local`, `forward`, `merge`, `admin`, ….
    route: &'static str,
    /// The path template (`forwarded` for every forwarded request, `other` past the bound).
    endpoint: String,
    /// The answer's HTTP status.
    status: u16,
}

/// The label of a forwarded request's exchange with Synapse.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    /// `ok`: Synapse answered, whatever the status; `error`: unreachable or timed out.
    outcome: &'static str,
}

/// A family of latency histograms with [`BUCKETS`].
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// Counters shared by every request. Recording takes the families' read locks and one
/// histogram's lock; a new series takes a write lock once.
#[derive(Debug)]
pub struct RequestMetrics {
    /// Requests answered, by route class, endpoint and status.
    requests: Family<RequestLabels, Counter>,
    /// Time to response headers, by the same labels.
    durations: Histograms<RequestLabels>,
    /// Forwarded requests: time to Synapse's response headers, by outcome.
    upstream: Histograms<OutcomeLabels>,
    /// Syncs in progress now (long-polls waiting for news, mostly).
    sync_waiters: Gauge,
    /// Request series started (at least; see [`RequestMetrics::observe`]).
    series: AtomicUsize,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        RequestMetrics {
            requests: Family::default(),
            durations: Family::new_with_constructor(latency_histogram),
            upstream: Family::new_with_constructor(latency_histogram),
            sync_waiters: Gauge::default(),
            series: AtomicUsize::new(0),
        }
    }
}

/// Counts a waiting sync while it lives.
pub struct Waiting<'a>(&'a Gauge);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RequestMetrics {
    /// Records one answered request.
    pub fn observe(&self, route: &'static str, endpoint: &str, status: u16, latency: Duration) {
        let endpoint = if route == "forward" {
            "forwarded"
        } else {
            endpoint
        };
        let mut labels = RequestLabels {
            route,
            endpoint: endpoint.to_owned(),
            status,
        };
        // Two requests adding the same series at once both count it: the bound is a little
        // early then, never exceeded.
        let known = self.requests.get(&labels).is_some();
        if !known && self.series.fetch_add(1, Ordering::Relaxed) >= MAX_SERIES {
            labels.endpoint = "other".into();
        }
        self.requests.get_or_create(&labels).inc();
        self.durations
            .get_or_create(&labels)
            .observe(latency.as_secs_f64());
    }

    /// Records one forwarded request's exchange with Synapse.
    pub fn upstream(&self, answered: bool, latency: Duration) {
        let outcome = if answered { "ok" } else { "error" };
        self.upstream
            .get_or_create(&OutcomeLabels { outcome })
            .observe(latency.as_secs_f64());
    }

    /// Marks a sync as waiting until the returned guard is dropped.
    pub fn sync_waiting(&self) -> Waiting<'_> {
        self.sync_waiters.inc();
        Waiting(&self.sync_waiters)
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

/// What the rest of the process shows when scraped, read from its owners.
#[derive(Debug, Default)]
pub struct Sample {
    /// Whether Synapse answers (false: degraded mode).
    pub synapse_up: bool,
    /// How long Synapse has been in its current state.
    pub synapse_state: Duration,
    /// Times Synapse went from answering to not answering.
    pub synapse_outages: u64,
    /// Requests let in on an identity Synapse confirmed before, while it could not answer.
    pub confirmed_identities_served: u64,
    /// Events of local rooms committed by this process.
    pub events_persisted: u64,
    /// Database pool connections idle, in use, and the pool's limit.
    pub pool_idle: u64,
    pub pool_in_use: u64,
    pub pool_max: u64,
    /// The room writer's transactions (counts, read when scraped).
    pub writer_ordinary: u64,
    pub writer_fast: u64,
    pub writer_declined: u64,
    /// Room deletions queued or being purged.
    pub deletions_in_progress: i64,
    /// Deleted or blocked rooms requests are refused for.
    pub deleted_rooms: u64,
    /// One entry per appservice pusher.
    pub appservices: Vec<AppserviceSample>,
    /// Each run-once task, and whether this instance holds its lock.
    pub tasks_held: Vec<(String, bool)>,
}

impl Sample {
    /// Reads the writer's counters into the sample.
    pub fn with_writer(mut self, counters: &WriterCounters) -> Self {
        self.writer_ordinary = counters.ordinary.load(Ordering::Relaxed);
        self.writer_fast = counters.fast.load(Ordering::Relaxed);
        self.writer_declined = counters.declined.load(Ordering::Relaxed);
        self
    }
}

/// One appservice's delivery.
#[derive(Debug, Default)]
pub struct AppserviceSample {
    /// The registration's `id`.
    pub id: String,
    /// Transactions the appservice acknowledged.
    pub transactions_sent: u64,
    /// Transaction attempts that failed (each retry counts).
    pub transactions_failed: u64,
    /// Events in acknowledged transactions.
    pub events_sent: u64,
    /// Committed stream positions not yet delivered or skipped.
    pub queue_positions: i64,
    /// Events in the transaction being delivered.
    pub in_flight_events: u64,
    /// Age of the transaction being delivered (zero when none).
    pub oldest_undelivered: Duration,
}

/// The whole exposition: the request metrics, then the sample.
pub fn render(requests: &RequestMetrics, sample: Sample) -> String {
    let mut registry = Registry::default();
    // The registry appends a full stop to each help text.
    registry.register(
        "hungryserv_requests",
        "Requests answered, by route class and status",
        requests.requests.clone(),
    );
    registry.register(
        "hungryserv_request_duration_seconds",
        "Time to response headers, by route class and status",
        requests.durations.clone(),
    );
    registry.register(
        "hungryserv_upstream_duration_seconds",
        "Forwarded requests: time to Synapse's response headers, by outcome (error: unreachable or timed out)",
        requests.upstream.clone(),
    );
    registry.register(
        "hungryserv_sync_waiters",
        "Syncs in progress (long-polls waiting for news, mostly)",
        requests.sync_waiters.clone(),
    );
    registry.register_collector(Box::new(sample));
    let mut out = String::new();
    // Writing into a String cannot fail; a metric that failed to encode would end the text
    // early, which a scraper notices.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

impl Collector for Sample {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let mut e = Families(&mut encoder);
        e.gauge(
            "hungryserv_synapse_up",
            "Whether Synapse answers (1) or hungryserv is in degraded mode (0).",
            i64::from(self.synapse_up),
        )?;
        e.gauge(
            "hungryserv_synapse_state_seconds",
            "How long Synapse has been in its current state (up or down).",
            self.synapse_state.as_secs_f64(),
        )?;
        e.counter(
            "hungryserv_synapse_outages",
            "Times Synapse went from answering to not answering.",
            self.synapse_outages,
        )?;
        e.counter(
            "hungryserv_auth_confirmed_identities_served",
            "Requests authenticated from an identity Synapse confirmed before, while Synapse could not answer.",
            self.confirmed_identities_served,
        )?;
        e.counter(
            "hungryserv_events_persisted",
            "Events of local rooms committed by this process.",
            self.events_persisted,
        )?;
        e.gauges(
            "hungryserv_db_pool_connections",
            "Database pool connections, by state.",
            "state",
            [("idle", self.pool_idle), ("in_use", self.pool_in_use)],
        )?;
        e.gauge(
            "hungryserv_db_pool_max_connections",
            "The pool's size limit.",
            self.pool_max,
        )?;
        e.counters(
            "hungryserv_writer_transactions",
            "Transactions the room writer committed, by path.",
            "path",
            [
                ("ordinary", self.writer_ordinary),
                ("fast", self.writer_fast),
            ],
        )?;
        e.counter(
            "hungryserv_writer_fast_declined",
            "Fast-path batches that found the database not as the writer believed and went the ordinary path.",
            self.writer_declined,
        )?;
        e.gauge(
            "hungryserv_room_deletions_in_progress",
            "Room deletions queued or being purged.",
            self.deletions_in_progress,
        )?;
        e.gauge(
            "hungryserv_deleted_rooms",
            "Deleted or blocked rooms requests are refused for.",
            self.deleted_rooms,
        )?;
        let each = |value: fn(&AppserviceSample) -> u64| {
            self.appservices
                .iter()
                .map(move |a| (a.id.as_str(), value(a)))
        };
        e.counters(
            "hungryserv_appservice_transactions_sent",
            "Transactions the appservice acknowledged.",
            "appservice",
            each(|a| a.transactions_sent),
        )?;
        e.counters(
            "hungryserv_appservice_transactions_failed",
            "Transaction attempts that failed (each retry counts).",
            "appservice",
            each(|a| a.transactions_failed),
        )?;
        e.counters(
            "hungryserv_appservice_events_sent",
            "Events in acknowledged transactions.",
            "appservice",
            each(|a| a.events_sent),
        )?;
        e.gauges(
            "hungryserv_appservice_queue_positions",
            "Committed stream positions not yet delivered or skipped (queue depth, in events of all rooms).",
            "appservice",
            self.appservices
                .iter()
                .map(|a| (a.id.as_str(), a.queue_positions.max(0))),
        )?;
        e.gauges(
            "hungryserv_appservice_in_flight_events",
            "Events in the transaction being delivered.",
            "appservice",
            each(|a| a.in_flight_events),
        )?;
        e.gauges(
            "hungryserv_appservice_oldest_undelivered_seconds",
            "Age of the transaction being delivered (0 when none).",
            "appservice",
            self.appservices
                .iter()
                .map(|a| (a.id.as_str(), a.oldest_undelivered.as_secs_f64())),
        )?;
        e.gauges(
            "hungryserv_cluster_task_held",
            "Whether this instance holds the lock of a task that runs once.",
            "task",
            self.tasks_held
                .iter()
                .map(|(task, held)| (task.as_str(), i64::from(*held))),
        )
    }
}

/// Writes scraped values as families of constant counters and gauges.
struct Families<'a, 'e>(&'a mut DescriptorEncoder<'e>);

impl Families<'_, '_> {
    /// One counter without labels; `name` without `_total` (the encoder appends it).
    fn counter(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        let metric = ConstCounter::new(value);
        let encoder = self
            .0
            .encode_descriptor(name, help, None, metric.metric_type())?;
        metric.encode(encoder)
    }

    fn gauge<N>(&mut self, name: &str, help: &str, value: N) -> fmt::Result
    where
        ConstGauge<N>: EncodeMetric,
    {
        let metric = ConstGauge::new(value);
        let encoder = self
            .0
            .encode_descriptor(name, help, None, metric.metric_type())?;
        metric.encode(encoder)
    }

    /// A counter per label value.
    fn counters<'v>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        series: impl IntoIterator<Item = (&'v str, u64)>,
    ) -> fmt::Result {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (value, n) in series {
            ConstCounter::new(n).encode(family.encode_family(&[(label, value)])?)?;
        }
        Ok(())
    }

    /// A gauge per label value.
    fn gauges<'v, N>(
        &mut self,
        name: &str,
        help: &str,
        label: &'static str,
        series: impl IntoIterator<Item = (&'v str, N)>,
    ) -> fmt::Result
    where
        ConstGauge<N>: EncodeMetric,
    {
        let mut family = self
            .0
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (value, n) in series {
            ConstGauge::new(n).encode(family.encode_family(&[(label, value)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    /// Asserts each line is in the text, whole.
    fn assert_has(text: &str, expected: &[&str]) {
        let lines = lines(text);
        for line in expected {
            assert!(lines.contains(line), "{line} missing in:\n{text}");
        }
    }

    #[test]
    fn histogram_is_cumulative() {
        let metrics = RequestMetrics::default();
        metrics.observe("local", "/x", 200, Duration::from_micros(800));
        metrics.observe("local", "/x", 200, Duration::from_millis(30));
        metrics.observe("forward", "/y/{roomId}", 502, Duration::from_secs(20));
        metrics.upstream(false, Duration::from_secs(2));
        let waiting = metrics.sync_waiting();
        let text = render(&metrics, Sample::default());
        assert_has(
            &text,
            &[
                "# TYPE hungryserv_requests_total counter",
                "hungryserv_requests_total{route=\"local\",endpoint=\"/x\",status=\"200\"} 2",
                "# TYPE hungryserv_request_duration_seconds histogram",
                "hungryserv_request_duration_seconds_bucket{route=\"local\",endpoint=\"/x\",status=\"200\",le=\"0.001\"} 1",
                "hungryserv_request_duration_seconds_bucket{route=\"local\",endpoint=\"/x\",status=\"200\",le=\"0.05\"} 2",
                "hungryserv_request_duration_seconds_bucket{route=\"forward\",endpoint=\"forwarded\",status=\"502\",le=\"10\"} 0",
                "hungryserv_request_duration_seconds_bucket{route=\"forward\",endpoint=\"forwarded\",status=\"502\",le=\"+Inf\"} 1",
                "hungryserv_request_duration_seconds_count{route=\"local\",endpoint=\"/x\",status=\"200\"} 2",
                "hungryserv_upstream_duration_seconds_bucket{outcome=\"error\",le=\"2.5\"} 1",
                "hungryserv_sync_waiters 1",
            ],
        );
        drop(waiting);
        assert_has(
            &render(&metrics, Sample::default()),
            &["hungryserv_sync_waiters 0"],
        );
    }

    #[test]
    fn endpoints_are_bounded() {
        let metrics = RequestMetrics::default();
        for n in 0..MAX_SERIES + 5 {
            metrics.observe("local", &format!("/e{n}"), 200, Duration::from_millis(1));
        }
        assert_has(
            &render(&metrics, Sample::default()),
            &["hungryserv_requests_total{route=\"local\",endpoint=\"other\",status=\"200\"} 5"],
        );
    }

    /// The names, types and labels operators had before the crate came in.
    #[test]
    fn sampled_values_keep_their_names() {
        let counters = WriterCounters::default();
        counters.ordinary.fetch_add(2, Ordering::Relaxed);
        counters.fast.fetch_add(5, Ordering::Relaxed);
        counters.declined.fetch_add(1, Ordering::Relaxed);
        let sample = Sample {
            synapse_up: true,
            synapse_state: Duration::from_millis(1500),
            synapse_outages: 3,
            confirmed_identities_served: 4,
            events_persisted: 42,
            pool_idle: 2,
            pool_in_use: 1,
            pool_max: 10,
            deletions_in_progress: 1,
            deleted_rooms: 7,
            appservices: vec![AppserviceSample {
                id: "a\"b".into(),
                transactions_sent: 9,
                queue_positions: -1,
                oldest_undelivered: Duration::from_millis(250),
                ..AppserviceSample::default()
            }],
            ..Sample::default()
        }
        .with_writer(&counters);
        let text = render(&RequestMetrics::default(), sample);
        assert_has(
            &text,
            &[
                "# TYPE hungryserv_synapse_up gauge",
                "hungryserv_synapse_up 1",
                "hungryserv_synapse_state_seconds 1.5",
                "# TYPE hungryserv_synapse_outages_total counter",
                "hungryserv_synapse_outages_total 3",
                "hungryserv_auth_confirmed_identities_served_total 4",
                "hungryserv_events_persisted_total 42",
                "hungryserv_db_pool_connections{state=\"idle\"} 2",
                "hungryserv_db_pool_connections{state=\"in_use\"} 1",
                "hungryserv_db_pool_max_connections 10",
                "hungryserv_writer_transactions_total{path=\"ordinary\"} 2",
                "hungryserv_writer_transactions_total{path=\"fast\"} 5",
                "hungryserv_writer_fast_declined_total 1",
                "hungryserv_room_deletions_in_progress 1",
                "hungryserv_deleted_rooms 7",
                "hungryserv_appservice_transactions_sent_total{appservice=\"a\\\"b\"} 9",
                "hungryserv_appservice_transactions_failed_total{appservice=\"a\\\"b\"} 0",
                "hungryserv_appservice_queue_positions{appservice=\"a\\\"b\"} 0",
                "hungryserv_appservice_oldest_undelivered_seconds{appservice=\"a\\\"b\"} 0.25",
            ],
        );
        // Every family has its help and type once.
        for family in [
            "hungryserv_synapse_up",
            "hungryserv_appservice_events_sent_total",
        ] {
            for kind in ["# HELP", "# TYPE"] {
                let head = format!("{kind} {family} ");
                assert_eq!(text.matches(&head).count(), 1, "{head}");
            }
        }
    }
}

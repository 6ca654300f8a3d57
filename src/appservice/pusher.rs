//! One appservice's pusher: reads committed events after its cursor, keeps those the
//! appservice is interested in, and pushes them as transactions.
//!
//! Invariants (see migrations/0005_appservice_delivery.sql):
//! * A transaction is stored before it is sent, and only the stored bytes are ever sent: a
//!   retry repeats the same txnId with the same body, also after a restart.
//! * The cursor moves past a transaction's events only in the database transaction that
//!   deletes it after the appservice's 2xx, so every event is delivered at least once and the
//!   only repeats are repeats of a whole transaction under its txnId.
//! * Events go out in stream order, so per-room order holds.
//! * Failures back off exponentially (1 s doubling, capped by `max_retry_interval_s`); a
//!   successful `/appservice/{id}/ping` through hungryserv retries at once. Each appservice
//!   has its own task, so one that fails never delays another.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::Notify;

use super::interest::Interest;
use crate::config::{DeliveryConfig, Registration};
use crate::notify::Notifier;
use crate::rooms::event::{Related, Viewer, to_client};
use crate::rooms::service::now_ms;
use crate::store::{self, StoreError, appservice::PendingTxn};

/// Events read from the store at once while building a transaction.
const SCAN_CHUNK: i64 = 500;
/// Most events examined for one transaction (so a long run of uninteresting events still
/// persists progress now and then).
const SCAN_LIMIT: usize = 20_000;
/// First retry interval.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The cursor is written after skipping this many positions of uninteresting events (it is
/// also written with every acknowledged transaction).
const SKIP_PERSIST_EVERY: i64 = 1_000;

pub type PushClient = Client<HttpConnector, Full<Bytes>>;

/// Counters of one pusher, read by the metrics endpoint.
#[derive(Default)]
pub struct Stats {
    pub transactions_sent: AtomicU64,
    pub transactions_failed: AtomicU64,
    pub events_sent: AtomicU64,
    /// Stream position up to which everything is delivered or skipped.
    pub cursor: AtomicI64,
    /// Events in the transaction in flight (0 when none).
    pub in_flight_events: AtomicU64,
    /// When the transaction in flight was built, in ms since the epoch (0 when none).
    pub in_flight_since_ms: AtomicI64,
}

pub struct Pusher {
    pub registration: Arc<Registration>,
    pub server_name: String,
    pub db: PgPool,
    pub notifier: Notifier,
    pub http: PushClient,
    pub config: DeliveryConfig,
    pub poke: Arc<Notify>,
    pub stats: Arc<Stats>,
}

/// What a scan of the queue produced.
struct Built {
    events: Vec<Value>,
    /// The last position examined: the cursor may move here once these events are delivered.
    last: i64,
}

impl Pusher {
    /// Runs until the process ends; store errors are retried after a pause.
    pub async fn run(self) {
        loop {
            match self.run_once().await {
                Ok(never) => match never {},
                Err(err) => {
                    tracing::warn!(appservice = %self.registration.id, error = %err, "appservice delivery paused after a store error");
                    tokio::time::sleep(FIRST_BACKOFF).await;
                }
            }
        }
    }

    async fn run_once(&self) -> Result<std::convert::Infallible, StoreError> {
        let id = self.registration.id.as_str();
        let prefix = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        // Delivery starts with events after the first start with this registration.
        let cursor =
            store::appservice::cursor(&self.db, id, self.notifier.current(), &prefix).await?;
        let mut position = cursor.stream;
        let mut persisted = position;
        let mut next_txn = cursor.next_txn;
        self.stats.cursor.store(position, Ordering::Relaxed);
        let mut interest = Interest::new(self.registration.clone(), &self.server_name);
        let mut wake = self.notifier.subscribe();
        // A transaction left in flight by an earlier run goes first; after that, the only one
        // in flight is the one this loop just stored, kept in memory (no re-read).
        let mut in_flight = store::appservice::pending(&self.db, id).await?;
        loop {
            if let Some(pending) = in_flight.take() {
                self.deliver(&pending).await;
                store::appservice::acknowledge(&self.db, id, &pending.txn_id).await?;
                position = position.max(pending.last_stream);
                persisted = position;
                self.stats.cursor.store(position, Ordering::Relaxed);
                self.stats.in_flight_events.store(0, Ordering::Relaxed);
                self.stats.in_flight_since_ms.store(0, Ordering::Relaxed);
                continue;
            }
            let committed = *wake.borrow_and_update();
            if position >= committed {
                if persisted < position {
                    store::appservice::skip_to(&self.db, id, position).await?;
                    persisted = position;
                }
                tokio::select! {
                    _ = wake.changed() => {}
                    () = self.poke.notified() => {}
                }
                continue;
            }
            let built = self.build(&mut interest, position, committed).await?;
            if built.events.is_empty() {
                position = built.last;
                self.stats.cursor.store(position, Ordering::Relaxed);
                if position - persisted >= SKIP_PERSIST_EVERY {
                    store::appservice::skip_to(&self.db, id, position).await?;
                    persisted = position;
                }
                continue;
            }
            let count = built.events.len();
            let body = json!({
                "events": built.events,
                // MSC2409 ephemeral events (typing, receipts) of local rooms: none yet.
                "ephemeral": [],
                "de.sorunome.msc2409.ephemeral": [],
            });
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let txn_id = format!("hungryserv.{}.{next_txn}", cursor.txn_prefix);
            next_txn += 1;
            let events = i32::try_from(count).unwrap_or(i32::MAX);
            store::appservice::store_txn(&self.db, id, &txn_id, built.last, &body, events).await?;
            in_flight = Some(PendingTxn {
                txn_id,
                last_stream: built.last,
                body,
                events,
                age_s: 0.0,
            });
        }
    }

    /// Collects the next transaction's events from `(after, committed]`.
    async fn build(
        &self,
        interest: &mut Interest,
        after: i64,
        committed: i64,
    ) -> Result<Built, StoreError> {
        let mut conn = self.db.acquire().await?;
        let now = now_ms();
        let viewer = Viewer {
            txn_scope: None,
            now_ms: now,
        };
        let mut built = Built {
            events: Vec::new(),
            last: after,
        };
        let mut bytes = 0usize;
        let mut examined = 0usize;
        'scan: while built.last < committed && examined < SCAN_LIMIT {
            let rows =
                store::events::stream_range(&mut conn, built.last, committed, SCAN_CHUNK).await?;
            if rows.is_empty() {
                built.last = committed;
                break;
            }
            for row in rows {
                examined += 1;
                if !interest.wants(&mut conn, &row.event).await? {
                    built.last = row.event.stream;
                    continue;
                }
                let related = Related {
                    prev: row.prev.clone(),
                    redacted_because: None,
                };
                let value = to_client(&row.event, &related, viewer);
                let size = value.to_string().len();
                let full = built.events.len() >= self.config.max_events
                    || (!built.events.is_empty() && bytes + size > self.config.max_bytes);
                if full {
                    break 'scan;
                }
                bytes += size;
                built.events.push(value);
                built.last = row.event.stream;
            }
        }
        Ok(built)
    }

    /// Sends a stored transaction until the appservice acknowledges it.
    async fn deliver(&self, pending: &PendingTxn) {
        let built_ms = now_ms() - (pending.age_s * 1000.0) as i64;
        self.stats.in_flight_events.store(
            u64::try_from(pending.events).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.stats
            .in_flight_since_ms
            .store(built_ms, Ordering::Relaxed);
        let mut backoff = FIRST_BACKOFF;
        loop {
            let started = Instant::now();
            match self.send(pending).await {
                Ok(()) => {
                    self.stats.transactions_sent.fetch_add(1, Ordering::Relaxed);
                    self.stats.events_sent.fetch_add(
                        u64::try_from(pending.events).unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    tracing::debug!(appservice = %self.registration.id, txn = %pending.txn_id, events = pending.events, ms = started.elapsed().as_millis() as u64, "transaction delivered");
                    return;
                }
                Err(reason) => {
                    self.stats
                        .transactions_failed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(appservice = %self.registration.id, txn = %pending.txn_id, %reason, retry_in_s = backoff.as_secs(), "transaction not delivered");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {
                            backoff = (backoff * 2).min(self.config.max_backoff);
                        }
                        () = self.poke.notified() => backoff = FIRST_BACKOFF,
                    }
                }
            }
        }
    }

    async fn send(&self, pending: &PendingTxn) -> Result<(), String> {
        let Some(url) = self.registration.url.as_deref() else {
            return Err("the registration has no url".into());
        };
        let uri = format!(
            "{}/_matrix/app/v1/transactions/{}",
            url.trim_end_matches('/'),
            crate::upstream::client::encode_segment(&pending.txn_id)
        );
        let request = Request::builder()
            .method(Method::PUT)
            .uri(uri)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.registration.hs_token),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(pending.body.clone())))
            .map_err(|err| format!("bad request: {err}"))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|err| format!("unreachable: {err}"))?;
            let status = response.status();
            // Read the answer to the end so the connection can be reused.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("answered {status}"))
            }
        };
        tokio::time::timeout(self.config.request_timeout, exchange)
            .await
            .map_err(|_| "timed out".to_owned())?
    }
}

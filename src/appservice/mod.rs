//! Appservice delivery: every event of a local room reaches each interested appservice
//! ([`interest`]), in stream order, at least once, through one pusher task per appservice
//! ([`pusher`]) whose progress lives in Postgres.
//!
//! May import: `config`, `store`, `rooms` (event format), `notify`, `upstream` (helpers).

pub mod client;
pub mod interest;
pub mod pusher;
pub mod relay;
pub mod websocket;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::config::{DeliveryConfig, Registration};
use crate::notify::Notifier;
use crate::rooms::service::now_ms;
use crate::rooms::typing::Typing;
use crate::routing::LiveClasses;
use crate::tasks::Tasks;
use pusher::{Pusher, Stats};
use websocket::Slot;

/// The running pushers. Cheap to share.
#[derive(Default)]
pub struct Delivery {
    pushers: BTreeMap<String, Handle>,
    /// The HTTP client of the pushers, also for requests relayed to bridges.
    http: Option<client::PushClient>,
}

struct Handle {
    poke: Arc<Notify>,
    stats: Arc<Stats>,
    socket: Arc<Slot>,
    relay: Option<Relay>,
}

/// An appservice in relay mode.
#[derive(Clone)]
pub struct Relay {
    /// Set after a transaction from Synapse is stored (the pusher is poked too).
    relayed: Arc<AtomicBool>,
    /// The bridge's own address, if it listens (else websocket only).
    pub url: Option<String>,
    /// The token Synapse presents (the registration's `hs_token`).
    pub hs_token: String,
}

impl Delivery {
    /// Starts one pusher per registration: it pushes to the `url` over HTTP or HTTPS, or over
    /// the appservice's websocket while one is connected (a registration without `url` waits
    /// for one). Must be called inside the runtime.
    // The shared handles every pusher needs; a struct of them is the next step.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        registrations: &[Registration],
        server_name: &str,
        config: &DeliveryConfig,
        db: &PgPool,
        notifier: &Notifier,
        typing: &Arc<Typing>,
        classes: &Arc<LiveClasses>,
        tasks: &Tasks,
    ) -> Self {
        let http = match client::build(config) {
            Ok(http) => http,
            Err(err) => {
                tracing::error!(error = %err, "cannot set up TLS for appservice delivery; events of local rooms are not pushed to appservices");
                return Self::default();
            }
        };
        let mut pushers = BTreeMap::new();
        for registration in registrations {
            // In relay mode the registration's url is hungryserv itself; the bridge's own
            // address is in the relay's configuration. Without a url the appservice gets its
            // transactions over the websocket only.
            let relay = config
                .relays
                .iter()
                .find(|relay| relay.appservice == registration.id);
            let url = match relay {
                Some(relay) => relay.url.clone(),
                None => registration.url.clone(),
            };
            if let Some(url) = url.as_deref()
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                tracing::error!(appservice = %registration.id, "only http:// and https:// appservice URLs are supported; events of local rooms are not pushed to it");
                continue;
            }
            let poke = Arc::new(Notify::new());
            let handle = Handle {
                socket: Arc::new(Slot::new(&registration.id, poke.clone())),
                poke,
                stats: Arc::new(Stats::default()),
                relay: relay.map(|relay| Relay {
                    relayed: Arc::new(AtomicBool::new(false)),
                    url: relay.url.clone(),
                    hs_token: registration.hs_token.clone(),
                }),
            };
            let pusher = Pusher {
                registration: Arc::new(registration.clone()),
                server_name: server_name.to_owned(),
                db: db.clone(),
                notifier: notifier.clone(),
                typing: typing.clone(),
                http: http.clone(),
                config: config.clone(),
                poke: handle.poke.clone(),
                stats: handle.stats.clone(),
                socket: handle.socket.clone(),
                url,
                relayed: handle.relay.as_ref().map(|relay| relay.relayed.clone()),
                classes: classes.clone(),
            };
            tasks.spawn("appservice pusher", pusher.run());
            pushers.insert(registration.id.clone(), handle);
        }
        Self {
            pushers,
            http: Some(http),
        }
    }

    /// The appservice's relay, if it is in relay mode.
    pub fn relay(&self, appservice_id: &str) -> Option<&Relay> {
        self.pushers.get(appservice_id)?.relay.as_ref()
    }

    /// The HTTP client for requests to bridges.
    pub fn http(&self) -> Option<&client::PushClient> {
        self.http.as_ref()
    }

    /// A transaction from Synapse was stored for the appservice: deliver it.
    pub fn relayed(&self, appservice_id: &str) {
        if let Some(handle) = self.pushers.get(appservice_id) {
            if let Some(relay) = &handle.relay {
                relay.relayed.store(true, Ordering::Release);
            }
            handle.poke.notify_one();
        }
    }

    /// The appservice's websocket slot (for `fi.mau.as_sync`), if it has a pusher.
    pub fn socket(&self, appservice_id: &str) -> Option<Arc<Slot>> {
        self.pushers
            .get(appservice_id)
            .map(|handle| handle.socket.clone())
    }

    /// Retries the appservice's transaction in flight at once (Synapse does the same after a
    /// successful `/appservice/{id}/ping`).
    pub fn poke(&self, appservice_id: &str) {
        if let Some(handle) = self.pushers.get(appservice_id) {
            handle.poke.notify_one();
        }
    }

    /// Prometheus text for every pusher, given the committed stream position.
    pub fn metrics(&self, committed: i64) -> String {
        let now = now_ms();
        let mut out = String::new();
        let families: [(&str, &str, &str); 6] = [
            (
                "hungryserv_appservice_transactions_sent_total",
                "counter",
                "Transactions the appservice acknowledged.",
            ),
            (
                "hungryserv_appservice_transactions_failed_total",
                "counter",
                "Transaction attempts that failed (each retry counts).",
            ),
            (
                "hungryserv_appservice_events_sent_total",
                "counter",
                "Events in acknowledged transactions.",
            ),
            (
                "hungryserv_appservice_queue_positions",
                "gauge",
                "Committed stream positions not yet delivered or skipped (queue depth, in events of all rooms).",
            ),
            (
                "hungryserv_appservice_in_flight_events",
                "gauge",
                "Events in the transaction being delivered.",
            ),
            (
                "hungryserv_appservice_oldest_undelivered_seconds",
                "gauge",
                "Age of the transaction being delivered (0 when none).",
            ),
        ];
        for (name, kind, help) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (id, handle) in &self.pushers {
                let stats = &handle.stats;
                let value = match name {
                    "hungryserv_appservice_transactions_sent_total" => {
                        stats.transactions_sent.load(Ordering::Relaxed) as f64
                    }
                    "hungryserv_appservice_transactions_failed_total" => {
                        stats.transactions_failed.load(Ordering::Relaxed) as f64
                    }
                    "hungryserv_appservice_events_sent_total" => {
                        stats.events_sent.load(Ordering::Relaxed) as f64
                    }
                    "hungryserv_appservice_queue_positions" => {
                        (committed - stats.cursor.load(Ordering::Relaxed)).max(0) as f64
                    }
                    "hungryserv_appservice_in_flight_events" => {
                        stats.in_flight_events.load(Ordering::Relaxed) as f64
                    }
                    _ => match stats.in_flight_since_ms.load(Ordering::Relaxed) {
                        0 => 0.0,
                        since => (now - since).max(0) as f64 / 1000.0,
                    },
                };
                let _ = writeln!(out, "{name}{{appservice=\"{}\"}} {value}", escape(id));
            }
        }
        out
    }
}

/// Escapes a Prometheus label value.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

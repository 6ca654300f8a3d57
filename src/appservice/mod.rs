//! Appservice delivery: every event of a local room reaches each interested appservice
//! ([`interest`]), in stream order, at least once, through one pusher task per appservice
//! ([`pusher`]) whose progress lives in Postgres. Bridges registered at run time behind the
//! umbrella registration ([`umbrella`]) get their pusher when they are registered and lose it
//! when they are removed; theirs always run in relay mode, carrying their share of Synapse's
//! transactions to the umbrella.
//!
//! Several instances: every instance keeps a handle per appservice (its relay, its websocket
//! slot), but a pusher runs only on the instance holding its lock (`appservice pusher:<id>`,
//! [`crate::cluster::leader`]); its cursor and queue are in Postgres, so the instance that
//! takes over goes on where the last holder stopped. A transaction from Synapse stored by one
//! instance is announced, so the pusher is poked wherever it runs. Not shared: a bridge's
//! `fi.mau.as_sync` websocket is served by the pusher of the instance it connected to, so a
//! websocket-only bridge must reach the instance holding its pusher (pin it in the load
//! balancer, deploy/production/haproxy.cfg).
//!
//! May import: `config`, `store`, `rooms` (event format), `notify`, `upstream` (helpers),
//! `auth` (the token table a bridge registered at run time joins).

pub mod client;
pub mod device_lists;
pub mod interest;
pub mod namespaces;
pub mod pusher;
pub mod relay;
pub mod umbrella;
pub mod websocket;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use sqlx::PgPool;
use tokio::sync::Notify;

use crate::cluster::leader::Leadership;
use crate::cluster::note::Note;
use crate::config::{DeliveryConfig, Registration};
use crate::notify::Notifier;
use crate::rooms::typing::Typing;
use crate::routing::LiveClasses;
use crate::tasks::Tasks;
use crate::upstream::Synapse;
use pusher::{Pusher, Stats};
use websocket::Slot;

/// The running pushers. Cheap to share.
#[derive(Default)]
pub struct Delivery {
    /// One per appservice; bridges registered at run time ([`umbrella`]) come and go.
    pushers: RwLock<BTreeMap<String, Handle>>,
    /// The HTTP client of the pushers, also for requests relayed to bridges.
    http: Option<client::PushClient>,
    /// What a pusher started later needs.
    spawner: Option<Spawner>,
}

/// What every pusher shares, kept to start pushers of bridges registered at run time.
struct Spawner {
    server_name: String,
    config: DeliveryConfig,
    db: PgPool,
    notifier: Notifier,
    typing: Arc<Typing>,
    tasks: Arc<Tasks>,
    classes: Arc<LiveClasses>,
    synapse: Synapse,
    /// Which instance runs which pusher.
    leadership: Arc<Leadership>,
}

struct Handle {
    poke: Arc<Notify>,
    stats: Arc<Stats>,
    socket: Arc<Slot>,
    relay: Option<Relay>,
    /// Ends the pusher (a bridge removed or registered anew).
    stop: Arc<Notify>,
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
    /// for one). The umbrella registration gets none: its bridges have their own. Must be
    /// called inside the runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        registrations: &[Registration],
        server_name: &str,
        config: &DeliveryConfig,
        db: &PgPool,
        notifier: &Notifier,
        typing: &Arc<Typing>,
        classes: &Arc<LiveClasses>,
        tasks: &Arc<Tasks>,
        synapse: &Synapse,
        leadership: &Arc<Leadership>,
    ) -> Self {
        let http = match client::build(config) {
            Ok(http) => http,
            Err(err) => {
                tracing::error!(error = %err, "cannot set up TLS for appservice delivery; events of local rooms are not pushed to appservices");
                return Self::default();
            }
        };
        let delivery = Self {
            pushers: RwLock::default(),
            http: Some(http),
            spawner: Some(Spawner {
                server_name: server_name.to_owned(),
                config: config.clone(),
                db: db.clone(),
                notifier: notifier.clone(),
                typing: typing.clone(),
                tasks: tasks.clone(),
                classes: classes.clone(),
                synapse: synapse.clone(),
                leadership: leadership.clone(),
            }),
        };
        for registration in registrations {
            if config.umbrella.as_deref() == Some(registration.id.as_str()) {
                continue;
            }
            // In relay mode the registration's url is hungryserv itself; the bridge's own
            // address is in the relay's configuration. Without a url the appservice gets its
            // transactions over the websocket only.
            let relay = config
                .relays
                .iter()
                .find(|relay| relay.appservice == registration.id);
            match relay {
                Some(relay) => {
                    delivery.add(Arc::new(registration.clone()), relay.url.clone(), true)
                }
                None => delivery.add(
                    Arc::new(registration.clone()),
                    registration.url.clone(),
                    false,
                ),
            }
        }
        delivery
    }

    /// Starts the pusher of one appservice (stopping one of the same id first): to `url`,
    /// and in relay mode with Synapse's transactions stored for it. Its queue and cursor are
    /// the id's, so a pusher started again goes on where the last one stopped.
    pub fn add(&self, registration: Arc<Registration>, url: Option<String>, relay: bool) {
        let (Some(http), Some(spawner)) = (&self.http, &self.spawner) else {
            return;
        };
        if let Some(url) = url.as_deref()
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            tracing::error!(appservice = %registration.id, "only http:// and https:// appservice URLs are supported; events of local rooms are not pushed to it");
            return;
        }
        self.remove(&registration.id);
        let poke = Arc::new(Notify::new());
        let handle = Handle {
            socket: Arc::new(Slot::new(&registration.id, poke.clone())),
            poke,
            stats: Arc::new(Stats::default()),
            relay: relay.then(|| Relay {
                relayed: Arc::new(AtomicBool::new(false)),
                url: url.clone(),
                hs_token: registration.hs_token.clone(),
            }),
            stop: Arc::new(Notify::new()),
        };
        let pusher = Pusher {
            registration: registration.clone(),
            server_name: spawner.server_name.clone(),
            db: spawner.db.clone(),
            notifier: spawner.notifier.clone(),
            typing: spawner.typing.clone(),
            http: http.clone(),
            config: spawner.config.clone(),
            poke: handle.poke.clone(),
            stats: handle.stats.clone(),
            socket: handle.socket.clone(),
            url,
            relayed: handle.relay.as_ref().map(|relay| relay.relayed.clone()),
            classes: spawner.classes.clone(),
            synapse: spawner.synapse.clone(),
        };
        // Runs while this instance holds the pusher's lock; a pusher started again after a
        // takeover is a fresh one, reading its cursor from Postgres.
        let fresh = move || pusher.clone().run();
        let held = spawner
            .leadership
            .clone()
            .run_held(format!("appservice pusher:{}", registration.id), fresh);
        let stop = handle.stop.clone();
        // Stopping drops the pusher at an await: safe, as at shutdown (see `tasks`).
        spawner.tasks.spawn("appservice pusher", async move {
            tokio::select! {
                () = held => {}
                () = stop.notified() => {}
            }
        });
        self.write().insert(registration.id.clone(), handle);
    }

    /// Stops the appservice's pusher and closes its websocket, if it has them.
    pub fn remove(&self, appservice_id: &str) {
        if let Some(handle) = self.write().remove(appservice_id) {
            handle.stop.notify_one();
            handle.socket.close();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Handle>> {
        self.pushers.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Handle>> {
        self.pushers.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The appservice's relay, if it is in relay mode.
    pub fn relay(&self, appservice_id: &str) -> Option<Relay> {
        self.read().get(appservice_id)?.relay.clone()
    }

    /// The HTTP client for requests to bridges.
    pub fn http(&self) -> Option<&client::PushClient> {
        self.http.as_ref()
    }

    /// A transaction from Synapse was stored for the appservice: deliver it (here, and on
    /// the instance running its pusher).
    pub fn relayed(&self, appservice_id: &str) {
        if let Some(spawner) = &self.spawner {
            spawner.notifier.announce(Note::Relayed {
                id: appservice_id.to_owned(),
            });
        }
        self.relayed_elsewhere(appservice_id);
    }

    /// Another instance stored a transaction from Synapse for the appservice.
    pub fn relayed_elsewhere(&self, appservice_id: &str) {
        if let Some(handle) = self.read().get(appservice_id) {
            if let Some(relay) = &handle.relay {
                relay.relayed.store(true, Ordering::Release);
            }
            handle.poke.notify_one();
        }
    }

    /// The appservice's websocket slot (for `fi.mau.as_sync`), if it has a pusher.
    pub fn socket(&self, appservice_id: &str) -> Option<Arc<Slot>> {
        self.read()
            .get(appservice_id)
            .map(|handle| handle.socket.clone())
    }

    /// Retries the appservice's transaction in flight at once (Synapse does the same after a
    /// successful `/appservice/{id}/ping`).
    pub fn poke(&self, appservice_id: &str) {
        if let Some(handle) = self.read().get(appservice_id) {
            handle.poke.notify_one();
        }
    }

    /// Every pusher's counters, by appservice ID (`/_hungryserv/metrics` reads them).
    pub fn stats(&self) -> Vec<(String, Arc<Stats>)> {
        self.read()
            .iter()
            .map(|(id, handle)| (id.clone(), handle.stats.clone()))
            .collect()
    }
}

//! The one shared handle every request and task gets: built once, in dependency order, in
//! [`AppState::new`]. Cheap to clone (every field is a shared handle).
//!
//! [`AppState::new`] also starts the background work, and hands its owners back in
//! [`Background`]: the room writer (stops once every handle is dropped, after finishing its
//! queue) and [`Tasks`] (the push-rule learner, the notification and transaction-ID pruners,
//! the badge task, the push task, the purger and one pusher per appservice). `main` stops the
//! tasks first, then awaits the writer.
//!
//! With `[cluster] enabled` (several instances on one database, see [`crate::cluster`]) it
//! also starts the publisher and the listener of notes between instances and the task-lock
//! holder; the pushers, the push task, the badge task and the two pruners then run only
//! while this instance holds their lock. Alone, every task is held at once.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::appservice::Delivery;
use crate::auth::requester::Identity;
use crate::cluster::leader::Leadership;
use crate::cluster::{Outbox, listen};
use crate::config::Config;
use crate::devices::DeviceLists;
use crate::notify::{Notifier, SidePositions};
use crate::push::Push;
use crate::push::task::PushTask;
use crate::rooms::deletion::Deletions;
use crate::rooms::service::Rooms;
use crate::rooms::writer::Writer;
use crate::routing::LiveClasses;
use crate::store::Positions;
use crate::sync::Syncer;
use crate::tasks::Tasks;
use crate::upstream::Synapse;

/// Shared state of a running hungryserv.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The connection pool to hungryserv's database.
    pub db: PgPool,
    /// Synapse, for forwarding and for what hungryserv asks it.
    pub synapse: Synapse,
    /// Access tokens → requesters.
    pub identity: Arc<Identity>,
    /// The room classes in force, for classifying requests; replaced by a reload.
    pub classes: Arc<LiveClasses>,
    /// The room engine.
    pub rooms: Rooms,
    /// Wake-ups after each commit of local events.
    pub notifier: Notifier,
    /// The merged `/sync`.
    pub syncer: Arc<Syncer>,
    /// The device-change stream of local-room co-members.
    pub devices: Arc<DeviceLists>,
    /// The appservice pushers.
    pub delivery: Arc<Delivery>,
    /// Bridges registered at run time behind the umbrella registration.
    pub bridges: Arc<crate::appservice::umbrella::Bridges>,
    /// Room deletion: the set of deleted rooms requests are checked against, and the purge.
    pub deletions: Arc<Deletions>,
    /// Users' push rules and pushers, learned from Synapse.
    pub push: Arc<Push>,
    /// Requests answered, for `/_hungryserv/metrics`.
    pub requests: Arc<crate::metrics::RequestMetrics>,
    /// The room writer's transactions, for `/_hungryserv/metrics`.
    pub writer_counters: Arc<crate::metrics::WriterCounters>,
    /// Which tasks that run once this instance holds (all of them when alone).
    pub leadership: Arc<Leadership>,
}

/// The owners of the background work [`AppState::new`] started.
pub struct Background {
    /// The room writer; ends once every clone of the state is dropped (the tasks hold some)
    /// and its queue is written.
    pub writer: JoinHandle<()>,
    /// Every other background task.
    pub tasks: Arc<Tasks>,
}

impl AppState {
    /// Builds the state and starts the background work (see the module doc). `start` holds
    /// the highest positions already in the database.
    pub fn new(config: Config, db: PgPool, start: Positions) -> (Self, Background) {
        let tasks = Arc::new(Tasks::new());
        let synapse = Synapse::new(&config.synapse, &config.limits);
        tasks.spawn(
            "Synapse health probe",
            crate::upstream::health::watch(synapse.clone()),
        );
        let identity = Arc::new(Identity::new(
            config.server_name.clone(),
            synapse.clone(),
            &config.appservices,
        ));
        let classes = Arc::new(LiveClasses::new(
            &config.routing,
            config.server_name.as_str(),
        ));
        let side = SidePositions {
            room_data: start.room_data,
            // Typing serials start at the clock (rooms::typing).
            typing: 0,
            devices: start.devices,
        };
        // Several instances: notes to the others, and locks for the tasks that run once.
        let (notifier, outbox, leadership) = if config.cluster.enabled {
            let (outbox, notes) = Outbox::new();
            tasks.spawn(
                "cluster publisher",
                crate::cluster::publish(db.clone(), notes),
            );
            let leadership = Leadership::shared(db.clone());
            tasks.spawn("task locks", leadership.clone().run());
            (
                Notifier::shared(start.stream, side, outbox.clone()),
                Some(outbox),
                leadership,
            )
        } else {
            (
                Notifier::with_side(start.stream, side),
                None,
                Leadership::solo(),
            )
        };
        let (writer, writer_task) = Writer::start(db.clone(), notifier.clone());
        let writer_counters = writer.counters();
        let rooms = Rooms::new(
            db.clone(),
            writer,
            synapse.clone(),
            config.server_name.clone(),
            notifier.clone(),
        );
        let devices = Arc::new(DeviceLists::new(
            db.clone(),
            notifier.clone(),
            synapse.clone(),
        ));
        let syncer = Arc::new(Syncer::new(
            db.clone(),
            rooms.clone(),
            synapse.clone(),
            notifier.clone(),
            devices.clone(),
        ));
        let delivery = Arc::new(Delivery::start(
            &config.appservices,
            config.server_name.as_str(),
            &config.delivery,
            &db,
            &notifier,
            &rooms.typing,
            &classes,
            &tasks,
            &synapse,
            &leadership,
        ));
        let bridges = Arc::new(crate::appservice::umbrella::Bridges::new(
            db.clone(),
            identity.clone(),
            synapse.clone(),
            delivery.clone(),
            &config.appservices,
            config.delivery.umbrella.as_deref(),
            config.server_name.as_str(),
        ));
        // Push follows the event stream like the appservice pushers, until the process ends.
        let (push, learner) = Push::new(db.clone(), synapse.clone());
        tasks.spawn("push rules learner", learner);
        {
            let db = db.clone();
            tasks.spawn(
                "notifications pruner",
                leadership
                    .clone()
                    .run_held("notifications pruner".into(), move || {
                        crate::push::prune::run(db.clone())
                    }),
            );
        }
        {
            let db = db.clone();
            tasks.spawn(
                "transaction IDs pruner",
                leadership
                    .clone()
                    .run_held("transaction IDs pruner".into(), move || {
                        crate::rooms::txn_ids::run(db.clone())
                    }),
            );
        }
        match crate::push::gateway::client(config.push.extra_ca.as_ref()) {
            Ok(client) => {
                let badge = (db.clone(), notifier.clone(), client.clone(), push.clone());
                tasks.spawn(
                    "badge",
                    leadership.clone().run_held("badge".into(), move || {
                        let (db, notifier, client, push) = badge.clone();
                        crate::push::badge::run(db, notifier, client, push)
                    }),
                );
                let task = PushTask {
                    db: db.clone(),
                    notifier: notifier.clone(),
                    server_name: config.server_name.to_string(),
                    registrations: config.appservices.iter().cloned().map(Arc::new).collect(),
                    client,
                    push: push.clone(),
                    classes: classes.clone(),
                };
                tasks.spawn(
                    "push",
                    leadership.clone().run_held("push".into(), move || {
                        PushTask {
                            db: task.db.clone(),
                            notifier: task.notifier.clone(),
                            server_name: task.server_name.clone(),
                            registrations: task.registrations.clone(),
                            client: task.client.clone(),
                            push: task.push.clone(),
                            classes: task.classes.clone(),
                        }
                        .run()
                    }),
                );
            }
            Err(err) => {
                tracing::error!(error = %err, "no TLS client for push gateways: local rooms push nothing");
            }
        }
        let deletions = Deletions::start(db.clone(), rooms.clone(), &config.deletion, &tasks);
        if let Some(outbox) = outbox {
            identity.share(outbox.clone());
            bridges.share(outbox.clone());
            tasks.spawn("gap closer", listen::close_gaps(notifier.clone()));
            tasks.spawn(
                "cluster listener",
                listen::run(
                    db.clone(),
                    listen::Peers {
                        instance: outbox.instance(),
                        notifier: notifier.clone(),
                        typing: rooms.typing.clone(),
                        bridges: bridges.clone(),
                        delivery: delivery.clone(),
                        identity: identity.clone(),
                        deletions: deletions.clone(),
                    },
                ),
            );
        }
        let state = Self {
            config: Arc::new(config),
            db,
            synapse,
            identity,
            classes,
            rooms,
            notifier,
            syncer,
            devices,
            delivery,
            bridges,
            deletions,
            push,
            requests: Arc::default(),
            writer_counters,
            leadership,
        };
        (
            state,
            Background {
                writer: writer_task,
                tasks,
            },
        )
    }
}

impl AppState {
    /// Reads routing.toml again and puts it in force if it is valid; else keeps the routing
    /// in force and returns every problem found. Requests in flight finish with the routing
    /// they were classified under.
    pub fn reload_routing(&self) -> Result<(), Vec<String>> {
        let current = self.classes.config();
        match crate::config::reload_routing(&self.config, &current) {
            Ok(routing) => {
                tracing::info!(classes = routing.classes.len(), "routing reloaded");
                self.classes.replace(routing);
                Ok(())
            }
            Err(problems) => {
                tracing::warn!(problems = ?problems.lines, "routing reload refused; the old routing stays");
                Err(problems.lines)
            }
        }
    }
}

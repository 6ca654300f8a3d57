//! Shared helpers for the integration tests: configs, a hungryserv started in-process, and a
//! fresh Postgres database per test.
#![allow(dead_code)] // each test binary uses a different subset

pub mod local;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use hungryserv::app::AppState;
use hungryserv::config::{self, Config};
use hungryserv::rooms::auth::Proposal;
use hungryserv::rooms::writer::{NewRoom, Writer};
use hungryserv::{server, store};
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Writes a hungryserv.toml into a temp dir and loads it. `synapse_extra` goes into the
/// `[synapse]` table; `extra` (whole tables) at the end.
pub fn config(synapse: SocketAddr, database_url: &str, synapse_extra: &str, extra: &str) -> Config {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hungryserv.toml");
    let routing = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routing.toml");
    std::fs::write(
        &path,
        format!(
            "server_name = \"test.local\"\nlisten = \"127.0.0.1:0\"\nrouting = {routing:?}\n\
             [synapse]\nurl = \"http://{synapse}\"\n{synapse_extra}\n\
             [database]\nurl = \"{database_url}\"\n{extra}\n"
        ),
    )
    .expect("write config");
    config::load(&path)
        .unwrap_or_else(|problems| panic!("test config invalid: {:?}", problems.lines))
}

/// Like [`config`], with `extra` (top-level keys, then whole tables) before `[synapse]`.
pub fn config_top(synapse: SocketAddr, database_url: &str, extra: &str) -> Config {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("hungryserv.toml");
    let routing = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("routing.toml");
    std::fs::write(
        &path,
        format!(
            "server_name = \"test.local\"\nlisten = \"127.0.0.1:0\"\nrouting = {routing:?}\n\
             {extra}\n[synapse]\nurl = \"http://{synapse}\"\n[database]\nurl = \"{database_url}\"\n"
        ),
    )
    .expect("write config");
    config::load(&path)
        .unwrap_or_else(|problems| panic!("test config invalid: {:?}", problems.lines))
}

/// A database URL nothing listens on: for tests of paths that never touch the database.
pub const NO_DATABASE: &str = "postgres://nobody@127.0.0.1:9/none";

/// A hungryserv serving in this process.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Resolving this starts graceful shutdown.
    pub shutdown: Option<oneshot::Sender<()>>,
    /// The server task; ends when shutdown is complete.
    pub task: JoinHandle<std::io::Result<()>>,
    /// The background tasks and the writer (dropping them would stop the tasks).
    pub background: hungryserv::app::Background,
}

/// Starts hungryserv with `config` on a free port, with a lazily connecting database pool.
pub async fn start(config: Config) -> Running {
    let db = store::pool(&config.database).expect("pool");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel();
    let (state, background) = AppState::new(config, db, Default::default());
    let task = tokio::spawn(server::serve(state, listener, async {
        let _ = rx.await;
    }));
    Running {
        addr,
        shutdown: Some(tx),
        task,
        background,
    }
}

/// A fresh, empty database on the test cluster (`HUNGRYSERV_TEST_DATABASE_URL`, which
/// `compat-tests/run` sets). Returns its URL.
pub async fn fresh_database() -> String {
    let admin_url = std::env::var("HUNGRYSERV_TEST_DATABASE_URL").expect(
        "HUNGRYSERV_TEST_DATABASE_URL is not set: run compat-tests/run, or point it at a Postgres \
         role allowed to create databases",
    );
    let name = format!("hs_test_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::PgPool::connect(&admin_url)
        .await
        .expect("connect to test cluster");
    // The name is ours (hex digits), not input: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .expect("create test database");
    admin.close().await;
    let (base, _) = admin_url.rsplit_once('/').expect("URL has a database name");
    format!("{base}/{name}")
}

/// An event as the room engine is asked to write it, at a fixed `origin_server_ts`.
pub fn proposal(sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> Proposal {
    Proposal {
        sender: OwnedUserId::try_from(sender).unwrap(),
        kind: kind.into(),
        state_key: state_key.map(str::to_owned),
        content: content.as_object().unwrap().clone(),
        origin_server_ts: 1_700_000_000_000,
        redacts: None,
    }
}

/// Creates a local room through the writer: create, `creator` joined, power levels giving
/// `creator` 100.
pub async fn create_room(writer: &Writer, room_id: &OwnedRoomId, creator: &str) {
    writer
        .create(
            NewRoom {
                room_id: room_id.clone(),
                class: "bridge".into(),
                creator: OwnedUserId::try_from(creator).unwrap(),
                appservice_id: None,
                aliases: vec![],
            },
            vec![
                proposal(
                    creator,
                    "m.room.create",
                    Some(""),
                    json!({"creator": creator, "room_version": "10"}),
                ),
                proposal(
                    creator,
                    "m.room.member",
                    Some(creator),
                    json!({"membership": "join"}),
                ),
                proposal(
                    creator,
                    "m.room.power_levels",
                    Some(""),
                    json!({"users": {creator: 100}}),
                ),
            ],
        )
        .await
        .unwrap();
}

/// Appservice delivery running in-process over a fresh database: what a delivery test needs.
pub struct Delivering {
    pub pool: sqlx::PgPool,
    pub notifier: hungryserv::notify::Notifier,
    pub writer: Writer,
    pub delivery: hungryserv::appservice::Delivery,
    /// Owns the pusher (dropping it would stop the pusher).
    pub tasks: std::sync::Arc<hungryserv::tasks::Tasks>,
}

/// Starts the writer and delivery for one appservice `registration` (YAML) with the
/// `[appservice]` table `appservice`, and waits until its pusher has its cursor: delivery
/// starts after the position the pusher finds at its first start, so events written before
/// would count as history.
pub async fn start_delivery(registration: &str, appservice: &str) -> Delivering {
    use hungryserv::appservice::Delivery;
    use hungryserv::config::registration;
    use hungryserv::notify::Notifier;
    use hungryserv::rooms::typing::Typing;

    let database_url = fresh_database().await;
    let config = config(
        "127.0.0.1:9".parse().unwrap(),
        &database_url,
        "",
        appservice,
    );
    let registration = registration::parse(registration).unwrap();
    let id = registration.id.clone();
    let pool = store::connect(&config.database, "test.local")
        .await
        .unwrap();
    let notifier = Notifier::new(store::current_positions(&pool).await.unwrap().stream);
    let typing = Typing::start(notifier.clone());
    let tasks = std::sync::Arc::new(hungryserv::tasks::Tasks::new());
    let (writer, _writer_task) = Writer::start(pool.clone(), notifier.clone());
    let delivery = Delivery::start(
        &[registration],
        "test.local",
        &config.delivery,
        &pool,
        &notifier,
        &typing,
        &std::sync::Arc::new(hungryserv::routing::LiveClasses::new(
            &config.routing,
            "test.local",
        )),
        &tasks,
        &hungryserv::upstream::Synapse::new(&config.synapse, &config.limits),
        &hungryserv::cluster::leader::Leadership::solo(),
    );
    for _ in 0..100 {
        let cursors: i64 =
            sqlx::query_scalar("SELECT count(*) FROM appservice_cursors WHERE appservice_id = $1")
                .bind(&id)
                .fetch_one(&pool)
                .await
                .unwrap();
        if cursors == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Delivering {
        pool,
        notifier,
        writer,
        delivery,
        tasks,
    }
}

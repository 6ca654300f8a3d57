//! hungryserv's Postgres database: the connection pool, the migrations (`migrations/` at the
//! crate root, applied at start by sqlx's migrator) and the queries, one submodule per table
//! family. The only module that contains SQL.
//!
//! Store functions take an executor, so the caller decides the transaction.
//!
//! May import: `config`.

pub mod appservice;
pub mod cluster;
pub mod deletion;
pub mod devices;
pub mod events;
pub mod identity;
pub mod ignore;
pub mod nodelay;
pub mod push;
pub mod receipts;
pub mod relation_filters;
pub mod relay;
pub mod reports;
pub mod room_data;
pub mod rooms;
pub mod search;
pub mod sliding;
pub mod threads;
pub mod umbrella;

use std::str::FromStr;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::config::DatabaseConfig;

/// Errors from the store. They never reach a client as text (see `error`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error(
        "this database belongs to server {stored:?}, not {configured:?}; point database.url at the right database"
    )]
    ServerNameMismatch { stored: String, configured: String },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();

/// Opens the pool without connecting: the first query connects. Used where the database may
/// legitimately be down (readiness reports it), and by [`connect`].
///
/// Connections use generic plans for prepared statements (`plan_cache_mode`). sqlx prepares
/// every query once per connection; under Postgres's default, most of ours (short lookups by
/// room, user or event ID with arrays and stream ranges) were re-planned on every execution,
/// and planning took longer than running them. Nearly all of them are index lookups whose plan
/// does not depend on the values, so a generic plan loses nothing (the wake-up and send
/// figures are in the commit that made the change).
///
/// Each new TCP connection gets `TCP_NODELAY` ([`nodelay`]), which sqlx 0.9.0 leaves off.
pub fn pool(config: &DatabaseConfig) -> Result<PgPool, StoreError> {
    let options = PgConnectOptions::from_str(&config.url)?
        .options([("plan_cache_mode", "force_generic_plan")]);
    let tcp_port = options.get_socket().is_none().then(|| options.get_port());
    Ok(PgPoolOptions::new()
        .after_connect(move |_conn, _meta| {
            Box::pin(async move {
                if let Some(port) = tcp_port
                    && let Err(err) = nodelay::set_on_connections_to(port)
                {
                    // Slower batch sends, nothing worse: the connection is still good.
                    tracing::warn!(error = %err, "could not set TCP_NODELAY on the database connection");
                }
                Ok(())
            })
        })
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        // No ping before lending a connection: it was a round trip on every acquire (two per
        // woken sync). A connection that died idle (a Postgres restart) fails its first query
        // instead, the request gets an error and nothing was written; sqlx then closes it.
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// Connects, applies pending migrations and checks the database belongs to `server_name`.
pub async fn connect(config: &DatabaseConfig, server_name: &str) -> Result<PgPool, StoreError> {
    let pool = pool(config)?;
    MIGRATOR.run(&pool).await?;
    identity::claim(&pool, server_name).await?;
    Ok(pool)
}

/// The highest positions committed so far.
pub async fn current_positions(pool: &PgPool) -> Result<Positions, StoreError> {
    let mut conn = pool.acquire().await?;
    Ok(Positions {
        stream: events::max_stream(&mut conn).await?,
        room_data: room_data::current_position(&mut conn).await?,
        devices: devices::current_position(&mut conn).await?,
    })
}

/// The highest committed positions of the event stream and the room data stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Positions {
    pub stream: i64,
    pub room_data: i64,
    /// The device-change stream (migration 0021).
    pub devices: i64,
}

/// A cheap round trip, for readiness.
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query!("SELECT 1 AS one").fetch_one(pool).await?;
    Ok(())
}

/// Runs `delete` (one statement deleting at most `batch` rows, on the pooled connection it is
/// given) until a statement deletes fewer than `batch`; returns how many rows went in all. For
/// the pruning tasks: no statement holds many row locks, and each batch commits on its own.
pub async fn delete_in_batches<F, Fut>(
    pool: &PgPool,
    batch: i64,
    mut delete: F,
) -> Result<u64, StoreError>
where
    F: FnMut(sqlx::pool::PoolConnection<sqlx::Postgres>, i64) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let deleted = delete(pool.acquire().await?, batch).await?;
        total += deleted;
        if deleted < batch.unsigned_abs() {
            return Ok(total);
        }
    }
}

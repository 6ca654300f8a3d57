//! The store against a real Postgres (`HUNGRYSERV_TEST_DATABASE_URL`, set by
//! `compat-tests/run`); each test gets a fresh database.

mod support;

use std::time::Duration;

use hungryserv::config::DatabaseConfig;
use hungryserv::store::{self, StoreError};

fn database(url: String) -> DatabaseConfig {
    DatabaseConfig {
        url,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn migrations_apply_and_rerun_cleanly() {
    let config = database(support::fresh_database().await);
    let pool = store::connect(&config, "one.example").await.unwrap();
    store::ping(&pool).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied,
        i64::try_from(store::MIGRATOR.iter().count()).unwrap()
    );
    // A restart runs the migrator again: nothing to do, no error.
    store::connect(&config, "one.example").await.unwrap();
}

#[tokio::test]
async fn a_database_keeps_its_server_name() {
    let config = database(support::fresh_database().await);
    store::connect(&config, "one.example").await.unwrap();
    match store::connect(&config, "two.example").await {
        Err(StoreError::ServerNameMismatch { stored, configured }) => {
            assert_eq!(stored, "one.example");
            assert_eq!(configured, "two.example");
        }
        other => panic!(
            "expected a server name mismatch, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[tokio::test]
async fn concurrent_first_starts_agree_on_one_name() {
    let config = database(support::fresh_database().await);
    let pool = store::pool(&config).unwrap();
    store::MIGRATOR.run(&pool).await.unwrap();
    let (a, b) = tokio::join!(
        store::identity::claim(&pool, "a.example"),
        store::identity::claim(&pool, "b.example"),
    );
    // Exactly one of the two names won; the other start was refused.
    assert!(a.is_ok() != b.is_ok(), "a: {a:?}, b: {b:?}");
}

#[tokio::test]
async fn readiness_reports_an_unreachable_database() {
    let pool = store::pool(&DatabaseConfig {
        url: support::NO_DATABASE.to_owned(),
        max_connections: 1,
        acquire_timeout: Duration::from_secs(1),
    })
    .unwrap();
    assert!(store::ping(&pool).await.is_err());
}

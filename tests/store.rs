//! The store against a real Postgres (`HUNGRYSERV_TEST_DATABASE_URL`, set by
//! `compat-tests/run`); each test gets a fresh database.

mod support;

use std::time::Duration;

use hungryserv::config::DatabaseConfig;
use hungryserv::store::events::{FastAppend, FastAppendRoom, RoomPositions, StoredEvent};
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

/// sqlx 0.9.0 leaves Nagle's algorithm on; the pool turns it off on each connection
/// (`store::nodelay`), or a batch send's `COPY` waits for Postgres's delayed ACK.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn database_connections_have_tcp_nodelay() {
    let url = support::fresh_database().await;
    let port = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .get_port();
    let pool = store::connect(&database(url), "one.example").await.unwrap();
    // Three connections held at once: three sockets.
    let held = futures_util::future::try_join_all((0..3).map(|_| pool.acquire()))
        .await
        .unwrap();
    let nodelay = store::nodelay::nodelay_of_connections_to(port).unwrap();
    // Other connections of this test process to the cluster (the admin pool that created the
    // database, closed by now) are not the pool's concern: count those with the option.
    let on = nodelay.iter().filter(|on| **on).count();
    assert!(
        on >= held.len(),
        "{on} of {} connections to port {port} have TCP_NODELAY; the pool holds {}",
        nodelay.len(),
        held.len()
    );
}

/// Postgres checks a foreign key on each delete from the referenced table by looking up the
/// referencing rows; without an index on the referencing columns that is a scan of the whole
/// table per deleted row (purging a room's events scanned all of current_state per event).
#[tokio::test]
async fn every_foreign_key_has_an_index_on_its_referencing_columns() {
    let config = database(support::fresh_database().await);
    let pool = store::connect(&config, "one.example").await.unwrap();
    let unindexed: Vec<String> = sqlx::query_scalar(
        "SELECT c.conrelid::regclass::text || '.' || c.conname FROM pg_constraint c
         WHERE c.contype = 'f' AND NOT EXISTS (
             SELECT FROM pg_index i
             WHERE i.indrelid = c.conrelid
               AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] @> c.conkey
               AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1] <@ c.conkey)
         ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(unindexed, Vec::<String>::new());
    let checked: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(checked >= 7, "only {checked} foreign keys found");
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

/// Events, the room's latest_stream, transaction IDs.
async fn written_rows(conn: &mut sqlx::PgConnection) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), (SELECT latest_stream FROM rooms),
                (SELECT count(*) FROM transaction_ids)",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A fresh database with one room row whose counters stand at `latest`.
async fn pool_with_room(room_id: &str, latest: i64) -> sqlx::PgPool {
    let pool = store::connect(&database(support::fresh_database().await), "one.example")
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO rooms (room_id, class, room_version, creator, max_topo, min_topo, latest_stream)
         VALUES ($1, 'bridge', '10', '@bot:one.example', $2, 1, $2)",
    )
    .bind(room_id)
    .bind(latest)
    .execute(&pool)
    .await
    .unwrap();
    pool
}

/// The writer's fast path (`writer_append`) checks the room's position and the transaction
/// IDs by its own writes and undoes itself when either falls short: it answers "declined"
/// (`Ok(false)`), and nothing of it — no event, no room position, no transaction ID — is
/// left behind. Then, as the writer believes, it writes.
#[tokio::test]
async fn the_fast_path_declines_whole_and_writes_whole() {
    const ROOM: &str = "!hs_fast:one.example";
    let pool = pool_with_room(ROOM, 1).await;
    sqlx::query(
        "INSERT INTO events (stream, room_id, topo, event_id, type, state_key, sender,
                             origin_server_ts, content)
         VALUES (1, $1, 1, '$create', 'm.room.create', '', '@bot:one.example', 0, '{}')",
    )
    .bind(ROOM)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO transaction_ids (scope, txn_id, event_id) VALUES ('s', 'used', '$old')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let event = StoredEvent {
        stream: 2,
        topo: 2,
        event_id: "$new".try_into().unwrap(),
        room_id: ROOM.try_into().unwrap(),
        sender: "@bot:one.example".try_into().unwrap(),
        kind: "m.room.message".into(),
        state_key: None,
        origin_server_ts: 2,
        content: serde_json::Map::new(),
        replaces_state: None,
        redacts: None,
        redacted_by: None,
        txn: None,
    };
    let events = [event];
    let mut conn = pool.acquire().await.unwrap();
    // (the room's latest_stream as the writer believes it, its txn ID, what the case is,
    // whether it writes, (events, latest_stream, txn IDs) afterwards)
    for (believed_latest, txn_id, what, writes, after) in [
        (
            0,
            "fresh",
            "a room written since the writer read it",
            false,
            (1, 1, 1),
        ),
        (1, "used", "a transaction ID used already", false, (1, 1, 1)),
        (1, "fresh", "all as the writer believes", true, (2, 2, 2)),
    ] {
        let txns = [("s".to_owned(), txn_id.to_owned(), "$new".to_owned())];
        let written = store::events::fast_append(
            &mut conn,
            &FastAppend {
                expected_max: 1,
                rooms: vec![FastAppendRoom {
                    expected_latest: believed_latest,
                    positions: RoomPositions {
                        room_id: ROOM.into(),
                        max_topo: 2,
                        min_topo: 1,
                        latest_stream: 2,
                    },
                }],
                txns: &txns,
                events: &events,
            },
        )
        .await
        .unwrap();
        assert_eq!(written, writes, "{what}");
        assert_eq!(written_rows(&mut conn).await, after, "{what}");
    }
}

/// Event IDs are unique through an exclusion constraint on a hash index (migration 0018), not
/// a UNIQUE b-tree. It must be as strict: a second insert of an ID fails naming
/// [`store::events::EVENT_ID_CONSTRAINT`] (the writer tells repeated batch sends by that
/// name), also when the first insert is not yet committed, in which case it waits for it.
#[tokio::test]
async fn an_event_id_is_stored_once_even_by_concurrent_transactions() {
    const ROOM: &str = "!hs_ids:one.example";
    let pool = pool_with_room(ROOM, 3).await;
    let insert = |stream: i64, event_id: &'static str| {
        sqlx::query(
            "INSERT INTO events (stream, room_id, topo, event_id, type, sender, origin_server_ts, content)
             VALUES ($1, $2, $1, $3, 'm.room.message', '@bot:one.example', 0, '{}')",
        )
        .bind(stream)
        .bind(ROOM)
        .bind(event_id)
    };
    let constraint_of = |err: sqlx::Error| match err {
        sqlx::Error::Database(db) => (
            db.code().map(|c| c.into_owned()),
            db.constraint().map(str::to_owned),
        ),
        other => panic!("not a database error: {other}"),
    };
    let clash = (
        Some("23P01".to_owned()),
        Some(store::events::EVENT_ID_CONSTRAINT.to_owned()),
    );

    insert(1, "$taken").execute(&pool).await.unwrap();
    let err = insert(2, "$taken").execute(&pool).await.unwrap_err();
    assert_eq!(constraint_of(err), clash, "a committed ID");

    let mut first = pool.begin().await.unwrap();
    insert(2, "$racing").execute(&mut *first).await.unwrap();
    let second = tokio::spawn({
        let pool = pool.clone();
        async move { insert(3, "$racing").execute(&pool).await }
    });
    // The second insert waits for the first transaction: it must not finish while it is open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second insert did not wait for the first"
    );
    first.commit().await.unwrap();
    let err = second.await.unwrap().unwrap_err();
    assert_eq!(constraint_of(err), clash, "an ID in flight");

    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE event_id IN ('$taken', '$racing')")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(stored, 2);
}

/// Transaction IDs are kept a day, as Synapse keeps its own: the pruner deletes the older ones
/// (oldest first, batch after batch) and leaves the younger ones.
#[tokio::test]
async fn transaction_ids_older_than_the_retention_are_pruned() {
    let pool = store::connect(&database(support::fresh_database().await), "one.example")
        .await
        .unwrap();
    for (txn_id, age_hours) in [("old1", 30), ("old2", 25), ("old3", 49), ("young", 23)] {
        sqlx::query(
            "INSERT INTO transaction_ids (scope, txn_id, event_id, created_at)
             VALUES ('s', $1, '$e', now() - make_interval(hours => $2))",
        )
        .bind(txn_id)
        .bind(age_hours)
        .execute(&pool)
        .await
        .unwrap();
    }
    let keep = hungryserv::rooms::txn_ids::KEEP;
    assert_eq!(keep, Duration::from_secs(24 * 3600));
    // Two rows per statement: the pruner has to go round until a statement falls short.
    let deleted = hungryserv::rooms::txn_ids::prune(&pool, keep, 2)
        .await
        .unwrap();
    assert_eq!(deleted, 3);
    let left: Vec<String> = sqlx::query_scalar("SELECT txn_id FROM transaction_ids")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(left, vec!["young".to_owned()]);
    // Nothing left to prune: a second round deletes nothing.
    assert_eq!(
        hungryserv::rooms::txn_ids::prune(&pool, keep, 2)
            .await
            .unwrap(),
        0
    );
}

//! The room purge against a real Postgres (`HUNGRYSERV_TEST_DATABASE_URL`, set by
//! `compat-tests/run`): batches that resume wherever they stopped, that never wait for
//! another room's open write transaction, and that never free the highest stream position;
//! and the writer's fence (migration 0014): no event of a room is committed after its purge
//! has begun, whichever of the two comes first.

mod support;

use std::time::Duration;

use hungryserv::config::DatabaseConfig;
use hungryserv::notify::Notifier;
use hungryserv::rooms::RoomError;
use hungryserv::rooms::writer::{BatchJob, Outcome, Placement, Writer};
use hungryserv::store::{self, deletion};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::json;
use sqlx::PgPool;

async fn pool() -> PgPool {
    let config = DatabaseConfig {
        url: support::fresh_database().await,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    store::connect(&config, "test.local").await.unwrap()
}

/// A room with `messages` messages after a create and a member event, at stream positions
/// from `first`. Returns the next free position.
async fn room(pool: &PgPool, room_id: &str, first: i64, messages: i64) -> i64 {
    sqlx::query(
        "INSERT INTO rooms (room_id, class, room_version, creator, max_topo, min_topo, latest_stream)
         VALUES ($1, 'bridge', '10', '@a:test.local', $2, 1, $3)",
    )
    .bind(room_id)
    .bind(messages + 2)
    .bind(first + messages + 1)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (stream, room_id, topo, event_id, type, state_key, sender, origin_server_ts, content, txn_scope, txn_id)
         SELECT $2 + n, $1, n + 1, '$' || $1 || n,
                CASE n WHEN 0 THEN 'm.room.create' WHEN 1 THEN 'm.room.member' ELSE 'm.room.message' END,
                CASE WHEN n < 2 THEN CASE n WHEN 0 THEN '' ELSE '@a:test.local' END END,
                '@a:test.local', 0, '{\"membership\": \"join\"}', 'scope', $1 || n
         FROM generate_series(0, $3 + 1) n",
    )
    .bind(room_id)
    .bind(first)
    .bind(messages)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO transaction_ids (scope, txn_id, event_id)
         SELECT 'scope', $1 || n, '$' || $1 || n FROM generate_series(0, $2 + 1) n",
    )
    .bind(room_id)
    .bind(messages)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO current_state (room_id, type, state_key, stream) VALUES
         ($1, 'm.room.create', '', $2), ($1, 'm.room.member', '@a:test.local', $2 + 1)",
    )
    .bind(room_id)
    .bind(first)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO memberships (room_id, user_id, membership, stream) VALUES ($1, '@a:test.local', 'join', $2 + 1)",
    )
    .bind(room_id)
    .bind(first)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO receipts (room_id, user_id, type, event_id, stream, ts)
         VALUES ($1, '@a:test.local', 'm.read', '$' || $1 || '1', $2 + 1, 0)",
    )
    .bind(room_id)
    .bind(first)
    .execute(pool)
    .await
    .unwrap();
    first + messages + 2
}

async fn count(pool: &PgPool, sql: &str, room_id: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(room_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn mark(pool: &PgPool, room_id: &str, delete_id: &str) {
    let mut conn = pool.acquire().await.unwrap();
    let marked = deletion::mark_deleted(
        &mut conn,
        &deletion::MarkDeleted {
            room_id,
            delete_id,
            requested_by: "@admin:test.local",
            purge: true,
            block: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(marked, Some(vec![]));
    // A second deletion of the same room finds nothing to delete.
    let again = deletion::mark_deleted(
        &mut conn,
        &deletion::MarkDeleted {
            room_id,
            delete_id: "hsdel_again",
            requested_by: "@admin:test.local",
            purge: true,
            block: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(again, None);
}

#[tokio::test]
async fn purge_in_batches_resumes_and_keeps_the_newest_position() {
    let pool = pool().await;
    let next = room(&pool, "!hs_a:test.local", 1, 5_000).await;
    room(&pool, "!hs_b:test.local", next, 10).await;
    mark(&pool, "!hs_a:test.local", "hsdel_a").await;

    let mut conn = pool.acquire().await.unwrap();
    // Messages first (state stays), a few batches, then "a restart": nothing remembers
    // where the purge was; the next batches simply find less to delete.
    let mut purged = 0;
    for _ in 0..2 {
        purged += deletion::purge_events(&mut conn, "!hs_a:test.local", "hsdel_a", 1_000, true)
            .await
            .unwrap();
    }
    assert_eq!(purged, 2_000);
    drop(conn);
    let mut conn = pool.acquire().await.unwrap();
    while deletion::purge_events(&mut conn, "!hs_a:test.local", "hsdel_a", 1_000, true)
        .await
        .unwrap()
        > 0
    {}
    let left = count(
        &pool,
        "SELECT count(*) FROM events WHERE room_id = $1",
        "!hs_a:test.local",
    )
    .await;
    assert_eq!(left, 2, "the two state events stay");
    let txns = count(
        &pool,
        "SELECT count(*) FROM transaction_ids WHERE txn_id LIKE $1 || '%'",
        "!hs_a:test.local",
    )
    .await;
    assert_eq!(txns, 2, "transaction IDs go with their events");
    let status = deletion::get(&pool, "hsdel_a").await.unwrap().unwrap();
    assert_eq!(status.purged_events, 5_000);

    // Everything else, then the room.
    deletion::purge_state(&mut conn, "!hs_a:test.local")
        .await
        .unwrap();
    while deletion::purge_events(&mut conn, "!hs_a:test.local", "hsdel_a", 1_000, false)
        .await
        .unwrap()
        > 0
    {}
    assert!(
        deletion::purge_room(&mut conn, "!hs_a:test.local")
            .await
            .unwrap()
    );
    assert!(
        deletion::purge_room(&mut conn, "!hs_a:test.local")
            .await
            .unwrap(),
        "already gone counts as gone"
    );
    assert_eq!(
        deletion::rows_left(&pool, "!hs_a:test.local")
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE room_id = $1",
            "!hs_b:test.local"
        )
        .await,
        12
    );

    // Room b holds the highest position: its purge leaves that event (and the room row)
    // until a newer event exists, so the position is never handed out again.
    mark(&pool, "!hs_b:test.local", "hsdel_b").await;
    deletion::purge_state(&mut conn, "!hs_b:test.local")
        .await
        .unwrap();
    while deletion::purge_events(&mut conn, "!hs_b:test.local", "hsdel_b", 1_000, false)
        .await
        .unwrap()
        > 0
    {}
    assert!(
        !deletion::purge_room(&mut conn, "!hs_b:test.local")
            .await
            .unwrap()
    );
    let max: i64 = sqlx::query_scalar("SELECT max(stream) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(max, next + 11);
    room(&pool, "!hs_c:test.local", next + 12, 1).await;
    while deletion::purge_events(&mut conn, "!hs_b:test.local", "hsdel_b", 1_000, false)
        .await
        .unwrap()
        > 0
    {}
    assert!(
        deletion::purge_room(&mut conn, "!hs_b:test.local")
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn purge_does_not_wait_for_another_rooms_open_write() {
    let pool = pool().await;
    let next = room(&pool, "!hs_a:test.local", 1, 3_000).await;
    room(&pool, "!hs_b:test.local", next, 1).await;
    mark(&pool, "!hs_a:test.local", "hsdel_a").await;

    // A write to room b, uncommitted, holding the writer's lock as the writer does.
    let mut writer = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(1752526439)")
        .execute(&mut *writer)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO events (stream, room_id, topo, event_id, type, sender, origin_server_ts, content)
         VALUES ($1, '!hs_b:test.local', 100, '$open', 'm.room.message', '@a:test.local', 0, '{}')",
    )
    .bind(next + 100)
    .execute(&mut *writer)
    .await
    .unwrap();

    let mut conn = pool.acquire().await.unwrap();
    let purge = async {
        deletion::purge_state(&mut conn, "!hs_a:test.local")
            .await
            .unwrap();
        let mut total = 0;
        loop {
            let n = deletion::purge_events(&mut conn, "!hs_a:test.local", "hsdel_a", 1_000, false)
                .await
                .unwrap();
            if n == 0 {
                break total;
            }
            total += n;
        }
    };
    let total = tokio::time::timeout(Duration::from_secs(10), purge)
        .await
        .expect("the purge waited for another room's transaction");
    assert_eq!(total, 3_002);
    writer.commit().await.unwrap();
}

const CREATOR: &str = "@a:test.local";

/// One message by the room's creator.
fn message(body: &str) -> Vec<hungryserv::rooms::auth::Proposal> {
    vec![support::proposal(
        CREATOR,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": body}),
    )]
}

/// A backward batch send of `count` messages by the creator.
fn backfill(room_id: &OwnedRoomId, count: usize) -> BatchJob {
    BatchJob {
        room_id: room_id.clone(),
        by: OwnedUserId::try_from(CREATOR).unwrap(),
        events: (0..count)
            .map(|n| {
                let id = OwnedEventId::try_from(format!("$old{n}:bridge.example")).unwrap();
                (message(&format!("old {n}")).remove(0), Some(id))
            })
            .collect(),
        placement: Placement::Backward,
        mark_read_by: None,
        silent: true,
    }
}

/// Waits until some session waits for a row lock (the writer, blocked by the seal).
async fn someone_waits_for_a_row_lock(pool: &PgPool) {
    for _ in 0..200 {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND wait_event = 'transactionid' AND query LIKE '%writer_%'",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the write never waited for the seal's row lock");
}

/// A write that reaches the database while the room's purge is being sealed: the fast path
/// (a plain message into a room the writer has cached) and the ordinary path (a batch send)
/// both wait for the seal, then refuse the job and write nothing. Without the fence the
/// message's insert went ahead and committed behind the purge. A room that is deleted but
/// not sealed still takes writes (the deletion's leaves are written then).
#[tokio::test]
async fn a_write_racing_the_purge_is_refused_whole() {
    let pool = pool().await;
    let (writer, _task) = Writer::start(pool.clone(), Notifier::new(0));
    let room_id = OwnedRoomId::try_from("!hs_fence:test.local").unwrap();
    support::create_room(&writer, &room_id, CREATOR).await;
    // Written and cached: the next plain message may take the fast path.
    let first = writer
        .append(room_id.clone(), message("before"), None)
        .await;
    assert!(matches!(first, Ok(Outcome::Written(_))), "{first:?}");
    mark(&pool, room_id.as_str(), "hsdel_fence").await;
    let deleted = writer
        .append(room_id.clone(), message("deleted, not sealed"), None)
        .await;
    assert!(matches!(deleted, Ok(Outcome::Written(_))), "{deleted:?}");
    let events_before = count(
        &pool,
        "SELECT count(*) FROM events WHERE room_id = $1",
        room_id.as_str(),
    )
    .await;

    for attempt in ["fast path", "batch send"] {
        // The seal, uncommitted: the room row is locked by its UPDATE.
        let mut seal = pool.begin().await.unwrap();
        deletion::seal(&mut seal, room_id.as_str()).await.unwrap();
        let write = {
            let writer = writer.clone();
            let room_id = room_id.clone();
            tokio::spawn(async move {
                match attempt {
                    "fast path" => writer.append(room_id, message("racing"), None).await,
                    _ => writer.batch(backfill(&room_id, 3)).await,
                }
            })
        };
        someone_waits_for_a_row_lock(&pool).await;
        seal.commit().await.unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(10), write)
            .await
            .expect("the write never finished")
            .unwrap();
        assert!(
            matches!(outcome, Err(RoomError::Forbidden(_))),
            "{attempt}: {outcome:?}"
        );
        let events_after = count(
            &pool,
            "SELECT count(*) FROM events WHERE room_id = $1",
            room_id.as_str(),
        )
        .await;
        assert_eq!(
            events_after, events_before,
            "{attempt}: an event was written behind the purge"
        );
        // Unsealed for the next attempt (what a rolled-back seal would leave).
        sqlx::query("UPDATE rooms SET purging = false WHERE room_id = $1")
            .bind(room_id.as_str())
            .execute(&pool)
            .await
            .unwrap();
    }

    // Refused for the seal, not for anything else: the unsealed room takes writes.
    let written = writer
        .append(room_id.clone(), message("after unsealing"), None)
        .await;
    assert!(matches!(written, Ok(Outcome::Written(_))), "{written:?}");
}

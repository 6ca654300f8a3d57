//! The ordering invariant of the room writer (src/rooms/writer.rs) and its group commit,
//! against a real Postgres: two writers with their own connection pools (as two processes
//! would have) write concurrently while a reader polls; the reader must never see a
//! position before every lower position is visible.

mod support;

use std::time::Duration;

use hungryserv::config::DatabaseConfig;
use hungryserv::notify::Notifier;
use hungryserv::rooms::writer::{Outcome, Txn, Writer};
use hungryserv::store;
use ruma::OwnedRoomId;
use serde_json::json;
use support::proposal;

async fn pool(url: &str) -> sqlx::PgPool {
    let config = DatabaseConfig {
        url: url.to_owned(),
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    };
    store::connect(&config, "test.local").await.unwrap()
}

async fn new_room(writer: &Writer, n: usize) -> OwnedRoomId {
    let room_id = OwnedRoomId::try_from(format!("!hs_room{n}:test.local")).unwrap();
    support::create_room(writer, &room_id, "@bot:test.local").await;
    room_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_gap_under_concurrent_writers() {
    let url = support::fresh_database().await;
    let (pool_a, pool_b, reader) = (pool(&url).await, pool(&url).await, pool(&url).await);
    let (writer_a, _task_a) = Writer::start(pool_a, Notifier::new(0));
    let (writer_b, _task_b) = Writer::start(pool_b, Notifier::new(0));
    let rooms = [
        new_room(&writer_a, 1).await,
        new_room(&writer_b, 2).await,
        new_room(&writer_a, 3).await,
    ];

    const SENDERS: usize = 8;
    const PER_SENDER: usize = 150;
    let mut sends = tokio::task::JoinSet::new();
    for sender in 0..SENDERS {
        let writer = if sender % 2 == 0 {
            writer_a.clone()
        } else {
            writer_b.clone()
        };
        let room = rooms[sender % rooms.len()].clone();
        sends.spawn(async move {
            for n in 0..PER_SENDER {
                let event = proposal(
                    "@bot:test.local",
                    "m.room.message",
                    None,
                    json!({"body": format!("{sender}-{n}")}),
                );
                writer
                    .append(room.clone(), vec![event], None)
                    .await
                    .unwrap();
            }
        });
    }

    // Poll while the writers run: every read must continue exactly where the last ended.
    let mut seen: i64 = 0;
    let mut reads = 0;
    loop {
        let done = sends.is_empty();
        let positions: Vec<i64> =
            sqlx::query_scalar("SELECT stream FROM events WHERE stream > $1 ORDER BY stream")
                .bind(seen)
                .fetch_all(&reader)
                .await
                .unwrap();
        for position in positions {
            assert_eq!(
                position,
                seen + 1,
                "saw position {position} while {} was not visible",
                seen + 1
            );
            seen = position;
        }
        reads += 1;
        if done {
            break;
        }
        while let Some(result) = sends.try_join_next() {
            result.unwrap();
        }
        tokio::task::yield_now().await;
    }
    let total = i64::try_from(3 * 3 + SENDERS * PER_SENDER).unwrap();
    assert_eq!(seen, total, "every event written, positions dense");
    assert!(
        reads > 10,
        "the reader polled only {reads} times: the test did not overlap reads and writes"
    );
    // Per-room order: topo follows stream within each room.
    let inversions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events a JOIN events b ON a.room_id = b.room_id AND a.stream < b.stream AND a.topo > b.topo",
    )
    .fetch_one(&reader)
    .await
    .unwrap();
    assert_eq!(inversions, 0);
}

#[tokio::test]
async fn a_transaction_id_yields_one_event_even_when_sent_concurrently() {
    let url = support::fresh_database().await;
    let (writer, _task) = Writer::start(pool(&url).await, Notifier::new(0));
    let room = new_room(&writer, 1).await;
    let txn = Txn {
        scope: "@bot:test.local|DEVICE".into(),
        endpoint: room.to_string(),
        txn_id: "t1".into(),
    };
    let mut tries = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (writer, room, txn) = (writer.clone(), room.clone(), txn.clone());
        tries.spawn(async move {
            let event = proposal(
                "@bot:test.local",
                "m.room.message",
                None,
                json!({"body": "once"}),
            );
            match writer.append(room, vec![event], Some(txn)).await.unwrap() {
                Outcome::Written(events) => events[0].event_id.clone(),
                Outcome::Repeated(event_id) => event_id,
                Outcome::Existing(_) => panic!("a send answered like a batch"),
            }
        });
    }
    let ids: std::collections::HashSet<_> = tries.join_all().await.into_iter().collect();
    assert_eq!(ids.len(), 1, "one event id for one transaction: {ids:?}");
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE content->>'body' = 'once'")
            .fetch_one(&pool(&url).await)
            .await
            .unwrap();
    assert_eq!(count, 1);
    // Another scope may reuse the same txn id.
    let other = Txn {
        scope: "@bot:test.local|OTHER".into(),
        endpoint: room.to_string(),
        txn_id: "t1".into(),
    };
    let event = proposal(
        "@bot:test.local",
        "m.room.message",
        None,
        json!({"body": "twice"}),
    );
    assert!(matches!(
        writer.append(room, vec![event], Some(other)).await.unwrap(),
        Outcome::Written(_)
    ));
}

#[tokio::test]
async fn a_forbidden_job_fails_alone_in_its_batch() {
    let url = support::fresh_database().await;
    let (writer, _task) = Writer::start(pool(&url).await, Notifier::new(0));
    let room = new_room(&writer, 1).await;
    let mut jobs = tokio::task::JoinSet::new();
    for n in 0..40 {
        let (writer, room) = (writer.clone(), room.clone());
        jobs.spawn(async move {
            // Every fifth sender is not in the room.
            let sender = if n % 5 == 0 {
                "@stranger:test.local"
            } else {
                "@bot:test.local"
            };
            let event = proposal(sender, "m.room.message", None, json!({"body": n}));
            (n, writer.append(room, vec![event], None).await)
        });
    }
    for (n, result) in jobs.join_all().await {
        if n % 5 == 0 {
            let err = result.unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("User @stranger:test.local not in room"),
                "{err}"
            );
        } else {
            assert!(
                matches!(result, Ok(Outcome::Written(_))),
                "job {n}: {result:?}"
            );
        }
    }
}

/// The writer's counters (`/_hungryserv/metrics`) tell the paths apart: a room's creation is
/// an ordinary transaction, a plain message into a room the writer knows takes the fast path,
/// and a retried transaction ID makes the fast path decline (it does not look IDs up) and
/// the ordinary path answer the repeat.
#[tokio::test]
async fn the_writer_counts_its_transactions_by_path() {
    use std::sync::atomic::Ordering::Relaxed;
    let url = support::fresh_database().await;
    let (writer, _task) = Writer::start(pool(&url).await, Notifier::new(0));
    let counters = writer.counters();
    let paths = || {
        (
            counters.ordinary.load(Relaxed),
            counters.fast.load(Relaxed),
            counters.declined.load(Relaxed),
        )
    };
    let room = new_room(&writer, 1).await;
    assert_eq!(paths(), (1, 0, 0), "the room's creation");
    let txn = Txn {
        scope: "as:bridge|@bot:test.local".into(),
        endpoint: room.to_string(),
        txn_id: "t1".into(),
    };
    let send = |body: &str| {
        let event = proposal(
            "@bot:test.local",
            "m.room.message",
            None,
            json!({ "body": body }),
        );
        writer.append(room.clone(), vec![event], Some(txn.clone()))
    };
    let first = match send("first").await.unwrap() {
        Outcome::Written(events) => events[0].event_id.clone(),
        other => panic!("the first send was not written: {other:?}"),
    };
    assert_eq!(paths(), (1, 1, 0), "a plain message");
    match send("retried").await.unwrap() {
        Outcome::Repeated(event_id) => assert_eq!(event_id, first),
        other => panic!("the retry was not answered as a repeat: {other:?}"),
    }
    assert_eq!(paths(), (2, 1, 1), "a retried transaction ID");
}

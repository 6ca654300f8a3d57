//! Batch send through the room writer against a real Postgres: what lands in `events` is
//! exactly what was sent, in both write paths (binary `COPY` for big batches, the UNNEST
//! insert for small ones), with the backfilled and silent flags set in the insert; a batch
//! Postgres refuses leaves nothing behind; a repeated batch writes nothing.

mod support;

use std::time::Duration;

use hungryserv::config::DatabaseConfig;
use hungryserv::notify::Notifier;
use hungryserv::rooms::RoomError;
use hungryserv::rooms::writer::{BatchJob, Outcome, Placement, Writer};
use hungryserv::store;
use hungryserv::store::events::COPY_MIN_EVENTS;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId};
use serde_json::{Map, Value, json};
use support::proposal;

const BOT: &str = "@bot:test.local";

async fn setup() -> (sqlx::PgPool, Writer, OwnedRoomId) {
    let url = support::fresh_database().await;
    let config = DatabaseConfig {
        url,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    };
    let pool = store::connect(&config, "test.local").await.unwrap();
    let (writer, _task) = Writer::start(pool.clone(), Notifier::new(0));
    let room_id = OwnedRoomId::try_from("!hs_batch:test.local").unwrap();
    support::create_room(&writer, &room_id, BOT).await;
    (pool, writer, room_id)
}

/// Content that exercises the binary encoding: escapes, non-ASCII, nesting, numbers, a
/// relation (extracted into its own columns).
fn content(n: usize) -> Value {
    json!({
        "msgtype": "m.text",
        "body": format!("message {n}\ttab\nnewline \\ backslash \"quote\" ünïcødé 🎉"),
        "nested": {"list": [1, -2, 9_007_199_254_740_991_i64, null, true, "x"], "empty": {}},
        "m.relates_to": {"rel_type": "m.thread", "event_id": "$root:test.local"},
    })
}

fn job(room_id: &OwnedRoomId, tag: &str, count: usize, placement: Placement) -> BatchJob {
    let events = (0..count)
        .map(|n| {
            let mut event = proposal(
                &format!("@ghost_{}:test.local", n % 3),
                "m.room.message",
                None,
                content(n),
            );
            event.origin_server_ts = 1_500_000_000_000 + n as i64;
            let id = OwnedEventId::try_from(format!("${tag}{n}:bridge.example")).unwrap();
            (event, Some(id))
        })
        .collect();
    BatchJob {
        room_id: room_id.clone(),
        by: OwnedUserId::try_from(BOT).unwrap(),
        events,
        placement,
        mark_read_by: None,
        silent: true,
    }
}

type Row = (
    String,
    i64,
    String,
    String,
    i64,
    Value,
    Option<String>,
    Option<String>,
    bool,
    bool,
);

/// The rows of events whose ID starts with `$tag`, in topological order.
async fn rows(pool: &sqlx::PgPool, tag: &str) -> Vec<Row> {
    sqlx::query_as(
        "SELECT event_id, topo, sender, type, origin_server_ts, content, relates_to, rel_type,
                backfilled, silent
         FROM events WHERE event_id LIKE $1 AND state_key IS NULL ORDER BY topo",
    )
    .bind(format!("${tag}%"))
    .fetch_all(pool)
    .await
    .unwrap()
}

fn check_rows(rows: &[Row], job: &BatchJob, backfilled: bool, silent: bool) {
    assert_eq!(rows.len(), job.events.len());
    let topos: Vec<i64> = rows.iter().map(|row| row.1).collect();
    assert!(
        topos.windows(2).all(|w| w[1] == w[0] + 1),
        "dense topo: {topos:?}"
    );
    for (row, (sent, id)) in rows.iter().zip(&job.events) {
        assert_eq!(row.0, id.as_ref().unwrap().as_str(), "request order");
        assert_eq!(row.2, sent.sender.as_str());
        assert_eq!(row.3, sent.kind);
        assert_eq!(row.4, sent.origin_server_ts);
        assert_eq!(row.5, Value::Object(sent.content.clone()));
        assert_eq!(row.6.as_deref(), Some("$root:test.local"));
        assert_eq!(row.7.as_deref(), Some("m.thread"));
        assert_eq!((row.8, row.9), (backfilled, silent), "flags of {}", row.0);
    }
}

#[tokio::test]
async fn both_write_paths_store_exactly_the_batch() {
    let (pool, writer, room_id) = setup().await;
    // Small: the UNNEST insert; big: COPY. Forward ones with and without notifications
    // (the silent flag), backward ones (the backfilled flag).
    let small = job(&room_id, "fewquiet", 5, Placement::Forward);
    let mut small_loud = job(&room_id, "fewloud", 5, Placement::Forward);
    small_loud.silent = false;
    let big_forward = job(&room_id, "manyquiet", COPY_MIN_EVENTS, Placement::Forward);
    let mut big_loud = job(&room_id, "manyloud", COPY_MIN_EVENTS, Placement::Forward);
    big_loud.silent = false;
    let big = job(
        &room_id,
        "history",
        COPY_MIN_EVENTS * 3,
        Placement::Backward,
    );
    assert!(small.events.len() < COPY_MIN_EVENTS);
    for sent in [&small, &small_loud, &big_forward, &big_loud, &big] {
        match writer.batch(sent.clone()).await.unwrap() {
            Outcome::Written(events) => {
                let ids: Vec<_> = events.iter().map(|e| Some(e.event_id.clone())).collect();
                let sent_ids: Vec<_> = sent.events.iter().map(|(_, id)| id.clone()).collect();
                assert_eq!(ids, sent_ids);
            }
            other => panic!("expected a write, got {other:?}"),
        }
    }
    check_rows(&rows(&pool, "fewquiet").await, &small, false, true);
    check_rows(&rows(&pool, "fewloud").await, &small_loud, false, false);
    check_rows(&rows(&pool, "manyquiet").await, &big_forward, false, true);
    check_rows(&rows(&pool, "manyloud").await, &big_loud, false, false);
    let big_rows = rows(&pool, "history").await;
    check_rows(&big_rows, &big, true, false);
    // Backward: the whole batch sits before everything else in the room.
    let min_other: i64 = sqlx::query_scalar(
        "SELECT min(topo) FROM events WHERE room_id = $1 AND event_id NOT LIKE '$history%'",
    )
    .bind(room_id.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(big_rows.last().unwrap().1, min_other - 1);
    let counters: (i64, i64) =
        sqlx::query_as("SELECT min_topo, latest_stream FROM rooms WHERE room_id = $1")
            .bind(room_id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();
    let max_stream: i64 = sqlx::query_scalar("SELECT max(stream) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(counters, (big_rows[0].1, max_stream));

    // A repeat of the whole batch is answered with its IDs and writes nothing.
    match writer.batch(big.clone()).await.unwrap() {
        Outcome::Existing(ids) => assert_eq!(ids.len(), big.events.len()),
        other => panic!("expected the existing IDs, got {other:?}"),
    }
    assert_eq!(rows(&pool, "history").await.len(), big.events.len());

    // One reused ID among new ones: the batch is refused whole, in both paths.
    for size in [3, COPY_MIN_EVENTS] {
        let tag = format!("clash{size}_");
        let mut clash = job(&room_id, &tag, size, Placement::Backward);
        clash.events[1].1 = big.events[7].1.clone();
        match writer.batch(clash).await {
            Err(RoomError::InvalidParam(message)) => assert!(message.contains("already exists")),
            other => panic!("expected M_INVALID_PARAM, got {other:?}"),
        }
        assert!(rows(&pool, &tag).await.is_empty());
    }
}

#[tokio::test]
async fn a_batch_postgres_refuses_leaves_nothing() {
    let (pool, writer, room_id) = setup().await;
    let count = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = count(pool.clone()).await;
    for size in [3, COPY_MIN_EVENTS * 2] {
        // jsonb refuses \u0000 in a string, whatever the path: the last event sinks the batch.
        let mut bad = job(&room_id, &format!("bad{size}_"), size, Placement::Backward);
        let mut nul = Map::new();
        nul.insert("body".into(), Value::String("nul \u{0} byte".into()));
        bad.events.last_mut().unwrap().0.content = nul;
        assert!(writer.batch(bad).await.is_err(), "size {size}");
        assert_eq!(count(pool.clone()).await, before, "size {size}");
    }
    // The writer carries on, and the room's counters were not moved by the failures.
    let good = job(&room_id, "good", COPY_MIN_EVENTS, Placement::Backward);
    assert!(matches!(
        writer.batch(good.clone()).await.unwrap(),
        Outcome::Written(_)
    ));
    check_rows(&rows(&pool, "good").await, &good, true, false);
    let gap: i64 = sqlx::query_scalar(
        "SELECT min(topo) FILTER (WHERE event_id NOT LIKE '$good%')
              - max(topo) FILTER (WHERE event_id LIKE '$good%') FROM events WHERE room_id = $1",
    )
    .bind(room_id.as_str())
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(gap, 1);
}

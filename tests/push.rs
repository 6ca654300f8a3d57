//! Unread counts of local rooms against a real Postgres (`HUNGRYSERV_TEST_DATABASE_URL`, set
//! by `compat-tests/run`): receipts (threaded and not) against recorded notifications, the
//! join as the first receipt, and the events the push task has not reached yet; pruning of
//! read notifications; the push task reading a room again after its state changed.

mod support;

use std::time::Duration;

use hungryserv::config::{DatabaseConfig, LimitsConfig, SynapseConfig};
use hungryserv::notify::{Commit, Notifier};
use hungryserv::push::counts::{Count, unread_of_rooms};
use hungryserv::push::{Push, gateway, task::PushTask};
use hungryserv::store::{self, push::PushAction};
use hungryserv::upstream::Synapse;
use ruma::UserId;
use ruma::push::Ruleset;
use serde_json::json;
use sqlx::PgPool;

const ROOM: &str = "!hs_counts:one.example";
const ALICE: &str = "@alice:one.example";
const BOB: &str = "@bob:one.example";

async fn database() -> PgPool {
    let config = DatabaseConfig {
        url: support::fresh_database().await,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
    };
    store::connect(&config, "one.example").await.unwrap()
}

/// Writes event `stream` (`$e{stream}`) of the room by `sender` with `content`.
async fn event(
    pool: &PgPool,
    stream: i64,
    sender: &str,
    kind: &str,
    key: Option<&str>,
    content: serde_json::Value,
) {
    event_in(pool, ROOM, stream, sender, kind, key, content).await;
}

/// Writes event `stream` (`$e{stream}`) of `room` by `sender` with `content`.
async fn event_in(
    pool: &PgPool,
    room: &str,
    stream: i64,
    sender: &str,
    kind: &str,
    key: Option<&str>,
    content: serde_json::Value,
) {
    sqlx::query(
        "INSERT INTO events (stream, room_id, topo, event_id, type, state_key, sender,
                             origin_server_ts, content)
         VALUES ($1, $2, $1, '$e' || $1, $3, $4, $5, $1, $6)",
    )
    .bind(stream)
    .bind(room)
    .bind(kind)
    .bind(key)
    .bind(sender)
    .bind(content)
    .execute(pool)
    .await
    .unwrap();
}

/// A fresh database with the room, the push task's position at `position`.
async fn room_recorded_upto(position: i64) -> PgPool {
    let pool = database().await;
    room(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    store::push::position(&mut conn, position).await.unwrap();
    drop(conn);
    pool
}

/// The room, Bob and Alice joined at 1 and 2.
async fn room(pool: &PgPool) {
    room_row(pool, ROOM, BOB).await;
    for (stream, user) in [(1, BOB), (2, ALICE)] {
        joined(pool, ROOM, stream, user).await;
    }
}

/// The `rooms` row of `room`, created by `creator`.
async fn room_row(pool: &PgPool, room: &str, creator: &str) {
    sqlx::query(
        "INSERT INTO rooms (room_id, class, room_version, creator, max_topo, min_topo, latest_stream)
         VALUES ($1, 'bridge', '10', $2, 0, 0, 0)",
    )
    .bind(room)
    .bind(creator)
    .execute(pool)
    .await
    .unwrap();
}

/// `user` joins `room` with event `stream`: the member event and the membership.
async fn joined(pool: &PgPool, room: &str, stream: i64, user: &str) {
    event_in(
        pool,
        room,
        stream,
        user,
        "m.room.member",
        Some(user),
        json!({"membership": "join"}),
    )
    .await;
    sqlx::query(
        "INSERT INTO memberships (room_id, user_id, membership, stream) VALUES ($1, $2, 'join', $3)",
    )
    .bind(room)
    .bind(user)
    .bind(stream)
    .execute(pool)
    .await
    .unwrap();
}

async fn receipt(pool: &PgPool, thread: &str, stream: i64) {
    sqlx::query(
        "INSERT INTO receipts (room_id, user_id, type, thread_id, event_id, stream, ts)
         VALUES ($1, $2, 'm.read', $3, '$e' || $4, $4, 0)
         ON CONFLICT (room_id, user_id, type, thread_id) DO UPDATE SET event_id = EXCLUDED.event_id",
    )
    .bind(ROOM)
    .bind(ALICE)
    .bind(thread)
    .bind(stream)
    .execute(pool)
    .await
    .unwrap();
}

fn action(stream: i64, thread: &str, highlight: bool) -> PushAction {
    PushAction {
        user_id: ALICE.into(),
        room_id: ROOM.into(),
        stream,
        event_id: format!("$e{stream}"),
        thread_id: thread.into(),
        highlight,
        actions: json!(["notify"]),
        ts: stream,
    }
}

async fn counts(pool: &PgPool, upto: i64) -> (Count, Count, Option<Count>) {
    let mut conn = pool.acquire().await.unwrap();
    let alice = UserId::parse(ALICE).unwrap();
    let all = unread_of_rooms(&mut conn, &alice, &[ROOM.to_owned()], upto)
        .await
        .unwrap();
    let room = all.get(ROOM).cloned().unwrap_or_default();
    (room.total, room.main, room.threads.get("$e3").copied())
}

fn count(notifications: i64, highlights: i64) -> Count {
    Count {
        notifications,
        highlights,
    }
}

/// A room with messages 3..=`last` by Bob, and `recorded` as the push task's records up to
/// `last`.
async fn recorded_room(last: i64, recorded: &[PushAction]) -> PgPool {
    let pool = database().await;
    room(&pool).await;
    let text = json!({"msgtype": "m.text", "body": "x"});
    for stream in 3..=last {
        event(&pool, stream, BOB, "m.room.message", None, text.clone()).await;
    }
    let mut conn = pool.acquire().await.unwrap();
    store::push::insert_actions(&mut conn, recorded)
        .await
        .unwrap();
    store::push::position(&mut conn, last).await.unwrap();
    drop(conn);
    pool
}

#[tokio::test]
async fn receipts_reset_recorded_notifications_per_thread() {
    // 3, 4 (highlight), 6 in the main timeline; 5 and 7 in the thread of 3.
    let recorded = [
        action(3, "main", false),
        action(4, "main", true),
        action(5, "$e3", false),
        action(6, "main", false),
        action(7, "$e3", false),
    ];
    let pool = recorded_room(7, &recorded).await;

    assert_eq!(
        counts(&pool, 7).await,
        (count(5, 1), count(3, 1), Some(count(2, 0)))
    );
    assert_eq!(
        counts(&pool, 5).await.0,
        count(3, 1),
        "only what is at or before the position"
    );
    receipt(&pool, "main", 4).await;
    assert_eq!(
        counts(&pool, 7).await,
        (count(3, 0), count(1, 0), Some(count(2, 0)))
    );
    receipt(&pool, "$e3", 5).await;
    assert_eq!(
        counts(&pool, 7).await,
        (count(2, 0), count(1, 0), Some(count(1, 0)))
    );
    receipt(&pool, "", 6).await;
    assert_eq!(
        counts(&pool, 7).await,
        (count(1, 0), count(0, 0), Some(count(1, 0)))
    );
}

#[tokio::test]
async fn events_the_push_task_has_not_reached_are_evaluated_for_the_count() {
    let pool = room_recorded_upto(2).await;
    event(
        &pool,
        3,
        BOB,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "hi"}),
    )
    .await;
    let mention = json!({"msgtype": "m.text", "body": "hey", "m.mentions": {"user_ids": [ALICE]}});
    event(&pool, 4, BOB, "m.room.message", None, mention).await;
    event(
        &pool,
        5,
        ALICE,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "mine"}),
    )
    .await;
    event(
        &pool,
        6,
        BOB,
        "m.room.message",
        None,
        json!({"msgtype": "m.notice", "body": "bot"}),
    )
    .await;
    sqlx::query("UPDATE events SET silent = true WHERE stream = 6")
        .execute(&pool)
        .await
        .unwrap();
    // Default rules (never learned): 3 notifies, 4 highlights, 5 is Alice's own, 6 is silent.
    assert_eq!(counts(&pool, 6).await.0, count(2, 1));
    receipt(&pool, "", 3).await;
    assert_eq!(counts(&pool, 6).await.0, count(1, 1));
    sqlx::query(
        "INSERT INTO room_account_data (user_id, room_id, type, content, stream)
         VALUES ($1, $2, 'com.beeper.mute', '{\"muted_until\": -1}', 1)",
    )
    .bind(ALICE)
    .bind(ROOM)
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(
        counts(&pool, 6).await.0,
        count(0, 0),
        "a muted room counts nothing"
    );
}

/// The push task commits its records and its position together. A count taken while that
/// commit happens must see the event either as recorded or as not yet reached, never as
/// neither. The test holds the position table locked, lets the count block on it, commits
/// "the task's" record and position, and only then releases the count: the reads happen on
/// both sides of the commit in the order the count makes them.
#[tokio::test]
async fn a_count_racing_the_push_task_commit_sees_the_event_once() {
    let pool = room_recorded_upto(2).await;
    let text = json!({"msgtype": "m.text", "body": "hi"});
    event(&pool, 3, BOB, "m.room.message", None, text).await;

    let mut task = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE push_position IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *task)
        .await
        .unwrap();
    let counting = tokio::spawn({
        let pool = pool.clone();
        async move { counts(&pool, 3).await.0 }
    });
    // Wait until the count is blocked on the lock.
    let blocked = async {
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                 WHERE c.relname = 'push_position' AND NOT l.granted",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            if waiting > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the count never read the push position");
    store::push::insert_actions(&mut task, &[action(3, "main", false)])
        .await
        .unwrap();
    store::push::set_position(&mut task, 3).await.unwrap();
    task.commit().await.unwrap();
    assert_eq!(
        counting.await.unwrap(),
        count(1, 0),
        "the message is counted exactly once"
    );
}

/// Pruning deletes exactly the plain notifications that are read and a day old: never an
/// unread one (so the counts do not change), never a highlight, never a recent one.
#[tokio::test]
async fn pruning_deletes_only_old_read_plain_notifications() {
    const NOW: i64 = 1_000_000_000_000;
    let recent = PushAction {
        ts: NOW - 1_000,
        ..action(8, "main", false)
    };
    let recorded = [
        action(3, "main", false),
        action(4, "main", true),
        action(5, "$e3", false),
        action(6, "main", false),
        action(7, "$e3", false),
        recent,
        action(9, "main", false),
        // Bob has no receipt: his own join (stream 1) covers only what is at or before it,
        // and Alice's receipts cover nothing of his.
        PushAction {
            user_id: BOB.into(),
            ..action(1, "main", false)
        },
        PushAction {
            user_id: BOB.into(),
            ..action(3, "main", false)
        },
    ];
    let pool = recorded_room(9, &recorded).await;
    // Main timeline read up to 8, the thread of 3 up to 5.
    receipt(&pool, "main", 8).await;
    receipt(&pool, "$e3", 5).await;
    let before = counts(&pool, 9).await;

    let deleted = hungryserv::push::prune::prune(&pool, NOW).await.unwrap();
    assert_eq!(deleted, 4);
    let left = |user: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT stream FROM push_actions WHERE user_id = $1 ORDER BY stream",
            )
            .bind(user)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    // 3 and 6 (read main), 5 (read thread) went; 4 is a highlight, 7 an unread thread
    // message, 8 read but recent, 9 unread.
    assert_eq!(left(ALICE).await, vec![4, 7, 8, 9]);
    assert_eq!(left(BOB).await, vec![3], "Bob's join covers 1 only");
    assert_eq!(counts(&pool, 9).await, before, "the counts did not change");
    assert_eq!(before, (count(2, 0), count(1, 0), Some(count(1, 0))));
    assert_eq!(
        hungryserv::push::prune::prune(&pool, NOW).await.unwrap(),
        0,
        "nothing more to prune"
    );
}

/// Runs the push task over the room, as the process does, with no appservices and no Synapse
/// to learn rules from (the default rules apply).
fn start_push_task(pool: &PgPool, notifier: &Notifier) -> tokio::task::JoinHandle<()> {
    let synapse = Synapse::new(
        &SynapseConfig {
            base: "127.0.0.1:9".parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(1),
            pool_idle_timeout: Duration::from_secs(1),
            pool_max_idle: 1,
            whoami_timeout: Duration::from_secs(1),
            sync_grace: Duration::from_secs(1),
        },
        &LimitsConfig {
            max_forward_body_bytes: None,
            max_local_body_bytes: 1 << 20,
        },
    );
    let (push, _learner) = Push::new(pool.clone(), synapse);
    tokio::spawn(
        PushTask {
            db: pool.clone(),
            notifier: notifier.clone(),
            server_name: "one.example".into(),
            registrations: Vec::new(),
            client: gateway::client(None).unwrap(),
            push,
            classes: std::sync::Arc::new(hungryserv::routing::LiveClasses::new(
                &hungryserv::config::RoutingConfig::default(),
                "one.example",
            )),
        }
        .run(),
    )
}

/// Tells the task that `stream` is committed and waits until it has evaluated it; returns
/// Alice's highlight flag for it (`None`: no notification).
async fn evaluated(pool: &PgPool, notifier: &Notifier, stream: i64) -> Option<bool> {
    notifier.committed(
        stream,
        Commit {
            rooms: vec![(ROOM.into(), stream)],
            members: Vec::new(),
        },
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let at: i64 = sqlx::query_scalar("SELECT stream FROM push_position")
            .fetch_one(pool)
            .await
            .unwrap();
        if at >= stream {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the push task did not reach {stream}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sqlx::query_scalar("SELECT highlight FROM push_actions WHERE user_id = $1 AND stream = $2")
        .bind(ALICE)
        .bind(stream)
        .fetch_optional(pool)
        .await
        .unwrap()
}

/// The push task keeps what it read of a room (members, names, power levels) between batches.
/// A state event and a redaction must each make it read the room again: here Alice's display
/// name, which the default rules highlight, is set by a member event and taken away again by
/// redacting it. With a cache that outlived either, the highlights would be wrong.
#[tokio::test]
async fn the_push_task_reads_a_room_again_after_its_state_changes() {
    let pool = room_recorded_upto(2).await;
    // Synapse's defaults still hold the display name rule (ruma's, after Matrix 1.7, do not).
    let alice = UserId::parse(ALICE).unwrap();
    let mut rules = json!({"global": Ruleset::server_default(&alice)});
    rules["global"]["override"]
        .as_array_mut()
        .unwrap()
        .push(json!({
            "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
            "conditions": [{"kind": "contains_display_name"}],
            "actions": ["notify", {"set_tweak": "highlight"}],
        }));
    let mut conn = pool.acquire().await.unwrap();
    store::push::save_rules(&mut conn, ALICE, &rules)
        .await
        .unwrap();
    drop(conn);
    let notifier = Notifier::new(2);
    let task = start_push_task(&pool, &notifier);
    let zed = json!({"msgtype": "m.text", "body": "hello Zed"});

    event(&pool, 3, BOB, "m.room.message", None, zed.clone()).await;
    assert_eq!(
        evaluated(&pool, &notifier, 3).await,
        Some(false),
        "Alice has no display name yet: a plain notification"
    );

    let named = json!({"membership": "join", "displayname": "Zed"});
    event(&pool, 4, ALICE, "m.room.member", Some(ALICE), named).await;
    sqlx::query("UPDATE memberships SET stream = 4 WHERE user_id = $1")
        .bind(ALICE)
        .execute(&pool)
        .await
        .unwrap();
    evaluated(&pool, &notifier, 4).await;
    event(&pool, 5, BOB, "m.room.message", None, zed.clone()).await;
    assert_eq!(
        evaluated(&pool, &notifier, 5).await,
        Some(true),
        "Alice is now called Zed: the message highlights"
    );

    // Redacting the member event prunes the display name (as the writer does: the content is
    // pruned in place and the redaction is an event of the room).
    sqlx::query(
        "UPDATE events SET content = '{\"membership\": \"join\"}', redacted_by = '$e6'
         WHERE stream = 4",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO events (stream, room_id, topo, event_id, type, sender, origin_server_ts,
                             content, redacts)
         VALUES (6, $1, 6, '$e6', 'm.room.redaction', $2, 6, '{}', '$e4')",
    )
    .bind(ROOM)
    .bind(BOB)
    .execute(&pool)
    .await
    .unwrap();
    evaluated(&pool, &notifier, 6).await;
    event(&pool, 7, BOB, "m.room.message", None, zed).await;
    assert_eq!(
        evaluated(&pool, &notifier, 7).await,
        Some(false),
        "the display name was redacted: no highlight"
    );
    task.abort();
}

/// The push task reads in full only the events someone is evaluated for (it judges the rest by
/// their heads). Still evaluated: an invite of a local user into a room with no local members
/// (`.m.rule.invite_for_me`); not evaluated: a message there, and a silent message (a batch
/// send without notifications) in Alice's room.
#[tokio::test]
async fn the_push_task_evaluates_invites_into_rooms_without_recipients_and_skips_silent_events() {
    let pool = room_recorded_upto(2).await;
    const REMOTE_ROOM: &str = "!hs_remote:one.example";
    const GHOST: &str = "@ghost:other.example";
    room_row(&pool, REMOTE_ROOM, GHOST).await;
    joined(&pool, REMOTE_ROOM, 3, GHOST).await;
    let notifier = Notifier::new(2);
    let task = start_push_task(&pool, &notifier);

    let hello = json!({"msgtype": "m.text", "body": "hello"});
    event_in(
        &pool,
        REMOTE_ROOM,
        4,
        GHOST,
        "m.room.message",
        None,
        hello.clone(),
    )
    .await;
    assert_eq!(evaluated(&pool, &notifier, 4).await, None);
    let invite = json!({"membership": "invite"});
    event_in(
        &pool,
        REMOTE_ROOM,
        5,
        GHOST,
        "m.room.member",
        Some(ALICE),
        invite,
    )
    .await;
    assert_eq!(
        evaluated(&pool, &notifier, 5).await,
        Some(false),
        "Alice's invite notifies her although no local user is in the room"
    );

    event(&pool, 6, BOB, "m.room.message", None, hello.clone()).await;
    sqlx::query("UPDATE events SET silent = true WHERE stream = 6")
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        evaluated(&pool, &notifier, 6).await,
        None,
        "a silent message"
    );
    event(&pool, 7, BOB, "m.room.message", None, hello).await;
    assert_eq!(
        evaluated(&pool, &notifier, 7).await,
        Some(false),
        "an ordinary message notifies Alice"
    );
    task.abort();
}

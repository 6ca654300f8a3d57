//! The room list a sync starts from (`store::rooms::user_rooms`), against a real Postgres
//! (`HUNGRYSERV_TEST_DATABASE_URL`). It is read on every wake-up of a waiting sync, so it skips
//! work for the rooms where nothing happened; here it is compared, for every pair of positions
//! `since < upto` that matters, with the plain query it replaced, which probes every room three
//! times. Both ways to find the rooms with new events (scanning the gap, probing each room)
//! must agree with it, and the incremental read of only the changed rooms
//! (`changed_user_rooms`) must give the same rows for every room with news in the gap.

mod support;

use std::time::Duration;

use hungryserv::config::DatabaseConfig;
use hungryserv::notify::Notifier;
use hungryserv::rooms::writer::Writer;
use hungryserv::store::{self, rooms::GapRead, rooms::UserRoom};
use ruma::OwnedRoomId;
use serde_json::json;
use sqlx::PgPool;
use support::proposal;

const BOT: &str = "@bot:test.local";
const USER: &str = "@user:test.local";

/// Room, member stream, sender, membership, membership before, latest.
type ReferenceRow = (
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
    Option<i64>,
);

/// The query `user_rooms` replaced: every room of the user, its member event at or before
/// `upto`, the one at or before `since` and its latest event in the gap, each by a probe.
async fn reference(pool: &PgPool, since: i64, upto: i64) -> Vec<UserRoom> {
    let rows: Vec<ReferenceRow> = sqlx::query_as(
        "SELECT m.room_id, me.stream, me.sender, me.content->>'membership',
                    (SELECT b.content->>'membership' FROM events b
                     WHERE b.room_id = m.room_id AND b.type = 'm.room.member'
                       AND b.state_key = m.user_id AND b.stream <= $2
                     ORDER BY b.stream DESC LIMIT 1),
                    (SELECT max(l.stream) FROM events l
                     WHERE l.room_id = m.room_id AND l.stream > $2 AND l.stream <= $3)
             FROM memberships m
             CROSS JOIN LATERAL (
                 SELECT e.stream, e.sender, e.content FROM events e
                 WHERE e.room_id = m.room_id AND e.type = 'm.room.member'
                   AND e.state_key = m.user_id AND e.stream <= $3
                 ORDER BY e.stream DESC LIMIT 1) me
             WHERE m.user_id = $1
             ORDER BY m.room_id",
    )
    .bind(USER)
    .bind(since)
    .bind(upto)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(
            |(room_id, member_stream, sender, membership, before, latest)| UserRoom {
                room_id,
                membership: membership.unwrap_or_else(|| "leave".into()),
                member_stream,
                // Documented as left out where no sync needs it.
                member_sender: if since > 0 && member_stream <= since {
                    String::new()
                } else {
                    sender
                },
                membership_before: before,
                latest,
            },
        )
        .collect()
}

async fn max_stream(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT max(stream) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn member(writer: &Writer, room: &OwnedRoomId, sender: &str, membership: &str) {
    writer
        .append(
            room.clone(),
            vec![proposal(
                sender,
                "m.room.member",
                Some(USER),
                json!({ "membership": membership }),
            )],
            None,
        )
        .await
        .unwrap();
}

async fn messages(writer: &Writer, room: &OwnedRoomId, count: usize) {
    let events: Vec<_> = (0..count)
        .map(|n| {
            proposal(
                BOT,
                "m.room.message",
                None,
                json!({"body": format!("m{n}")}),
            )
        })
        .collect();
    for chunk in events.chunks(50) {
        writer
            .append(room.clone(), chunk.to_vec(), None)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn the_room_list_agrees_with_probing_every_room() {
    let config = DatabaseConfig {
        url: support::fresh_database().await,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(10),
    };
    let pool = store::connect(&config, "test.local").await.unwrap();
    let (writer, _task) = Writer::start(pool.clone(), Notifier::new(0));
    let rooms: Vec<OwnedRoomId> = ["a", "b", "c", "d"]
        .iter()
        .map(|r| OwnedRoomId::try_from(format!("!hs_{r}:test.local")).unwrap())
        .collect();
    let [a, b, c, d] = &rooms[..] else {
        unreachable!()
    };
    for room in &rooms {
        support::create_room(&writer, room, BOT).await;
    }
    let mut marks = vec![max_stream(&pool).await];
    for room in [a, b] {
        member(&writer, room, BOT, "invite").await;
        member(&writer, room, USER, "join").await;
    }
    marks.push(max_stream(&pool).await);
    // More events than the gap scan reads at once, in one room.
    messages(&writer, a, 300).await;
    marks.push(max_stream(&pool).await);
    member(&writer, c, BOT, "invite").await;
    messages(&writer, b, 3).await;
    marks.push(max_stream(&pool).await);
    member(&writer, b, USER, "leave").await;
    messages(&writer, d, 2).await; // a room the user is not in
    marks.push(max_stream(&pool).await);
    messages(&writer, a, 1).await;
    let synced = max_stream(&pool).await;
    marks.push(synced);
    // After the sync's position: a membership newer than the sync, which it must not see.
    member(&writer, a, USER, "leave").await;
    member(&writer, c, USER, "join").await;
    let end = max_stream(&pool).await;
    marks.push(end);

    // Every position around the marks, as `since` and `upto`.
    let mut positions: Vec<i64> = marks
        .iter()
        .flat_map(|m| [m - 1, *m, m + 1])
        .chain([0])
        .filter(|p| (0..=end).contains(p))
        .collect();
    positions.sort();
    positions.dedup();
    let mut conn = pool.acquire().await.unwrap();
    let mut compared = 0;
    let mut compared_changed = 0;
    for &since in &positions {
        for &upto in positions.iter().filter(|&&u| u > since) {
            let want = reference(&pool, since, upto).await;
            for gap in [GapRead::Scan, GapRead::Probe] {
                let got = store::rooms::user_rooms_read(&mut conn, USER, since, upto, gap)
                    .await
                    .unwrap();
                assert_eq!(got, want, "since {since} upto {upto} by {gap:?}");
            }
            let chosen = store::rooms::user_rooms(&mut conn, USER, since, upto)
                .await
                .unwrap();
            assert_eq!(chosen, want, "since {since} upto {upto}");
            // The incremental read of the changed rooms only: the same rows, and at least
            // every room with an event or a membership change in the gap.
            let changed =
                store::rooms::changed_user_rooms(&mut conn, USER, (since, upto), (0, 0), &[])
                    .await
                    .unwrap();
            if let Some(changed) = changed {
                for room in &changed {
                    assert!(want.contains(room), "since {since} upto {upto}: {room:?}");
                }
                for room in want
                    .iter()
                    .filter(|r| r.latest.is_some() || r.member_stream > since)
                {
                    assert!(
                        changed.contains(room),
                        "since {since} upto {upto}: {room:?} missed"
                    );
                }
                compared_changed += 1;
            } else {
                assert!(
                    since == 0 || upto - since > 256,
                    "since {since} upto {upto}"
                );
            }
            compared += 1;
        }
    }
    assert!(compared > 100, "{compared}");
    assert!(compared_changed > 50, "{compared_changed}");

    // What the comparison covers, spelled out at the sync's position.
    let at_sync = store::rooms::user_rooms(&mut conn, USER, marks[3], synced)
        .await
        .unwrap();
    let by_room = |room: &OwnedRoomId| {
        at_sync
            .iter()
            .find(|r| r.room_id == room.as_str())
            .unwrap_or_else(|| panic!("{room} missing"))
    };
    // Room a: the leave after the sync is not seen; its new message is.
    assert_eq!(by_room(a).membership, "join");
    assert_eq!(by_room(a).membership_before.as_deref(), Some("join"));
    assert_eq!(by_room(a).latest, Some(synced));
    // Room b: left in the gap, after being joined.
    assert_eq!(by_room(b).membership, "leave");
    assert_eq!(by_room(b).membership_before.as_deref(), Some("join"));
    assert_eq!(by_room(b).member_sender, USER);
    // Room c: still the invite (the join came after the sync), older than the gap.
    assert_eq!(by_room(c).membership, "invite");
    assert_eq!(by_room(c).latest, None);
    assert!(at_sync.iter().all(|r| r.room_id != d.as_str()));
}

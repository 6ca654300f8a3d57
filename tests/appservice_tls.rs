//! Appservice delivery to `https://` URLs (src/appservice/client.rs), against a real Postgres
//! (`HUNGRYSERV_TEST_DATABASE_URL`): a bridge listening with TLS, its certificate issued by a
//! private CA made here, gets its transaction when that CA is `appservice.extra_ca_file`; when
//! it is not, the handshake fails on the certificate, nothing reaches the bridge, and the
//! transaction stays stored for a retry.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hungryserv::appservice::Delivery;
use hungryserv::appservice::pusher::Stats;
use hungryserv::notify::Notifier;
use hungryserv::rooms::auth::Proposal;
use hungryserv::rooms::writer::NewRoom;
use hungryserv::tasks::Tasks;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};
use sqlx::PgPool;
use support::tls::{Received, https_server, private_ca};

const BOT: &str = "@tlsbot:test.local";

/// Starts delivery to `https://{bridge}` (with `extra_ca_file` when given) on a fresh
/// database, waits until the pusher has its cursor, then creates a room whose events the
/// appservice wants (its bot sends them). Returns what the test needs to look at, and the
/// tasks (the pusher stops when they are dropped).
async fn deliver_a_room(
    bridge: SocketAddr,
    extra_ca_file: Option<&Path>,
) -> (
    PgPool,
    Notifier,
    Delivery,
    OwnedRoomId,
    std::sync::Arc<Tasks>,
) {
    let appservice = match extra_ca_file {
        Some(file) => format!("[appservice]\nmax_retry_interval_s = 1\nextra_ca_file = {file:?}\n"),
        None => "[appservice]\nmax_retry_interval_s = 1\n".to_owned(),
    };
    let support::Delivering {
        pool,
        notifier,
        writer,
        delivery,
        tasks,
    } = support::start_delivery(
        &format!(
            "id: tls\nurl: https://{bridge}\nas_token: as-secret\nhs_token: hs-secret\n\
             sender_localpart: tlsbot\nnamespaces:\n  users:\n    - regex: '@tls_.*'\n      exclusive: true\n"
        ),
        &appservice,
    )
    .await;
    let room_id = OwnedRoomId::try_from("!hs_tls:test.local").unwrap();
    let proposal = |kind: &str, state_key: &str, content: Value| Proposal {
        sender: OwnedUserId::try_from(BOT).unwrap(),
        kind: kind.into(),
        state_key: Some(state_key.into()),
        content: content.as_object().unwrap().clone(),
        origin_server_ts: 1_700_000_000_000,
        redacts: None,
    };
    writer
        .create(
            NewRoom {
                room_id: room_id.clone(),
                class: "bridge".into(),
                creator: OwnedUserId::try_from(BOT).unwrap(),
                appservice_id: Some("tls".into()),
                aliases: vec![],
            },
            vec![
                proposal(
                    "m.room.create",
                    "",
                    json!({"creator": BOT, "room_version": "10"}),
                ),
                proposal("m.room.member", BOT, json!({"membership": "join"})),
            ],
        )
        .await
        .unwrap();
    (pool, notifier, delivery, room_id, tasks)
}

/// One of the `tls` appservice's delivery counters (as `/_hungryserv/metrics` shows them).
fn metric(delivery: &Delivery, counter: fn(&Stats) -> &AtomicU64) -> u64 {
    let stats = delivery.stats();
    let (_, stats) = stats
        .iter()
        .find(|(id, _)| id == "tls")
        .expect("no pusher for the tls appservice");
    counter(stats).load(Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_delivery_trusts_the_extra_ca() {
    let (ca_pem, certificate, key) = private_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("bridge-ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let mut bridge = https_server(certificate, key, b"{}").await;
    let (_pool, _notifier, delivery, room_id, _tasks) =
        deliver_a_room(bridge.addr, Some(&ca_file)).await;

    let Received {
        path,
        authorization,
        body,
    } = tokio::time::timeout(Duration::from_secs(20), bridge.requests.recv())
        .await
        .expect("no transaction reached the bridge within 20 s")
        .unwrap();
    assert!(
        path.starts_with("/_matrix/app/v1/transactions/hungryserv."),
        "{path}"
    );
    assert_eq!(authorization, "Bearer hs-secret");
    let events: Vec<(&str, &str)> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| {
            (
                event["type"].as_str().unwrap(),
                event["room_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("m.room.create", room_id.as_str()),
            ("m.room.member", room_id.as_str())
        ]
    );
    assert!(bridge.handshake_errors.try_recv().is_err());
    // The acknowledgement is counted once the transaction is deleted.
    for _ in 0..100 {
        if metric(&delivery, |s| &s.transactions_sent) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&delivery, |s| &s.transactions_sent), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_delivery_refuses_an_untrusted_certificate() {
    let (_ca_pem, certificate, key) = private_ca();
    let mut bridge = https_server(certificate, key, b"{}").await;
    let (pool, _notifier, delivery, _room_id, _tasks) = deliver_a_room(bridge.addr, None).await;

    // The client aborts the handshake with an alert naming the certificate's issuer.
    let reason = tokio::time::timeout(Duration::from_secs(20), bridge.handshake_errors.recv())
        .await
        .expect("no TLS handshake within 20 s")
        .unwrap();
    assert!(reason.contains("UnknownCA"), "{reason}");
    // Retried (max_retry_interval_s = 1) and refused again, never sent.
    let _ = tokio::time::timeout(Duration::from_secs(10), bridge.handshake_errors.recv()).await;
    assert!(
        bridge.requests.try_recv().is_err(),
        "a request reached the bridge"
    );
    assert!(metric(&delivery, |s| &s.transactions_failed) >= 1);
    assert_eq!(metric(&delivery, |s| &s.transactions_sent), 0);
    // The transaction waits, stored, for the bridge to become trusted.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM appservice_transactions WHERE appservice_id = 'tls'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
}

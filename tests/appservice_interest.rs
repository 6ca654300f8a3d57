//! Appservice delivery judges events by their heads and reads in full only those it wants
//! (src/appservice/pusher.rs, `build`), against a real Postgres (`HUNGRYSERV_TEST_DATABASE_URL`).
//!
//! A transaction that fills up by size ends before the last event its chunk judged. The
//! member events judged after its end must not count for the next transaction: a bridge's
//! ghost leaving later must not make the messages it was still there for look uninteresting.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use ruma::OwnedRoomId;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

const ALICE: &str = "@alice:test.local";
const GHOST: &str = "@ghost_1:test.local";

/// A bridge on 127.0.0.1 that answers every transaction `200 {}`, each only once `gate` gives
/// it a permit, and hands over the events of each.
async fn bridge(gate: Arc<Semaphore>) -> (SocketAddr, mpsc::UnboundedReceiver<Vec<Value>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tx, gate) = (tx.clone(), gate.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let (tx, gate) = (tx.clone(), gate.clone());
                    async move {
                        let body = request.into_body().collect().await?.to_bytes();
                        gate.acquire().await.unwrap().forget();
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        let events = body["events"].as_array().cloned().unwrap_or_default();
                        let _ = tx.send(events);
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(b"{}"))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    (addr, rx)
}

/// A message from Alice of about 600 bytes, marked with `n`.
fn message(n: u32) -> hungryserv::rooms::auth::Proposal {
    support::proposal(
        ALICE,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": format!("message {n} {}", "x".repeat(600))}),
    )
}

/// What the bridge was sent, as `(type, body or membership)` per event.
fn summary(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|event| {
            let kind = event["type"].as_str().unwrap_or_default().to_owned();
            let what = event["content"]["body"]
                .as_str()
                .map(|body| body.split(' ').take(2).collect::<Vec<_>>().join(" "))
                .or_else(|| event["content"]["membership"].as_str().map(str::to_owned))
                .unwrap_or_default();
            (kind, what)
        })
        .collect()
}

#[tokio::test]
async fn a_transaction_full_by_size_leaves_later_member_events_unjudged() {
    let gate = Arc::new(Semaphore::new(0));
    let (addr, mut transactions) = bridge(gate.clone()).await;
    // Room for one of the 600-byte messages per transaction, not two.
    let support::Delivering {
        writer,
        tasks: _tasks,
        ..
    } = support::start_delivery(
        &format!(
            "id: ghosts\nurl: http://{addr}\nas_token: as-secret\nhs_token: hs-secret\n\
             sender_localpart: ghostbot\nnamespaces:\n  users:\n    - regex: '@ghost_.*'\n      exclusive: true\n"
        ),
        "[appservice]\nmax_retry_interval_s = 1\nmax_transaction_bytes = 1000\n",
    )
    .await;

    // Alice's room; the ghost is invited and joins. Those member events are the ghost's, so
    // the bridge wants them: they make up the first transaction, which the bridge holds.
    let room_id = OwnedRoomId::try_from("!hs_interest:test.local").unwrap();
    support::create_room(&writer, &room_id, ALICE).await;
    let member = |sender: &str, membership: &str| {
        support::proposal(
            sender,
            "m.room.member",
            Some(GHOST),
            json!({"membership": membership}),
        )
    };
    writer
        .append(room_id.clone(), vec![member(ALICE, "invite")], None)
        .await
        .unwrap();
    writer
        .append(room_id.clone(), vec![member(GHOST, "join")], None)
        .await
        .unwrap();
    // While the bridge holds it, Alice writes two messages the ghost is there for, the ghost
    // leaves, and Alice writes one it is not there for: the next chunk judges all four.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for events in [
        vec![message(1)],
        vec![message(2)],
        vec![member(GHOST, "leave")],
        vec![message(3)],
    ] {
        writer.append(room_id.clone(), events, None).await.unwrap();
    }
    gate.add_permits(100);

    let mut delivered = Vec::new();
    let expected = [
        ("m.room.message".to_owned(), "message 1".to_owned()),
        ("m.room.message".to_owned(), "message 2".to_owned()),
        ("m.room.member".to_owned(), "leave".to_owned()),
    ];
    let mut each = Vec::new();
    while !delivered.ends_with(&expected) {
        let events = tokio::time::timeout(Duration::from_secs(10), transactions.recv())
            .await
            .unwrap_or_else(|_| panic!("the bridge got only {delivered:?}"))
            .unwrap();
        each.push(summary(&events));
        delivered.extend(summary(&events));
    }
    // The invite and join; then message 1, and in a later transaction message 2, which the
    // ghost was still there for, and its leave. (Alice's creation events come before them when
    // the pusher first reads the room after the ghost joined: it then judges them by that later
    // member list, as `Interest` documents.)
    let invite = ("m.room.member".to_owned(), "invite".to_owned());
    let from_invite = delivered
        .iter()
        .position(|event| *event == invite)
        .unwrap_or_else(|| panic!("no invite in {delivered:?}"));
    assert_eq!(
        delivered[from_invite..],
        [invite, ("m.room.member".to_owned(), "join".to_owned())]
            .into_iter()
            .chain(expected.clone())
            .collect::<Vec<_>>()
    );
    assert!(
        delivered[..from_invite]
            .iter()
            .all(|(kind, _)| kind.starts_with("m.room.") && kind != "m.room.message"),
        "only creation events before the invite: {delivered:?}"
    );
    let with = |n: usize| each.iter().position(|txn| txn.contains(&expected[n]));
    assert!(
        with(0) < with(1),
        "message 2 does not fit beside message 1: {each:?}"
    );
    // Nothing after the leave: message 3 is of no interest to the bridge.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(transactions.try_recv().is_err());
}

//! What the local endpoints do with what a client sends, through the real router and a real
//! Postgres (`HUNGRYSERV_TEST_DATABASE_URL`), with a small stand-in for Synapse that answers
//! only what a local request asks it (`whoami`, profiles): bodies up to
//! `limits.max_local_body_bytes` are read (a 3 MB batch send is accepted), bigger ones get
//! 413 `M_TOO_LARGE`. An appservice's admin rights are those of the user it acts as.

mod support;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::local::{AS_TOKEN, BOT, server, urlencode};

fn batch(events: usize, body_bytes: usize) -> String {
    let text = "x".repeat(body_bytes);
    let events: Vec<Value> = (0..events)
        .map(|n| {
            json!({
                "type": "m.room.message",
                "sender": BOT,
                "origin_server_ts": 1_600_000_000_000_i64 + n as i64,
                "content": {"msgtype": "m.text", "body": text},
            })
        })
        .collect();
    json!({ "events": events }).to_string()
}

#[tokio::test]
async fn a_3_mb_batch_send_is_read_under_the_configured_limit() {
    let server = server("").await;
    let room = server.room().await;
    let before = server.events(&room).await;
    let body = batch(1_000, 3_000);
    assert!(body.len() > 3_000_000, "{} bytes", body.len());
    let path = format!(
        "/_matrix/client/unstable/com.beeper.backfill/rooms/{room}/batch_send?user_id={}",
        urlencode(BOT)
    );
    let (status, answer) = server.call(Method::POST, &path, Some(AS_TOKEN), body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["event_ids"].as_array().map(Vec::len), Some(1_000));
    assert_eq!(server.events(&room).await, before + 1_000);
}

#[tokio::test]
async fn a_body_above_the_limit_is_413_and_writes_nothing() {
    let server = server("[limits]\nmax_local_body_bytes = 1048576\n").await;
    let room = server.room().await;
    let before = server.events(&room).await;
    let path = format!("/_matrix/client/unstable/com.beeper.backfill/rooms/{room}/batch_send");
    let (status, answer) = server
        .call(Method::POST, &path, Some(AS_TOKEN), batch(400, 3_000))
        .await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer["errcode"]
    );
    assert_eq!(answer["errcode"], "M_TOO_LARGE");
    assert!(answer["error"].is_string());
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big");
    let body = json!({"msgtype": "m.text", "body": "x".repeat(1_100_000)}).to_string();
    let (status, answer) = server.call(Method::PUT, &path, Some(AS_TOKEN), body).await;
    assert_eq!(
        status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        answer["errcode"]
    );
    assert_eq!(answer["errcode"], "M_TOO_LARGE");
    assert_eq!(server.events(&room).await, before);
}

/// The admin check is the effective user's: an appservice whose bot is a server admin does
/// not make its ghosts admins (the answer was cached per token, whatever `?user_id=` said),
/// and a ghost that is an admin is one although the bot is not asked.
#[tokio::test]
async fn admin_rights_follow_the_user_an_appservice_acts_as() {
    let server = server("").await;
    let path = "/_hungryserv/admin/v1/appservices/input/rooms";
    let (status, answer) = server.call(Method::GET, path, Some(AS_TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "bot: {answer}");
    let ghost = format!("{path}?user_id={}", urlencode("@input_ghost:test.local"));
    let (status, answer) = server.call(Method::GET, &ghost, Some(AS_TOKEN), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "ghost: {answer}");
    assert_eq!(answer["errcode"], "M_FORBIDDEN");
    let admin = format!("{path}?user_id={}", urlencode("@input_admin:test.local"));
    let (status, answer) = server.call(Method::GET, &admin, Some(AS_TOKEN), "").await;
    assert_eq!(status, StatusCode::OK, "admin ghost: {answer}");
    let (status, answer) = server.call(Method::GET, &ghost, Some(AS_TOKEN), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "ghost again: {answer}");
}

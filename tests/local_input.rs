//! What the local endpoints do with what a client sends, through the real router and a real
//! Postgres (`HUNGRYSERV_TEST_DATABASE_URL`), with a small stand-in for Synapse that answers
//! only what a local request asks it (`whoami`, profiles): bodies up to
//! `limits.max_local_body_bytes` are read (a 3 MB batch send is accepted), bigger ones get
//! 413 `M_TOO_LARGE`. An appservice's admin rights are those of the user it acts as.

mod support;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

const AS_TOKEN: &str = "as-input-secret";
const BOT: &str = "@inputbot:test.local";
const USER_TOKEN: &str = "user-token";
/// The server admins the stand-in knows: the appservice's bot and one of its users.
const ADMINS: [&str; 2] = [BOT, "@input_admin:test.local"];

/// A stand-in for Synapse: `whoami` knows one user token; every profile exists.
async fn synapse() -> SocketAddr {
    let app = Router::new()
        .route(
            "/_matrix/client/v3/account/whoami",
            get(|headers: http::HeaderMap| async move {
                let bearer = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                if bearer == format!("Bearer {USER_TOKEN}") {
                    (
                        StatusCode::OK,
                        axum::Json(json!({"user_id": "@alice:test.local", "device_id": "DEV"})),
                    )
                } else {
                    (
                        StatusCode::UNAUTHORIZED,
                        axum::Json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"})),
                    )
                }
            }),
        )
        .route(
            "/_matrix/client/v3/profile/{user}",
            get(|| async { axum::Json(json!({})) }),
        )
        .route(
            "/_synapse/admin/v1/users/{user}/admin",
            get(
                |axum::extract::Path(user): axum::extract::Path<String>,
                 axum::extract::Query(query): axum::extract::Query<
                    std::collections::HashMap<String, String>,
                >| async move {
                    // The caller is the bot, or whom `?user_id=` names (appservice
                    // masquerading); only admins may ask, as on Synapse.
                    let caller = query.get("user_id").map_or(BOT, String::as_str);
                    if !ADMINS.contains(&caller) {
                        return (
                            StatusCode::FORBIDDEN,
                            axum::Json(json!({"errcode": "M_FORBIDDEN", "error": "You are not a server admin"})),
                        );
                    }
                    (
                        StatusCode::OK,
                        axum::Json(json!({"admin": ADMINS.contains(&user.as_str())})),
                    )
                },
            ),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                axum::Json(json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized"})),
            )
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// hungryserv over a fresh database, with one appservice registration.
pub struct Server {
    pub base: String,
    pub pool: sqlx::PgPool,
    client: Client<HttpConnector, Full<Bytes>>,
    _running: support::Running,
    _dir: tempfile::TempDir,
}

pub async fn server(extra: &str) -> Server {
    let synapse = synapse().await;
    let database_url = support::fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let registration = dir.path().join("input.yaml");
    std::fs::write(
        &registration,
        format!(
            "id: input\nurl: null\nas_token: {AS_TOKEN}\nhs_token: hs-input\n\
             sender_localpart: inputbot\nnamespaces:\n  users:\n    - regex: '@input_.*'\n      exclusive: true\n"
        ),
    )
    .unwrap();
    let extra = format!("appservice_registrations = [{registration:?}]\n{extra}");
    // The top-level key must come before the tables: `config` puts `extra` last, so it goes
    // into the last table; give it a table of its own instead.
    let config = support::config_top(synapse, &database_url, &extra);
    let pool = hungryserv::store::connect(&config.database, "test.local")
        .await
        .unwrap();
    let running = support::start(config).await;
    Server {
        base: format!("http://{}", running.addr),
        pool,
        client: Client::builder(TokioExecutor::new()).build_http(),
        _running: running,
        _dir: dir,
    }
}

impl Server {
    /// Sends `body` (raw bytes) and returns the status and the body as JSON (`Null` if it
    /// is not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: impl Into<Bytes>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// A local room the appservice's bot created.
    pub async fn room(&self) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(AS_TOKEN),
                json!({"creation_content": {"m.federate": false}}).to_string(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["room_id"].as_str().unwrap().to_owned()
    }

    /// How many events the room has.
    pub async fn events(&self, room_id: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events WHERE room_id = $1")
            .bind(room_id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

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

pub fn urlencode(raw: &str) -> String {
    form_urlencoded::byte_serialize(raw.as_bytes()).collect()
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

//! hungryserv over a fresh database with one appservice registration (`input`, bot
//! `@inputbot:test.local`, users `@input_.*`), in front of a stand-in for Synapse that
//! answers what local requests ask it: `whoami` for one user token, every profile, and the
//! admin check (the bot and `@input_admin` are server admins).

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

pub const AS_TOKEN: &str = "as-input-secret";
pub const BOT: &str = "@inputbot:test.local";
pub const USER_TOKEN: &str = "user-token";
/// The server admins the stand-in knows: the appservice's bot and one of its users.
pub const ADMINS: [&str; 2] = [BOT, "@input_admin:test.local"];

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
    _running: super::Running,
    _dir: tempfile::TempDir,
}

pub async fn server(extra: &str) -> Server {
    let synapse = synapse().await;
    let database_url = super::fresh_database().await;
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
    let config = super::config_top(synapse, &database_url, &extra);
    let pool = hungryserv::store::connect(&config.database, "test.local")
        .await
        .unwrap();
    let running = super::start(config).await;
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

    /// Sends a raw `path` (already encoded, with its query) and `body`; the status is `None`
    /// when the connection broke instead of answering.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> (Option<StatusCode>, Value) {
        let Ok(request) = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
        else {
            // Not a URI hyper can send: nothing to test.
            return (
                Some(StatusCode::BAD_REQUEST),
                json!({"errcode": "M_UNRECOGNIZED", "error": "unsendable"}),
            );
        };
        let response = match self.client.request(request).await {
            Ok(response) => response,
            Err(err) => return (None, Value::String(format!("{err:?}"))),
        };
        let status = response.status();
        let collected = match response.into_body().collect().await {
            Ok(collected) => collected,
            Err(err) => return (None, Value::String(format!("{status}, body: {err:?}"))),
        };
        let bytes = collected.to_bytes();
        (
            Some(status),
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned())),
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

pub fn urlencode(raw: &str) -> String {
    form_urlencoded::byte_serialize(raw.as_bytes()).collect()
}

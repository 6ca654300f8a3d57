//! The appservice websocket (`GET /_matrix/client/unstable/fi.mau.as_sync`, mautrix's
//! "hungryserv mode"): a bridge holds one socket and receives its transactions over it
//! instead of HTTP pushes.
//!
//! Protocol (as mautrix-go's `appservice/websocket.go` speaks it, version 3):
//! * one JSON object per text frame; requests `{"id", "command", "data"}`, replies
//!   `{"id", "command": "response" | "error", "data"}`;
//! * on connect the server sends `{"command": "connect", "status": "connected"}`;
//! * a transaction goes out as `{"command": "transaction", "id", "status": "ok", "txn_id",
//!   "events", "ephemeral", …}` (the transaction's fields at the top level) and counts as
//!   delivered only when the bridge answers `{"id", "command": "response", "data":
//!   {"txn_id"}}` — so delivery over the socket keeps the pusher's guarantees: the same
//!   stored transaction is sent again (same `txn_id`) after a timeout, a dropped connection or
//!   a restart, and the cursor moves only after the answer;
//! * the bridge's `ping` (with an `id`) is answered `{"timestamp": <ms>}`; `bridge_status`
//!   and `message_checkpoint` (no `id`) are accepted and logged; any other request with an
//!   `id` gets an `error` reply;
//! * requests for the bridge itself (Synapse's user and alias queries in relay mode) go as
//!   `{"command": "http_proxy", "id", "data": {"method", "path", "query", "headers", "body"}}`
//!   and come back as `{"status", "headers", "body"}` (`body` raw JSON, or a string of
//!   unpadded base64 when the bridge's answer was not JSON);
//! * a second connection for the same appservice replaces the first, which is closed with
//!   code 4001 and reason `{"command":"disconnect","status":"conn_replaced"}` (the bridge
//!   then shuts down: it was replaced by another instance).
//!
//! While a socket is connected the pusher sends over it; otherwise it uses the
//! registration's `url` (a registration without one waits for a socket).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::rooms::service::now_ms;

/// Close code for a connection replaced by a newer one.
pub const CONN_REPLACED: u16 = 4001;

/// Waiters for replies, by request ID.
type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// One appservice's socket, if connected. Cheap to share.
pub struct Slot {
    appservice_id: String,
    current: Mutex<Option<Connection>>,
    generations: AtomicU64,
    request_ids: AtomicU64,
    /// The pusher's wake-up: a new connection retries the transaction in flight at once.
    poke: Arc<Notify>,
}

struct Connection {
    generation: u64,
    outgoing: mpsc::UnboundedSender<Message>,
    waiters: Waiters,
}

impl Slot {
    pub fn new(appservice_id: &str, poke: Arc<Notify>) -> Self {
        Self {
            appservice_id: appservice_id.to_owned(),
            current: Mutex::new(None),
            generations: AtomicU64::new(0),
            request_ids: AtomicU64::new(1),
            poke,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection, if any (the appservice was removed): code 1000, reason
    /// `{"command":"disconnect","status":"appservice_removed"}`.
    pub fn close(&self) {
        if let Some(old) = self.lock().take() {
            let reason =
                json!({"command": "disconnect", "status": "appservice_removed"}).to_string();
            let _ = old.outgoing.send(Message::Close(Some(CloseFrame {
                code: 1000,
                reason: Utf8Bytes::from(reason),
            })));
        }
    }

    /// Whether a bridge is connected.
    pub fn connected(&self) -> bool {
        self.lock().is_some()
    }

    /// Sends a stored transaction (its HTTP body) over the socket and waits for the bridge's
    /// acknowledgement. `None`: no socket is connected (the caller pushes over HTTP).
    pub async fn transact(
        &self,
        txn_id: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Option<Result<(), String>> {
        let mut frame = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(fields)) => fields,
            _ => return Some(Err("the stored transaction is not a JSON object".into())),
        };
        frame.insert("command".into(), json!("transaction"));
        frame.insert("status".into(), json!("ok"));
        frame.insert("txn_id".into(), json!(txn_id));
        let reply = match self.exchange(frame, timeout).await? {
            Ok(reply) => reply,
            Err(reason) => return Some(Err(reason)),
        };
        Some(match reply["command"].as_str() {
            Some("response") if reply["data"]["txn_id"] == txn_id => Ok(()),
            Some("response") => Err(format!(
                "the acknowledgement names another transaction: {}",
                reply["data"]
            )),
            _ => Err(format!(
                "the bridge refused the transaction: {}",
                reply["data"]
            )),
        })
    }

    /// Sends a request to the bridge over the socket (`http_proxy`) and waits for its answer:
    /// `(status, body)`. `None`: no socket is connected.
    pub async fn http_proxy(
        &self,
        request: Value,
        timeout: Duration,
    ) -> Option<Result<(u16, Vec<u8>), String>> {
        let reply = self.request("http_proxy", request, timeout).await?;
        Some(reply.and_then(|reply| {
            if reply["command"] != "response" {
                return Err(format!("the bridge refused the request: {}", reply["data"]));
            }
            let data = &reply["data"];
            let status = data["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .ok_or("the answer has no status")?;
            let body = match &data["body"] {
                Value::Null => Vec::new(),
                // Not JSON: unpadded standard base64 of the bytes.
                Value::String(encoded) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD_NO_PAD
                        .decode(encoded.trim_end_matches('='))
                        .map_err(|_| "the answer's body is not base64".to_owned())?
                }
                json => json.to_string().into_bytes(),
            };
            Ok((status, body))
        }))
    }

    /// Sends one request with an `id` and waits for the reply. `None`: no socket.
    async fn request(
        &self,
        command: &str,
        data: Value,
        timeout: Duration,
    ) -> Option<Result<Value, String>> {
        let mut frame = serde_json::Map::new();
        frame.insert("command".into(), json!(command));
        frame.insert("data".into(), data);
        self.exchange(frame, timeout).await
    }

    /// Sends a frame under a new request `id` and waits for the bridge's reply to that `id`.
    /// `None`: no socket is connected.
    async fn exchange(
        &self,
        mut frame: serde_json::Map<String, Value>,
        timeout: Duration,
    ) -> Option<Result<Value, String>> {
        let id = self.request_ids.fetch_add(1, Ordering::Relaxed);
        frame.insert("id".into(), json!(id));
        let command = frame
            .get("command")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let text = Value::Object(frame).to_string();
        let (reply_tx, reply_rx) = oneshot::channel();
        {
            let current = self.lock();
            let connection = current.as_ref()?;
            lock_waiters(&connection.waiters).insert(id, reply_tx);
            if connection
                .outgoing
                .send(Message::Text(Utf8Bytes::from(text)))
                .is_err()
            {
                return Some(Err("the websocket closed".into()));
            }
        }
        Some(match tokio::time::timeout(timeout, reply_rx).await {
            Err(_) => {
                if let Some(connection) = self.lock().as_ref() {
                    lock_waiters(&connection.waiters).remove(&id);
                }
                Err(format!("no answer to the {command} over the websocket"))
            }
            Ok(Err(_)) => Err(format!(
                "the websocket closed before the answer to the {command}"
            )),
            Ok(Ok(reply)) => Ok(reply),
        })
    }

    /// Serves one connection until it closes or is replaced.
    pub async fn serve(self: Arc<Self>, socket: WebSocket) {
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        let waiters: Waiters = Arc::default();
        let replaced = self.lock().replace(Connection {
            generation,
            outgoing: outgoing.clone(),
            waiters: waiters.clone(),
        });
        if let Some(old) = replaced {
            let reason = json!({"command": "disconnect", "status": "conn_replaced"}).to_string();
            let _ = old.outgoing.send(Message::Close(Some(CloseFrame {
                code: CONN_REPLACED,
                reason: Utf8Bytes::from(reason),
            })));
            tracing::info!(appservice = %self.appservice_id, "appservice websocket replaced by a new connection");
        }
        tracing::info!(appservice = %self.appservice_id, generation, "appservice websocket connected");
        let connected = json!({"command": "connect", "status": "connected"}).to_string();
        let _ = outgoing.send(Message::Text(Utf8Bytes::from(connected)));
        // The transaction in flight goes out over the new socket at once.
        self.poke.notify_one();

        let (mut sink, mut stream) = socket.split();
        let writer = tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                let closing = matches!(message, Message::Close(_));
                if sink.send(message).await.is_err() || closing {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        while let Some(Ok(message)) = stream.next().await {
            match message {
                Message::Text(text) => self.received(&outgoing, &waiters, text.as_str()),
                Message::Close(_) => break,
                // Pings are answered by the websocket layer; binary frames are not ours.
                _ => {}
            }
        }
        // Dropping the waiters fails any transaction waiting for an answer on this socket.
        lock_waiters(&waiters).clear();
        {
            let mut current = self.lock();
            if current.as_ref().is_some_and(|c| c.generation == generation) {
                *current = None;
            }
        }
        drop(outgoing);
        writer.abort();
        tracing::info!(appservice = %self.appservice_id, generation, "appservice websocket closed");
    }

    /// One frame from the bridge.
    fn received(&self, outgoing: &mpsc::UnboundedSender<Message>, waiters: &Waiters, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            tracing::debug!(appservice = %self.appservice_id, "websocket frame is not JSON");
            return;
        };
        let id = message.get("id").and_then(Value::as_u64);
        let command = message["command"].as_str().unwrap_or_default();
        let reply = |command: &str, data: Value| {
            if let Some(id) = id {
                let text = json!({"id": id, "command": command, "data": data}).to_string();
                let _ = outgoing.send(Message::Text(Utf8Bytes::from(text)));
            }
        };
        match command {
            "response" | "error" => {
                let waiter = id.and_then(|id| lock_waiters(waiters).remove(&id));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(message);
                }
            }
            "ping" => reply("response", json!({"timestamp": now_ms()})),
            "bridge_status" | "message_checkpoint" => {
                tracing::debug!(appservice = %self.appservice_id, command, "bridge report");
            }
            _ => reply(
                "error",
                json!({"code": "M_UNRECOGNIZED", "message": "unknown request type"}),
            ),
        }
    }
}

fn lock_waiters(
    waiters: &Waiters,
) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Value>>> {
    waiters.lock().unwrap_or_else(|e| e.into_inner())
}

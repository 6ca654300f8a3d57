//! A stand-in bridge for `delivery`: an HTTP server on 127.0.0.1 that takes appservice
//! transactions (`PUT /_matrix/app/v1/transactions/{txnId}`) and pings (`POST
//! /_matrix/app/v1/ping`) carrying the registration's `hs_token`, and notes when each event ID
//! first arrived and in which transaction. It can be switched to refuse everything with 503,
//! as a bridge that is down does.
//!
//! Both homeservers push to it: hungryserv for local rooms, Synapse for its own rooms. They
//! are told apart by the transaction ID (hungryserv's pusher names its transactions
//! `hungryserv.{prefix}.{n}`; Synapse's are integers).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

/// Largest transaction body read (hungryserv's default cap is 1 MiB; Synapse's are smaller).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Who pushed a transaction.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Source {
    Hungryserv,
    Synapse,
}

impl Source {
    fn of(txn_id: &str) -> Self {
        if txn_id.starts_with("hungryserv.") {
            Self::Hungryserv
        } else {
            Self::Synapse
        }
    }
}

/// The first arrival of one event ID.
pub struct Arrival {
    /// When the body of the transaction that first carried it had been read.
    pub at: Instant,
    /// Index into [`Log::txns`] of that transaction.
    pub txn: usize,
    /// Transactions with distinct IDs that carried it (more than 1: a duplicate).
    pub times: u32,
}

/// One accepted transaction.
pub struct Txn {
    pub source: Source,
    /// Events it carried.
    pub events: usize,
}

/// Everything the receiver saw.
#[derive(Default)]
pub struct Log {
    /// The first arrival of every event ID in an accepted transaction.
    pub events: HashMap<String, Arrival>,
    /// Accepted transactions, in arrival order (a repeated txnId is not added again).
    pub txns: Vec<Txn>,
    /// Transaction IDs accepted so far.
    txn_ids: HashSet<String>,
    /// Transactions accepted again under an ID already accepted (a legitimate retry).
    pub repeated_txns: u64,
    /// Transaction attempts answered 503 while refusing: hungryserv's, Synapse's.
    pub refused: (u64, u64),
    /// Requests with a missing or wrong `hs_token`.
    pub unauthorized: u64,
    /// Pings answered 200.
    pub pings: u64,
}

/// The running receiver. Stop it with [`Receiver::stop`]; dropping it aborts it.
pub struct Receiver {
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Shared {
    /// The token homeservers present to the appservice.
    hs_token: String,
    /// Answer 200 (true) or refuse with 503 (false).
    answering: AtomicBool,
    log: Mutex<Log>,
    /// Counts accepted transactions; waiters for arrivals watch it.
    accepted: watch::Sender<u64>,
}

impl Receiver {
    /// Listens on 127.0.0.1:`port`, answering.
    pub async fn start(port: u16, hs_token: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("the bridge receiver cannot listen on 127.0.0.1:{port}"))?;
        let shared = Arc::new(Shared {
            hs_token,
            answering: AtomicBool::new(true),
            log: Mutex::new(Log::default()),
            accepted: watch::Sender::new(0),
        });
        let (shutdown, stopped) = oneshot::channel();
        let task = tokio::spawn(serve(listener, shared.clone(), stopped));
        Ok(Self {
            shared,
            shutdown: Some(shutdown),
            task: Some(task),
        })
    }

    /// Answer transactions and pings (true), or refuse them with 503 (false).
    pub fn set_answering(&self, answering: bool) {
        self.shared.answering.store(answering, Ordering::SeqCst);
    }

    /// Reads the log.
    pub fn with_log<R>(&self, read: impl FnOnce(&Log) -> R) -> R {
        read(&self.shared.lock())
    }

    /// Waits until every one of `ids` has arrived or `deadline` passes; returns how many are
    /// still missing.
    pub async fn wait_for(&self, ids: &[String], deadline: Instant) -> usize {
        let mut accepted = self.shared.accepted.subscribe();
        let mut missing: Vec<&String> = ids.iter().collect();
        loop {
            accepted.borrow_and_update();
            {
                let log = self.shared.lock();
                missing.retain(|id| !log.events.contains_key(*id));
            }
            if missing.is_empty() {
                return 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return missing.len();
            }
            // A timeout is checked on the next turn.
            let _ = tokio::time::timeout(left, accepted.changed()).await;
        }
    }

    /// Closes the listener and every connection, and waits for that.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic elsewhere cannot leave the log half-written in a way that matters here.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accepts connections until told to stop; the connections are owned here, so they end with it.
async fn serve(listener: TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            // Reap finished connections so the set does not grow with every reconnect.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

enum Route {
    Transaction(String),
    Ping,
    Other,
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    let route = match (request.method(), path.strip_prefix("/_matrix/app/v1/")) {
        (&Method::PUT, Some(rest)) if rest.starts_with("transactions/") => {
            let id = rest.trim_start_matches("transactions/");
            Route::Transaction(
                percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        }
        (&Method::POST, Some("ping")) => Route::Ping,
        _ => Route::Other,
    };
    let authorized = presented_token(&request).as_deref() == Some(shared.hs_token.as_str());
    // Read the whole body in every case, so the connection stays usable.
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let arrived = Instant::now();
    if matches!(route, Route::Other) {
        return Ok(answer(
            StatusCode::NOT_FOUND,
            r#"{"errcode":"M_UNRECOGNIZED","error":"Unrecognized request"}"#,
        ));
    }
    if !authorized {
        shared.lock().unauthorized += 1;
        return Ok(answer(
            StatusCode::FORBIDDEN,
            r#"{"errcode":"M_FORBIDDEN","error":"Bad hs_token"}"#,
        ));
    }
    if !shared.answering.load(Ordering::SeqCst) {
        if let Route::Transaction(id) = &route {
            let mut log = shared.lock();
            match Source::of(id) {
                Source::Hungryserv => log.refused.0 += 1,
                Source::Synapse => log.refused.1 += 1,
            }
        }
        return Ok(answer(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"errcode":"M_UNKNOWN","error":"The bridge is down"}"#,
        ));
    }
    let Route::Transaction(txn_id) = route else {
        shared.lock().pings += 1;
        return Ok(answer(StatusCode::OK, "{}"));
    };
    let Ok(body) = body else {
        return Ok(answer(
            StatusCode::BAD_REQUEST,
            r#"{"errcode":"M_NOT_JSON","error":"Unreadable body"}"#,
        ));
    };
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let ids: Vec<&str> = parsed["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["event_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    {
        let mut log = shared.lock();
        if !log.txn_ids.insert(txn_id.clone()) {
            log.repeated_txns += 1;
        } else {
            let txn = log.txns.len();
            log.txns.push(Txn {
                source: Source::of(&txn_id),
                events: ids.len(),
            });
            for id in ids {
                log.events
                    .entry(id.to_owned())
                    .and_modify(|arrival| arrival.times += 1)
                    .or_insert(Arrival {
                        at: arrived,
                        txn,
                        times: 1,
                    });
            }
        }
    }
    shared.accepted.send_modify(|n| *n += 1);
    Ok(answer(StatusCode::OK, "{}"))
}

/// The `hs_token` in the `Authorization` header, or the older `access_token` parameter.
fn presented_token(request: &Request<Incoming>) -> Option<String> {
    if let Some(bearer) = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
    {
        return Some(bearer.to_owned());
    }
    form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(key, _)| key == "access_token")
        .map(|(_, value)| value.into_owned())
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

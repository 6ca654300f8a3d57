//! The HTTP wiring, top to bottom: accept a TCP connection → speak HTTP/1.1 or h2c (prior
//! knowledge) on it → for each request open one span, classify it once, hand it to the
//! route's handler (forward to Synapse, a local room endpoint, an operations endpoint, or one
//! of the requests that span both worlds) → give every answer of our own Synapse's CORS
//! headers (`cors`; Synapse's answers pass untouched) → log its status and time to response
//! headers. A body one of our handlers left unread is read before its answer is written
//! (`drain`), so the connection is kept.
//! Graceful shutdown stops accepting, then lets in-flight requests finish within the grace
//! period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::Instrument;

use crate::admin;
use crate::api::{self, AliasOutcome};
use crate::app::AppState;
use crate::auth::requester::{access_token, query_param};
use crate::cors::{self, Cors};
use crate::drain;
use crate::error::MatrixError;
use crate::routing::{self, FollowUps, PushChange, Route, SessionChange};

/// After the listener closes, how long connections accepted just before get to have their
/// first request read before idle connections are closed.
const SHUTDOWN_READ_DELAY: Duration = Duration::from_millis(500);

/// A client that has not finished sending request headers by then is disconnected.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a request handler needs, shared by all connections.
struct Handlers {
    /// Shared application state.
    state: AppState,
    /// The `/_hungryserv/...` router.
    ops: Router,
    /// The router for requests naming local rooms.
    local: Router,
    /// The router for hungryserv's admin API and Synapse's admin room API naming local rooms.
    admin: Router,
    /// Source of request ids (unique within this process, in arrival order).
    next_request_id: AtomicU64,
}

/// Serves `listener` until `shutdown` resolves, then drains connections for at most the
/// configured grace period.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let grace_period = state.config.shutdown.grace_period;
    let handlers = Arc::new(Handlers {
        ops: admin::router(state.clone()),
        local: api::local_router(state.clone()),
        admin: api::admin_router(state.clone()),
        state,
        next_request_id: AtomicU64::new(1),
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);

    // Serves one accepted connection until it ends or graceful shutdown closes it.
    let spawn = |connections: &mut JoinSet<()>, stream: tokio::net::TcpStream, peer: SocketAddr| {
        let _ = stream.set_nodelay(true);
        let handlers = handlers.clone();
        let service =
            hyper::service::service_fn(move |request| handle(handlers.clone(), peer, request));
        let builder = builder.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            // With upgrades: the appservice websocket (`fi.mau.as_sync`).
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(err) = watcher.watch(connection).await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    };

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => spawn(&mut connections, stream, peer),
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning on the same error.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set does not grow without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            () = &mut shutdown => break,
        }
    }

    // Connections the kernel completed before the signal hold requests their clients consider
    // sent: closing the listener would reset them. Take them, give their first request a
    // moment to be read, and only then start closing idle connections (graceful shutdown
    // closes a connection at once if no request has been read on it yet).
    while let Some(Ok((stream, peer))) = futures_util::FutureExt::now_or_never(listener.accept()) {
        spawn(&mut connections, stream, peer);
    }
    drop(listener);
    tokio::time::sleep(SHUTDOWN_READ_DELAY.min(grace_period)).await;
    tracing::info!(
        connections = graceful.count(),
        ?grace_period,
        "shutting down: no longer accepting, draining in-flight requests"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace_period) => {
            tracing::warn!(connections = connections.len(), "grace period over, closing remaining connections");
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// One request: a span, classification, the route's handler, one log line.
async fn handle(
    handlers: Arc<Handlers>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = Instant::now();
    let route = routing::classify(
        &handlers.state.classes.current(),
        request.method(),
        request.uri().path(),
    );
    let request_id = handlers.next_request_id.fetch_add(1, Ordering::Relaxed);
    let template = routing::path_template(request.uri().path());
    let span = tracing::info_span!(
        "request",
        id = request_id,
        method = %request.method(),
        path = %template,
        route = route.label(),
    );
    let label = route.label();
    let cors = Cors::for_path(request.uri().path());
    // What a handler of ours leaves of the body is read once it has answered (`drain`); a
    // forwarded body is Synapse's to read, the websocket's is upgraded, and a client waiting
    // for `100 Continue` sends none once it has the answer.
    let leftover = !matches!(route, Route::Forward(_) | Route::AppserviceSocket)
        && !request.headers().contains_key(http::header::EXPECT);
    let body_limit = handlers.state.config.limits.max_local_body_bytes;
    async move {
        let (request, leftover) = if leftover {
            let (parts, body) = request.into_parts();
            let (body, leftover) = drain::watch(body);
            (Request::from_parts(parts, Body::new(body)), Some(leftover))
        } else {
            (request.map(Body::new), None)
        };
        let response = match route {
            // CORS (`cors`): a preflight for a request we answer gets Synapse's 204 here, before
            // any handler and without authentication (browsers send preflights without
            // credentials); `cors.finish` below gives every answer of ours Synapse's headers.
            _ if cors::answers_preflight(&handlers.state.classes, &route, &request) => {
                cors::preflight_response()
            }
            // Synapse does not know a bridge registered at run time: its ping is ours.
            Route::Forward(FollowUps { ping: Some(id), .. })
                if handlers.state.bridges.get(&id).is_some() =>
            {
                api::dynamic_appservice_ping(&handlers.state, request, &id).await
            }
            Route::Forward(follow_ups) => forward(&handlers.state, request, peer, follow_ups).await,
            Route::Ops => call(&handlers.ops, request).await,
            Route::Local(room) => {
                match api::gone_refusal(&handlers.state, &room.room_id, room.joins) {
                    Some(refusal) => refusal.into_response(),
                    None => call(&handlers.local, request).await,
                }
            }
            Route::AdminRoom | Route::Admin => call(&handlers.admin, request).await,
            Route::AdminRoomList => api::admin_room_list(&handlers.state, request, peer).await,
            Route::AdminUserJoinedRooms { user } => {
                api::admin_user_joined_rooms(&handlers.state, request, peer, &user).await
            }
            Route::ReadOnly { .. } | Route::Unavailable { .. } => api::class_refusal(&route)
                .unwrap_or_else(|| MatrixError::not_found("Unknown room"))
                .into_response(),
            Route::CreateRoom => api::create_room(handlers.state.clone(), request, peer).await,
            Route::JoinedRooms => api::joined_rooms(handlers.state.clone(), request).await,
            Route::Sync => api::sync(&handlers.state, request, peer).await,
            Route::SlidingSync => api::sliding_sync(&handlers.state, request, peer).await,
            Route::Notifications => api::notifications(&handlers.state, request).await,
            Route::InitialSync => api::initial_sync(&handlers.state, request).await,
            Route::KeysChanges => api::keys_changes(&handlers.state, request).await,
            Route::UserDirectory => api::user_directory(&handlers.state, request).await,
            Route::Search => api::search(&handlers.state, request).await,
            Route::AdminEventReports => api::event_reports(&handlers.state, request).await,
            Route::Versions => api::versions(&handlers.state, request).await,
            Route::AppserviceSocket => api::appservice_socket(&handlers.state, request).await,
            Route::Relay { appservice, path } => {
                api::relay(&handlers.state, request, &appservice, &path).await
            }
            Route::AliasWrite { alias } => {
                api::alias_write(handlers.state.clone(), request, peer, &alias).await
            }
            Route::Alias { alias, lookup } => {
                match api::alias_route(&handlers.state, request, &alias, lookup).await {
                    AliasOutcome::Forward(request) => {
                        forward(&handlers.state, request, peer, FollowUps::NONE).await
                    }
                    AliasOutcome::Local(request) => call(&handlers.local, request).await,
                    AliasOutcome::Answered(response) => response,
                }
            }
        };
        if let Some(leftover) = leftover {
            drain::rest(leftover, body_limit).await;
        }
        let response = cors.finish(response);
        let latency = started.elapsed();
        handlers
            .state
            .requests
            .observe(label, &template, response.status().as_u16(), latency);
        tracing::info!(
            status = response.status().as_u16(),
            latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            "request answered"
        );
        Ok(response)
    }
    .instrument(span)
    .await
}

/// A client may hand a sync token of ours to Synapse (`/messages?from=` with a `next_batch`,
/// `/keys/changes`): Synapse gets its own half.
fn synapse_tokens(request: Request<Body>) -> Request<Body> {
    let Some(query) = request
        .uri()
        .query()
        .and_then(crate::sync::token::query_for_synapse)
    else {
        return request;
    };
    let (mut parts, body) = request.into_parts();
    let path_and_query = if query.is_empty() {
        parts.uri.path().to_owned()
    } else {
        format!("{}?{query}", parts.uri.path())
    };
    let mut uri = parts.uri.clone().into_parts();
    match path_and_query.parse() {
        Ok(pq) => uri.path_and_query = Some(pq),
        Err(_) => return Request::from_parts(parts, body),
    }
    if let Ok(rewritten) = http::Uri::from_parts(uri) {
        parts.uri = rewritten;
    }
    Request::from_parts(parts, body)
}

/// Drops the cached identities a session change ends. A `/refresh` is handled by
/// [`refreshed`], which needs Synapse's answer; when that answer is lost, nothing is known of
/// the new token and Synapse keeps the old one valid until the new one is used, so nothing
/// needs dropping.
fn forget(state: &AppState, change: &SessionChange, token: Option<&str>) {
    match (change, token) {
        (SessionChange::Token, Some(token)) => state.identity.forget_token(token),
        (SessionChange::UserOfToken, Some(token)) => state.identity.forget_user_of(token),
        (SessionChange::User(user), _) => state.identity.forget_user(user),
        (SessionChange::Device(user, device), _) => {
            state.identity.forget_device(user, device, None);
        }
        (SessionChange::Token | SessionChange::UserOfToken, None) | (SessionChange::Refresh, _) => {
        }
    }
}

async fn call(router: &Router, request: Request<Body>) -> Response<Body> {
    match router.clone().oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    }
}

/// Forwards to Synapse, then does what Synapse's acceptance obliges us to
/// ([`FollowUps`], decided at classification): a logout, password change or deactivation
/// drops the cached identities it ended; a profile change is carried into the user's local
/// rooms as new member events, and a deactivation parts the user from them
/// ([`api::AccountChange`]); a push rule, pusher or ignore list
/// change is fetched again (the copy we keep
/// for local rooms' push must not lag behind it); a successful appservice ping retries its
/// delivery; a device or cross-signing key change is recorded for local-room co-members
/// ([`crate::devices`]).
async fn forward(
    state: &AppState,
    request: Request<Body>,
    peer: SocketAddr,
    follow_ups: FollowUps,
) -> Response<Body> {
    let request = synapse_tokens(request);
    let (request, device_change) = crate::devices::trigger::before_forward(
        &state.identity,
        request,
        follow_ups.devices.as_ref(),
    )
    .await;
    let query = request.uri().query();
    let token = follow_ups
        .need_token()
        .then(|| access_token(request.headers(), query).map(|t| t.into_owned()))
        .flatten();
    let user_id_param = query
        .and_then(|q| query_param(q, "user_id"))
        .map(|u| u.into_owned());
    let account = api::AccountChange::before(
        state,
        &follow_ups,
        token.as_deref(),
        user_id_param.as_deref(),
    )
    .await;
    let started = Instant::now();
    let forwarded = state.synapse.forward(request, peer).await;
    state
        .requests
        .upstream(forwarded.is_ok(), started.elapsed());
    let response = match forwarded {
        Ok(response) => response,
        Err(err) => {
            // Synapse may have carried out a revocation whose answer never reached us: drop
            // the identities it may have ended rather than serve them in degraded mode.
            if let Some(change) = &follow_ups.session {
                forget(state, change, token.as_deref());
            }
            return err.into_response();
        }
    };
    if !response.status().is_success() {
        return response;
    }
    if let Some(appservice_id) = &follow_ups.ping {
        state.delivery.poke(appservice_id);
    }
    // Revocations Synapse accepted reach the token cache before the answer goes back.
    let response = match &follow_ups.session {
        Some(SessionChange::Refresh) => refreshed(state, response).await,
        Some(change) => {
            forget(state, change, token.as_deref());
            response
        }
        None => response,
    };
    // Device and cross-signing key changes Synapse accepted, for local-room co-members.
    let response = match device_change {
        Some(pending) => state.devices.after_forward(pending, response).await,
        None => response,
    };
    let response = account.after(state, token.as_deref(), response).await;
    if let (Some(push_change), Some(token)) = (follow_ups.push, token) {
        refresh_push(state, &token, push_change).await;
    }
    response
}

/// A `/refresh` answer (small JSON) is read to learn the new token, whose device's older
/// tokens are then dropped from the cache; the client gets the same bytes.
async fn refreshed(state: &AppState, response: Response<Body>) -> Response<Body> {
    use http_body_util::BodyExt;
    const MAX_REFRESH_ANSWER: usize = 64 * 1024;
    let (parts, body) = response.into_parts();
    let bytes = match http_body_util::Limited::new(body, MAX_REFRESH_ANSWER)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return MatrixError::bad_gateway("Synapse's answer could not be read").into_response();
        }
    };
    let new_token = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|answer| answer.get("access_token")?.as_str().map(str::to_owned));
    match new_token {
        Some(new_token) => state.identity.refreshed(&new_token).await,
        None => tracing::warn!("a /refresh answer without access_token"),
    }
    Response::from_parts(parts, Body::from(bytes))
}

/// Fetches the user's push rules or pushers again after a change Synapse accepted, with the
/// token of the request that changed them, before the answer goes back: a client that sets a
/// pusher and then sees a message in a local room gets the push.
async fn refresh_push(state: &AppState, token: &str, change: PushChange) {
    let requester = match state.identity.resolve(Some(token), None).await {
        Ok(requester) if requester.appservice.is_none() => requester,
        Ok(_) => return,
        Err(err) => {
            tracing::warn!(error = %err, "push settings change by an unresolvable requester");
            return;
        }
    };
    let user = requester.user_id.as_str();
    match change {
        PushChange::Rules => state.push.refresh_rules(token, user).await,
        PushChange::Pushers => state.push.refresh_pushers(token, user).await,
        PushChange::Ignored => state.push.refresh_ignored(token, user).await,
    };
}

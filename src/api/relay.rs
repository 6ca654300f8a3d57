//! `/_hungryserv/appservice/{id}/…`: where Synapse's registration of an appservice in relay
//! mode points ([`crate::appservice::relay`]). Synapse authenticates with the registration's
//! `hs_token`.
//!
//! * `PUT …/_matrix/app/v1/transactions/{txnId}`: stored durably, then 200 (a repeated txnId
//!   is stored once); the pusher delivers the contents with local events.
//! * Everything else (user and alias queries, third-party lookups) goes to the bridge: over
//!   its websocket while one is connected (`http_proxy`), else to its own address with the
//!   same token; the answer comes back unchanged. With neither, 404, as from a bridge that
//!   knows nothing. `ping` is answered by hungryserv when the bridge has no address or holds
//!   a socket (hungryserv is the endpoint Synapse reaches, and delivers over the socket).
//!
//! The umbrella registration (`appservice::umbrella`) is reached here too, under its own id:
//! its transactions are split among the bridges registered at run time, its pings answered,
//! and a user or alias query goes to the bridge that claims the ID. A bridge registered at
//! run time has no relay endpoint of its own (Synapse knows only the umbrella).

use axum::body::{Body, to_bytes};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::{ErrorCode, MatrixError};
use crate::routing::decode_segment;

/// Largest transaction body Synapse may send (100 events of up to 64 KiB, with room to spare).
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Answers Synapse's request to appservice `id` for `inner` (as [`crate::routing::Route::Relay`]
/// classified it).
pub async fn relay(state: &AppState, request: Request<Body>, id: &str, inner: &str) -> Response {
    if state
        .bridges
        .umbrella()
        .is_some_and(|umbrella| umbrella.id == id)
    {
        return umbrella(state, inner, request).await;
    }
    // A dynamic bridge's pusher is in relay mode, but Synapse knows only the umbrella.
    let relay = match state.delivery.relay(id) {
        Some(_) if state.bridges.get(id).is_some() => None,
        relay => relay,
    };
    let Some(relay) = relay else {
        return MatrixError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "No appservice in relay mode has this id",
        )
        .into_response();
    };
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    if token.as_deref() != Some(relay.hs_token.as_str()) {
        return MatrixError::forbidden("Invalid hs_token").into_response();
    }
    let segments: Vec<&str> = inner.split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::PUT, ["_matrix", "app", "v1", "transactions", txn_id]) => {
            let txn_id = decode_segment(txn_id).into_owned();
            let body = match read_transaction(request).await {
                Ok(body) => body,
                Err(refusal) => return refusal,
            };
            if let Err(err) = crate::store::relay::store(&state.db, id, &txn_id, &body).await {
                tracing::error!(appservice = %id, error = %err, "cannot store a relayed transaction");
                return MatrixError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unknown,
                    "Internal server error",
                )
                .into_response();
            }
            state.delivery.relayed(id);
            axum::Json(json!({})).into_response()
        }
        (&Method::POST, ["_matrix", "app", "v1", "ping"])
            if relay.url.is_none() || state.delivery.socket(id).is_some_and(|s| s.connected()) =>
        {
            axum::Json(json!({})).into_response()
        }
        _ if state.delivery.socket(id).is_some_and(|s| s.connected()) => {
            over_socket(state, id, inner, request).await
        }
        _ => match &relay.url {
            Some(url) => to_bridge(state, url, &relay.hs_token, inner, request).await,
            None => MatrixError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NotFound,
                "The bridge has no address to ask",
            )
            .into_response(),
        },
    }
}

/// A transaction body from Synapse: a JSON object of bounded size.
async fn read_transaction(request: Request<Body>) -> Result<Value, Response> {
    let bytes = to_bytes(request.into_body(), MAX_BODY_BYTES)
        .await
        .map_err(|_| {
            MatrixError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "Transaction too large",
            )
            .into_response()
        })?;
    match serde_json::from_slice(&bytes) {
        Ok(body @ Value::Object(_)) => Ok(body),
        _ => Err(MatrixError::bad_json("Transaction is not a JSON object").into_response()),
    }
}

/// Synapse talking to the umbrella registration (`appservice::umbrella`): transactions are
/// split among the dynamic bridges and stored before the 200; pings are answered here; a
/// user or alias query goes to the bridge whose namespace claims it (over its websocket or
/// to its address), else 404.
async fn umbrella(state: &AppState, inner: &str, request: Request<Body>) -> Response {
    let Some(umbrella) = state.bridges.umbrella().cloned() else {
        return MatrixError::not_found("No umbrella").into_response();
    };
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    if token.as_deref() != Some(umbrella.hs_token.as_str()) {
        return MatrixError::forbidden("Invalid hs_token").into_response();
    }
    let segments: Vec<&str> = inner.split('/').collect();
    let method = request.method().clone();
    let claimed = |namespaces: fn(&crate::config::Registration) -> &[crate::config::Namespace],
                   id: &str| {
        state.bridges.list().into_iter().find(|bridge| {
            namespaces(&bridge.registration)
                .iter()
                .any(|ns| ns.matches(id))
        })
    };
    let bridge = match (&method, segments.as_slice()) {
        (&Method::PUT, ["_matrix", "app", "v1", "transactions", txn_id]) => {
            let txn_id = decode_segment(txn_id).into_owned();
            let body = match read_transaction(request).await {
                Ok(body) => body,
                Err(refusal) => return refusal,
            };
            return match state.bridges.ingest(&txn_id, &body).await {
                Ok(bridges) => {
                    for id in bridges {
                        state.delivery.relayed(&id);
                    }
                    axum::Json(json!({})).into_response()
                }
                Err(err) => {
                    tracing::error!(appservice = %umbrella.id, error = %err, "cannot split a transaction to the umbrella");
                    MatrixError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorCode::Unknown,
                        "Internal server error",
                    )
                    .into_response()
                }
            };
        }
        (&Method::POST, ["_matrix", "app", "v1", "ping"]) => {
            return axum::Json(json!({})).into_response();
        }
        (&Method::GET, ["_matrix", "app", "v1", "users", user]) => {
            let user = decode_segment(user);
            state.bridges.list().into_iter().find(|bridge| {
                let registration = &bridge.registration;
                user == format!(
                    "@{}:{}",
                    registration.sender_localpart, state.config.server_name
                ) || registration.users.iter().any(|ns| ns.matches(&user))
            })
        }
        (&Method::GET, ["_matrix", "app", "v1", "rooms", alias]) => {
            claimed(|r| &r.aliases, &decode_segment(alias))
        }
        _ => None,
    };
    let Some(bridge) = bridge else {
        return MatrixError::not_found("No bridge claims this").into_response();
    };
    let id = bridge.registration.id.clone();
    if state.delivery.socket(&id).is_some_and(|s| s.connected()) {
        return over_socket(state, &id, inner, request).await;
    }
    match &bridge.registration.url {
        Some(url) => to_bridge(state, url, &bridge.registration.hs_token, inner, request).await,
        None => MatrixError::not_found("The bridge has no address to ask").into_response(),
    }
}

/// Synapse's query string without `access_token`: the bridge gets the token in the header
/// only, whatever way Synapse sent it.
fn query_without_token(query: Option<&str>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if key != "access_token" {
            out.append_pair(&key, &value);
        }
    }
    out.finish()
}

/// Sends Synapse's request to the bridge over its websocket (`http_proxy`).
async fn over_socket(state: &AppState, id: &str, inner: &str, request: Request<Body>) -> Response {
    let unreachable = |reason: String| {
        tracing::warn!(appservice = %id, %reason, "relayed request over the websocket failed");
        MatrixError::bad_gateway("The bridge did not answer").into_response()
    };
    let Some(slot) = state.delivery.socket(id) else {
        return unreachable("no websocket".into());
    };
    let (parts, body) = request.into_parts();
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => return unreachable(format!("reading the request: {err}")),
    };
    let query = query_without_token(parts.uri.query());
    let mut headers = serde_json::Map::new();
    if let Some(content_type) = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        headers.insert("Content-Type".into(), json!([content_type]));
    }
    let body = serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null);
    let data = json!({
        "method": parts.method.as_str(),
        "path": format!("/{inner}"),
        "query": query,
        "headers": headers,
        "body": body,
    });
    match slot
        .http_proxy(data, std::time::Duration::from_secs(60))
        .await
    {
        Some(Ok((status, bytes))) => {
            let mut out = Response::new(Body::from(bytes));
            *out.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            out.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            out
        }
        Some(Err(reason)) => unreachable(reason),
        None => unreachable("the websocket closed".into()),
    }
}

/// Sends Synapse's request on to the bridge and its answer back.
async fn to_bridge(
    state: &AppState,
    url: &str,
    hs_token: &str,
    inner: &str,
    request: Request<Body>,
) -> Response {
    let unreachable = |reason: String| {
        tracing::warn!(%reason, "relayed request to a bridge failed");
        MatrixError::bad_gateway("The bridge is unreachable").into_response()
    };
    let Some(http) = state.delivery.http() else {
        return unreachable("no HTTP client".into());
    };
    let (parts, body) = request.into_parts();
    let query = query_without_token(parts.uri.query());
    let query = if query.is_empty() {
        query
    } else {
        format!("?{query}")
    };
    let uri = format!("{}/{inner}{query}", url.trim_end_matches('/'));
    let bytes = match to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) => bytes,
        Err(err) => return unreachable(format!("reading the request: {err}")),
    };
    let mut builder = Request::builder()
        .method(parts.method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {hs_token}"));
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    let Ok(outgoing) = builder.body(Full::new(bytes)) else {
        return unreachable("cannot build the request".into());
    };
    let answer =
        tokio::time::timeout(std::time::Duration::from_secs(60), http.request(outgoing)).await;
    let response = match answer {
        Ok(Ok(response)) => response,
        Ok(Err(err)) => return unreachable(err.to_string()),
        Err(_) => return unreachable("timed out".into()),
    };
    let (parts, body) = response.into_parts();
    let bytes: Bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return unreachable(err.to_string()),
    };
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = parts.status;
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        out.headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    out
}

//! `/_hungryserv/admin/v1/appservices`: bridges registered at run time behind the umbrella
//! registration (`appservice::umbrella`), for Synapse server admins; and
//! `POST /_matrix/client/v1/appservice/{id}/ping` for such a bridge (Synapse does not know
//! it, so hungryserv pings it as Synapse would).
//!
//! * `GET …/appservices`: every appservice, the registration files' (`"source": "file"`) and
//!   the bridges (`"source": "admin_api"`, with their registration); tokens never.
//! * `GET …/appservices/{id}`: one of them.
//! * `PUT …/appservices/{id}`: registers or updates a bridge. Body: a registration as in a
//!   registration file (`url` or none for websocket-only, `sender_localpart`, `namespaces`,
//!   `receive_ephemeral` or `de.sorunome.msc2409.push_ephemeral`, `org.matrix.msc3202`),
//!   with `as_token`/`hs_token` optional: a token not given is generated on registration
//!   (and kept on update) and shown in this answer only. In force when the answer arrives.
//! * `DELETE …/appservices/{id}` (`?delete_rooms=true`): removes a bridge; its token is
//!   refused from then on. With `delete_rooms`, the local rooms its token created are
//!   deleted as `POST …/appservices/{id}/delete_rooms` deletes them.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::extract::{Authed, JsonObject, Path};
use super::room_admin::{bulk_delete, require_admin};
use crate::app::AppState;
use crate::appservice::umbrella::{BridgeError, describe};
use crate::auth::requester::access_token;
use crate::error::{ErrorCode, MatrixError};

/// Adds the routes to the admin router.
pub fn routes(router: Router<AppState>) -> Router<AppState> {
    router
        .route("/_hungryserv/admin/v1/appservices", get(list))
        .route(
            "/_hungryserv/admin/v1/appservices/{appservice_id}",
            get(show).put(register).delete(remove),
        )
}

fn internal(err: impl std::fmt::Display) -> ApiError {
    tracing::error!(error = %err, "appservice admin request failed");
    MatrixError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unknown,
        "Internal server error",
    )
    .into()
}

/// A registration file's appservice, without tokens.
fn describe_file(state: &AppState, registration: &crate::config::Registration) -> Value {
    let umbrella = state
        .bridges
        .umbrella()
        .is_some_and(|umbrella| umbrella.id == registration.id);
    json!({
        "id": registration.id,
        "source": "file",
        "umbrella": umbrella,
        "url": registration.url,
        "sender_localpart": registration.sender_localpart,
        "receive_ephemeral": registration.receive_ephemeral,
        "org.matrix.msc3202": registration.msc3202,
    })
}

/// `GET /_hungryserv/admin/v1/appservices`.
async fn list(State(state): State<AppState>, auth: Authed) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    let mut appservices: Vec<Value> = state
        .config
        .appservices
        .iter()
        .map(|registration| describe_file(&state, registration))
        .collect();
    appservices.extend(state.bridges.list().iter().map(|bridge| describe(bridge)));
    Ok(Json(
        json!({ "total": appservices.len(), "appservices": appservices }),
    ))
}

/// `GET /_hungryserv/admin/v1/appservices/{id}`.
async fn show(
    State(state): State<AppState>,
    Path(appservice_id): Path<String>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    if let Some(bridge) = state.bridges.get(&appservice_id) {
        return Ok(Json(describe(&bridge)));
    }
    match state
        .config
        .appservices
        .iter()
        .find(|r| r.id == appservice_id)
    {
        Some(registration) => Ok(Json(describe_file(&state, registration))),
        None => Err(MatrixError::not_found(format!("Unknown appservice {appservice_id}")).into()),
    }
}

/// `PUT /_hungryserv/admin/v1/appservices/{id}`.
async fn register(
    State(state): State<AppState>,
    Path(appservice_id): Path<String>,
    auth: Authed,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    require_admin(&state, &auth).await?;
    let registered = match state
        .bridges
        .register(&appservice_id, Value::Object(body))
        .await
    {
        Ok(registered) => registered,
        Err(BridgeError::Store(err)) => return Err(internal(err)),
        Err(err @ BridgeError::Synapse(_)) => {
            tracing::warn!(appservice = %appservice_id, error = %err, "bridge not registered");
            return Err(
                MatrixError::bad_gateway("Synapse did not register the bridge's bot").into(),
            );
        }
        Err(err) => {
            return Err(MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidParam,
                err.to_string(),
            )
            .into());
        }
    };
    let Some(bridge) = state.bridges.get(&appservice_id) else {
        return Err(internal("a bridge registered a moment ago is gone"));
    };
    let mut answer = describe(&bridge);
    if let Value::Object(fields) = &mut answer {
        fields.insert("created".into(), json!(registered.created));
        if let Some(token) = registered.generated_as_token {
            fields.insert("as_token".into(), json!(token));
        }
        if let Some(token) = registered.generated_hs_token {
            fields.insert("hs_token".into(), json!(token));
        }
    }
    let status = if registered.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(answer)).into_response())
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    delete_rooms: Option<String>,
}

/// `DELETE /_hungryserv/admin/v1/appservices/{id}`.
async fn remove(
    State(state): State<AppState>,
    Path(appservice_id): Path<String>,
    Query(query): Query<RemoveQuery>,
    auth: Authed,
) -> Result<Json<Value>, ApiError> {
    require_admin(&state, &auth).await?;
    if state
        .config
        .appservices
        .iter()
        .any(|r| r.id == appservice_id)
    {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidParam,
            "This appservice comes from a registration file; remove it there and restart",
        )
        .into());
    }
    let removed = state
        .bridges
        .remove(&appservice_id)
        .await
        .map_err(internal)?;
    let Some(bridge) = removed else {
        return Err(MatrixError::not_found(format!("Unknown appservice {appservice_id}")).into());
    };
    let delete_rooms = matches!(query.delete_rooms.as_deref(), Some("true" | "1"));
    let mut answer = json!({ "removed": appservice_id });
    if delete_rooms {
        answer["rooms"] = bulk_delete(&state, &bridge.registration, &auth).await?;
    }
    Ok(Json(answer))
}

/// `POST /_matrix/client/v1/appservice/{id}/ping` for a bridge registered at run time:
/// what Synapse does for its own (the same checks, errcodes and answer), then its delivery
/// retries at once.
pub async fn ping(state: &AppState, request: Request<Body>, appservice_id: &str) -> Response {
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    let caller = token.as_deref().and_then(|t| state.identity.appservice(t));
    let Some(caller) = caller else {
        return match token {
            None => {
                ApiError::from(crate::auth::requester::AuthFailure::MissingToken).into_response()
            }
            Some(_) => MatrixError::forbidden(
                "Only application services can use the /appservice/ping endpoint",
            )
            .into_response(),
        };
    };
    if caller.id != appservice_id {
        return MatrixError::forbidden("Mismatching application service ID in path")
            .into_response();
    }
    let body = axum::body::to_bytes(request.into_body(), 64 * 1024)
        .await
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
        .unwrap_or(Value::Null);
    let txn_id = body.get("transaction_id").cloned().unwrap_or(Value::Null);
    let started = std::time::Instant::now();
    let outcome = match &caller.url {
        Some(url) => ping_bridge(state, url, &caller.hs_token, &txn_id).await,
        // A websocket-only bridge is reachable while its socket is connected.
        None if state
            .delivery
            .socket(appservice_id)
            .is_some_and(|s| s.connected()) =>
        {
            Ok(())
        }
        None => Err(ping_error(
            StatusCode::BAD_REQUEST,
            "M_URL_NOT_SET",
            "The application service does not have a URL set".into(),
        )),
    };
    match outcome {
        Ok(()) => {
            state.delivery.poke(appservice_id);
            let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            Json(json!({ "duration_ms": ms })).into_response()
        }
        Err(refusal) => refusal,
    }
}

/// `POST {url}/_matrix/app/v1/ping` with the bridge's hs_token, as Synapse sends it.
async fn ping_bridge(
    state: &AppState,
    url: &str,
    hs_token: &str,
    txn_id: &Value,
) -> Result<(), Response> {
    use http_body_util::BodyExt;
    let failed =
        |message: String| ping_error(StatusCode::BAD_GATEWAY, "M_CONNECTION_FAILED", message);
    let Some(http) = state.delivery.http() else {
        return Err(failed("No HTTP client".into()));
    };
    let request = Request::post(format!("{}/_matrix/app/v1/ping", url.trim_end_matches('/')))
        .header(http::header::AUTHORIZATION, format!("Bearer {hs_token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            json!({ "transaction_id": txn_id }).to_string(),
        )))
        .map_err(|err| failed(err.to_string()))?;
    let exchange = async {
        let response = http.request(request).await.map_err(|err| {
            failed(format!(
                "ConnectError: {}",
                crate::upstream::error_chain(&err)
            ))
        })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        if status.is_success() {
            Ok(())
        } else {
            let mut answer = json!({
                "errcode": "M_BAD_STATUS",
                "error": format!("HTTP {} {}", status.as_u16(), status.canonical_reason().unwrap_or("")),
                "status": status.as_u16(),
            });
            if let Ok(text) = std::str::from_utf8(&body) {
                answer["body"] = json!(text);
            }
            Err((StatusCode::BAD_GATEWAY, Json(answer)).into_response())
        }
    };
    match tokio::time::timeout(std::time::Duration::from_secs(30), exchange).await {
        Ok(outcome) => outcome,
        Err(_) => Err(ping_error(
            StatusCode::GATEWAY_TIMEOUT,
            "M_CONNECTION_TIMEOUT",
            "Timed out waiting for the application service".into(),
        )),
    }
}

/// The ping's own errcodes (MSC2659), which are not among the errors of `crate::error`.
fn ping_error(status: StatusCode, errcode: &str, message: String) -> Response {
    (
        status,
        Json(json!({ "errcode": errcode, "error": message })),
    )
        .into_response()
}

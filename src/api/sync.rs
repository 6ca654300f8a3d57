//! `GET /sync`: the merged sync ([`crate::sync`]). Parses the query, authenticates, and maps
//! the outcome to Synapse's answers.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};

use super::ApiError;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::{ErrorCode, MatrixError};
use crate::sync::filter::FilterError;
use crate::sync::{SyncError, SyncRequest};

/// Parameters we read; the others go to Synapse as they came.
const OURS: [&str; 3] = ["since", "timeout", "access_token"];

pub async fn sync(state: &AppState, request: Request<Body>, peer: SocketAddr) -> Response {
    match handle(state, request, peer).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(
    state: &AppState,
    request: Request<Body>,
    peer: SocketAddr,
) -> Result<Response, ApiError> {
    let query = request.uri().query().unwrap_or_default();
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        params
            .iter()
            .rev()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let timeout = super::extract::long_poll_timeout(param("timeout"))?;
    let full_state = match param("full_state") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "Boolean query parameter full_state must be one of ['true', 'false']",
            )
            .into());
        }
    };
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    let requester = state
        .identity
        .resolve(token.as_deref(), param("user_id"))
        .await?;
    let sync_request = SyncRequest {
        requester,
        token: token.unwrap_or_default(),
        since: param("since").map(str::to_owned),
        full_state,
        timeout,
        filter: param("filter").map(str::to_owned),
        classes: state.classes.current(),
        upstream_params: params
            .iter()
            .filter(|(key, _)| !OURS.contains(&key.as_str()))
            .cloned()
            .collect(),
        client_headers: crate::upstream::client_identity(request.headers(), request.uri(), peer),
    };
    // The user's own token is here: learn their push rules and pushers for local rooms' push
    // (at most every few minutes, in the background).
    if sync_request.requester.appservice.is_none() && !sync_request.token.is_empty() {
        let user = sync_request.requester.user_id.as_str();
        state.push.saw_sync(&sync_request.token, user);
    }
    let body = {
        let _waiting = state.requests.sync_waiting();
        state.syncer.sync(&sync_request).await.map_err(to_api)?
    };
    Ok(Json(body).into_response())
}

fn to_api(err: SyncError) -> ApiError {
    let bad = |code, message: String| {
        ApiError::Matrix(MatrixError::new(StatusCode::BAD_REQUEST, code, message))
    };
    match err {
        SyncError::InvalidToken => bad(ErrorCode::Unknown, err.to_string()),
        SyncError::Filter(FilterError::NotJson) => bad(ErrorCode::NotJson, err.to_string()),
        SyncError::Filter(FilterError::Unknown) => bad(ErrorCode::InvalidParam, err.to_string()),
        SyncError::Filter(FilterError::BadJson(_)) => bad(ErrorCode::BadJson, err.to_string()),
        SyncError::Filter(FilterError::Synapse(_)) | SyncError::SynapseDown(_) => {
            tracing::warn!(error = %err, "sync failed");
            ApiError::Matrix(MatrixError::bad_gateway("Synapse is unreachable"))
        }
        SyncError::Refused(refusal) => ApiError::Refused(refusal),
        SyncError::Room(err) => ApiError::from(err),
    }
}

//! `POST /unstable/org.matrix.simplified_msc3575/sync`: the merged simplified sliding sync
//! ([`crate::sync::sliding`]). Parses the query and body, authenticates, and maps the outcome
//! to Synapse's answers.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

use super::ApiError;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::{ErrorCode, MatrixError};
use crate::sync::sliding::{SlidingError, SlidingRequest};

/// The largest body read (a client with thousands of room subscriptions stays far below).
const MAX_BODY: usize = 4 * 1024 * 1024;

pub async fn sliding_sync(state: &AppState, request: Request<Body>, peer: SocketAddr) -> Response {
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
    let query = request.uri().query().unwrap_or_default().to_owned();
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
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    let requester = state
        .identity
        .resolve(token.as_deref(), param("user_id"))
        .await?;
    let client_headers = crate::upstream::client_identity(request.headers(), request.uri(), peer);
    let bytes = http_body_util::Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| {
            MatrixError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::TooLarge,
                "Request body too large",
            )
        })?
        .to_bytes();
    let body: Value = if bytes.is_empty() {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&bytes).map_err(|_| {
            MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::NotJson,
                "Content not JSON.",
            )
        })?
    };
    if !body.is_object() {
        return Err(MatrixError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadJson,
            "Content must be a JSON object.",
        )
        .into());
    }
    let sliding = SlidingRequest {
        requester,
        token: token.unwrap_or_default(),
        pos: param("pos").map(str::to_owned),
        timeout,
        body,
        client_headers,
    };
    if sliding.requester.appservice.is_none() && !sliding.token.is_empty() {
        state
            .push
            .saw_sync(&sliding.token, sliding.requester.user_id.as_str());
    }
    let answer = {
        let _waiting = state.requests.sync_waiting();
        state.syncer.sliding_sync(&sliding).await.map_err(to_api)?
    };
    Ok(Json(answer).into_response())
}

fn to_api(err: SlidingError) -> ApiError {
    let bad = |code, message: String| {
        ApiError::Matrix(MatrixError::new(StatusCode::BAD_REQUEST, code, message))
    };
    match err {
        // Synapse's `SlidingSyncUnknownPosition`.
        SlidingError::UnknownPos => bad(ErrorCode::UnknownPos, "Unknown position".into()),
        SlidingError::BadBody(_) => bad(ErrorCode::BadJson, err.to_string()),
        SlidingError::SynapseDown(_) => {
            tracing::warn!(error = %err, "sliding sync failed");
            ApiError::Matrix(MatrixError::bad_gateway("Synapse is unreachable"))
        }
        SlidingError::Refused(refusal) => ApiError::Refused(refusal),
        SlidingError::Room(err) => ApiError::from(err),
    }
}

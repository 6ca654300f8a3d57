//! `GET /_matrix/client/unstable/fi.mau.as_sync`: an appservice opens its websocket
//! ([`crate::appservice::websocket`]). Only an appservice's own `as_token` may; errors before
//! the upgrade are Matrix JSON, as mautrix expects.

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Response};
use http::{Request, StatusCode};

use super::ApiError;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::{ErrorCode, MatrixError};

/// Largest frame a bridge may send (mautrix reads up to 50 MiB; its frames are small).
const MAX_MESSAGE_BYTES: usize = 50 * 1024 * 1024;

pub async fn appservice_socket(state: &AppState, request: Request<Body>) -> Response {
    let (mut parts, _body) = request.into_parts();
    let token = access_token(&parts.headers, parts.uri.query()).map(|t| t.into_owned());
    let requester = match state.identity.resolve(token.as_deref(), None).await {
        Ok(requester) => requester,
        Err(err) => return ApiError::from(err).into_response(),
    };
    let Some(registration) = requester.appservice else {
        return MatrixError::forbidden("Only an appservice can open the appservice websocket")
            .into_response();
    };
    let Some(slot) = state.delivery.socket(&registration.id) else {
        return MatrixError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "No delivery runs for this appservice",
        )
        .into_response();
    };
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return MatrixError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::Unknown,
                format!("Expected a websocket upgrade: {rejection}"),
            )
            .into_response();
        }
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| slot.serve(socket))
        .into_response()
}

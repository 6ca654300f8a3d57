//! `GET /initialSync` (deprecated, still in the spec): Synapse's answer for its rooms with
//! the local rooms' entries and receipts added ([`crate::rooms::initial_sync`]).
//!
//! `end` stays Synapse's token, and `GET /events` stays Synapse's: the legacy event stream
//! has no local part yet, so a client following `end` with `/events` hears only Synapse's
//! rooms. A local room's `messages.start`/`end` are `/messages` tokens of that room, which
//! hungryserv answers. `raw` (Synapse's federation format) does not change local events.

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use serde_json::Value;

use super::ApiError;
use super::extract::Query;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::MatrixError;

pub async fn initial_sync(state: &AppState, request: Request<Body>) -> Response {
    match handle(state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle(state: &AppState, request: Request<Body>) -> Result<Response, ApiError> {
    let query = request.uri().query().unwrap_or_default();
    let params = Query::parse(Some(query));
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    let requester = state
        .identity
        .resolve(token.as_deref(), params.get("user_id"))
        .await?;
    let limit = crate::rooms::initial_sync::limit(params.get("limit"))?;
    // Synapse's `parse_boolean`: only `true` and `false`.
    let archived = match params.get("archived") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(MatrixError::invalid_param(
                "Boolean query parameter 'archived' must be one of ['true', 'false']",
            )
            .into());
        }
    };
    // Synapse refuses a token in both the header and the query: only the rest goes upstream.
    let upstream_query = {
        let mut upstream = form_urlencoded::Serializer::new(String::new());
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if key != "access_token" {
                upstream.append_pair(&key, &value);
            }
        }
        upstream.finish()
    };
    let mut answer = state
        .synapse
        .initial_sync(token.as_deref().unwrap_or_default(), &upstream_query)
        .await
        .map_err(|err| ApiError::from_upstream(err, "initialSync"))?;
    let classes = state.classes.current();
    let (rooms, receipts) = state
        .rooms
        .initial_sync_rooms(&requester, limit, archived, |room| {
            classes.available(room) && state.deletions.gone(room).is_none()
        })
        .await?;
    if let Some(answer) = answer.as_object_mut() {
        for (key, local) in [("rooms", rooms), ("receipts", receipts)] {
            match answer.get_mut(key) {
                Some(Value::Array(list)) => list.extend(local),
                _ => {
                    answer.insert(key.into(), Value::Array(local));
                }
            }
        }
    }
    Ok(Json(answer).into_response())
}

//! `GET /keys/changes?from=&to=`: Synapse's answer for Synapse's halves of the tokens, merged
//! with the device changes of local-room co-members between the local halves
//! ([`crate::devices`]).

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;

use super::ApiError;
use super::extract::Query;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::devices::lists::{At, Viewer};
use crate::devices::merge;
use crate::rooms::RoomError;
use crate::sync::token::{SyncToken, query_for_synapse};

pub async fn keys_changes(state: &AppState, request: Request<Body>) -> Response {
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
    // Synapse checks the parameters and answers for its halves; a corrupt envelope goes up as
    // it came and is refused there like any bad token.
    let upstream_query = query_for_synapse(query).unwrap_or_else(|| query.to_owned());
    let answer = state
        .synapse
        .keys_changes(token.as_deref().unwrap_or_default(), &upstream_query)
        .await
        .map_err(|err| ApiError::from_upstream(err, "keys/changes"))?;
    // A bare Synapse token starts the local halves at 0: every co-member counts as changed
    // once (a key query too many, never one too few).
    let position = |name: &str| params.get(name).and_then(|t| SyncToken::parse(t).ok());
    let from = position("from").map(|t| At::from(&t)).unwrap_or_default();
    // A `to` that is not ours (or none) means now, as it does to Synapse (which ignores it).
    let to = params
        .get("to")
        .filter(|t| SyncToken::is_envelope(t))
        .and_then(|_| position("to"))
        .map_or_else(
            || At {
                events: state.notifier.current(),
                devices: state.devices.current(),
            },
            |t| At::from(&t),
        );
    let viewer = Viewer {
        user_id: requester.user_id.as_str(),
        token: requester
            .appservice
            .is_none()
            .then_some(token.as_deref())
            .flatten(),
    };
    let local = state
        .devices
        .between(&viewer, from, to)
        .await
        .map_err(RoomError::from)?;
    Ok(Json(merge(Some(&answer), local)).into_response())
}

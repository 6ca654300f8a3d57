//! `GET /_matrix/client/versions`: Synapse's answer with the unstable features hungryserv
//! implements added. Each feature is listed only once it works (bridges switch behaviour on
//! these flags). While Synapse is down, its last answer is served
//! ([`crate::upstream::Synapse::versions`]), so clients and bridges can still start.

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::Request;
use serde_json::{Value, json};

use super::ApiError;
use crate::app::AppState;
use crate::auth::requester::access_token;
use crate::error::MatrixError;
use crate::upstream::client::CallError;

/// Unstable features of hungryserv, added to Synapse's.
pub const FEATURES: [&str; 4] = [
    // A hungryserv: the fi.mau.as_sync websocket and relay mode (appservice::websocket,
    // appservice::relay) carry a bridge's whole stream; mautrix bridges configured with
    // `software: hungry` refuse to start without it.
    "com.beeper.hungry",
    // POST /_matrix/client/unstable/com.beeper.backfill/rooms/{roomId}/batch_send
    "com.beeper.batch_sending",
    // createRoom with com.beeper.auto_join_invites / com.beeper.initial_members
    "com.beeper.room_create_autojoin_invites",
    // POST /_matrix/client/unstable/com.beeper.yeet/rooms/{roomId}/delete
    "com.beeper.room_yeeting",
];

pub async fn versions(state: &AppState, request: Request<Body>) -> Response {
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    match state.synapse.versions(token.as_deref()).await {
        Ok(answer) => Json(with_features(answer)).into_response(),
        Err(CallError::Refused(refusal)) => ApiError::Refused(refusal).into_response(),
        Err(CallError::Unavailable(reason)) => {
            tracing::warn!(%reason, "versions: Synapse unavailable");
            MatrixError::bad_gateway("Synapse is unreachable").into_response()
        }
    }
}

fn with_features(mut answer: Value) -> Value {
    if let Some(object) = answer.as_object_mut() {
        let features = object
            .entry("unstable_features")
            .or_insert_with(|| json!({}));
        if let Some(features) = features.as_object_mut() {
            for feature in FEATURES {
                features.insert(feature.to_owned(), Value::Bool(true));
            }
        }
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_our_features_and_keeps_synapses() {
        let answer = with_features(json!({
            "versions": ["v1.11"],
            "unstable_features": {"org.matrix.msc3916": true},
        }));
        assert_eq!(answer["versions"][0], "v1.11");
        assert_eq!(answer["unstable_features"]["org.matrix.msc3916"], true);
        assert_eq!(
            answer["unstable_features"]["com.beeper.batch_sending"],
            true
        );
        assert_eq!(
            answer["unstable_features"]["com.beeper.room_create_autojoin_invites"],
            true
        );
    }
}

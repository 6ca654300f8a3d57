//! `GET /v1/room_summary/{roomIdOrAlias}` and the unstable `im.nheko.summary` paths for a
//! local room ([`crate::rooms::summary`]). Authentication is optional, as on Synapse: without
//! an access token the summary is for anyone. A request naming one of our aliases arrives
//! here rewritten to name the room ID (`super::directory::alias_route`).

use axum::Json;
use axum::extract::{FromRequestParts, State};
use http::request::Parts;
use serde_json::Value;

use super::ApiError;
use super::extract::{Authed, Path};
use super::send::room_id;
use crate::app::AppState;
use crate::auth::requester::access_token;

/// The requester, when the request carries an access token (a bad token is still refused).
pub struct MaybeAuthed(Option<Authed>);

impl FromRequestParts<AppState> for MaybeAuthed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if access_token(&parts.headers, parts.uri.query()).is_none() {
            return Ok(Self(None));
        }
        Authed::from_request_parts(parts, state)
            .await
            .map(|a| Self(Some(a)))
    }
}

/// `/v1/room_summary/{roomId}`.
pub async fn summary(
    State(state): State<AppState>,
    Path((_, room)): Path<(String, String)>,
    MaybeAuthed(auth): MaybeAuthed,
) -> Result<Json<Value>, ApiError> {
    let viewer = auth.as_ref().map(|a| &*a.requester.user_id);
    let answer = state.rooms.summary_for(viewer, &room_id(&room)?).await?;
    Ok(Json(answer))
}

/// `/unstable/im.nheko.summary/summary/{roomId}` and the deprecated
/// `/unstable/im.nheko.summary/rooms/{roomId}/summary`.
pub async fn summary_unstable(
    state: State<AppState>,
    Path(room): Path<String>,
    auth: MaybeAuthed,
) -> Result<Json<Value>, ApiError> {
    summary(state, Path((String::new(), room)), auth).await
}

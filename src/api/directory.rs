//! Requests about aliases and the user's room list, which span both worlds: alias lookups,
//! joins, knocks and room summaries by alias are answered here when the alias is one of ours (after the checks a
//! request naming the room ID passes: its class's `serve`, deletion) and forwarded otherwise;
//! `/joined_rooms` is Synapse's list plus the local rooms.

use axum::Json;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{Method, Request, Uri};
use serde_json::json;

use super::ApiError;
use super::extract::Query;
use crate::app::AppState;
use crate::auth::requester::{AuthFailure, access_token};
use crate::rooms::RoomError;
use crate::upstream::client::{CallError, encode_segment};

/// Where a request naming an alias goes next.
pub enum AliasOutcome {
    /// Not one of our aliases.
    Forward(Request<Body>),
    /// A join or knock by one of our aliases, rewritten to name the room ID.
    Local(Request<Body>),
    /// Answered already (a directory lookup, or an error).
    Answered(Response),
}

/// Resolves a request naming an alias: a directory lookup (`lookup`) is answered; a join,
/// knock or room summary becomes the same request naming the room ID.
pub async fn alias_route(
    state: &AppState,
    request: Request<Body>,
    alias: &str,
    lookup: bool,
) -> AliasOutcome {
    let room_id = match state.rooms.resolve_alias(alias).await {
        Ok(room_id) => room_id,
        Err(err) => return AliasOutcome::Answered(ApiError::from(err).into_response()),
    };
    let Some(room_id) = room_id else {
        return AliasOutcome::Forward(request);
    };
    // The room's class and deletion decide as for a request naming the room ID.
    let joining = !lookup && request.method() != Method::GET;
    if let Some(refusal) =
        super::gate::room_refusal(state, request.method(), room_id.as_str(), joining)
    {
        return AliasOutcome::Answered(refusal.into_response());
    }
    if lookup {
        // The directory answer needs no authentication (as on Synapse).
        let answer = Json(json!({ "room_id": room_id, "servers": [state.config.server_name] }));
        return AliasOutcome::Answered(answer.into_response());
    }
    // `/join/#alias`, `/knock/#alias` or `/room_summary/#alias`: the same request with the
    // room ID in the path.
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path();
    let Some((prefix, _)) = path.rsplit_once('/') else {
        return AliasOutcome::Answered(
            crate::error::MatrixError::bad_json("Invalid path").into_response(),
        );
    };
    let rewritten = match parts.uri.query() {
        Some(query) => format!("{prefix}/{}?{query}", encode_segment(room_id.as_str())),
        None => format!("{prefix}/{}", encode_segment(room_id.as_str())),
    };
    match rewritten.parse::<Uri>() {
        Ok(uri) => parts.uri = uri,
        Err(_) => {
            return AliasOutcome::Answered(
                crate::error::MatrixError::bad_json("Invalid path").into_response(),
            );
        }
    }
    AliasOutcome::Local(Request::from_parts(parts, body))
}

/// `GET /joined_rooms`: Synapse's rooms, then the local ones.
pub async fn joined_rooms(state: AppState, request: Request<Body>) -> Response {
    match merged_joined_rooms(state, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn merged_joined_rooms(
    state: AppState,
    request: Request<Body>,
) -> Result<Response, ApiError> {
    let token = access_token(request.headers(), request.uri().query()).map(|t| t.into_owned());
    let params = Query::parse(request.uri().query());
    let requester = state
        .identity
        .resolve(token.as_deref(), params.get("user_id"))
        .await?;
    // Only `user_id` goes upstream: Synapse refuses a token in both header and query.
    let upstream_query = params.get("user_id").map(|user| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("user_id", user)
            .finish()
    });
    let mut rooms = match state
        .synapse
        .joined_rooms(
            token.as_deref().unwrap_or_default(),
            upstream_query.as_deref(),
        )
        .await
    {
        Ok(rooms) => rooms,
        Err(CallError::Refused(refusal)) => return Err(ApiError::Refused(refusal)),
        Err(CallError::Unavailable(reason)) => {
            tracing::warn!(%reason, "joined_rooms: Synapse unavailable");
            return Err(crate::error::MatrixError::bad_gateway("Synapse is unreachable").into());
        }
    };
    let classes = state.classes.current();
    rooms.extend(
        state
            .rooms
            .joined_rooms(&requester)
            .await?
            .into_iter()
            .filter(|room| classes.available(room)),
    );
    Ok(Json(json!({ "joined_rooms": rooms })).into_response())
}

/// `PUT`/`DELETE /directory/room/{alias}`: served here when it concerns a local room (PUT
/// naming a local room ID, DELETE of a local alias), forwarded otherwise.
pub async fn alias_write(
    state: AppState,
    request: Request<Body>,
    peer: std::net::SocketAddr,
    alias: &str,
) -> Response {
    match handle_alias_write(state, request, peer, alias).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn handle_alias_write(
    state: AppState,
    request: Request<Body>,
    peer: std::net::SocketAddr,
    alias: &str,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let token = access_token(&parts.headers, parts.uri.query()).map(|t| t.into_owned());
    let params = Query::parse(parts.uri.query());
    let forward = |state: AppState, parts, body| async move {
        Ok(
            match state
                .synapse
                .forward(Request::from_parts(parts, body), peer)
                .await
            {
                Ok(response) => response,
                Err(err) => err.into_response(),
            },
        )
    };
    if parts.method == Method::DELETE {
        if state.rooms.resolve_alias(alias).await?.is_none() {
            return forward(state, parts, body).await;
        }
        let requester = state
            .identity
            .resolve(token.as_deref(), params.get("user_id"))
            .await?;
        // Asked of Synapse only when the cheaper rights (creator, namespace) do not hold.
        let is_admin = async {
            state
                .identity
                .is_admin(token.as_deref().unwrap_or_default(), &requester)
                .await
                .map_err(admin_check_failure)
        };
        state
            .rooms
            .delete_alias(&requester, alias, is_admin)
            .await?;
        return Ok(Json(json!({})).into_response());
    }
    let limit = usize::try_from(state.config.limits.max_local_body_bytes).unwrap_or(usize::MAX);
    let bytes = http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit))
        .await
        .map_err(|_| {
            crate::error::MatrixError::too_large(state.config.limits.max_local_body_bytes)
        })?
        .to_bytes();
    let object = super::extract::parse_object(&bytes)?;
    let room_id = super::extract::required_str(&object, "room_id")?.to_owned();
    if state.classes.current().class_of(&room_id).is_none() {
        return forward(state, parts, Body::from(bytes)).await;
    }
    let room_id = super::send::room_id(&room_id)?;
    let requester = state
        .identity
        .resolve(token.as_deref(), params.get("user_id"))
        .await?;
    let reserved = state.config.appservices.iter().any(|registration| {
        registration
            .aliases
            .iter()
            .any(|ns| ns.exclusive && ns.matches(alias))
    });
    state
        .rooms
        .create_alias(
            &requester,
            token.as_deref().unwrap_or_default(),
            alias,
            &room_id,
            reserved,
        )
        .await?;
    Ok(Json(json!({})).into_response())
}

/// A failed server-admin check as a room error: Synapse out of reach is 502, as for the
/// other calls a local request needs Synapse for.
fn admin_check_failure(err: AuthFailure) -> RoomError {
    match err {
        AuthFailure::MissingToken => RoomError::Forbidden("Missing access token".into()),
        AuthFailure::Forbidden(message) => RoomError::Forbidden(message),
        AuthFailure::Refused(refusal) => {
            RoomError::Internal(format!("admin check answered {}", refusal.status))
        }
        AuthFailure::Unavailable(reason) => {
            tracing::warn!(%reason, "admin check: Synapse unavailable");
            RoomError::Unreachable("Synapse is unreachable".into())
        }
    }
}

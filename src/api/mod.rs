//! Thin HTTP handlers for the endpoints hungryserv answers itself, one file per area of the
//! client-server API. Each parses the request, authenticates, calls one function of the room
//! engine and builds the response; errors become Matrix errors here, in one place
//! ([`ApiError`]).
//!
//! May import: everything below it — `app`, `rooms`, `sync`, `push`, `appservice`, `auth`,
//! `routing`, `upstream`, `config`, `error`, and `store` for its row types (never to query).

mod account;
mod admin_membership;
mod appservice_admin;
mod appservice_socket;
mod create_room;
mod directory;
mod extract;
mod gate;
mod hierarchy;
mod initial_sync;
mod keys;
mod membership;
mod notifications;
mod read;
mod relay;
mod reports;
mod room_admin;
mod room_data;
mod search;
mod send;
mod sliding_sync;
mod summary;
mod sync;
mod threads;
mod upgrade;
mod user_directory;
mod versions;

use axum::Router;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use http::{StatusCode, header};

use crate::app::AppState;
use crate::auth::requester::AuthFailure;
use crate::error::{ErrorCode, MatrixError};
use crate::rooms::RoomError;

pub use account::AccountChange;
pub use admin_membership::user_joined_rooms as admin_user_joined_rooms;
pub use appservice_admin::ping as dynamic_appservice_ping;
pub use appservice_socket::appservice_socket;
pub use create_room::create_room;
pub use directory::{AliasOutcome, alias_route, alias_write, joined_rooms};
pub use gate::{class_refusal, gone_refusal};
pub use initial_sync::initial_sync;
pub use keys::keys_changes;
pub use notifications::notifications;
pub use relay::relay;
pub use reports::event_reports;
pub use room_admin::{room_list as admin_room_list, router as admin_router};
pub use search::search;
pub use sliding_sync::sliding_sync;
pub use sync::sync;
pub use user_directory::user_directory;
pub use versions::versions;

/// Everything a handler can fail with.
#[derive(Debug)]
pub enum ApiError {
    /// A Matrix error of ours.
    Matrix(MatrixError),
    /// Synapse's own refusal (of a token), passed on unchanged.
    Refused(crate::upstream::client::Refusal),
}

impl From<MatrixError> for ApiError {
    fn from(err: MatrixError) -> Self {
        ApiError::Matrix(err)
    }
}

impl From<RoomError> for ApiError {
    fn from(err: RoomError) -> Self {
        let (status, code) = match &err {
            RoomError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            RoomError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            RoomError::BadJson(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadJson),
            RoomError::InvalidParam(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidParam),
            RoomError::RoomInUse(_) => (StatusCode::BAD_REQUEST, ErrorCode::RoomInUse),
            RoomError::UnsupportedRoomVersion(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::UnsupportedRoomVersion)
            }
            RoomError::BadAlias(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadAlias),
            RoomError::UnknownMembership(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Forbidden)
            }
            RoomError::Exclusive(_) => (StatusCode::BAD_REQUEST, ErrorCode::Exclusive),
            RoomError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::Unknown),
            RoomError::BadState(_) => (StatusCode::FORBIDDEN, ErrorCode::BadState),
            RoomError::UnknownEvent(_) => (StatusCode::NOT_FOUND, ErrorCode::Unknown),
            RoomError::NotYours(_) => (StatusCode::BAD_REQUEST, ErrorCode::Forbidden),
            RoomError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadJson),
            RoomError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Unknown),
            RoomError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            RoomError::Unreachable(_) => (StatusCode::BAD_GATEWAY, ErrorCode::Unknown),
            RoomError::Store(_) | RoomError::Internal(_) => {
                // The detail is for operators; the client gets a stable message.
                tracing::error!(error = %err, "request failed");
                return ApiError::Matrix(MatrixError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    ErrorCode::Unknown,
                    "Internal server error",
                ));
            }
        };
        ApiError::Matrix(MatrixError::new(status, code, err.to_string()))
    }
}

impl ApiError {
    /// A call to Synapse made for a merged answer failed: Synapse's refusal goes back as it
    /// wrote it; an unreachable Synapse is a 502 (the reason is logged, with `what`).
    pub fn from_upstream(err: crate::upstream::client::CallError, what: &str) -> Self {
        match err {
            crate::upstream::client::CallError::Refused(refusal) => ApiError::Refused(refusal),
            crate::upstream::client::CallError::Unavailable(reason) => {
                tracing::warn!(%reason, "{what}: Synapse unavailable");
                ApiError::Matrix(MatrixError::bad_gateway("Synapse is unreachable"))
            }
        }
    }
}

impl From<AuthFailure> for ApiError {
    fn from(err: AuthFailure) -> Self {
        match err {
            AuthFailure::MissingToken => ApiError::Matrix(MatrixError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::MissingToken,
                "Missing access token",
            )),
            AuthFailure::Refused(refusal) => ApiError::Refused(refusal),
            AuthFailure::Forbidden(message) => ApiError::Matrix(MatrixError::forbidden(message)),
            AuthFailure::Unavailable(reason) => {
                tracing::warn!(%reason, "cannot verify an access token");
                ApiError::Matrix(MatrixError::bad_gateway("Synapse is unreachable"))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Matrix(err) => err.into_response(),
            ApiError::Refused(refusal) => {
                let mut response = Response::new(Body::from(refusal.body));
                *response.status_mut() = refusal.status;
                if let Some(content_type) = refusal.content_type.and_then(|c| c.parse().ok()) {
                    response
                        .headers_mut()
                        .insert(header::CONTENT_TYPE, content_type);
                }
                response
            }
        }
    }
}

/// The body limit of every handler here: `limits.max_local_body_bytes`, not axum's 2 MB
/// default (a bridge's `batch_send` of 1,000 events is several MB). Extractors that read the
/// body (`Bytes`, [`extract::JsonObject`]) obey it and answer 413 `M_TOO_LARGE` beyond it.
pub(crate) fn body_limit(state: &AppState) -> axum::extract::DefaultBodyLimit {
    let limit = usize::try_from(state.config.limits.max_local_body_bytes).unwrap_or(usize::MAX);
    axum::extract::DefaultBodyLimit::max(limit)
}

/// The router for requests classified Local (they name a local room).
pub fn local_router(state: AppState) -> Router {
    let limit = body_limit(&state);
    let rooms = "/_matrix/client/{v}/rooms/{room_id}";
    let user_rooms = "/_matrix/client/{v}/user/{user_id}/rooms/{room_id}";
    Router::new()
        .route(
            &format!("{rooms}/send/{{event_type}}/{{txn_id}}"),
            put(send::send),
        )
        .route(
            &format!("{rooms}/send/{{event_type}}"),
            post(send::send_without_txn),
        )
        .route(
            &format!("{rooms}/state/{{event_type}}"),
            put(send::put_state_empty_key).get(read::state_event_empty_key),
        )
        .route(
            &format!("{rooms}/state/{{event_type}}/"),
            put(send::put_state_empty_key).get(read::state_event_empty_key),
        )
        .route(
            &format!("{rooms}/state/{{event_type}}/{{state_key}}"),
            put(send::put_state).get(read::state_event),
        )
        .route(&format!("{rooms}/state"), get(read::state))
        .route(
            &format!("{rooms}/redact/{{event_id}}/{{txn_id}}"),
            put(send::redact),
        )
        .route(
            &format!("{rooms}/redact/{{event_id}}"),
            post(send::redact_without_txn),
        )
        .route(&format!("{rooms}/join"), post(membership::join_room))
        .route(
            "/_matrix/client/unstable/com.beeper.backfill/rooms/{room_id}/batch_send",
            post(send::batch_send),
        )
        .route(
            "/_matrix/client/{v}/join/{room_id}",
            post(membership::join_by_id_or_alias),
        )
        .route(
            "/_matrix/client/{v}/knock/{room_id}",
            post(membership::knock),
        )
        .route(&format!("{rooms}/leave"), post(membership::leave))
        .route(&format!("{rooms}/forget"), post(membership::forget))
        .route(&format!("{rooms}/upgrade"), post(upgrade::upgrade))
        .route(&format!("{rooms}/invite"), post(targeted("invite")))
        .route(&format!("{rooms}/kick"), post(targeted("kick")))
        .route(&format!("{rooms}/ban"), post(targeted("ban")))
        .route(&format!("{rooms}/unban"), post(targeted("unban")))
        .route(
            &format!("{rooms}/receipt/{{receipt_type}}/{{event_id}}"),
            post(room_data::receipt),
        )
        .route(
            &format!("{rooms}/read_markers"),
            post(room_data::read_markers),
        )
        .route(
            &format!("{rooms}/typing/{{user_id}}"),
            put(room_data::typing),
        )
        .route(
            &format!("{user_rooms}/account_data/{{event_type}}"),
            get(room_data::get_account_data).put(room_data::put_account_data),
        )
        .route(&format!("{user_rooms}/tags"), get(room_data::tags))
        .route(
            &format!("{user_rooms}/tags/{{tag}}"),
            put(room_data::put_tag).delete(room_data::delete_tag),
        )
        .route(&format!("{rooms}/event/{{event_id}}"), get(read::event))
        .route(&format!("{rooms}/members"), get(read::members))
        .route(
            &format!("{rooms}/initialSync"),
            get(read::room_initial_sync),
        )
        .route(
            &format!("{rooms}/joined_members"),
            get(read::joined_members),
        )
        .route(&format!("{rooms}/messages"), get(read::messages))
        .route(&format!("{rooms}/context/{{event_id}}"), get(read::context))
        .route(&format!("{rooms}/aliases"), get(read::aliases))
        .route(
            &format!("{rooms}/relations/{{event_id}}"),
            get(read::relations),
        )
        .route(
            &format!("{rooms}/relations/{{event_id}}/{{rel_type}}"),
            get(read::relations_typed),
        )
        .route(
            &format!("{rooms}/relations/{{event_id}}/{{rel_type}}/{{event_type}}"),
            get(read::relations_typed_event),
        )
        .route(&format!("{rooms}/threads"), get(threads::threads))
        .route(&format!("{rooms}/hierarchy"), get(hierarchy::hierarchy))
        .route(
            "/_matrix/client/{v}/room_summary/{room_id}",
            get(summary::summary),
        )
        .route(
            "/_matrix/client/unstable/im.nheko.summary/summary/{room_id}",
            get(summary::summary_unstable),
        )
        .route(
            "/_matrix/client/unstable/im.nheko.summary/rooms/{room_id}/summary",
            get(summary::summary_unstable),
        )
        .route(&format!("{rooms}/report"), post(reports::report_room))
        .route(
            &format!("{rooms}/report/{{event_id}}"),
            post(reports::report_event),
        )
        .route(
            &format!("{rooms}/timestamp_to_event"),
            get(read::timestamp_to_event),
        )
        .route(
            "/_matrix/client/unstable/com.beeper.yeet/rooms/{room_id}/delete",
            post(room_admin::yeet),
        )
        .fallback(unknown_local_endpoint)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(limit)
        .with_state(state)
}

/// What a membership handler returns, boxed so one function can serve four routes.
type MembershipAnswer =
    futures_util::future::BoxFuture<'static, Result<axum::Json<serde_json::Value>, ApiError>>;

/// The handler of one of the membership endpoints that name a target user.
fn targeted(
    membership: &'static str,
) -> impl Fn(
    axum::extract::State<AppState>,
    extract::Path<(String, String)>,
    extract::Authed,
    extract::JsonObject,
) -> MembershipAnswer
+ Clone
+ Send
+ Sync
+ 'static {
    move |state, path, auth, body| {
        Box::pin(membership::targeted(state, path, auth, body, membership))
    }
}

/// A known endpoint with another method: 405 `M_UNRECOGNIZED`, as Synapse answers (axum's
/// own 405 has an empty body).
async fn method_not_allowed() -> MatrixError {
    MatrixError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Unrecognized,
        "Unrecognized request",
    )
}

/// An endpoint hungryserv does not implement for local rooms yet. Forwarding it would give a
/// misleading answer (Synapse has never heard of the room), so say so plainly.
async fn unknown_local_endpoint() -> MatrixError {
    MatrixError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::Unrecognized,
        "Unrecognized request",
    )
}

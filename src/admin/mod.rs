//! Operations endpoints under `/_hungryserv/`: liveness and readiness now; routing toggles,
//! room deletion and metrics later.
//!
//! May import: `app`, `store`, `upstream`, `error`.

mod health;

use axum::Router;
use axum::routing::get;

use crate::app::AppState;
use crate::error::{ErrorCode, MatrixError};

/// The router for every `/_hungryserv/...` request.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/_hungryserv/health", get(health::health))
        .route("/_hungryserv/ready", get(health::ready))
        .fallback(unknown_endpoint)
        .with_state(state)
}

/// What Synapse answers for an endpoint it does not have.
async fn unknown_endpoint() -> MatrixError {
    MatrixError::new(
        http::StatusCode::NOT_FOUND,
        ErrorCode::Unrecognized,
        "Unrecognized request",
    )
}

//! Operations endpoints under `/_hungryserv/` that need no authentication: liveness,
//! readiness and metrics. (The admin API under `/_hungryserv/admin/` is `api::room_admin`.)
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
        .route("/_hungryserv/metrics", get(metrics))
        .fallback(unknown_endpoint)
        .with_state(state)
}

/// `GET /_hungryserv/metrics`: Prometheus text: requests, Synapse's state (degraded mode),
/// the room writer, room deletions, appservice delivery.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        format!(
            "{}{}{}{}{}{}{}{}",
            state.requests.render(),
            state.synapse.health.render(),
            state.identity.metrics(),
            process_metrics(&state),
            state.writer_counters.render(),
            state.deletions.metrics(),
            state.delivery.metrics(state.notifier.current()),
            state.leadership.metrics()
        ),
    )
}

/// Events persisted and the database pool.
fn process_metrics(state: &AppState) -> String {
    let pool_size = state.db.size();
    let idle = state.db.num_idle();
    format!(
        "# HELP hungryserv_events_persisted_total Events of local rooms committed by this process.\n\
         # TYPE hungryserv_events_persisted_total counter\n\
         hungryserv_events_persisted_total {}\n\
         # HELP hungryserv_db_pool_connections Database pool connections, by state.\n\
         # TYPE hungryserv_db_pool_connections gauge\n\
         hungryserv_db_pool_connections{{state=\"idle\"}} {idle}\n\
         hungryserv_db_pool_connections{{state=\"in_use\"}} {}\n\
         # HELP hungryserv_db_pool_max_connections The pool's size limit.\n\
         # TYPE hungryserv_db_pool_max_connections gauge\n\
         hungryserv_db_pool_max_connections {}\n",
        state.notifier.events_persisted(),
        (pool_size as usize).saturating_sub(idle),
        state.db.options().get_max_connections(),
    )
}

/// What Synapse answers for an endpoint it does not have.
async fn unknown_endpoint() -> MatrixError {
    MatrixError::new(
        http::StatusCode::NOT_FOUND,
        ErrorCode::Unrecognized,
        "Unrecognized request",
    )
}

//! Operations endpoints under `/_hungryserv/` that need no authentication: liveness,
//! readiness and metrics. (The admin API under `/_hungryserv/admin/` is `api::room_admin`.)
//!
//! May import: `app`, `metrics`, `store`, `upstream`, `rooms` (the clock), `error`.

mod health;

use axum::Router;
use axum::routing::get;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::app::AppState;
use crate::error::{ErrorCode, MatrixError};
use crate::metrics::{AppserviceSample, Sample};
use crate::rooms::service::now_ms;

/// The router for every `/_hungryserv/...` request.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/_hungryserv/health", get(health::health))
        .route("/_hungryserv/ready", get(health::ready))
        .route("/_hungryserv/metrics", get(metrics))
        .fallback(unknown_endpoint)
        .with_state(state)
}

/// `GET /_hungryserv/metrics`: requests, Synapse's state (degraded mode), the database pool,
/// the room writer, room deletions, appservice delivery (named in `crate::metrics`).
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::render(&state.requests, sample(&state)),
    )
}

/// Reads what the metrics show from the parts of the process that own it.
fn sample(state: &AppState) -> Sample {
    let health = &state.synapse.health;
    let pool_size = state.db.size() as usize;
    let idle = state.db.num_idle();
    let committed = state.notifier.current();
    let now = now_ms();
    let appservices = state
        .delivery
        .stats()
        .into_iter()
        .map(|(id, stats)| AppserviceSample {
            id,
            transactions_sent: stats.transactions_sent.load(Relaxed),
            transactions_failed: stats.transactions_failed.load(Relaxed),
            events_sent: stats.events_sent.load(Relaxed),
            queue_positions: committed - stats.cursor.load(Relaxed),
            in_flight_events: stats.in_flight_events.load(Relaxed),
            oldest_undelivered: match stats.in_flight_since_ms.load(Relaxed) {
                0 => Duration::ZERO,
                since => Duration::from_millis(u64::try_from(now - since).unwrap_or(0)),
            },
        })
        .collect();
    Sample {
        synapse_up: health.is_up(),
        synapse_state: health.for_how_long(),
        synapse_outages: health.outages(),
        confirmed_identities_served: state.identity.served_confirmed(),
        events_persisted: state.notifier.events_persisted(),
        pool_idle: idle as u64,
        pool_in_use: pool_size.saturating_sub(idle) as u64,
        pool_max: u64::from(state.db.options().get_max_connections()),
        deletions_in_progress: state.deletions.in_progress(),
        deleted_rooms: state.deletions.deleted_rooms() as u64,
        appservices,
        tasks_held: state.leadership.held_tasks(),
        ..Sample::default()
    }
    .with_writer(&state.writer_counters)
}

/// What Synapse answers for an endpoint it does not have.
async fn unknown_endpoint() -> MatrixError {
    MatrixError::new(
        http::StatusCode::NOT_FOUND,
        ErrorCode::Unrecognized,
        "Unrecognized request",
    )
}

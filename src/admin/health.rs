//! `GET /_hungryserv/health` (the process is alive) and `GET /_hungryserv/ready` (it can do
//! its job: Synapse and Postgres both answer; `degraded` says when only local rooms are
//! served because Synapse does not answer).

use axum::Json;
use axum::extract::State;
use http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::store;
use crate::upstream::ProbeError;

/// Always 200 while the process serves requests; for liveness probes.
pub async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// 200 when Synapse and Postgres both answer, else 503 naming what is wrong; `degraded` is
/// true while Synapse does not answer and local rooms are still served, and
/// `synapse_state_s` is how long Synapse has been in its current state. For load balancers
/// and deploy scripts. Details go to the log; the body says only which dependency
/// failed and how.
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (synapse, database) = tokio::join!(state.synapse.probe(), store::ping(&state.db));
    let synapse = match synapse {
        Ok(()) => "ok".to_owned(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness: Synapse check failed");
            match err {
                ProbeError::Unreachable(_) => "synapse is unreachable".to_owned(),
                ProbeError::Timeout(_) => "synapse did not answer in time".to_owned(),
                ProbeError::Unhealthy(status) => format!("synapse answered {status}"),
            }
        }
    };
    let database = match database {
        Ok(()) => "ok".to_owned(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness: database check failed");
            "database is unreachable".to_owned()
        }
    };
    let ready = synapse == "ok" && database == "ok";
    // Degraded mode: local rooms are served, Synapse's are not (upstream::health).
    let degraded = synapse != "ok" && database == "ok";
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "status": if ready { "ready" } else { "unavailable" },
            "synapse": synapse,
            "database": database,
            "degraded": degraded,
            "synapse_state_s": state.synapse.health.for_how_long().as_secs(),
        })),
    )
}

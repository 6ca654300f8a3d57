//! The one shared handle every request and task gets: built once, in dependency order, in
//! [`AppState::new`]. Cheap to clone (every field is a shared handle).

use std::sync::Arc;

use sqlx::PgPool;

use crate::config::Config;
use crate::upstream::Synapse;

/// Shared state of a running hungryserv.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The connection pool to hungryserv's database.
    pub db: PgPool,
    /// Synapse, for forwarding and for what hungryserv asks it.
    pub synapse: Synapse,
}

impl AppState {
    pub fn new(config: Config, db: PgPool) -> Self {
        let synapse = Synapse::new(&config.synapse, &config.limits);
        Self {
            config: Arc::new(config),
            db,
            synapse,
        }
    }
}

//! Whether Synapse answers, as hungryserv last saw it: the state degraded mode runs on.
//!
//! Two sources keep it current:
//!
//! * **Passively**, every call hungryserv makes to Synapse (forwarding, whoami, `/sync`, ...)
//!   reports its outcome: any answer (whatever its status, except 502-504) marks Synapse up, a
//!   connect error or a timeout marks it down (not a `/sync` running past its bound: Synapse
//!   may take long over a big one). A hung Synapse is noticed by the first call that times
//!   out, a returning one by the first answer.
//! * **Actively**, [`watch`] asks Synapse's `/health` every [`PROBE_INTERVAL_UP`] while it is up
//!   and every [`PROBE_INTERVAL_DOWN`] while it is down, each probe bounded by
//!   [`PROBE_TIMEOUT`], so a Synapse that is back is noticed within about
//!   `PROBE_INTERVAL_DOWN + PROBE_TIMEOUT` even when no request touches it.
//!
//! Readers use it to avoid waiting on a Synapse that cannot answer: the token cache serves
//! identities Synapse confirmed (`auth::requester`), the merged `/sync` answers local rooms
//! without asking (`sync`). The state starts as up: at start we know nothing, and a wrong "up"
//! costs one bounded call.
//!
//! May import: nothing of the crate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Time between probes while Synapse answers.
pub const PROBE_INTERVAL_UP: Duration = Duration::from_secs(5);
/// Time between probes while Synapse does not answer.
pub const PROBE_INTERVAL_DOWN: Duration = Duration::from_secs(1);
/// Time one probe waits for Synapse's `/health` (a SIGSTOPped Synapse accepts the connection
/// in the kernel and never answers; this is how long it takes to notice).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Synapse's state as last seen. Shared by every clone of [`super::Synapse`].
#[derive(Debug)]
pub struct Health {
    /// Whether Synapse answered the last call that settled the question; waiters (a `/sync`
    /// waiting for Synapse's half) subscribe to learn at once when it stops answering.
    up: watch::Sender<bool>,
    /// When the state last changed (or the process started).
    changed_at: std::sync::Mutex<Instant>,
    /// How often the state went from up to down.
    outages: AtomicU64,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            up: watch::Sender::new(true),
            changed_at: std::sync::Mutex::new(Instant::now()),
            outages: AtomicU64::new(0),
        }
    }
}

impl Health {
    /// Whether Synapse is taken to answer.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// Follows the state: `wait_for(|up| !up)` returns once Synapse is taken to be down.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.up.subscribe()
    }

    /// Synapse answered something.
    pub fn answered(&self) {
        self.set(true);
    }

    /// Synapse could not be reached or did not answer in time.
    pub fn failed(&self) {
        self.set(false);
    }

    /// Records what a call's outcome says: `true` when Synapse answered.
    pub fn set(&self, up: bool) {
        if self.up.send_replace(up) != up {
            if let Ok(mut changed_at) = self.changed_at.lock() {
                *changed_at = Instant::now();
            }
            if up {
                tracing::info!("Synapse answers again: leaving degraded mode");
            } else {
                self.outages.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("Synapse does not answer: degraded mode (local rooms only)");
            }
        }
    }

    /// How long the current state has held.
    pub fn for_how_long(&self) -> Duration {
        self.changed_at
            .lock()
            .map(|changed_at| changed_at.elapsed())
            .unwrap_or_default()
    }

    /// Times Synapse went from answering to not answering.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }
}

/// Probes Synapse forever, keeping [`Health`] current; the caller owns the task and stops it
/// on shutdown. The first probe comes one interval after start: until then the state is up
/// (see the module doc), and every call to Synapse keeps it current meanwhile.
pub async fn watch(synapse: super::Synapse) {
    let mut interval = PROBE_INTERVAL_UP;
    loop {
        tokio::time::sleep(interval).await;
        let up = synapse.probe_within(PROBE_TIMEOUT).await.is_ok();
        synapse.health.set(up);
        interval = if up {
            PROBE_INTERVAL_UP
        } else {
            PROBE_INTERVAL_DOWN
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_count_transitions_only() {
        let health = Health::default();
        assert!(health.is_up());
        health.answered();
        health.failed();
        health.failed();
        assert!(!health.is_up());
        health.answered();
        health.failed();
        assert_eq!(health.outages(), 2);
        health.answered();
        assert!(health.is_up());
        assert_eq!(health.outages(), 2);
    }
}

//! The owner of hungryserv's long-running background tasks: the Synapse health probe, the push-rule
//! learner, the pruners, the badge and push tasks, the purger, the appservice pushers and the
//! SIGHUP reloader. Each is spawned through [`Tasks::spawn`] under a name; [`Tasks::shutdown`]
//! (called by `main` once the server has stopped accepting and drained its connections) signals all
//! of them and waits for them within a deadline, then aborts the rest and says which they were.
//!
//! A task is stopped by dropping its future at its next `.await`. That is safe for every task
//! here because each keeps its progress in Postgres and moves it forward in transactions (a
//! dropped transaction rolls back) or only acts on what is already committed: a pusher's
//! transaction is stored before it is sent and its cursor moves only with the bridge's
//! acknowledgement, the purger deletes in batches that each commit whole, the pruners delete
//! in batches. So a stop loses nothing a restart would not pick up again.
//!
//! Two tasks are not here, on purpose: the room writer, which must finish its queue after
//! every other task has released its handle (so `main` awaits it last, see
//! `rooms::writer`), and typing's expiry timer, which holds only a weak handle and ends by
//! itself once the state is gone. Per-request work (a push delivery, a websocket's writer) is
//! owned by what spawned it.
//!
//! May import: nothing of the crate.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{Id, JoinSet};

/// The background tasks of one running hungryserv.
pub struct Tasks {
    /// The running tasks and their names (for the shutdown report).
    running: Mutex<Running>,
    /// Set to `true` once: every task's stop signal.
    stop: watch::Sender<bool>,
}

#[derive(Default)]
struct Running {
    set: JoinSet<()>,
    names: HashMap<Id, &'static str>,
}

/// What [`Tasks::shutdown`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// Tasks that ended within the deadline.
    pub stopped: usize,
    /// Names of the tasks that did not and were aborted.
    pub aborted: Vec<&'static str>,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self {
            running: Mutex::new(Running::default()),
            stop: watch::channel(false).0,
        }
    }

    /// Runs `task` until it ends or shutdown begins, whichever is first. A task spawned after
    /// shutdown began is stopped at once.
    pub fn spawn(&self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let mut stop = self.stop.subscribe();
        let guarded = async move {
            tokio::select! {
                () = task => tracing::debug!(task = name, "background task ended"),
                _ = stop.wait_for(|stopping| *stopping) => {
                    tracing::debug!(task = name, "background task stopped");
                }
            }
        };
        let mut running = self.lock();
        let handle = running.set.spawn(guarded);
        running.names.insert(handle.id(), name);
    }

    /// How many tasks have been spawned and not yet reaped by [`Tasks::shutdown`].
    pub fn len(&self) -> usize {
        self.lock().set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Signals every task to stop and waits for them at most `grace`; aborts the rest.
    pub async fn shutdown(&self, grace: Duration) -> Stopped {
        self.stop.send_replace(true);
        // Taken out whole: no lock is held across the awaits below.
        let Running { mut set, mut names } = std::mem::take(&mut *self.lock());
        let deadline = tokio::time::Instant::now() + grace;
        let mut stopped = 0;
        loop {
            match tokio::time::timeout_at(deadline, set.join_next_with_id()).await {
                Ok(Some(joined)) => {
                    let id = match &joined {
                        Ok((id, ())) => *id,
                        Err(err) => err.id(),
                    };
                    if let (Some(name), Err(err)) = (names.remove(&id), &joined) {
                        tracing::error!(task = name, error = %err, "background task failed");
                    }
                    stopped += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    set.abort_all();
                    while set.join_next().await.is_some() {}
                    break;
                }
            }
        }
        let mut aborted: Vec<&'static str> = names.into_values().collect();
        aborted.sort_unstable();
        Stopped { stopped, aborted }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        // Nothing panics while holding it; if something did, the set itself is still whole.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A task that ticks forever, counting its ticks.
    async fn ticker(ticks: Arc<AtomicUsize>) {
        loop {
            ticks.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn every_task_stops_within_the_grace_period() {
        let tasks = Tasks::new();
        let ticks = Arc::new(AtomicUsize::new(0));
        for name in ["learner", "pruner", "pusher", "purger"] {
            tasks.spawn(name, ticker(ticks.clone()));
        }
        tasks.spawn("ends by itself", async {});
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(ticks.load(Ordering::Relaxed) > 0, "the tasks ran");

        let started = std::time::Instant::now();
        let report = tasks.shutdown(Duration::from_secs(5)).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(
            report,
            Stopped {
                stopped: 5,
                aborted: vec![]
            }
        );
        assert!(tasks.is_empty());
        let after = ticks.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            ticks.load(Ordering::Relaxed),
            after,
            "nothing runs after shutdown"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_task_that_does_not_yield_is_aborted_and_named() {
        let tasks = Tasks::new();
        tasks.spawn("polite", std::future::pending());
        // Blocks its worker thread past the deadline: the stop signal cannot reach it.
        tasks.spawn("stubborn", async {
            std::thread::sleep(Duration::from_millis(300));
            std::future::pending::<()>().await;
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let report = tasks.shutdown(Duration::from_millis(50)).await;
        assert_eq!(
            report,
            Stopped {
                stopped: 1,
                aborted: vec!["stubborn"]
            }
        );
    }

    #[tokio::test]
    async fn a_task_spawned_after_shutdown_stops_at_once() {
        let tasks = Tasks::new();
        assert_eq!(tasks.shutdown(Duration::from_millis(10)).await.stopped, 0);
        tasks.spawn("late", std::future::pending());
        let report = tasks.shutdown(Duration::from_secs(1)).await;
        assert_eq!(report.stopped, 1);
    }
}

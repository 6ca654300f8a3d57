//! Tasks that must run once among all instances, held through Postgres advisory locks.
//!
//! Each such task has a name (`"push"`, `"appservice pusher:<id>"`, …) and so a lock key
//! (`store::cluster::try_lock`, keyed by the name's SHA-256). One background task per
//! instance keeps **one dedicated connection** (not from the pool: a session-level lock lives
//! as long as the session that took it) and, every [`TRY_EVERY`]:
//!
//! * tries the lock of every wanted task it does not hold (`pg_try_advisory_lock`, never a
//!   waiting lock: a wait would tie up the connection and hide its death);
//! * releases the locks of tasks no longer wanted (a bridge removed);
//! * checks the connection with a round trip while it holds anything.
//!
//! A task runs only while its lock is held ([`Leadership::run_held`]), and is stopped (its
//! future dropped at an await, as at shutdown) as soon as the holder learns that its
//! connection failed. When an instance dies, its session ends and Postgres releases every
//! lock it held: at once for a killed process (the kernel closes the socket), within about
//! ten seconds for a vanished host (the session's TCP keepalives, `store::cluster::
//! keepalives`). Another instance takes each over at its next try, within [`TRY_EVERY`].
//!
//! What a takeover resumes from is each task's own: the pushers' and the push task's
//! positions are in Postgres and advance only after delivery, so the new holder starts at
//! the first undelivered position (at least once, in order). Between Postgres releasing a
//! lock and the old holder noticing, both may run for up to [`TRY_EVERY`] (only when the
//! holder lost its connection but not its process): the worst is a transaction delivered
//! twice, which at-least-once allows and bridges deduplicate by transaction ID.
//!
//! An instance that is alone (`[cluster]` not enabled) holds every task at once, with no
//! database round trip ([`Leadership::solo`]).
//!
//! May import: `store`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::{Notify, watch};

use crate::store::{self, StoreError};

/// How often locks not held are tried, and a held connection is checked.
pub const TRY_EVERY: Duration = Duration::from_secs(1);

/// Who holds what, for this instance. Shared through an `Arc`.
pub struct Leadership {
    /// The database, when other instances may share it; `None`: alone, everything is held.
    db: Option<PgPool>,
    wants: Mutex<Wants>,
    /// Wakes the lock task when a task is wanted or released.
    changed: Notify,
}

#[derive(Default)]
struct Wants {
    /// Lock key → the task that wants it.
    wanted: HashMap<i32, Want>,
    /// Keys no longer wanted, to release.
    released: Vec<i32>,
    /// Bumped by every claim, so a late drop of an old claim leaves a new one alone.
    generation: u64,
}

struct Want {
    name: String,
    generation: u64,
    held: watch::Sender<bool>,
}

/// A task's claim on its lock; dropping it releases the lock.
pub struct Claim {
    leadership: Arc<Leadership>,
    key: i32,
    generation: u64,
    held: watch::Receiver<bool>,
    /// Alone: the sender that keeps `held` true (dropped, the receiver would see a closed
    /// channel).
    _solo: Option<watch::Sender<bool>>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut wants = self.leadership.lock();
        if wants
            .wanted
            .get(&self.key)
            .is_some_and(|want| want.generation == self.generation)
        {
            wants.wanted.remove(&self.key);
            wants.released.push(self.key);
            drop(wants);
            self.leadership.changed.notify_one();
        }
    }
}

/// The lock key of a task name.
fn key_of(name: &str) -> i32 {
    let hash = Sha256::digest(name.as_bytes());
    i32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]])
}

impl Leadership {
    /// Alone: every task is held at once.
    pub fn solo() -> Arc<Self> {
        Arc::new(Self {
            db: None,
            wants: Mutex::default(),
            changed: Notify::new(),
        })
    }

    /// One of several instances on `db`; [`Leadership::run`] must be running.
    pub fn shared(db: PgPool) -> Arc<Self> {
        Arc::new(Self {
            db: Some(db),
            wants: Mutex::default(),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Wants> {
        self.wants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the lock of task `name`: the claim's receiver says whether it is held now.
    pub fn claim(self: &Arc<Self>, name: &str) -> Claim {
        let key = key_of(name);
        if self.db.is_none() {
            let (solo, held) = watch::channel(true);
            return Claim {
                leadership: self.clone(),
                key,
                generation: 0,
                held,
                _solo: Some(solo),
            };
        }
        let mut wants = self.lock();
        wants.generation += 1;
        let generation = wants.generation;
        // The same key claimed again (a pusher restarted) keeps what is held.
        let held = match wants.wanted.get(&key) {
            Some(want) => want.held.clone(),
            None => watch::Sender::new(false),
        };
        wants.released.retain(|k| *k != key);
        let receiver = held.subscribe();
        wants.wanted.insert(
            key,
            Want {
                name: name.to_owned(),
                generation,
                held,
            },
        );
        drop(wants);
        self.changed.notify_one();
        Claim {
            leadership: self.clone(),
            key,
            generation,
            held: receiver,
            _solo: None,
        }
    }

    /// Runs `task()` whenever this instance holds the lock of `name`, until it ends by
    /// itself; stops it when the lock is lost and starts it afresh when it is held again.
    pub async fn run_held<F, Fut>(self: Arc<Self>, name: String, mut task: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = ()>,
    {
        let claim = self.claim(&name);
        let mut held = claim.held.clone();
        loop {
            if held.wait_for(|held| *held).await.is_err() {
                return;
            }
            if self.db.is_some() {
                tracing::info!(task = %name, "this instance holds the task");
            }
            let lost = async {
                // A closed channel (the process is ending) is not a loss: keep running.
                if held.wait_for(|held| !*held).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                () = task() => return,
                () = lost => {
                    tracing::warn!(task = %name, "lost the task's lock; stopped until it is held again");
                }
            }
        }
    }

    /// Each task this instance runs once per cluster, by name, and whether it holds its
    /// lock now (`hungryserv_cluster_task_held`, in `crate::metrics`). Sorted by name.
    pub fn held_tasks(&self) -> Vec<(String, bool)> {
        let wants = self.lock();
        let mut rows: Vec<(String, bool)> = wants
            .wanted
            .values()
            .map(|want| (want.name.clone(), self.db.is_none() || *want.held.borrow()))
            .collect();
        drop(wants);
        rows.sort();
        rows
    }

    /// The lock task of a shared instance (see the module doc): runs until the process ends.
    pub async fn run(self: Arc<Self>) {
        let Some(db) = self.db.clone() else { return };
        loop {
            match self.hold_on(&db).await {
                Ok(()) => {}
                Err(err) => {
                    tracing::warn!(error = %err, "task lock connection lost; tasks held here stop");
                }
            }
            for want in self.lock().wanted.values() {
                want.held.send_replace(false);
            }
            tokio::time::sleep(TRY_EVERY).await;
        }
    }

    /// One connection's life: tries, releases and checks until it fails.
    async fn hold_on(&self, db: &PgPool) -> Result<(), StoreError> {
        let mut conn: PgConnection = db.connect_options().connect().await?;
        store::cluster::keepalives(&mut conn).await?;
        let mut held: HashSet<i32> = HashSet::new();
        loop {
            let released = std::mem::take(&mut self.lock().released);
            for key in released {
                if held.remove(&key) {
                    store::cluster::unlock(&mut conn, key).await?;
                }
            }
            let missing: Vec<i32> = self
                .lock()
                .wanted
                .keys()
                .filter(|key| !held.contains(key))
                .copied()
                .collect();
            for key in missing {
                if store::cluster::try_lock(&mut conn, key).await? {
                    held.insert(key);
                    let wanted = match self.lock().wanted.get(&key) {
                        Some(want) => {
                            want.held.send_replace(true);
                            true
                        }
                        None => false,
                    };
                    if !wanted {
                        // Released while it was being taken: give it back.
                        held.remove(&key);
                        store::cluster::unlock(&mut conn, key).await?;
                    }
                }
            }
            // A key claimed anew while its lock stayed held (a pusher restarted).
            for (key, want) in &self.lock().wanted {
                if held.contains(key) && !*want.held.borrow() {
                    want.held.send_replace(true);
                }
            }
            if !held.is_empty() {
                store::cluster::ping(&mut conn).await?;
            }
            tokio::select! {
                () = tokio::time::sleep(TRY_EVERY) => {}
                () = self.changed.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn alone_every_task_runs_at_once() {
        let leadership = Leadership::solo();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        leadership
            .run_held("push".into(), || {
                let tx = tx.take();
                async move {
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                }
            })
            .await;
        assert!(rx.await.is_ok());
    }

    #[tokio::test]
    async fn alone_a_running_task_is_never_restarted() {
        let leadership = Leadership::solo();
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = starts.clone();
        let run = leadership.run_held("pusher".into(), move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            std::future::pending::<()>()
        });
        let _ = tokio::time::timeout(Duration::from_millis(100), run).await;
        assert_eq!(starts.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn keys_differ_by_name() {
        assert_ne!(key_of("push"), key_of("appservice pusher:a"));
        assert_eq!(key_of("push"), key_of("push"));
    }
}

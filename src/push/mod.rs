//! Push notifications and unread counts for local rooms.
//!
//! Push rules and pushers live in Synapse. hungryserv never holds a user's token when a bridge
//! sends an event, so it learns both whenever the user's own request passes through — each
//! `/sync` (at most every [`RELEARN_AFTER`] per user and process), and right after a write to
//! `/pushrules` or `/pushers/set` that Synapse accepted — and keeps the latest copy in Postgres
//! ([`crate::store::push`]), never the token. A user we never learned gets Synapse's server
//! default rules and no pushers.
//!
//! The push task ([`task`]) follows the event stream: for each new, non-backfilled local event
//! it evaluates every joined local member's rules ([`rules`]) and records the notifications
//! (these are the unread counts, [`counts`]), then sends them to the member's pushers
//! ([`gateway`]). Read plain notifications are pruned after a day ([`prune`]).
//!
//! A pushkey the gateway rejects is dropped from our copy at once, and deleted at Synapse
//! (which is what Synapse does with its own) on the user's next sync, with their token; the
//! user is learned again then. Until that sync the rejection is kept in memory only: after a
//! restart the pusher comes back with the next learn, the gateway rejects it again and the
//! deletion is retried.
//!
//! May import: `config`, `store`, `upstream`, `notify`, `rooms` (helpers).

pub mod badge;
pub mod counts;
pub mod gateway;
pub mod notifications;
pub mod prune;
pub mod rules;
pub mod task;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

use crate::rooms::service::now_ms;
use crate::store;
use crate::upstream::Synapse;

/// A user's rules and pushers are fetched again on a sync this long after the last time.
pub const RELEARN_AFTER: Duration = Duration::from_secs(600);
/// Users remembered as learned; the memory starts over when full.
const MAX_LEARNED: usize = 100_000;
/// Syncs waiting for their user's settings to be fetched; more are passed over (their user is
/// learned on a later sync).
const LEARN_QUEUE: usize = 1024;

/// Learns users' push settings from Synapse. Cheap to share.
pub struct Push {
    db: PgPool,
    synapse: Synapse,
    /// User → when their settings were last fetched by this process.
    learned: Mutex<HashMap<String, Instant>>,
    /// `(token, user)` of syncs whose user is to be learned, for the learner task. Tokens stay
    /// in memory only until fetched with.
    queue: tokio::sync::mpsc::Sender<(String, String)>,
    /// User → `(app_id, pushkey)` of pushers a gateway rejected, to delete at Synapse.
    rejected: Mutex<HashMap<String, Vec<(String, String)>>>,
    /// User → the badge last pushed to them ([`badge`]).
    badges: Mutex<HashMap<String, i64>>,
}

impl Push {
    /// The service, and the learner task to run (it ends when the service is dropped).
    pub fn new(db: PgPool, synapse: Synapse) -> (std::sync::Arc<Self>, impl Future<Output = ()>) {
        let (queue, mut learn) = tokio::sync::mpsc::channel(LEARN_QUEUE);
        let push = std::sync::Arc::new(Self {
            db,
            synapse,
            learned: Mutex::default(),
            queue,
            rejected: Mutex::default(),
            badges: Mutex::default(),
        });
        let weak = std::sync::Arc::downgrade(&push);
        let learner = async move {
            while let Some((token, user)) = learn.recv().await {
                let Some(push) = weak.upgrade() else { break };
                push.learn(&token, &user).await;
            }
        };
        (push, learner)
    }

    /// Called with each `/sync` of a user (their own token): has their push rules and pushers
    /// fetched in the background unless this process did so recently. Never delays the sync.
    pub fn saw_sync(&self, token: &str, user_id: &str) {
        let fresh = {
            let learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
            learned
                .get(user_id)
                .is_some_and(|at| at.elapsed() < RELEARN_AFTER)
        };
        if !fresh {
            // Full: this user is learned on a later sync.
            let _ = self.queue.try_send((token.to_owned(), user_id.to_owned()));
        }
    }

    /// Remembers the badge a push carried to the user; whether it differs from the last one.
    pub fn badge_pushed(&self, user_id: &str, badge: i64) -> bool {
        let mut badges = self.badges.lock().unwrap_or_else(|e| e.into_inner());
        if badges.get(user_id) == Some(&badge) {
            return false;
        }
        if badges.len() >= MAX_LEARNED {
            badges.clear();
        }
        badges.insert(user_id.to_owned(), badge);
        true
    }

    /// A gateway rejected this pusher's pushkey (the push task dropped it from our copy): it
    /// is deleted at Synapse on the user's next sync, which learns the user again.
    pub fn pusher_rejected(&self, user_id: &str, app_id: &str, pushkey: &str) {
        {
            let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            if rejected.len() >= MAX_LEARNED {
                rejected.clear();
            }
            let pushers = rejected.entry(user_id.to_owned()).or_default();
            let pusher = (app_id.to_owned(), pushkey.to_owned());
            if !pushers.contains(&pusher) {
                pushers.push(pusher);
            }
        }
        let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
        learned.remove(user_id);
    }

    /// Deletes at Synapse the user's pushers whose pushkeys were rejected; those that could not
    /// be deleted stay for the next time.
    async fn delete_rejected(&self, token: &str, user_id: &str) {
        let pending = {
            let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            rejected.remove(user_id).unwrap_or_default()
        };
        let mut failed = Vec::new();
        for (app_id, pushkey) in pending {
            match self.synapse.delete_pusher(token, &app_id, &pushkey).await {
                Ok(()) => {
                    tracing::info!(user = %user_id, %app_id, "rejected pusher deleted at Synapse");
                }
                Err(err) => {
                    tracing::warn!(user = %user_id, %app_id, error = %err, "rejected pusher not deleted at Synapse");
                    failed.push((app_id, pushkey));
                }
            }
        }
        if !failed.is_empty() {
            let mut rejected = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            rejected
                .entry(user_id.to_owned())
                .or_default()
                .extend(failed);
        }
    }

    /// Fetches the user's push rules and pushers unless this process did so recently.
    /// Failures are logged.
    pub async fn learn(&self, token: &str, user_id: &str) {
        {
            let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
            if learned
                .get(user_id)
                .is_some_and(|at| at.elapsed() < RELEARN_AFTER)
            {
                return;
            }
            if learned.len() >= MAX_LEARNED {
                learned.clear();
            }
            // Marked before fetching, so concurrent syncs of the user fetch once.
            learned.insert(user_id.to_owned(), Instant::now());
        }
        // Before the pushers are fetched, so a rejected one does not come back.
        self.delete_rejected(token, user_id).await;
        let (rules, pushers) = tokio::join!(
            self.refresh_rules(token, user_id),
            self.refresh_pushers(token, user_id)
        );
        if !(rules && pushers) {
            let mut learned = self.learned.lock().unwrap_or_else(|e| e.into_inner());
            learned.remove(user_id);
        }
    }

    /// Fetches and stores the user's push rules; whether that worked.
    pub async fn refresh_rules(&self, token: &str, user_id: &str) -> bool {
        let rules = match self.synapse.push_rules(token).await {
            Ok(rules) => rules,
            Err(err) => {
                tracing::warn!(user = %user_id, error = %err, "push rules not fetched");
                return false;
            }
        };
        let saved = async {
            let mut conn = self.db.acquire().await?;
            store::push::save_rules(&mut conn, user_id, &rules).await
        };
        match saved.await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(user = %user_id, error = %err, "push rules not stored");
                false
            }
        }
    }

    /// Fetches and stores the user's pushers (HTTP pushers only; email pushers stay
    /// Synapse's); whether that worked.
    pub async fn refresh_pushers(&self, token: &str, user_id: &str) -> bool {
        let listed = match self.synapse.pushers(token).await {
            Ok(listed) => listed,
            Err(err) => {
                tracing::warn!(user = %user_id, error = %err, "pushers not fetched");
                return false;
            }
        };
        let pushers = http_pushers(listed);
        let saved = async {
            let mut tx = self.db.begin().await?;
            store::push::replace_pushers(&mut tx, user_id, &pushers, now_ms()).await?;
            tx.commit().await?;
            Ok::<_, store::StoreError>(())
        };
        match saved.await {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!(user = %user_id, error = %err, "pushers not stored");
                false
            }
        }
    }
}

/// `(app_id, pushkey, pusher)` of the HTTP pushers in a `GET /pushers` list that are enabled
/// (MSC3881) and have a `data.url`.
fn http_pushers(listed: Vec<Value>) -> Vec<(String, String, Value)> {
    listed
        .into_iter()
        .filter(|p| p.get("kind").and_then(Value::as_str) == Some("http"))
        .filter(|p| {
            p.get("enabled")
                .or_else(|| p.get("org.matrix.msc3881.enabled"))
                .and_then(Value::as_bool)
                != Some(false)
        })
        .filter(|p| p.pointer("/data/url").and_then(Value::as_str).is_some())
        .filter_map(|p| {
            let app_id = p.get("app_id")?.as_str()?.to_owned();
            let pushkey = p.get("pushkey")?.as_str()?.to_owned();
            Some((app_id, pushkey, p))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_enabled_http_pushers_with_a_url() {
        let listed = vec![
            json!({"kind": "http", "app_id": "a", "pushkey": "k", "data": {"url": "http://g"}}),
            json!({"kind": "email", "app_id": "m.email", "pushkey": "e@x", "data": {}}),
            json!({"kind": "http", "app_id": "b", "pushkey": "k", "data": {}}),
            json!({"kind": "http", "app_id": "c", "pushkey": "k", "data": {"url": "http://g"},
                   "org.matrix.msc3881.enabled": false}),
        ];
        let kept: Vec<String> = http_pushers(listed).into_iter().map(|p| p.0).collect();
        assert_eq!(kept, ["a"]);
    }
}

//! Spare Synapse connections, so that a new sliding sync connection does not wait for Synapse
//! to compute the user's room list afresh.
//!
//! A request without `pos` makes Synapse sort all of the user's rooms and read the window's
//! rooms from scratch (about 240 ms for 500 rooms on the development machine), and a client
//! sends one each time it starts a connection: at app start, and after `M_UNKNOWN_POS`. So after
//! answering one, we send the same request again in the background, on a Synapse connection of
//! our own (`conn_id` [`PREFIX`]…), and keep its answer as a *spare*. The next new connection of
//! the same device with the same body (its `conn_id` aside) takes the spare: Synapse's answer
//! and its connection, whose `pos` the connection then continues from.
//!
//! What holds:
//!
//! * **Nothing is missed.** A spare is Synapse's own state at its `pos`; the connection's next
//!   request asks Synapse from that `pos`, and Synapse answers it with everything that changed
//!   since (at once: a long-poll returns as soon as anything changed after its position). What
//!   the client sees is at most [`MAX_AGE`] old, and only until that next request.
//! * **One client connection per Synapse connection.** A spare is taken once. Two client
//!   connections on one Synapse connection would cancel each other's positions (using a
//!   position drops the connection's others).
//! * **Only lists, subscriptions and room extensions.** A body with `to_device`, `e2ee` or an
//!   extension we do not know gets no spare: to-device messages and key counts stay on the
//!   client's own connection and its exact positions.
//! * **Bounded.** One spare per (user, device, body), at most [`MAX_SPARES`]; each is one
//!   background request, aborted when the spare is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinHandle;

/// The `conn_id` prefix of our own Synapse connections.
const PREFIX: &str = "hs.spare.";
/// A spare answer older than this is not used.
pub const MAX_AGE: Duration = Duration::from_secs(120);
/// The most spares kept.
const MAX_SPARES: usize = 10_000;
/// The extensions a spare may carry.
const ROOM_EXTENSIONS: [&str; 3] = ["account_data", "receipts", "typing"];

/// Whose spare: the device and the body it answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpareKey {
    pub user: String,
    pub device: String,
    /// The body as sent to Synapse, without `conn_id`, as JSON text.
    pub shape: String,
}

impl SpareKey {
    /// The key of a Synapse body, or `None` when such a body gets no spare.
    pub fn of(user: &str, device: &str, synapse_body: &Value) -> Option<Self> {
        let mut body = synapse_body.as_object()?.clone();
        body.remove("conn_id");
        let extensions_ok = match body.get("extensions") {
            None => true,
            Some(Value::Object(extensions)) => extensions.iter().all(|(name, config)| {
                ROOM_EXTENSIONS.contains(&name.as_str())
                    || config.get("enabled") != Some(&Value::Bool(true))
            }),
            Some(_) => false,
        };
        extensions_ok.then(|| Self {
            user: user.to_owned(),
            device: device.to_owned(),
            shape: Value::Object(body).to_string(),
        })
    }
}

/// Synapse's answer on a spare connection.
pub struct Taken {
    /// The Synapse `conn_id` the client's connection continues on.
    pub conn_id: String,
    /// Synapse's answer (an object with a `pos`).
    pub answer: Value,
}

/// A spare: the request in the background, then its answer.
struct Spare {
    conn_id: String,
    /// When the request was sent.
    made: Instant,
    /// Synapse's answer and when it came; `None` if Synapse did not answer usably.
    task: JoinHandle<Option<(Value, Instant)>>,
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The spares of this process.
#[derive(Default)]
pub struct Spares {
    inner: Mutex<HashMap<SpareKey, Spare>>,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SpareKey, Spare>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the spare of `key`, waiting for its answer if it is still on its way. `None`
    /// when there is none, or it failed or is too old: the caller asks Synapse itself.
    pub async fn take(&self, key: &SpareKey) -> Option<Taken> {
        let mut spare = self.lock().remove(key)?;
        let (answer, at) = (&mut spare.task).await.ok()??;
        (at.elapsed() <= MAX_AGE).then(|| Taken {
            conn_id: spare.conn_id.clone(),
            answer,
        })
    }

    /// Starts a spare for `key` unless one exists: `ask(conn_id)` is Synapse's answer to the
    /// body on a new connection `conn_id`.
    pub fn make<F, Fut>(&self, key: SpareKey, ask: F)
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = Option<Value>> + Send + 'static,
    {
        let mut spares = self.lock();
        if spares
            .get(&key)
            .is_some_and(|s| s.made.elapsed() <= MAX_AGE)
        {
            return;
        }
        if spares.len() >= MAX_SPARES {
            // Those past their age go first; if still full, no spare.
            spares.retain(|_, s| s.made.elapsed() <= MAX_AGE);
            if spares.len() >= MAX_SPARES {
                return;
            }
        }
        let conn_id = format!(
            "{PREFIX}{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        );
        let asked = ask(conn_id.clone());
        let task = tokio::spawn(async move {
            let answer = asked.await?;
            answer
                .get("pos")
                .and_then(Value::as_str)
                .is_some()
                .then(|| (answer, Instant::now()))
        });
        spares.insert(
            key,
            Spare {
                conn_id,
                made: Instant::now(),
                task,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(body: &Value) -> Option<SpareKey> {
        SpareKey::of("@a:x", "D", body)
    }

    #[test]
    fn the_key_is_the_body_without_its_conn_id_and_only_for_room_extensions() {
        let a = json!({"conn_id": "room-list", "lists": {"all": {"ranges": [[0, 19]]}},
                       "extensions": {"receipts": {"enabled": true}, "to_device": {"enabled": false}}});
        let b = json!({"conn_id": "other", "lists": {"all": {"ranges": [[0, 19]]}},
                       "extensions": {"receipts": {"enabled": true}, "to_device": {"enabled": false}}});
        assert_eq!(key(&a), key(&b));
        assert!(key(&a).is_some());
        let wider = json!({"lists": {"all": {"ranges": [[0, 39]]}}});
        assert_ne!(key(&a), key(&wider));
        for no in [
            json!({"extensions": {"to_device": {"enabled": true}}}),
            json!({"extensions": {"e2ee": {"enabled": true}}}),
            json!({"extensions": {"org.example.new": {"enabled": true}}}),
            json!({"extensions": []}),
            json!([]),
        ] {
            assert!(key(&no).is_none(), "{no}");
        }
        let other_device = SpareKey::of("@a:x", "E", &a);
        assert_ne!(key(&a), other_device);
    }

    #[tokio::test]
    async fn a_spare_is_taken_once_on_its_own_connection() {
        let spares = Spares::default();
        let key = key(&json!({"lists": {}})).unwrap();
        assert!(spares.take(&key).await.is_none());
        spares.make(key.clone(), |conn| async move {
            Some(json!({"pos": "1/s1", "conn": conn}))
        });
        // A second spare for the same key is not made while one exists.
        spares.make(key.clone(), |_| async { panic!("made twice") });
        let taken = spares.take(&key).await.unwrap();
        assert!(taken.conn_id.starts_with(PREFIX));
        assert_eq!(taken.answer["conn"], json!(taken.conn_id));
        assert!(spares.take(&key).await.is_none(), "taken once");
        // An answer without `pos` is no spare.
        spares.make(key.clone(), |_| async {
            Some(json!({"errcode": "M_UNKNOWN"}))
        });
        assert!(spares.take(&key).await.is_none());
        spares.make(key.clone(), |_| async { None });
        assert!(spares.take(&key).await.is_none());
    }
}

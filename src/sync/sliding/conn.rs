//! Per-connection state of simplified sliding sync, and the `pos` that names it.
//!
//! A connection is `(user, device, conn_id)`. Each answer records a [`Snapshot`] under a new
//! position number and hands the client `pos` = `hs1_{instance}_{number}`. The snapshot holds
//! what the next request needs: Synapse's own `pos`, our stream positions, which local rooms
//! the client has been sent and up to where, and what Synapse last said about its rooms and
//! lists (so an answer made while Synapse's request was dropped still has Synapse's counts),
//! and the `bump_stamp` each room was last sent with.
//!
//! As in Synapse, using position N deletes every other position of the connection except N
//! itself (so a client that retries N after a cancelled request gets the same answer), and a
//! request without `pos` starts the connection afresh.
//!
//! The state lives in this process's memory: `instance` is random per process, so a `pos`
//! from before a restart, or from another hungryserv process, is unknown and the client is
//! told `M_UNKNOWN_POS` — which every sliding sync client answers by starting a new
//! connection. Memory is bounded: idle connections are dropped after [`IDLE`], and at most
//! [`MAX_CONNECTIONS`] are kept (the least recently used goes first).
//!
//! `hs1_` can never be Synapse's `pos` (those are `<number>/<stream token>`).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::notify::SidePositions;

use super::RequiredState;
use super::spare::Spares;

/// A connection unused for this long is forgotten.
const IDLE: Duration = Duration::from_secs(6 * 3600);
/// The most connections kept.
const MAX_CONNECTIONS: usize = 50_000;
/// The prefix of our `pos`.
const PREFIX: &str = "hs1_";

/// Who a connection belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub user: String,
    pub device: String,
    pub conn_id: String,
}

/// What the client has of one local room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The stream position the room was brought up to.
    pub upto: i64,
    /// The timeline limit it was sent with.
    pub timeline_limit: i64,
    /// The required state it was sent with (shared: every answer copies the snapshot).
    pub required_state: Arc<RequiredState>,
    /// The lazy-loaded members already sent.
    pub lazy_members: Arc<BTreeSet<String>>,
}

/// What Synapse told this connection about one of its rooms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SynapseRoom {
    /// `origin_server_ts` of the newest timeline event seen (the merge key).
    pub ts: Option<i64>,
}

/// What Synapse said about one list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SynapseList {
    pub count: u64,
    /// Synapse's rooms of its window, in its order.
    pub room_ids: Vec<String>,
}

/// The state of a connection at one position.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Synapse's `pos`; `None` before Synapse first answered.
    pub synapse_pos: Option<String>,
    /// The Synapse `conn_id` this connection is on when it is not the client's own (a spare
    /// taken at its start, [`super::spare`]).
    pub synapse_conn: Option<String>,
    /// Our event stream position the client has.
    pub stream: i64,
    /// Our room data position and typing serial the client has.
    pub side: SidePositions,
    /// Local room → what the client has of it.
    pub sent: HashMap<String, Sent>,
    /// Synapse room → what we know of its recency.
    pub synapse_rooms: HashMap<String, SynapseRoom>,
    /// List name → Synapse's last answer for it.
    pub synapse_lists: HashMap<String, SynapseList>,
    /// Rooms in the user's `m.direct` (Synapse's global account data), when known.
    pub direct: Option<HashSet<String>>,
    /// Room (either side) → the `bump_stamp` last sent for it ([`super::stamp`]).
    pub stamps: HashMap<String, i64>,
    /// Stream position → origin_server_ts of the events the local window rooms were last
    /// ordered by (a timestamp never changes; kept so they are not read again).
    pub local_ts: HashMap<i64, i64>,
}

struct Conn {
    /// Position number → snapshot.
    positions: Vec<(u64, Arc<Snapshot>)>,
    used: Instant,
}

/// Every connection of this process. Cheap to share.
pub struct Connections {
    /// Random per process: a `pos` of another process or from before a restart is unknown.
    instance: String,
    inner: Mutex<Inner>,
    /// Synapse answers kept for the next new connection of a device ([`super::spare`]).
    pub spares: Spares,
}

#[derive(Default)]
struct Inner {
    conns: HashMap<ConnKey, Conn>,
    next: u64,
}

impl Default for Connections {
    fn default() -> Self {
        Self {
            instance: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            inner: Mutex::default(),
            spares: Spares::default(),
        }
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the connection afresh (a request without `pos`).
    pub fn reset(&self, key: &ConnKey) {
        self.lock().conns.remove(key);
    }

    /// The snapshot `pos` names; every other position of the connection is dropped. `None`
    /// when `pos` is not ours, not this connection's, or no longer kept.
    pub fn take(&self, key: &ConnKey, pos: &str) -> Option<Arc<Snapshot>> {
        let number = self.parse(pos)?;
        let mut inner = self.lock();
        let conn = inner.conns.get_mut(key)?;
        if conn.used.elapsed() > IDLE {
            inner.conns.remove(key);
            return None;
        }
        let snapshot = conn
            .positions
            .iter()
            .find(|(n, _)| *n == number)
            .map(|(_, snapshot)| snapshot.clone())?;
        conn.positions.retain(|(n, _)| *n == number);
        conn.used = Instant::now();
        Some(snapshot)
    }

    /// Records the state after an answer and returns its `pos`.
    pub fn record(&self, key: &ConnKey, snapshot: Snapshot) -> String {
        let mut inner = self.lock();
        inner.next += 1;
        let number = inner.next;
        let now = Instant::now();
        if !inner.conns.contains_key(key) && inner.conns.len() >= MAX_CONNECTIONS {
            inner.conns.retain(|_, conn| conn.used.elapsed() <= IDLE);
            if inner.conns.len() >= MAX_CONNECTIONS
                && let Some(oldest) = inner
                    .conns
                    .iter()
                    .min_by_key(|(_, conn)| conn.used)
                    .map(|(key, _)| key.clone())
            {
                inner.conns.remove(&oldest);
            }
        }
        let conn = inner.conns.entry(key.clone()).or_insert_with(|| Conn {
            positions: Vec::new(),
            used: now,
        });
        conn.used = now;
        // The position the client used stays (a retry of it), plus the new one.
        conn.positions.truncate(1);
        conn.positions.push((number, Arc::new(snapshot)));
        format!("{PREFIX}{}_{number}", self.instance)
    }

    /// Forgets the connection after Synapse expired its half.
    pub fn expire(&self, key: &ConnKey) {
        self.reset(key);
    }

    fn parse(&self, pos: &str) -> Option<u64> {
        let rest = pos.strip_prefix(PREFIX)?;
        let (instance, number) = rest.split_once('_')?;
        (instance == self.instance)
            .then(|| number.parse().ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(conn_id: &str) -> ConnKey {
        ConnKey {
            user: "@a:x".into(),
            device: "D".into(),
            conn_id: conn_id.into(),
        }
    }

    fn at(stream: i64) -> Snapshot {
        Snapshot {
            stream,
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_position_can_be_retried_until_a_newer_one_is_used() {
        let conns = Connections::default();
        let first = conns.record(&key("c"), at(1));
        assert_eq!(conns.take(&key("c"), &first).map(|s| s.stream), Some(1));
        let second = conns.record(&key("c"), at(2));
        // A retry of the first position (the answer with `second` was lost).
        assert_eq!(conns.take(&key("c"), &first).map(|s| s.stream), Some(1));
        let third = conns.record(&key("c"), at(3));
        // The second was superseded when the first was used again.
        assert!(conns.take(&key("c"), &second).is_none());
        assert_eq!(conns.take(&key("c"), &third).map(|s| s.stream), Some(3));
        // Using the third dropped the first.
        assert!(conns.take(&key("c"), &first).is_none());
    }

    #[test]
    fn positions_belong_to_one_connection_and_one_process() {
        let conns = Connections::default();
        let pos = conns.record(&key("a"), at(1));
        assert!(conns.take(&key("b"), &pos).is_none());
        let other = Connections::default();
        assert!(other.take(&key("a"), &pos).is_none());
        for bad in ["", "hs1_", "hs1_x_1", "5/s12_3", &format!("{pos}x")] {
            assert!(conns.take(&key("a"), bad).is_none(), "{bad}");
        }
        conns.reset(&key("a"));
        assert!(conns.take(&key("a"), &pos).is_none());
    }
}

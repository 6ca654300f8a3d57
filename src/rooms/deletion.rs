//! Deleting local rooms: gone at once for everyone, purged in the background.
//!
//! [`Deletions::delete`] marks the room deleted in one statement (migration 0007) and adds it
//! to an in-memory set that the HTTP layer checks before any request naming a local room is
//! served, so from then on every request about the room is answered 404 (joins of a blocked
//! room 403). The members still joined or invited then leave (one writer job, each member
//! the sender of their own leave, as Synapse's room shutdown does): their next sync shows
//! the room under `leave`, and appservices get the leaves through their ordinary queues.
//!
//! The purge runs in one background task: it deletes the room's messages in batches of
//! [`PURGE_BATCH`] events, each its own short transaction, so other rooms' writes never wait
//! for it. The room's state events (a few per member: their joins and the leaves), current
//! state and memberships stay for `deletion.leaves_kept_s` more — that is what a member's
//! later sync reads to show the room under `leave` (history visibility needs the join before
//! the leave), and what an appservice that is behind still finds in its queue — and are then
//! removed with the room row. Its progress is only the rows that are gone, so a purge
//! interrupted by a restart simply starts again ([`Deletions::resume`]).
//!
//! This process's set of deleted rooms is what requests it serves are checked against. With
//! several instances, a deletion is announced ([`crate::cluster`]) and every other instance
//! adds the room to its set within a round trip; until then the writer refuses the room's
//! events anyway once the purge has sealed it. Each instance purges the deletions it took
//! (the queue is in memory); unfinished ones are resumed by whichever instance starts next,
//! and two instances that start together may both resume one purge (each batch is its own
//! short transaction, so this should cost only work; it is not tested).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rand::RngCore;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Map, json};
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::cluster::note::Note;
use crate::tasks::Tasks;

use super::RoomError;
use super::auth::Proposal;
use super::service::{Rooms, now_ms};
use crate::config::DeletionConfig;
use crate::store::{self, StoreError};

/// Events deleted per purge statement: small enough that one batch takes a few
/// milliseconds, large enough that a 10,000-event room is a handful of statements.
pub const PURGE_BATCH: i64 = 2_000;
/// Deletions waiting for the purge task at most (the rest wait in the database until the
/// next start).
const QUEUE: usize = 10_000;
/// How soon a room whose last rows had to stay (they held the database's newest event) is
/// tried again.
const TOMBSTONE_RETRY: Duration = Duration::from_secs(1);
/// Prefix of our `delete_id`s: routes `delete_status/{delete_id}` to hungryserv.
pub const DELETE_ID_PREFIX: &str = "hsdel_";

/// What a deletion asks for (the fields of Synapse's delete request we honour).
#[derive(Debug, Clone, Copy)]
pub struct DeleteOptions {
    /// Remove the rows (else the room only disappears).
    pub purge: bool,
    /// Nobody may join the room again.
    pub block: bool,
}

/// A deletion just made.
#[derive(Debug, Clone)]
pub struct Deleted {
    pub delete_id: String,
    /// The members made to leave.
    pub kicked_users: Vec<String>,
    /// The aliases removed.
    pub local_aliases: Vec<String>,
}

/// A deleted room, as the request gate sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    pub blocked: bool,
}

/// Room deletion: the gate's set and the purge queue. Shared (`Arc`).
pub struct Deletions {
    db: PgPool,
    rooms: Rooms,
    /// Deleted or blocked rooms → blocked.
    gone: RwLock<HashMap<String, bool>>,
    /// `delete_id`s for the purge task.
    queue: mpsc::Sender<String>,
    /// Deletions queued or being purged (shared with the purge task).
    in_progress: Arc<AtomicI64>,
}

impl Deletions {
    /// Starts the purge task under `tasks`; it stops once the returned handle is dropped or
    /// at shutdown (a batch commits whole or not at all; the rest resumes at the next start).
    pub fn start(db: PgPool, rooms: Rooms, config: &DeletionConfig, tasks: &Tasks) -> Arc<Self> {
        let (queue, jobs) = mpsc::channel(QUEUE);
        let in_progress = Arc::new(AtomicI64::new(0));
        let purger = Purger {
            in_progress: in_progress.clone(),
            db: db.clone(),
            rooms: rooms.clone(),
            leaves_kept: config.leaves_kept,
        };
        tasks.spawn("purger", purger.run(jobs));
        Arc::new(Self {
            db,
            rooms,
            gone: RwLock::new(HashMap::new()),
            queue,
            in_progress,
        })
    }

    /// Loads the deleted rooms and queues the purges a restart interrupted. Call before
    /// serving requests.
    pub async fn resume(&self) -> Result<usize, RoomError> {
        let gone = store::deletion::gone_rooms(&self.db).await?;
        if let Ok(mut set) = self.gone.write() {
            set.extend(gone);
        }
        let unfinished = store::deletion::unfinished(&self.db).await?;
        let count = unfinished.len();
        for delete_id in unfinished {
            self.enqueue(delete_id);
        }
        Ok(count)
    }

    /// Another instance deleted (or blocked) `room`.
    pub fn gone_elsewhere(&self, room: &str, blocked: bool) {
        if let Ok(mut set) = self.gone.write() {
            set.insert(room.to_owned(), blocked);
        }
    }

    /// Whether a room is deleted or blocked.
    pub fn gone(&self, room_id: &str) -> Option<Gone> {
        self.gone
            .read()
            .ok()
            .and_then(|set| set.get(room_id).map(|&blocked| Gone { blocked }))
    }

    /// Deletes a local room: marks it deleted, makes its members leave, queues the purge.
    /// `NotFound` when there is no such room (or it is deleted already).
    pub async fn delete(
        &self,
        room_id: &OwnedRoomId,
        requested_by: &OwnedUserId,
        options: DeleteOptions,
    ) -> Result<Deleted, RoomError> {
        let delete_id = new_delete_id();
        let aliases = {
            let mut conn = self.db.acquire().await.map_err(StoreError::from)?;
            store::deletion::mark_deleted(
                &mut conn,
                &store::deletion::MarkDeleted {
                    room_id: room_id.as_str(),
                    delete_id: &delete_id,
                    requested_by: requested_by.as_str(),
                    purge: options.purge,
                    block: options.block,
                },
            )
            .await?
        };
        let Some(local_aliases) = aliases else {
            return Err(RoomError::NotFound("Unknown room".into()));
        };
        if let Ok(mut set) = self.gone.write() {
            set.insert(room_id.to_string(), options.block);
        }
        self.rooms.notifier.announce(Note::RoomGone {
            room: room_id.to_string(),
            blocked: options.block,
        });
        tracing::info!(%room_id, %delete_id, purge = options.purge, block = options.block, "room deleted");
        // The room is gone for requests now; what follows only tidies up. A failure here is
        // the purge task's to retry, not the caller's.
        let kicked_users = match leave_all(&self.db, &self.rooms, room_id, &delete_id).await {
            Ok(kicked) => kicked,
            Err(err) => {
                tracing::warn!(%room_id, error = %err, "members not made to leave yet; the purge task retries");
                Vec::new()
            }
        };
        self.enqueue(delete_id.clone());
        Ok(Deleted {
            delete_id,
            kicked_users,
            local_aliases,
        })
    }

    fn enqueue(&self, delete_id: String) {
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = self.queue.try_send(delete_id) {
            self.in_progress.fetch_sub(1, Ordering::Relaxed);
            // Recorded in the database as unfinished: the next start picks it up.
            tracing::warn!(error = %err, "purge queue full; the purge runs after the next restart");
        }
    }

    /// The appservice whose token created a room (`None`: a user did); `NotFound` when there
    /// is no such room.
    pub async fn appservice_of(&self, room_id: &OwnedRoomId) -> Result<Option<String>, RoomError> {
        let mut conn = self.db.acquire().await.map_err(StoreError::from)?;
        store::rooms::get(&mut conn, room_id.as_str())
            .await?
            .map(|room| room.appservice_id)
            .ok_or_else(|| RoomError::NotFound("Unknown room".into()))
    }

    /// Deletions queued or being purged.
    pub fn in_progress(&self) -> i64 {
        self.in_progress.load(Ordering::Relaxed)
    }

    /// Deleted or blocked rooms requests are refused for.
    pub fn deleted_rooms(&self) -> usize {
        self.gone.read().map(|set| set.len()).unwrap_or(0)
    }

    pub(super) fn db(&self) -> &PgPool {
        &self.db
    }

    /// Rooms and events per class (of rooms not deleted).
    pub async fn class_counts(&self) -> Result<Vec<(String, i64, i64)>, RoomError> {
        Ok(store::rooms::class_counts(&self.db).await?)
    }

    /// A deletion by its ID.
    pub async fn status(
        &self,
        delete_id: &str,
    ) -> Result<Option<store::deletion::DeletionRow>, RoomError> {
        Ok(store::deletion::get(&self.db, delete_id).await?)
    }

    /// Every deletion of a room.
    pub async fn statuses_of(
        &self,
        room_id: &str,
    ) -> Result<Vec<store::deletion::DeletionRow>, RoomError> {
        Ok(store::deletion::of_room(&self.db, room_id).await?)
    }
}

/// `hsdel_` and 24 random base62 characters.
fn new_delete_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let random: String = (0..24)
        .map(|_| {
            let index = (rng.next_u32() as usize) % ALPHABET.len();
            ALPHABET.get(index).copied().unwrap_or(b'A') as char
        })
        .collect();
    format!("{DELETE_ID_PREFIX}{random}")
}

/// Makes every joined or invited member leave, all in one writer job (each the sender of
/// their own leave: always allowed). Returns who left.
async fn leave_all(
    db: &PgPool,
    rooms: &Rooms,
    room_id: &OwnedRoomId,
    delete_id: &str,
) -> Result<Vec<String>, RoomError> {
    let members = store::deletion::present_members(db, room_id.as_str()).await?;
    if members.is_empty() {
        return Ok(Vec::new());
    }
    let ts = now_ms();
    let mut proposals = Vec::with_capacity(members.len());
    let mut users = Vec::with_capacity(members.len());
    for (user, _) in members {
        let Ok(sender) = OwnedUserId::try_from(user.as_str()) else {
            tracing::warn!(%room_id, %user, "member with an invalid user ID left in place");
            continue;
        };
        let mut content = Map::new();
        content.insert("membership".into(), json!("leave"));
        proposals.push(Proposal {
            sender,
            kind: "m.room.member".into(),
            state_key: Some(user.clone()),
            content,
            origin_server_ts: ts,
            redacts: None,
        });
        users.push(user);
    }
    rooms.append_internal(room_id, proposals).await?;
    store::deletion::add_kicked(db, delete_id, &users).await?;
    Ok(users)
}

/// The background purge: one deletion at a time, in queue order.
struct Purger {
    db: PgPool,
    rooms: Rooms,
    /// How long the room's state events outlive its messages.
    leaves_kept: Duration,
    /// Deletions queued or being purged.
    in_progress: Arc<AtomicI64>,
}

/// A room whose messages are purged and whose state events (and row) are still there.
struct Tombstone {
    delete_id: String,
    room_id: OwnedRoomId,
    /// When to remove the rest.
    due: tokio::time::Instant,
}

impl Purger {
    async fn run(self, mut jobs: mpsc::Receiver<String>) {
        let mut tombstones: Vec<Tombstone> = Vec::new();
        loop {
            let next_due = tombstones.iter().map(|t| t.due).min();
            let job = match next_due {
                None => jobs.recv().await,
                Some(due) => match tokio::time::timeout_at(due, jobs.recv()).await {
                    Ok(job) => job,
                    Err(_) => {
                        self.clear_tombstones(&mut tombstones).await;
                        continue;
                    }
                },
            };
            let Some(delete_id) = job else { break };
            let outcome = self.run_deletion(&delete_id).await;
            self.in_progress.fetch_sub(1, Ordering::Relaxed);
            match outcome {
                Ok(Some(room_id)) => tombstones.push(Tombstone {
                    delete_id,
                    room_id,
                    due: tokio::time::Instant::now() + self.leaves_kept,
                }),
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(%delete_id, error = %err, "room purge failed");
                    let message = "Purge failed; it is retried at the next start";
                    if let Err(err) =
                        store::deletion::set_status(&self.db, &delete_id, "failed", Some(message))
                            .await
                    {
                        tracing::error!(%delete_id, error = %err, "cannot record a failed purge");
                    }
                }
            }
        }
    }

    /// Removes what is left of the rooms whose time has come. A room holding the database's
    /// newest event keeps it (and its row) until a newer event exists: retried later.
    async fn clear_tombstones(&self, tombstones: &mut Vec<Tombstone>) {
        let now = tokio::time::Instant::now();
        for tombstone in tombstones.iter_mut().filter(|t| t.due <= now) {
            match self
                .purge_rows(&tombstone.delete_id, &tombstone.room_id, false)
                .await
            {
                Ok(true) => continue,
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(delete_id = %tombstone.delete_id, error = %err, "purge of a deleted room's last rows failed");
                }
            }
            tombstone.due = now + TOMBSTONE_RETRY;
        }
        // Cleared ones were left with their old due time; drop them.
        tombstones.retain(|t| t.due > now);
    }

    /// Runs (or resumes) one deletion: the leaves still missing, then the purge of the
    /// messages. Returns the room when rows remain for later (its state events, kept
    /// [`Purger::leaves_kept`]).
    async fn run_deletion(&self, delete_id: &str) -> Result<Option<OwnedRoomId>, RoomError> {
        let Some(deletion) = store::deletion::get(&self.db, delete_id).await? else {
            return Ok(None);
        };
        let room_id = OwnedRoomId::try_from(deletion.room_id.as_str())
            .map_err(|_| RoomError::Internal(format!("bad room ID {:?}", deletion.room_id)))?;
        if deletion.status != "complete" {
            store::deletion::set_status(&self.db, delete_id, "active", None).await?;
            // Members still present (the request's leaves failed, or a restart came between).
            // Not once the purge has begun: the writer refuses a sealed room's events, and a
            // member who joined behind the leaves goes with the room's rows.
            if !store::deletion::sealed(&self.db, room_id.as_str()).await? {
                leave_all(&self.db, &self.rooms, &room_id, delete_id).await?;
            }
        }
        if !deletion.purge {
            store::deletion::set_status(&self.db, delete_id, "complete", None).await?;
            return Ok(None);
        }
        let room_gone = self.purge_rows(delete_id, &room_id, true).await?;
        store::deletion::set_status(&self.db, delete_id, "complete", None).await?;
        Ok((!room_gone).then_some(room_id))
    }

    /// Deletes the room's rows, batch by batch: with `keep_state` its messages only (state
    /// events, current state and memberships stay), else everything. Returns whether the
    /// room row is gone.
    async fn purge_rows(
        &self,
        delete_id: &str,
        room_id: &OwnedRoomId,
        keep_state: bool,
    ) -> Result<bool, RoomError> {
        let started = std::time::Instant::now();
        let mut conn = self.db.acquire().await.map_err(StoreError::from)?;
        // After the leaves, before the first event goes: nothing is written behind the purge.
        store::deletion::seal(&mut conn, room_id.as_str()).await?;
        if !keep_state {
            store::deletion::purge_state(&mut conn, room_id.as_str()).await?;
        }
        let mut events = 0;
        loop {
            let n = store::deletion::purge_events(
                &mut conn,
                room_id.as_str(),
                delete_id,
                PURGE_BATCH,
                keep_state,
            )
            .await?;
            events += n;
            if n == 0 {
                break;
            }
            // Each batch is its own transaction; between two, other tasks run.
            tokio::task::yield_now().await;
        }
        let room_gone =
            !keep_state && store::deletion::purge_room(&mut conn, room_id.as_str()).await?;
        tracing::info!(
            %room_id, %delete_id, events, keep_state, room_gone,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "room purged"
        );
        Ok(room_gone)
    }
}

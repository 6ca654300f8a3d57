//! The room writer: the one place events of local rooms are accepted, ordered and committed.
//!
//! # Ordering invariant
//!
//! A reader must never observe stream position N before every position below N is
//! committed. The writer guarantees it like this:
//!
//! 1. Each batch runs in one transaction that first takes a transaction-level advisory lock
//!    ([`store::rooms::begin_batch`]). Writers in other processes wait for it.
//! 2. Under the lock, positions are allocated densely from `max(stream) + 1`.
//! 3. Postgres marks a transaction committed before it releases its locks, so the next batch
//!    (here or in another process) allocates only after the previous one is visible, and
//!    commits after it.
//!
//! So commits happen in position order, and a reader that sees N can see everything below N.
//! `tests/ordering.rs` checks it with concurrent writers in two pools.
//!
//! # Group commit
//!
//! Requests queue on a bounded channel. The writer takes the first waiting job and every job
//! queued behind it (up to [`MAX_BATCH`]), authorizes each against the room state as left by
//! the jobs before it, and writes them all with a handful of multi-row statements in one
//! transaction. Under load, batches grow and the per-event cost falls; a lone request still
//! commits at once. A job that fails authorization fails alone; if the transaction itself
//! fails, each job is retried in a transaction of its own so one bad job cannot sink others.
//!
//! # Fast path
//!
//! After a commit the writer knows the highest position and the state of the rooms it wrote.
//! A following batch of plain messages (no state events, no redactions) into cached rooms is
//! built from that knowledge alone and written by one statement (`writer_append`, migrations
//! 0004 and 0015) that takes the same lock and checks, under it, that the highest position,
//! the rooms' `latest_stream` and the transaction IDs are as the writer believes (the last
//! two by its own UPDATE and INSERT, which undo the statement when they fall short). If
//! anything differs (another process wrote, a txn ID was used) it writes nothing and the
//! batch goes the ordinary way. One round trip instead of four: this is the ingest path.
//!
//! The writer waits for a batch to commit before it builds the next one. Pipelining (the
//! next fast-path batch sent on a second connection while one is in flight) lost on 2 cores:
//! smaller batches, more Postgres CPU per event (figures in commit 10e872b). A new attempt
//! must handle two races: the batch sent second can reach the lock first, and a batch built
//! on one that fails must not commit, which `MAX(stream)` alone does not ensure (check the
//! newest event's ID).
//!
//! # Purged rooms
//!
//! No event of a room is committed after the room's purge has begun. Both ways in
//! (`writer_begin` and `writer_append`, migrations 0014 and 0015) lock the batch's room rows
//! before inserting events and treat a room marked `purging` ([`store::deletion::seal`]) as
//! absent, so a job racing the seal is either committed before it (and purged with the room)
//! or refused as for a room the sender is not in. A deleted room not yet sealed still takes
//! the deletion's leaves. This is what keeps a purged room's events from outliving it;
//! `events` has no foreign key to `rooms` (it cost a check per row). `tests/deletion.rs`
//! races both paths against the seal.
//!
//! # Room state cache
//!
//! The writer keeps the current state of rooms it wrote recently. Each batch checks the
//! rooms' `latest_stream` (one query) and reloads any room another process wrote since.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use ruma::{OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use tokio::sync::{mpsc, oneshot};

use super::RoomError;
use super::auth::{self, Proposal};
use super::event::{new_event_id, redacted_content};
use super::state::{RoomState, StateEntry};
use crate::metrics::WriterCounters;
use crate::notify::{Commit, Notifier};
use crate::store::{self, events::StoredEvent, rooms::RoomRow};

/// Most jobs in one transaction.
pub const MAX_BATCH: usize = 256;
/// Jobs that may wait for the writer before senders are made to wait.
const QUEUE: usize = 4096;
/// Rooms whose state the writer keeps in memory.
const CACHE_ROOMS: usize = 10_000;

/// A room to create.
#[derive(Debug, Clone)]
pub struct NewRoom {
    pub room_id: OwnedRoomId,
    /// Routing class name.
    pub class: String,
    pub creator: OwnedUserId,
    /// Registration id, when an appservice created it.
    pub appservice_id: Option<String>,
    /// Local aliases to point at the room.
    pub aliases: Vec<OwnedRoomAliasId>,
}

/// The request a send was made under, for idempotency. A transaction ID is unique per
/// requester *and* room, as Synapse stores it (`event_txn_id_device_id`): the same ID sent to
/// two rooms is two transactions, while a `redact` reusing a `send`'s ID in the same room
/// gets the send's event back, exactly as from Synapse.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Txn {
    /// Who: `user|device`, or `as:<appservice id>|user`.
    pub scope: String,
    /// Where the transaction applies: the room ID.
    pub endpoint: String,
    /// The client's transaction ID.
    pub txn_id: String,
}

impl Txn {
    /// The key under which the transaction is remembered.
    fn key(&self) -> (String, String) {
        (
            format!("{}|{}", self.scope, self.endpoint),
            self.txn_id.clone(),
        )
    }
}

/// What a job did.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// New events, in stream order.
    Written(Vec<StoredEvent>),
    /// The transaction was already used: the event it produced then.
    Repeated(OwnedEventId),
    /// A batch whose events all exist already (a retried batch send): their IDs.
    Existing(Vec<OwnedEventId>),
}

/// Where a batch send puts its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// After the room's newest event (new messages: sync shows them).
    Forward,
    /// Before the room's oldest event (history: sync does not show them as new).
    Backward,
    /// Forward if the room has no messages yet, else backward.
    ForwardIfEmpty,
}

/// A batch send: events with bridge-chosen IDs, written all or nothing.
#[derive(Debug, Clone)]
pub struct BatchJob {
    pub room_id: OwnedRoomId,
    /// The appservice user sending the batch; must be joined.
    pub by: OwnedUserId,
    /// Events in request order, each with its chosen ID (or none: we pick one).
    pub events: Vec<(Proposal, Option<OwnedEventId>)>,
    pub placement: Placement,
    /// A user whose read receipt moves to the batch's last event, in the same commit.
    pub mark_read_by: Option<OwnedUserId>,
    /// `send_notification: false`: the events never push or count as unread.
    pub silent: bool,
}

enum Job {
    Create {
        room: NewRoom,
        events: Vec<Proposal>,
    },
    Append {
        room_id: OwnedRoomId,
        events: Vec<Proposal>,
        txn: Option<Txn>,
    },
    Batch(BatchJob),
}

struct Pending {
    job: Job,
    reply: oneshot::Sender<Result<Outcome, RoomError>>,
}

/// Handle to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Pending>,
    /// What the writer task did, for the metrics.
    counters: Arc<WriterCounters>,
}

impl Writer {
    /// Starts the writer task; it stops when every handle is dropped.
    pub fn start(db: PgPool, notifier: Notifier) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let counters = Arc::new(WriterCounters::default());
        let task = tokio::spawn(
            WriterTask {
                db,
                notifier,
                cache: HashMap::new(),
                last_stream: None,
                counters: counters.clone(),
            }
            .run(rx),
        );
        (Self { jobs: tx, counters }, task)
    }

    /// The transactions the writer committed so far, by path.
    pub fn counters(&self) -> Arc<WriterCounters> {
        self.counters.clone()
    }

    /// Creates a room from its initial events; the first must be `m.room.create`.
    pub async fn create(
        &self,
        room: NewRoom,
        events: Vec<Proposal>,
    ) -> Result<Vec<StoredEvent>, RoomError> {
        match self.submit(Job::Create { room, events }).await? {
            Outcome::Written(events) => Ok(events),
            Outcome::Repeated(_) | Outcome::Existing(_) => {
                Err(RoomError::Internal("create reported a repeat".into()))
            }
        }
    }

    /// Appends events to a room, all or none.
    pub async fn append(
        &self,
        room_id: OwnedRoomId,
        events: Vec<Proposal>,
        txn: Option<Txn>,
    ) -> Result<Outcome, RoomError> {
        self.submit(Job::Append {
            room_id,
            events,
            txn,
        })
        .await
    }

    /// Writes a batch send (see [`BatchJob`]), all or none.
    pub async fn batch(&self, job: BatchJob) -> Result<Outcome, RoomError> {
        self.submit(Job::Batch(job)).await
    }

    async fn submit(&self, job: Job) -> Result<Outcome, RoomError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Pending { job, reply })
            .await
            .map_err(|_| RoomError::Internal("the room writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| RoomError::Internal("the room writer dropped a job".into()))?
    }
}

struct WriterTask {
    db: PgPool,
    notifier: Notifier,
    /// Current state of recently written rooms.
    cache: HashMap<OwnedRoomId, RoomState>,
    /// The highest position this writer committed, when nothing failed since: the fast
    /// path's starting point.
    last_stream: Option<i64>,
    /// Transactions by path, shared with the handles.
    counters: Arc<WriterCounters>,
}

/// Everything one batch will write, built in memory first.
#[derive(Default)]
struct Batch {
    next_stream: i64,
    events: Vec<StoredEvent>,
    /// Working copies of the rooms touched, as the batch leaves them.
    rooms: HashMap<OwnedRoomId, RoomState>,
    new_rooms: Vec<RoomRow>,
    /// `(scope, txn) → event`, from the database and from this batch.
    txns: HashMap<(String, String), String>,
    new_txns: Vec<(String, String, String)>,
    aliases: Vec<(String, String, String)>,
    /// `(target, redaction, pruned content)`.
    redactions: Vec<(String, String, serde_json::Map<String, Value>)>,
    /// Contents of this batch's events before a redaction in it pruned them, so a failing
    /// all-or-nothing job can put them back: `(index in events, content)`.
    pruned: Vec<(usize, serde_json::Map<String, Value>)>,
    /// Stream positions of events inserted as history (backward batch sends).
    backfilled: Vec<i64>,
    /// Stream positions of events that never push (batch sends without notifications).
    silent: Vec<i64>,
    /// Read receipts to write with the events.
    receipts: Vec<store::receipts::Receipt>,
}

/// How batch sends learn which of their chosen event IDs exist already.
///
/// Looking 1,000 IDs up costs a few milliseconds per batch, and a flood of backfill almost
/// never repeats an ID. So a batch is first written optimistically: a reused ID then fails
/// the insert on [`store::events::EVENT_ID_CONSTRAINT`] (nothing is written), and the jobs
/// run again with the lookup, which tells a repeat of a whole batch (answered with its IDs)
/// from a clash (`M_INVALID_PARAM`). IDs repeated within one transaction are always caught in
/// memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdCheck {
    Optimistic,
    LookUp,
}

/// Whether a write failed on an event ID that is taken.
fn is_event_id_clash(err: &store::StoreError) -> bool {
    matches!(
        err,
        store::StoreError::Database(sqlx::Error::Database(db))
            if db.constraint() == Some(store::events::EVENT_ID_CONSTRAINT)
    )
}

/// What a batch wrote, for the notifier.
fn commit_of(outcomes: &[Result<Outcome, RoomError>]) -> Commit {
    let mut commit = Commit::default();
    for event in outcomes.iter().flat_map(|outcome| match outcome {
        Ok(Outcome::Written(events)) => events.as_slice(),
        _ => &[],
    }) {
        commit.rooms.push((event.room_id.to_string(), event.stream));
        if event.kind == "m.room.member"
            && let Some(user) = &event.state_key
        {
            commit.members.push((user.clone(), event.stream));
        }
    }
    commit
}

impl WriterTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            self.run_batch(batch, IdCheck::Optimistic).await;
        }
    }

    async fn run_batch(&mut self, batch: Vec<Pending>, ids: IdCheck) {
        let jobs: Vec<&Job> = batch.iter().map(|pending| &pending.job).collect();
        let started = std::time::Instant::now();
        match self.write(&jobs, ids).await {
            Ok((outcomes, rooms, max_stream)) => {
                self.last_stream = Some(max_stream);
                tracing::debug!(
                    jobs = batch.len(),
                    micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                    max_stream,
                    "batch committed"
                );
                self.remember(rooms);
                self.notifier.committed(max_stream, commit_of(&outcomes));
                for (pending, outcome) in batch.into_iter().zip(outcomes) {
                    let _ = pending.reply.send(outcome);
                }
            }
            Err(err) if batch.len() > 1 => {
                self.last_stream = None;
                tracing::warn!(error = %err, jobs = batch.len(), "batch failed; retrying its jobs one by one");
                self.cache.clear();
                for pending in batch {
                    Box::pin(self.run_batch(vec![pending], ids)).await;
                }
            }
            Err(err) if ids == IdCheck::Optimistic && is_event_id_clash(&err) => {
                // A batch send reused an existing event ID: a repeat or a clash. Run it again
                // looking the IDs up first, which answers it properly.
                self.last_stream = None;
                self.cache.clear();
                Box::pin(self.run_batch(batch, IdCheck::LookUp)).await;
            }
            Err(err) => {
                self.last_stream = None;
                tracing::error!(error = %err, "write failed");
                self.cache.clear();
                for pending in batch {
                    let _ = pending.reply.send(Err(RoomError::Store(err.to_string())));
                }
            }
        }
    }

    fn remember(&mut self, rooms: HashMap<OwnedRoomId, RoomState>) {
        if self.cache.len() + rooms.len() > CACHE_ROOMS {
            self.cache.clear();
        }
        self.cache.extend(rooms);
    }

    /// Runs the jobs in one transaction. Returns each job's outcome, the rooms as left, and
    /// the highest stream position written.
    #[allow(clippy::type_complexity)]
    async fn write(
        &mut self,
        jobs: &[&Job],
        ids: IdCheck,
    ) -> Result<
        (
            Vec<Result<Outcome, RoomError>>,
            HashMap<OwnedRoomId, RoomState>,
            i64,
        ),
        store::StoreError,
    > {
        if let Some(written) = self.write_fast(jobs).await? {
            self.counters.fast.fetch_add(1, Relaxed);
            return Ok(written);
        }
        let mut wanted: Vec<String> = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Append { room_id, .. } => Some(room_id.to_string()),
                Job::Batch(batch) => Some(batch.room_id.to_string()),
                Job::Create { .. } => None,
            })
            .collect();
        wanted.sort();
        wanted.dedup();
        let (scopes, txn_ids): (Vec<String>, Vec<String>) = jobs
            .iter()
            .filter_map(|job| match job {
                Job::Append { txn: Some(txn), .. } => Some(txn.key()),
                _ => None,
            })
            .unzip();
        let began = std::time::Instant::now();
        let mut tx = self.db.begin().await?;
        let start = store::rooms::begin_batch(&mut tx, &wanted, &scopes, &txn_ids).await?;
        let mut batch = Batch {
            next_stream: start.max_stream + 1,
            txns: start.used_txns,
            ..Batch::default()
        };
        self.load_rooms(&mut tx, start.latest, &mut batch).await?;

        let loaded = began.elapsed();
        let mut outcomes = Vec::with_capacity(jobs.len());
        // Batch sends whose events move into their outcome after the commit: (outcome index,
        // their range of `batch.events`).
        let mut moved = Vec::new();
        for job in jobs {
            let outcome = match job {
                Job::Append {
                    room_id,
                    events,
                    txn,
                } => append(&mut tx, &mut batch, room_id, events, txn.as_ref()).await?,
                Job::Create { room, events } => create(&mut tx, &mut batch, room, events).await?,
                Job::Batch(job) => {
                    let first = batch.events.len();
                    let outcome = batch_send(&mut tx, &mut batch, job, ids).await?;
                    if matches!(outcome, Ok(Outcome::Written(_))) {
                        moved.push((outcomes.len(), first..batch.events.len()));
                    }
                    outcome
                }
            };
            outcomes.push(outcome);
        }

        let built = began.elapsed();
        for room in &batch.new_rooms {
            store::rooms::insert(&mut tx, room).await?;
        }
        let positions = batch
            .rooms
            .values()
            .map(|state| {
                (
                    state.room_id.to_string(),
                    state.max_topo,
                    state.min_topo,
                    state.latest_stream,
                )
            })
            .collect();
        store::events::write_batch(
            &mut tx,
            &store::events::BatchWrite {
                events: &batch.events,
                backfilled: &batch.backfilled,
                silent: &batch.silent,
                positions,
                txns: batch.new_txns,
            },
        )
        .await?;
        for (alias, room_id, creator) in &batch.aliases {
            store::rooms::insert_alias(&mut tx, alias, room_id, creator).await?;
        }
        for (target, redaction, pruned) in &batch.redactions {
            store::events::redact(&mut tx, target, redaction, pruned).await?;
        }
        // Receipts (batch send's `mark_read_by`) go on the room data stream, in this same
        // transaction: all or nothing with the events.
        let mut receipts_at = None;
        if !batch.receipts.is_empty() {
            let position = store::room_data::next_position(&mut tx).await?;
            for receipt in &mut batch.receipts {
                receipt.stream = position;
            }
            store::receipts::upsert(&mut tx, &batch.receipts).await?;
            let rooms: Vec<String> = batch.receipts.iter().map(|r| r.room_id.clone()).collect();
            receipts_at = Some((position, rooms));
        }
        let written = began.elapsed();
        tx.commit().await?;
        self.counters.ordinary.fetch_add(1, Relaxed);
        // Where a slow-path batch spends its time (this is the batch send path): reading the
        // rooms, building the events, the inserts, the commit.
        let micros = |d: std::time::Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let committed = began.elapsed();
        tracing::debug!(
            events = batch.events.len(),
            load_us = micros(loaded),
            build_us = micros(built - loaded),
            write_us = micros(written - built),
            commit_us = micros(committed - written),
            "batch phases"
        );
        if let Some((position, rooms)) = receipts_at {
            self.notifier.room_data_committed(position, &rooms, &[]);
        }
        // Moved, not copied: a batch send's thousand contents would otherwise be cloned here
        // and the originals freed before the reply. Last range first, so the earlier ones
        // keep their place.
        for (index, range) in moved.into_iter().rev() {
            if let Some(Ok(Outcome::Written(events))) = outcomes.get_mut(index) {
                *events = batch.events.drain(range).collect();
            }
        }
        let max_stream = batch.next_stream - 1;
        Ok((outcomes, batch.rooms, max_stream))
    }

    /// The fast path (see the module doc). `Ok(None)`: not eligible, or the database moved
    /// on since this writer's last commit; nothing was written and the cached state of the
    /// rooms involved was dropped.
    #[allow(clippy::type_complexity)]
    async fn write_fast(
        &mut self,
        jobs: &[&Job],
    ) -> Result<
        Option<(
            Vec<Result<Outcome, RoomError>>,
            HashMap<OwnedRoomId, RoomState>,
            i64,
        )>,
        store::StoreError,
    > {
        let Some(last_stream) = self.last_stream else {
            return Ok(None);
        };
        let eligible = jobs.iter().all(|job| match job {
            Job::Append {
                room_id, events, ..
            } => {
                self.cache.contains_key(room_id)
                    && events.iter().all(|e| {
                        e.state_key.is_none() && e.redacts.is_none() && e.kind != "m.room.redaction"
                    })
            }
            Job::Create { .. } | Job::Batch(_) => false,
        });
        if !eligible {
            return Ok(None);
        }
        let mut batch = Batch {
            next_stream: last_stream + 1,
            ..Batch::default()
        };
        let mut expected = Vec::new();
        for job in jobs {
            if let Job::Append { room_id, .. } = job
                && let Some(state) = self.cache.remove(room_id)
            {
                expected.push((room_id.clone(), state.latest_stream));
                batch.rooms.insert(room_id.clone(), state);
            }
        }
        // No database access happens for these jobs: no redaction targets to look up, and
        // used txn IDs are checked by writer_append itself.
        let mut conn = self.db.acquire().await?;
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Job::Append {
                room_id,
                events,
                txn,
            } = job
            {
                outcomes.push(append(&mut conn, &mut batch, room_id, events, txn.as_ref()).await?);
            }
        }
        let rooms = expected
            .iter()
            .filter_map(|(room_id, expected_latest)| {
                let state = batch.rooms.get(room_id)?;
                Some((
                    room_id.to_string(),
                    *expected_latest,
                    state.max_topo,
                    state.min_topo,
                    state.latest_stream,
                ))
            })
            .collect();
        let written = store::events::fast_append(
            &mut conn,
            &store::events::FastAppend {
                expected_max: last_stream,
                rooms,
                txns: &batch.new_txns,
                events: &batch.events,
            },
        )
        .await?;
        if !written {
            self.counters.declined.fetch_add(1, Relaxed);
            tracing::debug!(
                jobs = jobs.len(),
                "fast path declined: the database moved on"
            );
            self.last_stream = None;
            return Ok(None);
        }
        let max_stream = batch.next_stream - 1;
        Ok(Some((outcomes, batch.rooms, max_stream)))
    }

    /// Puts the current state of every room the jobs append to into `batch.rooms`, from the
    /// cache when it is still current (`latest` holds each room's `latest_stream`), else from
    /// the database.
    async fn load_rooms(
        &mut self,
        conn: &mut PgConnection,
        latest: HashMap<String, i64>,
        batch: &mut Batch,
    ) -> Result<(), store::StoreError> {
        for (room, latest_stream) in latest {
            let Ok(room_id) = OwnedRoomId::try_from(room.as_str()) else {
                continue;
            };
            let state = match self.cache.remove(&room_id) {
                Some(cached) if cached.latest_stream == latest_stream => cached,
                _ => load_state(conn, &room_id).await?,
            };
            batch.rooms.insert(room_id, state);
        }
        Ok(())
    }
}

/// Reads a room's state from the database.
async fn load_state(
    conn: &mut PgConnection,
    room_id: &OwnedRoomId,
) -> Result<RoomState, store::StoreError> {
    let row = store::rooms::get(conn, room_id.as_str())
        .await?
        .ok_or_else(|| {
            store::StoreError::Corrupt(format!("room {room_id} vanished during a write"))
        })?;
    let creator = OwnedUserId::try_from(row.creator.as_str())
        .map_err(|_| store::StoreError::Corrupt(format!("creator {:?}", row.creator)))?;
    let mut state = RoomState::new(room_id.clone(), &row.room_version, creator);
    state.max_topo = row.max_topo;
    state.min_topo = row.min_topo;
    state.latest_stream = row.latest_stream;
    for stored in store::events::current_state(conn, room_id.as_str()).await? {
        let event = stored.event;
        if let Some(key) = event.state_key {
            state.entries.insert(
                (event.kind, key),
                StateEntry {
                    event_id: event.event_id,
                    stream: event.stream,
                    sender: event.sender,
                    content: event.content,
                },
            );
        }
    }
    Ok(state)
}

async fn append(
    conn: &mut PgConnection,
    batch: &mut Batch,
    room_id: &OwnedRoomId,
    proposals: &[Proposal],
    txn: Option<&Txn>,
) -> Result<Result<Outcome, RoomError>, store::StoreError> {
    if let Some(txn) = txn
        && let Some(event_id) = batch.txns.get(&txn.key())
    {
        return Ok(match OwnedEventId::try_from(event_id.as_str()) {
            Ok(event_id) => Ok(Outcome::Repeated(event_id)),
            Err(_) => Err(RoomError::Internal(format!(
                "stored txn event id {event_id:?}"
            ))),
        });
    }
    let Some(mut state) = batch.rooms.remove(room_id) else {
        // What Synapse answers for a room it does not know: a join finds no server to join
        // through; anything else is "not in room".
        let sender = proposals
            .first()
            .map(|p| p.sender.to_string())
            .unwrap_or_default();
        let joining = proposals
            .first()
            .is_some_and(|p| p.kind == "m.room.member" && p.membership() == Some("join"));
        return Ok(Err(if joining {
            RoomError::NotFound("No known servers".into())
        } else {
            RoomError::Forbidden(format!("User {sender} not in room {room_id}"))
        }));
    };
    // A state event identical to the current one (same sender, same content) is not written
    // again; the existing event is the answer, as Synapse deduplicates state events.
    if let [proposal] = proposals
        && let Some(key) = &proposal.state_key
        && let Some(current) = state.get(&proposal.kind, key)
        && current.sender == proposal.sender
        && current.content == proposal.content
    {
        let event_id = current.event_id.clone();
        batch.rooms.insert(room_id.clone(), state);
        return Ok(Ok(Outcome::Repeated(event_id)));
    }
    // Undo information for all-or-nothing jobs. A single event is checked before anything
    // is applied, so only multi-event jobs need a copy of the state (which holds every
    // member of the room: too costly to copy per message).
    let saved_state = (proposals.len() > 1).then(|| state.clone());
    let snapshot = (
        batch.next_stream,
        batch.events.len(),
        batch.redactions.len(),
        batch.pruned.len(),
    );
    let mut result = Ok(());
    for proposal in proposals {
        if let Err(err) = accept(conn, batch, &mut state, proposal, txn).await? {
            result = Err(err);
            break;
        }
    }
    let outcome = match result {
        Ok(()) => {
            let written = batch.events[snapshot.1..].to_vec();
            if let (Some(txn), Some(first)) = (txn, written.first()) {
                let (scope, txn_id) = txn.key();
                batch
                    .txns
                    .insert((scope.clone(), txn_id.clone()), first.event_id.to_string());
                batch
                    .new_txns
                    .push((scope, txn_id, first.event_id.to_string()));
            }
            Ok(Outcome::Written(written))
        }
        Err(err) => {
            // All or nothing: undo this job's events and state changes.
            if let Some(saved) = saved_state {
                state = saved;
            }
            batch.next_stream = snapshot.0;
            batch.events.truncate(snapshot.1);
            batch.redactions.truncate(snapshot.2);
            for (index, content) in batch.pruned.drain(snapshot.3..).rev() {
                if let Some(event) = batch.events.get_mut(index) {
                    event.content = content;
                    event.redacted_by = None;
                }
            }
            Err(err)
        }
    };
    batch.rooms.insert(room_id.clone(), state);
    Ok(outcome)
}

async fn create(
    conn: &mut PgConnection,
    batch: &mut Batch,
    room: &NewRoom,
    proposals: &[Proposal],
) -> Result<Result<Outcome, RoomError>, store::StoreError> {
    for alias in &room.aliases {
        let taken = store::rooms::alias_room(conn, alias.as_str())
            .await?
            .is_some()
            || batch
                .aliases
                .iter()
                .any(|(existing, _, _)| existing == alias.as_str());
        if taken {
            return Ok(Err(RoomError::RoomInUse("Room alias already taken".into())));
        }
    }
    let Some((create_event, rest)) = proposals
        .split_first()
        .filter(|(first, _)| first.kind == "m.room.create")
    else {
        return Ok(Err(RoomError::Internal(
            "a room must start with m.room.create".into(),
        )));
    };
    // The version createRoom chose (`rooms::version`) is the create event's.
    let version = create_event
        .content
        .get("room_version")
        .and_then(Value::as_str)
        .unwrap_or(super::version::DEFAULT.as_str());
    let mut state = RoomState::new(room.room_id.clone(), version, room.creator.clone());
    let snapshot = (batch.next_stream, batch.events.len());
    push_event(batch, &mut state, create_event, None);
    for proposal in rest {
        if let Err(err) = accept(conn, batch, &mut state, proposal, None).await? {
            batch.next_stream = snapshot.0;
            batch.events.truncate(snapshot.1);
            return Ok(Err(err));
        }
    }
    batch.new_rooms.push(RoomRow {
        room_id: room.room_id.to_string(),
        class: room.class.clone(),
        room_version: state.room_version.clone(),
        creator: room.creator.to_string(),
        appservice_id: room.appservice_id.clone(),
        max_topo: state.max_topo,
        min_topo: state.min_topo,
        latest_stream: state.latest_stream,
    });
    for alias in &room.aliases {
        batch.aliases.push((
            alias.to_string(),
            room.room_id.to_string(),
            room.creator.to_string(),
        ));
    }
    let written = batch.events[snapshot.1..].to_vec();
    batch.rooms.insert(room.room_id.clone(), state);
    Ok(Ok(Outcome::Written(written)))
}

/// Authorizes one event against `state` and, if allowed, adds it to the batch.
async fn accept(
    conn: &mut PgConnection,
    batch: &mut Batch,
    state: &mut RoomState,
    proposal: &Proposal,
    txn: Option<&Txn>,
) -> Result<Result<(), RoomError>, store::StoreError> {
    // The redaction target, if it is an event of this room: (id, sender, type, content).
    let mut target: Option<(OwnedEventId, String, String, serde_json::Map<String, Value>)> = None;
    if let Some(redacts) = &proposal.redacts {
        target = match batch
            .events
            .iter()
            .find(|event| &event.event_id == redacts && event.room_id == state.room_id)
        {
            Some(event) => Some((
                event.event_id.clone(),
                event.sender.to_string(),
                event.kind.clone(),
                event.content.clone(),
            )),
            None => store::events::by_id(conn, state.room_id.as_str(), redacts.as_str())
                .await?
                .map(|found| {
                    (
                        found.event.event_id,
                        found.event.sender.to_string(),
                        found.event.kind,
                        found.event.content,
                    )
                }),
        };
    }
    if let Some(redacts) = &proposal.redacts {
        // Synapse's checks before the auth rules (`handle_new_client_event`).
        if target
            .as_ref()
            .is_some_and(|(_, _, kind, _)| kind == "m.room.create")
        {
            return Ok(Err(RoomError::Forbidden(
                "Redacting create events is not permitted".into(),
            )));
        }
        if target.is_none() && in_another_room(conn, batch, state, redacts).await? {
            return Ok(Err(RoomError::BadRequest(
                "Cannot redact event from a different room".into(),
            )));
        }
    }
    if let Err(err) = auth::check(
        state,
        proposal,
        target.as_ref().map(|(_, sender, _, _)| sender.as_str()),
    ) {
        return Ok(Err(err.into()));
    }
    let event_id = push_event(batch, state, proposal, txn);
    if let Some((target_id, _, kind, content)) = target {
        redact(
            batch,
            state,
            &target_id,
            &redacted_content(&state.room_version, &kind, &content),
            &event_id,
        );
    }
    Ok(Ok(()))
}

/// Whether `event_id` is an event of another room than `state`'s (written, or in this batch).
async fn in_another_room(
    conn: &mut PgConnection,
    batch: &Batch,
    state: &RoomState,
    event_id: &OwnedEventId,
) -> Result<bool, store::StoreError> {
    if let Some(event) = batch
        .events
        .iter()
        .find(|event| &event.event_id == event_id)
    {
        return Ok(event.room_id != state.room_id);
    }
    Ok(store::events::room_of(conn, event_id.as_str())
        .await?
        .is_some_and(|room| room != state.room_id.as_str()))
}

/// Gives an accepted event its ID and positions, appends it to the batch and applies it to
/// the room state.
fn push_event(
    batch: &mut Batch,
    state: &mut RoomState,
    proposal: &Proposal,
    txn: Option<&Txn>,
) -> OwnedEventId {
    state.max_topo += 1;
    let topo = state.max_topo;
    push_event_at(batch, state, proposal, txn, new_event_id(), topo)
}

/// [`push_event`] with a given event ID and topological position.
fn push_event_at(
    batch: &mut Batch,
    state: &mut RoomState,
    proposal: &Proposal,
    txn: Option<&Txn>,
    event_id: OwnedEventId,
    topo: i64,
) -> OwnedEventId {
    let stream = batch.next_stream;
    batch.next_stream += 1;
    state.latest_stream = stream;
    let replaces_state = proposal
        .state_key
        .as_ref()
        .and_then(|key| state.get(&proposal.kind, key))
        .map(|entry| entry.event_id.clone());
    if let Some(key) = &proposal.state_key {
        state.entries.insert(
            (proposal.kind.clone(), key.clone()),
            StateEntry {
                event_id: event_id.clone(),
                stream,
                sender: proposal.sender.clone(),
                content: proposal.content.clone(),
            },
        );
    }
    batch.events.push(StoredEvent {
        stream,
        topo,
        event_id: event_id.clone(),
        room_id: state.room_id.clone(),
        sender: proposal.sender.clone(),
        kind: proposal.kind.clone(),
        state_key: proposal.state_key.clone(),
        origin_server_ts: proposal.origin_server_ts,
        content: proposal.content.clone(),
        replaces_state,
        redacts: proposal.redacts.clone(),
        redacted_by: None,
        txn: txn.map(|txn| (txn.scope.clone(), txn.txn_id.clone())),
    });
    event_id
}

/// Applies an accepted redaction: the target's content becomes `pruned` in this batch, in the
/// room state (if it is current state) and, after the events are written, in the database.
fn redact(
    batch: &mut Batch,
    state: &mut RoomState,
    target: &OwnedEventId,
    pruned: &serde_json::Map<String, Value>,
    redaction: &OwnedEventId,
) {
    if let Some(event) = batch
        .events
        .iter_mut()
        .find(|event| &event.event_id == target)
    {
        event.content = pruned.clone();
        event.redacted_by = Some(redaction.clone());
    }
    if let Some(entry) = state
        .entries
        .values_mut()
        .find(|entry| &entry.event_id == target)
    {
        entry.content = pruned.clone();
    }
    batch
        .redactions
        .push((target.to_string(), redaction.to_string(), pruned.clone()));
}

/// A batch send: bridge-chosen event IDs, placed after the newest or before the oldest event,
/// all or nothing. Senders are the appservice's users and need not be joined (bridges backfill
/// history of people who left); the requesting appservice user must be joined.
async fn batch_send(
    conn: &mut PgConnection,
    batch: &mut Batch,
    job: &BatchJob,
    ids: IdCheck,
) -> Result<Result<Outcome, RoomError>, store::StoreError> {
    let room_id = &job.room_id;
    let Some(state) = batch.rooms.get(room_id) else {
        return Ok(Err(RoomError::Forbidden(format!(
            "User {} not in room {room_id}",
            job.by
        ))));
    };
    if state.membership(job.by.as_str()) != Some("join") {
        return Ok(Err(RoomError::Forbidden(format!(
            "User {} not in room {room_id}",
            job.by
        ))));
    }
    // Chosen IDs: a repeat of a whole earlier batch is answered with its IDs; any other
    // clash is refused.
    let chosen: Vec<String> = job
        .events
        .iter()
        .filter_map(|(_, id)| id.as_ref().map(ToString::to_string))
        .collect();
    let mut unique = std::collections::HashSet::new();
    if let Some(dup) = chosen.iter().find(|id| !unique.insert(id.as_str())) {
        return Ok(Err(RoomError::InvalidParam(format!(
            "Event ID {dup} appears twice in the batch"
        ))));
    }
    let mut existing = match ids {
        IdCheck::LookUp => store::events::existing_ids(conn, &chosen).await?,
        IdCheck::Optimistic => Vec::new(),
    };
    existing.extend(
        batch
            .events
            .iter()
            .filter(|e| unique.contains(e.event_id.as_str()))
            .map(|e| (e.event_id.to_string(), e.room_id.to_string())),
    );
    if !existing.is_empty() {
        let all_here = existing.len() == job.events.len()
            && chosen.len() == job.events.len()
            && existing.iter().all(|(_, room)| room == room_id.as_str());
        if all_here {
            let ids = chosen
                .iter()
                .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok())
                .collect();
            return Ok(Ok(Outcome::Existing(ids)));
        }
        let (id, _) = &existing[0];
        return Ok(Err(RoomError::InvalidParam(format!(
            "Event ID {id} already exists"
        ))));
    }
    let forward = match job.placement {
        Placement::Forward => true,
        Placement::Backward => false,
        Placement::ForwardIfEmpty => {
            let in_batch = batch
                .events
                .iter()
                .any(|e| &e.room_id == room_id && e.state_key.is_none());
            !in_batch && !store::events::room_has_messages(conn, room_id.as_str()).await?
        }
    };
    let Some(mut state) = batch.rooms.remove(room_id) else {
        return Ok(Err(RoomError::Internal("room state vanished".into())));
    };
    let count = i64::try_from(job.events.len()).unwrap_or(i64::MAX);
    let first_topo = if forward {
        state.max_topo + 1
    } else {
        state.min_topo - count
    };
    for (offset, (proposal, chosen_id)) in (0_i64..).zip(&job.events) {
        let event_id = chosen_id.clone().unwrap_or_else(new_event_id);
        let topo = first_topo + offset;
        let stream = batch.next_stream;
        push_event_at(batch, &mut state, proposal, None, event_id, topo);
        if !forward {
            batch.backfilled.push(stream);
        } else if job.silent {
            batch.silent.push(stream);
        }
    }
    if forward {
        state.max_topo = first_topo + count - 1;
    } else {
        state.min_topo = first_topo;
    }
    // This job's events are the last ones of the batch so far.
    let last = batch.events.last().filter(|_| !job.events.is_empty());
    if let (Some(user), Some(last)) = (&job.mark_read_by, last) {
        batch.receipts.push(store::receipts::Receipt {
            room_id: room_id.to_string(),
            user_id: user.to_string(),
            kind: "m.read".into(),
            thread_id: String::new(),
            event_id: last.event_id.to_string(),
            // Set when written: a room data position.
            stream: 0,
            ts: super::service::now_ms(),
            extra: None,
        });
    }
    batch.rooms.insert(room_id.clone(), state);
    // Filled by `write` after the commit, which moves the events in.
    Ok(Ok(Outcome::Written(Vec::new())))
}

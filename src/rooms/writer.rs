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

use ruma::{OwnedEventId, OwnedRoomAliasId, OwnedRoomId, OwnedUserId};
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::RoomError;
use super::auth::Proposal;
use super::state::RoomState;
use crate::metrics::WriterCounters;
use crate::notify::Notifier;
use crate::store::{self, events::StoredEvent, rooms::RoomRow};

mod build;
mod commit;

pub use commit::read_state;

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

//! Several hungryserv instances on one database: what they tell each other, and which of
//! them runs the tasks that must run once.
//!
//! One Postgres is the shared truth. Any instance takes any request; what each keeps in
//! memory is either rebuilt from the database or kept in step through `LISTEN/NOTIFY` on one
//! channel (`store::cluster::CHANNEL`):
//!
//! * **Publishing** ([`publish`]): an instance announces each change into its [`Outbox`]
//!   (never waiting: a full outbox drops the note, see below) *after* it committed; one
//!   publisher task sends queued notes in order, many per statement. Notes of one instance
//!   arrive in the order it sent them; notes of different instances in any order.
//! * **Listening** ([`listen`]): one dedicated connection per instance (not from the pool)
//!   `LISTEN`s, and every note of another instance is applied as the local change would have
//!   been: a commit of events, room data or device changes to the [`Notifier`] (wake-ups),
//!   typing to `rooms::typing`, a dynamic appservice to `appservice::umbrella`, a stored
//!   relayed transaction to the pusher, a revocation to the token cache, a deleted room to
//!   `rooms::deletion`.
//! * **Nothing missed**: notes are lost when the listener's connection drops (Postgres keeps
//!   no notification for a session that is not listening) or when an instance dies between
//!   a commit and its `NOTIFY`. So, after every (re)connect, *after* `LISTEN` is in place
//!   (subscribe, then read): the committed positions are read and every reader below them is
//!   woken to read the store (`Notifier::resync`), every dynamic appservice row is read
//!   again, and the whole token cache is dropped. A position gap left by a lost note is
//!   closed after `notify::GAP_GRACE` the same way.
//! * **Ordering** across instances is the database's: the writer allocates event positions
//!   under one transaction-level advisory lock and commits before releasing it (see
//!   `rooms::writer`), room data and device positions are a row each, incremented inside the
//!   writing transaction. So commits happen in position order whichever instance makes them,
//!   and a reader that sees position N in the database sees everything below N. Wake-ups
//!   only publish a position once every commit up to it has been heard of (`notify`), so a
//!   reader deciding from memory never moves past a position it did not hear of.
//! * **Tasks that must run once** ([`leader`]) are held through session-level advisory locks
//!   on one more dedicated connection, and taken over within seconds when the holder dies.
//!
//! What stays per instance, and why that is safe:
//!
//! * Lazy-loading's record of the members each device was sent (`sync::lazy`): an instance
//!   that has no record for a device sends the members again, which the spec allows
//!   (redundant members are harmless); nothing is left out.
//! * Sliding sync connections (`sync::sliding::conn`): their state is in memory and their
//!   `pos` names the instance, so a `pos` another instance made is answered 400
//!   `M_UNKNOWN_POS`, exactly as Synapse answers a `pos` it does not know, and the client
//!   starts a new connection. For that not to happen on every request, the load balancer
//!   sends sliding sync requests to an instance chosen by a hash of the access token
//!   (deploy/production/haproxy.cfg): a device stays on one instance until that instance
//!   goes away, and then starts afresh once.
//! * The writer's room state cache: checked against the rooms' `latest_stream` at each batch.
//! * Caches of Synapse's answers (profiles, filters, push rules, admin checks): short TTLs,
//!   as for one instance; a write through one instance invalidates only that instance's copy
//!   (push rules: until the next learn).
//!
//! May import: `store`, `notify`, and the handles the listener applies notes to (`rooms`,
//! `appservice`, `auth`).

pub mod leader;
pub mod listen;
pub mod note;

use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::store;
pub use note::{Note, Outbox};

/// Most notes sent by one statement.
const PUBLISH_BATCH: usize = 64;

/// The publisher task: sends this instance's notes, in order, until every outbox is dropped.
/// A statement that fails loses its notes; the other instances close the gap it leaves after
/// `notify::GAP_GRACE` (positions) or at their next reconnect (the rest).
pub async fn publish(db: PgPool, mut notes: mpsc::Receiver<String>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while notes.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        if let Err(err) = store::cluster::notify(&db, &batch).await {
            tracing::warn!(error = %err, notes = batch.len(), "notes to other instances lost");
        }
        batch.clear();
    }
}

//! The writer task: group commit, the fast path and the room state cache.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use ruma::{OwnedRoomId, OwnedUserId};
use sqlx::PgConnection;
use tokio::sync::mpsc;

use super::build::{append, batch_send, create};
use super::{Batch, CACHE_ROOMS, IdCheck, Job, MAX_BATCH, Outcome, Pending, WriterTask};
use crate::notify::Commit;
use crate::rooms::RoomError;
use crate::rooms::state::{RoomState, StateEntry};
use crate::store;

/// Whether a write failed on an event ID that is taken.
fn is_event_id_clash(err: &store::StoreError) -> bool {
    matches!(
        err,
        store::StoreError::Database(sqlx::Error::Database(db))
            if db.constraint() == Some(store::events::EVENT_ID_CONSTRAINT)
    )
}

/// What a committed batch leaves behind.
struct Committed {
    /// Each job's outcome, in job order.
    outcomes: Vec<Result<Outcome, RoomError>>,
    /// The rooms as the batch left them, for the cache.
    rooms: HashMap<OwnedRoomId, RoomState>,
    /// The highest stream position written.
    max_stream: i64,
}

/// A room's counters as `state` holds them, for the store.
fn positions_of(state: &RoomState) -> store::events::RoomPositions {
    store::events::RoomPositions {
        room_id: state.room_id.to_string(),
        max_topo: state.max_topo,
        min_topo: state.min_topo,
        latest_stream: state.latest_stream,
    }
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
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Pending>) {
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
            Ok(Committed {
                outcomes,
                rooms,
                max_stream,
            }) => {
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
    async fn write(&mut self, jobs: &[&Job], ids: IdCheck) -> Result<Committed, store::StoreError> {
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
        let positions = batch.rooms.values().map(positions_of).collect();
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
        Ok(Committed {
            outcomes,
            rooms: batch.rooms,
            max_stream,
        })
    }

    /// The fast path (see the module doc). `Ok(None)`: not eligible, or the database moved
    /// on since this writer's last commit; nothing was written and the cached state of the
    /// rooms involved was dropped.
    async fn write_fast(&mut self, jobs: &[&Job]) -> Result<Option<Committed>, store::StoreError> {
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
                Some(store::events::FastAppendRoom {
                    expected_latest: *expected_latest,
                    positions: positions_of(state),
                })
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
        Ok(Some(Committed {
            outcomes,
            rooms: batch.rooms,
            max_stream,
        }))
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

/// Reads a room's state from the database, for a room that must exist.
async fn load_state(
    conn: &mut PgConnection,
    room_id: &OwnedRoomId,
) -> Result<RoomState, store::StoreError> {
    read_state(conn, room_id).await?.ok_or_else(|| {
        store::StoreError::Corrupt(format!("room {room_id} vanished during a write"))
    })
}

/// A room's current state and positions as stored, as the auth rules read it; `None` for a
/// room that does not exist.
pub async fn read_state(
    conn: &mut PgConnection,
    room_id: &OwnedRoomId,
) -> Result<Option<RoomState>, store::StoreError> {
    let Some(row) = store::rooms::get(&mut *conn, room_id.as_str()).await? else {
        return Ok(None);
    };
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
    Ok(Some(state))
}

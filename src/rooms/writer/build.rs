//! Building a batch in memory: authorizing each job's events against the room state as the
//! jobs before it left it, and giving them IDs and positions.

use ruma::{OwnedEventId, OwnedRoomId};
use serde_json::Value;
use sqlx::PgConnection;

use super::{Batch, BatchJob, IdCheck, NewRoom, Outcome, Placement, Txn};
use crate::rooms::RoomError;
use crate::rooms::auth::{self, Proposal};
use crate::rooms::event::{new_event_id, redacted_content};
use crate::rooms::state::{RoomState, StateEntry};
use crate::store::{self, events::StoredEvent, rooms::RoomRow};

pub(super) async fn append(
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

pub(super) async fn create(
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
        .unwrap_or(crate::rooms::version::DEFAULT.as_str());
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
pub(super) async fn batch_send(
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
            ts: crate::rooms::service::now_ms(),
            extra: None,
        });
    }
    batch.rooms.insert(room_id.clone(), state);
    // Filled by `write` after the commit, which moves the events in.
    Ok(Ok(Outcome::Written(Vec::new())))
}

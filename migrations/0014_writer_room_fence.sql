-- The writer fences rooms being purged itself, so `events` needs no foreign key to `rooms`.
--
-- The foreign key cost a check per inserted row (a quarter of a 1,000-event batch send's
-- COPY, measured with perf). What it guarded is that no event is left without its room once
-- the purge (migration 0007) deletes the room row. What must hold instead is this:
--
--   No event of a room is committed after the room's purge has begun (`purging`).
--
-- A deleted room still takes the deletion's own leaves (written after `deleted_at`, before the
-- purge); any event committed before `purging` is deleted by the purge, which starts after it.
-- Both ways into `events` (writer_begin for the ordinary path, writer_append for the fast
-- path) lock the rows of the batch's rooms (FOR NO KEY UPDATE, the lock the batch's own
-- UPDATE of `max_topo`/`latest_stream` takes anyway) before reading them, and treat a room
-- being purged as absent. Setting `purging` is an UPDATE of that row, so the two are
-- serialised: either the purge waits and the batch's events are committed before it (and
-- purged), or the batch waits, re-reads the row and leaves the room out (the job is refused;
-- nothing of it is written).
--
-- Locks are taken after the writer's advisory lock, in room ID order. Setting `purging` takes
-- only the row's lock, never the advisory one, so the two cannot deadlock.

ALTER TABLE rooms ADD COLUMN purging BOOLEAN NOT NULL DEFAULT false;

CREATE OR REPLACE FUNCTION writer_begin(
    batch_rooms      TEXT[],
    batch_scopes     TEXT[],
    batch_txn_ids    TEXT[],
    OUT max_stream   BIGINT,
    OUT room_ids     TEXT[],
    OUT latest       BIGINT[],
    OUT used_scopes  TEXT[],
    OUT used_txn_ids TEXT[],
    OUT used_events  TEXT[]
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- 0x68756e67 = "hung": one fixed key for the whole database.
    PERFORM pg_advisory_xact_lock(1752526439);
    PERFORM 1 FROM rooms WHERE room_id = ANY(batch_rooms) ORDER BY room_id FOR NO KEY UPDATE;
    SELECT COALESCE(MAX(stream), 0) INTO max_stream FROM events;
    SELECT COALESCE(array_agg(r.room_id), '{}'), COALESCE(array_agg(r.latest_stream), '{}')
      INTO room_ids, latest
      FROM rooms r WHERE r.room_id = ANY(batch_rooms) AND NOT r.purging;
    SELECT COALESCE(array_agg(t.scope), '{}'), COALESCE(array_agg(t.txn_id), '{}'),
           COALESCE(array_agg(t.event_id), '{}')
      INTO used_scopes, used_txn_ids, used_events
      FROM transaction_ids t
      JOIN UNNEST(batch_scopes, batch_txn_ids) AS k(scope, txn_id)
        ON k.scope = t.scope AND k.txn_id = t.txn_id;
END
$$;

CREATE OR REPLACE FUNCTION writer_append(
    expected_max     BIGINT,
    batch_rooms      TEXT[],
    expected_latest  BIGINT[],
    txn_scopes       TEXT[],
    txn_ids          TEXT[],
    txn_events       TEXT[],
    e_stream         BIGINT[],
    e_room           TEXT[],
    e_topo           BIGINT[],
    e_event_id       TEXT[],
    e_type           TEXT[],
    e_sender         TEXT[],
    e_ts             BIGINT[],
    e_content        JSONB[],
    e_relates_to     TEXT[],
    e_rel_type       TEXT[],
    e_txn_scope      TEXT[],
    e_txn_id         TEXT[],
    p_max_topo       BIGINT[],
    p_min_topo       BIGINT[],
    p_latest         BIGINT[]
) RETURNS BOOLEAN
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    -- The same lock as writer_begin: held until this statement's transaction commits.
    PERFORM pg_advisory_xact_lock(1752526439);
    PERFORM 1 FROM rooms WHERE room_id = ANY(batch_rooms) ORDER BY room_id FOR NO KEY UPDATE;
    IF (SELECT COALESCE(MAX(stream), 0) FROM events) <> expected_max THEN
        RETURN FALSE;
    END IF;
    -- A room being purged reads as absent: the batch goes the ordinary way, which refuses it.
    IF EXISTS (
        SELECT 1 FROM UNNEST(batch_rooms, expected_latest) AS x(room_id, latest)
        LEFT JOIN rooms r ON r.room_id = x.room_id AND NOT r.purging
        WHERE r.latest_stream IS DISTINCT FROM x.latest
    ) THEN
        RETURN FALSE;
    END IF;
    IF EXISTS (
        SELECT 1 FROM transaction_ids t
        JOIN UNNEST(txn_scopes, txn_ids) AS k(scope, txn_id) ON k.scope = t.scope AND k.txn_id = t.txn_id
    ) THEN
        RETURN FALSE;
    END IF;
    INSERT INTO events (stream, room_id, topo, event_id, type, sender, origin_server_ts, content,
                        relates_to, rel_type, txn_scope, txn_id)
    SELECT * FROM UNNEST(e_stream, e_room, e_topo, e_event_id, e_type, e_sender, e_ts, e_content,
                         e_relates_to, e_rel_type, e_txn_scope, e_txn_id);
    UPDATE rooms SET max_topo = u.max_topo, min_topo = u.min_topo, latest_stream = u.latest
    FROM UNNEST(batch_rooms, p_max_topo, p_min_topo, p_latest) AS u(room_id, max_topo, min_topo, latest)
    WHERE rooms.room_id = u.room_id;
    INSERT INTO transaction_ids (scope, txn_id, event_id)
    SELECT * FROM UNNEST(txn_scopes, txn_ids, txn_events);
    RETURN TRUE;
END
$$;

ALTER TABLE events DROP CONSTRAINT events_room_id_fkey;

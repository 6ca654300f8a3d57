-- One round trip to start a writer batch (see src/rooms/writer.rs): take the writer lock,
-- then read the highest stream position, the `latest_stream` of the rooms the batch will
-- write to, and which of its transaction IDs were used before. The statements of a volatile
-- PL/pgSQL function each take a fresh snapshot, so the reads happen after the lock is
-- granted and see every batch committed before it.
CREATE FUNCTION writer_begin(
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
    SELECT COALESCE(MAX(stream), 0) INTO max_stream FROM events;
    SELECT COALESCE(array_agg(r.room_id), '{}'), COALESCE(array_agg(r.latest_stream), '{}')
      INTO room_ids, latest
      FROM rooms r WHERE r.room_id = ANY(batch_rooms);
    SELECT COALESCE(array_agg(t.scope), '{}'), COALESCE(array_agg(t.txn_id), '{}'),
           COALESCE(array_agg(t.event_id), '{}')
      INTO used_scopes, used_txn_ids, used_events
      FROM transaction_ids t
      JOIN UNNEST(batch_scopes, batch_txn_ids) AS k(scope, txn_id)
        ON k.scope = t.scope AND k.txn_id = t.txn_id;
END
$$;

-- The writer's fast path (see src/rooms/writer.rs, "Fast path"): a batch of plain messages
-- into rooms whose state the writer has cached is written in ONE statement, and so in one
-- implicit transaction: take the writer lock, check that nothing was written since the
-- writer's last commit (highest stream position, the rooms' latest_stream, unused
-- transaction IDs), then insert. If any check fails nothing is written and FALSE tells the
-- writer to take the ordinary path, which re-reads everything under the lock.
CREATE FUNCTION writer_append(
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
    IF (SELECT COALESCE(MAX(stream), 0) FROM events) <> expected_max THEN
        RETURN FALSE;
    END IF;
    IF EXISTS (
        SELECT 1 FROM UNNEST(batch_rooms, expected_latest) AS x(room_id, latest)
        LEFT JOIN rooms r ON r.room_id = x.room_id
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

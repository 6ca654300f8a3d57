-- Room deletion (src/rooms/deletion.rs). Deleting a room is two steps:
--
-- 1. One statement marks the room deleted, drops its aliases, records the deletion (and the
--    block, if asked): from then on every request about the room is answered 404 (blocked
--    rooms: joins 403), and the members are made to leave.
-- 2. A background purge removes the room's rows in small batches, each its own short
--    transaction, so other rooms' writes never wait for it. A purge interrupted by a restart
--    resumes from `room_deletions` (status scheduled or active).
--
-- Stream positions are allocated from max(events.stream) + 1 (migration 0003), so the purge
-- never deletes the event holding the highest position of the whole database: deleting it
-- would hand its position out again and readers that saw it would miss the new event. Such
-- an event (at most one per database) is removed by a later purge once newer events exist.

ALTER TABLE rooms ADD COLUMN deleted_at TIMESTAMPTZ;

CREATE TABLE room_deletions (
    -- "hsdel_" + random: the `delete_id` of Synapse's admin API; the prefix routes
    -- `GET /_synapse/admin/v2/rooms/delete_status/{delete_id}` to hungryserv
    delete_id     TEXT PRIMARY KEY,
    room_id       TEXT        NOT NULL,
    -- who asked (a server admin, or the appservice bot for the yeet endpoint)
    requested_by  TEXT        NOT NULL,
    -- Synapse's names: scheduled → active → complete | failed
    status        TEXT        NOT NULL
                  CHECK (status IN ('scheduled', 'active', 'complete', 'failed')),
    -- purge = false keeps the rows (the room stays invisible)
    purge         BOOLEAN     NOT NULL,
    block         BOOLEAN     NOT NULL,
    -- the shutdown_room part of Synapse's delete_status answer
    kicked_users  TEXT[]      NOT NULL DEFAULT '{}',
    local_aliases TEXT[]      NOT NULL DEFAULT '{}',
    -- events purged so far
    purged_events BIGINT      NOT NULL DEFAULT 0,
    error         TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX room_deletions_room ON room_deletions (room_id, created_at);
CREATE INDEX room_deletions_unfinished ON room_deletions (created_at)
    WHERE status IN ('scheduled', 'active');

-- Rooms that may never be joined again (Synapse's `block`); outlives the purge.
CREATE TABLE blocked_rooms (
    room_id    TEXT PRIMARY KEY,
    blocked_by TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

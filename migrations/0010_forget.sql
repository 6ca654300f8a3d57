-- Forgotten rooms (`POST /rooms/{roomId}/forget`, allowed once the user has left or been
-- banned). A forget covers the member event the user had when forgetting (`member_stream`,
-- the `stream` of their `memberships` row then): the room counts as forgotten while that is
-- still their latest member event. A later one (a rejoin, an invite) makes the room
-- remembered again without touching this table — Synapse's per-membership `forgotten` flag
-- behaves the same. Forgotten rooms are left out of initial syncs (even with include_leave)
-- and their history is closed to the user, as Synapse does. The purge removes the rows with
-- the room's memberships.

CREATE TABLE forgotten_rooms (
    room_id       TEXT   NOT NULL REFERENCES rooms (room_id),
    user_id       TEXT   NOT NULL,
    member_stream BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- Local rooms: the rooms hungryserv owns, their events, current state, memberships,
-- transaction IDs and aliases.
--
-- Ordering (see src/rooms/writer.rs): every event has a global `stream` position (sync
-- order) and a per-room `topo` position (/messages order). Stream positions are dense:
-- the writer allocates max(stream) + 1 ... while holding a transaction-level advisory lock,
-- so positions are committed in order and a reader that sees position N has already been
-- able to see every position below it.

CREATE TABLE rooms (
    room_id         TEXT PRIMARY KEY,
    -- routing class (routing.toml) the room was created in
    class           TEXT        NOT NULL,
    room_version    TEXT        NOT NULL,
    creator         TEXT        NOT NULL,
    -- registration id of the appservice whose token created the room, if any
    appservice_id   TEXT,
    -- highest and lowest per-room topological position so far
    max_topo        BIGINT      NOT NULL,
    min_topo        BIGINT      NOT NULL,
    -- stream position of the room's latest event: lets a writer see that its cached
    -- copy of the room's state is stale (another process wrote since)
    latest_stream   BIGINT      NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE events (
    stream           BIGINT PRIMARY KEY,
    room_id          TEXT   NOT NULL REFERENCES rooms (room_id),
    topo             BIGINT NOT NULL,
    event_id         TEXT   NOT NULL UNIQUE,
    type             TEXT   NOT NULL,
    -- NULL for message events; state events have a (possibly empty) state key
    state_key        TEXT,
    sender           TEXT   NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    content          JSONB  NOT NULL,
    -- for state events: the event this one replaced in the room state (unsigned.prev_content)
    replaces_state   TEXT,
    -- for m.room.redaction: the event it redacts
    redacts          TEXT,
    -- set once a redaction of this event is accepted; content is then pruned
    redacted_by      TEXT,
    -- m.relates_to.event_id and rel_type, for the relations API
    relates_to       TEXT,
    rel_type         TEXT,
    -- (user | device or appservice) scope and txn id of the sender's request, for the
    -- sender's own copy (unsigned.transaction_id)
    txn_scope        TEXT,
    txn_id           TEXT,
    UNIQUE (room_id, topo)
);
CREATE INDEX events_room_stream ON events (room_id, stream);
CREATE INDEX events_relations ON events (relates_to, rel_type) WHERE relates_to IS NOT NULL;
-- state at an earlier point: the latest state event per (type, state_key) at or before it
CREATE INDEX events_room_state ON events (room_id, type, state_key, stream) WHERE state_key IS NOT NULL;

CREATE TABLE current_state (
    room_id   TEXT   NOT NULL REFERENCES rooms (room_id),
    type      TEXT   NOT NULL,
    state_key TEXT   NOT NULL,
    stream    BIGINT NOT NULL REFERENCES events (stream),
    PRIMARY KEY (room_id, type, state_key)
);

-- Current membership per user, derived from current_state, for "which rooms is this user in".
CREATE TABLE memberships (
    room_id    TEXT   NOT NULL REFERENCES rooms (room_id),
    user_id    TEXT   NOT NULL,
    membership TEXT   NOT NULL,
    stream     BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, membership);

-- Idempotent sends: one event per (requester scope, txn id).
CREATE TABLE transaction_ids (
    scope      TEXT        NOT NULL,
    txn_id     TEXT        NOT NULL,
    event_id   TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, txn_id)
);

CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_id    TEXT        NOT NULL REFERENCES rooms (room_id),
    creator    TEXT        NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

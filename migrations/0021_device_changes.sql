-- The device-change stream: one row per (position, user) whose devices or cross-signing keys
-- changed, as seen passing through hungryserv on their way to Synapse (key uploads, logins,
-- logouts, device deletion; src/devices/). Synapse tells a user's device changes only to the
-- users it knows share a room with them, and it does not know local rooms; this stream is what
-- hungryserv adds to `/sync`'s and `/keys/changes`' `device_lists.changed` for local-room
-- co-members. A sync token holds a position in it.
--
-- Ordering: a reader must never see position N before every position below N is committed
-- (the event stream's invariant, src/rooms/writer.rs). As for room data (0008), positions are
-- taken by incrementing the single row of `device_change_position` inside the writing
-- transaction: its row lock is held until commit, so commits happen in position order.
--
-- Rows only ever matter for ranges a client still holds a token in; extra rows are harmless
-- (a client fetches keys once more), missing ones break encryption.

CREATE TABLE device_change_position (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    position BIGINT  NOT NULL
);
INSERT INTO device_change_position (position) VALUES (0);

CREATE TABLE device_changes (
    position   BIGINT      NOT NULL,
    user_id    TEXT        NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (position, user_id)
);
-- "who among these users changed after position A": per user, newest first.
CREATE INDEX device_changes_user ON device_changes (user_id, position);

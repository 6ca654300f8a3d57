-- Appservice delivery holds back only the rooms of a class switched `off`
-- (src/appservice/pusher.rs, "held rooms"). The cursor of appservice_cursors moves on past
-- an `off` room's events; each such room is recorded here, before the cursor can pass its
-- first held event, with that event's position. While a row exists, every event of the room
-- from `from_stream` on waits (the main scan passes over the room's later events too, so the
-- room's own order holds). Once the class is served again the pusher delivers the room's
-- events in [from_stream, cursor] in transactions of their own; each one's acknowledgement
-- moves `from_stream` past what it carried, in the database transaction that deletes it, and
-- deletes the row once nothing below the cursor is left. So every held event is delivered at
-- least once, in its room's order, whatever the restarts.

CREATE TABLE appservice_held_rooms (
    appservice_id TEXT   NOT NULL REFERENCES appservice_cursors (appservice_id) ON DELETE CASCADE,
    room_id       TEXT   NOT NULL,
    -- the first event of the room not yet delivered (or judged) since it was held
    from_stream   BIGINT NOT NULL,
    PRIMARY KEY (appservice_id, room_id)
);

-- A transaction that delivers a held room's events: the room, and the last position it
-- carries (the acknowledgement moves the held row past it).
ALTER TABLE appservice_transactions ADD COLUMN released_room TEXT;
ALTER TABLE appservice_transactions ADD COLUMN released_upto BIGINT;

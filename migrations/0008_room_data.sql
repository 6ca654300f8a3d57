-- Per-user room data of local rooms: read receipts, read markers and room account data (tags
-- are the `m.tag` account data event). None of it is an event, so it has its own stream, the
-- *room data stream*, next to the event stream; a sync token holds a position in each.
--
-- Ordering: a reader must never see room data position N before every position below N is
-- committed (the event stream's invariant, src/rooms/writer.rs). Positions are taken by
-- incrementing the single row of `room_data_position` inside the writing transaction; the row
-- lock is held until commit, so the next writer gets N + 1 only once N is committed — commits
-- happen in position order. (A Postgres sequence would not give this: its values are handed
-- out at once and committed in any order.)

CREATE TABLE room_data_position (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    position BIGINT  NOT NULL
);
-- Receipts written so far (by batch_send) carry event stream positions; start above them.
INSERT INTO room_data_position (position) SELECT COALESCE(MAX(stream), 0) FROM receipts;

-- The Beeper extras sent with read markers (`com.beeper.read.extra`, ...), returned verbatim in
-- the receipt.
ALTER TABLE receipts ADD COLUMN extra JSONB;
-- `stream` is now a room data stream position.
COMMENT ON COLUMN receipts.stream IS 'room data stream position (room_data_position)';

CREATE TABLE room_account_data (
    user_id TEXT   NOT NULL,
    room_id TEXT   NOT NULL REFERENCES rooms (room_id),
    type    TEXT   NOT NULL,
    content JSONB  NOT NULL,
    -- room data stream position of the last write
    stream  BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX room_account_data_user_stream ON room_account_data (user_id, stream);

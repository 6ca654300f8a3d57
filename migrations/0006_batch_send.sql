-- Batch send (com.beeper.backfill): events inserted before a room's oldest event take stream
-- positions like every event, but they are history, not news: sync and appservice delivery
-- skip them (they are read through /messages, /context, /event).
ALTER TABLE events ADD COLUMN backfilled BOOLEAN NOT NULL DEFAULT false;

-- Read receipts of local rooms (written so far by batch_send's mark_read_by). `stream` is the
-- stream position the receipt was committed with, so a sync shows receipts newer than its
-- token under the same ordering as events.
CREATE TABLE receipts (
    room_id   TEXT   NOT NULL REFERENCES rooms (room_id),
    user_id   TEXT   NOT NULL,
    -- m.read or m.read.private
    type      TEXT   NOT NULL,
    -- '' for an unthreaded receipt
    thread_id TEXT   NOT NULL DEFAULT '',
    event_id  TEXT   NOT NULL,
    stream    BIGINT NOT NULL,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, type, thread_id)
);
CREATE INDEX receipts_room_stream ON receipts (room_id, stream);

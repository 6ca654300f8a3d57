-- Indexes on the referencing side of two foreign keys. Postgres checks a foreign key on every
-- delete from the referenced table by looking for referencing rows, and without an index that
-- look is a scan of the whole referencing table:
--
-- * current_state.stream -> events.stream: the purge of a deleted room deletes its events one
--   chunk at a time, and each deleted event scanned all of current_state (every room's
--   state). Measured on the bench stack (6,630 current_state rows), purging a 100,000-message
--   room took 35.4 s; with this index 1.2 s. The scan grows with the server's room count.
-- * room_account_data.room_id -> rooms.room_id: the purge deletes a room's account data by
--   room and then the room row; both scanned the table.
CREATE INDEX current_state_stream ON current_state (stream);
CREATE INDEX room_account_data_room ON room_account_data (room_id);

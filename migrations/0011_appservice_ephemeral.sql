-- MSC2409 ephemeral delivery (src/appservice/pusher.rs): read receipts of local rooms go to
-- appservices that ask for ephemeral events, in the same transactions as events. Each
-- appservice has a room data cursor next to its event cursor; a stored transaction records
-- how far its receipts go, and the acknowledgement moves both cursors in one database
-- transaction. (Typing is in memory only and is sent as it changes, as Synapse does.)
-- NULL: the appservice does not get ephemeral events (yet); it starts from the position
-- current when it first does.
ALTER TABLE appservice_cursors ADD COLUMN room_data BIGINT;
ALTER TABLE appservice_transactions ADD COLUMN last_room_data BIGINT;
-- Receipts of all rooms in room data order, for the pushers.
CREATE INDEX receipts_stream ON receipts (stream);

-- The stream as its readers walk it. Sync, the push task and appservice delivery read events
-- by stream position and skip backfilled history (migration 0006); through the primary key
-- they stepped over every backfilled row, so after each 1,000-event backward batch send the
-- push task and every appservice pusher read and dropped 1,000 rows. This index holds only
-- the events that are not backfilled: those reads skip history without touching it, and
-- inserting a backfilled event costs this index nothing.
CREATE INDEX events_stream_live ON events (stream) WHERE NOT backfilled;

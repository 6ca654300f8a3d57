-- Abuse reports about local rooms (`POST /rooms/{roomId}/report`) and their events
-- (`POST /rooms/{roomId}/report/{eventId}`), kept as Synapse keeps its own
-- (`event_reports`, `room_reports`) and listed to server admins in Synapse's admin API
-- `GET /_synapse/admin/v1/event_reports` together with Synapse's.
--
-- Event report IDs start at 2^40 so they never meet Synapse's, which count from 1: an admin
-- sees one list of IDs. No foreign keys: a report outlives the purge of its room or event
-- (an operator still needs it; Synapse's outlive a purge too).

CREATE TABLE event_reports (
    id          BIGINT GENERATED ALWAYS AS IDENTITY (START WITH 1099511627776) PRIMARY KEY,
    received_ts BIGINT NOT NULL,
    room_id     TEXT   NOT NULL,
    event_id    TEXT   NOT NULL,
    -- the reporter
    user_id     TEXT   NOT NULL,
    -- the request body as sent (`reason`, `score`, anything else), as Synapse stores it
    content     JSONB  NOT NULL
);
CREATE INDEX event_reports_received ON event_reports (received_ts);

CREATE TABLE room_reports (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_ts BIGINT NOT NULL,
    room_id     TEXT   NOT NULL,
    user_id     TEXT   NOT NULL,
    reason      TEXT   NOT NULL
);

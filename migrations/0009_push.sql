-- Push for local rooms: what hungryserv learns of each user's push rules and pushers (both
-- live in Synapse; we keep the latest copy seen with the user's own token, never the token),
-- the notifications our events produced per user (Synapse's event_push_actions: the unread
-- counts and /notifications read them), and the push task's progress.

-- The user's push rules as Synapse's `GET /pushrules/` answered (`{"global": {...}}`).
CREATE TABLE push_rules (
    user_id    TEXT PRIMARY KEY,
    rules      JSONB       NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The user's pushers as Synapse's `GET /pushers` listed them, one row per (app_id, pushkey).
CREATE TABLE pushers (
    user_id    TEXT   NOT NULL,
    app_id     TEXT   NOT NULL,
    pushkey    TEXT   NOT NULL,
    -- the whole pusher object (kind, data with url and format, lang, ...)
    pusher     JSONB  NOT NULL,
    -- when we first saw it, in ms since the epoch (the gateway's `pushkey_ts`)
    first_seen BIGINT NOT NULL,
    PRIMARY KEY (user_id, app_id, pushkey)
);

-- One row per (user, event) whose push actions said `notify`: the unread counts are the rows
-- after the user's read receipt. Rows are written by the push task in stream order, after the
-- event's commit; `stream` is the event's stream position.
CREATE TABLE push_actions (
    user_id   TEXT    NOT NULL,
    room_id   TEXT    NOT NULL,
    stream    BIGINT  NOT NULL,
    event_id  TEXT    NOT NULL,
    -- the thread root's event ID, or 'main' (MSC3773)
    thread_id TEXT    NOT NULL,
    highlight BOOLEAN NOT NULL,
    -- the actions as the rule gave them, for /notifications
    actions   JSONB   NOT NULL,
    ts        BIGINT  NOT NULL,
    PRIMARY KEY (user_id, room_id, stream)
);
CREATE INDEX push_actions_user_stream ON push_actions (user_id, stream);

-- How far the push task has evaluated the event stream.
CREATE TABLE push_position (
    only_row BOOLEAN PRIMARY KEY DEFAULT true CHECK (only_row),
    stream   BIGINT  NOT NULL
);

-- Batch sends with `send_notification: false` write events that never push or count.
ALTER TABLE events ADD COLUMN silent BOOLEAN NOT NULL DEFAULT false;

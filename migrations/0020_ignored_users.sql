-- Ignored users (`m.ignored_user_list`, global account data that lives in Synapse): the latest
-- list hungryserv learned with the user's own token — when they sync through us and right
-- after a write of it passes through — so local rooms hide the ignored users' messages and
-- invites in sync, /messages and pushes, as Synapse does in its rooms. A user without a row
-- ignores nobody as far as we know.
CREATE TABLE ignored_users (
    user_id    TEXT PRIMARY KEY,
    -- the user IDs in `ignored_users` of the account data, as strings
    ignored    TEXT[]      NOT NULL,
    fetched_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

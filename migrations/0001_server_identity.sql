-- Which homeserver this database belongs to.
--
-- Every room ID, user ID and alias stored here ends in ":server_name". Pointing hungryserv at
-- a database made for another server name would silently serve rooms under the wrong name,
-- so the first start records the name and every later start checks it.
CREATE TABLE server_identity (
    -- At most one row: the primary key can only ever be TRUE.
    singleton   BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    server_name TEXT        NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

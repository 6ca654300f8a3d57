-- Dynamic appservices (src/appservice/umbrella.rs): bridges registered at run time through
-- `/_hungryserv/admin/v1/appservices`, behind one "umbrella" registration that Synapse loads
-- at start. Synapse never learns of them: hungryserv recognises their tokens, speaks to
-- Synapse as the umbrella on their behalf, and splits the umbrella's transactions among them.
--
-- The as_token is kept only as its SHA-256 (hungryserv only has to recognise it). The
-- hs_token is kept as given: hungryserv presents it to the bridge with every transaction, so
-- no one-way hash can stand in for it (Synapse keeps it in clear in its YAML files too).
-- `registration` holds the rest (url, sender_localpart, namespaces, MSC2409/MSC3202 flags)
-- in the shape of a registration file, without tokens.
CREATE TABLE dynamic_appservices (
    id            TEXT        PRIMARY KEY,
    as_token_hash BYTEA       NOT NULL UNIQUE,
    hs_token      TEXT        NOT NULL,
    registration  JSONB       NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Who of the umbrella's users is joined to which Synapse room, learnt from the member events
-- in Synapse's transactions to the umbrella (Synapse sends the umbrella every member event
-- of a user in its namespace, since the start). A transaction's events go to a bridge when
-- one of its users is joined to their room, as Synapse itself would judge it. Kept per user,
-- not per bridge: a bridge registered again with the same namespaces finds its rooms.
CREATE TABLE umbrella_members (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

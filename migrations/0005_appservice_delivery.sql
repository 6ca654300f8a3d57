-- Appservice delivery (src/appservice/). The events table is the queue: each appservice has
-- a cursor, and every event at or below it has been delivered to it or was of no interest
-- to it. The transaction in flight is stored before it is sent and retried byte for byte
-- (same txnId, same body) until the appservice acknowledges it; the acknowledgement deletes
-- it and moves the cursor in one database transaction.

CREATE TABLE appservice_cursors (
    appservice_id TEXT PRIMARY KEY,
    -- every event with a stream position at or below this one is done
    stream        BIGINT NOT NULL,
    -- transaction IDs are "hungryserv.{txn_prefix}.{n}": the prefix is random per database,
    -- so a bridge's record of seen IDs never matches a new database's (nor Synapse's integers)
    txn_prefix    TEXT   NOT NULL,
    next_txn      BIGINT NOT NULL
);

CREATE TABLE appservice_transactions (
    appservice_id TEXT PRIMARY KEY REFERENCES appservice_cursors (appservice_id),
    txn_id        TEXT        NOT NULL,
    -- the cursor moves here once the appservice has acknowledged the transaction
    last_stream   BIGINT      NOT NULL,
    -- the exact request body
    body          BYTEA       NOT NULL,
    events        INTEGER     NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

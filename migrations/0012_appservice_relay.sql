-- Relay mode (src/appservice/relay.rs): for an appservice with relay mode on, Synapse's
-- registration points at hungryserv, which stores each of Synapse's transactions here before
-- answering 200, and hands their contents to the bridge in its own transactions (over HTTP or
-- the websocket), together with local events — one stream, hungryserv's transaction IDs.
--
-- `seq` orders an appservice's relayed transactions. Synapse sends one transaction at a time
-- per appservice; each insert also takes a per-appservice advisory lock, so seqs of one
-- appservice commit in order even if Synapse overlapped two requests. A repeated Synapse txnId
-- (Synapse retrying after losing our answer) is stored once.
CREATE TABLE relayed_transactions (
    appservice_id  TEXT        NOT NULL,
    seq            BIGSERIAL   PRIMARY KEY,
    synapse_txn_id TEXT        NOT NULL,
    body           JSONB       NOT NULL,
    received_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (appservice_id, synapse_txn_id)
);
CREATE INDEX relayed_transactions_appservice ON relayed_transactions (appservice_id, seq);

-- How far each appservice's relayed transactions are delivered; a stored transaction of ours
-- records how far its relayed part goes, and the acknowledgement moves the cursor with the
-- others.
ALTER TABLE appservice_cursors ADD COLUMN relay_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE appservice_transactions ADD COLUMN last_relay_seq BIGINT;

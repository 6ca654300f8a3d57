-- Full-text search of local rooms (`POST /search`), indexed as Synapse indexes its own
-- `event_search`: only `content.body` of m.room.message, `content.name` of m.room.name and
-- `content.topic` of m.room.topic, and only when that field is a string, with the `english`
-- text search configuration. Synapse ranks with `ts_rank_cd(vector, websearch_to_tsquery(
-- 'english', term))`; so do we (src/store/search.rs), over the same vectors, so a local
-- result's rank and a Synapse result's rank compare and a merged `order_by: rank` is one
-- order.
--
-- No table of its own: the vector is an expression over `events`, so the writer has nothing
-- more to write (its throughput is unchanged but for the index insert) and a redaction,
-- which prunes `content`, takes the event out of the index by itself. The partial index
-- holds only the three searchable types; queries repeat its predicate so it applies.
--
-- Building it takes a lock on `events` for as long as the build runs (about as long as
-- reading every message once): the first start after upgrading waits for it.

CREATE FUNCTION event_search_vector(kind TEXT, content JSONB) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT to_tsvector('english'::regconfig, CASE
        WHEN kind = 'm.room.message' AND jsonb_typeof(content -> 'body') = 'string'
            THEN content ->> 'body'
        WHEN kind = 'm.room.name' AND jsonb_typeof(content -> 'name') = 'string'
            THEN content ->> 'name'
        WHEN kind = 'm.room.topic' AND jsonb_typeof(content -> 'topic') = 'string'
            THEN content ->> 'topic'
    END)
$$;

CREATE INDEX events_search ON events USING GIN (event_search_vector(type, content))
    WHERE type IN ('m.room.message', 'm.room.name', 'm.room.topic');

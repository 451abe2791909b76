-- The exact number of rows in generation_events, kept as it changes (issue 13): `count(*)` reads the whole
-- table (~1.1 s on 10M events), and GetPipelineStatus (the dashboard's first render) wants the figure.
--
-- Statement-level triggers with transition tables add what each statement inserted and subtract what it
-- deleted: one upsert per statement, not per row. Transfer's INSERT ... ON CONFLICT DO NOTHING counts only
-- the rows it really inserted (the skipped duplicates are not in the transition table); retention's
-- DELETEs subtract theirs; a TRUNCATE empties the counters. Readers sum the shards.
--
-- Shards: each session adds to the shard of its backend pid, so concurrent transfer workers rarely wait on
-- one another's row lock (held from their INSERT to their commit), and a session always locks the same
-- shard, so two sessions can never take two shards in opposite orders. The shard lock is the last lock a
-- transfer statement takes (after the dirty marks), keeping the lock order of docs/design.md §4. A shard
-- row is created by the first statement that needs it (an upsert), so emptying every table (tests do)
-- leaves the counters consistent.

CREATE TABLE generation_event_counts (
    shard  smallint PRIMARY KEY,
    events bigint NOT NULL
);

CREATE FUNCTION generation_event_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta bigint;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO delta FROM added_rows;
    ELSE
        SELECT -count(*) INTO delta FROM removed_rows;
    END IF;
    IF delta <> 0 THEN  -- a batch of duplicates only, or a delete of nothing, locks no shard
        INSERT INTO generation_event_counts AS c (shard, events) VALUES (pg_backend_pid() % 16, delta)
        ON CONFLICT (shard) DO UPDATE SET events = c.events + EXCLUDED.events;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION generation_event_counts_reset() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM generation_event_counts;
    RETURN NULL;
END
$$;

-- No row may be written between the count below and the triggers taking over (CREATE TRIGGER takes this
-- lock too; said here so that the initial count is exact by intent, not by accident).
LOCK TABLE generation_events IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER generation_events_count_inserted AFTER INSERT ON generation_events
    REFERENCING NEW TABLE AS added_rows FOR EACH STATEMENT EXECUTE FUNCTION generation_event_counts_add();
CREATE TRIGGER generation_events_count_deleted AFTER DELETE ON generation_events
    REFERENCING OLD TABLE AS removed_rows FOR EACH STATEMENT EXECUTE FUNCTION generation_event_counts_add();
CREATE TRIGGER generation_events_count_truncated AFTER TRUNCATE ON generation_events
    FOR EACH STATEMENT EXECUTE FUNCTION generation_event_counts_reset();

INSERT INTO generation_event_counts (shard, events) SELECT 0, count(*) FROM generation_events;

-- ListEvents (issue 17): a filter only completions normally satisfy (a minimum duration, success, an error
-- type) asked together with another event type matches nothing, yet proving it read the whole window: every
-- completion of the window fetched from the table to find it is not a request (request + min duration: > 20 s
-- for 30 days on 10M events; request + success: 0.5 s; cancellations alike). The few other events that do
-- carry such a field get a partial index of their own; the planner proves `event_type = 'request' AND
-- duration_ms >= $n` implies its predicate, so those pages read this (normally empty) index instead. Normal
-- events are never in it: it costs transfer nothing but the predicate check.
CREATE INDEX generation_events_odd_kinds_idx
    ON generation_events (timestamp, event_type, user_id, model_checkpoint, success, error_type, duration_ms)
    WHERE event_type <> 'completion' AND (duration_ms IS NOT NULL OR success IS NOT NULL OR error_type IS NOT NULL);

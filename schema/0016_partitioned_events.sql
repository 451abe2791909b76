-- generation_events partitioned by week (issue 16): retention drops whole weeks instead of deleting rows one
-- batch at a time, and a week's rows, indexes and vacuum stay the size of a week. (Weeks, not days: a query
-- plans every partition its window spans, ~0.1 ms each.)
--
-- Dedupe by event_id keeps its guarantee: a unique key on a partitioned table must include the partition key,
-- and (event_id, timestamp) would let a retry whose timestamp differs (one the server assigned, per attempt)
-- be stored twice. So the ids live in a table of their own, generation_event_ids (event_id primary key):
-- transfer inserts a batch's ids there first (ON CONFLICT DO NOTHING) and stores only the events whose id was
-- new, in the same statement. Retention deletes the ids of the rows it removes (before it drops a week).
--
-- The table as it was (unless empty: then it is dropped) becomes the first partition,
-- generation_events_legacy, holding every timestamp before the first day after its newest row: nothing is
-- copied or rebuilt (its indexes are attached to the new table's), only its ids are copied once. Its rows
-- are deleted by retention as before until the whole partition is past the retention age, then it is
-- dropped like any week. The weeks after it get a partition each (the rest of the first week and the next
-- one here, later ones by the pipeline's retention job); anything outside them (a far-off timestamp, weeks
-- the pipeline was down for) lands in generation_events_default, which retention treats like the legacy
-- partition. The seed's SQL runs unchanged against the partitioned table.

LOCK TABLE generation_events IN ACCESS EXCLUSIVE MODE;

CREATE TABLE generation_event_ids (
    event_id  uuid PRIMARY KEY,
    timestamp timestamptz NOT NULL
);
COMMENT ON TABLE generation_event_ids IS
    'The event_id of every stored event (dedupe for the partitioned generation_events; written by transfer).';
INSERT INTO generation_event_ids (event_id, timestamp) SELECT event_id, timestamp FROM generation_events;

ALTER TABLE generation_events RENAME TO generation_events_legacy;

-- The new table: same columns, defaults, checks and identity (continued from the old one's ids), no primary
-- key on id (it would have to include the timestamp; ids come from the identity sequence, and every access
-- path already pairs id with the columns it orders by).
CREATE TABLE generation_events (
    LIKE generation_events_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING IDENTITY INCLUDING COMMENTS
) PARTITION BY RANGE (timestamp);
COMMENT ON TABLE generation_events IS
    'Raw generation events (one row per event_id, see generation_event_ids), partitioned by week of timestamp.';
SELECT setval(pg_get_serial_sequence('generation_events', 'id'), coalesce(max(id), 0) + 1, false)
FROM generation_events_legacy;
ALTER TABLE generation_events_legacy ALTER COLUMN id DROP IDENTITY;

-- Every index of the old table (but its primary key and the unique event_id) on the new one, under its own
-- name. The new table has no partition yet, so nothing is built: attaching the old table below adopts its
-- copies of these indexes (renamed *_legacy) instead of building them again.
DO $$
DECLARE
    ix record;
    definition text;
BEGIN
    FOR ix IN
        SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def
        FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'generation_events_legacy'::regclass AND NOT i.indisprimary AND NOT i.indisunique
        ORDER BY c.relname
    LOOP
        EXECUTE format('ALTER INDEX %I RENAME TO %I', ix.name, left(ix.name, 55) || '_legacy');
        definition := replace(ix.def, ' ON public.generation_events_legacy ', ' ON public.generation_events ');
        EXECUTE definition;
    END LOOP;
END
$$;

-- The counters (0012) also keep when the newest event was stored: without a primary key on id,
-- "the newest row" (GetPipelineStatus' latest_event_at, `ORDER BY id DESC LIMIT 1` until now) would read
-- every partition.
ALTER TABLE generation_event_counts ADD COLUMN latest_at timestamptz;
CREATE OR REPLACE FUNCTION generation_event_counts_add() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta bigint;
    latest timestamptz;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*), max(created_at) INTO delta, latest FROM added_rows;
    ELSE
        SELECT -count(*) INTO delta FROM removed_rows;
    END IF;
    IF delta <> 0 THEN  -- a batch of duplicates only, or a delete of nothing, locks no shard
        INSERT INTO generation_event_counts AS c (shard, events, latest_at) VALUES (pg_backend_pid() % 16, delta, latest)
        ON CONFLICT (shard) DO UPDATE
        SET events = c.events + EXCLUDED.events, latest_at = greatest(c.latest_at, EXCLUDED.latest_at);
    END IF;
    RETURN NULL;
END
$$;
INSERT INTO generation_event_counts AS c (shard, events, latest_at)
SELECT 0, 0, max(created_at) FROM generation_events_legacy HAVING max(created_at) IS NOT NULL
ON CONFLICT (shard) DO UPDATE SET latest_at = greatest(c.latest_at, EXCLUDED.latest_at);

-- The counters (0012) follow the new table; the old table's triggers would count its rows twice.
DROP TRIGGER generation_events_count_inserted ON generation_events_legacy;
DROP TRIGGER generation_events_count_deleted ON generation_events_legacy;
DROP TRIGGER generation_events_count_truncated ON generation_events_legacy;
CREATE TRIGGER generation_events_count_inserted AFTER INSERT ON generation_events
    REFERENCING NEW TABLE AS added_rows FOR EACH STATEMENT EXECUTE FUNCTION generation_event_counts_add();
CREATE TRIGGER generation_events_count_deleted AFTER DELETE ON generation_events
    REFERENCING OLD TABLE AS removed_rows FOR EACH STATEMENT EXECUTE FUNCTION generation_event_counts_add();
CREATE TRIGGER generation_events_count_truncated AFTER TRUNCATE ON generation_events
    FOR EACH STATEMENT EXECUTE FUNCTION generation_event_counts_reset();

DO $$
DECLARE
    first_day timestamptz;
    week_end timestamptz;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM generation_events_legacy) THEN
        DROP TABLE generation_events_legacy;  -- a new database: every week can have its own partition
        first_day := date_trunc('week', now());
    ELSE
        SELECT greatest(date_trunc('day', now()), date_trunc('day', max(timestamp)) + interval '1 day')
        INTO first_day FROM generation_events_legacy;
        -- A CHECK that proves the bound, so ATTACH does not scan the table to prove it.
        EXECUTE format('ALTER TABLE generation_events_legacy ADD CONSTRAINT generation_events_legacy_bound CHECK (timestamp < %L)', first_day);
        EXECUTE format('ALTER TABLE generation_events ATTACH PARTITION generation_events_legacy FOR VALUES FROM (MINVALUE) TO (%L)', first_day);
        ALTER TABLE generation_events_legacy DROP CONSTRAINT generation_events_legacy_bound;
    END IF;
    -- The rest of that week, and the week after (the pipeline's retention job creates the next ones).
    week_end := date_trunc('week', first_day) + interval '7 days';
    EXECUTE format('CREATE TABLE %I PARTITION OF generation_events FOR VALUES FROM (%L) TO (%L)',
                   'generation_events_' || to_char(first_day AT TIME ZONE 'UTC', 'YYYYMMDD'), first_day, week_end);
    EXECUTE format('CREATE TABLE %I PARTITION OF generation_events FOR VALUES FROM (%L) TO (%L)',
                   'generation_events_' || to_char(week_end AT TIME ZONE 'UTC', 'YYYYMMDD'), week_end,
                   week_end + interval '7 days');
END
$$;
CREATE TABLE generation_events_default PARTITION OF generation_events DEFAULT;

-- Each partition's statistics of how event_type, success and error_type go together (partitions.py,
-- KIND_STATISTICS, says why; the pipeline gives every partition it creates the same).
DO $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'generation_events'::regclass
    LOOP
        EXECUTE format('CREATE STATISTICS %I (dependencies) ON event_type, success, error_type FROM %I',
                       p.relname || '_kinds', p.relname);
    END LOOP;
END
$$;

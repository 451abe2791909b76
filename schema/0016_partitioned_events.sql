-- generation_events partitioned by day (issue 16): retention drops whole days instead of deleting rows one
-- batch at a time, and a day's rows, indexes and vacuum stay the size of a day.
--
-- Dedupe by event_id keeps its guarantee: a unique key on a partitioned table must include the partition key,
-- and (event_id, timestamp) would let a retry whose timestamp differs (one the server assigned, per attempt)
-- be stored twice. So the ids live in a table of their own, generation_event_ids (event_id primary key):
-- transfer inserts a batch's ids there first (ON CONFLICT DO NOTHING) and stores only the events whose id was
-- new, in the same statement. Retention deletes the ids of the rows it removes (before it drops a day).
--
-- The table as it was (unless empty: then it is dropped) becomes the first partition,
-- generation_events_legacy, holding every timestamp before the first day after its newest row: nothing is copied or rebuilt (its indexes are attached to the new
-- table's), only its ids are copied once. Its rows are deleted by retention as before until the whole
-- partition is past the retention age, then it is dropped like any day. Days after it get a partition each
-- (created ahead by the pipeline's retention job, a week ahead here); anything outside them (a day the
-- service was down for, a far-off timestamp) lands in generation_events_default, which retention treats
-- like the legacy partition. The seed's SQL runs unchanged against the partitioned table.

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
    'Raw generation events (one row per event_id, see generation_event_ids), partitioned by day of timestamp.';
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
    day timestamptz;
BEGIN
    SELECT greatest(date_trunc('day', now()), coalesce(date_trunc('day', max(timestamp)) + interval '1 day', '-infinity'))
    INTO first_day FROM generation_events_legacy;
    IF NOT EXISTS (SELECT 1 FROM generation_events_legacy) THEN
        DROP TABLE generation_events_legacy;  -- a new database: every day can have its own partition
    ELSE
        -- A CHECK that proves the bound, so ATTACH does not scan the table to prove it.
        EXECUTE format('ALTER TABLE generation_events_legacy ADD CONSTRAINT generation_events_legacy_bound CHECK (timestamp < %L)', first_day);
        EXECUTE format('ALTER TABLE generation_events ATTACH PARTITION generation_events_legacy FOR VALUES FROM (MINVALUE) TO (%L)', first_day);
        ALTER TABLE generation_events_legacy DROP CONSTRAINT generation_events_legacy_bound;
    END IF;
    FOR i IN 0..7 LOOP
        day := first_day + i * interval '1 day';
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF generation_events FOR VALUES FROM (%L) TO (%L)',
            'generation_events_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'), day, day + interval '1 day'
        );
    END LOOP;
END
$$;
CREATE TABLE generation_events_default PARTITION OF generation_events DEFAULT;

-- Error groups (issue 14): failed completions grouped by a fingerprint of their error_type and normalised
-- error_message (service/fingerprints.py: the rules, their order and their version).
--
-- * generation_events.error_fingerprint: computed once, by transfer, as a failed completion is stored
--   (NULL for every other event). Rows stored before this migration, or inserted another way, get theirs
--   from aggregation, in Python with the same function, the first time their hour is recomputed.
-- * generation_error_group_metrics_hourly: one row per UTC hour, fingerprint and checkpoint ('' for none),
--   replaced with its hour as a unit by aggregation (like generation_error_metrics_hourly); user_bitmap is
--   the Roaring set of the users' dense ids (see sketches.py), so affected users over any hours are exact;
--   generation_error_group_metrics_daily, the same per UTC day; generation_error_group_totals_daily, per
--   UTC day and fingerprint over every checkpoint.

ALTER TABLE generation_events ADD COLUMN error_fingerprint text;
COMMENT ON COLUMN generation_events.error_fingerprint IS
    'Error group of a failed completion (fingerprints.py); NULL for other events and until computed.';

CREATE TABLE generation_error_group_metrics_hourly (
    hour             timestamptz NOT NULL,
    fingerprint      text        NOT NULL,
    model_checkpoint text        NOT NULL,
    error_type       text        NOT NULL,
    failures         bigint      NOT NULL,
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    -- The message of the hour's latest failure of the group (and checkpoint).
    sample_message   text        NOT NULL,
    user_bitmap      bytea       NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (hour, fingerprint, model_checkpoint)
);
-- The details of the groups of one page (users, checkpoints, daily trend) over the window.
CREATE INDEX generation_error_group_metrics_hourly_fingerprint_idx
    ON generation_error_group_metrics_hourly (fingerprint, hour);
COMMENT ON TABLE generation_error_group_metrics_hourly IS
    'Failed completions per UTC hour, error group (fingerprint) and checkpoint; recomputed with the hour.';

-- The same per UTC day, summed from the hourly rows (as generation_error_metrics_daily is): a 30-day window
-- reads ~30 rows per group and checkpoint instead of ~720.
CREATE TABLE generation_error_group_metrics_daily (
    day              date        NOT NULL,
    fingerprint      text        NOT NULL,
    model_checkpoint text        NOT NULL,
    error_type       text        NOT NULL,
    failures         bigint      NOT NULL,
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    sample_message   text        NOT NULL,
    user_bitmap      bytea       NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (day, fingerprint, model_checkpoint)
);
CREATE INDEX generation_error_group_metrics_daily_fingerprint_idx
    ON generation_error_group_metrics_daily (fingerprint, day);

-- Per UTC day and group over all its checkpoints, summed from the rows above (answers without a checkpoint
-- filter): a 30-day window reads ~30 rows and user sets per group, instead of ~30 per group and checkpoint.
CREATE TABLE generation_error_group_totals_daily (
    day              date        NOT NULL,
    fingerprint      text        NOT NULL,
    error_type       text        NOT NULL,
    failures         bigint      NOT NULL,
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    sample_message   text        NOT NULL,
    user_bitmap      bytea       NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (day, fingerprint)
);
CREATE INDEX generation_error_group_totals_daily_fingerprint_idx
    ON generation_error_group_totals_daily (fingerprint, day);

-- Existing failures: their hours are marked dirty, so the next aggregation runs compute their fingerprints
-- (in Python, with the same rules) and fill the rollup, in batches, without a long migration. Found through
-- the partial index of failures (0008); hours past retention are dropped by aggregation as usual.
INSERT INTO generation_dirty_hours (hour, version)
SELECT hour, nextval('generation_dirty_hours_version_seq')
FROM (
    SELECT DISTINCT date_trunc('hour', timestamp) AS hour FROM generation_events
    WHERE success = false AND event_type = 'completion'
) AS hours
ORDER BY hour
ON CONFLICT (hour) DO NOTHING;

-- Error groups over all their checkpoints, per UTC hour (issue 17). ListErrorGroups without a checkpoint
-- filter read a window's partial first and last days from the hourly rows per checkpoint: ~8 rows and user
-- sets per group and hour with 8 checkpoints, read three times per page (ranking, a page's details, its
-- checkpoints). These rows hold one per group and hour, as generation_error_group_totals_daily does per day.
-- Rebuilt with the hours each aggregation recomputes, from the hourly rows per checkpoint just written
-- (pipeline/rollups.py); rows for the hours aggregated before this migration come from its data step
-- (migrate.py), which unions the user sets in Python with the same code.
CREATE TABLE generation_error_group_totals_hourly (
    hour             timestamptz NOT NULL,
    fingerprint      text        NOT NULL,
    error_type       text        NOT NULL,
    failures         bigint      NOT NULL,
    first_seen       timestamptz NOT NULL,
    last_seen        timestamptz NOT NULL,
    sample_message   text        NOT NULL,
    user_bitmap      bytea       NOT NULL DEFAULT ''::bytea,
    -- Failures per checkpoint ('' for none), so that a page's checkpoint lists need no rows per checkpoint.
    checkpoint_failures jsonb    NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (hour, fingerprint)
);
CREATE INDEX generation_error_group_totals_hourly_fingerprint_idx
    ON generation_error_group_totals_hourly (fingerprint, hour);
COMMENT ON TABLE generation_error_group_totals_hourly IS
    'Failed completions per UTC hour and error group over all checkpoints, merged from the rows per checkpoint.';

-- A checkpoint's daily rows, for ListErrorGroups filtered by checkpoint (it scanned every checkpoint's rows
-- of the window's days: ~8x what it keeps with 8 checkpoints).
CREATE INDEX generation_error_group_metrics_daily_checkpoint_idx
    ON generation_error_group_metrics_daily (model_checkpoint, day);

-- The daily totals keep their failures per checkpoint too (filled for the days aggregated before this migration
-- by its data step, from the daily rows per checkpoint).
ALTER TABLE generation_error_group_totals_daily ADD COLUMN checkpoint_failures jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN generation_error_group_totals_daily.checkpoint_failures IS
    'Failures per checkpoint ("" for none) of the group on the day: its rows in generation_error_group_metrics_daily.';

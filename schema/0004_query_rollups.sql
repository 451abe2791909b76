-- Rollups that keep long windows fast (numbers from bench/query_latency.py on ~10M events):
-- * running totals per user, so ranking users over any window is two index probes per user
--   instead of summing every user-day (top users over 30 days: ~100 ms -> ~35 ms);
-- * daily rows per checkpoint and per error type, so a 30-day window reads ~30 rows per
--   dimension instead of ~720 (model comparison and failure analysis: ~65 ms -> a few ms);
-- * indexes for "slowest" lists filtered by checkpoint or user (seconds -> milliseconds when the
--   filter and the duration are correlated, e.g. the fastest checkpoint's slowest generations).

-- cum_* = the user's totals over every hour up to and including this one.
ALTER TABLE generation_user_metrics_hourly
    ADD COLUMN cum_requests       bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_successes      bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_failures       bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_cancellations  bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_duration_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN cum_duration_sum   bigint NOT NULL DEFAULT 0;
CREATE INDEX generation_user_metrics_hourly_running_idx ON generation_user_metrics_hourly (user_id, hour)
    INCLUDE (cum_requests, cum_successes, cum_failures, cum_cancellations, cum_duration_count, cum_duration_sum,
             last_event_at);

-- Replaced by the running totals.
DROP TABLE generation_user_metrics_daily;

CREATE TABLE generation_model_metrics_daily (
    day                    date        NOT NULL,
    model_checkpoint       text        NOT NULL,
    total_requests         bigint      NOT NULL,
    successful_generations bigint      NOT NULL,
    failed_generations     bigint      NOT NULL,
    cancelled_generations  bigint      NOT NULL,
    duration_count         bigint      NOT NULL,
    duration_sum           bigint      NOT NULL,
    total_images_generated bigint      NOT NULL,
    last_used_at           timestamptz NOT NULL,
    duration_hist          bytea       NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (day, model_checkpoint)
);

CREATE TABLE generation_error_metrics_daily (
    day             date        NOT NULL,
    error_type      text        NOT NULL,
    failures        bigint      NOT NULL,
    duration_count  bigint      NOT NULL,
    duration_sum    bigint      NOT NULL,
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    sample_messages text[]      NOT NULL,
    model_counts    jsonb       NOT NULL,
    user_bitmap     bytea       NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (day, error_type)
);

CREATE INDEX generation_events_model_duration_idx
    ON generation_events (model_checkpoint, duration_ms, id)
    WHERE event_type = 'completion' AND duration_ms IS NOT NULL;
CREATE INDEX generation_events_user_duration_idx
    ON generation_events (user_id, duration_ms, id)
    WHERE event_type = 'completion' AND duration_ms IS NOT NULL;

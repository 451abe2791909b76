-- Rollups written by aggregation, one row per UTC hour (and dimension). Counts and sums are exact;
-- duration_hist is a mergeable log histogram (relative error < 1%) encoded as big-endian
-- (int2 bucket, int4 count) pairs; user_bitmap sets bit uid (see generation_users) for each user seen.

-- The seed's table: every column it names keeps its name and meaning (percentiles of the hour exact).
CREATE TABLE generation_metrics_hourly (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    timestamp              timestamptz NOT NULL UNIQUE,
    total_requests         bigint      NOT NULL,
    successful_generations bigint      NOT NULL,
    failed_generations     bigint      NOT NULL,
    cancelled_generations  bigint      NOT NULL,
    avg_duration_ms        double precision,
    p50_duration_ms        double precision,
    p95_duration_ms        double precision,
    p99_duration_ms        double precision,
    unique_users           integer     NOT NULL,
    avg_queue_length       double precision,
    max_queue_length       integer,
    total_images_generated bigint      NOT NULL,
    duration_count         bigint      NOT NULL,
    duration_sum           bigint      NOT NULL,
    queue_length_count     bigint      NOT NULL,
    queue_length_sum       bigint      NOT NULL,
    first_event_at         timestamptz NOT NULL,
    last_event_at          timestamptz NOT NULL,
    duration_hist          bytea       NOT NULL DEFAULT ''::bytea,
    user_bitmap            bytea       NOT NULL DEFAULT ''::bytea,
    aggregated_at          timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE generation_metrics_hourly IS
    'One row per UTC hour with events; recomputed from generation_events whenever the hour receives events.';

CREATE TABLE generation_model_metrics_hourly (
    hour                   timestamptz NOT NULL,
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
    PRIMARY KEY (hour, model_checkpoint)
);

-- Failed completions by error_type ('' when the event named none).
CREATE TABLE generation_error_metrics_hourly (
    hour            timestamptz NOT NULL,
    error_type      text        NOT NULL,
    failures        bigint      NOT NULL,
    duration_count  bigint      NOT NULL,
    duration_sum    bigint      NOT NULL,
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    sample_messages text[]      NOT NULL,
    model_counts    jsonb       NOT NULL,
    user_bitmap     bytea       NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (hour, error_type)
);

CREATE TABLE generation_user_metrics_hourly (
    user_id                uuid        NOT NULL,
    hour                   timestamptz NOT NULL,
    total_requests         bigint      NOT NULL,
    successful_generations bigint      NOT NULL,
    failed_generations     bigint      NOT NULL,
    cancelled_generations  bigint      NOT NULL,
    duration_count         bigint      NOT NULL,
    duration_sum           bigint      NOT NULL,
    total_images_generated bigint      NOT NULL,
    first_event_at         timestamptz NOT NULL,
    last_event_at          timestamptz NOT NULL,
    error_counts           jsonb       NOT NULL,
    model_counts           jsonb       NOT NULL,
    duration_hist          bytea       NOT NULL DEFAULT ''::bytea,
    PRIMARY KEY (user_id, hour)
);
CREATE INDEX generation_user_metrics_hourly_hour_idx ON generation_user_metrics_hourly (hour);

-- Per user per UTC day, summed from the hourly rows: ranking users over long windows reads ~30 rows
-- per user instead of ~720.
CREATE TABLE generation_user_metrics_daily (
    day                    date        NOT NULL,
    user_id                uuid        NOT NULL,
    total_requests         bigint      NOT NULL,
    successful_generations bigint      NOT NULL,
    failed_generations     bigint      NOT NULL,
    cancelled_generations  bigint      NOT NULL,
    duration_count         bigint      NOT NULL,
    duration_sum           bigint      NOT NULL,
    last_event_at          timestamptz NOT NULL,
    PRIMARY KEY (day, user_id)
);

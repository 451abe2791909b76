-- The whole service's figures per UTC day, merged from its hourly rows (issue 17). GetOverview and daily
-- GetTrends over a long window read one row per whole UTC day instead of 24 hourly rows with their
-- histograms and user sets (megabytes over 90 days); the window's partial days are still read hourly.
-- Rebuilt for the days of the hours each aggregation recomputes (pipeline/rollups.py, under the rollup
-- lock); rows for the hours aggregated before this migration come from its data step (migrate.py), which
-- merges the histograms and unions the user sets in Python with the same code.
CREATE TABLE generation_metrics_daily (
    day                    date        PRIMARY KEY,
    total_requests         bigint      NOT NULL,
    successful_generations bigint      NOT NULL,
    failed_generations     bigint      NOT NULL,
    cancelled_generations  bigint      NOT NULL,
    duration_count         bigint      NOT NULL,
    duration_sum           bigint      NOT NULL,
    total_images_generated bigint      NOT NULL,
    queue_length_count     bigint      NOT NULL,
    queue_length_sum       bigint      NOT NULL,
    max_queue_length       integer,
    first_event_at         timestamptz NOT NULL,
    last_event_at          timestamptz NOT NULL,
    unique_users           integer     NOT NULL,
    duration_hist          bytea       NOT NULL,
    user_bitmap            bytea       NOT NULL
);
COMMENT ON TABLE generation_metrics_daily IS
    'One row per UTC day with events: its hourly rows summed, histograms merged, user sets unioned.';

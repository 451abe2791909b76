-- GPU time per checkpoint per user and hour (issue 14 part 4): what prices a user's GPU time when the price
-- table (GA_GPU_PRICES) names checkpoints, read from the rollups like every other per-user figure.
-- {checkpoint: Σ duration_ms} over the hour's completions with a duration and a checkpoint (successful
-- and failed); adding a column with a constant default rewrites nothing.
ALTER TABLE generation_user_metrics_hourly ADD COLUMN model_gpu_ms jsonb NOT NULL DEFAULT '{}'::jsonb;
COMMENT ON COLUMN generation_user_metrics_hourly.model_gpu_ms IS
    'GPU time (Σ duration_ms of completions) per model_checkpoint in the user-hour.';

-- Hours aggregated before this column get it from the next aggregation run: every hour with a rollup whose
-- raw events are still kept is marked dirty. Until then, and for hours whose raw events are gone, their
-- GPU time is priced at the table's default price (`*`).
INSERT INTO generation_dirty_hours (hour, version)
SELECT m.timestamp, nextval('generation_dirty_hours_version_seq')
FROM generation_metrics_hourly AS m
WHERE EXISTS (
    SELECT 1 FROM generation_events AS e
    WHERE e.timestamp >= m.timestamp AND e.timestamp < m.timestamp + interval '1 hour'
)
ORDER BY m.timestamp
ON CONFLICT (hour) DO NOTHING;

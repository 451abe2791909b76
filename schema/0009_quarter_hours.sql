-- Local time in any zone, exactly, without raw rows (docs/design.md §3): every zone offset in use is a
-- multiple of 15 minutes and changes on a quarter hour, so the days and hours of day of any zone are
-- whole quarter hours. One row per UTC quarter hour with events, written by aggregation with the hourly
-- rows (replaced with its hour as a unit), holding what adds up, the duration histogram and the user set
-- (encoded as in generation_metrics_hourly); no percentiles (quarters are only ever merged). A 30-day
-- window has at most 2,880 of them; queries read only those of the hours a local boundary cuts.
CREATE TABLE generation_metrics_quarterly (
    quarter                timestamptz PRIMARY KEY,
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
    duration_hist          bytea       NOT NULL DEFAULT ''::bytea,
    user_bitmap            bytea       NOT NULL DEFAULT ''::bytea
);
COMMENT ON TABLE generation_metrics_quarterly IS
    'One row per UTC quarter hour with events (start in quarter); recomputed with its hour by aggregation.';

-- Hours already aggregated get their quarter rows from the next aggregation run: every hour with a rollup
-- whose raw events are still kept is marked dirty (an index probe per hour). Until then, and for older
-- hours whose raw events are gone, a query counts such an hour whole in the local bucket of its start.
INSERT INTO generation_dirty_hours (hour, version)
SELECT m.timestamp, nextval('generation_dirty_hours_version_seq')
FROM generation_metrics_hourly AS m
WHERE EXISTS (
    SELECT 1 FROM generation_events AS e
    WHERE e.timestamp >= m.timestamp AND e.timestamp < m.timestamp + interval '1 hour'
)
ORDER BY m.timestamp
ON CONFLICT (hour) DO NOTHING;

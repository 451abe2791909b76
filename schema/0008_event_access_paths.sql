-- Access paths for ListEvents, planned as a whole (issue 17): every filter combination, both orders, any
-- page, in bounded time however the data grows.
--
-- Principles (bench/README.md has the matrix that checks them):
-- * every index ListEvents uses is ordered the way the answer is (timestamp or duration, then id, after
--   the equality it leads with), so a page stops after ~page_size matches, never sorts the window;
-- * the other filter columns are trailing *key* columns, so Postgres checks them on the index entry
--   (an Index Cond) and visits the table only for rows that match: a rare combination costs index
--   entries (~30 ns each), not a random heap read each (~5 µs);
-- * rare kinds of event (cancellations, failures, error types) get small partial indexes of their own,
--   so a combination that is rare or even empty (a cancellation with an error type) scans only that
--   kind, not the whole window;
-- * extended statistics tell the planner how event type, success and error type go together, so it
--   does not take an empty combination for a frequent one.
-- One index on all events and one per user for "newest", the three completion indexes for "slowest"
-- (as before, now with their filter columns), plus three small partial ones: the rollups cannot bound
-- these scans (no rollup holds every combination), the indexes do.

DROP INDEX generation_events_timestamp_idx;
DROP INDEX generation_events_user_timestamp_idx;
DROP INDEX generation_events_completion_duration_idx;
DROP INDEX generation_events_model_duration_idx;
DROP INDEX generation_events_user_duration_idx;

-- Time windows (aggregation, retention) and "newest" without a user; duration and checkpoint checked in it.
CREATE INDEX generation_events_timestamp_idx
    ON generation_events (timestamp, duration_ms, model_checkpoint);
-- A user's events, newest first (ListEvents, recent activity), every other filter checked in the index.
CREATE INDEX generation_events_user_timestamp_idx
    ON generation_events (user_id, timestamp, model_checkpoint, duration_ms);

-- Slowest completions: overall, of a checkpoint, of a user; window and filters checked in the index.
CREATE INDEX generation_events_completion_duration_idx
    ON generation_events (duration_ms, timestamp, success, error_type)
    WHERE event_type = 'completion' AND duration_ms IS NOT NULL;
CREATE INDEX generation_events_model_duration_idx
    ON generation_events (model_checkpoint, duration_ms, timestamp, success, error_type)
    WHERE event_type = 'completion' AND duration_ms IS NOT NULL;
CREATE INDEX generation_events_user_duration_idx
    ON generation_events (user_id, duration_ms, timestamp, model_checkpoint, success, error_type)
    WHERE event_type = 'completion' AND duration_ms IS NOT NULL;

-- The rare kinds, newest first (a few % of the events each).
CREATE INDEX generation_events_cancellation_idx
    ON generation_events (timestamp, user_id, model_checkpoint, success, error_type, duration_ms)
    WHERE event_type = 'cancellation';
CREATE INDEX generation_events_failure_idx
    ON generation_events (timestamp, user_id, model_checkpoint, event_type, error_type, duration_ms)
    WHERE success = false;
CREATE INDEX generation_events_error_type_idx
    ON generation_events (error_type, timestamp, user_id, model_checkpoint, event_type, success, duration_ms)
    WHERE error_type IS NOT NULL;

CREATE STATISTICS generation_events_kind_stats (mcv, dependencies) ON event_type, success, error_type
    FROM generation_events;

-- ListTopUsers subtracts, per user, the running totals of its last hourly row before the window: with them
-- in the index, that probe reads the index alone instead of a wide rollup row (bench.query_latency).
CREATE INDEX generation_user_metrics_hourly_running_idx ON generation_user_metrics_hourly (uid, hour)
    INCLUDE (cum_events, cum_requests, cum_successes, cum_failures, cum_duration_count, cum_duration_sum);

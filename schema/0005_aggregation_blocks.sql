-- Aggregation whose cost follows the events being aggregated (docs/design.md §7):
-- * a failing hour is retried with backoff and reported, and never holds up the other hours;
-- * users get their dense id (uid) when transfer stores their first event, so aggregation never looks
--   users up; per-user rollups are keyed by it;
-- * per-user running totals run within a UTC month, next to one row of totals per user and month: a late
--   event rewrites at most the rest of that month of that user's hourly rows and one monthly row, never
--   every row after it; top users read a few monthly rows and one hourly row per user;
-- * user sets become Roaring bitmaps (converted from the old fixed-width bitmaps by the Python step of
--   this migration, see migrate.py), sized by the users present instead of by every user ever seen.

-- Filled by transfer (NULL for rows stored before this migration or inserted by hand: aggregation
-- looks those up in generation_users).
ALTER TABLE generation_events ADD COLUMN uid integer;

ALTER TABLE generation_dirty_hours
    ADD COLUMN failures      integer NOT NULL DEFAULT 0,
    ADD COLUMN failing_since timestamptz,
    ADD COLUMN last_error    text,
    ADD COLUMN retry_at      timestamptz;
COMMENT ON COLUMN generation_dirty_hours.retry_at IS
    'Set while the hour fails to aggregate: not retried before this time (exponential backoff).';
CREATE INDEX generation_dirty_hours_failing_idx ON generation_dirty_hours (hour) WHERE failures > 0;

-- Every user of the old per-user rollup has a uid already (aggregation assigned it first); be sure.
INSERT INTO generation_users (user_id)
SELECT DISTINCT user_id FROM generation_user_metrics_hourly ORDER BY 1
ON CONFLICT (user_id) DO NOTHING;

-- cum_* = the user's totals over the hours of the same UTC month up to and including this one.
CREATE TABLE generation_user_metrics_hourly_new (
    uid                    integer     NOT NULL,
    hour                   timestamptz NOT NULL,
    events                 bigint      NOT NULL,
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
    cum_events             bigint      NOT NULL,
    cum_requests           bigint      NOT NULL,
    cum_successes          bigint      NOT NULL,
    cum_failures           bigint      NOT NULL,
    cum_cancellations      bigint      NOT NULL,
    cum_duration_count     bigint      NOT NULL,
    cum_duration_sum       bigint      NOT NULL
);
-- events: rows stored before this migration count request/completion/cancellation events only.
INSERT INTO generation_user_metrics_hourly_new
SELECT u.uid, h.hour,
       h.total_requests + h.successful_generations + h.failed_generations + h.cancelled_generations,
       h.total_requests, h.successful_generations, h.failed_generations, h.cancelled_generations,
       h.duration_count, h.duration_sum, h.total_images_generated, h.first_event_at, h.last_event_at,
       h.error_counts, h.model_counts, h.duration_hist,
       sum(h.total_requests + h.successful_generations + h.failed_generations + h.cancelled_generations) OVER w,
       sum(h.total_requests) OVER w, sum(h.successful_generations) OVER w, sum(h.failed_generations) OVER w,
       sum(h.cancelled_generations) OVER w, sum(h.duration_count) OVER w, sum(h.duration_sum) OVER w
FROM generation_user_metrics_hourly AS h JOIN generation_users AS u USING (user_id)
WINDOW w AS (PARTITION BY u.uid, date_trunc('month', h.hour AT TIME ZONE 'UTC') ORDER BY h.hour);
DROP TABLE generation_user_metrics_hourly;
ALTER TABLE generation_user_metrics_hourly_new RENAME TO generation_user_metrics_hourly;
ALTER TABLE generation_user_metrics_hourly
    ADD CONSTRAINT generation_user_metrics_hourly_pkey PRIMARY KEY (uid, hour);
-- Aggregation replaces an hour's rows as a unit.
CREATE INDEX generation_user_metrics_hourly_hour_idx ON generation_user_metrics_hourly (hour);
COMMENT ON TABLE generation_user_metrics_hourly IS
    'Per user (uid, see generation_users) per UTC hour; cum_* run within the UTC month.';

-- Per user per UTC month: the month's totals. A window's totals for a user are the totals of the months
-- it touches minus the part of its first month before it (cum_* of the user's last hourly row there).
CREATE TABLE generation_user_metrics_monthly (
    uid                    integer     NOT NULL,
    month                  date        NOT NULL,
    user_id                uuid        NOT NULL,
    events                 bigint      NOT NULL,
    total_requests         bigint      NOT NULL,
    successful_generations bigint      NOT NULL,
    failed_generations     bigint      NOT NULL,
    cancelled_generations  bigint      NOT NULL,
    duration_count         bigint      NOT NULL,
    duration_sum           bigint      NOT NULL,
    -- The month's last hour and event with a rollup row.
    last_hour              timestamptz NOT NULL,
    last_event_at          timestamptz NOT NULL,
    PRIMARY KEY (uid, month)
) WITH (fillfactor = 80);  -- room for in-place (HOT) updates: aggregation adds to a row every pass
CREATE INDEX generation_user_metrics_monthly_month_idx ON generation_user_metrics_monthly (month);
COMMENT ON TABLE generation_user_metrics_monthly IS 'Per user (uid) per UTC month, summed from the hourly rows.';

INSERT INTO generation_user_metrics_monthly
SELECT h.uid, (date_trunc('month', h.hour AT TIME ZONE 'UTC'))::date, u.user_id, sum(h.events),
       sum(h.total_requests), sum(h.successful_generations), sum(h.failed_generations),
       sum(h.cancelled_generations), sum(h.duration_count), sum(h.duration_sum), max(h.hour), max(h.last_event_at)
FROM generation_user_metrics_hourly AS h JOIN generation_users AS u USING (uid)
GROUP BY h.uid, 2, u.user_id;

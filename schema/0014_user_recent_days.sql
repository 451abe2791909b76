-- What ListTopUsers bounds a user's figure by (issue 17). Ranking needs every active user's exact total
-- over the window, one index probe per user into the running totals; instead each user first gets an
-- upper bound, and only the users whose bound can still reach the top are computed exactly
-- (queries/users.py). The bound is the user's months minus what came before the window in its first
-- month, which these columns keep for the user's last three active days: recent_days (ascending UTC
-- days) and, per day, the month-to-date requests and GPU time (duration_sum) before it. Set by aggregation
-- in the same update as the monthly totals (pipeline/user_rollups.py) when a user's first events of a
-- later day arrive, so they never exceed the true figures (late events only make them smaller than the
-- truth, which loosens the bound and keeps it an upper bound); emptied when events disappear.
ALTER TABLE generation_user_metrics_monthly
    ADD COLUMN recent_days     date[]   NOT NULL DEFAULT '{}',
    ADD COLUMN recent_requests bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN recent_duration bigint[] NOT NULL DEFAULT '{}';
COMMENT ON COLUMN generation_user_metrics_monthly.recent_days IS
    'The user''s last (up to) three active UTC days of the month; recent_requests / recent_duration hold the '
    'month-to-date requests and duration_sum before each (never more than the truth).';

-- The rows already stored: exact figures from the hourly rows.
WITH days AS (
    SELECT uid, (date_trunc('month', hour AT TIME ZONE 'UTC'))::date AS month, (hour AT TIME ZONE 'UTC')::date AS day,
           sum(total_requests) AS requests, sum(duration_sum) AS duration
    FROM generation_user_metrics_hourly
    GROUP BY 1, 2, 3
), ranked AS (
    SELECT uid, month, day,
           sum(requests) OVER w - requests AS before_requests, sum(duration) OVER w - duration AS before_duration,
           row_number() OVER (PARTITION BY uid, month ORDER BY day DESC) AS newest
    FROM days
    WINDOW w AS (PARTITION BY uid, month ORDER BY day)
)
UPDATE generation_user_metrics_monthly AS m
SET recent_days = r.days, recent_requests = r.requests, recent_duration = r.duration
FROM (
    SELECT uid, month, array_agg(day ORDER BY day) AS days, array_agg(before_requests ORDER BY day) AS requests,
           array_agg(before_duration ORDER BY day) AS duration
    FROM ranked WHERE newest <= 3
    GROUP BY uid, month
) AS r
WHERE m.uid = r.uid AND m.month = r.month;

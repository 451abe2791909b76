-- Per user per UTC day: the figures ListTopUsers ranks by (issue 17). Ranking needs every active user's
-- exact total over the window, which costs one index probe per user into the running totals; with these
-- rows a short window is first bounded from above per user by the days it touches (the window's days
-- read in one range scan), and only the users whose bound can still reach the top are computed exactly
-- (queries/users.py). Kept in step by the same deltas as the monthly rows (pipeline/user_rollups.py).
CREATE TABLE generation_user_metrics_daily (
    day            date    NOT NULL,
    uid            integer NOT NULL,
    events         bigint  NOT NULL,
    total_requests bigint  NOT NULL,
    duration_sum   bigint  NOT NULL,
    PRIMARY KEY (day, uid)
) WITH (fillfactor = 80);  -- room for in-place (HOT) updates: aggregation adds to today's rows every pass
COMMENT ON TABLE generation_user_metrics_daily IS
    'Per UTC day per user (uid): events, requests and GPU time (duration_sum), summed from the hourly rows.';

INSERT INTO generation_user_metrics_daily
SELECT (hour AT TIME ZONE 'UTC')::date, uid, sum(events), sum(total_requests), sum(duration_sum)
FROM generation_user_metrics_hourly
GROUP BY 1, 2
ORDER BY 1, 2;

"""Per-user rollups: one row per user and hour, one per user and month, kept in step by deltas.

A user's totals over any window are read from a few monthly rows plus one hourly row (queries/users.py),
so the hourly rows carry running totals (cum_*) that restart every UTC month. Recomputing a set of
hours therefore changes, per user: the hours' own rows, the running totals of that user's later rows in
the same month (only when the hours are late), and one monthly row per month, by the difference between
the new and the old rows. The monthly row also keeps the user's last three active days with the
month-to-date figures before each (ListTopUsers' bounds, see RECENT_DAYS). Nothing grows with the users
ever seen or the hours after the event.

Users are split in shards (uid modulo `SHARDS`) recomputed in parallel, each in its own transaction under
its own locks (aggregate.py), on the shard's events (`rollups.create_agg_events` with a shard).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import psycopg

from generation_analytics.service.hours import month_of

Cursor = psycopg.Cursor[Any]

# Shards of the users recomputed in parallel. A constant: every aggregator must split users the same way,
# since each shard's rows are guarded by that shard's locks.
SHARDS = 2
MONTH_OF_HOUR = "(date_trunc('month', hour AT TIME ZONE 'UTC'))::date"
# The additive columns, in the order old_user_hours and the deltas carry them.
ADDITIVE = (
    "events", "total_requests", "successful_generations", "failed_generations", "cancelled_generations",
    "duration_count", "duration_sum",
)  # fmt: skip
RUNNING = (
    "cum_events", "cum_requests", "cum_successes", "cum_failures", "cum_cancellations", "cum_duration_count",
    "cum_duration_sum",
)  # fmt: skip


def _list(names: tuple[str, ...], prefix: str = "") -> str:
    return ", ".join(prefix + n for n in names)


# Every column of a user-hour row that is computed from events (the running totals are derived).
COMPUTED = (
    *ADDITIVE, "total_images_generated", "first_event_at", "last_event_at", "error_counts", "model_counts",
    "duration_hist", "model_gpu_ms",
)  # fmt: skip
CREATE_OLD_USER_HOURS = f"""
CREATE TEMP TABLE old_user_hours ON COMMIT DROP AS
SELECT uid, hour, {MONTH_OF_HOUR} AS month, {_list(COMPUTED)}
FROM generation_user_metrics_hourly
WHERE hour = ANY(%(hours)s::timestamptz[]) AND uid %% %(shards)s = %(shard)s
"""

# Most user-hours hold one checkpoint, one error type and one duration bucket: those maps are built in
# the one pass; the others (NULL here) are filled in by FILL_* from just their events.
CREATE_NEW_USER_HOURS = f"""
CREATE TEMP TABLE new_user_hours ON COMMIT DROP AS
SELECT uid, hour, {MONTH_OF_HOUR} AS month, user_id,
       count(*) AS events,
       count(*) FILTER (WHERE event_type = 'request') AS total_requests,
       count(*) FILTER (WHERE event_type = 'completion' AND success) AS successful_generations,
       count(*) FILTER (WHERE failed) AS failed_generations,
       count(*) FILTER (WHERE event_type = 'cancellation') AS cancelled_generations,
       count(bucket) AS duration_count,
       coalesce(sum(duration_ms) FILTER (WHERE bucket IS NOT NULL), 0) AS duration_sum,
       sum(images) AS total_images_generated,
       min(timestamp) AS first_event_at, max(timestamp) AS last_event_at,
       CASE WHEN count(model_checkpoint) = 0 THEN '{{}}'::jsonb
            WHEN min(model_checkpoint) = max(model_checkpoint)
                THEN jsonb_build_object(min(model_checkpoint), count(model_checkpoint)) END AS model_counts,
       CASE WHEN count(*) FILTER (WHERE failed) = 0 THEN '{{}}'::jsonb
            WHEN min(error_type) FILTER (WHERE failed) = max(error_type) FILTER (WHERE failed)
                THEN jsonb_build_object(min(error_type) FILTER (WHERE failed), count(*) FILTER (WHERE failed))
       END AS error_counts,
       CASE WHEN count(bucket) = 0 THEN ''::bytea
            WHEN min(bucket) = max(bucket) THEN int2send(min(bucket)::int2) || int4send(count(bucket)::int4)
       END AS duration_hist,
       CASE WHEN count(model_checkpoint) FILTER (WHERE bucket IS NOT NULL) = 0 THEN '{{}}'::jsonb
            WHEN min(model_checkpoint) FILTER (WHERE bucket IS NOT NULL)
                 = max(model_checkpoint) FILTER (WHERE bucket IS NOT NULL)
                THEN jsonb_build_object(
                    min(model_checkpoint) FILTER (WHERE bucket IS NOT NULL),
                    sum(duration_ms) FILTER (WHERE bucket IS NOT NULL AND model_checkpoint IS NOT NULL))
       END AS model_gpu_ms
FROM agg_events GROUP BY uid, hour, user_id
"""


def _fill(column: str, key: str, only: str, combine: str, per_key: str = "count(*)") -> str:
    """Fill in `column` where the one-pass CASE left it NULL: count (or `per_key`) the user-hour's events
    per `key` (those matching `only`) and `combine` the (key, k) figures."""
    return f"""
UPDATE new_user_hours AS n SET {column} = c.value
FROM (
    SELECT uid, hour, {combine} AS value
    FROM (SELECT e.uid, e.hour, e.{key}, {per_key} AS k
          FROM agg_events AS e JOIN new_user_hours AS n USING (uid, hour)
          WHERE n.{column} IS NULL AND {only} GROUP BY 1, 2, 3) AS per_key
    GROUP BY 1, 2
) AS c
WHERE n.uid = c.uid AND n.hour = c.hour
"""


FILLS = (
    _fill(
        "model_counts", "model_checkpoint", "e.model_checkpoint IS NOT NULL", "jsonb_object_agg(model_checkpoint, k)"
    ),
    _fill("error_counts", "error_type", "e.failed", "jsonb_object_agg(error_type, k)"),
    _fill(
        "duration_hist", "bucket", "e.bucket IS NOT NULL",
        "string_agg(int2send(bucket::int2) || int4send(k::int4), ''::bytea ORDER BY bucket)",
    ),
    _fill(
        "model_gpu_ms", "model_checkpoint", "e.model_checkpoint IS NOT NULL AND e.bucket IS NOT NULL",
        "jsonb_object_agg(model_checkpoint, k)", per_key="sum(e.duration_ms)",
    ),
)  # fmt: skip

# The (user, month) pairs whose rows among the hours differ from what is stored. Only those are rewritten:
# an hour recomputed every few seconds while it fills up rewrites only the users who had new events.
CREATE_CHANGED = f"""
CREATE TEMP TABLE changed_user_months ON COMMIT DROP AS
SELECT DISTINCT coalesce(n.uid, o.uid) AS uid, coalesce(n.month, o.month) AS month
FROM new_user_hours AS n FULL JOIN old_user_hours AS o USING (uid, hour)
WHERE n.uid IS NULL OR o.uid IS NULL OR ({_list(COMPUTED, "n.")}) IS DISTINCT FROM ({_list(COMPUTED, "o.")})
"""
DELETE_CHANGED = """
DELETE FROM generation_user_metrics_hourly AS h
USING old_user_hours AS o JOIN changed_user_months AS c USING (uid, month)
WHERE h.uid = o.uid AND h.hour = o.hour
"""

# Each touched monthly row gains the difference between the new and the old rows of the hours; the new
# month totals come back for the running totals of forward hours (see INSERT_USER_HOURS).
CREATE_MONTH_TOTALS = f"""
CREATE TEMP TABLE month_totals ON COMMIT DROP AS
SELECT uid, month, {_list(ADDITIVE)} FROM generation_user_metrics_monthly LIMIT 0
"""
SUMS = ", ".join(f"sum({c}) AS {c}" for c in ADDITIVE)


# The user's last three active days, each with the month-to-date requests and GPU time before it (what
# ListTopUsers bounds a window by: never more than the truth). A batch whose latest hour is on a day after
# every hour already counted appends that day with the totals counted so far (they hold only earlier
# days; late events for earlier days, counted afterwards, only make them smaller than the truth). Any
# figure going down (events removed) empties them: bounds fall back to the whole month.
_SHRANK = f"least({_list(ADDITIVE, 'EXCLUDED.')}) < 0"
_NEW_DAY = "(EXCLUDED.last_hour AT TIME ZONE 'UTC')::date > (m.last_hour AT TIME ZONE 'UTC')::date"


def _recent(column: str, value: str) -> str:
    return f"""{column} = CASE WHEN {_SHRANK} THEN '{{}}'
            WHEN {_NEW_DAY} THEN (m.{column} || {value})[greatest(cardinality(m.{column}) - 1, 1):]
            ELSE m.{column} END"""


RECENT_DAYS = ",\n        ".join(
    (
        _recent("recent_days", "(EXCLUDED.last_hour AT TIME ZONE 'UTC')::date"),
        _recent("recent_requests", "m.total_requests"),
        _recent("recent_duration", "m.duration_sum"),
    )
)


def _upsert_months(*, one_hour: bool) -> str:
    """One hour holds one row per user and month: no summing over the hours is needed then."""
    if one_hour:
        new = f"""SELECT uid, month, user_id, {_list(ADDITIVE)}, hour AS last_hour, last_event_at
        FROM new_user_hours JOIN changed_user_months USING (uid, month)"""
        old = f"SELECT uid, month, {_list(ADDITIVE)} FROM old_user_hours"
    else:
        new = f"""SELECT uid, month, user_id, {SUMS}, max(hour) AS last_hour, max(last_event_at) AS last_event_at
        FROM new_user_hours JOIN changed_user_months USING (uid, month) GROUP BY uid, month, user_id"""
        old = f"SELECT uid, month, {SUMS} FROM old_user_hours GROUP BY uid, month"
    return f"""
WITH n AS ({new}), o AS ({old}), up AS (
    INSERT INTO generation_user_metrics_monthly AS m (
        uid, month, user_id, {_list(ADDITIVE)}, last_hour, last_event_at, recent_days, recent_requests, recent_duration)
    SELECT n.uid, n.month, n.user_id, {", ".join(f"n.{c} - coalesce(o.{c}, 0)" for c in ADDITIVE)},
           n.last_hour, n.last_event_at, ARRAY[(n.last_hour AT TIME ZONE 'UTC')::date], '{{0}}', '{{0}}'
    FROM n LEFT JOIN o USING (uid, month)
    ORDER BY n.uid, n.month
    ON CONFLICT (uid, month) DO UPDATE SET
        {", ".join(f"{c} = m.{c} + EXCLUDED.{c}" for c in ADDITIVE)},
        last_hour = greatest(m.last_hour, EXCLUDED.last_hour),
        last_event_at = greatest(m.last_event_at, EXCLUDED.last_event_at),
        {RECENT_DAYS}
    RETURNING uid, month, {_list(ADDITIVE)}
)
INSERT INTO month_totals SELECT * FROM up
"""


UPSERT_MONTHS_ONE_HOUR = _upsert_months(one_hour=True)
UPSERT_MONTHS = _upsert_months(one_hour=False)

# Users whose hours lost every event (never happens while raw events only grow; kept exact regardless).
SHRINK_MONTHS = f"""
UPDATE generation_user_metrics_monthly AS m SET {", ".join(f"{c} = m.{c} - o.{c}" for c in ADDITIVE)},
    recent_days = '{{}}', recent_requests = '{{}}', recent_duration = '{{}}'
FROM (
    SELECT uid, month, {SUMS} FROM old_user_hours AS o
    WHERE NOT EXISTS (SELECT 1 FROM new_user_hours AS n WHERE n.uid = o.uid AND n.month = o.month)
    GROUP BY uid, month
) AS o
WHERE m.uid = o.uid AND m.month = o.month
RETURNING m.uid, m.month
"""
DELETE_EMPTY_MONTH = """
DELETE FROM generation_user_metrics_monthly AS m
WHERE m.uid = %(uid)s AND m.month = %(month)s AND NOT EXISTS (
    SELECT 1 FROM generation_user_metrics_hourly AS h
    WHERE h.uid = m.uid AND h.hour >= m.month::timestamp AT TIME ZONE 'UTC'
      AND h.hour < (m.month + interval '1 month')::timestamp AT TIME ZONE 'UTC')
"""

# Is any hourly row of the month later than its first recomputed hour (the hours' own rows are gone)?
LATEST_IN_MONTH = """
SELECT max(hour) FROM generation_user_metrics_hourly
WHERE hour >= %(month)s::timestamp AT TIME ZONE 'UTC'
  AND hour < (%(month)s::date + interval '1 month')::timestamp AT TIME ZONE 'UTC'
"""

# When the hours are the latest of their month, a row's running totals are the new month totals minus
# the rows of the same user after it among the hours. Otherwise (late hours) RECOMPUTE_RUNNING fixes them.


def _insert_user_hours(*, one_hour: bool) -> str:
    """Running totals of forward months: the new month totals minus the user's later rows among the hours
    (none when the batch is one hour). Late months get 0 here and RECOMPUTE_RUNNING."""
    later = "0" if one_hour else "coalesce(sum(n.{c}) OVER later, 0)"
    running = ", ".join(
        f"CASE WHEN n.month = ANY(%(forward)s::date[]) THEN t.{c} - {later.format(c=c)} ELSE 0 END" for c in ADDITIVE
    )
    return f"""
INSERT INTO generation_user_metrics_hourly (uid, hour, {_list(COMPUTED)}, {_list(RUNNING)})
SELECT n.uid, n.hour, {_list(COMPUTED, "n.")}, {running}
FROM new_user_hours AS n JOIN month_totals AS t USING (uid, month)
WINDOW later AS (PARTITION BY n.uid, n.month ORDER BY n.hour DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)
ORDER BY n.uid, n.hour
"""


INSERT_ONE_HOUR = _insert_user_hours(one_hour=True)
INSERT_HOURS = _insert_user_hours(one_hour=False)
RECOMPUTE_RUNNING = f"""
WITH touched AS (  -- every rewritten row of a late month: the hours' rows of the changed users
    SELECT h.uid, h.month, min(h.hour) AS from_hour
    FROM (SELECT uid, month, hour FROM new_user_hours UNION ALL SELECT uid, month, hour FROM old_user_hours) AS h
    JOIN changed_user_months AS c USING (uid, month)
    WHERE h.month = ANY(%(late)s::date[])
    GROUP BY h.uid, h.month
), base AS (
    SELECT t.uid, t.from_hour, (t.month + interval '1 month')::timestamp AT TIME ZONE 'UTC' AS month_end,
           {", ".join(f"coalesce(p.{c}, 0) AS {c}" for c in RUNNING)}
    FROM touched AS t
    LEFT JOIN LATERAL (
        SELECT * FROM generation_user_metrics_hourly AS p
        WHERE p.uid = t.uid AND p.hour >= t.month::timestamp AT TIME ZONE 'UTC' AND p.hour < t.from_hour
        ORDER BY p.hour DESC LIMIT 1
    ) AS p ON true
), running AS (
    SELECT h.uid, h.hour,
           {", ".join(f"b.{r} + sum(h.{a}) OVER w AS {r}" for a, r in zip(ADDITIVE, RUNNING, strict=True))}
    FROM base AS b JOIN generation_user_metrics_hourly AS h
        ON h.uid = b.uid AND h.hour >= b.from_hour AND h.hour < b.month_end
    WINDOW w AS (PARTITION BY h.uid, b.month_end ORDER BY h.hour)  -- a user may have several late months
)
UPDATE generation_user_metrics_hourly AS u SET {", ".join(f"{r} = x.{r}" for r in RUNNING)}
FROM running AS x
WHERE u.uid = x.uid AND u.hour = x.hour
"""


def prepare_users(cur: Cursor, params: dict[str, Any]) -> None:
    """The hours' per-user rows as stored and as recomputed (no lock needed: other aggregators never
    write these hours' rows, and the running totals they may rewrite are not read here)."""
    cur.execute(CREATE_OLD_USER_HOURS, params)
    cur.execute(CREATE_NEW_USER_HOURS)
    for fill in FILLS:
        cur.execute(fill)
    cur.execute(CREATE_CHANGED)


def write_users(cur: Cursor, params: dict[str, Any], months: list[date]) -> None:
    """Replace the hours' per-user rows that changed and carry the difference into the running and
    monthly totals (under the users' spanning lock, after `prepare_users`)."""
    cur.execute("SELECT EXISTS (SELECT 1 FROM changed_user_months)")
    row = cur.fetchone()
    if not row or not row[0]:
        return
    cur.execute(DELETE_CHANGED)
    cur.execute(CREATE_MONTH_TOTALS)
    one_hour = len(params["hours"]) == 1
    cur.execute(UPSERT_MONTHS_ONE_HOUR if one_hour else UPSERT_MONTHS)
    forward: list[date] = []
    late: list[date] = []
    first_hour = _first_hour_per_month(params["hours"])
    for month in months:
        cur.execute(LATEST_IN_MONTH, {"month": month})
        row = cur.fetchone()
        latest: datetime | None = row[0] if row else None
        (late if latest is not None and latest > first_hour[month] else forward).append(month)
    cur.execute(INSERT_ONE_HOUR if one_hour else INSERT_HOURS, {"forward": forward})
    if late:
        cur.execute(RECOMPUTE_RUNNING, {"late": late})
    cur.execute(SHRINK_MONTHS)
    for uid, month in cur.fetchall():
        cur.execute(DELETE_EMPTY_MONTH, {"uid": uid, "month": month})


def _first_hour_per_month(hours: list[datetime]) -> dict[date, datetime]:
    first: dict[date, datetime] = {}
    for hour in sorted(hours):
        first.setdefault(month_of(hour), hour)
    return first

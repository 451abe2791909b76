"""Per-user analytics (generation_user_metrics_hourly) and the top users (plus the monthly rows)."""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.hours import DAY, HOUR, day_start, month_of
from generation_analytics.service.queries.events import EventRecord, recent_activity
from generation_analytics.service.queries.totals import Totals, add_row, build
from generation_analytics.service.queries.window import Window
from generation_analytics.service.settings import GpuPrices
from generation_analytics.vocabulary import UserOrder

USER_ROWS = """
SELECT h.hour, h.total_requests AS requests, h.successful_generations AS successes,
       h.failed_generations AS failures, h.cancelled_generations AS cancellations, h.duration_count,
       h.duration_sum, h.total_images_generated AS images, h.first_event_at, h.last_event_at, h.error_counts,
       h.model_counts, h.duration_hist AS hist, h.model_gpu_ms
FROM generation_users AS u JOIN generation_user_metrics_hourly AS h USING (uid)
WHERE u.user_id = %(user_id)s AND h.hour >= %(start)s AND h.hour < %(end)s
"""


@dataclass
class FailureCount:
    error_type: str
    count: int


@dataclass
class ModelUsage:
    model_checkpoint: str
    count: int


@dataclass
class UserAnalytics:
    user_id: str
    lookback_days: int
    total_requests: int = 0
    successful_generations: int = 0
    failed_generations: int = 0
    cancelled_generations: int = 0
    success_rate_pct: float = 0.0
    avg_duration_ms: float = 0.0
    p50_duration_ms: float = 0.0
    p95_duration_ms: float = 0.0
    total_images_generated: int = 0
    first_generation_at: datetime | None = None
    last_generation_at: datetime | None = None
    failure_breakdown: list[FailureCount] = field(default_factory=list)
    models_used: list[ModelUsage] = field(default_factory=list)
    recent_activity: list[EventRecord] = field(default_factory=list)
    total_error_types: int = 0
    other_failures: int = 0
    total_models: int = 0
    other_model_uses: int = 0
    gpu_time_ms: int = 0
    gpu_cost: float | None = None


def user_gpu_cost(prices: GpuPrices, by_checkpoint: Counter[str], gpu_time_ms: int) -> float | None:
    """The user's GPU time priced per checkpoint (`by_checkpoint`: the rollups' model_gpu_ms summed); the
    rest (completions without a checkpoint, hours aggregated before migration 0011) at the default price."""
    if not prices.configured:
        return None
    cost = sum(prices.cost(checkpoint, ms) for checkpoint, ms in by_checkpoint.items())
    return cost + prices.cost(None, max(gpu_time_ms - sum(by_checkpoint.values()), 0))


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


async def user_analytics(
    conn: AsyncConnection[Any], user_id: str, window: Window, *, limit: int, prices: GpuPrices | None = None
) -> UserAnalytics:
    """One user's figures over the window (an unknown user gets zeros); breakdowns at most `limit` long."""
    totals = Totals()
    errors: Counter[str] = Counter()
    models: Counter[str] = Counter()
    gpu: Counter[str] = Counter()
    first: datetime | None = None
    last: datetime | None = None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(USER_ROWS, {"user_id": user_id, "start": window.start, "end": window.end})
        for row in await cur.fetchall():
            add_row(totals, row)
            errors.update(row["error_counts"])
            models.update(row["model_counts"])
            gpu.update(row["model_gpu_ms"])
            first = row["first_event_at"] if first is None else min(first, row["first_event_at"])
            last = row["last_event_at"] if last is None else max(last, row["last_event_at"])
    ranked_errors, ranked_models = _ranked(errors), _ranked(models)
    return build(
        UserAnalytics,
        totals.figures(50, 95),
        user_id=user_id,
        lookback_days=window.days,
        first_generation_at=first,
        last_generation_at=last,
        failure_breakdown=[FailureCount(error_type=k, count=v) for k, v in ranked_errors[:limit]],
        models_used=[ModelUsage(model_checkpoint=k, count=v) for k, v in ranked_models[:limit]],
        total_error_types=len(errors),
        other_failures=sum(v for _, v in ranked_errors[limit:]),
        total_models=len(models),
        other_model_uses=sum(v for _, v in ranked_models[limit:]),
        recent_activity=await recent_activity(conn, user_id, window) if first is not None else [],
        gpu_cost=user_gpu_cost(prices or GpuPrices(), gpu, totals.duration_sum),
    )


# A user's totals over the window: the totals of the months it touches (monthly rows), minus the part of
# its first month before the window (the running totals of the user's last hourly row there, read from
# the index alone), minus any hours after its end (events stamped by clocks ahead of ours: one range
# scan of the hour index, normally empty). A month whose last hour precedes the window adds nothing to it
# and is left out (so is what came before it). Sums stay bigint (numeric arithmetic per user cost ~40% of
# the time).
#
# That exact total costs a few index probes per user, so only the users who can still rank get one. Every
# user active in the window first gets an upper bound of its figure, from one narrow pass over the monthly
# rows: its months minus what its monthly row says came before the window in the first month (month-to-date
# figures before one of its last three active days on or before the window's first day: never more than
# the truth, 0 when none is known). The `probe` users with the highest bounds are computed exactly, and the
# `limit`-th best of those is a threshold no user whose bound is below it can reach. The users at or above
# it are computed exactly and ranked: the answer is the same as ranking everyone. The latest event inside
# the window is looked up only for the users ranked.
def _before(column: str) -> str:
    """The month-to-date figure (recent_requests or recent_duration) before the window's first day."""
    picks = " ".join(f"WHEN recent_days[{i}] <= %(first_day)s THEN {column}[{i}]" for i in (3, 2, 1))
    return f"CASE {picks} ELSE 0 END"


# What ListTopUsers ranks by: a column of the exact totals (GPU time is the window's duration_sum), and
# what bounds it: the monthly rows' column and its month-to-date figure before the window.
ORDER_COLUMNS = {UserOrder.REQUESTS: "requests", UserOrder.GPU_TIME: "duration_sum"}
BOUND_COLUMNS = {
    UserOrder.REQUESTS: ("total_requests", _before("recent_requests")),
    UserOrder.GPU_TIME: ("duration_sum", _before("recent_duration")),
}


def _bounds(months: str, *, single: bool, order: UserOrder) -> str:
    """Upper bounds (uid, bound) of every user with an event in the window, from its monthly rows
    (`months`: the filter on month). A window inside one month reads one row per user, ungrouped, and
    carries the row's totals along (_windowed needs no second look at it); across months only the bound
    is summed (summing every total of every user costs more than looking up the few users computed)."""
    column, before = BOUND_COLUMNS[order]
    if single:
        return f"""
    SELECT uid, {column} - {before} AS bound, user_id, events, total_requests AS requests,
           successful_generations AS successes, failed_generations AS failures, duration_count, duration_sum,
           last_hour, last_event_at, true AS in_first_month
    FROM generation_user_metrics_monthly WHERE {months} AND last_hour >= %(start)s"""
    return f"""
    SELECT uid, sum({column}) - sum(CASE WHEN month = %(first_month)s THEN {before} ELSE 0 END) AS bound
    FROM generation_user_metrics_monthly WHERE {months} AND last_hour >= %(start)s
    GROUP BY uid"""


def _windowed(users: str, months: str, *, carried: bool) -> str:
    """The exact window totals of the users in the relation `users` (rows of `cover`): their months' totals,
    `carried` in those rows or else summed from their monthly rows, less what came before the window in
    the first month (one index-only probe each) and what lies after it."""
    totals = (
        f"""{users} AS m"""
        if carried
        else f"""{users} AS s
    CROSS JOIN LATERAL (
        SELECT s.uid, user_id, sum(events)::bigint AS events, sum(total_requests)::bigint AS requests,
               sum(successful_generations)::bigint AS successes, sum(failed_generations)::bigint AS failures,
               sum(duration_count)::bigint AS duration_count, sum(duration_sum)::bigint AS duration_sum,
               max(last_hour) AS last_hour, max(last_event_at) AS last_event_at,
               bool_or(month = %(first_month)s) AS in_first_month
        FROM generation_user_metrics_monthly
        WHERE uid = s.uid AND {months} AND last_hour >= %(start)s
        GROUP BY user_id
    ) AS m"""
    )
    return f"""
    SELECT m.uid, m.user_id, m.last_hour, m.last_event_at,
           m.events - coalesce(b.cum_events, 0) - coalesce(f.events, 0) AS events,
           m.requests - coalesce(b.cum_requests, 0) - coalesce(f.requests, 0) AS requests,
           m.successes - coalesce(b.cum_successes, 0) - coalesce(f.successes, 0) AS successes,
           m.failures - coalesce(b.cum_failures, 0) - coalesce(f.failures, 0) AS failures,
           m.duration_count - coalesce(b.cum_duration_count, 0) - coalesce(f.duration_count, 0) AS duration_count,
           m.duration_sum - coalesce(b.cum_duration_sum, 0) - coalesce(f.duration_sum, 0) AS duration_sum
    FROM {totals}
    LEFT JOIN future AS f ON f.uid = m.uid
    LEFT JOIN LATERAL (
        SELECT cum_events, cum_requests, cum_successes, cum_failures, cum_duration_count, cum_duration_sum
        FROM generation_user_metrics_hourly AS h
        WHERE m.in_first_month AND h.uid = m.uid AND h.hour >= %(first_month_start)s AND h.hour < %(start)s
        ORDER BY h.hour DESC LIMIT 1
    ) AS b ON true"""


# Users computed exactly beyond the limit to set the threshold. Their totals are reused, so a user probed
# costs nothing more when it can rank: on 10M events (5,000 users, two months), for a limit of 100 and windows
# of 7-90 days, 110-174 users are computed in all where probing twice the limit computed 200-300 (1 day: 826
# either way, its bounds are loose: they know the month-to-date figures at the start of a day, not an hour).
PROBE_MARGIN = 10


@functools.cache
def _top_users_sql(*, single: bool, order: UserOrder) -> str:
    """ListTopUsers' query for a window inside one month (`single`) or across several, ranked by `order`.
    In one month only that month is read, and only the hours ahead inside it are subtracted (at a month's
    last hour, events stamped a few minutes ahead fall in the next month, which that month's rows never
    added)."""
    months, future_bound = (
        ("month = %(first_month)s", " AND hour < %(months_end)s") if single else ("month >= %(first_month)s", "")
    )
    by = ORDER_COLUMNS[order]
    return f"""
WITH future AS (
    SELECT uid, sum(events)::bigint AS events, sum(total_requests)::bigint AS requests,
           sum(successful_generations)::bigint AS successes, sum(failed_generations)::bigint AS failures,
           sum(duration_count)::bigint AS duration_count, sum(duration_sum)::bigint AS duration_sum
    FROM generation_user_metrics_hourly WHERE hour >= %(end)s{future_bound}
    GROUP BY uid
), cover AS ({_bounds(months, single=single, order=order)}
), probed AS (
    SELECT * FROM cover ORDER BY bound DESC LIMIT %(probe)s
), probed_exact AS ({_windowed("probed", months, carried=single)}
), threshold AS (  -- -1 (everyone) until `limit` users of the window are known
    SELECT coalesce((
        SELECT {by} FROM probed_exact WHERE events > 0
        ORDER BY {by} DESC OFFSET %(limit)s - 1 LIMIT 1
    ), -1) AS at_least
), candidates AS (  -- the users who can still rank and are not computed yet
    SELECT * FROM cover
    WHERE bound >= (SELECT at_least FROM threshold) AND uid NOT IN (SELECT uid FROM probed)
), windowed AS (
    SELECT * FROM probed_exact UNION ALL ({_windowed("candidates", months, carried=single)})
), ranked AS (
    SELECT * FROM windowed WHERE events > 0  -- else nothing in the window
    ORDER BY {by} DESC, user_id::text LIMIT %(limit)s
)
SELECT r.user_id::text AS user_id, r.requests AS total_requests, r.successes AS successful_generations,
       r.failures AS failed_generations, r.duration_count, r.duration_sum,
       CASE WHEN r.last_hour < %(end)s THEN r.last_event_at ELSE (
           SELECT h.last_event_at FROM generation_user_metrics_hourly AS h
           WHERE h.uid = r.uid AND h.hour < %(end)s ORDER BY h.hour DESC LIMIT 1
       ) END AS last_event_at
FROM ranked AS r
ORDER BY r.{by} DESC, r.user_id::text
"""


@dataclass
class TopUser:
    user_id: str
    total_requests: int
    successful_generations: int
    failed_generations: int
    avg_duration_ms: float
    last_generation_at: datetime | None
    gpu_time_ms: int


@dataclass
class TopUsers:
    lookback_days: int
    users: list[TopUser]


async def top_users(
    conn: AsyncConnection[Any],
    window: Window,
    *,
    limit: int,
    order: UserOrder = UserOrder.REQUESTS,
    probe: int | None = None,
) -> TopUsers:
    """The `limit` users with the most requests (or GPU time) in the window. `probe` users (default the limit
    and PROBE_MARGIN more) are computed exactly to set the threshold; 0 computes every user (bench.top_users'
    baseline)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        first_month = window.start.date().replace(day=1)
        single = month_of(window.end - HOUR) == first_month
        await cur.execute(
            _top_users_sql(single=single, order=order),
            {
                "start": window.start,
                "end": window.end,
                "first_month": first_month,
                "first_month_start": day_start(first_month),
                "months_end": day_start(month_of(day_start(first_month) + 32 * DAY)),
                "first_day": window.start.date(),
                "limit": limit,
                "probe": limit + PROBE_MARGIN if probe is None else probe,
            },
        )
        rows = await cur.fetchall()
    users = [
        TopUser(
            user_id=r["user_id"],
            total_requests=r["total_requests"],
            successful_generations=r["successful_generations"],
            failed_generations=r["failed_generations"],
            avg_duration_ms=r["duration_sum"] / r["duration_count"] if r["duration_count"] else 0.0,
            last_generation_at=r["last_event_at"],
            gpu_time_ms=r["duration_sum"],
        )
        for r in rows
    ]
    return TopUsers(lookback_days=window.days, users=users)

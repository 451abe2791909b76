"""Per-user analytics (generation_user_metrics_hourly) and the top users (daily rollup + edge hours)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.queries.events import EventRecord, recent_activity
from generation_analytics.service.queries.totals import Totals, add_row
from generation_analytics.service.queries.window import DAY, HOUR, Window, day_start

USER_ROWS = """
SELECT hour, total_requests AS requests, successful_generations AS successes, failed_generations AS failures,
       cancelled_generations AS cancellations, duration_count, duration_sum, total_images_generated AS images,
       first_event_at, last_event_at, error_counts, model_counts, duration_hist AS hist
FROM generation_user_metrics_hourly
WHERE user_id = %(user_id)s AND hour >= %(start)s AND hour < %(end)s
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


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


async def user_analytics(conn: AsyncConnection[Any], user_id: str, window: Window) -> UserAnalytics:
    """One user's figures over the window (an unknown user gets zeros)."""
    totals = Totals()
    errors: Counter[str] = Counter()
    models: Counter[str] = Counter()
    first: datetime | None = None
    last: datetime | None = None
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(USER_ROWS, {"user_id": user_id, "start": window.start, "end": window.end})
        for row in await cur.fetchall():
            add_row(totals, row)
            errors.update(row["error_counts"])
            models.update(row["model_counts"])
            first = row["first_event_at"] if first is None else min(first, row["first_event_at"])
            last = row["last_event_at"] if last is None else max(last, row["last_event_at"])
    p50, p95 = totals.percentiles(0.5, 0.95)
    return UserAnalytics(
        user_id=user_id,
        lookback_days=window.days,
        total_requests=totals.requests,
        successful_generations=totals.successes,
        failed_generations=totals.failures,
        cancelled_generations=totals.cancellations,
        success_rate_pct=totals.success_rate * 100,
        avg_duration_ms=totals.avg_duration_ms,
        p50_duration_ms=p50,
        p95_duration_ms=p95,
        total_images_generated=totals.images,
        first_generation_at=first,
        last_generation_at=last,
        failure_breakdown=[FailureCount(error_type=k, count=v) for k, v in _ranked(errors)],
        models_used=[ModelUsage(model_checkpoint=k, count=v) for k, v in _ranked(models)],
        recent_activity=await recent_activity(conn, user_id, window) if first is not None else [],
    )


# Whole days come from the daily rollup; the window's first, partial day is corrected with at most
# 12 hourly rows per user: added (hours from the window start to midnight) or subtracted (hours from
# midnight to the window start), whichever is fewer. The current day is partial too, but nothing
# lies after the window's end in it, so its daily row is exactly the window's part of it.
TOP_USERS = """
WITH parts AS (
    SELECT user_id, total_requests, successful_generations, failed_generations, cancelled_generations,
           duration_count, duration_sum
    FROM generation_user_metrics_daily
    WHERE day >= %(first_day)s AND day <= %(last_day)s
    UNION ALL
    SELECT user_id, %(sign)s * total_requests, %(sign)s * successful_generations, %(sign)s * failed_generations,
           %(sign)s * cancelled_generations, %(sign)s * duration_count, %(sign)s * duration_sum
    FROM generation_user_metrics_hourly
    WHERE hour >= %(edge_start)s AND hour < %(edge_end)s
)
SELECT user_id::text AS user_id, sum(total_requests)::bigint AS total_requests,
       sum(successful_generations)::bigint AS successful_generations,
       sum(failed_generations)::bigint AS failed_generations,
       sum(duration_count)::bigint AS duration_count, sum(duration_sum)::bigint AS duration_sum
FROM parts
GROUP BY user_id
HAVING sum(total_requests) + sum(successful_generations) + sum(failed_generations) + sum(cancelled_generations) > 0
ORDER BY total_requests DESC, user_id
LIMIT %(limit)s
"""
LAST_EVENTS = """
SELECT user_id::text, max(last_event_at)
FROM generation_user_metrics_hourly
WHERE user_id = ANY(%(users)s::uuid[]) AND hour >= %(start)s AND hour < %(end)s
GROUP BY user_id
"""


@dataclass
class TopUser:
    user_id: str
    total_requests: int
    successful_generations: int
    failed_generations: int
    avg_duration_ms: float
    last_generation_at: datetime | None


@dataclass
class TopUsers:
    lookback_days: int
    users: list[TopUser]


def _top_user_parts(window: Window) -> dict[str, Any]:
    first_day, last_day = window.start.date(), (window.end - HOUR).date()
    midnight = day_start(first_day)
    into_day = window.start - midnight
    if not into_day:
        return {"first_day": first_day, "last_day": last_day, "sign": 1, "edge_start": midnight, "edge_end": midnight}
    if DAY - into_day <= into_day:  # add the hours from the start to the next midnight
        return {"first_day": first_day + DAY, "last_day": last_day, "sign": 1,
                "edge_start": window.start, "edge_end": midnight + DAY}  # fmt: skip
    return {"first_day": first_day, "last_day": last_day, "sign": -1, "edge_start": midnight, "edge_end": window.start}


async def top_users(conn: AsyncConnection[Any], window: Window, *, limit: int) -> TopUsers:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(TOP_USERS, {**_top_user_parts(window), "limit": limit})
        rows = await cur.fetchall()
    last_seen: dict[str, datetime] = {}
    if rows:
        params = {"users": [r["user_id"] for r in rows], "start": window.start, "end": window.end}
        last_seen = dict(await (await conn.execute(LAST_EVENTS, params)).fetchall())
    users = [
        TopUser(
            user_id=r["user_id"],
            total_requests=r["total_requests"],
            successful_generations=r["successful_generations"],
            failed_generations=r["failed_generations"],
            avg_duration_ms=r["duration_sum"] / r["duration_count"] if r["duration_count"] else 0.0,
            last_generation_at=last_seen.get(r["user_id"]),
        )
        for r in rows
    ]
    return TopUsers(lookback_days=window.days, users=users)

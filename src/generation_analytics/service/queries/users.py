"""Per-user analytics and the top users, both from generation_user_metrics_hourly."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.queries.events import EventRecord, recent_activity
from generation_analytics.service.queries.totals import Totals, add_row, build
from generation_analytics.service.queries.window import Window

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
    return build(
        UserAnalytics,
        totals.figures(50, 95),
        user_id=user_id,
        lookback_days=window.days,
        first_generation_at=first,
        last_generation_at=last,
        failure_breakdown=[FailureCount(error_type=k, count=v) for k, v in _ranked(errors)],
        models_used=[ModelUsage(model_checkpoint=k, count=v) for k, v in _ranked(models)],
        recent_activity=await recent_activity(conn, user_id, window) if first is not None else [],
    )


# Each user's totals over the window are the running totals (cum_*) of their last hourly row before the
# window's end minus those of their last row before its start: two index-only probes per user,
# whatever the window's length. A user whose last row before the end lies before the start had no
# event in the window.
TOP_USERS = """
SELECT u.user_id::text AS user_id,
       e.cum_requests - coalesce(s.cum_requests, 0) AS total_requests,
       e.cum_successes - coalesce(s.cum_successes, 0) AS successful_generations,
       e.cum_failures - coalesce(s.cum_failures, 0) AS failed_generations,
       e.cum_duration_count - coalesce(s.cum_duration_count, 0) AS duration_count,
       e.cum_duration_sum - coalesce(s.cum_duration_sum, 0) AS duration_sum,
       e.last_event_at
FROM generation_users AS u
CROSS JOIN LATERAL (
    SELECT hour, cum_requests, cum_successes, cum_failures, cum_duration_count, cum_duration_sum, last_event_at
    FROM generation_user_metrics_hourly AS h
    WHERE h.user_id = u.user_id AND h.hour < %(end)s ORDER BY h.hour DESC LIMIT 1
) AS e
LEFT JOIN LATERAL (
    SELECT cum_requests, cum_successes, cum_failures, cum_duration_count, cum_duration_sum
    FROM generation_user_metrics_hourly AS h
    WHERE h.user_id = u.user_id AND h.hour < %(start)s ORDER BY h.hour DESC LIMIT 1
) AS s ON true
WHERE e.hour >= %(start)s
ORDER BY total_requests DESC, u.user_id
LIMIT %(limit)s
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


async def top_users(conn: AsyncConnection[Any], window: Window, *, limit: int) -> TopUsers:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(TOP_USERS, {"start": window.start, "end": window.end, "limit": limit})
        rows = await cur.fetchall()
    users = [
        TopUser(
            user_id=r["user_id"],
            total_requests=r["total_requests"],
            successful_generations=r["successful_generations"],
            failed_generations=r["failed_generations"],
            avg_duration_ms=r["duration_sum"] / r["duration_count"] if r["duration_count"] else 0.0,
            last_generation_at=r["last_event_at"],
        )
        for r in rows
    ]
    return TopUsers(lookback_days=window.days, users=users)

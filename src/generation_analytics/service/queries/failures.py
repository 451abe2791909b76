"""Failure analysis: error types from generation_error_metrics_daily and _hourly, daily rates (in the
question's time zone) from the hourly and quarter-hour tables; optionally against the previous window."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service import sketches
from generation_analytics.service.queries import local_time
from generation_analytics.service.queries.overview import hourly_rows
from generation_analytics.service.queries.significance import (
    POISSON,
    MetricChange,
    change,
    compare_totals,
    counts_differ,
)
from generation_analytics.service.queries.totals import Totals, ranked_sql
from generation_analytics.service.queries.window import SPLIT_HOURS, Window, daily_split, rate

SAMPLE_MESSAGES = 5
MODELS_PER_ERROR = 10

_COLUMNS = """error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages,
       model_counts, user_bitmap"""
# Whole days from the daily rollup, the window's partial first and last days from the hourly one.
ERROR_ROWS = f"""
SELECT last_seen AS at, {_COLUMNS} FROM generation_error_metrics_daily
WHERE day >= %(first_day)s AND day <= %(last_day)s
UNION ALL
SELECT last_seen AS at, {_COLUMNS} FROM generation_error_metrics_hourly
WHERE {SPLIT_HOURS}
"""
# Error types with the most failures first; the rest folded into one row (see totals.ranked_sql).
RANKED_ERRORS = ranked_sql(
    ERROR_ROWS,
    "error_type",
    "failures DESC",
    [
        ("failures", "sum(failures)", "sum"),
        ("duration_count", "sum(duration_count)", "sum"),
        ("duration_sum", "sum(duration_sum)", "sum"),
        ("first_seen", "min(first_seen)", "min"),
        ("last_seen", "max(last_seen)", "max"),
    ],
)
# The details of the listed error types only; newest rows first, so recent samples win.
TOP_DETAILS = f"""
SELECT error_type, sample_messages, model_counts, user_bitmap FROM ({ERROR_ROWS}) AS r
WHERE error_type = ANY(%(keys)s) ORDER BY at DESC
"""
# The given error types one row each, every other one folded into a row whose key is NULL (the
# previous window of a ranked list), and the given ones' user sets.
KEYED_ERRORS = f"""
SELECT CASE WHEN error_type = ANY(%(keys)s::text[]) THEN error_type END AS key, sum(failures)::bigint AS failures,
       sum(duration_count)::bigint AS duration_count, sum(duration_sum)::bigint AS duration_sum
FROM ({ERROR_ROWS}) AS r GROUP BY 1
"""
KEYED_USERS = f"SELECT error_type, user_bitmap FROM ({ERROR_ROWS}) AS r WHERE error_type = ANY(%(keys)s::text[])"
OTHERS = "(others)"


@dataclass
class ErrorTypeSummary:
    error_type: str
    count: int = 0
    avg_duration_ms: float = 0.0
    sample_messages: list[str] = field(default_factory=list)
    affected_users: int = 0
    models: list[str] = field(default_factory=list)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    total_models: int = 0
    changes: list[MetricChange] = field(default_factory=list)


@dataclass
class FailureTrendPoint:
    date: str
    total_completions: int
    failures: int
    failure_rate: float


@dataclass
class FailureAnalysis:
    lookback_days: int
    total_failures: int
    total_completions: int
    failure_rate_pct: float
    total_error_types: int
    error_types: list[ErrorTypeSummary]
    failure_trends: list[FailureTrendPoint]
    others: ErrorTypeSummary | None
    time_zone: str
    window_start: datetime
    window_end: datetime
    previous_window_start: datetime | None = None
    previous_window_end: datetime | None = None
    changes: list[MetricChange] = field(default_factory=list)


@dataclass
class _Details:
    messages: list[str] = field(default_factory=list)
    bitmaps: list[bytes] = field(default_factory=list)
    models: Counter[str] = field(default_factory=Counter)

    def add(self, row: dict[str, Any]) -> None:
        for message in row["sample_messages"]:
            if len(self.messages) < SAMPLE_MESSAGES and message not in self.messages:
                self.messages.append(message)
        self.bitmaps.append(row["user_bitmap"])
        self.models.update(row["model_counts"])


def _summary(name: str, row: dict[str, Any], details: _Details | None) -> ErrorTypeSummary:
    details = details or _Details()
    ranked = [model for model, _ in sorted(details.models.items(), key=lambda kv: (-kv[1], kv[0]))]
    return ErrorTypeSummary(
        error_type=name,
        count=row["failures"],
        avg_duration_ms=row["duration_sum"] / row["duration_count"] if row["duration_count"] else 0.0,
        sample_messages=details.messages,
        affected_users=sketches.union_count(details.bitmaps),
        models=ranked[:MODELS_PER_ERROR],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        total_models=len(ranked),
    )


async def failure_trends(conn: AsyncConnection[Any], window: Window) -> list[FailureTrendPoint]:
    """Completions and failures per local day of `window.zone` (partial first and last days)."""
    days = local_time.cut(window.start, len(window.hours), window.zone, local_time.local_day)
    daily: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for piece in await local_time.pieces(conn, days, await hourly_rows(conn, window, blobs=False)):
        day = daily[piece.bucket]
        day[0] += piece.row["successes"] + piece.row["failures"]
        day[1] += piece.row["failures"]
    return [
        FailureTrendPoint(
            date=d.isoformat(),
            total_completions=daily[d][0],
            failures=daily[d][1],
            failure_rate=rate(daily[d][1], daily[d][0]),
        )
        for d in sorted(days.weights)
    ]


async def failure_analysis(conn: AsyncConnection[Any], window: Window, *, limit: int) -> FailureAnalysis:
    """The `limit` error types with the most failures (with samples, users, checkpoints), the rest summed;
    with `window.previous`, the totals and each error type (the rest against the rest) against it."""
    params = daily_split(window).params | {"limit": limit}
    details: dict[str, _Details] = defaultdict(_Details)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(RANKED_ERRORS, params)
        rows = await cur.fetchall()
        top = [row for row in rows if row["key"] is not None]
        if top:
            await cur.execute(TOP_DETAILS, params | {"keys": [row["key"] for row in top]})
            for row in await cur.fetchall():
                details[row["error_type"]].add(row)
    trends = await failure_trends(conn, window)
    completions = sum(t.total_completions for t in trends)
    failures = sum(t.failures for t in trends)
    folded = [row for row in rows if row["key"] is None]
    analysis = FailureAnalysis(
        lookback_days=window.days,
        total_failures=failures,
        total_completions=completions,
        failure_rate_pct=rate(failures, completions) * 100,
        total_error_types=sum(row["keys"] for row in rows),
        error_types=[_summary(row["key"], row, details.get(row["key"])) for row in top],
        failure_trends=trends,
        others=_summary(OTHERS, folded[0], None) if folded else None,
        time_zone=window.zone.key,
        window_start=window.start,
        window_end=window.end,
    )
    if window.previous is not None:
        await _compare(conn, window, window.previous, analysis)
    return analysis


async def _compare(conn: AsyncConnection[Any], window: Window, previous: Window, analysis: FailureAnalysis) -> None:
    """Set the previous window's bounds and the changes of the totals and of each error type."""
    hours = (window.elapsed_hours, previous.elapsed_hours)
    now, before = Totals(), Totals()
    now.add(successes=analysis.total_completions - analysis.total_failures, failures=analysis.total_failures)
    for row in await hourly_rows(conn, previous, blobs=False):
        before.add(successes=row["successes"], failures=row["failures"])
    before_rate = rate(before.failures, before.completions) * 100
    analysis.previous_window_start, analysis.previous_window_end = previous.start, previous.end
    analysis.changes = compare_totals(
        now,
        before,
        [
            ("total_failures", analysis.total_failures, before.failures),
            ("total_completions", analysis.total_completions, before.completions),
            ("failure_rate_pct", analysis.failure_rate_pct, before_rate),
        ],
        hours=hours,
        rate="failure_rate_pct",
    )
    keys = [summary.error_type for summary in analysis.error_types]
    params = daily_split(previous).params | {"keys": keys}
    users: dict[str, list[bytes]] = defaultdict(list)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(KEYED_ERRORS, params)
        rows: dict[str | None, dict[str, Any]] = {row["key"]: row for row in await cur.fetchall()}
        if keys:
            await cur.execute(KEYED_USERS, params)
            for row in await cur.fetchall():
                users[row["error_type"]].append(row["user_bitmap"])
    entries: list[tuple[str | None, ErrorTypeSummary]] = [(s.error_type, s) for s in analysis.error_types]
    if analysis.others is not None:
        entries.append((None, analysis.others))
    for key, summary in entries:
        row = rows.get(key) or {"failures": 0, "duration_count": 0, "duration_sum": 0}
        count = row["failures"]
        significant = counts_differ(summary.count, hours[0], count, hours[1])
        avg = row["duration_sum"] / row["duration_count"] if row["duration_count"] else 0.0
        summary.changes = [
            change(
                "count", summary.count, count, significant=significant, test=POISSON, samples=(summary.count, count)
            ),
            change("avg_duration_ms", summary.avg_duration_ms, avg),
        ]
        if key is not None:
            summary.changes.append(change("affected_users", summary.affected_users, sketches.union_count(users[key])))

"""Failure analysis: error types from generation_error_metrics_hourly, daily rates from the hourly table."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service import sketches
from generation_analytics.service.queries.overview import hourly_rows
from generation_analytics.service.queries.window import SPLIT_HOURS, Window, daily_split, rate

SAMPLE_MESSAGES = 5

_COLUMNS = """error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages,
       model_counts, user_bitmap"""
# Whole days from the daily rollup, the window's partial first and last days from the hourly one; newest first.
ERROR_ROWS = f"""
SELECT last_seen AS at, {_COLUMNS} FROM generation_error_metrics_daily
WHERE day >= %(first_day)s AND day <= %(last_day)s
UNION ALL
SELECT last_seen AS at, {_COLUMNS} FROM generation_error_metrics_hourly
WHERE {SPLIT_HOURS}
ORDER BY at DESC
"""


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


@dataclass
class _ErrorAccumulator:
    count: int = 0
    duration_count: int = 0
    duration_sum: int = 0
    messages: list[str] = field(default_factory=list)
    bitmaps: list[bytes] = field(default_factory=list)
    models: Counter[str] = field(default_factory=Counter)
    first_seen: datetime | None = None
    last_seen: datetime | None = None

    def add(self, row: dict[str, Any]) -> None:
        self.count += row["failures"]
        self.duration_count += row["duration_count"]
        self.duration_sum += row["duration_sum"]
        for message in row["sample_messages"]:  # newest rows first: recent samples win
            if len(self.messages) < SAMPLE_MESSAGES and message not in self.messages:
                self.messages.append(message)
        self.bitmaps.append(row["user_bitmap"])
        self.models.update(row["model_counts"])
        self.first_seen = min(filter(None, (self.first_seen, row["first_seen"])))
        self.last_seen = max(filter(None, (self.last_seen, row["last_seen"])))

    def summary(self, error_type: str) -> ErrorTypeSummary:
        return ErrorTypeSummary(
            error_type=error_type,
            count=self.count,
            avg_duration_ms=self.duration_sum / self.duration_count if self.duration_count else 0.0,
            sample_messages=self.messages,
            affected_users=sketches.union_count(self.bitmaps),
            models=[name for name, _ in sorted(self.models.items(), key=lambda kv: (-kv[1], kv[0]))],
            first_seen=self.first_seen,
            last_seen=self.last_seen,
        )


async def failure_analysis(conn: AsyncConnection[Any], window: Window) -> FailureAnalysis:
    errors: dict[str, _ErrorAccumulator] = defaultdict(_ErrorAccumulator)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(ERROR_ROWS, daily_split(window).params)
        for row in await cur.fetchall():
            errors[row["error_type"]].add(row)
    daily: dict[date, list[int]] = defaultdict(lambda: [0, 0])
    for row in await hourly_rows(conn, window, blobs=False):
        day = daily[row["hour"].date()]
        day[0] += row["successes"] + row["failures"]
        day[1] += row["failures"]
    trends = [
        FailureTrendPoint(
            date=d.isoformat(),
            total_completions=daily[d][0],
            failures=daily[d][1],
            failure_rate=rate(daily[d][1], daily[d][0]),
        )
        for d in window.dates
    ]
    completions = sum(t.total_completions for t in trends)
    failures = sum(t.failures for t in trends)
    summaries = sorted((acc.summary(name) for name, acc in errors.items()), key=lambda s: (-s.count, s.error_type))
    return FailureAnalysis(
        lookback_days=window.days,
        total_failures=failures,
        total_completions=completions,
        failure_rate_pct=rate(failures, completions) * 100,
        total_error_types=len(summaries),
        error_types=summaries,
        failure_trends=trends,
    )

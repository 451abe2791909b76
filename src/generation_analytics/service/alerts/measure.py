"""A rule's metric over its window, read from the rollups through the query modules' own SQL and sums.

Scope everything reads the quarter-hour rollup (`generation_metrics_quarterly`): the window is the UTC
quarter hours overlapping (now - window, now], so it holds at least `window_minutes` and at most 15
minutes more. A checkpoint, an error type or an error group has hourly rollups only: the window is the UTC hours
overlapping (now - window, now]. The stream metrics (dead letters, pipeline lag) are read from Redis now.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.hours import HOUR, hour_floor
from generation_analytics.service.queries.failures import KEYED_ERRORS
from generation_analytics.service.queries.local_time import QUARTER, QUARTER_HISTS
from generation_analytics.service.queries.models import keyed_models, model_totals
from generation_analytics.service.queries.overview import hourly_rows
from generation_analytics.service.queries.status import stream_status
from generation_analytics.service.queries.totals import Totals, add_row
from generation_analytics.service.queries.window import Window, daily_split, rate
from generation_analytics.service.stream import AsyncRedis, StreamKeys
from generation_analytics.vocabulary import AlertMetric, AlertScope

# Metrics read from the stream as it is now: no window, one sample.
STREAM_METRICS = frozenset({AlertMetric.DEAD_LETTERS, AlertMetric.PIPELINE_LAG_S})
# What each scope can measure (the rollups of a checkpoint have no queue figures; those of an error
# type only its failures).
SCOPE_METRICS: dict[AlertScope, frozenset[AlertMetric]] = {
    AlertScope.EVERYTHING: frozenset(AlertMetric),
    AlertScope.CHECKPOINT: frozenset(AlertMetric) - STREAM_METRICS - {AlertMetric.AVG_QUEUE_LENGTH},
    AlertScope.ERROR_TYPE: frozenset({AlertMetric.FAILURES, AlertMetric.FAILURE_RATE_PCT}),
    AlertScope.ERROR_GROUP: frozenset({AlertMetric.FAILURES, AlertMetric.FAILURE_RATE_PCT}),
}

# An error group's failures over whole hours (its hourly rollup, one row per hour and checkpoint).
GROUP_FAILURES = """
SELECT coalesce(sum(failures), 0)::bigint FROM generation_error_group_metrics_hourly
WHERE fingerprint = %(fingerprint)s AND hour >= %(start)s AND hour < %(end)s
"""


@dataclass(frozen=True)
class Measurement:
    """A metric's value (None when the window has nothing to compute it from) and how many samples it
    rests on, over [window_start, window_end)."""

    value: float | None
    samples: int
    window_start: datetime
    window_end: datetime


def quarter_floor(moment: datetime) -> datetime:
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def rule_window(scope: AlertScope, window_minutes: int, now: datetime) -> Window:
    """The rollup buckets overlapping (now - window, now]: quarter hours for everything, hours otherwise."""
    if scope is AlertScope.EVERYTHING:
        start, end = quarter_floor(now - timedelta(minutes=window_minutes)), quarter_floor(now) + QUARTER
    else:
        start, end = hour_floor(now - timedelta(minutes=window_minutes)), hour_floor(now) + HOUR
    return Window(days=0, start=start, end=end, asked_at=now)


async def quarter_totals(conn: AsyncConnection[Any], window: Window) -> Totals:
    """The quarter rows of [start, end) summed, with their histograms (local_time's query, one bucket)."""
    count = (window.end - window.start) // QUARTER
    params = {
        "quarters": ",".join(str(i) for i in range(count)),
        "buckets": ",".join("0" for _ in range(count)),
        "start": window.start,
        "end": window.end,
    }
    totals = Totals()
    async with conn.cursor(row_factory=dict_row, binary=True) as cur:
        await cur.execute(QUARTER_HISTS, params)
        for row in await cur.fetchall():
            add_row(totals, row)
    return totals


def figure(metric: AlertMetric, totals: Totals) -> tuple[float | None, int]:
    """(value, samples) of a windowed metric from summed rollups."""
    if metric is AlertMetric.FAILURE_RATE_PCT:
        return (rate(totals.failures, totals.completions) * 100 if totals.completions else None), totals.completions
    if metric is AlertMetric.SUCCESS_RATE_PCT:
        return (totals.success_rate * 100 if totals.completions else None), totals.completions
    if metric in (AlertMetric.P95_DURATION_MS, AlertMetric.P99_DURATION_MS):
        q = 0.95 if metric is AlertMetric.P95_DURATION_MS else 0.99
        return (totals.percentiles(q)[0] if totals.duration_count else None), totals.duration_count
    if metric is AlertMetric.REQUEST_VOLUME:
        return float(totals.requests), totals.requests
    if metric is AlertMetric.CANCELLATION_RATE_PCT:
        return (rate(totals.cancellations, totals.requests) * 100 if totals.requests else None), totals.requests
    if metric is AlertMetric.AVG_QUEUE_LENGTH:
        return (totals.avg_queue_length if totals.queue_count else None), totals.queue_count
    if metric is AlertMetric.FAILURES:
        return float(totals.failures), totals.completions
    raise ValueError(f"{metric} is not a windowed metric")


async def measure(
    conn: AsyncConnection[Any],
    redis_client: AsyncRedis,
    keys: StreamKeys,
    *,
    metric: AlertMetric,
    scope: AlertScope,
    scope_value: str,
    window_minutes: int,
    now: datetime,
) -> Measurement:
    """The metric of a rule at `now`. Raises whatever reading Postgres or Redis raises (state ERROR)."""
    window = rule_window(scope, window_minutes, now)
    if metric in STREAM_METRICS:
        stream = await stream_status(redis_client, keys)
        if metric is AlertMetric.DEAD_LETTERS:
            current = float(stream.dead_letters)
        else:
            oldest = stream.oldest_untransferred_at
            current = max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
        return Measurement(current, 1, now, now)
    if scope is AlertScope.EVERYTHING:
        totals = await quarter_totals(conn, window)
    elif scope is AlertScope.CHECKPOINT:
        async with conn.cursor(row_factory=dict_row) as cur:
            rows, hists = await keyed_models(cur, window, [scope_value])
        totals = model_totals(rows.get(scope_value), hists.get(scope_value, []))
    else:
        totals = Totals()
        for row in await hourly_rows(conn, window, blobs=False):  # the completions of everything
            add_row(totals, {k: row[k] for k in ("successes", "failures")})
        failures = await scoped_failures(conn, scope, scope_value, window)
        if metric is AlertMetric.FAILURES:
            return Measurement(float(failures), totals.completions, window.start, window.end)
        share = rate(failures, totals.completions) * 100 if totals.completions else None
        return Measurement(share, totals.completions, window.start, window.end)
    value, samples = figure(metric, totals)
    return Measurement(value, samples, window.start, window.end)


async def scoped_failures(conn: AsyncConnection[Any], scope: AlertScope, scope_value: str, window: Window) -> int:
    """The failures of one error type (its rollups, as GetFailureAnalysis reads them) or one error group."""
    if scope is AlertScope.ERROR_GROUP:
        params = {"fingerprint": scope_value, "start": window.start, "end": window.end}
        row = await (await conn.execute(GROUP_FAILURES, params)).fetchone()
        return int(row[0]) if row else 0
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(KEYED_ERRORS, daily_split(window).params | {"keys": [scope_value]})
        typed = {row["key"]: row for row in await cur.fetchall()}.get(scope_value)
    return int(typed["failures"]) if typed else 0

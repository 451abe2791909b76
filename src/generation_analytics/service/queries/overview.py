"""Overview, trends and peak hours: read from generation_metrics_hourly (one row per UTC hour) and
generation_metrics_daily (one per whole UTC day), and in a time zone whose days or hours a UTC hour does not
fit from generation_metrics_quarterly (local_time.py)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.hours import day_start
from generation_analytics.service.queries import local_time
from generation_analytics.service.queries.local_time import (
    QUARTER_HISTS,
    QUARTER_ROWS,
    UTC_ZONE,
    Occurrence,
    cut,
    pieces,
)
from generation_analytics.service.queries.models import unlisted_gpu
from generation_analytics.service.queries.significance import MetricChange, compare_totals
from generation_analytics.service.queries.totals import Totals, add_row, build, group_quantiles
from generation_analytics.service.queries.window import Window, daily_split
from generation_analytics.service.settings import GpuPrices
from generation_analytics.vocabulary import Interval

# Every figure of an hourly row; with `blobs`, also its duration histogram and user set (what merging hours
# needs: megabytes over a long window, so only the answers that merge hours read them).
HOURLY_FIGURES = """
SELECT timestamp AS hour, total_requests AS requests, successful_generations AS successes,
       failed_generations AS failures, cancelled_generations AS cancellations, duration_count, duration_sum,
       total_images_generated AS images, queue_length_count AS queue_count, queue_length_sum AS queue_sum,
       max_queue_length AS max_queue, avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms,
       unique_users{blobs}
FROM generation_metrics_hourly
WHERE timestamp >= %(start)s AND timestamp < %(end)s
ORDER BY timestamp
"""
HOURLY_ROWS = HOURLY_FIGURES.format(blobs=", duration_hist AS hist, user_bitmap AS bitmap")
HOURLY_COUNTS = HOURLY_FIGURES.format(blobs="")
# The same figures for a window as whole UTC days (generation_metrics_daily: one row a day, where 24 hourly
# rows would bring 24 histograms and user sets) plus the hours of its partial days (window.daily_split),
# each row with the UTC day it belongs to. Merging them gives exactly what merging every hour gives.
SPLIT_ROWS = """
SELECT day, total_requests AS requests, successful_generations AS successes, failed_generations AS failures,
       cancelled_generations AS cancellations, duration_count, duration_sum, total_images_generated AS images,
       queue_length_count AS queue_count, queue_length_sum AS queue_sum, max_queue_length AS max_queue,
       duration_hist AS hist, user_bitmap AS bitmap
FROM generation_metrics_daily WHERE day >= %(first_day)s AND day <= %(last_day)s
UNION ALL
SELECT (timestamp AT TIME ZONE 'UTC')::date, total_requests, successful_generations, failed_generations,
       cancelled_generations, duration_count, duration_sum, total_images_generated, queue_length_count,
       queue_length_sum, max_queue_length, duration_hist, user_bitmap
FROM generation_metrics_hourly
WHERE (timestamp >= %(head_start)s AND timestamp < %(head_end)s)
   OR (timestamp >= %(tail_start)s AND timestamp < %(tail_end)s)
"""
# Rollups reflect every event stored before the oldest still-dirty hour of the window was marked. On a
# read replica, also no later than what it has replayed: now() while it streams and has replayed all it
# received, else the commit time of the last transaction it replayed (paused or behind).
DATA_AS_OF = """
SELECT least(
    coalesce(min(marked_at), now()),
    CASE
        WHEN NOT pg_is_in_recovery() THEN now()
        WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
             AND EXISTS (SELECT FROM pg_stat_wal_receiver) THEN now()
        ELSE coalesce(pg_last_xact_replay_timestamp(), pg_postmaster_start_time())
    END)
FROM generation_dirty_hours WHERE hour >= %(start)s AND hour < %(end)s
"""


async def hourly_rows(conn: AsyncConnection[Any], window: Window, *, blobs: bool = True) -> list[dict[str, Any]]:
    # Binary results: histograms and user sets arrive as they are stored, not hex-encoded (half the bytes).
    async with conn.cursor(row_factory=dict_row, binary=True) as cur:
        await cur.execute(HOURLY_ROWS if blobs else HOURLY_COUNTS, {"start": window.start, "end": window.end})
        return await cur.fetchall()


async def split_rows(conn: AsyncConnection[Any], window: Window) -> list[dict[str, Any]]:
    """The window's rows as whole UTC days and partial days' hours (SPLIT_ROWS), blobs included."""
    async with conn.cursor(row_factory=dict_row, binary=True) as cur:
        await cur.execute(SPLIT_ROWS, daily_split(window).params)
        return await cur.fetchall()


async def data_as_of(conn: AsyncConnection[Any], window: Window) -> datetime:
    row = await (await conn.execute(DATA_AS_OF, {"start": window.start, "end": window.end})).fetchone()
    assert row is not None
    moment: datetime = row[0]
    return moment


@dataclass
class Overview:
    lookback_days: int
    total_requests: int
    successful_generations: int
    failed_generations: int
    cancelled_generations: int
    success_rate_pct: float
    avg_duration_ms: float
    p50_duration_ms: float
    p95_duration_ms: float
    p99_duration_ms: float
    unique_users: int
    total_images_generated: int
    avg_queue_length: float
    max_queue_length: int
    data_as_of: datetime
    pending_events: int
    window_start: datetime
    window_end: datetime
    gpu_time_ms: int
    gpu_cost: float | None
    previous: Overview | None = None
    changes: list[MetricChange] = field(default_factory=list)


# The figures compared with the previous window, in the order of the response's fields.
COMPARED = (
    "total_requests", "successful_generations", "failed_generations", "cancelled_generations", "success_rate_pct",
    "avg_duration_ms", "p50_duration_ms", "p95_duration_ms", "p99_duration_ms", "unique_users",
    "total_images_generated", "avg_queue_length", "max_queue_length",
)  # fmt: skip


async def gpu_cost(conn: AsyncConnection[Any], window: Window, prices: GpuPrices, gpu_time_ms: int) -> float | None:
    """The window's GPU time priced per checkpoint: the checkpoints the table names at their price (read
    per checkpoint from the checkpoint rollups), everything else (other checkpoints, no checkpoint) at
    the default price. None without a price table."""
    if not prices.configured:
        return None
    if not prices.by_checkpoint:
        return prices.cost(None, gpu_time_ms)
    async with conn.cursor(row_factory=dict_row) as cur:
        cost, with_checkpoint = await unlisted_gpu(cur, window, prices, {})
    return cost + prices.cost(None, gpu_time_ms - with_checkpoint)


async def _summary(
    conn: AsyncConnection[Any], window: Window, pending_events: int, prices: GpuPrices
) -> tuple[Overview, Totals]:
    totals = Totals()
    for row in await split_rows(conn, window):
        add_row(totals, row)
    answer = build(
        Overview,
        totals.figures(50, 95, 99),
        lookback_days=window.days,
        unique_users=totals.unique_users,
        data_as_of=await data_as_of(conn, window),
        pending_events=pending_events,
        window_start=window.start,
        window_end=window.end,
        gpu_cost=await gpu_cost(conn, window, prices, totals.duration_sum),
        previous=None,
        changes=[],
    )
    return answer, totals


async def overview(
    conn: AsyncConnection[Any], window: Window, *, pending_events: int, prices: GpuPrices | None = None
) -> Overview:
    """The window's figures; with `window.previous`, the previous window's too and what changed."""
    prices = prices or GpuPrices()
    answer, totals = await _summary(conn, window, pending_events, prices)
    if window.previous is not None:
        before, before_totals = await _summary(conn, window.previous, pending_events, prices)
        answer.previous = before
        answer.changes = compare_totals(
            totals,
            before_totals,
            [(name, getattr(answer, name), getattr(before, name)) for name in COMPARED],
            hours=(window.elapsed_hours, window.previous.elapsed_hours),
        )
    return answer


@dataclass
class TrendPoint:
    timestamp: datetime
    total_requests: int = 0
    successful_generations: int = 0
    failed_generations: int = 0
    cancelled_generations: int = 0
    success_rate: float = 0.0
    avg_duration_ms: float = 0.0
    p50_duration_ms: float = 0.0
    p95_duration_ms: float = 0.0
    p99_duration_ms: float = 0.0
    unique_users: int = 0
    avg_queue_length: float = 0.0
    max_queue_length: int = 0
    total_images_generated: int = 0


@dataclass
class Trends:
    interval: Interval
    lookback_days: int
    total_data_points: int
    data_points: list[TrendPoint] = field(default_factory=list)
    time_zone: str = "UTC"


def _point(start: datetime, totals: Totals, percentiles: list[float], unique_users: int) -> TrendPoint:
    return TrendPoint(
        timestamp=start,
        total_requests=totals.requests,
        successful_generations=totals.successes,
        failed_generations=totals.failures,
        cancelled_generations=totals.cancellations,
        success_rate=totals.success_rate,
        avg_duration_ms=totals.avg_duration_ms,
        p50_duration_ms=percentiles[0],
        p95_duration_ms=percentiles[1],
        p99_duration_ms=percentiles[2],
        unique_users=unique_users,
        avg_queue_length=totals.avg_queue_length,
        max_queue_length=totals.max_queue or 0,
        total_images_generated=totals.images,
    )


async def trends(conn: AsyncConnection[Any], window: Window, *, interval: Interval) -> Trends:
    """Zero-filled hourly or daily buckets; an hour's percentiles are exact, a day's within 1%.
    Days are those of `window.zone`; hours are the window's UTC hours in every zone."""
    points: list[TrendPoint] = []
    if interval is Interval.HOURLY:  # an hour's figures are stored whole (percentiles, unique users)
        rows = await hourly_rows(conn, window, blobs=False)
        by_hour = {row["hour"]: row for row in rows}
        for hour in window.hours:
            row = by_hour.get(hour)
            if row is None:
                points.append(TrendPoint(timestamp=hour))
                continue
            totals = Totals()
            add_row(totals, row)
            exact = [row["p50_duration_ms"] or 0.0, row["p95_duration_ms"] or 0.0, row["p99_duration_ms"] or 0.0]
            points.append(_point(hour, totals, exact, row["unique_users"]))
    elif window.zone == UTC_ZONE:  # UTC days: whole days read whole
        by_utc_day: dict[date, Totals] = defaultdict(Totals)
        for row in await split_rows(conn, window):
            add_row(by_utc_day[row["day"]], row)
        for day in window.dates:
            totals = by_utc_day.get(day, Totals())
            points.append(_point(day_start(day), totals, totals.percentiles(0.5, 0.95, 0.99), totals.unique_users))
    else:
        days = cut(window.start, len(window.hours), window.zone, local_time.local_day)
        by_day: dict[date, Totals] = defaultdict(Totals)
        for piece in await pieces(conn, days, await hourly_rows(conn, window), query=QUARTER_ROWS):
            add_row(by_day[piece.bucket], piece.row)
            by_day[piece.bucket].bitmaps.extend(piece.row.get("bitmaps") or [])
        for day in sorted(days.weights):
            totals = by_day.get(day, Totals())
            start = local_time.day_start(day, window.zone)
            points.append(_point(start, totals, totals.percentiles(0.5, 0.95, 0.99), totals.unique_users))
    return Trends(
        interval=interval,
        lookback_days=window.days,
        total_data_points=len(points),
        data_points=points,
        time_zone=window.zone.key,
    )


@dataclass
class PeakHour:
    hour_of_day: int
    avg_requests: float
    total_requests: int
    avg_p95_duration_ms: float
    avg_queue_length: float
    occurrences: float


@dataclass
class HeatmapCell:
    day_of_week: int
    hour_of_day: int
    avg_requests: float
    occurrences: float


@dataclass
class PeakHours:
    lookback_days: int
    peak_hours: list[PeakHour]
    heatmap: list[HeatmapCell]
    time_zone: str = "UTC"


def day_of_week(day: date | datetime) -> int:
    """0 = Sunday .. 6 = Saturday, as SQL's EXTRACT(DOW)."""
    return (day.weekday() + 1) % 7


def _slots(occurrences: Iterable[Occurrence]) -> dict[Occurrence, tuple[int, int]]:
    """The heatmap slot (day of week, hour of day) of each occurrence (days of week looked up once)."""
    days: dict[date, int] = {}
    slots = {}
    for occurrence in occurrences:
        day = occurrence[0]
        dow = days.get(day)
        if dow is None:
            dow = days[day] = day_of_week(day)
        slots[occurrence] = (dow, occurrence[1])
    return slots


async def peak_hours(conn: AsyncConnection[Any], window: Window) -> PeakHours:
    """Load per local hour of day: requests ÷ how often that hour occurs in the window (in quarter
    hours ÷ 4, so partial and repeated hours count as they are; empty hours count as zero)."""
    occurrences_of = cut(window.start, len(window.hours), window.zone, local_time.local_hour)
    rows = await hourly_rows(conn, window, blobs=False)
    occurrences = [0.0] * 24
    slot_occurrences: dict[tuple[int, int], float] = defaultdict(float)
    slot_of = _slots(occurrences_of.weights)
    for occurrence, hours in occurrences_of.weights.items():
        occurrences[occurrence[1]] += hours
        slot_occurrences[slot_of[occurrence]] += hours
    requests = [0] * 24
    slot_requests: dict[tuple[int, int], int] = defaultdict(int)
    queue = [[0, 0] for _ in range(24)]
    p95s: dict[Occurrence, float] = {}  # the exact p95 of occurrences that are a whole UTC hour
    quarter_hists: dict[Occurrence, list[bytes]] = defaultdict(list)  # the others' histograms
    for piece in await pieces(conn, occurrences_of, rows, query=QUARTER_HISTS):
        occurrence, row = piece.bucket, piece.row
        h = occurrence[1]
        requests[h] += row["requests"]
        slot_requests[slot_of[occurrence]] += row["requests"]
        queue[h][0] += row["queue_sum"]
        queue[h][1] += row["queue_count"]
        if not piece.quarter:
            if row["p95_duration_ms"] is not None:
                p95s[occurrence] = row["p95_duration_ms"]
        elif row["hist"]:
            quarter_hists[occurrence].append(row["hist"])
    p95s.update(group_quantiles(quarter_hists, 0.95))
    p95_by_hour: list[list[float]] = [[] for _ in range(24)]
    for occurrence, p95 in p95s.items():
        p95_by_hour[occurrence[1]].append(p95)
    peaks = [
        PeakHour(
            hour_of_day=h,
            avg_requests=requests[h] / occurrences[h] if occurrences[h] else 0.0,
            total_requests=requests[h],
            avg_p95_duration_ms=sum(p95_by_hour[h]) / len(p95_by_hour[h]) if p95_by_hour[h] else 0.0,
            avg_queue_length=queue[h][0] / queue[h][1] if queue[h][1] else 0.0,
            occurrences=occurrences[h],
        )
        for h in range(24)
    ]
    heatmap = [
        HeatmapCell(
            day_of_week=dow,
            hour_of_day=h,
            avg_requests=slot_requests[(dow, h)] / slot_occurrences[(dow, h)] if slot_occurrences[(dow, h)] else 0.0,
            occurrences=slot_occurrences[(dow, h)],
        )
        for dow in range(7)
        for h in range(24)
    ]
    return PeakHours(lookback_days=window.days, peak_hours=peaks, heatmap=heatmap, time_zone=window.zone.key)

"""Model checkpoint comparison, read from generation_model_metrics_hourly."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.queries.totals import Totals, add_row, build
from generation_analytics.service.queries.window import SPLIT_HOURS, Window, daily_split

_COLUMNS = """model_checkpoint, total_requests AS requests, successful_generations AS successes,
       failed_generations AS failures, cancelled_generations AS cancellations, duration_count, duration_sum,
       total_images_generated AS images, last_used_at, duration_hist AS hist"""
# Whole days from the daily rollup, the window's partial first and last days from the hourly one.
MODEL_ROWS = f"""
SELECT {_COLUMNS} FROM generation_model_metrics_daily WHERE day >= %(first_day)s AND day <= %(last_day)s
UNION ALL
SELECT {_COLUMNS} FROM generation_model_metrics_hourly WHERE {SPLIT_HOURS}
"""


@dataclass
class ModelPerformance:
    model_checkpoint: str
    total_generations: int
    successful_generations: int
    failed_generations: int
    success_rate_pct: float
    avg_duration_ms: float
    p50_duration_ms: float
    p95_duration_ms: float
    p99_duration_ms: float
    total_images_generated: int
    last_used_at: datetime


@dataclass
class ModelPerformanceReport:
    lookback_days: int
    models: list[ModelPerformance]


async def model_performance(conn: AsyncConnection[Any], window: Window) -> ModelPerformanceReport:
    """Every checkpoint seen in the window, most completions first."""
    totals: dict[str, Totals] = defaultdict(Totals)
    last_used: dict[str, datetime] = {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(MODEL_ROWS, daily_split(window).params)
        for row in await cur.fetchall():
            name = row["model_checkpoint"]
            add_row(totals[name], row)
            last_used[name] = max(last_used.get(name, row["last_used_at"]), row["last_used_at"])
    models = []
    for name, t in totals.items():
        models.append(
            build(ModelPerformance, t.figures(50, 95, 99), model_checkpoint=name, last_used_at=last_used[name])
        )
    models.sort(key=lambda m: (-m.total_generations, m.model_checkpoint))
    return ModelPerformanceReport(lookback_days=window.days, models=models)

"""Model checkpoint comparison, read from generation_model_metrics_hourly."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.queries.totals import Totals, add_row, build, ranked_sql
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
_ADDITIVE = ("requests", "successes", "failures", "cancellations", "duration_count", "duration_sum", "images")
# Checkpoints with the most completions first; the rest folded into one row (see totals.ranked_sql).
RANKED_MODELS = ranked_sql(
    MODEL_ROWS,
    "model_checkpoint",
    "successes + failures DESC",
    [*((c, f"sum({c})", "sum") for c in _ADDITIVE), ("last_used_at", "max(last_used_at)", "max")],
)
TOP_HISTS = f"SELECT model_checkpoint, hist FROM ({MODEL_ROWS}) AS r WHERE model_checkpoint = ANY(%(keys)s)"
OTHERS = "(others)"


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
    total_models: int
    others: ModelPerformance | None


def _performance(name: str, row: dict[str, Any], hists: list[bytes]) -> ModelPerformance:
    totals = Totals()
    add_row(totals, row)
    totals.hists.extend(hists)
    return build(ModelPerformance, totals.figures(50, 95, 99), model_checkpoint=name, last_used_at=row["last_used_at"])


async def model_performance(conn: AsyncConnection[Any], window: Window, *, limit: int) -> ModelPerformanceReport:
    """The `limit` checkpoints with the most completions (percentiles from their histograms), the rest summed."""
    params = daily_split(window).params | {"limit": limit}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(RANKED_MODELS, params)
        rows = await cur.fetchall()
        top = [row for row in rows if row["key"] is not None]
        hists: dict[str, list[bytes]] = defaultdict(list)
        if top:
            await cur.execute(TOP_HISTS, params | {"keys": [row["key"] for row in top]})
            for row in await cur.fetchall():
                if row["hist"]:
                    hists[row["model_checkpoint"]].append(row["hist"])
    folded = [row for row in rows if row["key"] is None]
    return ModelPerformanceReport(
        lookback_days=window.days,
        models=[_performance(row["key"], row, hists[row["key"]]) for row in top],
        total_models=sum(row["keys"] for row in rows),
        others=_performance(OTHERS, folded[0], []) if folded else None,
    )

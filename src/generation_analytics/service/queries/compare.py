"""Checkpoint comparison: two checkpoints side by side over one window, b against a, with the same
significance tests as period comparisons ("is sdxl-1.1 slower than sdxl-1.0?")."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.queries.models import (
    COMPARED,
    ModelPerformance,
    against,
    keyed_models,
    model_totals,
    performance,
)
from generation_analytics.service.queries.significance import MetricChange
from generation_analytics.service.queries.window import Window, text_filter
from generation_analytics.service.settings import GpuPrices


@dataclass
class CheckpointComparison:
    lookback_days: int
    window_start: datetime
    window_end: datetime
    checkpoint_a: ModelPerformance
    checkpoint_b: ModelPerformance
    changes: list[MetricChange] = field(default_factory=list)


def checkpoint_name(value: str, field: str) -> str:
    """A checkpoint a request names: required, and a text Postgres can compare (INVALID_ARGUMENT otherwise)."""
    name = text_filter(value, field)
    if name is None:
        raise InvalidArgument(field, "is required")
    return name


async def compare_checkpoints(
    conn: AsyncConnection[Any], window: Window, a: str, b: str, *, prices: GpuPrices | None = None
) -> CheckpointComparison:
    """Checkpoint b against checkpoint a (the baseline) over the window; unknown checkpoints answer zeros."""
    prices = prices or GpuPrices()
    async with conn.cursor(row_factory=dict_row) as cur:
        rows, hists = await keyed_models(cur, window, [a, b])
    sides = []
    for name in (a, b):
        row = rows.get(name)
        totals = model_totals(row, hists.get(name, []))
        cost = prices.cost(name, totals.duration_sum) if prices.configured else None
        sides.append((performance(name, totals, row["last_used_at"] if row else None, cost), totals))
    (first, first_totals), (second, second_totals) = sides
    # Same window, same exposure: counts are compared as they are.
    hours = (window.elapsed_hours, window.elapsed_hours)
    return CheckpointComparison(
        lookback_days=window.days,
        window_start=window.start,
        window_end=window.end,
        checkpoint_a=first,
        checkpoint_b=second,
        changes=against((second, second_totals), (first, first_totals), COMPARED, hours),
    )

"""Model checkpoint comparison, read from generation_model_metrics_daily and _hourly; each checkpoint
optionally against itself over the previous window."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import dict_row

from generation_analytics.service.queries.significance import MetricChange, compare_totals
from generation_analytics.service.queries.totals import Totals, add_row, build, ranked_sql
from generation_analytics.service.queries.window import SPLIT_HOURS, Window, daily_split
from generation_analytics.service.settings import GpuPrices

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
# The given checkpoints one row each, every other checkpoint folded into one row whose key is NULL
# (the previous window of a ranked list, and CompareCheckpoints).
_SUMS = ", ".join(f"sum({c})::bigint AS {c}" for c in _ADDITIVE)
KEYED_MODELS = f"""
SELECT CASE WHEN model_checkpoint = ANY(%(keys)s::text[]) THEN model_checkpoint END AS key, {_SUMS},
       max(last_used_at) AS last_used_at
FROM ({MODEL_ROWS}) AS r GROUP BY 1
"""
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
    last_used_at: datetime | None
    gpu_time_ms: int
    gpu_cost: float | None
    previous: ModelPerformance | None = None
    changes: list[MetricChange] = field(default_factory=list)


@dataclass
class ModelPerformanceReport:
    lookback_days: int
    models: list[ModelPerformance]
    total_models: int
    others: ModelPerformance | None
    window_start: datetime
    window_end: datetime
    previous_window_start: datetime | None = None
    previous_window_end: datetime | None = None


# The figures compared (for `others`, without its percentiles, which are not computed).
COMPARED = (
    "total_generations", "successful_generations", "failed_generations", "success_rate_pct", "avg_duration_ms",
    "p50_duration_ms", "p95_duration_ms", "p99_duration_ms", "total_images_generated",
)  # fmt: skip
OTHERS_COMPARED = tuple(name for name in COMPARED if not name.endswith("_duration_ms") or name.startswith("avg"))


def model_totals(row: dict[str, Any] | None, hists: Sequence[bytes] = ()) -> Totals:
    totals = Totals()
    if row is not None:
        add_row(totals, row)
    totals.hists.extend(hists)
    return totals


def performance(
    name: str, totals: Totals, last_used_at: datetime | None, gpu_cost: float | None = None
) -> ModelPerformance:
    return build(
        ModelPerformance,
        totals.figures(50, 95, 99),
        model_checkpoint=name,
        last_used_at=last_used_at,
        gpu_cost=gpu_cost,
        previous=None,
        changes=[],
    )


async def unlisted_gpu(
    cur: AsyncCursor[dict[str, Any]], window: Window, prices: GpuPrices, listed: dict[str, int]
) -> tuple[float, int]:
    """(cost, GPU time) of every checkpoint of the window but the `listed` ones (name -> their GPU time).

    Exact: the GPU time of the checkpoints the table prices is read per checkpoint (one keyed query over
    the rollups, only when the table names checkpoints); all the others cost the default price.
    """
    priced = sorted(prices.by_checkpoint)
    params = daily_split(window).params | {"keys": priced}
    await cur.execute(KEYED_MODELS, params)
    rows = {row["key"]: int(row["duration_sum"] or 0) for row in await cur.fetchall()}
    cost, gpu = 0.0, 0
    for name in priced:
        if name not in listed and name in rows:
            cost += prices.cost(name, rows[name])
            gpu += rows[name]
    # The unpriced checkpoints, less the listed ones among them (integers: exact).
    unpriced = rows.get(None, 0) - sum(ms for name, ms in listed.items() if name not in prices.by_checkpoint)
    return cost + prices.cost(None, unpriced), gpu + unpriced


def against(
    value: tuple[ModelPerformance, Totals],
    baseline: tuple[ModelPerformance, Totals],
    names: Sequence[str],
    hours: tuple[float, float],
) -> list[MetricChange]:
    """The changes of one checkpoint's figures against another's (or its own, earlier)."""
    figures = [(name, getattr(value[0], name), getattr(baseline[0], name)) for name in names]
    return compare_totals(value[1], baseline[1], figures, hours=hours)


async def checkpoint_hists(cur: AsyncCursor[dict[str, Any]], params: dict[str, Any]) -> dict[str, list[bytes]]:
    """The histograms of the checkpoints in params["keys"] over the split in params."""
    hists: dict[str, list[bytes]] = defaultdict(list)
    await cur.execute(TOP_HISTS, params)
    for row in await cur.fetchall():
        if row["hist"]:
            hists[row["model_checkpoint"]].append(row["hist"])
    return hists


async def keyed_models(
    cur: AsyncCursor[dict[str, Any]], window: Window, keys: list[str]
) -> tuple[dict[str | None, dict[str, Any]], dict[str, list[bytes]]]:
    """The given checkpoints' rows (the rest under None) and histograms over a window."""
    params = daily_split(window).params | {"keys": keys}
    await cur.execute(KEYED_MODELS, params)
    rows = {row["key"]: row for row in await cur.fetchall()}
    return rows, (await checkpoint_hists(cur, params) if keys else {})


def _cost(prices: GpuPrices, name: str, totals: Totals) -> float | None:
    return prices.cost(name, totals.duration_sum) if prices.configured else None


async def _others_cost(
    cur: AsyncCursor[dict[str, Any]], window: Window, prices: GpuPrices, listed: dict[str, int], others_ms: int
) -> float | None:
    """The cost of the folded checkpoints: each at its own price (one query only when prices differ)."""
    if not prices.configured:
        return None
    if not prices.by_checkpoint:
        return prices.cost(None, others_ms)
    cost, _ = await unlisted_gpu(cur, window, prices, listed)
    return cost


async def model_performance(
    conn: AsyncConnection[Any], window: Window, *, limit: int, prices: GpuPrices | None = None
) -> ModelPerformanceReport:
    """The `limit` checkpoints with the most completions (percentiles from their histograms), the rest summed;
    with `window.previous`, each against the same checkpoints (the rest against the rest) before."""
    prices = prices or GpuPrices()
    params = daily_split(window).params | {"limit": limit}
    others_cost: dict[str, float | None] = {}
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(RANKED_MODELS, params)
        rows = await cur.fetchall()
        top = [row for row in rows if row["key"] is not None]
        keys = [row["key"] for row in top]
        hists = await checkpoint_hists(cur, params | {"keys": keys}) if top else defaultdict(list)
        before_rows: dict[str | None, dict[str, Any]] = {}
        before_hists: dict[str, list[bytes]] = {}
        if window.previous is not None:
            before_rows, before_hists = await keyed_models(cur, window.previous, keys)
        for name, window_rows, w in (("now", rows, window), ("before", list(before_rows.values()), window.previous)):
            rest = next((row for row in window_rows if row["key"] is None), None)
            if rest is not None and w is not None:
                listed = {row["key"]: int(row["duration_sum"]) for row in window_rows if row["key"] is not None}
                others_cost[name] = await _others_cost(cur, w, prices, listed, int(rest["duration_sum"]))
    folded = [row for row in rows if row["key"] is None]
    # (key, row, histograms): the listed checkpoints, then the folded rest under the key None.
    entries = [(row["key"], row, hists[row["key"]]) for row in top] + [(None, row, []) for row in folded]
    models = []
    for key, row, blobs in entries:
        totals = model_totals(row, blobs)
        cost = _cost(prices, key, totals) if key is not None else others_cost.get("now")
        entry = performance(OTHERS if key is None else key, totals, row["last_used_at"], cost)
        if window.previous is not None:
            before_row = before_rows.get(key)
            before_totals = model_totals(before_row, before_hists.get(key, []) if key is not None else [])
            last_used_at = before_row["last_used_at"] if before_row is not None else None
            before_cost = _cost(prices, key, before_totals) if key is not None else others_cost.get("before")
            if key is None and before_cost is None and prices.configured:
                before_cost = 0.0  # no other checkpoint before
            entry.previous = performance(entry.model_checkpoint, before_totals, last_used_at, before_cost)
            hours = (window.elapsed_hours, window.previous.elapsed_hours)
            names = COMPARED if key is not None else OTHERS_COMPARED
            entry.changes = against((entry, totals), (entry.previous, before_totals), names, hours)
        models.append(entry)
    return ModelPerformanceReport(
        lookback_days=window.days,
        models=models[: len(top)],
        total_models=sum(row["keys"] for row in rows),
        others=models[len(top)] if folded else None,
        window_start=window.start,
        window_end=window.end,
        previous_window_start=window.previous.start if window.previous else None,
        previous_window_end=window.previous.end if window.previous else None,
    )

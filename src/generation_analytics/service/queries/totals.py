"""Summing rollup rows: exact counts and sums, percentiles from merged histograms, users from bitmaps."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from generation_analytics.service import sketches
from generation_analytics.service.queries.window import rate


@dataclass
class Totals:
    """Additive figures of a set of rollup rows (hours, or hours x a dimension)."""

    requests: int = 0
    successes: int = 0
    failures: int = 0
    cancellations: int = 0
    duration_count: int = 0
    duration_sum: int = 0
    images: int = 0
    queue_count: int = 0
    queue_sum: int = 0
    max_queue: int | None = None
    hists: list[bytes] = field(default_factory=list)
    bitmaps: list[bytes] = field(default_factory=list)

    def add(
        self,
        *,
        requests: int = 0,
        successes: int = 0,
        failures: int = 0,
        cancellations: int = 0,
        duration_count: int = 0,
        duration_sum: int = 0,
        images: int = 0,
        queue_count: int = 0,
        queue_sum: int = 0,
        max_queue: int | None = None,
        hist: bytes | None = None,
        bitmap: bytes | None = None,
    ) -> None:
        self.requests += requests
        self.successes += successes
        self.failures += failures
        self.cancellations += cancellations
        self.duration_count += duration_count
        self.duration_sum += duration_sum
        self.images += images
        self.queue_count += queue_count
        self.queue_sum += queue_sum
        if max_queue is not None:
            self.max_queue = max_queue if self.max_queue is None else max(self.max_queue, max_queue)
        if hist:
            self.hists.append(hist)
        if bitmap:
            self.bitmaps.append(bitmap)

    @property
    def completions(self) -> int:
        return self.successes + self.failures

    @property
    def success_rate(self) -> float:
        """successes / completions as a fraction 0..1."""
        return rate(self.successes, self.completions)

    @property
    def avg_duration_ms(self) -> float:
        return self.duration_sum / self.duration_count if self.duration_count else 0.0

    @property
    def avg_queue_length(self) -> float:
        return self.queue_sum / self.queue_count if self.queue_count else 0.0

    @property
    def unique_users(self) -> int:
        return sketches.union_count(self.bitmaps)

    def percentiles(self, *qs: float) -> list[float]:
        """Percentiles of the durations (within 1%: read from the merged histograms)."""
        return sketches.quantiles(sketches.merge(self.hists), qs)

    def figures(self, *percentiles: int) -> dict[str, Any]:
        """The figures under their API names (docs/design.md §3), with the pNN_duration_ms asked for."""
        values = self.percentiles(*(p / 100 for p in percentiles)) if percentiles else []
        return {
            "total_requests": self.requests,
            "successful_generations": self.successes,
            "failed_generations": self.failures,
            "cancelled_generations": self.cancellations,
            "total_generations": self.completions,
            "success_rate_pct": self.success_rate * 100,
            "avg_duration_ms": self.avg_duration_ms,
            # GPU time: every completion with a duration, successful or failed (rollups' duration_sum).
            "gpu_time_ms": self.duration_sum,
            "total_images_generated": self.images,
            "avg_queue_length": self.avg_queue_length,
            "max_queue_length": self.max_queue or 0,
            **{f"p{p}_duration_ms": v for p, v in zip(percentiles, values, strict=True)},
        }


T = TypeVar("T")


def build(cls: type[T], figures: dict[str, Any], **fields: Any) -> T:
    """An instance of the result dataclass `cls` from the `figures` it has fields for, plus `fields`.

    Every field of `cls` must come from one or the other: a field renamed on either side raises
    instead of silently taking its default.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    missing = names - set(figures) - set(fields)
    if missing:
        raise TypeError(f"{cls.__name__}: no figure or value for {sorted(missing)}")
    return cls(**{k: v for k, v in figures.items() if k in names}, **fields)


def add_row(totals: Totals, row: dict[str, Any]) -> None:
    """Add a rollup row selected with the column names `Totals.add` takes."""
    totals.add(**{k: v for k, v in row.items() if k in _ADD_FIELDS and v is not None} | _blobs(row))


def _blobs(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row[k] for k in ("hist", "bitmap") if row.get(k)}


_ADD_FIELDS = frozenset(
    {"requests", "successes", "failures", "cancellations", "duration_count", "duration_sum", "images",
     "queue_count", "queue_sum", "max_queue"}
)  # fmt: skip


# Histograms as stored (sketches.py): big-endian (int2 bucket, int4 count) pairs.
_PAIR = np.dtype([("bucket", ">i2"), ("count", ">i4")])
_GROUPS_AT_ONCE = 512  # a dense (groups x buckets) block at a time: a few MB
K = TypeVar("K", bound=Hashable)


def _bucket_values(buckets: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """sketches.bucket_value of many buckets."""
    return np.where(buckets > 0, 2 * sketches.GAMMA ** (buckets - 1.0) / (sketches.GAMMA + 1), 0.0)


def group_quantiles(groups: dict[K, list[bytes]], q: float) -> dict[K, float]:
    """The q-quantile of each group's merged histograms, as `sketches.quantiles` reads one (linear
    between ranks, bucket values), for thousands of groups in a few vectorised passes (peak hours in a
    zone whose hours are made of quarter hours). Groups without durations are left out."""
    keys = [key for key, blobs in groups.items() if any(blobs)]
    result: dict[K, float] = {}
    for first in range(0, len(keys), _GROUPS_AT_ONCE):
        chunk = keys[first : first + _GROUPS_AT_ONCE]
        parts = [b"".join(blob for blob in groups[key] if blob) for key in chunk]
        pairs = np.frombuffer(b"".join(parts), dtype=_PAIR)
        owner = np.repeat(np.arange(len(chunk), dtype=np.int64), [len(part) // _PAIR.itemsize for part in parts])
        buckets = pairs["bucket"].astype(np.int64)
        lowest = int(buckets.min())
        width = int(buckets.max()) - lowest + 1
        dense = np.bincount(owner * width + buckets - lowest, weights=pairs["count"], minlength=len(chunk) * width)
        cumulative = np.cumsum(dense.reshape(len(chunk), width), axis=1)
        totals = cumulative[:, -1]
        position = q * (totals - 1)
        lower = np.floor(position)
        fraction = position - lower
        upper = np.minimum(lower + 1, totals - 1)
        # The bucket of 0-based rank r is the first whose cumulative count reaches r + 1: one search over
        # all rows at once, each row lifted above the one before it.
        lift = (totals.max() + 1) * np.arange(len(chunk))
        flat = (cumulative + lift[:, None]).ravel()
        row_start = np.arange(len(chunk)) * width
        low_bucket = np.searchsorted(flat, lower + 1 + lift) - row_start + lowest
        high_bucket = np.searchsorted(flat, upper + 1 + lift) - row_start + lowest
        low = _bucket_values(low_bucket)
        high = np.where(fraction > 0, _bucket_values(high_bucket), low)
        result.update(zip(chunk, (low + fraction * (high - low)).tolist(), strict=True))
    return result


LIST_LIMIT = 100  # default length of an answer's lists (docs/design.md §3)
MAX_LIST_LIMIT = 1_000


def ranked_sql(source: str, key: str, order: str, columns: Sequence[tuple[str, str, str]]) -> str:
    """The rows of `source` summed per `key`, the first %(limit)s by `order` (then by key) one row each,
    in rank order, and every other key folded into one last row whose key is NULL.

    `columns` are (name, aggregate over source rows, aggregate over keys), e.g.
    ("failures", "sum(failures)", "sum"); every row also says how many keys it holds (`keys`). The
    database ranks and folds, so an answer over fifty thousand checkpoints reads a hundred and one rows;
    the top is a bounded top-N sort and the rest one anti-join, not a sort of every key (twice).
    """
    per_key = ", ".join(f"{first}{'::bigint' if then == 'sum' else ''} AS {name}" for name, first, then in columns)
    names = ", ".join(name for name, _, _ in columns)
    folded = ", ".join(f"{then}({name}){'::bigint' if then == 'sum' else ''} AS {name}" for name, _, then in columns)
    return f"""
WITH per_key AS MATERIALIZED (
    SELECT {key} AS key, {per_key} FROM ({source}) AS source GROUP BY {key}
), top AS (
    SELECT * FROM per_key ORDER BY {order}, key LIMIT %(limit)s
)
SELECT key, row_number() OVER (ORDER BY {order}, key) AS rank, 1::bigint AS keys, {names} FROM top
UNION ALL
SELECT NULL, (%(limit)s + 1)::bigint, count(*), {folded}
FROM per_key WHERE NOT EXISTS (SELECT FROM top WHERE top.key = per_key.key) HAVING count(*) > 0
ORDER BY rank
"""

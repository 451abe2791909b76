"""Mergeable summaries kept in the rollups: log-bucketed duration histograms and user bitmaps.

Histograms: a duration v ≥ 1 ms falls in bucket ceil(ln v / ln γ) + 1 (v = 0 in bucket 0), with
γ = (1 + α) / (1 − α). Reporting a bucket by 2γ^(i−1)/(γ + 1) is within α of every value in it, so any
percentile read from merged hours is within α relative error of the exact one (α = 0.9%, under the
1% the API promises, leaving room for floating-point rounding at bucket edges). Aggregation computes
bucket numbers in SQL with the same constant, passed as a parameter, and stores a histogram as
big-endian (int2 bucket, int4 count) pairs: merging many hours is one `numpy.bincount`.

User sets: Roaring bitmaps (portable serialisation, https://roaringbitmap.org) of the users' dense ids
(see generation_users), so the distinct users of any set of hours is the size of the union of their
sets — exact, and cheap. A set costs about 2 bytes per user present (less for runs of ids), whatever
the number of users ever seen.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from pyroaring import BitMap

ALPHA = 0.009
GAMMA = (1 + ALPHA) / (1 - ALPHA)
LOG_GAMMA = math.log(GAMMA)

_PAIR = np.dtype([("bucket", ">i2"), ("count", ">i4")])
_BUCKETS = 1 << 15  # bucket numbers are int2 and never negative
K = TypeVar("K", bound=Hashable)

Dense = npt.NDArray[np.int64]
"""counts[i] = number of durations in bucket i."""


def bucket_of(duration_ms: float) -> int:
    """The bucket a duration falls in (Python twin of the SQL expression in aggregate.py)."""
    if duration_ms <= 0:
        return 0
    return math.ceil(math.log(duration_ms) / LOG_GAMMA) + 1


def bucket_value(bucket: int) -> float:
    """The value reported for a bucket: within ALPHA of every duration in it."""
    if bucket <= 0:
        return 0.0
    return 2 * GAMMA ** (bucket - 1) / (GAMMA + 1)


def merge(encoded: Iterable[bytes | None]) -> Dense:
    """Sum histograms encoded as (int2 bucket, int4 count) pairs into one dense count array."""
    blob = b"".join(b for b in encoded if b)
    if not blob:
        return np.zeros(0, dtype=np.int64)
    pairs = np.frombuffer(blob, dtype=_PAIR)
    return np.bincount(pairs["bucket"].astype(np.int64), weights=pairs["count"]).astype(np.int64)


def encode(counts: dict[int, int]) -> bytes:
    """Encode {bucket: count} the way aggregation's SQL does (for tests and tools)."""
    items = sorted((b, c) for b, c in counts.items() if c)
    return np.array(items, dtype=_PAIR).tobytes() if items else b""


def compact(encoded: Iterable[bytes | None]) -> bytes:
    """Several encoded histograms summed into one, one pair per non-empty bucket (daily rollups)."""
    dense = merge(encoded)
    buckets = np.flatnonzero(dense)
    pairs = np.empty(buckets.size, dtype=_PAIR)
    pairs["bucket"] = buckets
    pairs["count"] = dense[buckets]
    return pairs.tobytes()


def compact_groups(rows: Iterable[tuple[K, bytes | None]]) -> dict[K, bytes]:
    """Histograms summed per key, like `compact` for each key, in one vectorised pass (daily rollups)."""
    keys: dict[K, int] = {}
    owners: list[int] = []
    blobs: list[bytes] = []
    for key, blob in rows:
        index = keys.setdefault(key, len(keys))
        if blob:
            owners.append(index)
            blobs.append(blob)
    if not blobs:
        return dict.fromkeys(keys, b"")
    pairs = np.frombuffer(b"".join(blobs), dtype=_PAIR)
    owner = np.repeat(np.array(owners, dtype=np.int64), [len(b) // _PAIR.itemsize for b in blobs])
    combined = owner * _BUCKETS + pairs["bucket"].astype(np.int64)
    cells, inverse = np.unique(combined, return_inverse=True)
    out = np.empty(cells.size, dtype=_PAIR)
    out["bucket"] = cells % _BUCKETS
    out["count"] = np.bincount(inverse, weights=pairs["count"]).astype(np.int64)
    raw = out.tobytes()
    bounds = np.searchsorted(cells // _BUCKETS, np.arange(len(keys) + 1)) * _PAIR.itemsize
    return {key: raw[bounds[i] : bounds[i + 1]] for key, i in keys.items()}


def user_set(encoded: Iterable[bytes | None]) -> BitMap:
    """The union of several serialised user sets."""
    sets = [BitMap.deserialize(b) for b in encoded if b]
    return BitMap.union(*sets) if sets else BitMap()


def union_groups(rows: Iterable[tuple[K, bytes | None]]) -> dict[K, bytes]:
    """User sets unioned per key, serialised (daily rollups of many keys at once)."""
    return {key: serialize(users) for key, users in group_sets(rows).items()}


def group_sets(rows: Iterable[tuple[K, bytes | None]]) -> dict[K, BitMap]:
    """User sets unioned per key."""
    groups: dict[K, list[bytes | None]] = {}
    for key, blob in rows:
        groups.setdefault(key, []).append(blob)
    return {key: user_set(blobs) for key, blobs in groups.items()}


def union(encoded: Iterable[bytes | None]) -> bytes:
    """The union of several serialised user sets, serialised (daily rollups)."""
    return serialize(user_set(encoded))


def serialize(users: BitMap) -> bytes:
    """A user set as stored in the rollups (b"" when empty)."""
    return users.serialize() if users else b""


def quantiles(dense: Dense, qs: Iterable[float]) -> list[float]:
    """Percentiles in the manner of SQL's percentile_cont (linear between ranks), read from a histogram.

    Returns 0.0 for each quantile of an empty histogram.
    """
    qs = list(qs)
    total = int(dense.sum()) if dense.size else 0
    if total == 0:
        return [0.0 for _ in qs]
    cumulative = np.cumsum(dense)

    def value_at_rank(rank: int) -> float:  # 0-based rank in sorted order
        return bucket_value(int(np.searchsorted(cumulative, rank + 1)))

    result = []
    for q in qs:
        position = q * (total - 1)
        lower = math.floor(position)
        fraction = position - lower
        low_value = value_at_rank(lower)
        high_value = value_at_rank(min(lower + 1, total - 1)) if fraction else low_value
        result.append(low_value + fraction * (high_value - low_value))
    return result


def bitmap_of(uids: Iterable[int]) -> bytes:
    """The serialised set of the given uids."""
    return serialize(BitMap(uids))


def union_count(encoded: Iterable[bytes | None]) -> int:
    """How many distinct users the given sets hold together."""
    return len(user_set(encoded))


def from_legacy_bitmap(bitmap: bytes) -> bytes:
    """A user set from the fixed-width bitmap of migrations 0003-0004 (bit uid set, little-endian)."""
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bitmap_of(int(uid) for uid in np.flatnonzero(bits))

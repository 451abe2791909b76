"""Independent, brute-force computation of every figure from raw events, in plain Python.

The tests compare what the service reports with what this module computes from the rows of
generation_events (or from the events a test sent), so both sides must agree on docs/design.md §3 —
but share no code.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Raw:
    event_type: str
    user_id: str
    timestamp: datetime
    duration_ms: int | None = None
    success: bool | None = None
    error_type: str | None = None
    error_message: str | None = None
    model_checkpoint: str | None = None
    queue_length: int | None = None
    batch_size: int | None = None

    @property
    def hour(self) -> datetime:
        return self.timestamp.astimezone(UTC).replace(minute=0, second=0, microsecond=0)

    @property
    def is_completion(self) -> bool:
        return self.event_type == "completion"

    @property
    def failed(self) -> bool:
        return self.is_completion and self.success is False


def load(dsn: str) -> list[Raw]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_type, user_id::text, timestamp, duration_ms, success, error_type, error_message,"
            " model_checkpoint, queue_length, batch_size FROM generation_events"
        ).fetchall()
    return [Raw(*row) for row in rows]


def percentile_cont(values: list[float], q: float) -> float:
    """SQL's percentile_cont: linear interpolation between the closest ranks."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (position - lower) * (ordered[upper] - ordered[lower])


@dataclass
class Summary:
    """Every figure of docs/design.md §3 for one set of events."""

    total_requests: int = 0
    successful: int = 0
    failed: int = 0
    cancelled: int = 0
    durations: list[int] = field(default_factory=list)
    users: set[str] = field(default_factory=set)
    queue_lengths: list[int] = field(default_factory=list)
    images: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None

    @property
    def completions(self) -> int:
        return self.successful + self.failed

    @property
    def success_rate_pct(self) -> float:
        return self.successful / self.completions * 100 if self.completions else 0.0

    @property
    def avg_duration(self) -> float | None:
        return sum(self.durations) / len(self.durations) if self.durations else None

    def percentile(self, q: float) -> float | None:
        return percentile_cont([float(d) for d in self.durations], q) if self.durations else None

    @property
    def avg_queue(self) -> float | None:
        return sum(self.queue_lengths) / len(self.queue_lengths) if self.queue_lengths else None

    @property
    def max_queue(self) -> int | None:
        return max(self.queue_lengths) if self.queue_lengths else None


def summarize(events: Iterable[Raw]) -> Summary:
    s = Summary()
    for e in events:
        s.users.add(e.user_id)
        s.first_at = e.timestamp if s.first_at is None else min(s.first_at, e.timestamp)
        s.last_at = e.timestamp if s.last_at is None else max(s.last_at, e.timestamp)
        if e.event_type == "request":
            s.total_requests += 1
            if e.queue_length is not None:
                s.queue_lengths.append(e.queue_length)
        elif e.event_type == "cancellation":
            s.cancelled += 1
        elif e.is_completion:
            if e.success:
                s.successful += 1
                s.images += 1 if e.batch_size is None else e.batch_size
            elif e.success is False:
                s.failed += 1
            if e.duration_ms is not None:
                s.durations.append(e.duration_ms)
    return s


def group(events: Iterable[Raw], key: Callable[[Raw], Any]) -> dict[Any, list[Raw]]:
    groups: dict[Any, list[Raw]] = defaultdict(list)
    for e in events:
        k = key(e)
        if k is not None:
            groups[k].append(e)
    return dict(groups)


def error_counts(events: Iterable[Raw]) -> Counter[str]:
    return Counter((e.error_type or "") for e in events if e.failed)


def model_counts(events: Iterable[Raw]) -> Counter[str]:
    return Counter(e.model_checkpoint for e in events if e.model_checkpoint is not None)


def day_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date()


def month_of(moment: datetime) -> date:
    return moment.astimezone(UTC).date().replace(day=1)


def close(actual: float, expected: float, *, rel: float = 0.01) -> bool:
    """Within `rel` relative error (percentiles read from histograms)."""
    return abs(actual - expected) <= rel * abs(expected) + 1e-9


EVENT_TYPE_NAMES = {1: "request", 2: "completion", 3: "cancellation"}


def from_message(event: Any) -> Raw:
    """The Raw view of a GenerationEvent a test sent."""

    def optional(name: str) -> Any:
        return getattr(event, name) if event.HasField(name) else None

    return Raw(
        event_type=EVENT_TYPE_NAMES[event.event_type],
        user_id=event.user_id,
        timestamp=event.timestamp.ToDatetime(tzinfo=UTC),
        duration_ms=optional("duration_ms"),
        success=optional("success"),
        error_type=event.error_type or None,
        error_message=event.error_message or None,
        model_checkpoint=event.model_checkpoint or None,
        queue_length=optional("queue_length"),
        batch_size=optional("batch_size"),
    )


def window_bounds(days: int, now: datetime) -> tuple[datetime, datetime]:
    """docs/design.md §3: whole hours from the start of the current hour minus days x 24 h, to its end."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return current - timedelta(days=days), current + HOUR


def in_window(events: Iterable[Raw], days: int, now: datetime) -> list[Raw]:
    start, end = window_bounds(days, now)
    return [e for e in events if start <= e.timestamp < end]

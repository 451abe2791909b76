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
from datetime import UTC, date, datetime, timedelta, timezone
from fractions import Fraction
from statistics import NormalDist
from typing import Any
from zoneinfo import ZoneInfo

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


# ---------------------------------------------------------------- local time (analytics.proto, "Local time")

QUARTER = timedelta(minutes=15)


def window_quarters(days: int, now: datetime) -> list[datetime]:
    """Every quarter hour of the window, as UTC instants."""
    start, end = window_bounds(days, now)
    return [start + i * QUARTER for i in range(int((end - start) / QUARTER))]


def _whole_utc_hour(day: date, hour: int, offset: timedelta, zone: ZoneInfo) -> bool:
    """Whether the UTC hour behind this stretch of local hour lies in it whole (its exact percentile is
    read). At a clock change it may not, even with a whole-hour offset: on Lord Howe Island's first
    Sunday of October, 15:00-15:30 UTC is 01:30-02:00 (+10:30) and 15:30-16:00 UTC is 02:30-03:00 (+11)."""
    local_start = datetime(day.year, day.month, day.day, hour, tzinfo=timezone(offset))
    utc_hour = local_start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return all(occurrence(utc_hour + k * QUARTER, zone)[:2] == (day, hour) for k in range(4))


def occurrence(moment: datetime, zone: ZoneInfo) -> tuple[date, int, timedelta | None]:
    """The stretch of local hour a moment falls in: local date, hour, and the offset then."""
    local = moment.astimezone(zone)
    return local.date(), local.hour, local.utcoffset()


def local_dates(days: int, now: datetime, zone: ZoneInfo) -> list[date]:
    """The local dates the window touches, in order."""
    return sorted({q.astimezone(zone).date() for q in window_quarters(days, now)})


def first_instant(day: date, zone: ZoneInfo) -> datetime:
    """The earliest quarter-hour instant whose local date is `day` (brute force, from two days before)."""
    moment = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=2)
    while moment.astimezone(zone).date() < day:
        moment += QUARTER
    return moment


def day_of_week(day: date) -> int:
    """0 = Sunday .. 6 = Saturday."""
    return (day.weekday() + 1) % 7


@dataclass
class LocalHours:
    """Peak hours and heatmap of a window in a zone, from the events and the quarter-hour grid."""

    occurrences: list[float]
    requests: list[int]
    avg_p95: list[float]
    # The error an answer read from merged histograms may have on avg_p95 (1% of the occurrences not a whole UTC hour).
    p95_slack: list[float]
    avg_queue: list[float]
    slot_occurrences: dict[tuple[int, int], float]
    slot_requests: dict[tuple[int, int], int]


def local_hours(events: Iterable[Raw], days: int, now: datetime, zone: ZoneInfo) -> LocalHours:
    occurrences = [0.0] * 24
    slot_occurrences: dict[tuple[int, int], float] = defaultdict(float)
    for q in window_quarters(days, now):
        local = q.astimezone(zone)
        occurrences[local.hour] += 0.25
        slot_occurrences[(day_of_week(local.date()), local.hour)] += 0.25
    requests = [0] * 24
    slot_requests: dict[tuple[int, int], int] = defaultdict(int)
    queue: list[list[int]] = [[] for _ in range(24)]
    durations: dict[tuple[date, int, timedelta | None], list[float]] = defaultdict(list)
    for e in in_window(events, days, now):
        day, hour, offset = occurrence(e.timestamp, zone)
        if e.event_type == "request":
            requests[hour] += 1
            slot_requests[(day_of_week(day), hour)] += 1
            if e.queue_length is not None:
                queue[hour].append(e.queue_length)
        elif e.is_completion and e.duration_ms is not None:
            durations[(day, hour, offset)].append(float(e.duration_ms))
    p95s: list[list[tuple[float, float]]] = [[] for _ in range(24)]
    for (day, hour, offset), values in durations.items():
        whole_hour = (
            offset is not None
            and offset % timedelta(hours=1) == timedelta(0)
            and _whole_utc_hour(day, hour, offset, zone)
        )
        p95 = percentile_cont(values, 0.95)
        p95s[hour].append((p95, 0.0 if whole_hour else 0.01 * p95))
    return LocalHours(
        occurrences=occurrences,
        requests=requests,
        avg_p95=[sum(p for p, _ in ps) / len(ps) if ps else 0.0 for ps in p95s],
        p95_slack=[sum(s for _, s in ps) / len(ps) if ps else 0.0 for ps in p95s],
        avg_queue=[sum(q) / len(q) if q else 0.0 for q in queue],
        slot_occurrences=dict(slot_occurrences),
        slot_requests=dict(slot_requests),
    )


# ---------------------------------------------------------------- significance (analytics.proto, MetricChange)

NORMAL = NormalDist()
# The duration histograms' buckets (sketches.py documents them as part of the stored format): a value
# v >= 1 falls in bucket ceil(ln v / ln gamma) + 1 with gamma = (1 + 0.009) / (1 - 0.009); 0 in bucket 0.
LN_GAMMA = math.log((1 + 0.009) / (1 - 0.009))


def bucket(value: float) -> int:
    return 0 if value <= 0 else math.ceil(math.log(value) / LN_GAMMA) + 1


def two_sided_p(z: float) -> float:
    return 2 * (1 - NORMAL.cdf(abs(z)))


def proportions_significant(x1: int, n1: int, x2: int, n2: int) -> bool:
    """Pooled two-proportion z-test at 5%, with the documented minimums (30 each side, expected >= 5)."""
    if n1 < 30 or n2 < 30:
        return False
    p = Fraction(x1 + x2, n1 + n2)
    if min(n1 * p, n1 * (1 - p), n2 * p, n2 * (1 - p)) < 5:
        return False
    z = float(Fraction(x1, n1) - Fraction(x2, n2)) / math.sqrt(float(p * (1 - p) * (Fraction(1, n1) + Fraction(1, n2))))
    return two_sided_p(z) <= 0.05


def poisson_z(c1: int, hours1: float, c2: int, hours2: float) -> float | None:
    """z of c1 given c1 + c2 under equal rates per hour; None below the documented minimums."""
    n = c1 + c2
    share = hours1 / (hours1 + hours2)
    if n < 30 or min(n * share, n * (1 - share)) < 5:
        return None
    return (c1 - n * share) / math.sqrt(n * share * (1 - share))


def quantile_interval(values: list[float], q: float) -> tuple[int, int] | None:
    """The buckets of the order statistics bounding the distribution-free 95% interval of the q-quantile."""
    n = len(values)
    if n < 30:
        return None
    half = NORMAL.inv_cdf(0.975) * math.sqrt(n * q * (1 - q))
    j, k = math.floor(n * q - half), math.ceil(n * q + half) + 1
    if j < 1 or k > n:
        return None
    ordered = sorted(values)
    return bucket(ordered[j - 1]), bucket(ordered[k - 1])


def quantiles_significant(values: list[float], baseline: list[float], q: float) -> bool:
    a, b = quantile_interval(values, q), quantile_interval(baseline, q)
    return a is not None and b is not None and (a[1] < b[0] or b[1] < a[0])

"""Time windows and request checks shared by every query.

A window of `days = N` covers the UTC hours from the start of the current hour minus N x 24 h up to the
end of the current hour: 24 N + 1 hourly buckets, the last one still filling up.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.hours import DAY, HOUR, day_start, hour_floor
from generation_analytics.service.ingest.validation import canonical_uuid

MAX_DAYS = 365


@dataclass(frozen=True)
class Window:
    days: int
    start: datetime
    end: datetime  # exclusive: the end of the current hour

    @property
    def hours(self) -> list[datetime]:
        count = int((self.end - self.start) / HOUR)
        return [self.start + i * HOUR for i in range(count)]

    @property
    def dates(self) -> list[date]:
        first, last = self.start.date(), (self.end - HOUR).date()
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]


@dataclass(frozen=True)
class DailySplit:
    """A window as daily rows for the UTC days it covers whole, [first_day, last_day] (none when
    last_day < first_day), plus hourly rows for its partial days: [head_start, head_end) at the start
    and [tail_start, tail_end) at the end.

    The window ends with the current hour, so today is partial and read hourly: rows of events stamped
    in a later hour (clocks a few minutes ahead) stay out of every answer alike.
    """

    first_day: date
    last_day: date
    head_start: datetime
    head_end: datetime
    tail_start: datetime
    tail_end: datetime

    @property
    def params(self) -> dict[str, object]:
        return {
            "first_day": self.first_day,
            "last_day": self.last_day,
            "head_start": self.head_start,
            "head_end": self.head_end,
            "tail_start": self.tail_start,
            "tail_end": self.tail_end,
        }


def daily_split(window: Window) -> DailySplit:
    start_midnight = day_start(window.start.date())
    first_whole = window.start if window.start == start_midnight else start_midnight + DAY
    last_whole_end = day_start(window.end.date())
    if first_whole >= last_whole_end:  # no whole day: every row hourly
        return DailySplit(
            first_whole.date(), first_whole.date() - DAY, window.start, window.end, window.end, window.end
        )
    return DailySplit(
        first_whole.date(), last_whole_end.date() - DAY, window.start, first_whole, last_whole_end, window.end
    )


# The hourly part of a DailySplit, for a table whose hour column is `hour`.
SPLIT_HOURS = "(hour >= %(head_start)s AND hour < %(head_end)s) OR (hour >= %(tail_start)s AND hour < %(tail_end)s)"


def window(days: int | None, *, default: int, now: datetime | None = None, field: str = "days") -> Window:
    """The window for a request's `days` (None: the RPC's default), checked against 1..MAX_DAYS."""
    if days is None:
        days = default
    if not 1 <= days <= MAX_DAYS:
        raise InvalidArgument(field, f"must be between 1 and {MAX_DAYS} (got {days})")
    current = hour_floor(now or datetime.now(UTC))
    return Window(days=days, start=current - days * DAY, end=current + HOUR)


def user_uuid(value: str, field: str = "user_id") -> str:
    """The canonical form of a user id from a request, or INVALID_ARGUMENT."""
    canonical = canonical_uuid(value) if value else None
    if canonical is None:
        raise InvalidArgument(field, "must be a UUID")
    return canonical


def bounded(value: int | None, *, default: int, low: int, high: int, field: str) -> int:
    """`value` (None: `default`) checked against low..high."""
    if value is None:
        return default
    if not low <= value <= high:
        raise InvalidArgument(field, f"must be between {low} and {high} (got {value})")
    return value


def rate(part: int, whole: int) -> float:
    """part / whole, 0 when whole is 0 (never NaN, never above 1 for part <= whole)."""
    return part / whole if whole else 0.0


def text_filter(value: str, field: str, *, max_chars: int = 1_024) -> str | None:
    """A free-text filter from a request ("" means none), refused if Postgres could not compare it."""
    if not value:
        return None
    if "\x00" in value:
        raise InvalidArgument(field, "must not contain a NUL character")
    if len(value) > max_chars:
        raise InvalidArgument(field, f"longer than {max_chars} characters")
    return value

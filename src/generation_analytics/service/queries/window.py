"""Time windows and request checks shared by every query.

A window of `days = N` covers the UTC hours from the start of the current hour minus N x 24 h up to the
end of the current hour: 24 N + 1 hourly buckets, the last one still filling up. It also carries what
the question asked about how to read it: the time zone its days and hours of day are cut in
(`local_time.py`), and the previous equal window when the question compares with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from generation_analytics.questions import Question
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.hours import DAY, HOUR, day_start, hour_floor
from generation_analytics.service.ingest.validation import canonical_uuid
from generation_analytics.service.queries.local_time import UTC_ZONE, parse_zone

MAX_DAYS = 365


@dataclass(frozen=True)
class Window:
    days: int
    start: datetime
    end: datetime  # exclusive: the end of the current hour
    asked_at: datetime | None = None  # when the question was asked (the current hour has run until then)
    zone: ZoneInfo = UTC_ZONE  # the zone local days and hours of day are read in
    previous: Window | None = None  # the equal window before this one, when the question compares

    @property
    def elapsed_hours(self) -> float:
        """How long the window has run: up to when it was asked (its end, for a window in the past)."""
        until = self.end if self.asked_at is None else min(max(self.asked_at, self.start), self.end)
        return (until - self.start) / HOUR

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


def window(
    days: int | None,
    *,
    default: int,
    now: datetime | None = None,
    field: str = "days",
    asked: Question | None = None,
) -> Window:
    """The window for a request's `days` (None: the RPC's default), checked against 1..MAX_DAYS.

    With the question it is for (`asked`), also its `time_zone` (checked: INVALID_ARGUMENT naming it)
    and, if it sets `compare_previous`, the previous equal window: as long, ending where this one starts.
    """
    if days is None:
        days = default
    if not 1 <= days <= MAX_DAYS:
        raise InvalidArgument(field, f"must be between 1 and {MAX_DAYS} (got {days})")
    asked_at = now or datetime.now(UTC)
    current = hour_floor(asked_at)
    zone = parse_zone(getattr(asked, "time_zone", ""))
    start, end = current - days * DAY, current + HOUR
    previous = None
    if getattr(asked, "compare_previous", False):
        previous = Window(days=days, start=start - (end - start), end=start, zone=zone)
    return Window(days=days, start=start, end=end, asked_at=asked_at, zone=zone, previous=previous)


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

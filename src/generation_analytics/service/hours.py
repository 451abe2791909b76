"""The UTC grid every rollup and every window is cut on: hours, days, months."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def hour_floor(moment: datetime) -> datetime:
    """The start of the UTC hour `moment` falls in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_start(day: date) -> datetime:
    """Midnight UTC of `day`."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def month_of(moment: datetime) -> date:
    """The first day of the UTC month `moment` falls in."""
    moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)

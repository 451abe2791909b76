"""Local time read from UTC rollups: a zone's days and hours of day, cut exactly, without raw rows.

Every zone offset in use, and every change of one, falls on a quarter hour (+5:30, +5:45, Lord Howe's
30-minute daylight saving), so a local day or hour is always a whole number of UTC quarter hours. A
window hour that lies wholly in one local bucket is read from its hourly row (exact percentiles and
all); an hour a local boundary cuts through — the hour holding a +5:30 zone's midnight, every hour of
such a zone when cutting hours of day — from its quarter rows (`generation_metrics_quarterly`, written
with the hourly rows by aggregation). So a 30-day answer reads its ~720 hourly rows and at most the
~2,900 quarter rows of the window. See docs/design.md §3.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Generic, TypeVar
from zoneinfo import ZoneInfo

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.hours import HOUR

UTC_ZONE = ZoneInfo("UTC")
QUARTER = timedelta(minutes=15)
QUARTERS_PER_HOUR = 4
# The longest name in the tz database has 32 characters; anything much longer is refused unread.
MAX_ZONE_CHARS = 64
# Names zoneinfo finds on some systems that are no zone of the tz database (the host's own setting).
_NOT_ZONES = frozenset({"localtime"})

K = TypeVar("K", bound=Hashable)


@functools.cache
def known_zones() -> frozenset[str]:
    """The IANA names this host knows (system tz database, else the `tzdata` package); read once."""
    return frozenset(zoneinfo.available_timezones() - _NOT_ZONES)


def parse_zone(name: str, field: str = "time_zone") -> ZoneInfo:
    """The zone a request names ("" means UTC), or INVALID_ARGUMENT naming `field`.

    Only names of the tz database are looked up (never a path such as "../etc/passwd", never a name
    of unbounded length), so nothing a caller sends reaches the file system.
    """
    if not name:
        return UTC_ZONE
    if len(name) > MAX_ZONE_CHARS or name not in known_zones():
        raise InvalidArgument(
            field, f"unknown time zone {name[:MAX_ZONE_CHARS]!r}: give an IANA name such as Europe/Paris"
        )
    return ZoneInfo(name)


# A bucket of local time: from a quarter hour's local wall-clock time and the zone's offset then.
Bucket = Callable[[datetime, timedelta], K]


def local_day(wall: datetime, offset: timedelta) -> date:
    """Bucket of local days: the date on the local clock."""
    return wall.date()


Occurrence = tuple[date, int, timedelta]


def local_hour(wall: datetime, offset: timedelta) -> Occurrence:
    """Bucket of local hours: one unbroken stretch of one hour of the local clock. The offset is part of
    it, so a fall-back day's repeated hour is two occurrences."""
    return (wall.date(), wall.hour, offset)


@dataclass
class Cut(Generic[K]):
    """A window's hours, each either whole in one local bucket (`hours`: hour index -> bucket) or cut
    into its four quarter hours, each in its bucket (`quarters`: quarter index -> bucket), counted from
    the window's `start`; and how many hours of the window each bucket holds (`weights`: 1 per whole
    hour, 1/4 per quarter)."""

    start: datetime
    hours: dict[int, K] = field(default_factory=dict)
    quarters: dict[int, K] = field(default_factory=dict)
    weights: dict[K, float] = field(default_factory=dict)

    def quarter_start(self, index: int) -> datetime:
        return self.start + index * QUARTER


# Offsets are sampled this often and changes found by bisection: no zone changes its offset twice
# within six hours (tests/test_local_time.py checks every zone for the years around now).
_SAMPLE = timedelta(hours=6)


def offsets(zone: ZoneInfo, start: datetime, end: datetime) -> list[tuple[datetime, timedelta]]:
    """The zone's offset at `start` and every change of it up to `end`: (from when, offset), in order.
    A few hundred conversions for a year, instead of one or more per hour."""

    def offset(moment: datetime) -> timedelta:
        value = moment.astimezone(zone).utcoffset()
        assert value is not None  # a ZoneInfo always has one
        return value

    changes = [(start, offset(start))]
    moment = start
    while moment < end:
        following = min(moment + _SAMPLE, end)
        current = offset(following)
        if current != changes[-1][1]:
            low, high = moment, following  # changes happen on whole seconds (on quarter hours, in fact)
            while high - low > timedelta(seconds=1):
                middle = low + timedelta(seconds=(high - low) // timedelta(seconds=1) // 2)
                low, high = (middle, high) if offset(middle) == changes[-1][1] else (low, middle)
            changes.append((high, current))
        moment = following
    return changes


def cut(start: datetime, hour_count: int, zone: ZoneInfo, bucket: Bucket[K]) -> Cut[K]:
    """The `hour_count` UTC hours from `start`, each whole if all four of its quarter hours fall in the
    same bucket, else quarter by quarter. Works on quarter indices and wall-clock times (no time zone
    arithmetic per hour: the zone is asked only for its offset changes)."""
    result: Cut[K] = Cut(start)
    if hour_count <= 0:
        return result
    changes = offsets(zone, start, start + hour_count * HOUR)
    # Each offset from the quarter index it starts at (changes fall on quarter hours).
    starts = [(when - start) // QUARTER for when, _ in changes] + [QUARTERS_PER_HOUR * hour_count]
    naive = start.replace(tzinfo=None)
    hours, quarters, weights = result.hours, result.quarters, result.weights
    part = 1 / QUARTERS_PER_HOUR
    for (_, offset), first, after in zip(changes, starts, starts[1:], strict=False):
        origin = naive + offset  # wall-clock time of quarter index 0 at this offset
        index = first
        while index < after:
            if index % QUARTERS_PER_HOUR == 0 and index + QUARTERS_PER_HOUR <= after:
                wall = origin + index * QUARTER
                key = bucket(wall, offset)
                if bucket(wall + 3 * QUARTER, offset) == key:  # monotone in wall time: the whole hour
                    hours[index // QUARTERS_PER_HOUR] = key
                    weights[key] = weights.get(key, 0.0) + 1.0
                    index += QUARTERS_PER_HOUR
                    continue
            key = bucket(origin + index * QUARTER, offset)
            quarters[index] = key
            weights[key] = weights.get(key, 0.0) + part
            index += 1
    return result


def day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first instant of a local day (UTC): its midnight, or when a clock change skips midnight the
    first instant after it. Every offset is on a quarter hour, so the day starts on one."""
    moment = datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)
    while (moment - QUARTER).astimezone(zone).date() == day:
        moment -= QUARTER
    while moment.astimezone(zone).date() < day:
        moment += QUARTER
    return moment


# The quarter rows of the split hours, summed per local bucket in the database (a 30-day peak-hours
# answer in a :45 zone reads ~2,900 quarter rows and returns ~750): what adds up is summed, histograms
# are concatenated (a concatenation of (bucket, count) pairs is their merge, see sketches.merge), user
# sets collected as they are (Roaring sets are unioned in Python). `hours` says which split hours had
# quarter rows at all. Quarters and buckets travel as text lists of numbers (psycopg dumps a list of
# thousands of timestamps element by element: ~4x the CPU). The column sets a question needs: counts,
# + histograms, + user sets.
QUARTERS_BY_BUCKET = """
SELECT g.bucket, array_agg(DISTINCT g.quarter / 4) AS hours,
       sum(q.total_requests)::bigint AS requests, sum(q.successful_generations)::bigint AS successes,
       sum(q.failed_generations)::bigint AS failures, sum(q.cancelled_generations)::bigint AS cancellations,
       sum(q.duration_count)::bigint AS duration_count, sum(q.duration_sum)::bigint AS duration_sum,
       sum(q.total_images_generated)::bigint AS images, sum(q.queue_length_count)::bigint AS queue_count,
       sum(q.queue_length_sum)::bigint AS queue_sum, max(q.max_queue_length) AS max_queue{blobs}
FROM unnest(string_to_array(%(quarters)s, ',')::int[], string_to_array(%(buckets)s, ',')::int[]) AS g(quarter, bucket)
JOIN generation_metrics_quarterly AS q ON q.quarter = %(start)s + g.quarter * interval '15 minutes'
WHERE q.quarter >= %(start)s AND q.quarter < %(end)s
GROUP BY g.bucket
"""
_HISTS = ", string_agg(q.duration_hist, ''::bytea) AS hist"
_SETS = ", array_agg(q.user_bitmap) FILTER (WHERE q.user_bitmap <> ''::bytea) AS bitmaps"
QUARTER_COUNTS = QUARTERS_BY_BUCKET.format(blobs="")
QUARTER_HISTS = QUARTERS_BY_BUCKET.format(blobs=_HISTS)
QUARTER_ROWS = QUARTERS_BY_BUCKET.format(blobs=_HISTS + _SETS)


@dataclass(frozen=True)
class Piece(Generic[K]):
    """Rollup figures and the local bucket they fall in: an hourly row, or (`quarter`) the quarter rows
    of one bucket summed (its user sets, if read, in row["bitmaps"])."""

    bucket: K
    row: dict[str, Any]
    quarter: bool = False


async def pieces(
    conn: AsyncConnection[Any], cut_: Cut[K], hourly: Iterable[dict[str, Any]], *, query: str = QUARTER_COUNTS
) -> list[Piece[K]]:
    """The window's figures in their local buckets: the hourly rows (`hour` column) of whole hours, and
    per bucket the quarter rows of the hours the cut splits (read with `query`).

    A split hour with an hourly row but no quarter row at all was aggregated before quarter rows
    existed and is past raw-event retention: its hourly row counts whole, in the bucket of its start.
    """
    result: list[Piece[K]] = []
    split: dict[int, dict[str, Any]] = {}  # hour index -> hourly row
    for row in hourly:
        hour = (row["hour"] - cut_.start) // HOUR
        key = cut_.hours.get(hour)
        if key is not None:
            result.append(Piece(key, row))
        elif hour * QUARTERS_PER_HOUR in cut_.quarters:
            split[hour] = row
    if not split:
        return result
    numbers: dict[K, int] = {}
    quarters, buckets = [], []
    for hour in split:
        for index in range(hour * QUARTERS_PER_HOUR, (hour + 1) * QUARTERS_PER_HOUR):
            quarters.append(str(index))
            buckets.append(str(numbers.setdefault(cut_.quarters[index], len(numbers))))
    keys = list(numbers)
    params = {
        "quarters": ",".join(quarters),
        "buckets": ",".join(buckets),
        "start": cut_.start,
        "end": cut_.quarter_start(max(split) * QUARTERS_PER_HOUR + QUARTERS_PER_HOUR),
    }
    async with conn.cursor(row_factory=dict_row, binary=True) as cur:
        await cur.execute(query, params)
        rows = await cur.fetchall()
    covered: set[int] = set()
    for row in rows:
        covered.update(row["hours"])
        result.append(Piece(keys[row["bucket"]], row, quarter=True))
    result.extend(
        Piece(cut_.quarters[hour * QUARTERS_PER_HOUR], row) for hour, row in split.items() if hour not in covered
    )
    return result

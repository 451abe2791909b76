"""Aggregation: recompute the rollups of exactly the hours that received events.

Hours are recomputed from generation_events as a whole (never incremented), so running twice changes
nothing and late events are simply part of the next recompute, whatever their age or the gaps between
them. Any number of aggregators (scheduler, `worker`s, RunAggregation with or without a range) may run
at once. Locks, always taken in this order, so that no two aggregators can deadlock:

1. per-hour advisory *try*-locks (`HOUR_LOCK_CLASS`): never waited for; an hour another aggregator holds
   is skipped and stays dirty. The hour's own rows (one per hour, checkpoint, error type and error group)
   are written under it, and so are the error groups of its failures stored without one (computed in
   Python, `rollups.fill_fingerprints`).
2. the rollup lock (`ROLLUP_LOCK`, blocking): everything that spans hours — daily rows, per-user rows
   and their running and monthly totals — is written under it, after every hour's own rows, so each of
   those statements sees what other aggregators committed.
3. the dirty marks of the hours, row locks in hour order (transfer upserts them in hour order too), last.

Users get their dense ids from transfer (or `rollups.ensure_users`, committed on its own before any lock).

If a batch fails (either part), its hours are retried in halves down to single hours (each part is
idempotent, so a part that committed is simply recomputed),
so one bad hour fails alone: its mark records the error and is retried with exponential backoff
(`generation_dirty_hours.retry_at`) while every other hour keeps flowing. A dirty mark is removed only
if no event arrived for its hour since it was read (generation_dirty_hours, 0002).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from generation_analytics.service.errors import incident
from generation_analytics.service.hours import HOUR, hour_floor, month_of
from generation_analytics.service.pipeline import rollups, user_rollups
from generation_analytics.service.settings import AggregationSettings, RetentionSettings

log = logging.getLogger(__name__)

# The parts of a batch: the hours', then each shard of the users'.
PARTS = ("hours", *(f"users/{shard}" for shard in range(user_rollups.SHARDS)))
# Advisory lock classes of each part's per-hour locks (first key of the two-int form; second key: hours
# since the epoch), and each part's lock over the rollups that span hours (single-key form).
HOUR_LOCKS = {part: 0x6761_6810 + i for i, part in enumerate(PARTS)}
SPANNING_LOCKS = {part: 0x6761_6820 + i for i, part in enumerate(PARTS)}
# A failing hour is retried after this many seconds, doubling per failure up to the maximum.
RETRY_BASE_S = 5.0
RETRY_MAX_S = 600.0
# Sorting and grouping an hour of a hundred thousand events stays in memory.
WORK_MEM = "64MB"


@dataclass
class AggregationReport:
    """What one aggregation run did (the RunAggregation RPC returns it)."""

    hours_aggregated: int = 0
    skipped_locked: int = 0
    expired: int = 0
    failed_hours: int = 0
    duration_s: float = 0.0
    remaining_dirty_hours: int = 0

    @property
    def processed(self) -> int:
        return self.hours_aggregated


SELECT_DIRTY = """
SELECT hour, version FROM generation_dirty_hours
WHERE hour <> ALL(%(skip)s::timestamptz[]) AND (retry_at IS NULL OR retry_at <= now())
ORDER BY hour
LIMIT %(limit)s
"""
SELECT_VERSIONS = "SELECT hour, version FROM generation_dirty_hours WHERE hour = ANY(%(hours)s::timestamptz[])"
COUNT_DIRTY = "SELECT count(*) FROM generation_dirty_hours"
# Marks are locked in hour order (as transfer's upsert takes them), then removed if still at the version read.
DELETE_MARKS = """
DELETE FROM generation_dirty_hours AS d
USING (
    SELECT g.hour FROM generation_dirty_hours AS g
    JOIN unnest(%(hours)s::timestamptz[], %(versions)s::bigint[]) AS v(hour, version)
        ON g.hour = v.hour AND g.version = v.version
    ORDER BY g.hour
    FOR UPDATE OF g
) AS locked
WHERE d.hour = locked.hour
"""
RECORD_FAILURE = """
UPDATE generation_dirty_hours
SET failures = failures + 1, failing_since = coalesce(failing_since, now()), last_error = %(error)s,
    retry_at = now() + make_interval(secs => least(%(max_s)s, %(base_s)s * 2 ^ failures))
WHERE hour = %(hour)s
RETURNING failures, retry_at
"""
TRY_LOCK_HOURS = """
SELECT h FROM unnest(%(hours)s::timestamptz[]) AS h
WHERE pg_try_advisory_xact_lock(%(lock_class)s, (extract(epoch FROM h) / 3600)::int)
ORDER BY h
"""
LOCK_SPANNING = "SELECT pg_advisory_xact_lock(%(lock)s)"


class Aggregator:
    """Keeps the rollups equal to a recompute of generation_events, hour by hour."""

    def __init__(self, *, pool: ConnectionPool, settings: AggregationSettings, retention: RetentionSettings) -> None:
        self._pool = pool
        self._settings = settings
        self._retention = retention
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Make a run in progress return after its current batch (for a prompt shutdown)."""
        self._stopping.set()

    def run(self, *, time_budget_s: float | None = None) -> AggregationReport:
        """Recompute dirty hours, oldest first, until none is left that this process may take now."""
        with self._lock:
            started = time.monotonic()
            deadline = started + (time_budget_s or self._settings.time_budget_s)
            report = AggregationReport()
            skip: list[datetime] = []
            while time.monotonic() < deadline and not self._stopping.is_set():
                with self._pool.connection() as conn:
                    batch = conn.execute(SELECT_DIRTY, {"skip": skip, "limit": self._settings.batch_hours}).fetchall()
                    conn.commit()
                if not batch:
                    break
                done = self._aggregate([row[0] for row in batch], [row[1] for row in batch], report)
                skip.extend(h for h in (row[0] for row in batch) if h not in done)
            return self._finish(report, started)

    def run_range(self, start: datetime, end: datetime) -> AggregationReport:
        """Recompute every hour in [start, end] (hour-aligned), dirty or not: the repair tool."""
        with self._lock:
            started = time.monotonic()
            report = AggregationReport()
            hours = []
            hour = hour_floor(start)
            while hour <= end:
                hours.append(hour)
                hour += HOUR
            batch_size = self._settings.batch_hours
            for index in range(0, len(hours), batch_size):
                if self._stopping.is_set():
                    break
                chunk = hours[index : index + batch_size]
                with self._pool.connection() as conn:
                    versions: dict[datetime, int] = dict(conn.execute(SELECT_VERSIONS, {"hours": chunk}).fetchall())
                    conn.commit()
                self._aggregate(chunk, [versions.get(h, -1) for h in chunk], report)
            return self._finish(report, started)

    def _finish(self, report: AggregationReport, started: float) -> AggregationReport:
        with self._pool.connection() as conn:
            row = conn.execute(COUNT_DIRTY).fetchone()
        report.remaining_dirty_hours = int(row[0]) if row else 0
        report.duration_s = time.monotonic() - started
        if report.hours_aggregated or report.failed_hours:
            log.info(
                "aggregation: %d hours in %.2f s (%d failed, %d skipped: locked elsewhere, %d expired, %d still dirty)",
                report.hours_aggregated, report.duration_s, report.failed_hours, report.skipped_locked,
                report.expired, report.remaining_dirty_hours,
            )  # fmt: skip
        return report

    def _aggregate(
        self, hours: Sequence[datetime], versions: Sequence[int], report: AggregationReport
    ) -> set[datetime]:
        """Recompute a batch; if it fails, its halves, down to single hours. Returns the hours settled."""
        try:
            return self._aggregate_batch(hours, versions, report)
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout):
            raise  # Postgres unreachable, the session broken or no connection free: the job backs off as a whole
        except Exception as exc:
            if len(hours) == 1:
                self._record_failure(hours[0], exc)
                report.failed_hours += 1
                return set()
            half = len(hours) // 2
            first = self._aggregate(hours[:half], versions[:half], report)
            return first | self._aggregate(hours[half:], versions[half:], report)

    def _record_failure(self, hour: datetime, exc: Exception) -> None:
        error = incident(exc)
        with self._pool.connection() as conn:
            row = conn.execute(
                RECORD_FAILURE, {"hour": hour, "error": error, "base_s": RETRY_BASE_S, "max_s": RETRY_MAX_S}
            ).fetchone()
        if row is not None:
            log.error(
                "aggregation of hour %s failed (%d in a row; retried from %s, other hours go on): %s",
                hour.isoformat(), row[0], row[1].isoformat(), error, exc_info=exc,
            )  # fmt: skip

    def _aggregate_batch(
        self, hours: Sequence[datetime], versions: Sequence[int], report: AggregationReport
    ) -> set[datetime]:
        """Recompute the hours of one batch (both parts), then drop their marks; returns the hours settled."""
        horizon = hour_floor(datetime.now(UTC)) - timedelta(days=self._retention.days) + HOUR
        expired = [(h, v) for h, v in zip(hours, versions, strict=True) if h < horizon]
        live = [(h, v) for h, v in zip(hours, versions, strict=True) if h >= horizon]
        with self._pool.connection() as conn:
            if expired:
                # Raw events of these hours are (being) removed by retention: a recompute would wipe
                # rollups that were right. Keep the rollups, drop the marks.
                log.warning("aggregation: %d dirty hours are past retention; keeping their rollups", len(expired))
                self._delete_marks(conn, expired)
                conn.commit()
                report.expired += len(expired)
            if not live:
                return {h for h, _ in expired}
            live_hours = [h for h, _ in live]
            rollups.ensure_users(conn, _bounds(live_hours))
        settled = self._recompute_parts(live_hours)
        with self._pool.connection() as conn:
            self._delete_marks(conn, [(h, v) for h, v in live if h in settled])
        report.skipped_locked += len(live) - len(settled)
        report.hours_aggregated += len(settled)
        return settled | {h for h, _ in expired}

    def _recompute_parts(self, hours: list[datetime]) -> set[datetime]:
        """Every part at once (all but the first in helper threads); the hours all of them recomputed."""
        results: dict[str, set[datetime] | BaseException] = {}

        def run(part: str) -> None:
            try:
                results[part] = self._recompute_part(part, hours)
            except BaseException as exc:  # re-raised below, once every part has finished
                results[part] = exc

        threads = [threading.Thread(target=run, args=(part,), name=f"aggregation-{part}") for part in PARTS[1:]]
        for thread in threads:
            thread.start()
        try:
            run(PARTS[0])
        finally:
            for thread in threads:
                thread.join()
        settled = set(hours)
        for part in PARTS:
            result = results[part]
            if isinstance(result, BaseException):
                raise result
            settled &= result
        return settled

    def _recompute_part(self, part: str, hours: list[datetime]) -> set[datetime]:
        with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
            cur.execute(f"SET LOCAL work_mem = '{WORK_MEM}'")
            cur.execute(TRY_LOCK_HOURS, {"hours": hours, "lock_class": HOUR_LOCKS[part]})
            locked = sorted(row[0] for row in cur.fetchall())
            if not locked:
                return set()
            params = _bounds(locked)
            if part == "hours":
                rollups.fill_fingerprints(cur, params)
                rollups.create_agg_events(cur, params)
                rollups.write_hourly(cur, params)
                rollups.write_dimensions(cur, params)
                rollups.write_error_groups(cur, params)
                cur.execute(LOCK_SPANNING, {"lock": SPANNING_LOCKS[part]})
                rollups.write_days(cur)
                rollups.write_overall_days(cur, days_of(locked))
            else:
                params |= {"shards": user_rollups.SHARDS, "shard": int(part.partition("/")[2])}
                rollups.create_agg_events(cur, params)
                user_rollups.prepare_users(cur, params)
                cur.execute(LOCK_SPANNING, {"lock": SPANNING_LOCKS[part]})
                user_rollups.write_users(cur, params, months_of(locked))
            return set(locked)

    @staticmethod
    def _delete_marks(conn: psycopg.Connection[Any], marks: Sequence[tuple[datetime, int]]) -> None:
        conn.execute(DELETE_MARKS, {"hours": [h for h, _ in marks], "versions": [v for _, v in marks]})


def _bounds(hours: Sequence[datetime]) -> dict[str, Any]:
    return {"hours": list(hours), "lo": min(hours), "hi": max(hours) + HOUR}


def days_of(hours: Sequence[datetime]) -> list[date]:
    return sorted({h.astimezone(UTC).date() for h in hours})


def months_of(hours: Sequence[datetime]) -> list[date]:
    return sorted({month_of(h) for h in hours})

"""Aggregation: recompute the rollups of exactly the hours that received events.

Hours are recomputed from generation_events as a whole (never incremented), so running twice changes
nothing and late events are simply part of the next recompute. Several aggregators may run at once:
each hour is taken under a transaction-level advisory try-lock (an hour another replica is busy with
is skipped and stays dirty); rollups that span hours (daily rows, users' running totals) are
rebuilt after the hours' rows are written, under locks taken in a fixed order. A dirty mark is
removed only if no event arrived for its hour since it was read (generation_dirty_hours, 0002).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from generation_analytics.service import sketches
from generation_analytics.service.settings import PipelineSettings
from generation_analytics.service.sketches import LOG_GAMMA, bitmap_of

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
# Advisory lock classes (first key of the two-int form); second key: hours or days since the epoch.
HOUR_LOCK_CLASS = 0x6761_6801
DAY_LOCK_CLASS = 0x6761_6802
RUNNING_LOCK_CLASS = 0x6761_6803


@dataclass
class AggregationReport:
    """What one aggregation run did (the RunAggregation RPC returns it)."""

    hours_aggregated: int = 0
    skipped_locked: int = 0
    expired: int = 0
    duration_s: float = 0.0
    remaining_dirty_hours: int = 0

    @property
    def processed(self) -> int:
        return self.hours_aggregated


def hour_floor(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def days_of(hours: Sequence[datetime]) -> list[date]:
    return sorted({h.astimezone(UTC).date() for h in hours})


SELECT_DIRTY = """
SELECT hour, version FROM generation_dirty_hours
WHERE hour <> ALL(%(skip)s::timestamptz[])
ORDER BY hour
LIMIT %(limit)s
"""
SELECT_VERSIONS = "SELECT hour, version FROM generation_dirty_hours WHERE hour = ANY(%(hours)s::timestamptz[])"
COUNT_DIRTY = "SELECT count(*) FROM generation_dirty_hours"
DELETE_MARKS = """
DELETE FROM generation_dirty_hours AS d
USING unnest(%(hours)s::timestamptz[], %(versions)s::bigint[]) AS v(hour, version)
WHERE d.hour = v.hour AND d.version = v.version
"""
TRY_LOCK_HOURS = """
SELECT h FROM unnest(%(hours)s::timestamptz[]) AS h
WHERE pg_try_advisory_xact_lock(%(lock_class)s, (extract(epoch FROM h) / 3600)::int)
ORDER BY h
"""
LOCK_DAYS = """
SELECT pg_advisory_xact_lock(%(lock_class)s, (d - DATE '1970-01-01')::int)
FROM unnest(%(days)s::date[]) AS d ORDER BY d
"""

# Dense ids for the users of these hours (committed on their own so no long transaction waits on them).
ENSURE_USERS = """
INSERT INTO generation_users (user_id)
SELECT DISTINCT e.user_id FROM generation_events AS e
WHERE e.timestamp >= %(lo)s AND e.timestamp < %(hi)s AND date_trunc('hour', e.timestamp) = ANY(%(hours)s)
  AND NOT EXISTS (SELECT 1 FROM generation_users AS u WHERE u.user_id = e.user_id)
ORDER BY 1
ON CONFLICT (user_id) DO NOTHING
"""

# The hours' events with what every rollup needs: the duration bucket (see sketches.py) for
# completions with a duration, the images a successful completion produced, the user's dense id.
CREATE_AGG_EVENTS = """
CREATE TEMP TABLE agg_events ON COMMIT DROP AS
SELECT date_trunc('hour', e.timestamp) AS hour, e.event_type, e.user_id, u.uid, e.timestamp, e.duration_ms,
       e.success, e.event_type = 'completion' AND e.success = false AS failed,
       coalesce(e.error_type, '') AS error_type, e.error_message, e.model_checkpoint, e.queue_length,
       CASE WHEN e.event_type = 'completion' AND e.success THEN coalesce(e.batch_size, 1) ELSE 0 END AS images,
       CASE WHEN e.event_type = 'completion' AND e.duration_ms IS NOT NULL THEN
           CASE WHEN e.duration_ms <= 0 THEN 0
                ELSE ceil(ln(e.duration_ms::float8) / %(log_gamma)s)::int + 1 END
       END AS bucket
FROM generation_events AS e LEFT JOIN generation_users AS u USING (user_id)
WHERE e.timestamp >= %(lo)s AND e.timestamp < %(hi)s AND date_trunc('hour', e.timestamp) = ANY(%(hours)s)
"""

# A histogram (sketches.py) from (bucket, n) rows: big-endian (int2 bucket, int4 count) pairs.
HIST = "string_agg(int2send(bucket::int2) || int4send(n::int4), ''::bytea ORDER BY bucket)"
# The additive figures every rollup row of agg_events has (DESIGN.md §3), as one SQL fragment.
COUNTS = """count(*) FILTER (WHERE event_type = 'request') AS requests,
           count(*) FILTER (WHERE event_type = 'completion' AND success) AS successes,
           count(*) FILTER (WHERE failed) AS failures,
           count(*) FILTER (WHERE event_type = 'cancellation') AS cancellations,
           count(*) FILTER (WHERE bucket IS NOT NULL) AS duration_count,
           coalesce(sum(duration_ms) FILTER (WHERE bucket IS NOT NULL), 0) AS duration_sum"""

UPSERT_HOURLY = f"""
INSERT INTO generation_metrics_hourly AS m (
    timestamp, total_requests, successful_generations, failed_generations, cancelled_generations,
    avg_duration_ms, p50_duration_ms, p95_duration_ms, p99_duration_ms, unique_users, avg_queue_length,
    max_queue_length, total_images_generated, duration_count, duration_sum, queue_length_count,
    queue_length_sum, first_event_at, last_event_at, duration_hist, aggregated_at)
SELECT s.hour, s.requests, s.successes, s.failures, s.cancellations,
       s.avg_duration, s.pcts[1], s.pcts[2], s.pcts[3], s.users, s.avg_queue,
       s.max_queue, s.images, s.duration_count, s.duration_sum, s.queue_count,
       s.queue_sum, s.first_at, s.last_at, coalesce(h.hist, ''::bytea), now()
FROM (
    SELECT hour,
           {COUNTS},
           avg(duration_ms) FILTER (WHERE bucket IS NOT NULL)::float8 AS avg_duration,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY duration_ms)
               FILTER (WHERE bucket IS NOT NULL) AS pcts,
           count(DISTINCT user_id) AS users,
           avg(queue_length) FILTER (WHERE event_type = 'request')::float8 AS avg_queue,
           max(queue_length) FILTER (WHERE event_type = 'request') AS max_queue,
           sum(images) AS images,
           count(queue_length) FILTER (WHERE event_type = 'request') AS queue_count,
           coalesce(sum(queue_length) FILTER (WHERE event_type = 'request'), 0) AS queue_sum,
           min(timestamp) AS first_at, max(timestamp) AS last_at
    FROM agg_events GROUP BY hour
) AS s
LEFT JOIN (
    SELECT hour, {HIST} AS hist
    FROM (SELECT hour, bucket, count(*) AS n FROM agg_events WHERE bucket IS NOT NULL GROUP BY 1, 2) AS b
    GROUP BY hour
) AS h USING (hour)
ON CONFLICT (timestamp) DO UPDATE SET
    total_requests = EXCLUDED.total_requests, successful_generations = EXCLUDED.successful_generations,
    failed_generations = EXCLUDED.failed_generations, cancelled_generations = EXCLUDED.cancelled_generations,
    avg_duration_ms = EXCLUDED.avg_duration_ms, p50_duration_ms = EXCLUDED.p50_duration_ms,
    p95_duration_ms = EXCLUDED.p95_duration_ms, p99_duration_ms = EXCLUDED.p99_duration_ms,
    unique_users = EXCLUDED.unique_users, avg_queue_length = EXCLUDED.avg_queue_length,
    max_queue_length = EXCLUDED.max_queue_length, total_images_generated = EXCLUDED.total_images_generated,
    duration_count = EXCLUDED.duration_count, duration_sum = EXCLUDED.duration_sum,
    queue_length_count = EXCLUDED.queue_length_count, queue_length_sum = EXCLUDED.queue_length_sum,
    first_event_at = EXCLUDED.first_event_at, last_event_at = EXCLUDED.last_event_at,
    duration_hist = EXCLUDED.duration_hist, aggregated_at = EXCLUDED.aggregated_at
"""
DELETE_EMPTY_HOURLY = """
DELETE FROM generation_metrics_hourly AS m
WHERE m.timestamp = ANY(%(hours)s) AND NOT EXISTS (SELECT 1 FROM agg_events AS a WHERE a.hour = m.timestamp)
"""

DELETE_MODEL_ROWS = "DELETE FROM generation_model_metrics_hourly WHERE hour = ANY(%(hours)s::timestamptz[])"
INSERT_MODEL_ROWS = f"""
INSERT INTO generation_model_metrics_hourly (
    hour, model_checkpoint, total_requests, successful_generations, failed_generations, cancelled_generations,
    duration_count, duration_sum, total_images_generated, last_used_at, duration_hist)
SELECT s.hour, s.model_checkpoint, s.requests, s.successes, s.failures, s.cancellations,
       s.duration_count, s.duration_sum, s.images, s.last_at, coalesce(h.hist, ''::bytea)
FROM (
    SELECT hour, model_checkpoint,
           {COUNTS},
           sum(images) AS images, max(timestamp) AS last_at
    FROM agg_events WHERE model_checkpoint IS NOT NULL GROUP BY 1, 2
) AS s
LEFT JOIN (
    SELECT hour, model_checkpoint,
           {HIST} AS hist
    FROM (SELECT hour, model_checkpoint, bucket, count(*) AS n FROM agg_events
          WHERE bucket IS NOT NULL AND model_checkpoint IS NOT NULL GROUP BY 1, 2, 3) AS b
    GROUP BY 1, 2
) AS h USING (hour, model_checkpoint)
"""

DELETE_ERROR_ROWS = "DELETE FROM generation_error_metrics_hourly WHERE hour = ANY(%(hours)s::timestamptz[])"
INSERT_ERROR_ROWS = """
INSERT INTO generation_error_metrics_hourly (
    hour, error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages, model_counts)
SELECT s.hour, s.error_type, s.failures, s.duration_count, s.duration_sum, s.first_seen, s.last_seen,
       s.samples, coalesce(m.model_counts, '{}'::jsonb)
FROM (
    SELECT hour, error_type, count(*) AS failures,
           count(duration_ms) AS duration_count, coalesce(sum(duration_ms), 0) AS duration_sum,
           min(timestamp) AS first_seen, max(timestamp) AS last_seen,
           coalesce((array_agg(DISTINCT error_message) FILTER (WHERE error_message IS NOT NULL))[1:5], '{}')
               AS samples
    FROM agg_events WHERE failed GROUP BY 1, 2
) AS s
LEFT JOIN (
    SELECT hour, error_type, jsonb_object_agg(model_checkpoint, n) AS model_counts
    FROM (SELECT hour, error_type, model_checkpoint, count(*) AS n FROM agg_events
          WHERE failed AND model_checkpoint IS NOT NULL GROUP BY 1, 2, 3) AS c
    GROUP BY 1, 2
) AS m USING (hour, error_type)
"""

DELETE_USER_ROWS = "DELETE FROM generation_user_metrics_hourly WHERE hour = ANY(%(hours)s::timestamptz[])"
INSERT_USER_ROWS = f"""
INSERT INTO generation_user_metrics_hourly (
    user_id, hour, total_requests, successful_generations, failed_generations, cancelled_generations,
    duration_count, duration_sum, total_images_generated, first_event_at, last_event_at,
    error_counts, model_counts, duration_hist)
SELECT s.user_id, s.hour, s.requests, s.successes, s.failures, s.cancellations,
       s.duration_count, s.duration_sum, s.images, s.first_at, s.last_at,
       coalesce(e.error_counts, '{{}}'::jsonb), coalesce(mc.model_counts, '{{}}'::jsonb), coalesce(h.hist, ''::bytea)
FROM (
    SELECT user_id, hour,
           {COUNTS},
           sum(images) AS images, min(timestamp) AS first_at, max(timestamp) AS last_at
    FROM agg_events GROUP BY 1, 2
) AS s
LEFT JOIN (
    SELECT user_id, hour, jsonb_object_agg(error_type, n) AS error_counts
    FROM (SELECT user_id, hour, error_type, count(*) AS n FROM agg_events WHERE failed GROUP BY 1, 2, 3) AS c
    GROUP BY 1, 2
) AS e USING (user_id, hour)
LEFT JOIN (
    SELECT user_id, hour, jsonb_object_agg(model_checkpoint, n) AS model_counts
    FROM (SELECT user_id, hour, model_checkpoint, count(*) AS n FROM agg_events
          WHERE model_checkpoint IS NOT NULL GROUP BY 1, 2, 3) AS c
    GROUP BY 1, 2
) AS mc USING (user_id, hour)
LEFT JOIN (
    SELECT user_id, hour, {HIST} AS hist
    FROM (SELECT user_id, hour, bucket, count(*) AS n FROM agg_events WHERE bucket IS NOT NULL GROUP BY 1, 2, 3) AS b
    GROUP BY 1, 2
) AS h USING (user_id, hour)
"""

# Running totals (cum_*) of the users these hours touched, from their earliest touched hour onward,
# continuing from the user's last row before it.
UPDATE_RUNNING_TOTALS = """
WITH touched AS (
    SELECT user_id, min(hour) AS from_hour FROM generation_user_metrics_hourly
    WHERE hour = ANY(%(hours)s::timestamptz[]) GROUP BY user_id
), base AS (
    SELECT t.user_id, t.from_hour, coalesce(p.cum_requests, 0) AS r, coalesce(p.cum_successes, 0) AS s,
           coalesce(p.cum_failures, 0) AS f, coalesce(p.cum_cancellations, 0) AS c,
           coalesce(p.cum_duration_count, 0) AS dc, coalesce(p.cum_duration_sum, 0) AS ds
    FROM touched AS t
    LEFT JOIN LATERAL (
        SELECT * FROM generation_user_metrics_hourly AS p
        WHERE p.user_id = t.user_id AND p.hour < t.from_hour ORDER BY p.hour DESC LIMIT 1
    ) AS p ON true
), running AS (
    SELECT h.user_id, h.hour,
           b.r + sum(h.total_requests) OVER w AS cum_requests,
           b.s + sum(h.successful_generations) OVER w AS cum_successes,
           b.f + sum(h.failed_generations) OVER w AS cum_failures,
           b.c + sum(h.cancelled_generations) OVER w AS cum_cancellations,
           b.dc + sum(h.duration_count) OVER w AS cum_duration_count,
           b.ds + sum(h.duration_sum) OVER w AS cum_duration_sum
    FROM generation_user_metrics_hourly AS h JOIN base AS b ON b.user_id = h.user_id AND h.hour >= b.from_hour
    WINDOW w AS (PARTITION BY h.user_id ORDER BY h.hour)
)
UPDATE generation_user_metrics_hourly AS u
SET cum_requests = r.cum_requests, cum_successes = r.cum_successes, cum_failures = r.cum_failures,
    cum_cancellations = r.cum_cancellations, cum_duration_count = r.cum_duration_count,
    cum_duration_sum = r.cum_duration_sum
FROM running AS r
WHERE u.user_id = r.user_id AND u.hour = r.hour
"""
LOCK_RUNNING_TOTALS = "SELECT pg_advisory_xact_lock(%(lock_class)s, 0)"

# Daily rows per checkpoint / error type, summed from the hourly rows of the days touched.
DELETE_MODEL_DAYS = "DELETE FROM generation_model_metrics_daily WHERE day = ANY(%(days)s)"
INSERT_MODEL_DAYS = """
INSERT INTO generation_model_metrics_daily (
    day, model_checkpoint, total_requests, successful_generations, failed_generations, cancelled_generations,
    duration_count, duration_sum, total_images_generated, last_used_at)
SELECT (hour AT TIME ZONE 'UTC')::date, model_checkpoint, sum(total_requests), sum(successful_generations),
       sum(failed_generations), sum(cancelled_generations), sum(duration_count), sum(duration_sum),
       sum(total_images_generated), max(last_used_at)
FROM generation_model_metrics_hourly
WHERE hour >= %(lo)s AND hour < %(hi)s
GROUP BY 1, 2
"""
SELECT_MODEL_HISTS = """
SELECT (hour AT TIME ZONE 'UTC')::date, model_checkpoint, duration_hist
FROM generation_model_metrics_hourly WHERE hour >= %(lo)s AND hour < %(hi)s
"""
UPDATE_MODEL_DAY_HIST = (
    "UPDATE generation_model_metrics_daily SET duration_hist = %s WHERE day = %s AND model_checkpoint = %s"
)
DELETE_ERROR_DAYS = "DELETE FROM generation_error_metrics_daily WHERE day = ANY(%(days)s)"
INSERT_ERROR_DAYS = """
WITH hours AS (
    SELECT (hour AT TIME ZONE 'UTC')::date AS day, * FROM generation_error_metrics_hourly
    WHERE hour >= %(lo)s AND hour < %(hi)s
)
INSERT INTO generation_error_metrics_daily (
    day, error_type, failures, duration_count, duration_sum, first_seen, last_seen, sample_messages, model_counts)
SELECT s.day, s.error_type, s.failures, s.duration_count, s.duration_sum, s.first_seen, s.last_seen,
       coalesce(m.samples, '{}'), coalesce(c.model_counts, '{}'::jsonb)
FROM (
    SELECT day, error_type, sum(failures) AS failures, sum(duration_count) AS duration_count,
           sum(duration_sum) AS duration_sum, min(first_seen) AS first_seen, max(last_seen) AS last_seen
    FROM hours GROUP BY 1, 2
) AS s
LEFT JOIN (
    SELECT day, error_type, (array_agg(DISTINCT message))[1:5] AS samples
    FROM hours, unnest(sample_messages) AS message GROUP BY 1, 2
) AS m USING (day, error_type)
LEFT JOIN (
    SELECT day, error_type, jsonb_object_agg(model, n) AS model_counts
    FROM (SELECT day, error_type, kv.key AS model, sum(kv.value::bigint) AS n
          FROM hours, jsonb_each_text(model_counts) AS kv GROUP BY 1, 2, 3) AS per_model
    GROUP BY 1, 2
) AS c USING (day, error_type)
"""
SELECT_ERROR_BITMAPS = """
SELECT (hour AT TIME ZONE 'UTC')::date, error_type, user_bitmap
FROM generation_error_metrics_hourly WHERE hour >= %(lo)s AND hour < %(hi)s
"""
UPDATE_ERROR_DAY_BITMAP = (
    "UPDATE generation_error_metrics_daily SET user_bitmap = %s WHERE day = %s AND error_type = %s"
)

SELECT_HOUR_UIDS = """
SELECT hour, array_agg(DISTINCT uid) FILTER (WHERE uid IS NOT NULL) FROM agg_events GROUP BY hour
"""
SELECT_ERROR_UIDS = """
SELECT hour, error_type, array_agg(DISTINCT uid) FILTER (WHERE uid IS NOT NULL)
FROM agg_events WHERE failed GROUP BY 1, 2
"""
UPDATE_HOUR_BITMAP = "UPDATE generation_metrics_hourly SET user_bitmap = %s WHERE timestamp = %s"
UPDATE_ERROR_BITMAP = "UPDATE generation_error_metrics_hourly SET user_bitmap = %s WHERE hour = %s AND error_type = %s"


class Aggregator:
    """Keeps the rollups equal to a recompute of generation_events, hour by hour."""

    def __init__(self, *, pool: ConnectionPool, pipeline: PipelineSettings) -> None:
        self._pool = pool
        self._settings = pipeline
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Make a run in progress return after its current batch (for a prompt shutdown)."""
        self._stopping.set()

    def run(self, *, time_budget_s: float | None = None) -> AggregationReport:
        """Recompute dirty hours, oldest first, until none is left that this process may take.

        Oldest first: a user's running totals are recomputed from the earliest changed hour onward,
        so going forward in time touches each row once.
        """
        with self._lock:
            started = time.monotonic()
            deadline = started + (time_budget_s or self._settings.aggregation_time_budget_s)
            report = AggregationReport()
            skip: list[datetime] = []
            while time.monotonic() < deadline and not self._stopping.is_set():
                with self._pool.connection() as conn:
                    batch = conn.execute(
                        SELECT_DIRTY, {"skip": skip, "limit": self._settings.aggregation_batch_hours}
                    ).fetchall()
                    conn.commit()
                if not batch:
                    break
                done = self._aggregate_batch([row[0] for row in batch], [row[1] for row in batch], report)
                skip.extend(h for h in (row[0] for row in batch) if h not in done)
            report.remaining_dirty_hours = self._count_dirty()
            report.duration_s = time.monotonic() - started
            if report.hours_aggregated:
                log.info(
                    "aggregation: %d hours in %.2f s (%d skipped: locked elsewhere, %d expired, %d still dirty)",
                    report.hours_aggregated, report.duration_s, report.skipped_locked, report.expired,
                    report.remaining_dirty_hours,
                )  # fmt: skip
            return report

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
            batch_size = self._settings.aggregation_batch_hours
            for index in range(0, len(hours), batch_size):
                chunk = hours[index : index + batch_size]
                with self._pool.connection() as conn:
                    versions: dict[datetime, int] = dict(conn.execute(SELECT_VERSIONS, {"hours": chunk}).fetchall())
                    conn.commit()
                self._aggregate_batch(chunk, [versions.get(h, -1) for h in chunk], report)
            report.remaining_dirty_hours = self._count_dirty()
            report.duration_s = time.monotonic() - started
            return report

    def _count_dirty(self) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(COUNT_DIRTY).fetchone()
            return int(row[0]) if row else 0

    def _aggregate_batch(
        self, hours: Sequence[datetime], versions: Sequence[int], report: AggregationReport
    ) -> set[datetime]:
        """Recompute the hours of one batch in one transaction; returns the hours it recomputed."""
        horizon = hour_floor(datetime.now(UTC)) - timedelta(days=self._settings.retention_days) + HOUR
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
            bounds = {"lo": min(live_hours), "hi": max(live_hours) + HOUR, "hours": live_hours}
            conn.execute(ENSURE_USERS, bounds)
            conn.commit()
            with conn.transaction():
                locked = {row[0] for row in conn.execute(
                    TRY_LOCK_HOURS, {"hours": live_hours, "lock_class": HOUR_LOCK_CLASS}
                ).fetchall()}  # fmt: skip
                report.skipped_locked += len(live) - len(locked)
                if locked:
                    self._recompute(conn, sorted(locked))
                    self._delete_marks(conn, [(h, v) for h, v in live if h in locked])
            report.hours_aggregated += len(locked)
            return locked | {h for h, _ in expired}

    @staticmethod
    def _delete_marks(conn: psycopg.Connection[Any], marks: Sequence[tuple[datetime, int]]) -> None:
        conn.execute(DELETE_MARKS, {"hours": [h for h, _ in marks], "versions": [v for _, v in marks]})

    @staticmethod
    def _recompute(conn: psycopg.Connection[Any], hours: list[datetime]) -> None:
        params = {"hours": hours, "lo": hours[0], "hi": hours[-1] + HOUR, "log_gamma": LOG_GAMMA}
        with conn.cursor() as cur:
            cur.execute(CREATE_AGG_EVENTS, params)
            cur.execute("ANALYZE agg_events")
            cur.execute(UPSERT_HOURLY, params)
            cur.execute(DELETE_EMPTY_HOURLY, params)
            cur.execute(DELETE_MODEL_ROWS, params)
            cur.execute(INSERT_MODEL_ROWS, params)
            cur.execute(DELETE_ERROR_ROWS, params)
            cur.execute(INSERT_ERROR_ROWS, params)
            cur.execute(DELETE_USER_ROWS, params)
            cur.execute(INSERT_USER_ROWS, params)

            cur.execute(SELECT_HOUR_UIDS)
            cur.executemany(UPDATE_HOUR_BITMAP, [(bitmap_of(uids or ()), hour) for hour, uids in cur.fetchall()])
            cur.execute(SELECT_ERROR_UIDS)
            cur.executemany(
                UPDATE_ERROR_BITMAP, [(bitmap_of(uids or ()), hour, err) for hour, err, uids in cur.fetchall()]
            )

            days = days_of(hours)
            day_bounds: dict[str, Any] = {
                "days": days,
                "lo": datetime.combine(days[0], datetime.min.time(), UTC),
                "hi": datetime.combine(days[-1] + timedelta(days=1), datetime.min.time(), UTC),
                "lock_class": DAY_LOCK_CLASS,
            }
            # Rollups spanning hours are rebuilt under locks taken in a fixed order (days, then
            # the running totals); each statement after a lock sees every other aggregator's
            # committed hours, so concurrent aggregators never leave them stale.
            cur.execute(LOCK_DAYS, day_bounds)
            cur.execute(DELETE_MODEL_DAYS, day_bounds)
            cur.execute(INSERT_MODEL_DAYS, day_bounds)
            cur.execute(SELECT_MODEL_HISTS, day_bounds)
            cur.executemany(UPDATE_MODEL_DAY_HIST, _per_key(cur.fetchall(), sketches.compact))
            cur.execute(DELETE_ERROR_DAYS, day_bounds)
            cur.execute(INSERT_ERROR_DAYS, day_bounds)
            cur.execute(SELECT_ERROR_BITMAPS, day_bounds)
            cur.executemany(UPDATE_ERROR_DAY_BITMAP, _per_key(cur.fetchall(), sketches.union))
            cur.execute(LOCK_RUNNING_TOTALS, {"lock_class": RUNNING_LOCK_CLASS})
            cur.execute(UPDATE_RUNNING_TOTALS, params)


def _per_key(rows: list[tuple[Any, ...]], combine: Callable[[list[bytes]], bytes]) -> list[tuple[bytes, Any, Any]]:
    """(day, key, blob) rows -> (combined blob, day, key) per (day, key), for the UPDATE statements."""
    groups: dict[tuple[Any, Any], list[bytes]] = defaultdict(list)
    for day, key, blob in rows:
        groups[(day, key)].append(blob)
    return [(combine(blobs), day, key) for (day, key), blobs in groups.items()]

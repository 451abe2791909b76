"""Retention: remove raw events (and alert transitions) older than the retention age; rollups stay.

generation_events is partitioned by week (0016): whole weeks past retention are dropped (partitions.py),
and what remains older than the cutoff — the part of the day the cutoff falls in, the legacy and default
partitions — is deleted in small batches, each its own short transaction, so no lock is held for long and
transfer keeps flowing. The ids of removed events leave generation_event_ids with them. The same run
creates the coming days' partitions. Only one replica prunes at a time (a session advisory try-lock); the
others skip the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from generation_analytics.service.pipeline import partitions
from generation_analytics.service.settings import RetentionSettings

log = logging.getLogger(__name__)

RETENTION_LOCK_ID = 0x6761_7265

# The timestamp below which about `limit` of the oldest events lie (NULL: fewer than that before the cutoff).
BATCH_BOUND = """
SELECT min(timestamp), (SELECT timestamp FROM generation_events WHERE timestamp < %(cutoff)s
                        ORDER BY timestamp OFFSET %(limit)s LIMIT 1)
FROM generation_events WHERE timestamp < %(cutoff)s
"""
# A batch by time (a partitioned table has no unique row key to pick rows by), with the batch's ids.
DELETE_OLD_EVENTS = """
WITH gone AS (
    DELETE FROM generation_events WHERE timestamp < %(bound)s OR timestamp <= %(through)s RETURNING event_id
), forgotten AS (
    DELETE FROM generation_event_ids AS i USING gone AS g WHERE i.event_id = g.event_id RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM forgotten)
"""
DELETE_OLD_DEAD_LETTERS = "DELETE FROM generation_events_dead_letter WHERE dead_lettered_at < %(cutoff)s"
# Alert transitions as old as the raw events go too, with their deliveries and attempts (ON DELETE CASCADE).
DELETE_OLD_ALERT_EVENTS = "DELETE FROM alert_events WHERE at < %(cutoff)s"


@dataclass
class RetentionReport:
    deleted: int = 0
    duration_s: float = 0.0
    dropped_partitions: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return self.deleted


def _delete_in_batches(conn: psycopg.Connection[Any], cutoff: datetime, limit: int) -> int:
    """Delete the events older than `cutoff` that no dropped partition took, about `limit` at a time."""
    deleted = 0
    while True:
        row: Any = conn.execute(BATCH_BOUND, {"cutoff": cutoff, "limit": limit}).fetchone()
        oldest, bound = row
        if oldest is None:
            return deleted
        # Every event before `bound` (the cutoff when fewer remain); if more than `limit` share the oldest
        # instant, that instant whole, so a batch always makes progress.
        params = {"bound": bound or cutoff, "through": oldest if bound == oldest else None}
        counts: Any = conn.execute(DELETE_OLD_EVENTS, params).fetchone()
        deleted += int(counts[0])
        if bound is None:
            return deleted


def prune(pool: ConnectionPool, settings: RetentionSettings, *, now: datetime | None = None) -> RetentionReport:
    """Delete raw events (and dead letters) older than `settings.days`."""
    started = time.monotonic()
    cutoff = (now or datetime.now(UTC)) - timedelta(days=settings.days)
    report = RetentionReport()
    with pool.connection() as conn:
        conn.autocommit = True
        try:
            locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK_ID,)).fetchone()
            if not locked or not locked[0]:
                return report
            try:
                report.dropped_partitions, report.deleted = partitions.drop_expired(conn, cutoff)
                report.deleted += _delete_in_batches(conn, cutoff, settings.batch_rows)
                # Last: a week whose events in the default partition were just deleted can have its own now.
                partitions.ensure_days_ahead(conn, now or datetime.now(UTC))
                conn.execute(DELETE_OLD_DEAD_LETTERS, {"cutoff": cutoff})
                conn.execute(DELETE_OLD_ALERT_EVENTS, {"cutoff": cutoff})
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK_ID,))
        finally:
            conn.autocommit = False
    report.duration_s = time.monotonic() - started
    if report.deleted:
        log.info("retention: removed %d events older than %s", report.deleted, cutoff.isoformat())
    return report

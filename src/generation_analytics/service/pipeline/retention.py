"""Retention: remove raw events (and alert transitions) older than the retention age in small batches;
rollups stay.

Each batch is its own short transaction, so no lock is held for long and transfer keeps flowing.
Only one replica prunes at a time (a session advisory try-lock); the others skip the run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg_pool import ConnectionPool

from generation_analytics.service.settings import RetentionSettings

log = logging.getLogger(__name__)

RETENTION_LOCK_ID = 0x6761_7265

DELETE_OLD_EVENTS = """
DELETE FROM generation_events
WHERE id IN (SELECT id FROM generation_events WHERE timestamp < %(cutoff)s ORDER BY timestamp LIMIT %(limit)s)
"""
DELETE_OLD_DEAD_LETTERS = "DELETE FROM generation_events_dead_letter WHERE dead_lettered_at < %(cutoff)s"
# Alert transitions as old as the raw events go too, with their deliveries and attempts (ON DELETE CASCADE).
DELETE_OLD_ALERT_EVENTS = "DELETE FROM alert_events WHERE at < %(cutoff)s"


@dataclass
class RetentionReport:
    deleted: int = 0
    duration_s: float = 0.0

    @property
    def processed(self) -> int:
        return self.deleted


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
                while True:
                    deleted = conn.execute(DELETE_OLD_EVENTS, {"cutoff": cutoff, "limit": settings.batch_rows}).rowcount
                    report.deleted += deleted
                    if deleted < settings.batch_rows:
                        break
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

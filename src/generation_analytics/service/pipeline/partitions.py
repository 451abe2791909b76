"""The partitions of generation_events (migration 0016), a week each: created ahead of time, dropped
whole once every timestamp they can hold is past retention.

A week's partition is `generation_events_YYYYMMDD` (the day it starts), covering [Monday, next Monday) in
UTC, or the part of that week no other partition holds. Two more partitions hold what no week covers:
`generation_events_legacy` (everything before the first partition, i.e. the table as it was before 0016)
and `generation_events_default` (a week with no partition yet); retention deletes their old rows batch by
batch, and drops the legacy partition too once its upper bound is past retention.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

PARENT = "generation_events"
DEFAULT_PARTITION = "generation_events_default"
# A partition holds an ISO week (Monday 00:00 UTC to the next): a query plans every partition its window
# spans, and ~13 weeks of retention plan far faster than ~90 days would (~0.1 ms per partition).
PARTITION_DAYS = 7
# Days given a partition ahead of today by each retention run (it runs hourly): a week without the
# pipeline still finds its days ready.
DAYS_AHEAD = 7
# Dropping a partition briefly locks generation_events against every reader and writer; rather than queue
# behind a long query (and make everyone queue behind the drop), give up and try again on the next run.
DROP_LOCK_TIMEOUT = "2s"

SELECT_PARTITIONS = """
SELECT c.relname, pg_get_expr(c.relpartbound, c.oid)
FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid
WHERE i.inhparent = 'generation_events'::regclass
ORDER BY c.relname
"""
DEFAULT_HOLDS = """
SELECT EXISTS (SELECT 1 FROM generation_events_default WHERE timestamp >= %(start)s AND timestamp < %(end)s)
"""
# Each partition's own statistics of how event_type, success and error_type go together (an error type
# implies a failed completion). A parent's statistics objects do not reach its partitions, and without
# these the planner multiplies the three selectivities, underestimates "failures of error type X" ~40-fold
# and sorts every such failure of the window instead of reading the slowest ones in index order (ListEvents
# `slowest` with success and error type on 10M events: 44.7 ms -> 0.6 ms).
KIND_STATISTICS = sql.SQL(
    "CREATE STATISTICS IF NOT EXISTS {} (dependencies) ON event_type, success, error_type FROM {}"
)
_BOUND = re.compile(r"FOR VALUES FROM \((?:'(?P<start>[^']+)'|MINVALUE)\) TO \((?:'(?P<end>[^']+)'|MAXVALUE)\)")


@dataclass(frozen=True)
class Partition:
    """A partition and the timestamps it holds: [start, end); None is unbounded (or the default partition)."""

    name: str
    start: datetime | None
    end: datetime | None
    is_default: bool = False

    def covers(self, day: datetime) -> bool:
        return (
            not self.is_default and (self.start is None or self.start <= day) and (self.end is None or day < self.end)
        )


def partitioned(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT relkind = 'p' FROM pg_class WHERE oid = 'generation_events'::regclass").fetchone()
    return bool(row and row[0])


def partitions(conn: psycopg.Connection[Any]) -> list[Partition]:
    found = []
    for name, bound in conn.execute(SELECT_PARTITIONS).fetchall():
        if bound == "DEFAULT":
            found.append(Partition(name, None, None, is_default=True))
            continue
        match = _BOUND.fullmatch(bound)
        if match is None:
            raise RuntimeError(f"partition {name} has a bound this code does not know: {bound}")
        start, end = (datetime.fromisoformat(v) if v else None for v in (match["start"], match["end"]))
        found.append(Partition(name, start, end))
    return found


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 UTC of the ISO week of `moment`."""
    day = moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


def ensure_days_ahead(conn: psycopg.Connection[Any], now: datetime, days: int = DAYS_AHEAD) -> list[str]:
    """Give today and the next `days` days a partition where none has one; returns the partitions made."""
    return ensure_days(conn, now, now + timedelta(days=days))


def ensure_days(conn: psycopg.Connection[Any], first: datetime, last: datetime) -> list[str]:
    """Give every day from `first` to `last` a partition: one per ISO week (a week's part that another
    partition does not hold already). Returns the names of those created.

    A range the default partition already holds rows of is left to it (a partition cannot be created over
    rows another holds); those rows age out of the default partition like the legacy ones.
    """
    found = partitions(conn)
    existing = [p for p in found if not p.is_default]
    has_default = len(existing) < len(found)
    created = []
    week = week_start(first)
    while week <= last:
        start, end = week, week + timedelta(days=PARTITION_DAYS)
        week = end
        for p in existing:  # what the week's partitions leave free: [start, end)
            if (p.start is None or p.start <= start) and (p.end is None or start < p.end):
                start = p.end if p.end is not None else end
        if start >= end:
            continue
        end = min([end, *(p.start for p in existing if p.start is not None and start < p.start < end)])
        params = {"start": start, "end": end}
        if has_default and conn.execute(DEFAULT_HOLDS, params).fetchone() == (True,):
            log.warning("partitions: the default partition holds events of %s..%s; no partition for them", start, end)
            continue
        name = f"{PARENT}_{start:%Y%m%d}"
        with conn.transaction():
            conn.execute(
                sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(name), sql.Identifier(PARENT), sql.Literal(start), sql.Literal(end)
                )
            )
            conn.execute(KIND_STATISTICS.format(sql.Identifier(f"{name}_kinds"), sql.Identifier(name)))
        existing.append(Partition(name, start, end))
        created.append(name)
    if created:
        log.info("partitions: created %s", ", ".join(created))
    return created


def drop_expired(conn: psycopg.Connection[Any], cutoff: datetime) -> tuple[list[str], int]:
    """Drop every partition (not the default) whose timestamps all lie before `cutoff`, with its ids in
    generation_event_ids and its rows in the event counters; returns the names and the rows removed."""
    dropped, rows_removed = [], 0
    for partition in partitions(conn):
        if partition.is_default or partition.end is None or partition.end > cutoff:
            continue
        table = sql.Identifier(partition.name)
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(DROP_LOCK_TIMEOUT)))
                conn.execute(
                    sql.SQL("DELETE FROM generation_event_ids AS i USING {} AS p WHERE i.event_id = p.event_id").format(
                        table
                    )
                )
                counted = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
                rows = int(counted[0]) if counted else 0
                # The drop takes generation_events' lock last: nothing else is held that a writer could want.
                conn.execute(sql.SQL("DROP TABLE {}").format(table))
                if rows:  # a dropped table fires no delete trigger: the counters (0012) are told here
                    conn.execute(
                        "INSERT INTO generation_event_counts AS c (shard, events) VALUES (pg_backend_pid() %% 16, %s)"
                        " ON CONFLICT (shard) DO UPDATE SET events = c.events + EXCLUDED.events",
                        (-rows,),
                    )
        except psycopg.errors.LockNotAvailable:
            log.warning("partitions: %s is busy; dropping it on a later run", partition.name)
            continue
        dropped.append(partition.name)
        rows_removed += rows
    if dropped:
        log.info("partitions: dropped %s (%d events past retention)", ", ".join(dropped), rows_removed)
    return dropped, rows_removed

"""Applies the numbered SQL files in `schema/` once each, under an advisory lock.

Safe to run twice (applied versions are recorded) and from several processes at once (the lock
serialises them; the second finds nothing left to do). Files are forward-only: editing one that a
database already applied is refused, because that database would silently differ from a fresh one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from generation_analytics.service.pipeline import rollups
from generation_analytics.service.sketches import from_legacy_bitmap

log = logging.getLogger(__name__)

# Arbitrary constant shared by every migrating process ("ga" "mi" in ASCII).
MIGRATION_LOCK_ID = 0x6761_6D69
_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def schema_dir() -> Path:
    """The folder holding the migration files (shipped inside the package)."""
    return Path(str(resources.files("generation_analytics.service") / "schema"))


def load_migrations(folder: Path | None = None) -> list[Migration]:
    """Every `NNNN_name.sql` in `folder`, in version order."""
    migrations = []
    for path in sorted((folder or schema_dir()).iterdir()):
        match = _FILE_NAME.match(path.name)
        if match:
            migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration versions in {folder or schema_dir()}: {versions}")
    return migrations


CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
SELECT_APPLIED = "SELECT version, checksum FROM schema_migrations"
INSERT_APPLIED = "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)"


# Tables whose user sets 0005 turns from fixed-width bitmaps into Roaring bitmaps, with their keys.
_USER_SET_TABLES = {
    "generation_metrics_hourly": ("timestamp",),
    "generation_error_metrics_hourly": ("hour", "error_type"),
    "generation_error_metrics_daily": ("day", "error_type"),
}


def _roaring_user_sets(conn: psycopg.Connection[Any]) -> None:
    """0005: re-encode every stored user set (SQL cannot build a Roaring bitmap)."""
    for table, keys in _USER_SET_TABLES.items():
        columns = sql.SQL(", ").join(map(sql.Identifier, keys))
        rows = conn.execute(
            sql.SQL("SELECT {}, user_bitmap FROM {} WHERE user_bitmap <> ''").format(columns, sql.Identifier(table))
        ).fetchall()
        match = sql.SQL(" AND ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in keys)
        update = sql.SQL("UPDATE {} SET user_bitmap = %s WHERE {}").format(sql.Identifier(table), match)
        with conn.cursor() as cur:
            cur.executemany(update, [(from_legacy_bitmap(row[-1]), *row[:-1]) for row in rows])
        log.info("migration 0005: re-encoded %d user sets in %s", len(rows), table)


def _overall_days(conn: psycopg.Connection[Any]) -> None:
    """0015: the daily rows of every day with hourly rows, built by aggregation's own code (a month at a
    time: SQL cannot union user sets)."""
    rows = conn.execute("SELECT DISTINCT (timestamp AT TIME ZONE 'UTC')::date FROM generation_metrics_hourly")
    days = sorted(row[0] for row in rows.fetchall())
    with conn.cursor() as cur:
        for first in range(0, len(days), 31):
            rollups.write_overall_days(cur, days[first : first + 31])
    log.info("migration 0015: built the daily rows of %d days", len(days))


def _error_group_hour_totals(conn: psycopg.Connection[Any]) -> None:
    """0017: the rows per error group and hour of every hour with rows per checkpoint, built by aggregation's
    own code (a day at a time: SQL cannot union user sets), and the daily totals' failures per checkpoint."""
    rows = conn.execute("SELECT DISTINCT hour FROM generation_error_group_metrics_hourly ORDER BY hour")
    hours = [row[0] for row in rows.fetchall()]
    with conn.cursor() as cur:
        for first in range(0, len(hours), 24):
            rollups.write_group_hour_totals(cur, hours[first : first + 24])
        cur.execute(rollups.FILL_TOTAL_DAY_CHECKPOINTS)
    log.info("migration 0017: merged the error groups of %d hours over their checkpoints", len(hours))


# Conversions SQL cannot do, run right after the migration of the same version, in its transaction.
DATA_STEPS: dict[int, Callable[[psycopg.Connection[Any]], None]] = {
    5: _roaring_user_sets,
    15: _overall_days,
    17: _error_group_hour_totals,
}


def migrate(dsn: str, *, folder: Path | None = None) -> list[int]:
    """Apply pending migrations to the database at `dsn`; returns the versions applied now."""
    applied_now: list[int] = []
    data_steps = DATA_STEPS if folder is None else {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Session-level lock: held across the per-migration transactions below.
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_ID,))
        try:
            conn.execute(CREATE_LEDGER)
            applied: dict[int, str] = dict(conn.execute(SELECT_APPLIED).fetchall())
            for migration in load_migrations(folder):
                if migration.version in applied:
                    if applied[migration.version] != migration.checksum:
                        raise RuntimeError(
                            f"migration {migration.version:04d}_{migration.name} changed after it was applied"
                        )
                    continue
                log.info("applying migration %04d_%s", migration.version, migration.name)
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    if migration.version in data_steps:
                        data_steps[migration.version](conn)
                    conn.execute(INSERT_APPLIED, (migration.version, migration.name, migration.checksum))
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now

"""Applies the numbered SQL files in `schema/` once each, under an advisory lock.

Safe to run twice (applied versions are recorded) and from several processes at once (the lock
serialises them; the second finds nothing left to do). Files are forward-only: editing one that a
database already applied is refused, because that database would silently differ from a fresh one.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg

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


def migrate(dsn: str, *, folder: Path | None = None) -> list[int]:
    """Apply pending migrations to the database at `dsn`; returns the versions applied now."""
    applied_now: list[int] = []
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
                    conn.execute(INSERT_APPLIED, (migration.version, migration.name, migration.checksum))
                applied_now.append(migration.version)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_ID,))
    return applied_now

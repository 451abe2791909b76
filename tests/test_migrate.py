"""Migrations: apply once, safe to repeat, safe to race, refuse edited history."""

from __future__ import annotations

import threading
from pathlib import Path

import psycopg
import pytest

from generation_analytics.service.migrate import load_migrations, migrate


def tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_migrate_creates_schema_and_second_run_does_nothing(empty_db_dsn: str) -> None:
    versions = [m.version for m in load_migrations()]
    assert migrate(empty_db_dsn) == versions
    assert {"generation_events", "schema_migrations"} <= tables(empty_db_dsn)
    assert migrate(empty_db_dsn) == []


def test_concurrent_migrations_apply_each_version_once(empty_db_dsn: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(empty_db_dsn))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    applied = sorted(v for r in results for v in r)
    assert applied == [m.version for m in load_migrations()]
    with psycopg.connect(empty_db_dsn) as conn:
        count = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
    assert count == (len(load_migrations()),)


def test_database_works_in_utc(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        assert conn.execute("SHOW timezone").fetchone() == ("UTC",)


def test_edited_migration_is_refused(empty_db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t (id int);")
    assert migrate(empty_db_dsn, folder=tmp_path) == [1]
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE t (id bigint);")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate(empty_db_dsn, folder=tmp_path)


def test_failed_migration_leaves_nothing_half_applied(empty_db_dsn: str, tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok (id int);")
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half (id int); SELECT no_such_function();")
    with pytest.raises(psycopg.errors.UndefinedFunction):
        migrate(empty_db_dsn, folder=tmp_path)
    assert "ok" in tables(empty_db_dsn)
    assert "half" not in tables(empty_db_dsn)
    (tmp_path / "0002_broken.sql").write_text("CREATE TABLE half (id int);")
    assert migrate(empty_db_dsn, folder=tmp_path) == [2]

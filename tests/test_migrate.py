"""Migrations: apply once, safe to repeat, safe to race, refuse edited history."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest

from generation_analytics.service import sketches
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


# A database as the code before 0005 left it: two users, one of them across a month edge, with the
# per-user rollup keyed by user_id (running totals over all time) and fixed-width user bitmaps.
U1, U2 = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-000000000002"
BEFORE_0005 = """
INSERT INTO generation_users (user_id) VALUES (%(u1)s), (%(u2)s);
INSERT INTO generation_events (event_id, event_type, generation_id, user_id, timestamp, duration_ms, success,
                               error_type, model_checkpoint)
VALUES (gen_random_uuid(), 'request', 'g1', %(u1)s, %(oct)s + interval '10 minutes', NULL, NULL, NULL, 'sdxl'),
       (gen_random_uuid(), 'completion', 'g1', %(u1)s, %(nov)s + interval '20 minutes', 100, true, NULL, 'sdxl'),
       (gen_random_uuid(), 'completion', 'g2', %(u2)s, %(nov)s + interval '40 minutes', 300, false, 'Timeout', 'sdxl');
INSERT INTO generation_user_metrics_hourly (user_id, hour, total_requests, successful_generations, failed_generations,
    cancelled_generations, duration_count, duration_sum, total_images_generated, first_event_at, last_event_at,
    error_counts, model_counts, cum_requests, cum_successes, cum_failures, cum_cancellations, cum_duration_count,
    cum_duration_sum)
VALUES (%(u1)s, %(oct)s, 1, 0, 0, 0, 0, 0, 0, %(oct)s + interval '10 minutes', %(oct)s + interval '10 minutes',
        '{}', '{"sdxl": 1}', 1, 0, 0, 0, 0, 0),
       (%(u1)s, %(nov)s, 0, 1, 0, 0, 1, 100, 1, %(nov)s + interval '20 minutes', %(nov)s + interval '20 minutes',
        '{}', '{"sdxl": 1}', 1, 1, 0, 0, 1, 100),
       (%(u2)s, %(nov)s, 0, 0, 1, 0, 1, 300, 0, %(nov)s + interval '40 minutes', %(nov)s + interval '40 minutes',
        '{"Timeout": 1}', '{"sdxl": 1}', 0, 0, 1, 0, 1, 300);
INSERT INTO generation_metrics_hourly (timestamp, total_requests, successful_generations, failed_generations,
    cancelled_generations, unique_users, total_images_generated, duration_count, duration_sum, queue_length_count,
    queue_length_sum, first_event_at, last_event_at, user_bitmap)
VALUES (%(nov)s, 0, 1, 1, 0, 2, 1, 2, 400, 0, 0, %(nov)s, %(nov)s, %(both)s);
INSERT INTO generation_error_metrics_hourly (hour, error_type, failures, duration_count, duration_sum, first_seen,
    last_seen, sample_messages, model_counts, user_bitmap)
VALUES (%(nov)s, 'Timeout', 1, 1, 300, %(nov)s, %(nov)s, '{}', '{"sdxl": 1}', %(second)s);
"""


def test_0005_moves_existing_rollups_to_the_new_shapes(empty_db_dsn: str, tmp_path: Path) -> None:
    shipped = load_migrations()
    for m in shipped[:4]:
        (tmp_path / f"{m.version:04d}_{m.name}.sql").write_text(m.sql)
    assert migrate(empty_db_dsn, folder=tmp_path) == [1, 2, 3, 4]
    year = datetime.now(UTC).year - 1  # any past October/November pair
    october, november = datetime(year, 10, 31, 23, tzinfo=UTC), datetime(year, 11, 1, tzinfo=UTC)
    legacy = lambda *uids: np.packbits(  # noqa: E731 (the old encoding: bit uid set, little-endian)
        np.isin(np.arange(max(uids) + 1), uids), bitorder="little"
    ).tobytes()
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        for statement in BEFORE_0005.split(";\n"):
            if statement.strip():
                conn.execute(statement, {"u1": U1, "u2": U2, "oct": october, "nov": november,
                                         "both": legacy(1, 2), "second": legacy(2)})  # fmt: skip

    assert migrate(empty_db_dsn) == [m.version for m in shipped[4:]]

    with psycopg.connect(empty_db_dsn) as conn:
        uids: dict[str, int] = dict(conn.execute("SELECT user_id::text, uid FROM generation_users").fetchall())
        hourly = conn.execute(
            "SELECT uid, hour, events, cum_events, cum_requests, cum_successes, cum_failures, cum_duration_sum"
            " FROM generation_user_metrics_hourly ORDER BY uid, hour"
        ).fetchall()
        monthly = conn.execute(
            "SELECT uid, month, user_id::text, events, total_requests, successful_generations, failed_generations,"
            " last_hour FROM generation_user_metrics_monthly ORDER BY uid, month"
        ).fetchall()
        recent = conn.execute(
            "SELECT uid, month, recent_days, recent_requests, recent_duration FROM generation_user_metrics_monthly"
            " ORDER BY uid, month"
        ).fetchall()
        overall_days = conn.execute(
            "SELECT day, total_requests, successful_generations, failed_generations, duration_count, duration_sum,"
            " unique_users, user_bitmap FROM generation_metrics_daily"
        ).fetchall()
        hour_set = conn.execute("SELECT user_bitmap FROM generation_metrics_hourly").fetchone()
        error_set = conn.execute("SELECT user_bitmap FROM generation_error_metrics_hourly").fetchone()
    u1, u2 = uids[U1], uids[U2]
    # Running totals restart with the month; the monthly rows sum each user's month.
    assert hourly == [
        (u1, october, 1, 1, 1, 0, 0, 0),
        (u1, november, 1, 1, 0, 1, 0, 100),
        (u2, november, 1, 1, 0, 0, 1, 300),
    ]
    assert monthly == [
        (u1, october.date().replace(day=1), U1, 1, 1, 0, 0, october),
        (u1, november.date(), U1, 1, 0, 1, 0, november),
        (u2, november.date(), U2, 1, 0, 0, 1, november),
    ]
    # 0014: each user-month's active days, with the month-to-date figures before each (none: first days).
    assert recent == [
        (u1, october.date().replace(day=1), [october.date()], [0], [0]),
        (u1, november.date(), [november.date()], [0], [0]),
        (u2, november.date(), [november.date()], [0], [0]),
    ]
    # 0015's data step merges the hourly rows per UTC day, user sets as re-encoded by 0005's.
    assert [row[:7] for row in overall_days] == [(november.date(), 0, 1, 1, 2, 400, 2)]
    assert set(sketches.user_set([overall_days[0][7]])) == {u1, u2}
    assert hour_set and set(sketches.user_set([hour_set[0]])) == {u1, u2}
    assert error_set and set(sketches.user_set([error_set[0]])) == {u2}

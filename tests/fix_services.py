"""Real Postgres and Redis for tests: the local servers named by the environment, else embedded ones.

Each test gets its own database (copied from a migrated template) and its own Redis key namespace,
both removed afterwards, so tests never see each other's data.
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import psycopg_pool.base
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import make_conninfo

from generation_analytics.service.embedded import EmbeddedPostgres, EmbeddedRedis
from generation_analytics.service.migrate import migrate
from generation_analytics.service.settings import (
    PostgresSettings,
    RedisSettings,
    ScheduleSettings,
    Settings,
)
from generation_analytics.service.stream import StreamKeys

DEFAULT_TEST_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"


def _postgres_reachable(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def _redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(autouse=True)
def pools_off_the_global_random(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep connection pools off the global `random` state, in every test.

    psycopg_pool jitters the lifetime of every connection it opens with the global `random.random()`,
    in its own threads (in the background, from the start, and as a pool grows): when that lands while
    hypothesis draws, hypothesis sees the global state change under it and warns ("Do not use the
    random module inside strategies"), an error here. A generator of their own makes the pools' draws
    invisible to it. The service's own code never uses the global state (client and recorder jitter use
    SystemRandom).
    """
    monkeypatch.setattr(psycopg_pool.base, "random", random.Random().random)


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A DSN with the right to create databases: GA_TEST_POSTGRES_DSN, the local server, or embedded."""
    dsn = os.environ.get("GA_TEST_POSTGRES_DSN", DEFAULT_TEST_POSTGRES_DSN)
    if _postgres_reachable(dsn):
        yield dsn
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    try:
        yield server.dsn
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """GA_TEST_REDIS_URL, the local server, or an embedded redis-server."""
    url = os.environ.get("GA_TEST_REDIS_URL", DEFAULT_TEST_REDIS_URL)
    if _redis_reachable(url):
        yield url
        return
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template:
            query = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
        conn.execute(query)
        if template:
            # Per-database settings (the migration's timezone) are not copied from a template.
            conn.execute(sql.SQL("ALTER DATABASE {} SET timezone TO 'UTC'").format(sql.Identifier(name)))
    return make_conninfo(admin_dsn, dbname=name)


def empty_tables(dsn: str) -> None:
    """Remove every row of every table but the migration ledger (for tests that reuse a database)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [row[0] for row in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'schema_migrations'"
        ).fetchall()]  # fmt: skip
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(map(sql.Identifier, tables))))


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(pg_admin_dsn: str) -> Iterator[str]:
    """A migrated database that per-test databases are copied from (much faster than migrating each)."""
    name = f"ga_template_{uuid.uuid4().hex[:12]}"
    dsn = create_database(pg_admin_dsn, name)
    migrate(dsn)
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        drop_database(pg_admin_dsn, name)


@pytest.fixture
def db_dsn(pg_admin_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh, migrated database of this test's own."""
    name = f"ga_test_{uuid.uuid4().hex[:12]}"
    dsn = create_database(pg_admin_dsn, name, template=template_db)
    try:
        yield dsn
    finally:
        drop_database(pg_admin_dsn, name)


@pytest.fixture
def empty_db_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = f"ga_empty_{uuid.uuid4().hex[:12]}"
    dsn = create_database(pg_admin_dsn, name)
    try:
        yield dsn
    finally:
        drop_database(pg_admin_dsn, name)


@pytest.fixture
def namespace(redis_url: str) -> Iterator[str]:
    """A Redis key namespace of this test's own; its keys are deleted afterwards."""
    ns = f"ga_test_{uuid.uuid4().hex[:12]}"
    yield ns
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=StreamKeys(ns).pattern, count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def settings(db_dsn: str, redis_url: str, namespace: str) -> Settings:
    """Settings pointing at this test's database and namespace, with the scheduler off.

    Tests drive transfer and aggregation themselves so that what they assert is deterministic.
    """
    return replace(
        Settings(),
        postgres=PostgresSettings(dsn=db_dsn, pool_max_size=4),
        redis=RedisSettings(url=redis_url, namespace=namespace),
        schedule=ScheduleSettings(enabled=False),
    )

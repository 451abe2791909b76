"""Postgres connection pools: async for the read path, sync for the pipeline threads. Always UTC."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from generation_analytics.service.settings import PostgresSettings

# Every session works in UTC whatever the server's default, so date_trunc/DATE() agree with the API.
# No JIT: our statements are short, and a high cost estimate (a transfer batch's fallback lookup, say)
# made Postgres spend ~260 ms compiling a statement that runs in 90 ms.
_CONNECT_KWARGS: dict[str, Any] = {"options": "-c TimeZone=UTC -c jit=off", "autocommit": False}


# Read-path sessions may sort and hash more in memory than Postgres' 4 MB default: ranking 50,000
# checkpoints spilled to disk three times and took 230 ms (bench.wide_keys). Per sort/hash node, so a
# pool of 8 stays far below the machine's memory.
_QUERY_OPTIONS = f"{_CONNECT_KWARGS['options']} -c work_mem=32MB"


def connect(settings: PostgresSettings, **kwargs: Any) -> psycopg.Connection[Any]:
    """One connection outside any pool (migrations, tools, tests)."""
    return psycopg.connect(
        settings.dsn, connect_timeout=int(settings.connect_timeout_s), **{**_CONNECT_KWARGS, **kwargs}
    )


def sync_pool(settings: PostgresSettings, *, name: str, max_size: int | None = None) -> ConnectionPool:
    """A pool for the pipeline's worker threads. Opening does not wait for Postgres to be up."""
    pool = ConnectionPool(
        settings.dsn,
        min_size=1,
        max_size=max_size or settings.pool_max_size,
        kwargs={**_CONNECT_KWARGS, "connect_timeout": int(settings.connect_timeout_s)},
        timeout=settings.connect_timeout_s,
        name=name,
        open=False,
    )
    pool.open(wait=False)
    return pool


async def async_pool(settings: PostgresSettings, *, name: str, dsn: str = "") -> AsyncConnectionPool:
    """A pool for the asyncio read path (queries, status) on `dsn` (default: the primary's). Opening does
    not wait for Postgres to be up."""
    pool = AsyncConnectionPool(
        dsn or settings.dsn,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        kwargs={
            **_CONNECT_KWARGS,
            "options": _QUERY_OPTIONS,
            "autocommit": True,
            "connect_timeout": int(settings.connect_timeout_s),
        },
        timeout=settings.connect_timeout_s,
        name=name,
        open=False,
    )
    await pool.open(wait=False)
    return pool

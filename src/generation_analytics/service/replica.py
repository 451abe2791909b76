"""Where query connections come from: a streaming read replica when one is configured and answers, else
the primary.

A dead replica makes queries fall back to the primary rather than answer UNAVAILABLE: the primary holds
the same rows, only fresher, so its answer is never wrong; the cost is the query load the replica was
there to take. A replica that fails is left alone and probed in the background every `retry_s`, so a
query never waits on a dead replica (only the queries in flight when it dies are rerun on the primary).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)

T = TypeVar("T")
Query = Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]

# The replica canceled the query to replay WAL that conflicts with it (SQLSTATE 40001): the replica is
# fine, this one query is rerun on the primary.
RECOVERY_CONFLICT = (psycopg.errors.SerializationFailure,)


def replica_failed(exc: BaseException) -> bool:
    """The replica itself failed: connection lost or refused, shut down, or no connection within the
    pool's timeout (psycopg_pool.PoolTimeout is an OperationalError) -- not a query that was canceled."""
    return isinstance(exc, psycopg.OperationalError) and not isinstance(exc, psycopg.errors.QueryCanceled)


class ReadPools:
    """Query connections: from `replica` while it answers, from `primary` otherwise (or without one)."""

    def __init__(
        self,
        primary: AsyncConnectionPool,
        replica: AsyncConnectionPool | None = None,
        *,
        retry_s: float = 5.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._primary = primary
        self._replica = replica
        self._retry_s = retry_s
        self._connect_timeout_s = connect_timeout_s
        # Not trusted until a probe has reached it: a replica that is down at startup costs no query a wait.
        self._replica_up = False
        self._probe: asyncio.Task[None] | None = None
        # Queries answered, by where: "replica" or "primary" (for /metrics and tests).
        self.served: Counter[str] = Counter()
        if replica is not None:
            self._start_probe(delay_s=0.0)

    @property
    def replica_up(self) -> bool | None:
        """Whether queries go to the replica now; None when no replica is configured."""
        return None if self._replica is None else self._replica_up

    async def run(self, query: Query[T]) -> T:
        """`query(conn)` on the replica if it is up, else (or if the replica fails under it) on the primary.

        Only failures of the replica rerun the query; an error of the query itself propagates.
        """
        if self._replica is not None and self._replica_up:
            try:
                async with self._replica.connection() as conn:
                    result = await query(conn)
            except RECOVERY_CONFLICT as exc:
                log.info("read replica canceled a query (%s); rerunning it on the primary", exc)
            except psycopg.OperationalError as exc:
                if not replica_failed(exc):
                    raise
                self._mark_down(exc)
            else:
                self.served["replica"] += 1
                return result
        async with self._primary.connection() as conn:
            result = await query(conn)
        self.served["primary"] += 1
        return result

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A connection for a streamed answer (export): it falls back only if the replica cannot give one,
        since rows already sent cannot be taken back."""
        if self._replica is not None and self._replica_up:
            try:
                conn = await self._replica.getconn()
            except psycopg.OperationalError as exc:
                self._mark_down(exc)
            else:
                try:
                    self.served["replica"] += 1
                    yield conn
                except psycopg.OperationalError as exc:
                    if replica_failed(exc):
                        self._mark_down(exc)
                    raise
                finally:
                    await self._replica.putconn(conn)
                return
        async with self._primary.connection() as conn:
            self.served["primary"] += 1
            yield conn

    def _mark_down(self, exc: BaseException) -> None:
        if self._replica_up:
            log.warning("read replica failed (%s); queries go to the primary until it answers again", exc)
        self._replica_up = False
        self._start_probe(delay_s=self._retry_s)

    def _start_probe(self, *, delay_s: float) -> None:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_for_replica(delay_s), name="replica-probe")

    async def _wait_for_replica(self, delay_s: float) -> None:
        """Probe the replica every `retry_s` until it answers, then send queries to it again."""
        assert self._replica is not None
        while True:
            await asyncio.sleep(delay_s)
            delay_s = self._retry_s
            try:
                await self._replica.check()  # drops pooled connections the outage broke
                async with self._replica.connection(timeout=self._connect_timeout_s) as conn:
                    await conn.execute("SELECT 1")
            except psycopg.Error as exc:
                log.debug("read replica still down: %s", exc)
                continue
            log.info("read replica answers; queries go to it again")
            self._replica_up = True
            return

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe
        if self._replica is not None:
            await self._replica.close()

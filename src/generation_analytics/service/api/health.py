"""Health per service: what each front end needs to answer, probed in the background.

Every `MONITOR_INTERVAL_S` the monitor PINGs Redis (through the runtime's client, with its short
timeout) and runs `SELECT 1` on the runtime's query pool, each within `PROBE_TIMEOUT_S`, and sets the
gRPC health status of each service from what it needs:

| service | NOT_SERVING while |
|---|---|
| `generation_analytics.v1.EventService` | Redis is unreachable (recording appends to the stream) |
| `generation_analytics.v1.AnalyticsService` | Postgres is unreachable (answers come from the rollups) |
| `generation_analytics.v1.PipelineService` | either is (transfer reads the stream and writes Postgres) |
| `generation_analytics.v1.AlertService` | Postgres is unreachable (rules, states and events live there) |
| `""` (the server as a whole) | either is |

Statuses change only on a transition, which is logged once (down with the reason, up again). The HTTP
gateway's `/readyz` answers from the same probes (`Readiness.as_json`), `/healthz` is liveness only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from grpc_health.v1 import health_pb2
from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.api.runtime import Runtime
from generation_analytics.service.stream import AsyncRedis
from generation_analytics.v1 import alerts_pb2, analytics_pb2, events_pb2, pipeline_pb2

log = logging.getLogger(__name__)

SELECT_ONE = "SELECT 1"
MONITOR_INTERVAL_S = 1.0
# Short: a probe that waits out a blackholed server must not delay the next one by much.
PROBE_TIMEOUT_S = 1.0
# Immediate failures retried within one probe (stale pooled connections after a restart).
STALE_RETRIES = 4

REDIS, POSTGRES = "redis", "postgres"
# gRPC service name ("" = the whole server) -> the dependencies it cannot answer without.
NEEDS: dict[str, tuple[str, ...]] = {
    "": (REDIS, POSTGRES),
    events_pb2.DESCRIPTOR.services_by_name["EventService"].full_name: (REDIS,),
    analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"].full_name: (POSTGRES,),
    pipeline_pb2.DESCRIPTOR.services_by_name["PipelineService"].full_name: (REDIS, POSTGRES),
    alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name: (POSTGRES,),
}
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass(frozen=True)
class Readiness:
    """What one probe found: per dependency, None when reachable, else why not (for the log only)."""

    redis_error: str | None = None
    postgres_error: str | None = None

    def up(self, dependency: str) -> bool:
        return (self.redis_error if dependency == REDIS else self.postgres_error) is None

    @property
    def ready(self) -> bool:
        return self.redis_error is None and self.postgres_error is None

    def status(self, service: str) -> Any:
        """The gRPC health status of `service` (a name in NEEDS)."""
        return SERVING if all(self.up(need) for need in NEEDS[service]) else NOT_SERVING

    def as_json(self) -> dict[str, str]:
        """The `/readyz` body. Errors are left out: the path is open to anyone who can reach it."""
        return {
            "status": "SERVING" if self.ready else "NOT_SERVING",
            REDIS: "up" if self.up(REDIS) else "down",
            POSTGRES: "up" if self.up(POSTGRES) else "down",
        }


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _attempts(attempt: Callable[[float], Awaitable[object]], timeout_s: float) -> str | None:
    """None if `attempt` succeeds within `timeout_s`, else the last reason.

    A failure that comes at once is retried (a few times, within the time): after a restart the
    clients' pools still hold connections to the old server, each failing once before it is
    replaced, and one of those must not read as "down". A failure that took the whole time does not.
    """
    deadline = time.monotonic() + timeout_s
    reason = "timed out"
    for _ in range(STALE_RETRIES + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            async with asyncio.timeout(left):
                await attempt(left)
            return None
        except Exception as exc:  # whatever the failure, the answer is "down" (and why, for the log)
            reason = _reason(exc)
    return reason


async def redis_error(client: AsyncRedis, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if Redis answers PING within `timeout_s`, else the reason."""
    return await _attempts(lambda _left: client.ping(), timeout_s)


async def postgres_error(pool: AsyncConnectionPool, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """None if the pool runs `SELECT 1` within `timeout_s`, else the reason.

    Through the query pool on purpose: readiness means "queries can be answered", and a broken
    connection found here is discarded by the pool rather than by the next query.
    """

    async def select_one(left: float) -> None:
        async with pool.connection(timeout=left) as conn:
            await conn.execute(SELECT_ONE)

    return await _attempts(select_one, timeout_s)


async def probe(runtime: Runtime, timeout_s: float = PROBE_TIMEOUT_S) -> Readiness:
    """Both dependencies at once, so a probe takes at most `timeout_s`."""
    redis_down, postgres_down = await asyncio.gather(
        redis_error(runtime.redis, timeout_s), postgres_error(runtime.pool, timeout_s)
    )
    return Readiness(redis_error=redis_down, postgres_error=postgres_down)


class ReadinessProbe:
    """`probe` for a path anyone may call: callers arriving while a probe runs share it, so a flood
    of /readyz holds at most one pooled connection and one Redis command at a time."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._running: asyncio.Task[Readiness] | None = None

    async def check(self) -> Readiness:
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(probe(self._runtime))
        # shield: a caller that goes away must not cancel the probe the others wait for
        return await asyncio.shield(self._running)


class HealthMonitor:
    """Keeps the gRPC health statuses in step with Redis and Postgres (see the module docstring)."""

    def __init__(self, runtime: Runtime, servicer: Any, *, interval_s: float = MONITOR_INTERVAL_S) -> None:
        self._runtime = runtime
        self._servicer = servicer
        self._interval_s = interval_s
        self._current: Readiness | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def readiness(self) -> Readiness | None:
        """The last probe's finding (None before the first)."""
        return self._current

    async def update(self) -> Readiness:
        """Probe once and publish what changed."""
        readiness = await probe(self._runtime)
        before = self._current
        for dependency, error in ((REDIS, readiness.redis_error), (POSTGRES, readiness.postgres_error)):
            was_up = before is None or before.up(dependency)
            if error is not None and was_up:
                log.warning("health: %s unreachable (%s); dependent services NOT_SERVING", dependency, error)
            elif error is None and not was_up:
                log.info("health: %s reachable again", dependency)
        for service in NEEDS:
            status = readiness.status(service)
            if before is None or before.status(service) != status:
                await self._servicer.set(service, status)
        self._current = readiness
        return readiness

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-monitor")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.update()
            except Exception:  # never let the monitor die: statuses would freeze as they are
                log.exception("health: probe failed")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

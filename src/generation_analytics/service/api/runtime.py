"""The composition root: opens and closes everything one server process shares (clients, pools, the
pipeline stages), handing each component the settings it needs."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.api.auth import KeyCache, auth_enabled
from generation_analytics.service.db import async_pool
from generation_analytics.service.ingest.capture import EventCapture
from generation_analytics.service.metrics import ServiceMetrics
from generation_analytics.service.migrate import migrate
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.queries.service import AnalyticsQueries
from generation_analytics.service.replica import ReadPools
from generation_analytics.service.settings import Settings
from generation_analytics.service.stream import AsyncRedis, StreamKeys, connect_redis

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The shared objects of one server process."""

    settings: Settings
    keys: StreamKeys
    redis: AsyncRedis
    capture: EventCapture
    pool: AsyncConnectionPool
    pipeline: Pipeline
    queries: AnalyticsQueries
    metrics: ServiceMetrics
    # The API keys' in-memory copy when keys are required (auth on), else None.
    api_keys: KeyCache | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @staticmethod
    def listeners(settings: Settings) -> list[str]:
        http = settings.server.http_addr
        return [settings.server.listen_addr, *([http] if http.lower() != "off" else [])]

    @classmethod
    async def open(cls, settings: Settings, *, run_migrations: bool = True) -> Runtime:
        """Connect to Redis/Postgres named by `settings` (which must be complete: see `start_embedded`)."""
        if run_migrations:
            applied = migrate(settings.postgres.dsn)
            if applied:
                log.info("applied migrations %s", applied)
        keys = StreamKeys.of(settings.redis)
        redis_client = connect_redis(
            settings.redis.url, timeout_s=settings.redis.socket_timeout_s, cluster=settings.redis.cluster
        )
        capture = EventCapture(redis=settings.redis, keys=keys, limits=settings.limits, retention=settings.retention)
        pool = await async_pool(settings.postgres, name="queries")
        replica = settings.postgres.read_dsn
        reads = ReadPools(
            pool,
            await async_pool(settings.postgres, name="replica", dsn=replica) if replica else None,
            retry_s=settings.postgres.replica_retry_s,
            connect_timeout_s=settings.postgres.connect_timeout_s,
        )
        metrics = ServiceMetrics()
        metrics.watch_reads(reads)
        pipeline = Pipeline.of(settings, observe=metrics.observe_job)
        if settings.schedule.enabled:
            pipeline.start_schedule()
        queries = AnalyticsQueries(
            pool=pool, reads=reads, redis_client=redis_client, keys=keys, prices=settings.prices.table
        )
        runtime = cls(
            settings=settings,
            keys=keys,
            redis=redis_client,
            capture=capture,
            pool=pool,
            pipeline=pipeline,
            queries=queries,
            metrics=metrics,
        )
        if auth_enabled(settings.auth, cls.listeners(settings)):
            runtime.api_keys = KeyCache(pool, refresh_s=settings.auth.cache_s)
            try:
                await runtime.api_keys.reload()
            except Exception as exc:  # Postgres not up yet: the reload loop catches up
                log.warning("could not load API keys yet: %s", exc)
            runtime._tasks.append(asyncio.create_task(runtime.api_keys.run(), name="api-keys"))
        return runtime

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.capture.close()
        await asyncio.to_thread(self.pipeline.close)
        await self.queries.reads.close()
        await self.pool.close()
        await self.redis.aclose()

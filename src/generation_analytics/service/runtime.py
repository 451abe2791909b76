"""Opens and closes everything one server process shares: clients, pools and the pipeline stages."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.capture import EventCapture, connect_redis
from generation_analytics.service.db import async_pool
from generation_analytics.service.embedded import EmbeddedPostgres, EmbeddedRedis
from generation_analytics.service.keys import StreamKeys
from generation_analytics.service.metrics import ServiceMetrics
from generation_analytics.service.migrate import migrate
from generation_analytics.service.pipeline import Pipeline
from generation_analytics.service.queries import AnalyticsQueries
from generation_analytics.service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Embedded:
    """The embedded servers started for settings that name no Postgres / Redis."""

    postgres: EmbeddedPostgres | None = None
    redis: EmbeddedRedis | None = None

    def stop(self) -> None:
        if self.redis:
            self.redis.stop()
        if self.postgres:
            self.postgres.stop()


def start_embedded(settings: Settings) -> tuple[Settings, Embedded]:
    """Start an embedded Postgres and/or Redis for whatever `settings` leaves unconfigured.

    Returns settings that point at them, and a handle to stop them.
    """
    embedded = Embedded()
    if not settings.postgres.dsn:
        embedded.postgres = EmbeddedPostgres(settings.data_dir / "postgres")
        embedded.postgres.start()
        settings = replace(settings, postgres=replace(settings.postgres, dsn=embedded.postgres.dsn))
    if not settings.redis.url:
        embedded.redis = EmbeddedRedis(settings.data_dir / "redis")
        embedded.redis.start()
        settings = replace(settings, redis=replace(settings.redis, url=embedded.redis.url))
    return settings, embedded


@dataclass
class Runtime:
    """The shared objects of one server process."""

    settings: Settings
    keys: StreamKeys
    redis: aioredis.Redis
    capture: EventCapture
    pool: AsyncConnectionPool
    pipeline: Pipeline
    queries: AnalyticsQueries
    metrics: ServiceMetrics

    @classmethod
    async def open(cls, settings: Settings, *, run_migrations: bool = True) -> Runtime:
        """Connect to Redis/Postgres named by `settings` (which must be complete: see `start_embedded`)."""
        if run_migrations:
            applied = migrate(settings.postgres.dsn)
            if applied:
                log.info("applied migrations %s", applied)
        keys = StreamKeys(settings.redis.namespace)
        redis_client = connect_redis(settings.redis.url, timeout_s=settings.redis.socket_timeout_s)
        capture = EventCapture(
            redis_url=settings.redis.url,
            keys=keys,
            limits=settings.limits,
            retention_days=settings.pipeline.retention_days,
            timeout_s=settings.redis.socket_timeout_s,
        )
        pool = await async_pool(settings.postgres, name="queries")
        metrics = ServiceMetrics()
        pipeline = Pipeline(settings, observe=metrics.observe_job)
        if settings.pipeline.scheduler_enabled:
            pipeline.start_schedule()
        queries = AnalyticsQueries(pool=pool, redis_client=redis_client, keys=keys)
        return cls(
            settings=settings,
            keys=keys,
            redis=redis_client,
            capture=capture,
            pool=pool,
            pipeline=pipeline,
            queries=queries,
            metrics=metrics,
        )

    async def close(self) -> None:
        await self.capture.close()
        await asyncio.to_thread(self.pipeline.close)
        await self.pool.close()
        await self.redis.aclose()

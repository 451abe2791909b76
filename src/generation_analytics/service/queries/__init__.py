"""The read path: every AnalyticsService question, answered from the rollups (raw rows only for lists).

`AnalyticsQueries` is the one entry point the gRPC servicer and the HTTP gateway share: it checks the
parameters (INVALID_ARGUMENT naming the field), applies each RPC's default window and runs the query.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
import redis.exceptions
from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.keys import StreamKeys
from generation_analytics.service.queries.events import EventFilter, EventPage, list_events
from generation_analytics.service.queries.failures import FailureAnalysis, failure_analysis
from generation_analytics.service.queries.models import ModelPerformanceReport, model_performance
from generation_analytics.service.queries.overview import Overview, PeakHours, Trends, overview, peak_hours, trends
from generation_analytics.service.queries.users import TopUsers, UserAnalytics, top_users, user_analytics
from generation_analytics.service.queries.window import bounded, text_filter, user_uuid, window
from generation_analytics.service.status import stream_backlog

log = logging.getLogger(__name__)

DEFAULT_DAYS = {
    "overview": 7,
    "trends": 7,
    "user": 30,
    "models": 30,
    "failures": 7,
    "peak_hours": 30,
    "events": 7,
    "top_users": 30,
}
INTERVALS = ("hourly", "daily")
EVENT_TYPES = ("request", "completion", "cancellation")
ORDERS = ("newest", "slowest")
MAX_PAGE_SIZE = 1_000
MAX_TOP_USERS = 1_000


class AnalyticsQueries:
    """Answers the analytics questions from Postgres (and the stream backlog from Redis)."""

    def __init__(self, *, pool: AsyncConnectionPool, redis_client: aioredis.Redis, keys: StreamKeys) -> None:
        self._pool = pool
        self._redis = redis_client
        self._keys = keys

    async def pending_events(self) -> int:
        """Events accepted but not yet in Postgres; -1 when Redis cannot be asked."""
        try:
            return await stream_backlog(self._redis, self._keys)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("cannot read the stream backlog: %s", exc)
            return -1

    async def overview(self, *, days: int | None = None) -> Overview:
        w = window(days, default=DEFAULT_DAYS["overview"])
        pending = await self.pending_events()
        async with self._pool.connection() as conn:
            return await overview(conn, w, pending_events=pending)

    async def trends(self, *, days: int | None = None, interval: str = "hourly") -> Trends:
        w = window(days, default=DEFAULT_DAYS["trends"])
        if interval not in INTERVALS:
            raise InvalidArgument("interval", f"must be one of {', '.join(INTERVALS)}")
        async with self._pool.connection() as conn:
            return await trends(conn, w, interval=interval)

    async def user(self, user_id: str, *, days: int | None = None) -> UserAnalytics:
        uid = user_uuid(user_id)
        w = window(days, default=DEFAULT_DAYS["user"])
        async with self._pool.connection() as conn:
            return await user_analytics(conn, uid, w)

    async def models(self, *, days: int | None = None) -> ModelPerformanceReport:
        w = window(days, default=DEFAULT_DAYS["models"])
        async with self._pool.connection() as conn:
            return await model_performance(conn, w)

    async def failures(self, *, days: int | None = None) -> FailureAnalysis:
        w = window(days, default=DEFAULT_DAYS["failures"])
        async with self._pool.connection() as conn:
            return await failure_analysis(conn, w)

    async def peak_hours(self, *, days: int | None = None) -> PeakHours:
        w = window(days, default=DEFAULT_DAYS["peak_hours"])
        async with self._pool.connection() as conn:
            return await peak_hours(conn, w)

    async def events(
        self,
        *,
        days: int | None = None,
        user_id: str = "",
        model_checkpoint: str = "",
        event_type: str = "",
        success: bool | None = None,
        error_type: str = "",
        min_duration_ms: int | None = None,
        order: str = "newest",
        page_size: int | None = None,
        page_token: str = "",
    ) -> EventPage:
        w = window(days, default=DEFAULT_DAYS["events"])
        if event_type and event_type not in EVENT_TYPES:
            raise InvalidArgument("event_type", f"must be one of {', '.join(EVENT_TYPES)}")
        if order not in ORDERS:
            raise InvalidArgument("order", f"must be one of {', '.join(ORDERS)}")
        if min_duration_ms is not None and min_duration_ms < 0:
            raise InvalidArgument("min_duration_ms", "must not be negative")
        size = bounded(page_size or None, default=50, low=1, high=MAX_PAGE_SIZE, field="page_size")
        filters = EventFilter(
            user_id=user_uuid(user_id) if user_id else None,
            model_checkpoint=text_filter(model_checkpoint, "model_checkpoint"),
            event_type=event_type or None,
            success=success,
            error_type=text_filter(error_type, "error_type"),
            min_duration_ms=min_duration_ms,
            order=order,
        )
        async with self._pool.connection() as conn:
            return await list_events(conn, w, filters, page_size=size, page_token=page_token)

    async def top_users(self, *, days: int | None = None, limit: int | None = None) -> TopUsers:
        w = window(days, default=DEFAULT_DAYS["top_users"])
        n = bounded(limit, default=20, low=1, high=MAX_TOP_USERS, field="limit")
        async with self._pool.connection() as conn:
            return await top_users(conn, w, limit=n)

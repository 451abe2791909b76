"""`AnalyticsQueries`: the one entry point of the read path, shared by the gRPC servicer and the gateway.

It takes the typed questions of `generation_analytics.questions`, checks what types cannot (ranges, UUIDs,
text filters: INVALID_ARGUMENT naming the field), applies each question's default window and runs its
query module. `ANSWERS` pairs each question with its method and result type (the contract test walks it).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import redis.exceptions
from psycopg_pool import AsyncConnectionPool

from generation_analytics.questions import (
    CheckpointsQuestion,
    ErrorGroupsQuestion,
    EventFilters,
    EventsQuestion,
    ExportQuestion,
    FailuresQuestion,
    ModelsQuestion,
    OverviewQuestion,
    PeakHoursQuestion,
    Question,
    TopUsersQuestion,
    TrendsQuestion,
    UserQuestion,
)
from generation_analytics.service.errors import InvalidArgument
from generation_analytics.service.queries.compare import CheckpointComparison, checkpoint_name, compare_checkpoints
from generation_analytics.service.queries.error_groups import ErrorGroupPage, list_error_groups
from generation_analytics.service.queries.events import EventPage, EventRecord, export_events, list_events
from generation_analytics.service.queries.failures import FailureAnalysis, failure_analysis
from generation_analytics.service.queries.models import ModelPerformanceReport, model_performance
from generation_analytics.service.queries.overview import Overview, PeakHours, Trends, overview, peak_hours, trends
from generation_analytics.service.queries.page_tokens import PageTokens, shared_token_secret
from generation_analytics.service.queries.status import stream_backlog
from generation_analytics.service.queries.totals import LIST_LIMIT, MAX_LIST_LIMIT
from generation_analytics.service.queries.users import TopUsers, UserAnalytics, top_users, user_analytics
from generation_analytics.service.queries.window import Window, bounded, text_filter, user_uuid, window
from generation_analytics.service.replica import ReadPools
from generation_analytics.service.settings import GpuPrices
from generation_analytics.service.stream import AsyncRedis, StreamKeys

log = logging.getLogger(__name__)

MAX_PAGE_SIZE = 1_000
MAX_TOP_USERS = 1_000


def list_limit(limit: int | None) -> int:
    """How long an answer's lists may be (the `limit` of the question, checked)."""
    return bounded(limit, default=LIST_LIMIT, low=1, high=MAX_LIST_LIMIT, field="limit")


def page_size(size: int | None) -> int:
    """How many entries a page holds (the `page_size` of the question, 0 or unset: 50)."""
    return bounded(size or None, default=50, low=1, high=MAX_PAGE_SIZE, field="page_size")


def question_window(question: Question) -> Window:
    return window(question.days, default=question.DEFAULT_DAYS, asked=question)


F = TypeVar("F", bound=EventFilters)


def checked_filters(question: F) -> F:
    """The raw-event filters of ListEvents and ExportEvents, checked (INVALID_ARGUMENT naming the field)
    and normalised (the user's UUID in canonical form)."""
    if question.min_duration_ms is not None and question.min_duration_ms < 0:
        raise InvalidArgument("min_duration_ms", "must not be negative")
    return replace(
        question,
        user_id=user_uuid(question.user_id) if question.user_id else "",
        model_checkpoint=text_filter(question.model_checkpoint, "model_checkpoint") or "",
        error_type=text_filter(question.error_type, "error_type") or "",
    )


@dataclass
class EventBatch:
    """One message of ExportEvents."""

    events: list[EventRecord]


class AnalyticsQueries:
    """Answers the analytics questions from Postgres (and the stream backlog from Redis)."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool,
        reads: ReadPools | None = None,
        redis_client: AsyncRedis,
        keys: StreamKeys,
        token_secret: bytes = b"",
        prices: GpuPrices | None = None,
    ) -> None:
        self._pool = pool
        # Where the questions are answered (a read replica when one answers); `pool` is the primary's.
        self.reads = reads or ReadPools(pool)
        self.prices = prices or GpuPrices()
        self._redis = redis_client
        self._keys = keys
        self._tokens = PageTokens(token_secret) if token_secret else None

    async def _page_tokens(self) -> PageTokens:
        """Page tokens signed with the secret the replicas share (loaded, or created, on first use)."""
        if self._tokens is None:
            async with self._pool.connection() as conn:
                self._tokens = PageTokens(await shared_token_secret(conn))
        return self._tokens

    async def answer(self, question: Question) -> Any:
        """The answer to any question (dispatched on its type)."""
        method, _ = ANSWERS[type(question)]
        return await method(self, question)

    async def pending_events(self) -> int:
        """Events accepted but not yet in Postgres; -1 when Redis cannot be asked."""
        try:
            return await stream_backlog(self._redis, self._keys)
        except (redis.exceptions.RedisError, OSError) as exc:
            log.warning("cannot read the stream backlog: %s", exc)
            return -1

    async def overview(self, question: OverviewQuestion) -> Overview:
        w = question_window(question)
        pending = await self.pending_events()
        return await self.reads.run(lambda conn: overview(conn, w, pending_events=pending, prices=self.prices))

    async def trends(self, question: TrendsQuestion) -> Trends:
        w = question_window(question)
        return await self.reads.run(lambda conn: trends(conn, w, interval=question.interval))

    async def user(self, question: UserQuestion) -> UserAnalytics:
        user_id = user_uuid(question.user_id)
        w = question_window(question)
        limit = list_limit(question.limit)
        return await self.reads.run(lambda conn: user_analytics(conn, user_id, w, limit=limit, prices=self.prices))

    async def models(self, question: ModelsQuestion) -> ModelPerformanceReport:
        w = question_window(question)
        limit = list_limit(question.limit)
        return await self.reads.run(lambda conn: model_performance(conn, w, limit=limit, prices=self.prices))

    async def failures(self, question: FailuresQuestion) -> FailureAnalysis:
        w = question_window(question)
        limit = list_limit(question.limit)
        return await self.reads.run(lambda conn: failure_analysis(conn, w, limit=limit))

    async def peak_hours(self, question: PeakHoursQuestion) -> PeakHours:
        w = question_window(question)
        return await self.reads.run(lambda conn: peak_hours(conn, w))

    async def events(self, question: EventsQuestion) -> EventPage:
        w = question_window(question)
        filters = checked_filters(question)
        size = page_size(question.page_size)
        tokens = await self._page_tokens()
        return await self.reads.run(lambda conn: list_events(conn, w, filters, page_size=size, tokens=tokens))

    async def top_users(self, question: TopUsersQuestion) -> TopUsers:
        w = question_window(question)
        n = bounded(question.limit, default=20, low=1, high=MAX_TOP_USERS, field="limit")
        return await self.reads.run(lambda conn: top_users(conn, w, limit=n, order=question.order))

    async def compare_checkpoints(self, question: CheckpointsQuestion) -> CheckpointComparison:
        a = checkpoint_name(question.model_checkpoint_a, "model_checkpoint_a")
        b = checkpoint_name(question.model_checkpoint_b, "model_checkpoint_b")
        w = question_window(question)
        return await self.reads.run(lambda conn: compare_checkpoints(conn, w, a, b, prices=self.prices))

    async def export(self, question: ExportQuestion) -> AsyncGenerator[EventBatch, None]:
        """The batches of ExportEvents. The filters are checked here, before anything is read, so a bad
        one fails the call before its first message; the batches are read as they are consumed."""
        w = question_window(question)
        filters = checked_filters(question)

        async def batches() -> AsyncGenerator[EventBatch, None]:
            # Closed inner first: the cursor and its transaction end before the connection goes back.
            async with self.reads.connection() as conn, contextlib.aclosing(export_events(conn, w, filters)) as rows:
                async for batch in rows:
                    yield EventBatch(events=batch)

        return batches()

    async def error_groups(self, question: ErrorGroupsQuestion) -> ErrorGroupPage:
        w = question_window(question)
        size = page_size(question.page_size)
        filters = replace(
            question,
            model_checkpoint=text_filter(question.model_checkpoint, "model_checkpoint") or "",
            error_type=text_filter(question.error_type, "error_type") or "",
        )
        tokens = await self._page_tokens()
        return await self.reads.run(lambda conn: list_error_groups(conn, w, filters, page_size=size, tokens=tokens))


Answer = Callable[[AnalyticsQueries, Any], Awaitable[Any]]
# Each question: the method that answers it, and the type of its answer (a dataclass whose fields are
# the response message's: see api/convert.py and tests/test_contract.py).
ANSWERS: dict[type[Question], tuple[Answer, type]] = {
    OverviewQuestion: (AnalyticsQueries.overview, Overview),
    TrendsQuestion: (AnalyticsQueries.trends, Trends),
    UserQuestion: (AnalyticsQueries.user, UserAnalytics),
    ModelsQuestion: (AnalyticsQueries.models, ModelPerformanceReport),
    FailuresQuestion: (AnalyticsQueries.failures, FailureAnalysis),
    PeakHoursQuestion: (AnalyticsQueries.peak_hours, PeakHours),
    EventsQuestion: (AnalyticsQueries.events, EventPage),
    TopUsersQuestion: (AnalyticsQueries.top_users, TopUsers),
    CheckpointsQuestion: (AnalyticsQueries.compare_checkpoints, CheckpointComparison),
    ErrorGroupsQuestion: (AnalyticsQueries.error_groups, ErrorGroupPage),
    # A stream: the answer is an async iterator of EventBatch (the servicer and the gateway stream it).
    ExportQuestion: (AnalyticsQueries.export, EventBatch),
}

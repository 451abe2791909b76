"""gRPC servicers: thin adapters from protobuf requests to the service's modules, and back.

Errors become gRPC status codes here and nowhere else (`STATUS_BY_ERROR`); an INVALID_ARGUMENT
also carries the offending field in the `ga-field` trailing metadata so clients need not parse text.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import grpc
import psycopg
import psycopg_pool
import redis.asyncio as aioredis
import redis.exceptions
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from psycopg_pool import AsyncConnectionPool

from generation_analytics.service.capture import EventCapture
from generation_analytics.service.codec import EVENT_TYPE_NAMES
from generation_analytics.service.convert import from_timestamp, pipeline_status_message, to_message
from generation_analytics.service.errors import (
    AnalyticsError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from generation_analytics.service.keys import StreamKeys
from generation_analytics.service.metrics import ServiceMetrics
from generation_analytics.service.pipeline import Pipeline
from generation_analytics.service.queries import AnalyticsQueries
from generation_analytics.service.status import pipeline_status
from generation_analytics.v1 import (
    analytics_pb2,
    analytics_pb2_grpc,
    events_pb2,
    events_pb2_grpc,
    pipeline_pb2,
    pipeline_pb2_grpc,
)

log = logging.getLogger(__name__)

FIELD_METADATA_KEY = "ga-field"

STATUS_BY_ERROR: dict[type[BaseException], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    # A dependency that is down is the caller's cue to retry, not a server bug.
    psycopg.OperationalError: grpc.StatusCode.UNAVAILABLE,
    psycopg_pool.PoolTimeout: grpc.StatusCode.UNAVAILABLE,
    redis.exceptions.ConnectionError: grpc.StatusCode.UNAVAILABLE,
    redis.exceptions.TimeoutError: grpc.StatusCode.UNAVAILABLE,
}

Context = grpc.aio.ServicerContext[Any, Any]
Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, Context], Awaitable[Response]]


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes are not the expected message (see `lenient_deserializer`)."""

    message: str
    reason: str


def lenient_deserializer(message_cls: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    """A request deserializer that never raises: grpc would answer INTERNAL; we answer INVALID_ARGUMENT."""

    def deserialize(data: bytes) -> Message | Undecodable:
        try:
            return message_cls.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Undecodable(message_cls.DESCRIPTOR.name, str(exc) or type(exc).__name__)

    return deserialize


def add_service(server: grpc.aio.Server, servicer: object, service: ServiceDescriptor) -> None:
    """Register `servicer`'s methods for `service`, decoding requests with `lenient_deserializer`."""
    handlers = {}
    for method in service.methods:
        request_cls = GetMessageClass(method.input_type)
        response_cls = GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=lenient_deserializer(request_cls),
            response_serializer=response_cls.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code an exception maps to (INTERNAL for anything unexpected)."""
    for cls in type(exc).__mro__:
        code = STATUS_BY_ERROR.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def grpc_errors(method: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn the service's exceptions into gRPC statuses for one servicer method."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            if isinstance(request, Undecodable):
                raise InvalidArgument("request", f"not a valid {request.message}: {request.reason}")
            return await method(self, request, context)
        except (AnalyticsError, psycopg.Error, psycopg_pool.PoolTimeout, redis.exceptions.RedisError) as exc:
            code = status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
            metadata = ((FIELD_METADATA_KEY, exc.field),) if isinstance(exc, InvalidArgument) else ()
            await context.abort(code, str(exc), metadata)
            raise  # unreachable: abort raises
        except Exception:
            code = grpc.StatusCode.INTERNAL
            raise
        finally:
            metrics: ServiceMetrics | None = getattr(self, "metrics", None)
            if metrics is not None:
                metrics.rpc_duration.labels(method.__name__, code.name).observe(time.perf_counter() - started)

    return wrapper


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """EventService: the write path."""

    def __init__(self, capture: EventCapture, metrics: ServiceMetrics | None = None) -> None:
        self._capture = capture
        self.metrics = metrics

    @grpc_errors
    async def RecordEvent(
        self, request: events_pb2.RecordEventRequest, context: Context
    ) -> events_pb2.RecordEventResponse:
        if not request.HasField("event"):
            raise InvalidArgument("event", "is required")
        try:
            event_id = await self._capture.record(request.event)
        except InvalidArgument as exc:
            if self.metrics:
                self.metrics.events_rejected.labels(exc.field.removeprefix("event.")).inc()
            raise
        if self.metrics:
            self.metrics.events_received.inc()
        return events_pb2.RecordEventResponse(event_id=event_id)

    @grpc_errors
    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: Context
    ) -> events_pb2.RecordEventsResponse:
        result = await self._capture.record_many(request.events)
        if self.metrics:
            self.metrics.events_received.inc(result.accepted_count)
            for _, field, _ in result.rejections:
                self.metrics.events_rejected.labels(field).inc()
        return events_pb2.RecordEventsResponse(
            accepted_count=result.accepted_count,
            event_ids=result.event_ids,
            rejections=[
                events_pb2.Rejection(index=index, field=field, reason=reason)
                for index, field, reason in result.rejections
            ],
        )


MAX_AGGREGATION_RANGE = timedelta(days=400)


class PipelineServicer(pipeline_pb2_grpc.PipelineServiceServicer):
    """PipelineService: the seed's monitoring queries and manual runs, as RPCs."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        redis_client: aioredis.Redis,
        pool: AsyncConnectionPool,
        keys: StreamKeys,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self._pipeline = pipeline
        self._redis = redis_client
        self._pool = pool
        self._keys = keys

    @grpc_errors
    async def GetPipelineStatus(
        self, request: pipeline_pb2.GetPipelineStatusRequest, context: Context
    ) -> pipeline_pb2.GetPipelineStatusResponse:
        status = await pipeline_status(self._redis, self._pool, self._keys)
        return pipeline_status_message(status)

    @grpc_errors
    async def RunTransfer(
        self, request: pipeline_pb2.RunTransferRequest, context: Context
    ) -> pipeline_pb2.RunTransferResponse:
        report = await asyncio.to_thread(self._pipeline.run_transfer)
        return pipeline_pb2.RunTransferResponse(
            read_entries=report.read_entries,
            inserted=report.inserted,
            duplicates=report.duplicates,
            dead_lettered=report.dead_lettered,
            reclaimed=report.reclaimed,
            batches=report.batches,
            duration_s=report.duration_s,
            remaining=report.remaining,
        )

    @grpc_errors
    async def RunAggregation(
        self, request: pipeline_pb2.RunAggregationRequest, context: Context
    ) -> pipeline_pb2.RunAggregationResponse:
        has_start, has_end = request.HasField("start_hour"), request.HasField("end_hour")
        if has_start != has_end:
            raise InvalidArgument(
                "end_hour" if has_start else "start_hour", "give both start_hour and end_hour, or neither"
            )
        start = from_timestamp(request.start_hour, "start_hour") if has_start else None
        end = from_timestamp(request.end_hour, "end_hour") if has_end else None
        if start is not None and end is not None:
            if end < start:
                raise InvalidArgument("end_hour", "must not be before start_hour")
            if end - start > MAX_AGGREGATION_RANGE:
                raise InvalidArgument("end_hour", f"range longer than {MAX_AGGREGATION_RANGE.days} days")
        report = await asyncio.to_thread(self._pipeline.run_aggregation, start, end)
        return pipeline_pb2.RunAggregationResponse(
            hours_aggregated=report.hours_aggregated,
            duration_s=report.duration_s,
            remaining_dirty_hours=report.remaining_dirty_hours,
            failed_hours=report.failed_hours,
        )


def _optional(request: Any, name: str) -> Any:
    return getattr(request, name) if request.HasField(name) else None


def _enum_name(value: int, names: Mapping[Any, str], field: str) -> str:
    try:
        return names[value]
    except KeyError:
        raise InvalidArgument(field, f"unknown value {value}") from None


INTERVAL_NAMES: dict[int, str] = {
    analytics_pb2.INTERVAL_UNSPECIFIED: "hourly",
    analytics_pb2.INTERVAL_HOURLY: "hourly",
    analytics_pb2.INTERVAL_DAILY: "daily",
}
ORDER_NAMES: dict[int, str] = {
    analytics_pb2.EVENT_ORDER_UNSPECIFIED: "newest",
    analytics_pb2.EVENT_ORDER_NEWEST: "newest",
    analytics_pb2.EVENT_ORDER_SLOWEST: "slowest",
}
EVENT_TYPE_FILTERS: dict[Any, str] = {events_pb2.EVENT_TYPE_UNSPECIFIED: "", **EVENT_TYPE_NAMES}


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    """AnalyticsService: requests to `AnalyticsQueries` arguments, results to messages."""

    def __init__(self, queries: AnalyticsQueries, metrics: ServiceMetrics | None = None) -> None:
        self._queries = queries
        self.metrics = metrics

    @grpc_errors
    async def GetOverview(
        self, request: analytics_pb2.GetOverviewRequest, context: Context
    ) -> analytics_pb2.GetOverviewResponse:
        result = await self._queries.overview(days=_optional(request, "days"))
        return to_message(result, analytics_pb2.GetOverviewResponse)

    @grpc_errors
    async def GetTrends(
        self, request: analytics_pb2.GetTrendsRequest, context: Context
    ) -> analytics_pb2.GetTrendsResponse:
        interval = _enum_name(request.interval, INTERVAL_NAMES, "interval")
        result = await self._queries.trends(days=_optional(request, "days"), interval=interval)
        return to_message(result, analytics_pb2.GetTrendsResponse)

    @grpc_errors
    async def GetUserAnalytics(
        self, request: analytics_pb2.GetUserAnalyticsRequest, context: Context
    ) -> analytics_pb2.GetUserAnalyticsResponse:
        result = await self._queries.user(request.user_id, days=_optional(request, "days"))
        return to_message(result, analytics_pb2.GetUserAnalyticsResponse)

    @grpc_errors
    async def GetModelPerformance(
        self, request: analytics_pb2.GetModelPerformanceRequest, context: Context
    ) -> analytics_pb2.GetModelPerformanceResponse:
        result = await self._queries.models(days=_optional(request, "days"))
        return to_message(result, analytics_pb2.GetModelPerformanceResponse)

    @grpc_errors
    async def GetFailureAnalysis(
        self, request: analytics_pb2.GetFailureAnalysisRequest, context: Context
    ) -> analytics_pb2.GetFailureAnalysisResponse:
        result = await self._queries.failures(days=_optional(request, "days"))
        return to_message(result, analytics_pb2.GetFailureAnalysisResponse)

    @grpc_errors
    async def GetPeakHours(
        self, request: analytics_pb2.GetPeakHoursRequest, context: Context
    ) -> analytics_pb2.GetPeakHoursResponse:
        result = await self._queries.peak_hours(days=_optional(request, "days"))
        return to_message(result, analytics_pb2.GetPeakHoursResponse)

    @grpc_errors
    async def ListEvents(
        self, request: analytics_pb2.ListEventsRequest, context: Context
    ) -> analytics_pb2.ListEventsResponse:
        page = await self._queries.events(
            days=_optional(request, "days"),
            user_id=request.user_id,
            model_checkpoint=request.model_checkpoint,
            event_type=_enum_name(request.event_type, EVENT_TYPE_FILTERS, "event_type"),
            success=_optional(request, "success"),
            error_type=request.error_type,
            min_duration_ms=_optional(request, "min_duration_ms"),
            order=_enum_name(request.order, ORDER_NAMES, "order"),
            page_size=request.page_size or None,
            page_token=request.page_token,
        )
        return to_message(page, analytics_pb2.ListEventsResponse)

    @grpc_errors
    async def ListTopUsers(
        self, request: analytics_pb2.ListTopUsersRequest, context: Context
    ) -> analytics_pb2.ListTopUsersResponse:
        result = await self._queries.top_users(days=_optional(request, "days"), limit=_optional(request, "limit"))
        return to_message(result, analytics_pb2.ListTopUsersResponse)

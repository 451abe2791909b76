"""gRPC servicers: thin adapters from protobuf requests to the service's modules, and back.

Errors become gRPC status codes here and nowhere else (`STATUS_BY_ERROR`); an INVALID_ARGUMENT
also carries the offending field in the `ga-field` trailing metadata so clients need not parse text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn, TypeVar

import grpc
import psycopg
import psycopg_pool
import redis.exceptions
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from psycopg_pool import AsyncConnectionPool

from generation_analytics.questions import QUESTIONS
from generation_analytics.service.api.convert import from_timestamp, pipeline_status_message, to_message, to_question
from generation_analytics.service.errors import (
    AnalyticsError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from generation_analytics.service.ingest.capture import EventCapture
from generation_analytics.service.metrics import ServiceMetrics
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.queries.service import AnalyticsQueries
from generation_analytics.service.queries.status import pipeline_status
from generation_analytics.service.stream import AsyncRedis, StreamKeys
from generation_analytics.v1 import (
    analytics_pb2,
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
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
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
StreamHandler = Callable[[Any, Request, Context], AsyncGenerator[Response, None]]


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
        make = grpc.unary_stream_rpc_method_handler if method.server_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
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


# What a caller is told when a dependency fails: never its text (host names, SQL, constraint names, keys).
UNAVAILABLE_MESSAGES: dict[type[BaseException], str] = {
    psycopg.Error: "the database is unavailable; retry later",
    psycopg_pool.PoolTimeout: "the database is busy or unavailable; retry later",
    redis.exceptions.RedisError: "the event stream is unavailable; retry later",
}


def public_error(exc: BaseException, where: str) -> tuple[grpc.StatusCode, str]:
    """The status code for `exc` and the message a caller may see.

    The service's own errors speak for themselves. Anything else answers a generic message with an
    error id, and the id goes to the log with the details (the traceback, for INTERNAL), so an operator
    can find what a caller reports without the caller seeing database or Redis text.
    """
    code = status_for(exc)
    if isinstance(exc, AnalyticsError):
        return code, str(exc)
    error_id = secrets.token_hex(4)
    if code is grpc.StatusCode.INTERNAL:
        log.error("%s failed (error id %s)", where, error_id, exc_info=exc)
        return code, f"internal error (error id {error_id})"
    log.warning("%s: %s (error id %s): %s", where, code.name, error_id, exc)
    base = next((text for cls, text in UNAVAILABLE_MESSAGES.items() if isinstance(exc, cls)), "unavailable")
    return code, f"{base} (error id {error_id})"


def _decoded(request: Any) -> None:
    if isinstance(request, Undecodable):
        raise InvalidArgument("request", f"not a valid {request.message}: {request.reason}")


async def _abort(context: Context, exc: Exception, where: str) -> NoReturn:
    """End the call with the status `exc` maps to (the field of an INVALID_ARGUMENT in the metadata)."""
    code, message = public_error(exc, where)
    metadata = ((FIELD_METADATA_KEY, exc.field),) if isinstance(exc, InvalidArgument) else ()
    await context.abort(code, message, metadata)
    raise AssertionError("unreachable: abort raises")


def _observe(servicer: Any, method: str, code: grpc.StatusCode, started: float) -> None:
    metrics: ServiceMetrics | None = getattr(servicer, "metrics", None)
    if metrics is not None:
        _duration_histogram(metrics, method, code).observe(time.perf_counter() - started)


def grpc_errors(method: Handler[Request, Response]) -> Handler[Request, Response]:
    """Turn the service's exceptions into gRPC statuses for one servicer method."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: Context) -> Response:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            _decoded(request)
            return await method(self, request, context)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # every failure becomes a status here, and only here
            code = status_for(exc)
            await _abort(context, exc, method.__name__)
        finally:
            _observe(self, method.__name__, code, started)

    return wrapper


def grpc_stream_errors(method: StreamHandler[Request, Response]) -> StreamHandler[Request, Response]:
    """`grpc_errors` for a server-streaming method (an async generator): a failure before or between
    messages ends the stream with its status. A client that cancels cancels the generator, which is
    closed at once (its database cursor with it)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: Context) -> AsyncGenerator[Response, None]:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            _decoded(request)
            async with contextlib.aclosing(method(self, request, context)) as messages:
                async for message in messages:
                    yield message
        except (asyncio.CancelledError, grpc.aio.AbortError, GeneratorExit):
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # mapped as in grpc_errors
            code = status_for(exc)
            await _abort(context, exc, method.__name__)
        finally:
            _observe(self, method.__name__, code, started)

    return wrapper


@functools.lru_cache(maxsize=1024)
def _duration_histogram(metrics: ServiceMetrics, method: str, code: grpc.StatusCode) -> Any:
    """The labelled child of `ga_rpc_duration_seconds` (`labels()` costs microseconds on every call)."""
    return metrics.rpc_duration.labels(method, code.name)


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
        redis_client: AsyncRedis,
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
        return to_message(report, pipeline_pb2.RunTransferResponse)

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
        return to_message(report, pipeline_pb2.RunAggregationResponse)


_ANALYTICS = analytics_pb2.DESCRIPTOR.services_by_name["AnalyticsService"]


def _answering(rpc: str) -> Handler[Message, Message]:
    """The servicer method of an AnalyticsService RPC: request -> question -> answer -> response."""
    question_cls = QUESTIONS[rpc]
    response_cls = GetMessageClass(_ANALYTICS.methods_by_name[rpc].output_type)

    async def method(self: AnalyticsServicer, request: Message, context: Context) -> Message:
        return to_message(await self.queries.answer(to_question(question_cls, request)), response_cls)

    method.__name__ = method.__qualname__ = rpc
    return grpc_errors(method)


def _streaming(rpc: str) -> StreamHandler[Message, Message]:
    """The servicer method of a server-streaming RPC: request -> question -> answers -> one message each."""
    question_cls = QUESTIONS[rpc]
    response_cls = GetMessageClass(_ANALYTICS.methods_by_name[rpc].output_type)

    async def method(self: AnalyticsServicer, request: Message, context: Context) -> AsyncGenerator[Message, None]:
        answers = await self.queries.answer(to_question(question_cls, request))
        async with contextlib.aclosing(answers):
            async for answer in answers:
                yield to_message(answer, response_cls)

    method.__name__ = method.__qualname__ = rpc
    return grpc_stream_errors(method)


class AnalyticsServicer:
    """AnalyticsService: every RPC is one question of `generation_analytics.questions`, answered by
    `AnalyticsQueries`; its methods are made from the service descriptor, so none can be forgotten."""

    def __init__(self, queries: AnalyticsQueries, metrics: ServiceMetrics | None = None) -> None:
        self.queries = queries
        self.metrics = metrics


for _rpc in QUESTIONS:
    _streams = _ANALYTICS.methods_by_name[_rpc].server_streaming
    setattr(AnalyticsServicer, _rpc, _streaming(_rpc) if _streams else _answering(_rpc))

"""gRPC servicers: thin adapters from protobuf requests to the service's modules, and back.

Errors become gRPC status codes here and nowhere else (`STATUS_BY_ERROR`); an INVALID_ARGUMENT
also carries the offending field in the `ga-field` trailing metadata so clients need not parse text.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import psycopg
import psycopg_pool
import redis.exceptions

from generation_analytics.service.capture import EventCapture
from generation_analytics.service.errors import (
    AnalyticsError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from generation_analytics.v1 import events_pb2, events_pb2_grpc

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
        try:
            return await method(self, request, context)
        except (AnalyticsError, psycopg.Error, psycopg_pool.PoolTimeout, redis.exceptions.RedisError) as exc:
            code = status_for(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method.__name__)
            metadata = ((FIELD_METADATA_KEY, exc.field),) if isinstance(exc, InvalidArgument) else ()
            await context.abort(code, str(exc), metadata)
            raise  # unreachable: abort raises

    return wrapper


class EventServicer(events_pb2_grpc.EventServiceServicer):
    """EventService: the write path."""

    def __init__(self, capture: EventCapture) -> None:
        self._capture = capture

    @grpc_errors
    async def RecordEvent(
        self, request: events_pb2.RecordEventRequest, context: Context
    ) -> events_pb2.RecordEventResponse:
        if not request.HasField("event"):
            raise InvalidArgument("event", "is required")
        event_id = await self._capture.record(request.event)
        return events_pb2.RecordEventResponse(event_id=event_id)

    @grpc_errors
    async def RecordEvents(
        self, request: events_pb2.RecordEventsRequest, context: Context
    ) -> events_pb2.RecordEventsResponse:
        result = await self._capture.record_many(request.events)
        return events_pb2.RecordEventsResponse(
            accepted_count=result.accepted_count,
            event_ids=result.event_ids,
            rejections=[
                events_pb2.Rejection(index=index, field=field, reason=reason)
                for index, field, reason in result.rejections
            ],
        )

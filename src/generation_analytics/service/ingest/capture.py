"""Capture: validate incoming events and append them to the Redis stream (the write path's only hop).

An OK from `record`/`record_many` means Redis holds the event. Postgres is never touched here, so
recording keeps working while Postgres is slow or down; transfer catches up later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.exceptions

from generation_analytics.service.errors import InvalidArgument, ResourceExhausted, Unavailable
from generation_analytics.service.ingest.redis_link import RedisLink
from generation_analytics.service.ingest.validation import check_new_event
from generation_analytics.service.settings import LimitSettings, RedisSettings, RetentionSettings
from generation_analytics.service.stream import APPEND_EVENTS_LUA, APPEND_EVENTS_SHA, StreamKeys
from generation_analytics.v1 import events_pb2

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Outcome of `record_many`: ids in request order ("" where rejected) and the rejections."""

    event_ids: list[str]
    rejections: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def accepted_count(self) -> int:
        return len(self.event_ids) - len(self.rejections)


class EventCapture:
    """Validates events and appends them to `{ns}:generation_events:stream`."""

    def __init__(
        self, *, redis: RedisSettings, keys: StreamKeys, limits: LimitSettings, retention: RetentionSettings
    ) -> None:
        self._link = RedisLink(redis.url, timeout_s=redis.socket_timeout_s)
        self._wait = ("WAIT", redis.wait_replicas, redis.wait_timeout_ms) if redis.wait_replicas else None
        self._keys = keys
        self._limits = limits
        self._retention_s = retention.days * 86_400  # older timestamps are refused: nothing would keep them

    async def record(self, event: events_pb2.GenerationEvent) -> str:
        """Validate and append one event; returns its event_id.

        Raises:
            InvalidArgument: the event breaks the contract (names the field).
            Unavailable: Redis cannot be reached within the timeout.
            ResourceExhausted: the stream backlog is over its cap.
        """
        now = time.time()
        problem = check_new_event(event, self._limits, now_s=now, oldest_s=now - self._retention_s)
        if problem:
            raise InvalidArgument(f"event.{problem[0]}", problem[1])
        await self._append_payloads([event.SerializeToString()])
        return event.event_id

    async def record_many(self, events: Sequence[events_pb2.GenerationEvent]) -> BatchResult:
        """Validate a batch; append the valid events in one atomic step and report the invalid ones."""
        if len(events) > self._limits.max_batch_events:
            raise InvalidArgument("events", f"more than {self._limits.max_batch_events} events in one call")
        now = time.time()
        oldest = now - self._retention_s
        result = BatchResult(event_ids=[""] * len(events))
        payloads: list[bytes] = []
        for index, event in enumerate(events):
            problem = check_new_event(event, self._limits, now_s=now, oldest_s=oldest)
            if problem:
                result.rejections.append((index, problem[0], problem[1]))
                continue
            result.event_ids[index] = event.event_id
            payloads.append(event.SerializeToString())
        if payloads:
            await self._append_payloads(payloads)
        return result

    async def _append_payloads(self, payloads: list[bytes]) -> None:
        command = ("EVALSHA", APPEND_EVENTS_SHA, 1, self._keys.stream, self._limits.max_stream_backlog, *payloads)
        try:
            try:
                await self._append(command)
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self._link.execute("SCRIPT", "LOAD", APPEND_EVENTS_LUA)  # first use, or Redis restarted
                await self._append(command)
        except redis.exceptions.ResponseError as exc:
            if "BACKLOG" in str(exc) or "OOM" in str(exc):
                log.warning("the event stream refuses new events: %s", exc)
                raise ResourceExhausted("the event stream is full; retry later") from exc
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("redis unavailable while recording %d events: %s", len(payloads), exc)
            raise Unavailable("the event stream is unavailable; retry later") from exc

    async def _append(self, command: tuple[object, ...]) -> None:
        """Run the append; with `wait_replicas`, WAIT for the replicas in the same write.

        Raises:
            redis.exceptions.ResponseError: the append failed (NOSCRIPT, BACKLOG, OOM, ...).
            Unavailable: fewer replicas than asked acknowledged within the timeout (the events are on the
                master and will be stored; the caller's retry is deduplicated by event_id).
        """
        if self._wait is None:
            await self._link.execute(*command)
            return
        appended, replicas = await self._link.execute_many(command, self._wait)
        if isinstance(appended, Exception):
            raise appended
        if isinstance(replicas, Exception) or replicas < self._wait[1]:
            log.warning("recorded events reached %s of %d Redis replicas in time", replicas, self._wait[1])
            raise Unavailable(
                f"the events did not reach {self._wait[1]} Redis replica(s) within {self._wait[2]} ms; retry later"
            )

    async def close(self) -> None:
        await self._link.close()

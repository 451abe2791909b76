"""Capture: validate incoming events and append them to the Redis stream (the write path's only hop).

An OK from `record`/`record_many` means Redis holds the event. Postgres is never touched here, so
recording keeps working while Postgres is slow or down; transfer catches up later.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from generation_analytics.service.errors import InvalidArgument, ResourceExhausted, Unavailable
from generation_analytics.service.keys import EVENT_FIELD, StreamKeys
from generation_analytics.service.redis_link import RedisLink
from generation_analytics.service.settings import LimitSettings
from generation_analytics.service.validation import check_new_event
from generation_analytics.v1 import events_pb2

log = logging.getLogger(__name__)

# Appends ARGV[2..] as entries {e: ARGV[i]} to the stream KEYS[1], all or none, unless the stream
# already holds more than ARGV[1] entries (the backlog cap), in which case it adds nothing and
# answers the error BACKLOG. One round trip and one command per batch: atomic (a retry after a
# failure cannot half-apply) and far cheaper to encode client-side than one XADD per event.
# Returns the number of entries added. Called by SHA (EVALSHA), loaded on first NOSCRIPT.
APPEND_EVENTS_LUA = """
local max_backlog = tonumber(ARGV[1])
if redis.call('XLEN', KEYS[1]) > max_backlog then
  return redis.error_reply('BACKLOG stream holds more than ' .. ARGV[1] .. ' entries')
end
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'e', ARGV[i])
end
return #ARGV - 1
"""
APPEND_EVENTS_SHA = hashlib.sha1(APPEND_EVENTS_LUA.encode()).hexdigest()
assert EVENT_FIELD == b"e", "APPEND_EVENTS_LUA writes the field name literally"


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
        self,
        *,
        redis_url: str,
        keys: StreamKeys,
        limits: LimitSettings,
        retention_days: int,
        timeout_s: float,
    ) -> None:
        self._link = RedisLink(redis_url, timeout_s=timeout_s)
        self._keys = keys
        self._limits = limits
        self._retention_s = retention_days * 86_400

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
                await self._link.execute(*command)
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self._link.execute("SCRIPT", "LOAD", APPEND_EVENTS_LUA)  # first use, or Redis restarted
                await self._link.execute(*command)
        except redis.exceptions.ResponseError as exc:
            if "BACKLOG" in str(exc) or "OOM" in str(exc):
                raise ResourceExhausted(f"event stream is full, retry later ({exc})") from exc
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("redis unavailable while recording %d events: %s", len(payloads), exc)
            raise Unavailable(f"event stream unavailable: {exc}") from exc

    async def close(self) -> None:
        await self._link.close()


def connect_redis(url: str, *, timeout_s: float) -> aioredis.Redis:
    """An asyncio Redis client that fails within `timeout_s` instead of retrying or hanging."""
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )

"""Capture: validate incoming events and append them to the Redis stream (the write path's only hop).

An OK from `record`/`record_many` means Redis holds the event. Postgres is never touched here, so
recording keeps working while Postgres is slow or down; transfer catches up later.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from generation_analytics.service.errors import InvalidArgument, ResourceExhausted, Unavailable
from generation_analytics.service.ingest.cluster_link import ClusterLink
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
    """Validates events and appends each to the stream shard its event_id picks (`StreamKeys.shard_for`)."""

    def __init__(
        self, *, redis: RedisSettings, keys: StreamKeys, limits: LimitSettings, retention: RetentionSettings
    ) -> None:
        if redis.cluster:
            cluster = ClusterLink(redis.url, timeout_s=redis.socket_timeout_s)
            self._link: RedisLink | ClusterLink = cluster
            self._execute: Callable[..., Awaitable[Any]] = cluster.execute_for
            self._execute_many: Callable[..., Awaitable[list[Any]]] = cluster.execute_many_for
        else:  # one Redis holds every key: the key is not needed, and no coroutine wraps the link's
            single = self._link = RedisLink(redis.url, timeout_s=redis.socket_timeout_s)
            self._execute = lambda _key, *args: single.execute(*args)
            self._execute_many = lambda _key, *commands: single.execute_many(*commands)
        self._wait = ("WAIT", redis.wait_replicas, redis.wait_timeout_ms) if redis.wait_replicas else None
        self._keys = keys
        self._sharded = len(keys.shards) > 1
        self._first_stream = keys.stream
        self._unregistered = {shard.stream for shard in keys.shards}  # see _register
        self._limits = limits
        # The backlog cap holds for the whole stream: each shard refuses past its share of it.
        self._shard_backlog = -(-limits.max_stream_backlog // len(keys.shards))
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
        stream = self._keys.shard_for(event.event_id).stream if self._sharded else self._first_stream
        await self._append_payloads(stream, [event.SerializeToString()])
        return event.event_id

    async def record_many(self, events: Sequence[events_pb2.GenerationEvent]) -> BatchResult:
        """Validate a batch; append the valid events in one atomic step and report the invalid ones."""
        if len(events) > self._limits.max_batch_events:
            raise InvalidArgument("events", f"more than {self._limits.max_batch_events} events in one call")
        now = time.time()
        oldest = now - self._retention_s
        result = BatchResult(event_ids=[""] * len(events))
        payloads: dict[str, list[bytes]] = {}
        shard_for, first_stream = self._keys.shard_for, self._first_stream
        for index, event in enumerate(events):
            problem = check_new_event(event, self._limits, now_s=now, oldest_s=oldest)
            if problem:
                result.rejections.append((index, problem[0], problem[1]))
                continue
            result.event_ids[index] = event.event_id
            stream = shard_for(event.event_id).stream if self._sharded else first_stream
            payloads.setdefault(stream, []).append(event.SerializeToString())
        if len(payloads) == 1:
            await self._append_payloads(*next(iter(payloads.items())))
        elif payloads:
            await self._append_to_shards(payloads)
        return result

    async def _append_to_shards(self, payloads: dict[str, list[bytes]]) -> None:
        """Append each shard's part of a batch, all at once. Each part is atomic, the batch is not: if one
        part fails the call fails, and its retry stores the parts that did get in once (by event_id)."""
        outcomes = await asyncio.gather(
            *(self._append_payloads(stream, part) for stream, part in payloads.items()), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _append_payloads(self, stream: str, payloads: list[bytes]) -> None:
        command = ("EVALSHA", APPEND_EVENTS_SHA, 1, stream, self._shard_backlog, *payloads)
        try:
            try:
                await self._append(stream, command)
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # First use, or that Redis restarted (or, on a cluster, a master not used before).
                await self._execute(stream, "SCRIPT", "LOAD", APPEND_EVENTS_LUA)
                await self._append(stream, command)
            if stream in self._unregistered:
                await self._register(stream)
        except redis.exceptions.ResponseError as exc:
            if "BACKLOG" in str(exc) or "OOM" in str(exc):
                log.warning("the event stream refuses new events: %s", exc)
                raise ResourceExhausted("the event stream is full; retry later") from exc
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            log.warning("redis unavailable while recording %d events: %s", len(payloads), exc)
            raise Unavailable("the event stream is unavailable; retry later") from exc

    async def _register(self, stream: str) -> None:
        """Add a shard this process has written to the namespace's registry, once per process: if the shard
        count changes before a transfer of this count has run, transfer still finds the shard (stream.py)."""
        registry = self._keys.registry
        try:
            await self._execute(registry, "SADD", registry, stream)
        except redis.exceptions.RedisError as exc:  # the events are in; try again with the next ones
            log.warning("could not register stream shard %s yet: %s", stream, exc)
            return
        self._unregistered.discard(stream)

    async def _append(self, stream: str, command: tuple[object, ...]) -> None:
        """Run the append; with `wait_replicas`, WAIT for the replicas in the same write.

        Raises:
            redis.exceptions.ResponseError: the append failed (NOSCRIPT, BACKLOG, OOM, ...).
            Unavailable: fewer replicas than asked acknowledged within the timeout (the events are on the
                master and will be stored; the caller's retry is deduplicated by event_id).
        """
        if self._wait is None:
            await self._execute(stream, *command)
            return
        appended, replicas = await self._execute_many(stream, command, self._wait)
        if isinstance(appended, Exception):
            raise appended
        if isinstance(replicas, Exception) or replicas < self._wait[1]:
            log.warning("recorded events reached %s of %d Redis replicas in time", replicas, self._wait[1])
            raise Unavailable(
                f"the events did not reach {self._wait[1]} Redis replica(s) within {self._wait[2]} ms; retry later"
            )

    async def close(self) -> None:
        await self._link.close()

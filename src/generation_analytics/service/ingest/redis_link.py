"""A minimal pipelined Redis connection for the recording hot path.

redis-py's asyncio client spends ~40 µs of Python per command on pooling and retries; recording
makes exactly one command per call, so that overhead was a third of RecordEvent's latency. Here every
caller writes its command straight onto one shared connection and awaits a future; the connection's
protocol resolves the futures in order as replies arrive (Redis answers in the order it was asked), so
concurrent calls are pipelined on one socket for free. Any failure or timeout closes the connection and
fails every command in flight (the caller answers UNAVAILABLE); the next command reconnects.

Replies are parsed in `data_received` itself (no reader task to wake: one event-loop hop less per
command), and one watchdog timer, armed only while commands are in flight, enforces the timeout
instead of a timer per command (bench.ingest_profile shows where RecordEvent's time goes).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis.exceptions

log = logging.getLogger(__name__)

Pending = collections.deque[tuple[asyncio.Future[Any], float]]


class _ReplyProtocol(asyncio.Protocol):
    """Feeds what Redis sends to a hiredis parser and hands each reply to the oldest command waiting."""

    def __init__(self, link: RedisLink) -> None:
        self._link = link
        self._parser = hiredis.Reader()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._link._protocol is not self:  # a connection given up already: its replies belong to no one
            return
        parser, pending = self._parser, self._link._pending
        parser.feed(data)
        while (reply := parser.gets()) is not False:
            if not pending:  # a reply nobody asked for: out of step with Redis, start afresh
                self._link._lost(self, redis.exceptions.ConnectionError("unexpected reply from Redis"))
                return
            future = pending.popleft()[0]
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(redis.exceptions.ResponseError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._lost(self, redis.exceptions.ConnectionError(str(exc) if exc else "Redis closed the connection"))


class RedisLink:
    """One connection to the Redis at `url` (redis:// or unix://), commands bounded by `timeout_s`."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        parts = urlsplit(url)
        self._unix_path = parts.path if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._db = int(parts.path.strip("/") or 0) if parts.scheme != "unix" else 0
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._timeout_s = timeout_s
        self._protocol: _ReplyProtocol | None = None
        self._transport: Any = None  # asyncio.Transport, or uvloop's (not a subclass of it)
        self._pending: Pending = collections.deque()  # (future, deadline) in the order sent
        self._watchdog: asyncio.TimerHandle | None = None
        self._connecting = asyncio.Lock()

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply.

        Raises:
            redis.exceptions.ConnectionError: Redis cannot be reached (or stopped answering in time).
            redis.exceptions.ResponseError: Redis answered with an error.
        """
        transport = self._transport if self._transport is not None else await self._connect()
        (future,) = self._send(transport, hiredis.pack_command(args), 1)
        return await future

    async def execute_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send several commands in one write (Redis runs them in that order, nothing in between from
        this connection) and return their replies; a command's error is returned in its place as a
        `redis.exceptions.ResponseError`, so later commands' replies are not lost.

        Raises:
            redis.exceptions.ConnectionError: Redis cannot be reached (or stopped answering in time).
        """
        transport = self._transport if self._transport is not None else await self._connect()
        data = b"".join(hiredis.pack_command(command) for command in commands)
        futures = self._send(transport, data, len(commands))
        replies: list[Any] = []
        try:
            for future in futures:
                try:
                    replies.append(await future)
                except redis.exceptions.ResponseError as exc:
                    replies.append(exc)
        except BaseException:
            for future in futures:  # the connection failed them all: retrieve the rest, so none is "never retrieved"
                if future.done() and not future.cancelled():
                    future.exception()
            raise
        return replies

    def _send(self, transport: Any, data: bytes, replies: int) -> list[asyncio.Future[Any]]:
        """Write `data` (`replies` commands) and queue a future per reply, in order, under one deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(replies)]
        self._pending.extend((future, deadline) for future in futures)
        transport.write(data)
        if self._watchdog is None:
            self._watchdog = loop.call_later(self._timeout_s, self._check_deadlines)
        return futures

    def _check_deadlines(self) -> None:
        """Fail everything in flight when the oldest command is past its deadline; else look again then."""
        self._watchdog = None
        if not self._pending:
            return
        loop = asyncio.get_running_loop()
        deadline = self._pending[0][1]
        if loop.time() >= deadline:
            self._fail(redis.exceptions.TimeoutError(f"no answer from Redis within {self._timeout_s} s"))
        else:
            self._watchdog = loop.call_at(deadline, self._check_deadlines)

    async def _connect(self) -> Any:
        async with self._connecting:
            if self._transport is not None:
                return self._transport
            loop = asyncio.get_running_loop()
            protocol = self._protocol = _ReplyProtocol(self)
            try:
                async with asyncio.timeout(self._timeout_s):
                    if self._unix_path:
                        transport, _ = await loop.create_unix_connection(lambda: protocol, self._unix_path)
                    else:
                        transport, _ = await loop.create_connection(lambda: protocol, self._host, self._port)
                    for command in self._handshake():
                        future: asyncio.Future[Any] = loop.create_future()
                        self._pending.append((future, loop.time() + self._timeout_s))
                        transport.write(hiredis.pack_command(command))
                        try:
                            await future
                        except redis.exceptions.ResponseError as exc:
                            raise redis.exceptions.ConnectionError(f"Redis refused {command[0]}: {exc}") from None
            except BaseException as exc:
                # Timed out, refused or cancelled half way: close this connection and drop its handshake
                # futures (only they are pending while no transport is published), or the next connection
                # would hand its first replies to them, out of step.
                if self._protocol is protocol:
                    self._fail(redis.exceptions.ConnectionError(f"cannot connect to Redis: {exc}"))
                if isinstance(exc, (OSError, TimeoutError)):
                    raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {exc}") from exc
                raise
            self._transport = transport  # uvloop's transports are not asyncio.Transport subclasses
            return transport

    def _handshake(self) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        if self._password is not None:
            commands.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            commands.append(("SELECT", self._db))
        return commands

    def _lost(self, protocol: _ReplyProtocol, error: Exception) -> None:
        """The connection of `protocol` broke: fail what is in flight on it (if it is still the current one)."""
        if self._protocol is protocol:
            self._fail(error)

    def _fail(self, error: Exception) -> None:
        """Drop the connection and fail every command in flight with `error`."""
        protocol, self._transport, self._protocol = self._protocol, None, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()  # also one still in its handshake (not published as _transport yet)
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        while self._pending:
            future, _ = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._fail(redis.exceptions.ConnectionError("connection closed"))

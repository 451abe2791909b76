"""A minimal pipelined Redis connection for the recording hot path.

redis-py's asyncio client spends ~40 µs of Python per command on pooling and retries; recording
makes exactly one command per call, so that overhead was a third of RecordEvent's latency. Here every
caller writes its command straight onto one shared connection and awaits a future; a reader task
resolves the futures in order (Redis answers in the order it was asked), so concurrent calls are
pipelined on one socket for free. Any failure or timeout closes the connection and fails every
command in flight (the caller answers UNAVAILABLE); the next command reconnects.
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
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._connecting = asyncio.Lock()

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply.

        Raises:
            redis.exceptions.ConnectionError: Redis cannot be reached (or stopped answering in time).
            redis.exceptions.ResponseError: Redis answered with an error.
        """
        writer = self._writer if self._writer is not None else await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append(future)
        writer.write(hiredis.pack_command(args))
        timer = asyncio.get_running_loop().call_later(self._timeout_s, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            self._fail(redis.exceptions.TimeoutError(f"no answer from Redis within {self._timeout_s} s"))

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is not None:
                return self._writer
            try:
                async with asyncio.timeout(self._timeout_s):
                    if self._unix_path:
                        reader, writer = await asyncio.open_unix_connection(self._unix_path)
                    else:
                        reader, writer = await asyncio.open_connection(self._host, self._port)
                    parser = hiredis.Reader()
                    for command in self._handshake():
                        writer.write(hiredis.pack_command(command))
                        reply = await self._read_one(reader, parser)
                        if isinstance(reply, hiredis.ReplyError):
                            writer.close()
                            raise redis.exceptions.ConnectionError(f"Redis refused {command[0]}: {reply}")
            except (OSError, TimeoutError) as exc:
                raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {exc}") from exc
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_replies(reader, parser, writer))
            return writer

    def _handshake(self) -> list[tuple[Any, ...]]:
        commands: list[tuple[Any, ...]] = []
        if self._password is not None:
            commands.append(("AUTH", self._username, self._password) if self._username else ("AUTH", self._password))
        if self._db:
            commands.append(("SELECT", self._db))
        return commands

    @staticmethod
    async def _read_one(reader: asyncio.StreamReader, parser: hiredis.Reader) -> Any:
        while (reply := parser.gets()) is False:
            data = await reader.read(65536)
            if not data:
                raise redis.exceptions.ConnectionError("Redis closed the connection")
            parser.feed(data)
        return reply

    async def _read_replies(
        self, reader: asyncio.StreamReader, parser: hiredis.Reader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    raise redis.exceptions.ConnectionError("Redis closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = self._pending.popleft()
                    if future.done():
                        continue
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(redis.exceptions.ResponseError(str(reply)))
                    else:
                        future.set_result(reply)
        except (OSError, redis.exceptions.ConnectionError) as exc:
            if self._writer is writer:
                self._fail(redis.exceptions.ConnectionError(str(exc)))
        except asyncio.CancelledError:
            pass

    def _fail(self, error: Exception) -> None:
        """Drop the connection and fail every command in flight with `error`."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            self._reader_task = None
        while self._pending:
            future = self._pending.popleft()
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        self._fail(redis.exceptions.ConnectionError("connection closed"))

"""The hot path's Redis connection against real Redis: replies in step, timeouts, reconnects, cancelled callers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
import redis.exceptions

from generation_analytics.service.embedded import EmbeddedRedis
from generation_analytics.service.ingest.redis_link import RedisLink


def with_db(url: str, db: int) -> str:
    """`url` selecting database `db`, so every new connection has a handshake (SELECT) to get through."""
    parts = urlsplit(url)
    return parts._replace(path=f"/{db}").geturl()


async def echo_all(link: RedisLink, values: list[str]) -> list[bytes]:
    return list(await asyncio.gather(*(link.execute("ECHO", value) for value in values)))


def test_concurrent_commands_get_their_own_replies_when_some_callers_give_up(redis_url: str) -> None:
    async def scenario() -> None:
        link = RedisLink(with_db(redis_url, 1), timeout_s=5)
        try:
            tasks = [asyncio.create_task(link.execute("ECHO", f"value-{i}")) for i in range(300)]
            await asyncio.sleep(0)  # every command is written; now a third of the callers give up
            for task in tasks[::3]:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for i, result in enumerate(results):
                if i % 3:
                    assert result == f"value-{i}".encode()
            assert await echo_all(link, ["after-1", "after-2"]) == [b"after-1", b"after-2"]
        finally:
            await link.close()

    asyncio.run(scenario())


def test_an_error_reply_goes_to_its_own_caller_only(redis_url: str) -> None:
    async def scenario() -> None:
        link = RedisLink(redis_url, timeout_s=5)
        try:
            replies: Any = await asyncio.gather(
                link.execute("ECHO", "a"), link.execute("NO-SUCH-COMMAND"), link.execute("ECHO", "b"),
                return_exceptions=True,
            )  # fmt: skip
            assert (replies[0], replies[2]) == (b"a", b"b")
            assert isinstance(replies[1], redis.exceptions.ResponseError)
        finally:
            await link.close()

    asyncio.run(scenario())


def test_commands_sent_together_answer_in_order_with_errors_in_place_amid_other_callers(redis_url: str) -> None:
    async def scenario() -> None:
        link = RedisLink(redis_url, timeout_s=5)
        try:
            many = [("ECHO", f"m{i}") if i % 4 else ("NO-SUCH-COMMAND", i) for i in range(40)]
            others = [link.execute("ECHO", f"o{i}") for i in range(40)]
            together, *single = await asyncio.gather(link.execute_many(*many), *others)
            assert single == [f"o{i}".encode() for i in range(40)]
            for i, reply in enumerate(together):
                if i % 4:
                    assert reply == f"m{i}".encode()
                else:
                    assert isinstance(reply, redis.exceptions.ResponseError)
            own_id = await link.execute("CLIENT", "ID")
            killer = redis.Redis.from_url(redis_url)
            killer.client_kill_filter(_id=own_id)  # the link's connection dies under it
            killer.close()
            with pytest.raises(redis.exceptions.ConnectionError):
                await link.execute_many(("ECHO", "x"), ("ECHO", "y"))
            assert await link.execute_many(("ECHO", "x"), ("ECHO", "y")) == [b"x", b"y"]  # reconnected
        finally:
            await link.close()

    asyncio.run(scenario())


@contextlib.asynccontextmanager
async def stalling_proxy(target_url: str, *, stalled_connections: int) -> AsyncIterator[int]:
    """A TCP proxy to `target_url` whose first `stalled_connections` connections are accepted, never answered."""
    target = urlsplit(target_url)
    seen = 0
    writers: list[asyncio.StreamWriter] = []
    handlers: set[asyncio.Task[None] | None] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        handlers.add(asyncio.current_task())
        writers.append(writer)
        if seen <= stalled_connections:
            with contextlib.suppress(OSError):
                while await reader.read(65536):
                    pass
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port or 6379)
        writers.append(up_writer)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for writer in writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        await asyncio.gather(*(task for task in handlers if task is not None), return_exceptions=True)
        await server.wait_closed()


def test_a_handshake_that_timed_out_leaves_the_next_connection_in_step(redis_url: str) -> None:
    """A Redis that stalls during SELECT: the call fails in time, and the next connection answers correctly."""

    async def scenario() -> None:
        async with stalling_proxy(redis_url, stalled_connections=1) as port:
            link = RedisLink(f"redis://127.0.0.1:{port}/1", timeout_s=0.3)
            try:
                with pytest.raises(redis.exceptions.ConnectionError):
                    await link.execute("ECHO", "lost")
                assert await echo_all(link, ["one", "two", "three"]) == [b"one", b"two", b"three"]
                assert await link.execute("ECHO", "four") == b"four"
            finally:
                await link.close()

    asyncio.run(scenario())


def test_a_caller_cancelled_during_the_handshake_leaves_the_next_connection_in_step(redis_url: str) -> None:
    async def scenario() -> None:
        async with stalling_proxy(redis_url, stalled_connections=1) as port:
            link = RedisLink(f"redis://127.0.0.1:{port}/1", timeout_s=5)
            try:
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.3):  # the caller's own deadline, shorter than the link's
                        await link.execute("ECHO", "lost")
                assert await echo_all(link, ["one", "two"]) == [b"one", b"two"]
            finally:
                await link.close()

    asyncio.run(scenario())


@pytest.mark.faults
def test_commands_fail_fast_while_redis_is_down_and_succeed_after_it_restarts(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()

    async def scenario() -> None:
        link = RedisLink(with_db(server.url, 2), timeout_s=2)
        try:
            assert await link.execute("ECHO", "before") == b"before"
            assert server.process is not None
            server.process.kill()
            server.process.wait()
            for _ in range(2):  # the broken connection, then a refused one
                with pytest.raises(redis.exceptions.ConnectionError):
                    await asyncio.wait_for(link.execute("ECHO", "down"), timeout=3)
            await asyncio.to_thread(server.start)
            assert await echo_all(link, ["after-1", "after-2"]) == [b"after-1", b"after-2"]
        finally:
            await link.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()

"""The pipeline of a test: transfer/aggregation objects on the test's database and namespace."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from datetime import datetime
from multiprocessing.connection import Connection

import pytest
import redis

from generation_analytics.service.db import sync_pool
from generation_analytics.service.pipeline.aggregate import PARTS, AggregationReport, Aggregator
from generation_analytics.service.pipeline.worker import Pipeline
from generation_analytics.service.settings import AggregationSettings, PostgresSettings, RetentionSettings, Settings
from generation_analytics.service.stream import EVENT_FIELD, StreamKeys
from generation_analytics.v1 import events_pb2


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    pipe = Pipeline.of(settings)
    pipe.pool.wait(10)
    try:
        yield pipe
    finally:
        pipe.close()


@pytest.fixture
def stream_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def push(client: redis.Redis, namespace: str, events: Sequence[events_pb2.GenerationEvent]) -> None:
    """Append events to the stream the way capture does (bypassing validation: tests choose)."""
    pipe = client.pipeline(transaction=False)
    for event in events:
        pipe.xadd(StreamKeys(namespace).stream, {EVENT_FIELD: event.SerializeToString()})
    pipe.execute()


def push_raw(client: redis.Redis, namespace: str, fields: dict[bytes, bytes]) -> bytes:
    """Append an arbitrary entry (poison-entry tests)."""
    entry_id: bytes = client.xadd(StreamKeys(namespace).stream, fields)  # type: ignore[arg-type,assignment]
    return entry_id


def _serve_aggregations(conn: Connection, dsn: str, settings: AggregationSettings) -> None:
    """Child process: run the aggregations the parent asks for, answer with the report or the error."""
    pool = sync_pool(PostgresSettings(dsn=dsn), name="child", max_size=len(PARTS) + 2)
    aggregator = Aggregator(pool=pool, settings=settings, retention=RetentionSettings())
    try:
        while (command := conn.recv()) is not None:
            try:
                report = aggregator.run() if command == "all" else aggregator.run_range(*command)
                conn.send(report)
            except Exception as exc:  # reported to the parent, which fails the test
                conn.send(f"{type(exc).__name__}: {exc}")
    finally:
        pool.close()


class AggregatorProcess:
    """An aggregator in a process of its own (as a `worker` or another replica runs it), driven by the test."""

    def __init__(self, dsn: str, settings: AggregationSettings) -> None:
        self._conn, child = multiprocessing.get_context("spawn").Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=_serve_aggregations, args=(child, dsn, settings), daemon=True
        )
        self._process.start()

    def start(self, command: str | tuple[datetime, datetime]) -> None:
        """Begin an aggregation: "all" (the dirty hours) or a (start, end) range."""
        self._conn.send(command)

    def result(self, timeout_s: float = 120) -> AggregationReport:
        if not self._conn.poll(timeout_s):
            raise TimeoutError("the aggregator process did not answer")
        reply = self._conn.recv()
        if isinstance(reply, str):
            raise AssertionError(f"aggregation in another process failed: {reply}")
        assert isinstance(reply, AggregationReport)
        return reply

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()

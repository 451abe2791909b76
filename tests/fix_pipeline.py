"""The pipeline of a test: transfer/aggregation objects on the test's database and namespace."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
import redis

from generation_analytics.service.keys import EVENT_FIELD, StreamKeys
from generation_analytics.service.pipeline import Pipeline
from generation_analytics.service.settings import Settings
from generation_analytics.v1 import events_pb2


@pytest.fixture
def pipeline(settings: Settings) -> Iterator[Pipeline]:
    pipe = Pipeline(settings)
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

"""Capture over a real channel: events land in the Redis stream intact, bad input is refused by field."""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis

from generation_analytics.service.api.rpc import FIELD_METADATA_KEY
from generation_analytics.service.settings import LimitSettings, RedisSettings, Settings
from generation_analytics.service.stream import EVENT_FIELD, StreamKeys
from generation_analytics.v1 import events_pb2
from tests.factories import full_event, make_event
from tests.fix_processes import free_port
from tests.fix_server import LiveServer


def stream_events(redis_url: str, namespace: str) -> list[events_pb2.GenerationEvent]:
    client = redis.Redis.from_url(redis_url)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(StreamKeys(namespace).stream)  # type: ignore[assignment]
    client.close()
    return [events_pb2.GenerationEvent.FromString(fields[EVENT_FIELD]) for _, fields in entries]


def field_of(error: grpc.RpcError) -> str:
    call: Any = error  # a grpc.Call as well as an RpcError
    metadata = {key: value for key, value in call.trailing_metadata() or ()}
    return str(metadata.get(FIELD_METADATA_KEY, ""))


def test_recorded_event_is_in_the_stream_with_every_field_intact(live_server: LiveServer, redis_url: str) -> None:
    event = full_event()
    reply = live_server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))

    assert reply.event_id == event.event_id
    [stored] = stream_events(redis_url, live_server.settings.redis.namespace)
    assert stored == event


def test_server_assigns_event_id_and_timestamp_when_missing(live_server: LiveServer, redis_url: str) -> None:
    event = make_event("request", event_id="", queue_length=3)
    before = time.time()
    reply = live_server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))
    after = time.time()

    assert uuid.UUID(reply.event_id)
    [stored] = stream_events(redis_url, live_server.settings.redis.namespace)
    assert stored.event_id == reply.event_id
    assert before - 1 <= stored.timestamp.ToDatetime(tzinfo=UTC).timestamp() <= after + 1


def test_ids_are_stored_in_canonical_form(live_server: LiveServer, redis_url: str) -> None:
    event_id, user_id = uuid.uuid4(), uuid.uuid4()
    event = make_event(event_id=str(event_id).upper(), user_id=user_id.hex)
    reply = live_server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))

    assert reply.event_id == str(event_id)
    [stored] = stream_events(redis_url, live_server.settings.redis.namespace)
    assert (stored.event_id, stored.user_id) == (str(event_id), str(user_id))


def test_batch_keeps_valid_events_and_reports_each_invalid_one(live_server: LiveServer, redis_url: str) -> None:
    events = [
        make_event(),
        make_event(user_id="not-a-uuid"),
        make_event("request"),
        make_event(duration_ms=-5),
        make_event("cancellation"),
        make_event(event_type=0),
    ]
    reply = live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))

    assert reply.accepted_count == 3
    assert [(r.index, r.field) for r in reply.rejections] == [(1, "user_id"), (3, "duration_ms"), (5, "event_type")]
    assert all(r.reason for r in reply.rejections)
    assert list(reply.event_ids) == [events[0].event_id, "", events[2].event_id, "", events[4].event_id, ""]
    stored = stream_events(redis_url, live_server.settings.redis.namespace)
    assert [e.event_id for e in stored] == [events[0].event_id, events[2].event_id, events[4].event_id]


def test_batch_of_only_invalid_events_writes_nothing(live_server: LiveServer, redis_url: str) -> None:
    reply = live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[make_event(user_id="x")]))
    assert reply.accepted_count == 0
    assert stream_events(redis_url, live_server.settings.redis.namespace) == []


def _future() -> datetime:
    return datetime.now(UTC) + timedelta(minutes=10)


def _ancient() -> datetime:
    return datetime.now(UTC) - timedelta(days=400)


INVALID_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("missing event type", {"event_type": 0}, "event_type"),
    ("unknown event type", {"event_type": 42}, "event_type"),
    ("user id not a uuid", {"user_id": "alice"}, "user_id"),
    ("user id missing", {"user_id": ""}, "user_id"),
    ("event id not a uuid", {"event_id": "123"}, "event_id"),
    ("generation id missing", {"generation_id": ""}, "generation_id"),
    ("generation id too long", {"generation_id": "g" * 129}, "generation_id"),
    ("model checkpoint too long", {"model_checkpoint": "m" * 129}, "model_checkpoint"),
    ("error type with NUL", {"error_type": "a\x00b"}, "error_type"),
    ("error message too long", {"error_message": "x" * 4097}, "error_message"),
    ("negative duration", {"duration_ms": -1}, "duration_ms"),
    ("duration beyond a week", {"duration_ms": 7 * 24 * 3600 * 1000 + 1}, "duration_ms"),
    ("negative queue length", {"queue_length": -1}, "queue_length"),
    ("negative queue wait", {"queue_wait_time_ms": -1}, "queue_wait_time_ms"),
    ("negative generation time", {"generation_time_ms": -1}, "generation_time_ms"),
    ("negative batch size", {"batch_size": -2}, "batch_size"),
    ("huge batch size", {"batch_size": 10_001}, "batch_size"),
    ("negative prompt tokens", {"prompt_tokens": -3}, "prompt_tokens"),
    ("negative image width", {"image_dimensions": events_pb2.ImageDimensions(width=-1, height=5)}, "image_dimensions"),
    ("too many attributes", {"attributes": {f"k{i}": "v" for i in range(33)}}, "attributes"),
    ("attribute value too long", {"attributes": {"k": "v" * 1025}}, "attributes"),
    ("attribute key too long", {"attributes": {"k" * 65: "v"}}, "attributes"),
    # Times relative to now are taken when the test runs, not when the module is collected (a slow run
    # once reached "10 minutes from now" before this case did).
    ("timestamp far in the future", {"timestamp": _future}, "timestamp"),
    ("timestamp older than retention", {"timestamp": _ancient}, "timestamp"),
    ("completion without success", {"success": None}, "success"),
]


@pytest.mark.parametrize(("overrides", "field"), [c[1:] for c in INVALID_EVENTS], ids=[c[0] for c in INVALID_EVENTS])
def test_invalid_event_is_refused_naming_the_field(
    live_server: LiveServer, redis_url: str, overrides: dict[str, Any], field: str
) -> None:
    event = make_event(**{k: v() if callable(v) else v for k, v in overrides.items() if v is not None})
    if overrides.get("success", True) is None:
        event.ClearField("success")

    with pytest.raises(grpc.RpcError) as unary:
        live_server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))
    assert unary.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(unary.value) == f"event.{field}"
    assert field in (unary.value.details() or "")

    batch = live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[event]))
    assert [(r.index, r.field) for r in batch.rejections] == [(0, field)]
    assert stream_events(redis_url, live_server.settings.redis.namespace) == []


def test_missing_event_is_refused(live_server: LiveServer) -> None:
    with pytest.raises(grpc.RpcError) as error:
        live_server.events.RecordEvent(events_pb2.RecordEventRequest())
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(error.value) == "event"


def test_oversized_batch_is_refused(settings: Settings) -> None:
    server = LiveServer(replace(settings, limits=LimitSettings(max_batch_events=3)))
    try:
        with pytest.raises(grpc.RpcError) as error:
            server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[make_event() for _ in range(4)]))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_of(error.value) == "events"
    finally:
        server.close()


def test_full_backlog_answers_resource_exhausted(settings: Settings, redis_url: str) -> None:
    server = LiveServer(replace(settings, limits=LimitSettings(max_stream_backlog=2)))
    try:
        server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[make_event() for _ in range(3)]))
        with pytest.raises(grpc.RpcError) as error:
            server.events.RecordEvent(events_pb2.RecordEventRequest(event=make_event()))
        assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert len(stream_events(redis_url, settings.redis.namespace)) == 3
    finally:
        server.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Any:
    """A redis-server of this test's own, so stopping it disturbs no other test."""
    from generation_analytics.service.embedded import EmbeddedRedis

    server = EmbeddedRedis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.mark.faults
def test_redis_stopped_answers_unavailable_fast(settings: Settings, private_redis: Any) -> None:
    server = LiveServer(replace(settings, redis=RedisSettings(url=private_redis.url, namespace="ga_private")))
    try:
        server.events.RecordEvent(events_pb2.RecordEventRequest(event=make_event()))
        private_redis.process.kill()
        private_redis.process.wait()
        for call in (
            lambda: server.events.RecordEvent(events_pb2.RecordEventRequest(event=make_event()), timeout=10),
            lambda: server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[make_event()]), timeout=10),
        ):
            started = time.monotonic()
            with pytest.raises(grpc.RpcError) as error:
                call()
            elapsed = time.monotonic() - started
            assert error.value.code() == grpc.StatusCode.UNAVAILABLE
            assert elapsed < 3.0, f"took {elapsed:.2f} s: must fail fast, not hang"
    finally:
        server.close()


def test_unreachable_redis_answers_unavailable_fast(settings: Settings) -> None:
    port = free_port()
    unreachable = RedisSettings(url=f"redis://127.0.0.1:{port}/0", namespace="ga_none")
    server = LiveServer(replace(settings, redis=unreachable))
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            server.events.RecordEvent(events_pb2.RecordEventRequest(event=make_event()), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 3.0
    finally:
        server.close()


@pytest.mark.faults
def test_blackholed_redis_answers_unavailable_within_the_timeout(settings: Settings) -> None:
    """A Redis that accepts connections but never answers must not hang the call."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
    server = LiveServer(replace(settings, redis=RedisSettings(url=url, namespace="ga_hole", socket_timeout_s=0.5)))
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as error:
            server.events.RecordEvent(events_pb2.RecordEventRequest(event=make_event()), timeout=10)
        assert error.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - started < 3.0
    finally:
        server.close()
        listener.close()


def test_concurrent_calls_share_the_connection_and_each_gets_its_answer(
    live_server: LiveServer, redis_url: str
) -> None:
    events = [make_event() for _ in range(300)]
    futures = [live_server.events.RecordEvent.future(events_pb2.RecordEventRequest(event=e)) for e in events]
    replies = [f.result(timeout=30).event_id for f in futures]
    assert replies == [e.event_id for e in events]
    stored = stream_events(redis_url, live_server.settings.redis.namespace)
    assert sorted(e.event_id for e in stored) == sorted(replies)

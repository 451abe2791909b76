"""Acknowledged means replicated (GA_REDIS_WAIT_REPLICAS): on a real Redis master with a real replica, an OK
from recording means the replica holds the events; a replica that cannot confirm in time makes recording
answer UNAVAILABLE instead of acknowledging what a master failover could lose, and the caller's retry is
stored once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import grpc
import psycopg
import pytest
import redis

from generation_analytics.service.settings import Settings
from generation_analytics.service.stream import EVENT_FIELD, StreamKeys
from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_redis_replica import RedisPair
from tests.fix_server import LiveServer

pytestmark = pytest.mark.faults


def on(settings: Settings, pair: RedisPair, *, wait_replicas: int) -> Settings:
    return replace(settings, redis=replace(settings.redis, url=pair.master_url, wait_replicas=wait_replicas))


def stream_ids(url: str, settings: Settings) -> list[str]:
    """The event_ids in the namespace's stream on the Redis at `url`, in stream order."""
    client = redis.Redis.from_url(url)
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(StreamKeys(settings.redis.namespace).stream)  # type: ignore[assignment]
    client.close()
    return [events_pb2.GenerationEvent.FromString(fields[EVENT_FIELD]).event_id for _, fields in entries]


def sleep_replica(pair: RedisPair, seconds: float) -> threading.Thread:
    """Block the replica (DEBUG SLEEP) for `seconds` in the background: it can neither apply nor confirm."""
    client = redis.Redis(port=pair.replica_port, socket_timeout=seconds + 5)
    thread = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", seconds), daemon=True)
    thread.start()
    time.sleep(0.1)  # the replica is asleep once its event loop has taken the command
    return thread


def test_every_acknowledged_event_is_on_the_replica_at_its_acknowledgement(
    settings: Settings, redis_pair: RedisPair
) -> None:
    server = LiveServer(on(settings, redis_pair, wait_replicas=1))
    try:

        def record(i: int) -> list[str]:
            events = [make_event() for _ in range(1 + i % 3 * 10)]  # single calls and batches of 10 and 20
            if len(events) == 1:
                server.events.RecordEvent(events_pb2.RecordEventRequest(event=events[0]))
            else:
                assert server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events)).accepted_count == len(
                    events
                )
            on_replica = set(stream_ids(redis_pair.replica_url, server.settings))
            missing = [e.event_id for e in events if e.event_id not in on_replica]
            assert not missing, f"acknowledged but not on the replica: {missing}"
            return [e.event_id for e in events]

        with ThreadPoolExecutor(4) as pool:
            recorded = [event_id for ids in pool.map(record, range(24)) for event_id in ids]
        assert sorted(stream_ids(redis_pair.master_url, server.settings)) == sorted(recorded)
    finally:
        server.close()


def test_a_replica_that_cannot_confirm_makes_recording_unavailable_and_the_retry_is_stored_once(
    settings: Settings, redis_pair: RedisPair, db_dsn: str
) -> None:
    replicated = on(settings, redis_pair, wait_replicas=1)
    server = LiveServer(replace(replicated, redis=replace(replicated.redis, wait_timeout_ms=300)))
    unreplicated = LiveServer(on(settings, redis_pair, wait_replicas=0))
    try:
        event = make_event()
        asleep = sleep_replica(redis_pair, 1.5)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "1 Redis replica(s) within 300 ms" in str(refused.value.details())
        assert time.monotonic() - started < 1.4, "answered after the WAIT timeout, not when the replica woke"
        # Without the option the same moment is acknowledged at once: the window a master failover would lose.
        other = make_event()
        unreplicated.events.RecordEvent(events_pb2.RecordEventRequest(event=other))
        assert asleep.is_alive(), "the replica woke before the check: it proves nothing"  # so it holds nothing yet
        assert other.event_id in stream_ids(redis_pair.master_url, settings)
        asleep.join(10)
        redis_pair.wait_linked()  # awake and caught up, as a retry with backoff would find it

        server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))  # the caller's retry
        assert stream_ids(redis_pair.master_url, settings).count(event.event_id) == 2  # the refused try stayed
        server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
        with psycopg.connect(db_dsn) as conn:
            stored = conn.execute(
                "SELECT count(*) FROM generation_events WHERE event_id = %s", (event.event_id,)
            ).fetchone()
        assert stored == (1,)
    finally:
        server.close()
        unreplicated.close()


def test_recording_is_unavailable_while_the_replica_is_gone_and_resumes_when_it_is_back(
    settings: Settings, redis_pair: RedisPair
) -> None:
    server = LiveServer(replace(on(settings, redis_pair, wait_replicas=1), redis=replace(
        on(settings, redis_pair, wait_replicas=1).redis, wait_timeout_ms=200)))  # fmt: skip
    try:
        redis_pair.stop_replica()
        with pytest.raises(grpc.RpcError) as refused:
            server.events.RecordEvents(events_pb2.RecordEventsRequest(events=[make_event(), make_event()]))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        redis_pair.start_replica()
        event = make_event()
        server.events.RecordEvent(events_pb2.RecordEventRequest(event=event))
        assert event.event_id in stream_ids(redis_pair.replica_url, settings)
    finally:
        server.close()

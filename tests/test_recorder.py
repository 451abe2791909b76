"""EventRecorder: never blocks, batches in the background, survives an outage, flushes on exit."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
import uuid
from concurrent import futures
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest
import redis

from generation_analytics.client import EventRecorder
from generation_analytics.service.embedded import EmbeddedRedis
from generation_analytics.service.settings import RedisSettings, Settings
from generation_analytics.service.stream import StreamKeys
from generation_analytics.v1 import pipeline_pb2
from tests.fix_server import LiveServer
from tests.test_client import LostReplies


def stream_length(url: str, namespace: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.xlen(StreamKeys(namespace).stream))
    finally:
        client.close()


def stored_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(DISTINCT event_id), count(*) FROM generation_events").fetchone()
    assert row is not None and row[0] == row[1], "no event stored twice"
    return int(row[0])


def test_recorded_events_are_delivered_in_batches(live_server: LiveServer, redis_url: str) -> None:
    with EventRecorder(live_server.address, batch_size=100, flush_interval_s=0.05) as recorder:
        for i in range(1_050):
            recorder.record("request", user_id=str(uuid.uuid4()), generation_id=f"g{i}", queue_length=i % 7)
        assert recorder.flush(timeout_s=30)
        stats = recorder.stats
    assert (stats.recorded, stats.delivered, stats.dropped, stats.rejected, stats.buffered) == (1_050, 1_050, 0, 0, 0)
    assert stream_length(redis_url, live_server.settings.redis.namespace) == 1_050


def test_invalid_events_are_counted_not_raised(live_server: LiveServer) -> None:
    with EventRecorder(live_server.address) as recorder:
        recorder.record("request", user_id="not-a-uuid", generation_id="g")
        recorder.record("request", user_id=str(uuid.uuid4()), generation_id="g")
        assert recorder.flush(timeout_s=30)
        assert (recorder.stats.delivered, recorder.stats.rejected) == (1, 1)
    with pytest.raises(ValueError):
        recorder.record("request", colour="blue")


def test_full_buffer_drops_and_counts_without_blocking() -> None:
    # Nothing listens on this address: every batch fails and waits for a retry.
    recorder = EventRecorder("127.0.0.1:9", max_buffer=100, batch_size=10, flush_interval_s=0.01)
    try:
        for i in range(1_000):
            recorder.record("request", user_id=str(uuid.uuid4()), generation_id=f"g{i}")
        stats = recorder.stats
        assert stats.buffered <= 100 + recorder.batch_size
        assert stats.dropped >= 1_000 - 100 - recorder.batch_size
        assert stats.recorded + stats.dropped == 1_000
    finally:
        recorder.close(timeout_s=0.2)


@pytest.mark.faults
def test_recorder_delivers_everything_across_a_redis_outage(settings: Settings, tmp_path: Path) -> None:
    private = EmbeddedRedis(tmp_path / "redis")
    private.start()
    server = LiveServer(
        replace(settings, redis=RedisSettings(url=private.url, namespace="ga_outage", socket_timeout_s=0.5))
    )
    try:
        with EventRecorder(server.address, batch_size=50, flush_interval_s=0.05, max_backoff_s=0.5) as recorder:
            for i in range(200):
                recorder.record("request", user_id=str(uuid.uuid4()), generation_id=f"before-{i}")
            assert recorder.flush(timeout_s=30)
            private.stop()  # Redis goes away (its AOF keeps what it acknowledged)
            for i in range(300):
                recorder.record("request", user_id=str(uuid.uuid4()), generation_id=f"during-{i}")
            time.sleep(1.0)
            assert recorder.stats.failed_attempts > 0
            assert recorder.stats.buffered == 300
            private.start()  # same folder, same port
            assert recorder.flush(timeout_s=60)
            stats = recorder.stats
        assert (stats.delivered, stats.dropped, stats.rejected) == (500, 0, 0)
        server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
        assert stored_count(settings.postgres.dsn) == 500
    finally:
        server.close()
        private.stop()


def test_events_are_flushed_at_interpreter_exit(live_server: LiveServer, redis_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import uuid
        from generation_analytics.client import EventRecorder
        recorder = EventRecorder({live_server.address!r}, flush_interval_s=60)
        for i in range(25):
            recorder.record("request", user_id=str(uuid.uuid4()), generation_id=f"g{{i}}")
        # no close(): the atexit hook must deliver them
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert stream_length(redis_url, live_server.settings.redis.namespace) == 25


def test_recording_from_many_threads_loses_nothing(live_server: LiveServer, redis_url: str) -> None:
    import threading

    with EventRecorder(live_server.address, batch_size=64, flush_interval_s=0.02) as recorder:

        def produce(worker: int) -> None:
            for i in range(500):
                recorder.record("request", user_id=str(uuid.uuid4()), generation_id=f"w{worker}-{i}")

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert recorder.flush(timeout_s=30)
        assert (recorder.stats.recorded, recorder.stats.delivered) == (2_000, 2_000)
    assert stream_length(redis_url, live_server.settings.redis.namespace) == 2_000


def test_a_batch_whose_reply_was_lost_is_stored_once(live_server: LiveServer) -> None:
    # The service records the batch but the reply never arrives (UNAVAILABLE): the recorder resends the
    # same batch with the ids it gave the events before the first attempt, so each is stored once.
    proxy = LostReplies(live_server.channel, lose=1)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[proxy])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        # One batch exactly: only a full buffer wakes the sender (the interval is far away).
        with EventRecorder(f"127.0.0.1:{port}", batch_size=20, flush_interval_s=60, max_backoff_s=0.1) as recorder:
            for i in range(20):
                recorder.record("request", user_id=str(uuid.uuid4()), generation_id=f"lost-{i}")
            assert recorder.flush(timeout_s=30)
            stats = recorder.stats
    finally:
        server.stop(0)
    assert (proxy.attempts, stats.failed_attempts, stats.delivered, stats.rejected) == (2, 1, 20, 0)
    assert live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest()).duplicates == 20
    assert stored_count(live_server.settings.postgres.dsn) == 20

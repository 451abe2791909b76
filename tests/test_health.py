"""Health per service: gRPC health, /healthz, /readyz and /metrics follow Redis and Postgres down and back.

Redis and Postgres are servers of the test's own (stopping them disturbs no other test); the service
is the real one on real ports. Changes are polled for with a deadline: the monitor probes every second.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from generation_analytics.service.api.health import NEEDS, Readiness
from generation_analytics.service.embedded import EmbeddedPostgres, EmbeddedRedis
from generation_analytics.service.migrate import migrate
from generation_analytics.service.settings import AuthSettings, PostgresSettings, RedisSettings, Settings
from tests.fix_server import LiveServer

EVENTS = "generation_analytics.v1.EventService"
ANALYTICS = "generation_analytics.v1.AnalyticsService"
PIPELINE = "generation_analytics.v1.PipelineService"
ALERTS = "generation_analytics.v1.AlertService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
UP = {"status": "SERVING", "redis": "up", "postgres": "up"}


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, so stopping it disturbs no other test."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    migrate(server.dsn)
    yield server
    server.stop()


def statuses(server: LiveServer) -> dict[str, Any]:
    stub = health_pb2_grpc.HealthStub(server.channel)
    return {name: stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status for name in NEEDS}


def ready(server: LiveServer) -> tuple[int, dict[str, str]]:
    reply = requests.get(f"{server.http}/readyz", timeout=10)
    return reply.status_code, reply.json()


def metric(server: LiveServer, name: str) -> float:
    for line in requests.get(f"{server.http}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.1)


def test_each_service_needs_what_it_reads() -> None:
    redis_down = Readiness(redis_error="ConnectionError")
    assert {name: redis_down.status(name) for name in NEEDS} == {
        "": NOT_SERVING,
        EVENTS: NOT_SERVING,
        ANALYTICS: SERVING,
        PIPELINE: NOT_SERVING,
        ALERTS: SERVING,
    }
    postgres_down = Readiness(postgres_error="PoolTimeout")
    assert {name: postgres_down.status(name) for name in NEEDS} == {
        "": NOT_SERVING,
        EVENTS: SERVING,
        ANALYTICS: NOT_SERVING,
        PIPELINE: NOT_SERVING,
        ALERTS: NOT_SERVING,
    }
    assert postgres_down.as_json() == {"status": "NOT_SERVING", "redis": "up", "postgres": "down"}


def test_healthy_service_is_live_and_ready_without_a_key(settings: Settings) -> None:
    server = LiveServer(replace(settings, auth=AuthSettings(mode="on")))
    try:
        assert requests.get(f"{server.http}/api/v1/analytics/generation/overview", timeout=10).status_code == 401
        health = requests.get(f"{server.http}/healthz", timeout=10)
        assert health.status_code == 200 and health.json() == {"status": "SERVING"}
        assert ready(server) == (200, UP)
        assert set(statuses(server).values()) == {SERVING}
    finally:
        server.close()


def test_redis_outage_marks_recording_not_serving_and_stream_gauges_stale(
    settings: Settings, private_redis: EmbeddedRedis
) -> None:
    server = LiveServer(replace(settings, redis=RedisSettings(url=private_redis.url, namespace="ga_health")))
    try:
        assert set(statuses(server).values()) == {SERVING}
        assert ready(server) == (200, UP)
        assert metric(server, "ga_stream_up") == 1 and metric(server, "ga_stream_backlog") == 0

        private_redis.stop()
        eventually(lambda: statuses(server)[EVENTS] == NOT_SERVING, "EventService NOT_SERVING")
        assert statuses(server) == {
            "": NOT_SERVING,
            EVENTS: NOT_SERVING,
            ANALYTICS: SERVING,
            PIPELINE: NOT_SERVING,
            ALERTS: SERVING,
        }
        assert ready(server) == (503, {"status": "NOT_SERVING", "redis": "down", "postgres": "up"})
        assert requests.get(f"{server.http}/healthz", timeout=10).status_code == 200, "liveness is not readiness"
        assert metric(server, "ga_stream_up") == 0
        assert math.isnan(metric(server, "ga_stream_backlog")) and math.isnan(metric(server, "ga_stream_length"))
        assert math.isnan(metric(server, "ga_transfer_lag_seconds")) and math.isnan(metric(server, "ga_dead_letters"))

        private_redis.start()  # same port
        eventually(lambda: set(statuses(server).values()) == {SERVING}, "every service SERVING again")
        assert ready(server) == (200, UP)
        assert metric(server, "ga_stream_up") == 1 and metric(server, "ga_stream_backlog") == 0
    finally:
        server.close()


@pytest.mark.slow
def test_postgres_outage_marks_questions_not_serving(settings: Settings, private_postgres: EmbeddedPostgres) -> None:
    server = LiveServer(replace(settings, postgres=PostgresSettings(dsn=private_postgres.dsn, pool_max_size=4)))
    try:
        assert set(statuses(server).values()) == {SERVING}

        private_postgres.stop()
        eventually(lambda: statuses(server)[ANALYTICS] == NOT_SERVING, "AnalyticsService NOT_SERVING")
        assert statuses(server) == {
            "": NOT_SERVING,
            EVENTS: SERVING,
            ANALYTICS: NOT_SERVING,
            PIPELINE: NOT_SERVING,
            ALERTS: NOT_SERVING,
        }
        assert ready(server) == (503, {"status": "NOT_SERVING", "redis": "up", "postgres": "down"})

        private_postgres.start()
        eventually(lambda: set(statuses(server).values()) == {SERVING}, "every service SERVING again", timeout_s=60)
        assert ready(server) == (200, UP)
    finally:
        server.close()


def test_shutdown_reports_not_serving_and_stops_the_monitor(settings: Settings) -> None:
    server = LiveServer(settings)
    try:
        watch = health_pb2_grpc.HealthStub(server.channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == SERVING
        seen: list[Any] = []
        reader = threading.Thread(target=lambda: seen.extend(reply.status for reply in _until_closed(watch)))
        reader.start()
        server.call(server._grpc.stop(2.0))
        reader.join(30)
        assert seen and seen[0] == NOT_SERVING, "graceful shutdown must report NOT_SERVING before stopping"

        async def monitor_tasks() -> list[str]:
            return [t.get_name() for t in asyncio.all_tasks() if t.get_name() == "health-monitor" and not t.done()]

        assert server.call(monitor_tasks()) == [], "stopping the gRPC server must stop its health monitor"
    finally:
        server.close()


def _until_closed(stream: Any) -> Iterator[Any]:
    try:
        yield from stream
    except grpc.RpcError:  # the server went away: the end of the stream
        return

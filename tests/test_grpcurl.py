"""Operators' view: grpcurl lists the services through reflection and can record an event."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import redis

from generation_analytics.service.stream import StreamKeys
from tests.fix_server import LiveServer

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def grpcurl(*args: str) -> str:
    result = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_list_shows_the_three_services_health_and_reflection(live_server: LiveServer) -> None:
    services = set(grpcurl(live_server.address, "list").split())
    assert {
        "generation_analytics.v1.EventService",
        "generation_analytics.v1.AnalyticsService",
        "generation_analytics.v1.PipelineService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services


def test_health_check_reports_serving(live_server: LiveServer) -> None:
    reply = json.loads(grpcurl(live_server.address, "grpc.health.v1.Health/Check"))
    assert reply == {"status": "SERVING"}


def test_record_event_through_reflection(live_server: LiveServer, redis_url: str) -> None:
    event = {
        "event_type": "EVENT_TYPE_COMPLETION",
        "generation_id": "gen-grpcurl",
        "user_id": str(uuid.uuid4()),
        "success": True,
        "duration_ms": 2100,
        "model_checkpoint": "sdxl-1.0",
    }
    reply = json.loads(
        grpcurl(
            "-d", json.dumps({"event": event}), live_server.address, "generation_analytics.v1.EventService/RecordEvent"
        )
    )
    assert uuid.UUID(reply["event_id"])
    client = redis.Redis.from_url(redis_url)
    assert client.xlen(StreamKeys(live_server.settings.redis.namespace).stream) == 1
    client.close()

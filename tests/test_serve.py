"""`generation-analytics serve` as users run it: embedded servers, data kept across restarts, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from generation_analytics.client import AnalyticsClient, build_event
from tests.fix_processes import free_port, launch

pytestmark = pytest.mark.slow


def start(data_dir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    """`serve` on embedded servers: no GA_* setting but the data folder and the port."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GA_")}
    environment.update(
        GA_DATA_DIR=str(data_dir), GA_LISTEN_ADDR=f"127.0.0.1:{port}", GA_HTTP_ADDR="off", GA_LOG_LEVEL="WARNING", **env
    )
    return launch("serve", environment, address=f"127.0.0.1:{port}")


def stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def test_embedded_service_keeps_its_data_across_restarts(tmp_path: Path) -> None:
    port = free_port()
    target = f"127.0.0.1:{port}"
    user = str(uuid.uuid4())
    process = start(tmp_path, port, GA_TRANSFER_INTERVAL_S="0.5", GA_AGGREGATION_INTERVAL_S="0.5")
    try:
        with AnalyticsClient(target) as client:
            client.record_event(build_event("request", user_id=user, generation_id="g1", timestamp=datetime.now(UTC)))
            deadline = time.monotonic() + 60
            while client.user(user).total_requests != 1:
                assert time.monotonic() < deadline, "the embedded pipeline did not deliver the event"
                time.sleep(0.2)
    finally:
        assert stop(process) == 0, "SIGTERM must shut the service down cleanly"
    assert (tmp_path / "postgres" / "PG_VERSION").exists() and (tmp_path / "redis").is_dir()

    # Second life: the pipeline is off, so this event can only survive in Redis's append-only file.
    process = start(tmp_path, port, GA_SCHEDULER_ENABLED="false")
    try:
        with AnalyticsClient(target) as client:
            assert client.user(user).total_requests == 1
            client.record_event(build_event("request", user_id=user, generation_id="g2", timestamp=datetime.now(UTC)))
            assert client.pipeline_status().stream_length == 1
    finally:
        assert stop(process) == 0

    process = start(tmp_path, port, GA_SCHEDULER_ENABLED="false")
    try:
        with AnalyticsClient(target) as client:
            assert client.pipeline_status().stream_length == 1
            client.run_transfer()
            client.run_aggregation()
            assert client.user(user).total_requests == 2
    finally:
        assert stop(process) == 0

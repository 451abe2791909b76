"""The seed document's examples, run unchanged: its Python blocks and its curl commands.

They name http://localhost:8001, so this module's server binds its gateway there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from generation_analytics.service.settings import Settings
from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_server import LiveServer

SEED = (Path(__file__).parents[1] / "docs" / "seed" / "generation_analytics_examples.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", SEED, flags=re.DOTALL)
CURL_COMMANDS = [b for b in re.findall(r"```bash\n(.*?)```", SEED, flags=re.DOTALL) if "curl " in b]
SEED_USER = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture
def seed_server(settings: Settings) -> Iterator[LiveServer]:
    try:
        server = LiveServer(settings, http_addr="127.0.0.1:8001")
    except OSError as exc:
        pytest.fail(f"the seed's examples need port 8001 free: {exc}")
    try:
        load_history(server)
        yield server
    finally:
        server.close()


def load_history(server: LiveServer) -> None:
    """30 days that get slower (Pattern 1 warns) and a failing last day (Pattern 3 alerts)."""
    now = datetime.now(UTC) - timedelta(minutes=2)
    events = []
    for day in range(30):
        for i in range(8):
            when = now - timedelta(days=day, hours=i * 3)
            user = SEED_USER if i % 2 else "6f1c3b5e-8a7d-4c21-9e1f-2b3c4d5e6f70"
            failed = (day == 0 and i < 3) or i == 7
            events.append(
                make_event("request", user_id=user, timestamp=when, queue_length=i, model_checkpoint="sdxl-1.0")
            )
            events.append(
                make_event(
                    "completion",
                    user_id=user,
                    timestamp=when + timedelta(seconds=5),
                    success=not failed,
                    duration_ms=int(2000 * (1 + (29 - day) / 20)) + i,
                    model_checkpoint=["sdxl-1.0", "flux-dev"][i % 2],
                    error_type="OutOfMemory" if failed else "",
                    error_message="CUDA out of memory" if failed else "",
                )
            )
    reply = server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    assert reply.accepted_count == len(events)
    server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest())
    server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())


def test_the_seed_has_its_examples() -> None:
    assert len(PYTHON_BLOCKS) == 8  # 6 API examples, Pattern 1, Pattern 3
    assert len(CURL_COMMANDS) == 6


def test_python_examples_run_unchanged(seed_server: LiveServer) -> None:
    env = {**os.environ, "MPLBACKEND": "Agg"}
    outputs = []
    for block in PYTHON_BLOCKS:
        result = subprocess.run(
            [sys.executable, "-c", block], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        assert result.returncode == 0, f"{block[:200]}\n--- stderr:\n{result.stderr}"
        outputs.append(result.stdout)
    printed = "\n".join(outputs)
    assert "Success rate:" in printed and "Total requests: " in printed
    assert f"User {SEED_USER} Analytics:" in printed and "OutOfMemory:" in printed
    assert "Model Performance Comparison:" in printed and "sdxl-1.0" in printed
    assert "Top Error Types:" in printed and "CUDA out of memory" in printed
    assert "Peak generation hours:" in printed
    assert "WARNING: Performance degradation detected!" in printed
    assert "ALERT: High failure rate detected" in printed


def test_curl_examples_answer_200_with_the_documented_fields(seed_server: LiveServer) -> None:
    for command in CURL_COMMANDS:
        script = command.replace("curl ", "curl -sS --fail ")
        result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        data = json.loads(result.stdout)
        assert "lookback_days" in data

"""The `generation-analytics` command against a live server: tables, --json that parses, clear errors."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from generation_analytics.cli import main
from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_server import LiveServer

CLI = str(Path(sys.executable).parent / "generation-analytics")
USER = str(uuid.uuid4())


@pytest.fixture
def loaded(live_server: LiveServer) -> LiveServer:
    at = datetime.now(UTC) - timedelta(minutes=3)
    events = [make_event("request", user_id=USER, timestamp=at, model_checkpoint="sdxl-1.0") for _ in range(3)]
    events.append(make_event("completion", user_id=USER, timestamp=at, success=False, error_type="Timeout",
                             duration_ms=4000, model_checkpoint="sdxl-1.0"))  # fmt: skip
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    return live_server


COMMANDS = [
    ["transfer"],
    ["aggregate"],
    ["overview", "--days", "1"],
    ["trends", "--days", "1", "--interval", "daily"],
    ["user", USER],
    ["models"],
    ["failures"],
    ["peak-hours", "--days", "2"],
    ["events", "--order", "slowest", "--page-size", "2"],
    ["top-users", "--limit", "5"],
    ["status"],
]


def test_every_command_prints_a_table_and_parsable_json(loaded: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    for command in COMMANDS:
        assert main([*command, "--target", loaded.address]) == 0, command
        table = capsys.readouterr().out
        assert table.strip(), command
        assert main([*command, "--target", loaded.address, "--json"]) == 0, command
        data = json.loads(capsys.readouterr().out)
        assert isinstance(data, dict), command
    assert main(["overview", "--days", "1", "--json", "--target", loaded.address]) == 0
    overview = json.loads(capsys.readouterr().out)
    assert overview["total_requests"] == 3 and overview["failed_generations"] == 1
    assert main(["user", USER, "--json", "--target", loaded.address]) == 0
    assert json.loads(capsys.readouterr().out)["failure_breakdown"] == [{"error_type": "Timeout", "count": 1}]


def test_bad_input_names_the_field(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["overview", "--days", "0", "--target", live_server.address]) == 1
    assert "field: days" in capsys.readouterr().err


def test_unreachable_server_gets_a_clear_message() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [CLI, "overview", "--target", f"127.0.0.1:{port}", "--timeout", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot reach the service at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_loads_history_and_live_traffic(live_server: LiveServer) -> None:
    result = subprocess.run(
        [CLI, "demo", "--target", live_server.address, "--days", "2", "--generations", "300",
         "--live-seconds", "2", "--rate", "20", "--users", "10"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "history (2 days) [" in result.stderr and "live traffic" in result.stderr
    reply = live_server.pipeline.GetPipelineStatus(pipeline_pb2.GetPipelineStatusRequest())
    assert reply.total_events >= 2 * 300
    assert "total_requests" in result.stdout

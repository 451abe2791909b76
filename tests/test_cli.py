"""The `generation-analytics` command against a live server: tables, --json that parses, clear errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from generation_analytics.cli import EXIT_BROKEN_PIPE, JOB_RUN_COLUMNS, main
from generation_analytics.v1 import events_pb2, pipeline_pb2
from tests.factories import make_event
from tests.fix_processes import CLI
from tests.fix_server import LiveServer

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


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert "Traceback" not in captured.err
    return captured.err.strip()


def test_aggregate_hours_are_checked_before_asking(live_server: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    target = ["--target", live_server.address]
    # The report: `aggregate --start-hour yesterday` ended in a ValueError traceback.
    assert main(["aggregate", "--start-hour", "yesterday", "--end-hour", "2026-11-28T13:00", *target]) == 2
    assert one_line_error(capsys) == "error: --start-hour: not an ISO time (e.g. 2026-11-28T13:00): 'yesterday'"
    assert main(["aggregate", "--start-hour", "2026-11-28T13:00", "--end-hour", "13:00 tomorrow", *target]) == 2
    assert one_line_error(capsys).startswith("error: --end-hour: not an ISO time (e.g. 2026-11-28T13:00)")
    assert main(["aggregate", "--start-hour", "2026-11-28T13:00", *target]) == 2
    assert "--start-hour needs --end-hour" in one_line_error(capsys)
    assert main(["aggregate", "--end-hour", "2026-11-28T13:00", *target]) == 2
    assert "--end-hour needs --start-hour" in one_line_error(capsys)
    assert main(["aggregate", "--start-hour", "2026-11-28T13:00", "--end-hour", "2026-11-28T12:00", *target]) == 2
    assert "--end-hour (2026-11-28T12:00:00+00:00) is before --start-hour" in one_line_error(capsys)
    hour = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:00")
    assert main(["aggregate", "--start-hour", hour, "--end-hour", f"{hour}Z", "--json", *target]) == 0
    assert json.loads(capsys.readouterr().out)["hours_aggregated"] == 1


def test_connection_options_that_cannot_work_get_one_line(
    live_server: LiveServer, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    target = ["--target", live_server.address]
    assert main(["overview", "--cert", str(tmp_path / "client.pem"), *target]) == 2
    assert "needs its key" in one_line_error(capsys)
    missing = tmp_path / "missing.pem"
    assert main(["overview", "--ca", str(missing), *target]) == 2
    assert str(missing) in one_line_error(capsys)


# A real database failure for transfer: every insert into the raw table is refused.
REFUSE_INSERTS = """
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'tablespace is full'; END $$;
CREATE TRIGGER refuse BEFORE INSERT ON generation_events FOR EACH STATEMENT EXECUTE FUNCTION refuse();
"""
# And one for aggregation: every hourly rollup is refused.
POISON_HOURS = """
CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'poisoned hour'; END $$;
CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON generation_metrics_hourly FOR EACH ROW EXECUTE FUNCTION poison();
"""


def status(address: str, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """`status`'s "last runs" rows by run name, as printed, and the same status as JSON."""
    assert main(["status", "--target", address]) == 0
    out = capsys.readouterr().out
    block = out.split("last runs:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block[0].split() == list(JOB_RUN_COLUMNS)
    assert main(["status", "--json", "--target", address]) == 0
    return {line.split()[0]: line for line in block[2:]}, json.loads(capsys.readouterr().out)


def assert_row_shows(row: str, run: dict[str, Any]) -> None:
    """Every field of the run is in its row: numbers as the table prints them, texts on one line."""
    assert row.split()[1] == run["started_at"]
    assert f"{run['duration_s']:,.2f}" in row and f" {run['processed']:,} " in row
    for name in ("error", "last_error", "last_error_at"):
        assert " ".join((run[name] or "").split()) in row, name


def test_status_shows_the_last_runs(loaded: LiveServer, capsys: pytest.CaptureFixture[str]) -> None:
    dsn = loaded.settings.postgres.dsn
    rows, _ = status(loaded.address, capsys)
    assert rows["transfer"].split()[1:] == ["never"] and rows["aggregation"].split()[1:] == ["never"]

    with psycopg.connect(dsn, autocommit=True) as conn:  # a real database failure
        conn.execute(REFUSE_INSERTS)
    assert main(["transfer", "--target", loaded.address]) == 1
    rows, data = status(loaded.address, capsys)
    failed = data["last_transfer"]
    assert failed["error"] and failed["last_error"] and failed["last_error_at"] and failed["processed"] == 0
    assert_row_shows(rows["transfer"], failed)

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse ON generation_events")
        conn.execute(POISON_HOURS)
    assert main(["transfer", "--target", loaded.address]) == 0
    assert main(["aggregate", "--target", loaded.address]) == 0
    capsys.readouterr()
    rows, data = status(loaded.address, capsys)
    # Succeeded now; the last error and when it happened stay on show.
    mended = data["last_transfer"]
    assert (mended["processed"], mended["error"]) == (4, "")
    assert (mended["last_error"], mended["last_error_at"]) == (failed["last_error"], failed["last_error_at"])
    assert_row_shows(rows["transfer"], mended)
    assert_row_shows(rows["aggregation"], data["last_aggregation"])

    # The failing-hours table is still there, after the runs.
    assert main(["status", "--target", loaded.address]) == 0
    out = capsys.readouterr().out
    assert out.index("last runs:") < out.index("failing hours (retried with backoff")
    assert data["failing_hours"] and data["failing_hours"][0]["hour"] in out.split("failing hours", 1)[1]


@pytest.fixture
def many_events(live_server: LiveServer) -> LiveServer:
    """A thousand stored events of USER: `events --json --page-size 1000` prints far more than a pipe holds."""
    at = datetime.now(UTC) - timedelta(minutes=3)
    events = [make_event("request", user_id=USER, timestamp=at, model_checkpoint="sdxl-1.0") for _ in range(1_000)]
    live_server.events.RecordEvents(events_pb2.RecordEventsRequest(events=events))
    assert live_server.pipeline.RunTransfer(pipeline_pb2.RunTransferRequest()).inserted == 1_000
    live_server.pipeline.RunAggregation(pipeline_pb2.RunAggregationRequest())
    return live_server


def test_output_into_head_ends_quietly(many_events: LiveServer) -> None:
    # The report: `generation-analytics events --json | head -1` ended in a BrokenPipeError traceback.
    command = [CLI, "events", "--json", "--page-size", "1000", "--target", many_events.address]
    with tempfile.TemporaryFile("w+") as stderr:
        cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr)
        assert cli.stdout is not None
        head = subprocess.Popen(["head", "-1"], stdin=cli.stdout, stdout=subprocess.PIPE, text=True)
        cli.stdout.close()  # head is the only reader now: when it exits, the pipe is broken
        first_line, _ = head.communicate(timeout=60)
        assert cli.wait(timeout=60) == EXIT_BROKEN_PIPE
        stderr.seek(0)
        errors = stderr.read()
    assert first_line == "{\n"
    assert "Traceback" not in errors and "BrokenPipe" not in errors and "Exception ignored" not in errors


@pytest.mark.parametrize("command", [["user", USER], ["events", "--json"], ["overview"]])
def test_a_reader_gone_before_the_first_line_ends_quietly(many_events: LiveServer, command: list[str]) -> None:
    # Small outputs too (`user <id> | head -1`): the read end is closed before the command writes a byte.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [CLI, *command, "--target", many_events.address],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert result.returncode == EXIT_BROKEN_PIPE, result.stderr
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr
    assert "Exception ignored" not in result.stderr
